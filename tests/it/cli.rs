//! The CLI: the `gleaner` binary run as a user runs it, against a live Gleaner.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::plugins::{collector_of, register_misbehaving};
use crate::support::{Mode, TestEnv};

/// What a run of the binary printed, and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(self) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.code == 0,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

/// A user of the CLI: their own login file, and nothing of the test process's environment that
/// the CLI reads.
struct User {
    config: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl User {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("gleaner-cli-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            config: dir.join("config").join("cli.toml"),
            _dir: TempDir(dir),
        })
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        self.run_with(args, None, &[]).await
    }

    async fn run_with(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Run> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gleaner"));
        cmd.args(args)
            .env("GLEANER_CLI_CONFIG", &self.config)
            .env_remove("GLEANER_SERVER")
            .env_remove("GLEANER_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await?;
        }
        drop(input);
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            child.wait_with_output(),
        )
        .await
        .with_context(|| format!("gleaner {args:?} ran past 120 s"))??;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout)?,
            stderr: String::from_utf8(out.stderr)?,
        })
    }

    async fn login(&self, env: &TestEnv) -> anyhow::Result<()> {
        let key = env.key().context("the test's admin key")?;
        self.run_with(
            &["login", "--server", &env.base, "--api-key-stdin"],
            Some(&format!("{key}\n")),
            &[],
        )
        .await?
        .ok()?;
        Ok(())
    }
}

fn mode_of(p: &Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

async fn a_user_logs_in_creates_a_collector_and_collects(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let user = User::new()?;
    user.login(&env).await?;
    assert_eq!(mode_of(&user.config)?, 0o600);
    assert_eq!(mode_of(user.config.parent().context("dir")?)?, 0o700);
    let stored = std::fs::read_to_string(&user.config)?;
    assert!(stored.contains(env.key().context("key")?), "{stored}");

    let project = user
        .run(&["projects", "create", "ops", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let account = user
        .run(&[
            "service-accounts",
            "create",
            "--name",
            "demo-1",
            "--provider",
            "demo",
            "--project",
            "ops",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(
        account["project_id"], project["id"],
        "the project by its name"
    );
    let created = user
        .run(&[
            "collectors",
            "create",
            "--name",
            "estate",
            "--plugin",
            "demo",
            "--options",
            r#"{"resources": 7}"#,
            "--tag",
            "env=dev",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(created["tags"]["env"], "dev");
    assert_eq!(created["options"]["resources"], 7);

    // The API's refusal, with the field, and exit 4.
    let dup = user
        .run(&[
            "collectors",
            "create",
            "--name",
            "estate",
            "--plugin",
            "demo",
        ])
        .await?;
    assert_eq!(dup.code, 4, "{}", dup.stderr);
    assert!(dup.stderr.starts_with("error: "), "{}", dup.stderr);
    assert!(
        dup.stderr.contains("\n  name: "),
        "the field on a line of its own: {}",
        dup.stderr
    );

    let done = user.run(&["collect", "estate", "--wait"]).await?.ok()?;
    assert!(
        done.stdout.contains("SUCCESS")
            && done
                .stdout
                .contains("1 of 1 tasks; created 7, updated 0, unchanged 0, deleted 0, failed 0"),
        "{}",
        done.stdout
    );
    let again = user
        .run(&["collect", "estate", "--wait", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(again["status"], "SUCCESS");
    assert_eq!(again["counts"]["unchanged"], 7, "{again}");

    let listed = user
        .run(&["collectors", "ls", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let mine = &listed["items"][0];
    assert_eq!(mine["name"], "estate");
    assert_eq!(mine["last_job"]["status"], "SUCCESS");
    let csv = user.run(&["collectors", "ls", "-o", "csv"]).await?.ok()?;
    let mut lines = csv.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("ID,NAME,STATE,PRIORITY,PLUGIN,VERSION,LAST COLLECTED,NEXT SCHEDULED,LAST JOB")
    );
    let row = lines.next().context("a row")?;
    assert!(
        row.contains(",estate,ENABLED,10,demo,1.0.0,") && row.ends_with(",SUCCESS"),
        "{row}"
    );
    let table = user.run(&["collectors", "ls"]).await?.ok()?;
    assert!(
        table.stdout.contains("estate") && table.stdout.contains("ENABLED"),
        "{}",
        table.stdout
    );

    let resources = user
        .run(&[
            "resources",
            "ls",
            "--collector",
            "estate",
            "--limit",
            "5",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(resources["total"], 7);
    assert_eq!(resources["items"].as_array().map(Vec::len), Some(5));
    let jobs = user
        .run(&["jobs", "ls", "--collector", "estate", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(2));

    // A schedule in Seoul shows its next fire in Seoul's time.
    let schedule = user
        .run(&[
            "schedules",
            "create",
            "--collector",
            "estate",
            "--name",
            "morning",
            "--timezone",
            "Asia/Seoul",
            "--hours",
            "9",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    let local = schedule["next_fire_local"].as_str().context("local fire")?;
    assert!(local.ends_with(" 09:00 KST"), "{local}");
    let paused = user
        .run(&[
            "schedules",
            "pause",
            "morning",
            "--collector",
            "estate",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    assert_eq!(paused["state"], "PAUSED");

    // Disabled, the collector refuses: exit 4 and the API's reason.
    user.run(&["collectors", "disable", "estate"]).await?.ok()?;
    let refused = user.run(&["collect", "estate", "--wait"]).await?;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("(409)"), "{}", refused.stderr);
    Ok(())
}

async fn a_failed_job_exits_non_zero_with_its_error(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register_misbehaving(&env, "garbage", "garbage", "demo", 60).await?;
    collector_of(
        &env,
        "garbage",
        "demo",
        serde_json::json!({}),
        serde_json::json!({}),
    )
    .await?;
    let user = User::new()?;
    user.login(&env).await?;
    let failed = user.run(&["collect", "c-garbage", "--wait"]).await?;
    assert_eq!(
        failed.code, 6,
        "stdout: {}\nstderr: {}",
        failed.stdout, failed.stderr
    );
    assert!(failed.stdout.contains(" FAILURE"), "{}", failed.stdout);
    assert!(failed.stderr.contains("ended FAILURE"), "{}", failed.stderr);
    let shown = user
        .run(&["jobs", "ls", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let id = shown["items"][0]["id"].as_str().context("job id")?;
    let tasks = user
        .run(&["jobs", "tasks", id, "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert!(
        tasks["items"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{tasks}"
    );
    Ok(())
}

crate::in_both_modes!(
    a_user_logs_in_creates_a_collector_and_collects,
    a_failed_job_exits_non_zero_with_its_error,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_say_what_to_do() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Standalone).await?;
    let user = User::new()?;

    let bad = user.run(&["collectors", "ls", "--bogus"]).await?;
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("unexpected argument '--bogus'"),
        "{}",
        bad.stderr
    );

    let none = user.run(&["collectors", "ls"]).await?;
    assert_eq!(none.code, 3);
    assert!(
        none.stderr.contains("gleaner login --server URL"),
        "{}",
        none.stderr
    );

    // A wrong key is refused at login, and nothing is stored.
    let wrong = user
        .run_with(
            &["login", "--server", &env.base, "--api-key-stdin"],
            Some("glk_0000000000000000000000000000000000000000000000000000000000000000\n"),
            &[],
        )
        .await?;
    assert_eq!(wrong.code, 4, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("(401)"), "{}", wrong.stderr);
    assert!(!user.config.exists());

    // The environment stands in for a login.
    let key = env.key().context("key")?;
    let listed = user
        .run_with(
            &["projects", "ls", "-o", "json"],
            None,
            &[("GLEANER_SERVER", &env.base), ("GLEANER_API_KEY", key)],
        )
        .await?
        .ok()?
        .json()?;
    assert_eq!(listed["items"], serde_json::json!([]));

    // No server there: exit 5, naming it.
    let port = crate::support::free_port()?;
    let gone = format!("http://127.0.0.1:{port}");
    let unreachable = user
        .run_with(
            &["projects", "ls"],
            None,
            &[("GLEANER_SERVER", &gone), ("GLEANER_API_KEY", key)],
        )
        .await?;
    assert_eq!(unreachable.code, 5, "{}", unreachable.stderr);
    assert!(unreachable.stderr.contains(&gone), "{}", unreachable.stderr);

    // An unknown collector by name.
    let missing = user
        .run_with(
            &["collect", "nope"],
            None,
            &[("GLEANER_SERVER", &env.base), ("GLEANER_API_KEY", key)],
        )
        .await?;
    assert_eq!(missing.code, 4);
    assert!(
        missing.stderr.contains("no collector is named `nope`"),
        "{}",
        missing.stderr
    );

    // Completions come from the same command tree.
    let bash = user.run(&["completions", "bash"]).await?.ok()?;
    assert!(
        bash.stdout.contains("service-accounts"),
        "a bash script naming the nouns"
    );
    Ok(())
}
