//! Running one claimed task: the plugin streams items, the runner cuts them into batches and
//! hands each to the sink, then records the outcome.
//!
//! Outcome rule: a task is SUCCESS only when the plugin finished and every item was stored. A
//! plugin failure, a write failure, or any item the plugin reported as failed makes the task
//! FAILURE (the items that were stored stay stored, and a failed task never deletes anything).
//! A transient failure (the plugin says so, or the database or Redis stayed unreachable through
//! the in-task retries) with attempts left is not an outcome: the task goes back to the queue
//! and runs again after a backoff.
//!
//! While it runs, a task renews its lease (the heartbeat); when the renewal finds that the
//! attempt no longer owns the task (canceled, timed out, or taken over after the lease ran
//! out), the plugin is stopped and nothing more is written.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gleaner_common::billing::Month;
use gleaner_common::lock::{Held, LockError, collection_key};
use gleaner_common::model::{Counts, JobKind, JobStatus};
use gleaner_common::store::merge::{Reported, Reporter};
use gleaner_common::store::resource::{self, Sweep};
use gleaner_common::store::task::{Claimed, Finished, Outcome};
use gleaner_common::store::{self, service_account};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::plugin::{
    CollectRequest, CostItem, Diagnostics, Item, ItemError, ItemReceiver, Plugin, PluginError,
    ResourceItem, TaskInfo,
};
use crate::sink::costs::{CostLoad, CostScope};
use crate::sink::{Scope, SinkError, Written};
use crate::{Context, slots};
use gleaner_common::external::redact;

/// Item errors kept for the task's error message; the count covers all of them.
const KEPT_ITEM_ERRORS: usize = 5;

/// How a run ended, before it is recorded.
enum Ended {
    /// Record this outcome; a successful collection's sweep is planned first.
    Done(Box<Outcome>, Option<Sweep>),
    /// A transient failure: run again after a backoff, if attempts are left.
    Retry(String),
    /// The attempt no longer owns the task; record nothing.
    Stale,
    /// The worker is stopping: hand the task back for another worker.
    Released,
}

/// How running a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// The outcome was recorded (or, when stale, another attempt owns the task).
    Finished(Finished),
    /// A transient failure: the task is queued again for its next attempt.
    Retrying,
    /// The worker is stopping: the task was handed back.
    Released,
}

/// Runs a claimed task to its end and records the outcome.
///
/// # Errors
/// The outcome could not be recorded (database unreachable); the caller retries the message.
pub async fn run(
    ctx: &Context,
    claimed: Claimed,
    stop: CancellationToken,
) -> Result<Ran, store::Error> {
    let span = info_span!("task", task_id = %claimed.task_id, job_id = %claimed.job_id, attempt = claimed.attempt,
        service_account_id = ?claimed.service_account_id.map(|s| s.to_string()));
    async move {
        let started = std::time::Instant::now();
        crate::metrics::task_started(claimed.kind, claimed.attempt);
        // Cancelled by the heartbeat when the attempt no longer owns the task; `halt` also on
        // the worker's stop, and is what the run itself watches.
        let fenced = CancellationToken::new();
        let halt = stop.child_token();
        // Beats until the outcome is recorded (planning the sweep and finishing can take a while),
        // and stops with the run however it ends, a panic included: a beat that outlived its
        // run would keep the task's lease forever.
        let heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            heartbeat(
                ctx.db.clone(),
                claimed.task_id,
                claimed.attempt,
                ctx.settings.lease,
                fenced.clone(),
                halt.clone(),
            )
            .in_current_span(),
        ));
        // Held until the outcome is recorded: the sweep of deleted resources must not run
        // beside the next collection of the same collector and account.
        let ended = match collection_lock(ctx, &claimed, &halt).await {
            Ok(Some(held)) => {
                let ended = if claimed.kind == JobKind::Billing {
                    collect_costs(ctx, &claimed, &halt, &held).await
                } else {
                    collect(ctx, &claimed, &halt, &held).await
                };
                Some((ended, held))
            }
            Ok(None) => None,
            Err(e) => {
                return settle(ctx, &claimed, Ended::Retry(e.to_string()), None, started).await;
            }
        };
        let (ended, lock) = match ended {
            _ if fenced.is_cancelled() => (Ended::Stale, None),
            Some((ended, held)) => (ended, Some(held)),
            None => (Ended::Released, None),
        };
        let ran = settle(ctx, &claimed, ended, lock, started).await;
        drop(heartbeat);
        let ran = ran?;
        if let Ran::Finished(Finished::Recorded(_)) = ran {
            info!(
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "task finished"
            );
        }
        Ok(ran)
    }
    .instrument(span)
    .await
}

/// Renews the attempt's lease every quarter of it until aborted. When the attempt turns out
/// not to own the task any more, cancels `fenced` and `halt`: the run stops its plugin. A
/// database error is retried at the next beat; if it lasts past the lease, the reaper hands the
/// task to a new attempt and this one's writes are fenced.
async fn heartbeat(
    db: sea_orm::DatabaseConnection,
    task: gleaner_common::id::TaskId,
    attempt: i32,
    lease: Duration,
    fenced: CancellationToken,
    halt: CancellationToken,
) {
    let every = (lease / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        match store::task::heartbeat(&db, task, attempt, lease).await {
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

/// Records how the run ended.
async fn settle(
    ctx: &Context,
    claimed: &Claimed,
    ended: Ended,
    lock: Option<Held>,
    started: std::time::Instant,
) -> Result<Ran, store::Error> {
    match ended {
        Ended::Stale => {
            info!("the attempt no longer owns the task; nothing more is recorded");
            Ok(Ran::Finished(Finished::Stale))
        }
        Ended::Released => {
            store::task::release(&ctx.db, claimed.task_id, claimed.attempt).await?;
            info!("task released for another worker");
            Ok(Ran::Released)
        }
        // Attempts handed back by a stopping worker do not use up the budget: failures do.
        Ended::Retry(error) if claimed.failures + 1 < claimed.max_attempts => {
            let delay = ctx
                .settings
                .task_retry()
                .jittered_delay_for(u32::try_from(claimed.failures + 2).unwrap_or(u32::MAX));
            let retried =
                store::task::retry_later(&ctx.db, claimed.task_id, claimed.attempt, &error, delay)
                    .await?;
            drop(lock);
            tracing::warn!(%error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    attempts = claimed.max_attempts, "attempt failed transiently; the task will run again");
            Ok(match retried {
                store::task::Retried::Queued => Ran::Retrying,
                store::task::Retried::Stale => Ran::Finished(Finished::Stale),
            })
        }
        Ended::Retry(error) => {
            let error = format!(
                "{error} ({} of {} attempts failed: no attempts left)",
                claimed.failures + 1,
                claimed.max_attempts
            );
            let finished = ctx
                .groups
                .finish(claimed.task_id, claimed.attempt, failure_outcome(error))
                .await?;
            drop(lock);
            crate::metrics::task_ended(
                claimed.kind,
                JobStatus::Failure,
                finished,
                started.elapsed(),
            );
            Ok(Ran::Finished(finished))
        }
        Ended::Done(mut outcome, sweep) => {
            if let Some(sweep) = sweep {
                // Read before the finishing transaction, which then only writes.
                let plan = ctx
                    .db_retry
                    .run("plan the sweep", store::Error::is_transient, || {
                        ctx.groups.plan_sweep(sweep.clone())
                    })
                    .await?;
                outcome.sweep = Some(plan);
            }
            let status = outcome.status;
            let finished = ctx
                .groups
                .finish(claimed.task_id, claimed.attempt, *outcome)
                .await?;
            info!(?status, "task outcome recorded");
            crate::metrics::task_ended(claimed.kind, status, finished, started.elapsed());
            if let Finished::Recorded(Some(job_status)) = finished {
                info!(?job_status, "job finished");
            }
            drop(lock);
            Ok(Ran::Finished(finished))
        }
    }
}

fn failure_outcome(error: impl Into<String>) -> Outcome {
    Outcome {
        status: JobStatus::Failure,
        error: Some(error.into()),
        stderr: None,
        sweep: None,
    }
}

fn failure(error: impl Into<String>) -> Ended {
    Ended::Done(Box::new(failure_outcome(error)), None)
}

/// The plugin to run and the decrypted credentials, or how the run ends before it starts.
async fn prepare(
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
struct Running {
    producer: tokio::task::JoinHandle<Result<(), PluginError>>,
    cancel: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
    diagnostics: Diagnostics,
}

impl Running {
    /// Starts the plugin; it stops when `stop` is cancelled or the collection lock is lost.
    fn start(
        claimed: &Claimed,
        plugin: Arc<dyn Plugin>,
        secret: serde_json::Map<String, serde_json::Value>,
        stop: &CancellationToken,
        lock: &Held,
        room: usize,
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
                task_id: claimed.task_id,
                attempt: claimed.attempt,
                service_account_id: claimed.service_account_id,
                month: claimed.month,
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
    async fn stop(self) -> (Result<(), PluginError>, Diagnostics) {
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
fn stderr_of(
    diagnostics: &Diagnostics,
    secrets: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    diagnostics
        .take()
        .filter(|s| !s.is_empty())
        .map(|s| redact(&s, secrets))
}

async fn collect(ctx: &Context, claimed: &Claimed, stop: &CancellationToken, lock: &Held) -> Ended {
    let (plugin, secret) = match prepare(ctx, claimed).await {
        Ok(p) => p,
        Err(ended) => return ended,
    };
    let scope = Scope {
        domain: claimed.domain,
        provider: claimed
            .provider
            .clone()
            .unwrap_or_else(|| plugin.info().provider.clone()),
        project_id: claimed.project_id,
        service_account_id: claimed.service_account_id,
        collector_id: claimed.collector_id,
        job_id: claimed.job_id,
        task_id: claimed.task_id,
        attempt: claimed.attempt,
        shared: false,
    };
    // A plugin process is big from the start; any other run, once it reports more than a
    // small batch.
    let mut full = if plugin.runs_a_process() {
        match ctx.slots.full(stop).await {
            Some(f) => Some(f),
            None => return Ended::Released,
        }
    } else {
        None
    };
    let room = if full.is_some() {
        big_room(ctx)
    } else {
        slots::SMALL.min(big_room(ctx))
    };
    let secrets = secret.clone();
    let (running, rx) = Running::start(claimed, plugin, secret, stop, lock, room);
    // The plugin's token: cancelled by a stop and by the loss of the collection lock, either of
    // which ends a wait for a full slot.
    let written = consume(ctx, &scope, rx, &mut full, &running.cancel).await;
    // Given back once the plugin stopped, its process included.
    let (plugin_result, diagnostics) = running.stop().await;
    drop(full);
    if stop.is_cancelled() {
        return Ended::Released;
    }
    if lock.lost().is_cancelled() {
        return failure(
            "the collection lock expired while the collection ran (Redis unreachable?); stopped so that two collections do not overlap",
        );
    }
    let summary = match written {
        Ok(Some(s)) => s,
        Ok(None) => return Ended::Stale,
        // Still failing after the in-task retries: the database is down for a while. Another
        // attempt later finds it back; every batch committed so far stays.
        Err(e) if e.is_transient() => return Ended::Retry(format!("writing results failed: {e}")),
        Err(e) => return failure(format!("writing results failed: {e}")),
    };
    let mut summary = summary;
    let (status, error) = match plugin_result {
        Err(PluginError::Stopped) if stop.is_cancelled() => return Ended::Released,
        Err(PluginError::Transient(e)) => {
            let error = format!(
                "plugin failed transiently after {} items: {e}",
                summary.counts.seen()
            );
            return Ended::Retry(redact(&error, &secrets));
        }
        Err(e) => (
            JobStatus::Failure,
            Some(format!(
                "plugin failed after {} items: {e}",
                summary.counts.seen()
            )),
        ),
        Ok(()) if summary.counts.failed > 0 => {
            (JobStatus::Failure, Some(summary.item_error_message()))
        }
        Ok(()) => (JobStatus::Success, None),
    };
    // Only a complete, successful collection says what no longer exists.
    let sweep = match (status, scope.collector_id) {
        (JobStatus::Success, Some(collector_id)) => Some(Sweep {
            domain: scope.domain,
            provider: scope.provider.clone(),
            collector_id,
            service_account_id: scope.service_account_id,
            job_id: scope.job_id,
            seen: std::mem::take(&mut summary.seen),
            delete_after: i32::from(ctx.settings.delete_after_missed_runs.max(1)),
        }),
        _ => None,
    };
    // Plugins echo what they were given; nothing of the credentials is kept with the task.
    Ended::Done(
        Box::new(Outcome {
            status,
            sweep: None,
            error: error.map(|e| redact(&e, &secrets)),
            stderr: stderr_of(&diagnostics, &secrets),
        }),
        sweep,
    )
}

/// Cost records per write of a load.
const COST_BATCH: usize = 10_000;

/// How often a load shows its progress on the task: every this many records.
const PROGRESS_EVERY: i64 = 100_000;

/// A billing task: replaces the month's costs of the service account with what the plugin
/// reports, in one transaction committed only when the plugin finished.
async fn collect_costs(
    ctx: &Context,
    claimed: &Claimed,
    stop: &CancellationToken,
    lock: &Held,
) -> Ended {
    let (Some(month), Some(service_account_id), Some(collector_id)) = (
        claimed.month,
        claimed.service_account_id,
        claimed.collector_id,
    ) else {
        return failure("a billing task needs a collector, a service account and a month");
    };
    if claimed.project_id.is_none() {
        return failure(format!(
            "service account {service_account_id} has no project: billing data is totalled per project, so set its project_id first"
        ));
    }
    let Some(sink) = ctx.costs.clone() else {
        return failure("this worker was started without a store for costs");
    };
    let (plugin, secret) = match prepare(ctx, claimed).await {
        Ok(p) => p,
        Err(ended) => return ended,
    };
    // A month of costs in one transaction is big.
    let Some(_full) = ctx.slots.full(stop).await else {
        return Ended::Released;
    };
    let scope = CostScope {
        domain: claimed.domain,
        collector_id,
        service_account_id,
        job_id: claimed.job_id,
        task_id: claimed.task_id,
        attempt: claimed.attempt,
        month,
    };
    let load = ctx
        .db_retry
        .run("begin the cost load", SinkError::is_transient, || {
            sink.begin(&scope)
        })
        .await;
    let mut load = match load {
        Ok(l) => l,
        Err(e) => return cost_write_failed(&e),
    };
    let secrets = secret.clone();
    let (running, rx) = Running::start(claimed, plugin, secret, stop, lock, big_room(ctx));
    let loaded = load_costs(ctx, claimed, load.as_mut(), month, rx).await;
    let (plugin_result, diagnostics) = running.stop().await;
    if stop.is_cancelled() {
        return Ended::Released;
    }
    let mut summary = match loaded {
        Ok(s) => s,
        Err(e) => return cost_write_failed(&e),
    };
    match plugin_result {
        Ok(()) => {}
        Err(PluginError::Transient(e)) => {
            return Ended::Retry(redact(
                &format!("plugin failed transiently; the month's costs are unchanged: {e}"),
                &secrets,
            ));
        }
        Err(e) => {
            return Ended::Done(
                Box::new(Outcome {
                    status: JobStatus::Failure,
                    error: Some(redact(
                        &format!(
                            "plugin failed after {} records; the month's costs are unchanged: {e}",
                            summary.counts.created
                        ),
                        &secrets,
                    )),
                    stderr: stderr_of(&diagnostics, &secrets),
                    sweep: None,
                }),
                None,
            );
        }
    }
    if lock.lost().is_cancelled() {
        return failure(
            "the collection lock expired while the import ran (Redis unreachable?); stopped so that two imports do not overlap",
        );
    }
    if summary.counts.created == 0 && load.replaced() > 0 {
        // An export that lost the month (rotated, not written yet) must not wipe it: a month
        // is only replaced by records.
        return failure(format!(
            "the source reported no records for {month} (and {} malformed); the {} records stored before were kept",
            summary.counts.failed,
            load.replaced()
        ));
    }
    let committed = load.commit(summary.counts.failed).await;
    let counts = match committed {
        Ok(Some(c)) => c,
        Ok(None) => return Ended::Stale,
        Err(e) => return cost_write_failed(&e),
    };
    info!(%month, records = counts.created, replaced = counts.deleted, malformed = counts.failed, "month of costs replaced");
    // Malformed records are reported, not a failure: the rest of the month is in, and the
    // next run replaces the month again once the export is fixed.
    summary.counts = counts;
    let error = (counts.failed > 0).then(|| summary.item_error_message());
    Ended::Done(
        Box::new(Outcome {
            status: JobStatus::Success,
            error: error.map(|e| redact(&e, &secrets)),
            stderr: stderr_of(&diagnostics, &secrets),
            sweep: None,
        }),
        None,
    )
}

/// How a task ends when its load failed: the month is loaded again from the start by the next
/// attempt when the failure may pass (the transaction is gone either way).
fn cost_write_failed(e: &SinkError) -> Ended {
    let error = format!("writing costs failed: {e}");
    if e.is_transient() {
        Ended::Retry(error)
    } else {
        failure(error)
    }
}

/// Copies the plugin's records into the load in batches; a record of another month, or a
/// resource, counts as malformed.
async fn load_costs(
    ctx: &Context,
    claimed: &Claimed,
    load: &mut dyn CostLoad,
    month: Month,
    mut rx: ItemReceiver,
) -> Result<Summary, SinkError> {
    let mut summary = Summary::default();
    let mut batch: Vec<CostItem> = Vec::with_capacity(COST_BATCH);
    let reject = |summary: &mut Summary, message: String| {
        summary.counts.failed += 1;
        summary.keep(ItemError {
            resource_type: None,
            resource_key: None,
            message,
        });
    };
    while let Some(item) = rx.recv().await {
        match item {
            Item::Cost(c) if Month::of(c.charge_period_start.date_naive()) == month => {
                if let Some(why) = refusal(&c) {
                    reject(&mut summary, why);
                    continue;
                }
                batch.push(*c);
                if batch.len() >= COST_BATCH {
                    load.write(&batch).await?;
                    summary.counts.created += i64::try_from(batch.len()).unwrap_or(i64::MAX);
                    batch.clear();
                    if summary.counts.created % PROGRESS_EVERY == 0 {
                        // Progress only: a failure to show it is not the load's.
                        let shown = store::task::loading(
                            &ctx.db,
                            claimed.task_id,
                            claimed.job_id,
                            claimed.attempt,
                            summary.counts.created,
                        )
                        .await;
                        if let Err(e) = shown {
                            debug!(error = %e, "showing the load's progress failed");
                        }
                    }
                }
            }
            Item::Cost(c) => reject(
                &mut summary,
                format!(
                    "a record charged on {} is outside the task's month {month}",
                    c.charge_period_start.date_naive()
                ),
            ),
            Item::Error(e) => reject(&mut summary, e.message),
            Item::Resource(r) => reject(
                &mut summary,
                format!(
                    "{}/{}: a cost data source reported a resource",
                    r.resource_type, r.resource_key
                ),
            ),
        }
    }
    load.write(&batch).await?;
    summary.counts.created += i64::try_from(batch.len()).unwrap_or(i64::MAX);
    Ok(summary)
}

/// Amounts at or beyond this (in absolute value) are refused: sums of a month's records must
/// stay exact in `rust_decimal`'s 96 bits.
const MAX_AMOUNT: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);

/// Why a cost record cannot be stored, if it cannot: checked before it reaches the database,
/// where one refused value would fail the whole month's load on every retry.
fn refusal(c: &CostItem) -> Option<String> {
    if c.currency.len() != 3 || !c.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Some(format!("currency `{}` is not an ISO 4217 code", c.currency));
    }
    let amounts = [
        ("billed_cost", Some(c.billed_cost)),
        ("effective_cost", Some(c.effective_cost)),
        ("list_cost", Some(c.list_cost)),
        ("consumed_quantity", c.consumed_quantity),
        ("pricing_quantity", c.pricing_quantity),
    ];
    for (name, value) in amounts {
        if value.is_some_and(|v| v.abs() >= MAX_AMOUNT) {
            return Some(format!("{name} is out of range (at most 10^15)"));
        }
    }
    let texts = [
        ("provider", Some(c.provider.as_str())),
        ("billing_account_id", Some(c.billing_account_id.as_str())),
        ("billing_account_name", c.billing_account_name.as_deref()),
        ("sub_account_id", c.sub_account_id.as_deref()),
        ("sub_account_name", c.sub_account_name.as_deref()),
        ("service_name", c.service_name.as_deref()),
        ("service_category", c.service_category.as_deref()),
        ("region_id", c.region_id.as_deref()),
        ("resource_id", c.resource_id.as_deref()),
        ("charge_category", c.charge_category.as_deref()),
        ("consumed_unit", c.consumed_unit.as_deref()),
        ("pricing_unit", c.pricing_unit.as_deref()),
    ];
    if let Some((name, _)) = texts
        .iter()
        .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
    {
        return Some(format!("{name} contains a NUL character"));
    }
    if c.provider.is_empty() || c.billing_account_id.is_empty() {
        return Some("provider and billing_account_id must not be empty".into());
    }
    let tags_nul = c.tags.as_ref().is_some_and(|t| {
        t.iter()
            .any(|(k, v)| k.contains('\0') || v.to_string().contains("\\u0000"))
    });
    tags_nul.then(|| "tags contain a NUL character".into())
}

/// What the writer saw.
#[derive(Default)]
struct Summary {
    counts: Counts,
    errors: Vec<ItemError>,
    /// [`resource::key_hash`] of every resource reported.
    seen: HashSet<u64>,
}

impl Summary {
    /// Keeps an item error for the task's message, the first few only.
    fn keep(&mut self, e: ItemError) {
        if self.errors.len() < KEPT_ITEM_ERRORS {
            self.errors.push(e);
        }
    }

    fn item_error_message(&self) -> String {
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
fn big_room(ctx: &Context) -> usize {
    ctx.settings.batch_size.clamp(1, 20_000)
}

/// Reads the plugin's stream and writes it in batches. `Ok(None)` when the task turned out to
/// be stale. A task without a full slot takes one once its plugin reports more than
/// [`slots::SMALL`] items and is not done yet (what a plugin that is done left in the channel
/// is all there will be); if `stop` comes while it waits, it returns what it has (the caller
/// sees why).
async fn consume(
    ctx: &Context,
    scope: &Scope,
    mut rx: ItemReceiver,
    full: &mut Option<slots::Full>,
    stop: &CancellationToken,
) -> Result<Option<Summary>, SinkError> {
    let scope = &mut scope.clone();
    let batch_size = ctx.settings.batch_size.max(1);
    let mut summary = Summary::default();
    // A small task's batch stays small: room for a whole one once the task is big.
    let room = if full.is_some() {
        batch_size
    } else {
        batch_size.min(slots::SMALL)
    };
    let mut batch: Vec<ResourceItem> = Vec::with_capacity(room);
    let mut keys: HashSet<(String, String)> = HashSet::with_capacity(room);
    let mut pending_failed = 0i64;
    let mut received = 0usize;
    while let Some(item) = rx.recv().await {
        received += 1;
        if full.is_none() && received > slots::SMALL && !rx.plugin_done() {
            let Some(slot) = ctx.slots.full(stop).await else {
                return Ok(Some(summary));
            };
            *full = Some(slot);
            rx.widen(big_room(ctx).saturating_sub(slots::SMALL));
            batch.reserve(batch_size.saturating_sub(batch.len()));
            keys.reserve(batch_size.saturating_sub(keys.len()));
        }
        match item {
            Item::Resource(r) => {
                summary
                    .seen
                    .insert(resource::key_hash(&r.resource_type, &r.resource_key));
                // A key may appear once per upsert statement; a repeat starts a new batch so
                // the later version wins, as it would have row by row.
                if !keys.insert((r.resource_type.clone(), r.resource_key.clone())) {
                    if !flush(ctx, scope, &mut batch, &mut pending_failed, &mut summary).await? {
                        return Ok(None);
                    }
                    keys.clear();
                    keys.insert((r.resource_type.clone(), r.resource_key.clone()));
                }
                batch.push(r);
            }
            Item::Error(e) => {
                pending_failed += 1;
                summary.keep(e);
            }
            Item::Cost(_) => {
                pending_failed += 1;
                summary.keep(ItemError {
                    resource_type: None,
                    resource_key: None,
                    message:
                        "a collector reported a cost record; cost data sources run in billing jobs"
                            .into(),
                });
            }
        }
        if batch.len() >= batch_size {
            if !flush(ctx, scope, &mut batch, &mut pending_failed, &mut summary).await? {
                return Ok(None);
            }
            keys.clear();
        }
    }
    if (!batch.is_empty() || pending_failed > 0)
        && !flush(ctx, scope, &mut batch, &mut pending_failed, &mut summary).await?
    {
        return Ok(None);
    }
    Ok(Some(summary))
}

/// How often a task waiting for the collection lock asks again.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// Waits until no other collection of the same collector and service account runs, and takes
/// its lock (the documented rule: the later collection waits, holding its worker slot, rather
/// than overlap or be skipped). `None` when the worker stops while waiting.
async fn collection_lock(
    ctx: &Context,
    claimed: &Claimed,
    stop: &CancellationToken,
) -> Result<Option<Held>, LockError> {
    let Some(collector) = claimed.collector_id else {
        return Ok(Some(Held::none()));
    };
    let key = collection_key(
        &collector.to_string(),
        claimed.service_account_id.map(|s| s.to_string()).as_deref(),
    );
    let mut waited = false;
    loop {
        let attempt = ctx
            .db_retry
            .run(
                "take the collection lock",
                |_: &LockError| true,
                || ctx.locks.try_acquire(&key),
            )
            .await?;
        if let Some(held) = attempt {
            if waited {
                info!("the other collection ended; starting");
            }
            return Ok(Some(held));
        }
        if !waited {
            info!("another collection of this collector and account is running; waiting for it");
            waited = true;
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

/// Whether another collector of the domain reports resources of the task's provider, so a
/// batch may hold resources it owns. Asked before each batch until true: one query for the
/// collectors, whose providers come from the registry as for running them.
async fn shares_provider(ctx: &Context, scope: &Scope) -> Result<bool, store::Error> {
    let Some(me) = scope.collector_id else {
        return Ok(false);
    };
    for (id, plugin_id, version) in ctx.groups.collectors(scope.domain).await? {
        if id == me {
            continue;
        }
        let plugin = ctx
            .registry
            .resolve(&ctx.db, scope.domain, &plugin_id, &version)
            .await?;
        // A plugin this worker cannot describe might report this provider: check.
        if plugin.is_none_or(|p| p.info().provider == scope.provider) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes the batch's contested resources through the priority merge. `None` when the task is
/// stale.
async fn merge(
    ctx: &Context,
    scope: &Scope,
    batch: &[ResourceItem],
    contested: &[usize],
) -> Result<Option<Counts>, SinkError> {
    let Some(collector_id) = scope.collector_id else {
        return Ok(Some(Counts::default()));
    };
    let who = Reporter {
        domain: scope.domain,
        provider: scope.provider.clone(),
        collector_id,
        service_account_id: scope.service_account_id,
        project_id: scope.project_id,
        job_id: scope.job_id,
        task_id: scope.task_id,
        attempt: scope.attempt,
    };
    let items: Vec<Reported> = contested
        .iter()
        .filter_map(|&n| batch.get(n))
        .map(|i| Reported {
            resource_type: i.resource_type.clone(),
            resource_key: i.resource_key.clone(),
            name: i.name.clone(),
            region: i.region.clone(),
            data: i.data.clone(),
        })
        .collect();
    ctx.db_retry
        .run(
            "merge contested resources",
            store::Error::is_transient,
            || store::merge::write_reported(&ctx.db, &who, items.clone()),
        )
        .await
        .map_err(|e| {
            if e.is_transient() {
                SinkError::Db(e.to_string())
            } else {
                SinkError::Merge(e.to_string())
            }
        })
}

/// Writes the batch, retrying transient database errors. `false` when the task is stale.
async fn flush(
    ctx: &Context,
    scope: &mut Scope,
    batch: &mut Vec<ResourceItem>,
    failed: &mut i64,
    summary: &mut Summary,
) -> Result<bool, SinkError> {
    let started = std::time::Instant::now();
    // Asked again before each batch until true: a collector of the same provider created while
    // this task runs makes the rest of its batches check for resources that collector owns.
    if !scope.shared {
        scope.shared = ctx
            .db_retry
            .run(
                "find collectors sharing the provider",
                store::Error::is_transient,
                || shares_provider(ctx, scope),
            )
            .await
            .map_err(|e| SinkError::Db(e.to_string()))?;
    }
    let scope = &*scope;
    let written = ctx
        .db_retry
        .run("write batch", SinkError::is_transient, || {
            ctx.write(scope, batch, *failed)
        })
        .await?;
    match written {
        Written::Stale => Ok(false),
        Written::Committed {
            mut counts,
            contested,
        } => {
            if !contested.is_empty() {
                let Some(merged) = merge(ctx, scope, batch, &contested).await? else {
                    return Ok(false);
                };
                counts += merged;
            }
            debug!(
                rows = batch.len(),
                created = counts.created,
                updated = counts.updated,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "batch written"
            );
            summary.counts += counts;
            batch.clear();
            *failed = 0;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CostItem {
        crate::plugin::test_cost(Decimal::new(1, 2))
    }

    #[test]
    fn records_the_database_would_refuse_are_caught_first() {
        assert_eq!(MAX_AMOUNT, Decimal::from(1_000_000_000_000_000_i64));
        assert_eq!(refusal(&record()), None);
        type Break = fn(&mut CostItem);
        let cases: [(Break, &str); 5] = [
            (|c| c.currency = "usd".into(), "currency"),
            (|c| c.billed_cost = MAX_AMOUNT, "billed_cost"),
            (
                |c| c.consumed_quantity = Some(-MAX_AMOUNT),
                "consumed_quantity",
            ),
            (|c| c.service_name = Some("a\0b".into()), "service_name"),
            (
                |c| {
                    c.tags = serde_json::json!({"k": "a\u{0}b"}).as_object().cloned();
                },
                "tags",
            ),
        ];
        for (break_it, field) in cases {
            let mut c = record();
            break_it(&mut c);
            let why = refusal(&c).unwrap_or_default();
            assert!(why.starts_with(field), "{field}: {why}");
        }
    }
}
