//! Gleaner's scheduler: turns collector schedules into jobs.
//!
//! - Each schedule stores its next fire instant; a pass ([`Scheduler::tick`]) takes the
//!   schedules whose instant has come, through an index, and records their fires (the rules are
//!   in `gleaner_common::store::schedule`). Between passes it sleeps until the earliest next
//!   instant, at most [`MAX_SLEEP`]: an idle scheduler runs one indexed query a second, whatever
//!   the number of schedules.
//! - Several replicas may run: on PostgreSQL one is the leader, holding a session advisory lock
//!   on a connection of its own (a leader that dies loses its connection, and so the lock). The
//!   unique (schedule, fire time) of the fires makes a fire produce one job even if two
//!   schedulers ever act at once. The standalone mode's SQLite store has one process.
//! - Jobs are written with their outbox row, the same path as the API's `collect`.
//! - The clock is injectable ([`Clock`]) so tests run simulated days.
//! - The leader also keeps the metric tables: each hour it makes the day partitions ahead and
//!   drops the days past the retention ([`Scheduler::maintain_metrics`]); and deletes the
//!   idempotency keys past theirs ([`Scheduler::prune_idempotency_keys`]). Each minute it folds
//!   the rows appended to `resource_counts` ([`store::resource::fold_counts`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gleaner_common::config::{MetricsSettings, SchedulerSettings};
use gleaner_common::outbox::Signal;
use gleaner_common::plugin::Catalog;
use gleaner_common::store::{
    self,
    schedule::{Fired, Lane},
};
use sea_orm::{DatabaseConnection, DbBackend};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The longest sleep between passes, so schedules created meanwhile fire on time.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often a replica that is not the leader tries to become it.
const FOLLOWER_RETRY: Duration = Duration::from_secs(2);
/// How often the leader keeps the metric tables (partitions ahead, retention).
const MAINTAIN_EVERY: chrono::Duration = chrono::Duration::hours(1);
/// How often the leader folds the resource counts: a collection appends a few rows per batch,
/// and a minute's worth keeps the API's sums to a few hundred rows.
const FOLD_COUNTS_EVERY: chrono::Duration = chrono::Duration::minutes(1);

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Fires schedules.
#[derive(Clone)]
pub struct Scheduler {
    db: DatabaseConnection,
    catalog: Catalog,
    settings: SchedulerSettings,
    metrics: MetricsSettings,
    idempotency_retention: chrono::Duration,
}

/// Idempotency keys deleted per statement when the leader prunes them.
const PRUNE_BATCH: u64 = 10_000;

impl Scheduler {
    #[must_use]
    pub fn new(db: DatabaseConnection, catalog: Catalog, settings: SchedulerSettings) -> Self {
        Self {
            db,
            catalog,
            settings,
            metrics: MetricsSettings::default(),
            idempotency_retention: chrono::Duration::hours(24),
        }
    }

    /// The same scheduler, deleting idempotency keys older than `retention`.
    #[must_use]
    pub fn with_idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention =
            chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::hours(24));
        self
    }

    /// Deletes the idempotency keys past their retention; how many.
    ///
    /// # Errors
    /// Database errors; the next pass tries again.
    pub async fn prune_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, store::Error> {
        let cutoff = (now - self.idempotency_retention).fixed_offset();
        let mut total = 0;
        loop {
            let deleted = store::idempotency::prune(&self.db, cutoff, PRUNE_BATCH).await?;
            total += deleted;
            if deleted < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// The same scheduler, keeping the metric tables by `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: MetricsSettings) -> Self {
        self.metrics = metrics;
        self
    }

    /// Makes the metric partitions of today and the days ahead, and drops the days past the
    /// retention.
    ///
    /// # Errors
    /// Database errors; the next pass tries again.
    pub async fn maintain_metrics(
        &self,
        now: DateTime<Utc>,
    ) -> Result<store::metric::Maintained, store::Error> {
        store::metric::maintain(&self.db, now, &self.metrics).await
    }

    /// Records every fire due by `now`.
    ///
    /// # Errors
    /// Database errors; what was not committed is done by the next pass.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Fired, store::Error> {
        // Batches commit one after another within a lane: in one lane, a burst of 4,166 fires
        // waited for 21 batches in turn (BENCHMARKS.md, issue 25).
        let lanes = match self.db.get_database_backend() {
            DbBackend::Postgres => self.settings.lanes.max(1),
            _ => 1,
        };
        let mut passes = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let scheduler = self.clone();
            passes.spawn(async move { scheduler.tick_lane(now, Lane { lane, lanes }).await });
        }
        let mut total = Fired::default();
        while let Some(pass) = passes.join_next().await {
            total += pass.map_err(|e| store::Error::Corrupt(format!("a pass ended: {e}")))??;
        }
        Ok(total)
    }

    /// The passes of one lane until its due schedules are all taken.
    async fn tick_lane(&self, now: DateTime<Utc>, lane: Lane) -> Result<Fired, store::Error> {
        let window = chrono::Duration::from_std(self.settings.catch_up_window)
            .unwrap_or(chrono::Duration::hours(1));
        let batch = self.settings.batch_size.max(1);
        let mut total = Fired::default();
        loop {
            let fired =
                store::schedule::fire_due(&self.db, &self.catalog, now, window, batch, lane)
                    .await?;
            total += fired;
            if fired.schedules < batch {
                return Ok(total);
            }
        }
    }

    /// How long to sleep after a pass at `now`.
    async fn idle(&self, now: DateTime<Utc>) -> Duration {
        match store::schedule::next_due(&self.db).await {
            Ok(Some(t)) if t > now => (t - now).to_std().unwrap_or(MAX_SLEEP).min(MAX_SLEEP),
            Ok(Some(_)) => Duration::ZERO,
            Ok(None) => MAX_SLEEP,
            Err(e) => {
                warn!(error = %e, "reading the next fire failed");
                MAX_SLEEP
            }
        }
    }
}

/// Leadership among scheduler replicas.
enum Leadership {
    /// The only scheduler of its store (SQLite).
    Sole,
    /// PostgreSQL: the advisory lock `key`, held by `conn` when leading.
    Advisory {
        pool: sqlx::PgPool,
        key: i64,
        conn: Option<sqlx::PgConnection>,
    },
}

impl Leadership {
    fn for_store(db: &DatabaseConnection, schema: &str) -> Self {
        match db.get_database_backend() {
            DbBackend::Postgres => Self::Advisory {
                pool: db.get_postgres_connection_pool().clone(),
                key: lock_key(schema),
                conn: None,
            },
            _ => Self::Sole,
        }
    }

    /// Whether this replica leads now, taking the lead when it is free.
    async fn lead(&mut self) -> bool {
        let Self::Advisory { pool, key, conn } = self else {
            return true;
        };
        if let Some(c) = conn {
            // The lock lives as long as this connection: check it is still there.
            if sqlx::query("SELECT 1").execute(&mut *c).await.is_ok() {
                return true;
            }
            warn!("the scheduler lost its leader connection");
            *conn = None;
        }
        let Ok(pooled) = pool.acquire().await else {
            return false;
        };
        // Detached: the lock must leave with this connection, never go back to the pool.
        let mut c = pooled.detach();
        let taken: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(*key)
            .fetch_one(&mut c)
            .await;
        if matches!(taken, Ok(true)) {
            info!("this scheduler is the leader");
            *conn = Some(c);
            true
        } else {
            let _ = c.close().await;
            false
        }
    }

    async fn resign(&mut self) {
        if let Self::Advisory { conn, .. } = self
            && let Some(c) = conn.take()
        {
            let _ = c.close().await;
        }
    }
}

/// The advisory lock key of the schedulers of one schema.
fn lock_key(schema: &str) -> i64 {
    let h = xxhash_rust::xxh3::xxh3_64(format!("gleaner.scheduler.{schema}").as_bytes());
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// Runs passes until `shutdown`, as the leader, or waiting to become it.
pub async fn run(
    scheduler: Scheduler,
    schema: String,
    clock: Arc<dyn Clock>,
    signal: Signal,
    shutdown: CancellationToken,
) {
    info!("scheduler started");
    let mut leadership = Leadership::for_store(&scheduler.db, &schema);
    let mut maintained: Option<DateTime<Utc>> = None;
    let mut folded: Option<DateTime<Utc>> = None;
    while !shutdown.is_cancelled() {
        if !leadership.lead().await {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(FOLLOWER_RETRY) => continue,
            }
        }
        let now = clock.now();
        match scheduler.tick(now).await {
            Ok(fired) if fired.queued + fired.skipped + fired.missed > 0 => {
                info!(
                    queued = fired.queued,
                    skipped = fired.skipped,
                    missed = fired.missed,
                    "schedules fired"
                );
                signal.notify();
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "a scheduler pass failed; retrying"),
        }
        if folded.is_none_or(|t| now - t >= FOLD_COUNTS_EVERY) {
            match store::resource::fold_counts(&scheduler.db).await {
                Ok(n) => tracing::debug!(rows = n, "resource counts folded"),
                Err(e) => warn!(error = %e, "folding the resource counts failed; retrying"),
            }
            folded = Some(now);
        }
        if maintained.is_none_or(|t| now - t >= MAINTAIN_EVERY) {
            match scheduler.prune_idempotency_keys(now).await {
                Ok(0) => {}
                Ok(n) => info!(keys = n, "idempotency keys past their retention deleted"),
                Err(e) => {
                    warn!(error = %e, "deleting expired idempotency keys failed; retrying at the next maintenance")
                }
            }
            match scheduler.maintain_metrics(now).await {
                Ok(m) => {
                    if m.created > 0 || !m.dropped.is_empty() || m.deleted > 0 {
                        info!(
                            partitions_made = m.created,
                            days_dropped = m.dropped.len(),
                            rows_deleted = m.deleted,
                            "metric tables kept"
                        );
                    }
                    maintained = Some(now);
                }
                Err(e) => {
                    warn!(error = %e, "keeping the metric tables failed; retrying in a minute");
                    maintained = Some(now - MAINTAIN_EVERY + chrono::Duration::minutes(1));
                }
            }
        }
        let sleep = scheduler.idle(clock.now()).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(sleep) => {}
        }
    }
    leadership.resign().await;
    info!("scheduler stopped");
}
