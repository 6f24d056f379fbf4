//! Tasks as the API shows them.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;
use utoipa::ToSchema;

use super::Result;
use crate::billing::Month;
use crate::entity::job_task;
use crate::id::{DomainId, JobId, ServiceAccountId, TaskId};
pub use crate::lifecycle::task::PreviousAttempt;
use crate::model::{Counts, TaskStatus};

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
