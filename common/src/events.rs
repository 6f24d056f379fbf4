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

use crate::id::{DomainId, MessageId};
use crate::model::JobStatus;
use crate::store::job::Job;

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
    /// The job after the change, as `GET /v1/jobs/{id}` shows it.
    pub job: Job,
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
    /// The event announcing the job's current status.
    #[must_use]
    pub fn of(domain_id: DomainId, job: Job) -> Self {
        Self {
            event_type: event_type(job.status),
            schema_version: 1,
            event_id: MessageId::new(),
            occurred_at: Utc::now(),
            domain_id,
            job,
        }
    }
}
