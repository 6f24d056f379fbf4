//! Unmodified Cloudforet plugins (`runtime: cloudforet`): the test collector of
//! `tests/plugins/cloudforet`, served by spaceone-core's own `spaceone run grpc-server`.

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Api, Mode, Options, TestEnv, cloudforet, fields, quick_recovery};

const ACCESS_KEY: &str = "AKIAGLEANERCFTEST001";
const SECRET_KEY: &str = "gleaner-cloudforet-secret-value-0001";

/// Registers the test collector as `id`, with `extra` fields.
async fn register(api: &Api, id: &str, extra: Value) -> anyhow::Result<Value> {
    let mut body = json!({
        "id": id, "version": "1.0.0", "runtime": "cloudforet", "kind": "collector",
        "command": cloudforet::inventory().await?, "provider": "aws",
    });
    for (k, v) in extra.as_object().context("extra fields")? {
        body[k] = v.clone();
    }
    api.create("/v1/plugins", body).await
}

/// A project with an AWS service account, and a collector of `plugin` with `options`.
async fn collector(api: &Api, plugin: &str, options: Value) -> anyhow::Result<String> {
    crate::plugins::collector_of(
        api,
        plugin,
        "aws",
        json!({"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}),
        options,
    )
    .await
}

async fn tasks(api: &Api, job: &Value) -> anyhow::Result<Vec<Value>> {
    let id = job["id"].as_str().context("job id")?;
    let tasks = api.get(&format!("/v1/jobs/{id}/tasks")).await?;
    Ok(tasks.body["items"].as_array().context("tasks")?.clone())
}

/// The collector's resources, by key.
async fn resources(api: &Api, collector: &str) -> anyhow::Result<Vec<Value>> {
    let page = api
        .get(&format!("/v1/resources?collector_id={collector}&limit=500"))
        .await?;
    let mut items = page.body["items"].as_array().context("items")?.clone();
    items.sort_by(|a, b| a["resource_key"].as_str().cmp(&b["resource_key"].as_str()));
    Ok(items)
}

/// The keys the test collector's match rules give its resources `0..count`.
fn expected_keys(count: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..count)
        .map(|i| {
            if i % 5 == 4 {
                format!("server-{i}/123456789012")
            } else {
                format!("i-{i:08x}/123456789012")
            }
        })
        .collect();
    keys.sort();
    keys
}

fn keys(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|r| r["resource_key"].as_str().map(str::to_owned))
        .collect()
}

async fn a_cloudforet_collector_registers_collects_and_resyncs(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let plugin = register(&env, "cf-inven", json!({})).await?;
    assert_eq!(plugin["provider"], "aws");
    assert_eq!(plugin["kind"], "collector");
    // The options schema is the plugin's own, from its init.
    assert_eq!(
        plugin["options_schema"]["properties"]["count"]["type"],
        "integer"
    );
    let c = collector(&env, "cf-inven", json!({"count": 10, "failures": 1})).await?;
    let verified = env
        .post(&format!("/v1/collectors/{c}/verify"), json!(null))
        .await?;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);

    let job = env.collect(&c).await?;
    // The FAILURE item is an item error: the task fails, the resources are stored.
    assert_eq!(job["status"], "FAILURE", "{job}");
    assert_eq!(job["counts"]["created"], 10, "{job}");
    assert_eq!(job["counts"]["failed"], 1, "{job}");
    let task = &tasks(&env, &job).await?[0];
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("AccessDenied: ec2:DescribeVolumes in ap-south-0"),
        "{task}"
    );
    // The plugin logs its requests, secret_data included; the task keeps them redacted.
    let stderr = task["stderr"]
        .as_str()
        .context("the plugin's output is kept")?;
    assert!(stderr.contains("collect params"), "{stderr}");
    assert!(stderr.contains("[REDACTED]"), "{stderr}");
    assert!(
        !stderr.contains(SECRET_KEY) && !stderr.contains(ACCESS_KEY),
        "{stderr}"
    );

    let items = resources(&env, &c).await?;
    assert_eq!(keys(&items), expected_keys(10));
    for r in &items {
        assert_eq!(r["resource_type"], "aws.ec2.instance", "{r}");
        assert!(
            r["data"].get("metadata").is_none(),
            "view layouts are not kept: {r}"
        );
    }
    let third = items
        .iter()
        .find(|r| r["resource_key"] == "i-00000003/123456789012")
        .context("server-3")?;
    assert_eq!(third["name"], "server-3");
    assert_eq!(third["region"], "eu-west-1");
    let data = &third["data"];
    // Struct numbers are doubles on the wire: integral ones are integers again.
    assert!(data["data"]["hardware"]["core"].is_i64(), "{data}");
    assert_eq!(data["data"]["hardware"]["core"], 2);
    assert_eq!(data["data"]["disks"][0]["size"], 32);
    assert_eq!(data["data"]["big"], json!((1_i64 << 40) + 3));
    assert_eq!(data["data"]["hardware"]["memory"], 4.5);
    assert_eq!(data["tags"]["index"], "3");
    assert_eq!(data["reference"]["resource_id"], "i-00000003");
    assert_eq!(data["account"], "123456789012");

    // Types and regions are catalog data, not resources.
    let regions = env.get("/v1/catalog?kind=region").await?;
    assert_eq!(
        crate::support::strs(&regions.body["items"], "key"),
        ["eu-west-1/aws", "us-east-1/aws"]
    );
    let types = env
        .get("/v1/catalog?kind=cloud_service_type&provider=aws")
        .await?;
    assert_eq!(
        crate::support::strs(&types.body["items"], "key"),
        ["Instance/EC2/aws"]
    );
    let bad = env.get("/v1/catalog?kind=server").await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&bad.body), ["kind"]);

    // Fixed, the same collection succeeds and counts nothing twice.
    let patched = env
        .patch(
            &format!("/v1/collectors/{c}"),
            json!({"options": {"count": 10, "failures": 0}}),
        )
        .await?;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["unchanged"], 10, "{job}");
    assert_eq!(job["counts"]["created"], 0, "{job}");
    assert_eq!(keys(&resources(&env, &c).await?), expected_keys(10));
    Ok(())
}

async fn sub_tasks_from_get_tasks_collect_every_resource_once(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register(&env, "cf-tasks", json!({})).await?;
    let c = collector(
        &env,
        "cf-tasks",
        json!({"count": 12, "tasks": 3, "failures": 0}),
    )
    .await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 12, "{job}");
    assert_eq!(keys(&resources(&env, &c).await?), expected_keys(12));
    Ok(())
}

async fn error_codes_and_hangs_fail_the_task_clearly(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register(&env, "cf-faults", json!({"timeout_seconds": 3})).await?;
    let c = collector(
        &env,
        "cf-faults",
        json!({"error_code": "ERROR_AUTHENTICATE_FAILURE"}),
    )
    .await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let error = env.first_task_error(&job).await?;
    assert!(
        error.contains("ERROR_AUTHENTICATE_FAILURE") && error.contains("the test plugin refuses"),
        "{error}"
    );

    // A plugin that never answers is killed at its time limit.
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"hang": 600}}),
    )
    .await?;
    let started = std::time::Instant::now();
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let error = env.first_task_error(&job).await?;
    assert!(error.contains("timeout_seconds"), "{error}");
    assert!(started.elapsed().as_secs() < 30, "killed at its limit");

    // The next collection gets a new process.
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"count": 2, "failures": 0}}),
    )
    .await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 2, "{job}");
    Ok(())
}

/// A distributed environment whose lost or failed attempts run again within a second or two.
async fn recovering() -> anyhow::Result<TestEnv> {
    TestEnv::start_with(
        Mode::Distributed,
        Options {
            tune: quick_recovery,
            ..Options::default()
        },
    )
    .await
}

/// Registers the test cost data source as `id`.
async fn register_cost(api: &Api, id: &str) -> anyhow::Result<Value> {
    api.create(
        "/v1/plugins",
        json!({"id": id, "version": "1.0.0", "runtime": "cloudforet",
               "kind": "cost_data_source", "command": cloudforet::cost().await?,
               "provider": "aws"}),
    )
    .await
}

/// Runs a billing job of `collector` for the months `start..=end` and waits for it.
async fn bill(api: &Api, collector: &str, start: &str, end: &str) -> anyhow::Result<Value> {
    let a = api
        .post(
            &format!("/v1/collectors/{collector}/collect"),
            json!({"start_month": start, "end_month": end}),
        )
        .await?;
    anyhow::ensure!(a.status == StatusCode::ACCEPTED, "collect: {a:?}");
    api.wait_job(a.body["job_id"].as_str().context("job_id")?)
        .await
}

/// A cost summary's `(key, billed_cost)` pairs, amounts normalised (`1.50` is `1.5`).
async fn billed(api: &Api, query: &str, key: &str) -> anyhow::Result<Vec<(String, String)>> {
    let a = api.get(&format!("/v1/costs/summary?{query}")).await?;
    anyhow::ensure!(a.status == StatusCode::OK, "summary {query}: {a:?}");
    let mut out = Vec::new();
    for i in a.body["items"].as_array().context("items")? {
        let amount: rust_decimal::Decimal =
            i["billed_cost"].as_str().context("billed_cost")?.parse()?;
        out.push((
            i[key].as_str().unwrap_or("null").to_owned(),
            amount.normalize().to_string(),
        ));
    }
    out.sort();
    Ok(out)
}

/// The test cost data source (`gleaner_test_cost`): two accounts' sub-tasks, each streaming
/// from its start through the next month; a billing task keeps its month's records only.
async fn a_cloudforet_cost_data_source_bills_exactly_and_honours_changed(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let plugin = register_cost(&env, "cf-cost").await?;
    assert_eq!(plugin["kind"], "cost_data_source");
    let accounts = json!(["111111111111", "222222222222"]);
    let c = collector(&env, "cf-cost", json!({"accounts": accounts})).await?;
    let verified = env
        .post(&format!("/v1/collectors/{c}/verify"), json!(null))
        .await?;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);

    let job = bill(&env, &c, "2026-09", "2026-10").await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    // Three records a day per account: 30 days of September, 31 of October.
    assert_eq!(job["counts"]["created"], (30 + 31) * 2 * 3, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    let september = "start=2026-09-01&end=2026-10-01";
    // A day is 0.1 + 0.2 + 1234.5678 = 1234.8678 exactly, per account.
    assert_eq!(
        billed(
            &env,
            &format!("{september}&group_by=billing_account"),
            "billing_account"
        )
        .await?,
        [
            ("111111111111".to_owned(), "37046.034".to_owned()),
            ("222222222222".to_owned(), "37046.034".to_owned()),
        ]
    );
    let total = billed(&env, &format!("{september}&group_by=provider"), "provider").await?;
    assert_eq!(total, [("AWS".to_owned(), "74092.068".to_owned())]);
    assert_eq!(
        billed(
            &env,
            "start=2026-10-01&end=2026-11-01&group_by=provider",
            "provider"
        )
        .await?,
        [("AWS".to_owned(), "76561.8036".to_owned())]
    );
    // Every field of a record, and the currency of the plugin's init metadata.
    let page = env
        .get("/v1/costs?start=2026-09-02&end=2026-09-03&limit=10")
        .await?;
    let items = page.body["items"].as_array().context("items")?;
    assert_eq!(items.len(), 6, "{}", page.body);
    let ec2 = items
        .iter()
        .find(|i| i["service_name"] == "AmazonEC2" && i["billing_account_id"] == "111111111111")
        .context("an EC2 record")?;
    assert_eq!(
        ec2["billed_cost"]
            .as_str()
            .map(str::parse::<f64>)
            .transpose()?,
        Some(0.1)
    );
    assert_eq!(ec2["currency"], "EUR", "{ec2}");
    assert_eq!(ec2["provider"], "AWS");
    assert_eq!(ec2["region_id"], "us-east-1");
    assert_eq!(ec2["usage_type"], "USE1-BoxUsage:t3.micro");
    assert_eq!(ec2["consumed_unit"], "Hrs");
    assert_eq!(
        ec2["consumed_quantity"]
            .as_str()
            .map(str::parse::<f64>)
            .transpose()?,
        Some(24.0)
    );
    assert_eq!(ec2["sub_account_id"], "111111111111");
    assert_eq!(ec2["tags"], json!({"env": "prod"}));
    assert!(
        ec2["charge_period_start"]
            .as_str()
            .unwrap_or_default()
            .starts_with("2026-09-02T00:00:00"),
        "{ec2}"
    );

    // Again: each month is replaced, not added to.
    let again = bill(&env, &c, "2026-09", "2026-09").await?;
    assert_eq!(again["status"], "SUCCESS", "{again}");
    assert_eq!(again["counts"]["created"], 180, "{again}");
    assert_eq!(again["counts"]["deleted"], 180, "{again}");
    assert_eq!(
        billed(&env, &format!("{september}&group_by=provider"), "provider").await?,
        total
    );

    // The plugin replaces from October on: September is kept as stored, October replaced.
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"accounts": accounts, "changed_from": "2026-10"}}),
    )
    .await?;
    let partial = bill(&env, &c, "2026-09", "2026-10").await?;
    assert_eq!(partial["status"], "SUCCESS", "{partial}");
    assert_eq!(partial["counts"]["unchanged"], 180, "{partial}");
    assert_eq!(partial["counts"]["created"], 186, "{partial}");
    assert_eq!(partial["counts"]["deleted"], 186, "{partial}");
    assert_eq!(
        billed(&env, &format!("{september}&group_by=provider"), "provider").await?,
        total
    );
    let stored = env.scalar("SELECT count(*) FROM costs").await?;
    assert_eq!(stored, (30 + 31) * 2 * 3);

    // A plugin answering an `ERROR_` code fails the task by name; the month is unchanged.
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"accounts": accounts, "error_code": "ERROR_PERMISSION_DENIED"}}),
    )
    .await?;
    let refused = bill(&env, &c, "2026-09", "2026-09").await?;
    assert_eq!(refused["status"], "FAILURE", "{refused}");
    let error = env.first_task_error(&refused).await?;
    assert!(
        error.contains("ERROR_PERMISSION_DENIED") && error.contains("unchanged"),
        "{error}"
    );
    assert_eq!(env.scalar("SELECT count(*) FROM costs").await?, stored);
    Ok(())
}

/// A minute (seconds since the epoch) as a query parameter.
fn minute_param(minute: i64) -> anyhow::Result<String> {
    Ok(
        chrono::DateTime::<chrono::Utc>::from_timestamp(minute * 60, 0)
            .context("a time")?
            .to_rfc3339()
            .replace('+', "%2B"),
    )
}

/// The test monitoring data source (`gleaner_test_mon`, answering as the CloudWatch plugin)
/// over the resources the test collector stored: the declared metrics of every instance, each
/// minute equal to the plugin's formula, gaps left out, undeclared metrics not collected, and
/// a second run storing nothing twice.
async fn a_cloudforet_monitoring_data_source_feeds_metrics_jobs(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register(&env, "cf-inven", json!({})).await?;
    let inventory = collector(&env, "cf-inven", json!({"count": 6, "failures": 0})).await?;
    let job = env.collect(&inventory).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let metrics = json!([
        {"name": "CPUUtilization", "resource_type": "aws.ec2.instance", "unit": "Percent"},
        {"name": "NetworkIn", "resource_type": "aws.ec2.instance", "unit": "Bytes"},
    ]);
    let mut body = json!({"id": "cf-mon", "version": "1.0.0", "runtime": "cloudforet",
        "kind": "metric_data_source", "command": cloudforet::monitoring().await?, "provider": "aws"});
    // Cloudforet monitoring plugins name their metrics per resource: the operator says which.
    let refused = env.post("/v1/plugins", body.clone()).await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(fields(&refused.body), ["metrics"]);
    body["metrics"] = json!([{"name": "CPU Utilization!", "resource_type": "aws.ec2.instance", "unit": "Percent"}]);
    let refused = env.post("/v1/plugins", body.clone()).await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(fields(&refused.body), ["metrics[0].name"]);
    body["metrics"] = metrics;
    let plugin = env.create("/v1/plugins", body).await?;
    assert_eq!(plugin["kind"], "metric_data_source");
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "cloudwatch (cloudforet)", "plugin_id": "cf-mon", "options": {}}),
        )
        .await?;
    let c = c["id"].as_str().context("collector id")?.to_owned();
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["kind"], "metrics");
    let created = job["counts"]["created"].as_i64().context("created")?;

    let stored = resources(&env, &inventory).await?;
    assert_eq!(stored.len(), 6);
    let now = chrono::Utc::now().timestamp() / 60;
    let mut expected = 0;
    for r in &stored {
        let id = r["id"].as_str().context("id")?;
        let key = r["resource_key"].as_str().context("key")?;
        // `i-0000000n/…`; server-4 (keyed by its name) has the same instance id in its data.
        let n = i64::from_str_radix(
            &r["data"]["data"]["cloudwatch"]["metrics_info"][0]["Dimensions"][0]["Value"]
                .as_str()
                .context("instance id")?[2..],
            16,
        )?;
        let listed = env.get(&format!("/v1/resources/{id}/metrics")).await?;
        let mut names: Vec<&str> = listed.body["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter_map(|m| m["metric"].as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["CPUUtilization", "NetworkIn"],
            "{key}: {}",
            listed.body
        );
        // The last hour by minutes, against the formula; every fifth NetworkIn minute is a gap.
        let (from, to) = (now - 61, now - 1);
        for metric in ["CPUUtilization", "NetworkIn"] {
            let a = env
                .get(&format!(
                    "/v1/resources/{id}/metrics/{metric}?start={}&end={}&period=60&stat=max",
                    minute_param(from)?,
                    minute_param(to)?,
                ))
                .await?;
            assert_eq!(a.status, StatusCode::OK, "{a:?}");
            let values = a.body["values"].as_array().context("values")?;
            assert_eq!(values.len(), 60, "{}", a.body);
            for (i, v) in values.iter().enumerate() {
                let m = from + i as i64;
                let want = match metric {
                    "CPUUtilization" => Some((m % 60) as f64 + n as f64 / 4.0),
                    _ => (m % 5 != 0).then(|| (1000 * (m % 1440) + n) as f64),
                };
                assert_eq!(v.as_f64(), want, "{key} {metric} at minute {m}");
            }
        }
        expected += env
            .scalar(&format!(
                "SELECT count(*) FROM metric_samples WHERE resource_id = {}",
                env.uuid_sql(id)?
            ))
            .await?;
    }
    assert_eq!(created, expected, "every sample stored is counted");
    // A day back, CPUUtilization every minute and NetworkIn four minutes of five, per instance.
    assert!(created >= 6 * (1439 + 1151), "{created}");

    // Again at once: at most the minutes since, nothing twice.
    let again = env.collect(&c).await?;
    assert_eq!(again["status"], "SUCCESS", "{again}");
    let total = env.scalar("SELECT count(*) FROM metric_samples").await?;
    let distinct = env
        .scalar("SELECT count(*) FROM (SELECT DISTINCT resource_id, metric, time FROM metric_samples) s")
        .await?;
    assert_eq!(distinct, total);
    assert!(total - created <= 6 * 2 * 2, "{total} after {created}");
    Ok(())
}

crate::in_both_modes!(
    a_cloudforet_monitoring_data_source_feeds_metrics_jobs,
    a_cloudforet_collector_registers_collects_and_resyncs,
    sub_tasks_from_get_tasks_collect_every_resource_once,
    error_codes_and_hangs_fail_the_task_clearly,
    a_cloudforet_cost_data_source_bills_exactly_and_honours_changed,
);

/// A cost data source killed in the middle of `Cost.get_data`: the month stored before stays
/// whole until the task's next attempt, on a new process, replaces it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_plugin_killed_mid_stream_replaces_the_month_once() -> anyhow::Result<()> {
    let env = recovering().await?;
    register_cost(&env, "cf-cost-dies").await?;
    let c = collector(&env, "cf-cost-dies", json!({})).await?;
    let first = bill(&env, &c, "2026-09", "2026-09").await?;
    assert_eq!(first["status"], "SUCCESS", "{first}");
    assert_eq!(first["counts"]["created"], 90, "{first}");
    let marker =
        std::env::temp_dir().join(format!("gleaner-cf-cost-dies-{}", rand::random::<u64>()));
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"die_after": 50, "page": 10, "marker": marker}}),
    )
    .await?;
    let job = bill(&env, &c, "2026-09", "2026-09").await?;
    let died = marker.exists();
    std::fs::remove_file(&marker).ok();
    let task = &tasks(&env, &job).await?[0];
    assert!(died, "the plugin was killed once");
    assert_eq!(job["status"], "SUCCESS", "{job} {task}");
    assert!(task["attempt"].as_i64().unwrap_or(0) >= 2, "{task}");
    assert_eq!(job["counts"]["created"], 90, "{job}");
    assert_eq!(job["counts"]["deleted"], 90, "{job}");
    assert_eq!(env.scalar("SELECT count(*) FROM costs").await?, 90);
    assert_eq!(
        billed(
            &env,
            "start=2026-09-01&end=2026-10-01&group_by=provider",
            "provider"
        )
        .await?,
        [("AWS".to_owned(), "37046.034".to_owned())]
    );
    Ok(())
}

/// A collector whose `Job.get_tasks` splits the account: one task per part, run by two
/// workers at once; what no part saw is swept once every part succeeded, and nothing when one
/// failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_tasks_spread_over_two_workers_and_sweep_together() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 2,
            tune: |s| {
                // One plugin at a time per worker: two parts at once means two workers.
                s.worker.concurrency = 1;
                s.worker.max_tasks = 1;
                s.worker.delete_after_missed_runs = 1;
            },
            ..Options::default()
        },
    )
    .await?;
    register(&env, "cf-parts", json!({})).await?;
    let c = collector(
        &env,
        "cf-parts",
        json!({"count": 12, "tasks": 2, "failures": 0, "hang": 2}),
    )
    .await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 12, "{job}");
    let parts = tasks(&env, &job).await?;
    assert_eq!(parts.len(), 2, "{parts:?}");
    let mut seen_parts: Vec<i64> = parts
        .iter()
        .filter_map(|t| t["sub_task"]["part"].as_i64())
        .collect();
    seen_parts.sort_unstable();
    assert_eq!(seen_parts, [0, 1]);
    assert!(
        parts.iter().all(|t| t["sub_task"]["parts"] == 2),
        "{parts:?}"
    );
    let span = |t: &Value| -> anyhow::Result<(String, String)> {
        Ok((
            t["started_at"].as_str().context("started_at")?.to_owned(),
            t["finished_at"].as_str().context("finished_at")?.to_owned(),
        ))
    };
    let (a, b) = (span(&parts[0])?, span(&parts[1])?);
    assert!(
        a.0 < b.1 && b.0 < a.1,
        "the parts ran at the same time, on two workers: {a:?} {b:?}"
    );
    assert_eq!(keys(&resources(&env, &c).await?), expected_keys(12));

    // Four fewer: both parts succeed, and what neither saw is deleted once.
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"count": 8, "tasks": 2, "failures": 0}}),
    )
    .await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let active = "SELECT count(*) FROM resources WHERE state = 'ACTIVE'";
    wait_for(|| async { Ok(env.scalar(active).await? == 8) }).await?;
    let job = env
        .get(&format!("/v1/jobs/{}", job["id"].as_str().context("id")?))
        .await?
        .body;
    assert_eq!(job["counts"]["deleted"], 4, "{job}");

    // One part fails: nothing is deleted, though the other part saw only two resources.
    env.patch(
        &format!("/v1/collectors/{c}"),
        json!({"options": {"count": 4, "tasks": 2, "failures": 0, "fail_part": 1}}),
    )
    .await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let failed: Vec<Value> = tasks(&env, &job)
        .await?
        .into_iter()
        .filter(|t| t["status"] == "FAILURE")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["sub_task"]["part"], 1);
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("ERROR_TEST_PART"), "{error}");
    // The failed part's end dropped what the other part kept: no sweep will come.
    let kept = format!(
        "SELECT count(*) FROM job_tasks WHERE job_id = {} AND seen_keys IS NOT NULL",
        env.uuid_sql(job["id"].as_str().context("id")?)?
    );
    wait_for(|| async { Ok(env.scalar(&kept).await? == 0) }).await?;
    assert!(
        tasks(&env, &job)
            .await?
            .iter()
            .all(|t| t["counts"]["deleted"] == 0),
        "nothing counted deleted"
    );
    assert_eq!(
        env.scalar(active).await?,
        8,
        "nothing deleted after a failed part"
    );
    Ok(())
}

/// Polls `check` for up to 10 s.
async fn wait_for<F, Fut>(check: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    for _ in 0..100 {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("not within 10 s")
}

/// The plugin process killed in the middle of its stream: the task's next attempt starts it
/// again, and every resource is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_killed_mid_stream_is_restarted_and_nothing_is_lost_or_doubled()
-> anyhow::Result<()> {
    let env = recovering().await?;
    register(&env, "cf-dies", json!({})).await?;
    let marker = std::env::temp_dir().join(format!("gleaner-cf-dies-{}", rand::random::<u64>()));
    let c = collector(
        &env,
        "cf-dies",
        json!({"count": 20, "failures": 0, "die_after": 7, "marker": marker}),
    )
    .await?;
    let job = env.collect(&c).await?;
    std::fs::remove_file(&marker).ok();
    let task = &tasks(&env, &job).await?[0];
    assert_eq!(job["status"], "SUCCESS", "{job} {task}");
    // The 7 stored before the kill are unchanged on the next attempt, not created twice.
    assert_eq!(
        job["counts"]["created"].as_i64().unwrap_or(0)
            + job["counts"]["unchanged"].as_i64().unwrap_or(0),
        20,
        "{job}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM resources").await?,
        20,
        "every resource once"
    );
    assert!(task["attempt"].as_i64().unwrap_or(0) >= 2, "{task}");
    assert_eq!(keys(&resources(&env, &c).await?), expected_keys(20));
    Ok(())
}

/// A plugin already serving is reached at its endpoint; Gleaner starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_at_an_endpoint_collects() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let command = cloudforet::inventory().await?;
    let port = crate::support::free_port()?;
    let _served = tokio::process::Command::new(&command)
        .env("SPACEONE_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    // It may take a few seconds to serve: registration calls init, so retry it.
    let body = json!({"id": "cf-endpoint", "version": "1.0.0", "runtime": "cloudforet",
                      "kind": "collector", "endpoint": endpoint, "provider": "aws"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let a = env.post("/v1/plugins", body.clone()).await?;
        if a.status == StatusCode::CREATED {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "registration kept failing: {}",
            a.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let c = collector(&env, "cf-endpoint", json!({"count": 4, "failures": 0})).await?;
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(keys(&resources(&env, &c).await?), expected_keys(4));
    Ok(())
}

/// What a registration may make the API host and the workers run or reach is the operator's
/// to allow: the plugin directory, the endpoint allowlist, the environment allowlist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_what_the_operator_did_not_allow() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let command = cloudforet::inventory().await?;
    let base = json!({"id": "cf-bad", "version": "1.0.0", "runtime": "cloudforet",
                      "kind": "collector", "command": command, "provider": "aws"});
    let with = |extra: Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                b.as_object_mut().expect("object").remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases = [
        // A variable that would make the process load a library of the caller's.
        (
            with(json!({"env": {"LD_PRELOAD": "/tmp/evil.so"}})),
            vec!["env.LD_PRELOAD"],
        ),
        // An endpoint the operator's allowlist lacks (the tests allow 127.0.0.1 only).
        (
            with(json!({"command": null, "endpoint": "http://169.254.169.254:80"})),
            vec!["endpoint"],
        ),
        (
            with(json!({"command": null, "endpoint": "https://127.0.0.1:50051"})),
            vec!["endpoint"],
        ),
        (with(json!({"command": "/bin/sh"})), vec!["command"]),
        (
            with(json!({"command": "../../../../bin/sh"})),
            vec!["command"],
        ),
        (with(json!({"kind": null})), vec!["kind"]),
        (with(json!({"port": 0})), vec!["port"]),
        // JSON-lines plugins have none of the Cloudforet fields.
        (
            with(json!({"runtime": "json_lines"})),
            vec!["kind", "provider"],
        ),
    ];
    for (body, expected) in cases {
        let a = env.post("/v1/plugins", body.clone()).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert_eq!(fields(&a.body), expected, "{body}: {}", a.body);
    }
    let plugins = env.get("/v1/plugins").await?;
    assert!(
        !crate::support::strs(&plugins.body["items"], "id").contains(&"cf-bad"),
        "nothing was registered"
    );
    Ok(())
}

/// A fixed `port` something else listens on: the registration fails naming it, before the
/// plugin could share the port with the other listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_registration() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let a = env
        .post(
            "/v1/plugins",
            json!({"id": "cf-port", "version": "1.0.0", "runtime": "cloudforet",
                   "kind": "collector", "command": cloudforet::inventory().await?,
                   "provider": "aws", "port": port}),
        )
        .await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    let detail = a.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("port {port} is already in use")),
        "{detail}"
    );
    Ok(())
}

/// The process manager itself: a plugin process is started on the first lease, shared by the
/// next, stopped once idle, and started again after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_processes_are_shared_stopped_when_idle_and_restarted_after_a_crash()
-> anyhow::Result<()> {
    use gleaner_cloudforet::Host;
    use gleaner_common::external::{Runtime, Spec};

    let spec = Spec {
        command: cloudforet::inventory().await?,
        runtime: Runtime::Cloudforet,
        timeout_seconds: 60,
        ..Spec::default()
    };
    let secret: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"aws_access_key_id": ACCESS_KEY}))?;
    let host = Host::new(std::time::Duration::from_secs(1));
    let first = host.lease("p", &spec, &secret).await?;
    let second = host.lease("p", &spec, &secret).await?;
    assert_eq!(host.running().await, 1, "one process serves both leases");
    let verify = |lease: &gleaner_cloudforet::Lease| {
        let client = lease.client().clone();
        let secret = secret.clone();
        async move {
            client
                .verify(
                    gleaner_common::plugin::PluginKind::Collector,
                    &json!({}),
                    &secret,
                    "domain",
                    std::time::Duration::from_secs(30),
                )
                .await
        }
    };
    verify(&first).await?;
    // While leased it is never idle.
    drop(first);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(host.running().await, 1, "still leased");
    // The plugin logged the request; the lease shows it with the credential redacted.
    let output = second.output();
    assert!(output.contains("verify params"), "{output}");
    assert!(
        !output.contains(ACCESS_KEY) && output.contains("[REDACTED]"),
        "{output}"
    );
    drop(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while host.running().await > 0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the idle process was not stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Started again on demand; killed, it is replaced by the next lease.
    let again = host.lease("p", &spec, &secret).await?;
    assert_eq!(host.running().await, 1);
    again.kill();
    drop(again);
    let after = host.lease("p", &spec, &secret).await?;
    verify(&after).await?;
    drop(after);
    host.shutdown().await;
    assert_eq!(host.running().await, 0);
    Ok(())
}
