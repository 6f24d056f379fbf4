//! The official AWS plugins against a local AWS (moto): the inventory collector's exact counts,
//! pagination, deletions, throttling, denied regions and roles, and Cost Explorer imports.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::aws::{FaultProxy, Moto};
use crate::support::{Mode, Options, TestEnv};

/// moto's account.
pub(crate) const ACCOUNT: &str = "123456789012";

/// Calls in flight per collection, in these tests.
const CALLS_IN_FLIGHT: u64 = 3;

/// AWS retries on a test's time scale, and few calls in flight.
pub(crate) fn quick_aws(s: &mut gleaner_common::config::Settings) {
    s.aws.initial_backoff = Duration::from_millis(10);
    s.aws.max_attempts = 10;
    s.aws.calls_in_flight = CALLS_IN_FLIGHT as usize;
}

pub(crate) async fn start(mode: Mode) -> anyhow::Result<TestEnv> {
    TestEnv::start_with(
        mode,
        Options {
            tune: quick_aws,
            ..Options::default()
        },
    )
    .await
}

/// An `aws` service account and collector over `endpoint`; returns the collector's id.
pub(crate) async fn aws_collector(
    env: &TestEnv,
    credentials: Value,
    options: Value,
) -> anyhow::Result<String> {
    env.create(
        "/v1/service-accounts",
        json!({"name": "aws", "provider": "aws", "credentials": credentials}),
    )
    .await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "aws", "plugin_id": "aws", "options": options}),
        )
        .await?;
    Ok(c["id"].as_str().context("collector id")?.to_owned())
}

pub(crate) fn keys() -> Value {
    json!({"aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
}

/// What the store holds ACTIVE, per type and region (`""` for global types), as
/// `aws_seed.py` counts.
async fn stored(env: &TestEnv, expected: &Value) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    let types = expected.as_object().context("counts")?;
    for (kind, regions) in types {
        let mut per = serde_json::Map::new();
        for region in regions.as_object().context("regions")?.keys() {
            let at = if region.is_empty() {
                "region IS NULL".to_owned()
            } else {
                format!("region = '{region}'")
            };
            let n = env
                .scalar(&format!(
                    "SELECT count(*) FROM resources WHERE resource_type = '{kind}' AND {at} AND state = 'ACTIVE'"
                ))
                .await?;
            per.insert(region.clone(), json!(n));
        }
        out.insert(kind.clone(), Value::Object(per));
    }
    let all = env
        .scalar("SELECT count(*) FROM resources WHERE state = 'ACTIVE'")
        .await?;
    let want: i64 = types
        .values()
        .flat_map(|r| r.as_object().into_iter().flat_map(|m| m.values()))
        .filter_map(Value::as_i64)
        .sum();
    anyhow::ensure!(
        all == want,
        "{all} resources stored, {want} expected: {out:?}"
    );
    Ok(Value::Object(out))
}

async fn deleted_keys(env: &TestEnv) -> anyhow::Result<Vec<String>> {
    let a = env.get("/v1/resources?state=DELETED&limit=1000").await?;
    let mut keys: Vec<String> = crate::support::strs(&a.body["items"], "resource_key")
        .into_iter()
        .map(str::to_owned)
        .collect();
    keys.sort();
    Ok(keys)
}

/// Collects and waits (an AWS collection is longer than the demo's).
pub(crate) async fn collect(env: &TestEnv, collector: &str) -> anyhow::Result<Value> {
    let job = env.start_collect(collector).await?;
    env.wait_job_within(&job, Duration::from_secs(300)).await
}

/// Collects, insisting on SUCCESS (showing the tasks' errors otherwise).
pub(crate) async fn collect_ok(env: &TestEnv, collector: &str) -> anyhow::Result<Value> {
    let job = collect(env, collector).await?;
    anyhow::ensure!(
        job["status"] == "SUCCESS",
        "{job} {}",
        task_errors(env, &job).await?
    );
    Ok(job)
}

pub(crate) async fn task_errors(env: &TestEnv, job: &Value) -> anyhow::Result<String> {
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().context("job id")?
        ))
        .await?;
    Ok(tasks.body["items"]
        .as_array()
        .context("tasks")?
        .iter()
        .map(|t| t["error"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Over a thousand instances in one region (in over a thousand reservations, which is what moto
/// pages by), other types in three regions, buckets in two, IAM users and roles: every one
/// stored once, per type and region; a second collection changes nothing; terminated instances
/// (with their root volumes) and a deleted bucket are marked DELETED after three collections,
/// and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_estate_is_collected_exactly_and_what_is_gone_is_deleted() -> anyhow::Result<()> {
    let env = start(Mode::Distributed).await?;
    let moto = Moto::start().await?;
    let seeded = moto
        .run(json!({"do": "seed", "users": 3, "roles": 2, "regions": {
            "us-east-1": {"instances": 1005, "reservations": 1005, "volumes": 3, "vpcs": 2,
                          "subnets_per_vpc": 2, "security_groups": 3, "buckets": 2, "services": true},
            "eu-west-1": {"instances": 20, "reservations": 4, "volumes": 2, "vpcs": 1,
                          "subnets_per_vpc": 1, "security_groups": 1, "buckets": 1},
            "ap-northeast-2": {"instances": 5, "reservations": 1, "volumes": 1}
        }}))
        .await?;
    let expected = seeded["counts"].clone();
    assert_eq!(
        expected["aws.ec2.instance"]["us-east-1"], 1005,
        "{expected}"
    );
    let collector = aws_collector(
        &env,
        keys(),
        json!({"regions": ["us-east-1", "eu-west-1", "ap-northeast-2"], "endpoint_url": moto.url}),
    )
    .await?;
    collect_ok(&env, &collector).await?;
    assert_eq!(stored(&env, &expected).await?, expected);
    // Keys are ARNs, names come from the Name tag, data carries the SDK's fields and the tags.
    let first = seeded["instances"]["us-east-1"][0]
        .as_str()
        .context("an instance")?;
    let arn = format!("arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{first}");
    let data = env
        .json_column(&format!(
            "SELECT data FROM resources WHERE resource_key = '{arn}' AND name = 'first' AND region = 'us-east-1'"
        ))
        .await?;
    assert_eq!(data.len(), 1, "{arn} stored once, named by its Name tag");
    assert_eq!(data[0]["instance_type"], "t3.micro");
    assert_eq!(data[0]["tags"], json!({"Name": "first", "team": "seeded"}));
    let bucket = env
        .json_column(
            "SELECT data FROM resources WHERE resource_key = 'arn:aws:s3:::bucket-eu-west-1-0' AND region = 'eu-west-1'",
        )
        .await?;
    assert_eq!(bucket.len(), 1, "the bucket is in its own region");
    assert_eq!(bucket[0]["tags"], json!({"team": "data"}));

    let total: i64 = env.scalar("SELECT count(*) FROM resources").await?;
    let again = collect_ok(&env, &collector).await?;
    assert_eq!(
        again["counts"],
        json!({"created": 0, "updated": 0, "unchanged": total, "deleted": 0, "failed": 0}),
        "{again}"
    );

    let gone: Vec<String> = seeded["instances"]["us-east-1"].as_array().context("ids")?[10..13]
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let terminated = moto
        .run(json!({"do": "terminate", "region": "us-east-1", "ids": gone}))
        .await?;
    let volumes_gone = terminated["volumes_gone"].as_array().context("volumes")?;
    assert_eq!(
        volumes_gone.len(),
        gone.len(),
        "each instance had a root volume: {terminated}"
    );
    moto.run(json!({"do": "delete_bucket", "name": "bucket-eu-west-1-0"}))
        .await?;
    for run in 1..=3 {
        collect_ok(&env, &collector).await?;
        if run < 3 {
            assert!(deleted_keys(&env).await?.is_empty(), "run {run}");
        }
    }
    let mut want: Vec<String> = gone
        .iter()
        .map(|id| format!("arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{id}"))
        .collect();
    want.extend(
        volumes_gone
            .iter()
            .filter_map(Value::as_str)
            .map(|id| format!("arn:aws:ec2:us-east-1:{ACCOUNT}:volume/{id}")),
    );
    want.push("arn:aws:s3:::bucket-eu-west-1-0".into());
    want.sort();
    assert_eq!(deleted_keys(&env).await?, want);
    Ok(())
}

/// Through a proxy that throttles one request in four (400 ThrottlingException and 503 in
/// turn), a collection by an assumed role still ends SUCCESS with exact counts, with never more
/// calls in flight than the setting allows. Then a region
/// that answers AccessDenied fails the task, naming the region and the call, while the other
/// region is stored, and nothing is deleted, however many times it runs.
async fn throttling_is_retried_and_a_denied_region_deletes_nothing(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = start(mode).await?;
    let moto = Moto::start().await?;
    let seeded = moto
        .run(json!({"do": "seed", "users": 2, "roles": 1, "regions": {
            "us-east-1": {"instances": 30, "reservations": 10, "volumes": 2, "vpcs": 1,
                          "subnets_per_vpc": 2, "security_groups": 2, "buckets": 2, "services": true},
            "eu-west-1": {"instances": 5, "reservations": 5, "volumes": 1, "buckets": 1}
        }}))
        .await?;
    let expected = seeded["counts"].clone();
    let proxy = FaultProxy::start(&moto.url).await?;
    proxy.faults.throttle_every.store(4, Ordering::Relaxed);
    let mut credentials = keys();
    credentials["role_arn"] = json!(format!("arn:aws:iam::{ACCOUNT}:role/auditor"));
    credentials["external_id"] = json!("gleaner-test");
    let collector = aws_collector(
        &env,
        credentials,
        json!({"regions": ["us-east-1", "eu-west-1"], "endpoint_url": proxy.url}),
    )
    .await?;
    collect_ok(&env, &collector).await?;
    assert_eq!(stored(&env, &expected).await?, expected);
    let throttled = proxy.faults.injected.load(Ordering::Relaxed);
    assert!(throttled >= 10, "only {throttled} requests were throttled");
    // Regions and types are collected at once, within the bound.
    let most = proxy.faults.most_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=CALLS_IN_FLIGHT).contains(&most),
        "{most} calls were in flight at most"
    );

    proxy.faults.throttle_every.store(0, Ordering::Relaxed);
    *proxy.faults.denied_region.lock().unwrap() = Some("eu-west-1".into());
    let gone = seeded["instances"]["us-east-1"][0]
        .as_str()
        .context("an instance")?;
    moto.run(json!({"do": "terminate", "region": "us-east-1", "ids": [gone]}))
        .await?;
    for run in 1..=3 {
        let job = collect(&env, &collector).await?;
        assert_eq!(job["status"], "FAILURE", "run {run}: {job}");
        let errors = task_errors(&env, &job).await?;
        assert!(
            errors.contains("eu-west-1: ec2:Describe") && errors.contains("UnauthorizedOperation"),
            "{errors}"
        );
        assert!(!errors.contains("us-east-1:"), "{errors}");
    }
    // Nothing deleted: neither eu-west-1's resources, which could not be read, nor the
    // terminated instance, since no collection was complete.
    assert_eq!(deleted_keys(&env).await?, Vec::<String>::new());
    assert_eq!(stored(&env, &expected).await?, expected);
    Ok(())
}

/// Credentials are checked through the verify route (STS GetCallerIdentity); a role without
/// keys is refused unless the operator lets the worker's own credentials assume it; an
/// endpoint outside the operator's allowlist is refused before anything runs.
async fn credentials_are_verified_and_endpoints_allowlisted(mode: Mode) -> anyhow::Result<()> {
    let env = start(mode).await?;
    let moto = Moto::start().await?;
    let collector = aws_collector(&env, keys(), json!({"endpoint_url": moto.url})).await?;
    let ok = env
        .post(&format!("/v1/collectors/{collector}/verify"), json!(null))
        .await?;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    env.create(
        "/v1/service-accounts",
        json!({"name": "role-only", "provider": "aws",
               "credentials": {"role_arn": format!("arn:aws:iam::{ACCOUNT}:role/r")}}),
    )
    .await?;
    let refused = env
        .post(&format!("/v1/collectors/{collector}/verify"), json!(null))
        .await?;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .to_string()
            .contains("GLEANER_AWS__WORKER_CREDENTIALS"),
        "{}",
        refused.body
    );
    for endpoint in [
        "http://169.254.169.254",
        "https://attacker.example:443",
        "file:///etc/passwd",
    ] {
        let a = env
            .post(
                "/v1/collectors",
                json!({"name": "evil", "plugin_id": "aws", "options": {"endpoint_url": endpoint}}),
            )
            .await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{endpoint}: {}", a.body);
        assert_eq!(
            a.body["errors"][0]["field"], "options.endpoint_url",
            "{}",
            a.body
        );
    }
    Ok(())
}

/// A role without keys is assumed from the worker's own credentials (here its environment's
/// key pair) by a process whose operator allows it, and refused by one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_is_assumed_with_the_workers_own_credentials_only_where_allowed()
-> anyhow::Result<()> {
    let env = start(Mode::Distributed).await?;
    let moto = Moto::start().await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "role-only", "provider": "aws",
               "credentials": {"role_arn": format!("arn:aws:iam::{ACCOUNT}:role/auditor"),
                               "external_id": "gleaner-test"}}),
    )
    .await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "aws", "plugin_id": "aws", "options": {"endpoint_url": moto.url}}),
        )
        .await?;
    let verify = format!("/v1/collectors/{}/verify", c["id"].as_str().context("id")?);
    let refused = env.post(&verify, json!(null)).await?;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let port = crate::support::free_port()?;
    let _allowing = crate::support::api_process(
        &env,
        "api-aws",
        port,
        &[
            ("GLEANER_AWS__WORKER_CREDENTIALS", "true"),
            ("AWS_ACCESS_KEY_ID", "worker-key"),
            ("AWS_SECRET_ACCESS_KEY", "worker-secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )?;
    let allowing = env.api.at(format!("http://127.0.0.1:{port}"));
    allowing.wait_ready().await?;
    let ok = allowing.post(&verify, json!(null)).await?;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    Ok(())
}

/// Cost Explorer answers in two pages (moto serves queued answers): the import sums exactly by
/// service and by month, a second sync replaces instead of adding, and the costs carry the
/// account, region and service.
async fn cost_explorer_costs_are_imported_exactly_and_replaced(mode: Mode) -> anyhow::Result<()> {
    let env = start(mode).await?;
    let moto = Moto::start().await?;
    let group = |service: &str, region: &str, billed: &str, amortized: &str| {
        json!({"Keys": [service, region], "Metrics": {
            "UnblendedCost": {"Amount": billed, "Unit": "USD"},
            "AmortizedCost": {"Amount": amortized, "Unit": "USD"}}})
    };
    let day = |d: &str, next: &str, groups: Vec<Value>| json!({"TimePeriod": {"Start": d, "End": next}, "Total": {}, "Groups": groups, "Estimated": false});
    moto.queue_costs(vec![
        json!({"ResultsByTime": [
                day("2024-09-01", "2024-09-02", vec![
                    group("Amazon Elastic Compute Cloud - Compute", "us-east-1", "10.1234567891", "9.5"),
                    group("Amazon Simple Storage Service", "us-east-1", "0.0000000123", "0.0000000123"),
                ])],
               "DimensionValueAttributes": [], "NextPageToken": "page-2"}),
        json!({"ResultsByTime": [
                day("2024-09-02", "2024-09-03", vec![
                    group("Amazon Elastic Compute Cloud - Compute", "eu-west-1", "2.5", "2.25"),
                    group("Tax", "NoRegion", "1.2E-2", "1.2E-2"),
                ])],
               "DimensionValueAttributes": []}),
    ])
    .await?;
    let project = env
        .create("/v1/projects", json!({"name": "finance"}))
        .await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "payer", "provider": "aws", "project_id": project["id"], "credentials": keys()}),
    )
    .await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "ce", "plugin_id": "aws-cost-explorer", "options": {"endpoint_url": moto.url}}),
        )
        .await?;
    let collector = c["id"].as_str().context("id")?;
    let window = json!({"start_month": "2024-09", "end_month": "2024-09"});
    for sync in 1..=2 {
        let a = env
            .post(
                &format!("/v1/collectors/{collector}/collect"),
                window.clone(),
            )
            .await?;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        let job = env
            .wait_job(a.body["job_id"].as_str().context("job")?)
            .await?;
        assert_eq!(
            job["status"],
            "SUCCESS",
            "sync {sync}: {job} {}",
            task_errors(&env, &job).await?
        );
        assert_eq!(job["counts"]["created"], 4, "sync {sync}: {job}");
        let by_service = env
            .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01&group_by=service")
            .await?;
        let sums: BTreeMap<String, (String, String)> = by_service.body["items"]
            .as_array()
            .context("items")?
            .iter()
            .map(|i| {
                (
                    i["service"].as_str().unwrap_or("?").to_owned(),
                    (
                        i["billed_cost"].as_str().unwrap_or("?").to_owned(),
                        i["effective_cost"].as_str().unwrap_or("?").to_owned(),
                    ),
                )
            })
            .collect();
        let pair = |b: &str, e: &str| (b.to_owned(), e.to_owned());
        assert_eq!(
            sums,
            BTreeMap::from([
                (
                    "Amazon Elastic Compute Cloud - Compute".to_owned(),
                    pair("12.6234567891", "11.75")
                ),
                (
                    "Amazon Simple Storage Service".to_owned(),
                    pair("0.0000000123", "0.0000000123")
                ),
                ("Tax".to_owned(), pair("0.012", "0.012")),
            ]),
            "sync {sync}: {}",
            by_service.body
        );
        let total = env
            .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01&group_by=month")
            .await?;
        assert_eq!(
            total.body["items"][0]["billed_cost"], "12.6354568014",
            "{}",
            total.body
        );
    }
    let accounts = env
        .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01&group_by=billing_account")
        .await?;
    assert_eq!(
        crate::support::strs(&accounts.body["items"], "billing_account"),
        [ACCOUNT],
        "{}",
        accounts.body
    );
    Ok(())
}

in_both_modes!(
    throttling_is_retried_and_a_denied_region_deletes_nothing,
    credentials_are_verified_and_endpoints_allowlisted,
    cost_explorer_costs_are_imported_exactly_and_replaced,
);
