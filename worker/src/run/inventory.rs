//! A collector's run: the plugin's resources are written in batches (each one transaction,
//! fenced by the attempt), resources another collector reports too go through the priority
//! merge, and a run that succeeded plans the sweep of what it no longer saw, applied with its
//! end.

use std::sync::Arc;

use gleaner_common::external::redact;
use gleaner_common::lifecycle::{Claimed, Ended, Outcome};
use gleaner_common::model::{Counts, JobStatus};
use gleaner_common::store;
use gleaner_common::store::merge::{Reported, Reporter};
use gleaner_common::store::resource::{self, Sweep};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::batches::{Batches, read};
use super::{Running, Summary, big_room, failure, has_nul, prepare, stderr_of};
use crate::lock::Held;
use crate::plugin::{Item, ItemError, ItemReceiver, PluginError, ResourceItem};
use crate::sink::{Scope, SinkError, Written};
use crate::{Context, slots};

/// A collector's run: resources in batches, then, when it succeeded, the plan of the sweep of
/// what it no longer saw.
pub(super) async fn collect(
    ctx: &Context,
    claimed: &Claimed,
    stop: &CancellationToken,
    lock: &Held,
) -> Ended {
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
        task_id: claimed.attempt.task,
        attempt: claimed.attempt.number,
        shared: false,
        fresh: None,
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
        big_room(ctx) / Batches::writers(ctx, &scope)
    } else {
        slots::SMALL.min(big_room(ctx))
    };
    let secrets = secret.clone();
    let (running, rx) = Running::start(claimed, plugin, secret, stop, lock, room, None);
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
            seen: Arc::new(std::mem::take(&mut summary.seen)),
            delete_after: i32::from(ctx.settings.delete_after_missed_runs.max(1)),
        }),
        _ => None,
    };
    // Read before the end's transaction, which then only writes. A part of the account's
    // collection saw a part of its resources: its parts sweep together once all succeeded.
    let sweep = match sweep {
        Some(sweep) if claimed.sub_task.is_some() => {
            Some(Arc::new(resource::SweepPlan::of_part(sweep)))
        }
        Some(sweep) => {
            let planned = ctx
                .db_retry
                .run("plan the sweep", store::Error::is_transient, || {
                    ctx.groups.plan_sweep(sweep.clone())
                })
                .await;
            match planned {
                Ok(plan) => Some(Arc::new(plan)),
                Err(e) if e.is_transient() => {
                    return Ended::Retry(format!("planning the sweep failed: {e}"));
                }
                Err(e) => return failure(format!("planning the sweep failed: {e}")),
            }
        }
        None => None,
    };
    // Plugins echo what they were given; nothing of the credentials is kept with the task.
    Ended::Done(Outcome {
        status,
        error: error.map(|e| redact(&e, &secrets)),
        stderr: stderr_of(&diagnostics, &secrets),
        sweep,
    })
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
    let batch_size = ctx.settings.batch_size.max(1);
    let mut summary = Summary::default();
    // A small task's batch stays small: room for whole ones once the task is big.
    let mut batches = Batches::new(ctx, scope.clone(), batch_size.min(slots::SMALL));
    if full.is_some() {
        batches.grow(batch_size).await?;
    }
    let mut received = 0usize;
    let mut catalog: Vec<store::catalog::Entry> = Vec::new();
    while let Some(item) = rx.recv().await {
        received += 1;
        if full.is_none() && received > slots::SMALL && !rx.plugin_done() {
            let Some(slot) = ctx.slots.full(stop).await else {
                return Ok(Some(summary));
            };
            *full = Some(slot);
            batches.grow(batch_size).await?;
            rx.widen(batches.channel_room().saturating_sub(slots::SMALL));
        }
        match item {
            Item::Resource(r) if let Some(why) = refusal(&r) => {
                batches.fail();
                summary.keep(ItemError {
                    message: why,
                    resource_type: Some(r.resource_type),
                    resource_key: Some(r.resource_key),
                });
            }
            Item::Resource(r) => {
                summary
                    .seen
                    .insert(resource::key_hash(&r.resource_type, &r.resource_key));
                if !batches.push(r, &mut summary).await? {
                    return Ok(None);
                }
            }
            Item::Error(e) => {
                batches.fail();
                summary.keep(e);
            }
            Item::Cost(_) => {
                batches.fail();
                summary.keep(ItemError {
                    resource_type: None,
                    resource_key: None,
                    message:
                        "a collector reported a cost record; cost data sources run in billing jobs"
                            .into(),
                });
            }
            Item::Catalog(e) if catalog.len() >= MAX_CATALOG => {
                batches.fail();
                summary.keep(ItemError {
                    resource_type: None,
                    resource_key: Some(e.key),
                    message: format!(
                        "more than {MAX_CATALOG} catalog entries ({}) in one collection; the rest are not kept",
                        e.kind
                    ),
                });
            }
            Item::Catalog(e)
                if has_nul(&e.data)
                    || [&e.key, &e.provider].iter().any(|s| s.contains('\0'))
                    || e.name.as_deref().is_some_and(|n| n.contains('\0')) =>
            {
                batches.fail();
                summary.keep(ItemError {
                    resource_type: None,
                    resource_key: Some(e.key.replace('\0', "\\0")),
                    message: format!(
                        "a catalog entry ({}) contains a NUL character, which cannot be stored",
                        e.kind
                    ),
                });
            }
            Item::Catalog(e) => catalog.push(e),
            Item::Unchanged(_) => {
                batches.fail();
                summary.keep(ItemError {
                    resource_type: None,
                    resource_key: None,
                    message: "a collector reported a month of costs unchanged; cost data sources run in billing jobs".into(),
                });
            }
            Item::Samples(s) => {
                batches.fail();
                summary.keep(ItemError {
                    resource_type: None,
                    resource_key: Some(s.resource_id.to_string()),
                    message: "a collector reported metric samples; metric data sources run in metrics jobs".into(),
                });
            }
        }
    }
    if !batches.finish(&mut summary).await? {
        return Ok(None);
    }
    if !catalog.is_empty() {
        // Idempotent upserts of the newest report: a stale attempt's write does no harm.
        ctx.db_retry
            .run(
                "store the catalog entries",
                store::Error::is_transient,
                || store::catalog::upsert(&ctx.db, scope.domain, scope.collector_id, &catalog),
            )
            .await
            .map_err(|e| {
                if e.is_transient() {
                    SinkError::Db(e.to_string())
                } else {
                    SinkError::Refused(e.to_string())
                }
            })?;
    }
    Ok(Some(summary))
}

/// Catalog entries one collection may report: types and regions number hundreds at most.
const MAX_CATALOG: usize = 10_000;

/// Whether another collector of the domain reports resources of the task's provider, so a
/// batch may hold resources it owns. Asked before each batch until true: one query for the
/// collectors, whose providers come from the registry as for running them.
pub(super) async fn shares_provider(ctx: &Context, scope: &Scope) -> Result<bool, store::Error> {
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
pub(super) async fn flush(
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
        scope.shared = read(ctx, "find collectors sharing the provider", || {
            shares_provider(ctx, scope)
        })
        .await?;
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

/// Why the database would refuse a resource, if it would: PostgreSQL holds no NUL character in
/// text, nor in a JSON string. Refused as an item error before the write, where it would fail
/// the whole batch on every attempt.
fn refusal(r: &ResourceItem) -> Option<String> {
    let fields = [
        ("resource_type", Some(r.resource_type.as_str())),
        ("resource_key", Some(r.resource_key.as_str())),
        ("name", r.name.as_deref()),
        ("region", r.region.as_deref()),
    ];
    if let Some((field, _)) = fields
        .iter()
        .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
    {
        return Some(format!(
            "{field} contains a NUL character, which cannot be stored"
        ));
    }
    has_nul(&r.data).then(|| "data contains a NUL character, which cannot be stored".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_resource_with_a_nul_character_is_refused_naming_the_field() {
        let ok = ResourceItem {
            resource_type: "t".into(),
            resource_key: "k".into(),
            name: Some("n".into()),
            region: None,
            data: json!({"a": ["b", {"c": "d"}]}),
        };
        assert_eq!(refusal(&ok), None);
        type Break = fn(&mut ResourceItem);
        let cases: [(Break, &str); 4] = [
            (|r| r.resource_key = "k\0".into(), "resource_key"),
            (|r| r.name = Some("\0".into()), "name"),
            (|r| r.data = json!({"a": ["b", {"c": "d\u{0}"}]}), "data"),
            (|r| r.data = json!({"a\u{0}": 1}), "data"),
        ];
        for (break_it, field) in cases {
            let mut r = ok.clone();
            break_it(&mut r);
            let why = refusal(&r).unwrap_or_default();
            assert!(why.starts_with(field), "{field}: {why}");
        }
    }
}
