//! The `prometheus` metric data source against a real Prometheus scraping a real node_exporter
//! (Debian's `prometheus` and `prometheus-node-exporter`; scripts/test.sh installs them): what
//! Gleaner stores equals Prometheus's own answer for the same expression, instants and step.
//! And what it refuses: URLs outside the operator's allowlist, at the API and in the worker,
//! and labels that would change the query.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::{Mode, TestEnv, fields, free_port};

/// Seconds between two scrapes, and between two samples Gleaner asks for.
const SCRAPE_SECONDS: i64 = 1;
const STEP_SECONDS: i64 = 2;
/// The rate window: several scrapes, so every step's rate has samples to work with.
const RATE_WINDOW: &str = "5s";

/// The PromQL of each metric as docs/metrics.md gives it, for the label `host`: what the test
/// asks Prometheus itself.
const QUERIES: [(&str, &str); 7] = [
    (
        "node.cpu.utilization",
        r#"100 * (1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle"}[RANGE])))"#,
    ),
    (
        "node.memory.utilization",
        "100 * (1 - sum by (host) (node_memory_MemAvailable_bytes) / sum by (host) (node_memory_MemTotal_bytes))",
    ),
    (
        "node.network.receive_bytes",
        r#"sum by (host) (rate(node_network_receive_bytes_total{device!="lo"}[RANGE]))"#,
    ),
    (
        "node.network.transmit_bytes",
        r#"sum by (host) (rate(node_network_transmit_bytes_total{device!="lo"}[RANGE]))"#,
    ),
    (
        "node.disk.read_bytes",
        "sum by (host) (rate(node_disk_read_bytes_total[RANGE]))",
    ),
    (
        "node.disk.written_bytes",
        "sum by (host) (rate(node_disk_written_bytes_total[RANGE]))",
    ),
    ("node.load1", "avg by (host) (node_load1)"),
];

/// A node_exporter and a Prometheus scraping it, on free loopback ports, in a temporary
/// directory; both killed and the directory removed on drop.
struct Prometheus {
    children: Vec<Child>,
    dir: PathBuf,
    url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        for child in &mut self.children {
            child.kill().ok();
            child.wait().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl Prometheus {
    /// Starts both; Prometheus scrapes the exporter once per job, each job's series labelled
    /// `host` with its value. Returns once Prometheus is ready (30 s at most).
    async fn start(hosts: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "gleaner-it-prometheus-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("data"))?;
        let mut me = Self {
            children: Vec::new(),
            url: String::new(),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let exporter = format!("127.0.0.1:{}", free_port()?);
        me.spawn(
            "prometheus-node-exporter",
            &[&format!("--web.listen-address={exporter}")],
        )?;
        let jobs: String = hosts
            .iter()
            .enumerate()
            .map(|(n, host)| {
                format!(
                    "  - job_name: node-{n}\n    static_configs:\n      - targets: [\"{exporter}\"]\n        labels:\n          host: \"{host}\"\n"
                )
            })
            .collect();
        let config = me.dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  evaluation_interval: {SCRAPE_SECONDS}s\nscrape_configs:\n{jobs}"
            ),
        )?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let data = me.dir.join("data");
        me.spawn(
            "prometheus",
            &[
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", data.display()),
                &format!("--web.listen-address={listen}"),
            ],
        )?;
        me.url = format!("http://{listen}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = me.http.get(format!("{}/-/ready", me.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(me);
            }
            for child in &mut me.children {
                if let Some(status) = child.try_wait()? {
                    bail!("a process exited with {status}: {}", me.logs());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("Prometheus was not ready within 30 s: {}", me.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn spawn(&mut self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{program}.log")))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {program}: scripts/test.sh installs it (apt-get install prometheus prometheus-node-exporter)")
            })?;
        self.children.push(child);
        Ok(())
    }

    /// The end of each process's log.
    fn logs(&self) -> String {
        ["prometheus-node-exporter", "prometheus"]
            .iter()
            .map(|p| {
                let text =
                    std::fs::read_to_string(self.dir.join(format!("{p}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!("{p}: {}", tail.join(" | "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `data` of a successful answer to `GET /api/v1/{path}`.
    async fn api(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(answer["status"] == "success", "{answer}");
        Ok(answer["data"].clone())
    }

    /// Waits until Prometheus holds `n` scrapes of `host` (90 s at most).
    async fn wait_for_scrapes(&self, host: &str, n: i64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let query = format!("count_over_time(node_load1{{host=\"{host}\"}}[1h])");
        loop {
            let data = self
                .api("query", &[("query", query.clone())])
                .await
                .unwrap_or_default();
            let have: i64 = data["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if have >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{have} scrapes of {host} after 90 s: {}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Prometheus's own answer for `expression` from `start` to `end` (milliseconds) at the
    /// step: the points of `host`'s series, by time in milliseconds.
    async fn range(
        &self,
        expression: &str,
        host: &str,
        (start, end): (i64, i64),
    ) -> anyhow::Result<BTreeMap<i64, f64>> {
        let data = self
            .api(
                "query_range",
                &[
                    ("query", expression.to_owned()),
                    ("start", (start / 1000).to_string()),
                    ("end", (end / 1000).to_string()),
                    ("step", STEP_SECONDS.to_string()),
                ],
            )
            .await?;
        let series = data["result"]
            .as_array()
            .context("result")?
            .iter()
            .find(|s| s["metric"]["host"] == host);
        let mut out = BTreeMap::new();
        for point in series
            .and_then(|s| s["values"].as_array())
            .into_iter()
            .flatten()
        {
            let t = point[0].as_f64().context("a time")?;
            let v: f64 = point[1].as_str().context("a value")?.parse()?;
            if v.is_finite() {
                out.insert((t * 1000.0).round() as i64, v);
            }
        }
        Ok(out)
    }
}

/// What Gleaner answers for a resource's metric from `start` to `end` (milliseconds) by
/// periods of the step: the periods that hold a sample, by their start.
async fn stored(
    env: &TestEnv,
    resource: &str,
    metric: &str,
    (start, end): (i64, i64),
) -> anyhow::Result<BTreeMap<i64, f64>> {
    let at = |ms: i64| -> anyhow::Result<String> {
        Ok(DateTime::<Utc>::from_timestamp_millis(ms)
            .context("a time")?
            .to_rfc3339()
            .replace('+', "%2B"))
    };
    let a = env
        .get(&format!(
            "/v1/resources/{resource}/metrics/{metric}?start={}&end={}&period={STEP_SECONDS}&stat=avg",
            at(start)?,
            at(end)?
        ))
        .await?;
    anyhow::ensure!(a.status == StatusCode::OK, "{a:?}");
    let labels = a.body["labels"].as_array().context("labels")?;
    let values = a.body["values"].as_array().context("values")?;
    let mut out = BTreeMap::new();
    for (label, value) in labels.iter().zip(values) {
        if let Some(v) = value.as_f64() {
            let t: DateTime<Utc> = label.as_str().context("a label")?.parse()?;
            out.insert(t.timestamp_millis(), v);
        }
    }
    Ok(out)
}

/// A demo estate of three instances in a project: (project id, instance key by resource id).
async fn estate(env: &TestEnv) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let inventory = env
        .demo_collector(
            1,
            json!({"resources": 3, "resource_types": ["compute.instance"]}),
        )
        .await?;
    let job = env.collect(&inventory).await?;
    anyhow::ensure!(job["status"] == "SUCCESS", "inventory: {job}");
    let page = env
        .get("/v1/resources?resource_type=compute.instance&limit=100")
        .await?;
    let items = page.body["items"].as_array().context("items")?;
    let keys: BTreeMap<String, String> = items
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["resource_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    anyhow::ensure!(keys.len() == 3, "{} instances", keys.len());
    let project = items[0]["project_id"]
        .as_str()
        .context("the estate's project")?
        .to_owned();
    Ok((project, keys))
}

async fn node_exporter_series_are_stored_as_prometheus_answers_them(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (project, keys) = estate(&env).await?;
    let mut instances = keys.iter();
    let (a_id, a_key) = instances.next().context("a first instance")?;
    let (b_id, b_key) = instances.next().context("a second instance")?;
    // Two instances are scraped (the same exporter, as two jobs), the third is not, and a
    // series of a host Gleaner does not know is left out.
    let prom = Prometheus::start(&[a_key, b_key, "not-a-gleaner-resource"]).await?;

    env.create(
        "/v1/service-accounts",
        json!({"name": "prom", "provider": "prometheus", "project_id": project,
               "credentials": {"url": prom.url}}),
    )
    .await?;
    // A second server of the same project (an HA pair scraping the same targets): its tasks
    // collect the same series, and must take turns with the first's rather than both append
    // after the same watermarks.
    env.create(
        "/v1/service-accounts",
        json!({"name": "prom-replica", "provider": "prometheus", "project_id": project,
               "credentials": {"url": prom.url}}),
    )
    .await?;
    // An account of another project sees none of the estate.
    let elsewhere = env
        .create("/v1/projects", json!({"name": "elsewhere"}))
        .await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "prom-elsewhere", "provider": "prometheus", "project_id": elsewhere["id"],
               "credentials": {"url": prom.url}}),
    )
    .await?;
    let collector = env
        .create(
            "/v1/collectors",
            json!({"name": "node", "plugin_id": "prometheus", "options": {
                "resource_types": ["compute.instance"], "label": "host", "match": "resource_key",
                "step_seconds": STEP_SECONDS, "rate_window_seconds": 5}}),
        )
        .await?;
    let collector = collector["id"].as_str().context("id")?.to_owned();
    let verified = env
        .post(&format!("/v1/collectors/{collector}/verify"), json!(null))
        .await?;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    // The catalog lists the metrics for any type, and so for instances.
    let listed = env
        .get("/v1/metrics?resource_type=compute.instance&provider=prometheus")
        .await?;
    let names: Vec<&str> = listed.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    let want: Vec<&str> = {
        let mut w: Vec<&str> = QUERIES.iter().map(|(m, _)| *m).collect();
        w.sort_unstable();
        w
    };
    assert_eq!(names, want, "{}", listed.body);

    // Twenty seconds of scrapes: ten steps.
    prom.wait_for_scrapes(a_key, 20).await?;
    prom.wait_for_scrapes(b_key, 20).await?;
    let job = env.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["kind"], "metrics");
    let created = job["counts"]["created"].as_i64().context("created")?;
    assert_eq!(
        env.scalar("SELECT count(*) FROM metric_samples").await?,
        created
    );
    assert_eq!(
        env.scalar("SELECT count(DISTINCT resource_id) FROM metric_samples")
            .await?,
        2,
        "the scraped instances only"
    );

    // Each metric of each scraped instance, against Prometheus's answer for the same window
    // and step. The newest steps are left out: a scrape can land after Gleaner asked.
    let step = STEP_SECONDS * 1000;
    let now = Utc::now().timestamp_millis();
    let start = (now - 3_600_000).div_euclid(step) * step;
    let mut compared = HashMap::new();
    for (id, key) in [(a_id, a_key), (b_id, b_key)] {
        let last = newest(&env, id, "node.load1").await?;
        let end = last - 4_000;
        for (metric, promql) in QUERIES {
            let expression = promql.replace("RANGE", RATE_WINDOW);
            let theirs = prom.range(&expression, key, (start, end)).await?;
            let ours = stored(&env, id, metric, (start, end + 1)).await?;
            assert_eq!(ours, theirs, "{metric} of {key}");
            *compared.entry(metric).or_insert(0) += ours.len();
        }
    }
    for metric in [
        "node.cpu.utilization",
        "node.memory.utilization",
        "node.load1",
    ] {
        assert!(
            compared[metric] >= 2 * 5,
            "{metric}: {} points compared",
            compared[metric]
        );
    }

    // Collected again: only the steps since, nothing twice.
    prom.wait_for_scrapes(a_key, 30).await?;
    let again = env.collect(&collector).await?;
    assert_eq!(again["status"], "SUCCESS", "{again}");
    let total = env.scalar("SELECT count(*) FROM metric_samples").await?;
    assert_eq!(
        total,
        created + again["counts"]["created"].as_i64().context("created")?
    );
    assert!(total > created, "new steps were stored");
    let distinct = env
        .scalar("SELECT count(*) FROM (SELECT DISTINCT resource_id, metric, time FROM metric_samples) s")
        .await?;
    assert_eq!(distinct, total, "no sample is stored twice");
    assert_eq!(again["tasks_total"], 3, "{again}");
    Ok(())
}

/// The newest sample stored of a resource's series, in milliseconds.
async fn newest(env: &TestEnv, resource: &str, metric: &str) -> anyhow::Result<i64> {
    let a = env
        .get(&format!("/v1/resources/{resource}/metrics"))
        .await?;
    let series = a.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|s| s["metric"] == metric)
        .with_context(|| format!("no {metric} series: {}", a.body))?;
    let t: DateTime<Utc> = series["last_time"].as_str().context("last_time")?.parse()?;
    Ok(t.timestamp_millis())
}

async fn urls_outside_the_allowlist_and_labels_that_change_the_query_are_refused(
    mode: Mode,
) -> anyhow::Result<()> {
    let mut env = TestEnv::start(mode).await?;
    let project = env.create("/v1/projects", json!({"name": "p"})).await?;
    let account = |url: &str| {
        json!({"name": "prom", "provider": "prometheus", "project_id": project["id"],
               "credentials": {"url": url}})
    };
    for (url, why) in [
        ("http://169.254.169.254/", "the instance metadata address"),
        ("http://10.0.0.1:9090", "not in the allowlist"),
        ("https://127.0.0.1:9090", "another scheme than allowed"),
        ("http://localhost:9090", "a name for an allowed address"),
        (
            "http://127.0.0.1:9@169.254.169.254/",
            "user information hiding the host",
        ),
        ("file:///etc/passwd", "not http"),
    ] {
        let a = env.post("/v1/service-accounts", account(url)).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{why}: {:?}", a.body);
        assert!(
            fields(&a.body).contains(&"credentials.url"),
            "{why}: {}",
            a.body
        );
    }
    let listed = env.get("/v1/service-accounts?provider=prometheus").await?;
    assert_eq!(listed.body["items"], json!([]), "nothing was created");

    // Allowed (the harness allows http://127.0.0.1:*), though nothing listens there.
    let port = free_port()?;
    let created = env
        .create(
            "/v1/service-accounts",
            account(&format!("http://127.0.0.1:{port}")),
        )
        .await?;
    let id = created["id"].as_str().context("id")?.to_owned();
    let patched = env
        .patch(
            &format!("/v1/service-accounts/{id}"),
            json!({"credentials": {"url": "http://169.254.169.254/"}}),
        )
        .await?;
    assert_eq!(
        patched.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        patched.body
    );
    assert_eq!(fields(&patched.body), ["credentials.url"]);

    // A label is written into the query: only a label name gets through.
    let collector = |name: &str, options: Value| json!({"name": name, "plugin_id": "prometheus", "options": options});
    for (label, why) in [
        ("instance\"}) or vector(1", "closes the grouping"),
        ("instance) or (up", "adds a vector"),
        ("", "empty"),
        ("9host", "starts with a digit"),
    ] {
        let a = env
            .post(
                "/v1/collectors",
                collector(
                    "bad",
                    json!({"resource_types": ["compute.instance"], "label": label}),
                ),
            )
            .await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{why}: {:?}", a.body);
        assert_eq!(fields(&a.body), ["options.label"], "{why}: {}", a.body);
    }
    let a = env
        .post(
            "/v1/collectors",
            collector(
                "bad",
                json!({"resource_types": ["compute.instance"], "match": "data.a b"}),
            ),
        )
        .await?;
    assert_eq!(fields(&a.body), ["options.match"], "{}", a.body);
    let c = env
        .create(
            "/v1/collectors",
            collector("node", json!({"resource_types": ["compute.instance"]})),
        )
        .await?;
    let c = c["id"].as_str().context("id")?.to_owned();
    // Allowed, the worker calls it: nobody answers.
    let verify = env
        .post(
            &format!("/v1/service-accounts/{id}/verify"),
            json!({"collector_id": c}),
        )
        .await?;
    assert_eq!(
        verify.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        verify.body
    );
    let reason = verify.body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("could not be reached"), "{reason}");

    // The operator narrows the allowlist: the account saved before is refused by the plugin,
    // at verification and in the worker, before any call.
    env.restart(|s| s.network.allow_endpoints = vec!["http://127.0.0.1:9".into()])
        .await?;
    let verify = env
        .post(
            &format!("/v1/service-accounts/{id}/verify"),
            json!({"collector_id": c}),
        )
        .await?;
    assert_eq!(
        verify.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        verify.body
    );
    let reason = verify.body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("GLEANER_NETWORK__ALLOW_ENDPOINTS"),
        "{reason}"
    );
    let job = env.collect(&c).await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let error = env.first_task_error(&job).await?;
    assert!(
        error.contains("credentials.url") && error.contains("GLEANER_NETWORK__ALLOW_ENDPOINTS"),
        "{error}"
    );
    Ok(())
}

in_both_modes!(
    node_exporter_series_are_stored_as_prometheus_answers_them,
    urls_outside_the_allowlist_and_labels_that_change_the_query_are_refused,
);
