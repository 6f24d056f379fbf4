//! `fleet`: Gleaner as deployed, at the largest scale this machine allows, under faults.
//!
//! Starts 1 API, `--workers` workers and `--schedulers` schedulers as separate processes (this
//! binary's `serve`), then for `--seconds` runs a mixed load:
//! - `--small` small collections (10 resources each, over 20 collectors), `--requests` of them
//!   asked through RabbitMQ (`<prefix>.requests`) and the rest over HTTP;
//! - `--big` big collections of `--big-resources` resources, each in a domain of its own;
//! - `--schedules` interval schedules firing every minute;
//! - `--billing` billing syncs (`demo-billing`, two months each);
//!
//! and meanwhile: SIGKILLs a worker, restarts every worker one by one with SIGTERM (a rolling
//! restart), SIGKILLs the leading scheduler, and restarts RabbitMQ (`rabbitmqctl stop_app &&
//! start_app`, or `GLEANER_FAULT_RESTART_RABBITMQ`).
//!
//! Then it waits for every job to end and checks: every accepted job (HTTP 202 or queue reply)
//! is terminal, SUCCESS or FAILURE with a reason; every collection's counts are exact, and so
//! are the resources and cost rows stored; no schedule fire has two jobs; no message is left in
//! a queue, unacknowledged, or dead-lettered without a reason. It prints jobs per second, job
//! latency percentiles, the queue depth over time and each process's peak RSS, and exits 1 if a
//! check failed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt as _;
use gleaner_common::broker::{COLLECT_REQUEST, Names};
use gleaner_common::config::Settings;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use tokio::process::Child;

use crate::{Component, Services, authorized, free_port, isolated, post, spawn};

#[derive(Debug, clap::Args)]
pub(crate) struct FleetArgs {
    #[command(flatten)]
    services: Services,
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 2)]
    schedulers: usize,
    /// Small collections in all (10 resources each).
    #[arg(long, default_value_t = 2_000)]
    small: usize,
    /// Of those, the ones asked through the request queue.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Big collections, each of `--big-resources` in a domain of its own.
    #[arg(long, default_value_t = 4)]
    big: usize,
    #[arg(long, default_value_t = 200_000)]
    big_resources: u64,
    /// Schedules firing every minute.
    #[arg(long, default_value_t = 100)]
    schedules: usize,
    /// Billing syncs (two months each).
    #[arg(long, default_value_t = 4)]
    billing: usize,
    /// Run the load without killing or restarting anything.
    #[arg(long)]
    no_faults: bool,
    /// Every fault but the restart of RabbitMQ (which disturbs other users of the broker).
    #[arg(long)]
    no_broker_restart: bool,
    /// How long to wait for the last jobs after the load, in seconds.
    #[arg(long, default_value_t = 600)]
    drain_seconds: u64,
}

/// Small collectors the small collections and the schedules spread over.
const SMALL_COLLECTORS: usize = 20;
/// Resources of each small collector (one account).
const SMALL_RESOURCES: u64 = 10;

pub(crate) async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    ensure!(
        args.workers > 0 && args.schedulers > 0,
        "at least one worker and one scheduler"
    );
    ensure!(
        args.requests <= args.small,
        "--requests is a part of --small"
    );
    let (name, settings) = isolated(&args.services.database_url, &args.services.amqp_url)?;
    let logs = std::env::temp_dir().join(format!("gleaner-fleet-{name}"));
    std::fs::create_dir_all(&logs)?;
    let result = run(&args, &settings, &logs).await;
    if let Err(e) = gleaner::app::remove_isolated(&settings, &name).await {
        eprintln!("cleaning up `{name}`: {e:#}");
    }
    match &result {
        Ok(true) => {
            std::fs::remove_dir_all(&logs).ok();
        }
        _ => eprintln!("the processes' logs are kept in {}", logs.display()),
    }
    if !result? {
        bail!("a check failed (see above)");
    }
    Ok(())
}

/// One process of the fleet, restarted in the same slot.
struct Proc {
    role: Component,
    slot: usize,
    child: Option<Child>,
}

/// The fleet's processes, and the peak RSS each slot reached over its lives.
struct Fleet {
    settings: Settings,
    port: u16,
    logs: PathBuf,
    procs: Vec<Proc>,
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
}

fn role_name(role: Component) -> &'static str {
    match role {
        Component::Api => "api",
        Component::Worker => "worker",
        Component::Scheduler => "scheduler",
        Component::Standalone => "standalone",
    }
}

impl Fleet {
    fn start(&mut self, role: Component, slot: usize) -> anyhow::Result<()> {
        let label = format!("{}-{slot}", role_name(role));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{label}.log")))?;
        let mut cmd = spawn(role, &self.settings, self.port)?;
        cmd.env("GLEANER_WORKER__METRICS_LISTEN", "off")
            .env("GLEANER_WORKER__NAME", &label)
            .env("GLEANER_LOG__FORMAT", "text")
            .env("RUST_LOG", "warn,gleaner_scheduler=info")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd.spawn().with_context(|| format!("starting {label}"))?;
        match self
            .procs
            .iter_mut()
            .find(|p| p.role == role && p.slot == slot)
        {
            Some(p) => p.child = Some(child),
            None => self.procs.push(Proc {
                role,
                slot,
                child: Some(child),
            }),
        }
        Ok(())
    }

    /// Sends `signal` and waits (at most `wait`) for the process to exit.
    async fn signal(&mut self, role: Component, slot: usize, signal: &str, wait: Duration) {
        let Some(p) = self
            .procs
            .iter_mut()
            .find(|p| p.role == role && p.slot == slot)
        else {
            return;
        };
        let Some(mut child) = p.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .ok();
        }
        if tokio::time::timeout(wait, child.wait()).await.is_err() {
            eprintln!(
                "  {}-{slot} did not exit within {wait:?} of {signal}; killing it",
                role_name(role)
            );
            child.start_kill().ok();
            child.wait().await.ok();
        }
    }

    /// Samples every live process's peak RSS into `peaks`.
    fn sample_rss(&self) {
        let mut peaks = self.peaks.lock().expect("not poisoned");
        for p in &self.procs {
            if let Some(pid) = p.child.as_ref().and_then(Child::id)
                && let Ok(kib) = crate::peak_rss_kib(pid)
            {
                let e = peaks
                    .entry(format!("{}-{}", role_name(p.role), p.slot))
                    .or_default();
                *e = (*e).max(kib);
            }
        }
    }

    async fn stop_all(&mut self) {
        let live: Vec<(Component, usize)> = self.procs.iter().map(|p| (p.role, p.slot)).collect();
        for (role, slot) in live {
            self.signal(role, slot, "-TERM", Duration::from_secs(60))
                .await;
        }
    }

    /// The scheduler slot that says it leads last, among the live ones.
    fn leading_scheduler(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for p in self
            .procs
            .iter()
            .filter(|p| p.role == Component::Scheduler && p.child.is_some())
        {
            let log = std::fs::read_to_string(self.logs.join(format!("scheduler-{}.log", p.slot)))
                .unwrap_or_default();
            let claims = log.matches("this scheduler is the leader").count();
            let lost = log.matches("lost its leader connection").count();
            if claims > lost {
                let at = log.rfind("this scheduler is the leader").unwrap_or(0);
                if best.is_none_or(|(_, b)| at > b) {
                    best = Some((p.slot, at));
                }
            }
        }
        best.map(|(s, _)| s)
    }
}

/// What the load was told: every job accepted, by what asked for it.
#[derive(Default)]
struct Accepted {
    /// job id → what it is ("small", "big", "billing").
    jobs: HashMap<String, &'static str>,
    /// request id → job id, from the queue's replies.
    replies: HashMap<String, String>,
    /// Requests refused (not expected: every request is valid).
    refused: Vec<String>,
}

async fn run(
    args: &FleetArgs,
    settings: &Settings,
    logs: &std::path::Path,
) -> anyhow::Result<bool> {
    let db = gleaner::app::database(settings, true).await?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut fleet = Fleet {
        settings: settings.clone(),
        port,
        logs: logs.to_owned(),
        procs: Vec::new(),
        peaks: Arc::default(),
    };
    fleet.start(Component::Api, 0)?;
    for i in 0..args.workers {
        fleet.start(Component::Worker, i)?;
    }
    for i in 0..args.schedulers {
        fleet.start(Component::Scheduler, i)?;
    }
    let admin = gleaner_common::store::api_key::create_admin_key(
        &db,
        gleaner_common::id::DomainId::DEFAULT,
    )
    .await?;
    let http = authorized(admin.expose())?;
    wait_ready(&http, &base).await?;
    println!(
        "fleet: 1 api, {} workers, {} schedulers as processes; load for {} s: {} small collections ({} through the request queue), {} big of {} resources, {} schedules every minute, {} billing syncs{}",
        args.workers,
        args.schedulers,
        args.seconds,
        args.small,
        args.requests,
        args.big,
        args.big_resources,
        args.schedules,
        args.billing,
        if args.no_faults { "; no faults" } else { "" }
    );

    // The estate: one demo account and the small collectors in the default domain, with the
    // billing collector over the same account; each big collection in a domain of its own.
    let project = post(&http, &base, "/v1/projects", json!({"name": "fleet"})).await?;
    post(&http, &base, "/v1/service-accounts", json!({"name": "small", "provider": "demo", "project_id": project["id"], "credentials": {}})).await?;
    let mut small = Vec::new();
    for i in 0..SMALL_COLLECTORS {
        let c = post(&http, &base, "/v1/collectors", json!({"name": format!("small-{i}"), "plugin_id": "demo", "options": {"resources": SMALL_RESOURCES, "seed": i}})).await?;
        small.push((
            c["id"].as_str().context("id")?.to_owned(),
            format!("small-{i}"),
        ));
    }
    let billing = post(
        &http,
        &base,
        "/v1/collectors",
        json!({"name": "billing", "plugin_id": "demo-billing", "options": {}}),
    )
    .await?;
    let billing = billing["id"].as_str().context("id")?.to_owned();
    let mut schedules = Vec::new();
    for i in 0..args.schedules {
        let (collector, _) = &small[i % SMALL_COLLECTORS];
        let s = post(
            &http,
            &base,
            &format!("/v1/collectors/{collector}/schedules"),
            json!({"name": format!("every-minute-{i}"), "timezone": "UTC", "every_minutes": 1}),
        )
        .await?;
        schedules.push(s["id"].as_str().context("id")?.to_owned());
    }
    let mut big = Vec::new();
    for i in 0..args.big {
        let name = gleaner_common::model::Name::parse("name", &format!("fleet-big-{i}"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (_, key) = gleaner_common::store::api_key::create_domain(&db, &name).await?;
        let client = authorized(key.expose())?;
        let p = post(&client, &base, "/v1/projects", json!({"name": "big"})).await?;
        post(
            &client,
            &base,
            "/v1/service-accounts",
            json!({"name": "big", "provider": "demo", "project_id": p["id"], "credentials": {}}),
        )
        .await?;
        let c = post(&client, &base, "/v1/collectors", json!({"name": "big", "plugin_id": "demo", "options": {"resources": args.big_resources, "seed": 100 + i}})).await?;
        big.push((client, c["id"].as_str().context("id")?.to_owned()));
    }

    let accepted = Arc::new(Mutex::new(Accepted::default()));
    let window = Duration::from_secs(args.seconds);
    let started = Instant::now();
    // Load until 80% of the window, so the last jobs end within it.
    let spread = window.mul_f64(0.8);

    let http_small = {
        let (http, base, small, accepted) =
            (http.clone(), base.clone(), small.clone(), accepted.clone());
        let n = args.small - args.requests;
        tokio::spawn(async move {
            for i in 0..n {
                pace(started, spread, i, n).await;
                let (collector, _) = &small[i % SMALL_COLLECTORS];
                ask(&http, &base, collector, "small", &accepted).await;
            }
        })
    };
    let queued = {
        let (amqp, prefix, key, small, accepted) = (
            settings.amqp_url.clone(),
            settings.amqp.prefix.clone(),
            admin.expose().to_owned(),
            small.clone(),
            accepted.clone(),
        );
        let n = args.requests;
        tokio::spawn(async move {
            integration(&amqp, &prefix, &key, &small, n, started, spread, &accepted).await
        })
    };
    let bigs = {
        let (base, accepted, big) = (
            base.clone(),
            accepted.clone(),
            big.iter()
                .map(|(c, id)| (c.clone(), id.clone()))
                .collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            // Under way when a worker is killed at 15%: a big task is cut mid-stream and runs
            // again once its lease expires.
            tokio::time::sleep_until((started + window.mul_f64(0.12)).into()).await;
            for (client, collector) in big {
                ask(&client, &base, &collector, "big", &accepted).await;
            }
        })
    };
    let syncs = {
        let (http, base, accepted, billing, n) = (
            http.clone(),
            base.clone(),
            accepted.clone(),
            billing.clone(),
            args.billing,
        );
        tokio::spawn(async move {
            for i in 0..n {
                pace(started, spread, i, n).await;
                ask(&http, &base, &billing, "billing", &accepted).await;
            }
        })
    };

    // Faults, and samples of RSS and queue depth, until the window ends.
    let names = Names::new(settings.amqp.prefix.clone());
    let mut depths: Vec<(u64, u32, u32)> = Vec::new();
    let mut faults: Vec<(f64, &str)> = if args.no_faults {
        Vec::new()
    } else {
        let mut f = vec![
            (0.15, "sigkill-worker"),
            (0.35, "rolling-restart"),
            (0.55, "kill-leading-scheduler"),
        ];
        if !args.no_broker_restart {
            f.push((0.70, "restart-rabbitmq"));
        }
        f
    };
    faults.reverse();
    let mut paused = false;
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    while started.elapsed() < window {
        if last_sample.elapsed() >= Duration::from_secs(5) {
            fleet.sample_rss();
            let (work, requests) = depth(&settings.amqp_url, &names).await;
            depths.push((started.elapsed().as_secs(), work, requests));
            last_sample = Instant::now();
        }
        if let Some((at, fault)) = faults.last().copied()
            && started.elapsed() >= window.mul_f64(at)
        {
            faults.pop();
            inject(&mut fleet, fault, args.workers).await?;
        }
        if !paused && started.elapsed() >= window.mul_f64(0.9) {
            for s in &schedules {
                http.patch(format!("{base}/v1/schedules/{s}"))
                    .json(&json!({"state": "PAUSED"}))
                    .send()
                    .await
                    .ok();
            }
            paused = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for s in &schedules {
        http.patch(format!("{base}/v1/schedules/{s}"))
            .json(&json!({"state": "PAUSED"}))
            .send()
            .await
            .ok();
    }
    http_small.await?;
    bigs.await?;
    syncs.await?;
    queued.await??;
    let load_took = started.elapsed();

    // Drain: every job ends.
    let drain_started = Instant::now();
    loop {
        fleet.sample_rss();
        let open = scalar(
            &db,
            "SELECT count(*) FROM jobs WHERE status IN ('QUEUED', 'IN_PROGRESS')",
        )
        .await?;
        if open == 0 {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(args.drain_seconds) {
            println!(
                "  {open} jobs still open after {} s of draining",
                args.drain_seconds
            );
            break;
        }
        if depths
            .last()
            .is_none_or(|(t, _, _)| started.elapsed().as_secs() >= t + 5)
        {
            let (work, requests) = depth(&settings.amqp_url, &names).await;
            depths.push((started.elapsed().as_secs(), work, requests));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_done = started.elapsed();
    // The outbox relays publish what the last commits queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.sample_rss();
    let ok = verify_and_report(
        args, &db, &accepted, &names, settings, &depths, &fleet, load_took, all_done,
    )
    .await?;
    fleet.stop_all().await;
    db.close().await.ok();
    Ok(ok)
}

/// Asks for a collection of `collector` over HTTP and records its job as `what`.
async fn ask(
    http: &reqwest::Client,
    base: &str,
    collector: &str,
    what: &'static str,
    accepted: &Mutex<Accepted>,
) {
    let path = format!("/v1/collectors/{collector}/collect");
    match post_retrying(http, base, &path, json!({})).await {
        Ok(body) => {
            if let Some(job) = body["job_id"].as_str() {
                accepted
                    .lock()
                    .expect("not poisoned")
                    .jobs
                    .insert(job.to_owned(), what);
            }
        }
        Err(e) => eprintln!("  a {what} collect failed: {e:#}"),
    }
}

/// Sleeps until the `i`th of `n` events spread evenly over `spread` from `started`.
async fn pace(started: Instant, spread: Duration, i: usize, n: usize) {
    #[allow(clippy::cast_precision_loss)]
    let at = started + spread.mul_f64(i as f64 / n.max(1) as f64);
    tokio::time::sleep_until(at.into()).await;
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the API was not ready within 60 s")
}

/// `post`, retried while the API answers 429 or 5xx (a client's retry).
async fn post_retrying(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let mut last = None;
    for attempt in 0..30u32 {
        match http.post(format!("{base}{path}")).json(&body).send().await {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                last = Some(format!("{}", r.status()));
            }
            Ok(r) => bail!(
                "POST {path} → {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
    }
    bail!("POST {path} kept failing: {}", last.unwrap_or_default())
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await?
        .context("a row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// Ready messages in the work queues, and in the request queue (0 when unreachable).
async fn depth(amqp_url: &str, names: &Names) -> (u32, u32) {
    let Ok(conn) = gleaner_common::broker::connect(amqp_url, "fleet-depth").await else {
        return (0, 0);
    };
    let mut work = 0;
    let mut requests = 0;
    if let Ok(ch) = conn.create_channel().await {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for kind in gleaner_common::model::JobKind::ALL {
            if let Ok(q) = ch
                .queue_declare(names.queue(kind).into(), passive, FieldTable::default())
                .await
            {
                work += q.message_count();
            }
        }
        if let Ok(q) = ch
            .queue_declare(
                names.collect_requests_queue().into(),
                passive,
                FieldTable::default(),
            )
            .await
        {
            requests = q.message_count();
        }
        ch.close(200, "done".into()).await.ok();
    }
    conn.close(200, "done".into()).await.ok();
    (work, requests)
}

async fn inject(fleet: &mut Fleet, fault: &str, workers: usize) -> anyhow::Result<()> {
    let at = Instant::now();
    match fault {
        "sigkill-worker" => {
            println!("  fault: SIGKILL worker-0");
            fleet
                .signal(Component::Worker, 0, "-KILL", Duration::from_secs(5))
                .await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            fleet.start(Component::Worker, 0)?;
        }
        "rolling-restart" => {
            println!("  fault: rolling restart of {workers} workers (SIGTERM, wait, start)");
            for i in 0..workers {
                fleet
                    .signal(Component::Worker, i, "-TERM", Duration::from_secs(60))
                    .await;
                fleet.start(Component::Worker, i)?;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        "kill-leading-scheduler" => {
            let leader = fleet.leading_scheduler().unwrap_or(0);
            println!("  fault: SIGKILL the leading scheduler (scheduler-{leader})");
            fleet
                .signal(
                    Component::Scheduler,
                    leader,
                    "-KILL",
                    Duration::from_secs(5),
                )
                .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            fleet.start(Component::Scheduler, leader)?;
        }
        "restart-rabbitmq" => {
            let command = std::env::var("GLEANER_FAULT_RESTART_RABBITMQ").unwrap_or_else(|_| {
                "rabbitmqctl stop_app && rabbitmqctl start_app && rabbitmqctl await_startup".into()
            });
            println!("  fault: restarting RabbitMQ ({command})");
            let status = tokio::process::Command::new("sh")
                .args(["-c", &command])
                .stdout(Stdio::null())
                .status()
                .await?;
            ensure!(status.success(), "`{command}` failed: {status}");
        }
        other => bail!("unknown fault {other}"),
    }
    println!("    done in {:.1} s", at.elapsed().as_secs_f64());
    Ok(())
}

/// Publishes `n` requests to collect through the request queue, paced like the HTTP ones, and
/// collects their replies; a request whose reply was lost (the broker restarted) is sent again
/// with the same `request_id`, which names the same job.
#[allow(clippy::too_many_arguments)]
async fn integration(
    amqp_url: &str,
    prefix: &str,
    key: &str,
    small: &[(String, String)],
    n: usize,
    started: Instant,
    spread: Duration,
    accepted: &Mutex<Accepted>,
) -> anyhow::Result<()> {
    let names = Names::new(prefix.to_owned());
    let replies: Arc<Mutex<HashMap<String, (i64, Value)>>> = Arc::default();
    let mut link: Option<(Connection, Channel, String)> = None;
    let body = |i: usize| json!({"request_id": format!("fleet-{i}"), "collector_name": small[i % SMALL_COLLECTORS].1});
    let mut pending: Vec<usize> = Vec::new();
    for i in 0..n {
        pace(started, spread, i, n).await;
        pending.push(i);
        pending = publish_all(amqp_url, &names, key, &mut link, &replies, pending, &body).await;
    }
    // Whatever has no reply after the load (lost with a connection) is asked again.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let missing: Vec<usize> = {
            let got = replies.lock().expect("not poisoned");
            (0..n)
                .filter(|i| !got.contains_key(&format!("fleet-{i}")))
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let still: Vec<usize> = {
            let got = replies.lock().expect("not poisoned");
            missing
                .into_iter()
                .filter(|i| !got.contains_key(&format!("fleet-{i}")))
                .collect()
        };
        if !still.is_empty() {
            println!(
                "  asking again for {} requests without a reply",
                still.len()
            );
            let left = publish_all(amqp_url, &names, key, &mut link, &replies, still, &body).await;
            if !left.is_empty() {
                link = None;
            }
        }
    }
    let got = replies.lock().expect("not poisoned");
    let mut acc = accepted.lock().expect("not poisoned");
    for (request, (status, reply)) in got.iter() {
        match (status, reply["job_id"].as_str()) {
            (202, Some(job)) => {
                acc.replies.insert(request.clone(), job.to_owned());
                acc.jobs.insert(job.to_owned(), "small");
            }
            _ => acc.refused.push(format!("{request}: {status} {reply}")),
        }
    }
    Ok(())
}

/// Publishes the requests `todo` (reconnecting if need be); those not published.
async fn publish_all(
    amqp_url: &str,
    names: &Names,
    key: &str,
    link: &mut Option<(Connection, Channel, String)>,
    replies: &Arc<Mutex<HashMap<String, (i64, Value)>>>,
    todo: Vec<usize>,
    body: &(dyn Fn(usize) -> Value + Sync),
) -> Vec<usize> {
    let mut left = Vec::new();
    for i in todo {
        if link
            .as_ref()
            .is_none_or(|(c, _, _)| !c.status().connected())
        {
            *link = open_link(amqp_url, replies.clone()).await.ok();
        }
        let Some((_, ch, reply_to)) = link.as_ref() else {
            left.push(i);
            continue;
        };
        let mut headers = FieldTable::default();
        headers.insert(
            "authorization".into(),
            AMQPValue::LongString(format!("Bearer {key}").into()),
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_reply_to(reply_to.clone().into())
            .with_headers(headers);
        let sent = ch
            .basic_publish(
                names.requests_exchange().into(),
                COLLECT_REQUEST.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body(i).to_string().as_bytes(),
                props,
            )
            .await;
        let confirmed = match sent {
            Ok(c) => c.await.is_ok(),
            Err(_) => false,
        };
        if !confirmed {
            *link = None;
            left.push(i);
        }
    }
    left
}

/// A connection with a confirm channel and an exclusive reply queue whose replies go into
/// `replies`.
async fn open_link(
    amqp_url: &str,
    replies: Arc<Mutex<HashMap<String, (i64, Value)>>>,
) -> anyhow::Result<(Connection, Channel, String)> {
    let conn = gleaner_common::broker::connect(amqp_url, "fleet-integration").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let reply_to = q.name().to_string();
    let mut consumer = ch
        .basic_consume(
            reply_to.clone().into(),
            "fleet".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let status = match d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("status").cloned())
            {
                Some(AMQPValue::LongInt(s)) => i64::from(s),
                _ => 0,
            };
            if let Ok(v) = serde_json::from_slice::<Value>(&d.data)
                && let Some(id) = v["request_id"].as_str()
            {
                replies
                    .lock()
                    .expect("not poisoned")
                    .insert(id.to_owned(), (status, v));
            }
        }
    });
    Ok((conn, ch, reply_to))
}

/// The fires by outcome: a fire is skipped while its collector has a job queued or running.
async fn fire_outcomes(db: &DatabaseConnection) -> anyhow::Result<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT outcome, count(*) FROM schedule_fires GROUP BY 1 ORDER BY 1".to_owned(),
        ))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let (outcome, n): (String, i64) = (r.try_get_by_index(0)?, r.try_get_by_index(1)?);
        out.push(format!("{n} {outcome}"));
    }
    Ok(out.join(", "))
}

/// One row of numbers from the store.
async fn row(db: &DatabaseConnection, sql: &str) -> anyhow::Result<sea_orm::QueryResult> {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await?
        .context("a row")
}

#[allow(
    clippy::too_many_arguments,
    clippy::too_many_lines,
    clippy::cast_precision_loss
)]
async fn verify_and_report(
    args: &FleetArgs,
    db: &DatabaseConnection,
    accepted: &Mutex<Accepted>,
    names: &Names,
    settings: &Settings,
    depths: &[(u64, u32, u32)],
    fleet: &Fleet,
    load_took: Duration,
    all_done: Duration,
) -> anyhow::Result<bool> {
    let mut ok = true;
    let mut check = |pass: bool, what: String| {
        println!("  [{}] {what}", if pass { "ok" } else { "FAILED" });
        ok &= pass;
    };
    let acc = std::mem::take(&mut *accepted.lock().expect("not poisoned"));
    // Every accepted job is in the store and terminal.
    let mut missing = 0;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures_without_reason = 0;
    for job in acc.jobs.keys() {
        let r = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status, error FROM jobs WHERE id = $1::uuid",
                [job.clone().into()],
            ))
            .await?;
        match r {
            None => missing += 1,
            Some(r) => {
                let status: String = r.try_get_by_index(0)?;
                let error: Option<String> = r.try_get_by_index(1)?;
                if status == "FAILURE" && error.as_deref().is_none_or(str::is_empty) {
                    failures_without_reason += 1;
                }
                *by_status.entry(status).or_default() += 1;
            }
        }
    }
    let expected_accepted = args.small + args.big + args.billing;
    check(
        acc.jobs.len() == expected_accepted && acc.refused.is_empty(),
        format!(
            "{} of {expected_accepted} collections accepted ({} through the queue, {} refused)",
            acc.jobs.len(),
            acc.replies.len(),
            acc.refused.len()
        ),
    );
    for r in acc.refused.iter().take(5) {
        println!("      refused: {r}");
    }
    check(
        missing == 0,
        format!("every accepted job is stored ({missing} missing)"),
    );
    let terminal = by_status
        .iter()
        .filter(|(s, _)| ["SUCCESS", "FAILURE", "CANCELED"].contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum::<usize>();
    check(
        terminal == acc.jobs.len(),
        format!("every accepted job ended: {by_status:?}"),
    );
    check(
        by_status.get("SUCCESS").copied().unwrap_or(0) == acc.jobs.len(),
        format!(
            "every accepted job succeeded ({} FAILURE, {failures_without_reason} of them without a reason)",
            by_status.get("FAILURE").copied().unwrap_or(0)
        ),
    );
    let open = scalar(
        db,
        "SELECT count(*) FROM jobs WHERE status IN ('QUEUED','IN_PROGRESS')",
    )
    .await?;
    let scheduled = scalar(db, "SELECT count(*) FROM jobs WHERE trigger = 'schedule'").await?;
    let scheduled_ok = scalar(
        db,
        "SELECT count(*) FROM jobs WHERE trigger = 'schedule' AND status = 'SUCCESS'",
    )
    .await?;
    check(
        open == 0 && scheduled == scheduled_ok,
        format!(
            "every scheduled job ended SUCCESS ({scheduled_ok} of {scheduled}); {open} jobs open in all"
        ),
    );
    let doubled = scalar(db, "SELECT count(*) FROM (SELECT schedule_id, fire_time FROM jobs WHERE schedule_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) d").await?;
    let fires = scalar(db, "SELECT count(*) FROM schedule_fires").await?;
    let fire_outcomes = fire_outcomes(db).await?;
    check(
        doubled == 0,
        format!("no fire has two jobs ({fires} fires: {fire_outcomes}; {doubled} doubled)"),
    );
    // Counts: each inventory task saw exactly its collector's resources.
    let wrong_small = scalar(db, &format!("SELECT count(*) FROM job_tasks t JOIN jobs j ON j.id = t.job_id JOIN collectors c ON c.id = j.collector_id WHERE t.status = 'SUCCESS' AND c.name LIKE 'small-%' AND t.created + t.updated + t.unchanged <> {SMALL_RESOURCES}")).await?;
    let wrong_big = scalar(db, &format!("SELECT count(*) FROM job_tasks t JOIN jobs j ON j.id = t.job_id JOIN collectors c ON c.id = j.collector_id WHERE t.status = 'SUCCESS' AND c.name = 'big' AND t.created + t.updated + t.unchanged <> {}", args.big_resources)).await?;
    check(
        wrong_small == 0 && wrong_big == 0,
        format!(
            "every collection's counts are exact ({wrong_small} small and {wrong_big} big tasks off)"
        ),
    );
    let small_resources = scalar(db, "SELECT count(*) FROM resources r JOIN domains d ON d.id = r.domain_id WHERE d.name = 'default' AND r.state = 'ACTIVE'").await?;
    // The demo plugin names resources by account and index: the small collectors report the
    // same ten resources of their one account, merged by priority.
    let expected_small = i64::try_from(SMALL_RESOURCES)?;
    let big_resources = scalar(db, "SELECT count(*) FROM resources r JOIN domains d ON d.id = r.domain_id WHERE d.name LIKE 'fleet-big-%' AND r.state = 'ACTIVE'").await?;
    let expected_big = i64::try_from(args.big_resources * args.big as u64)?;
    check(
        small_resources == expected_small && big_resources == expected_big,
        format!(
            "resources stored: {small_resources} small of {expected_small}, {big_resources} big of {expected_big}"
        ),
    );
    let deleted = scalar(db, "SELECT count(*) FROM resources WHERE state <> 'ACTIVE'").await?;
    check(deleted == 0, format!("nothing marked deleted ({deleted})"));
    if args.billing > 0 {
        // demo-billing: one record per day × 4 services × 2 regions, over the previous and the
        // current month (to today).
        let today = chrono::Utc::now().date_naive();
        let first = gleaner_common::billing::Month::of(today).first_day();
        let previous = gleaner_common::billing::Month::of(first - chrono::Days::new(1)).first_day();
        let days = (today - previous).num_days() + 1;
        let costs = scalar(db, "SELECT count(*) FROM costs").await?;
        check(
            costs == days * 8,
            format!(
                "cost rows exact after {} syncs: {costs} of {}",
                args.billing,
                days * 8
            ),
        );
    }
    let outbox = scalar(db, "SELECT count(*) FROM outbox").await?;
    check(outbox == 0, format!("the outbox is empty ({outbox})"));
    // Queues: nothing ready or unacknowledged; dead letters only with a reason.
    let (queued, unacked) = queue_totals(&settings.amqp.prefix);
    check(
        queued == Some(0) && unacked == Some(0),
        format!(
            "no message left in a queue: ready {queued:?}, unacknowledged {unacked:?} (rabbitmqctl list_queues)"
        ),
    );
    let (with_reason, without) = dead_letters(&settings.amqp_url, names).await?;
    check(
        without == 0,
        format!("dead letters: {with_reason} with a reason, {without} without"),
    );

    // The report.
    let jobs_total = scalar(db, "SELECT count(*) FROM jobs").await?;
    println!(
        "\nreport ({:.0} s of load, all jobs ended at {:.0} s):",
        load_took.as_secs_f64(),
        all_done.as_secs_f64()
    );
    println!(
        "  jobs: {jobs_total} ({} asked, {scheduled} scheduled) = {:.2} jobs/s over the run",
        acc.jobs.len(),
        jobs_total as f64 / all_done.as_secs_f64()
    );
    let tasks = scalar(db, "SELECT count(*) FROM job_tasks").await?;
    let retried = scalar(db, "SELECT count(*) FROM job_tasks WHERE attempt > 1").await?;
    println!("  tasks: {tasks}, of which {retried} ran more than once (faults)");
    println!("  job latency (accepted → ended), seconds:");
    for (label, filter) in [
        (
            "small, asked",
            "c.name LIKE 'small-%' AND j.trigger = 'manual'",
        ),
        ("small, scheduled", "j.trigger = 'schedule'"),
        ("big", "c.name = 'big'"),
        ("billing", "c.name = 'billing'"),
    ] {
        let r = row(db, &format!("SELECT count(*), coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.finished_at - j.created_at)), 0)::float8, coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM j.finished_at - j.created_at)), 0)::float8, coalesce(max(extract(epoch FROM j.finished_at - j.created_at)), 0)::float8 FROM jobs j JOIN collectors c ON c.id = j.collector_id WHERE j.finished_at IS NOT NULL AND {filter}")).await?;
        let n: i64 = r.try_get_by_index(0)?;
        let (p50, p99, max): (f64, f64, f64) = (
            r.try_get_by_index(1)?,
            r.try_get_by_index(2)?,
            r.try_get_by_index(3)?,
        );
        println!("    {label:<18} n={n:<6} p50 {p50:>7.2}  p99 {p99:>7.2}  max {max:>7.2}");
    }
    println!("  queue depth (ready messages; work queues / request queue), every 30 s:");
    let mut line = String::new();
    for (t, work, requests) in depths.iter().filter(|(t, _, _)| t % 30 < 5) {
        line.push_str(&format!(" {t}s:{work}/{requests}"));
    }
    println!("   {line}");
    let max_depth = depths.iter().map(|(_, w, _)| *w).max().unwrap_or(0);
    println!("    deepest: {max_depth} ready work messages");
    println!("  storage:");
    for table in ["resources", "resource_changes", "jobs", "job_tasks"] {
        crate::print_table_bytes(db, table).await?;
    }
    println!("  peak RSS per process (MiB, over all its restarts):");
    for (label, kib) in fleet.peaks.lock().expect("not poisoned").iter() {
        println!("    {label:<12} {:>7.1}", *kib as f64 / 1024.0);
    }
    Ok(ok)
}

/// Ready and unacknowledged messages in every queue of the run, from `rabbitmqctl` (`None`
/// when it cannot tell).
fn queue_totals(prefix: &str) -> (Option<u64>, Option<u64>) {
    let Ok(out) = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
    else {
        return (None, None);
    };
    if !out.status.success() {
        return (None, None);
    }
    let dead = format!("{prefix}.dead-letter");
    let mut ready = 0;
    let mut unacked = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 3 && cols[0].starts_with(&format!("{prefix}.")) && cols[0] != dead {
            ready += cols[1].parse::<u64>().unwrap_or(0);
            unacked += cols[2].parse::<u64>().unwrap_or(0);
        }
    }
    (Some(ready), Some(unacked))
}

/// Dead letters of the run: (with a reason, without).
async fn dead_letters(amqp_url: &str, names: &Names) -> anyhow::Result<(usize, usize)> {
    let conn = gleaner_common::broker::connect(amqp_url, "fleet-dead").await?;
    let ch = conn.create_channel().await?;
    let (mut with, mut without) = (0, 0);
    while let Some(m) = ch
        .basic_get(
            names.dead_letter_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await?
    {
        let reason = m.delivery.properties.headers().as_ref().and_then(|h| {
            h.inner()
                .get(gleaner_common::broker::REASON_HEADER)
                .cloned()
        });
        if reason.is_some() {
            with += 1;
            println!("      dead letter: {reason:?}");
        } else {
            without += 1;
        }
    }
    conn.close(200, "done".into()).await.ok();
    Ok((with, without))
}
