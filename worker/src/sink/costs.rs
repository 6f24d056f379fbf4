//! Where cost records go: one month of one service account, replaced in one transaction.
//!
//! A load deletes the month's rows of the account when it begins, copies the new rows as the
//! plugin streams them (summing them into the month's rollups on the way, so no statement has
//! to scan them again), and at its commit replaces the month's rollups and records the task's
//! counts, fenced by its attempt. Until then nothing is visible; a plugin failure, a stale
//! attempt or a crash rolls everything back, so a failed sync deletes nothing and a re-run for
//! the same month never counts twice. Loads of the same (account, month) queue on an advisory
//! lock instead of interleaving.

use std::collections::HashMap;
use std::fmt::Write as _;

use async_trait::async_trait;
use chrono::NaiveDate;
use gleaner_common::billing::Month;
use gleaner_common::id::{DomainId, JobId, ServiceAccountId, TaskId};
use gleaner_common::model::Counts;
use rust_decimal::Decimal;
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

/// The columns a load copies, in [`encode`]'s order.
pub const COLUMNS: &str = "domain_id, service_account_id, job_id, task_id, month, day, \
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

const ROLLUP_COLUMNS: &str = "domain_id, service_account_id, month, provider, billing_account_id, \
    service_name, region_id, currency, billed_cost, effective_cost, list_cost, rows";

/// What a rollup row is keyed by, besides the scope's account and month.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RollupKey {
    /// `None` in the monthly rollup.
    pub day: Option<NaiveDate>,
    pub provider: String,
    pub billing_account_id: String,
    pub service_name: Option<String>,
    pub region_id: Option<String>,
    pub currency: String,
}

/// The sums of a rollup row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub billed_cost: Decimal,
    pub effective_cost: Decimal,
    pub list_cost: Decimal,
    pub rows: i64,
}

/// A month's daily sums, added to as records are loaded.
#[derive(Clone, Debug, Default)]
pub struct Rollup {
    pub daily: HashMap<RollupKey, Sums>,
}

impl Rollup {
    pub fn add(&mut self, c: &CostItem) {
        let key = RollupKey {
            day: Some(c.charge_period_start.date_naive()),
            provider: c.provider.clone(),
            billing_account_id: c.billing_account_id.clone(),
            service_name: c.service_name.clone(),
            region_id: c.region_id.clone(),
            currency: c.currency.clone(),
        };
        let sums = self.daily.entry(key).or_default();
        sums.billed_cost += c.billed_cost;
        sums.effective_cost += c.effective_cost;
        sums.list_cost += c.list_cost;
        sums.rows += 1;
    }

    /// The same sums per month: the daily keys without their day.
    #[must_use]
    pub fn monthly(&self) -> HashMap<RollupKey, Sums> {
        let mut out: HashMap<RollupKey, Sums> = HashMap::new();
        for (k, v) in &self.daily {
            let sums = out
                .entry(RollupKey {
                    day: None,
                    ..k.clone()
                })
                .or_default();
            sums.billed_cost += v.billed_cost;
            sums.effective_cost += v.effective_cost;
            sums.list_cost += v.list_cost;
            sums.rows += v.rows;
        }
        out
    }
}

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
            fixed_rollup: format!(
                "{}\t{}\t{}",
                scope.domain,
                scope.service_account_id,
                scope.month.first_day()
            ),
            deleted: i64::try_from(deleted).unwrap_or(i64::MAX),
            written: 0,
            buf: String::new(),
            rollup: Rollup::default(),
        }))
    }
}

struct PgLoad {
    tx: Transaction<'static, Postgres>,
    scope: CostScope,
    /// The first fields of every row, encoded once.
    fixed: String,
    fixed_rollup: String,
    deleted: i64,
    written: i64,
    buf: String,
    rollup: Rollup,
}

/// The fields every row of a load starts with; [`encode`] takes them encoded once.
#[must_use]
pub fn fixed_fields(scope: &CostScope) -> String {
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
            self.rollup.add(c);
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
        let monthly = self.rollup.monthly();
        for (table, rows) in [
            ("cost_daily", &self.rollup.daily),
            ("cost_monthly", &monthly),
        ] {
            // `table` is one of the two names above, never input.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE service_account_id = $1 AND month = $2"
            )))
            .bind(s.service_account_id.as_uuid())
            .bind(s.month.first_day())
            .execute(&mut *self.tx)
            .await
            .map_err(db)?;
            if rows.is_empty() {
                continue;
            }
            let mut buf = String::new();
            for (k, v) in rows {
                buf.push_str(&self.fixed_rollup);
                if let Some(day) = k.day {
                    let _ = write!(buf, "\t{day}");
                }
                text(&mut buf, &k.provider);
                text(&mut buf, &k.billing_account_id);
                opt(&mut buf, k.service_name.as_deref());
                opt(&mut buf, k.region_id.as_deref());
                text(&mut buf, &k.currency);
                let _ = writeln!(
                    buf,
                    "\t{}\t{}\t{}\t{}",
                    v.billed_cost, v.effective_cost, v.list_cost, v.rows
                );
            }
            let columns = if table == "cost_daily" {
                ROLLUP_COLUMNS.replacen("month,", "month, day,", 1)
            } else {
                ROLLUP_COLUMNS.to_owned()
            };
            let mut copy = self
                .tx
                .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
                .await
                .map_err(db)?;
            copy.send(buf.as_bytes()).await.map_err(db)?;
            copy.finish().await.map_err(db)?;
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
pub fn encode(out: &mut String, fixed: &str, c: &CostItem) {
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
    use chrono::{TimeZone, Utc};

    use super::*;

    fn record(day: u32, service: &str, billed: i64) -> CostItem {
        let start = Utc.with_ymd_and_hms(2024, 9, day, 10, 0, 0).unwrap();
        CostItem {
            charge_period_start: start,
            charge_period_end: None,
            billing_period_start: None,
            provider: "AWS".into(),
            billing_account_id: "1".into(),
            billing_account_name: None,
            sub_account_id: None,
            sub_account_name: None,
            service_name: Some(service.into()),
            service_category: None,
            region_id: None,
            resource_id: None,
            charge_category: None,
            currency: "USD".into(),
            billed_cost: Decimal::new(billed, 11),
            effective_cost: Decimal::new(billed, 12),
            list_cost: Decimal::ZERO,
            consumed_quantity: None,
            consumed_unit: None,
            pricing_quantity: None,
            pricing_unit: None,
            tags: None,
        }
    }

    #[test]
    fn rollups_sum_exactly_per_day_and_per_month() {
        let mut r = Rollup::default();
        for c in [
            record(1, "S3", 80_000),
            record(1, "S3", 41_370),
            record(2, "S3", -261_370_000_000),
            record(2, "EC2", 1),
        ] {
            r.add(&c);
        }
        assert_eq!(r.daily.len(), 3);
        let monthly = r.monthly();
        assert_eq!(monthly.len(), 2);
        let s3 = monthly
            .iter()
            .find(|(k, _)| k.service_name.as_deref() == Some("S3"))
            .map(|(_, v)| *v)
            .expect("S3");
        assert_eq!(s3.rows, 3);
        assert_eq!(s3.billed_cost.to_string(), "-2.61369878630");
    }

    #[test]
    fn text_fields_are_escaped_and_nulls_marked() {
        let mut out = String::new();
        text(&mut out, "a\tb\\c\nd");
        opt(&mut out, None);
        assert_eq!(out, "\ta\\tb\\\\c\\nd\t\\N");
    }
}
