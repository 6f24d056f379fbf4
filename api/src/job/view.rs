//! The API's reads of jobs and tasks: one job, pages of jobs, the changes the event stream
//! follows, and a job's tasks. A job's shape is [`store::job::Job`], shared with the job events.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use gleaner_common::billing::Month;
use gleaner_common::entity::{job, job_task};
use gleaner_common::id::{CollectorId, DomainId, JobId, ServiceAccountId, TaskId};
use gleaner_common::lifecycle::task::PreviousAttempt;
use gleaner_common::model::{Counts, TaskStatus};
use gleaner_common::store::{self, Result, job::Job};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use utoipa::ToSchema;

fn not_found(id: impl ToString) -> store::Error {
    store::Error::NotFound {
        what: "job",
        id: id.to_string(),
    }
}

/// One job with its counts.
///
/// # Errors
/// [`store::Error::NotFound`] when the domain has no such job.
pub async fn get(db: &impl ConnectionTrait, domain: DomainId, id: JobId) -> Result<Job> {
    let m = job::Entity::find_by_id(id.as_uuid())
        .filter(job::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .ok_or_else(|| not_found(id))?;
    store::job::snapshots(db, vec![m])
        .await?
        .pop()
        .ok_or_else(|| not_found(id))
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
    let items = store::job::snapshots(db, rows).await?;
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
    let cursors: Vec<ChangeCursor> = rows.iter().map(ChangeCursor::of).collect();
    let jobs = store::job::snapshots(db, rows).await?;
    Ok(cursors.into_iter().zip(jobs).collect())
}

/// A task as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Task {
    pub id: TaskId,
    pub job_id: JobId,
    pub service_account_id: Option<ServiceAccountId>,
    /// Billing: the month whose costs the task replaces.
    pub month: Option<Month>,
    /// The part of the account's collection the task is, when the plugin split it
    /// (`Job.get_tasks`): `{part, parts}`, `part` from 0.
    pub sub_task: Option<Part>,
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

/// A task's place among the parts of its account's collection.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Part {
    pub part: i32,
    pub parts: i32,
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
            sub_task: m
                .part
                .zip(m.parts)
                .map(|(part, parts)| Part { part, parts }),
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
pub async fn tasks(db: &impl ConnectionTrait, domain: DomainId, job: JobId) -> Result<Vec<Task>> {
    let rows = job_task::Entity::find()
        .filter(job_task::Column::DomainId.eq(domain.as_uuid()))
        .filter(job_task::Column::JobId.eq(job.as_uuid()))
        .order_by_asc(job_task::Column::Id)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
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
