//! The test harness: each test gets its own world, in one of two [`Mode`]s.
//!
//! - Distributed, on the real services: a PostgreSQL schema `t_<unix time>_<random>` in the
//!   `gleaner_test` database, with the migrations applied (every connection of the test uses it
//!   through its search path); RabbitMQ exchanges and queues prefixed with the same name; the
//!   API on `127.0.0.1:0` and workers, in-process, started by the same wiring as the binary.
//! - Standalone: `gleaner standalone`'s runtime in-process, on a data directory of its own
//!   under the system's temporary directory.
//!
//! Dropping the environment stops its components and removes the schema and the queues, or
//! the data directory. What a crashed run left behind is swept at the next start once old.
//!
//! [`in_both_modes!`] turns one test function into a test per mode.

pub mod aws;
pub mod browser;
pub mod cloudforet;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use gleaner_common::config::Settings;
use gleaner_common::crypto::SecretKey;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Schemas of crashed runs older than this are dropped at start.
const SWEEP_AFTER_SECS: u64 = 30 * 60;

fn database_url() -> String {
    std::env::var("GLEANER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/gleaner_test".into())
}

/// The URL with the test's name as `application_name`, so clean-up can find and end any
/// connection the test left behind before dropping its schema.
fn tagged(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

fn amqp_url() -> String {
    std::env::var("GLEANER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Which runtime a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// API, workers and relays on PostgreSQL and RabbitMQ.
    Distributed,
    /// `gleaner standalone`: one process on a SQLite file.
    Standalone,
}

/// Defines, for each `name`, the tests `name::distributed` and `name::standalone`, which run
/// `async fn name(mode: Mode) -> anyhow::Result<()>` in that mode.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() -> anyhow::Result<()> {
                super::$name($crate::support::Mode::Distributed).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() -> anyhow::Result<()> {
                super::$name($crate::support::Mode::Standalone).await
            }
        }
    )*};
}

/// How to start an environment.
#[derive(Clone, Debug)]
pub struct Options {
    pub workers: usize,
    pub batch_size: usize,
    /// Changes the settings last, before anything starts.
    pub tune: fn(&mut Settings),
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            batch_size: 5_000,
            tune: |_| {},
        }
    }
}

/// Leases, retries and the reaper on a test's time scale: a lost worker's task runs again
/// within about a second and a half, a retry waits 200 ms.
/// What the tests' collectors read and call: the FOCUS sample, files written under the
/// system's temporary directory, and local S3 servers on any port.
pub fn allow_test_files_and_endpoints(s: &mut Settings) {
    s.files.allow = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data").into(),
        std::env::temp_dir(),
    ];
    s.network.allow_endpoints = vec!["http://127.0.0.1:*".into()];
}

/// The allowlists of `s` as the environment gives them to a process.
pub fn allowlist_vars(s: &Settings) -> [(&'static str, String); 2] {
    let dirs: Vec<String> = s
        .files
        .allow
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    [
        ("GLEANER_FILES__ALLOW", dirs.join(",")),
        (
            "GLEANER_NETWORK__ALLOW_ENDPOINTS",
            s.network.allow_endpoints.join(","),
        ),
    ]
}

pub fn quick_recovery(s: &mut Settings) {
    s.worker.lease = Duration::from_secs(1);
    s.worker.retry_delay = Duration::from_millis(200);
    s.worker.retry_max_delay = Duration::from_millis(400);
    s.worker.reap_interval = Duration::from_millis(200);
}

/// An HTTP answer: status and JSON body (`Null` when empty, a string for a `text/plain` body
/// such as `/metrics`).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

/// An HTTP client of one Gleaner's API, shared by the in-process environments and the tests
/// that run the binary.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    /// The API key every request carries, if any.
    key: Option<String>,
}

impl Api {
    /// A client of the API at `base` (`http://host:port`), with no API key.
    #[must_use]
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
            key: None,
        }
    }

    /// The same client, sending `key` as `Authorization: Bearer <key>`.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same client with no key.
    #[must_use]
    pub fn without_key(mut self) -> Self {
        self.key = None;
        self
    }

    /// A client of another API (at `base`) with this one's key.
    #[must_use]
    pub fn at(&self, base: String) -> Self {
        Self {
            base,
            ..self.clone()
        }
    }

    /// The key this client sends.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// Polls `/readyz` until it answers 200 (20 s at most).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the API did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let r = self.authorized(req).send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = r.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else if content_type.starts_with("text/plain") {
            Value::String(String::from_utf8(bytes.to_vec()).context("a text body in UTF-8")?)
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok(Answer {
            status,
            content_type,
            body,
            headers,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Answer> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Answer> {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// A request with any method and no body.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Answer> {
        self.send(self.http.request(method, format!("{}{path}", self.base)))
            .await
    }

    /// POSTs a raw body with a content type.
    /// `POST path` with a JSON body and extra headers.
    pub async fn post_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &'static str,
    ) -> anyhow::Result<Answer> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// Opens a server-sent event stream, sending `last_event_id` as `Last-Event-ID`; insists on
    /// a 200 `text/event-stream` answer.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<EventReader> {
        let mut req = self.authorized(self.http.get(format!("{}{path}", self.base)));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await?;
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if r.status() != StatusCode::OK || !content_type.starts_with("text/event-stream") {
            bail!(
                "GET {path} answered {} {content_type}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(EventReader {
            body: r.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: Vec::new(),
            comments: 0,
        })
    }

    /// POSTs and insists on `expect`, returning the body.
    pub async fn create(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let a = self.post(path, body).await?;
        if a.status != StatusCode::CREATED {
            bail!("POST {path} answered {}: {}", a.status, a.body);
        }
        Ok(a.body)
    }

    /// A project, `n` demo service accounts in it, and a demo collector with `options`.
    /// Returns the collector's id.
    pub async fn demo_collector(&self, accounts: usize, options: Value) -> anyhow::Result<String> {
        let project = self
            .create(
                "/v1/projects",
                json!({"name": format!("project-{}", rand::random::<u16>())}),
            )
            .await?;
        for i in 0..accounts {
            self.create("/v1/service-accounts", json!({"name": format!("demo-{i}"), "provider": "demo", "project_id": project["id"], "credentials": {}}))
                .await?;
        }
        let c = self.create("/v1/collectors", json!({"name": format!("demo-{}", rand::random::<u32>()), "plugin_id": "demo", "options": options})).await?;
        Ok(c["id"].as_str().context("collector id")?.to_owned())
    }

    /// Starts a collection; returns its job's id.
    pub async fn start_collect(&self, collector: &str) -> anyhow::Result<String> {
        let a = self
            .post(&format!("/v1/collectors/{collector}/collect"), json!(null))
            .await?;
        if a.status != StatusCode::ACCEPTED {
            bail!("collect answered {}: {}", a.status, a.body);
        }
        Ok(a.body["job_id"].as_str().context("job_id")?.to_owned())
    }

    /// Starts a collection and waits for its job to end; returns the job.
    pub async fn collect(&self, collector: &str) -> anyhow::Result<Value> {
        let job = self.start_collect(collector).await?;
        self.wait_job(&job).await
    }

    /// The error of a job's first task (a job of one task says why it failed there).
    pub async fn first_task_error(&self, job: &Value) -> anyhow::Result<String> {
        let id = job["id"].as_str().context("job id")?;
        let tasks = self.get(&format!("/v1/jobs/{id}/tasks")).await?;
        Ok(tasks.body["items"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Polls a job until it is terminal (60 s at most).
    pub async fn wait_job(&self, job: &str) -> anyhow::Result<Value> {
        self.wait_job_within(job, Duration::from_secs(60)).await
    }

    /// Polls a job until it is terminal, for `limit` at most.
    pub async fn wait_job_within(&self, job: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let a = self.get(&format!("/v1/jobs/{job}")).await?;
            let status = a.body["status"].as_str().unwrap_or("");
            if ["SUCCESS", "FAILURE", "CANCELED"].contains(&status) {
                return Ok(a.body);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {job} did not finish: {}", a.body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One server-sent event.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    /// The `data` lines, joined with newlines.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.data).with_context(|| format!("event data: {}", self.data))
    }
}

/// Reads a `text/event-stream` response as it arrives.
pub struct EventReader {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: Vec<u8>,
    /// Comments received so far (keep-alives).
    pub comments: usize,
}

impl EventReader {
    /// The next event; `None` when the server ended the stream. Fails after `within`.
    pub async fn next_within(&mut self, within: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(e) = self.parse(&String::from_utf8_lossy(&block)) {
                    return Ok(Some(e));
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => bail!("no event within {within:?}"),
                Ok(None) => return Ok(None),
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk?),
            }
        }
    }

    /// One event block; `None` for a block of comments only.
    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let (mut event, mut id, mut data) = (String::new(), String::new(), Vec::new());
        let mut fields = 0;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            fields += 1;
            match name {
                "event" => event = value.to_owned(),
                "id" => id = value.to_owned(),
                "data" => data.push(value),
                _ => {}
            }
        }
        (fields > 0).then(|| SseEvent {
            event,
            id,
            data: data.join("\n"),
        })
    }
}

/// The string `key` of each object in the array `items` (e.g. every `field` of a problem's
/// `errors`).
#[must_use]
pub fn strs<'a>(items: &'a Value, key: &str) -> Vec<&'a str> {
    items
        .as_array()
        .map(|a| a.iter().filter_map(|i| i[key].as_str()).collect())
        .unwrap_or_default()
}

/// The fields a problem+json answer names in `errors`.
pub fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect()
}

/// One test's isolated Gleaner; its API client's methods are the environment's own.
pub struct TestEnv {
    pub mode: Mode,
    pub name: String,
    pub settings: Settings,
    pub db: DatabaseConnection,
    pub api: Api,
    shutdown: CancellationToken,
    components: Vec<JoinHandle<anyhow::Result<()>>>,
    /// The standalone mode's data directory.
    data_dir: Option<PathBuf>,
    /// Distributed workers started.
    workers: usize,
}

/// Starts the API and `workers` workers on `db`: the components and the API's base URL.
async fn spawn_distributed(
    settings: &Settings,
    db: &DatabaseConnection,
    workers: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<JoinHandle<anyhow::Result<()>>>, String)> {
    let mut components = Vec::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    {
        let (settings, db, stop) = (settings.clone(), db.clone(), shutdown.clone());
        components.push(tokio::spawn(async move {
            gleaner::app::serve_api(&settings, db, listener, stop).await
        }));
    }
    for n in 0..workers {
        components.push(spawn_worker(&worker_named(settings, n), shutdown.clone()).await?);
    }
    Ok((components, base))
}

/// Starts the standalone runtime on the data directory `path`: the component, the API's base
/// URL and the database's URL.
async fn spawn_standalone(
    settings: &Settings,
    path: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<(JoinHandle<anyhow::Result<()>>, String, String)> {
    let dir = gleaner::standalone::DataDir::open(path)?;
    let db_url = dir.database_url();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let component = {
        let (settings, stop) = (settings.clone(), shutdown.clone());
        tokio::spawn(async move { gleaner::standalone::run(&settings, &dir, listener, stop).await })
    };
    Ok((component, base, db_url))
}

impl TestEnv {
    /// The API and one worker (distributed), or the standalone runtime.
    pub async fn start(mode: Mode) -> anyhow::Result<Self> {
        Self::start_with(mode, Options::default()).await
    }

    pub async fn start_with(mode: Mode, opts: Options) -> anyhow::Result<Self> {
        gleaner_common::telemetry::init_for_tests();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let name = format!("t_{now}_{:08x}", rand::random::<u32>());
        let mut settings = Settings {
            database_url: tagged(&database_url(), &name),
            amqp_url: amqp_url(),
            ..Settings::default()
        };
        settings.database.schema = Some(name.clone());
        settings.database.max_connections = 6;
        settings.amqp.prefix = name.clone();
        settings.redis.prefix = name.clone();
        // The example plugin and the tests' misbehaving one are under the repository.
        settings.plugins.dir = Some(env!("CARGO_MANIFEST_DIR").into());
        settings.secret_key = Some(SecretKey::generate().to_hex());
        allow_test_files_and_endpoints(&mut settings);
        settings.outbox.poll_interval = Duration::from_millis(100);
        // Event streams see a job's intermediate states even when it runs for a second only.
        settings.api.events_poll_interval = Duration::from_millis(50);
        // Tests walk every route without a key from one address, far past what a client may
        // fail in a second; the limit of failures has a test of its own (limits.rs).
        settings.api.failed_auth_per_second = 0;
        settings.worker.batch_size = opts.batch_size;
        settings.worker.shutdown_grace = Duration::from_secs(5);
        // The standalone mode's in-process worker; distributed workers are named per worker.
        settings.worker.name = Some(name.clone());
        (opts.tune)(&mut settings);
        // Tests run side by side in one process: each worker's metrics listener takes a port of
        // its own.
        settings.worker.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        match mode {
            Mode::Distributed => Self::distributed(name, settings, opts, now).await,
            Mode::Standalone => Self::standalone(name, settings, now).await,
        }
    }

    async fn standalone(name: String, settings: Settings, now: u64) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join("gleaner-it");
        sweep_dirs(&root, now);
        let path = root.join(&name);
        let shutdown = CancellationToken::new();
        let (component, base, db_url) = spawn_standalone(&settings, &path, &shutdown).await?;
        let api = Api::new(base);
        // Connect only once the runtime has created and migrated the database: a connection
        // opened while the file is being created can find it locked.
        let db = match api.wait_ready().await {
            Ok(()) => gleaner_common::db::connect(&db_url, &Default::default())
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        // The first start wrote the default domain's admin key, before it served.
        let key = db.and_then(|db| {
            let key = std::fs::read_to_string(path.join("admin.key"))
                .context("the first start writes admin.key")?;
            Ok((db, key.trim().to_owned()))
        });
        let (db, key) = match key {
            Ok(found) => found,
            Err(e) => {
                shutdown.cancel();
                tokio::time::timeout(Duration::from_secs(15), component)
                    .await
                    .ok();
                std::fs::remove_dir_all(&path).ok();
                return Err(e);
            }
        };
        let env = Self {
            mode: Mode::Standalone,
            name,
            db,
            settings,
            api: api.with_key(key),
            shutdown,
            components: vec![component],
            data_dir: Some(path),
            workers: 1,
        };
        Ok(env)
    }

    async fn distributed(
        name: String,
        settings: Settings,
        opts: Options,
        now: u64,
    ) -> anyhow::Result<Self> {
        gleaner_common::db::ensure_database(&settings.database_url).await?;
        sweep(&settings, now).await?;
        let db = gleaner::app::database(&settings, true)
            .await
            .context("preparing the test schema")?;

        let shutdown = CancellationToken::new();
        let (components, base) = spawn_distributed(&settings, &db, opts.workers, &shutdown).await?;
        let key = gleaner_common::store::api_key::create_admin_key(
            &db,
            gleaner_common::id::DomainId::DEFAULT,
        )
        .await?;
        let env = Self {
            mode: Mode::Distributed,
            name,
            settings,
            db,
            api: Api::new(base).with_key(key.expose()),
            shutdown,
            components,
            data_dir: None,
            workers: opts.workers,
        };
        env.wait_ready().await?;
        Ok(env)
    }

    /// The standalone mode's data directory (`None` in the distributed mode).
    #[must_use]
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// Stops the components as dropping the environment does, keeping the store: the store
    /// can then be worked on with nothing running (the standalone mode's data directory is
    /// free), and [`TestEnv::start_again`] starts them again.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        stop_components(&self.name, std::mem::take(&mut self.components)).await;
    }

    /// Starts the components again on the same store after [`TestEnv::stop`], with the settings
    /// changed by `change`; the API gets a new address.
    pub async fn start_again(&mut self, change: impl FnOnce(&mut Settings)) -> anyhow::Result<()> {
        anyhow::ensure!(self.components.is_empty(), "stop the environment first");
        change(&mut self.settings);
        self.shutdown = CancellationToken::new();
        let base = match &self.data_dir {
            Some(path) => {
                let (component, base, _) =
                    spawn_standalone(&self.settings, path, &self.shutdown).await?;
                self.components.push(component);
                base
            }
            None => {
                let (components, base) =
                    spawn_distributed(&self.settings, &self.db, self.workers, &self.shutdown)
                        .await?;
                self.components = components;
                base
            }
        };
        // The same key: it is in the store.
        self.api = self.api.at(base);
        self.api.wait_ready().await
    }

    /// Stops the environment and starts it again with the settings changed by `change`.
    pub async fn restart(&mut self, change: impl FnOnce(&mut Settings)) -> anyhow::Result<()> {
        self.stop().await;
        self.start_again(change).await
    }

    /// A single number from SQL (`SELECT count(*) ...`) in the test's store.
    pub async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        scalar(&self.db, sql).await
    }

    /// Writes a `task.requested` message (of a task that does not exist) into the outbox,
    /// changed by `set` (the `SET` clause of an `UPDATE outbox`) in the same transaction, so no
    /// relay sees it before the change.
    pub async fn plant_message(&self, set: &str) -> anyhow::Result<()> {
        use gleaner_common::envelope::{Envelope, TaskRequested};
        use gleaner_common::id::{DomainId, JobId, TaskId};
        use gleaner_common::model::JobKind;
        use sea_orm::TransactionTrait as _;
        let message = Envelope::new(
            DomainId::DEFAULT,
            JobKind::Inventory,
            JobId::new(),
            Some(TaskId::new()),
            1,
            TaskRequested {},
        );
        let txn = self.db.begin().await?;
        gleaner_common::store::outbox::insert(&txn, &message).await?;
        txn.execute_unprepared(&format!(
            "UPDATE outbox SET {set} WHERE id = (SELECT max(id) FROM outbox)"
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Waits (2 minutes at most) for the outbox row the broker refused until it was marked
    /// dead: its refusals and the broker's reason.
    pub async fn dead_outbox_row(&self) -> anyhow::Result<(Option<i64>, String)> {
        // Refused five times, 1 + 3 + 9 + 27 s apart at least.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let dead = self
                .json_column(
                    "SELECT jsonb_build_array(publish_attempts, last_error) FROM outbox \
                     WHERE dead_at IS NOT NULL",
                )
                .await?;
            if let Some(row) = dead.first() {
                return Ok((
                    row[0].as_i64(),
                    row[1].as_str().unwrap_or_default().to_owned(),
                ));
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the refused row was never marked dead: {:?}",
                self.json_column(
                    "SELECT jsonb_build_array(id, publish_attempts, last_error) FROM outbox"
                )
                .await?
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first column of every row, as JSON (a `jsonb` column, or JSON text in SQLite).
    pub async fn json_column(&self, sql: &str) -> anyhow::Result<Vec<Value>> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                self.db.get_database_backend(),
                sql.to_owned(),
            ))
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get_by_index::<Value>(0)?))
            .collect()
    }

    /// A UUID as an SQL literal of the store: text in PostgreSQL, a 16-byte blob in SQLite
    /// (as SeaORM binds it there).
    pub fn uuid_sql(&self, id: &str) -> anyhow::Result<String> {
        let id = uuid::Uuid::parse_str(id).with_context(|| format!("`{id}` is not a UUID"))?;
        Ok(match self.mode {
            Mode::Distributed => format!("'{id}'"),
            Mode::Standalone => format!("X'{}'", id.simple()),
        })
    }
}

/// The settings of the environment's worker `n`, named `<environment>-<n>`: a worker's
/// name is in its tasks' leases and its metrics' `worker` label.
#[must_use]
pub fn worker_named(settings: &Settings, n: usize) -> Settings {
    let mut s = settings.clone();
    s.worker.name = Some(format!("{}-{n}", settings.amqp.prefix));
    s
}

/// Starts one more worker on the environment's settings.
pub async fn spawn_worker(
    settings: &Settings,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let db = gleaner::app::database(settings, false).await?;
    let settings = settings.clone();
    Ok(tokio::spawn(async move {
        gleaner::app::run_worker(&settings, db, stop).await
    }))
}

/// Where [`worker_process`] writes the output of the worker named `name`.
#[must_use]
pub fn worker_log(env: &TestEnv, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}.log", env.name))
}

/// Starts `gleaner worker` as a process of its own on the environment's installation, named
/// `name`, its stdout and stderr in [`worker_log`]. Its settings are the defaults but for the
/// environment's reaper interval and `extra` (environment variables, set last). The process is
/// killed when the handle is dropped.
///
/// # Errors
/// The log file cannot be created or the binary cannot start.
pub fn worker_process(
    env: &TestEnv,
    name: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    gleaner_process(env, "worker", name, extra)
}

/// A free port on the loopback interface.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `gleaner api` as a process of its own on the environment's store, listening on
/// `port`; its output goes to [`worker_log`] under `name`. Killed when the handle is dropped.
///
/// # Errors
/// The log file cannot be created or the binary cannot start.
pub fn api_process(
    env: &TestEnv,
    name: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    let listen = format!("127.0.0.1:{port}");
    let mut vars = vec![("GLEANER_LISTEN", listen.as_str())];
    vars.extend_from_slice(extra);
    gleaner_process(env, "api", name, &vars)
}

fn gleaner_process(
    env: &TestEnv,
    component: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    let s = &env.settings;
    let log = std::fs::File::create(worker_log(env, name))?;
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gleaner"))
        .arg(component)
        .env("GLEANER_DATABASE_URL", &s.database_url)
        .env(
            "GLEANER_DATABASE__SCHEMA",
            s.database.schema.as_deref().unwrap_or("public"),
        )
        .env("GLEANER_DATABASE__MAX_CONNECTIONS", "8")
        .env("GLEANER_AMQP_URL", &s.amqp_url)
        .env("GLEANER_AMQP__PREFIX", &s.amqp.prefix)
        .env("GLEANER_REDIS_URL", &s.redis_url)
        .env("GLEANER_REDIS__PREFIX", &s.redis.prefix)
        .env(
            "GLEANER_SECRET_KEY",
            s.secret_key.as_deref().unwrap_or_default(),
        )
        .env("GLEANER_WORKER__NAME", name)
        .envs(allowlist_vars(s))
        .env(
            "GLEANER_WORKER__REAP_INTERVAL",
            s.worker.reap_interval.as_millis().to_string(),
        )
        .env("GLEANER_LOG__FORMAT", "text")
        // A file, not a terminal: no colour codes in it.
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting gleaner {component}"))
}

/// A channel on the test's broker.
///
/// # Errors
/// RabbitMQ is unreachable.
pub async fn channel(env: &TestEnv) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let conn = gleaner_common::broker::connect(&env.settings.amqp_url, "gleaner-test").await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// Takes every message of the dead-letter queue: (reason header, body).
///
/// # Errors
/// RabbitMQ is unreachable, or the queue is not declared yet.
pub async fn dead_letters(
    env: &TestEnv,
    ch: &lapin::Channel,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(dead_letters_with_headers(env, ch)
        .await?
        .into_iter()
        .map(|(reason, body, _)| (reason, body))
        .collect())
}

/// The same, with the names of each message's headers.
///
/// # Errors
/// RabbitMQ is unreachable, or the queue is not declared yet.
pub async fn dead_letters_with_headers(
    env: &TestEnv,
    ch: &lapin::Channel,
) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    use lapin::options::BasicGetOptions;
    use lapin::types::AMQPValue;
    let names = gleaner_common::broker::Names::new(env.settings.amqp.prefix.clone());
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            names.dead_letter_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await?
    {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        let reason = match headers.inner().get(gleaner_common::broker::REASON_HEADER) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => format!("{other:?}"),
        };
        let keys = headers
            .inner()
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect();
        out.push((
            reason,
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            keys,
        ));
    }
    Ok(out)
}

impl Drop for TestEnv {
    /// Stops the components gracefully (so their broker connections close before their queues
    /// are deleted), then drops the test's schema and queues. Tests run on a multi-thread
    /// runtime, so `block_in_place` lets the other worker threads drive the shutdown.
    fn drop(&mut self) {
        self.shutdown.cancel();
        let components = std::mem::take(&mut self.components);
        let name = self.name.clone();
        let settings = self.settings.clone();
        let db = self.db.clone();
        let data_dir = self.data_dir.take();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                stop_components(&name, components).await;
                db.close().await.ok();
                if let Some(dir) = data_dir {
                    std::fs::remove_dir_all(&dir).ok();
                } else if let Err(e) = gleaner::app::remove_isolated(&settings, &name).await {
                    eprintln!("cleaning up {name}: {e:#}");
                }
            });
        });
    }
}

/// Waits for each component to stop (15 s at most, then aborts it).
async fn stop_components(name: &str, components: Vec<JoinHandle<anyhow::Result<()>>>) {
    for c in components {
        let abort = c.abort_handle();
        if tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .is_err()
        {
            eprintln!("{name}: a component did not stop within 15 s; aborting it");
            abort.abort();
        }
    }
}

/// Removes data directories of standalone tests older than [`SWEEP_AFTER_SECS`].
fn sweep_dirs(root: &std::path::Path, now: u64) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let created: Option<u64> = name.split('_').nth(1).and_then(|t| t.parse().ok());
        if created.is_some_and(|t| t + SWEEP_AFTER_SECS < now) {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
}

async fn admin(url: &str) -> anyhow::Result<DatabaseConnection> {
    let settings = gleaner_common::config::DatabaseSettings {
        max_connections: 1,
        schema: None,
    };
    Ok(gleaner_common::db::connect(url, &settings).await?)
}

/// Removes what tests older than [`SWEEP_AFTER_SECS`] left behind: a killed run cannot clean up
/// after itself, and leftover quorum queues cost RabbitMQ file descriptors.
async fn sweep(settings: &Settings, now: u64) -> anyhow::Result<()> {
    let db = admin(&settings.database_url).await?;
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%\\_%'".to_owned(),
        ))
        .await?;
    db.close().await?;
    for row in rows {
        let schema: String = row.try_get_by_index(0)?;
        let created: Option<u64> = schema.split('_').nth(1).and_then(|t| t.parse().ok());
        if created.is_some_and(|t| t + SWEEP_AFTER_SECS < now)
            && let Err(e) = gleaner::app::remove_isolated(settings, &schema).await
        {
            eprintln!("sweeping {schema}: {e:#}");
        }
    }
    Ok(())
}

impl std::ops::Deref for TestEnv {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A store alone, migrated and empty, with nothing running on it: a PostgreSQL schema of its
/// own (distributed) or a SQLite file of its own (standalone), removed on drop. For tests of
/// the store's transitions, which must see every row they write (a relay or a dispatcher
/// would take the outbox's).
pub struct TestStore {
    pub mode: Mode,
    pub db: DatabaseConnection,
    name: String,
    settings: Settings,
    data_dir: Option<PathBuf>,
}

impl TestStore {
    pub async fn open(mode: Mode) -> anyhow::Result<Self> {
        gleaner_common::telemetry::init_for_tests();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let name = format!("t_{now}_{:08x}", rand::random::<u32>());
        let mut settings = Settings {
            database_url: tagged(&database_url(), &name),
            ..Settings::default()
        };
        settings.database.max_connections = 4;
        let data_dir = match mode {
            Mode::Distributed => {
                settings.database.schema = Some(name.clone());
                gleaner_common::db::ensure_database(&settings.database_url).await?;
                None
            }
            Mode::Standalone => {
                let root = std::env::temp_dir().join("gleaner-it");
                sweep_dirs(&root, now);
                let path = root.join(&name);
                settings.database_url = gleaner::standalone::DataDir::open(&path)?.database_url();
                Some(path)
            }
        };
        let db = gleaner::app::database(&settings, true)
            .await
            .context("preparing the test store")?;
        Ok(Self {
            mode,
            db,
            name,
            settings,
            data_dir,
        })
    }

    /// A single number from SQL.
    pub async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        scalar(&self.db, sql).await
    }

    /// Runs SQL (both backends' dialects must accept it).
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.db.execute_unprepared(sql).await?;
        Ok(())
    }

    /// A UUID as an SQL literal of the store (see [`TestEnv::uuid_sql`]).
    pub fn uuid_sql(&self, id: impl std::fmt::Display) -> String {
        match self.mode {
            Mode::Distributed => format!("'{id}'"),
            Mode::Standalone => format!("X'{}'", id.to_string().replace('-', "")),
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let (db, name, url) = (
            self.db.clone(),
            self.name.clone(),
            self.settings.database_url.clone(),
        );
        let data_dir = self.data_dir.take();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                db.close().await.ok();
                if let Some(dir) = data_dir {
                    std::fs::remove_dir_all(&dir).ok();
                    return;
                }
                let dropped = async {
                    let admin = admin(&url).await?;
                    admin
                        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .await?;
                    admin.close().await?;
                    anyhow::Ok(())
                };
                if let Err(e) = dropped.await {
                    eprintln!("cleaning up {name}: {e:#}");
                }
            });
        });
    }
}

/// A single number from SQL (`SELECT count(*) ...`) in `db`.
async fn scalar(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await?
        .context("no row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}
