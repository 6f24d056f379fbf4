//! RabbitMQ's consumer acknowledgement timeout: a channel whose delivery stays unacknowledged
//! past `consumer_timeout` (30 minutes by default) is closed with `PRECONDITION_FAILED`, and
//! every unacknowledged delivery of that channel is handed back. A worker must settle a task's
//! delivery long before: a collection can run for hours, and tasks of the same collector and
//! service account wait for each other's collection lock.
//!
//! The test lowers the broker-wide setting to 5 s for its run (its guard puts the previous value
//! back, also when the test fails), so it is `#[ignore]`d and run alone:
//!
//! ```text
//! cargo test --test it consumer_timeout -- --ignored --nocapture
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

/// The broker's `consumer_timeout`: `Some(ms)`, or `None` when unset.
fn current_timeout() -> anyhow::Result<Option<u64>> {
    let printed = rabbitmqctl_eval("application:get_env(rabbit, consumer_timeout).")?;
    if printed == "undefined" {
        return Ok(None);
    }
    let ms = printed
        .strip_prefix("{ok,")
        .and_then(|r| r.strip_suffix('}'))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("an unexpected consumer_timeout: {printed}"))?;
    Ok(Some(ms))
}

fn set_timeout(value: Option<u64>) -> anyhow::Result<()> {
    let expression = match value {
        Some(ms) => format!("application:set_env(rabbit, consumer_timeout, {ms})."),
        None => "application:unset_env(rabbit, consumer_timeout).".to_owned(),
    };
    let printed = rabbitmqctl_eval(&expression)?;
    anyhow::ensure!(printed == "ok", "`{expression}` printed {printed}");
    let now = current_timeout()?;
    anyhow::ensure!(
        now == value,
        "consumer_timeout is {now:?} after `{expression}`"
    );
    Ok(())
}

/// Lowers the broker's `consumer_timeout` while alive; dropping it restores the previous value.
/// A channel reads the setting when it opens, so lower it before the consumer connects.
struct ConsumerTimeout {
    previous: Option<u64>,
}

impl ConsumerTimeout {
    fn lower_to(ms: u64) -> anyhow::Result<Self> {
        let previous = current_timeout()?;
        // Built before setting: a failed set still restores whatever it may have changed.
        let guard = Self { previous };
        set_timeout(Some(ms))?;
        eprintln!("consumer_timeout lowered from {previous:?} to {ms} ms");
        Ok(guard)
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        match set_timeout(self.previous) {
            Ok(()) => eprintln!("consumer_timeout restored to {:?}", self.previous),
            Err(e) => eprintln!(
                "RESTORING consumer_timeout TO {:?} FAILED: {e:#}; set it by hand",
                self.previous
            ),
        }
    }
}

/// 51 collections of one collector and service account on one worker: the first runs for
/// about 130 s, the other 50 wait for its collection lock, then run a second each. With
/// `consumer_timeout` lowered to 5 s, every delivery is held past it unless the worker settles
/// it once its task is claimed: no channel may be closed, no task may run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lowers RabbitMQ's broker-wide consumer_timeout and runs ~3 minutes; run alone: \
            cargo test --test it consumer_timeout -- --ignored --nocapture"]
async fn tasks_held_past_the_consumer_timeout_keep_the_workers_channel() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 0,
            ..Options::default()
        },
    )
    .await?;
    let timeout = ConsumerTimeout::lower_to(LOWERED_MS)?;
    let log = worker_log(&env, "worker");
    let started = Instant::now();
    eprintln!(
        "worker starting at {} (log {})",
        chrono::Utc::now(),
        log.display()
    );
    let mut worker = worker_process(&env, "worker", &[])?;
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
