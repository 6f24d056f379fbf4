//! Billing: FOCUS imports and demo costs through billing jobs, summed exactly per currency,
//! per provider, billing account and project; re-runs replace instead of adding.
//!
//! The figures are those published with the FOCUS sample (`tests/data/focus/README.md`).

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::Datelike as _;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::aws::Moto;
use crate::support::{Mode, TestEnv};

pub(crate) const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/focus/focus_sample_subset.csv"
);

/// The window of the sample, whose rows are all charged in September 2024.
pub(crate) fn september() -> Value {
    json!({"start_month": "2024-09", "end_month": "2024-09"})
}

/// Creates a project and a `focus` service account in it; returns (project id, account id).
pub(crate) async fn focus_account(
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

pub(crate) async fn focus_collector(env: &TestEnv, path: &str) -> anyhow::Result<String> {
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "focus", "plugin_id": "focus", "options": {"path": path}}),
        )
        .await?;
    id(&c)
}

/// Runs a billing job for `window` and waits for it.
pub(crate) async fn bill(env: &TestEnv, collector: &str, window: Value) -> anyhow::Result<Value> {
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
    Ok(())
}

/// Billed and effective cost.
type Sums = (Decimal, Decimal);

/// `{key: value, currency, billed_cost, effective_cost}` for each ((value, currency), sums).
fn items(key: &str, sums: impl IntoIterator<Item = ((String, String), Sums)>) -> Value {
    sums.into_iter()
        .map(|((value, currency), (billed, effective))| {
            json!({key: value, "currency": currency,
                   "billed_cost": billed.to_string(), "effective_cost": effective.to_string()})
        })
        .collect()
}

/// The costs a dashboard's month must show, summed here from the records the test expects.
#[derive(Default)]
struct Costs {
    per_currency: BTreeMap<String, Sums>,
    per_day: BTreeMap<(String, String), Sums>,
    per_service: BTreeMap<(String, String), Sums>,
}

impl Costs {
    fn add(&mut self, day: &str, service: &str, currency: &str, (billed, effective): Sums) {
        for sums in [
            self.per_currency.entry(currency.to_owned()).or_default(),
            self.per_day
                .entry((day.to_owned(), currency.to_owned()))
                .or_default(),
            self.per_service
                .entry((service.to_owned(), currency.to_owned()))
                .or_default(),
        ] {
            sums.0 += billed;
            sums.1 += effective;
        }
    }

    /// `this_month` or `last_month`: a total per currency, in currency order.
    fn totals(&self) -> Value {
        self.per_currency
            .iter()
            .map(|(currency, (billed, effective))| {
                json!({"currency": currency,
                       "billed_cost": billed.to_string(), "effective_cost": effective.to_string()})
            })
            .collect()
    }

    /// `month_to_date_trend`: each day with records, oldest first, then per currency.
    fn trend(&self) -> Value {
        items("day", self.per_day.clone())
    }

    /// `top_services`: per currency (in order), the 10 services that cost the most, most
    /// expensive first (no two of the services ranked here cost the same, so their order is
    /// defined).
    fn top_services(&self) -> Value {
        let mut ranked: Vec<_> = self.per_service.clone().into_iter().collect();
        ranked.sort_by(|((_, a_currency), a), ((_, b_currency), b)| {
            a_currency.cmp(b_currency).then(b.0.cmp(&a.0))
        });
        let mut per_currency: BTreeMap<String, usize> = BTreeMap::new();
        ranked.retain(|((_, currency), _)| {
            let n = per_currency.entry(currency.clone()).or_default();
            *n += 1;
            *n <= 10
        });
        items("service", ranked)
    }

    /// With the FOCUS sample's records of the billing accounts `accounts`, read here with the
    /// csv crate rather than through the importer.
    fn with_sample(mut self, accounts: &[&str]) -> anyhow::Result<Self> {
        let mut reader = csv::Reader::from_path(SAMPLE)?;
        let headers = reader.headers()?.clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no column {name}"))
        };
        let account = column("BillingAccountId")?;
        let start = column("ChargePeriodStart")?;
        let service = column("ServiceName")?;
        let currency = column("BillingCurrency")?;
        let billed = column("BilledCost")?;
        let effective = column("EffectiveCost")?;
        for row in reader.records() {
            let row = row?;
            if !accounts.contains(&&row[account]) {
                continue;
            }
            // `YYYY-MM-DD HH:MM:SS` in UTC: the day is its first ten characters.
            let day = row[start].get(..10).context("ChargePeriodStart")?;
            let sums = (row[billed].parse()?, row[effective].parse()?);
            self.add(day, &row[service], &row[currency], sums);
        }
        Ok(self)
    }

    /// With the demo's records of a past month as docs/billing.md defines them: every day, one
    /// per service `s` and region `r`, of `unit_cost × s × r`, 90% of it effective (with
    /// [`demo_options`]).
    fn with_demo(mut self, year: i32, month: u32) -> anyhow::Result<Self> {
        let unit: Decimal = "0.75".parse()?;
        let first = chrono::NaiveDate::from_ymd_opt(year, month, 1).context("a month")?;
        for day in first.iter_days().take_while(|d| d.month() == month) {
            for s in 1..=3_u32 {
                for r in 1..=2_u32 {
                    let billed = unit * Decimal::from(s) * Decimal::from(r);
                    let effective = billed * Decimal::new(9, 1);
                    let service = format!("Demo Service {s}");
                    self.add(&day.to_string(), &service, "EUR", (billed, effective));
                }
            }
        }
        Ok(self)
    }
}

/// The demo source beside the sample: three services over two regions, in euros, so that its
/// services cost different amounts and are never added to the sample's dollars.
fn demo_options() -> Value {
    json!({"services": 3, "regions": 2, "unit_cost": "0.75", "currency": "EUR"})
}

/// A dashboard's list with its items in the order of their `key` (for lists whose order is
/// not specified).
fn sorted_by(list: &Value, key: &str) -> Value {
    let mut items = list.as_array().cloned().unwrap_or_default();
    items.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
    Value::Array(items)
}

async fn billing_dashboards_show_each_day_and_the_top_services_exactly(
    mode: Mode,
) -> anyhow::Result<()> {
    const AWS: &str = "1234567890123";
    const MICROSOFT: &str = "/providers/Microsoft.Billing/billingAccounts/8611537";
    const ORACLE: &str = "20209880";
    let env = TestEnv::start(mode).await?;
    // The FOCUS sample, charged in September 2024, through three accounts: AWS and Microsoft
    // in one project, Oracle in another; and demo costs in euros for August and September 2024
    // in a third. Past months: what a dashboard shows does not depend on the day it runs.
    let (clouds, _) = focus_account(&env, "aws", Some(AWS)).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "microsoft", "provider": "focus", "project_id": clouds,
               "credentials": {"billing_account_id": MICROSOFT}}),
    )
    .await?;
    let (oracle, oracle_account) = focus_account(&env, "oracle", Some(ORACLE)).await?;
    let demo = env
        .create("/v1/projects", json!({"name": "p-demo"}))
        .await?;
    let demo = id(&demo)?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "demo", "provider": "demo", "project_id": demo, "credentials": {}}),
    )
    .await?;
    let focus = focus_collector(&env, SAMPLE).await?;
    let demo_collector = env
        .create(
            "/v1/collectors",
            json!({"name": "demo-costs", "plugin_id": "demo-billing", "options": demo_options()}),
        )
        .await?;
    for (collector, window) in [
        (focus, september()),
        (
            id(&demo_collector)?,
            json!({"start_month": "2024-08", "end_month": "2024-09"}),
        ),
    ] {
        let job = bill(&env, &collector, window).await?;
        assert_eq!(job["status"], "SUCCESS", "{job}");
    }

    // What the dashboards must show, summed here from the sample and the demo's formula; first
    // checked against the totals the sample's README publishes and the formula's closed form.
    let august = Costs::default().with_demo(2024, 8)?;
    let september = Costs::default()
        .with_sample(&[AWS, MICROSOFT, ORACLE])?
        .with_demo(2024, 9)?;
    assert_eq!(
        september.totals(),
        json!([
            {"currency": "EUR", "billed_cost": "405.00", "effective_cost": "364.500"},
            {"currency": "USD", "billed_cost": "3.71561541189", "effective_cost": "1.80063469386"},
        ]),
        "EUR: 0.75 × 30 days × (1+2+3) × (1+2)"
    );
    assert_eq!(
        september.per_day.len(),
        60,
        "every day of September has costs in both currencies"
    );
    // Per currency, the most expensive first: the demo's services (0.75 × s × (1+2) × 30
    // days), then the sample's top ten as its README lists them.
    let top = json!([
        {"service": "Demo Service 3", "currency": "EUR", "billed_cost": "202.50", "effective_cost": "182.250"},
        {"service": "Demo Service 2", "currency": "EUR", "billed_cost": "135.00", "effective_cost": "121.500"},
        {"service": "Demo Service 1", "currency": "EUR", "billed_cost": "67.50", "effective_cost": "60.750"},
        {"service": "Azure Kubernetes Service", "currency": "USD", "billed_cost": "1.58088000000", "effective_cost": "1.58088000000"},
        {"service": "Amazon Elastic Compute Cloud", "currency": "USD", "billed_cost": "0.85464266730", "effective_cost": "0.00000000000"},
        {"service": "COMPUTE", "currency": "USD", "billed_cost": "0.53600000000", "effective_cost": "0.00000000000"},
        {"service": "Azure DB for MySQL", "currency": "USD", "billed_cost": "0.37096774194", "effective_cost": "0.37096774194"},
        {"service": "Amazon Relational Database Service", "currency": "USD", "billed_cost": "0.20000002550", "effective_cost": "0.00000000000"},
        {"service": "AmazonCloudWatch", "currency": "USD", "billed_cost": "0.18410868130", "effective_cost": "0.00000000000"},
        {"service": "Elastic Load Balancing", "currency": "USD", "billed_cost": "0.08605916140", "effective_cost": "0.00000000000"},
        {"service": "Amazon Virtual Private Cloud", "currency": "USD", "billed_cost": "0.03908472280", "effective_cost": "0.00000000000"},
        {"service": "Amazon Elastic Container Service", "currency": "USD", "billed_cost": "0.01049345170", "effective_cost": "0.00000000000"},
        {"service": "Amazon DynamoDB", "currency": "USD", "billed_cost": "0.00343125000", "effective_cost": "0.00000000000"},
    ]);
    assert_eq!(september.top_services(), top);

    // The domain's dashboard of September.
    let dash = env.get("/v1/dashboards/billing?month=2024-09").await?;
    assert_eq!(dash.status, StatusCode::OK, "{dash:?}");
    let body = &dash.body;
    let mut keys: Vec<&String> = body.as_object().context("a dashboard")?.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "by_project",
            "by_provider",
            "last_month",
            "month",
            "month_to_date_trend",
            "this_month",
            "top_services"
        ]
    );
    assert_eq!(body["month"], "2024-09");
    assert_eq!(body["this_month"], september.totals());
    assert_eq!(body["last_month"], august.totals());
    assert_eq!(body["month_to_date_trend"], september.trend());
    assert_eq!(body["top_services"], top);
    assert_eq!(
        sorted_by(&body["by_provider"], "provider"),
        json!([
            {"provider": "AWS", "currency": "USD", "billed_cost": "1.37790679330", "effective_cost": "0.00000000000"},
            {"provider": "Microsoft", "currency": "USD", "billed_cost": "1.80063469386", "effective_cost": "1.80063469386"},
            {"provider": "Oracle", "currency": "USD", "billed_cost": "0.53707392473", "effective_cost": "0.00000000000"},
            {"provider": "demo", "currency": "EUR", "billed_cost": "405.00", "effective_cost": "364.500"},
        ])
    );
    assert_eq!(
        sorted_by(&body["by_project"], "project_name"),
        json!([
            {"project": clouds, "project_name": "p-aws", "currency": "USD",
             "billed_cost": "3.17854148716", "effective_cost": "1.80063469386"},
            {"project": demo, "project_name": "p-demo", "currency": "EUR",
             "billed_cost": "405.00", "effective_cost": "364.500"},
            {"project": oracle, "project_name": "p-oracle", "currency": "USD",
             "billed_cost": "0.53707392473", "effective_cost": "0.00000000000"},
        ]),
        "AWS 1.37790679330 + Microsoft 1.80063469386 in p-aws"
    );

    // The month after: September is its last month, and nothing is charged in it.
    let october = env.get("/v1/dashboards/billing?month=2024-10").await?;
    assert_eq!(october.status, StatusCode::OK, "{october:?}");
    assert_eq!(october.body["this_month"], json!([]));
    assert_eq!(october.body["last_month"], september.totals());
    assert_eq!(october.body["month_to_date_trend"], json!([]));
    assert_eq!(october.body["top_services"], json!([]));

    // A project's dashboard counts its own accounts only: Oracle's costs fall on six days.
    let oracle_costs = Costs::default().with_sample(&[ORACLE])?;
    assert_eq!(oracle_costs.per_day.len(), 6);
    let project = env
        .get(&format!("/v1/projects/{oracle}/billing?month=2024-09"))
        .await?;
    assert_eq!(project.status, StatusCode::OK, "{project:?}");
    let oracle_total = json!({"currency": "USD", "billed_cost": "0.53707392473", "effective_cost": "0.00000000000"});
    let with = |key: &str, value: &str| {
        let mut item = oracle_total.clone();
        item[key] = json!(value);
        item
    };
    assert_eq!(
        project.body,
        json!({
            "month": "2024-09",
            "this_month": [oracle_total.clone()],
            "last_month": [],
            "month_to_date_trend": oracle_costs.trend(),
            "by_provider": [with("provider", "Oracle")],
            "by_service_account": [with("service_account", &oracle_account)],
            "top_services": oracle_costs.top_services(),
        })
    );
    assert_eq!(
        crate::support::strs(&project.body["top_services"], "service"),
        ["COMPUTE", "BLOCK_STORAGE", "NETWORK"]
    );
    // And its last month.
    let demo_project = env
        .get(&format!("/v1/projects/{demo}/billing?month=2024-09"))
        .await?;
    assert_eq!(demo_project.status, StatusCode::OK, "{demo_project:?}");
    assert_eq!(demo_project.body["last_month"], august.totals());
    assert_eq!(
        demo_project.body["this_month"],
        json!([{"currency": "EUR", "billed_cost": "405.00", "effective_cost": "364.500"}])
    );
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
    // The endpoint's status, never its answer's body (S3's XML naming NoSuchBucket).
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|e| e.contains("404 Not Found") && !e.contains("NoSuchBucket")),
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
    // A cursor that no page gave is bad input, not a missing object.
    for cursor in ["", "x"] {
        let a = env.get(&format!("/v1/costs?cursor={cursor}")).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{cursor}: {a:?}");
        assert_eq!(a.body["errors"][0]["field"], "cursor", "{a:?}");
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
    billing_dashboards_show_each_day_and_the_top_services_exactly,
    broken_rows_are_reported_and_the_rest_imported,
    demo_costs_have_their_documented_totals_per_month,
    a_private_cost_plugin_bills_in_its_own_currency,
    a_collector_replaces_only_its_rows_and_a_failed_sync_keeps_them,
    a_focus_export_in_a_bucket_is_imported,
    billing_input_is_checked,
);

/// The leaf of `costs` that holds the sample's month, as the registry names it.
async fn month_table(env: &TestEnv) -> anyhow::Result<String> {
    let rows = env
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT table_name FROM cost_partitions",
        ))
        .await?;
    anyhow::ensure!(rows.len() == 1, "one registered month: {} rows", rows.len());
    Ok(rows[0].try_get_by_index(0)?)
}

/// The tables of costs in the test's schema that no partition tree holds: a load's table
/// left behind.
const LOOSE_COST_TABLES: &str = "SELECT count(*) FROM pg_class c
     WHERE c.relnamespace = current_schema()::regnamespace AND c.relname LIKE 'costs\\_%'
       AND c.relkind = 'r' AND NOT c.relispartition";

/// PostgreSQL replaces a month by swapping tables (migration 23): the old leaf is dropped,
/// the new one is attached under the month and the collector, nothing is left loose, and a
/// failed sync leaves the stored table in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_is_replaced_by_swapping_its_table() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    focus_account(&env, "all", None).await?;
    let dir = std::env::temp_dir().join(format!("gleaner-it-{}", env.name));
    std::fs::create_dir_all(&dir)?;
    let export = dir.join("focus.csv");
    std::fs::copy(SAMPLE, &export)?;
    let collector = focus_collector(&env, export.to_str().context("path")?).await?;
    let result = async {
        let job = bill(&env, &collector, september()).await?;
        anyhow::ensure!(job["status"] == "SUCCESS", "{job}");
        let first = month_table(&env).await?;
        let tree = env
            .scalar(&format!(
                "SELECT count(*) FROM pg_partition_ancestors('{first}')"
            ))
            .await?;
        anyhow::ensure!(
            tree == 4,
            "the leaf, the collector, the month and costs: {tree}"
        );
        anyhow::ensure!(
            env.scalar("SELECT rows FROM cost_partitions").await? == 250,
            "the registry counts the month's rows"
        );

        let again = bill(&env, &collector, september()).await?;
        anyhow::ensure!(again["counts"]["deleted"] == 250, "{again}");
        let second = month_table(&env).await?;
        anyhow::ensure!(second != first, "a new table holds the month");
        anyhow::ensure!(
            env.scalar(&format!(
                "SELECT count(*) FROM pg_class WHERE relname = '{first}'"
            ))
            .await?
                == 0,
            "the replaced table is dropped"
        );
        anyhow::ensure!(env.scalar("SELECT count(*) FROM costs").await? == 250);
        anyhow::ensure!(
            env.scalar(&format!("SELECT count(*) FROM {second}"))
                .await?
                == 250,
            "the month's rows are all in its leaf"
        );
        anyhow::ensure!(env.scalar(LOOSE_COST_TABLES).await? == 0);

        // The export is gone: the load rolls back with its table, and the month stays.
        std::fs::remove_file(&export)?;
        let failed = bill(&env, &collector, september()).await?;
        anyhow::ensure!(failed["status"] == "FAILURE", "{failed}");
        anyhow::ensure!(month_table(&env).await? == second);
        anyhow::ensure!(env.scalar("SELECT count(*) FROM costs").await? == 250);
        anyhow::ensure!(env.scalar(LOOSE_COST_TABLES).await? == 0);
        Ok(())
    }
    .await;
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// A reader of the month holds the swap back: the swap's lock waits a second at a time, lets
/// the reader go on, and the load commits in the same attempt once the reader is done. The
/// reader sees the old month throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_waits_for_a_reader_of_the_month_without_failing_the_load() -> anyhow::Result<()> {
    use sea_orm::TransactionTrait as _;
    let env = TestEnv::start(Mode::Distributed).await?;
    focus_account(&env, "all", None).await?;
    let collector = focus_collector(&env, SAMPLE).await?;
    let job = bill(&env, &collector, september()).await?;
    anyhow::ensure!(job["status"] == "SUCCESS", "{job}");
    let old_ids = env
        .scalar("SELECT CAST(sum(id) AS bigint) FROM costs")
        .await?;

    let reader = env.db.begin().await?;
    let read_ids = || async {
        let row = reader
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT CAST(sum(id) AS bigint) FROM costs WHERE month = '2024-09-01'",
            ))
            .await?
            .context("a row")?;
        anyhow::Ok(row.try_get_by_index::<i64>(0)?)
    };
    assert_eq!(read_ids().await?, old_ids);
    let a = env
        .post(&format!("/v1/collectors/{collector}/collect"), september())
        .await?;
    let replacing = a.body["job_id"].as_str().context("job_id")?.to_owned();
    let parent = format!("costs_m202409_c{}", collector.replace('-', ""));
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = to_regclass('{parent}')"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.scalar(&waiting).await? == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the swap never waited for the reader"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Past the swap's lock timeout: it has stepped back at least once.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(read_ids().await?, old_ids);
    let status = env.get(&format!("/v1/jobs/{replacing}")).await?.body["status"].clone();
    assert_ne!(
        status, "SUCCESS",
        "the swap went past a reader of the month"
    );
    reader.commit().await?;

    let done = env.wait_job(&replacing).await?;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["counts"]["deleted"], 250, "{done}");
    assert_eq!(
        env.scalar(&format!(
            "SELECT CAST(max(attempt) AS bigint) FROM job_tasks WHERE job_id = '{replacing}'"
        ))
        .await?,
        1,
        "the swap waited inside its attempt"
    );
    assert_ne!(
        env.scalar("SELECT CAST(sum(id) AS bigint) FROM costs")
            .await?,
        old_ids
    );
    assert_eq!(env.scalar("SELECT count(*) FROM costs").await?, 250);
    Ok(())
}

/// Migration 23 moves the stored costs into a leaf per (collector, service account, month),
/// keeping their ids, and undoing it puts them back into one table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioning_costs_keeps_the_stored_rows() -> anyhow::Result<()> {
    use gleaner_migrations::{Migrator, MigratorTrait};
    let store = crate::support::TestStore::open(Mode::Distributed).await?;
    let undo = u32::try_from(Migrator::migrations().len() - 22)?;
    Migrator::down(&store.db, Some(undo)).await?;
    let (domain, job, task) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let (c1, c2, account) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    for (collector, month, day, billed) in [
        (c1, "2024-09-01", "2024-09-03", "1.5"),
        (c1, "2024-09-01", "2024-09-04", "2.25"),
        (c2, "2024-09-01", "2024-09-04", "4"),
        (c1, "2024-10-01", "2024-10-01", "8"),
    ] {
        store
            .execute(&format!(
                "INSERT INTO costs (domain_id, collector_id, service_account_id, job_id, task_id,
                     month, day, charge_period_start, provider, billing_account_id, currency,
                     billed_cost, effective_cost, list_cost)
                 VALUES ('{domain}', '{collector}', '{account}', '{job}', '{task}', '{month}',
                     '{day}', '{day}T00:00:00Z', 'AWS', 'b', 'USD', {billed}, {billed}, {billed})"
            ))
            .await?;
    }
    let ids = store
        .scalar("SELECT CAST(sum(id) AS bigint) FROM costs")
        .await?;
    let billed = "SELECT CAST(sum(billed_cost) * 100 AS bigint) FROM costs";
    assert_eq!(store.scalar(billed).await?, 1575);

    Migrator::up(&store.db, None).await?;
    assert_eq!(
        store.scalar("SELECT count(*) FROM cost_partitions").await?,
        3
    );
    assert_eq!(
        store
            .scalar(&format!(
                "SELECT rows FROM cost_partitions WHERE collector_id = '{c1}' AND month = '2024-09-01'"
            ))
            .await?,
        2
    );
    assert_eq!(
        store
            .scalar("SELECT CAST(sum(id) AS bigint) FROM costs")
            .await?,
        ids
    );
    assert_eq!(store.scalar(billed).await?, 1575);
    assert_eq!(
        store
            .scalar("SELECT count(*) FROM costs WHERE month = '2024-10-01'")
            .await?,
        1
    );
    // New rows still take their ids from the same sequence.
    assert!(store.scalar("SELECT nextval('cost_row_ids')").await? > 4);

    Migrator::down(&store.db, Some(1)).await?;
    assert_eq!(store.scalar("SELECT count(*) FROM costs").await?, 4);
    assert_eq!(store.scalar(billed).await?, 1575);
    assert_eq!(
        store
            .scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'costs\\_m%' AND relnamespace = current_schema()::regnamespace")
            .await?,
        0,
        "the partitions are gone"
    );
    Migrator::up(&store.db, None).await?;
    Ok(())
}
