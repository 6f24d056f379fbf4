//! Jobs: accepting one (with its outbox message), planning it into tasks, reading its status.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{Error, Result, collector as collector_store, outbox};
use crate::billing::{Month, Window};
use crate::entity::{collector, job, job_task};
use crate::envelope::{Envelope, JobRequested, TaskRequested};
use crate::events::JobEvent;
use crate::id::{CollectorId, DomainId, JobId, ScheduleId, ServiceAccountId, TaskId};
use crate::model::{CollectorState, Counts, JobKind, JobStatus, Trigger};
use crate::plugin::{Catalog, PluginInfo};

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub collector_id: Option<CollectorId>,
    pub plugin_id: String,
    pub plugin_version: String,
    pub trigger: Trigger,
    /// The schedule that fired it (`trigger` is `schedule`).
    pub schedule_id: Option<ScheduleId>,
    /// The fire instant it was queued for.
    pub fire_time: Option<DateTime<Utc>>,
    pub status: JobStatus,
    pub tasks_total: i32,
    pub tasks_done: i32,
    pub tasks_failed: i32,
    /// Summed over the job's tasks, so a running job shows its progress.
    pub counts: Counts,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When it fails with reason "timeout" if it has not ended (its collector's
    /// `job_timeout_seconds` after it was accepted).
    pub deadline_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// Billing: the months the job covers (each a task per billing account); null for
    /// inventory, and for a billing job not planned yet that was given no window.
    pub window: Option<Window>,
}

/// What a job's tasks did so far, summed.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    counts: Counts,
    /// Tasks that ended.
    done: i32,
    /// Tasks that ended otherwise than SUCCESS.
    failed: i32,
}

fn view(m: job::Model, p: Progress) -> Job {
    let started = m.started_at.map(|t| t.to_utc());
    let finished = m.finished_at.map(|t| t.to_utc());
    Job {
        id: m.id.into(),
        kind: m.kind,
        collector_id: m.collector_id.map(Into::into),
        plugin_id: m.plugin_id,
        plugin_version: m.plugin_version,
        trigger: m.trigger,
        schedule_id: m.schedule_id.map(Into::into),
        fire_time: m.fire_time.map(|t| t.to_utc()),
        status: m.status,
        tasks_total: m.tasks_total,
        // Summed from the tasks, as the counts are: tasks do not update their job's row.
        tasks_done: p.done,
        tasks_failed: p.failed,
        counts: p.counts,
        error: m.error,
        created_at: m.created_at.to_utc(),
        started_at: started,
        finished_at: finished,
        deadline_at: m.deadline_at.map(|t| t.to_utc()),
        duration_ms: started
            .zip(finished)
            .map(|(s, f)| (f - s).num_milliseconds()),
        window: window_of(m.window_start, m.window_end),
    }
}

fn window_of(start: Option<chrono::NaiveDate>, end: Option<chrono::NaiveDate>) -> Option<Window> {
    Some(Window {
        start: Month::of(start?),
        end: Month::of(end?),
    })
}

/// A QUEUED job of collector `c` and its `job.requested` message, to write together.
pub(crate) fn new_job(
    domain: DomainId,
    id: JobId,
    c: &collector::Model,
    plugin: &PluginInfo,
    trigger: Trigger,
    fire: Option<(ScheduleId, DateTime<Utc>)>,
) -> (job::ActiveModel, Envelope<JobRequested>) {
    let version = match c.upgrade_mode {
        crate::model::UpgradeMode::Auto => plugin.latest.clone(),
        crate::model::UpgradeMode::Manual => c.version.clone(),
    };
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
    (
        row,
        Envelope::new(domain, kind, id, None, 1, JobRequested {}),
    )
}

/// Accepts a collection: writes the job and its `job.requested` message in one transaction,
/// so a job is never stored without being sent, nor sent without being stored.
///
/// # Errors
/// [`Error::NotFound`] for an unknown collector; [`Error::State`] for a disabled one or one whose
/// plugin left the catalog.
pub async fn enqueue<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    catalog: &Catalog,
    domain: DomainId,
    collector_id: CollectorId,
    trigger: Trigger,
    fire: Option<(ScheduleId, DateTime<Utc>)>,
    window: Option<Window>,
) -> Result<Job> {
    let txn = super::begin_write(db).await?;
    let c = collector_store::find(&txn, domain, collector_id).await?;
    if c.state == CollectorState::Disabled {
        return Err(Error::State(format!(
            "collector '{}' is disabled: enable it before collecting",
            c.name
        )));
    }
    let plugin = super::plugin::find(&txn, catalog, domain, &c.plugin_id)
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
    let id = JobId::new();
    let (mut row, envelope) = new_job(domain, id, &c, &plugin, trigger, fire);
    if let Some(w) = window {
        row.window_start = Set(Some(w.start.first_day()));
        row.window_end = Set(Some(w.end.first_day()));
    }
    let inserted = job::Entity::insert(row).exec_with_returning(&txn).await?;
    outbox::insert(&txn, &envelope).await?;
    announce(&txn, &[inserted.id]).await?;
    collector::Entity::update_many()
        .col_expr(collector::Column::LastJobId, Expr::value(id.as_uuid()))
        .filter(collector::Column::Id.eq(c.id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(view(inserted, Progress::default()))
}

async fn counts_of(
    db: &impl ConnectionTrait,
    jobs: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, Progress>> {
    let mut out: HashMap<uuid::Uuid, Progress> = HashMap::new();
    if jobs.is_empty() {
        return Ok(out);
    }
    // Summed by the database: a job of thousands of tasks is a few rows (one per status), not
    // thousands, for every poll of its progress. PostgreSQL sums `bigint` into `numeric`,
    // hence the casts.
    let sum = |c: &str| Expr::cust(format!("CAST(SUM(\"{c}\") AS BIGINT)"));
    // Job, status, tasks, then the five counts.
    type Sums = (uuid::Uuid, JobStatus, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Sums> = job_task::Entity::find()
        .select_only()
        .column(job_task::Column::JobId)
        .column(job_task::Column::Status)
        .column_as(Expr::cust("COUNT(*)"), "tasks")
        .column_as(sum("created"), "created")
        .column_as(sum("updated"), "updated")
        .column_as(sum("unchanged"), "unchanged")
        .column_as(sum("deleted"), "deleted")
        .column_as(sum("failed"), "failed")
        .filter(job_task::Column::JobId.is_in(jobs.iter().copied()))
        .group_by(job_task::Column::JobId)
        .group_by(job_task::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    for (job, status, tasks, created, updated, unchanged, deleted, failed) in rows {
        let p = out.entry(job).or_default();
        p.counts += Counts {
            created,
            updated,
            unchanged,
            deleted,
            failed,
        };
        if status.is_terminal() {
            let tasks = i32::try_from(tasks).unwrap_or(i32::MAX);
            p.done += tasks;
            if status != JobStatus::Success {
                p.failed += tasks;
            }
        }
    }
    Ok(out)
}

/// One job with its counts.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such job.
pub async fn get(db: &impl ConnectionTrait, domain: DomainId, id: JobId) -> Result<Job> {
    let m = job::Entity::find_by_id(id.as_uuid())
        .filter(job::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("job", id))?;
    let counts = counts_of(db, &[m.id])
        .await?
        .remove(&m.id)
        .unwrap_or_default();
    Ok(view(m, counts))
}

/// One page of jobs, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<Job>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<JobId>,
}

/// A page of the domain's jobs, newest first, optionally of one collector, after `cursor` (the
/// previous page's `next_cursor`). Keyset pagination on the id, which is time-ordered (UUIDv7),
/// along the index `(domain_id, collector_id, id)`: jobs created meanwhile neither repeat nor
/// shift later pages.
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: Option<CollectorId>,
    cursor: Option<JobId>,
    limit: u64,
) -> Result<JobPage> {
    let mut q = job::Entity::find().filter(job::Column::DomainId.eq(domain.as_uuid()));
    if let Some(c) = collector {
        q = q.filter(job::Column::CollectorId.eq(c.as_uuid()));
    }
    if let Some(before) = cursor {
        q = q.filter(job::Column::Id.lt(before.as_uuid()));
    }
    let mut rows = q
        .order_by_desc(job::Column::Id)
        .limit(limit.saturating_add(1))
        .all(db)
        .await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if has_more {
        rows.last().map(|j| JobId::from_uuid(j.id))
    } else {
        None
    };
    let ids: Vec<_> = rows.iter().map(|j| j.id).collect();
    let mut counts = counts_of(db, &ids).await?;
    let items = rows
        .into_iter()
        .map(|j| {
            let c = counts.remove(&j.id).unwrap_or_default();
            view(j, c)
        })
        .collect();
    Ok(JobPage { items, next_cursor })
}

/// Where a job's latest change stands in the order of all changes: its `updated_at`, then its
/// id. Written as `<unix nanoseconds>_<job id>`, which clients treat as opaque (an event id of
/// `GET /v1/jobs/events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeCursor {
    pub at: DateTime<Utc>,
    pub id: JobId,
}

impl ChangeCursor {
    fn of(m: &job::Model) -> Self {
        Self {
            at: m.updated_at.to_utc(),
            id: m.id.into(),
        }
    }
}

impl fmt::Display for ChangeCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Nanoseconds, not microseconds: SQLite keeps what the process wrote, to the nanosecond,
        // and a rounded cursor would sort before the change it names. `None` only after 2262.
        let nanos = self.at.timestamp_nanos_opt().unwrap_or(i64::MAX);
        write!(f, "{nanos}_{}", self.id)
    }
}

/// A string that is not a [`ChangeCursor`].
#[derive(Debug, thiserror::Error)]
#[error("not a job change cursor: expected `<unix nanoseconds>_<job id>`")]
pub struct BadCursor;

impl FromStr for ChangeCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (nanos, id) = s.split_once('_').ok_or(BadCursor)?;
        Ok(Self {
            at: DateTime::from_timestamp_nanos(nanos.parse().map_err(|_| BadCursor)?),
            id: id.parse().map_err(|_| BadCursor)?,
        })
    }
}

/// The cursors of the domain's jobs (optionally of one collector) that changed after `after`,
/// in order, at most `limit`. Reads `(updated_at, id)` along the index
/// `(domain_id, updated_at, id)`, so a poll that finds nothing costs one short index scan.
///
/// # Errors
/// Database errors only.
pub async fn changed_after(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: Option<CollectorId>,
    after: ChangeCursor,
    limit: u64,
) -> Result<Vec<ChangeCursor>> {
    let at = after.at.fixed_offset();
    // `updated_at >= at` bounds the index range; the `OR` then skips what is at or before the
    // cursor within it (a row comparison is not portable to SQLite's planner).
    let mut q = job::Entity::find()
        .select_only()
        .column(job::Column::UpdatedAt)
        .column(job::Column::Id)
        .filter(job::Column::DomainId.eq(domain.as_uuid()))
        .filter(job::Column::UpdatedAt.gte(at))
        .filter(
            Condition::any()
                .add(job::Column::UpdatedAt.gt(at))
                .add(job::Column::Id.gt(after.id.as_uuid())),
        );
    if let Some(c) = collector {
        q = q.filter(job::Column::CollectorId.eq(c.as_uuid()));
    }
    let rows: Vec<(DateTimeWithTimeZone, uuid::Uuid)> = q
        .order_by_asc(job::Column::UpdatedAt)
        .order_by_asc(job::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(at, id)| ChangeCursor {
            at: at.to_utc(),
            id: id.into(),
        })
        .collect())
}

/// The domain's jobs with these ids, as `get` shows them, each with its cursor as of this read.
/// Ids of jobs that are gone are left out.
///
/// # Errors
/// Database errors only.
pub async fn get_many(
    db: &impl ConnectionTrait,
    domain: DomainId,
    ids: &[JobId],
) -> Result<Vec<(ChangeCursor, Job)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = job::Entity::find()
        .filter(job::Column::DomainId.eq(domain.as_uuid()))
        .filter(job::Column::Id.is_in(ids.iter().map(JobId::as_uuid)))
        .all(db)
        .await?;
    let uuids: Vec<_> = rows.iter().map(|j| j.id).collect();
    let mut counts = counts_of(db, &uuids).await?;
    Ok(rows
        .into_iter()
        .map(|j| {
            let c = counts.remove(&j.id).unwrap_or_default();
            (ChangeCursor::of(&j), view(j, c))
        })
        .collect())
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

/// One task to plan: a service account, and for billing the month it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    pub account: ServiceAccountId,
    pub month: Option<Month>,
}

/// Loads a job for planning.
///
/// # Errors
/// [`Error::NotFound`] when the job is gone (its collector's domain was deleted).
pub async fn plan_input(db: &impl ConnectionTrait, id: JobId) -> Result<PlanInput> {
    let m = job::Entity::find_by_id(id.as_uuid())
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("job", id))?;
    Ok(PlanInput {
        id,
        domain: m.domain_id.into(),
        kind: m.kind,
        status: m.status,
        plugin_id: m.plugin_id,
        plugin_version: m.plugin_version,
        options: m.options,
        window: window_of(m.window_start, m.window_end),
    })
}

/// What planning did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    /// Tasks were created and their messages queued.
    Tasks(Vec<TaskId>),
    /// The job had already been planned (a redelivered message): nothing was done.
    AlreadyPlanned,
}

/// Tasks (and their messages) per insert when SQLite plans a job: well under the bind
/// parameters a SQLite statement may have (32,766).
const PLAN_CHUNK: usize = 500;

/// Splits a QUEUED job into one task per unit (service account, and month for billing, whose
/// `window` is recorded on the job), writing the tasks, their
/// `task.requested` messages and the job's new state in one transaction. With no accounts the
/// job fails at once with `no_accounts_reason`, instead of succeeding having collected nothing.
///
/// # Errors
/// Database errors only.
pub async fn plan<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    input: &PlanInput,
    accounts: &[Unit],
    window: Option<Window>,
    max_attempts: i32,
    no_accounts_reason: &str,
) -> Result<Planned> {
    let txn = super::begin_write(db).await?;
    let now = Utc::now().fixed_offset();
    let mut update = job::Entity::update_many()
        .col_expr(
            job::Column::TasksTotal,
            Expr::value(i32::try_from(accounts.len()).unwrap_or(i32::MAX)),
        )
        .col_expr(job::Column::StartedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now));
    if let Some(w) = window {
        update = update
            .col_expr(job::Column::WindowStart, Expr::value(w.start.first_day()))
            .col_expr(job::Column::WindowEnd, Expr::value(w.end.first_day()));
    }
    update = if accounts.is_empty() {
        update
            .col_expr(job::Column::Status, Expr::value(JobStatus::Failure))
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .col_expr(job::Column::Error, Expr::value(no_accounts_reason))
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
        return Ok(Planned::AlreadyPlanned);
    }
    let ids: Vec<TaskId> = accounts.iter().map(|_| TaskId::new()).collect();
    // In chunks: a job of thousands of tasks is planned in a few statements, not two per task.
    let chunk = if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        PLAN_CHUNK_PG
    } else {
        PLAN_CHUNK
    };
    for (ids, units) in ids.chunks(chunk).zip(accounts.chunks(chunk)) {
        insert_tasks(&txn, input, ids, units, max_attempts, now).await?;
        let messages: Vec<Envelope<TaskRequested>> =
            ids.iter().map(|id| task_message(input, *id)).collect();
        outbox::insert_many(&txn, &messages).await?;
    }
    if accounts.is_empty() {
        touch_collector_finished(&txn, input.id).await?;
    }
    announce(&txn, &[input.id.as_uuid()]).await?;
    txn.commit().await?;
    Ok(Planned::Tasks(ids))
}

/// Tasks (and their messages) per insert when PostgreSQL plans a job: their columns go as
/// arrays, one parameter each (as the outbox's do), so a chunk is bounded by the statement's
/// size only.
const PLAN_CHUNK_PG: usize = 5_000;

/// A job's tasks, in PostgreSQL: unnested from arrays, so a statement is parsed and planned
/// once per chunk of 5,000 tasks (multi-row `VALUES` of 500 tasks, 11,000 parameters, took 7 ms
/// a statement).
const PLAN_TASKS_PG: &str = "INSERT INTO job_tasks (id, domain_id, job_id, service_account_id, \
     month, status, attempt, max_attempts, created, updated, unchanged, deleted, failed, \
     created_at, updated_at) \
     SELECT u.id, $1, $2, u.account, CAST(NULLIF(u.month, '') AS date), $3, 0, $4, 0, 0, 0, 0, 0, \
     $5, $5 FROM unnest($6::uuid[], $7::uuid[], $8::text[]) AS u(id, account, month)";

/// The first `task.requested` message of a task of the job.
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
        let months: Vec<String> = units
            .iter()
            .map(|u| {
                u.month
                    .map(|m| m.first_day().to_string())
                    .unwrap_or_default()
            })
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
/// [`Error::NotFound`] for an unknown job; [`Error::State`] when it already ended otherwise.
pub async fn cancel<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    domain: DomainId,
    id: JobId,
) -> Result<Job> {
    let txn = super::begin_write(db).await?;
    let current = job::Entity::find_by_id(id.as_uuid())
        .filter(job::Column::DomainId.eq(domain.as_uuid()))
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("job", id))?;
    match current.status {
        JobStatus::Canceled => {
            txn.rollback().await?;
            return get(db, domain, id).await;
        }
        s if s.is_terminal() => {
            // On SQLite the transaction holds the database's write lock.
            txn.rollback().await?;
            return Err(Error::State(format!(
                "job {id} already ended with {}; only a queued or running job can be canceled",
                s.as_str()
            )));
        }
        _ => {}
    }
    // `false` when it ended between the read and the update: the job read next shows how.
    end_job(&txn, current.id, JobStatus::Canceled, "canceled by request").await?;
    txn.commit().await?;
    get(db, domain, id).await
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
        let txn = super::begin_write(db).await?;
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
    let counts = counts_of(db, &ended).await?;
    let events: Vec<JobEvent> = rows
        .into_iter()
        .map(|j| {
            // A job that has not ended has done nothing yet when its event is written.
            let p = counts.get(&j.id).copied().unwrap_or_default();
            JobEvent::of(j.domain_id.into(), view(j, p))
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
    let txn = super::begin_write(db).await?;
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

/// Moves a job's `updated_at` to `$2` unless another transaction holds its row, in PostgreSQL.
///
/// A job's progress is summed from its tasks, and `GET /v1/jobs/events` finds changed jobs by
/// `updated_at`: each task's claim, each batch it writes and its end touch the job. Those
/// touches must not wait: a job's tasks run side by side, and waiting on the one row serialized
/// them all (one job of 3,000 one-resource tasks ran at 90 tasks/s). The holder of the lock is
/// touching the job itself, and the job's own end (which waits for the row) moves it last, so
/// a skipped touch delays what an event stream shows until the next one. A waiting touch in a
/// task's end could also deadlock with a cancel, which locks the job's row, then its tasks'.
pub const TOUCH_PG: &str = "UPDATE jobs SET updated_at = $2 \
    WHERE id = (SELECT id FROM jobs WHERE id = $1 FOR UPDATE SKIP LOCKED)";

/// [`TOUCH_PG`] through SeaORM; SQLite has one writer at a time, so a plain update.
pub(crate) async fn touch(
    db: &impl ConnectionTrait,
    id: uuid::Uuid,
    at: DateTimeWithTimeZone,
) -> Result<()> {
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => TOUCH_PG,
        _ => "UPDATE jobs SET updated_at = $2 WHERE id = $1",
    };
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        backend,
        sql,
        [id.into(), at.into()],
    ))
    .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_cursor_reads_back_what_it_writes_to_the_nanosecond() {
        let at = DateTime::from_timestamp_nanos(1_764_000_000_123_456_789);
        let c = ChangeCursor {
            at,
            id: JobId::new(),
        };
        let text = c.to_string();
        assert!(text.starts_with("1764000000123456789_"), "{text}");
        assert_eq!(text.parse::<ChangeCursor>().expect("parses"), c);
        for bad in ["", "12", "x_y", "12_not-a-uuid", &format!("x_{}", c.id)] {
            assert!(bad.parse::<ChangeCursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn change_cursors_order_by_time_then_id() {
        let (a, b) = (JobId::new(), JobId::new());
        let t = DateTime::from_timestamp_nanos(1_000);
        let later = DateTime::from_timestamp_nanos(1_001);
        assert!(ChangeCursor { at: t, id: b } < ChangeCursor { at: later, id: a });
        assert!(ChangeCursor { at: t, id: a } < ChangeCursor { at: t, id: b });
    }
}
