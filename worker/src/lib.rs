//! Gleaner's worker: consumes job and task messages, runs plugins, writes their results.
//!
//! - [`consumer`]: the RabbitMQ dispatcher (manual ack, an explicit prefetch, graceful stop).
//! - [`local`]: the standalone mode's in-process dispatcher, with the outbox table as queue.
//! - [`receive`]: what one message asks for, independent of the broker: plan a job, or claim
//!   a task's attempt, after which the dispatcher settles the message and runs the task.
//! - [`planner`]: a job becomes one task per linked service account (and month, for billing).
//! - [`run`]: a claimed task runs its plugin and streams items into the [`sink`]; `run`'s
//!   `inventory` and `billing` modules are the two kinds of run.
//! - [`plugin`]: the plugin trait, the registry and the built-in plugins.
//! - [`lock`]: one collection per collector and service account at a time.
//! - [`combine`]: small database operations of concurrent tasks, grouped. [`slots`]: the
//!   memory rule for big tasks. [`reaper`]: what brings abandoned tasks back.
//! - `metrics`: what deliveries and tasks report to [`gleaner_common::metrics`].
//!
//! The life of a job and its tasks, state by state, is [`gleaner_common::lifecycle`]'s.

use std::sync::Arc;
use std::time::Duration;

use gleaner_common::config::WorkerSettings;
use gleaner_common::crypto::Cipher;
use gleaner_common::envelope::Incoming;
use gleaner_common::lifecycle::{Attempt, Claimed};
use gleaner_common::outbox::Signal;
use gleaner_common::retry::RetryPolicy;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

pub mod combine;
pub mod consumer;
pub mod local;
pub mod lock;
mod metrics;
pub mod planner;
pub mod plugin;
pub mod reaper;
pub mod run;
pub mod sink;
pub mod slots;

pub use plugin::Registry;

use lock::{LocalLocks, Locks};

/// Everything a worker's handlers share.
pub struct Context {
    pub db: DatabaseConnection,
    pub cipher: Cipher,
    pub registry: Registry,
    pub sink: Arc<dyn sink::ResourceSink>,
    pub settings: WorkerSettings,
    /// Wakes this process's outbox relay after a commit that queued messages.
    pub signal: Signal,
    /// This worker's name in task leases.
    pub name: String,
    /// How database writes are retried inside a task.
    pub db_retry: RetryPolicy,
    /// One collection per collector and service account at a time: Redis locks when workers
    /// are distributed, in-process ones otherwise.
    pub locks: Arc<dyn Locks>,
    /// Where billing tasks write costs; `None` fails them, saying why.
    pub costs: Option<Arc<dyn sink::costs::CostSink>>,
    /// Where metrics tasks write samples; `None` fails them, saying why.
    pub metrics: Option<Arc<dyn sink::metrics::MetricSink>>,
    /// How far back metrics tasks reach.
    pub metric_settings: gleaner_common::config::MetricsSettings,
    /// Claims, small writes and ends of concurrent tasks, each kind combined into groups.
    pub groups: combine::Groups,
    /// The `concurrency` slots big tasks hold.
    pub slots: slots::Slots,
}

impl Context {
    /// A context with the default retry policy and a name from the host and process id.
    #[must_use]
    pub fn new(
        db: DatabaseConnection,
        cipher: Cipher,
        registry: Registry,
        sink: Arc<dyn sink::ResourceSink>,
        settings: WorkerSettings,
        signal: Signal,
    ) -> Self {
        let name = settings.name.clone().unwrap_or_else(default_name);
        gleaner_common::metrics::worker_started(&name);
        let groups = combine::Groups::new(&db, &sink, &name, settings.lease, settings.task_retry());
        Self {
            groups,
            slots: slots::Slots::new(settings.concurrency),
            db,
            cipher,
            registry,
            sink,
            settings,
            signal,
            name,
            db_retry: RetryPolicy::default(),
            locks: Arc::new(LocalLocks::default()),
            costs: None,
            metrics: None,
            metric_settings: gleaner_common::config::MetricsSettings::default(),
        }
    }

    /// The same context, writing metrics tasks' samples to `sink`.
    #[must_use]
    pub fn with_metrics(
        mut self,
        sink: Arc<dyn sink::metrics::MetricSink>,
        settings: gleaner_common::config::MetricsSettings,
    ) -> Self {
        self.metrics = Some(sink);
        self.metric_settings = settings;
        self
    }

    /// The same context, writing billing tasks' costs to `sink`.
    #[must_use]
    pub fn with_costs(mut self, sink: Arc<dyn sink::costs::CostSink>) -> Self {
        self.costs = Some(sink);
        self
    }

    /// The same context with other collection locks.
    #[must_use]
    pub fn with_locks(mut self, locks: Arc<dyn Locks>) -> Self {
        self.locks = locks;
        self
    }

    /// Writes a batch through [`ResourceSink::write`], or in a group with other tasks' when
    /// the sink combines batches like it.
    ///
    /// # Errors
    /// As [`ResourceSink::write`].
    pub async fn write(
        &self,
        scope: &sink::Scope,
        batch: &[plugin::ResourceItem],
        failed: i64,
    ) -> Result<sink::Written, sink::SinkError> {
        if self.sink.combines(scope, batch.len()) {
            self.groups
                .write(sink::Write {
                    scope: scope.clone(),
                    batch: batch.to_vec(),
                    failed,
                })
                .await
        } else {
            self.sink.write(scope, batch, failed).await
        }
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// How a delivery is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done (or a harmless duplicate): acknowledge.
    Ack,
    /// Can never succeed: dead-letter it with the reason.
    DeadLetter(String),
    /// May succeed later: deliver again.
    Retry(String),
}

/// What a delivery asks for, once read.
#[derive(Debug)]
pub enum Received {
    /// Settle the delivery so; nothing more to do.
    Settle(Settlement),
    /// A task's attempt started: the database owns the task now (its lease, the heartbeats and
    /// the reaper bring it back if this worker dies). Acknowledge the delivery at once, then
    /// [`run_claimed`]: a run of hours must not hold a broker delivery open.
    Claimed(Box<Claimed>),
}

/// Reads one message body: plans a job, or claims the attempt of a task that the message
/// starts. Every path is idempotent: a message delivered twice has one effect.
pub async fn receive(ctx: &Context, body: &[u8]) -> Received {
    let message = match Incoming::decode(body) {
        Ok(m) => m,
        Err(e) => return Received::Settle(Settlement::DeadLetter(e.to_string())),
    };
    match message {
        Incoming::JobRequested(env) => {
            let span = info_span!("job", job_id = %env.job_id, domain_id = %env.domain_id, message_id = %env.message_id);
            match planner::plan(ctx, env.job_id).instrument(span).await {
                Ok(_) => Received::Settle(Settlement::Ack),
                Err(e) => Received::Settle(Settlement::Retry(e.to_string())),
            }
        }
        Incoming::TaskRequested(env) => {
            let Some(task) = env.task_id else {
                return Received::Settle(Settlement::DeadLetter(
                    "task.requested without a task_id".into(),
                ));
            };
            let attempt = Attempt {
                task,
                number: i32::try_from(env.attempt).unwrap_or(i32::MAX),
            };
            match ctx.groups.claim(attempt).await {
                Ok(Some(claimed)) => Received::Claimed(Box::new(claimed)),
                // Its attempt started already (a duplicate) or cannot start any more (a
                // message of an old attempt, a task that ended): nothing to do.
                Ok(None) => Received::Settle(Settlement::Ack),
                // Nothing was claimed: the message stays the task's carrier.
                Err(e) => Received::Settle(Settlement::Retry(e.to_string())),
            }
        }
    }
}

/// Runs a claimed task, whose delivery is settled, to its end: everything it leads to (its
/// end, a retry, a hand-back) is recorded in the database with the messages it needs.
pub async fn run_claimed(ctx: &Context, claimed: Claimed, stop: CancellationToken) {
    let task = claimed.attempt.task;
    if let Err(e) = run::run(ctx, claimed, stop).await {
        // Its lease runs out, and the reaper brings it back as a failed attempt.
        warn!(task_id = %task, error = %e, "recording the task's end failed; the reaper will bring the task back");
    }
    // The end's messages (a retry, a hand-back, job events) are in the outbox.
    ctx.signal.notify();
}

/// On shutdown, of both dispatchers (RabbitMQ and in-process): lets in-flight handlers finish
/// within `grace`, then cancels `abort` so running tasks hand their work back, and waits for
/// them.
pub(crate) async fn drain(
    inflight: &mut tokio::task::JoinSet<()>,
    abort: &CancellationToken,
    grace: Duration,
) {
    if inflight.is_empty() {
        return;
    }
    tracing::info!(
        messages = inflight.len(),
        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        "waiting for in-flight messages"
    );
    let all_done = async { while inflight.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        warn!(
            messages = inflight.len(),
            "grace period over; releasing in-flight tasks"
        );
        abort.cancel();
        while inflight.join_next().await.is_some() {}
    }
}
