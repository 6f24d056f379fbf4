//! Where cost records go: one month of one service account, replaced in one transaction.
//!
//! In PostgreSQL a load copies the new rows as the plugin streams them into a table of its own
//! (summing them into the month's rollups on the way, so no statement has to scan them again).
//! At its commit, fenced by its attempt, it replaces the month's rollups, records the task's
//! counts, and swaps its table in for the leaf of `costs` that held the month (migration 23):
//! nothing is deleted row by row. Until then nothing is visible; a plugin failure, a stale
//! attempt or a crash rolls everything back, the new table included, so a failed sync deletes
//! nothing and a re-run for the same month never counts twice. Loads of the same (account,
//! month) queue on an advisory lock instead of interleaving.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use gleaner_common::billing::Month;
use gleaner_common::id::{CollectorId, DomainId, JobId, ServiceAccountId, TaskId};
use gleaner_common::lifecycle::{Attempt, fence};
use gleaner_common::model::Counts;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::SinkError;
use crate::plugin::CostItem;

/// Whose costs a load replaces.
#[derive(Clone, Debug)]
pub struct CostScope {
    pub domain: DomainId,
    /// Two collectors of one provider replace their own rows only.
    pub collector_id: CollectorId,
    pub service_account_id: ServiceAccountId,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: i32,
    pub month: Month,
}

impl CostScope {
    /// The attempt the load is fenced by.
    #[must_use]
    pub fn attempt(&self) -> Attempt {
        Attempt {
            task: self.task_id,
            number: self.attempt,
        }
    }
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
    /// The records of the month stored before this load, which the commit replaces.
    fn replaced(&self) -> i64;

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
pub const COLUMNS: &str = "domain_id, collector_id, service_account_id, job_id, task_id, month, day, \
    charge_period_start, charge_period_end, billing_period_start, provider, billing_account_id, \
    billing_account_name, sub_account_id, sub_account_name, service_name, service_category, \
    region_id, resource_id, charge_category, currency, billed_cost, effective_cost, list_cost, \
    consumed_quantity, consumed_unit, pricing_quantity, pricing_unit, tags, usage_type";

/// One lock per (account, month): `hashtextextended` spreads them over the 64-bit key space.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

const ROLLUP_COLUMNS: &str = "domain_id, collector_id, service_account_id, month, provider, billing_account_id, \
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
        self.regroup(|k| RollupKey {
            day: None,
            ..k.clone()
        })
    }

    /// The same sums per month and account only: without day, service and region.
    #[must_use]
    pub fn accounts(&self) -> HashMap<RollupKey, Sums> {
        self.regroup(|k| RollupKey {
            day: None,
            service_name: None,
            region_id: None,
            ..k.clone()
        })
    }

    /// The same sums per month without region: what a summary by service reads.
    #[must_use]
    pub fn services(&self) -> HashMap<RollupKey, Sums> {
        self.regroup(|k| RollupKey {
            day: None,
            region_id: None,
            ..k.clone()
        })
    }

    /// The same sums per month without service: what a summary by region reads.
    #[must_use]
    pub fn regions(&self) -> HashMap<RollupKey, Sums> {
        self.regroup(|k| RollupKey {
            day: None,
            service_name: None,
            ..k.clone()
        })
    }

    /// Every rollup table a load replaces in SQLite, with its rows.
    #[must_use]
    pub fn tables(self) -> Vec<(&'static str, HashMap<RollupKey, Sums>)> {
        let (monthly, accounts) = (self.monthly(), self.accounts());
        vec![
            ("cost_daily", self.daily),
            ("cost_monthly", monthly),
            ("cost_account_monthly", accounts),
        ]
    }

    /// Every rollup table a load replaces in PostgreSQL: SQLite's, and the monthly sums by
    /// service and by region (migration 21 says why).
    #[must_use]
    pub fn pg_tables(self) -> Vec<(&'static str, HashMap<RollupKey, Sums>)> {
        let (services, regions) = (self.services(), self.regions());
        let mut tables = self.tables();
        tables.push(("cost_service_monthly", services));
        tables.push(("cost_region_monthly", regions));
        tables
    }

    fn regroup(&self, key: impl Fn(&RollupKey) -> RollupKey) -> HashMap<RollupKey, Sums> {
        let mut out: HashMap<RollupKey, Sums> = HashMap::new();
        for (k, v) in &self.daily {
            let sums = out.entry(key(k)).or_default();
            sums.billed_cost += v.billed_cost;
            sums.effective_cost += v.effective_cost;
            sums.list_cost += v.list_cost;
            sums.rows += v.rows;
        }
        out
    }
}

fn db(e: sqlx::Error) -> SinkError {
    SinkError::from(e)
}

/// What a [`PgLoad`] asks of the task that owns its transaction.
enum Command {
    /// More rows for the open COPY.
    Rows(Vec<u8>),
    Commit {
        failed: i64,
        written: i64,
        rollup: Box<Rollup>,
        reply: oneshot::Sender<Result<Option<Counts>, SinkError>>,
    },
}

#[async_trait]
impl CostSink for PgCostSink {
    async fn begin(&self, scope: &CostScope) -> Result<Box<dyn CostLoad>, SinkError> {
        let (commands, rx) = mpsc::channel(4);
        let (ready, started) = oneshot::channel();
        let owner = tokio::spawn(own_load(self.pool.clone(), scope.clone(), rx, ready));
        match started.await {
            Ok(replaced) => Ok(Box::new(PgLoad {
                commands,
                owner: Some(owner),
                fixed: fixed_fields(scope),
                replaced,
                written: 0,
                rollup: Rollup::default(),
            })),
            // The owner ended before the COPY started: its result says why.
            Err(_) => Err(ended(Some(owner)).await),
        }
    }
}

/// The error a load's owner task ended with.
async fn ended(owner: Option<JoinHandle<Result<(), SinkError>>>) -> SinkError {
    match owner {
        Some(h) => match h.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => SinkError::Db("the cost load ended early".into()),
            Err(e) => SinkError::Db(format!("the cost load failed: {e}")),
        },
        None => SinkError::Db("the cost load already ended".into()),
    }
}

/// Owns the load's transaction: copies the month into a table of its own (migration 23), kept
/// open while rows arrive so PostgreSQL stores a batch while the plugin produces the next, and
/// swaps it in on [`Command::Commit`]. A closed channel without it rolls everything back, the
/// table included.
async fn own_load(
    pool: PgPool,
    scope: CostScope,
    mut commands: mpsc::Receiver<Command>,
    ready: oneshot::Sender<i64>,
) -> Result<(), SinkError> {
    // In a transaction of its own: making a month's table locks `costs` for an instant, which a
    // load's transaction would hold until its commit.
    let parent: String = sqlx::query_scalar("SELECT gleaner_cost_parent($1, $2)")
        .bind(scope.month.first_day())
        .bind(scope.collector_id.as_uuid())
        .fetch_one(&pool)
        .await
        .map_err(db)?;
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query(LOCK)
        .bind(format!(
            "costs:{}:{}:{}",
            scope.collector_id, scope.service_account_id, scope.month
        ))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let stored: Option<(String, i64)> = sqlx::query_as(STORED)
        .bind(scope.collector_id.as_uuid())
        .bind(scope.service_account_id.as_uuid())
        .bind(scope.month.first_day())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    let (old, replaced) = match stored {
        Some((table, rows)) => (Some(Leaf::stored(table)?), rows),
        None => (None, 0),
    };
    let swap = Swap {
        parent,
        old,
        new: Leaf::fresh(),
    };
    sqlx::query("SELECT gleaner_new_cost_table($1, $2, $3, $4)")
        .bind(&swap.new.0)
        .bind(scope.month.first_day())
        .bind(scope.collector_id.as_uuid())
        .bind(scope.service_account_id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let mut copy = tx
        .copy_in_raw(&format!("COPY {} ({COLUMNS}) FROM STDIN", swap.new.0))
        .await
        .map_err(db)?;
    if ready.send(replaced).is_err() {
        return Ok(());
    }
    let (failed, written, rollup, reply) = loop {
        match commands.recv().await {
            Some(Command::Rows(rows)) => {
                copy.send(rows).await.map_err(db)?;
            }
            Some(Command::Commit {
                failed,
                written,
                rollup,
                reply,
            }) => break (failed, written, rollup, reply),
            // Abandoned (the plugin failed, the worker stops): the COPY and the transaction
            // are dropped, which rolls back.
            None => return Ok(()),
        }
    };
    let finished = copy.finish().await.map_err(db);
    let result = match finished {
        Ok(_) => commit(tx, &scope, &swap, (replaced, failed, written), *rollup).await,
        Err(e) => Err(e),
    };
    let failure = result.as_ref().err().cloned();
    reply.send(result).ok();
    failure.map_or(Ok(()), Err)
}

/// The leaf that holds a (collector, service account, month), and its rows.
const STORED: &str = "SELECT table_name, rows FROM cost_partitions \
     WHERE collector_id = $1 AND service_account_id = $2 AND month = $3";

/// A leaf table of `costs`: a name made here, never input, so it can be written into SQL.
#[derive(Debug, PartialEq, Eq)]
struct Leaf(String);

impl Leaf {
    /// What a load's table is named: this and a UUID's 32 lowercase hex digits (migration 23
    /// names the leaves it makes the same way).
    const PREFIX: &str = "costs_l";

    /// A new load's table. Named afresh each time: a load of the same task and attempt may
    /// run again after its table was committed.
    fn fresh() -> Self {
        Self(format!("{}{}", Self::PREFIX, uuid::Uuid::new_v4().simple()))
    }

    /// A name read from `cost_partitions`, checked before it is written into SQL and dropped:
    /// only a load's table, never a month's or a collector's.
    fn stored(name: String) -> Result<Self, SinkError> {
        let leaf = name.strip_prefix(Self::PREFIX).is_some_and(|id| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if leaf {
            Ok(Self(name))
        } else {
            Err(SinkError::Refused(format!(
                "cost_partitions names `{name}`, which is not a table of costs"
            )))
        }
    }
}

/// What a load's commit changes in the tree of `costs`.
#[derive(Debug)]
struct Swap {
    /// The collector's month, which the new table joins.
    parent: String,
    /// The leaf the load replaces, if the month was stored.
    old: Option<Leaf>,
    new: Leaf,
}

/// How long one try at the collector's month waits for its readers before the swap steps back
/// and lets them (and the readers queued behind the swap) go on.
const SWAP_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '200ms'";
/// How long the swap tries in all before the load fails as transient (and runs again as a new
/// attempt): well inside a task's lease, since the tries come before the task's row is locked
/// but the commit still has to happen while the lease holds.
const SWAP_PATIENCE: Duration = Duration::from_secs(20);

/// Indexes the new table, takes the collector's month, fences, replaces the month's rollups,
/// records the counts, swaps the tables and commits.
///
/// The slow steps come before the fence: holding it locks the task's row, which the task's
/// heartbeats update, so a long wait there could outlast the lease.
async fn commit(
    mut tx: Transaction<'static, Postgres>,
    s: &CostScope,
    swap: &Swap,
    (replaced, failed, written): (i64, i64, i64),
    rollup: Rollup,
) -> Result<Option<Counts>, SinkError> {
    if written > 0 {
        // Built once over the sorted rows, not entry by entry as they were copied.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE INDEX ON {} (domain_id, day, id)",
            swap.new.0
        )))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    if swap.old.is_some() {
        take_month(&mut tx, &swap.parent).await?;
    }
    if !fence::pg::hold(&mut tx, s.attempt()).await.map_err(db)? {
        return Ok(None);
    }
    let fixed = format!(
        "{}\t{}\t{}\t{}",
        s.domain,
        s.collector_id,
        s.service_account_id,
        s.month.first_day()
    );
    for (table, rows) in rollup.pg_tables() {
        // `table` is one of the rollups' names, never input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE collector_id = $1 AND service_account_id = $2 AND month = $3"
        )))
        .bind(s.collector_id.as_uuid())
        .bind(s.service_account_id.as_uuid())
        .bind(s.month.first_day())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if rows.is_empty() {
            continue;
        }
        let mut buf = String::new();
        for (k, v) in &rows {
            buf.push_str(&fixed);
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
        let mut copy = tx
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await
            .map_err(db)?;
        copy.send(buf.as_bytes()).await.map_err(db)?;
        copy.finish().await.map_err(db)?;
    }
    let counts = Counts {
        created: written,
        deleted: replaced,
        failed,
        ..Counts::default()
    };
    fence::pg::set_loaded(&mut tx, s.attempt(), &counts)
        .await
        .map_err(db)?;
    fence::pg::touch_jobs(&mut tx, &[s.job_id.as_uuid()])
        .await
        .map_err(db)?;
    swap_in(&mut tx, s, swap, written).await?;
    tx.commit().await.map_err(db)?;
    Ok(Some(counts))
}

/// Locks the collector's month, which dropping the replaced leaf needs, against its readers
/// until the commit.
///
/// The lock first waits for the readers already there, and new ones queue behind it, from
/// every domain that reads the month. So each try waits [`SWAP_LOCK_TIMEOUT`], then steps back
/// to a savepoint and lets the queue drain, waiting longer between tries, for at most
/// [`SWAP_PATIENCE`].
async fn take_month(
    tx: &mut Transaction<'static, Postgres>,
    parent: &str,
) -> Result<(), SinkError> {
    // `parent` comes from `gleaner_cost_parent`: a date and a UUID, never input.
    let lock = format!("LOCK TABLE ONLY {parent} IN ACCESS EXCLUSIVE MODE");
    // Set before the savepoint, so that rolling back to it keeps the timeout.
    sqlx::raw_sql(SWAP_LOCK_TIMEOUT)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    sqlx::raw_sql("SAVEPOINT gleaner_swap")
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    let deadline = tokio::time::Instant::now() + SWAP_PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(lock.clone()))
            .execute(&mut **tx)
            .await
        {
            Ok(_) => break,
            Err(e) if lock_timed_out(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "the swap waited for readers of the month; trying again");
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT gleaner_swap")
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(db(e)),
        }
    }
    // Back to the session's own timeout for the rest of the commit.
    sqlx::raw_sql("RELEASE SAVEPOINT gleaner_swap; SET LOCAL lock_timeout = DEFAULT")
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

/// Drops the replaced leaf and attaches the new table in its place (or drops it too when the
/// load wrote nothing), and records which table holds the month. The collector's month is
/// already locked when there is a leaf to drop ([`take_month`]).
async fn swap_in(
    tx: &mut Transaction<'static, Postgres>,
    s: &CostScope,
    swap: &Swap,
    written: i64,
) -> Result<(), SinkError> {
    let mut statements = Vec::new();
    if let Some(old) = &swap.old {
        statements.push(format!("DROP TABLE IF EXISTS {}", old.0));
    }
    if written > 0 {
        statements.push(format!(
            "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ('{}')",
            swap.parent,
            swap.new.0,
            s.service_account_id.as_uuid()
        ));
    } else {
        statements.push(format!("DROP TABLE {}", swap.new.0));
    }
    for sql in statements {
        // Made of table names checked by `Leaf` or made by `gleaner_cost_parent`, and a UUID.
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    let registry = if written > 0 {
        sqlx::query(
            "INSERT INTO cost_partitions (collector_id, service_account_id, month, table_name, rows)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (collector_id, service_account_id, month) DO UPDATE
             SET table_name = excluded.table_name, rows = excluded.rows, replaced_at = now()",
        )
        .bind(s.collector_id.as_uuid())
        .bind(s.service_account_id.as_uuid())
        .bind(s.month.first_day())
        .bind(&swap.new.0)
        .bind(written)
    } else {
        sqlx::query(
            "DELETE FROM cost_partitions
             WHERE collector_id = $1 AND service_account_id = $2 AND month = $3",
        )
        .bind(s.collector_id.as_uuid())
        .bind(s.service_account_id.as_uuid())
        .bind(s.month.first_day())
    };
    registry.execute(&mut **tx).await.map_err(db)?;
    Ok(())
}

/// `lock_not_available`: the swap's `lock_timeout` ran out.
fn lock_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// A month being replaced in PostgreSQL, through the task that owns its transaction.
struct PgLoad {
    commands: mpsc::Sender<Command>,
    /// Aborted with the load if it is dropped uncommitted.
    owner: Option<JoinHandle<Result<(), SinkError>>>,
    /// The first fields of every row, encoded once.
    fixed: String,
    replaced: i64,
    written: i64,
    rollup: Rollup,
}

/// The fields every row of a load starts with; [`encode`] takes them encoded once.
#[must_use]
pub fn fixed_fields(scope: &CostScope) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        scope.domain,
        scope.collector_id,
        scope.service_account_id,
        scope.job_id,
        scope.task_id,
        scope.month.first_day()
    )
}

#[async_trait]
impl CostLoad for PgLoad {
    fn replaced(&self) -> i64 {
        self.replaced
    }

    async fn write(&mut self, batch: &[CostItem]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = String::with_capacity(batch.len() * 400);
        for c in batch {
            encode(&mut buf, &self.fixed, c);
            self.rollup.add(c);
        }
        if self
            .commands
            .send(Command::Rows(buf.into_bytes()))
            .await
            .is_err()
        {
            return Err(ended(self.owner.take()).await);
        }
        self.written += i64::try_from(batch.len()).unwrap_or(i64::MAX);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, failed: i64) -> Result<Option<Counts>, SinkError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Commit {
            failed,
            written: self.written,
            rollup: Box::new(std::mem::take(&mut self.rollup)),
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(ended(self.owner.take()).await);
        }
        let result = match answer.await {
            Ok(r) => r,
            Err(_) => Err(ended(self.owner.take()).await),
        };
        self.owner.take();
        result
    }
}

impl Drop for PgLoad {
    fn drop(&mut self) {
        // Dropped uncommitted: closing the channel already makes the owner roll back; the abort
        // also stops one still waiting for the advisory lock.
        if let Some(owner) = self.owner.take() {
            owner.abort();
        }
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
    opt(out, c.usage_type.as_deref());
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
        CostItem {
            charge_period_start: Utc.with_ymd_and_hms(2024, 9, day, 10, 0, 0).unwrap(),
            service_name: Some(service.into()),
            effective_cost: Decimal::new(billed, 12),
            ..crate::plugin::test_cost(Decimal::new(billed, 11))
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
        let accounts = r.accounts();
        assert_eq!(accounts.len(), 1, "one account, one month");
        let all = accounts.values().next().copied().expect("the account");
        assert_eq!(all.rows, 4);
        assert_eq!(all.billed_cost.to_string(), "-2.61369878629");
    }

    #[test]
    fn the_service_and_region_rollups_drop_the_other_dimension() {
        let mut r = Rollup::default();
        for (day, service, region, billed) in [
            (1, "S3", "us-east-1", 5),
            (2, "S3", "eu-west-1", 7),
            (2, "EC2", "us-east-1", 11),
        ] {
            r.add(&CostItem {
                region_id: Some(region.into()),
                ..record(day, service, billed)
            });
        }
        let services = r.services();
        assert_eq!(services.len(), 2);
        assert!(
            services
                .keys()
                .all(|k| k.region_id.is_none() && k.day.is_none())
        );
        let s3 = services
            .iter()
            .find(|(k, _)| k.service_name.as_deref() == Some("S3"))
            .map(|(_, v)| *v)
            .expect("S3");
        assert_eq!((s3.rows, s3.billed_cost), (2, Decimal::new(12, 11)));
        let regions = r.regions();
        assert_eq!(regions.len(), 2);
        assert!(regions.keys().all(|k| k.service_name.is_none()));
        let us = regions
            .iter()
            .find(|(k, _)| k.region_id.as_deref() == Some("us-east-1"))
            .map(|(_, v)| *v)
            .expect("us-east-1");
        assert_eq!((us.rows, us.billed_cost), (2, Decimal::new(16, 11)));
        let tables: Vec<&str> = r.pg_tables().into_iter().map(|(t, _)| t).collect();
        assert_eq!(tables.len(), 5, "{tables:?}");
    }

    #[test]
    fn only_a_loads_table_is_taken_from_the_registry() {
        let fresh = Leaf::fresh();
        assert_eq!(Leaf::stored(fresh.0.clone()).ok(), Some(fresh));
        for name in [
            "costs_m202409",
            "costs_m202409_c0123456789abcdef0123456789abcdef",
            "costs",
            "costs_l0123456789abcdef0123456789abcde",
            "costs_l0123456789ABCDEF0123456789abcdef",
            "costs_l0123456789abcdef0123456789abcdef; DROP TABLE jobs",
        ] {
            assert!(Leaf::stored(name.to_owned()).is_err(), "{name}");
        }
    }

    #[test]
    fn text_fields_are_escaped_and_nulls_marked() {
        let mut out = String::new();
        text(&mut out, "a\tb\\c\nd");
        opt(&mut out, None);
        assert_eq!(out, "\ta\\tb\\\\c\\nd\t\\N");
    }
}
