//! `lists`: `GET /v1/resources?collector_id=…&limit=100` and `GET /v1/collectors/{id}` over a
//! large estate (1,000,000 resources by default), one request at a time and then from many
//! clients while a writer upserts resources, beside the database work each did before counts
//! were kept (an exact count of the matching rows per page, a count by type per detail) and the
//! page's own query alone, measured in the same run.
//!
//! The API runs in this process, with its keys and its rate limiter (set never to refuse); the
//! estate is written by one SQL statement, through the same triggers as a collection's writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gleaner_common::id::DomainId;
use gleaner_common::outbox::Signal;
use gleaner_common::store::api_key;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct ListsArgs {
    /// Resources of the one collector.
    #[arg(long, default_value_t = 1_000_000)]
    resources: u64,
    /// Service accounts they are spread over.
    #[arg(long, default_value_t = 10)]
    accounts: u64,
    /// Clients of the concurrent measurements.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds of each concurrent measurement.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Sequential requests of the one-at-a-time measurements.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    #[command(flatten)]
    database: crate::BenchDatabase,
}

pub async fn lists(args: ListsArgs) -> anyhow::Result<()> {
    let args = &args;
    crate::in_fresh_schema(
        &args.database,
        |s| s.database.max_connections = 20,
        |settings, db| async move { measure(args, &settings, &db).await },
    )
    .await
}

async fn measure(
    args: &ListsArgs,
    settings: &gleaner_common::config::Settings,
    db: &DatabaseConnection,
) -> anyhow::Result<()> {
    let key = api_key::bootstrap(db, DomainId::DEFAULT)
        .await?
        .context("a fresh schema has no key")?;
    let state = gleaner::app::api_state(settings, db.clone(), Signal::new(), None)?;
    let stop = CancellationToken::new();
    let base = crate::api::serve(gleaner_api::router(state), &stop).await?;
    let http = crate::authorized(key.expose())?;
    let project = crate::post(&http, &base, "/v1/projects", json!({"name": "bench"})).await?;
    let mut accounts = Vec::new();
    for i in 0..args.accounts {
        let a = crate::post(
            &http,
            &base,
            "/v1/service-accounts",
            json!({"name": format!("bench-{i}"), "provider": "demo", "project_id": project["id"], "credentials": {}}),
        )
        .await?;
        accounts.push(format!("'{}'", a["id"].as_str().context("account id")?));
    }
    let collector = crate::post(
        &http,
        &base,
        "/v1/collectors",
        json!({"name": "estate", "plugin_id": "demo", "options": {}}),
    )
    .await?;
    let collector = collector["id"].as_str().context("collector id")?.to_owned();
    let project = project["id"].as_str().context("project id")?.to_owned();

    let started = Instant::now();
    db.execute_unprepared(&estate_sql(
        &accounts,
        &project,
        &collector,
        1,
        args.resources,
    ))
    .await?;
    let seeded = started.elapsed();
    db.execute_unprepared("VACUUM ANALYZE resources").await?;
    println!(
        "lists: {} resources of one collector over {} accounts, written in {:.1} s (counts kept by the triggers)",
        args.resources,
        args.accounts,
        seeded.as_secs_f64()
    );

    // The same run's baselines: what each request read before counts were kept, and the
    // page's own query.
    let of_collector = format!(
        "domain_id = '{}' AND collector_id = '{collector}'",
        DomainId::DEFAULT
    );
    let count = crate::median_ms(
        db,
        5,
        &format!("SELECT count(*) FROM resources WHERE {of_collector}"),
    )
    .await?;
    let by_type = crate::median_ms(
        db,
        5,
        &format!("SELECT resource_type, count(*) FROM resources WHERE {of_collector} GROUP BY 1"),
    )
    .await?;
    let page_sql = crate::median_ms(
        db,
        50,
        &format!("SELECT * FROM resources WHERE {of_collector} ORDER BY id LIMIT 101"),
    )
    .await?;
    let sum = crate::median_ms(
        db,
        50,
        &format!("SELECT sum(n) FROM resource_counts WHERE {of_collector}"),
    )
    .await?;
    println!(
        "  baseline: an exact count of the collector's rows (each page before): {count:.1} ms"
    );
    println!(
        "  baseline: its count by type (each detail before):                  {by_type:.1} ms"
    );
    println!(
        "  baseline: the page's query alone (101 rows in id order):           {page_sql:.2} ms"
    );
    println!("  now: the total summed from resource_counts:                        {sum:.2} ms");

    let list = format!("/v1/resources?collector_id={collector}&limit=100");
    let detail = format!("/v1/collectors/{collector}");
    let total = get(&http, &base, &list).await?["total"].as_u64();
    ensure!(total == Some(args.resources), "total {total:?}");

    let pages = Pages::new(&base, &list);
    let times = sequential(&http, &pages, args.requests).await?;
    print_latency(
        "one client, GET /v1/resources pages (cursor walk)",
        &times,
        None,
    );
    let times = sequential(&http, &Pages::fixed(&base, &detail), args.requests).await?;
    print_latency("one client, GET /v1/collectors/{id}", &times, None);

    for (what, pages) in [
        ("GET /v1/resources pages", Pages::new(&base, &list)),
        ("GET /v1/collectors/{id}", Pages::fixed(&base, &detail)),
    ] {
        let writing = Arc::new(AtomicBool::new(true));
        let written = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_while(
            db.clone(),
            args.resources,
            accounts.clone(),
            project.clone(),
            collector.clone(),
            writing.clone(),
            written.clone(),
        ));
        let (times, took) = concurrent(&http, &pages, args.clients, args.seconds).await?;
        writing.store(false, Ordering::Relaxed);
        writer.await??;
        #[allow(clippy::cast_precision_loss)]
        let rate = times.len() as f64 / took.as_secs_f64();
        print_latency(
            &format!("{} clients, {what}", args.clients),
            &times,
            Some(rate),
        );
        #[allow(clippy::cast_precision_loss)]
        let rows = written.load(Ordering::Relaxed) as f64 / took.as_secs_f64();
        println!("    meanwhile the writer upserted {rows:.0} resources/s in 1,000-row statements");
    }
    let after = get(&http, &base, &list).await?["total"]
        .as_u64()
        .unwrap_or(0);
    let rows: i64 = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT count(*) FROM resources WHERE {of_collector}"),
        ))
        .await?
        .context("no row")?
        .try_get_by_index(0)?;
    ensure!(
        i64::try_from(after)? == rows,
        "the total {after} is not the rows' count {rows}"
    );
    println!("  the total after the writes equals the rows' count: {after}");
    stop.cancel();
    Ok(())
}

/// Resources `from..=to` of the estate: three types, the accounts in turn, time-ordered ids
/// (as the sinks' UUIDv7 are).
fn estate_sql(accounts: &[String], project: &str, collector: &str, from: u64, to: u64) -> String {
    format!(
        "INSERT INTO resources (id, domain_id, provider, resource_type, resource_key, name, region, \
         project_id, service_account_id, collector_id, data, content_hash, state, missed_runs, \
         merged, created_at, updated_at) \
         SELECT (lpad(to_hex(CAST(extract(epoch FROM clock_timestamp()) * 1000 AS bigint)), 12, '0') \
                 || '7000' || '8' || lpad(to_hex(i), 15, '0'))::uuid, \
                '{domain}', 'demo', \
                (ARRAY['compute.instance','storage.volume','network.vpc'])[1 + i % 3], \
                'key-' || i, 'resource-' || i, 'us-east-1', '{project}', \
                (ARRAY[{accounts}]::uuid[])[1 + i % {n}], '{collector}', \
                jsonb_build_object('i', i, 'cpu', i % 16, 'tags', jsonb_build_object('env', 'prod')), \
                i, 'ACTIVE', 0, false, now(), now() \
         FROM generate_series({from}, {to}) AS i",
        domain = DomainId::DEFAULT,
        accounts = accounts.join(","),
        n = accounts.len(),
    )
}

/// Upserts 1,000 resources per statement until `writing` is cleared: updates of existing ones
/// and new ones, in turn, so the counts' triggers append rows all along.
async fn write_while(
    db: DatabaseConnection,
    existing: u64,
    accounts: Vec<String>,
    project: String,
    collector: String,
    writing: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut next_new = existing + 1;
    let mut next_old = 1;
    let mut turn = 0u64;
    while writing.load(Ordering::Relaxed) {
        let (from, to) = if turn.is_multiple_of(2) {
            let r = (next_old, next_old + 999);
            next_old += 1000;
            r
        } else {
            let r = (next_new, next_new + 999);
            next_new += 1000;
            r
        };
        turn += 1;
        let sql = estate_sql(&accounts, &project, &collector, from, to)
            + " ON CONFLICT (domain_id, provider, resource_type, resource_key) DO UPDATE SET \
               data = excluded.data || jsonb_build_object('rev', 1), \
               content_hash = excluded.content_hash + 1, updated_at = now()";
        db.execute_unprepared(&sql).await?;
        written.fetch_add(1000, Ordering::Relaxed);
    }
    Ok(())
}

/// What the clients request: a listing walked page by page along its cursors, or one path.
#[derive(Clone)]
struct Pages {
    first: String,
    follow: bool,
}

impl Pages {
    fn new(base: &str, path: &str) -> Self {
        Self {
            first: format!("{base}{path}"),
            follow: true,
        }
    }

    fn fixed(base: &str, path: &str) -> Self {
        Self {
            first: format!("{base}{path}"),
            follow: false,
        }
    }

    /// The next URL after an answer to `url`.
    fn next(&self, body: &Value) -> String {
        match body["next_cursor"].as_str() {
            Some(c) if self.follow => format!("{}&cursor={c}", self.first),
            _ => self.first.clone(),
        }
    }
}

async fn sequential(
    http: &reqwest::Client,
    pages: &Pages,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    let mut url = pages.first.clone();
    for _ in 0..n {
        let t = Instant::now();
        let body = fetch(http, &url).await?;
        times.push(t.elapsed());
        url = pages.next(&body);
    }
    Ok(times)
}

async fn concurrent(
    http: &reqwest::Client,
    pages: &Pages,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, pages) = (http.clone(), pages.clone());
        loops.spawn(async move {
            let mut times = Vec::new();
            let mut url = pages.first.clone();
            while Instant::now() < until {
                let t = Instant::now();
                let body = fetch(&http, &url).await?;
                times.push(t.elapsed());
                url = pages.next(&body);
            }
            anyhow::Ok(times)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = loops.join_next().await {
        all.extend(r??);
    }
    Ok((all, started.elapsed()))
}

async fn fetch(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = http.get(url).send().await?;
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    Ok(r.json().await?)
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Value> {
    fetch(http, &format!("{base}{path}")).await
}

fn print_latency(what: &str, times: &[Duration], rate: Option<f64>) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let pct = |p: f64| {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i].as_secs_f64() * 1e3
    };
    let rate = rate
        .map(|r| format!(", {r:.0} requests/s"))
        .unwrap_or_default();
    println!(
        "  {what}: p50 {:.1} ms, p99 {:.1} ms over {} requests{rate}",
        pct(0.5),
        pct(0.99),
        sorted.len()
    );
}
