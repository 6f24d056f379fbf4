//! Delivery guarantees under faults: retries of transient failures, cancel, job timeouts,
//! poison and duplicate messages, and a worker killed with SIGKILL in the middle of a
//! collection. Each ends checking that every job is terminal, that the resources are stored
//! exactly once, and that the dead-letter queue holds only what it should.
//!
//! Restarting RabbitMQ or PostgreSQL under a run would break the other tests sharing them; those
//! two are in `restarts.rs`, run by `scripts/faults.sh`.

use std::time::Duration;

use anyhow::Context as _;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::{
    Mode, Options, TestEnv, channel, dead_letters, quick_recovery, worker_log, worker_process,
};

fn quick() -> Options {
    Options {
        tune: quick_recovery,
        ..Options::default()
    }
}

in_both_modes!(
    a_plugin_failing_transiently_twice_succeeds_on_its_third_attempt,
    a_task_out_of_attempts_fails_with_the_history_of_its_attempts,
    cancel_stops_a_running_collection_and_keeps_what_it_stored,
    a_job_past_its_timeout_fails_and_its_tasks_stop,
);

async fn a_plugin_failing_transiently_twice_succeeds_on_its_third_attempt(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start_with(mode, quick()).await?;
    let collector = env
        .demo_collector(1, json!({"resources": 400, "fail_attempts": 2}))
        .await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().context("id")?
        ))
        .await?;
    let task = &tasks.body["items"][0];
    assert_eq!(task["attempt"], 3, "{task}");
    let previous = task["previous_attempts"]
        .as_array()
        .context("previous_attempts")?;
    assert_eq!(previous.len(), 2, "{task}");
    for (n, p) in previous.iter().enumerate() {
        assert_eq!(p["attempt"], n + 1, "{p}");
        let error = p["error"].as_str().unwrap_or_default();
        assert!(error.contains("simulated transient failure"), "{error}");
    }
    // The first two attempts stored half the estate each; the third all of it, once.
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 400);
    assert_eq!(task["counts"]["unchanged"], 200, "{task}");
    assert_eq!(task["counts"]["created"], 200, "{task}");
    Ok(())
}

async fn a_task_out_of_attempts_fails_with_the_history_of_its_attempts(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start_with(mode, quick()).await?;
    let collector = env
        .demo_collector(1, json!({"resources": 10, "fail_attempts": 5}))
        .await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().context("id")?
        ))
        .await?;
    let task = &tasks.body["items"][0];
    assert_eq!(task["attempt"], 3, "{task}");
    assert_eq!(
        task["previous_attempts"].as_array().map(Vec::len),
        Some(2),
        "{task}"
    );
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("3 of 3 attempts failed: no attempts left"),
        "{error}"
    );
    // A failed collection deletes nothing; what the attempts stored stays.
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 5);
    Ok(())
}

/// Polls `GET path` until `done` holds for its body (20 s at most).
async fn wait_for(
    env: &TestEnv,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = env.get(path).await?;
        if done(&a.body) {
            return Ok(a.body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel_stops_a_running_collection_and_keeps_what_it_stored(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        Options {
            batch_size: 10,
            ..quick()
        },
    )
    .await?;
    // 100 resources a second: it would run for 100 s.
    let collector = env
        .demo_collector(1, json!({"resources": 10_000, "item_delay_ms": 10}))
        .await?;
    let job = env.start_collect(&collector).await?;
    let tasks_path = format!("/v1/jobs/{job}/tasks");
    wait_for(&env, &tasks_path, "some resources stored", |b| {
        b["items"][0]["counts"]["created"].as_i64().unwrap_or(0) >= 20
    })
    .await?;

    let a = env
        .post(&format!("/v1/jobs/{job}/cancel"), json!(null))
        .await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "CANCELED", "{}", a.body);
    assert_eq!(a.body["error"], "canceled by request");
    let tasks = env.get(&tasks_path).await?;
    assert_eq!(
        tasks.body["items"][0]["status"], "CANCELED",
        "{}",
        tasks.body
    );

    // The worker notices within a heartbeat (250 ms here) and stops writing.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let stored = env.scalar("SELECT count(*) FROM resources").await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM resources").await?,
        stored,
        "the canceled task goes on writing"
    );
    assert!(
        stored >= 20,
        "what was stored before the cancel is kept: {stored}"
    );
    let after = env.get(&format!("/v1/jobs/{job}")).await?;
    assert_eq!(after.body["status"], "CANCELED", "{}", after.body);

    // Canceling again answers the same; a job that ended otherwise cannot be canceled.
    let again = env
        .post(&format!("/v1/jobs/{job}/cancel"), json!(null))
        .await?;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["status"], "CANCELED");
    let quick_one = env
        .create(
            "/v1/collectors",
            json!({"name": "quick", "plugin_id": "demo", "options": {"resources": 5}}),
        )
        .await?;
    let done = env.collect(quick_one["id"].as_str().context("id")?).await?;
    let refused = env
        .post(
            &format!("/v1/jobs/{}/cancel", done["id"].as_str().context("id")?),
            json!(null),
        )
        .await?;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("already ended with SUCCESS"),
        "{}",
        refused.body
    );
    let unknown = env
        .post(
            &format!("/v1/jobs/{}/cancel", uuid::Uuid::now_v7()),
            json!(null),
        )
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    Ok(())
}

async fn a_job_past_its_timeout_fails_and_its_tasks_stop(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        Options {
            batch_size: 10,
            ..quick()
        },
    )
    .await?;
    let project = env.create("/v1/projects", json!({"name": "p"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "a", "provider": "demo", "project_id": project["id"], "credentials": {}}),
    )
    .await?;
    let refused = env
        .post(
            "/v1/collectors",
            json!({"name": "x", "plugin_id": "demo", "job_timeout_seconds": 0}),
        )
        .await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.body["errors"][0]["field"], "job_timeout_seconds",
        "{}",
        refused.body
    );
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "slow", "plugin_id": "demo", "job_timeout_seconds": 2,
                   "options": {"resources": 10_000, "item_delay_ms": 10}}),
        )
        .await?;
    assert_eq!(c["job_timeout_seconds"], 2);
    let job = env.start_collect(c["id"].as_str().context("id")?).await?;
    let ended = env.wait_job_within(&job, Duration::from_secs(20)).await?;
    assert_eq!(ended["status"], "FAILURE", "{ended}");
    let error = ended["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("timeout"), "{error}");
    let tasks = env.get(&format!("/v1/jobs/{job}/tasks")).await?;
    assert_eq!(
        tasks.body["items"][0]["status"], "FAILURE",
        "{}",
        tasks.body
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stored = env.scalar("SELECT count(*) FROM resources").await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM resources").await?,
        stored,
        "the timed-out task goes on writing"
    );
    Ok(())
}

async fn publish(
    env: &TestEnv,
    ch: &Channel,
    routing_key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let names = gleaner_common::broker::Names::new(env.settings.amqp.prefix.clone());
    ch.basic_publish(
        names.work_exchange().into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await?
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_reason_and_other_work_goes_on()
-> anyhow::Result<()> {
    let env = TestEnv::start_with(Mode::Distributed, quick()).await?;
    let (conn, ch) = channel(&env).await?;
    publish(&env, &ch, "inventory.job.requested", b"{not json").await?;
    let collector = env.demo_collector(2, json!({"resources": 50})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 100);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = dead_letters(&env, &ch).await?;
        if !letters.is_empty() || tokio::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (reason, body) = &letters[0];
    assert_eq!(body, "{not json");
    assert!(reason.contains("not a JSON envelope"), "{reason}");
    conn.close(200, "done".into()).await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_has_one_effect() -> anyhow::Result<()> {
    let env = TestEnv::start_with(Mode::Distributed, quick()).await?;
    let collector = env.demo_collector(1, json!({"resources": 100})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let job_id = job["id"].as_str().context("id")?;
    let tasks = env.get(&format!("/v1/jobs/{job_id}/tasks")).await?;
    let task = tasks.body["items"][0].clone();
    let changes_before = env.scalar("SELECT count(*) FROM resource_changes").await?;

    // The job's and the task's messages again, each twice, as a relay that crashed between
    // the confirm and the delete, or a redelivery after a lost ack, would send them.
    let domain = env
        .json_column("SELECT to_jsonb(domain_id) FROM jobs")
        .await?;
    let envelope = |kind: &str, task_id: Option<&Value>| {
        json!({
            "type": kind, "schema_version": 1, "message_id": uuid::Uuid::now_v7(),
            "domain_id": domain[0], "job_kind": "inventory", "job_id": job_id,
            "task_id": task_id, "attempt": 1, "created_at": chrono::Utc::now(), "payload": {},
        })
    };
    let (conn, ch) = channel(&env).await?;
    for _ in 0..2 {
        let body = serde_json::to_vec(&envelope("job.requested", None))?;
        publish(&env, &ch, "inventory.job.requested", &body).await?;
        let body = serde_json::to_vec(&envelope("task.requested", Some(&task["id"])))?;
        publish(&env, &ch, "inventory.task.requested", &body).await?;
    }
    // Until the work queue is empty: every copy was handled and acknowledged.
    let names = gleaner_common::broker::Names::new(env.settings.amqp.prefix.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let q = ch
            .queue_declare(
                names
                    .queue(gleaner_common::model::JobKind::Inventory)
                    .into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        if q.message_count() == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the copies were not consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let after = env.get(&format!("/v1/jobs/{job_id}/tasks")).await?;
    assert_eq!(
        after.body["items"].as_array().map(Vec::len),
        Some(1),
        "no second plan"
    );
    let t = &after.body["items"][0];
    assert_eq!(t["attempt"], task["attempt"], "no second run: {t}");
    assert_eq!(t["finished_at"], task["finished_at"], "{t}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 100);
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_changes").await?,
        changes_before
    );
    assert!(dead_letters(&env, &ch).await?.is_empty());
    conn.close(200, "done".into()).await.ok();
    Ok(())
}

/// What the fault tests' worker processes change from the defaults.
const FAULT_WORKER: &[(&str, &str)] = &[
    ("GLEANER_WORKER__BATCH_SIZE", "2000"),
    // Longer than the in-process tests' lease: two debug-built workers writing 100,000
    // resources on two cores can hold a heartbeat up for more than a second.
    ("GLEANER_WORKER__LEASE", "3000"),
    ("GLEANER_WORKER__SHUTDOWN_GRACE", "2"),
];

/// Fault 1: two worker processes share a 100,000-resource collection; the one running a task
/// is killed with SIGKILL halfway. Its task's lease expires, the task runs again on the other
/// worker, and the job succeeds with every resource stored once. The survivor then stops on
/// SIGTERM and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_collection_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 0,
            ..quick()
        },
    )
    .await?;
    let mut a = worker_process(&env, "worker-a", FAULT_WORKER)?;
    let mut b = worker_process(&env, "worker-b", FAULT_WORKER)?;
    let collector = env.demo_collector(4, json!({"resources": 25_000})).await?;
    let job = env.start_collect(&collector).await?;

    // The victim: a worker whose task has stored something and is far from done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let owners = env
            .json_column(
                "SELECT to_jsonb(lease_owner) FROM job_tasks \
                 WHERE status = 'IN_PROGRESS' AND created BETWEEN 2000 AND 15000",
            )
            .await?;
        if let Some(owner) = owners.iter().find_map(Value::as_str) {
            break owner.to_owned();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no task got halfway: {}",
            env.get(&format!("/v1/jobs/{job}/tasks")).await?.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (victim_child, survivor) = if victim == "worker-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim_child.start_kill()?;
    victim_child.wait().await?;

    let ended = env.wait_job_within(&job, Duration::from_secs(120)).await?;
    assert_eq!(ended["status"], "SUCCESS", "{ended}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 100_000);
    assert_eq!(
        env.scalar("SELECT count(DISTINCT (resource_type, resource_key)) FROM resources")
            .await?,
        100_000
    );
    let tasks = env.get(&format!("/v1/jobs/{job}/tasks")).await?;
    let retried: Vec<&Value> = tasks.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|t| t["attempt"].as_i64() > Some(1))
        .collect();
    assert!(!retried.is_empty(), "{}", tasks.body);
    for t in &retried {
        let first = &t["previous_attempts"][0];
        assert_eq!(first["worker"], victim.as_str(), "{t}");
        let error = first["error"].as_str().unwrap_or_default();
        assert!(error.contains("lease of attempt 1 expired"), "{error}");
    }
    let (conn, ch) = channel(&env).await?;
    assert!(dead_letters(&env, &ch).await?.is_empty());
    conn.close(200, "done".into()).await.ok();

    // Graceful stop: SIGTERM, exit 0.
    let pid = survivor.id().context("the survivor's pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(20), survivor.wait())
        .await
        .context("the worker did not stop within 20 s of SIGTERM")??;
    assert!(status.success(), "{status}");
    for name in ["worker-a", "worker-b"] {
        std::fs::remove_file(worker_log(&env, name)).ok();
    }
    Ok(())
}

in_both_modes!(a_job_whose_tasks_all_ended_is_ended_by_the_reaper);

/// The worker of a job's last task died between recording the task's outcome and ending the
/// job: the job is left IN_PROGRESS with every task ended, and the reaper ends it.
async fn a_job_whose_tasks_all_ended_is_ended_by_the_reaper(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 10})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let id = env.uuid_sql(job["id"].as_str().context("id")?)?;
    env.db
        .execute_unprepared(&format!(
            "UPDATE jobs SET status = 'IN_PROGRESS', finished_at = NULL WHERE id = {id}"
        ))
        .await?;
    let reaped =
        gleaner_worker::reaper::pass(&env.db, chrono::Utc::now(), Duration::from_secs(3600))
            .await?;
    assert_eq!(reaped.concluded, 1, "{reaped:?}");
    let after = env
        .get(&format!("/v1/jobs/{}", job["id"].as_str().context("id")?))
        .await?;
    assert_eq!(after.body["status"], "SUCCESS", "{}", after.body);
    assert_eq!(after.body["tasks_done"], 2);
    assert!(after.body["finished_at"].is_string());
    // A second pass finds nothing left to do.
    let again =
        gleaner_worker::reaper::pass(&env.db, chrono::Utc::now(), Duration::from_secs(3600))
            .await?;
    assert_eq!(again, gleaner_worker::reaper::Reaped::default());
    Ok(())
}

/// A message published with a delay reaches its work queue once, after the delay, and not
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_arrives_once_after_its_delay() -> anyhow::Result<()> {
    use gleaner_common::broker::{self, Names};
    use gleaner_common::model::JobKind;
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 0,
            ..Options::default()
        },
    )
    .await?;
    let names = Names::new(env.settings.amqp.prefix.clone());
    let (conn, ch) = channel(&env).await?;
    broker::declare(&ch, &names).await?;
    ch.confirm_select(Default::default()).await?;
    let depth = |queue: String| {
        let ch = ch.clone();
        async move {
            let q = ch
                .queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await?;
            anyhow::Ok(q.message_count())
        }
    };
    let sent = std::time::Instant::now();
    let confirm = broker::publish_delayed(
        &ch,
        &names,
        "inventory.task.requested",
        b"{}",
        BasicProperties::default().with_delivery_mode(2),
        Duration::from_millis(1500),
    )
    .await?
    .await?;
    assert!(confirm.is_ack());
    let work = names.queue(JobKind::Inventory);
    assert_eq!(depth(work.clone()).await?, 0, "delivered before its delay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while depth(work.clone()).await? == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        sent.elapsed()
    );
    // Every tier's queue is empty and the work queue holds exactly one copy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(depth(work).await?, 1);
    for tier in broker::DELAY_TIERS {
        assert_eq!(depth(names.delay_queue(tier)).await?, 0, "tier {tier}");
    }
    conn.close(200, "done".into()).await.ok();
    Ok(())
}

/// SIGTERM in the middle of a long task: the worker stops the plugin after its grace period,
/// hands the task back with a new message, and exits 0; another worker then finishes the job,
/// every resource stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_hands_its_task_to_another() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 0,
            ..quick()
        },
    )
    .await?;
    let mut a = worker_process(&env, "worker-a", FAULT_WORKER)?;
    let mut b = worker_process(&env, "worker-b", FAULT_WORKER)?;
    // About 6 s at 2 ms a resource, in batches of 2,000: longer than the 2 s grace period.
    let collector = env
        .demo_collector(1, json!({"resources": 3_000, "item_delay_ms": 2}))
        .await?;
    let job = env.start_collect(&collector).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let owners = env
            .json_column("SELECT to_jsonb(lease_owner) FROM job_tasks WHERE status = 'IN_PROGRESS'")
            .await?;
        if let Some(owner) = owners.iter().find_map(Value::as_str) {
            break owner.to_owned();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the task never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (stopping, other) = if owner == "worker-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let pid = stopping.id().context("pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    // The broker hands the task's message to the other worker as soon as the stopping one
    // closes its connection, while the task still runs: that copy is dropped, and only the
    // message written with the release carries the task on.
    let status = tokio::time::timeout(Duration::from_secs(30), stopping.wait())
        .await
        .context("no exit within 30 s of SIGTERM")??;
    assert!(status.success(), "{status}");
    let ended = env.wait_job_within(&job, Duration::from_secs(60)).await?;
    assert_eq!(ended["status"], "SUCCESS", "{ended}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 3_000);
    // Handed back, not failed: a second attempt, on the other worker, with no failed one.
    let tasks = env.get(&format!("/v1/jobs/{job}/tasks")).await?;
    let task = &tasks.body["items"][0];
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["previous_attempts"], json!([]), "{task}");
    other.start_kill()?;
    other.wait().await?;
    for name in ["worker-a", "worker-b"] {
        std::fs::remove_file(worker_log(&env, name)).ok();
    }
    Ok(())
}

in_both_modes!(a_queued_task_whose_message_was_lost_gets_a_new_one);

/// A task left QUEUED with no message anywhere (lost in a broker failure, say): the reaper
/// sends a new one, and the task runs.
async fn a_queued_task_whose_message_was_lost_gets_a_new_one(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 10})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let job_id = job["id"].as_str().context("id")?;
    let id = env.uuid_sql(job_id)?;
    env.db
        .execute_unprepared(&format!(
            "UPDATE job_tasks SET status = 'QUEUED', finished_at = NULL WHERE job_id = {id}"
        ))
        .await?;
    env.db
        .execute_unprepared(&format!(
            "UPDATE jobs SET status = 'IN_PROGRESS', finished_at = NULL WHERE id = {id}"
        ))
        .await?;
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    let reaped = gleaner_worker::reaper::pass(&env.db, at, Duration::ZERO).await?;
    assert_eq!(reaped.nudged, 1, "{reaped:?}");
    let ended = env.wait_job(job_id).await?;
    assert_eq!(ended["status"], "SUCCESS", "{ended}");
    let tasks = env.get(&format!("/v1/jobs/{job_id}/tasks")).await?;
    assert_eq!(tasks.body["items"][0]["attempt"], 2, "{}", tasks.body);
    Ok(())
}

in_both_modes!(a_task_left_running_runs_again_once_whatever_duplicate_messages_say);

/// A task left IN_PROGRESS by an attempt nobody runs any more (its worker died, or could not
/// record its end), with duplicate messages of its next attempt queued (a hand-back and a retry
/// both sent one, say): the messages start nothing while the attempt holds the task; once its
/// lease has run out the reaper counts the attempt as failed and queues the task, and exactly
/// one attempt runs after it.
async fn a_task_left_running_runs_again_once_whatever_duplicate_messages_say(
    mode: Mode,
) -> anyhow::Result<()> {
    use gleaner_common::envelope::{Envelope, TaskRequested};
    use gleaner_common::id::{DomainId, JobId, TaskId};
    use gleaner_common::model::JobKind;

    let env = TestEnv::start_with(mode, quick()).await?;
    let collector = env.demo_collector(1, json!({"resources": 50})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let job_id = job["id"].as_str().context("job id")?;
    let tasks = env.get(&format!("/v1/jobs/{job_id}/tasks")).await?;
    let task_id = tasks.body["items"][0]["id"].as_str().context("task id")?;

    // Back to attempt 1 running, its lease already over, and the job with it.
    let (job_sql, task_sql) = (env.uuid_sql(job_id)?, env.uuid_sql(task_id)?);
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    env.db
        .execute_unprepared(&format!(
            "UPDATE job_tasks SET status = 'IN_PROGRESS', finished_at = NULL, \
             lease_owner = 'a-dead-worker', lease_expires_at = '{past}' WHERE id = {task_sql}"
        ))
        .await?;
    env.db
        .execute_unprepared(&format!(
            "UPDATE jobs SET status = 'IN_PROGRESS', tasks_done = 0, finished_at = NULL \
             WHERE id = {job_sql}"
        ))
        .await?;
    let message = |attempt| {
        Envelope::new(
            DomainId::DEFAULT,
            JobKind::Inventory,
            JobId::from_uuid(uuid::Uuid::parse_str(job_id).expect("a job id")),
            Some(TaskId::from_uuid(
                uuid::Uuid::parse_str(task_id).expect("a task id"),
            )),
            attempt,
            TaskRequested {},
        )
    };
    // Two messages of attempt 2, and a late one of attempt 1.
    let duplicates = [message(2), message(2), message(1)];
    gleaner_common::store::outbox::insert_many(&env.db, &duplicates).await?;

    let finished = env.wait_job(job_id).await?;
    assert_eq!(finished["status"], "SUCCESS", "{finished}");
    let tasks = env.get(&format!("/v1/jobs/{job_id}/tasks")).await?;
    let task = &tasks.body["items"][0];
    assert_eq!(
        task["attempt"], 2,
        "one attempt after the abandoned one: {task}"
    );
    let previous = task["previous_attempts"].as_array().context("previous")?;
    assert_eq!(previous.len(), 1, "{task}");
    assert_eq!(previous[0]["worker"], "a-dead-worker", "{task}");
    let why = previous[0]["error"].as_str().unwrap_or_default();
    assert!(why.contains("lease of attempt 1 expired"), "{why}");
    assert_eq!(task["counts"]["unchanged"], 50, "{task}");
    Ok(())
}

/// A message the broker refuses (here: no queue is bound for its routing key, so the broker
/// returns it) is offered again a few times, then marked dead with the reason; the rows behind
/// it are published meanwhile, and a collection started after it runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_past_a_message_the_broker_refuses() -> anyhow::Result<()> {
    use gleaner_common::store::outbox::REFUSALS_BEFORE_DEAD;

    let env = TestEnv::start(Mode::Distributed).await?;
    env.plant_message("routing_key = 'nowhere.requested'")
        .await?;
    let collector = env.demo_collector(3, json!({"resources": 20})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(
        job["status"], "SUCCESS",
        "published past the refused row: {job}"
    );

    let (attempts, error) = env.dead_outbox_row().await?;
    assert_eq!(attempts, Some(i64::from(REFUSALS_BEFORE_DEAD)));
    assert!(
        error.contains("no queue is bound for routing key `nowhere.requested`"),
        "{error}"
    );
    // Nothing else is left behind.
    assert_eq!(
        env.scalar("SELECT count(*) FROM outbox WHERE dead_at IS NULL")
            .await?,
        0
    );
    Ok(())
}
