//! Limits a RabbitMQ broker enforces on its clients, which Gleaner must live with:
//!
//! - the consumer acknowledgement timeout: a channel whose delivery stays unacknowledged past
//!   `consumer_timeout` (30 minutes by default) is closed with `PRECONDITION_FAILED`, and every
//!   unacknowledged delivery of that channel is handed back. A worker must settle a task's
//!   delivery long before: a collection can run for hours, and tasks of the same collector and
//!   service account wait for each other's collection lock;
//! - the largest message: a publish larger than `max_message_size` makes the broker close the
//!   publishing channel, failing every publish after it on that channel.
//!
//! Each test lowers a broker-wide setting for its run (its guard puts the previous value back,
//! also when the test fails), so they are `#[ignore]`d and run alone, one at a time:
//!
//! ```text
//! cargo test --test it broker_limits -- --ignored --test-threads=1
//! ```
//!
//! `GLEANER_TEST_RABBITMQCTL` replaces the `rabbitmqctl` command (a shell command, given
//! `eval <expression>` as arguments), e.g. `docker exec rabbitmq rabbitmqctl`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Mode, Options, TestEnv, channel, dead_letters, worker_log, worker_process};

/// The lowered timeout. The broker checks it about once a minute (the channel's tick), so a
/// delivery held past it is caught within a minute and 5 s.
const LOWERED_MS: u64 = 5_000;

/// The first collection's length: past two of the broker's checks whenever it starts.
const LONG_RESOURCES: u64 = 130;
const LONG_ITEM_DELAY_MS: u64 = 1_000;

/// Collections started behind the long one, waiting for its collection lock.
const WAITING: usize = 50;

/// Runs `rabbitmqctl eval <expression>` and returns what it printed.
fn rabbitmqctl_eval(expression: &str) -> anyhow::Result<String> {
    let command =
        std::env::var("GLEANER_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    // The expression goes as positional arguments, so its quotes need no escaping.
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{command} \"$@\""), "sh", "eval", expression])
        .output()
        .with_context(|| format!("running `{command} eval {expression}`"))?;
    if !out.status.success() {
        bail!(
            "`{command} eval {expression}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A setting of the broker (`rabbit` application): `Some(value)`, or `None` when unset.
fn current(key: &str) -> anyhow::Result<Option<u64>> {
    let printed = rabbitmqctl_eval(&format!("application:get_env(rabbit, {key})."))?;
    if printed == "undefined" {
        return Ok(None);
    }
    let value = printed
        .strip_prefix("{ok,")
        .and_then(|r| r.strip_suffix('}'))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("an unexpected {key}: {printed}"))?;
    Ok(Some(value))
}

fn set(key: &str, value: Option<u64>) -> anyhow::Result<()> {
    let expression = match value {
        Some(v) => format!("application:set_env(rabbit, {key}, {v})."),
        None => format!("application:unset_env(rabbit, {key})."),
    };
    let printed = rabbitmqctl_eval(&expression)?;
    anyhow::ensure!(printed == "ok", "`{expression}` printed {printed}");
    let now = current(key)?;
    anyhow::ensure!(now == value, "{key} is {now:?} after `{expression}`");
    Ok(())
}

/// Lowers a broker setting while alive; dropping it restores the previous value. A channel
/// reads these settings when it opens, so lower them before the clients connect.
struct Lowered {
    key: &'static str,
    previous: Option<u64>,
}

impl Lowered {
    fn to(key: &'static str, value: u64) -> anyhow::Result<Self> {
        let previous = current(key)?;
        // Built before setting: a failed set still restores whatever it may have changed.
        let guard = Self { key, previous };
        set(key, Some(value))?;
        eprintln!("{key} lowered from {previous:?} to {value}");
        Ok(guard)
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        match set(self.key, self.previous) {
            Ok(()) => eprintln!("{} restored to {:?}", self.key, self.previous),
            Err(e) => eprintln!(
                "RESTORING {} TO {:?} FAILED: {e:#}; set it by hand",
                self.key, self.previous
            ),
        }
    }
}

/// 51 collections of one collector and service account on one worker that runs 8 tasks at
/// most: the first runs for about 130 s; 7 more are claimed and wait for its collection lock;
/// the other 43 wait for a free slot of the worker. With `consumer_timeout` lowered to 5 s,
/// every delivery is held past it unless the worker settles a task's delivery once the task is
/// claimed, and hands back a delivery that waits for a slot (here after 2 s): no channel may be
/// closed, no task may run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lowers RabbitMQ's broker-wide consumer_timeout and runs ~4 minutes; run alone: \
            cargo test --test it broker_limits -- --ignored --test-threads=1"]
async fn tasks_held_past_the_consumer_timeout_keep_the_workers_channel() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 0,
            ..Options::default()
        },
    )
    .await?;
    let timeout = Lowered::to("consumer_timeout", LOWERED_MS)?;
    let log = worker_log(&env, "worker");
    let started = Instant::now();
    eprintln!(
        "worker starting at {} (log {})",
        chrono::Utc::now(),
        log.display()
    );
    let mut worker = worker_process(
        &env,
        "worker",
        &[
            ("GLEANER_WORKER__CONCURRENCY", "1"),
            ("GLEANER_WORKER__MAX_TASKS", "8"),
            ("GLEANER_WORKER__DELIVERY_HOLD", "2"),
            // The hand-backs are logged at debug level.
            ("RUST_LOG", "info,gleaner_worker::consumer=debug"),
        ],
    )?;
    let outcome = scenario(&env, started).await;
    let checked = match outcome {
        Ok(problems) => check_log(&log, problems),
        Err(e) => Err(e),
    };
    eprintln!("ended after {:.0} s", started.elapsed().as_secs_f64());
    if let Err(e) = &checked {
        eprintln!("failed: {e:#}");
        print_log(&log);
    }
    worker.start_kill().ok();
    worker.wait().await.ok();
    std::fs::remove_file(&log).ok();
    drop(timeout);
    checked
}

/// Runs the collections and checks the jobs, their tasks and the dead letters. Returns what
/// went wrong with them, for the caller to report beside what the log shows.
async fn scenario(env: &TestEnv, started: Instant) -> anyhow::Result<Vec<String>> {
    let collector = env
        .demo_collector(
            1,
            json!({"resources": LONG_RESOURCES, "item_delay_ms": LONG_ITEM_DELAY_MS}),
        )
        .await?;
    let long = env.start_collect(&collector).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = env.get(&format!("/v1/jobs/{long}/tasks")).await?;
        if tasks.body["items"][0]["status"] == "IN_PROGRESS" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the long task never started: {}",
            tasks.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "long task IN_PROGRESS after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A job keeps the options it was accepted with: the long one stays long.
    let patched = env
        .patch(
            &format!("/v1/collectors/{collector}"),
            json!({"options": {"resources": 1}}),
        )
        .await?;
    anyhow::ensure!(
        patched.status == StatusCode::OK,
        "PATCH answered {}: {}",
        patched.status,
        patched.body
    );
    let mut jobs = vec![long];
    for _ in 0..WAITING {
        jobs.push(env.start_collect(&collector).await?);
    }
    eprintln!(
        "{WAITING} more jobs accepted after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut problems = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6 * 60);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for job in &jobs {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let status = match env.wait_job_within(job, left).await {
            Ok(ended) => {
                if ended["status"] != "SUCCESS" {
                    problems.push(format!("job {job} ended {ended}"));
                }
                ended["status"].as_str().unwrap_or("?").to_owned()
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                "unfinished".to_owned()
            }
        };
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!(
        "jobs after {:.0} s: {statuses:?}",
        started.elapsed().as_secs_f64()
    );
    for job in &jobs {
        let tasks = env.get(&format!("/v1/jobs/{job}/tasks")).await?;
        let items = tasks.body["items"].as_array().context("items")?;
        if items.len() != 1 {
            problems.push(format!(
                "job {job} has {} tasks: {}",
                items.len(),
                tasks.body
            ));
        }
        for t in items {
            if t["attempt"] != 1 || t["previous_attempts"] != json!([]) {
                problems.push(format!("a task of job {job} ran more than once: {t}"));
            }
        }
    }
    let (conn, ch) = channel(env).await?;
    let letters = dead_letters(env, &ch).await?;
    conn.close(200, "done".into()).await.ok();
    if !letters.is_empty() {
        problems.push(format!("dead letters: {letters:?}"));
    }
    Ok(problems)
}

/// Adds what the worker's log shows of closed channels and reconnections to `problems`; fails
/// when there is any.
fn check_log(log: &std::path::Path, mut problems: Vec<String>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading the worker's log {}", log.display()))?;
    let closed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("PRECONDITION_FAILED") || l.contains("consumer lost its connection"))
        .collect();
    if !closed.is_empty() {
        problems.push(format!(
            "the broker closed the worker's channel:\n{}",
            closed.join("\n")
        ));
    }
    // The deliveries beyond the worker's 8 slots were handed back rather than held.
    if !text.contains("no free task slot in time; the message was handed back") {
        problems.push("no delivery waiting for a slot was handed back".into());
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!("{}", problems.join("\n"))
}

/// Prints the worker's warnings and errors (the first 60), then the last 30 lines of its log.
fn print_log(log: &std::path::Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let bad: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR "))
        .collect();
    eprintln!(
        "--- the worker's warnings and errors ({} in all):",
        bad.len()
    );
    for line in bad.iter().take(60) {
        eprintln!("{line}");
    }
    eprintln!("--- the worker's log, last 30 of {} lines:", lines.len());
    for line in &lines[lines.len().saturating_sub(30)..] {
        eprintln!("{line}");
    }
    eprintln!("---");
}

/// The largest message the broker takes while the next test runs: well above what Gleaner
/// sends (ids and a job's summary), well below the message it plants.
const MAX_MESSAGE: u64 = 64 * 1024;

/// An outbox row larger than the broker takes makes it close the relay's channel whenever it is
/// published. The relay publishes it alone after the others, and marks it dead after its
/// refusals; the collection accepted after it runs to its end meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lowers RabbitMQ's broker-wide max_message_size; run alone: \
            cargo test --test it broker_limits -- --ignored --test-threads=1"]
async fn a_message_too_large_for_the_broker_is_set_aside_and_the_rest_published()
-> anyhow::Result<()> {
    use gleaner_common::store::outbox::REFUSALS_BEFORE_DEAD;

    // Before the environment starts: its relay's channel reads the limit when it opens.
    let limit = Lowered::to("max_message_size", MAX_MESSAGE)?;
    let env = TestEnv::start(Mode::Distributed).await?;
    env.plant_message(&format!("body = body || repeat(' ', {})", 2 * MAX_MESSAGE))
        .await?;
    let collector = env.demo_collector(3, json!({"resources": 20})).await?;
    let job = env.collect(&collector).await?;
    anyhow::ensure!(
        job["status"] == "SUCCESS",
        "published past the big row: {job}"
    );

    let (attempts, error) = env.dead_outbox_row().await?;
    anyhow::ensure!(
        attempts == Some(i64::from(REFUSALS_BEFORE_DEAD)),
        "refused {attempts:?} times"
    );
    anyhow::ensure!(
        error.contains("larger than configured max size"),
        "the broker's reason: {error}"
    );
    anyhow::ensure!(
        env.scalar("SELECT count(*) FROM outbox WHERE dead_at IS NULL")
            .await?
            == 0,
        "rows left unpublished"
    );
    drop(env);
    drop(limit);
    Ok(())
}
