//! Job events for integrations: one message per change of a job's status, published to the
//! topic exchange `<prefix>.events` under the event's type as routing key.
//!
//! | routing key     | when                                                        |
//! |-----------------|-------------------------------------------------------------|
//! | `job.queued`    | the job was accepted (by the API or a schedule)             |
//! | `job.started`   | it was planned into tasks, which are now queued             |
//! | `job.succeeded` | every task succeeded                                        |
//! | `job.failed`    | a task failed, no account could be collected, or a timeout |
//! | `job.canceled`  | it was canceled through the API                             |
//!
//! Events go through the outbox in the same transaction as the change they announce, so none
//! is lost and none announces a change that was rolled back; like every message they may
//! arrive twice (deduplicate by `event_id`). The body is [`JobEvent`]; its `schema_version`
//! changes only when a field changes meaning or goes away.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::entity::job;
use crate::id::{CollectorId, DomainId, JobId, MessageId, ScheduleId};
use crate::model::{Counts, JobKind, JobStatus, Trigger};

/// The body of a job event.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobEvent {
    /// The routing key: `job.queued`, `job.started`, `job.succeeded`, `job.failed` or
    /// `job.canceled`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// 1.
    pub schema_version: u16,
    /// Unique per event, for deduplication.
    pub event_id: MessageId,
    pub occurred_at: DateTime<Utc>,
    pub domain_id: DomainId,
    pub job: JobSnapshot,
}

/// The job as it is after the change.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobSnapshot {
    pub id: JobId,
    pub kind: JobKind,
    pub status: JobStatus,
    pub collector_id: Option<CollectorId>,
    pub plugin_id: String,
    pub plugin_version: String,
    pub trigger: Trigger,
    pub schedule_id: Option<ScheduleId>,
    pub tasks_total: i32,
    pub tasks_failed: i32,
    /// Summed over the tasks; zero until the job ends.
    pub counts: Counts,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The event type announcing that a job reached `status`.
#[must_use]
pub const fn event_type(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "job.queued",
        JobStatus::InProgress => "job.started",
        JobStatus::Success => "job.succeeded",
        JobStatus::Failure => "job.failed",
        JobStatus::Canceled => "job.canceled",
    }
}

impl JobEvent {
    /// The event announcing the job's current status, with its tasks' summed counts and how
    /// many of them ended otherwise than SUCCESS.
    #[must_use]
    pub fn of(m: &job::Model, counts: Counts, tasks_failed: i32) -> Self {
        Self {
            event_type: event_type(m.status),
            schema_version: 1,
            event_id: MessageId::new(),
            occurred_at: Utc::now(),
            domain_id: m.domain_id.into(),
            job: JobSnapshot {
                id: m.id.into(),
                kind: m.kind,
                status: m.status,
                collector_id: m.collector_id.map(Into::into),
                plugin_id: m.plugin_id.clone(),
                plugin_version: m.plugin_version.clone(),
                trigger: m.trigger,
                schedule_id: m.schedule_id.map(Into::into),
                tasks_total: m.tasks_total,
                tasks_failed,
                counts,
                error: m.error.clone(),
                created_at: m.created_at.to_utc(),
                started_at: m.started_at.map(|t| t.to_utc()),
                finished_at: m.finished_at.map(|t| t.to_utc()),
            },
        }
    }
}
