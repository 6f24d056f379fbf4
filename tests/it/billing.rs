//! Billing: FOCUS imports and demo costs through billing jobs, summed exactly per currency,
//! per provider, billing account and project; re-runs replace instead of adding.
//!
//! The figures are those published with the FOCUS sample (`tests/data/focus/README.md`).

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::{Mode, TestEnv};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/focus/focus_sample_subset.csv"
);

/// The window of the sample, whose rows are all charged in September 2024.
fn september() -> Value {
    json!({"start_month": "2024-09", "end_month": "2024-09"})
}

/// Creates a project and a `focus` service account in it; returns (project id, account id).
async fn focus_account(
    env: &TestEnv,
    name: &str,
    billing_account: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let project = env
        .create("/v1/projects", json!({"name": format!("p-{name}")}))
        .await?;
    let credentials = match billing_account {
        Some(a) => json!({"billing_account_id": a}),
        None => json!({}),
    };
    let sa = env
        .create(
            "/v1/service-accounts",
            json!({"name": name, "provider": "focus", "project_id": project["id"], "credentials": credentials}),
        )
        .await?;
    Ok((id(&project)?, id(&sa)?))
}

fn id(v: &Value) -> anyhow::Result<String> {
    Ok(v["id"].as_str().context("id")?.to_owned())
}

async fn focus_collector(env: &TestEnv, path: &str) -> anyhow::Result<String> {
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "focus", "plugin_id": "focus", "options": {"path": path}}),
        )
        .await?;
    id(&c)
}

/// Runs a billing job for `window` and waits for it.
async fn bill(env: &TestEnv, collector: &str, window: Value) -> anyhow::Result<Value> {
    let a = env
        .post(&format!("/v1/collectors/{collector}/collect"), window)
        .await?;
    anyhow::ensure!(a.status == StatusCode::ACCEPTED, "collect: {a:?}");
    env.wait_job(a.body["job_id"].as_str().context("job_id")?)
        .await
}

async fn summary(env: &TestEnv, query: &str) -> anyhow::Result<Vec<Value>> {
    let a = env.get(&format!("/v1/costs/summary?{query}")).await?;
    anyhow::ensure!(a.status == StatusCode::OK, "summary {query}: {a:?}");
    Ok(a.body["items"].as_array().context("items")?.clone())
}

/// `{key value: billed_cost}` of a summary grouped by one key.
fn billed_by(items: &[Value], key: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                i[key].as_str().unwrap_or("null").to_owned(),
                i["billed_cost"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn a_focus_import_matches_the_published_totals_and_a_rerun_replaces_it(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    focus_account(&env, "all", None).await?;
    let collector = focus_collector(&env, SAMPLE).await?;
    let job = bill(&env, &collector, september()).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["kind"], "billing");
    assert_eq!(job["window"], json!({"start": "2024-09", "end": "2024-09"}));
    assert_eq!(job["counts"]["created"], 250, "{job}");

    let month = "start=2024-09-01&end=2024-10-01";
    let total = summary(&env, month).await?;
    assert_eq!(total.len(), 1, "{total:?}");
    assert_eq!(total[0]["currency"], "USD");
    assert_eq!(total[0]["billed_cost"], "3.71561541189");
    assert_eq!(total[0]["effective_cost"], "1.80063469386");
    // A range that is not whole months reads the daily rollup: the same sums.
    assert_eq!(
        summary(&env, "start=2024-08-20&end=2024-10-03").await?,
        total
    );
    let by_provider = summary(&env, &format!("{month}&group_by=provider")).await?;
    assert_eq!(
        billed_by(&by_provider, "provider"),
        [
            ("AWS".to_owned(), "1.37790679330".to_owned()),
            ("Microsoft".to_owned(), "1.80063469386".to_owned()),
            ("Oracle".to_owned(), "0.53707392473".to_owned()),
        ]
    );
    let microsoft = by_provider
        .iter()
        .find(|i| i["provider"] == "Microsoft")
        .context("Microsoft")?;
    assert_eq!(microsoft["effective_cost"], "1.80063469386");
    let by_account = summary(&env, &format!("{month}&group_by=billing_account")).await?;
    assert_eq!(
        billed_by(&by_account, "billing_account"),
        [
            (
                "/providers/Microsoft.Billing/billingAccounts/8611537".to_owned(),
                "1.80063469386".to_owned()
            ),
            ("1234567890123".to_owned(), "1.37790679330".to_owned()),
            ("20209880".to_owned(), "0.53707392473".to_owned()),
        ]
    );
    let by_month = summary(&env, &format!("{month}&group_by=month,provider")).await?;
    assert!(
        by_month.iter().all(|i| i["month"] == "2024-09"),
        "{by_month:?}"
    );
    assert_eq!(by_month.len(), 3);

    // Again: the month is replaced, not added to.
    let again = bill(&env, &collector, september()).await?;
    assert_eq!(again["status"], "SUCCESS", "{again}");
    assert_eq!(again["counts"]["created"], 250);
    assert_eq!(
        again["counts"]["deleted"], 250,
        "the previous rows were replaced"
    );
    assert_eq!(summary(&env, month).await?, total);
    assert_eq!(env.scalar("SELECT count(*) FROM costs").await?, 250);
    assert_eq!(
        env.scalar("SELECT count(*) FROM cost_staging").await?,
        0,
        "nothing staged is left behind"
    );

    // The rows themselves, paged.
    let page = env
        .get("/v1/costs?start=2024-09-01&end=2024-10-01&provider=Oracle&limit=5")
        .await?;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(5));
    let cursor = page.body["next_cursor"].as_str().context("next_cursor")?;
    let rest = env
        .get(&format!(
            "/v1/costs?start=2024-09-01&end=2024-10-01&provider=Oracle&cursor={cursor}"
        ))
        .await?;
    assert_eq!(rest.body["items"].as_array().map(Vec::len), Some(2));
    assert!(rest.body["next_cursor"].is_null());
    Ok(())
}

async fn two_billing_accounts_in_two_projects_add_up_to_the_domain_total(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (aws_project, aws) = focus_account(&env, "aws", Some("1234567890123")).await?;
    let (oracle_project, _) = focus_account(&env, "oracle", Some("20209880")).await?;
    let collector = focus_collector(&env, SAMPLE).await?;
    let job = bill(&env, &collector, september()).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(
        job["tasks_total"], 2,
        "one task per billing account and month"
    );
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().context("id")?
        ))
        .await?;
    let months: Vec<&str> = tasks.body["items"]
        .as_array()
        .context("tasks")?
        .iter()
        .filter_map(|t| t["month"].as_str())
        .collect();
    assert_eq!(months, ["2024-09", "2024-09"]);

    let month = "start=2024-09-01&end=2024-10-01";
    let domain = summary(&env, month).await?;
    assert_eq!(
        domain[0]["billed_cost"], "1.91498071803",
        "1.37790679330 + 0.53707392473"
    );
    let by_project = summary(&env, &format!("{month}&group_by=project")).await?;
    let mut want = vec![
        (aws_project.clone(), "1.37790679330".to_owned()),
        (oracle_project.clone(), "0.53707392473".to_owned()),
    ];
    want.sort();
    assert_eq!(billed_by(&by_project, "project"), want);
    let only_aws = summary(&env, &format!("{month}&project_id={aws_project}")).await?;
    assert_eq!(only_aws[0]["billed_cost"], "1.37790679330");
    let by_account = summary(&env, &format!("{month}&group_by=service_account")).await?;
    assert!(
        by_account
            .iter()
            .any(|i| i["service_account"] == aws.as_str())
    );

    let dash = env.get("/v1/dashboards/billing?month=2024-09").await?;
    assert_eq!(dash.status, StatusCode::OK, "{dash:?}");
    assert_eq!(dash.body["this_month"][0]["billed_cost"], "1.91498071803");
    assert_eq!(dash.body["last_month"], json!([]));
    let names: Vec<&str> = dash.body["by_project"]
        .as_array()
        .context("by_project")?
        .iter()
        .filter_map(|p| p["project_name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{}", dash.body);
    assert!(
        !dash.body["top_services"]
            .as_array()
            .context("top")?
            .is_empty()
    );
    assert!(
        dash.body["month_to_date_trend"]
            .as_array()
            .context("trend")?
            .iter()
            .all(|d| d["day"].as_str().is_some_and(|d| d.starts_with("2024-09-")))
    );
    let project = env
        .get(&format!(
            "/v1/projects/{oracle_project}/billing?month=2024-09"
        ))
        .await?;
    assert_eq!(project.status, StatusCode::OK, "{project:?}");
    assert_eq!(
        project.body["this_month"][0]["billed_cost"],
        "0.53707392473"
    );
    assert_eq!(project.body["by_provider"][0]["provider"], "Oracle");
    Ok(())
}

async fn broken_rows_are_reported_and_the_rest_imported(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    focus_account(&env, "all", None).await?;
    let sample = std::fs::read_to_string(SAMPLE)?;
    let mut lines: Vec<String> = sample.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replacen("0.00000041370", "NaN-ish", 1);
    lines[9] = "\"only\",\"three\",\"fields\"".into();
    let dir = std::env::temp_dir().join(format!("gleaner-it-{}", env.name));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("export.csv"), lines.join("\n") + "\n")?;
    let collector = focus_collector(&env, dir.to_str().context("path")?).await?;
    let job = bill(&env, &collector, september()).await;
    std::fs::remove_dir_all(&dir).ok();
    let job = job?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 248);
    assert_eq!(job["counts"]["failed"], 2);
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().context("id")?
        ))
        .await?;
    let error = tasks.body["items"][0]["error"].as_str().context("error")?;
    assert!(error.contains("export.csv line 3: BilledCost"), "{error}");
    assert!(
        error.contains("export.csv line 10: has 3 fields"),
        "{error}"
    );
    assert_eq!(env.scalar("SELECT count(*) FROM costs").await?, 248);
    Ok(())
}

async fn demo_costs_have_their_documented_totals_per_month(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let project = env.create("/v1/projects", json!({"name": "demo"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "demo-1", "provider": "demo", "project_id": project["id"], "credentials": {}}),
    )
    .await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "costs", "plugin_id": "demo-billing", "options": {"services": 4, "regions": 2, "unit_cost": "1.25"}}),
        )
        .await?;
    let job = bill(
        &env,
        &id(&c)?,
        json!({"start_month": "2024-08", "end_month": "2024-09"}),
    )
    .await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["tasks_total"], 2);
    let by_month = summary(&env, "start=2024-08-01&end=2024-10-01&group_by=month").await?;
    // 1.25 × days × (1+2+3+4) × (1+2): 31 days of August, 30 of September.
    assert_eq!(
        billed_by(&by_month, "month"),
        [
            ("2024-08".to_owned(), "1162.50".to_owned()),
            ("2024-09".to_owned(), "1125.00".to_owned()),
        ]
    );
    assert_eq!(by_month[1]["effective_cost"], "1012.500");
    Ok(())
}

async fn a_private_cost_plugin_bills_in_its_own_currency(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let plugin = env
        .create(
            "/v1/plugins",
            json!({"id": "hb-costs", "version": "1.0.0", "command": format!("{}/tests/plugins/costs.sh", env!("CARGO_MANIFEST_DIR"))}),
        )
        .await?;
    assert_eq!(plugin["kind"], "cost_data_source");
    let project = env.create("/v1/projects", json!({"name": "hb"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "hb", "provider": "hyperbilling", "project_id": project["id"],
               "credentials": {"account": "acme", "email": "ops@acme.test", "key": "k-1"}}),
    )
    .await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "hb", "plugin_id": "hb-costs"}),
        )
        .await?;
    // And the FOCUS sample beside it, in USD: totals stay per currency.
    focus_account(&env, "focus", None).await?;
    let focus = focus_collector(&env, SAMPLE).await?;
    for collector in [id(&c)?, focus] {
        let job = bill(&env, &collector, september()).await?;
        assert_eq!(job["status"], "SUCCESS", "{job}");
    }
    let totals = summary(&env, "start=2024-09-01&end=2024-10-01").await?;
    let per_currency: Vec<(&str, &str, &str)> = totals
        .iter()
        .filter_map(|t| {
            Some((
                t["currency"].as_str()?,
                t["billed_cost"].as_str()?,
                t["effective_cost"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        per_currency,
        [
            ("KRW", "2000.20", "1800.18"),
            ("USD", "3.71561541189", "1.80063469386")
        ]
    );
    let krw = summary(
        &env,
        "start=2024-09-01&end=2024-10-01&currency=krw&group_by=billing_account,service",
    )
    .await?;
    assert_eq!(krw.len(), 1, "{krw:?}");
    assert_eq!(krw[0]["billing_account"], "acme");
    assert_eq!(krw[0]["service"], "Amazon EC2");
    Ok(())
}

async fn a_collector_replaces_only_its_rows_and_a_failed_sync_keeps_them(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    focus_account(&env, "all", None).await?;
    let dir = std::env::temp_dir().join(format!("gleaner-it-{}", env.name));
    std::fs::create_dir_all(&dir)?;
    let sample = std::fs::read_to_string(SAMPLE)?;
    let oracle: Vec<&str> = sample
        .lines()
        .enumerate()
        .filter(|(n, l)| *n == 0 || l.contains("\"Oracle\""))
        .map(|(_, l)| l)
        .collect();
    let oracle_file = dir.join("oracle.csv");
    std::fs::write(&oracle_file, oracle.join("\n") + "\n")?;
    let all = focus_collector(&env, SAMPLE).await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "oracle", "plugin_id": "focus", "options": {"path": oracle_file}}),
        )
        .await?;
    let only_oracle = id(&c)?;
    let result = async {
        for collector in [&all, &only_oracle, &all] {
            let job = bill(&env, collector, september()).await?;
            anyhow::ensure!(job["status"] == "SUCCESS", "{job}");
        }
        // Two collectors over one account add up; re-running one replaced its rows only.
        let month = "start=2024-09-01&end=2024-10-01";
        let total = summary(&env, month).await?;
        anyhow::ensure!(
            total[0]["billed_cost"] == "4.25268933662",
            "3.71561541189 + 0.53707392473: {total:?}"
        );
        // The export lost the month: no records do not wipe it.
        std::fs::write(&oracle_file, format!("{}\n", oracle[0]))?;
        let job = bill(&env, &only_oracle, september()).await?;
        anyhow::ensure!(job["status"] == "FAILURE", "{job}");
        let tasks = env
            .get(&format!(
                "/v1/jobs/{}/tasks",
                job["id"].as_str().unwrap_or_default()
            ))
            .await?;
        let error = tasks.body["items"][0]["error"].as_str().unwrap_or_default();
        anyhow::ensure!(
            error.contains("the 7 records stored before were kept"),
            "{error}"
        );
        anyhow::ensure!(
            summary(&env, month).await? == total,
            "an empty sync changed the totals"
        );
        // The export is gone: the sync fails and the month stays as it was.
        std::fs::remove_file(&oracle_file)?;
        let job = bill(&env, &only_oracle, september()).await?;
        anyhow::ensure!(job["status"] == "FAILURE", "{job}");
        anyhow::ensure!(
            summary(&env, month).await? == total,
            "a failed sync changed the totals"
        );
        Ok(())
    }
    .await;
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// A moto S3 server on a free local port, stopped when dropped.
struct Moto {
    url: String,
    _child: tokio::process::Child,
}

impl Moto {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting moto (scripts/test.sh installs it: pip install 'moto[server]')")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{url}/moto-api/")).send().await.is_ok() {
                return Ok(Self { url, _child: child });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::bail!("moto did not answer on {url} within 10 s (is `moto[server]` installed?)")
    }

    /// Creates `bucket` and puts `body` at `key` (moto takes unsigned requests).
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        http.put(format!("{}/{bucket}", self.url))
            .send()
            .await?
            .error_for_status()?;
        http.put(format!("{}/{bucket}/{key}", self.url))
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

async fn a_focus_export_in_a_bucket_is_imported(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let moto = Moto::start().await?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &std::fs::read(SAMPLE)?)?;
    moto.put("billing", "exports/2024-09/focus.csv.gz", gz.finish()?)
        .await?;
    moto.put("billing", "exports/README.txt", b"not an export".to_vec())
        .await?;
    let project = env.create("/v1/projects", json!({"name": "s3"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "s3", "provider": "focus", "project_id": project["id"],
               "credentials": {"aws_access_key_id": "test", "aws_secret_access_key": "test-secret"}}),
    )
    .await?;
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "s3", "plugin_id": "focus",
                   "options": {"bucket": "billing", "prefix": "exports/", "endpoint_url": moto.url}}),
        )
        .await?;
    let job = bill(&env, &id(&c)?, september()).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 250);
    let total = summary(&env, "start=2024-09-01&end=2024-10-01").await?;
    assert_eq!(total[0]["billed_cost"], "3.71561541189");
    // A bucket that does not exist fails the task, saying so.
    env.patch(
        &format!("/v1/collectors/{}", id(&c)?),
        json!({"options": {"bucket": "nope", "endpoint_url": moto.url}}),
    )
    .await?;
    let job = bill(&env, &id(&c)?, september()).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().unwrap_or_default()
        ))
        .await?;
    let task = &tasks.body["items"][0];
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|e| e.contains("NoSuchBucket")),
        "{task}"
    );
    assert_eq!(
        task["attempt"], 1,
        "a missing bucket is not retried: {task}"
    );
    assert_eq!(
        summary(&env, "start=2024-09-01&end=2024-10-01").await?,
        total
    );
    Ok(())
}

async fn billing_input_is_checked(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let inventory = env.demo_collector(1, json!({"resources": 1})).await?;
    let a = env
        .post(&format!("/v1/collectors/{inventory}/collect"), september())
        .await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert_eq!(a.body["errors"][0]["field"], "start_month");
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "costs", "plugin_id": "demo-billing"}),
        )
        .await?;
    // Billing collectors sync daily by default.
    assert!(c["next_scheduled_at"].is_string(), "{c}");
    let schedules = env
        .get(&format!("/v1/collectors/{}/schedules", id(&c)?))
        .await?;
    let daily = &schedules.body["items"][0];
    assert_eq!(
        (
            &daily["name"],
            &daily["timezone"],
            &daily["hours"],
            &daily["state"]
        ),
        (
            &json!("daily"),
            &json!("UTC"),
            &json!([0]),
            &json!("ENABLED")
        ),
        "{}",
        schedules.body
    );
    for (body, field) in [
        (json!({"start_month": "2024-13"}), "start_month"),
        (
            json!({"start_month": "2024-09", "end_month": "2024-08"}),
            "end_month",
        ),
        (json!({"end_month": "2024-08"}), "start_month"),
        (
            json!({"start_month": "2000-01", "end_month": "2024-08"}),
            "end_month",
        ),
        (json!({"start_month": "2999-01"}), "start_month"),
        (json!({"start_month": "2000-01"}), "start_month"),
    ] {
        let a = env
            .post(&format!("/v1/collectors/{}/collect", id(&c)?), body.clone())
            .await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {a:?}");
        assert_eq!(a.body["errors"][0]["field"], field, "{body}: {a:?}");
    }
    let bad = env.get("/v1/costs/summary?group_by=month,colour").await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["errors"][0]["field"], "group_by");
    for (query, field) in [
        ("groupby=month", "groupby"),
        ("project_id=nope", "project_id"),
    ] {
        let a = env.get(&format!("/v1/costs/summary?{query}")).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {a:?}");
        assert_eq!(a.body["errors"][0]["field"], field, "{query}: {a:?}");
    }
    let reversed = env
        .get("/v1/costs/summary?start=2024-10-01&end=2024-09-01")
        .await?;
    assert_eq!(reversed.status, StatusCode::BAD_REQUEST, "{reversed:?}");
    let plugins = env.get("/v1/plugins").await?;
    let kinds: Vec<(&str, &str)> = plugins.body["items"]
        .as_array()
        .context("plugins")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["kind"].as_str()?)))
        .collect();
    assert!(kinds.contains(&("focus", "cost_data_source")), "{kinds:?}");
    assert!(
        kinds.contains(&("demo-billing", "cost_data_source")),
        "{kinds:?}"
    );
    Ok(())
}

in_both_modes!(
    a_focus_import_matches_the_published_totals_and_a_rerun_replaces_it,
    two_billing_accounts_in_two_projects_add_up_to_the_domain_total,
    broken_rows_are_reported_and_the_rest_imported,
    demo_costs_have_their_documented_totals_per_month,
    a_private_cost_plugin_bills_in_its_own_currency,
    a_collector_replaces_only_its_rows_and_a_failed_sync_keeps_them,
    a_focus_export_in_a_bucket_is_imported,
    billing_input_is_checked,
);
