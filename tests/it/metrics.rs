//! `GET /metrics` on the API, and the worker's own metrics listener.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{Mode, TestEnv};

/// The value of one series (`name{labels}` exactly as rendered) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Scrapes the API's `/metrics` until `ready` accepts the text (5 s at most): the worker
/// records a task's metrics just after committing its outcome, so a test that saw the job end
/// may scrape a moment before they are recorded.
async fn scrape_until(env: &TestEnv, ready: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let a = env.get("/metrics").await?;
        assert_eq!(a.status, 200);
        assert!(
            a.content_type.starts_with("text/plain; version=0.0.4"),
            "{}",
            a.content_type
        );
        let text = a.body.as_str().context("a text body")?.to_owned();
        if ready(&text) {
            return Ok(text);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the metrics never showed what was expected:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics_count_jobs_by_status_and_time_tasks(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 10})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");

    // The recorder is the test process's, shared with the tests running beside this one; the
    // `worker` label keeps this environment's worker apart, so its values are exact.
    let worker = match mode {
        Mode::Distributed => format!("{}-0", env.name),
        Mode::Standalone => env.name.clone(),
    };
    let of = |series: &str, labels: &str| format!("{series}{{worker=\"{worker}\",{labels}}}");
    let durations = of(
        "gleaner_task_duration_seconds_count",
        "kind=\"inventory\",status=\"SUCCESS\"",
    );
    let acks = of(
        "gleaner_messages_handled_total",
        "kind=\"inventory\",outcome=\"ack\"",
    );
    let text = scrape_until(&env, |t| {
        sample(t, &durations) == Some(2.0) && sample(t, &acks) == Some(3.0)
    })
    .await?;
    // One job.requested and two task.requested, each taken once, none retried or refused.
    assert_eq!(
        sample(
            &text,
            &of("gleaner_queue_lag_seconds_count", "kind=\"inventory\"")
        ),
        Some(3.0),
        "{text}"
    );
    for (series, labels) in [
        (
            "gleaner_messages_handled_total",
            "kind=\"inventory\",outcome=\"retry\"",
        ),
        (
            "gleaner_messages_handled_total",
            "kind=\"inventory\",outcome=\"dead_letter\"",
        ),
        ("gleaner_task_retries_total", "kind=\"inventory\""),
        (
            "gleaner_dead_letters_total",
            "kind=\"inventory\",reason=\"malformed\"",
        ),
    ] {
        assert_eq!(
            sample(&text, &of(series, labels)),
            Some(0.0),
            "{series}: {text}"
        );
    }
    // Every task took less than the largest bucket, so it counts in the `+Inf` one too.
    assert_eq!(
        sample(
            &text,
            &of(
                "gleaner_task_duration_seconds_bucket",
                "kind=\"inventory\",status=\"SUCCESS\",le=\"+Inf\""
            )
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gleaner_task_duration_seconds histogram"),
        "{text}"
    );
    // The store's gauges are this environment's store's.
    let succeeded = env
        .scalar("SELECT count(*) FROM jobs WHERE status = 'SUCCESS'")
        .await?;
    assert_eq!(succeeded, 1);
    assert_eq!(
        sample(&text, "gleaner_jobs{status=\"SUCCESS\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gleaner_jobs{status=\"FAILURE\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(sample(&text, "gleaner_outbox_pending").is_some(), "{text}");
    assert_eq!(sample(&text, "gleaner_outbox_dead"), Some(0.0), "{text}");
    Ok(())
}

crate::in_both_modes!(metrics_count_jobs_by_status_and_time_tasks,);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_listener_serves_metrics_and_health_until_stopped() -> anyhow::Result<()> {
    gleaner_common::metrics::worker_started("listener-test");
    let listener = gleaner::app::bind_metrics(([127, 0, 0, 1], 0).into())
        .await
        .context("binds a free port")?;
    let addr = listener.local_addr()?;
    // A second worker on the same address runs without a listener instead of failing.
    assert!(gleaner::app::bind_metrics(addr).await.is_none());
    let stop = CancellationToken::new();
    let served = tokio::spawn(gleaner::app::serve_metrics(listener, stop.clone()));

    let http = reqwest::Client::new();
    let r = http.get(format!("http://{addr}/metrics")).send().await?;
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let text = r.text().await?;
    // A worker's counters start at zero, so they are there before any message was handled.
    assert_eq!(
        sample(
            &text,
            "gleaner_messages_handled_total{worker=\"listener-test\",kind=\"billing\",outcome=\"dead_letter\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        !text.contains("gleaner_jobs"),
        "a worker has no store gauges"
    );
    let h = http.get(format!("http://{addr}/healthz")).send().await?;
    assert_eq!(h.status(), 200);
    assert_eq!(
        h.json::<serde_json::Value>().await?,
        json!({"status": "ok"})
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .context("the listener stops with its token")???;
    assert!(
        http.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "nothing listens after the stop"
    );
    Ok(())
}
