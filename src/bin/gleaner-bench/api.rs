//! `api`: the API's throughput when every request carries an API key, beside the same requests
//! through the same routes and handlers with no key asked (`gleaner_api::router_without_keys`),
//! in one process on one database, measured in alternating rounds.
//!
//! Both servers and the load run in this process: the figure is a ratio of two throughputs
//! under the same client costs, not the API's absolute capacity.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gleaner_common::config::Settings;
use gleaner_common::id::DomainId;
use gleaner_common::outbox::Signal;
use gleaner_common::store::api_key;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Measurements of each server per route, alternating: the machine's noise between two
    /// measurements is as large as what is measured, so the medians of many are compared.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    #[command(flatten)]
    database: crate::BenchDatabase,
}

pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let args = &args;
    crate::in_fresh_schema(
        &args.database,
        |_| {},
        |settings, db| async move { measure(args, &settings, &db).await },
    )
    .await
}

async fn measure(
    args: &ApiArgs,
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
) -> anyhow::Result<()> {
    let secret = api_key::bootstrap(db, DomainId::DEFAULT)
        .await?
        .context("a fresh schema has no key")?;
    let key = secret.expose().to_owned();
    let caller = api_key::authenticate(db, &key)
        .await?
        .context("the key just made")?;
    let state = gleaner::app::api_state(settings, db.clone(), Signal::new(), None)?;
    let stop = CancellationToken::new();
    let with_keys = serve(gleaner_api::router(state.clone()), &stop).await?;
    let without = serve(gleaner_api::router_without_keys(state, caller), &stop).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    // Something for the database read to find.
    let made = http
        .post(format!("{with_keys}/v1/projects"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await?;
    ensure!(made.status().is_success(), "a project: {}", made.status());
    println!(
        "api: {} clients, {} s per measurement, {} rounds (keyed and keyless alternate)",
        args.clients, args.seconds, args.rounds
    );
    // `providers` is answered from memory: the key's check is the largest share of its work
    // there. `projects` reads the database, as most routes do.
    for route in ["/v1/providers", "/v1/projects"] {
        let (mut keyed, mut keyless) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            // Each goes first in turn, so neither always meets a warmer or a colder machine.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for use_key in order {
                let (base, bearer) = if use_key {
                    (&with_keys, Some(key.as_str()))
                } else {
                    (&without, None)
                };
                let rate = load(&http, &format!("{base}{route}"), bearer, args).await?;
                if use_key { &mut keyed } else { &mut keyless }.push(rate);
            }
        }
        let (k, n) = (median(&mut keyed), median(&mut keyless));
        println!(
            "api: GET {route}: with keys {k:.0} req/s, without {n:.0} req/s (medians of {:?} and {:?}): keys cost {:.1}%",
            keyed.iter().map(|r| r.round()).collect::<Vec<_>>(),
            keyless.iter().map(|r| r.round()).collect::<Vec<_>>(),
            (1.0 - k / n) * 100.0
        );
    }
    stop.cancel();
    Ok(())
}

/// Serves `router` on a free loopback port until `stop`; its base URL.
pub(crate) async fn serve(
    router: axum::Router,
    stop: &CancellationToken,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(base)
}

/// Requests per second of `args.clients` loops sending GET `url` for `args.seconds`; every
/// answer must be 200.
async fn load(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    args: &ApiArgs,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (http, url, done) = (http.clone(), url.to_owned(), done.clone());
        let bearer = bearer.map(str::to_owned);
        loops.spawn(async move {
            while Instant::now() < until {
                let mut req = http.get(&url);
                if let Some(b) = &bearer {
                    req = req.bearer_auth(b);
                }
                let r = req.send().await?;
                ensure!(r.status().is_success(), "GET {url}: {}", r.status());
                r.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    while let Some(r) = loops.join_next().await {
        r??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
