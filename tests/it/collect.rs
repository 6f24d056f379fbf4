//! A collection flows through the API, RabbitMQ, a worker and PostgreSQL.

use std::collections::HashSet;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::support::{Mode, Options, TestEnv};

async fn demo_collection_over_two_accounts_stores_every_resource(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 500})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["tasks_total"], 2);
    assert_eq!(job["tasks_done"], 2);
    assert_eq!(
        job["counts"],
        json!({"created": 1000, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0})
    );
    assert!(job["finished_at"].is_string() && job["started_at"].is_string());

    let page = env
        .get(&format!("/v1/resources?collector_id={collector}&limit=10"))
        .await?;
    assert_eq!(page.body["total"], 1000);
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(10));
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 1000);
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_changes WHERE kind = 'CREATED'")
            .await?,
        1000
    );

    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().unwrap_or_default()
        ))
        .await?;
    let tasks = tasks.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 2);
    for t in &tasks {
        assert_eq!(t["status"], "SUCCESS");
        assert_eq!(t["counts"]["created"], 500);
        assert_eq!(t["attempt"], 1);
    }
    let c = env.get(&format!("/v1/collectors/{collector}")).await?;
    assert_eq!(c.body["last_job"]["status"], "SUCCESS");
    assert!(c.body["last_collected_at"].is_string());
    // The detail lists what the collector holds, by type: the demo's three types round-robin
    // over 500 resources per account (167 + 167 + 166, twice).
    assert_eq!(
        c.body["resources"],
        json!([
            {"resource_type": "compute.instance", "count": 334},
            {"resource_type": "network.vpc", "count": 332},
            {"resource_type": "storage.volume", "count": 334},
        ]),
        "{}",
        c.body
    );
    Ok(())
}

async fn collecting_an_unchanged_estate_again_writes_nothing(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 500})).await?;
    let first = env.collect(&collector).await?;
    assert_eq!(first["status"], "SUCCESS");
    let first_job = env.uuid_sql(first["id"].as_str().unwrap_or_default())?;
    let before = env.scalar("SELECT count(*) FROM resource_changes").await?;

    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(
        job["counts"],
        json!({"created": 0, "updated": 0, "unchanged": 1000, "deleted": 0, "failed": 0})
    );
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 1000);
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_changes").await?,
        before,
        "no change records"
    );
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM resources WHERE updated_job_id = {first_job}"
        ))
        .await?,
        1000,
        "no row rewritten"
    );
    Ok(())
}

async fn changing_ten_percent_updates_exactly_those_with_field_diffs(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 500})).await?;
    assert_eq!(env.collect(&collector).await?["status"], "SUCCESS");

    let patched = env
        .patch(
            &format!("/v1/collectors/{collector}"),
            json!({"options": {"resources": 500, "change_ratio": 0.1, "revision": 1}}),
        )
        .await?;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(
        job["counts"],
        json!({"created": 0, "updated": 100, "unchanged": 900, "deleted": 0, "failed": 0})
    );
    let job_id = env.uuid_sql(job["id"].as_str().unwrap_or_default())?;
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM resource_changes WHERE kind = 'UPDATED' AND job_id = {job_id}"
        ))
        .await?,
        100
    );
    // Each diff names the fields that changed, with old and new values.
    let diffs = env
        .json_column(&format!(
            "SELECT diff FROM resource_changes WHERE job_id = {job_id}"
        ))
        .await?;
    assert_eq!(diffs.len(), 100);
    for diff in &diffs {
        assert_eq!(diff["revision"], json!({"old": 0, "new": 1}), "{diff}");
        assert!(
            diff.get("name").is_none(),
            "unchanged fields are left out: {diff}"
        );
    }
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM resources WHERE updated_job_id = {job_id}"
        ))
        .await?,
        100
    );
    Ok(())
}

async fn a_resource_history_lists_its_creation_and_updates_with_their_jobs(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 20})).await?;
    let first = env.collect(&collector).await?;
    let patched = env
        .patch(
            &format!("/v1/collectors/{collector}"),
            json!({"options": {"resources": 20, "change_ratio": 1.0, "revision": 3}}),
        )
        .await?;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let second = env.collect(&collector).await?;
    assert_eq!(second["counts"]["updated"], 20, "{second}");

    let page = env.get("/v1/resources?limit=1").await?;
    let id = page.body["items"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let history = env.get(&format!("/v1/resources/{id}/changes")).await?;
    assert_eq!(history.status, 200, "{}", history.body);
    let items = history.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), 2, "{}", history.body);
    assert_eq!(items[0]["kind"], "CREATED");
    assert_eq!(items[0]["job_id"], first["id"]);
    assert_eq!(items[0]["diff"], json!(null));
    assert_eq!(items[1]["kind"], "UPDATED");
    assert_eq!(items[1]["job_id"], second["id"]);
    assert_eq!(items[1]["diff"]["revision"], json!({"old": 0, "new": 3}));
    assert_eq!(history.body["next_cursor"], json!(null));

    // One at a time, following the cursor.
    let one = env
        .get(&format!("/v1/resources/{id}/changes?limit=1"))
        .await?;
    assert_eq!(one.body["items"][0]["kind"], "CREATED");
    let cursor = &one.body["next_cursor"];
    assert!(cursor.is_i64(), "{}", one.body);
    let two = env
        .get(&format!(
            "/v1/resources/{id}/changes?limit=1&cursor={cursor}"
        ))
        .await?;
    assert_eq!(two.body["items"][0]["kind"], "UPDATED");
    assert_eq!(two.body["next_cursor"], json!(null));

    let missing = env
        .get("/v1/resources/01a20000-0000-7000-8000-000000000000/changes")
        .await?;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let bad = env
        .get(&format!("/v1/resources/{id}/changes?limit=0"))
        .await?;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["errors"][0]["field"], "limit", "{}", bad.body);
    Ok(())
}

async fn a_disabled_collector_refuses_to_collect_and_a_deleted_one_leaves_its_resources(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 10})).await?;
    let path = format!("/v1/collectors/{collector}");
    let first = env.collect(&collector).await?;
    assert_eq!(first["status"], "SUCCESS", "{first}");

    let disabled = env.post(&format!("{path}/disable"), json!(null)).await?;
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    assert_eq!(disabled.body["state"], "DISABLED");
    let refused = env.post(&format!("{path}/collect"), json!(null)).await?;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("disabled"),
        "{}",
        refused.body
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs").await?,
        1,
        "no job queued"
    );
    let enabled = env.post(&format!("{path}/enable"), json!(null)).await?;
    assert_eq!(enabled.body["state"], "ENABLED", "{}", enabled.body);
    assert_eq!(env.collect(&collector).await?["status"], "SUCCESS");

    // Not while a job of it runs: the job would go on writing resources it owns.
    let patched = env
        .patch(&path, json!({"options": {"resources": 20000}}))
        .await?;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let started = env.post(&format!("{path}/collect"), json!(null)).await?;
    let busy = env.delete(&path).await?;
    assert_eq!(busy.status, 409, "{}", busy.body);
    let job = env
        .wait_job(started.body["job_id"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");

    let deleted = env.delete(&path).await?;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_eq!(env.get(&path).await?.status, 404);
    assert_eq!(env.delete(&path).await?.status, 404);
    let left = env.get("/v1/resources?limit=1").await?;
    assert_eq!(left.body["total"], 20000, "resources stay");
    assert_eq!(
        left.body["items"][0]["collector_id"],
        json!(null),
        "no longer owned"
    );
    let history = env
        .get(&format!(
            "/v1/jobs/{}",
            first["id"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(history.status, 200, "jobs stay in the history");
    assert_eq!(history.body["collector_id"], json!(null));
    Ok(())
}

async fn resource_pages_follow_the_cursor_without_repeats(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env
        .demo_collector(
            1,
            json!({"resources": 250, "resource_types": ["compute.instance", "storage.volume"]}),
        )
        .await?;
    assert_eq!(env.collect(&collector).await?["status"], "SUCCESS");
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!(
                "/v1/resources?collector_id={collector}&resource_type=storage.volume&limit=40&cursor={c}"
            ),
            None => format!(
                "/v1/resources?collector_id={collector}&resource_type=storage.volume&limit=40"
            ),
        };
        let page = env.get(&path).await?;
        assert_eq!(page.body["total"], 125);
        for item in page.body["items"].as_array().cloned().unwrap_or_default() {
            assert_eq!(item["resource_type"], "storage.volume");
            assert!(
                seen.insert(item["id"].as_str().unwrap_or_default().to_owned()),
                "repeated {}",
                item["id"]
            );
        }
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 125);
    assert_eq!(pages, 4);
    Ok(())
}

async fn jobs_are_listed_per_collector_newest_first(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let a = env.demo_collector(1, json!({"resources": 5})).await?;
    let first = env.collect(&a).await?;
    let second = env.collect(&a).await?;
    let b = env
        .create(
            "/v1/collectors",
            json!({"name": "other", "plugin_id": "demo"}),
        )
        .await?;
    env.collect(b["id"].as_str().unwrap_or_default()).await?;

    let jobs = env.get(&format!("/v1/jobs?collector_id={a}")).await?;
    let ids: Vec<_> = jobs.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(ids, vec![second["id"].clone(), first["id"].clone()]);
    Ok(())
}

async fn a_job_without_service_accounts_fails_saying_why(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "lonely", "plugin_id": "demo"}),
        )
        .await?;
    let job = env.collect(c["id"].as_str().unwrap_or_default()).await?;
    assert_eq!(job["status"], "FAILURE");
    assert_eq!(job["tasks_total"], 0);
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no service account of provider `demo`"),
        "{job}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_tasks_of_a_job() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        crate::support::Options {
            workers: 2,
            batch_size: 100,
            ..crate::support::Options::default()
        },
    )
    .await?;
    let collector = env.demo_collector(6, json!({"resources": 300})).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 1800);
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 1800);
    assert_eq!(
        env.scalar("SELECT count(DISTINCT (resource_type, resource_key)) FROM resources")
            .await?,
        1800
    );
    Ok(())
}

/// Many one-resource tasks at once go through the worker's group commit (claims, batches,
/// sweeps and ends combined across tasks into shared statements): each task still shows its
/// own counts, each resource belongs to its own account and job, and a second run changes and
/// deletes nothing.
async fn small_tasks_run_together_keep_their_own_counts(mode: Mode) -> anyhow::Result<()> {
    const ACCOUNTS: usize = 120;
    let env = TestEnv::start_with(
        mode,
        crate::support::Options {
            tune: |s| s.worker.concurrency = 64,
            ..crate::support::Options::default()
        },
    )
    .await?;
    let collector = env
        .demo_collector(ACCOUNTS, json!({"resources": 1}))
        .await?;
    for (round, count) in [("first", "created"), ("second", "unchanged")] {
        let job = env.collect(&collector).await?;
        assert_eq!(job["status"], "SUCCESS", "{round} run: {job}");
        assert_eq!(job["counts"][count], ACCOUNTS, "{round} run: {job}");
        assert_eq!(job["counts"]["deleted"], 0, "{round} run: {job}");
        let id = job["id"].as_str().unwrap_or_default();
        let tasks = env.get(&format!("/v1/jobs/{id}/tasks")).await?;
        let tasks = tasks.body["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(tasks.len(), ACCOUNTS);
        for t in &tasks {
            assert_eq!(t["status"], "SUCCESS", "{t}");
            assert_eq!(t["attempt"], 1, "{t}");
            let mut expected =
                json!({"created": 0, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0});
            expected[count] = json!(1);
            assert_eq!(t["counts"], expected, "{round} run: {t}");
        }
    }
    assert_eq!(
        env.scalar("SELECT count(*) FROM resources").await?,
        i64::try_from(ACCOUNTS)?
    );
    // The group's upsert carries each row's own scope: one resource per account.
    assert_eq!(
        env.scalar("SELECT count(DISTINCT service_account_id) FROM resources")
            .await?,
        i64::try_from(ACCOUNTS)?
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_changes").await?,
        i64::try_from(ACCOUNTS)?,
        "one CREATED change each, nothing for the unchanged run"
    );
    Ok(())
}

/// When each of a job's tasks started and finished, in seconds since the epoch.
async fn task_times(env: &TestEnv, job: &Value) -> anyhow::Result<Vec<(f64, f64)>> {
    let id = job["id"].as_str().unwrap_or_default();
    let tasks = env.get(&format!("/v1/jobs/{id}/tasks")).await?;
    let at = |t: &Value, field: &str| -> anyhow::Result<f64> {
        let text = t[field]
            .as_str()
            .with_context(|| format!("{field} of {t}"))?;
        let time = chrono::DateTime::parse_from_rfc3339(text)?;
        Ok(time.timestamp_micros() as f64 / 1e6)
    };
    tasks.body["items"]
        .as_array()
        .context("tasks")?
        .iter()
        .map(|t| Ok((at(t, "started_at")?, at(t, "finished_at")?)))
        .collect()
}

/// `concurrency` bounds big tasks only: small ones run beside each other up to `max_tasks`,
/// and a task that turns out big waits for one of the `concurrency` slots.
async fn small_tasks_run_beyond_concurrency_and_big_ones_take_turns(
    mode: Mode,
) -> anyhow::Result<()> {
    const ACCOUNTS: usize = 4;
    let env = TestEnv::start_with(
        mode,
        crate::support::Options {
            batch_size: 100,
            tune: |s| {
                s.worker.concurrency = 1;
                s.worker.max_tasks = 4;
            },
            ..crate::support::Options::default()
        },
    )
    .await?;
    // Small: one resource each, 600 ms per task. Run one at a time, no two would overlap.
    let small = env
        .demo_collector(ACCOUNTS, json!({"resources": 1, "item_delay_ms": 600}))
        .await?;
    let job = env.collect(&small).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let times = task_times(&env, &job).await?;
    assert_eq!(times.len(), ACCOUNTS);
    let last_start = times.iter().map(|t| t.0).fold(f64::MIN, f64::max);
    let first_end = times.iter().map(|t| t.1).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "every small task ran at once: {times:?}"
    );
    // Big: 600 resources at 2 ms each. Past its first small batch a task holds the one full
    // slot; what is left of its plugin's run then (all but about two small batches, 940 ms or
    // more) separates its end from the next one's.
    let big = env
        .create(
            "/v1/collectors",
            json!({"name": "big", "plugin_id": "demo", "options": {"resources": 600, "item_delay_ms": 2}}),
        )
        .await?;
    let job = env.collect(big["id"].as_str().context("id")?).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    // The small run stored each account's first resource already.
    let stored = job["counts"]["created"]
        .as_u64()
        .zip(job["counts"]["unchanged"].as_u64());
    assert_eq!(stored, Some((599 * 4, 4)), "{job}");
    let mut ends: Vec<f64> = task_times(&env, &job).await?.iter().map(|t| t.1).collect();
    ends.sort_by(f64::total_cmp);
    for pair in ends.windows(2) {
        assert!(
            pair[1] - pair[0] > 0.4,
            "big tasks took turns in the one full slot: ends at {ends:?}"
        );
    }
    Ok(())
}

/// Each listing's `total`, and the collector's counts by type, against a count of the rows.
async fn assert_totals_match_the_rows(env: &TestEnv, collector: &str) -> anyhow::Result<()> {
    let accounts = env.get("/v1/service-accounts").await?.body["items"].clone();
    let mut filters = vec![
        (String::new(), "1 = 1".to_owned()),
        (
            format!("collector_id={collector}"),
            format!("collector_id = {}", env.uuid_sql(collector)?),
        ),
        (
            "resource_type=network.vpc".to_owned(),
            "resource_type = 'network.vpc'".to_owned(),
        ),
        ("state=ACTIVE".to_owned(), "state = 'ACTIVE'".to_owned()),
        ("state=DELETED".to_owned(), "state = 'DELETED'".to_owned()),
        (
            format!("collector_id={collector}&resource_type=storage.volume&state=DELETED"),
            format!(
                "collector_id = {} AND resource_type = 'storage.volume' AND state = 'DELETED'",
                env.uuid_sql(collector)?
            ),
        ),
    ];
    for a in accounts.as_array().context("accounts")? {
        let (id, project) = (
            a["id"].as_str().context("id")?,
            a["project_id"].as_str().context("project")?,
        );
        filters.push((
            format!("service_account_id={id}"),
            format!("service_account_id = {}", env.uuid_sql(id)?),
        ));
        filters.push((
            format!("project_id={project}&state=ACTIVE"),
            format!(
                "project_id = {} AND state = 'ACTIVE'",
                env.uuid_sql(project)?
            ),
        ));
    }
    for (query, sql) in filters {
        let page = env.get(&format!("/v1/resources?limit=1&{query}")).await?;
        let rows = env
            .scalar(&format!("SELECT count(*) FROM resources WHERE {sql}"))
            .await?;
        assert_eq!(page.body["total"], rows, "?{query}");
    }
    let detail = env.get(&format!("/v1/collectors/{collector}")).await?;
    let mut expected = Vec::new();
    for t in ["compute.instance", "network.vpc", "storage.volume"] {
        let n = env
            .scalar(&format!(
                "SELECT count(*) FROM resources WHERE collector_id = {} AND resource_type = '{t}'",
                env.uuid_sql(collector)?
            ))
            .await?;
        if n > 0 {
            expected.push(json!({"resource_type": t, "count": n}));
        }
    }
    assert_eq!(detail.body["resources"], Value::Array(expected));
    Ok(())
}

/// `total` and the counts by type are kept where resources change (PostgreSQL's
/// `resource_counts`; SQLite counts the rows): through creations, updates, the sweep's
/// deletions, a fold of the counts and the collector's removal, each equals a count of the rows.
async fn resource_totals_follow_every_write(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        Options {
            tune: |s| s.worker.delete_after_missed_runs = 1,
            ..Options::default()
        },
    )
    .await?;
    let collector = env.demo_collector(2, json!({"resources": 90})).await?;
    assert_eq!(env.collect(&collector).await?["status"], "SUCCESS");
    assert_totals_match_the_rows(&env, &collector).await?;
    let path = format!("/v1/collectors/{collector}");
    let changed = env
        .patch(
            &path,
            json!({"options": {"resources": 60, "change_ratio": 0.5, "revision": 1}}),
        )
        .await?;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["deleted"], 60, "{job}");
    assert!(job["counts"]["updated"].as_i64() > Some(0), "{job}");
    let deleted = env
        .get(&format!(
            "/v1/resources?collector_id={collector}&state=DELETED"
        ))
        .await?;
    assert_eq!(deleted.body["total"], 60);
    assert_totals_match_the_rows(&env, &collector).await?;

    let appended = env.scalar("SELECT count(*) FROM resource_counts").await;
    let folded = gleaner_common::store::resource::fold_counts(&env.db).await?;
    if mode == Mode::Distributed {
        let (appended, left) = (
            appended?,
            env.scalar("SELECT count(*) FROM resource_counts").await?,
        );
        assert_eq!(u64::try_from(appended - left)?, folded);
        // One row per (account, type, state) is left: 2 accounts, 3 types, 2 states.
        assert_eq!(left, 12, "appended {appended}");
        // Nothing changed since: the next fold rewrites no row (their inserting transactions
        // stay the same).
        let writers = "SELECT CAST(sum(xmin::text::bigint) AS bigint) FROM resource_counts";
        let before = env.scalar(writers).await?;
        let again = gleaner_common::store::resource::fold_counts(&env.db).await?;
        assert_eq!(again, 0);
        assert_eq!(env.scalar(writers).await?, before);
    }
    assert_totals_match_the_rows(&env, &collector).await?;

    assert_eq!(env.delete(&path).await?.status, 204);
    let all = env.get("/v1/resources?limit=1").await?;
    assert_eq!(all.body["total"], 180, "the resources stay");
    let owned = env
        .get(&format!("/v1/resources?collector_id={collector}&limit=1"))
        .await?;
    assert_eq!(owned.body["total"], 0);
    Ok(())
}

crate::in_both_modes!(
    resource_totals_follow_every_write,
    small_tasks_run_together_keep_their_own_counts,
    small_tasks_run_beyond_concurrency_and_big_ones_take_turns,
    a_disabled_collector_refuses_to_collect_and_a_deleted_one_leaves_its_resources,
    a_resource_history_lists_its_creation_and_updates_with_their_jobs,
    demo_collection_over_two_accounts_stores_every_resource,
    collecting_an_unchanged_estate_again_writes_nothing,
    changing_ten_percent_updates_exactly_those_with_field_diffs,
    resource_pages_follow_the_cursor_without_repeats,
    jobs_are_listed_per_collector_newest_first,
    a_job_without_service_accounts_fails_saying_why,
);
