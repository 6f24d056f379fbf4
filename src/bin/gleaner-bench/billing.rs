//! Billing benchmarks.
//!
//! `focus` imports a FOCUS export of `--rows` rows (the sample's 250 rows repeated, each copy's
//! charge days shifted within September 2024) through a billing job, and compares the time
//! from `collect` to SUCCESS with a raw text `COPY` of the same rows, encoded beforehand, into
//! a table created `LIKE costs INCLUDING ALL`. Then it imports again (the month replaced).
//!
//! `summary` loads `--rows` demo cost rows through billing jobs, then times
//! `GET /v1/costs/summary` grouped by month and provider over all of them, beside the same
//! sums computed by scanning `costs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{Duration as Days, NaiveDate, NaiveDateTime};
use gleaner_common::billing::Month;
use gleaner_common::id::{CollectorId, DomainId, JobId, ServiceAccountId, TaskId};
use gleaner_worker::plugin::focus::{self, Filter};
use gleaner_worker::plugin::{self, Item};
use gleaner_worker::sink::costs::{self as cost_sink, CostScope};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Children, Component, Run, Services, collect_with, free_port, isolated, post, print_peak_rss,
    rate, spawn, wait_ready,
};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/focus/focus_sample_subset.csv"
);

#[derive(Debug, clap::Args)]
pub struct FocusArgs {
    /// FOCUS rows to import (the 250-row sample repeated).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    #[command(flatten)]
    services: Services,
    /// Seconds of pgbench's simple-update (16 clients) after the run, the machine's figure of
    /// the moment; 0 skips it.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
}

#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    /// Demo cost rows to load (about: accounts × days × services × regions).
    #[arg(long, default_value_t = 5_000_000)]
    rows: u64,
    /// Billing service accounts.
    #[arg(long, default_value_t = 10)]
    accounts: u64,
    /// Months loaded, ending with December 2024.
    #[arg(long, default_value_t = 24)]
    months: u32,
    /// Timed summary requests.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    #[command(flatten)]
    services: Services,
}

/// Runs `measure` on a fresh schema with an API and a worker process, and removes it after.
pub(crate) async fn with_run<F, Fut>(
    database_url: &str,
    amqp_url: &str,
    measure: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Run, reqwest::Client, String, Children) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Children>>,
{
    with_run_tuned(database_url, amqp_url, |_| {}, measure).await
}

/// [`with_run`] with the processes' settings changed by `tune`.
pub(crate) async fn with_run_tuned<F, Fut>(
    database_url: &str,
    amqp_url: &str,
    tune: impl FnOnce(&mut gleaner_common::config::Settings),
    measure: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Run, reqwest::Client, String, Children) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Children>>,
{
    let (name, mut settings) = isolated(database_url, amqp_url)?;
    tune(&mut settings);
    let run = Run {
        name: name.clone(),
        settings: settings.clone(),
    };
    let db = gleaner::app::database(&settings, true).await?;
    db.close().await.ok();
    let port = free_port()?;
    let api = spawn(Component::Api, &settings, port)?.spawn()?;
    let worker = spawn(Component::Worker, &settings, port)?.spawn()?;
    let mut children = Children(vec![api, worker]);
    let base = format!("http://127.0.0.1:{port}");
    let http = super::client(&settings).await?;
    let result = match wait_ready(&http, &base, &mut children).await {
        Ok(()) => measure(run, http, base, children).await,
        Err(e) => {
            children.stop().await;
            Err(e)
        }
    };
    let result = match result {
        Ok(mut children) => {
            children.stop().await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = gleaner::app::remove_isolated(&settings, &name).await {
        eprintln!("cleaning up `{name}`: {e:#}");
    }
    result
}

pub async fn focus(args: FocusArgs) -> anyhow::Result<()> {
    ensure!(args.rows >= 250, "--rows must be at least 250");
    let dir = std::env::temp_dir().join(format!("gleaner-bench-focus-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("export.csv");
    let result = async {
        let written = generate(&file, args.rows)?;
        with_run(
            &args.services.database_url,
            &args.services.amqp_url,
            |run, http, base, children| {
                measure_focus(run, http, base, children, file.clone(), written)
            },
        )
        .await
    }
    .await;
    std::fs::remove_dir_all(&dir).ok();
    result?;
    crate::print_machine(&args.services.database_url, args.pgbench_seconds).await
}

/// Writes `rows` rows: the sample repeated, copy `k` with its charge period moved `k` days
/// later, wrapping within September 2024, and its resource ids made its own.
fn generate(path: &Path, rows: u64) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut reader = csv::Reader::from_path(SAMPLE)?;
    let header = reader.headers()?.clone();
    let at = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .context("sample column")
    };
    let (start, end, resource) = (
        at("ChargePeriodStart")?,
        at("ChargePeriodEnd")?,
        at("ResourceId")?,
    );
    let sample: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
    let mut out = csv::Writer::from_writer(std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(path)?,
    ));
    out.write_record(&header)?;
    let first = NaiveDate::from_ymd_opt(2024, 9, 1).context("date")?;
    let fmt = "%Y-%m-%d %H:%M:%S";
    let mut written = 0u64;
    'copies: for k in 0.. {
        for r in &sample {
            if written == rows {
                break 'copies;
            }
            let s = NaiveDateTime::parse_from_str(&r[start], fmt)?;
            let e = NaiveDateTime::parse_from_str(&r[end], fmt)?;
            let day = (s.date() - first).num_days();
            let shifted = first.and_time(s.time()) + Days::days((day + k) % 30);
            let mut rec: Vec<String> = r.iter().map(str::to_owned).collect();
            rec[start] = shifted.format(fmt).to_string();
            rec[end] = (shifted + (e - s)).format(fmt).to_string();
            if rec[resource] != "NULL" {
                rec[resource] = format!("{}-{k}", rec[resource]);
            }
            out.write_record(&rec)?;
            written += 1;
        }
    }
    out.flush()?;
    let bytes = std::fs::metadata(path)?.len();
    println!(
        "focus: generated {written} rows ({:.0} MB) in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(written)
}

/// The rows the worker would copy, encoded as it encodes them, before the clock starts.
fn encoded(file: &Path, scope: &CostScope) -> anyhow::Result<Vec<u8>> {
    let (tx, mut rx) = plugin::channel(1 << 16);
    let filter = Filter {
        month: scope.month,
        account: None,
    };
    let path = file.to_owned();
    let reader = std::thread::spawn(move || {
        focus::read_file(&path, &filter, &tx, &CancellationToken::new())
    });
    let fixed = cost_sink::fixed_fields(scope);
    let mut buf = String::new();
    while let Some(item) = rx.blocking_recv() {
        if let Item::Cost(c) = item {
            cost_sink::encode(&mut buf, &fixed, &c);
        }
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?
        .map_err(|e| anyhow::anyhow!("reading the export: {e}"))?;
    Ok(buf.into_bytes())
}

async fn measure_focus(
    run: Run,
    http: reqwest::Client,
    base: String,
    children: Children,
    file: PathBuf,
    rows: u64,
) -> anyhow::Result<Children> {
    let project = post(&http, &base, "/v1/projects", json!({"name": "bench"})).await?;
    let sa = post(
        &http,
        &base,
        "/v1/service-accounts",
        json!({"name": "focus", "provider": "focus", "project_id": project["id"], "credentials": {}}),
    )
    .await?;
    let collector = post(
        &http,
        &base,
        "/v1/collectors",
        json!({"name": "focus", "plugin_id": "focus", "options": {"path": file}}),
    )
    .await?;
    let collector = collector["id"].as_str().context("collector id")?.to_owned();
    let scope = CostScope {
        domain: DomainId::DEFAULT,
        collector_id: CollectorId::from_uuid(uuid::Uuid::parse_str(&collector)?),
        service_account_id: ServiceAccountId::from_uuid(uuid::Uuid::parse_str(
            sa["id"].as_str().context("sa id")?,
        )?),
        job_id: JobId::new(),
        task_id: TaskId::new(),
        attempt: 1,
        month: "2024-09".parse::<Month>()?,
    };
    let parsing = Instant::now();
    let copy = {
        let file = file.clone();
        let scope = scope.clone();
        tokio::task::spawn_blocking(move || encoded(&file, &scope)).await??
    };
    let parsed = parsing.elapsed();
    let db = gleaner::app::database(&run.settings, false).await?;
    db.execute_unprepared("CREATE TABLE bench_costs (LIKE costs INCLUDING ALL)")
        .await?;
    let mut conn = db.get_postgres_connection_pool().acquire().await?;
    let baseline = raw_copy(&mut conn, &copy, false).await?;
    // What replacing the month by deleting its rows costs even without Gleaner: the same rows
    // deleted and copied again in one transaction.
    let by_delete = raw_copy(&mut conn, &copy, true).await?;
    drop(conn);
    db.execute_unprepared("DROP TABLE bench_costs").await?;
    db.close().await.ok();
    drop(copy);
    println!(
        "  {:<47} {:>8.2} s  {:>9.0} rows/s",
        "raw COPY of the same rows (same-shaped table):",
        baseline.as_secs_f64(),
        rate(rows, baseline)
    );
    // The worker's share of an import's CPU, apart from PostgreSQL's: the plugin's CSV read
    // and the encoding, one after the other here, on two threads in a worker.
    println!(
        "  {:<47} {:>8.2} s  {:>9.0} rows/s",
        "the worker's part alone (read + encode, 1 thread):",
        parsed.as_secs_f64(),
        rate(rows, parsed)
    );
    println!(
        "  {:<47} {:>8.2} s  {:>9.0} rows/s  {:.2}× baseline",
        "raw DELETE of them + COPY again, one transaction:",
        by_delete.as_secs_f64(),
        rate(rows, by_delete),
        by_delete.as_secs_f64() / baseline.as_secs_f64()
    );
    let window = json!({"start_month": "2024-09", "end_month": "2024-09"});
    for (label, count) in [
        ("import → SUCCESS (month empty):", "created"),
        ("import again → SUCCESS (month replaced):", "deleted"),
    ] {
        let (took, job) = collect_with(&http, &base, &collector, window.clone()).await?;
        ensure!(
            job["counts"][count].as_u64() == Some(rows) && job["counts"]["failed"] == 0,
            "expected {rows} {count}: {job}"
        );
        println!(
            "  {label:<47} {:>8.2} s  {:>9.0} rows/s  {:.2}× baseline",
            took.as_secs_f64(),
            rate(rows, took),
            took.as_secs_f64() / baseline.as_secs_f64()
        );
    }
    print_peak_rss(&children, 1, "worker peak RSS (VmHWM):")?;
    let db = gleaner::app::database(&run.settings, false).await?;
    crate::print_table_bytes(&db, "costs").await?;
    db.close().await.ok();
    Ok(children)
}

/// Copies the encoded rows into `bench_costs` (after deleting its rows, in the same
/// transaction, when `delete_first`) and returns how long it took.
async fn raw_copy(
    conn: &mut sqlx::PgConnection,
    copy: &[u8],
    delete_first: bool,
) -> anyhow::Result<Duration> {
    use sqlx::Connection as _;
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    if delete_first {
        sqlx::raw_sql("DELETE FROM bench_costs")
            .execute(&mut *tx)
            .await?;
    }
    let mut sink = tx
        .copy_in_raw(&format!(
            "COPY bench_costs ({}) FROM STDIN",
            cost_sink::COLUMNS
        ))
        .await?;
    for chunk in copy.chunks(8 << 20) {
        sink.send(chunk).await?;
    }
    sink.finish().await?;
    tx.commit().await?;
    Ok(started.elapsed())
}

pub async fn summary(args: SummaryArgs) -> anyhow::Result<()> {
    ensure!(
        args.accounts > 0 && args.months > 0,
        "--accounts and --months must be at least 1"
    );
    let (database_url, amqp_url) = (
        args.services.database_url.clone(),
        args.services.amqp_url.clone(),
    );
    // Timed requests follow each other as fast as they are answered: past a key's rate.
    with_run_tuned(
        &database_url,
        &amqp_url,
        |s| s.api.rate_limit_per_second = 0,
        |run, http, base, children| measure_summary(args, run, http, base, children),
    )
    .await
}

async fn measure_summary(
    args: SummaryArgs,
    run: Run,
    http: reqwest::Client,
    base: String,
    children: Children,
) -> anyhow::Result<Children> {
    let end: Month = "2024-12".parse()?;
    let mut start = end;
    for _ in 1..args.months {
        start = start.previous();
    }
    let days = (end.next().first_day() - start.first_day())
        .num_days()
        .max(1) as u64;
    // services × regions per account and day, as close to --rows as the shape allows.
    let per_day = (args.rows / (args.accounts * days)).max(1);
    let regions = (per_day as f64).sqrt().floor().max(1.0) as u64;
    let services = (per_day / regions).max(1);
    let rows = args.accounts * days * services * regions;
    let project = post(&http, &base, "/v1/projects", json!({"name": "bench"})).await?;
    for i in 0..args.accounts {
        post(
            &http,
            &base,
            "/v1/service-accounts",
            json!({"name": format!("bench-{i}"), "provider": "demo", "project_id": project["id"], "credentials": {}}),
        )
        .await?;
    }
    let collector = post(
        &http,
        &base,
        "/v1/collectors",
        json!({"name": "costs", "plugin_id": "demo-billing", "options": {"services": services, "regions": regions, "unit_cost": "0.0137"}}),
    )
    .await?;
    let collector = collector["id"].as_str().context("collector id")?;
    println!(
        "summary: {rows} demo cost rows ({} accounts × {days} days × {services} services × {regions} regions), months {start}..{end}",
        args.accounts
    );
    let (took, job) = collect_with(
        &http,
        &base,
        collector,
        json!({"start_month": start.to_string(), "end_month": end.to_string()}),
    )
    .await?;
    ensure!(
        job["counts"]["created"].as_u64() == Some(rows),
        "loaded {job}"
    );
    println!(
        "  {:<47} {:>8.2} s  {:>9.0} rows/s",
        "loaded through billing jobs:",
        took.as_secs_f64(),
        rate(rows, took)
    );
    let db = gleaner::app::database(&run.settings, false).await?;
    db.execute_unprepared(
        "ANALYZE costs; ANALYZE cost_daily; ANALYZE cost_monthly; ANALYZE cost_service_monthly; \
         ANALYZE cost_region_monthly",
    )
    .await?;
    let accounts = scalar(&db, "SELECT count(*) FROM cost_account_monthly").await?;
    let monthly = scalar(&db, "SELECT count(*) FROM cost_monthly").await?;
    let daily = scalar(&db, "SELECT count(*) FROM cost_daily").await?;
    let by_service = scalar(&db, "SELECT count(*) FROM cost_service_monthly").await?;
    let by_region = scalar(&db, "SELECT count(*) FROM cost_region_monthly").await?;
    println!(
        "  rollup rows: {accounts} per account and month, {by_service} by service, {by_region} by region, {monthly} monthly, {daily} daily"
    );
    let scan = crate::median_ms(
        &db,
        3,
        "SELECT to_char(month, 'YYYY-MM'), provider, currency, sum(billed_cost), sum(effective_cost) \
         FROM costs GROUP BY 1, 2, 3",
    )
    .await?;
    println!(
        "  {:<47} {scan:>8.1} ms (median of 3)",
        "baseline: the same sums scanning `costs`:"
    );
    // What a summary by service read before its rollup (migration 21): `cost_monthly`, a row
    // per account, service and region.
    let before = crate::median_ms(
        &db,
        5,
        "SELECT month, service_name, currency, sum(billed_cost), sum(effective_cost) \
         FROM cost_monthly GROUP BY 1, 2, 3",
    )
    .await?;
    println!(
        "  {:<47} {before:>8.1} ms (median of 5)",
        "before: the sums by service from `cost_monthly`:"
    );
    let (start, end) = (start.first_day(), end.next().first_day());
    for (group_by, groups) in [
        ("month,provider", args.months as usize),
        ("month,service", args.months as usize * services as usize),
        ("month,region", args.months as usize * regions as usize),
    ] {
        let query = format!("start={start}&end={end}&group_by={group_by}");
        let times = timed_summaries(&http, &base, &query, args.queries, groups).await?;
        let pct =
            |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
        println!(
            "  {:<47} p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms ({} requests, {groups} groups)",
            format!("GET /v1/costs/summary?group_by={group_by}:"),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.95).as_secs_f64() * 1e3,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            args.queries
        );
    }
    db.close().await.ok();
    Ok(children)
}

/// Times `n` summary requests, sorted, checking each answers `groups` items.
async fn timed_summaries(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    n: usize,
    groups: usize,
) -> anyhow::Result<Vec<std::time::Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let items: Value = http
            .get(format!("{base}/v1/costs/summary?{query}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        times.push(t.elapsed());
        let got = items["items"].as_array().map_or(0, Vec::len);
        ensure!(
            got == groups,
            "{query}: expected {groups} groups, got {got}"
        );
    }
    times.sort();
    Ok(times)
}

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql.to_owned(),
        ))
        .await?
        .context("no row")?;
    Ok(row.try_get_by_index(0)?)
}
