//! A local AWS for the AWS plugins' tests: a moto server on a free port, seeded through
//! `aws_seed.py` (boto3, which moto brings), and a proxy that throttles or denies a share of
//! the requests on their way to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/aws_seed.py");

/// A moto server on a free local port, stopped when dropped.
pub struct Moto {
    pub url: String,
    _child: tokio::process::Child,
}

impl Moto {
    pub async fn start() -> anyhow::Result<Self> {
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
    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
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

    /// Runs one command of `aws_seed.py` against this server (its `endpoint` is filled in).
    pub async fn run(&self, mut command: Value) -> anyhow::Result<Value> {
        command["endpoint"] = Value::String(self.url.clone());
        let mut child = tokio::process::Command::new("python3")
            .arg(SEED)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(command.to_string().as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        anyhow::ensure!(
            out.status.success(),
            "aws_seed.py {}: {}",
            command["do"],
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Queues Cost Explorer answers: each new GetCostAndUsage request takes the next one
    /// (moto ignores the query, and answers a request it saw before as it did then).
    pub async fn queue_costs(&self, results: Vec<Value>) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!(
                "{}/moto-api/static/ce/cost-and-usage-results",
                self.url
            ))
            .json(&serde_json::json!({"results": results}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// What the proxy does to the requests it passes.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every `throttle_every`-th request is answered with a throttling error (400
    /// `ThrottlingException`, or 503, alternately) instead of being passed; 0 passes all.
    pub throttle_every: AtomicU64,
    /// Requests signed for this region are refused as AccessDenied.
    pub denied_region: std::sync::Mutex<Option<String>>,
    seen: AtomicU64,
    /// Requests answered with a fault.
    pub injected: AtomicU64,
    in_flight: AtomicU64,
    /// The most requests that were in flight at once.
    pub most_in_flight: AtomicU64,
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a Faults);

impl<'a> InFlight<'a> {
    fn new(faults: &'a Faults) -> Self {
        let now = faults.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        faults.most_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(faults)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A proxy in front of moto, stopped when dropped.
pub struct FaultProxy {
    pub url: String,
    pub faults: Arc<Faults>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let faults = Arc::new(Faults::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let state = (faults.clone(), target.to_owned(), reqwest::Client::new());
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (faults, target, http) = state.clone();
                async move { pass(&faults, &target, &http, method, uri, headers, body).await }
            },
        );
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
        });
        Ok(Self { url, faults, stop })
    }
}

/// The signing scope of a request: (region, service).
fn scope(headers: &HeaderMap) -> (String, String) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let credential = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split(',').next())
        .unwrap_or_default();
    let parts: Vec<&str> = credential.split('/').collect();
    (
        parts.get(2).copied().unwrap_or_default().to_owned(),
        parts.get(3).copied().unwrap_or_default().to_owned(),
    )
}

/// An error as the request's protocol writes it.
fn error(headers: &HeaderMap, service: &str, status: StatusCode, code: &str) -> Response {
    let message = "injected by the test proxy";
    let json = headers.contains_key("x-amz-target") || matches!(service, "lambda" | "eks");
    let (content_type, body) = if json {
        (
            "application/x-amz-json-1.1",
            serde_json::json!({"__type": code, "message": message}).to_string(),
        )
    } else if service == "ec2" {
        (
            "text/xml",
            format!(
                "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>proxy</RequestID></Response>"
            ),
        )
    } else if service == "s3" {
        (
            "application/xml",
            format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>"),
        )
    } else {
        (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>proxy</RequestId></ErrorResponse>"
            ),
        )
    };
    (
        status,
        [("content-type", content_type), ("x-amzn-errortype", code)],
        body,
    )
        .into_response()
}

async fn pass(
    faults: &Faults,
    target: &str,
    http: &reqwest::Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _counted = InFlight::new(faults);
    let (region, service) = scope(&headers);
    let denied = faults
        .denied_region
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if denied.as_deref() == Some(region.as_str()) {
        faults.injected.fetch_add(1, Ordering::Relaxed);
        let code = if service == "ec2" {
            "UnauthorizedOperation"
        } else {
            "AccessDenied"
        };
        return error(&headers, &service, StatusCode::FORBIDDEN, code);
    }
    let every = faults.throttle_every.load(Ordering::Relaxed);
    let n = faults.seen.fetch_add(1, Ordering::Relaxed);
    if every > 0 && n % every == every - 1 {
        let injected = faults.injected.fetch_add(1, Ordering::Relaxed);
        return if injected.is_multiple_of(2) {
            let code = if service == "s3" {
                "SlowDown"
            } else {
                "ThrottlingException"
            };
            let status = if service == "s3" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            error(&headers, &service, status, code)
        } else {
            error(
                &headers,
                &service,
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
            )
        };
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http.request(method, format!("{target}{path}")).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut out = Response::builder().status(status);
            for (name, value) in answer.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    out = out.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            out.body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
