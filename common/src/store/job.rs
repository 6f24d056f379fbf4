//! Jobs as the API and job events show them. Their changes are [`crate::lifecycle::job`]'s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sea_orm::prelude::DateTimeWithTimeZone;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Error, Result};
use crate::billing::{Month, Window};
use crate::entity::{job, job_task};
use crate::id::{CollectorId, DomainId, JobId, ScheduleId};
use crate::model::{Counts, JobKind, JobStatus, Trigger};

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
pub(crate) struct Progress {
    counts: Counts,
    /// Tasks that ended.
    done: i32,
    /// Tasks that ended otherwise than SUCCESS.
    failed: i32,
}

pub(crate) fn view(m: job::Model, p: Progress) -> Job {
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

pub(crate) fn window_of(
    start: Option<chrono::NaiveDate>,
    end: Option<chrono::NaiveDate>,
) -> Option<Window> {
    Some(Window {
        start: Month::of(start?),
        end: Month::of(end?),
    })
}

pub(crate) async fn progress_of(
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
    let counts = progress_of(db, &[m.id])
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
    let mut counts = progress_of(db, &ids).await?;
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
    let mut counts = progress_of(db, &uuids).await?;
    Ok(rows
        .into_iter()
        .map(|j| {
            let c = counts.remove(&j.id).unwrap_or_default();
            (ChangeCursor::of(&j), view(j, c))
        })
        .collect())
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
