//! Metrics benchmark.
//!
//! `metrics` collects `--servers` demo instances, then about `--samples` demo-metrics samples
//! (six 1-minute series per server, back as many hours as that takes) through one metrics job,
//! beside a raw binary `COPY` of the same rows, encoded beforehand, into a table created
//! `LIKE metric_samples INCLUDING ALL`, partitioned by day the same way. Then it times
//! `POST /v1/metrics/query` (every server, the last whole week, `period=3600`, `stat=avg`) and
//! `GET /v1/metrics/top` (top 10 over the same week), each beside the same answer computed
//! from the raw samples, and checks that both give the same top 10.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Days, Utc};
use gleaner_common::id::{DomainId, ResourceId};
use gleaner_worker::plugin::demo_metrics::{SERIES, key_hash};
use gleaner_worker::sink::metrics::{SAMPLE_COLUMNS, SampleRow, SeriesKey, encode_samples};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use std::sync::Arc;

use super::billing::with_run_tuned;
use super::{Children, Run, collect_with, post, print_peak_rss, rate};

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Demo instances (each has six series).
    #[arg(long, default_value_t = 100)]
    servers: u64,
    /// Samples to ingest, about: the backfill is the whole hours it takes.
    #[arg(long, default_value_t = 10_000_000)]
    samples: u64,
    /// Timed requests of each query.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    #[command(flatten)]
    services: super::Services,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

pub async fn metrics(args: MetricsArgs) -> anyhow::Result<()> {
    ensure!(
        args.servers > 0 && args.queries > 0,
        "--servers and --queries must be at least 1"
    );
    let series = args.servers * SERIES.len() as u64;
    let hours = args.samples.div_ceil(series * 60).max(24 * 7 + 1);
    let backfill = u32::try_from(hours)?;
    let (database_url, amqp_url) = (
        args.services.database_url.clone(),
        args.services.amqp_url.clone(),
    );
    with_run_tuned(
        &database_url,
        &amqp_url,
        |s| s.metrics.backfill_hours = backfill,
        |run, http, base, children| measure(run, http, base, children, args, hours),
    )
    .await
}

async fn measure(
    run: Run,
    http: reqwest::Client,
    base: String,
    children: Children,
    args: MetricsArgs,
    hours: u64,
) -> anyhow::Result<Children> {
    let project = post(&http, &base, "/v1/projects", json!({"name": "bench"})).await?;
    post(
        &http,
        &base,
        "/v1/service-accounts",
        json!({"name": "demo", "provider": "demo", "project_id": project["id"], "credentials": {}}),
    )
    .await?;
    let inventory = post(
        &http,
        &base,
        "/v1/collectors",
        json!({"name": "servers", "plugin_id": "demo",
               "options": {"resources": args.servers, "resource_types": ["compute.instance"]}}),
    )
    .await?;
    let inventory = inventory["id"].as_str().context("collector id")?;
    collect_with(&http, &base, inventory, Value::Null).await?;
    let servers = servers(&http, &base).await?;
    ensure!(
        servers.len() as u64 == args.servers,
        "{} servers",
        servers.len()
    );
    let collector = post(
        &http,
        &base,
        "/v1/collectors",
        json!({"name": "metrics", "plugin_id": "demo-metrics"}),
    )
    .await?;
    let collector = collector["id"].as_str().context("collector id")?.to_owned();
    let samples = servers.len() as u64 * SERIES.len() as u64 * hours * 60;
    println!(
        "metrics: {} servers × {} series × {hours} h of minutes = {samples} samples",
        servers.len(),
        SERIES.len()
    );

    let db = gleaner::app::database(&run.settings, false).await?;
    let end = Utc::now();
    let baseline = raw_copy(&db, &servers, end, hours).await?;
    println!(
        "  {:<47} {:>8.2} s  {:>9.0} rows/s",
        "raw COPY of the same rows (same-shaped table):",
        baseline.as_secs_f64(),
        rate(samples, baseline)
    );
    let (took, job) = collect_with(&http, &base, &collector, Value::Null).await?;
    ensure!(
        job["counts"]["created"].as_u64() == Some(samples) && job["counts"]["failed"] == 0,
        "expected {samples} samples: {job}"
    );
    println!(
        "  {:<47} {:>8.2} s  {:>9.0} rows/s  {:.2}× baseline",
        "metrics job → SUCCESS:",
        took.as_secs_f64(),
        rate(samples, took),
        took.as_secs_f64() / baseline.as_secs_f64()
    );
    print_peak_rss(&children, 1, "worker peak RSS (VmHWM):")?;

    // The last whole week.
    let week_end = Utc::now().timestamp_millis().div_euclid(HOUR) * HOUR;
    let week_start = week_end - 7 * 24 * HOUR;
    let (start, stop) = (text(week_start)?, text(week_end)?);
    let ids: Vec<&String> = servers.iter().map(|(id, _)| id).collect();
    let body = json!({"resource_ids": ids, "metric": "cpu.utilization", "start": start,
                      "end": stop, "period": 3600, "stat": "avg"});
    let query = || {
        let (http, base, body) = (&http, &base, body.clone());
        async move {
            let answer = post(http, base, "/v1/metrics/query", body).await?;
            ensure!(
                answer["labels"].as_array().map(Vec::len) == Some(168),
                "{answer}"
            );
            Ok(answer)
        }
    };
    let scan = format!(
        "SELECT resource_id, date_trunc('hour', time) AS hour, avg(value) FROM metric_samples \
         WHERE metric = 'cpu.utilization' AND time >= '{start}' AND time < '{stop}' GROUP BY 1, 2"
    );
    report_latency(
        &format!("POST /v1/metrics/query ({} × 168 hours):", servers.len()),
        args.queries,
        query,
        &db,
        &scan,
    )
    .await?;
    let top_path = format!(
        "{base}/v1/metrics/top?metric=cpu.utilization&limit=10&start={}&end={}",
        start.replace('+', "%2B"),
        stop.replace('+', "%2B")
    );
    let top = || {
        let (http, path) = (&http, top_path.clone());
        async move {
            let answer: Value = http
                .get(path)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok(answer)
        }
    };
    let top_scan = format!(
        "SELECT resource_id::text, avg(value) FROM metric_samples \
         WHERE metric = 'cpu.utilization' AND time >= '{start}' AND time < '{stop}' \
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"
    );
    let answer = report_latency(
        "GET /v1/metrics/top (top 10 of a week):",
        args.queries,
        top,
        &db,
        &top_scan,
    )
    .await?;
    // The rollups answer what the samples do.
    let from_samples: Vec<String> = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, top_scan))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    let from_api: Vec<String> = answer["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["resource_id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        from_api == from_samples,
        "top 10: the API says {from_api:?}, the samples {from_samples:?}"
    );
    db.close().await.ok();
    Ok(children)
}

fn text(ms: i64) -> anyhow::Result<String> {
    Ok(DateTime::from_timestamp_millis(ms)
        .context("a time")?
        .to_rfc3339())
}

/// The demo instances: (id, key).
async fn servers(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<(String, String)>> {
    let page: Value = http
        .get(format!(
            "{base}/v1/resources?resource_type=compute.instance&limit=1000"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(page["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|r| {
            Some((
                r["id"].as_str()?.to_owned(),
                r["resource_key"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// A binary COPY of the samples the job will store (every series' minutes in the `hours`
/// before `end`), encoded before the clock starts, into a same-shaped partitioned table.
async fn raw_copy(
    db: &sea_orm::DatabaseConnection,
    servers: &[(String, String)],
    end: DateTime<Utc>,
    hours: u64,
) -> anyhow::Result<Duration> {
    let end_ms = end.timestamp_millis();
    let first = end_ms - i64::try_from(hours)? * HOUR;
    let mut chunks = Vec::new();
    let mut rows = Vec::with_capacity(100_000);
    for (id, key) in servers {
        let resource = ResourceId::from_uuid(uuid::Uuid::parse_str(id)?);
        let h = key_hash(key);
        for s in &SERIES {
            let series = Arc::new(SeriesKey {
                resource,
                metric: Arc::from(s.metric),
            });
            for k in first.div_euclid(MINUTE) + 1..=end_ms.div_euclid(MINUTE) {
                rows.push(SampleRow {
                    series: Arc::clone(&series),
                    time: k * MINUTE,
                    value: s.value(h, k),
                });
                if rows.len() == rows.capacity() {
                    chunks.push(encode_samples(DomainId::DEFAULT.as_uuid(), &rows));
                    rows.clear();
                }
            }
        }
    }
    chunks.push(encode_samples(DomainId::DEFAULT.as_uuid(), &rows));
    db.execute_unprepared(
        "CREATE TABLE bench_samples (LIKE metric_samples INCLUDING ALL) PARTITION BY RANGE (time)",
    )
    .await?;
    let mut day = DateTime::from_timestamp_millis(first)
        .context("first")?
        .date_naive();
    while day <= end.date_naive() + Days::new(1) {
        db.execute_unprepared(&format!(
            "CREATE TABLE bench_samples_p{} PARTITION OF bench_samples FOR VALUES FROM ('{day}') TO ('{}')",
            day.format("%Y%m%d"),
            day + Days::new(1)
        ))
        .await?;
        day = day + Days::new(1);
    }
    let took = {
        let mut conn = db.get_postgres_connection_pool().acquire().await?;
        let started = Instant::now();
        // Each chunk is a whole binary COPY stream (header and trailer): one COPY per chunk
        // of 100,000 rows, as the job writes its batches, in one transaction.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for chunk in &chunks {
            let mut sink = tx
                .copy_in_raw(&format!(
                    "COPY bench_samples ({SAMPLE_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .await?;
            sink.send(chunk.as_slice()).await?;
            sink.finish().await?;
        }
        tx.commit().await?;
        started.elapsed()
    };
    db.execute_unprepared("DROP TABLE bench_samples").await?;
    Ok(took)
}

/// Times `request` `n` times after a warm-up, and `scan` (the same answer from the raw samples)
/// a few times; prints the percentiles beside the scan's. Returns the last answer.
async fn report_latency<F, Fut>(
    label: &str,
    n: usize,
    request: F,
    db: &sea_orm::DatabaseConnection,
    scan: &str,
) -> anyhow::Result<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    // The API's pool hands connections out in turn, and the first query of the partitioned
    // tables on a connection loads their catalog entries and plans cold: the warm-up passes
    // every pooled connection (20 by default) twice, and is reported apart.
    let mut answer = Value::Null;
    let mut cold = Duration::ZERO;
    for _ in 0..WARM_UP {
        let started = Instant::now();
        answer = request().await?;
        cold = cold.max(started.elapsed());
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        answer = request().await?;
        times.push(started.elapsed());
    }
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let mut scans = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        db.query_all_raw(Statement::from_string(DbBackend::Postgres, scan.to_owned()))
            .await?;
        scans.push(started.elapsed());
    }
    scans.sort();
    println!(
        "  {label:<47} p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms  (scanning the samples: {:.0} ms; slowest of the {WARM_UP} warm-up requests: {:.0} ms)",
        ms(at(0.50)),
        ms(at(0.95)),
        ms(at(0.99)),
        ms(scans[1]),
        ms(cold)
    );
    Ok(answer)
}

/// Untimed requests before the timed ones.
const WARM_UP: usize = 40;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
