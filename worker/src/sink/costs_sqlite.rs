//! The SQLite cost sink of the standalone mode: the same contract as the PostgreSQL one (the
//! month replaced in one transaction, fenced by the attempt, rollups summed on the way), with
//! the rows staged first.
//!
//! SQLite has one write lock: a load that held it for a whole import would stop every other
//! writer, the task's own heartbeat included, so each batch goes to `cost_staging` in a short
//! transaction of its own, and the commit moves the staged rows into `costs` in the one that
//! deletes the month's old rows. Amounts are stored as decimal text: SQLite has no exact
//! decimal type.

use async_trait::async_trait;
use gleaner_common::lifecycle::fence;
use gleaner_common::model::Counts;
use sqlx::{AssertSqlSafe, Sqlite, SqlitePool};

use super::SinkError;
use super::costs::{CostLoad, CostScope, CostSink, Rollup, RollupKey, Sums};
use crate::plugin::CostItem;

/// The columns of a staged row, after `attempt`.
const COLUMNS: &str = "domain_id, collector_id, service_account_id, job_id, task_id, month, day, \
    charge_period_start, charge_period_end, billing_period_start, provider, billing_account_id, \
    billing_account_name, sub_account_id, sub_account_name, service_name, service_category, \
    region_id, resource_id, charge_category, currency, billed_cost, effective_cost, list_cost, \
    consumed_quantity, consumed_unit, pricing_quantity, pricing_unit, tags, usage_type";

/// Parameters per staged row: `attempt` and the 30 columns.
const PER_ROW: usize = 31;

/// Rows per statement: SQLite allows 32,766 bound parameters.
const CHUNK: usize = 1_000;

/// Staged rows of this task's earlier attempts, and of tasks that are no longer running (an
/// import that failed, or a task since deleted): never those of a newer attempt.
const CLEAN: &str = "DELETE FROM cost_staging WHERE (task_id = ?1 AND attempt < ?2)
    OR NOT EXISTS (SELECT 1 FROM job_tasks t
                   WHERE t.id = cost_staging.task_id AND t.status = 'IN_PROGRESS')";

/// The SQLite cost sink.
#[derive(Clone, Debug)]
pub struct SqliteCostSink {
    pool: SqlitePool,
}

impl SqliteCostSink {
    /// Uses the sqlx pool behind SeaORM's connection (`get_sqlite_connection_pool`).
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn db(e: sqlx::Error) -> SinkError {
    SinkError::from(e)
}

#[async_trait]
impl CostSink for SqliteCostSink {
    async fn begin(&self, scope: &CostScope) -> Result<Box<dyn CostLoad>, SinkError> {
        sqlx::query(CLEAN)
            .bind(scope.task_id.as_uuid())
            .bind(scope.attempt)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        let replaced: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM costs
             WHERE collector_id = ?1 AND service_account_id = ?2 AND month = ?3",
        )
        .bind(scope.collector_id.as_uuid())
        .bind(scope.service_account_id.as_uuid())
        .bind(scope.month.first_day())
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(Box::new(SqliteLoad {
            pool: self.pool.clone(),
            replaced,
            scope: scope.clone(),
            written: 0,
            rollup: Rollup::default(),
        }))
    }
}

struct SqliteLoad {
    pool: SqlitePool,
    /// Counted when the load began; the commit deletes what is there then.
    replaced: i64,
    scope: CostScope,
    written: i64,
    rollup: Rollup,
}

fn placeholders(rows: usize, per_row: usize) -> String {
    let row = format!("({})", vec!["?"; per_row].join(","));
    vec![row; rows].join(",")
}

#[async_trait]
impl CostLoad for SqliteLoad {
    fn replaced(&self) -> i64 {
        self.replaced
    }

    async fn write(&mut self, batch: &[CostItem]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let s = &self.scope;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        for chunk in batch.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO cost_staging (attempt, {COLUMNS}) VALUES {}",
                placeholders(chunk.len(), PER_ROW)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for c in chunk {
                q = q
                    .bind(s.attempt)
                    .bind(s.domain.as_uuid())
                    .bind(s.collector_id.as_uuid())
                    .bind(s.service_account_id.as_uuid())
                    .bind(s.job_id.as_uuid())
                    .bind(s.task_id.as_uuid())
                    .bind(s.month.first_day())
                    .bind(c.charge_period_start.date_naive())
                    .bind(c.charge_period_start.fixed_offset())
                    .bind(c.charge_period_end.map(|t| t.fixed_offset()))
                    .bind(c.billing_period_start.map(|t| t.fixed_offset()))
                    .bind(&c.provider)
                    .bind(&c.billing_account_id)
                    .bind(c.billing_account_name.as_deref())
                    .bind(c.sub_account_id.as_deref())
                    .bind(c.sub_account_name.as_deref())
                    .bind(c.service_name.as_deref())
                    .bind(c.service_category.as_deref())
                    .bind(c.region_id.as_deref())
                    .bind(c.resource_id.as_deref())
                    .bind(c.charge_category.as_deref())
                    .bind(&c.currency)
                    .bind(c.billed_cost.to_string())
                    .bind(c.effective_cost.to_string())
                    .bind(c.list_cost.to_string())
                    .bind(c.consumed_quantity.map(|d| d.to_string()))
                    .bind(c.consumed_unit.as_deref())
                    .bind(c.pricing_quantity.map(|d| d.to_string()))
                    .bind(c.pricing_unit.as_deref())
                    .bind(c.tags.as_ref().and_then(|t| serde_json::to_string(t).ok()))
                    .bind(c.usage_type.as_deref());
                self.rollup.add(c);
            }
            q.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.written += i64::try_from(batch.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, failed: i64) -> Result<Option<Counts>, SinkError> {
        let s = &self.scope;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        if !fence::sqlite::hold(&mut tx, s.attempt())
            .await
            .map_err(db)?
        {
            return Ok(None);
        }
        let (collector, account) = (s.collector_id.as_uuid(), s.service_account_id.as_uuid());
        let month = s.month.first_day();
        let deleted = sqlx::query(
            "DELETE FROM costs WHERE collector_id = ?1 AND service_account_id = ?2 AND month = ?3",
        )
        .bind(collector)
        .bind(account)
        .bind(month)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO costs ({COLUMNS}) SELECT {COLUMNS} FROM cost_staging
             WHERE task_id = ?1 AND attempt = ?2"
        )))
        .bind(s.task_id.as_uuid())
        .bind(s.attempt)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("DELETE FROM cost_staging WHERE task_id = ?1 AND attempt = ?2")
            .bind(s.task_id.as_uuid())
            .bind(s.attempt)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for (table, rows) in std::mem::take(&mut self.rollup).tables() {
            // `table` is one of the rollups' names, never input.
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table}
                 WHERE collector_id = ?1 AND service_account_id = ?2 AND month = ?3"
            )))
            .bind(collector)
            .bind(account)
            .bind(month)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let rows: Vec<(&RollupKey, &Sums)> = rows.iter().collect();
            for chunk in rows.chunks(CHUNK) {
                insert_rollup(&mut tx, table, s, chunk).await?;
            }
        }
        let counts = Counts {
            created: self.written,
            deleted: i64::try_from(deleted).unwrap_or(i64::MAX),
            failed,
            ..Counts::default()
        };
        fence::sqlite::set_loaded(&mut tx, s.attempt(), &counts)
            .await
            .map_err(db)?;
        fence::sqlite::touch_job(&mut tx, s.job_id.as_uuid())
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(counts))
    }
}

async fn insert_rollup(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    table: &str,
    s: &CostScope,
    rows: &[(&RollupKey, &Sums)],
) -> Result<(), SinkError> {
    let daily = table == "cost_daily";
    let per_row = if daily { 14 } else { 13 };
    let day = if daily { "day, " } else { "" };
    let sql = format!(
        "INSERT INTO {table} (domain_id, collector_id, service_account_id, month, {day}provider,
            billing_account_id, service_name, region_id, currency, billed_cost, effective_cost,
            list_cost, rows) VALUES {}",
        placeholders(rows.len(), per_row)
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for (k, v) in rows {
        q = q
            .bind(s.domain.as_uuid())
            .bind(s.collector_id.as_uuid())
            .bind(s.service_account_id.as_uuid())
            .bind(s.month.first_day());
        if daily {
            q = q.bind(k.day);
        }
        q = q
            .bind(&k.provider)
            .bind(&k.billing_account_id)
            .bind(k.service_name.as_deref())
            .bind(k.region_id.as_deref())
            .bind(&k.currency)
            .bind(v.billed_cost.to_string())
            .bind(v.effective_cost.to_string())
            .bind(v.list_cost.to_string())
            .bind(v.rows);
    }
    q.execute(&mut **tx).await.map_err(db)?;
    Ok(())
}
