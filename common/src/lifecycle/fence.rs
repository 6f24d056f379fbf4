//! The writes of a running attempt that happen inside a sink's own transaction: holding the
//! attempt's fence, adding to its progress, and moving its job's `updated_at`.
//!
//! The sinks write rows with COPY and arrays through sqlx, in transactions of their own; these
//! are the only statements of theirs that touch `job_tasks` and `jobs`, so the rules of a
//! task's life stay in [`crate::lifecycle`]. Each `hold` makes the transaction conditional on
//! the attempt still owning its task: when it does not, the sink rolls back and writes nothing.

use std::collections::HashSet;

use chrono::Utc;
use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use super::task::Attempt;
use crate::model::Counts;

/// Moves the `updated_at` of the jobs `$1` to `$2`, skipping any whose row another transaction
/// holds, in PostgreSQL.
///
/// A job's progress is summed from its tasks, and `GET /v1/jobs/events` finds changed jobs by
/// `updated_at`: each task's claim, each batch it writes and its end touch the job. Those
/// touches must not wait: a job's tasks run side by side, and waiting on the one row serialized
/// them all (one job of 3,000 one-resource tasks ran at 90 tasks/s). The holder of the lock is
/// touching the job itself, and the job's own end (which waits for the row) moves it last, so
/// a skipped touch delays what an event stream shows until the next one. A waiting touch in a
/// task's end could also deadlock with a cancel, which locks the job's row, then its tasks'.
/// Locked in id order, so two touches of the same jobs never wait on each other.
pub const TOUCH_JOBS_PG: &str = "UPDATE jobs SET updated_at = $2 \
    WHERE id IN (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED)";

/// [`TOUCH_JOBS_PG`] in SQLite, one job: it has one writer at a time, nothing to skip.
pub(crate) const TOUCH_JOB_SQLITE: &str = "UPDATE jobs SET updated_at = ?2 WHERE id = ?1";

/// The writes of PostgreSQL sinks.
pub mod pg {
    use super::{Attempt, Counts, HashSet, PgConnection, TOUCH_JOBS_PG, Utc, Uuid};

    const HOLD: &str = "SELECT 1 FROM job_tasks \
        WHERE id = $1 AND attempt = $2 AND status = 'IN_PROGRESS' FOR UPDATE";

    /// Locks the task's row while `attempt` owns it, until the transaction ends: `false` when
    /// it does not, and then the transaction must not commit. Taken before the commit, after
    /// the writes, it lets several transactions of one attempt write at once.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn hold(conn: &mut PgConnection, attempt: Attempt) -> sqlx::Result<bool> {
        finds(conn, HOLD, attempt).await
    }

    const OWNS: &str = "SELECT 1 FROM job_tasks \
        WHERE id = $1 AND attempt = $2 AND status = 'IN_PROGRESS'";

    /// Whether `attempt` owns its task now, without a lock: asked before a batch's writes so
    /// an attempt that lost its task (its lease ran out and another attempt took over) stops
    /// before it locks any resource row. Only [`hold`] decides whether the batch commits;
    /// this keeps a stale attempt out of the way of the new attempt's end, which locks the
    /// task's row before the resources' (PostgreSQL breaks the rare deadlock left, a
    /// transient error retried).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn owns(conn: &mut PgConnection, attempt: Attempt) -> sqlx::Result<bool> {
        finds(conn, OWNS, attempt).await
    }

    /// Whether `sql` ([`HOLD`] or [`OWNS`]) finds the attempt's task row.
    async fn finds(
        conn: &mut PgConnection,
        sql: &'static str,
        attempt: Attempt,
    ) -> sqlx::Result<bool> {
        Ok(sqlx::query(sql)
            .bind(attempt.task.as_uuid())
            .bind(attempt.number)
            .fetch_optional(conn)
            .await?
            .is_some())
    }

    /// The attempts of a group that still own their task, locked in id order so two groups
    /// never wait on each other's rows in opposite orders.
    const HOLD_MANY: &str = "SELECT t.id FROM job_tasks t \
        JOIN unnest($1::uuid[], $2::int4[]) AS u(id, attempt) \
            ON t.id = u.id AND t.attempt = u.attempt \
        WHERE t.status = 'IN_PROGRESS' ORDER BY t.id FOR UPDATE OF t";

    /// [`hold`] for several attempts at once: the tasks whose attempt still owns them.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn hold_many(
        conn: &mut PgConnection,
        attempts: &[Attempt],
    ) -> sqlx::Result<HashSet<Uuid>> {
        let (ids, numbers): (Vec<Uuid>, Vec<i32>) = attempts
            .iter()
            .map(|a| (a.task.as_uuid(), a.number))
            .unzip();
        Ok(sqlx::query_scalar(HOLD_MANY)
            .bind(&ids)
            .bind(&numbers)
            .fetch_all(conn)
            .await?
            .into_iter()
            .collect())
    }

    const ADD_PROGRESS: &str = "UPDATE job_tasks t SET \
        created = t.created + u.created, updated = t.updated + u.updated, \
        unchanged = t.unchanged + u.unchanged, failed = t.failed + u.failed, updated_at = now() \
        FROM unnest($1::uuid[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) \
            AS u(id, attempt, created, updated, unchanged, failed) \
        WHERE t.id = u.id AND t.attempt = u.attempt";

    /// Adds batches' counts to their attempts' progress (call after [`hold`]).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn add_progress(
        conn: &mut PgConnection,
        progress: &[(Attempt, Counts)],
    ) -> sqlx::Result<()> {
        let n = progress.len();
        let (mut ids, mut numbers) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut created, mut updated, mut unchanged, mut failed) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (a, c) in progress {
            ids.push(a.task.as_uuid());
            numbers.push(a.number);
            created.push(c.created);
            updated.push(c.updated);
            unchanged.push(c.unchanged);
            failed.push(c.failed);
        }
        sqlx::query(ADD_PROGRESS)
            .bind(ids)
            .bind(numbers)
            .bind(created)
            .bind(updated)
            .bind(unchanged)
            .bind(failed)
            .execute(conn)
            .await?;
        Ok(())
    }

    const SET_LOADED: &str = "UPDATE job_tasks SET \
        created = $3, deleted = $4, failed = $5, updated_at = now() \
        WHERE id = $1 AND attempt = $2";

    /// Sets what a cost load did (records written, replaced, malformed) on its attempt (call
    /// after [`hold`]).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn set_loaded(
        conn: &mut PgConnection,
        attempt: Attempt,
        counts: &Counts,
    ) -> sqlx::Result<()> {
        sqlx::query(SET_LOADED)
            .bind(attempt.task.as_uuid())
            .bind(attempt.number)
            .bind(counts.created)
            .bind(counts.deleted)
            .bind(counts.failed)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Moves the jobs' `updated_at` to now, skipping those whose row is held
    /// ([`TOUCH_JOBS_PG`]).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn touch_jobs(conn: &mut PgConnection, jobs: &[Uuid]) -> sqlx::Result<()> {
        // The clock of the process, like every other write of `jobs.updated_at`.
        sqlx::query(TOUCH_JOBS_PG)
            .bind(jobs)
            .bind(Utc::now().fixed_offset())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The writes of SQLite sinks. SQLite has no row locks: a sink's transaction takes the
/// database's write lock at `BEGIN IMMEDIATE`, and [`sqlite::hold`] checks the attempt under it.
pub mod sqlite {
    use super::{Attempt, Counts, SqliteConnection, TOUCH_JOB_SQLITE, Utc, Uuid};

    const HOLD: &str = "UPDATE job_tasks SET updated_at = ?1 \
        WHERE id = ?2 AND attempt = ?3 AND status = 'IN_PROGRESS'";

    /// Whether `attempt` owns its task (and moves the task's `updated_at`): `false` when it does
    /// not, and then nothing may be written.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn hold(conn: &mut SqliteConnection, attempt: Attempt) -> sqlx::Result<bool> {
        let res = sqlx::query(HOLD)
            .bind(Utc::now().fixed_offset())
            .bind(attempt.task.as_uuid())
            .bind(attempt.number)
            .execute(conn)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    const ADD_PROGRESS: &str = "UPDATE job_tasks SET created = created + ?3, \
        updated = updated + ?4, unchanged = unchanged + ?5, failed = failed + ?6 \
        WHERE id = ?1 AND attempt = ?2";

    /// Adds a batch's counts to its attempt's progress (call after [`hold`]).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn add_progress(
        conn: &mut SqliteConnection,
        attempt: Attempt,
        counts: &Counts,
    ) -> sqlx::Result<()> {
        let values = [
            counts.created,
            counts.updated,
            counts.unchanged,
            counts.failed,
        ];
        write_counts(conn, ADD_PROGRESS, attempt, &values).await
    }

    const SET_LOADED: &str = "UPDATE job_tasks SET created = ?3, deleted = ?4, failed = ?5 \
        WHERE id = ?1 AND attempt = ?2";

    /// Sets what a cost load did on its attempt (call after [`hold`]).
    ///
    /// # Errors
    /// Database errors only.
    pub async fn set_loaded(
        conn: &mut SqliteConnection,
        attempt: Attempt,
        counts: &Counts,
    ) -> sqlx::Result<()> {
        let values = [counts.created, counts.deleted, counts.failed];
        write_counts(conn, SET_LOADED, attempt, &values).await
    }

    /// Runs `sql` with the attempt as `?1`, `?2` and `values` after.
    async fn write_counts(
        conn: &mut SqliteConnection,
        sql: &'static str,
        attempt: Attempt,
        values: &[i64],
    ) -> sqlx::Result<()> {
        let mut q = sqlx::query(sql)
            .bind(attempt.task.as_uuid())
            .bind(attempt.number);
        for v in values {
            q = q.bind(*v);
        }
        q.execute(conn).await?;
        Ok(())
    }

    /// Moves the job's `updated_at` to now.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn touch_job(conn: &mut SqliteConnection, job: Uuid) -> sqlx::Result<()> {
        sqlx::query(TOUCH_JOB_SQLITE)
            .bind(job)
            .bind(Utc::now().fixed_offset())
            .execute(conn)
            .await?;
        Ok(())
    }
}
