//! `GET /v1/jobs/events`: job changes as server-sent events, across processes and restarts of
//! the client, and an open stream does not hold up the server's shutdown.

use std::time::Duration;

use anyhow::{Context as _, bail};
use gleaner_common::outbox::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{EventReader, Mode, Options, SseEvent, TestEnv};

/// How long a collection may take to show up as finished on a stream.
const WAIT: Duration = Duration::from_secs(30);

/// An event id's order: ids are `<nanoseconds>_<job id>`; this test knows, clients need not.
fn order(id: &str) -> anyhow::Result<(i64, String)> {
    let (nanos, job) = id.split_once('_').context("an id of the form a_b")?;
    Ok((nanos.parse()?, job.to_owned()))
}

/// Reads events until one shows job `job` ended with SUCCESS; returns every event read, checking
/// on the way that each is a `job` event whose id is higher than the one before.
async fn until_succeeded(events: &mut EventReader, job: &str) -> anyhow::Result<Vec<SseEvent>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut read: Vec<SseEvent> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(e) = events.next_within(left).await? else {
            bail!("the stream ended before job {job} succeeded");
        };
        assert_eq!(e.event, "job", "{e:?}");
        if let Some(before) = read.last() {
            assert!(
                order(&e.id)? > order(&before.id)?,
                "ids grow: {} then {}",
                before.id,
                e.id
            );
        }
        let data = e.json()?;
        read.push(e);
        if data["id"] == job && data["status"] == "SUCCESS" {
            return Ok(read);
        }
    }
}

/// The data of the events about `job`.
fn about(events: &[SseEvent], job: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for e in events {
        let data = e.json()?;
        if data["id"] == job {
            out.push(data);
        }
    }
    Ok(out)
}

async fn the_job_stream_follows_a_collection_and_resumes_after_the_last_event(
    mode: Mode,
) -> anyhow::Result<()> {
    // Small batches, so the task reports progress many times while it runs.
    let env = TestEnv::start_with(
        mode,
        Options {
            batch_size: 100,
            ..Options::default()
        },
    )
    .await?;
    let collector = env.demo_collector(1, json!({"resources": 5_000})).await?;

    let mut events = env.events("/v1/jobs/events", None).await?;
    let job = env.start_collect(&collector).await?;
    let read = until_succeeded(&mut events, &job).await?;
    let seen = about(&read, &job)?;
    let last = seen.last().context("an event")?;
    assert_eq!(
        *last,
        env.get(&format!("/v1/jobs/{job}")).await?.body,
        "each event's data is the job as GET /v1/jobs/{{id}} shows it"
    );
    assert_eq!(last["counts"]["created"], 5_000, "{last}");
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .any(|j| j["status"] == "QUEUED" || j["status"] == "IN_PROGRESS"),
        "an event before the last showed the job queued or running: {seen:?}"
    );
    // Progress alone (the worker's batches, in another process in the distributed mode) is a
    // change of the job. Without it the job would change while running only when planned and
    // when its one task is claimed: at most two events part-way, not three.
    let part_way: std::collections::BTreeSet<i64> = seen
        .iter()
        .filter(|j| j["status"] == "IN_PROGRESS")
        .filter_map(|j| j["counts"]["created"].as_i64())
        .filter(|created| (1..5_000).contains(created))
        .collect();
    assert!(
        part_way.len() >= 3,
        "events showed the job's progress: {part_way:?}"
    );
    drop(events);

    // A client that reconnects with the last id it got sees what changed after, and not again
    // the job that had finished. A stream filtered by collector sees only that collector's.
    let last_id = read.last().context("an event")?.id.clone();
    let mut resumed = env.events("/v1/jobs/events", Some(&last_id)).await?;
    let other = env
        .create(
            "/v1/collectors",
            json!({"name": "other", "plugin_id": "demo", "options": {"resources": 10}}),
        )
        .await?;
    let other = other["id"].as_str().context("collector id")?.to_owned();
    let mut filtered = env
        .events(&format!("/v1/jobs/events?collector_id={other}"), None)
        .await?;
    let second = env.start_collect(&collector).await?;
    let after = until_succeeded(&mut resumed, &second).await?;
    assert!(
        about(&after, &job)?.is_empty(),
        "the finished job was sent again after resuming: {after:?}"
    );
    assert!(!about(&after, &second)?.is_empty());
    assert!(order(&after[0].id)? > order(&last_id)?);

    let third = env.start_collect(&other).await?;
    let only_other = until_succeeded(&mut filtered, &third).await?;
    for e in &only_other {
        assert_eq!(e.json()?["collector_id"], json!(other), "{e:?}");
    }

    for (path, last_event_id, field) in [
        ("/v1/jobs/events", Some("nope"), "Last-Event-ID"),
        ("/v1/jobs/events?collector_id=nope", None, "collector_id"),
    ] {
        let mut req = reqwest::Client::new()
            .get(format!("{}{path}", env.api.base))
            .bearer_auth(env.api.key().context("the environment's key")?);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await?;
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await?;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    let unknown = env
        .get("/v1/jobs/events?collector_id=01a207cc-0000-7000-8000-000000000000")
        .await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    Ok(())
}

async fn an_open_event_stream_does_not_hold_up_shutdown(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    // A second API on the test's store, whose shutdown this test controls.
    let state = gleaner::app::api_state(&env.settings, env.db.clone(), Signal::new(), None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = env.api.at(format!("http://{}", listener.local_addr()?));
    let stop = CancellationToken::new();
    let server = tokio::spawn(gleaner::app::serve(state, listener, stop.clone()));
    let mut events = api.events("/v1/jobs/events", None).await?;

    stop.cancel();
    let served = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .context("the server did not stop within 5 s while an event stream was open")?;
    served??;
    assert!(
        events.next_within(Duration::from_secs(5)).await?.is_none(),
        "the stream ends with the server"
    );
    Ok(())
}

crate::in_both_modes!(
    the_job_stream_follows_a_collection_and_resumes_after_the_last_event,
    an_open_event_stream_does_not_hold_up_shutdown,
);

/// Reads job events from a queue bound to the events exchange until `n` arrived (20 s at most).
async fn take_events(ch: &lapin::Channel, queue: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        match ch
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            Some(m) => out.push(serde_json::from_slice(&m.delivery.data)?),
            None if tokio::time::Instant::now() > deadline => {
                bail!("{} of {n} events arrived: {out:?}", out.len())
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_are_published_to_the_topic_exchange_for_integrations() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let names = gleaner_common::broker::Names::new(env.settings.amqp.prefix.clone());
    let conn = gleaner_common::broker::connect(&env.settings.amqp_url, "gleaner-test").await?;
    let ch = conn.create_channel().await?;
    // An integration's queue, bound to every job event; exclusive, so it goes with the test.
    let queue = format!("{}.integration", env.name);
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        names.events_exchange().into(),
        "job.#".into(),
        Default::default(),
        Default::default(),
    )
    .await?;

    let collector = env.demo_collector(2, json!({"resources": 30})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let events = take_events(&ch, &queue, 3).await?;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        ["job.queued", "job.started", "job.succeeded"],
        "{events:?}"
    );
    for e in &events {
        assert_eq!(e["job"]["id"], job["id"], "{e}");
        assert_eq!(e["schema_version"], 1);
        assert!(
            e["event_id"].is_string() && e["occurred_at"].is_string(),
            "{e}"
        );
    }
    let done = &events[2]["job"];
    assert_eq!(done["status"], "SUCCESS");
    assert_eq!(done["counts"]["created"], 60, "{done}");
    assert_eq!(done["tasks_total"], 2);

    // A canceled job: queued, started, canceled, with the reason.
    let slow = env
        .create(
            "/v1/collectors",
            json!({"name": "slow", "plugin_id": "demo",
                   "options": {"resources": 10_000, "item_delay_ms": 10}}),
        )
        .await?;
    let job = env
        .start_collect(slow["id"].as_str().context("id")?)
        .await?;
    let started = take_events(&ch, &queue, 2).await?;
    let types: Vec<&str> = started.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["job.queued", "job.started"], "{started:?}");
    let a = env
        .post(&format!("/v1/jobs/{job}/cancel"), json!(null))
        .await?;
    assert_eq!(a.body["status"], "CANCELED", "{}", a.body);
    let canceled = take_events(&ch, &queue, 1).await?;
    assert_eq!(canceled[0]["type"], "job.canceled", "{canceled:?}");
    assert_eq!(canceled[0]["job"]["error"], "canceled by request");
    conn.close(200, "done".into()).await.ok();
    Ok(())
}
