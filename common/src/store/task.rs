//! Tasks: claiming one under a lease, recording progress and the outcome, fenced by attempt.
//!
//! Every write after the claim carries the attempt number in its `WHERE`: when zero rows match,
//! a newer attempt owns the task and the stale worker stops without touching anything.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{Error, Result, outbox};
use crate::billing::Month;
use crate::entity::{job, job_task, service_account};
use crate::envelope::{Envelope, TaskRequested};
use crate::id::{CollectorId, DomainId, JobId, ProjectId, SecretId, ServiceAccountId, TaskId};
use crate::model::{Counts, JobKind, JobStatus, TaskStatus};

/// The clauses every write of a task's row shares.
trait TaskUpdate {
    /// The attempt no longer runs: nobody holds the task's lease.
    fn without_lease(self) -> Self;
    /// Only while `attempt` owns the task: a newer attempt, or a task that ended (canceled,
    /// timed out), makes the write match nothing.
    fn fenced(self, id: TaskId, attempt: i32) -> Self;
}

impl TaskUpdate for sea_orm::UpdateMany<job_task::Entity> {
    fn without_lease(self) -> Self {
        self.col_expr(
            job_task::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            job_task::Column::LeaseExpiresAt,
            Expr::value(Option::<chrono::DateTime<chrono::FixedOffset>>::None),
        )
    }

    fn fenced(self, id: TaskId, attempt: i32) -> Self {
        self.filter(job_task::Column::Id.eq(id.as_uuid()))
            .filter(job_task::Column::Attempt.eq(attempt))
            .filter(job_task::Column::Status.eq(JobStatus::InProgress))
    }
}

/// A task as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Task {
    pub id: TaskId,
    pub job_id: JobId,
    pub service_account_id: Option<ServiceAccountId>,
    /// Billing: the month whose costs the task replaces.
    pub month: Option<Month>,
    pub status: TaskStatus,
    pub attempt: i32,
    pub max_attempts: i32,
    pub counts: Counts,
    pub error: Option<String>,
    pub stderr: Option<String>,
    /// The attempts before the current one, oldest first, with why each failed.
    pub previous_attempts: Vec<PreviousAttempt>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

impl From<job_task::Model> for Task {
    fn from(m: job_task::Model) -> Self {
        let started = m.started_at.map(|t| t.to_utc());
        let finished = m.finished_at.map(|t| t.to_utc());
        Self {
            id: m.id.into(),
            job_id: m.job_id.into(),
            service_account_id: m.service_account_id.map(Into::into),
            month: m.month.map(Month::of),
            status: m.status,
            attempt: m.attempt,
            max_attempts: m.max_attempts,
            counts: counts(&m),
            error: m.error,
            stderr: m.stderr,
            previous_attempts: m
                .previous_attempts
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            created_at: m.created_at.to_utc(),
            started_at: started,
            finished_at: finished,
            duration_ms: started
                .zip(finished)
                .map(|(s, f)| (f - s).num_milliseconds()),
        }
    }
}

fn counts(m: &job_task::Model) -> Counts {
    Counts {
        created: m.created,
        updated: m.updated,
        unchanged: m.unchanged,
        deleted: m.deleted,
        failed: m.failed,
    }
}

/// The tasks of a job, in creation order.
///
/// # Errors
/// Database errors only.
pub async fn list(db: &impl ConnectionTrait, domain: DomainId, job: JobId) -> Result<Vec<Task>> {
    let rows = job_task::Entity::find()
        .filter(job_task::Column::DomainId.eq(domain.as_uuid()))
        .filter(job_task::Column::JobId.eq(job.as_uuid()))
        .order_by_asc(job_task::Column::Id)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Everything a worker needs to run a claimed task.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub task_id: TaskId,
    pub attempt: i32,
    /// The task's retry budget: once this many attempts have failed, the task fails.
    pub max_attempts: i32,
    /// Attempts of the task that failed before this one (those handed back by a stopping
    /// worker do not count).
    pub failures: i32,
    pub job_id: JobId,
    pub domain: DomainId,
    pub kind: JobKind,
    pub collector_id: Option<CollectorId>,
    pub plugin_id: String,
    pub plugin_version: String,
    pub options: Value,
    pub service_account_id: Option<ServiceAccountId>,
    pub provider: Option<String>,
    pub project_id: Option<ProjectId>,
    /// The account's secret as the claim read it: `Some(None)` when it has no credentials.
    pub secret: Option<Option<SecretId>>,
    /// Billing: the month whose costs the task replaces.
    pub month: Option<Month>,
}

/// Which tasks a delivery of a task's message may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimPolicy {
    /// Only a QUEUED task: one IN_PROGRESS belongs to the worker running it (several workers
    /// share the store, and a duplicate delivery must not start a second run).
    Queued,
    /// A QUEUED task, or an IN_PROGRESS one, taken over as a new attempt. Only for a store with
    /// a single process that hands out each message once at a time (the standalone mode): a
    /// task found IN_PROGRESS when its message is delivered again was left by a process that
    /// died or an attempt that could not record its end, and nothing else will ever finish it.
    TakeOverRunning,
}

/// Claims a task for `owner` with a lease, starting a new attempt and clearing the counts of
/// any earlier one. `None` when `policy` does not allow it: the task ended, or (with
/// [`ClaimPolicy::Queued`]) another delivery of the same message already took it.
///
/// # Errors
/// Database errors only.
pub async fn claim(
    db: &impl ConnectionTrait,
    id: TaskId,
    owner: &str,
    lease: Duration,
    policy: ClaimPolicy,
) -> Result<Option<Claimed>> {
    Ok(claim_many(db, &[id], owner, lease, policy)
        .await?
        .pop()
        .flatten())
}

/// [`claim`] for several tasks at once, in four round trips whatever their number: the answer
/// for each id, in order. An id given twice is claimed once, the first time.
///
/// # Errors
/// Database errors only; then no task was claimed.
pub async fn claim_many(
    db: &impl ConnectionTrait,
    ids: &[TaskId],
    owner: &str,
    lease: Duration,
    policy: ClaimPolicy,
) -> Result<Vec<Option<Claimed>>> {
    let claimable = match policy {
        ClaimPolicy::Queued => vec![JobStatus::Queued],
        ClaimPolicy::TakeOverRunning => vec![JobStatus::Queued, JobStatus::InProgress],
    };
    // No transaction: the claim is the one update, atomic by itself; what follows only reads,
    // and a transaction around it cost two round trips of every task.
    let now = Utc::now();
    let expires = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let rows = claim_rows(db, ids, owner, expires, now, claimable).await?;
    let mut job_ids: Vec<uuid::Uuid> = rows.iter().map(|t| t.job_id).collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    // A new attempt clears the task's counts, which the job's sum shows: the job changed.
    for &j in &job_ids {
        super::job::touch(db, j, now.fixed_offset()).await?;
    }
    let jobs: HashMap<uuid::Uuid, job::Model> = job::Entity::find()
        .filter(job::Column::Id.is_in(job_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    let mut account_ids: Vec<uuid::Uuid> =
        rows.iter().filter_map(|t| t.service_account_id).collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    let accounts: HashMap<uuid::Uuid, service_account::Model> = if account_ids.is_empty() {
        HashMap::new()
    } else {
        service_account::Entity::find()
            .filter(service_account::Column::Id.is_in(account_ids))
            .all(db)
            .await?
            .into_iter()
            .map(|a| (a.id, a))
            .collect()
    };
    let mut claimed: HashMap<uuid::Uuid, Claimed> = HashMap::with_capacity(rows.len());
    for task in rows {
        let j = jobs
            .get(&task.job_id)
            .ok_or_else(|| Error::not_found("job", task.job_id))?;
        let account = task.service_account_id.and_then(|sa| accounts.get(&sa));
        claimed.insert(
            task.id,
            Claimed {
                task_id: task.id.into(),
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                failures: failures_of(&task),
                job_id: j.id.into(),
                domain: j.domain_id.into(),
                kind: j.kind,
                collector_id: j.collector_id.map(Into::into),
                plugin_id: j.plugin_id.clone(),
                plugin_version: j.plugin_version.clone(),
                options: j.options.clone(),
                service_account_id: task.service_account_id.map(Into::into),
                provider: account.map(|a| a.provider.clone()),
                project_id: account.and_then(|a| a.project_id).map(Into::into),
                secret: account.map(|a| a.secret_id.map(SecretId::from_uuid)),
                month: task.month.map(Month::of),
            },
        );
    }
    Ok(ids.iter().map(|id| claimed.remove(&id.as_uuid())).collect())
}

/// The claim's update in PostgreSQL: the ids drive a join on the primary key. With the ids as
/// a filter beside the status, the planner took the status index whenever its statistics lagged
/// behind a job just planned (thousands of QUEUED tasks it did not know of yet), and so read
/// every queued task for each claim: 2–7 ms a group at 6,000 tasks, growing with the job.
const CLAIM_PG: &str = "UPDATE job_tasks t SET status = $1, attempt = t.attempt + 1, \
     lease_owner = $2, lease_expires_at = $3, started_at = $4, updated_at = $4, created = 0, \
     updated = 0, unchanged = 0, deleted = 0, failed = 0, error = NULL \
     FROM unnest($5::uuid[]) AS u(id) WHERE t.id = u.id AND t.status = ANY($6::text[]) \
     RETURNING t.*";

/// Moves the claimable ones of `ids` to IN_PROGRESS under a new attempt and lease, and
/// returns them.
async fn claim_rows(
    db: &impl ConnectionTrait,
    ids: &[TaskId],
    owner: &str,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
    claimable: Vec<JobStatus>,
) -> Result<Vec<job_task::Model>> {
    if db.get_database_backend() == DbBackend::Postgres {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let claimable: Vec<String> = claimable.iter().map(ActiveEnum::to_value).collect();
        let claim = Statement::from_sql_and_values(
            DbBackend::Postgres,
            CLAIM_PG,
            [
                JobStatus::InProgress.to_value().into(),
                owner.into(),
                expires.fixed_offset().into(),
                now.fixed_offset().into(),
                ids.into(),
                claimable.into(),
            ],
        );
        return Ok(job_task::Entity::find().from_raw_sql(claim).all(db).await?);
    }
    let rows = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(JobStatus::InProgress))
        .col_expr(
            job_task::Column::Attempt,
            Expr::col(job_task::Column::Attempt).add(1),
        )
        .col_expr(job_task::Column::LeaseOwner, Expr::value(owner))
        .col_expr(
            job_task::Column::LeaseExpiresAt,
            Expr::value(expires.fixed_offset()),
        )
        .col_expr(job_task::Column::StartedAt, Expr::value(now.fixed_offset()))
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now.fixed_offset()))
        .col_expr(job_task::Column::Created, Expr::value(0i64))
        .col_expr(job_task::Column::Updated, Expr::value(0i64))
        .col_expr(job_task::Column::Unchanged, Expr::value(0i64))
        .col_expr(job_task::Column::Deleted, Expr::value(0i64))
        .col_expr(job_task::Column::Failed, Expr::value(0i64))
        .col_expr(job_task::Column::Error, Expr::value(Option::<String>::None))
        .filter(job_task::Column::Id.is_in(ids.iter().map(|id| id.as_uuid())))
        .filter(job_task::Column::Status.is_in(claimable))
        .exec_with_returning(db)
        .await?;
    Ok(rows)
}

/// How a task attempt ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: TaskStatus,
    pub error: Option<String>,
    pub stderr: Option<String>,
    /// For a successful collection: the planned sweep of what it did not see, applied in the
    /// same transaction, so a run counts once however often its message is delivered.
    pub sweep: Option<super::resource::SweepPlan>,
}

/// What finishing a task did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Recorded; `Some` when this was the job's last task and the job ended with that status.
    Recorded(Option<JobStatus>),
    /// A newer attempt owns the task; nothing was written.
    Stale,
}

/// Records a task's outcome and then, when no task of the job is left unfinished, ends the job
/// ([`super::job::conclude`]).
///
/// # Errors
/// Database errors only.
pub async fn finish<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    id: TaskId,
    attempt: i32,
    outcome: Outcome,
) -> Result<Finished> {
    let mut finished = finish_many(db, vec![(id, attempt, outcome)]).await?;
    Ok(finished.pop().unwrap_or(Finished::Stale))
}

/// [`finish`] for several attempts in one transaction, and each of their jobs concluded once:
/// what finishing each did, in order. When a job ends, the last of its tasks here carries the
/// job's status.
///
/// # Errors
/// Database errors only; then nothing was recorded.
pub async fn finish_many<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    ends: Vec<(TaskId, i32, Outcome)>,
) -> Result<Vec<Finished>> {
    let txn = super::begin_write(db).await?;
    let now = Utc::now().fixed_offset();
    // The job of each attempt recorded; `None` for a stale one.
    let mut jobs: Vec<Option<uuid::Uuid>> = vec![None; ends.len()];
    // One update per distinct attempt number and outcome: for a group of small tasks, mostly
    // first attempts that succeeded, that is one update for all.
    let mut classes: Vec<(i32, &Outcome, Vec<usize>)> = Vec::new();
    for (n, (_, attempt, outcome)) in ends.iter().enumerate() {
        let same = |(a, o, _): &&mut (i32, &Outcome, Vec<usize>)| {
            *a == *attempt
                && o.status == outcome.status
                && o.error == outcome.error
                && o.stderr == outcome.stderr
        };
        match classes.iter_mut().find(same) {
            Some(class) => class.2.push(n),
            None => classes.push((*attempt, outcome, vec![n])),
        }
    }
    for (attempt, outcome, members) in &classes {
        let ids: Vec<uuid::Uuid> = members.iter().map(|&n| ends[n].0.as_uuid()).collect();
        let rows = end_rows(&txn, &ids, *attempt, outcome, now).await?;
        let recorded: HashMap<uuid::Uuid, uuid::Uuid> =
            rows.into_iter().map(|t| (t.id, t.job_id)).collect();
        for &n in members {
            jobs[n] = recorded.get(&ends[n].0.as_uuid()).copied();
        }
    }
    for ((id, _, outcome), job) in ends.iter().zip(&jobs) {
        if job.is_none() || outcome.status != JobStatus::Success {
            continue;
        }
        if let Some(sweep) = &outcome.sweep {
            let deleted = super::resource::apply_sweep(&txn, sweep).await?;
            if deleted > 0 {
                job_task::Entity::update_many()
                    .col_expr(
                        job_task::Column::Deleted,
                        Expr::col(job_task::Column::Deleted).add(deleted),
                    )
                    .filter(job_task::Column::Id.eq(id.as_uuid()))
                    .exec(&txn)
                    .await?;
            }
        }
    }
    let mut distinct: Vec<uuid::Uuid> = jobs.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        txn.rollback().await?;
        return Ok(vec![Finished::Stale; jobs.len()]);
    }
    // Read again rather than `now`: the sweep may have taken a while, and the job's
    // `updated_at` should be close to the commit that makes it visible (the job event stream
    // allows for a bounded lag only).
    let touched = Utc::now().fixed_offset();
    for &j in &distinct {
        super::job::touch(&txn, j, touched).await?;
    }
    txn.commit().await?;
    let mut ended: HashMap<uuid::Uuid, Option<JobStatus>> = HashMap::with_capacity(distinct.len());
    for j in distinct {
        ended.insert(j, super::job::conclude(db, j.into()).await?);
    }
    // Walked backwards so the job's status goes to its last task only.
    let mut out: Vec<Finished> = jobs
        .iter()
        .rev()
        .map(|j| match j {
            None => Finished::Stale,
            Some(j) => Finished::Recorded(ended.get_mut(j).and_then(Option::take)),
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// [`CLAIM_PG`]'s join, for the ends of a group's attempts that share an outcome.
const END_PG: &str = "UPDATE job_tasks t SET status = $1, error = $2, stderr = $3, \
     finished_at = $4, updated_at = $4, lease_owner = NULL, lease_expires_at = NULL \
     FROM unnest($5::uuid[]) AS u(id) \
     WHERE t.id = u.id AND t.attempt = $6 AND t.status = $7 RETURNING t.*";

/// Records `outcome` on the tasks of `ids` whose attempt `attempt` still runs, and returns them.
async fn end_rows(
    db: &impl ConnectionTrait,
    ids: &[uuid::Uuid],
    attempt: i32,
    outcome: &Outcome,
    now: sea_orm::prelude::DateTimeWithTimeZone,
) -> Result<Vec<job_task::Model>> {
    if db.get_database_backend() == DbBackend::Postgres {
        let end = Statement::from_sql_and_values(
            DbBackend::Postgres,
            END_PG,
            [
                outcome.status.to_value().into(),
                outcome.error.clone().into(),
                outcome.stderr.clone().into(),
                now.into(),
                ids.to_vec().into(),
                attempt.into(),
                JobStatus::InProgress.to_value().into(),
            ],
        );
        return Ok(job_task::Entity::find().from_raw_sql(end).all(db).await?);
    }
    let rows = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(outcome.status))
        .col_expr(job_task::Column::Error, Expr::value(outcome.error.clone()))
        .col_expr(
            job_task::Column::Stderr,
            Expr::value(outcome.stderr.clone()),
        )
        .col_expr(job_task::Column::FinishedAt, Expr::value(now))
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
        .without_lease()
        .filter(job_task::Column::Id.is_in(ids.iter().copied()))
        .filter(job_task::Column::Attempt.eq(attempt))
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .exec_with_returning(db)
        .await?;
    Ok(rows)
}

/// Hands a running task back to the queue (its worker is stopping, or could not record the
/// outcome), with a new `task.requested` message in the same transaction. The message the task
/// came with cannot carry it: a stopping worker closes its broker connection first, and the
/// broker hands that message to another worker, which finds the task still running and drops
/// it. Fenced like every other write; `false` when the attempt no longer owned the task.
///
/// # Errors
/// Database errors only.
pub async fn release<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    id: TaskId,
    attempt: i32,
) -> Result<bool> {
    let txn = super::begin_write(db).await?;
    let mut rows = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(JobStatus::Queued))
        .without_lease()
        .col_expr(
            job_task::Column::UpdatedAt,
            Expr::value(Utc::now().fixed_offset()),
        )
        .fenced(id, attempt)
        .exec_with_returning(&txn)
        .await?;
    let Some(task) = rows.pop() else {
        txn.rollback().await?;
        return Ok(false);
    };
    let j = job::Entity::find_by_id(task.job_id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("job", task.job_id))?;
    outbox::insert(&txn, &next_attempt(&j, id, attempt)).await?;
    txn.commit().await?;
    Ok(true)
}

/// The message that runs a task's next attempt.
fn next_attempt(j: &job::Model, task: TaskId, attempt: i32) -> Envelope<TaskRequested> {
    Envelope::new(
        j.domain_id.into(),
        j.kind,
        j.id.into(),
        Some(task),
        u32::try_from(attempt + 1).unwrap_or(u32::MAX),
        TaskRequested {},
    )
}

/// How many attempts of a task failed: the length of its `previous_attempts`.
fn failures_of(t: &job_task::Model) -> i32 {
    t.previous_attempts
        .as_ref()
        .and_then(serde_json::Value::as_array)
        .map_or(0, |a| i32::try_from(a.len()).unwrap_or(i32::MAX))
}

/// Extends a running attempt's lease. `false` when the attempt no longer owns the task (a newer
/// attempt took it over, the task or its job was canceled or timed out): the worker must stop.
///
/// # Errors
/// Database errors only.
pub async fn heartbeat(
    db: &impl ConnectionTrait,
    id: TaskId,
    attempt: i32,
    lease: Duration,
) -> Result<bool> {
    let expires = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let res = job_task::Entity::update_many()
        .col_expr(
            job_task::Column::LeaseExpiresAt,
            Expr::value(expires.fixed_offset()),
        )
        .fenced(id, attempt)
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Shows how many records a running billing load has taken so far (`counts.created`), before
/// its commit sets the final counts; moves the job's `updated_at` for the event stream. Fenced
/// like every write of the attempt; `false` when it no longer owns the task.
///
/// # Errors
/// Database errors only.
pub async fn loading(
    db: &impl ConnectionTrait,
    id: TaskId,
    job: JobId,
    attempt: i32,
    records: i64,
) -> Result<bool> {
    let now = Utc::now().fixed_offset();
    let res = job_task::Entity::update_many()
        .col_expr(job_task::Column::Created, Expr::value(records))
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
        .fenced(id, attempt)
        .exec(db)
        .await?;
    super::job::touch(db, job.as_uuid(), now).await?;
    Ok(res.rows_affected == 1)
}

/// One earlier attempt of a task, kept in `previous_attempts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct PreviousAttempt {
    pub attempt: i32,
    /// The worker that ran it.
    pub worker: Option<String>,
    pub error: String,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
}

/// What [`retry_later`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retried {
    /// The task is QUEUED again; its next attempt's message is delivered after the delay.
    Queued,
    /// The attempt no longer owns the task; nothing was written.
    Stale,
}

/// Ends a failed attempt without ending the task: the task goes back to QUEUED with the
/// attempt's error kept in `previous_attempts`, and a `task.requested` message for the next
/// attempt is queued to be delivered after `delay`, in the same transaction. Whatever the
/// attempt committed stays; the next attempt collects again over it. The caller checks the
/// retry budget (`failures + 1 < max_attempts`).
///
/// # Errors
/// Database errors only.
pub async fn retry_later<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    id: TaskId,
    attempt: i32,
    error: &str,
    delay: Duration,
) -> Result<Retried> {
    let txn = super::begin_write(db).await?;
    let Some(current) = job_task::Entity::find_by_id(id.as_uuid())
        .filter(job_task::Column::Attempt.eq(attempt))
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .one(&txn)
        .await?
    else {
        txn.rollback().await?;
        return Ok(Retried::Stale);
    };
    let now = Utc::now();
    let mut history: Vec<PreviousAttempt> = match &current.previous_attempts {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| Error::Corrupt(format!("previous attempts of task {id}: {e}")))?,
        None => Vec::new(),
    };
    history.push(PreviousAttempt {
        attempt,
        worker: current.lease_owner.clone(),
        error: error.to_owned(),
        started_at: current.started_at.map(|t| t.to_utc()),
        ended_at: now,
    });
    let history = serde_json::to_value(&history).map_err(|e| Error::Corrupt(e.to_string()))?;
    let res = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(JobStatus::Queued))
        .col_expr(job_task::Column::Error, Expr::value(error))
        .col_expr(job_task::Column::PreviousAttempts, Expr::value(history))
        .without_lease()
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now.fixed_offset()))
        .fenced(id, attempt)
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        txn.rollback().await?;
        return Ok(Retried::Stale);
    }
    let j = job::Entity::find_by_id(current.job_id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("job", current.job_id))?;
    super::job::touch(&txn, j.id, now.fixed_offset()).await?;
    let envelope = next_attempt(&j, id, attempt);
    if delay.is_zero() {
        outbox::insert(&txn, &envelope).await?;
    } else {
        let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        outbox::insert_delayed(&txn, &envelope, at).await?;
    }
    txn.commit().await?;
    Ok(Retried::Queued)
}

/// A task whose lease ran out, as the reaper found it.
#[derive(Clone, Debug)]
pub struct Expired {
    pub id: TaskId,
    pub job_id: JobId,
    pub attempt: i32,
    pub max_attempts: i32,
    /// Attempts that failed before this one.
    pub failures: i32,
    pub owner: Option<String>,
}

/// Up to `limit` IN_PROGRESS tasks whose lease expired before `now`: their worker died or lost
/// the database for longer than the lease.
///
/// # Errors
/// Database errors only.
pub async fn expired_leases(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Expired>> {
    let rows = job_task::Entity::find()
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .filter(job_task::Column::LeaseExpiresAt.lt(now.fixed_offset()))
        .order_by_asc(job_task::Column::LeaseExpiresAt)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|t| Expired {
            id: t.id.into(),
            job_id: t.job_id.into(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            failures: failures_of(&t),
            owner: t.lease_owner,
        })
        .collect())
}

/// Ends every unfinished task of a job with `status` and `reason`, clearing their leases: the
/// workers running them find their attempt fenced at the next heartbeat and stop. Returns how
/// many tasks were ended.
pub(crate) async fn end_unfinished(
    db: &impl ConnectionTrait,
    job: uuid::Uuid,
    status: TaskStatus,
    reason: &str,
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Result<u64> {
    let res = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(status))
        .col_expr(job_task::Column::Error, Expr::value(reason))
        .col_expr(job_task::Column::FinishedAt, Expr::value(now))
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
        .without_lease()
        .filter(job_task::Column::JobId.eq(job))
        .filter(job_task::Column::Status.is_in([JobStatus::Queued, JobStatus::InProgress]))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Queues a new `task.requested` message for up to `limit` tasks QUEUED since before
/// `older_than` (their message should have been delivered long ago: one lost in a broker
/// failure, say), and moves their `updated_at` so the next pass leaves them alone for as long.
/// A task whose message was only late runs once anyway: the second message finds it claimed.
/// Returns how many tasks were nudged.
///
/// # Errors
/// Database errors only.
pub async fn requeue_forgotten<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    older_than: DateTime<Utc>,
    limit: u64,
) -> Result<usize> {
    let stale = job_task::Entity::find()
        .filter(job_task::Column::Status.eq(JobStatus::Queued))
        .filter(job_task::Column::UpdatedAt.lt(older_than.fixed_offset()))
        .limit(limit)
        .all(db)
        .await?;
    let mut nudged = 0;
    for t in stale {
        let txn = super::begin_write(db).await?;
        let now = Utc::now().fixed_offset();
        // Fenced on the row as read: a claim or another reaper since then wins.
        let res = job_task::Entity::update_many()
            .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
            .filter(job_task::Column::Id.eq(t.id))
            .filter(job_task::Column::Status.eq(JobStatus::Queued))
            .filter(job_task::Column::UpdatedAt.eq(t.updated_at))
            .exec(&txn)
            .await?;
        let job = match res.rows_affected {
            1 => job::Entity::find_by_id(t.job_id).one(&txn).await?,
            _ => None,
        };
        let Some(j) = job else {
            txn.rollback().await?;
            continue;
        };
        outbox::insert(&txn, &next_attempt(&j, t.id.into(), t.attempt)).await?;
        txn.commit().await?;
        nudged += 1;
    }
    Ok(nudged)
}
