//! `prometheus`: node_exporter metrics read from a Prometheus server's HTTP API, for the
//! resources other collectors found.
//!
//! A service account of provider `prometheus` stands for one server (`url`, and a bearer token
//! or a user and password). Its tasks collect for the active resources of the collector's
//! `resource_types` in the account's project ([`TargetScope::Project`]): a Prometheus server
//! watches machines, it does not own them. Each metric is one PromQL expression aggregated by
//! the label the operator chose (`label`), and each series of the answer goes to the resources
//! whose field (`match`) equals its label's value; several resources may share a value, and a
//! series matching none is counted and left out.
//!
//! A run asks `query_range` once per metric over `[the oldest target's since, the task's start]`
//! at the collector's step, aligned to whole steps since the epoch (so two runs evaluate at the
//! same instants), split so that no request asks for more than [`MAX_POINTS`] points a series.
//! Prometheus's "no value" (`NaN`, `±Inf`) is left out.
//!
//! The URL is a credential the operator's endpoint allowlist must accept, checked here before
//! every call (verify and collect) as the API checks it when the account is saved; redirects are
//! not followed, so an allowed server cannot send the worker anywhere else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gleaner_common::access::Access;
use gleaner_common::metric::{ANY_TYPE, MetricInfo, instant, millis};
use gleaner_common::model::Invalid;
use gleaner_common::plugin::{PluginInfo, PluginKind};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{
    CollectRequest, Item, ItemSender, MetricTarget, Plugin, PluginError, Point, Samples, Target,
    TargetScope,
};

/// The most points Prometheus answers for one series of a range query (its own limit, 11,000,
/// refuses the whole query beyond it).
pub const MAX_POINTS: i64 = 11_000;

/// How long one call may take. A range query over many series of a day is the slowest call
/// there is; a server still busy after this is better asked again later.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest piece of a server's own error message kept in ours.
const MAX_ERROR: usize = 300;

/// One metric: its name, unit, and PromQL, where `LABEL` stands for the collector's label and
/// `RANGE` for its rate window (`300s`).
#[derive(Debug)]
pub struct Query {
    pub metric: &'static str,
    pub unit: &'static str,
    pub promql: &'static str,
    pub about: &'static str,
}

/// The metrics, as docs/metrics.md lists them.
pub const QUERIES: [Query; 7] = [
    Query {
        metric: "node.cpu.utilization",
        unit: "Percent",
        promql: r#"100 * (1 - avg by (LABEL) (rate(node_cpu_seconds_total{mode="idle"}[RANGE])))"#,
        about: "CPU time not idle, averaged over the CPUs",
    },
    Query {
        metric: "node.memory.utilization",
        unit: "Percent",
        promql: "100 * (1 - sum by (LABEL) (node_memory_MemAvailable_bytes) / sum by (LABEL) (node_memory_MemTotal_bytes))",
        about: "memory not available to new processes",
    },
    Query {
        metric: "node.network.receive_bytes",
        unit: "Bytes/Second",
        promql: r#"sum by (LABEL) (rate(node_network_receive_bytes_total{device!="lo"}[RANGE]))"#,
        about: "bytes received, over every interface but loopback",
    },
    Query {
        metric: "node.network.transmit_bytes",
        unit: "Bytes/Second",
        promql: r#"sum by (LABEL) (rate(node_network_transmit_bytes_total{device!="lo"}[RANGE]))"#,
        about: "bytes sent, over every interface but loopback",
    },
    Query {
        metric: "node.disk.read_bytes",
        unit: "Bytes/Second",
        promql: "sum by (LABEL) (rate(node_disk_read_bytes_total[RANGE]))",
        about: "bytes read, over every disk",
    },
    Query {
        metric: "node.disk.written_bytes",
        unit: "Bytes/Second",
        promql: "sum by (LABEL) (rate(node_disk_written_bytes_total[RANGE]))",
        about: "bytes written, over every disk",
    },
    Query {
        metric: "node.load1",
        unit: "Count",
        promql: "avg by (LABEL) (node_load1)",
        about: "the one-minute load average",
    },
];

impl Query {
    /// The expression for `label` and a rate window of `range_seconds`.
    #[must_use]
    pub fn expression(&self, label: &LabelName, range_seconds: i64) -> String {
        self.promql
            .replace("LABEL", label.as_str())
            .replace("RANGE", &format!("{range_seconds}s"))
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`. It is written into every query, so
/// nothing else may pass: no quote, brace, parenthesis or space could end the `by (…)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelName(String);

/// [`LabelName`]'s grammar, for the options schema.
const LABEL_PATTERN: &str = "^[a-zA-Z_][a-zA-Z0-9_]*$";

impl LabelName {
    /// Checks a label name.
    ///
    /// # Errors
    /// It is empty, longer than 128 bytes, or not of the grammar; the error names `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        let mut bytes = raw.bytes();
        let ok = raw.len() <= 128
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid::new(
                field,
                "must be a Prometheus label name: a letter or `_`, then letters, digits and `_`",
            ))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which field of a resource a series' label value is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchField {
    ResourceKey,
    Name,
    /// A value inside the resource's data, by its path: `data.private_ip_address` is
    /// `["private_ip_address"]`; a number picks an array's element.
    Data(Vec<String>),
}

const MATCH_PATTERN: &str = r"^(resource_key|name|data(\.[A-Za-z0-9_-]+)+)$";

impl MatchField {
    /// Reads `resource_key`, `name` or `data.<path>`.
    ///
    /// # Errors
    /// Anything else; the error names `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        match raw {
            "resource_key" => return Ok(Self::ResourceKey),
            "name" => return Ok(Self::Name),
            _ => {}
        }
        let path: Option<Vec<String>> = raw
            .strip_prefix("data.")
            .map(|p| p.split('.').map(str::to_owned).collect());
        match path {
            Some(p)
                if p.iter().all(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                }) =>
            {
                Ok(Self::Data(p))
            }
            _ => Err(Invalid::new(
                field,
                "must be resource_key, name or data.<path>, e.g. data.private_ip_address",
            )),
        }
    }

    /// The value of this field of `target`; `None` when it has none (no name, no such path, or
    /// a value that is neither a string nor a number).
    #[must_use]
    pub fn value_of(&self, target: &Target) -> Option<String> {
        match self {
            Self::ResourceKey => Some(target.resource_key.clone()),
            Self::Name => target.name.clone(),
            Self::Data(path) => {
                let mut at = &target.data;
                for step in path {
                    at = match at {
                        Value::Object(o) => o.get(step)?,
                        Value::Array(a) => a.get(step.parse::<usize>().ok()?)?,
                        _ => return None,
                    };
                }
                match at {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            }
        }
    }
}

/// `value` without a trailing `:port`: `10.0.0.5:9100` is `10.0.0.5`, `[::1]:9100` is `::1`,
/// `host.example:9100` is `host.example`. A value without a port (a bare IPv6 address too) is
/// left as it is.
#[must_use]
pub fn strip_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
        && is_port(port)
    {
        return host;
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && is_port(port) => host,
        _ => value,
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The ranges `[start, end]` (milliseconds, both evaluated) that cover `[start, last]` at
/// `step`, each of at most [`MAX_POINTS`] points, oldest first.
#[must_use]
pub fn chunks(start: i64, last: i64, step: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let span = (MAX_POINTS - 1) * step;
    let mut from = start;
    while from <= last {
        let to = (from + span).min(last);
        out.push((from, to));
        from = to + step;
    }
    out
}

/// The options of a `prometheus` collector, as the schema gives them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    resource_types: Vec<String>,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default = "default_match", rename = "match")]
    match_field: String,
    #[serde(default)]
    strip_port: bool,
    #[serde(default = "default_step")]
    step_seconds: i64,
    #[serde(default = "default_rate_window")]
    rate_window_seconds: i64,
    #[serde(default)]
    metrics: Vec<String>,
}

fn default_label() -> String {
    "instance".into()
}
fn default_match() -> String {
    "name".into()
}
const fn default_step() -> i64 {
    60
}
/// Four scrapes of a minute's interval: `rate` needs two samples in its window, and a missed
/// scrape or two should not leave a gap.
const fn default_rate_window() -> i64 {
    300
}

/// Checked options: what [`RawOptions`] become once the schema accepted them (the worker checks
/// again: [`super::checked_options`]) and the label and field parse.
#[derive(Clone, Debug)]
struct Options {
    resource_types: Vec<String>,
    label: LabelName,
    field: MatchField,
    strip_port: bool,
    step_ms: i64,
    rate_window_seconds: i64,
    queries: Vec<&'static Query>,
}

impl TryFrom<RawOptions> for Options {
    type Error = Invalid;

    fn try_from(raw: RawOptions) -> Result<Self, Invalid> {
        if raw.resource_types.is_empty() {
            return Err(Invalid::new(
                "options.resource_types",
                "name at least one resource type",
            ));
        }
        // The schema bounds the numbers and lists the metrics; a name it let through that is
        // not one of ours is left out rather than queried.
        let queries = QUERIES
            .iter()
            .filter(|q| raw.metrics.is_empty() || raw.metrics.iter().any(|m| m == q.metric))
            .collect();
        Ok(Self {
            resource_types: raw.resource_types,
            label: LabelName::parse("options.label", &raw.label)?,
            field: MatchField::parse("options.match", &raw.match_field)?,
            strip_port: raw.strip_port,
            step_ms: raw.step_seconds * 1000,
            rate_window_seconds: raw.rate_window_seconds,
            queries,
        })
    }
}

/// The `prometheus` metric data source.
pub struct Prometheus {
    info: PluginInfo,
    /// What the operator lets `url` reach.
    access: Arc<Access>,
    client: reqwest::Client,
}

impl Prometheus {
    /// The plugin, calling only the servers `access` allows.
    ///
    /// # Panics
    /// The HTTP client cannot be built (no TLS backend): a build defect, found at start-up.
    #[must_use]
    pub fn new(access: Arc<Access>) -> Self {
        let names: Vec<&str> = QUERIES.iter().map(|q| q.metric).collect();
        let client = reqwest::Client::builder()
            // A redirect would take the worker to a host the allowlist never saw.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()
            .expect("an HTTP client without custom TLS settings builds");
        Self {
            access,
            client,
            info: PluginInfo {
                id: "prometheus".into(),
                name: "Prometheus (node_exporter)".into(),
                description: "CPU, memory, network, disk and load of machines a Prometheus server scrapes with node_exporter, mapped to Gleaner resources by a label.".into(),
                kind: PluginKind::MetricDataSource,
                provider: "prometheus".into(),
                versions: vec!["1.0.0".into()],
                latest: "1.0.0".into(),
                official: true,
                resource_types: vec![ANY_TYPE.into()],
                metrics: QUERIES
                    .iter()
                    .map(|q| MetricInfo {
                        name: q.metric.into(),
                        resource_type: ANY_TYPE.into(),
                        unit: q.unit.into(),
                        description: format!("{}: {}", q.about, q.promql),
                    })
                    .collect(),
                options_schema: json!({
                    "type": "object",
                    "properties": {
                        "resource_types": {"type": "array", "minItems": 1, "uniqueItems": true,
                            "items": {"type": "string", "minLength": 1, "maxLength": 255},
                            "description": "the types of the project's resources to collect for, e.g. [\"compute.instance\"]; \"*\" for every type"},
                        "label": {"type": "string", "pattern": LABEL_PATTERN, "maxLength": 128,
                            "description": "the label whose value names the resource (default instance); queries aggregate by it"},
                        "match": {"type": "string", "pattern": MATCH_PATTERN, "maxLength": 255,
                            "description": "the resource's field the label's value is compared with: resource_key, name (default) or data.<path>, e.g. data.private_ip_address"},
                        "strip_port": {"type": "boolean",
                            "description": "compare the label's value without a trailing :port, 10.0.0.5:9100 as 10.0.0.5 (default false)"},
                        "step_seconds": {"type": "integer", "minimum": 1, "maximum": 3600,
                            "description": "seconds between two samples of a series (default 60)"},
                        "rate_window_seconds": {"type": "integer", "minimum": 1, "maximum": 86_400,
                            "description": "the window of rate(), in seconds (default 300): at least twice the scrape interval"},
                        "metrics": {"type": "array", "items": {"enum": names}, "uniqueItems": true,
                            "description": "only these metrics (default: all)"}
                    },
                    "required": ["resource_types"],
                    "additionalProperties": false
                }),
            },
        }
    }

    fn options(&self, options: &Value) -> Result<Options, PluginError> {
        let raw: RawOptions = super::checked_options(&self.info, &self.access, options)?;
        Options::try_from(raw).map_err(|e| PluginError::Permanent(e.to_string()))
    }

    /// The server of `secret`, once the operator's allowlist accepts its URL.
    fn server(&self, secret: &Map<String, Value>) -> Result<Server, PluginError> {
        let text = |k: &str| {
            secret
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let raw = text("url").ok_or_else(|| {
            PluginError::Permanent("the service account has no `url` credential".into())
        })?;
        self.access
            .endpoint("credentials.url", &raw, &[])
            .map_err(|e| PluginError::Permanent(e.to_string()))?;
        let mut base = Url::parse(&raw)
            .map_err(|e| PluginError::Permanent(format!("credentials.url: is not a URL: {e}")))?;
        // A base without a trailing slash would lose its last segment when joined.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let auth = match (text("bearer_token"), text("username")) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(user)) => Auth::Basic(user, text("password")),
            (None, None) => Auth::None,
        };
        Ok(Server {
            client: self.client.clone(),
            base,
            auth,
        })
    }
}

#[async_trait]
impl Plugin for Prometheus {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn metric_targets(&self, options: &Value) -> Result<TargetScope, PluginError> {
        Ok(TargetScope::Project(self.options(options)?.resource_types))
    }

    async fn verify(
        &self,
        options: &Value,
        secret: &Map<String, Value>,
    ) -> Result<(), PluginError> {
        self.options(options)?;
        let server = self.server(secret)?;
        server
            .get("api/v1/query", &[("query", "1")], &CancellationToken::new())
            .await
            .map(drop)
    }

    async fn collect(&self, request: CollectRequest, out: ItemSender) -> Result<(), PluginError> {
        let opts = self.options(&request.options)?;
        let server = self.server(&request.secret)?;
        let asked = request.task.metric_request()?;
        let by_value = index(&asked.targets, &opts.field);
        let step = opts.step_ms;
        let last = millis(asked.end).div_euclid(step) * step;
        for query in &opts.queries {
            let Some(since) = asked
                .targets
                .iter()
                .map(|t| millis(t.since_of(query.metric)))
                .min()
            else {
                return Ok(());
            };
            // Whole steps since the epoch, the first after every target's watermark.
            let start = since.div_euclid(step) * step + step;
            let expression = query.expression(&opts.label, opts.rate_window_seconds);
            let mut unmatched = 0usize;
            for (from, to) in chunks(start, last, step) {
                let series = server
                    .query_range(&expression, (from, to), step, &request.cancel)
                    .await
                    .map_err(|e| in_query(query.metric, e))?;
                for s in series {
                    let value = s.metric.get(opts.label.as_str()).map_or("", String::as_str);
                    let value = if opts.strip_port {
                        strip_port(value)
                    } else {
                        value
                    };
                    let Some(targets) = by_value.get(value) else {
                        unmatched += 1;
                        continue;
                    };
                    let points = points(&s.values);
                    for t in targets {
                        let after: Vec<Point> = points
                            .iter()
                            .filter(|p| p.time > t.since_of(query.metric))
                            .copied()
                            .collect();
                        if after.is_empty() {
                            continue;
                        }
                        out.send(Item::Samples(Samples {
                            resource_id: t.resource.id,
                            metric: query.metric.to_owned(),
                            points: after,
                        }))
                        .await?;
                    }
                }
            }
            if unmatched > 0 {
                info!(
                    metric = query.metric,
                    label = opts.label.as_str(),
                    series = unmatched,
                    "series matching no resource left out"
                );
            }
        }
        Ok(())
    }
}

/// The targets by the value of their `field`; targets without one are left out.
fn index<'a>(
    targets: &'a [MetricTarget],
    field: &MatchField,
) -> HashMap<String, Vec<&'a MetricTarget>> {
    let mut out: HashMap<String, Vec<&MetricTarget>> = HashMap::new();
    for t in targets {
        if let Some(v) = field.value_of(&t.resource) {
            out.entry(v).or_default().push(t);
        }
    }
    out
}

/// A series' points, oldest first, without Prometheus's "no value" (`NaN`, `±Inf`) and
/// anything that is not a number.
fn points(values: &[(f64, String)]) -> Vec<Point> {
    #[allow(clippy::cast_possible_truncation)]
    let ms = |t: f64| (t * 1000.0).round() as i64;
    values
        .iter()
        .filter_map(|(t, v)| {
            let value: f64 = v.parse().ok()?;
            value.is_finite().then(|| Point {
                time: instant(ms(*t)),
                value,
            })
        })
        .collect()
}

fn in_query(metric: &str, e: PluginError) -> PluginError {
    match e {
        PluginError::Permanent(m) => PluginError::Permanent(format!("{metric}: {m}")),
        PluginError::Transient(m) => PluginError::Transient(format!("{metric}: {m}")),
        PluginError::Stopped => PluginError::Stopped,
    }
}

/// How requests authenticate.
enum Auth {
    None,
    Bearer(String),
    Basic(String, Option<String>),
}

/// One Prometheus server.
struct Server {
    client: reqwest::Client,
    /// Ends with `/`.
    base: Url,
    auth: Auth,
}

/// Prometheus's answer envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Value,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// A range query's answer.
#[derive(Debug, Deserialize)]
struct Matrix {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<RangeSeries>,
}

#[derive(Debug, Deserialize)]
struct RangeSeries {
    #[serde(default)]
    metric: HashMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

impl Server {
    /// The series of `expression` evaluated at every `step` from `from` to `to` (milliseconds).
    async fn query_range(
        &self,
        expression: &str,
        (from, to): (i64, i64),
        step: i64,
        cancel: &CancellationToken,
    ) -> Result<Vec<RangeSeries>, PluginError> {
        let seconds = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
        let data = self
            .get(
                "api/v1/query_range",
                &[
                    ("query", expression),
                    ("start", &seconds(from)),
                    ("end", &seconds(to)),
                    ("step", &seconds(step)),
                ],
                cancel,
            )
            .await?;
        let matrix: Matrix = serde_json::from_value(data).map_err(|e| {
            PluginError::Permanent(format!("the answer is not a range query's: {e}"))
        })?;
        if matrix.result_type != "matrix" {
            return Err(PluginError::Permanent(format!(
                "the answer is a {}, not a matrix",
                matrix.result_type
            )));
        }
        Ok(matrix.result)
    }

    /// GETs `path` under the base URL: the answer's `data` when its status is `success`.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        cancel: &CancellationToken,
    ) -> Result<Value, PluginError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| PluginError::Permanent(format!("credentials.url: {e}")))?;
        let mut request = self.client.get(url).query(query);
        request = match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic(user, password) => request.basic_auth(user, password.as_deref()),
        };
        let call = async {
            let response = request.send().await.map_err(network)?;
            let status = response.status();
            let body = response.bytes().await.map_err(network)?;
            Ok::<_, PluginError>((status, body))
        };
        let (status, body) = tokio::select! {
            () = cancel.cancelled() => return Err(PluginError::Stopped),
            answer = call => answer?,
        };
        let envelope: Option<Envelope> = serde_json::from_slice(&body).ok();
        match envelope {
            Some(e) if status.is_success() && e.status == "success" => Ok(e.data),
            envelope => Err(refusal(status, envelope.as_ref())),
        }
    }
}

/// A failed call: transient when the server may answer later (5xx, 429), permanent otherwise
/// (a bad query, refused credentials, a URL that is not a Prometheus API). The message keeps
/// the status and, from an answer in Prometheus's own format, its error type and message;
/// any other body is not shown.
fn refusal(status: StatusCode, envelope: Option<&Envelope>) -> PluginError {
    let mut message = format!("Prometheus answered HTTP {status}");
    match envelope.and_then(|e| e.error.as_deref()) {
        Some(error) => {
            let kind = envelope
                .and_then(|e| e.error_type.as_deref())
                .unwrap_or("error");
            let mut error = error.to_owned();
            if error.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
                error.push('…');
            }
            message.push_str(&format!(": {kind}: {error}"));
        }
        None if status.is_success() => {
            message.push_str(
                ", but not in the format of Prometheus's HTTP API: is `url` the server's base URL?",
            );
        }
        None if status.is_redirection() => {
            message.push_str(" (a redirect, which is not followed: give the URL it leads to)");
        }
        None => {}
    }
    match status.as_u16() {
        401 | 403 => message.push_str(" (check the credentials)"),
        404 => message.push_str(" (is `url` the server's base URL?)"),
        _ => {}
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        PluginError::Transient(message)
    } else {
        PluginError::Permanent(message)
    }
}

/// A call that got no answer: the server may be back later.
fn network(e: reqwest::Error) -> PluginError {
    let mut message = if e.is_timeout() {
        "Prometheus did not answer in time".to_owned()
    } else {
        "Prometheus could not be reached".to_owned()
    };
    // The sources say why (refused, reset, DNS) without the URL, which the top error repeats.
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    PluginError::Transient(message)
}

#[cfg(test)]
mod tests {
    use gleaner_common::id::ResourceId;

    use super::*;

    fn target(key: &str, name: Option<&str>, data: Value) -> Target {
        Target {
            id: ResourceId::from(uuid::Uuid::now_v7()),
            resource_type: "compute.instance".into(),
            resource_key: key.into(),
            name: name.map(Into::into),
            region: None,
            data,
        }
    }

    #[test]
    fn label_names_follow_prometheus_grammar() {
        for ok in ["instance", "host", "_x", "a1_b2", "__name__"] {
            assert!(LabelName::parse("options.label", ok).is_ok(), "{ok}");
        }
        let injections = [
            ("", "empty"),
            ("1abc", "starts with a digit"),
            ("instance\"}) or vector(1", "closes the grouping"),
            ("instance) or (up", "a parenthesis"),
            ("in stance", "a space"),
            ("host,job", "a second label"),
            ("hôte", "not ASCII"),
            ("a-b", "a dash"),
        ];
        for (bad, why) in injections {
            let e = LabelName::parse("options.label", bad).expect_err(why);
            assert_eq!(e.field, "options.label", "{why}");
        }
        assert!(LabelName::parse("options.label", &"a".repeat(129)).is_err());
        // The schema refuses what the type refuses: the API answers 400 before a worker runs.
        let info = Prometheus::new(Arc::new(Access::default())).info;
        for (bad, why) in injections {
            let refused = info
                .validate_options(&json!({"resource_types": ["compute.instance"], "label": bad}))
                .expect_err(why);
            assert_eq!(refused[0].field, "options.label", "{why}");
        }
    }

    #[test]
    fn ports_are_stripped_from_host_and_port_only() {
        let cases = [
            ("10.0.0.5:9100", "10.0.0.5"),
            ("node-1.example:9100", "node-1.example"),
            ("[fd00::5]:9100", "fd00::5"),
            ("10.0.0.5", "10.0.0.5"),
            ("fd00::5", "fd00::5"),
            ("host:", "host:"),
            ("host:http", "host:http"),
            ("", ""),
        ];
        for (value, want) in cases {
            assert_eq!(strip_port(value), want, "{value}");
        }
    }

    #[test]
    fn fields_are_read_from_key_name_or_data() {
        let t = target(
            "i-0abc",
            Some("web-1"),
            json!({"private_ip_address": "10.0.0.5", "net": {"ips": ["10.1.0.1", "10.1.0.2"], "port": 9100}, "tags": null}),
        );
        let read = |raw: &str| {
            MatchField::parse("options.match", raw)
                .expect(raw)
                .value_of(&t)
        };
        assert_eq!(read("resource_key").as_deref(), Some("i-0abc"));
        assert_eq!(read("name").as_deref(), Some("web-1"));
        assert_eq!(read("data.private_ip_address").as_deref(), Some("10.0.0.5"));
        assert_eq!(read("data.net.ips.1").as_deref(), Some("10.1.0.2"));
        assert_eq!(read("data.net.port").as_deref(), Some("9100"));
        assert_eq!(read("data.net"), None, "an object is not a value");
        assert_eq!(read("data.tags"), None);
        assert_eq!(read("data.missing.deeper"), None);
        assert_eq!(read("data.net.ips.9"), None);
        let nameless = target("i-1", None, json!({}));
        assert_eq!(MatchField::Name.value_of(&nameless), None);
        for bad in ["", "id", "data", "data.", "data..x", "data.a b", "region"] {
            assert_eq!(
                MatchField::parse("options.match", bad)
                    .expect_err(bad)
                    .field,
                "options.match"
            );
        }
    }

    #[test]
    fn resources_sharing_a_value_each_get_the_series() {
        let since = instant(0);
        let targets: Vec<MetricTarget> = [
            target("a", Some("web"), json!({})),
            target("b", Some("web"), json!({})),
            target("c", Some("db"), json!({})),
            target("d", None, json!({})),
        ]
        .into_iter()
        .map(|resource| MetricTarget {
            resource,
            since,
            watermarks: std::collections::HashMap::new(),
            floor: since,
        })
        .collect();
        let by = index(&targets, &MatchField::Name);
        let keys = |v: &str| -> Vec<&str> {
            by.get(v)
                .into_iter()
                .flatten()
                .map(|t| t.resource.resource_key.as_str())
                .collect()
        };
        assert_eq!(keys("web"), ["a", "b"]);
        assert_eq!(keys("db"), ["c"]);
        assert_eq!(by.len(), 2, "a resource without a name matches nothing");
    }

    #[test]
    fn chunks_cover_the_range_within_the_point_limit() {
        let step = 5_000;
        assert_eq!(chunks(0, 0, step), [(0, 0)]);
        assert!(chunks(10, 5, step).is_empty());
        let day = 86_400_000;
        let pieces = chunks(0, day, step);
        // 17,281 evaluations: one chunk of 11,000 and one of the rest.
        assert_eq!(pieces, [(0, 10_999 * step), (11_000 * step, day)]);
        let mut next = 0;
        for (from, to) in &pieces {
            assert_eq!(*from, next, "no gap and no overlap");
            let evaluations = (to - from) / step + 1;
            assert!(evaluations <= MAX_POINTS, "{evaluations} points");
            next = to + step;
        }
        assert_eq!(next, day + step);
        // A day of minutes is one request.
        assert_eq!(chunks(0, day, 60_000).len(), 1);
    }

    #[test]
    fn no_value_is_left_out_and_times_are_milliseconds() {
        let values = vec![
            (1_700_000_000.0, "1.5".to_owned()),
            (1_700_000_005.0, "NaN".to_owned()),
            (1_700_000_010.0, "+Inf".to_owned()),
            (1_700_000_015.0, "-Inf".to_owned()),
            (1_700_000_020.5, "2e3".to_owned()),
            (1_700_000_025.0, "junk".to_owned()),
        ];
        let got = points(&values);
        assert_eq!(
            got,
            [
                Point {
                    time: instant(1_700_000_000_000),
                    value: 1.5
                },
                Point {
                    time: instant(1_700_000_020_500),
                    value: 2000.0
                },
            ]
        );
    }

    #[test]
    fn errors_say_whether_to_try_again() {
        let envelope = Envelope {
            status: "error".into(),
            data: Value::Null,
            error_type: Some("bad_data".into()),
            error: Some("1:10: parse error: unexpected \"}\"".into()),
        };
        let bad = refusal(StatusCode::BAD_REQUEST, Some(&envelope));
        assert!(
            matches!(&bad, PluginError::Permanent(m) if m.contains("400") && m.contains("bad_data: 1:10: parse error")),
            "{bad:?}"
        );
        assert!(matches!(
            refusal(StatusCode::SERVICE_UNAVAILABLE, None),
            PluginError::Transient(_)
        ));
        assert!(matches!(
            refusal(StatusCode::TOO_MANY_REQUESTS, None),
            PluginError::Transient(_)
        ));
        assert!(matches!(
            refusal(StatusCode::UNAUTHORIZED, None),
            PluginError::Permanent(m) if m.contains("credentials")
        ));
        assert!(matches!(
            refusal(StatusCode::OK, None),
            PluginError::Permanent(m) if m.contains("base URL")
        ));
        let long = Envelope {
            error: Some("x".repeat(5000)),
            ..envelope
        };
        let PluginError::Permanent(m) = refusal(StatusCode::UNPROCESSABLE_ENTITY, Some(&long))
        else {
            panic!("a 422 is permanent");
        };
        assert!(m.len() < MAX_ERROR + 100, "{} bytes", m.len());
    }

    #[test]
    fn options_default_and_refuse() {
        let p = Prometheus::new(Arc::new(Access::default()));
        let opts = p
            .options(&json!({"resource_types": ["compute.instance"]}))
            .expect("defaults");
        assert_eq!(opts.label.as_str(), "instance");
        assert_eq!(opts.field, MatchField::Name);
        assert_eq!((opts.step_ms, opts.rate_window_seconds), (60_000, 300));
        assert_eq!(opts.queries.len(), QUERIES.len());
        assert!(!opts.strip_port);
        let cpu = opts.queries[0].expression(&opts.label, 300);
        assert_eq!(
            cpu,
            r#"100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[300s])))"#
        );
        for (options, field) in [
            (json!({}), "options"),
            (json!({"resource_types": []}), "options.resource_types"),
            (
                json!({"resource_types": ["x"], "step_seconds": 0}),
                "options.step_seconds",
            ),
            (
                json!({"resource_types": ["x"], "metrics": ["cpu"]}),
                "options.metrics.0",
            ),
            (
                json!({"resource_types": ["x"], "match": "data."}),
                "options.match",
            ),
            (
                json!({"resource_types": ["x"], "url": "http://x"}),
                "options",
            ),
        ] {
            let refused = p.info.validate_options(&options).expect_err(field);
            assert_eq!(refused[0].field, field, "{options}");
        }
        assert_eq!(
            p.metric_targets(&json!({"resource_types": ["compute.instance", "*"]}))
                .expect("valid"),
            TargetScope::Project(vec!["compute.instance".into(), "*".into()])
        );
    }
}
