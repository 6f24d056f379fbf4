//! A job as the API and the job events show it: the row with its tasks' progress summed. Its
//! changes are [`crate::lifecycle::job`]'s; the API's reads of jobs are the api crate's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::Serialize;
use utoipa::ToSchema;

use super::Result;
use crate::billing::{Month, Window};
use crate::entity::{job, job_task};
use crate::id::{CollectorId, JobId, ScheduleId};
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

/// The jobs of `rows` as the API shows them, each with the progress of its tasks summed.
///
/// # Errors
/// Database errors only.
pub async fn snapshots(db: &impl ConnectionTrait, rows: Vec<job::Model>) -> Result<Vec<Job>> {
    let ids: Vec<uuid::Uuid> = rows.iter().map(|j| j.id).collect();
    let mut progress = progress_of(db, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|j| {
            let p = progress.remove(&j.id).unwrap_or_default();
            view(j, p)
        })
        .collect())
}
