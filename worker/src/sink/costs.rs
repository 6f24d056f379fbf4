//! Where cost records go: one month of one service account, replaced in one transaction.
//!
//! A load deletes the month's rows of the account when it begins, copies the new rows as the
//! plugin streams them, and at its commit rebuilds the month's rollups and records the task's
//! counts, fenced by its attempt. Until then nothing is visible; a plugin failure, a stale
//! attempt or a crash rolls everything back, so a failed sync deletes nothing and a re-run for
//! the same month never counts twice. Loads of the same (account, month) queue on an advisory
//! lock instead of interleaving.

use std::fmt::Write as _;

use async_trait::async_trait;
use gleaner_common::billing::Month;
use gleaner_common::id::{DomainId, JobId, ServiceAccountId, TaskId};
use gleaner_common::model::Counts;
use sqlx::{PgPool, Postgres, Transaction};

use super::SinkError;
use crate::plugin::CostItem;

/// Whose costs a load replaces.
#[derive(Clone, Debug)]
pub struct CostScope {
    pub domain: DomainId,
    pub service_account_id: ServiceAccountId,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: i32,
    pub month: Month,
}

/// Starts loads.
#[async_trait]
pub trait CostSink: Send + Sync {
    /// Begins replacing the scope's month.
    ///
    /// # Errors
    /// The database failed.
    async fn begin(&self, scope: &CostScope) -> Result<Box<dyn CostLoad>, SinkError>;
}

/// One month being replaced; dropping it without [`CostLoad::commit`] keeps the old rows.
#[async_trait]
pub trait CostLoad: Send {
    /// Adds records (all of the scope's month).
    ///
    /// # Errors
    /// The database failed; the load is lost.
    async fn write(&mut self, batch: &[CostItem]) -> Result<(), SinkError>;

    /// Makes the new month visible, with its rollups and the task's counts (`failed`
    /// malformed records). `None` when a newer attempt owns the task: nothing is kept.
    ///
    /// # Errors
    /// The database failed; nothing is kept.
    async fn commit(self: Box<Self>, failed: i64) -> Result<Option<Counts>, SinkError>;
}

/// The PostgreSQL cost sink.
#[derive(Clone, Debug)]
pub struct PgCostSink {
    pool: PgPool,
}

impl PgCostSink {
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

const COLUMNS: &str = "domain_id, service_account_id, job_id, task_id, month, day, \
    charge_period_start, charge_period_end, billing_period_start, provider, billing_account_id, \
    billing_account_name, sub_account_id, sub_account_name, service_name, service_category, \
    region_id, resource_id, charge_category, currency, billed_cost, effective_cost, list_cost, \
    consumed_quantity, consumed_unit, pricing_quantity, pricing_unit, tags";

/// One lock per (account, month): `hashtextextended` spreads them over the 64-bit key space.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const DELETE: &str = "DELETE FROM costs WHERE service_account_id = $1 AND month = $2";

/// Fences the commit: locks the task row if this attempt still owns it.
const FENCE: &str =
    "SELECT 1 FROM job_tasks WHERE id = $1 AND attempt = $2 AND status = 'IN_PROGRESS' FOR UPDATE";

const ROLLUP_DAILY: &str = "
WITH gone AS (DELETE FROM cost_daily WHERE service_account_id = $1 AND month = $2)
INSERT INTO cost_daily (domain_id, service_account_id, month, day, provider, billing_account_id,
    service_name, region_id, currency, billed_cost, effective_cost, list_cost, rows)
SELECT domain_id, service_account_id, month, day, provider, billing_account_id, service_name,
    region_id, currency, sum(billed_cost), sum(effective_cost), sum(list_cost), count(*)
FROM costs WHERE service_account_id = $1 AND month = $2
GROUP BY domain_id, service_account_id, month, day, provider, billing_account_id, service_name,
    region_id, currency";

const ROLLUP_MONTHLY: &str = "
WITH gone AS (DELETE FROM cost_monthly WHERE service_account_id = $1 AND month = $2)
INSERT INTO cost_monthly (domain_id, service_account_id, month, provider, billing_account_id,
    service_name, region_id, currency, billed_cost, effective_cost, list_cost, rows)
SELECT domain_id, service_account_id, month, provider, billing_account_id, service_name,
    region_id, currency, sum(billed_cost), sum(effective_cost), sum(list_cost), sum(rows)
FROM cost_daily WHERE service_account_id = $1 AND month = $2
GROUP BY domain_id, service_account_id, month, provider, billing_account_id, service_name,
    region_id, currency";

/// The counts of a load: `created` the rows written, `deleted` the rows they replaced.
const PROGRESS: &str = "UPDATE job_tasks SET
    created = $3, deleted = $4, failed = $5, updated_at = now()
WHERE id = $1 AND attempt = $2";

fn db(e: sqlx::Error) -> SinkError {
    SinkError::Db(e.to_string())
}

#[async_trait]
impl CostSink for PgCostSink {
    async fn begin(&self, scope: &CostScope) -> Result<Box<dyn CostLoad>, SinkError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The planner has no statistics for a month just deleted and rewritten; JIT would
        // compile the rollups for a guessed size.
        sqlx::raw_sql("SET LOCAL jit = off")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query(LOCK)
            .bind(format!(
                "costs:{}:{}",
                scope.service_account_id, scope.month
            ))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let deleted = sqlx::query(DELETE)
            .bind(scope.service_account_id.as_uuid())
            .bind(scope.month.first_day())
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(Box::new(PgLoad {
            tx,
            scope: scope.clone(),
            fixed: fixed_fields(scope),
            deleted: i64::try_from(deleted).unwrap_or(i64::MAX),
            written: 0,
            buf: String::new(),
        }))
    }
}

struct PgLoad {
    tx: Transaction<'static, Postgres>,
    scope: CostScope,
    /// The first four fields of every row, encoded once.
    fixed: String,
    deleted: i64,
    written: i64,
    buf: String,
}

fn fixed_fields(scope: &CostScope) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        scope.domain,
        scope.service_account_id,
        scope.job_id,
        scope.task_id,
        scope.month.first_day()
    )
}

#[async_trait]
impl CostLoad for PgLoad {
    async fn write(&mut self, batch: &[CostItem]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for c in batch {
            encode(&mut self.buf, &self.fixed, c);
        }
        let mut copy = self
            .tx
            .copy_in_raw(&format!("COPY costs ({COLUMNS}) FROM STDIN"))
            .await
            .map_err(db)?;
        copy.send(self.buf.as_bytes()).await.map_err(db)?;
        copy.finish().await.map_err(db)?;
        self.written += i64::try_from(batch.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, failed: i64) -> Result<Option<Counts>, SinkError> {
        let s = &self.scope;
        let owned = sqlx::query(FENCE)
            .bind(s.task_id.as_uuid())
            .bind(s.attempt)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db)?;
        if owned.is_none() {
            return Ok(None);
        }
        for rollup in [ROLLUP_DAILY, ROLLUP_MONTHLY] {
            sqlx::query(rollup)
                .bind(s.service_account_id.as_uuid())
                .bind(s.month.first_day())
                .execute(&mut *self.tx)
                .await
                .map_err(db)?;
        }
        sqlx::query(PROGRESS)
            .bind(s.task_id.as_uuid())
            .bind(s.attempt)
            .bind(self.written)
            .bind(self.deleted)
            .bind(failed)
            .execute(&mut *self.tx)
            .await
            .map_err(db)?;
        sqlx::query(gleaner_common::store::job::TOUCH_PG)
            .bind(s.job_id.as_uuid())
            .bind(chrono::Utc::now().fixed_offset())
            .execute(&mut *self.tx)
            .await
            .map_err(db)?;
        let counts = Counts {
            created: self.written,
            deleted: self.deleted,
            failed,
            ..Counts::default()
        };
        self.tx.commit().await.map_err(db)?;
        Ok(Some(counts))
    }
}

/// Appends one row in COPY's text format: tab-separated, `\N` for null, with backslash,
/// tab, newline and carriage return escaped.
fn encode(out: &mut String, fixed: &str, c: &CostItem) {
    out.push_str(fixed);
    let day = c.charge_period_start.date_naive();
    let _ = write!(out, "\t{day}\t{}", c.charge_period_start.to_rfc3339());
    opt(out, c.charge_period_end.map(|t| t.to_rfc3339()).as_deref());
    opt(
        out,
        c.billing_period_start.map(|t| t.to_rfc3339()).as_deref(),
    );
    text(out, &c.provider);
    text(out, &c.billing_account_id);
    for v in [
        &c.billing_account_name,
        &c.sub_account_id,
        &c.sub_account_name,
        &c.service_name,
        &c.service_category,
        &c.region_id,
        &c.resource_id,
        &c.charge_category,
    ] {
        opt(out, v.as_deref());
    }
    text(out, &c.currency);
    let _ = write!(
        out,
        "\t{}\t{}\t{}",
        c.billed_cost, c.effective_cost, c.list_cost
    );
    opt(out, c.consumed_quantity.map(|d| d.to_string()).as_deref());
    opt(out, c.consumed_unit.as_deref());
    opt(out, c.pricing_quantity.map(|d| d.to_string()).as_deref());
    opt(out, c.pricing_unit.as_deref());
    let tags = c.tags.as_ref().and_then(|t| serde_json::to_string(t).ok());
    opt(out, tags.as_deref());
    out.push('\n');
}

fn text(out: &mut String, v: &str) {
    out.push('\t');
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn opt(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => text(out, v),
        None => out.push_str("\t\\N"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_escaped_and_nulls_marked() {
        let mut out = String::new();
        text(&mut out, "a\tb\\c\nd");
        opt(&mut out, None);
        assert_eq!(out, "\ta\\tb\\\\c\\nd\t\\N");
    }
}
