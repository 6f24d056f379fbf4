//! A cost data source's run: the month's costs of the service account are replaced with what
//! the plugin reports, in one transaction committed only when the plugin finished.

use gleaner_common::billing::Month;
use gleaner_common::external::redact;
use gleaner_common::lifecycle::{self, Claimed, Ended, Outcome};
use gleaner_common::model::{Counts, JobStatus};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Running, Summary, big_room, failure, has_nul, prepare, stderr_of, write_failed};
use crate::Context;
use crate::lock::Held;
use crate::plugin::{CostItem, Item, ItemError, ItemReceiver, PluginError};
use crate::sink::SinkError;
use crate::sink::costs::{CostLoad, CostScope};

/// Cost records per write of a load.
const COST_BATCH: usize = 10_000;

/// How often a load shows its progress on the task: every this many records.
const PROGRESS_EVERY: i64 = 100_000;

/// A billing task: replaces the month's costs of the service account with what the plugin
/// reports, in one transaction committed only when the plugin finished.
pub(super) async fn collect(
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
        task_id: claimed.attempt.task,
        attempt: claimed.attempt.number,
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
        Err(e) => return write_failed("costs", &e),
    };
    let secrets = secret.clone();
    let (running, rx) = Running::start(claimed, plugin, secret, stop, lock, big_room(ctx), None);
    let loaded = load_costs(ctx, claimed, load.as_mut(), month, rx).await;
    let (plugin_result, diagnostics) = running.stop().await;
    if stop.is_cancelled() {
        return Ended::Released;
    }
    let (mut summary, unchanged) = match loaded {
        Ok(s) => s,
        Err(e) => return write_failed("costs", &e),
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
            return Ended::Done(Outcome {
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
            });
        }
    }
    if lock.lost().is_cancelled() {
        return failure(
            "the collection lock expired while the import ran (Redis unreachable?); stopped so that two imports do not overlap",
        );
    }
    if let Some(why) = unchanged.filter(|_| summary.counts.created == 0) {
        // Dropping the load rolls its transaction back: the month stays as it was stored.
        let kept = load.replaced();
        drop(load);
        let counts = Counts {
            unchanged: kept,
            failed: summary.counts.failed,
            ..Counts::default()
        };
        let shown =
            lifecycle::task::add_progress(&ctx.db, claimed.attempt, claimed.job_id, &counts).await;
        if let Err(e) = shown {
            return Ended::Retry(format!("recording the task's counts failed: {e}"));
        }
        info!(%month, kept, reason = %why, "month of costs unchanged");
        return Ended::Done(Outcome {
            status: JobStatus::Success,
            error: None,
            stderr: stderr_of(&diagnostics, &secrets),
            sweep: None,
        });
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
        Err(e) => return write_failed("costs", &e),
    };
    info!(%month, records = counts.created, replaced = counts.deleted, malformed = counts.failed, "month of costs replaced");
    // Malformed records are reported, not a failure: the rest of the month is in, and the
    // next run replaces the month again once the export is fixed.
    summary.counts = counts;
    let error = (counts.failed > 0).then(|| summary.item_error_message());
    Ended::Done(Outcome {
        status: JobStatus::Success,
        error: error.map(|e| redact(&e, &secrets)),
        stderr: stderr_of(&diagnostics, &secrets),
        sweep: None,
    })
}

/// Copies the plugin's records into the load in batches; a record of another month, or a
/// resource, counts as malformed. Also returns why the source called the month unchanged, if
/// it did.
async fn load_costs(
    ctx: &Context,
    claimed: &Claimed,
    load: &mut dyn CostLoad,
    month: Month,
    mut rx: ItemReceiver,
) -> Result<(Summary, Option<String>), SinkError> {
    let mut summary = Summary::default();
    let mut unchanged = None;
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
                        let shown = lifecycle::task::loading(
                            &ctx.db,
                            claimed.attempt,
                            claimed.job_id,
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
            Item::Unchanged(why) => unchanged = Some(why),
            Item::Resource(r) => reject(
                &mut summary,
                format!(
                    "{}/{}: a cost data source reported a resource",
                    r.resource_type, r.resource_key
                ),
            ),
            Item::Samples(s) => reject(
                &mut summary,
                format!(
                    "{}/{}: a cost data source reported metric samples",
                    s.resource_id, s.metric
                ),
            ),
            Item::Catalog(e) => reject(
                &mut summary,
                format!(
                    "{}: a cost data source reported catalog data ({})",
                    e.key, e.kind
                ),
            ),
        }
    }
    load.write(&batch).await?;
    summary.counts.created += i64::try_from(batch.len()).unwrap_or(i64::MAX);
    Ok((summary, unchanged))
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
        ("usage_type", c.usage_type.as_deref()),
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
    let tags_nul = c
        .tags
        .as_ref()
        .is_some_and(|t| t.iter().any(|(k, v)| k.contains('\0') || has_nul(v)));
    tags_nul.then(|| "tags contain a NUL character".into())
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
