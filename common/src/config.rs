//! Settings: defaults in code < `gleaner.toml` (path from `--config` or `GLEANER_CONFIG`) <
//! environment.
//!
//! Top-level keys map to `GLEANER_<KEY>` (`GLEANER_DATABASE_URL`), sections use a double
//! underscore (`GLEANER_WORKER__PREFETCH=16` overrides `[worker] prefetch = 8`). Values are
//! parsed into real types once, in `main`; a bad value fails start-up naming its key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::crypto::{Cipher, SecretKey};

/// Every setting of every component. Each component receives only its own section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL URL (`GLEANER_DATABASE_URL`).
    pub database_url: String,
    /// RabbitMQ URL (`GLEANER_AMQP_URL`).
    pub amqp_url: String,
    /// Redis URL (`GLEANER_REDIS_URL`).
    pub redis_url: String,
    /// Where the HTTP API listens (`GLEANER_LISTEN`).
    pub listen: SocketAddr,
    /// 64 hex characters: the key that encrypts credentials at rest (`GLEANER_SECRET_KEY`).
    /// Kept as text here and parsed by [`Settings::secret_key`], so that commands that do not
    /// touch credentials (`migrate`) do not demand it.
    #[serde(skip_serializing)]
    pub secret_key: Option<String>,
    /// The key `secret_key` replaces, during a rollover (`GLEANER_SECRET_KEY_PREVIOUS`): secrets
    /// it sealed are still opened, until `gleaner rotate-secret-key` has re-encrypted them.
    /// Parsed by [`Settings::cipher`]; empty is unset.
    #[serde(skip_serializing)]
    pub secret_key_previous: Option<String>,
    pub api: ApiSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub plugins: PluginSettings,
    pub worker: WorkerSettings,
    pub outbox: OutboxSettings,
    pub scheduler: SchedulerSettings,
    pub log: LogSettings,
    pub files: FileSettings,
    pub network: NetworkSettings,
    pub aws: AwsSettings,
    pub metrics: MetricsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "postgres://root@127.0.0.1:5432/gleaner".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            secret_key: None,
            secret_key_previous: None,
            api: ApiSettings::default(),
            database: DatabaseSettings::default(),
            amqp: AmqpSettings::default(),
            redis: RedisSettings::default(),
            plugins: PluginSettings::default(),
            worker: WorkerSettings::default(),
            outbox: OutboxSettings::default(),
            scheduler: SchedulerSettings::default(),
            log: LogSettings::default(),
            files: FileSettings::default(),
            network: NetworkSettings::default(),
            aws: AwsSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiSettings {
    /// How often each open `GET /v1/jobs/events` stream asks the database for changed jobs.
    #[serde(with = "millis")]
    pub events_poll_interval: Duration,
    /// Seconds a `verify` request waits for the plugin's checks before it answers 504.
    #[serde(with = "secs")]
    pub verify_timeout: Duration,
    /// A bearer token `GET /metrics` asks for (`GLEANER_API__METRICS_TOKEN`); unset, it is
    /// open, as a scraper on the same network expects.
    #[serde(skip_serializing)]
    pub metrics_token: Option<String>,
    /// Requests per second one API key may make on average (`0`: no limit); beyond its burst,
    /// a request gets 429 with `Retry-After`.
    pub rate_limit_per_second: u32,
    /// Requests one API key may make at once above its average rate.
    pub rate_limit_burst: u32,
    /// `GET /v1/jobs/events` streams one API key may hold open at once; one more gets 429.
    pub event_streams_per_key: usize,
    /// Requests without a working key one client address may make per second on average, in
    /// bursts of five times that (`0`: no limit); past it, the address gets 429 with
    /// `Retry-After`, and its requests are not looked up until then, but for keys that
    /// worked in the last second.
    pub failed_auth_per_second: u32,
    /// The largest request body accepted, in bytes; a larger one gets 413.
    pub max_body_bytes: usize,
    /// How long an idempotency key (a `collect` request's `Idempotency-Key`, a queue request's
    /// `request_id`) names its first request's job, in hours; the scheduler deletes older ones.
    pub idempotency_retention_hours: u32,
    /// Requests to collect taken from the queue `<prefix>.requests.collect`
    /// ([`RequestSettings`]).
    pub requests: RequestSettings,
}

/// The API's intake of requests through RabbitMQ.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestSettings {
    /// Whether `gleaner api` consumes the request queue (the standalone mode has no broker).
    pub enabled: bool,
    /// Requests handled at once per API process, which is also the consumer's prefetch.
    pub concurrency: u16,
    /// Queues a reply may be sent to besides RabbitMQ's direct reply-to and server-named
    /// queues (`amq.gen-…`): names, a trailing `*` matching a prefix
    /// (`GLEANER_API__REQUESTS__REPLY_QUEUES`, comma-separated). Gleaner's own queues never.
    #[serde(with = "list")]
    pub reply_queues: Vec<String>,
}

impl Default for RequestSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            // A request is a few queries: enough in flight to keep the database's pool busy
            // without holding many more deliveries than are worked on.
            concurrency: 32,
            reply_queues: Vec::new(),
        }
    }
}

impl ApiSettings {
    /// [`Self::idempotency_retention_hours`], at least an hour.
    #[must_use]
    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.idempotency_retention_hours.max(1)) * 3600)
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            // Quick enough for a dashboard to feel live; each poll of an idle stream is one
            // index scan that finds nothing, so a hundred open dashboards cost ~200 queries a
            // second.
            events_poll_interval: Duration::from_millis(500),
            // The limit the plugin protocol gives `init` and `verify` (external::INIT_TIMEOUT),
            // and well under the minute after which proxies and clients commonly give up.
            verify_timeout: Duration::from_secs(30),
            metrics_token: None,
            // A console polls a few routes a second and a script loops as fast as it can: the
            // first is far below this, the second is slowed to it rather than starving others.
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            // A few consoles open at once per key; each stream polls the database.
            event_streams_per_key: 10,
            // A client with a mistyped key retries a few times; a guesser sends thousands, each
            // a query of the keys table.
            failed_auth_per_second: 10,
            // Bodies are small JSON documents (credentials, options, a plugin's registration).
            max_body_bytes: 1 << 20,
            // A client retries a request within minutes; a day also covers an integration
            // whose broker or consumer was down overnight.
            idempotency_retention_hours: 24,
            requests: RequestSettings::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    /// Pool size per process.
    pub max_connections: u32,
    /// A schema to use instead of `public` (tests give each run its own).
    pub schema: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        // Enough for the worker's concurrent tasks plus the relay and the API's handlers, while
        // several processes together stay well under PostgreSQL's default of 100 connections.
        Self {
            max_connections: 20,
            schema: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpSettings {
    /// Prefix of every exchange and queue name; tests use a random one per test.
    pub prefix: String,
    /// Unacknowledged deliveries a worker holds at once: messages being planned or claimed,
    /// and those waiting for a free task slot (a task's message is acknowledged once the task
    /// is claimed, so running tasks hold none). RabbitMQ's guidance is 100–300: prefetch 1
    /// caps throughput at one broker round trip per message.
    pub prefetch: u16,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            prefix: "gleaner".into(),
            prefetch: 200,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Prefix of every key Gleaner writes.
    pub prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            prefix: "gleaner".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Big tasks one worker process runs at the same time: tasks holding more than a small
    /// batch of items, a month of costs, or a plugin process. What bounds a worker's memory.
    pub concurrency: usize,
    /// Tasks one worker process runs at the same time in all, small ones included (at least
    /// `concurrency`). Small tasks share their database round trips, so their throughput grows
    /// with this.
    pub max_tasks: usize,
    /// Items written to the database per batch (one COPY and one upsert each).
    pub batch_size: usize,
    /// Batches one big task writes at once in PostgreSQL, each writer on its own share of the
    /// resource keys (so a key's versions are still written in order). Each writer's batches
    /// hold `batch_size / writers` items, so a task's memory stays what one writer's was.
    pub writers: usize,
    /// Name of this worker in task leases; defaults to host name and process id.
    pub name: Option<String>,
    /// On SIGTERM, how long running tasks may go on before they are handed back to the queue.
    #[serde(with = "secs")]
    pub shutdown_grace: Duration,
    /// Consecutive successful collections of the same collector and service account a
    /// resource may be missing from before it is marked DELETED.
    pub delete_after_missed_runs: u16,
    /// Milliseconds a task's lease lasts. A running task renews it every quarter of this; a
    /// task whose lease ran out (its worker died) runs again as a new attempt.
    #[serde(with = "millis")]
    pub lease: Duration,
    /// Attempts a task gets: a transient failure (a plugin's timeout, an unreachable
    /// endpoint or database, a lost worker) is retried until then, and fails the task after.
    pub task_attempts: u16,
    /// Milliseconds before a task's second attempt; each later one waits twice as long (with
    /// ±30% jitter), at most `retry_max_delay`.
    #[serde(with = "millis")]
    pub retry_delay: Duration,
    #[serde(with = "millis")]
    pub retry_max_delay: Duration,
    /// Milliseconds between two passes of the reaper, which re-queues tasks whose lease expired
    /// and fails jobs past their timeout. Every worker runs one; their writes are fenced, so
    /// several at once are harmless.
    #[serde(with = "millis")]
    pub reap_interval: Duration,
    /// Seconds a delivery may wait for a free task slot of a busy worker before it is handed
    /// back to its queue for another worker. Keep it well below RabbitMQ's `consumer_timeout`
    /// (30 minutes by default), which closes a channel that holds a delivery unacknowledged for
    /// longer; a started task holds none (it is acknowledged once claimed).
    #[serde(with = "secs")]
    pub delivery_hold: Duration,
    /// Where the worker serves `/metrics` and `/healthz` (`GLEANER_WORKER__METRICS_LISTEN`);
    /// `off` serves neither. A worker that cannot bind it (another worker on the host has it)
    /// logs a warning and runs on unobserved.
    #[serde(with = "optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
}

impl WorkerSettings {
    /// Tasks a worker runs at once in all: `max_tasks`, and never fewer than `concurrency`.
    #[must_use]
    pub fn tasks_at_once(&self) -> usize {
        self.max_tasks.max(self.concurrency).max(1)
    }

    /// How long a task may stay QUEUED before the reaper presumes its message lost and sends
    /// another: twice the longest backoff (its maximum plus 30% jitter), plus a lease.
    #[must_use]
    pub fn forgotten_after(&self) -> Duration {
        self.retry_max_delay.mul_f64(2.6) + self.lease
    }

    /// How the delays between a task's attempts grow.
    #[must_use]
    pub fn task_retry(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            initial: self.retry_delay,
            max: self.retry_max_delay,
            multiplier: 2.0,
            jitter: 0.3,
            max_attempts: u32::from(self.task_attempts.max(1)),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        // 5,000 rows of ~0.5 KB is ~3 MB per batch: large enough that per-statement overhead is
        // noise, small enough that 16 concurrent tasks stay far below the memory budget.
        Self {
            concurrency: 16,
            // Small tasks ran fastest at about this many in flight (BENCHMARKS.md), as many as
            // the default prefetch.
            max_tasks: 200,
            batch_size: 5_000,
            // A second writer keeps PostgreSQL's second core busy: one big account's first
            // collection took 1.31× a raw COPY's time with two, 1.90× with one, 1.39× with
            // three on two cores (BENCHMARKS.md).
            writers: 2,
            name: None,
            shutdown_grace: Duration::from_secs(30),
            delete_after_missed_runs: 3,
            // A minute: a worker stalled by a long database failover keeps its tasks, a dead
            // one's tasks run again within about a minute.
            lease: Duration::from_secs(60),
            task_attempts: 3,
            retry_delay: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(600),
            reap_interval: Duration::from_secs(10),
            // Far below RabbitMQ's default consumer timeout of 30 minutes; short enough that a
            // message a busy worker cannot take soon goes back to the queue for an idle one,
            // long enough that a saturated worker republishes its prefetch only every 15 s.
            delivery_hold: Duration::from_secs(15),
            // 9464: the port OpenTelemetry's Prometheus exporters default to, so scrape
            // configurations written for instrumented services find it. Loopback only: the
            // listener has no authentication.
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxSettings {
    /// How often the relay looks for unsent rows when nothing woke it.
    #[serde(with = "millis")]
    pub poll_interval: Duration,
    /// Rows published per round.
    pub batch_size: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        // Rows written by this process wake the relay at once; the poll only bounds the delay
        // for rows written by other processes.
        Self {
            poll_interval: Duration::from_millis(250),
            batch_size: 500,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginSettings {
    /// The directory private plugins' executables must be in. Unset: private plugins can be
    /// neither registered nor run, since registering one runs its command on the API host and
    /// every worker.
    pub dir: Option<std::path::PathBuf>,
    /// Environment variables a Cloudforet plugin's registration may set
    /// (`GLEANER_PLUGINS__ENV`, comma-separated names; a trailing `*` matches a prefix, as in
    /// `AWS_ENDPOINT_URL*`). Empty: none. A value that is a URL must also be an endpoint the
    /// operator allows (`GLEANER_NETWORK__ALLOW_ENDPOINTS`).
    #[serde(with = "list")]
    pub env: Vec<String>,
    /// A Cloudforet plugin process no task has used for this long is stopped
    /// (`GLEANER_PLUGINS__IDLE_SECONDS`); the next task starts it again.
    pub idle_seconds: u64,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            dir: None,
            env: Vec::new(),
            idle_seconds: 300,
        }
    }
}

impl PluginSettings {
    /// Whether the operator's patterns allow the environment variable `name` (see
    /// [`crate::external::check_env`] for everything a registration's variable must pass).
    #[must_use]
    pub fn env_allowed(&self, name: &str) -> bool {
        self.env.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }
}

/// The files on a worker's disk that plugin options may name ([`crate::access`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileSettings {
    /// Absolute directories a file option (the `focus` plugin's `path`) may lie in, links
    /// followed (`GLEANER_FILES__ALLOW`, comma-separated). Empty: file options are refused.
    #[serde(with = "list")]
    pub allow: Vec<std::path::PathBuf>,
}

/// The URLs plugin options may make a worker call ([`crate::access`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSettings {
    /// Endpoints, as `scheme://host[:port]` with `*` for any one host label or any port, that
    /// an endpoint option (the `focus` plugin's `endpoint_url`) may name besides the provider's
    /// public ones (`GLEANER_NETWORK__ALLOW_ENDPOINTS`, comma-separated).
    #[serde(with = "list")]
    pub allow_endpoints: Vec<String>,
}

/// How the official AWS plugins call AWS.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AwsSettings {
    /// Whether a service account with a `role_arn` and no key pair may assume its role from the
    /// worker's own credentials (its environment, profile, or instance or task role)
    /// (`GLEANER_AWS__WORKER_CREDENTIALS`). Off by default: anyone who may create a service
    /// account could otherwise act as the worker's identity toward every role that trusts it.
    pub worker_credentials: bool,
    /// AWS API calls one collection has in flight at once, over all its regions and services
    /// (`GLEANER_AWS__CALLS_IN_FLIGHT`).
    pub calls_in_flight: usize,
    /// Attempts of one AWS call, the first included, when it is throttled or meets a 5xx or a
    /// network error (`GLEANER_AWS__MAX_ATTEMPTS`). Once they are spent the task fails
    /// transiently and is retried as a whole, within `worker.task_attempts`.
    pub max_attempts: u32,
    /// Milliseconds of the first retry's backoff ceiling; each later one doubles it, up to 20
    /// seconds, and the wait is drawn at random below the ceiling (full jitter)
    /// (`GLEANER_AWS__INITIAL_BACKOFF`).
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    /// Milliseconds between two Cost Explorer requests of one task: AWS limits the request
    /// rate of an account, and charges for each request (`GLEANER_AWS__COST_EXPLORER_INTERVAL`).
    #[serde(with = "millis")]
    pub cost_explorer_interval: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            worker_credentials: false,
            calls_in_flight: 8,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            cost_explorer_interval: Duration::from_millis(250),
        }
    }
}

/// How metric samples are collected and kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSettings {
    /// Hours of history the first collection of a series reaches back
    /// (`GLEANER_METRICS__BACKFILL_HOURS`); later ones start at the series' watermark.
    pub backfill_hours: u32,
    /// Days samples and rollups are kept (`GLEANER_METRICS__RETENTION_DAYS`): older days'
    /// partitions are dropped (rows deleted in the standalone mode), and nothing older is
    /// collected.
    pub retention_days: u32,
    /// Days of partitions created ahead of today (`GLEANER_METRICS__PARTITIONS_AHEAD_DAYS`), so
    /// that writes never wait for one to be made.
    pub partitions_ahead_days: u32,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            backfill_hours: 24,
            retention_days: 30,
            partitions_ahead_days: 3,
        }
    }
}

impl MetricsSettings {
    /// How far back a collection may reach: the backfill, never past the retention.
    #[must_use]
    pub fn reach(&self) -> chrono::Duration {
        let backfill = chrono::Duration::hours(i64::from(self.backfill_hours));
        let kept = chrono::Duration::days(i64::from(self.retention_days.max(1)));
        backfill.min(kept)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerSettings {
    /// A fire found later than this after its time (the scheduler was down) is recorded as
    /// MISSED instead of run.
    #[serde(with = "secs")]
    pub catch_up_window: Duration,
    /// Schedules taken per transaction.
    pub batch_size: u64,
    /// Passes that record a burst's fires at once on PostgreSQL, each over its share of the
    /// collectors (at least 1; SQLite has one).
    pub lanes: u32,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            catch_up_window: Duration::from_secs(3600),
            batch_size: 200,
            lanes: 2,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// `json`, `text` or `auto` (text on a terminal, JSON otherwise).
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Text,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error(
        "GLEANER_SECRET_KEY is not set: it must be 64 hex characters (32 bytes), e.g. the output of `openssl rand -hex 32`; keep it, since credentials stored with one key cannot be read with another"
    )]
    MissingSecretKey,
    #[error("GLEANER_SECRET_KEY is malformed: {0}")]
    MalformedSecretKey(crate::crypto::KeyError),
    #[error("GLEANER_SECRET_KEY_PREVIOUS is malformed: {0}")]
    MalformedPreviousSecretKey(crate::crypto::KeyError),
}

/// Settings taken from the environment as text, whatever they look like (the variable after
/// `GLEANER_`, and the setting's path): figment reads an environment value for its type, and a
/// key made only of digits would become a number.
const TEXT_KEYS: [(&str, &str); 3] = [
    ("secret_key", "secret_key"),
    ("secret_key_previous", "secret_key_previous"),
    ("api__metrics_token", "api.metrics_token"),
];

impl Settings {
    /// Loads defaults, then the TOML file if one is given, then `GLEANER_*` variables.
    ///
    /// # Errors
    /// A value of the wrong type or an unreadable file, naming the key.
    pub fn load(config_file: Option<&Path>) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let text_vars: Vec<&str> = TEXT_KEYS.iter().map(|(var, _)| *var).collect();
        figment = figment.merge(
            Env::prefixed("GLEANER_")
                .split("__")
                // `GLEANER_SERVER`, `GLEANER_API_KEY` and `GLEANER_CLI_CONFIG` are the CLI's.
                .ignore(&["config", "server", "api_key", "cli_config"])
                .ignore(&text_vars),
        );
        for (var, key) in TEXT_KEYS {
            if let Some(value) = Env::var(&format!("GLEANER_{var}")) {
                figment = figment.merge(Serialized::default(key, value));
            }
        }
        figment.extract().map_err(|e| Error::Invalid(Box::new(e)))
    }

    /// The credentials key, required by every process that reads or writes credentials.
    ///
    /// # Errors
    /// The key is missing or is not 64 hex characters.
    pub fn secret_key(&self) -> Result<SecretKey, Error> {
        let raw = self
            .secret_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .ok_or(Error::MissingSecretKey)?;
        raw.parse().map_err(Error::MalformedSecretKey)
    }

    /// What callers' plugin options may reach.
    ///
    /// # Errors
    /// An allowlist entry is malformed.
    pub fn access(&self) -> Result<crate::access::Access, crate::access::Error> {
        crate::access::Access::new(&self.files.allow, &self.network.allow_endpoints)
    }

    /// The key being replaced, during a rollover; `None` when unset or empty.
    ///
    /// # Errors
    /// The key is not 64 hex characters.
    pub fn secret_key_previous(&self) -> Result<Option<SecretKey>, Error> {
        self.secret_key_previous
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|k| k.parse().map_err(Error::MalformedPreviousSecretKey))
            .transpose()
    }

    /// The cipher of a process that reads or writes credentials: it seals with `secret_key`,
    /// and opens what `secret_key` or `secret_key_previous` sealed.
    ///
    /// # Errors
    /// `secret_key` is missing, or either key is malformed.
    pub fn cipher(&self) -> Result<Cipher, Error> {
        let cipher = Cipher::new(&self.secret_key()?);
        Ok(match self.secret_key_previous()? {
            Some(previous) => cipher.with_previous(&previous),
            None => cipher,
        })
    }
}

/// A list, or one comma-separated text (as an environment variable gives it).
mod list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Text(String),
        List(Vec<T>),
    }

    pub fn serialize<S: Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + From<String>,
    {
        Ok(match Raw::<T>::deserialize(d)? {
            Raw::Text(s) => s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| T::from(p.to_owned()))
                .collect(),
            Raw::List(v) => v,
        })
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An address, or `off` (or an empty value) for none: an environment variable cannot unset a
/// default.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    const OFF: &str = "off";

    // `Option` is the field's type, which `serde(with)` passes by reference.
    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let raw = String::deserialize(d)?;
        let raw = raw.trim();
        if raw.is_empty() || raw.eq_ignore_ascii_case(OFF) {
            return Ok(None);
        }
        raw.parse().map(Some).map_err(|e| {
            D::Error::custom(format!(
                "`{raw}` is not an address like 127.0.0.1:9464, nor `off`: {e}"
            ))
        })
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
// figment's Jail API fixes the closure's error type; its size is not ours to change.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_runs_max_tasks_at_once_and_never_fewer_than_its_concurrency() {
        let mut w = WorkerSettings::default();
        assert_eq!(w.tasks_at_once(), 200);
        w.concurrency = 300;
        assert_eq!(
            w.tasks_at_once(),
            300,
            "raising concurrency alone still raises the total"
        );
        w.concurrency = 0;
        w.max_tasks = 0;
        assert_eq!(w.tasks_at_once(), 1);
        figment::Jail::expect_with(|jail| {
            jail.set_env("GLEANER_WORKER__MAX_TASKS", "32");
            let s = Settings::load(None).expect("settings");
            assert_eq!(s.worker.max_tasks, 32);
            Ok(())
        });
    }

    #[test]
    fn secrets_made_of_digits_stay_text() {
        figment::Jail::expect_with(|jail| {
            let key = "0".repeat(64);
            jail.set_env("GLEANER_SECRET_KEY", &key);
            jail.set_env("GLEANER_API__METRICS_TOKEN", "000123");
            let s = Settings::load(None).expect("settings");
            assert_eq!(s.secret_key.as_deref(), Some(key.as_str()));
            assert!(s.secret_key().is_ok());
            assert_eq!(s.api.metrics_token.as_deref(), Some("000123"));
            Ok(())
        });
    }

    #[test]
    fn request_intake_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None).expect("loads");
            assert!(s.api.requests.enabled);
            assert!(s.api.requests.reply_queues.is_empty());
            assert_eq!(
                s.api.idempotency_retention(),
                Duration::from_secs(24 * 3600)
            );
            jail.set_env("GLEANER_API__REQUESTS__ENABLED", "false");
            jail.set_env("GLEANER_API__REQUESTS__CONCURRENCY", "4");
            jail.set_env(
                "GLEANER_API__REQUESTS__REPLY_QUEUES",
                "replies.*, billing-bot",
            );
            jail.set_env("GLEANER_API__IDEMPOTENCY_RETENTION_HOURS", "0");
            let s = Settings::load(None).expect("loads");
            assert!(!s.api.requests.enabled);
            assert_eq!(s.api.requests.concurrency, 4);
            assert_eq!(s.api.requests.reply_queues, ["replies.*", "billing-bot"]);
            // At least an hour, whatever is asked.
            assert_eq!(s.api.idempotency_retention(), Duration::from_secs(3600));
            Ok(())
        });
    }

    #[test]
    fn allowlists_are_lists_in_a_file_and_comma_separated_in_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gleaner.toml",
                "[files]\nallow = [\"/srv/focus\"]\n[network]\nallow_endpoints = [\"http://127.0.0.1:9000\"]\n",
            )?;
            let s = Settings::load(Some(Path::new("gleaner.toml"))).expect("loads");
            assert_eq!(s.files.allow, vec![std::path::PathBuf::from("/srv/focus")]);
            assert_eq!(s.network.allow_endpoints, vec!["http://127.0.0.1:9000"]);
            jail.set_env("GLEANER_FILES__ALLOW", "/a, /b/c");
            jail.set_env(
                "GLEANER_NETWORK__ALLOW_ENDPOINTS",
                "http://127.0.0.1:9000,https://*.example.com",
            );
            let s = Settings::load(Some(Path::new("gleaner.toml"))).expect("loads");
            assert_eq!(s.files.allow.len(), 2);
            assert_eq!(s.files.allow[1], std::path::PathBuf::from("/b/c"));
            assert_eq!(s.network.allow_endpoints.len(), 2);
            assert!(s.access().is_ok());
            jail.set_env("GLEANER_NETWORK__ALLOW_ENDPOINTS", "127.0.0.1:5432");
            let err = Settings::load(None).expect("loads").access().unwrap_err();
            assert!(
                err.to_string().contains("GLEANER_NETWORK__ALLOW_ENDPOINTS"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gleaner.toml",
                "listen = \"127.0.0.1:9000\"\n[worker]\nconcurrency = 3\n",
            )?;
            jail.set_env("GLEANER_WORKER__CONCURRENCY", "7");
            jail.set_env("GLEANER_DATABASE_URL", "postgres://x@127.0.0.1/y");
            let s = Settings::load(Some(Path::new("gleaner.toml"))).expect("loads");
            assert_eq!(s.listen.port(), 9000);
            assert_eq!(s.worker.concurrency, 7);
            assert_eq!(s.database_url, "postgres://x@127.0.0.1/y");
            assert_eq!(s.worker.batch_size, WorkerSettings::default().batch_size);
            Ok(())
        });
    }

    #[test]
    fn worker_metrics_listener_is_set_or_turned_off_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None).expect("loads");
            assert_eq!(
                s.worker.metrics_listen,
                Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
            );
            jail.set_env("GLEANER_WORKER__METRICS_LISTEN", "0.0.0.0:9500");
            let s = Settings::load(None).expect("loads");
            assert_eq!(
                s.worker.metrics_listen,
                Some(SocketAddr::from(([0, 0, 0, 0], 9500)))
            );
            jail.set_env("GLEANER_WORKER__METRICS_LISTEN", "off");
            assert_eq!(
                Settings::load(None).expect("loads").worker.metrics_listen,
                None
            );
            jail.set_env("GLEANER_WORKER__METRICS_LISTEN", "nine");
            let err = Settings::load(None).expect_err("must fail").to_string();
            assert!(err.to_lowercase().contains("metrics_listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GLEANER_LISTEN", "not an address");
            let err = Settings::load(None).expect_err("must fail").to_string();
            assert!(err.to_lowercase().contains("listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_secret_key_is_a_clear_error() {
        let s = Settings::default();
        let err = s.secret_key().expect_err("no key configured").to_string();
        assert!(err.contains("GLEANER_SECRET_KEY"), "{err}");
        let s = Settings {
            secret_key: Some("abc".into()),
            ..Settings::default()
        };
        let err = s.secret_key().expect_err("short key").to_string();
        assert!(err.contains("64 hex"), "{err}");
    }

    #[test]
    fn keys_made_of_digits_stay_text_and_the_previous_key_is_optional() {
        let digits = "0".repeat(64);
        let other = "1234".repeat(16);
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None).expect("loads");
            assert!(s.secret_key_previous().expect("unset is fine").is_none());
            jail.set_env("GLEANER_SECRET_KEY", &digits);
            jail.set_env("GLEANER_SECRET_KEY_PREVIOUS", &other);
            let s = Settings::load(None).expect("digits are a key, not a number");
            assert_eq!(s.secret_key.as_deref(), Some(digits.as_str()));
            assert_eq!(s.secret_key_previous.as_deref(), Some(other.as_str()));
            let cipher = s.cipher().expect("both keys parse");
            assert_eq!(
                cipher.key_id(),
                digits.parse::<SecretKey>().expect("key").id()
            );
            assert_eq!(
                cipher.previous_key_id(),
                Some(other.parse::<SecretKey>().expect("key").id())
            );
            // Dropping the previous key by emptying the variable.
            jail.set_env("GLEANER_SECRET_KEY_PREVIOUS", "");
            let s = Settings::load(None).expect("loads");
            assert_eq!(s.cipher().expect("one key").previous_key_id(), None);
            jail.set_env("GLEANER_SECRET_KEY_PREVIOUS", "12");
            let err = Settings::load(None)
                .expect("loads")
                .cipher()
                .expect_err("short")
                .to_string();
            assert!(err.contains("GLEANER_SECRET_KEY_PREVIOUS"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_previous_key_can_be_in_the_file() {
        figment::Jail::expect_with(|jail| {
            let previous = SecretKey::generate().to_hex();
            jail.create_file(
                "gleaner.toml",
                &format!("secret_key_previous = \"{previous}\"\n"),
            )?;
            let s = Settings::load(Some(Path::new("gleaner.toml"))).expect("loads");
            assert_eq!(s.secret_key_previous.as_deref(), Some(previous.as_str()));
            // The environment still wins over the file.
            let newer = SecretKey::generate().to_hex();
            jail.set_env("GLEANER_SECRET_KEY_PREVIOUS", &newer);
            let s = Settings::load(Some(Path::new("gleaner.toml"))).expect("loads");
            assert_eq!(s.secret_key_previous.as_deref(), Some(newer.as_str()));
            Ok(())
        });
    }
}
