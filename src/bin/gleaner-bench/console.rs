//! `console`: the server time of the console's pages over a large domain (100,000 resources,
//! 1,000 collectors by default), beside the API routes each page reads, in the same run.
//!
//! The router runs in this process and each request is timed around the router's own call
//! (`oneshot`): server time, no network or client. A page's figure includes the API requests it
//! makes in process; the baseline is the same requests sent straight to the API.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use axum::body::Body;
use axum::http::{Request, header};
use gleaner_common::id::DomainId;
use gleaner_common::outbox::Signal;
use gleaner_common::store::api_key;
use sea_orm::ConnectionTrait as _;
use tower::ServiceExt as _;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Resources in the domain.
    #[arg(long, default_value_t = 100_000)]
    resources: u32,
    /// Collectors in the domain.
    #[arg(long, default_value_t = 1_000)]
    collectors: u32,
    /// Requests timed per page (after 3 not timed).
    #[arg(long, default_value_t = 30)]
    samples: usize,
    #[command(flatten)]
    database: crate::BenchDatabase,
}

pub async fn console(args: ConsoleArgs) -> anyhow::Result<()> {
    let args = &args;
    crate::in_fresh_schema(
        &args.database,
        |_| {},
        |settings, db| async move { measure(args, &settings, &db).await },
    )
    .await
}

async fn measure(
    args: &ConsoleArgs,
    settings: &gleaner_common::config::Settings,
    db: &sea_orm::DatabaseConnection,
) -> anyhow::Result<()> {
    let key = api_key::bootstrap(db, DomainId::DEFAULT)
        .await?
        .context("a fresh schema has no key")?
        .expose()
        .to_owned();
    let state = gleaner::app::api_state(settings, db.clone(), Signal::new(), None)?;
    let router = gleaner_api::router(state.clone());
    let call = |method: &str, path: &str, body: Option<serde_json::Value>, cookie: Option<&str>| {
        let mut req = Request::builder().method(method).uri(path);
        req = match cookie {
            Some(c) => req.header(header::COOKIE, c),
            None => req.header(header::AUTHORIZATION, format!("Bearer {key}")),
        };
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let req = req.body(body).expect("a request of constant parts");
        let router = router.clone();
        async move {
            let started = Instant::now();
            let resp = router.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
            anyhow::Ok((started.elapsed(), status, bytes))
        }
    };

    // The domain: a project, an account, the collectors, then the resources, inserted as rows
    // (a collection of 100,000 would measure the collection, not the pages).
    let started = Instant::now();
    let (_, s, b) = call(
        "POST",
        "/v1/projects",
        Some(serde_json::json!({"name": "bench"})),
        None,
    )
    .await?;
    ensure!(s.is_success(), "a project: {s} {b:?}");
    let project: serde_json::Value = serde_json::from_slice(&b)?;
    let (_, s, _) = call(
        "POST",
        "/v1/service-accounts",
        Some(serde_json::json!({"name": "bench", "provider": "demo", "project_id": project["id"]})),
        None,
    )
    .await?;
    ensure!(s.is_success(), "an account: {s}");
    let mut first_collector = String::new();
    for i in 0..args.collectors {
        let (_, s, b) = call(
            "POST",
            "/v1/collectors",
            Some(
                serde_json::json!({"name": format!("collector-{i:04}"), "plugin_id": "demo",
                                    "tags": {"team": format!("t{}", i % 10)}}),
            ),
            None,
        )
        .await?;
        ensure!(s.is_success(), "a collector: {s}");
        if i == 0 {
            let c: serde_json::Value = serde_json::from_slice(&b)?;
            first_collector = c["id"].as_str().context("id")?.to_owned();
        }
    }
    db.execute_unprepared(&format!(
        "INSERT INTO resources (id, domain_id, provider, resource_type, resource_key, name, region, \
         project_id, collector_id, data, content_hash, state, missed_runs, merged, created_at, updated_at) \
         SELECT gen_random_uuid(), '{domain}', 'demo', \
                (ARRAY['compute.instance','storage.volume','network.vpc'])[1 + i % 3], \
                'key-' || i, 'resource-' || i, 'us-east-1', '{project}', '{collector}', \
                jsonb_build_object('i', i, 'cpu', i % 16, 'tags', jsonb_build_object('env', 'prod')), \
                i, 'ACTIVE', 0, false, now(), now() \
         FROM generate_series(1, {n}) AS i",
        domain = DomainId::DEFAULT,
        project = project["id"].as_str().context("project id")?,
        collector = first_collector,
        n = args.resources,
    ))
    .await?;
    db.execute_unprepared("ANALYZE resources").await?;
    let (_, _, b) = call("GET", "/v1/resources?limit=1", None, None).await?;
    let page: serde_json::Value = serde_json::from_slice(&b)?;
    ensure!(
        page["total"] == args.resources,
        "resources: {}",
        page["total"]
    );
    let resource = page["items"][0]["id"]
        .as_str()
        .context("a resource")?
        .to_owned();
    println!(
        "console: {} resources, {} collectors seeded in {:.1} s; {} samples per page",
        args.resources,
        args.collectors,
        started.elapsed().as_secs_f64(),
        args.samples
    );

    // A session, as the sign-in form makes it.
    let req = Request::builder()
        .method("POST")
        .uri("/sign-in")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("api_key={key}&next=%2F")))?;
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let cookie = resp
        .headers()
        .get(header::SET_COOKIE)
        .context("a session cookie")?
        .to_str()?
        .split(';')
        .next()
        .context("a cookie")?
        .to_owned();

    let c = &first_collector;
    let pages: [(&str, String, Vec<String>); 7] = [
        (
            "collectors list",
            "/collectors".into(),
            vec!["/v1/collectors".into()],
        ),
        (
            "collectors filtered",
            "/collectors?q=t3&state=ENABLED".into(),
            vec!["/v1/collectors".into()],
        ),
        (
            "collector page",
            format!("/collectors/{c}"),
            vec![
                format!("/v1/collectors/{c}"),
                format!("/v1/collectors/{c}/jobs?limit=20"),
                format!("/v1/collectors/{c}/schedules"),
                "/v1/plugins/demo".into(),
            ],
        ),
        (
            "resources",
            "/resources".into(),
            vec![
                "/v1/resources?limit=50".into(),
                "/v1/projects".into(),
                "/v1/service-accounts".into(),
            ],
        ),
        (
            "resources of a type",
            "/resources?resource_type=compute.instance".into(),
            vec![
                "/v1/resources?limit=50&resource_type=compute.instance".into(),
                "/v1/projects".into(),
                "/v1/service-accounts".into(),
            ],
        ),
        (
            "resource page",
            format!("/resources/{resource}"),
            vec![
                format!("/v1/resources/{resource}"),
                format!("/v1/resources/{resource}/changes?limit=100"),
                format!("/v1/resources/{resource}/metrics"),
            ],
        ),
        (
            "billing",
            "/billing".into(),
            vec![
                "/v1/dashboards/billing".into(),
                "/v1/costs/summary?group_by=service_account".into(),
                "/v1/service-accounts".into(),
            ],
        ),
    ];
    println!(
        "console: page | p50 ms | p95 ms | max ms | its API reads p50 ms | p95 ms (server time)"
    );
    let mut worst = Duration::ZERO;
    for (label, path, reads) in &pages {
        let mut page_t = Vec::new();
        let mut api_t = Vec::new();
        for i in 0..args.samples + 3 {
            let (t, s, _) = call("GET", path, None, Some(&cookie)).await?;
            ensure!(s.is_success(), "{path}: {s}");
            let mut sum = Duration::ZERO;
            for r in reads {
                let (t, s, _) = call("GET", r, None, None).await?;
                ensure!(s.is_success(), "{r}: {s}");
                sum += t;
            }
            if i >= 3 {
                page_t.push(t);
                api_t.push(sum);
            }
        }
        page_t.sort();
        api_t.sort();
        let ms = |v: &[Duration], q: f64| {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v[i].as_secs_f64() * 1000.0
        };
        worst = worst.max(page_t[(page_t.len() * 95 / 100).min(page_t.len() - 1)]);
        println!(
            "console: {label:<22} | {:6.1} | {:6.1} | {:6.1} | {:6.1} | {:6.1}",
            ms(&page_t, 0.5),
            ms(&page_t, 0.95),
            ms(&page_t, 1.0),
            ms(&api_t, 0.5),
            ms(&api_t, 0.95),
        );
    }
    println!(
        "console: the slowest page's p95 is {:.1} ms (target ≤ 100 ms)",
        worst.as_secs_f64() * 1000.0
    );
    Ok(())
}
