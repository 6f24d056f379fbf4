//! What one API key may use: a request rate (429 with Retry-After past it, other keys
//! unaffected), open event streams, a body size, and a bounded cost summary.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::json;

use crate::in_both_modes;
use crate::support::{Answer, Mode, Options, TestEnv};

fn tight(s: &mut gleaner_common::config::Settings) {
    s.api.rate_limit_per_second = 2;
    s.api.rate_limit_burst = 5;
    s.api.event_streams_per_key = 2;
    s.api.max_body_bytes = 4096;
}

fn is_problem(a: &Answer, status: StatusCode) -> bool {
    a.status == status && a.content_type.starts_with("application/problem+json")
}

async fn a_key_over_its_rate_waits_and_other_keys_go_on(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        Options {
            tune: tight,
            ..Options::default()
        },
    )
    .await?;
    let other = env
        .create("/v1/api-keys", json!({"name": "other", "role": "viewer"}))
        .await?;
    let other = env
        .api
        .clone()
        .with_key(other["secret"].as_str().context("secret")?);
    // The burst passes, then the key is refused until its rate lets it in again.
    let mut refused = None;
    for n in 0..20 {
        let a = env.get("/v1/projects").await?;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((n, a));
            break;
        }
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    let (n, a) = refused.context("20 requests at once were never refused")?;
    // The burst is 5, and the key spent one on making the other key.
    assert!(n >= 4, "refused after {n} requests, within the burst");
    assert!(is_problem(&a, StatusCode::TOO_MANY_REQUESTS), "{a:?}");
    let wait: u64 = a
        .headers
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    // Another key has a rate of its own; the open routes have none.
    assert_eq!(other.get("/v1/projects").await?.status, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(env.get("/healthz").await?.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(env.get("/v1/projects").await?.status, StatusCode::OK);
    Ok(())
}

async fn streams_bodies_and_summaries_are_bounded(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        Options {
            tune: |s| {
                tight(s);
                // No rate limit in the way of the other limits.
                s.api.rate_limit_per_second = 0;
            },
            ..Options::default()
        },
    )
    .await?;
    let relaxed = env
        .create("/v1/api-keys", json!({"name": "relaxed", "role": "admin"}))
        .await?;
    let api = env
        .api
        .clone()
        .with_key(relaxed["secret"].as_str().context("secret")?);

    // Two streams per key: a third is refused, and it is free again once one closes.
    let first = api.events("/v1/jobs/events", None).await?;
    let _second = api.events("/v1/jobs/events", None).await?;
    let third = tokio::time::timeout(Duration::from_secs(5), api.get("/v1/jobs/events"))
        .await
        .context("a third stream was opened")??;
    assert!(
        is_problem(&third, StatusCode::TOO_MANY_REQUESTS),
        "{third:?}"
    );
    assert!(third.headers.contains_key("retry-after"), "{third:?}");
    // The admin's own key holds none of them.
    drop(env.events("/v1/jobs/events", None).await?);
    drop(first);
    // The server sees the client gone at its next write: a keep-alive comes every 15 s.
    let since = Instant::now();
    loop {
        match api.events("/v1/jobs/events", None).await {
            Ok(_) => break,
            Err(e) if since.elapsed() < Duration::from_secs(25) => {
                assert!(e.to_string().contains("429"), "{e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context("the closed stream's slot was never freed")),
        }
    }

    // A body over 4 KiB: 413, whatever route.
    let big = "x".repeat(5000);
    let a = api.post("/v1/projects", json!({"name": big})).await?;
    assert!(is_problem(&a, StatusCode::PAYLOAD_TOO_LARGE), "{a:?}");
    let a = api
        .post(
            "/v1/projects",
            json!({"name": "fits", "pad": "x".repeat(3000)}),
        )
        .await?;
    assert_ne!(
        a.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "under the limit: {a:?}"
    );

    // A summary over three years names `end`.
    let a = api
        .get("/v1/costs/summary?start=2020-01-01&end=2024-01-01")
        .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert_eq!(a.body["errors"][0]["field"], "end");
    let a = api
        .get("/v1/costs/summary?start=2021-01-01&end=2024-01-01&group_by=month")
        .await?;
    assert_eq!(a.status, StatusCode::OK, "three years fit: {a:?}");
    Ok(())
}

/// An address that keeps failing to authenticate gets 429 and is no longer looked up, while a
/// key that works goes on; it is let in again after `Retry-After`.
async fn an_address_failing_to_authenticate_waits(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        Options {
            tune: |s| s.api.failed_auth_per_second = 1,
            ..Options::default()
        },
    )
    .await?;
    let guesser = env.api.clone().with_key(format!("glk_{}", "0".repeat(64)));
    let anonymous = env.api.clone().without_key();
    // The admin's key works (and was checked a moment ago).
    assert_eq!(env.get("/v1/projects").await?.status, StatusCode::OK);
    let mut statuses = Vec::new();
    for n in 0..10 {
        let who = if n % 2 == 0 { &guesser } else { &anonymous };
        statuses.push(who.get("/v1/projects").await?);
    }
    let unauthorized = statuses
        .iter()
        .take_while(|a| a.status == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        (4..=6).contains(&unauthorized),
        "a burst of 5 failures, then 429: {:?}",
        statuses.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let last = statuses.last().context("answers")?;
    assert!(is_problem(last, StatusCode::TOO_MANY_REQUESTS), "{last:?}");
    let wait: u64 = last
        .headers
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    // A key that works is not held back by its address's failures.
    assert_eq!(env.get("/v1/projects").await?.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let again = guesser.get("/v1/projects").await?;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{again:?}");
    Ok(())
}

in_both_modes!(
    an_address_failing_to_authenticate_waits,
    a_key_over_its_rate_waits_and_other_keys_go_on,
    streams_bodies_and_summaries_are_bounded,
);

/// More groups than a summary answers with: 400 naming `group_by`; the same costs in one total
/// are answered. (PostgreSQL: the rows are written straight into the daily rollup.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_of_too_many_groups_names_group_by() -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait as _;
    let env = TestEnv::start(Mode::Distributed).await?;
    let domain = gleaner_common::id::DomainId::DEFAULT.as_uuid();
    env.db
        .execute_unprepared(&format!(
            "INSERT INTO cost_daily (domain_id, collector_id, service_account_id, month, day,
                provider, billing_account_id, service_name, region_id, currency, billed_cost,
                effective_cost, list_cost, rows)
             SELECT '{domain}', gen_random_uuid(), gen_random_uuid(),
                '2024-01-01', '2024-01-05', 'aws', 'b', 'service-' || g, NULL, 'USD', 1, 1, 1, 1
             FROM generate_series(1, 10001) g"
        ))
        .await?;
    let range = "start=2024-01-01&end=2024-01-31";
    let a = env
        .get(&format!("/v1/costs/summary?{range}&group_by=service"))
        .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert_eq!(a.body["errors"][0]["field"], "group_by");
    let a = env.get(&format!("/v1/costs/summary?{range}")).await?;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["items"][0]["billed_cost"], "10001", "{a:?}");
    Ok(())
}
