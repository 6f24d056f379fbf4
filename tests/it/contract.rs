//! The OpenAPI document is a contract: schemathesis (from PyPI; `scripts/test.sh` installs it)
//! generates requests from `GET /openapi.json` and sends them to a live API with an admin key.
//! No answer may be a 5xx, an undocumented status or content type, or a body or header off its
//! schema; invalid input must be refused, a missing key too, an undeclared method with 405.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::support::{Mode, Options, TestEnv};

/// Fixed, so that a run generates the same requests each time (stateful steps and values
/// reused from answers still follow the ids the server made).
const SEED: &str = "19";

/// Test cases per operation and phase, at most: 48 operations, so that a run takes about half a
/// minute per mode on 2 cores.
const MAX_EXAMPLES: &str = "15";

/// A run taking longer is killed and fails: a hung request must not hold CI up.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What the CLI is run with: the module, since pip may install the `st` script off the PATH.
const PYTHON: &str = "python3";

/// schemathesis's settings for this API: auth, and the operations that need care.
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/schemathesis.toml");

fn tune(s: &mut gleaner_common::config::Settings) {
    // Thousands of requests in a minute: the request rate would answer most of them 429
    // (documented, so passing) and leave the handlers untested; `limits` tests it. Each event
    // stream holds its slot, and polls, until its next keep-alive shows the client gone, up to
    // 15 s after the run stopped reading it: many slots, polled at the default pace rather than
    // the harness's 50 ms.
    s.api.rate_limit_per_second = 0;
    s.api.event_streams_per_key = 1000;
    s.api.events_poll_interval = Duration::from_millis(500);
}

/// Something for each route to find: a project with a demo service account, a demo collector
/// with one finished collection (so jobs, tasks, resources and changes exist), a schedule, a
/// second key and a few audit entries.
async fn seed(env: &TestEnv) -> anyhow::Result<()> {
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let job = env.collect(&collector).await?;
    anyhow::ensure!(job["status"] == "SUCCESS", "the seed collection: {job}");
    env.create(
        &format!("/v1/collectors/{collector}/schedules"),
        json!({"name": "nightly", "timezone": "UTC", "hours": [3]}),
    )
    .await?;
    env.create("/v1/api-keys", json!({"name": "spare", "role": "viewer"}))
        .await?;
    Ok(())
}

/// Fails, saying how to install it, unless schemathesis 4 is there for [`PYTHON`].
async fn require_schemathesis() -> anyhow::Result<()> {
    let version = tokio::process::Command::new(PYTHON)
        .args(["-c", "import schemathesis; print(schemathesis.__version__)"])
        .stderr(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {PYTHON}"))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    // Its flags are 4.x's; the version scripts/test.sh installs is the one CI's seed was run on.
    anyhow::ensure!(
        version.starts_with("4."),
        "schemathesis 4 is not installed for {PYTHON} (found: {}): scripts/test.sh installs \
         it, or run `{PYTHON} -m pip install 'schemathesis>=4.32,<4.33'`",
        if version.is_empty() { "none" } else { &version }
    );
    Ok(())
}

/// Runs schemathesis against the environment's API; its exit status and output.
async fn schemathesis(env: &TestEnv) -> anyhow::Result<(bool, String)> {
    // Its output goes to a file, so that what it printed is there to show even when it is
    // killed; it runs in a directory of its own, so nothing it writes lands in the repository.
    let dir = std::env::temp_dir().join(format!("gleaner-contract-{}", env.name));
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("schemathesis.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new(PYTHON)
        .args(["-m", "schemathesis.cli", "--config-file", CONFIG, "run"])
        .arg(format!("{}/openapi.json", env.api.base))
        // Every check but `positive_data_acceptance`: it takes any 4xx to schema-valid input
        // for a bug, and this API refuses such input on purpose where JSON Schema cannot say
        // why: an id of nothing that exists, an unknown plugin version or time zone, an expiry
        // in the past, an end before a start, options against the plugin's own schema.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--seed", SEED, "--max-examples", MAX_EXAMPLES])
        // No example database: a failure found once would be replayed by later runs, which
        // would then differ from a fresh machine's.
        .args(["--generation-database", "none"])
        // One worker: with two threads, hypothesis describing its filters calls `ast.parse`
        // from both at once, and CPython 3.11 can fail that with "AST constructor recursion
        // depth mismatch" (seen once in this suite), an error of the tool, not of the API.
        .args(["--workers", "1", "--no-color"])
        .env(
            "GLEANER_CONTRACT_KEY",
            env.api.key().context("an admin key")?,
        )
        // Unbuffered, so that a killed run has shown everything it got to.
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting schemathesis")?;
    let finished = tokio::time::timeout(RUN_LIMIT, child.wait()).await;
    if finished.is_err() {
        child.kill().await.ok();
    }
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    match finished {
        Ok(status) => Ok((status?.success(), output)),
        Err(_) => anyhow::bail!("schemathesis did not finish within {RUN_LIMIT:?}:\n{output}"),
    }
}

async fn generated_requests_get_only_documented_answers(mode: Mode) -> anyhow::Result<()> {
    require_schemathesis().await?;
    let env = TestEnv::start_with(
        mode,
        Options {
            tune,
            ..Options::default()
        },
    )
    .await?;
    seed(&env).await?;
    let started = Instant::now();
    let (passed, output) = schemathesis(&env).await?;
    // Shown with `--nocapture`: what was generated, per phase, and how long it took.
    eprintln!("{output}\nschemathesis ran for {:?}", started.elapsed());
    assert!(passed, "schemathesis found problems:\n{output}");
    // A run that lost its key would have passed on 401s alone.
    let a = env.get("/v1/projects").await?;
    assert_eq!(a.status, 200, "the run's key stopped working: {}", a.body);
    Ok(())
}

crate::in_both_modes!(generated_requests_get_only_documented_answers);
