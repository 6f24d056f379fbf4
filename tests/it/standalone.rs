//! The `gleaner standalone` binary as a user runs it: killed with SIGKILL in the middle of a
//! collection and started again on the same data directory, it finishes the job with every
//! resource stored exactly once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{Api, Mode, TestEnv};

/// One run of the binary on a data directory; its API client's methods are its own.
pub(crate) struct Standalone {
    child: Child,
    api: Api,
}

impl std::ops::Deref for Standalone {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Standalone {
    /// Starts the binary and waits for the line that says where it listens.
    pub(crate) async fn start(
        dir: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_gleaner"))
            .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            // The key comes from the data directory, as for a user who set nothing.
            .env_remove("GLEANER_SECRET_KEY")
            .env("GLEANER_WORKER__BATCH_SIZE", "1000")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting gleaner standalone")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("no output within 30 s")??
            .context("exited before listening")?;
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("no address in `{first}`"))?
            .to_owned();
        // Keep reading, so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let api = Api::new(base);
        api.wait_ready().await?;
        // The first start wrote the default domain's admin key before it served.
        let key = std::fs::read_to_string(dir.join("admin.key")).context("admin.key")?;
        Ok(Self {
            child,
            api: api.with_key(key.trim()),
        })
    }

    /// A demo account and collector of `resources`, and a collection: its job id.
    async fn start_demo_job(&self, resources: i64) -> anyhow::Result<String> {
        let collector = self
            .demo_collector(1, json!({"resources": resources}))
            .await?;
        self.start_collect(&collector).await
    }

    /// Waits until the job has committed `created` resources, failing if it ends first.
    async fn wait_progress(&self, job: &str, created: i64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let j = self.get(&format!("/v1/jobs/{job}")).await?.body;
            if j["status"] != "IN_PROGRESS" && j["status"] != "QUEUED" {
                bail!("the job ended too early: {j}");
            }
            if j["counts"]["created"].as_i64().unwrap_or(0) >= created {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no progress within 60 s: {j}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A fresh directory for one test's data and log, removed afterwards.
pub(crate) fn test_dir(tag: &str) -> anyhow::Result<TempDir> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let root = TempDir(
        std::env::temp_dir()
            .join("gleaner-it")
            .join(format!("t_{now}_{:08x}_{tag}", rand::random::<u32>())),
    );
    std::fs::create_dir_all(&root.0)?;
    Ok(root)
}

const RESOURCES: i64 = 50_000;

/// After the restart: the job SUCCESS, its task run again, and every resource stored once.
/// `committed`: resources the first run had committed before it was stopped.
async fn assert_finished_exactly_once(
    gleaner: &Standalone,
    job: &str,
    committed: i64,
) -> anyhow::Result<()> {
    let finished = gleaner
        .wait_job_within(job, Duration::from_secs(120))
        .await?;
    assert_eq!(finished["status"], "SUCCESS", "{finished}");
    let tasks = gleaner.get(&format!("/v1/jobs/{job}/tasks")).await?.body;
    let task = &tasks["items"][0];
    assert!(
        task["attempt"].as_i64() >= Some(2),
        "the task ran again: {task}"
    );
    // The new attempt found what the first had committed, unchanged.
    let counts = &task["counts"];
    assert_eq!(
        counts["created"].as_i64().unwrap_or(0) + counts["unchanged"].as_i64().unwrap_or(0),
        RESOURCES,
        "{task}"
    );
    assert!(counts["unchanged"].as_i64() >= Some(committed), "{task}");
    let page = gleaner.get("/v1/resources?limit=1").await?.body;
    assert_eq!(page["total"], RESOURCES, "exactly once: {}", page["total"]);
    Ok(())
}

/// Runs `scenario` on a fresh data directory and log file, printing the log's tail if it
/// fails.
pub(crate) async fn on_fresh_dir(
    tag: &str,
    scenario: impl AsyncFnOnce(&Path, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let root = test_dir(tag)?;
    let (dir, log) = (root.0.join("data"), root.0.join("gleaner.log"));
    let result = scenario(&dir, &log).await;
    if result.is_err() {
        eprintln!("--- gleaner.log (last lines) ---\n{}", log_tail(&log));
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_collection_then_restart_finishes_the_job_exactly_once()
-> anyhow::Result<()> {
    on_fresh_dir("kill", async |dir, log| {
        let first = Standalone::start(dir, log, &[]).await?;
        let job = first.start_demo_job(RESOURCES).await?;
        // Killed once part of the collection is committed, and before the end.
        first.wait_progress(&job, 5_000).await?;
        first.kill().await?;

        let second = Standalone::start(dir, log, &[]).await?;
        assert_finished_exactly_once(&second, &job, 5_000).await?;
        second.kill().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_releases_the_running_task_and_exits_after_the_grace_period() -> anyhow::Result<()> {
    on_fresh_dir("sigint", async |dir, log| {
        // No grace: the running task is released at once, whatever the machine's speed.
        let grace = [("GLEANER_WORKER__SHUTDOWN_GRACE", "0")];
        let mut first = Standalone::start(dir, log, &grace).await?;
        let job = first.start_demo_job(RESOURCES).await?;
        first.wait_progress(&job, 2_000).await?;
        let pid = first.child.id().context("pid")?;
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        assert!(sent.success());
        // The task is released and the process exits by itself.
        let status = tokio::time::timeout(Duration::from_secs(15), first.child.wait())
            .await
            .context("still running 15 s after Ctrl-C")??;
        assert!(status.success(), "exit status {status}");
        assert!(
            std::fs::read_to_string(log)?.contains("releasing in-flight tasks"),
            "the running task was handed back"
        );

        let second = Standalone::start(dir, log, &[]).await?;
        assert_finished_exactly_once(&second, &job, 2_000).await?;
        second.kill().await
    })
    .await
}

/// A message that can never be handled, and one that was handed out the delivery limit's
/// number of times without being settled (say, it killed the process each time), are marked
/// dead with the reason instead of being delivered forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_messages_are_marked_dead_with_the_reason() -> anyhow::Result<()> {
    use gleaner_common::envelope::{Envelope, TaskRequested};
    use gleaner_common::id::{DomainId, JobId, TaskId};
    use gleaner_common::model::JobKind;
    use sea_orm::ConnectionTrait as _;

    let env = TestEnv::start(Mode::Standalone).await?;
    let message = || {
        Envelope::new(
            DomainId::DEFAULT,
            JobKind::Inventory,
            JobId::new(),
            Some(TaskId::new()),
            1,
            TaskRequested {},
        )
    };
    // Both written in one statement each, before the dispatcher can see them half-made.
    let txn = sea_orm::TransactionTrait::begin(&env.db).await?;
    gleaner_common::store::outbox::insert(&txn, &message()).await?;
    txn.execute_unprepared(
        "UPDATE outbox SET body = 'not json' WHERE id = (SELECT max(id) FROM outbox)",
    )
    .await?;
    gleaner_common::store::outbox::insert(&txn, &message()).await?;
    txn.execute_unprepared(&format!(
        "UPDATE outbox SET publish_attempts = {} WHERE id = (SELECT max(id) FROM outbox)",
        gleaner_worker::local::DELIVERY_LIMIT
    ))
    .await?;
    txn.commit().await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env
        .scalar("SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL")
        .await?
        < 2
    {
        if tokio::time::Instant::now() > deadline {
            bail!("the messages were not marked dead");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reasons = env
        .json_column("SELECT json_array(last_error) FROM outbox ORDER BY id")
        .await?;
    let reasons: Vec<String> = reasons
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        reasons[0].contains("expected"),
        "the parse error: {reasons:?}"
    );
    assert!(reasons[1].contains("delivered 10 times"), "{reasons:?}");
    // Neither was handled again meanwhile.
    assert_eq!(
        env.scalar("SELECT max(publish_attempts) FROM outbox")
            .await?,
        i64::from(gleaner_worker::local::DELIVERY_LIMIT)
    );
    Ok(())
}
