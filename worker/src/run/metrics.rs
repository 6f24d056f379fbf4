//! A metric data source's run: the resources the plugin asks for ([`TargetScope`]: by default
//! the service account's, of the types it declares metrics for), collected from each series'
//! watermark (or the first backfill's start) up to the task's start.
//!
//! The run keeps each series' high-water mark: a sample at or before it is dropped as stored
//! already (counted `unchanged`), so a source must report each series oldest first, and
//! re-collecting a window stores nothing twice. Accepted samples are summed into their 5-minute
//! and hourly buckets on the way; a batch carries the buckets it finished, and the partial sums
//! of the ones still open, with the new watermarks, so what a committed batch stored is whole
//! in every table. One batch is written while the next is gathered.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Days, Utc};
use gleaner_common::external::redact;
use gleaner_common::lifecycle::{Claimed, Ended, Outcome};
use gleaner_common::metric::{ANY_TYPE, Agg, Tier, instant, millis};
use gleaner_common::model::JobStatus;
use gleaner_common::store::{self, metric::Target};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Running, Summary, failure, prepare, stderr_of, write_failed};
use crate::Context;
use crate::lock::Held;
use crate::plugin::{
    Item, ItemError, ItemReceiver, MetricRequest, MetricTarget, PluginError, TargetScope,
};
use crate::sink::SinkError;
use crate::sink::metrics::{MetricBatch, MetricScope, MetricSink, RollupRow, SampleRow, SeriesKey};

/// Samples per transaction.
const BATCH: usize = 100_000;

/// Items (each up to a few thousand samples) that may wait between the plugin and the run.
const ROOM: usize = 64;

/// How far past the task's start a sample may be (a source's clock ahead of ours) before it is
/// refused.
const SKEW_MS: i64 = 5 * 60_000;

/// A metrics task.
pub(super) async fn collect(
    ctx: &Context,
    claimed: &Claimed,
    stop: &CancellationToken,
    lock: &Held,
) -> Ended {
    let Some(account) = claimed.service_account_id else {
        return failure("a metrics task needs a service account");
    };
    let Some(sink) = ctx.metrics.clone() else {
        return failure("this worker was started without a store for metrics");
    };
    let (plugin, secret) = match prepare(ctx, claimed).await {
        Ok(p) => p,
        Err(ended) => return ended,
    };
    let info = plugin.info().clone();
    let mut declared: HashMap<String, Vec<String>> = HashMap::new();
    for m in &info.metrics {
        declared
            .entry(m.resource_type.clone())
            .or_default()
            .push(m.name.clone());
    }
    let scope = match plugin.metric_targets(&claimed.options) {
        Ok(scope) => scope,
        Err(e) => return failure(redact(&e.to_string(), &secret)),
    };
    let end = millis(Utc::now());
    let floor = end - ctx.metric_settings.reach().num_milliseconds();
    let found = ctx
        .db_retry
        .run("find the resources", store::Error::is_transient, || async {
            let targets = match &scope {
                TargetScope::Account(types) => {
                    store::metric::targets(&ctx.db, claimed.domain, account, types).await?
                }
                TargetScope::Project(types) => {
                    store::metric::project_targets(
                        &ctx.db,
                        claimed.domain,
                        claimed.project_id,
                        types,
                    )
                    .await?
                }
            };
            let ids: Vec<_> = targets.iter().map(|t| t.id).collect();
            let marks = store::metric::watermarks(&ctx.db, &ids).await?;
            Ok::<_, store::Error>((targets, marks))
        })
        .await;
    let (targets, marks) = match found {
        Ok(f) => f,
        Err(e) if e.is_transient() => {
            return Ended::Retry(format!("reading resources failed: {e}"));
        }
        Err(e) => return failure(format!("reading resources failed: {e}")),
    };
    let request = Arc::new(MetricRequest {
        targets: targets
            .iter()
            .map(|t| MetricTarget {
                since: instant(since(t, &declared, &marks, floor)),
                watermarks: declared_for(&declared, &t.resource_type)
                    .filter_map(|m| {
                        let mark = marks.get(&(t.id, m.clone()))?;
                        Some((m.clone(), instant(*mark)))
                    })
                    .collect(),
                floor: instant(floor),
                resource: t.clone(),
            })
            .collect(),
        end: instant(end),
    });
    let (from, to) = (
        instant(floor).date_naive(),
        instant(end + SKEW_MS).date_naive() + Days::new(1),
    );
    let prepared = ctx
        .db_retry
        .run("make room for samples", SinkError::is_transient, || {
            sink.prepare(from, to)
        })
        .await;
    if let Err(e) = prepared {
        return write_failed("samples", &e);
    }
    let scope = MetricScope {
        domain: claimed.domain,
        collector_id: claimed.collector_id,
        job_id: claimed.job_id,
        task_id: claimed.attempt.task,
        attempt: claimed.attempt.number,
    };
    let mut series = Series::new(&targets, &declared, marks, floor, end + SKEW_MS);
    let secrets = secret.clone();
    let (running, rx) = Running::start(claimed, plugin, secret, stop, lock, ROOM, Some(request));
    let written = consume(ctx, sink, scope, &mut series, rx).await;
    let (plugin_result, diagnostics) = running.stop().await;
    if stop.is_cancelled() {
        return Ended::Released;
    }
    let summary = match written {
        Ok(Some(s)) => s,
        Ok(None) => return Ended::Stale,
        Err(e) => return write_failed("samples", &e),
    };
    let (status, error) = match plugin_result {
        Err(PluginError::Stopped) if stop.is_cancelled() => return Ended::Released,
        Err(PluginError::Transient(e)) => {
            return Ended::Retry(redact(
                &format!(
                    "plugin failed transiently after {} samples (kept): {e}",
                    summary.counts.created
                ),
                &secrets,
            ));
        }
        Err(e) => (
            JobStatus::Failure,
            Some(format!(
                "plugin failed after {} samples (kept): {e}",
                summary.counts.created
            )),
        ),
        Ok(()) if summary.counts.failed > 0 => {
            (JobStatus::Failure, Some(summary.item_error_message()))
        }
        Ok(()) => (JobStatus::Success, None),
    };
    info!(
        resources = targets.len(),
        stored = summary.counts.created,
        already_stored = summary.counts.unchanged,
        refused = summary.counts.failed,
        "metrics collected"
    );
    Ended::Done(Outcome {
        status,
        error: error.map(|e| redact(&e, &secrets)),
        stderr: stderr_of(&diagnostics, &secrets),
        sweep: None,
    })
}

/// Where a resource's collection starts: its series' oldest watermark, none before `floor`.
fn since(
    target: &Target,
    declared: &HashMap<String, Vec<String>>,
    marks: &HashMap<(gleaner_common::id::ResourceId, String), i64>,
    floor: i64,
) -> i64 {
    declared_for(declared, &target.resource_type)
        .map(|m| {
            marks
                .get(&(target.id, m.clone()))
                .copied()
                .unwrap_or(floor)
                .max(floor)
        })
        .min()
        .unwrap_or(floor)
}

/// The metrics declared for a resource type: its own and those of any type.
fn declared_for<'a>(
    declared: &'a HashMap<String, Vec<String>>,
    resource_type: &str,
) -> impl Iterator<Item = &'a String> {
    [resource_type, ANY_TYPE]
        .into_iter()
        .filter_map(|t| declared.get(t))
        .flatten()
}

/// One series' state in a run.
struct State {
    key: Arc<SeriesKey>,
    /// The newest sample stored or accepted, in milliseconds.
    high: i64,
    /// The open 5-minute and hourly buckets: start and partial sums.
    open: [Option<(i64, Agg)>; 2],
    /// Whether the current batch has samples of it.
    touched: bool,
}

/// Every series of a run, and the rules a sample must pass.
struct Series {
    /// Each target's type, by id.
    types: HashMap<gleaner_common::id::ResourceId, String>,
    declared: HashMap<String, Vec<String>>,
    marks: HashMap<(gleaner_common::id::ResourceId, String), i64>,
    states: Vec<State>,
    index: HashMap<(gleaner_common::id::ResourceId, String), usize>,
    touched: Vec<usize>,
    floor: i64,
    latest: i64,
}

/// Why a sample was not accepted.
enum Verdict {
    Accepted,
    /// At or before the series' watermark, or before the collection's reach.
    Stored,
    Refused(String),
}

impl Series {
    fn new(
        targets: &[Target],
        declared: &HashMap<String, Vec<String>>,
        marks: HashMap<(gleaner_common::id::ResourceId, String), i64>,
        floor: i64,
        latest: i64,
    ) -> Self {
        Self {
            types: targets
                .iter()
                .map(|t| (t.id, t.resource_type.clone()))
                .collect(),
            declared: declared.clone(),
            marks,
            states: Vec::new(),
            index: HashMap::new(),
            touched: Vec::new(),
            floor,
            latest,
        }
    }

    /// The state of a series, made on its first sample; `Err` says why the series is refused.
    fn state(
        &mut self,
        resource: gleaner_common::id::ResourceId,
        metric: String,
    ) -> Result<usize, String> {
        let key = (resource, metric);
        if let Some(&i) = self.index.get(&key) {
            return Ok(i);
        }
        let Some(kind) = self.types.get(&resource) else {
            return Err(format!(
                "resource {resource} is not one this task collects for"
            ));
        };
        if !declared_for(&self.declared, kind).any(|m| *m == key.1) {
            return Err(format!(
                "metric `{}` is not one the plugin declares for {kind}",
                key.1
            ));
        }
        let high = self
            .marks
            .get(&key)
            .copied()
            .unwrap_or(i64::MIN)
            .max(self.floor);
        let i = self.states.len();
        self.states.push(State {
            key: Arc::new(SeriesKey {
                resource,
                metric: Arc::from(key.1.as_str()),
            }),
            high,
            open: [None, None],
            touched: false,
        });
        self.index.insert(key, i);
        Ok(i)
    }

    /// Takes a sample of series `i` into `batch`.
    fn take(&mut self, i: usize, time: i64, value: f64, batch: &mut MetricBatch) -> Verdict {
        if !value.is_finite() {
            return Verdict::Refused(format!("value {value} is not a finite number"));
        }
        if time > self.latest {
            return Verdict::Refused(format!(
                "a sample at {} is after the collection's end",
                instant(time)
            ));
        }
        let s = &mut self.states[i];
        if time <= s.high {
            return Verdict::Stored;
        }
        s.high = time;
        if !s.touched {
            s.touched = true;
            self.touched.push(i);
        }
        batch.samples.push(SampleRow {
            series: Arc::clone(&s.key),
            time,
            value,
        });
        for (slot, tier) in s.open.iter_mut().zip([Tier::FiveMinutes, Tier::Hour]) {
            let bucket = tier.bucket(time);
            match slot {
                Some((b, agg)) if *b == bucket => agg.add(value),
                _ => {
                    if let Some((b, agg)) = slot.take() {
                        batch.rollups.push(RollupRow {
                            series: Arc::clone(&s.key),
                            tier,
                            bucket: b,
                            agg,
                        });
                    }
                    let mut agg = Agg::default();
                    agg.add(value);
                    *slot = Some((bucket, agg));
                }
            }
        }
        Verdict::Accepted
    }

    /// Closes a batch: the open buckets' partial sums and the watermarks of every series it
    /// touched.
    fn close(&mut self, batch: &mut MetricBatch) {
        for i in self.touched.drain(..) {
            let s = &mut self.states[i];
            s.touched = false;
            for (slot, tier) in s.open.iter_mut().zip([Tier::FiveMinutes, Tier::Hour]) {
                if let Some((bucket, agg)) = slot.take() {
                    batch.rollups.push(RollupRow {
                        series: Arc::clone(&s.key),
                        tier,
                        bucket,
                        agg,
                    });
                }
            }
            batch.watermarks.push((Arc::clone(&s.key), s.high));
        }
    }
}

/// Reads the plugin's stream and writes it in batches, one written while the next is
/// gathered. `Ok(None)` when the task turned out to be stale.
async fn consume(
    ctx: &Context,
    sink: Arc<dyn MetricSink>,
    scope: MetricScope,
    series: &mut Series,
    mut rx: ItemReceiver,
) -> Result<Option<Summary>, SinkError> {
    let (batches, queue) = mpsc::channel::<MetricBatch>(1);
    let writer = tokio::spawn(write_all(sink, scope, ctx.db_retry, queue));
    let mut summary = Summary::default();
    let mut batch = MetricBatch::default();
    let refuse = |summary: &mut Summary, batch: &mut MetricBatch, n: usize, e: ItemError| {
        batch.counts.failed += i64::try_from(n).unwrap_or(i64::MAX);
        summary.keep(e);
    };
    while let Some(item) = rx.recv().await {
        match item {
            Item::Samples(s) => match series.state(s.resource_id, s.metric.clone()) {
                Ok(i) => {
                    for p in &s.points {
                        match series.take(i, millis(p.time), p.value, &mut batch) {
                            Verdict::Accepted => batch.counts.created += 1,
                            Verdict::Stored => batch.counts.unchanged += 1,
                            Verdict::Refused(why) => refuse(
                                &mut summary,
                                &mut batch,
                                1,
                                ItemError {
                                    resource_type: None,
                                    resource_key: Some(format!("{}/{}", s.resource_id, s.metric)),
                                    message: why,
                                },
                            ),
                        }
                    }
                }
                Err(why) => refuse(
                    &mut summary,
                    &mut batch,
                    s.points.len(),
                    ItemError {
                        resource_type: None,
                        resource_key: Some(s.resource_id.to_string()),
                        message: why,
                    },
                ),
            },
            Item::Error(e) => refuse(&mut summary, &mut batch, 1, e),
            Item::Resource(r) => refuse(
                &mut summary,
                &mut batch,
                1,
                ItemError {
                    message: "a metric data source reported a resource".into(),
                    resource_type: Some(r.resource_type),
                    resource_key: Some(r.resource_key),
                },
            ),
            Item::Cost(_) => refuse(
                &mut summary,
                &mut batch,
                1,
                ItemError {
                    message: "a metric data source reported a cost record".into(),
                    resource_type: None,
                    resource_key: None,
                },
            ),
            Item::Catalog(e) => refuse(
                &mut summary,
                &mut batch,
                1,
                ItemError {
                    message: format!("a metric data source reported catalog data ({})", e.kind),
                    resource_type: None,
                    resource_key: Some(e.key),
                },
            ),
            Item::Unchanged(_) => refuse(
                &mut summary,
                &mut batch,
                1,
                ItemError {
                    message: "a metric data source reported a month of costs unchanged".into(),
                    resource_type: None,
                    resource_key: None,
                },
            ),
        }
        if batch.samples.len() >= BATCH {
            series.close(&mut batch);
            summary.counts += batch.counts;
            if batches.send(std::mem::take(&mut batch)).await.is_err() {
                break;
            }
        }
    }
    series.close(&mut batch);
    summary.counts += batch.counts;
    if !batch.is_empty() {
        batches.send(batch).await.ok();
    }
    drop(batches);
    match writer.await {
        Ok(Ok(true)) => Ok(Some(summary)),
        Ok(Ok(false)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(SinkError::Db(format!("the sample writer failed: {e}"))),
    }
}

/// Writes batches in order until the queue closes; `false` once the task turned out to be
/// stale (the rest is not written), an error once a write failed through its retries.
async fn write_all(
    sink: Arc<dyn MetricSink>,
    scope: MetricScope,
    retry: gleaner_common::retry::RetryPolicy,
    mut queue: mpsc::Receiver<MetricBatch>,
) -> Result<bool, SinkError> {
    while let Some(batch) = queue.recv().await {
        let owned = retry
            .run("write samples", SinkError::is_transient, || {
                sink.write(&scope, &batch)
            })
            .await?;
        if !owned {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use gleaner_common::id::ResourceId;
    use serde_json::json;

    use super::*;

    fn target(id: ResourceId) -> Target {
        Target {
            id,
            resource_type: "compute.instance".into(),
            resource_key: "i-1".into(),
            name: None,
            region: None,
            data: json!({}),
        }
    }

    #[test]
    fn samples_are_taken_once_and_summed_into_whole_buckets() {
        let id = ResourceId::new();
        let declared = HashMap::from([("compute.instance".to_owned(), vec!["cpu".to_owned()])]);
        let marks = HashMap::from([((id, "cpu".to_owned()), 120_000)]);
        let mut s = Series::new(&[target(id)], &declared, marks, 0, 10 * 3_600_000);
        let i = s.state(id, "cpu".into()).expect("declared");
        assert!(s.state(id, "memory".into()).is_err());
        assert!(s.state(ResourceId::new(), "cpu".into()).is_err());
        let mut batch = MetricBatch::default();
        // At the watermark: stored already. Then minutes 3 to 11, then 11 again.
        assert!(matches!(
            s.take(i, 120_000, 1.0, &mut batch),
            Verdict::Stored
        ));
        for m in 3..=11 {
            assert!(matches!(
                s.take(i, m * 60_000, m as f64, &mut batch),
                Verdict::Accepted
            ));
        }
        assert!(matches!(
            s.take(i, 11 * 60_000, 0.0, &mut batch),
            Verdict::Stored
        ));
        assert!(matches!(
            s.take(i, 11 * 3_600_000, 0.0, &mut batch),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            s.take(i, 12 * 60_000, f64::NAN, &mut batch),
            Verdict::Refused(_)
        ));
        s.close(&mut batch);
        assert_eq!(batch.samples.len(), 9);
        assert_eq!(batch.watermarks.len(), 1);
        assert_eq!(batch.watermarks[0].1, 11 * 60_000);
        let five: Vec<(i64, Agg)> = batch
            .rollups
            .iter()
            .filter(|r| r.tier == Tier::FiveMinutes)
            .map(|r| (r.bucket, r.agg))
            .collect();
        // Minutes 3–4, 5–9, 10–11.
        assert_eq!(five.len(), 3);
        assert_eq!(five[0].0, 0);
        assert_eq!(five[1].1.sum, 35.0);
        assert_eq!(five[1].1.count, 5);
        assert_eq!((five[2].1.min, five[2].1.max), (10.0, 11.0));
        let hour: Vec<&RollupRow> = batch
            .rollups
            .iter()
            .filter(|r| r.tier == Tier::Hour)
            .collect();
        assert_eq!(hour.len(), 1);
        assert_eq!(hour[0].agg.count, 9);
        // A later batch starts the open buckets again, as partial sums of their own.
        let mut next = MetricBatch::default();
        assert!(matches!(
            s.take(i, 12 * 60_000, 12.0, &mut next),
            Verdict::Accepted
        ));
        s.close(&mut next);
        assert_eq!(next.rollups.len(), 2);
        assert_eq!(next.rollups[0].bucket, 600_000);
    }
}
