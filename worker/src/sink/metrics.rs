//! Where metric samples go: each batch in one transaction with its rollup rows, the new
//! watermarks of its series and the task's progress, fenced by the attempt.
//!
//! Samples are only ever appended. A batch holds no sample at or before its series' watermark
//! (the run drops those), and its watermarks move in the same transaction, so a batch that
//! committed is never written again and one that did not left nothing: re-collecting a window
//! stores nothing twice, and a failed task keeps what it stored.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use gleaner_common::id::{CollectorId, DomainId, JobId, ResourceId, TaskId};
use gleaner_common::lifecycle::{Attempt, fence};
use gleaner_common::metric::{Agg, Tier};
use gleaner_common::model::Counts;
use sea_orm::DatabaseConnection;
use sqlx::PgPool;

use super::SinkError;
use super::postgres::BinaryCopy;

/// Whose samples a batch holds.
#[derive(Clone, Debug)]
pub struct MetricScope {
    pub domain: DomainId,
    pub collector_id: Option<CollectorId>,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: i32,
}

impl MetricScope {
    /// The attempt a batch is fenced by.
    #[must_use]
    pub fn attempt(&self) -> Attempt {
        Attempt {
            task: self.task_id,
            number: self.attempt,
        }
    }
}

/// A series: a resource's metric. The name is shared by every row of the series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub resource: ResourceId,
    pub metric: Arc<str>,
}

/// A sample; the time in milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRow {
    pub series: Arc<SeriesKey>,
    pub time: i64,
    pub value: f64,
}

/// A rollup row: a partial aggregate of a bucket (milliseconds since the epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct RollupRow {
    pub series: Arc<SeriesKey>,
    pub tier: Tier,
    pub bucket: i64,
    pub agg: Agg,
}

/// One transaction's worth of a metrics task.
#[derive(Clone, Debug, Default)]
pub struct MetricBatch {
    pub samples: Vec<SampleRow>,
    pub rollups: Vec<RollupRow>,
    /// The newest sample of each series in the batch.
    pub watermarks: Vec<(Arc<SeriesKey>, i64)>,
    /// Added to the task's progress: `created` samples stored, `unchanged` samples dropped as
    /// stored before, `failed` refused.
    pub counts: Counts,
}

impl MetricBatch {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.counts == Counts::default()
    }
}

/// Stores metric batches.
#[async_trait]
pub trait MetricSink: Send + Sync {
    /// Makes room for samples of the days `from` to `to` (partitions, in PostgreSQL). Done
    /// before a task's first batch, outside its transactions: making a partition locks the
    /// whole table for a moment.
    ///
    /// # Errors
    /// The database failed.
    async fn prepare(&self, from: NaiveDate, to: NaiveDate) -> Result<(), SinkError>;

    /// Writes a batch in one transaction; `false` when a newer attempt owns the task, and
    /// nothing was written.
    ///
    /// # Errors
    /// The database failed; nothing was written.
    async fn write(&self, scope: &MetricScope, batch: &MetricBatch) -> Result<bool, SinkError>;
}

/// The PostgreSQL metric sink: binary COPY of samples and rollup rows.
#[derive(Clone, Debug)]
pub struct PgMetricSink {
    db: DatabaseConnection,
    pool: PgPool,
}

impl PgMetricSink {
    #[must_use]
    pub fn new(db: DatabaseConnection) -> Self {
        let pool = db.get_postgres_connection_pool().clone();
        Self { db, pool }
    }
}

/// The columns [`encode_samples`] writes, in its order.
pub const SAMPLE_COLUMNS: &str = "domain_id, resource_id, metric, time, value";

const COPY_SAMPLES: &str =
    "COPY metric_samples (domain_id, resource_id, metric, time, value) FROM STDIN (FORMAT binary)";

/// Samples in binary COPY format, columns [`SAMPLE_COLUMNS`].
#[must_use]
pub fn encode_samples(domain: uuid::Uuid, samples: &[SampleRow]) -> Vec<u8> {
    let mut out = BinaryCopy::with_capacity(samples.len() * 80);
    for s in samples {
        out.row(5);
        out.uuid(domain);
        out.uuid(s.series.resource.as_uuid());
        out.text(&s.series.metric);
        timestamptz(&mut out, s.time);
        float8(&mut out, s.value);
    }
    out.finish()
}

const COPY_ROLLUPS_1H: &str = "COPY metric_rollups_1h \
    (domain_id, resource_id, metric, bucket, min, max, sum, count) FROM STDIN (FORMAT binary)";

const COPY_ROLLUPS_5M: &str = "COPY metric_rollups_5m \
    (domain_id, resource_id, metric, hour_start, min, max, sum, count) FROM STDIN (FORMAT binary)";

/// Slots of the packed 5-minute rollup: an hour's buckets.
const SLOTS: usize = 12;

/// A batch's rollup rows in binary COPY format: the hourly rows as they are, and the 5-minute
/// rows packed by series and hour (twelve slots of `min`, `max`, `sum` and `count` arrays, an
/// empty slot counting 0); `None` for a tier without rows.
#[must_use]
pub fn encode_rollups(
    domain: uuid::Uuid,
    rollups: &[RollupRow],
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut hourly = None::<BinaryCopy>;
    let mut hours: HashMap<(&SeriesKey, i64), [Agg; SLOTS]> = HashMap::new();
    for r in rollups {
        match r.tier {
            Tier::Hour => {
                let out =
                    hourly.get_or_insert_with(|| BinaryCopy::with_capacity(rollups.len() * 96));
                out.row(8);
                out.uuid(domain);
                out.uuid(r.series.resource.as_uuid());
                out.text(&r.series.metric);
                timestamptz(out, r.bucket);
                float8(out, r.agg.min);
                float8(out, r.agg.max);
                float8(out, r.agg.sum);
                out.int8(r.agg.count);
            }
            Tier::FiveMinutes => {
                let hour = r.bucket - r.bucket.rem_euclid(Tier::Hour.width_ms());
                let slot = usize::try_from((r.bucket - hour) / Tier::FiveMinutes.width_ms())
                    .unwrap_or(0)
                    .min(SLOTS - 1);
                hours.entry((&r.series, hour)).or_default()[slot].merge(&r.agg);
            }
            Tier::Raw => {}
        }
    }
    let packed = (!hours.is_empty()).then(|| {
        let mut out = BinaryCopy::with_capacity(hours.len() * 720);
        for ((series, hour), slots) in &hours {
            let filled = |f: fn(&Agg) -> f64| slots.map(|a| if a.count > 0 { f(&a) } else { 0.0 });
            out.row(8);
            out.uuid(domain);
            out.uuid(series.resource.as_uuid());
            out.text(&series.metric);
            timestamptz(&mut out, *hour);
            out.float8_array(&filled(|a| a.min));
            out.float8_array(&filled(|a| a.max));
            out.float8_array(&filled(|a| a.sum));
            out.int8_array(&slots.map(|a| a.count));
        }
        out.finish()
    });
    (hourly.map(BinaryCopy::finish), packed)
}

/// Moves watermarks forward only: two tasks of one series cannot run at once (the collection
/// lock), but a stale attempt's batch must never move one back.
const WATERMARKS: &str = "INSERT INTO metric_watermarks \
    (resource_id, metric, domain_id, collector_id, last_time, updated_at) \
    SELECT u.resource_id, u.metric, $1, $2, u.last_time, now() \
    FROM unnest($3::uuid[], $4::text[], $5::timestamptz[]) AS u(resource_id, metric, last_time) \
    ON CONFLICT (resource_id, metric) DO UPDATE SET \
        last_time = GREATEST(metric_watermarks.last_time, excluded.last_time), \
        collector_id = excluded.collector_id, updated_at = now()";

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn timestamptz(out: &mut BinaryCopy, ms: i64) {
    out.int8(ms * 1000 - PG_EPOCH_MICROS);
}

fn float8(out: &mut BinaryCopy, v: f64) {
    out.int8(i64::from_be_bytes(v.to_be_bytes()));
}

fn db(e: sqlx::Error) -> SinkError {
    SinkError::from(e)
}

#[async_trait]
impl MetricSink for PgMetricSink {
    async fn prepare(&self, from: NaiveDate, to: NaiveDate) -> Result<(), SinkError> {
        gleaner_common::store::metric::ensure_partitions(&self.db, from, to)
            .await
            .map_err(|e| SinkError::Db(e.to_string()))?;
        Ok(())
    }

    async fn write(&self, scope: &MetricScope, batch: &MetricBatch) -> Result<bool, SinkError> {
        let domain = scope.domain.as_uuid();
        let mut tx = self.pool.begin().await.map_err(db)?;
        if !fence::pg::hold(&mut tx, scope.attempt())
            .await
            .map_err(db)?
        {
            return Ok(false);
        }
        if !batch.samples.is_empty() {
            copy(
                &mut tx,
                COPY_SAMPLES,
                encode_samples(domain, &batch.samples),
            )
            .await?;
        }
        let (hourly, packed) = encode_rollups(domain, &batch.rollups);
        if let Some(rows) = hourly {
            copy(&mut tx, COPY_ROLLUPS_1H, rows).await?;
        }
        if let Some(rows) = packed {
            copy(&mut tx, COPY_ROLLUPS_5M, rows).await?;
        }
        if !batch.watermarks.is_empty() {
            let n = batch.watermarks.len();
            let (mut ids, mut metrics, mut times) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (series, last) in &batch.watermarks {
                ids.push(series.resource.as_uuid());
                metrics.push(series.metric.to_string());
                times.push(gleaner_common::metric::instant(*last));
            }
            sqlx::query(WATERMARKS)
                .bind(domain)
                .bind(scope.collector_id.map(|c| c.as_uuid()))
                .bind(ids)
                .bind(metrics)
                .bind(times)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        fence::pg::add_progress(&mut tx, &[(scope.attempt(), batch.counts)])
            .await
            .map_err(db)?;
        fence::pg::touch_jobs(&mut tx, &[scope.job_id.as_uuid()])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

async fn copy(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    sql: &str,
    rows: Vec<u8>,
) -> Result<(), SinkError> {
    let mut sink = tx.copy_in_raw(sql).await.map_err(db)?;
    sink.send(rows).await.map_err(db)?;
    sink.finish().await.map_err(db)?;
    Ok(())
}

/// An id for tests and logs: the series as `resource/metric`.
impl std::fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.resource, self.metric)
    }
}
