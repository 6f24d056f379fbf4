//! The SQLite metric sink of the standalone mode: the same contract as the PostgreSQL one, with
//! multi-row inserts instead of COPY and times as integer milliseconds.

use async_trait::async_trait;
use chrono::NaiveDate;
use gleaner_common::lifecycle::fence;
use gleaner_common::metric::Tier;
use sqlx::{AssertSqlSafe, SqlitePool};

use super::SinkError;
use super::metrics::{MetricBatch, MetricScope, MetricSink};

/// Rows per statement: SQLite allows 32,766 bound parameters, a rollup row takes 8.
const CHUNK: usize = 4_000;

/// The SQLite metric sink.
#[derive(Clone, Debug)]
pub struct SqliteMetricSink {
    pool: SqlitePool,
}

impl SqliteMetricSink {
    /// Uses the sqlx pool behind SeaORM's connection (`get_sqlite_connection_pool`).
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn db(e: sqlx::Error) -> SinkError {
    SinkError::from(e)
}

fn placeholders(rows: usize, per_row: usize) -> String {
    let row = format!("({})", vec!["?"; per_row].join(","));
    vec![row; rows].join(",")
}

const WATERMARK: &str = "INSERT INTO metric_watermarks \
    (resource_id, metric, domain_id, collector_id, last_time, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
    ON CONFLICT (resource_id, metric) DO UPDATE SET \
        last_time = max(metric_watermarks.last_time, excluded.last_time), \
        collector_id = excluded.collector_id, updated_at = excluded.updated_at";

#[async_trait]
impl MetricSink for SqliteMetricSink {
    async fn prepare(&self, _from: NaiveDate, _to: NaiveDate) -> Result<(), SinkError> {
        Ok(())
    }

    async fn write(&self, scope: &MetricScope, batch: &MetricBatch) -> Result<bool, SinkError> {
        let domain = scope.domain.as_uuid();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        if !fence::sqlite::hold(&mut tx, scope.attempt())
            .await
            .map_err(db)?
        {
            return Ok(false);
        }
        for chunk in batch.samples.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO metric_samples (domain_id, resource_id, metric, time, value) VALUES {}",
                placeholders(chunk.len(), 5)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for s in chunk {
                q = q
                    .bind(domain)
                    .bind(s.series.resource.as_uuid())
                    .bind(&*s.series.metric)
                    .bind(s.time)
                    .bind(s.value);
            }
            q.execute(&mut *tx).await.map_err(db)?;
        }
        for tier in Tier::ROLLUPS {
            let rows: Vec<_> = batch.rollups.iter().filter(|r| r.tier == tier).collect();
            for chunk in rows.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO {} (domain_id, resource_id, metric, bucket, min, max, sum, count) VALUES {}",
                    tier.table(),
                    placeholders(chunk.len(), 8)
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for r in chunk {
                    q = q
                        .bind(domain)
                        .bind(r.series.resource.as_uuid())
                        .bind(&*r.series.metric)
                        .bind(r.bucket)
                        .bind(r.agg.min)
                        .bind(r.agg.max)
                        .bind(r.agg.sum)
                        .bind(r.agg.count);
                }
                q.execute(&mut *tx).await.map_err(db)?;
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        for (series, last) in &batch.watermarks {
            sqlx::query(WATERMARK)
                .bind(series.resource.as_uuid())
                .bind(&*series.metric)
                .bind(domain)
                .bind(scope.collector_id.map(|c| c.as_uuid()))
                .bind(*last)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        fence::sqlite::add_progress(&mut tx, scope.attempt(), &batch.counts)
            .await
            .map_err(db)?;
        fence::sqlite::touch_job(&mut tx, scope.job_id.as_uuid())
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}
