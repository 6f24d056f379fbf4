//! A job's transitions: accepted (by the API or a schedule), planned into tasks, concluded when
//! its last task ends, canceled, or failed by its deadline.

use chrono::{DateTime, Utc};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use serde_json::Value;

use crate::billing::{Month, Window};
use crate::entity::{collector, job, job_task};
use crate::envelope::{Envelope, JobRequested, TaskRequested};
use crate::events::JobEvent;
use crate::id::{CollectorId, DomainId, JobId, ScheduleId, ServiceAccountId, TaskId};
use crate::model::{CollectorState, IdempotencyKey, JobKind, JobStatus, Trigger};
use crate::plugin::{Catalog, PluginInfo};
use crate::store::{self, Error, Result, collector as collector_store, outbox};

/// A QUEUED job and its `job.requested` message, to write together ([`insert_queued`]).
pub struct Queued {
    pub row: job::ActiveModel,
    pub message: Envelope<JobRequested>,
}

/// A QUEUED job of collector `c`, to be written with [`insert_queued`]: its plugin version is
/// the collector's (or the latest, when the collector follows it), its deadline the collector's
/// `job_timeout_seconds` from now.
#[must_use]
pub fn queued(
    domain: DomainId,
    id: JobId,
    c: &collector::Model,
    plugin: &PluginInfo,
    trigger: Trigger,
    fire: Option<(ScheduleId, DateTime<Utc>)>,
) -> Queued {
    let version = plugin.version_for(c.upgrade_mode, &c.version).to_owned();
    let kind = plugin.kind.job_kind();
    let now = Utc::now().fixed_offset();
    let row = job::ActiveModel {
        id: Set(id.into()),
        domain_id: Set(domain.into()),
        kind: Set(kind),
        collector_id: Set(Some(c.id)),
        plugin_id: Set(c.plugin_id.clone()),
        plugin_version: Set(version),
        options: Set(c.options.clone()),
        trigger: Set(trigger),
        schedule_id: Set(fire.map(|(s, _)| s.as_uuid())),
        fire_time: Set(fire.map(|(_, t)| t.fixed_offset())),
        status: Set(JobStatus::Queued),
        tasks_total: Set(0),
        tasks_done: Set(0),
        tasks_failed: Set(0),
        error: Set(None),
        started_at: Set(None),
        finished_at: Set(None),
        deadline_at: Set(Some(
            now + chrono::Duration::seconds(i64::from(c.job_timeout_seconds)),
        )),
        window_start: Set(None),
        window_end: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Queued {
        row,
        message: Envelope::new(domain, kind, id, None, 1, JobRequested {}),
    }
}

/// Rows per statement when jobs are written in bulk (a schedule pass): well within the bind
/// parameters of a statement in both backends.
const QUEUED_CHUNK: usize = 500;

/// Writes QUEUED jobs with their `job.requested` messages and `job.queued` events, in the
/// caller's transaction: a job is never stored without being sent, nor sent without being
/// stored.
///
/// # Errors
/// Database errors only.
pub async fn insert_queued(db: &impl ConnectionTrait, jobs: Vec<Queued>) -> Result<()> {
    let mut jobs = jobs;
    while !jobs.is_empty() {
        let rest = jobs.split_off(jobs.len().min(QUEUED_CHUNK));
        let (rows, messages): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|q| (q.row, q.message)).unzip();
        job::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await?;
        outbox::insert_many(db, &messages).await?;
        let ids: Vec<uuid::Uuid> = messages.iter().map(|m| m.job_id.as_uuid()).collect();
        announce(db, &ids).await?;
        jobs = rest;
    }
    Ok(())
}

/// Accepts a collection of a collector: the job, its `job.requested` message and its
/// `job.queued` event in one transaction. Returns the QUEUED job's id.
///
/// # Errors
/// [`Error::NotFound`] for an unknown collector; [`Error::State`] for a disabled one or one whose
/// plugin left the catalog; [`Error::Invalid`] for a month window given to a plugin that is not
/// a cost data source, or options reaching past `access`.
pub async fn enqueue<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    catalog: &Catalog,
    access: &crate::access::Access,
    domain: DomainId,
    collector_id: CollectorId,
    trigger: Trigger,
    window: Option<Window>,
) -> Result<JobId> {
    let txn = store::begin_write(db).await?;
    let id = enqueue_in(&txn, catalog, access, domain, collector_id, trigger, window).await?;
    txn.commit().await?;
    Ok(id)
}

/// [`enqueue`]'s writes, in the caller's transaction.
async fn enqueue_in(
    txn: &impl ConnectionTrait,
    catalog: &Catalog,
    access: &crate::access::Access,
    domain: DomainId,
    collector_id: CollectorId,
    trigger: Trigger,
    window: Option<Window>,
) -> Result<JobId> {
    let c = collector_store::find(txn, domain, collector_id).await?;
    if c.state == CollectorState::Disabled {
        return Err(Error::State(format!(
            "collector '{}' is disabled: enable it before collecting",
            c.name
        )));
    }
    let plugin = store::plugin::find(txn, catalog, domain, &c.plugin_id)
        .await?
        .ok_or_else(|| {
            Error::State(format!(
                "plugin `{}` of collector '{}' is no longer in the catalog",
                c.plugin_id, c.name
            ))
        })?;
    if window.is_some() && plugin.kind.job_kind() != JobKind::Billing {
        return Err(Error::Invalid(vec![crate::model::Invalid::new(
            "start_month",
            format!(
                "a month window is for billing collectors; plugin `{}` is a {}",
                plugin.id,
                plugin.kind.as_str()
            ),
        )]));
    }
    // The operator may have narrowed the allowlists since the options were set.
    access
        .check(&plugin.options_schema, &c.options)
        .map_err(Error::Invalid)?;
    let id = JobId::new();
    let mut job = queued(domain, id, &c, &plugin, trigger, None);
    if let Some(w) = window {
        job.row.window_start = Set(Some(w.start.first_day()));
        job.row.window_end = Set(Some(w.end.first_day()));
    }
    insert_queued(txn, vec![job]).await?;
    collector::Entity::update_many()
        .col_expr(collector::Column::LastJobId, Expr::value(id.as_uuid()))
        .filter(collector::Column::Id.eq(c.id))
        .exec(txn)
        .await?;
    Ok(id)
}

/// A collection asked for under an idempotency key ([`enqueue_once`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub job_id: JobId,
    /// The key was given before: `job_id` is that request's job, and its status now.
    pub replayed: Option<JobStatus>,
}

/// [`enqueue`] under an idempotency key: the first request with `key` in `domain` queues a
/// job; the same request with the same key within `retention` gets that job again, however
/// often and however concurrently it is sent. The key on another collector or window is
/// refused ([`Error::KeyReused`]). A request refused (a disabled collector, say) leaves no
/// key behind, so it may be sent again once the cause is fixed.
///
/// # Errors
/// Those of [`enqueue`], and [`Error::KeyReused`].
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_once<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    catalog: &Catalog,
    access: &crate::access::Access,
    domain: DomainId,
    collector_id: CollectorId,
    window: Option<Window>,
    key: &IdempotencyKey,
    retention: chrono::Duration,
) -> Result<Enqueued> {
    let cutoff = (Utc::now() - retention).fixed_offset();
    // Twice at most: the key may expire and be given again between the attempt that found it
    // taken and the read of it.
    for _ in 0..2 {
        // A replay, the common case of a retried request, needs no write.
        if let Some(seen) = store::idempotency::find(db, domain, key, cutoff).await? {
            return replay(db, &seen, collector_id, window).await;
        }
        let txn = store::begin_write(db).await?;
        store::idempotency::forget_expired(&txn, domain, key, cutoff).await?;
        let job_id = enqueue_in(
            &txn,
            catalog,
            access,
            domain,
            collector_id,
            Trigger::Manual,
            window,
        )
        .await?;
        // Racing the same key, the second insert waits for the first transaction and then
        // finds the key taken (PostgreSQL); SQLite's write lock orders them before either reads.
        if store::idempotency::remember(&txn, domain, key, collector_id, window, job_id).await? {
            txn.commit().await?;
            return Ok(Enqueued {
                job_id,
                replayed: None,
            });
        }
        txn.rollback().await?;
    }
    Err(Error::Contended(format!(
        "idempotency key `{key}` is being given by other requests at this moment; retry"
    )))
}

/// The job an earlier request with the same key queued, when it was the same request.
async fn replay(
    db: &impl ConnectionTrait,
    seen: &store::idempotency::Seen,
    collector_id: CollectorId,
    window: Option<Window>,
) -> Result<Enqueued> {
    if !seen.is_for(collector_id, window) {
        return Err(Error::KeyReused(format!(
            "idempotency key `{}` was given with another request (collector {}{}) within its \
             retention; use a new key for a new request",
            seen.key,
            seen.collector_id,
            seen.window
                .map(|w| format!(", months {}..{}", w.start, w.end))
                .unwrap_or_default(),
        )));
    }
    let status = job::Entity::find_by_id(seen.job_id.as_uuid())
        .one(db)
        .await?
        .map_or(JobStatus::Queued, |j| j.status);
    Ok(Enqueued {
        job_id: seen.job_id,
        replayed: Some(status),
    })
}

/// What the worker needs to plan a job.
#[derive(Clone, Debug)]
pub struct PlanInput {
    pub id: JobId,
    pub domain: DomainId,
    pub kind: JobKind,
    pub status: JobStatus,
    pub plugin_id: String,
    pub plugin_version: String,
    pub options: Value,
    /// The months asked for (billing), if any.
    pub window: Option<Window>,
}

/// One task to plan: a service account, for billing the month it replaces, and the part of
/// the account's collection when the plugin splits it.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    pub account: ServiceAccountId,
    pub month: Option<Month>,
    pub sub_task: Option<super::task::SubTask>,
}

/// Loads a job for planning; `None` when it is gone (its collector's domain was deleted).
///
/// # Errors
/// Database errors only.
pub async fn plan_input(db: &impl ConnectionTrait, id: JobId) -> Result<Option<PlanInput>> {
    let Some(m) = job::Entity::find_by_id(id.as_uuid()).one(db).await? else {
        return Ok(None);
    };
    Ok(Some(PlanInput {
        id,
        domain: m.domain_id.into(),
        kind: m.kind,
        status: m.status,
        plugin_id: m.plugin_id,
        plugin_version: m.plugin_version,
        options: m.options,
        window: store::job::window_of(m.window_start, m.window_end),
    }))
}

/// Tasks (and their messages) per insert when SQLite plans a job: well under the bind
/// parameters a SQLite statement may have (32,766).
const PLAN_CHUNK: usize = 500;

/// Tasks (and their messages) per insert when PostgreSQL plans a job: their columns go as
/// arrays, one parameter each (as the outbox's do), so a chunk is bounded by the statement's
/// size only.
const PLAN_CHUNK_PG: usize = 5_000;

/// Splits a QUEUED job into one task per unit (service account, and month for billing, whose
/// `window` is recorded on the job), writing the tasks, their `task.requested` messages and
/// the job's new state in one transaction. With no units the job fails at once with
/// `no_units_reason`, instead of succeeding having collected nothing. Returns the tasks, or
/// `None` when the job had already been planned (a redelivered message): nothing was done.
///
/// # Errors
/// Database errors only.
pub async fn plan<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    input: &PlanInput,
    units: &[Unit],
    window: Option<Window>,
    max_attempts: i32,
    no_units_reason: &str,
) -> Result<Option<Vec<TaskId>>> {
    let txn = store::begin_write(db).await?;
    let now = Utc::now().fixed_offset();
    let mut update = job::Entity::update_many()
        .col_expr(
            job::Column::TasksTotal,
            Expr::value(i32::try_from(units.len()).unwrap_or(i32::MAX)),
        )
        .col_expr(job::Column::StartedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now));
    if let Some(w) = window {
        update = update
            .col_expr(job::Column::WindowStart, Expr::value(w.start.first_day()))
            .col_expr(job::Column::WindowEnd, Expr::value(w.end.first_day()));
    }
    update = if units.is_empty() {
        update
            .col_expr(job::Column::Status, Expr::value(JobStatus::Failure))
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .col_expr(job::Column::Error, Expr::value(no_units_reason))
    } else {
        update.col_expr(job::Column::Status, Expr::value(JobStatus::InProgress))
    };
    // The status condition makes planning idempotent: a redelivered `job.requested` finds
    // the job no longer QUEUED and changes nothing.
    let res = update
        .filter(job::Column::Id.eq(input.id.as_uuid()))
        .filter(job::Column::Status.eq(JobStatus::Queued))
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        txn.rollback().await?;
        return Ok(None);
    }
    let ids: Vec<TaskId> = units.iter().map(|_| TaskId::new()).collect();
    // In chunks: a job of thousands of tasks is planned in a few statements, not two per task.
    let chunk = if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        PLAN_CHUNK_PG
    } else {
        PLAN_CHUNK
    };
    for (ids, units) in ids.chunks(chunk).zip(units.chunks(chunk)) {
        insert_tasks(&txn, input, ids, units, max_attempts, now).await?;
        let messages: Vec<Envelope<TaskRequested>> =
            ids.iter().map(|id| task_message(input, *id)).collect();
        outbox::insert_many(&txn, &messages).await?;
    }
    if units.is_empty() {
        touch_collector_finished(&txn, input.id).await?;
    }
    announce(&txn, &[input.id.as_uuid()]).await?;
    txn.commit().await?;
    Ok(Some(ids))
}

/// A job's tasks, in PostgreSQL: unnested from arrays, so a statement is parsed and planned
/// once per chunk of 5,000 tasks (multi-row `VALUES` of 500 tasks, 11,000 parameters, took 7 ms
/// a statement).
const PLAN_TASKS_PG: &str = "INSERT INTO job_tasks (id, domain_id, job_id, service_account_id, \
     month, status, attempt, max_attempts, created, updated, unchanged, deleted, failed, \
     created_at, updated_at, sub_task, part, parts) \
     SELECT u.id, $1, $2, u.account, CAST(NULLIF(u.month, '') AS date), $3, 0, $4, 0, 0, 0, 0, 0, \
     $5, $5, CAST(NULLIF(u.sub_task, '') AS jsonb), CASE WHEN u.parts > 0 THEN u.part END, \
     NULLIF(u.parts, 0) \
     FROM unnest($6::uuid[], $7::uuid[], $8::text[], $9::text[], $10::int4[], $11::int4[]) \
     AS u(id, account, month, sub_task, part, parts)";

/// The first `task.requested` message of a task of the job: it starts attempt 1.
fn task_message(input: &PlanInput, task: TaskId) -> Envelope<TaskRequested> {
    Envelope::new(
        input.domain,
        input.kind,
        input.id,
        Some(task),
        1,
        TaskRequested {},
    )
}

/// Inserts a chunk of a job's QUEUED tasks, one per unit.
async fn insert_tasks(
    txn: &impl ConnectionTrait,
    input: &PlanInput,
    ids: &[TaskId],
    units: &[Unit],
    max_attempts: i32,
    now: DateTimeWithTimeZone,
) -> Result<()> {
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        // sea-orm binds no arrays of nullable values: a month and a sub-task go as text, `''`
        // for none, and a task that is no part has 0 parts.
        let months: Vec<String> = units
            .iter()
            .map(|u| {
                u.month
                    .map(|m| m.first_day().to_string())
                    .unwrap_or_default()
            })
            .collect();
        let sub_tasks: Vec<String> = units
            .iter()
            .map(|u| {
                u.sub_task
                    .as_ref()
                    .map(|s| s.options.to_string())
                    .unwrap_or_default()
            })
            .collect();
        let parts: Vec<(i32, i32)> = units
            .iter()
            .map(|u| u.sub_task.as_ref().map_or((0, 0), |s| (s.part, s.parts)))
            .collect();
        let tasks = sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            PLAN_TASKS_PG,
            [
                input.domain.as_uuid().into(),
                input.id.as_uuid().into(),
                sea_orm::ActiveEnum::to_value(&JobStatus::Queued).into(),
                max_attempts.into(),
                now.into(),
                ids.iter().map(|id| id.as_uuid()).collect::<Vec<_>>().into(),
                units
                    .iter()
                    .map(|u| u.account.as_uuid())
                    .collect::<Vec<_>>()
                    .into(),
                months.into(),
                sub_tasks.into(),
                parts.iter().map(|p| p.0).collect::<Vec<_>>().into(),
                parts.iter().map(|p| p.1).collect::<Vec<_>>().into(),
            ],
        );
        txn.execute_raw(tasks).await?;
        return Ok(());
    }
    let tasks = ids
        .iter()
        .zip(units)
        .map(|(id, unit)| job_task::ActiveModel {
            id: Set((*id).into()),
            domain_id: Set(input.domain.into()),
            job_id: Set(input.id.into()),
            service_account_id: Set(Some(unit.account.as_uuid())),
            month: Set(unit.month.map(Month::first_day)),
            status: Set(JobStatus::Queued),
            attempt: Set(0),
            max_attempts: Set(max_attempts),
            lease_owner: Set(None),
            lease_expires_at: Set(None),
            created: Set(0),
            updated: Set(0),
            unchanged: Set(0),
            deleted: Set(0),
            failed: Set(0),
            error: Set(None),
            stderr: Set(None),
            previous_attempts: Set(None),
            started_at: Set(None),
            finished_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            sub_task: Set(unit.sub_task.as_ref().map(|s| s.options.clone())),
            part: Set(unit.sub_task.as_ref().map(|s| s.part)),
            parts: Set(unit.sub_task.as_ref().map(|s| s.parts)),
        });
    job_task::Entity::insert_many(tasks)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// Cancels a job: the job and its unfinished tasks become CANCELED in one transaction. Workers
/// running its tasks find their attempt fenced at their next heartbeat and stop their plugin;
/// what they committed before stays. Canceling a canceled job changes nothing.
///
/// # Errors
/// [`Error::NotFound`] for an unknown job (or another domain's); [`Error::State`] when it already
/// ended otherwise.
pub async fn cancel<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    domain: DomainId,
    id: JobId,
) -> Result<()> {
    let txn = store::begin_write(db).await?;
    let current = job::Entity::find_by_id(id.as_uuid())
        .filter(job::Column::DomainId.eq(domain.as_uuid()))
        .one(&txn)
        .await?;
    // Rolled back before every early return: on SQLite the transaction holds the database's
    // write lock.
    let current = match current {
        None => {
            txn.rollback().await?;
            return Err(Error::not_found("job", id));
        }
        Some(j) if j.status == JobStatus::Canceled => {
            txn.rollback().await?;
            return Ok(());
        }
        Some(j) if j.status.is_terminal() => {
            txn.rollback().await?;
            return Err(Error::State(format!(
                "job {id} already ended with {}; only a queued or running job can be canceled",
                j.status.as_str()
            )));
        }
        Some(j) => j,
    };
    // `false` when it ended between the read and the update: the job read next shows how.
    end_job(&txn, current.id, JobStatus::Canceled, "canceled by request").await?;
    txn.commit().await?;
    Ok(())
}

/// Ends a job that has not ended with `status` and `reason`, and its unfinished tasks with
/// it. `false` when the job had already ended.
async fn end_job(
    db: &impl ConnectionTrait,
    job_id: uuid::Uuid,
    status: JobStatus,
    reason: &str,
) -> Result<bool> {
    let now = Utc::now().fixed_offset();
    let res = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(status))
        .col_expr(job::Column::Error, Expr::value(reason))
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::InProgress]))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Ok(false);
    }
    super::task::end_unfinished(db, job_id, status, reason, now).await?;
    touch_collector_finished(db, job_id.into()).await?;
    announce(db, &[job_id]).await?;
    Ok(true)
}

/// Fails up to `limit` unfinished jobs whose deadline passed before `now`, with reason
/// "timeout", stopping their tasks. Returns the jobs that timed out.
///
/// # Errors
/// Database errors only.
pub async fn expire<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<JobId>> {
    let due: Vec<(uuid::Uuid, DateTimeWithTimeZone, DateTimeWithTimeZone)> = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .column(job::Column::CreatedAt)
        .column(job::Column::DeadlineAt)
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::InProgress]))
        .filter(job::Column::DeadlineAt.lt(now.fixed_offset()))
        .order_by_asc(job::Column::DeadlineAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    let mut expired = Vec::with_capacity(due.len());
    for (id, created, deadline) in due {
        let limit_secs = (deadline - created).num_seconds();
        let reason = format!("timeout: the job did not finish within {limit_secs} s");
        let txn = store::begin_write(db).await?;
        if end_job(&txn, id, JobStatus::Failure, &reason).await? {
            expired.push(id.into());
        }
        txn.commit().await?;
    }
    Ok(expired)
}

/// Queues the event announcing the current status of each of `jobs` (call in the transaction
/// that changed it), with the job as the API shows it.
///
/// # Errors
/// Database errors only.
pub(crate) async fn announce(db: &impl ConnectionTrait, jobs: &[uuid::Uuid]) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let rows = job::Entity::find()
        .filter(job::Column::Id.is_in(jobs.iter().copied()))
        .all(db)
        .await?;
    let ended: Vec<uuid::Uuid> = rows
        .iter()
        .filter(|j| j.status.is_terminal())
        .map(|j| j.id)
        .collect();
    let progress = store::job::progress_of(db, &ended).await?;
    let events: Vec<JobEvent> = rows
        .into_iter()
        .map(|j| {
            // A job that has not ended has done nothing yet when its event is written.
            let p = progress.get(&j.id).copied().unwrap_or_default();
            JobEvent::of(j.domain_id.into(), store::job::view(j, p))
        })
        .collect();
    outbox::insert_events(db, &events).await
}

/// Ends a running job whose tasks have all ended: SUCCESS when all succeeded, FAILURE naming
/// how many did not. Returns the status it ended with, or `None` when tasks are left (or the
/// job had already ended).
///
/// Called after each task's outcome is committed, outside that transaction. The last task to
/// commit always finds none left, since every other one committed before it: so the job ends
/// without its tasks ever waiting on each other for the job's row (a counter on the job,
/// updated by every task, serialized them on that row). Only a call that finds nothing left
/// locks the row, to end the job once. If the process dies between a task's commit and this
/// call, the reaper ends the job ([`unconcluded`]).
///
/// # Errors
/// Database errors only.
pub async fn conclude<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    id: JobId,
) -> Result<Option<JobStatus>> {
    let open = [JobStatus::Queued, JobStatus::InProgress];
    // One probe of `(job_id, status)`: a count went over all the job's open tasks, at every
    // task's end.
    let left: Option<uuid::Uuid> = job_task::Entity::find()
        .select_only()
        .column(job_task::Column::Id)
        .filter(job_task::Column::JobId.eq(id.as_uuid()))
        .filter(job_task::Column::Status.is_in(open))
        .into_tuple()
        .one(db)
        .await?;
    if left.is_some() {
        return Ok(None);
    }
    let txn = store::begin_write(db).await?;
    // Rolled back explicitly on the way out: a dropped transaction keeps its row lock until its
    // connection is next used.
    let j = match job::Entity::find_by_id(id.as_uuid())
        .lock_exclusive()
        .one(&txn)
        .await?
    {
        Some(j) if j.status == JobStatus::InProgress => j,
        _ => {
            txn.rollback().await?;
            return Ok(None);
        }
    };
    let statuses: Vec<JobStatus> = job_task::Entity::find()
        .select_only()
        .column(job_task::Column::Status)
        .filter(job_task::Column::JobId.eq(j.id))
        .into_tuple()
        .all(&txn)
        .await?;
    // Read under the lock: a task re-queued meanwhile (a retry) keeps the job running.
    if statuses.iter().any(|s| !s.is_terminal()) {
        txn.rollback().await?;
        return Ok(None);
    }
    let total = i32::try_from(statuses.len()).unwrap_or(i32::MAX);
    let failed = i32::try_from(
        statuses
            .iter()
            .filter(|s| **s != JobStatus::Success)
            .count(),
    )
    .unwrap_or(i32::MAX);
    let (status, error) = if failed == 0 {
        (JobStatus::Success, None)
    } else {
        (
            JobStatus::Failure,
            Some(format!("{failed} of {total} tasks failed")),
        )
    };
    let now = Utc::now().fixed_offset();
    job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(status))
        .col_expr(job::Column::Error, Expr::value(error))
        .col_expr(job::Column::TasksDone, Expr::value(total))
        .col_expr(job::Column::TasksFailed, Expr::value(failed))
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(j.id))
        .exec(&txn)
        .await?;
    touch_collector_finished(&txn, id).await?;
    announce(&txn, &[j.id]).await?;
    txn.commit().await?;
    tracing::info!(job_id = %id, status = status.as_str(), "job finished");
    Ok(Some(status))
}

/// Up to `limit` running jobs none of whose tasks is left unfinished: their last task's worker
/// died between recording its outcome and [`conclude`]. The reaper concludes them.
///
/// # Errors
/// Database errors only.
pub async fn unconcluded(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<JobId>> {
    use sea_orm::sea_query::Query;
    let open = [JobStatus::Queued, JobStatus::InProgress];
    let busy = Query::select()
        .column(job_task::Column::JobId)
        .from(job_task::Entity)
        .and_where(job_task::Column::Status.is_in(open))
        .to_owned();
    let ids: Vec<uuid::Uuid> = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .filter(job::Column::Status.eq(JobStatus::InProgress))
        .filter(job::Column::Id.not_in_subquery(busy))
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().map(Into::into).collect())
}

/// Moves a job's `updated_at` to `at`, unless another transaction holds its row (see
/// [`super::fence::TOUCH_JOBS_PG`] for why a touch never waits).
///
/// # Errors
/// Database errors only.
pub async fn touch(db: &impl ConnectionTrait, id: JobId, at: DateTimeWithTimeZone) -> Result<()> {
    touch_many(db, &[id.as_uuid()], at).await
}

/// [`touch`] for several jobs.
pub(crate) async fn touch_many(
    db: &impl ConnectionTrait,
    ids: &[uuid::Uuid],
    at: DateTimeWithTimeZone,
) -> Result<()> {
    let backend = db.get_database_backend();
    let statement = match backend {
        sea_orm::DbBackend::Postgres => sea_orm::Statement::from_sql_and_values(
            backend,
            super::fence::TOUCH_JOBS_PG,
            [ids.to_vec().into(), at.into()],
        ),
        // SQLite has one writer at a time: nothing to skip.
        _ => {
            for &id in ids {
                db.execute_raw(sea_orm::Statement::from_sql_and_values(
                    backend,
                    super::fence::TOUCH_JOB_SQLITE,
                    [id.into(), at.into()],
                ))
                .await?;
            }
            return Ok(());
        }
    };
    db.execute_raw(statement).await?;
    Ok(())
}

/// Records on the job's collector that a job just ended.
pub(crate) async fn touch_collector_finished(db: &impl ConnectionTrait, job: JobId) -> Result<()> {
    let Some(j) = job::Entity::find_by_id(job.as_uuid()).one(db).await? else {
        return Ok(());
    };
    if let Some(cid) = j.collector_id {
        collector::Entity::update_many()
            .col_expr(
                collector::Column::LastCollectedAt,
                Expr::value(j.finished_at.unwrap_or_else(|| Utc::now().fixed_offset())),
            )
            .filter(collector::Column::Id.eq(cid))
            .exec(db)
            .await?;
    }
    Ok(())
}
