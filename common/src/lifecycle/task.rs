//! A task's transitions: claimed by a delivery under a lease, kept alive by heartbeats, and
//! ended with an outcome, a retry, or a hand-back; brought back by the reaper when its worker
//! is gone.
//!
//! Every write after the claim is fenced by the [`Attempt`]: when it matches nothing, a newer
//! attempt, a cancel or a timeout owns the task, and the stale worker stops quietly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveEnum, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::clean;
use crate::billing::Month;
use crate::entity::{job, job_task, service_account};
use crate::envelope::{Envelope, TaskRequested};
use crate::id::{CollectorId, DomainId, JobId, ProjectId, SecretId, ServiceAccountId, TaskId};
use crate::model::{JobKind, JobStatus, TaskStatus};
use crate::retry::RetryPolicy;
use crate::store::resource::SweepPlan;
use crate::store::{self, Error, Params, Result, outbox};

/// One run of a task: the task and the attempt number. Every write after the claim names it.
/// A `task.requested` message names the attempt it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    pub task: TaskId,
    pub number: i32,
}

/// The clauses every write of a task's row shares.
trait TaskUpdate {
    /// The attempt no longer runs: nobody holds the task's lease.
    fn without_lease(self) -> Self;
    /// Only while `attempt` owns the task: a newer attempt, or a task that ended (canceled,
    /// timed out), makes the write match nothing.
    fn fenced(self, attempt: Attempt) -> Self;
}

impl TaskUpdate for sea_orm::UpdateMany<job_task::Entity> {
    fn without_lease(self) -> Self {
        self.col_expr(
            job_task::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            job_task::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTimeWithTimeZone>::None),
        )
    }

    fn fenced(self, attempt: Attempt) -> Self {
        self.filter(job_task::Column::Id.eq(attempt.task.as_uuid()))
            .filter(job_task::Column::Attempt.eq(attempt.number))
            .filter(job_task::Column::Status.eq(JobStatus::InProgress))
    }
}

/// Everything a worker needs to run a claimed task.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub attempt: Attempt,
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
    /// The part of the account's collection the task is, when the plugin split it.
    pub sub_task: Option<SubTask>,
}

/// A part of an account's collection, as the plugin split it (a Cloudforet collector's
/// `Job.get_tasks`): each part is a task of its own, which any worker may run.
#[derive(Clone, Debug, PartialEq)]
pub struct SubTask {
    /// What the plugin is given to collect this part (its `task_options`).
    pub options: Value,
    /// From 0.
    pub part: i32,
    pub parts: i32,
}

/// Starts the attempts asked for, each under a lease for `owner`, and reads what their workers
/// need, in one transaction: the answer for each request, in order. A request starts attempt
/// `number` of its task only if the task is QUEUED after attempt `number - 1`, so a message
/// delivered twice, or one of an attempt that already started or ended, starts nothing
/// (`None`). A new attempt clears the counts of the previous one.
///
/// # Errors
/// Database errors only; then nothing was claimed, and no attempt was used.
pub async fn claim<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    requests: &[Attempt],
    owner: &str,
    lease: Duration,
) -> Result<Vec<Option<Claimed>>> {
    let txn = store::begin_write(db).await?;
    match claim_in(&txn, requests, owner, lease).await {
        Ok(claimed) => {
            txn.commit().await?;
            Ok(claimed)
        }
        Err(e) => abandon(txn, e).await,
    }
}

/// Rolls `txn` back at once (rather than when its connection goes back to the pool) and
/// returns `e`.
async fn abandon<T>(txn: impl TransactionSession, e: Error) -> Result<T> {
    if let Err(rollback) = txn.rollback().await {
        warn!(error = %rollback, "rolling back a failed transaction");
    }
    Err(e)
}

async fn claim_in(
    txn: &impl ConnectionTrait,
    requests: &[Attempt],
    owner: &str,
    lease: Duration,
) -> Result<Vec<Option<Claimed>>> {
    let now = Utc::now();
    let expires = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let rows = claim_rows(txn, requests, owner, expires, now).await?;
    if rows.is_empty() {
        return Ok(vec![None; requests.len()]);
    }
    let mut job_ids: Vec<uuid::Uuid> = rows.iter().map(|t| t.job_id).collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    // A new attempt clears the task's counts, which the job's sum shows: the job changed.
    super::job::touch_many(txn, &job_ids, now.fixed_offset()).await?;
    let jobs: HashMap<uuid::Uuid, job::Model> = job::Entity::find()
        .filter(job::Column::Id.is_in(job_ids))
        .all(txn)
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
            .all(txn)
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
                attempt: Attempt {
                    task: task.id.into(),
                    number: task.attempt,
                },
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
                sub_task: match (task.sub_task, task.part, task.parts) {
                    (Some(options), Some(part), Some(parts)) => Some(SubTask {
                        options,
                        part,
                        parts,
                    }),
                    _ => None,
                },
            },
        );
    }
    // A task asked for twice is started once, for the first request.
    Ok(requests
        .iter()
        .map(|r| match claimed.get(&r.task.as_uuid()) {
            Some(c) if c.attempt.number == r.number => claimed.remove(&r.task.as_uuid()),
            _ => None,
        })
        .collect())
}

/// The claim's update in PostgreSQL: the requests drive a join on the primary key. With the
/// ids as a filter beside the status, the planner took the status index whenever its
/// statistics lagged behind a job just planned (thousands of QUEUED tasks it did not know of
/// yet), and so read every queued task for each claim: 2–7 ms a group at 6,000 tasks.
const CLAIM_PG: &str = "UPDATE job_tasks t SET status = $1, attempt = t.attempt + 1, \
     lease_owner = $2, lease_expires_at = $3, started_at = $4, updated_at = $4, created = 0, \
     updated = 0, unchanged = 0, deleted = 0, failed = 0, error = NULL \
     FROM unnest($5::uuid[], $6::int4[]) AS u(id, attempt) \
     WHERE t.id = u.id AND t.attempt = u.attempt - 1 AND t.status = $7 \
     RETURNING t.*";

/// Moves the claimable tasks of `requests` to IN_PROGRESS under a new attempt and lease, and
/// returns them.
async fn claim_rows(
    db: &impl ConnectionTrait,
    requests: &[Attempt],
    owner: &str,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<job_task::Model>> {
    if db.get_database_backend() == DbBackend::Postgres {
        let (ids, numbers): (Vec<uuid::Uuid>, Vec<i32>) = requests
            .iter()
            .map(|r| (r.task.as_uuid(), r.number))
            .unzip();
        let claim = Statement::from_sql_and_values(
            DbBackend::Postgres,
            CLAIM_PG,
            [
                JobStatus::InProgress.to_value().into(),
                owner.into(),
                expires.fixed_offset().into(),
                now.fixed_offset().into(),
                ids.into(),
                numbers.into(),
                JobStatus::Queued.to_value().into(),
            ],
        );
        return Ok(job_task::Entity::find().from_raw_sql(claim).all(db).await?);
    }
    let mut which = Condition::any();
    for r in requests {
        which = which.add(
            Condition::all()
                .add(job_task::Column::Id.eq(r.task.as_uuid()))
                .add(job_task::Column::Attempt.eq(r.number - 1)),
        );
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
        .filter(which)
        .filter(job_task::Column::Status.eq(JobStatus::Queued))
        .exec_with_returning(db)
        .await?;
    Ok(rows)
}

/// Extends a running attempt's lease. `false` when the attempt no longer owns the task (a newer
/// attempt took it over, the task or its job was canceled or timed out): the worker must stop.
///
/// # Errors
/// Database errors only.
pub async fn heartbeat(
    db: &impl ConnectionTrait,
    attempt: Attempt,
    lease: Duration,
) -> Result<bool> {
    let expires = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let res = job_task::Entity::update_many()
        .col_expr(
            job_task::Column::LeaseExpiresAt,
            Expr::value(expires.fixed_offset()),
        )
        .fenced(attempt)
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Shows how many records a running billing load has taken so far (`counts.created`), before
/// its commit sets the final counts; moves the job's `updated_at` for the event stream. `false`
/// when the attempt no longer owns the task.
///
/// # Errors
/// Database errors only.
pub async fn loading(
    db: &impl ConnectionTrait,
    attempt: Attempt,
    job: JobId,
    records: i64,
) -> Result<bool> {
    let now = Utc::now().fixed_offset();
    let res = job_task::Entity::update_many()
        .col_expr(job_task::Column::Created, Expr::value(records))
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
        .fenced(attempt)
        .exec(db)
        .await?;
    super::job::touch(db, job, now).await?;
    Ok(res.rows_affected == 1)
}

/// Locks the task's row while `attempt` owns it, until the caller's transaction ends: `false`
/// when it does not, and then nothing may be written. The sinks' own transactions use
/// [`super::fence`] instead.
///
/// # Errors
/// Database errors only.
pub async fn hold(txn: &impl ConnectionTrait, attempt: Attempt) -> Result<bool> {
    Ok(job_task::Entity::find_by_id(attempt.task.as_uuid())
        .filter(job_task::Column::Attempt.eq(attempt.number))
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .lock_exclusive()
        .one(txn)
        .await?
        .is_some())
}

/// Adds what a write did to the attempt's progress, and moves its job's `updated_at` for the
/// event stream (call after [`hold`], in the same transaction).
///
/// # Errors
/// Database errors only.
pub async fn add_progress(
    txn: &impl ConnectionTrait,
    attempt: Attempt,
    job: JobId,
    counts: &crate::model::Counts,
) -> Result<()> {
    let now = Utc::now().fixed_offset();
    job_task::Entity::update_many()
        .col_expr(
            job_task::Column::Created,
            Expr::col(job_task::Column::Created).add(counts.created),
        )
        .col_expr(
            job_task::Column::Updated,
            Expr::col(job_task::Column::Updated).add(counts.updated),
        )
        .col_expr(
            job_task::Column::Unchanged,
            Expr::col(job_task::Column::Unchanged).add(counts.unchanged),
        )
        .col_expr(
            job_task::Column::Failed,
            Expr::col(job_task::Column::Failed).add(counts.failed),
        )
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
        .filter(job_task::Column::Id.eq(attempt.task.as_uuid()))
        .filter(job_task::Column::Attempt.eq(attempt.number))
        .exec(txn)
        .await?;
    super::job::touch(txn, job, now).await
}

/// The outcome of a run that got to its end.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: TaskStatus,
    pub error: Option<String>,
    pub stderr: Option<String>,
    /// For a successful collection: the planned sweep of what it did not see, applied in the
    /// same transaction as the end, so a run counts once however often its message comes.
    pub sweep: Option<Arc<SweepPlan>>,
}

impl Outcome {
    /// A FAILURE with `error`.
    #[must_use]
    pub fn failure(error: impl Into<String>) -> Self {
        Self {
            status: JobStatus::Failure,
            error: Some(error.into()),
            stderr: None,
            sweep: None,
        }
    }
}

/// How an attempt ended: what the worker asks [`end`] to record, and what [`end`] answers it
/// recorded.
#[derive(Clone, Debug)]
pub enum Ended {
    /// The run got to its end: SUCCESS or FAILURE.
    Done(Outcome),
    /// A failure that may pass (the plugin said so, or the database stayed unreachable): the
    /// attempt counts, and the task runs again after a backoff while attempts are left. [`end`]
    /// answers `Retry` when the task was queued again, and `Done` with a FAILURE when no
    /// attempt was left.
    Retry(String),
    /// The worker is stopping: the task goes back to the queue, and the attempt does not count.
    Released,
    /// The attempt no longer owns the task: nothing is recorded.
    Stale,
}

impl Ended {
    /// The status the task ended with, if it ended.
    #[must_use]
    pub fn status(&self) -> Option<TaskStatus> {
        match self {
            Ended::Done(o) => Some(o.status),
            _ => None,
        }
    }
}

/// Records how `attempt` ended, and what that did ([`Ended`]). `backoff` times a retry; `None`
/// runs it at once.
///
/// An outcome the database refuses to store (a value it cannot hold, say) is recorded as a
/// failed attempt naming the refusal, so the task neither runs forever nor is lost: it runs
/// again while attempts are left, then fails with the reason.
///
/// # Errors
/// Database errors that may pass (a lost connection); nothing was recorded.
pub async fn end<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    attempt: Attempt,
    ended: Ended,
    backoff: Option<&RetryPolicy>,
) -> Result<Ended> {
    match ended {
        Ended::Stale => Ok(Ended::Stale),
        Ended::Released => Ok(if release(db, attempt).await? {
            info!(task_id = %attempt.task, "task released for another worker");
            Ended::Released
        } else {
            Ended::Stale
        }),
        Ended::Retry(error) => retry(db, attempt, &error, backoff).await,
        Ended::Done(outcome) => match end_many(db, vec![(attempt, outcome.clone())]).await {
            Ok(recorded) if recorded.first() == Some(&true) => Ok(Ended::Done(outcome)),
            Ok(_) => Ok(Ended::Stale),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                warn!(task_id = %attempt.task, attempt = attempt.number, error = %e, "the database refused the task's outcome; counting the attempt as failed");
                let error = format!("the outcome could not be recorded: {e}");
                retry(db, attempt, &error, backoff).await
            }
        },
    }
}

/// Records the outcomes of several attempts in one transaction, and then ends each of their
/// jobs whose last task this was ([`super::job::conclude`]; one that fails is left to the
/// reaper): for each, `true` when recorded, `false` when the attempt no longer owned its task.
/// Error and stderr are kept with NUL characters replaced ([`super::clean`]).
///
/// # Errors
/// Database errors only; then nothing was recorded.
pub async fn end_many<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    ends: Vec<(Attempt, Outcome)>,
) -> Result<Vec<bool>> {
    let txn = store::begin_write(db).await?;
    match end_in(&txn, &ends).await {
        Ok(jobs) if jobs.iter().any(Option::is_some) => {
            txn.commit().await?;
            let mut distinct: Vec<uuid::Uuid> = jobs.iter().flatten().copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            for j in distinct {
                // The ends are committed: a job that cannot be concluded now is the reaper's
                // ([`super::job::unconcluded`]), not a reason to report them unrecorded.
                if let Err(e) = super::job::conclude(db, j.into()).await {
                    warn!(job_id = %j, error = %e, "ending the job failed; the reaper will");
                }
            }
            Ok(jobs.iter().map(Option::is_some).collect())
        }
        Ok(jobs) => {
            txn.rollback().await?;
            Ok(vec![false; jobs.len()])
        }
        Err(e) => abandon(txn, e).await,
    }
}

/// A part of an account's collection succeeded: keeps the key hashes it saw on its task, in
/// the end's transaction, for [`end_of_part`].
async fn keep_seen(
    txn: &impl ConnectionTrait,
    task: TaskId,
    plan: &store::resource::SweepPlan,
) -> Result<()> {
    let backend = txn.get_database_backend();
    let mut seen = Vec::with_capacity(plan.sweep.seen.len() * 8);
    for key in plan.sweep.seen.iter() {
        seen.extend_from_slice(&key.to_be_bytes());
    }
    let mut p = Params::new(backend);
    let sql = format!(
        "UPDATE job_tasks SET seen_keys = {} WHERE id = {}",
        p.push(seen),
        p.push(task.as_uuid())
    );
    txn.execute_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?;
    Ok(())
}

/// The parts of one job's collection of an account.
struct Parts {
    /// How many there are, as the plan made them.
    planned: usize,
    statuses: Vec<String>,
    /// What each kept of what it saw; `None` before its success or after the sweep.
    seen: Vec<Option<Vec<u8>>>,
}

/// Binds a job and an account: the parameters and the condition on `job_tasks` (aliased
/// `alias`) that picks the parts of the job's collection of the account.
fn parts_of(
    backend: DbBackend,
    job: JobId,
    account: Option<ServiceAccountId>,
    alias: &str,
) -> (Params, String) {
    let mut p = Params::new(backend);
    let condition = format!(
        "{alias}job_id = {} AND {alias}service_account_id = {} AND {alias}parts IS NOT NULL",
        p.push(job.as_uuid()),
        p.push(account.map(|a| a.as_uuid()))
    );
    (p, condition)
}

async fn parts(
    db: &impl ConnectionTrait,
    job: JobId,
    account: Option<ServiceAccountId>,
) -> Result<Parts> {
    let backend = db.get_database_backend();
    let (p, parts) = parts_of(backend, job, account, "");
    let sql = format!("SELECT status, parts, seen_keys FROM job_tasks WHERE {parts}");
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?;
    let mut out = Parts {
        planned: 0,
        statuses: Vec::with_capacity(rows.len()),
        seen: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        let planned: i32 = r.try_get("", "parts")?;
        out.planned = usize::try_from(planned).unwrap_or(0);
        out.statuses.push(r.try_get("", "status")?);
        out.seen.push(r.try_get("", "seen_keys")?);
    }
    Ok(out)
}

impl Parts {
    /// Every part planned succeeded and kept what it saw (none swept yet).
    fn all_succeeded(&self) -> bool {
        let success = JobStatus::Success.to_value();
        self.planned > 0
            && self.statuses.len() == self.planned
            && self.statuses.iter().all(|s| *s == success)
            && self.seen.iter().all(Option::is_some)
    }

    /// A part ended for good without success: the account is not swept for this job.
    fn any_gave_up(&self) -> bool {
        let gave_up = [
            JobStatus::Failure.to_value(),
            JobStatus::Canceled.to_value(),
        ];
        self.statuses.iter().any(|s| gave_up.contains(s))
    }
}

async fn forget(
    db: &impl ConnectionTrait,
    job: JobId,
    account: Option<ServiceAccountId>,
) -> Result<()> {
    let backend = db.get_database_backend();
    let (p, parts) = parts_of(backend, job, account, "");
    let sql = format!("UPDATE job_tasks SET seen_keys = NULL WHERE {parts}");
    db.execute_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?;
    Ok(())
}

/// Whether another job's task of the same collector and account ran since the job's parts
/// began (or runs now, or waits for the account's lock): then the parts do not sweep.
///
/// # Errors
/// Database errors only.
pub async fn collected_meanwhile(
    db: &impl ConnectionTrait,
    job: JobId,
    account: Option<ServiceAccountId>,
) -> Result<bool> {
    let backend = db.get_database_backend();
    let (mut p, parts) = parts_of(backend, job, account, "s.");
    let (job, account) = (p.push(job.as_uuid()), p.push(account.map(|a| a.as_uuid())));
    let sql = format!(
        "SELECT count(*) AS n FROM job_tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.service_account_id = {account} AND t.job_id <> {job} \
           AND j.collector_id = (SELECT collector_id FROM jobs WHERE id = {job}) \
           AND (t.status = 'IN_PROGRESS' \
                OR t.finished_at >= (SELECT min(s.started_at) FROM job_tasks s WHERE {parts}))"
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?;
    let n: i64 = match row {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    };
    Ok(n > 0)
}

/// Drops what parts kept of what they saw in jobs that finished before `before`: their sweep
/// was done or will not come (a part ended by the reaper or a cancel, or a worker that died
/// between its part's end and [`end_of_part`]). Returns the tasks cleared.
///
/// # Errors
/// Database errors only.
pub async fn forget_finished_parts(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<u64> {
    let backend = db.get_database_backend();
    let mut p = Params::new(backend);
    let sql = format!(
        "UPDATE job_tasks SET seen_keys = NULL WHERE seen_keys IS NOT NULL \
         AND job_id IN (SELECT id FROM jobs WHERE finished_at < {})",
        p.push(before.fixed_offset())
    );
    let done = db
        .execute_raw(Statement::from_sql_and_values(backend, sql, p.values))
        .await?;
    Ok(done.rows_affected())
}

/// After a part of a job's collection of an account ended for good ([`SubTask`]): once every
/// part has succeeded, sweeps what none of them saw, with what they kept ([`keep_seen`]), and
/// counts the deletions on `task`; once one has failed or was canceled, drops what the others
/// kept, since that account is not swept for this job (what was not seen may simply not have
/// been collected). `sweep` is the ending part's own, `None` when it did not succeed. Each part
/// calls this after its end committed and before it lets the account's lock go (the parts of
/// a job share it): concurrent calls take the job's row in turn, and one sweeps, once. Returns
/// the resources deleted.
///
/// # Errors
/// Database errors only; then nothing was swept, and the next collection sweeps.
pub async fn end_of_part(
    db: &sea_orm::DatabaseConnection,
    task: TaskId,
    job: JobId,
    account: Option<ServiceAccountId>,
    sweep: Option<&store::resource::Sweep>,
) -> Result<i64> {
    let found = parts(db, job, account).await?;
    if found.any_gave_up() {
        forget(db, job, account).await?;
        return Ok(0);
    }
    let Some(sweep) = sweep.filter(|_| found.all_succeeded()) else {
        return Ok(0);
    };
    let mut union = std::collections::HashSet::new();
    for keys in found.seen.iter().flatten() {
        union.extend(
            keys.chunks_exact(8)
                .map(|k| u64::from_be_bytes(k.try_into().unwrap_or_default())),
        );
    }
    // Planned from reads before the write transaction, as a whole collection's sweep is: the
    // account's lock keeps other collections out meanwhile, and applying re-checks each row.
    let planned = store::resource::plan_sweep(
        db,
        store::resource::Sweep {
            seen: std::sync::Arc::new(union),
            ..sweep.clone()
        },
    )
    .await?;
    let backend = db.get_database_backend();
    let txn = store::begin_write(db).await?;
    if backend == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "SELECT id FROM jobs WHERE id = $1 FOR UPDATE",
            [job.as_uuid().into()],
        ))
        .await?;
    }
    // A sibling's call may have swept since the read.
    if !parts(&txn, job, account).await?.all_succeeded() {
        txn.rollback().await?;
        return Ok(0);
    }
    // The parts need not run at once: another collection of the account may have run between
    // two of them (it takes the account's lock while none holds it) and stored what the
    // earlier parts could not see. Then what the parts saw is no longer the account's whole:
    // no sweep (that collection sweeps by itself).
    if collected_meanwhile(&txn, job, account).await? {
        forget(&txn, job, account).await?;
        txn.commit().await?;
        return Ok(0);
    }
    let deleted = store::resource::apply_sweep(&txn, &planned).await?;
    forget(&txn, job, account).await?;
    if deleted > 0 {
        job_task::Entity::update_many()
            .col_expr(
                job_task::Column::Deleted,
                Expr::col(job_task::Column::Deleted).add(deleted),
            )
            .filter(job_task::Column::Id.eq(task.as_uuid()))
            .exec(&txn)
            .await?;
        super::job::touch_many(&txn, &[job.as_uuid()], Utc::now().fixed_offset()).await?;
    }
    txn.commit().await?;
    Ok(deleted)
}

/// [`end_many`]'s writes: the job of each attempt recorded, `None` for a stale one.
async fn end_in(
    txn: &impl ConnectionTrait,
    ends: &[(Attempt, Outcome)],
) -> Result<Vec<Option<uuid::Uuid>>> {
    let now = Utc::now().fixed_offset();
    let mut jobs: Vec<Option<uuid::Uuid>> = vec![None; ends.len()];
    // One update per distinct attempt number and outcome: for a group of small tasks, mostly
    // first attempts that succeeded, that is one update for all.
    let mut classes: Vec<(i32, &Outcome, Vec<usize>)> = Vec::new();
    for (n, (attempt, outcome)) in ends.iter().enumerate() {
        let same = |(a, o, _): &&mut (i32, &Outcome, Vec<usize>)| {
            *a == attempt.number
                && o.status == outcome.status
                && o.error == outcome.error
                && o.stderr == outcome.stderr
        };
        match classes.iter_mut().find(same) {
            Some(class) => class.2.push(n),
            None => classes.push((attempt.number, outcome, vec![n])),
        }
    }
    for (number, outcome, members) in &classes {
        let ids: Vec<uuid::Uuid> = members.iter().map(|&n| ends[n].0.task.as_uuid()).collect();
        let rows = end_rows(txn, &ids, *number, outcome, now).await?;
        let recorded: HashMap<uuid::Uuid, uuid::Uuid> =
            rows.into_iter().map(|t| (t.id, t.job_id)).collect();
        for &n in members {
            jobs[n] = recorded.get(&ends[n].0.task.as_uuid()).copied();
        }
    }
    for ((attempt, outcome), job) in ends.iter().zip(&jobs) {
        if job.is_none() || outcome.status != JobStatus::Success {
            continue;
        }
        if let Some(sweep) = &outcome.sweep {
            let deleted = if sweep.is_part() {
                keep_seen(txn, attempt.task, sweep).await?;
                0
            } else {
                store::resource::apply_sweep(txn, sweep).await?
            };
            if deleted > 0 {
                job_task::Entity::update_many()
                    .col_expr(
                        job_task::Column::Deleted,
                        Expr::col(job_task::Column::Deleted).add(deleted),
                    )
                    .filter(job_task::Column::Id.eq(attempt.task.as_uuid()))
                    .exec(txn)
                    .await?;
            }
        }
    }
    let mut distinct: Vec<uuid::Uuid> = jobs.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    // Read again rather than `now`: the sweep may have taken a while, and the job's
    // `updated_at` should be close to the commit that makes it visible (the job event stream
    // allows for a bounded lag only).
    super::job::touch_many(txn, &distinct, Utc::now().fixed_offset()).await?;
    Ok(jobs)
}

/// [`CLAIM_PG`]'s join, for the ends of a group's attempts that share an outcome.
const END_PG: &str = "UPDATE job_tasks t SET status = $1, error = $2, stderr = $3, \
     finished_at = $4, updated_at = $4, lease_owner = NULL, lease_expires_at = NULL \
     FROM unnest($5::uuid[]) AS u(id) \
     WHERE t.id = u.id AND t.attempt = $6 AND t.status = $7 RETURNING t.*";

/// Records `outcome` on the tasks of `ids` whose attempt `number` still runs, and returns them.
async fn end_rows(
    db: &impl ConnectionTrait,
    ids: &[uuid::Uuid],
    number: i32,
    outcome: &Outcome,
    now: DateTimeWithTimeZone,
) -> Result<Vec<job_task::Model>> {
    let error = outcome.error.as_deref().map(|e| clean(e).into_owned());
    let stderr = outcome.stderr.as_deref().map(|e| clean(e).into_owned());
    if db.get_database_backend() == DbBackend::Postgres {
        let end = Statement::from_sql_and_values(
            DbBackend::Postgres,
            END_PG,
            [
                outcome.status.to_value().into(),
                error.into(),
                stderr.into(),
                now.into(),
                ids.to_vec().into(),
                number.into(),
                JobStatus::InProgress.to_value().into(),
            ],
        );
        return Ok(job_task::Entity::find().from_raw_sql(end).all(db).await?);
    }
    let rows = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(outcome.status))
        .col_expr(job_task::Column::Error, Expr::value(error))
        .col_expr(job_task::Column::Stderr, Expr::value(stderr))
        .col_expr(job_task::Column::FinishedAt, Expr::value(now))
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now))
        .without_lease()
        .filter(job_task::Column::Id.is_in(ids.iter().copied()))
        .filter(job_task::Column::Attempt.eq(number))
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .exec_with_returning(db)
        .await?;
    Ok(rows)
}

/// Ends a failed attempt that may pass. While attempts are left, the task goes back to the
/// queue with the attempt's error kept in `previous_attempts`, and the `task.requested` message
/// of the next attempt is queued to be delivered after the backoff (`None`: at once), in one
/// transaction: answers [`Ended::Retry`]. Whatever the attempt committed stays; the next
/// attempt collects again over it. Once this was the last attempt, the task ends FAILURE with
/// the error: answers [`Ended::Done`]. [`Ended::Stale`] when the attempt no longer owned the
/// task.
///
/// # Errors
/// Database errors only.
pub async fn retry<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    attempt: Attempt,
    error: &str,
    backoff: Option<&RetryPolicy>,
) -> Result<Ended> {
    let error = clean(error);
    let txn = store::begin_write(db).await?;
    let Some(current) = job_task::Entity::find_by_id(attempt.task.as_uuid())
        .filter(job_task::Column::Attempt.eq(attempt.number))
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .one(&txn)
        .await?
    else {
        txn.rollback().await?;
        return Ok(Ended::Stale);
    };
    let failures = failures_of(&current);
    if failures + 1 >= current.max_attempts {
        txn.rollback().await?;
        let outcome = Outcome::failure(format!(
            "{error} ({} of {} attempts failed: no attempts left)",
            failures + 1,
            current.max_attempts
        ));
        let recorded = end_many(db, vec![(attempt, outcome.clone())]).await?;
        return Ok(if recorded.first() == Some(&true) {
            warn!(task_id = %attempt.task, attempt = attempt.number, error = %error, "the task's last attempt failed");
            Ended::Done(outcome)
        } else {
            Ended::Stale
        });
    }
    let now = Utc::now();
    let mut history: Vec<PreviousAttempt> = match &current.previous_attempts {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            Error::Corrupt(format!("previous attempts of task {}: {e}", attempt.task))
        })?,
        None => Vec::new(),
    };
    history.push(PreviousAttempt {
        attempt: attempt.number,
        worker: current.lease_owner.clone(),
        error: error.clone().into_owned(),
        started_at: current.started_at.map(|t| t.to_utc()),
        ended_at: now,
    });
    let history = serde_json::to_value(&history).map_err(|e| Error::Corrupt(e.to_string()))?;
    let res = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(JobStatus::Queued))
        .col_expr(job_task::Column::Error, Expr::value(error.as_ref()))
        .col_expr(job_task::Column::PreviousAttempts, Expr::value(history))
        .without_lease()
        .col_expr(job_task::Column::UpdatedAt, Expr::value(now.fixed_offset()))
        .fenced(attempt)
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        txn.rollback().await?;
        return Ok(Ended::Stale);
    }
    let j = job::Entity::find_by_id(current.job_id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("job", current.job_id))?;
    super::job::touch(&txn, j.id.into(), now.fixed_offset()).await?;
    let envelope = next_attempt(&j, attempt);
    let delay = backoff.map_or(Duration::ZERO, |p| {
        p.jittered_delay_for(u32::try_from(failures + 2).unwrap_or(u32::MAX))
    });
    if delay.is_zero() {
        outbox::insert(&txn, &envelope).await?;
    } else {
        let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        outbox::insert_delayed(&txn, &envelope, at).await?;
    }
    txn.commit().await?;
    warn!(task_id = %attempt.task, attempt = attempt.number, error = %error, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        attempts = current.max_attempts, "attempt failed; the task will run again");
    Ok(Ended::Retry(error.into_owned()))
}

/// Hands a running task back to the queue without counting the attempt (its worker is
/// stopping), with the next attempt's `task.requested` message in the same transaction.
/// `false` when the attempt no longer owned the task.
///
/// # Errors
/// Database errors only.
pub async fn release<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    attempt: Attempt,
) -> Result<bool> {
    let txn = store::begin_write(db).await?;
    let mut rows = job_task::Entity::update_many()
        .col_expr(job_task::Column::Status, Expr::value(JobStatus::Queued))
        .without_lease()
        .col_expr(
            job_task::Column::UpdatedAt,
            Expr::value(Utc::now().fixed_offset()),
        )
        .fenced(attempt)
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
    outbox::insert(&txn, &next_attempt(&j, attempt)).await?;
    txn.commit().await?;
    Ok(true)
}

/// The message that starts the attempt after `attempt`.
fn next_attempt(j: &job::Model, attempt: Attempt) -> Envelope<TaskRequested> {
    Envelope::new(
        j.domain_id.into(),
        j.kind,
        j.id.into(),
        Some(attempt.task),
        u32::try_from(attempt.number + 1).unwrap_or(u32::MAX),
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

/// What bringing back abandoned attempts did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Tasks queued again for a new attempt.
    pub requeued: usize,
    /// Tasks failed, their last attempt abandoned.
    pub failed: usize,
}

/// Brings back up to `limit` tasks whose lease expired before `now` (their worker died, or lost
/// the database for longer than the lease), or that run with no lease at all: each abandoned
/// attempt counts as failed ([`retry`], at once).
///
/// # Errors
/// Database errors of the read; one task's failed write is logged and left for the next pass.
pub async fn reap<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Reaped> {
    let rows = job_task::Entity::find()
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .filter(
            Condition::any()
                .add(job_task::Column::LeaseExpiresAt.lt(now.fixed_offset()))
                .add(job_task::Column::LeaseExpiresAt.is_null()),
        )
        .order_by_asc(job_task::Column::LeaseExpiresAt)
        .limit(limit)
        .all(db)
        .await?;
    let mut reaped = Reaped::default();
    for t in rows {
        let owner = t.lease_owner.as_deref().unwrap_or("unknown");
        let why = format!(
            "the lease of attempt {} expired: worker {owner} stopped renewing it (killed, crashed, or cut off from the database)",
            t.attempt
        );
        abandoned(db, &t, &why, &mut reaped).await;
    }
    Ok(reaped)
}

/// Brings back every task left running when the process stopped: for a store that one process
/// owns (the standalone mode), at its start, when none of them can be running. Each counts as
/// a failed attempt, so a task that kills the process every time ends FAILURE.
///
/// # Errors
/// Database errors of the read; one task's failed write is logged and left for the reaper.
pub async fn recover<C: ConnectionTrait + TransactionTrait>(db: &C) -> Result<Reaped> {
    let rows = job_task::Entity::find()
        .filter(job_task::Column::Status.eq(JobStatus::InProgress))
        .all(db)
        .await?;
    let mut reaped = Reaped::default();
    for t in rows {
        let why = format!(
            "attempt {} was running when the process stopped (killed or crashed)",
            t.attempt
        );
        abandoned(db, &t, &why, &mut reaped).await;
    }
    Ok(reaped)
}

/// Records an abandoned attempt as failed, counting what happened in `reaped`. When that
/// cannot be done for a reason that will not pass (a corrupt attempt history, say), the task
/// fails with the reason instead: left running, it would come first in every later pass.
async fn abandoned<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    t: &job_task::Model,
    why: &str,
    reaped: &mut Reaped,
) {
    let attempt = Attempt {
        task: t.id.into(),
        number: t.attempt,
    };
    let ended = match retry(db, attempt, why, None).await {
        Err(e) if !e.is_transient() => {
            let outcome = Outcome::failure(format!("{why}; it could not run again: {e}"));
            end_many(db, vec![(attempt, outcome.clone())])
                .await
                .map(|recorded| {
                    if recorded.first() == Some(&true) {
                        Ended::Done(outcome)
                    } else {
                        Ended::Stale
                    }
                })
        }
        other => other,
    };
    match ended {
        Ok(Ended::Retry(_)) => reaped.requeued += 1,
        Ok(Ended::Done(_)) => reaped.failed += 1,
        Ok(_) => {}
        // Transient: the next pass tries again.
        Err(e) => {
            warn!(task_id = %attempt.task, error = %e, "bringing back an abandoned task failed")
        }
    }
}

/// Ends every unfinished task of a job with `status` and `reason`, clearing their leases: the
/// workers running them find their attempt fenced at the next heartbeat and stop. Returns how
/// many tasks were ended.
pub(crate) async fn end_unfinished(
    db: &impl ConnectionTrait,
    job: uuid::Uuid,
    status: TaskStatus,
    reason: &str,
    now: DateTimeWithTimeZone,
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
/// A task whose message was only late runs once anyway: the first of the two messages starts
/// the attempt, and the second finds it started. Returns how many tasks were nudged.
///
/// # Errors
/// Database errors only.
pub async fn nudge<C: ConnectionTrait + TransactionTrait>(
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
        let txn = store::begin_write(db).await?;
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
        let last = Attempt {
            task: t.id.into(),
            number: t.attempt,
        };
        outbox::insert(&txn, &next_attempt(&j, last)).await?;
        txn.commit().await?;
        nudged += 1;
    }
    Ok(nudged)
}
