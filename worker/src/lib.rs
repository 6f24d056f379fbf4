//! Gleaner's worker: consumes job and task messages, runs plugins, writes their results.
//!
//! - [`consumer`]: the RabbitMQ consumer loop (manual ack after commit, bounded concurrency,
//!   graceful stop).
//! - [`local`]: the standalone mode's in-process dispatcher, with the outbox table as queue.
//! - [`handle`]: what one message does, independent of the broker: plan a job or run a task.
//! - [`planner`]: a job becomes one task per linked service account.
//! - [`runner`]: a task runs its plugin and streams items into the [`sink`].
//! - [`plugin`]: the plugin trait, the registry and the built-in plugins.
//! - `metrics`: what deliveries and tasks report to [`gleaner_common::metrics`].

use std::sync::Arc;
use std::time::Duration;

use gleaner_common::config::WorkerSettings;
use gleaner_common::crypto::Cipher;
use gleaner_common::envelope::Incoming;
use gleaner_common::lock::{LocalLocks, Locks};
use gleaner_common::outbox::Signal;
use gleaner_common::retry::RetryPolicy;
use gleaner_common::store;
use gleaner_common::store::task::ClaimPolicy;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

pub mod combine;
pub mod consumer;
pub mod local;
mod metrics;
pub mod planner;
pub mod plugin;
pub mod reaper;
pub mod runner;
pub mod sink;
pub mod slots;

pub use plugin::Registry;

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
    /// Which tasks a delivery may claim: [`ClaimPolicy::Queued`] unless this process is the
    /// store's only one.
    pub claim: ClaimPolicy,
    /// One collection per collector and service account at a time: Redis locks when workers
    /// are distributed, in-process ones otherwise.
    pub locks: Arc<dyn Locks>,
    /// Where billing tasks write costs; `None` fails them, saying why.
    pub costs: Option<Arc<dyn sink::costs::CostSink>>,
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
        let groups = combine::Groups::new(&db, &sink, &name, settings.lease, ClaimPolicy::Queued);
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
            claim: ClaimPolicy::Queued,
            locks: Arc::new(LocalLocks::default()),
            costs: None,
        }
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

    /// The same context with another claim policy.
    #[must_use]
    pub fn with_claim(mut self, claim: ClaimPolicy) -> Self {
        self.claim = claim;
        self.groups =
            combine::Groups::new(&self.db, &self.sink, &self.name, self.settings.lease, claim);
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

/// What to do with a delivery once handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or a harmless duplicate): acknowledge.
    Ack,
    /// Can never succeed: dead-letter it with the reason.
    DeadLetter(String),
    /// May succeed later: deliver again.
    Retry(String),
}

/// Handles one message body. Every path is idempotent: a message delivered twice has one effect.
pub async fn handle(ctx: &Context, body: &[u8], stop: &CancellationToken) -> Disposition {
    let message = match Incoming::decode(body) {
        Ok(m) => m,
        Err(e) => return Disposition::DeadLetter(e.to_string()),
    };
    match message {
        Incoming::JobRequested(env) => {
            let span = info_span!("job", job_id = %env.job_id, domain_id = %env.domain_id, message_id = %env.message_id);
            match planner::plan(ctx, env.job_id).instrument(span).await {
                Ok(_) => Disposition::Ack,
                Err(e) => Disposition::Retry(e.to_string()),
            }
        }
        Incoming::TaskRequested(env) => {
            let Some(task_id) = env.task_id else {
                return Disposition::DeadLetter("task.requested without a task_id".into());
            };
            let claimed = match ctx.groups.claim(task_id).await {
                Ok(Some(c)) => c,
                // Already taken by another delivery, or finished: nothing to do.
                Ok(None) => return Disposition::Ack,
                Err(e) => return Disposition::Retry(e.to_string()),
            };
            let attempt = claimed.attempt;
            match runner::run(ctx, claimed, stop.clone()).await {
                // The next attempt's message is in the outbox, written with the release or the
                // retry.
                Ok(runner::Ran::Released | runner::Ran::Retrying | runner::Ran::Finished(_)) => {
                    ctx.signal.notify();
                    Disposition::Ack
                }
                Err(e) => {
                    warn!(task_id = %task_id, error = %e, "recording the task's outcome failed");
                    // Hand the task back, so the redelivered message can claim it again instead
                    // of finding it IN_PROGRESS with nobody running it.
                    let released = ctx
                        .db_retry
                        .run("release task", store::Error::is_transient, || {
                            store::task::release(&ctx.db, task_id, attempt)
                        })
                        .await;
                    if let Err(e) = released {
                        warn!(task_id = %task_id, error = %e, "releasing the task failed");
                    }
                    Disposition::Retry(e.to_string())
                }
            }
        }
    }
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
