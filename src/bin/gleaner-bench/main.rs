//! `gleaner-bench`: benchmarks against the local services, each printed beside a baseline
//! measured in the same run (the machine is shared and noisy, so absolute figures mean little).
//!
//! `ingest` runs the API and a worker as child processes (as in production, so the worker's
//! peak memory is its own), collects a demo estate through HTTP, RabbitMQ and PostgreSQL, and
//! compares the time from `collect` to job SUCCESS with a raw binary `COPY` of the same rows into
//! a table shaped like `resources`. With `--mode standalone` it runs `gleaner standalone` as
//! the child instead, and the baseline is a raw multi-row `INSERT` of the same rows, in one
//! transaction, into a same-shaped table of the same SQLite file.
//!
//! `focus` and `summary` measure billing: a FOCUS import beside a raw `COPY` of the same rows,
//! and the cost summary's latency over millions of cost rows (see `billing.rs`).
//!
//! `api` measures what API keys cost: the API's throughput with a key on every request,
//! beside the same requests with no key asked (see `api.rs`).
//!
//! `aws` measures the `aws` collector over a moto estate, beside a plain SDK loop listing the
//! same instances (see `aws.rs`).
//!
//! `tasks` measures the throughput of small tasks end to end: one job over `--tasks` demo
//! service accounts of one resource each, run by `--workers` worker processes, from `collect`
//! to job SUCCESS; beside it, `pgbench`'s built-in simple-update transaction (one UPDATE, one
//! SELECT, one INSERT) on the same PostgreSQL, with as many clients as the workers run tasks.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use gleaner::cmd;
use gleaner_common::config::Settings;
use gleaner_common::crypto::SecretKey;
use gleaner_common::id::{DomainId, JobId, ServiceAccountId, TaskId};
use gleaner_worker::plugin::Plugin as _;
use gleaner_worker::plugin::demo::Demo;
use gleaner_worker::plugin::{self, CollectRequest, Item, TaskInfo};
use gleaner_worker::sink::content_hash;
use gleaner_worker::sink::postgres::BinaryCopy;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::process::{Child, Command as Process};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod api;
mod aws;
mod billing;
mod cloudforet;
mod console;
mod fleet;
mod lists;
mod metrics;

#[derive(Debug, Parser)]
#[command(
    name = "gleaner-bench",
    about = "Benchmarks Gleaner against the local services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A demo collection end to end, beside a raw COPY of the same rows.
    Ingest(IngestArgs),
    /// The scheduler over many schedules: the lag of a burst of fires, and its idle cost.
    Schedules(SchedulesArgs),
    /// Small tasks (one resource each) end to end with several workers, beside pgbench.
    Tasks(TasksArgs),
    /// A FOCUS import through a billing job, beside a raw COPY of the same rows.
    Focus(billing::FocusArgs),
    /// The cost summary's latency over millions of cost rows.
    Summary(billing::SummaryArgs),
    /// The API's throughput with API keys, beside the same requests with no key asked.
    Api(api::ApiArgs),
    /// Resource pages and a collector's detail over 1,000,000 resources, alone and from 50
    /// clients while resources are written, beside the counts each request made before.
    Lists(lists::ListsArgs),
    /// The console's pages over 100,000 resources and 1,000 collectors: server time per page,
    /// beside the API reads each page makes.
    Console(console::ConsoleArgs),
    /// The `aws` collector over a moto estate, beside a plain SDK loop listing it.
    Aws(aws::AwsArgs),
    /// Ten million demo samples through a metrics job beside a raw COPY, then query latency.
    Metrics(metrics::MetricsArgs),
    /// A Cloudforet plugin's stream through the cloudforet runtime, beside a bare gRPC client.
    Cloudforet(cloudforet::CloudforetArgs),
    /// 1 API, 4 workers and 2 schedulers as processes under a mixed load for 10 minutes, with
    /// a worker killed, a rolling restart, the leading scheduler killed and RabbitMQ restarted;
    /// then checks that nothing was lost or doubled.
    Fleet(fleet::FleetArgs),
    /// Runs one component with settings from the environment (used by `ingest`).
    #[command(hide = true)]
    Serve { component: Component },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Component {
    Api,
    Worker,
    Scheduler,
    Standalone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// API and worker processes on PostgreSQL and RabbitMQ.
    Distributed,
    /// One `gleaner standalone` process on a SQLite file.
    Standalone,
}

/// Where a run's services are.
#[derive(Debug, clap::Args)]
pub struct Services {
    /// PostgreSQL database for the run; a fresh schema is created in it and dropped after.
    #[arg(
        long,
        env = "GLEANER_BENCH_DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/gleaner_bench"
    )]
    pub database_url: String,
    /// RabbitMQ; the run's exchanges and queues carry their own prefix and are deleted after.
    #[arg(
        long,
        env = "GLEANER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Which runtime to measure.
    #[arg(long, value_enum, default_value = "distributed")]
    mode: Mode,
    /// Resources in total, spread evenly over the service accounts.
    #[arg(long, default_value_t = 200_000)]
    resources: u64,
    /// Demo service accounts (one task each).
    #[arg(long, default_value_t = 2)]
    accounts: u64,
    /// Items per batch written by the worker (default: the worker's setting).
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    services: Services,
    /// Leave the schema and queues in place for inspection.
    #[arg(long)]
    keep: bool,
    /// Seconds of pgbench's simple-update (16 clients) after the run, the machine's figure of
    /// the moment; 0 skips it.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
}

#[derive(Debug, clap::Args)]
struct TasksArgs {
    /// Tasks of the job: one per demo service account, one resource each.
    #[arg(long, default_value_t = 5_000)]
    tasks: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Big tasks each worker runs at once (default: the worker's setting).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Tasks each worker runs at once in all, small ones included (default: the worker's
    /// setting).
    #[arg(long)]
    max_tasks: Option<usize>,
    /// Seconds pgbench runs.
    #[arg(long, default_value_t = 15)]
    pgbench_seconds: u64,
    #[command(flatten)]
    services: Services,
}

#[derive(Debug, clap::Args)]
struct SchedulesArgs {
    /// Enabled schedules in all: one per hour of the day for each of count/24 collectors, so
    /// every hour fires count/24 of them at once, on distinct collectors.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Seconds the idle scheduler is watched for its CPU use.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    #[arg(
        long,
        env = "GLEANER_BENCH_DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/gleaner_bench"
    )]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => {
            gleaner_common::telemetry::init_for_tests();
            ingest(args).await
        }
        Command::Schedules(args) => {
            gleaner_common::telemetry::init_for_tests();
            schedules(args).await
        }
        Command::Tasks(args) => {
            gleaner_common::telemetry::init_for_tests();
            tasks(args).await
        }
        Command::Focus(args) => {
            gleaner_common::telemetry::init_for_tests();
            billing::focus(args).await
        }
        Command::Summary(args) => {
            gleaner_common::telemetry::init_for_tests();
            billing::summary(args).await
        }
        Command::Api(args) => api::api(args).await,
        Command::Lists(args) => lists::lists(args).await,
        Command::Console(args) => console::console(args).await,
        Command::Aws(args) => {
            gleaner_common::telemetry::init_for_tests();
            aws::aws(args).await
        }
        Command::Metrics(args) => {
            gleaner_common::telemetry::init_for_tests();
            metrics::metrics(args).await
        }
        Command::Cloudforet(args) => {
            gleaner_common::telemetry::init_for_tests();
            cloudforet::cloudforet(args).await
        }
        Command::Fleet(args) => {
            gleaner_common::telemetry::init_for_tests();
            fleet::fleet(args).await
        }
        Command::Serve { component } => serve(component).await,
    }
}

/// This process's CPU time (user + system).
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

async fn schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    let collectors = (args.count / 24).max(1);
    let (name, settings) = fresh_schema(&args.database_url)?;
    let db = gleaner::app::database(&settings, true).await?;
    let result = measure_schedules(&args, &settings, &db, collectors).await;
    db.close().await.ok();
    drop_schema(&settings.database_url, &name).await?;
    result
}

/// Settings on a schema of its own in `database_url`, with a new credentials key; the
/// schema's name.
pub(crate) fn fresh_schema(database_url: &str) -> anyhow::Result<(String, Settings)> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let name = format!("bench_{now}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut settings = Settings {
        database_url: database_url.to_owned(),
        secret_key: Some(SecretKey::generate().to_hex()),
        ..Settings::default()
    };
    settings.database.schema = Some(name.clone());
    Ok((name, settings))
}

/// The PostgreSQL database of a run that serves the API in process.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchDatabase {
    /// PostgreSQL database for the run; a fresh schema is created in it and dropped after.
    #[arg(
        long,
        env = "GLEANER_BENCH_DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/gleaner_bench"
    )]
    database_url: String,
}

/// Runs `measure` with settings and a migrated connection on a fresh schema of `database`,
/// and drops the schema after. The API's rate limiter runs, as it does by default, but never
/// refuses: its cost is counted, its 429s would not be throughput.
pub(crate) async fn in_fresh_schema<F, Fut>(
    database: &BenchDatabase,
    tune: impl FnOnce(&mut Settings),
    measure: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Settings, sea_orm::DatabaseConnection) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (name, mut settings) = fresh_schema(&database.database_url)?;
    settings.api.rate_limit_per_second = 1_000_000;
    settings.api.rate_limit_burst = 1_000_000;
    tune(&mut settings);
    let db = gleaner::app::database(&settings, true).await?;
    let result = measure(settings.clone(), db.clone()).await;
    db.close().await.ok();
    drop_schema(&settings.database_url, &name).await?;
    result
}

/// The median time of `n` runs of `sql`, in milliseconds.
pub(crate) async fn median_ms(
    db: &sea_orm::DatabaseConnection,
    n: usize,
    sql: &str,
) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        db.execute_unprepared(sql).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[n / 2])
}

/// Drops a run's schema.
pub(crate) async fn drop_schema(database_url: &str, name: &str) -> anyhow::Result<()> {
    let admin = gleaner_common::db::connect(
        database_url,
        &gleaner_common::config::DatabaseSettings {
            max_connections: 1,
            schema: None,
        },
    )
    .await?;
    admin
        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
        .await?;
    Ok(())
}

async fn measure_schedules(
    args: &SchedulesArgs,
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
    collectors: u64,
) -> anyhow::Result<()> {
    let count = collectors * 24;
    let started = Instant::now();
    // Every collector gets 24 UTC schedules, one per hour; each starts at its next hour.
    db.execute_unprepared(&format!(
        "INSERT INTO collectors (id, domain_id, name, plugin_id, version, upgrade_mode, priority,
             options, tags, state)
         SELECT gen_random_uuid(), '{domain}', 'c' || i, 'demo', '1.0.0', 'AUTO', 10, '{{}}',
             '{{}}', 'ENABLED'
         FROM generate_series(1, {collectors}) i;
         INSERT INTO schedules (id, domain_id, collector_id, name, timezone, hours, state,
             next_fire_at)
         SELECT gen_random_uuid(), c.domain_id, c.id, 'h' || h, 'UTC', jsonb_build_array(h),
             'ENABLED',
             CASE WHEN date_trunc('day', now()) + h * interval '1 hour' > now()
                  THEN date_trunc('day', now()) + h * interval '1 hour'
                  ELSE date_trunc('day', now()) + (24 + h) * interval '1 hour' END
         FROM collectors c CROSS JOIN generate_series(0, 23) h;
         ANALYZE schedules; ANALYZE collectors;",
        domain = DomainId::DEFAULT
    ))
    .await?;
    println!(
        "schedules: {count} enabled schedules on {collectors} collectors (created in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let scheduler = gleaner::app::scheduler(settings, db.clone());

    // Idle: the run loop with nothing due; its CPU over the window, beside one full scan.
    let next = gleaner_common::store::schedule::next_due(db)
        .await?
        .context("a next fire")?;
    let until_next = (next - chrono::Utc::now()).to_std().unwrap_or_default();
    ensure!(
        until_next > Duration::from_secs(args.idle_seconds + 5),
        "the next fire is {until_next:?} away: run again after {next}"
    );
    let stop = CancellationToken::new();
    let idle = tokio::spawn(gleaner_scheduler::run(
        scheduler.clone(),
        name_of(settings),
        std::sync::Arc::new(gleaner_scheduler::SystemClock),
        gleaner_common::outbox::Signal::new(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, wall0) = (cpu_time()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (cpu, wall) = (cpu_time()? - cpu0, wall0.elapsed());
    stop.cancel();
    idle.await.ok();
    // What a scheduler that looked at every schedule each tick would read.
    let scan = Instant::now();
    let all = db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id, timezone, hours, next_fire_at FROM schedules WHERE state = 'ENABLED'",
        ))
        .await?;
    let scan = scan.elapsed();
    ensure!(all.len() as u64 == count, "read {} schedules", all.len());
    println!(
        "idle: {:.2}% of one core over {:.0} s (CPU time {} ms; one indexed query a second); reading every schedule once takes {} ms",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        wall.as_secs_f64(),
        cpu.as_millis(),
        scan.as_millis()
    );

    // Bursts: the next hours, when count/24 schedules fire at once, recorded in one lane and
    // in two, in turn; each burst's jobs are marked finished before the next, which would
    // otherwise skip them as overlapping.
    for (n, lanes) in [1u32, 2, 1, 2].into_iter().enumerate() {
        let mut tuned = settings.clone();
        tuned.scheduler.lanes = lanes;
        let scheduler = gleaner::app::scheduler(&tuned, db.clone());
        let fire = next + chrono::Duration::hours(i64::try_from(n)?);
        db.execute_unprepared("UPDATE jobs SET status = 'SUCCESS' WHERE status = 'QUEUED'")
            .await?;
        burst(db, &scheduler, fire, lanes).await?;
    }
    Ok(())
}

/// Runs the pass at `fire` and prints its lag from the fire instant to each job's row, beside
/// the same number of job rows written in one multi-row INSERT.
async fn burst(
    db: &sea_orm::DatabaseConnection,
    scheduler: &gleaner_scheduler::Scheduler,
    fire: chrono::DateTime<chrono::Utc>,
    lanes: u32,
) -> anyhow::Result<()> {
    let t0 = chrono::Utc::now();
    let pass = Instant::now();
    let fired = scheduler.tick(fire).await?;
    let pass = pass.elapsed();
    let lags: Vec<f64> = db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT created_at FROM jobs WHERE created_at >= '{}' ORDER BY created_at",
                t0.to_rfc3339()
            ),
        ))
        .await?
        .iter()
        .map(|r| {
            let t: chrono::DateTime<chrono::FixedOffset> = r.try_get_by_index(0)?;
            Ok((t.to_utc() - t0).num_microseconds().unwrap_or(0) as f64 / 1e6)
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(!lags.is_empty(), "no job was queued: {fired:?}");
    let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
    // Baseline: the same number of job rows written in one multi-row INSERT.
    let raw = Instant::now();
    db.execute_unprepared(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS raw_jobs (LIKE jobs INCLUDING ALL);
         INSERT INTO raw_jobs (id, domain_id, kind, collector_id, plugin_id, plugin_version,
             options, trigger, status)
         SELECT gen_random_uuid(), '{domain}', 'inventory', gen_random_uuid(), 'demo', '1.0.0',
             '{{}}', 'schedule', 'QUEUED' FROM generate_series(1, {n})",
        domain = DomainId::DEFAULT,
        n = lags.len()
    ))
    .await?;
    let raw = raw.elapsed();
    println!(
        "burst, {lanes} lane(s): {} fires at one instant -> {} jobs queued in {:.2} s ({:.0} jobs/s); lag from the fire: p50 {:.3} s, p99 {:.3} s, max {:.3} s; raw INSERT of {} job rows: {} ms",
        fired.schedules,
        fired.queued,
        pass.as_secs_f64(),
        fired.queued as f64 / pass.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        lags.len(),
        raw.as_millis()
    );
    Ok(())
}

fn name_of(settings: &Settings) -> String {
    settings.database.schema.clone().unwrap_or_default()
}

async fn serve(component: Component) -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    gleaner_common::telemetry::init(&settings.log);
    let shutdown = CancellationToken::new();
    tokio::spawn(cmd::cancel_on_signal(shutdown.clone()));
    match component {
        Component::Api => {
            cmd::api::run(cmd::api::Args { migrate: false }, &settings, shutdown).await
        }
        Component::Worker => {
            cmd::worker::run(cmd::worker::Args { migrate: false }, &settings, shutdown).await
        }
        Component::Scheduler => {
            cmd::scheduler::run(cmd::scheduler::Args { migrate: false }, &settings, shutdown).await
        }
        Component::Standalone => {
            let data_dir = std::env::var("GLEANER_DATA_DIR").context("GLEANER_DATA_DIR")?;
            let args = cmd::standalone::Args {
                data_dir: data_dir.into(),
                listen: None,
            };
            cmd::standalone::run(args, &settings, shutdown).await
        }
    }
}

/// A fresh name, and settings that put a run's schema and queues under it.
fn isolated(database_url: &str, amqp_url: &str) -> anyhow::Result<(String, Settings)> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let name = format!("bench_{now}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut settings = Settings {
        database_url: database_url.to_owned(),
        amqp_url: amqp_url.to_owned(),
        secret_key: Some(SecretKey::generate().to_hex()),
        ..Settings::default()
    };
    settings.database.schema = Some(name.clone());
    settings.amqp.prefix = name.clone();
    Ok((name, settings))
}

async fn tasks(args: TasksArgs) -> anyhow::Result<()> {
    ensure!(
        args.tasks > 0 && args.workers > 0,
        "--tasks and --workers must be at least 1"
    );
    let (name, mut settings) = isolated(&args.services.database_url, &args.services.amqp_url)?;
    if let Some(c) = args.concurrency {
        settings.worker.concurrency = c;
    }
    if let Some(m) = args.max_tasks {
        settings.worker.max_tasks = m;
    }
    let run = Run { name, settings };
    let result = measure_tasks(&args, &run).await;
    if let Err(e) = gleaner::app::remove_isolated(&run.settings, &run.name).await {
        eprintln!("cleaning up `{}`: {e:#}", run.name);
    }
    result
}

async fn measure_tasks(args: &TasksArgs, run: &Run) -> anyhow::Result<()> {
    let settings = &run.settings;
    let db = gleaner::app::database(settings, true).await?;
    let port = free_port()?;
    // Seeding makes one request per task as fast as it can: past a key's rate.
    let api = spawn(Component::Api, settings, port)?
        .env("GLEANER_API__RATE_LIMIT_PER_SECOND", "0")
        .spawn()?;
    let mut children = Children(vec![api]);
    for _ in 0..args.workers {
        let worker = spawn(Component::Worker, settings, port)?
            .env(
                "GLEANER_WORKER__CONCURRENCY",
                settings.worker.concurrency.to_string(),
            )
            .env(
                "GLEANER_WORKER__MAX_TASKS",
                settings.worker.max_tasks.to_string(),
            )
            // Several workers on one host: none serves metrics.
            .env("GLEANER_WORKER__METRICS_LISTEN", "off")
            .spawn()?;
        children.0.push(worker);
    }
    let base = format!("http://127.0.0.1:{port}");
    let http = client(settings).await?;
    wait_ready(&http, &base, &mut children).await?;
    let estate = demo_estate(&http, &base, args.tasks, args.tasks).await?;
    // As many clients as tasks run at once, within what PostgreSQL's default
    // `max_connections` (100) leaves beside the workers' pools.
    let in_flight = settings
        .worker
        .tasks_at_once()
        .min(usize::from(settings.amqp.prefetch));
    let clients = (args.workers * in_flight).min(64);
    println!(
        "tasks: one job of {} tasks (one resource each), {} worker processes × {} tasks at once (concurrency {}, max_tasks {}, prefetch {})",
        args.tasks,
        args.workers,
        in_flight,
        settings.worker.concurrency,
        settings.worker.max_tasks,
        settings.amqp.prefetch
    );
    let tps = pgbench(&args.services.database_url, clients, args.pgbench_seconds).await?;
    println!(
        "  {:<47} {tps:>9.0} transactions/s ({clients} clients)",
        "pgbench simple-update (UPDATE+SELECT+INSERT):"
    );
    for round in ["first run (all created)", "second run (all unchanged)"] {
        let (took, job) = collect(&http, &base, &estate.collector).await?;
        ensure!(
            job["tasks_done"].as_u64() == Some(args.tasks),
            "the job did not run every task: {job}"
        );
        let per_second = rate(args.tasks, took);
        println!(
            "  {:<47} {:>9.0} tasks/s  ({:.2} s; {:.2}× pgbench's TPS)",
            format!("{round}:"),
            per_second,
            took.as_secs_f64(),
            per_second / tps
        );
    }
    children.stop().await;
    db.close().await.ok();
    Ok(())
}

/// Runs pgbench's simple-update on a database of its own (created and initialised at scale 10
/// if needed) and returns its TPS.
async fn pgbench(database_url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    // postgres://user@host:port/db: the parts pgbench and psql take as options.
    let rest = database_url
        .split_once("://")
        .map_or(database_url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (user, hostport) = authority.rsplit_once('@').unwrap_or(("root", authority));
    let user = user.split(':').next().unwrap_or("root").to_owned();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let (host, port) = (host.to_owned(), port.to_owned());
    let db = "gleaner_pgbench";
    let base = format!("postgres://{user}@{host}:{port}/{db}");
    gleaner_common::db::ensure_database(&base).await?;
    let pgbench = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("pgbench");
        cmd.args(["-h", &host, "-p", &port, "-U", &user])
            .args(extra)
            .arg(db);
        cmd
    };
    let initialised = std::process::Command::new("psql")
        .args(["-h", &host, "-p", &port, "-U", &user, "-d", db, "-tAc"])
        .arg("SELECT count(*) FROM pgbench_branches")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "10")
        .unwrap_or(false);
    if !initialised {
        let out = pgbench(&["-i", "-q", "-s", "10"])
            .output()
            .context("pgbench -i (is pgbench installed?)")?;
        ensure!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let clients = clients.to_string();
    let secs = seconds.to_string();
    let out = pgbench(&[
        "-b",
        "simple-update",
        "-c",
        &clients,
        "-j",
        "2",
        "-T",
        &secs,
    ])
    .output()
    .context("pgbench (is it installed?)")?;
    ensure!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .with_context(|| format!("no `tps = ` line in pgbench's output: {text}"))
}

/// What one run created, so it can be removed.
struct Run {
    name: String,
    settings: Settings,
}

/// A client of the bench's API, with a new admin key of the default domain.
pub(crate) async fn client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    let db = gleaner::app::database(settings, false).await?;
    let key = gleaner_common::store::api_key::create_admin_key(
        &db,
        gleaner_common::id::DomainId::DEFAULT,
    )
    .await?;
    db.close().await.ok();
    authorized(key.expose())
}

/// A client sending `key` with every request.
fn authorized(key: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    ensure!(args.accounts > 0, "--accounts must be at least 1");
    ensure!(
        args.resources.is_multiple_of(args.accounts),
        "--resources must be a multiple of --accounts"
    );
    let (name, mut settings) = isolated(&args.services.database_url, &args.services.amqp_url)?;
    if let Some(b) = args.batch_size {
        settings.worker.batch_size = b;
    }
    if args.mode == Mode::Standalone {
        let dir = std::env::temp_dir().join(&name);
        let result = measure_standalone(&args, &settings, &dir).await;
        if args.keep {
            eprintln!("kept the data directory {}", dir.display());
        } else {
            std::fs::remove_dir_all(&dir).ok();
        }
        return result;
    }
    let run = Run { name, settings };
    let result = measure(&args, &run).await;
    if args.keep {
        eprintln!("kept schema and queues `{}`", run.name);
    } else if let Err(e) = gleaner::app::remove_isolated(&run.settings, &run.name).await {
        eprintln!("cleaning up `{}`: {e:#}", run.name);
    }
    result?;
    print_machine(&args.services.database_url, args.pgbench_seconds).await
}

/// The machine's figure of the moment after a run: pgbench's simple-update with 16 clients
/// for `seconds` (0 skips it).
pub(crate) async fn print_machine(database_url: &str, seconds: u64) -> anyhow::Result<()> {
    if seconds > 0 {
        let tps = pgbench(database_url, 16, seconds).await?;
        println!(
            "  {:<47} {tps:>8.0} TPS",
            format!("machine: pgbench simple-update, 16 clients, {seconds} s:")
        );
    }
    Ok(())
}

async fn measure(args: &IngestArgs, run: &Run) -> anyhow::Result<()> {
    let settings = &run.settings;
    let db = gleaner::app::database(settings, true).await?;
    let port = free_port()?;
    let api = spawn(Component::Api, settings, port)?.spawn()?;
    let worker = spawn(Component::Worker, settings, port)?.spawn()?;
    let mut children = Children(vec![api, worker]);
    let base = format!("http://127.0.0.1:{port}");
    let http = client(settings).await?;
    wait_ready(&http, &base, &mut children).await?;

    let estate = demo_estate(&http, &base, args.resources, args.accounts).await?;

    println!(
        "ingest: {} demo resources over {} service accounts, worker batch {}",
        args.resources, args.accounts, settings.worker.batch_size
    );
    let copy = raw_copy(&db, &estate.accounts, &estate.options).await?;
    report(
        args.resources,
        &http,
        &base,
        &estate.collector,
        ("raw COPY of the same rows (same-shaped table):", copy),
        (&children, 1, "worker peak RSS (VmHWM):"),
    )
    .await?;
    children.stop().await;
    db.close().await.ok();
    Ok(())
}

async fn measure_standalone(
    args: &IngestArgs,
    settings: &Settings,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let child = spawn(Component::Standalone, settings, port)?
        .env("GLEANER_DATA_DIR", dir)
        .spawn()?;
    let mut children = Children(vec![child]);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &base, &mut children).await?;
    // The first start wrote the default domain's admin key before it served.
    let key = std::fs::read_to_string(dir.join("admin.key"))?;
    let http = authorized(key.trim())?;
    let estate = demo_estate(&http, &base, args.resources, args.accounts).await?;
    println!(
        "ingest (standalone, SQLite): {} demo resources over {} service accounts, worker batch {}",
        args.resources, args.accounts, settings.worker.batch_size
    );
    let url = format!("sqlite://{}", dir.join("gleaner.db").display());
    let insert = raw_insert_sqlite(&url, &estate).await?;
    report(
        args.resources,
        &http,
        &base,
        &estate.collector,
        ("raw INSERT of the same rows (same-shaped table):", insert),
        (&children, 0, "standalone process peak RSS (VmHWM):"),
    )
    .await?;
    children.stop().await;
    Ok(())
}

/// What [`demo_estate`] created.
struct Estate {
    project: Uuid,
    accounts: Vec<String>,
    /// The collector's options.
    options: Value,
    collector: String,
}

/// A project, `accounts` demo service accounts and a demo collector of `resources` in all.
async fn demo_estate(
    http: &reqwest::Client,
    base: &str,
    resources: u64,
    accounts: u64,
) -> anyhow::Result<Estate> {
    let per_account = resources / accounts;
    let project = post(http, base, "/v1/projects", json!({"name": "bench"})).await?;
    let mut ids = Vec::new();
    for i in 0..accounts {
        let sa = post(
            http,
            base,
            "/v1/service-accounts",
            json!({"name": format!("bench-{i}"), "provider": "demo",
                   "project_id": project["id"], "credentials": {}}),
        )
        .await?;
        ids.push(sa["id"].as_str().context("service account id")?.to_owned());
    }
    let options = json!({"resources": per_account, "seed": 7});
    let collector = post(
        http,
        base,
        "/v1/collectors",
        json!({"name": "bench", "plugin_id": "demo", "options": options}),
    )
    .await?;
    Ok(Estate {
        project: Uuid::parse_str(project["id"].as_str().context("project id")?)?,
        accounts: ids,
        options,
        collector: collector["id"].as_str().context("collector id")?.to_owned(),
    })
}

/// A service account of `provider` with `credentials` and a collector of `plugin` with
/// `options`, then [`report`] on them, against the worker (the second child).
async fn account_collector_report(
    http: &reqwest::Client,
    base: &str,
    children: &Children,
    (provider, credentials): (&str, &serde_json::Map<String, Value>),
    (plugin, options): (&str, Value),
    rows: u64,
    baseline: (&str, Duration),
) -> anyhow::Result<()> {
    post(
        http,
        base,
        "/v1/service-accounts",
        json!({"name": provider, "provider": provider, "credentials": credentials}),
    )
    .await?;
    let collector = post(
        http,
        base,
        "/v1/collectors",
        json!({"name": plugin, "plugin_id": plugin, "options": options}),
    )
    .await?;
    let collector = collector["id"].as_str().context("collector id")?;
    report(
        rows,
        http,
        base,
        collector,
        baseline,
        (children, 1, "worker peak RSS (VmHWM):"),
    )
    .await
}

/// Prints the baseline, collects twice (all created, then all unchanged: `rows` each) beside
/// it, and the peak memory of the child at `rss.1`.
async fn report(
    rows: u64,
    http: &reqwest::Client,
    base: &str,
    collector_id: &str,
    (label, baseline): (&str, Duration),
    rss: (&Children, usize, &str),
) -> anyhow::Result<()> {
    println!(
        "  {label:<47} {:>8.2} s  {:>9.0} rows/s",
        baseline.as_secs_f64(),
        rate(rows, baseline)
    );
    for count in ["created", "unchanged"] {
        timed_collect(http, base, collector_id, count, rows, baseline).await?;
    }
    print_peak_rss(rss.0, rss.1, rss.2)
}

/// Prints the peak memory of the child at `index`.
fn print_peak_rss(children: &Children, index: usize, label: &str) -> anyhow::Result<()> {
    let pid = children.0[index].id().context("child pid")?;
    let peak = peak_rss_kib(pid)?;
    println!("  {label:<47} {:>8.1} MB", peak as f64 / 1024.0);
    Ok(())
}

/// A demo item as the worker receives it: its service account, the item, its JSON text.
type DemoRow = (Uuid, plugin::ResourceItem, Vec<u8>);

/// The demo items of `accounts`, generated (and serialized) in a task of their own, so that
/// the baselines write while the next rows are generated, as the worker does.
fn demo_rows(
    accounts: &[String],
    options: &Value,
) -> (
    tokio::sync::mpsc::Receiver<DemoRow>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (out, rows) = tokio::sync::mpsc::channel(4096);
    let (accounts, options) = (accounts.to_vec(), options.clone());
    let generator = tokio::spawn(async move {
        for account in accounts {
            let sa = Uuid::parse_str(&account)?;
            let (tx, mut rx) = plugin::channel(1024);
            let request = CollectRequest {
                version: "1.0.0".into(),
                options: options.clone(),
                secret: serde_json::Map::new(),
                task: TaskInfo {
                    domain: DomainId::DEFAULT,
                    job_id: JobId::new(),
                    task_id: TaskId::new(),
                    attempt: 1,
                    service_account_id: Some(ServiceAccountId::from_uuid(sa)),
                    month: None,
                    metrics: None,
                    sub_task: None,
                },
                cancel: CancellationToken::new(),
                diagnostics: plugin::Diagnostics::default(),
            };
            let producer = tokio::spawn(async move { Demo::new().collect(request, tx).await });
            while let Some(item) = rx.recv().await {
                let Item::Resource(r) = item else { continue };
                let json = serde_json::to_vec(&r.data)?;
                if out.send((sa, r, json)).await.is_err() {
                    break;
                }
            }
            producer.await??;
        }
        anyhow::Ok(())
    });
    (rows, generator)
}

/// Inserts the demo rows of the estate's accounts, every column the sink writes, 1,000 rows per
/// statement in one transaction, into a table created with the DDL of `resources` and its
/// indexes under other names.
async fn raw_insert_sqlite(url: &str, estate: &Estate) -> anyhow::Result<Duration> {
    let (project, collector) = (estate.project, Uuid::parse_str(&estate.collector)?);
    let db = gleaner_common::db::connect(url, &Default::default()).await?;
    let ddl = db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'resources' AND sql IS NOT NULL",
        ))
        .await?;
    for row in ddl {
        let sql: String = row.try_get_by_index(0)?;
        // Quoted by SeaORM's schema builder, bare in the migrations' own SQL.
        let sql = sql
            .replace("\"resources\"", "\"bench_copy\"")
            .replace("ON resources ", "ON bench_copy ")
            .replace("ux_resources_", "ux_bench_copy_")
            .replace("ix_resources_", "ix_bench_copy_");
        db.execute_unprepared(&sql).await?;
    }
    let pool = db.get_sqlite_connection_pool().clone();
    let started = Instant::now();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let (mut rows, generator) = demo_rows(&estate.accounts, &estate.options);
    let mut chunk: Vec<DemoRow> = Vec::with_capacity(1000);
    loop {
        let next = rows.recv().await;
        let done = next.is_none();
        chunk.extend(next);
        if chunk.len() < 1000 && !done {
            continue;
        }
        if !chunk.is_empty() {
            let values = vec!["(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"; chunk.len()].join(",");
            let sql = format!(
                "INSERT INTO bench_copy (id, domain_id, provider, resource_type, resource_key, \
                 name, region, project_id, service_account_id, collector_id, data, content_hash, \
                 state, missed_runs, created_job_id, updated_job_id, created_at, updated_at) \
                 VALUES {values}"
            );
            let (job, now) = (Uuid::now_v7(), chrono::Utc::now().fixed_offset());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (sa, r, json) in &chunk {
                q = q
                    .bind(Uuid::now_v7())
                    .bind(DomainId::DEFAULT.as_uuid())
                    .bind("demo")
                    .bind(&r.resource_type)
                    .bind(&r.resource_key)
                    .bind(r.name.as_deref())
                    .bind(r.region.as_deref())
                    .bind(project)
                    .bind(*sa)
                    .bind(collector)
                    .bind(std::str::from_utf8(json)?)
                    .bind(content_hash(r, json))
                    .bind("ACTIVE")
                    .bind(0)
                    .bind(job)
                    .bind(job)
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
            chunk.clear();
        }
        if done {
            break;
        }
    }
    generator.await??;
    tx.commit().await?;
    let took = started.elapsed();
    db.execute_unprepared("DROP TABLE bench_copy").await?;
    db.close().await?;
    Ok(took)
}

/// Generates the demo rows of `accounts` and COPYs them, in one binary stream, into a table
/// created `LIKE resources INCLUDING ALL` (same columns, defaults and indexes).
async fn raw_copy(
    db: &sea_orm::DatabaseConnection,
    accounts: &[String],
    options: &Value,
) -> anyhow::Result<Duration> {
    db.execute_unprepared("CREATE TABLE bench_copy (LIKE resources INCLUDING ALL)")
        .await?;
    let pool = db.get_postgres_connection_pool();
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(
            "COPY bench_copy (id, domain_id, provider, resource_type, resource_key, name, \
             region, service_account_id, data, content_hash, state) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let mut out = BinaryCopy::with_capacity(8 << 20);
    let (mut rows, generator) = demo_rows(accounts, options);
    while let Some((sa, r, json)) = rows.recv().await {
        out.row(11);
        out.uuid(Uuid::now_v7());
        out.uuid(DomainId::DEFAULT.as_uuid());
        out.text("demo");
        out.text(&r.resource_type);
        out.text(&r.resource_key);
        out.opt_text(r.name.as_deref());
        out.opt_text(r.region.as_deref());
        out.uuid(sa);
        out.jsonb(&json);
        out.int8(content_hash(&r, &json));
        out.text("ACTIVE");
        if out.len_bytes() >= 8 << 20 {
            copy.send(out.take_chunk()).await?;
        }
    }
    generator.await??;
    copy.send(out.finish()).await?;
    copy.finish().await?;
    Ok(started.elapsed())
}

/// Collects, checks that every resource counted as `count`, and prints the time beside the
/// COPY baseline.
async fn timed_collect(
    http: &reqwest::Client,
    base: &str,
    collector: &str,
    count: &str,
    expected: u64,
    copy: Duration,
) -> anyhow::Result<()> {
    let (took, job) = collect(http, base, collector).await?;
    let got = job["counts"][count].as_u64().unwrap_or(0);
    ensure!(
        got == expected && job["status"] == "SUCCESS",
        "expected SUCCESS with {expected} {count}, the job says {job}"
    );
    let label = format!("collect → SUCCESS, all {count}:");
    println!(
        "  {label:<47} {:>8.2} s  {:>9.0} rows/s  {:.2}× baseline",
        took.as_secs_f64(),
        rate(expected, took),
        took.as_secs_f64() / copy.as_secs_f64()
    );
    Ok(())
}

/// Starts a collection and polls the job until it is terminal; returns the elapsed time and
/// the job. Polling every 50 ms adds at most that much to the figure (every poll sums the
/// job's tasks: at 20 ms, polls of a job of 3,000 tasks took a fifth of a core).
async fn collect(
    http: &reqwest::Client,
    base: &str,
    collector: &str,
) -> anyhow::Result<(Duration, Value)> {
    collect_with(http, base, collector, json!({})).await
}

/// [`collect`] with a body (a billing job's months).
async fn collect_with(
    http: &reqwest::Client,
    base: &str,
    collector: &str,
    body: Value,
) -> anyhow::Result<(Duration, Value)> {
    let started = Instant::now();
    let accepted = post(
        http,
        base,
        &format!("/v1/collectors/{collector}/collect"),
        body,
    )
    .await?;
    let job_id = accepted["job_id"].as_str().context("job_id")?.to_owned();
    let mut last_report = Instant::now();
    loop {
        let job: Value = http
            .get(format!("{base}/v1/jobs/{job_id}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match job["status"].as_str() {
            Some("SUCCESS") => return Ok((started.elapsed(), job)),
            Some("FAILURE" | "CANCELED") => bail!("the job ended {job}"),
            _ => {}
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let c = &job["counts"];
            eprintln!(
                "    … {:.0} s: {} created, {} updated, {} unchanged",
                started.elapsed().as_secs_f64(),
                c["created"],
                c["updated"],
                c["unchanged"]
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let res = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    ensure!(status.is_success(), "POST {path} → {status}: {body}");
    Ok(body)
}

fn spawn(component: Component, settings: &Settings, port: u16) -> anyhow::Result<Process> {
    let exe = std::env::current_exe()?;
    let mut cmd = Process::new(exe);
    cmd.arg("serve")
        .arg(match component {
            Component::Api => "api",
            Component::Worker => "worker",
            Component::Scheduler => "scheduler",
            Component::Standalone => "standalone",
        })
        .env("GLEANER_DATABASE_URL", &settings.database_url)
        .env("GLEANER_AMQP_URL", &settings.amqp_url)
        .env("GLEANER_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "GLEANER_API__RATE_LIMIT_PER_SECOND",
            settings.api.rate_limit_per_second.to_string(),
        )
        .env(
            "GLEANER_SECRET_KEY",
            settings.secret_key.as_deref().unwrap_or_default(),
        )
        .env(
            "GLEANER_DATABASE__SCHEMA",
            settings.database.schema.as_deref().unwrap_or_default(),
        )
        .env("GLEANER_AMQP__PREFIX", &settings.amqp.prefix)
        // The billing benchmark's FOCUS export is written there.
        .env("GLEANER_FILES__ALLOW", std::env::temp_dir())
        // The AWS benchmark's moto server.
        .env("GLEANER_NETWORK__ALLOW_ENDPOINTS", "http://127.0.0.1:*")
        .env(
            "GLEANER_WORKER__BATCH_SIZE",
            settings.worker.batch_size.to_string(),
        )
        .env(
            "GLEANER_METRICS__BACKFILL_HOURS",
            settings.metrics.backfill_hours.to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // The Cloudforet benchmark's plugin.
    if let Some(dir) = &settings.plugins.dir {
        cmd.env("GLEANER_PLUGINS__DIR", dir);
    }
    Ok(cmd)
}

/// The child processes, stopped with SIGTERM (and killed if they linger).
struct Children(Vec<Child>);

impl Children {
    async fn stop(&mut self) {
        for child in &self.0 {
            if let Some(pid) = child.id() {
                std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .ok();
            }
        }
        for child in &mut self.0 {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                child.start_kill().ok();
            }
        }
    }

    fn exited(&mut self) -> Option<String> {
        self.0
            .iter_mut()
            .find_map(|c| c.try_wait().ok().flatten().map(|s| s.to_string()))
    }
}

async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = children.exited() {
            bail!("a component exited during start-up ({status}); see its output above");
        }
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the API was not ready within 30 s")
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Prints what `table` takes on disk per row (its heap, indexes and TOAST), for capacity
/// planning (docs/capacity.md).
#[allow(clippy::cast_precision_loss)]
pub(crate) async fn print_table_bytes(
    db: &sea_orm::DatabaseConnection,
    table: &str,
) -> anyhow::Result<()> {
    db.execute_unprepared(&format!("ANALYZE {table}")).await?;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                // Summed over the partition tree: a partitioned table has no storage of its own.
                "SELECT sum(pg_total_relation_size(relid))::int8, sum(pg_indexes_size(relid))::int8, \
                 (SELECT count(*) FROM {table})::int8 FROM pg_partition_tree('{table}')"
            ),
        ))
        .await?
        .context("a row")?;
    let (total, indexes, rows): (i64, i64, i64) = (
        row.try_get_by_index(0)?,
        row.try_get_by_index(1)?,
        row.try_get_by_index(2)?,
    );
    let per_row = total as f64 / rows.max(1) as f64;
    println!(
        "  {table}: {rows} rows, {:.1} MiB on disk ({:.1} MiB of it indexes) = {per_row:.0} bytes per row",
        total as f64 / 1_048_576.0,
        indexes as f64 / 1_048_576.0
    );
    Ok(())
}

/// The peak resident set of a process, from `/proc/<pid>/status` (Linux).
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status")))
        .context("reading /proc (the RSS figure needs Linux)")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM missing from /proc/<pid>/status")
}

#[allow(clippy::cast_precision_loss)]
fn rate(rows: u64, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}
