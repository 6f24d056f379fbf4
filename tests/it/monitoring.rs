//! Metric collection: demo-metrics samples through metrics jobs, checked against the plugin's
//! formula; re-collection, watermarks, retention, and the query API's answers and refusals.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::{Mode, TestEnv, fields};

/// The demo's formula (docs/metrics.md): `scale × ((h + a·k) mod n)`, `k` the sample's minute.
fn formula(metric: &str, key: &str, minute: i64) -> f64 {
    let (a, n, scale) = match metric {
        "cpu.utilization" => (1, 101, 1),
        "network.in_bytes" => (11, 997, 1000),
        other => panic!("no formula for {other}"),
    };
    let h = key.bytes().map(i64::from).sum::<i64>() % 1000;
    (scale * (h + a * minute).rem_euclid(n)) as f64
}

const METRICS: [&str; 2] = ["cpu.utilization", "network.in_bytes"];
const SERVERS: usize = 100;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// A demo estate of `SERVERS` instances, collected, and a demo-metrics collector of two metrics.
/// Returns (metrics collector id, instance key by resource id).
async fn estate(env: &TestEnv) -> anyhow::Result<(String, HashMap<String, String>)> {
    let inventory = env
        .demo_collector(
            1,
            json!({"resources": SERVERS, "resource_types": ["compute.instance"]}),
        )
        .await?;
    let job = env.collect(&inventory).await?;
    anyhow::ensure!(job["status"] == "SUCCESS", "inventory: {job}");
    let page = env
        .get("/v1/resources?resource_type=compute.instance&limit=1000")
        .await?;
    let keys: HashMap<String, String> = page.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["resource_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    anyhow::ensure!(keys.len() == SERVERS, "{} instances", keys.len());
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "metrics", "plugin_id": "demo-metrics", "options": {"metrics": METRICS}}),
        )
        .await?;
    Ok((c["id"].as_str().context("id")?.to_owned(), keys))
}

/// Samples counted by the 5-minute rollup, whose counts PostgreSQL packs by hour.
fn five_minute_count(mode: Mode) -> &'static str {
    match mode {
        Mode::Distributed => {
            "SELECT CAST(sum(c) AS bigint) FROM metric_rollups_5m CROSS JOIN LATERAL unnest(count) AS c"
        }
        Mode::Standalone => "SELECT CAST(sum(count) AS bigint) FROM metric_rollups_5m",
    }
}

/// An instant (milliseconds) as a query parameter: RFC 3339, its `+` escaped.
fn param(ms: i64) -> anyhow::Result<String> {
    Ok(DateTime::from_timestamp_millis(ms)
        .context("a time")?
        .to_rfc3339()
        .replace('+', "%2B"))
}

fn time(v: &Value) -> anyhow::Result<DateTime<Utc>> {
    Ok(v.as_str().context("a time")?.parse()?)
}

/// The newest sample stored of a resource's series.
async fn watermark(env: &TestEnv, resource: &str, metric: &str) -> anyhow::Result<i64> {
    let a = env
        .get(&format!("/v1/resources/{resource}/metrics"))
        .await?;
    anyhow::ensure!(a.status == StatusCode::OK, "{a:?}");
    let series = a.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|s| s["metric"] == metric)
        .with_context(|| format!("no {metric} series: {}", a.body))?;
    Ok(time(&series["last_time"])?.timestamp_millis())
}

async fn a_day_of_demo_samples_is_stored_once_and_rolled_up_exactly(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (collector, keys) = estate(&env).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["kind"], "metrics");
    let per_series = 1440;
    let expected = (SERVERS * METRICS.len() * per_series) as i64;
    assert_eq!(job["counts"]["created"], expected, "{job}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM metric_samples").await?,
        expected
    );
    // Every series holds the day's minutes, each once.
    let distinct = env
        .scalar("SELECT count(*) FROM (SELECT DISTINCT resource_id, metric, time FROM metric_samples) s")
        .await?;
    assert_eq!(distinct, expected);

    // The day's whole hours, averaged from the hourly rollup, against the formula.
    let (first_id, _) = keys.iter().next().context("a server")?;
    let last = watermark(&env, first_id, "cpu.utilization").await?;
    let first = last - (per_series as i64 - 1) * MINUTE;
    let start = first.div_euclid(HOUR) * HOUR + HOUR;
    let end = (last + MINUTE).div_euclid(HOUR) * HOUR;
    let ids: Vec<&String> = keys.keys().collect();
    let body = json!({
        "resource_ids": ids, "metric": "cpu.utilization", "period": 3600, "stat": "avg",
        "start": chrono::DateTime::from_timestamp_millis(start).context("start")?.to_rfc3339(),
        "end": chrono::DateTime::from_timestamp_millis(end).context("end")?.to_rfc3339(),
    });
    let a = env.post("/v1/metrics/query", body).await?;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let labels = a.body["labels"].as_array().context("labels")?;
    assert_eq!(labels.len() as i64, (end - start) / HOUR);
    assert_eq!(a.body["unit"], "Percent");
    for (id, key) in &keys {
        let values = a.body["values"][id].as_array().context("values")?;
        for (label, value) in labels.iter().zip(values) {
            let hour = time(label)?.timestamp_millis() / MINUTE;
            let want = (hour..hour + 60)
                .map(|m| formula("cpu.utilization", key, m))
                .sum::<f64>()
                / 60.0;
            assert_eq!(value.as_f64(), Some(want), "{id} at {label}");
        }
    }
    // One series by minutes, with max, from the raw samples: each minute's value.
    let (id, key) = keys.iter().nth(1).context("a second server")?;
    let path = format!(
        "/v1/resources/{id}/metrics/network.in_bytes?start={}&end={}&period=60&stat=max",
        param(start)?,
        param(start + HOUR)?,
    );
    let a = env.get(&path).await?;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let values = a.body["values"].as_array().context("values")?;
    assert_eq!(values.len(), 60);
    for (i, v) in values.iter().enumerate() {
        let minute = start / MINUTE + i as i64;
        assert_eq!(v.as_f64(), Some(formula("network.in_bytes", key, minute)));
    }
    // Five-minute buckets with max, across hour boundaries: the 5-minute rollup (packed by
    // hour in PostgreSQL), against the formula.
    let (from, to) = (start + 25 * MINUTE, start + 145 * MINUTE);
    let path = format!(
        "/v1/resources/{id}/metrics/network.in_bytes?start={}&end={}&period=300&stat=max",
        param(from)?,
        param(to)?,
    );
    let a = env.get(&path).await?;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let values = a.body["values"].as_array().context("values")?;
    assert_eq!(values.len(), 24, "{}", a.body);
    for (i, v) in values.iter().enumerate() {
        let first = from / MINUTE + 5 * i as i64;
        let want = (first..first + 5)
            .map(|m| formula("network.in_bytes", key, m))
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(v.as_f64(), Some(want), "bucket {i}");
    }
    // Top 3 by the average, over whole hours (the hourly rollup) and over a range with
    // 10-minute edges (5-minute and hourly pieces): the same order and values as the formula.
    for (from, to) in [(start, end), (start + 10 * MINUTE, end - 10 * MINUTE)] {
        let top = env
            .get(&format!(
                "/v1/metrics/top?metric=cpu.utilization&resource_type=compute.instance&limit=3&start={}&end={}",
                param(from)?,
                param(to)?,
            ))
            .await?;
        assert_eq!(top.status, StatusCode::OK, "{top:?}");
        let mut want: Vec<(f64, &String)> = keys
            .iter()
            .map(|(id, key)| {
                let sum: f64 = (from / MINUTE..to / MINUTE)
                    .map(|m| formula("cpu.utilization", key, m))
                    .sum();
                (sum / ((to - from) / MINUTE) as f64, id)
            })
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let items = top.body["items"].as_array().context("items")?;
        assert_eq!(items.len(), 3);
        for (item, (value, id)) in items.iter().zip(&want) {
            assert_eq!(item["resource_id"], **id, "{}", top.body);
            // Partial sums add in another order than the formula's.
            let got = item["value"].as_f64().context("value")?;
            assert!(
                (got - value).abs() <= 1e-9 * value.abs(),
                "{got} against {value}"
            );
        }
    }

    // Once a minute has passed, the next collection adds that minute only: the watermark moves
    // and nothing is stored twice.
    let wait = MINUTE - Utc::now().timestamp_millis().rem_euclid(MINUTE) + 1_000;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait)?)).await;
    let again = env.collect(&collector).await?;
    assert_eq!(again["status"], "SUCCESS", "{again}");
    let moved = watermark(&env, first_id, "cpu.utilization").await?;
    assert!(moved > last, "the watermark moved from {last} to {moved}");
    let new_minutes = (moved - last) / MINUTE;
    let added = (SERVERS * METRICS.len()) as i64 * new_minutes;
    assert_eq!(again["counts"]["created"], added, "{again}");
    let total = env.scalar("SELECT count(*) FROM metric_samples").await?;
    assert_eq!(total, expected + added);
    let distinct = env
        .scalar("SELECT count(*) FROM (SELECT DISTINCT resource_id, metric, time FROM metric_samples) s")
        .await?;
    assert_eq!(distinct, total, "no sample is stored twice");
    // Rollup rows are partial sums: grouped, they count every sample once.
    assert_eq!(env.scalar(five_minute_count(mode)).await?, total);
    assert_eq!(
        env.scalar("SELECT CAST(sum(count) AS bigint) FROM metric_rollups_1h")
            .await?,
        total
    );
    // The collector shows where it stands.
    let detail = env.get(&format!("/v1/collectors/{collector}")).await?;
    assert_eq!(
        time(&detail.body["metrics_watermark"])?.timestamp_millis(),
        moved
    );
    Ok(())
}

async fn retention_drops_the_expired_days_and_nothing_else(mode: Mode) -> anyhow::Result<()> {
    use gleaner_common::config::MetricsSettings;
    use gleaner_common::store::metric;
    let env = TestEnv::start(mode).await?;
    let (collector, _) = estate(&env).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let today = Utc::now().date_naive();
    let midnight = today.and_hms_opt(0, 0, 0).context("midnight")?.and_utc();
    let since_midnight = match mode {
        Mode::Distributed => format!("time >= '{}'", midnight.to_rfc3339()),
        Mode::Standalone => format!("time >= {}", midnight.timestamp_millis()),
    };
    let total = env.scalar("SELECT count(*) FROM metric_samples").await?;
    let kept = env
        .scalar(&format!(
            "SELECT count(*) FROM metric_samples WHERE {since_midnight}"
        ))
        .await?;
    assert!(
        kept > 0 && kept < total,
        "a day back from now spans two days: {kept} of {total}"
    );
    let hours_kept = env
        .scalar(&format!(
            "SELECT CAST(sum(count) AS bigint) FROM metric_rollups_1h WHERE {}",
            since_midnight.replace("time", "bucket")
        ))
        .await?;
    // Thirty days on, a retention of 30 days keeps today and drops yesterday.
    let settings = MetricsSettings {
        retention_days: 30,
        ..MetricsSettings::default()
    };
    let later = Utc::now() + chrono::Duration::days(30);
    let done = metric::maintain(&env.db, later, &settings).await?;
    assert_eq!(
        env.scalar("SELECT count(*) FROM metric_samples").await?,
        kept
    );
    assert_eq!(
        env.scalar("SELECT CAST(sum(count) AS bigint) FROM metric_rollups_1h")
            .await?,
        hours_kept
    );
    assert_eq!(env.scalar(five_minute_count(mode)).await?, kept);
    if mode == Mode::Distributed {
        let yesterday = today.pred_opt().context("yesterday")?;
        assert_eq!(done.dropped, [yesterday], "{done:?}");
        for tier in [
            gleaner_common::metric::Tier::Raw,
            gleaner_common::metric::Tier::FiveMinutes,
            gleaner_common::metric::Tier::Hour,
        ] {
            let days = metric::partitions(&env.db, tier).await?;
            assert!(!days.contains(&yesterday), "{tier:?}: {days:?}");
            assert!(days.contains(&today), "{tier:?}: {days:?}");
            let ahead = later.date_naive() + chrono::Days::new(3);
            assert!(
                days.contains(&ahead),
                "made ahead of the later day: {days:?}"
            );
        }
    } else {
        assert!(done.deleted > 0, "{done:?}");
    }
    Ok(())
}

async fn bad_queries_name_the_field(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (_, keys) = estate(&env).await?;
    let id = keys.keys().next().context("a server")?;
    let cases = [
        (
            format!("/v1/resources/{id}/metrics/no.such.metric"),
            "metric",
        ),
        (
            format!(
                "/v1/resources/{id}/metrics/cpu.utilization?start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z"
            ),
            "end",
        ),
        (
            format!("/v1/resources/{id}/metrics/cpu.utilization?period=1.5"),
            "period",
        ),
        (
            format!("/v1/resources/{id}/metrics/cpu.utilization?period=0"),
            "period",
        ),
        (
            format!("/v1/resources/{id}/metrics/cpu.utilization?stat=p99"),
            "stat",
        ),
        ("/v1/metrics/top?metric=nope".to_owned(), "metric"),
        (
            "/v1/metrics/top?metric=cpu.utilization&limit=0".to_owned(),
            "limit",
        ),
    ];
    for (path, field) in cases {
        let a = env.get(&path).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {a:?}");
        assert_eq!(fields(&a.body), [field], "{path}: {}", a.body);
    }
    let many: Vec<String> = (0..201).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let bodies = [
        (
            json!({"resource_ids": many, "metric": "cpu.utilization"}),
            "resource_ids",
        ),
        (
            json!({"resource_ids": [id], "metric": "cpu.utilization", "period": 1.5}),
            "period",
        ),
        (json!({"resource_ids": [id], "metric": "nope"}), "metric"),
        (
            json!({"resource_ids": [uuid::Uuid::now_v7()], "metric": "cpu.utilization"}),
            "resource_ids",
        ),
        (
            json!({"resource_ids": [id], "metric": "cpu.utilization", "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}),
            "end",
        ),
    ];
    for (body, field) in bodies {
        let a = env.post("/v1/metrics/query", body.clone()).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {a:?}");
        assert_eq!(fields(&a.body), [field], "{body}: {}", a.body);
    }
    // The catalog lists the demo's metrics with their unit and source.
    let list = env
        .get("/v1/metrics?resource_type=compute.instance&provider=demo")
        .await?;
    let cpu = list.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|m| m["name"] == "cpu.utilization")
        .context("cpu.utilization is listed")?
        .clone();
    assert_eq!(cpu["unit"], "Percent");
    assert_eq!(cpu["source"], "demo-metrics");
    let none = env
        .get("/v1/metrics?provider=aws&resource_type=compute.instance")
        .await?;
    assert_eq!(none.body["items"], json!([]));
    Ok(())
}

in_both_modes!(
    a_day_of_demo_samples_is_stored_once_and_rolled_up_exactly,
    retention_drops_the_expired_days_and_nothing_else,
    bad_queries_name_the_field,
);

/// A private metric data source over the JSON-lines protocol (tests/plugins/metrics.py): its
/// `sample` lines are stored for the task's resources, and a metric it did not declare is
/// refused by name.
async fn a_private_plugin_reports_samples_line_by_line(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (_, keys) = estate(&env).await?;
    let plugin = env
        .create(
            "/v1/plugins",
            json!({"id": "test-metrics", "version": "1.0.0",
                   "command": format!("{}/tests/plugins/metrics.py", env!("CARGO_MANIFEST_DIR"))}),
        )
        .await?;
    assert_eq!(plugin["kind"], "metric_data_source");
    assert_eq!(plugin["metrics"][0]["name"], "load");
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "private", "plugin_id": "test-metrics"}),
        )
        .await?;
    let collector = c["id"].as_str().context("id")?;
    let job = env.collect(collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], (SERVERS * 3) as i64, "{job}");
    let (id, _) = keys.iter().next().context("a server")?;
    let last = watermark(&env, id, "load").await?;
    let minute = last / MINUTE;
    let rows = env
        .scalar(&format!(
            "SELECT count(*) FROM metric_samples WHERE metric = 'load' AND resource_id = {}",
            env.uuid_sql(id)?
        ))
        .await?;
    assert_eq!(rows, 3);
    let a = env
        .get(&format!(
            "/v1/resources/{id}/metrics/load?start={}&end={}&period=60",
            param((minute - 2) * MINUTE)?,
            param((minute + 1) * MINUTE)?,
        ))
        .await?;
    let values: Vec<Option<f64>> = a.body["values"]
        .as_array()
        .context("values")?
        .iter()
        .map(Value::as_f64)
        .collect();
    let want: Vec<Option<f64>> = (minute - 2..=minute)
        .map(|m| Some((m % 7) as f64 + 0.5))
        .collect();
    assert_eq!(values, want, "{}", a.body);
    // A metric it never declared fails the task, naming it; what it reported before is kept,
    // and nothing twice.
    let patched = env
        .patch(
            &format!("/v1/collectors/{collector}"),
            json!({"options": {"undeclared": true}}),
        )
        .await?;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    let failed = env.collect(collector).await?;
    assert_eq!(failed["status"], "FAILURE", "{failed}");
    let error = env.first_task_error(&failed).await?;
    assert!(error.contains("`undeclared`"), "{error}");
    let distinct = env
        .scalar("SELECT count(*) FROM (SELECT DISTINCT resource_id, metric, time FROM metric_samples WHERE metric = 'load') s")
        .await?;
    assert_eq!(
        env.scalar("SELECT count(*) FROM metric_samples WHERE metric = 'load'")
            .await?,
        distinct
    );
    Ok(())
}

in_both_modes!(a_private_plugin_reports_samples_line_by_line);

/// Two metric collectors of one account write the same series: they take turns, so the second
/// starts after the first's watermarks and nothing is stored twice.
async fn two_metric_collectors_of_one_account_store_each_sample_once(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (first, _) = estate(&env).await?;
    let second = env
        .create(
            "/v1/collectors",
            json!({"name": "metrics again", "plugin_id": "demo-metrics", "options": {"metrics": ["cpu.utilization"]}}),
        )
        .await?;
    let second = second["id"].as_str().context("id")?;
    let (a, b) = (
        env.start_collect(&first).await?,
        env.start_collect(second).await?,
    );
    let (a, b) = (env.wait_job(&a).await?, env.wait_job(&b).await?);
    assert_eq!(a["status"], "SUCCESS", "{a}");
    assert_eq!(b["status"], "SUCCESS", "{b}");
    let cpu = "SELECT count(*) FROM metric_samples WHERE metric = 'cpu.utilization'";
    let stored = env.scalar(cpu).await?;
    let distinct = env
        .scalar("SELECT count(*) FROM (SELECT DISTINCT resource_id, time FROM metric_samples WHERE metric = 'cpu.utilization') s")
        .await?;
    assert_eq!(stored, distinct, "no cpu sample twice");
    assert!(stored >= (SERVERS * 1440) as i64, "{stored}");
    Ok(())
}

in_both_modes!(two_metric_collectors_of_one_account_store_each_sample_once);

/// A key limited to projects sees the metrics of its projects' resources only.
async fn a_project_limited_key_sees_its_projects_metrics_only(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (collector, keys) = estate(&env).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let (id, _) = keys.iter().next().context("a server")?;
    let resource = env.get(&format!("/v1/resources/{id}")).await?;
    let theirs = resource.body["project_id"]
        .as_str()
        .context("project")?
        .to_owned();
    let other = env
        .create("/v1/projects", json!({"name": "elsewhere"}))
        .await?;
    let limited_to = |project: Value| {
        let env = &env;
        async move {
            let key = env
                .create(
                    "/v1/api-keys",
                    json!({"name": format!("k-{}", rand::random::<u32>()), "role": "viewer", "project_ids": [project]}),
                )
                .await?;
            Ok::<_, anyhow::Error>(
                env.api
                    .clone()
                    .with_key(key["secret"].as_str().context("secret")?),
            )
        }
    };
    let outsider = limited_to(other["id"].clone()).await?;
    let insider = limited_to(json!(theirs)).await?;
    let series = format!("/v1/resources/{id}/metrics/cpu.utilization?period=3600");
    assert_eq!(outsider.get(&series).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(insider.get(&series).await?.status, StatusCode::OK);
    let query = json!({"resource_ids": [id], "metric": "cpu.utilization", "period": 3600});
    let refused = outsider.post("/v1/metrics/query", query.clone()).await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(refused.body["errors"][0]["field"], "resource_ids");
    assert_eq!(
        insider.post("/v1/metrics/query", query).await?.status,
        StatusCode::OK
    );
    let top = "/v1/metrics/top?metric=cpu.utilization&limit=100";
    assert_eq!(outsider.get(top).await?.body["items"], json!([]));
    let seen = insider.get(top).await?.body["items"]
        .as_array()
        .context("items")?
        .len();
    assert_eq!(seen, SERVERS.min(100));
    Ok(())
}

in_both_modes!(a_project_limited_key_sees_its_projects_metrics_only);

/// Migration 16 packs the stored 5-minute buckets by hour (PostgreSQL), and undoing it
/// unpacks them: partial rows of a bucket and buckets of two hours read the same after both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packing_the_five_minute_rollup_keeps_what_was_stored() -> anyhow::Result<()> {
    use gleaner_common::metric::{Agg, Window};
    use gleaner_common::store::metric;
    use gleaner_migrations::{Migrator, MigratorTrait};
    let store = crate::support::TestStore::open(Mode::Distributed).await?;
    // Back to before migration 16: it and the later ones undone.
    let undo = u32::try_from(Migrator::migrations().len() - 15)?;
    Migrator::down(&store.db, Some(undo)).await?;
    let day = Utc::now().date_naive();
    metric::ensure_partitions(&store.db, day, day).await?;
    let one = day.and_hms_opt(1, 0, 0).context("01:00")?.and_utc();
    let (domain, resource) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let at = |minutes: i64| (one + chrono::Duration::minutes(minutes)).to_rfc3339();
    // Two partial rows of 01:05, one of 01:55, and one of 02:00 in the next hour.
    for (minutes, min, max, sum, count) in [
        (5, 1.0, 3.0, 4.0, 2),
        (5, 0.5, 2.0, 2.5, 2),
        (55, 7.0, 7.0, 7.0, 1),
        (60, 9.0, 9.0, 9.0, 1),
    ] {
        store
            .execute(&format!(
                "INSERT INTO metric_rollups_5m VALUES ('{domain}', '{resource}', 'm', '{}', {min}, {max}, {sum}, {count})",
                at(minutes)
            ))
            .await?;
    }
    let window = Window {
        start: one.timestamp_millis(),
        end: one.timestamp_millis() + 2 * HOUR,
        period_ms: 5 * MINUTE,
    };
    let want: HashMap<i64, Agg> = [
        (
            5,
            Agg {
                min: 0.5,
                max: 3.0,
                sum: 6.5,
                count: 4,
            },
        ),
        (
            55,
            Agg {
                min: 7.0,
                max: 7.0,
                sum: 7.0,
                count: 1,
            },
        ),
        (
            60,
            Agg {
                min: 9.0,
                max: 9.0,
                sum: 9.0,
                count: 1,
            },
        ),
    ]
    .into_iter()
    .map(|(minutes, agg)| (window.start + minutes * MINUTE, agg))
    .collect();
    let read = || async {
        let got =
            metric::series(&store.db, domain.into(), &[resource.into()], "m", &window).await?;
        anyhow::Ok(got.get(&resource.into()).cloned().unwrap_or_default())
    };

    Migrator::up(&store.db, None).await?;
    assert_eq!(
        store
            .scalar("SELECT count(*) FROM metric_rollups_5m")
            .await?,
        2
    );
    assert_eq!(store.scalar(five_minute_count(Mode::Distributed)).await?, 6);
    assert_eq!(read().await?, want);

    Migrator::down(&store.db, Some(undo)).await?;
    assert_eq!(
        store
            .scalar("SELECT count(*) FROM metric_rollups_5m")
            .await?,
        3
    );
    assert_eq!(
        store
            .scalar("SELECT CAST(sum(count) AS bigint) FROM metric_rollups_5m")
            .await?,
        6
    );
    // The rows read back once packed again (this code reads the packed shape only).
    Migrator::up(&store.db, None).await?;
    assert_eq!(read().await?, want);
    assert_eq!(
        metric::partitions(&store.db, gleaner_common::metric::Tier::FiveMinutes)
            .await?
            .len(),
        1
    );
    Ok(())
}
