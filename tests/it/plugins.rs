//! Private plugins: registration through `init`, and what a collection does when an external
//! plugin reports item errors, writes garbage, hangs, crashes or echoes its credentials.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Api, Mode, TestEnv};

pub(crate) fn example() -> String {
    format!(
        "{}/examples/plugins/json_inventory.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub(crate) fn misbehaving() -> String {
    format!(
        "{}/tests/plugins/misbehaving.sh",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Registers `misbehaving.sh BEHAVIOUR PROVIDER` as plugin `id`.
pub(crate) async fn register_misbehaving(
    api: &Api,
    id: &str,
    behaviour: &str,
    provider: &str,
    timeout_seconds: u64,
) -> anyhow::Result<Value> {
    api.create(
        "/v1/plugins",
        json!({"id": id, "version": "1.0.0", "command": misbehaving(),
               "args": [behaviour, provider], "timeout_seconds": timeout_seconds}),
    )
    .await
}

/// A project with one service account of `provider`, and a collector of `plugin`.
pub(crate) async fn collector_of(
    api: &Api,
    plugin: &str,
    provider: &str,
    credentials: Value,
    options: Value,
) -> anyhow::Result<String> {
    let project = api
        .create("/v1/projects", json!({"name": format!("p-{plugin}")}))
        .await?;
    api.create(
        "/v1/service-accounts",
        json!({"name": format!("sa-{plugin}"), "provider": provider,
               "project_id": project["id"], "credentials": credentials}),
    )
    .await?;
    let c = api
        .create(
            "/v1/collectors",
            json!({"name": format!("c-{plugin}"), "plugin_id": plugin, "options": options}),
        )
        .await?;
    Ok(c["id"].as_str().context("collector id")?.to_owned())
}

/// Registers the example plugin as `json-inventory`, and names a fresh inventory file for it
/// (removed when the returned guard drops).
pub(crate) async fn json_inventory(api: &Api) -> anyhow::Result<RemoveOnDrop> {
    api.create(
        "/v1/plugins",
        json!({"id": "json-inventory", "version": "1.0.0", "command": example()}),
    )
    .await?;
    Ok(RemoveOnDrop(std::env::temp_dir().join(format!(
        "gleaner-it-inventory-{}.json",
        rand::random::<u64>()
    ))))
}

/// Removes a test's file however the test ends.
pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn only_task(api: &Api, job: &Value) -> anyhow::Result<Value> {
    let id = job["id"].as_str().context("job id")?;
    let tasks = api.get(&format!("/v1/jobs/{id}/tasks")).await?;
    let items = tasks.body["items"].as_array().context("tasks")?;
    anyhow::ensure!(items.len() == 1, "one task expected: {}", tasks.body);
    Ok(items[0].clone())
}

async fn registering_runs_init_and_keeps_versions(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let body = json!({"id": "json-inventory", "version": "1.0.0", "command": example()});
    let p = env.create("/v1/plugins", body.clone()).await?;
    assert_eq!(p["official"], false);
    assert_eq!(p["provider"], "demo");
    assert_eq!(p["kind"], "collector");
    assert_eq!(p["latest"], "1.0.0");
    assert_eq!(p["options_schema"]["required"], json!(["path"]));

    let again = env.post("/v1/plugins", body).await?;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["errors"][0]["field"], "version");

    // Versions sort semantically: 1.10.0 is later than 1.9.0 whatever the order registered.
    for v in ["1.10.0", "1.9.0"] {
        env.create(
            "/v1/plugins",
            json!({"id": "json-inventory", "version": v, "command": example()}),
        )
        .await?;
    }
    let shown = env.get("/v1/plugins/json-inventory").await?;
    assert_eq!(shown.body["versions"], json!(["1.0.0", "1.9.0", "1.10.0"]));
    assert_eq!(shown.body["latest"], "1.10.0");
    let list = env.get("/v1/plugins").await?;
    let ids = crate::support::strs(&list.body["items"], "id");
    assert_eq!(
        ids,
        [
            "aws",
            "aws-cloudwatch",
            "aws-cost-explorer",
            "demo",
            "demo-billing",
            "demo-metrics",
            "focus",
            "prometheus",
            "json-inventory"
        ]
    );

    // init fails: 422 with what the plugin said on stderr.
    let failed = env
        .post(
            "/v1/plugins",
            json!({"id": "broken", "version": "1.0.0", "command": misbehaving(), "args": ["noinit"]}),
        )
        .await?;
    assert_eq!(
        failed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        failed.body
    );
    assert_eq!(failed.body["type"], "/problems/plugin-failed");
    assert!(
        failed.body["stderr"]
            .as_str()
            .is_some_and(|s| s.contains("cannot load configuration")),
        "{}",
        failed.body
    );
    assert!(
        failed.body["detail"]
            .as_str()
            .is_some_and(|s| s.contains("exited with status 1")),
        "{}",
        failed.body
    );
    // Only executables inside the operator's plugin directory can be registered.
    for command in [
        "/nonexistent/plugin",
        "/bin/sh",
        "../../../bin/sh",
        "examples",
    ] {
        let refused = env
            .post(
                "/v1/plugins",
                json!({"id": "outside", "version": "1.0.0", "command": command}),
            )
            .await?;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{command}: {}",
            refused.body
        );
        assert_eq!(refused.body["errors"][0]["field"], "command");
    }
    // A relative command is found in the plugin directory.
    let relative = env
        .post(
            "/v1/plugins",
            json!({"id": "relative", "version": "1.0.0",
                   "command": "examples/plugins/json_inventory.py"}),
        )
        .await?;
    assert_eq!(relative.status, StatusCode::CREATED, "{}", relative.body);

    // Input is checked before anything runs, every field at once.
    let bad = env
        .post(
            "/v1/plugins",
            json!({"id": "Bad Id", "version": "one", "command": "", "timeout_seconds": 0}),
        )
        .await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let fields = crate::support::strs(&bad.body["errors"], "field");
    assert_eq!(fields, ["id", "version", "command", "timeout_seconds"]);
    let official = env
        .post(
            "/v1/plugins",
            json!({"id": "demo", "version": "9.0.0", "command": example()}),
        )
        .await?;
    assert_eq!(official.status, StatusCode::CONFLICT);
    assert_eq!(official.body["errors"][0]["field"], "id");
    // A wrong provider in the metadata names the field.
    let unknown_provider = env
        .post(
            "/v1/plugins",
            json!({"id": "elsewhere", "version": "1.0.0", "command": misbehaving(),
                   "args": ["crash", "mainframe"]}),
        )
        .await?;
    assert_eq!(unknown_provider.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown_provider.body["errors"][0]["field"],
        "metadata.provider"
    );
    Ok(())
}

async fn an_external_plugin_collects_and_item_errors_fail_the_task(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let file = json_inventory(&env).await?;
    let path = file.0.clone();
    std::fs::write(
        &path,
        json!([
            {"id": "web-1", "name": "web 1", "region": "eu-west-1", "cpu": 2},
            {"id": "web-2", "cpu": 4},
            {"name": "no id here"},
            {"id": "db-1", "cpu": 8},
        ])
        .to_string(),
    )?;
    // Options are checked against the schema the plugin declared.
    let wrong = env
        .post(
            "/v1/collectors",
            json!({"name": "x", "plugin_id": "json-inventory", "options": {"paht": "x"}}),
        )
        .await?;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.body);

    let collector = collector_of(
        &env,
        "json-inventory",
        "demo",
        json!({}),
        json!({"path": path}),
    )
    .await?;
    let job = env.collect(&collector).await?;
    // The documented rule: any item error makes the task FAILURE; the other items are stored.
    assert_eq!(job["status"], "FAILURE", "{job}");
    assert_eq!(job["counts"]["created"], 3);
    assert_eq!(job["counts"]["failed"], 1);
    let task = only_task(&env, &job).await?;
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|e| e.contains("entry 2 has no id")),
        "{task}"
    );
    assert!(
        task["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("reported 3 of 4 entries")),
        "{task}"
    );
    let page = env
        .get(&format!("/v1/resources?collector_id={collector}"))
        .await?;
    assert_eq!(page.body["total"], 3);
    let web1 = page.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|r| r["resource_key"] == "web-1")
        .context("web-1")?
        .clone();
    assert_eq!(web1["resource_type"], "custom.server");
    assert_eq!(web1["region"], "eu-west-1");
    assert_eq!(web1["data"]["cpu"], 2);

    // Fixed, the same collection succeeds and changes nothing it had stored.
    std::fs::write(
        &path,
        json!([
            {"id": "web-1", "name": "web 1", "region": "eu-west-1", "cpu": 2},
            {"id": "web-2", "cpu": 4},
            {"id": "db-1", "cpu": 8},
        ])
        .to_string(),
    )?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["unchanged"], 3);
    Ok(())
}

async fn garbage_from_a_plugin_fails_the_task_and_keeps_what_was_stored(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register_misbehaving(&env, "garbage", "garbage", "demo", 60).await?;
    let collector = collector_of(&env, "garbage", "demo", json!({}), json!({})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let task = only_task(&env, &job).await?;
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("line 3 of its output is not a protocol message")
            && error.contains("Segmentation fault"),
        "{task}"
    );
    // The two resources before the garbage are stored; the one after it is not.
    assert_eq!(job["counts"]["created"], 2, "{job}");
    let page = env
        .get(&format!("/v1/resources?collector_id={collector}"))
        .await?;
    assert_eq!(page.body["total"], 2);
    Ok(())
}

/// NUL characters, which PostgreSQL refuses in text: the task ends in its first attempt,
/// FAILURE for its item errors, with what the database cannot hold refused as item errors and
/// the rest kept with the characters replaced. It never runs again and again.
async fn nul_characters_from_a_plugin_fail_their_items_and_never_loop(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register_misbehaving(&env, "nul", "nul", "demo", 60).await?;
    let collector = collector_of(&env, "nul", "demo", json!({}), json!({})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let task = only_task(&env, &job).await?;
    assert_eq!(task["attempt"], 1, "{task}");
    assert_eq!(task["previous_attempts"], json!([]), "{task}");
    assert_eq!(task["counts"]["created"], 1, "the clean resource: {task}");
    assert_eq!(task["counts"]["failed"], 3, "{task}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("3 items failed (1 stored)"), "{error}");
    assert!(
        error.contains("test.thing/in-data: data contains a NUL character"),
        "{error}"
    );
    assert!(
        error.contains("test.thing/in-name: name contains a NUL character"),
        "{error}"
    );
    assert!(
        error.contains("failing: cannot read \u{FFFD} this"),
        "{error}"
    );
    let stderr = task["stderr"].as_str().unwrap_or_default();
    assert!(stderr.contains("a NUL \u{FFFD} byte on stderr"), "{stderr}");
    let page = env
        .get(&format!("/v1/resources?collector_id={collector}"))
        .await?;
    assert_eq!(page.body["total"], 1);
    Ok(())
}

async fn a_plugin_past_its_timeout_is_killed(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register_misbehaving(&env, "sleepy", "sleepy", "demo", 1).await?;
    let collector = collector_of(&env, "sleepy", "demo", json!({}), json!({})).await?;
    let started = Instant::now();
    let job = env.collect(&collector).await?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(job["status"], "FAILURE", "{job}");
    let task = only_task(&env, &job).await?;
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not finish within 1 s")),
        "{task}"
    );
    assert_eq!(job["counts"]["created"], 1);

    // `done`, then a child left holding stdout: the task ends with the plugin, not the child.
    register_misbehaving(&env, "lingering", "lingering", "demo", 60).await?;
    let lingering = env
        .create(
            "/v1/collectors",
            json!({"name": "lingering", "plugin_id": "lingering"}),
        )
        .await?;
    let started = Instant::now();
    let job = env.collect(lingering["id"].as_str().context("id")?).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    register_misbehaving(&env, "crash", "crash", "demo", 60).await?;
    let crash = env
        .create(
            "/v1/collectors",
            json!({"name": "crash", "plugin_id": "crash"}),
        )
        .await?;
    let job = env.collect(crash["id"].as_str().context("id")?).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let task = only_task(&env, &job).await?;
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|e| e.contains("exited with status 3: crash: about to fail")),
        "{task}"
    );
    Ok(())
}

async fn credentials_never_appear_in_task_errors_or_stderr(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register_misbehaving(&env, "leaky", "leaky", "aws", 60).await?;
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY";
    let collector = collector_of(
        &env,
        "leaky",
        "aws",
        json!({"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": secret}),
        json!({}),
    )
    .await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let task = only_task(&env, &job).await?;
    let stderr = task["stderr"].as_str().context("stderr kept")?;
    assert!(stderr.contains("leaky: got"), "{stderr}");
    assert!(stderr.contains("[REDACTED]"), "{stderr}");
    let whole = format!("{task}{job}");
    assert!(!whole.contains(secret), "{whole}");
    assert!(!whole.contains("AKIAIOSFODNN7EXAMPLE"), "{whole}");
    Ok(())
}

/// An environment whose big tasks write batches of 10 with two writers.
async fn two_writers(mode: Mode) -> anyhow::Result<TestEnv> {
    TestEnv::start_with(
        mode,
        crate::support::Options {
            batch_size: 10,
            tune: |s| s.worker.writers = 2,
            ..crate::support::Options::default()
        },
    )
    .await
}

/// A collector's resources (up to 1,000) and the listing's `total`.
async fn stored(api: &Api, collector: &str) -> anyhow::Result<(Vec<Value>, Value)> {
    let page = api
        .get(&format!(
            "/v1/resources?collector_id={collector}&limit=1000"
        ))
        .await?;
    let items = page.body["items"].as_array().context("items")?.clone();
    Ok((items, page.body["total"].clone()))
}

/// A big task's batches are written by two writers at once in PostgreSQL, each on its own
/// share of the keys (one in SQLite). A key reported twice, its second version three items
/// after the first, is stored at its second version whichever writer has it and whether its
/// first is still being filled, being written or written: 200 created and 200 updated, each
/// with its change record.
async fn a_key_reported_twice_keeps_its_last_version_across_writers(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = two_writers(mode).await?;
    register_misbehaving(&env, "twice", "twice", "demo", 60).await?;
    let collector = collector_of(&env, "twice", "demo", json!({}), json!({})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 200, "{job}");
    assert_eq!(job["counts"]["updated"], 200, "{job}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 200);
    let (items, total) = stored(&env, &collector).await?;
    assert_eq!(items.len(), 200);
    let first = items.iter().filter(|r| r["data"]["n"] != 2).count();
    assert_eq!(first, 0, "resources left at their first version");
    for kind in ["CREATED", "UPDATED"] {
        assert_eq!(
            env.scalar(&format!(
                "SELECT count(DISTINCT resource_id) FROM resource_changes WHERE kind = '{kind}'"
            ))
            .await?,
            200,
            "{kind}"
        );
    }
    assert_eq!(total, 200);
    // Run again (an upsert from the first batch on, since the account's resources are
    // stored): each key goes back to its first version, then to its second.
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 0, "{job}");
    assert_eq!(job["counts"]["updated"], 400, "{job}");
    let (items, _) = stored(&env, &collector).await?;
    assert_eq!(items.iter().filter(|r| r["data"]["n"] == 2).count(), 200);
    Ok(())
}

/// A big task writes with two writers while no other collector reports its provider. One
/// created while the task runs brings it back to one writer (whose batches look for resources
/// that collector owns) without losing or doubling a resource: all 300 created once, counted
/// once.
async fn a_collector_of_the_provider_created_mid_task_brings_the_writers_back_to_one(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = two_writers(mode).await?;
    // 300 resources 5 ms apart: the second collector comes about a third of the way in.
    let collector = env
        .demo_collector(1, json!({"resources": 300, "item_delay_ms": 5}))
        .await?;
    let job = env.start_collect(&collector).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.create(
        "/v1/collectors",
        json!({"name": "second-demo", "plugin_id": "demo", "options": {}}),
    )
    .await?;
    let job = env.wait_job(&job).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 300, "{job}");
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 300);
    let (items, total) = stored(&env, &collector).await?;
    assert_eq!((items.len(), total), (300, json!(300)));
    Ok(())
}

crate::in_both_modes!(
    registering_runs_init_and_keeps_versions,
    a_collector_of_the_provider_created_mid_task_brings_the_writers_back_to_one,
    a_key_reported_twice_keeps_its_last_version_across_writers,
    an_external_plugin_collects_and_item_errors_fail_the_task,
    garbage_from_a_plugin_fails_the_task_and_keeps_what_was_stored,
    nul_characters_from_a_plugin_fail_their_items_and_never_loop,
    a_plugin_past_its_timeout_is_killed,
    credentials_never_appear_in_task_errors_or_stderr,
);

/// The state of each resource of a collector, by key.
async fn states(api: &Api, collector: &str) -> anyhow::Result<Vec<(String, String)>> {
    let page = api
        .get(&format!("/v1/resources?collector_id={collector}&limit=100"))
        .await?;
    let mut out: Vec<(String, String)> = page.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|r| {
            (
                r["resource_key"].as_str().unwrap_or_default().to_owned(),
                r["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn resources_missing_from_three_successful_runs_are_deleted(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let file = json_inventory(&env).await?;
    let path = file.0.clone();
    let collector = collector_of(
        &env,
        "json-inventory",
        "demo",
        json!({}),
        json!({"path": path}),
    )
    .await?;
    let run = |entries: Value, expect: &'static str| {
        let (env, path, collector) = (&env, &path, &collector);
        async move {
            std::fs::write(path, entries.to_string())?;
            let job = env.collect(collector).await?;
            anyhow::ensure!(job["status"] == expect, "{expect} expected: {job}");
            anyhow::Ok(job)
        }
    };
    let (a, b, c) = (json!({"id": "a"}), json!({"id": "b"}), json!({"id": "c"}));
    let active = |keys: &[&str]| -> Vec<(String, String)> {
        keys.iter()
            .map(|k| ((*k).to_owned(), "ACTIVE".to_owned()))
            .collect()
    };

    run(json!([a, b, c]), "SUCCESS").await?;
    run(json!([a, b]), "SUCCESS").await?; // c missed once
    // A failed run (an entry without an id) says nothing about what exists: it does not count.
    run(json!([a, b, {"name": "broken"}]), "FAILURE").await?;
    run(json!([a, b]), "SUCCESS").await?; // twice
    assert_eq!(states(&env, &collector).await?, active(&["a", "b", "c"]));
    let job = run(json!([a, b]), "SUCCESS").await?; // three times: deleted
    assert_eq!(job["counts"]["deleted"], 1, "{job}");
    let mut expected = active(&["a", "b"]);
    expected.push(("c".into(), "DELETED".into()));
    assert_eq!(states(&env, &collector).await?, expected);
    let deleted = env
        .get(&format!(
            "/v1/resources?collector_id={collector}&state=DELETED"
        ))
        .await?;
    let c_id = deleted.body["items"][0]["id"]
        .as_str()
        .context("deleted resource")?
        .to_owned();
    assert!(deleted.body["items"][0]["deleted_at"].is_string());
    let history = env.get(&format!("/v1/resources/{c_id}/changes")).await?;
    let kinds = crate::support::strs(&history.body["items"], "kind");
    assert_eq!(kinds, ["CREATED", "DELETED"]);
    assert_eq!(history.body["items"][1]["job_id"], job["id"]);

    // Seen again: ACTIVE, with its history kept.
    run(json!([a, b, c]), "SUCCESS").await?;
    assert_eq!(states(&env, &collector).await?, active(&["a", "b", "c"]));
    let history = env.get(&format!("/v1/resources/{c_id}/changes")).await?;
    assert_eq!(history.body["items"].as_array().map(Vec::len), Some(3));

    // Missing runs must be consecutive: b is missed once, comes back unchanged, then is missed
    // twice more, and stays.
    run(json!([a, c]), "SUCCESS").await?;
    run(json!([a, b, c]), "SUCCESS").await?;
    run(json!([a, c]), "SUCCESS").await?;
    let job = run(json!([a, c]), "SUCCESS").await?;
    assert_eq!(job["counts"]["deleted"], 0, "{job}");
    assert_eq!(states(&env, &collector).await?, active(&["a", "b", "c"]));
    Ok(())
}

crate::in_both_modes!(resources_missing_from_three_successful_runs_are_deleted);

async fn two_collections_of_one_collector_and_account_never_overlap(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let log = std::env::temp_dir().join(format!("gleaner-it-slow-{}.log", rand::random::<u64>()));
    let _cleanup = RemoveOnDrop(log.clone());
    env.create(
        "/v1/plugins",
        json!({"id": "slow", "version": "1.0.0", "command": misbehaving(),
               "args": ["slow", "demo", log]}),
    )
    .await?;
    let collector = collector_of(&env, "slow", "demo", json!({}), json!({})).await?;
    // Two jobs at once: the worker runs tasks concurrently, so only the lock keeps them apart.
    let first = env.start_collect(&collector).await?;
    let second = env.start_collect(&collector).await?;
    for job in [&first, &second] {
        let job = env.wait_job(job).await?;
        assert_eq!(job["status"], "SUCCESS", "{job}");
    }
    let lines: Vec<String> = std::fs::read_to_string(&log)?
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        lines,
        ["start", "end", "start", "end"],
        "the runs overlapped"
    );
    Ok(())
}

crate::in_both_modes!(two_collections_of_one_collector_and_account_never_overlap);
