//! Running one claimed task: the plugin streams items, the run writes them, and its end is
//! recorded through [`lifecycle::task::end`].
//!
//! - [`inventory`]: a collector's run; resources in batches, the priority merge, the sweep.
//! - [`billing`]: a cost data source's run; a month of costs replaced in one transaction.
//! - [`metrics`]: a metric data source's run; samples appended after each series' watermark.
//! - This module: what both share (the lease's heartbeat, the collection lock, the plugin
//!   process and its stderr, recording the end).
//!
//! Outcome rule: a task is SUCCESS only when the plugin finished and every item was stored. A
//! plugin failure, a write failure, or any item the plugin reported as failed makes the task
//! FAILURE (the items that were stored stay stored, and a failed task never deletes anything).
//! A transient failure (the plugin says so, or the database or Redis stayed unreachable through
//! the in-task retries) is [`Ended::Retry`]: the attempt counts, and the task runs again after a
//! backoff while attempts are left.
//!
//! The delivery that asked for the task was settled when the claim committed: from then on the
//! task's lease is what keeps it, renewed by the heartbeat while the run lasts (the wait for the
//! collection lock included). When a renewal finds that the attempt no longer owns the task
//! (canceled, timed out, or taken over after the lease ran out), the plugin is stopped and
//! nothing more is written.

mod batches;
mod billing;
mod inventory;
mod metrics;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gleaner_common::external::redact;
use gleaner_common::lifecycle::{self, Attempt, Claimed, Ended, Outcome};
use gleaner_common::model::{Counts, JobKind, JobStatus};
use gleaner_common::store::{self, service_account};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::Context;
use crate::lock::Held;
use crate::plugin::{
    CollectRequest, Diagnostics, ItemError, ItemReceiver, MetricRequest, Plugin, PluginError,
    TaskInfo,
};

/// Item errors kept for the task's error message; the count covers all of them.
const KEPT_ITEM_ERRORS: usize = 5;

/// Runs a claimed task to its end and records how it ended. Returns what was recorded.
///
/// # Errors
/// The end could not be recorded, the database unreachable through the retries: the task's
/// lease runs out and the reaper brings it back.
pub async fn run(
    ctx: &Context,
    claimed: Claimed,
    stop: CancellationToken,
) -> Result<Ended, store::Error> {
    let span = info_span!("task", task_id = %claimed.attempt.task, job_id = %claimed.job_id, attempt = claimed.attempt.number,
        service_account_id = ?claimed.service_account_id.map(|s| s.to_string()));
    async move {
        let started = std::time::Instant::now();
        crate::metrics::task_started(&ctx.name, claimed.kind, claimed.attempt.number);
        // Cancelled by the heartbeat when the attempt no longer owns the task; `halt` also on
        // the worker's stop, and is what the run itself watches.
        let fenced = CancellationToken::new();
        let halt = stop.child_token();
        // Beats until the end is recorded (planning the sweep and recording can take a while),
        // and stops with the run however it ends, a panic included: a beat that outlived its
        // run would keep the task's lease forever.
        let heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            heartbeat(
                ctx.db.clone(),
                claimed.attempt,
                ctx.settings.lease,
                fenced.clone(),
                halt.clone(),
            )
            .in_current_span(),
        ));
        // Held until the end is recorded: the sweep of deleted resources must not run beside
        // the next collection of the same collector and account.
        let (ended, lock) = match crate::lock::wait_for_collection(ctx, &claimed, &halt).await {
            Ok(Some(held)) => {
                let ended = match claimed.kind {
                    JobKind::Billing => billing::collect(ctx, &claimed, &halt, &held).await,
                    JobKind::Metrics => metrics::collect(ctx, &claimed, &halt, &held).await,
                    JobKind::Inventory => inventory::collect(ctx, &claimed, &halt, &held).await,
                };
                (ended, Some(held))
            }
            // The worker stopped while the task waited.
            Ok(None) => (Ended::Released, None),
            Err(e) => (Ended::Retry(e.to_string()), None),
        };
        let ended = if fenced.is_cancelled() {
            Ended::Stale
        } else {
            ended
        };
        let recorded = record(ctx, claimed.attempt, ended).await;
        if let Ok(Ended::Done(o)) = &recorded
            && claimed.sub_task.is_some()
        {
            // Before the account's lock goes: no other collection of it runs meanwhile. A
            // lock lost (expired in Redis) may be another collection's now: no sweep then.
            let held = lock.as_ref().is_some_and(|l| !l.lost().is_cancelled());
            let sweep = o
                .sweep
                .as_ref()
                .filter(|p| held && o.status == JobStatus::Success && p.is_part());
            end_of_part(ctx, &claimed, sweep.map(|p| &p.sweep)).await;
        }
        drop(lock);
        drop(heartbeat);
        let recorded = recorded?;
        crate::metrics::task_ended(&ctx.name, claimed.kind, &recorded, started.elapsed());
        match &recorded {
            Ended::Done(o) => info!(
                status = o.status.as_str(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "task finished"
            ),
            Ended::Stale => info!("the attempt no longer owns the task; nothing more was recorded"),
            Ended::Retry(_) | Ended::Released => {}
        }
        Ok(recorded)
    }
    .instrument(span)
    .await
}

/// After a part of an account's collection ended for good: the sweep of the job's account if
/// this was the last part to succeed ([`lifecycle::task::end_of_part`]). A failure here
/// deletes nothing, and is logged: the next collection sweeps.
async fn end_of_part(ctx: &Context, claimed: &Claimed, sweep: Option<&store::resource::Sweep>) {
    let swept = ctx
        .db_retry
        .run("end the part", store::Error::is_transient, || {
            lifecycle::task::end_of_part(
                &ctx.db,
                claimed.attempt.task,
                claimed.job_id,
                claimed.service_account_id,
                sweep,
            )
        })
        .await;
    match swept {
        Ok(0) => {}
        Ok(deleted) => info!(
            deleted,
            "every part of the account's collection succeeded; swept"
        ),
        Err(e) => {
            warn!(error = %e, "ending the account's parts failed; the next collection sweeps")
        }
    }
}

/// Records how the run ended, retrying while the database is unreachable. An outcome goes
/// through the worker's group commit with other tasks' ends.
async fn record(ctx: &Context, attempt: Attempt, ended: Ended) -> Result<Ended, store::Error> {
    let backoff = ctx.settings.task_retry();
    ctx.db_retry
        .run("record the task's end", store::Error::is_transient, || {
            let ended = ended.clone();
            async move {
                match ended {
                    Ended::Done(outcome) => ctx.groups.end(attempt, outcome).await,
                    other => lifecycle::task::end(&ctx.db, attempt, other, Some(&backoff)).await,
                }
            }
        })
        .await
}

/// Renews the attempt's lease every quarter of it until aborted. When the attempt turns out
/// not to own the task any more, cancels `fenced` and `halt`: the run stops its plugin. A
/// database error is retried at the next beat; if it lasts past the lease, the reaper hands the
/// task to a new attempt and this one's writes are fenced.
async fn heartbeat(
    db: sea_orm::DatabaseConnection,
    attempt: Attempt,
    lease: Duration,
    fenced: CancellationToken,
    halt: CancellationToken,
) {
    let every = (lease / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        match lifecycle::task::heartbeat(&db, attempt, lease).await {
            Ok(true) => {}
            Ok(false) => {
                info!(
                    "the attempt no longer owns the task (canceled, timed out, or taken over); stopping it"
                );
                fenced.cancel();
                halt.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the task's lease failed"),
        }
    }
}

/// How a task ends when writing `what` failed: run again from the start by a later attempt
/// when the failure may pass (what was committed stays, what was not is gone either way).
fn write_failed(what: &str, e: &crate::sink::SinkError) -> Ended {
    let error = format!("writing {what} failed: {e}");
    if e.is_transient() {
        Ended::Retry(error)
    } else {
        failure(error)
    }
}

/// A run that ends FAILURE with `error`.
fn failure(error: impl Into<String>) -> Ended {
    Ended::Done(Outcome::failure(error))
}

/// The plugin to run and the decrypted credentials, or how the run ends before it starts.
pub(super) async fn prepare(
    ctx: &Context,
    claimed: &Claimed,
) -> Result<(Arc<dyn Plugin>, serde_json::Map<String, serde_json::Value>), Ended> {
    let resolved = ctx
        .db_retry
        .run("find the plugin", store::Error::is_transient, || {
            ctx.registry.resolve(
                &ctx.db,
                claimed.domain,
                &claimed.plugin_id,
                &claimed.plugin_version,
            )
        })
        .await;
    let plugin = match resolved {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(failure(format!(
                "plugin `{}` version {} is not in the catalog",
                claimed.plugin_id, claimed.plugin_version
            )));
        }
        Err(e) if e.is_transient() => {
            return Err(Ended::Retry(format!(
                "the plugin could not be looked up: {e}"
            )));
        }
        Err(e) => return Err(failure(format!("the plugin could not be looked up: {e}"))),
    };
    if let Err(e) = plugin.info().validate_version(&claimed.plugin_version) {
        return Err(failure(e.detail));
    }
    // The API checked the options when they were set and when the job was queued; the
    // operator may have narrowed the allowlists since, and a schedule queues without the API.
    if let Err(refused) = ctx
        .registry
        .access()
        .check(&plugin.info().options_schema, &claimed.options)
    {
        let words: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(failure(words.join("; ")));
    }
    let secret = match claimed.service_account_id {
        // The claim read the account a moment ago: it has no credentials to read.
        Some(_) if claimed.secret == Some(None) => serde_json::Map::new(),
        Some(sa) => {
            match service_account::credentials(&ctx.db, &ctx.cipher, claimed.domain, sa).await {
                Ok(s) => s,
                Err(e) if e.is_transient() => {
                    return Err(Ended::Retry(format!(
                        "credentials of service account {sa} could not be read: {e}"
                    )));
                }
                Err(e) => {
                    return Err(failure(format!(
                        "credentials of service account {sa} could not be read: {e}"
                    )));
                }
            }
        }
        None => serde_json::Map::new(),
    };
    Ok((plugin, secret))
}

/// A plugin running for a task, streaming into `rx`.
pub(super) struct Running {
    producer: tokio::task::JoinHandle<Result<(), PluginError>>,
    pub(super) cancel: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
    diagnostics: Diagnostics,
}

impl Running {
    /// Starts the plugin; it stops when `stop` is cancelled or the collection lock is lost.
    pub(super) fn start(
        claimed: &Claimed,
        plugin: Arc<dyn Plugin>,
        secret: serde_json::Map<String, serde_json::Value>,
        stop: &CancellationToken,
        lock: &Held,
        room: usize,
        metrics: Option<Arc<MetricRequest>>,
    ) -> (Self, ItemReceiver) {
        let cancel = stop.child_token();
        // A lock lost while held (expired in Redis) stops the plugin: another collection may run.
        let lost = lock.lost().clone();
        let stop_on_loss = cancel.clone();
        let watcher = tokio::spawn(async move {
            lost.cancelled().await;
            stop_on_loss.cancel();
        });
        let diagnostics = Diagnostics::default();
        let request = CollectRequest {
            version: claimed.plugin_version.clone(),
            options: claimed.options.clone(),
            secret,
            task: TaskInfo {
                domain: claimed.domain,
                job_id: claimed.job_id,
                task_id: claimed.attempt.task,
                attempt: claimed.attempt.number,
                service_account_id: claimed.service_account_id,
                month: claimed.month,
                metrics,
                sub_task: claimed.sub_task.clone(),
            },
            cancel: cancel.clone(),
            diagnostics: diagnostics.clone(),
        };
        let (tx, rx) = crate::plugin::channel(room);
        let plugin_span =
            info_span!("plugin", name = %plugin.info().id, version = %claimed.plugin_version);
        let producer =
            tokio::spawn(async move { plugin.collect(request, tx).await }.instrument(plugin_span));
        let running = Self {
            producer,
            cancel,
            watcher,
            diagnostics,
        };
        (running, rx)
    }

    /// Stops the plugin (whatever ended the writing, the plugin must stop too) and returns
    /// how it ended.
    pub(super) async fn stop(self) -> (Result<(), PluginError>, Diagnostics) {
        self.cancel.cancel();
        let result = match self.producer.await {
            Ok(r) => r,
            Err(e) => Err(PluginError::Permanent(format!("the plugin panicked: {e}"))),
        };
        self.watcher.abort();
        (result, self.diagnostics)
    }
}

/// The stderr a plugin left, redacted, if any.
pub(super) fn stderr_of(
    diagnostics: &Diagnostics,
    secrets: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    diagnostics
        .take()
        .filter(|s| !s.is_empty())
        .map(|s| redact(&s, secrets))
}

/// What the writer saw.
#[derive(Default)]
pub(super) struct Summary {
    pub(super) counts: Counts,
    pub(super) errors: Vec<ItemError>,
    /// [`resource::key_hash`] of every resource reported.
    pub(super) seen: HashSet<u64>,
}

impl Summary {
    /// Keeps an item error for the task's message, the first few only.
    pub(super) fn keep(&mut self, e: ItemError) {
        if self.errors.len() < KEPT_ITEM_ERRORS {
            self.errors.push(e);
        }
    }

    pub(super) fn item_error_message(&self) -> String {
        let shown: Vec<String> = self
            .errors
            .iter()
            .map(|e| match (&e.resource_type, &e.resource_key) {
                (Some(t), Some(k)) => format!("{t}/{k}: {}", e.message),
                (_, Some(k)) => format!("{k}: {}", e.message),
                _ => e.message.clone(),
            })
            .collect();
        format!(
            "{} items failed ({} stored); first errors: {}",
            self.counts.failed,
            self.counts.seen(),
            shown.join("; ")
        )
    }
}

/// Room in a big task's channel: a whole batch, so the plugin produces the next batch while
/// this one is written instead of waiting for the database; memory stays bounded at about two
/// batches.
pub(super) fn big_room(ctx: &Context) -> usize {
    ctx.settings.batch_size.clamp(1, 20_000)
}

/// Whether a JSON value holds a NUL character in a string or a key, which PostgreSQL cannot
/// store in `jsonb`.
pub(super) fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}
