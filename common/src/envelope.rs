//! The message envelope and the messages Gleaner puts on the broker.
//!
//! Messages carry ids, never credentials or resource data: a worker loads what it needs from
//! the database, so a message read off the broker (or a dead-letter queue) discloses nothing.
//! Each message type has a wire name and a schema version that do not change when a Rust type
//! is renamed.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::{DomainId, JobId, MessageId, TaskId};
use crate::model::JobKind;

/// A message type: its wire name and schema version.
pub trait Message: Serialize + DeserializeOwned {
    /// The `type` field on the wire.
    const TYPE: &'static str;
    /// Bumped when the payload changes incompatibly.
    const VERSION: u16;
}

/// A job was accepted and must be planned into tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequested {}

impl Message for JobRequested {
    const TYPE: &'static str = "job.requested";
    const VERSION: u16 = 1;
}

/// A task must run (first run, or a retry with the envelope's attempt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequested {}

impl Message for TaskRequested {
    const TYPE: &'static str = "task.requested";
    const VERSION: u16 = 1;
}

/// What travels on the broker: routing facts plus a typed payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P = serde_json::Value> {
    #[serde(rename = "type")]
    pub message_type: String,
    pub schema_version: u16,
    pub message_id: MessageId,
    pub domain_id: DomainId,
    pub job_kind: JobKind,
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    pub payload: P,
}

impl<P: Message> Envelope<P> {
    /// A new envelope with a fresh message id.
    pub fn new(
        domain_id: DomainId,
        job_kind: JobKind,
        job_id: JobId,
        task_id: Option<TaskId>,
        attempt: u32,
        payload: P,
    ) -> Self {
        Self {
            message_type: P::TYPE.to_owned(),
            schema_version: P::VERSION,
            message_id: MessageId::new(),
            domain_id,
            job_kind,
            job_id,
            task_id,
            attempt,
            created_at: Utc::now(),
            payload,
        }
    }

    /// The routing key: `<job kind>.<message type>`, so each job kind has its own queue.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.job_kind.as_str(), self.message_type)
    }
}

/// Why a delivery could not be read as a known message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message is not a JSON envelope: {0}")]
    NotAnEnvelope(serde_json::Error),
    #[error("unknown message type `{0}` (schema version {1})")]
    UnknownType(String, u16),
    #[error("payload of `{0}` does not match its schema: {1}")]
    BadPayload(&'static str, serde_json::Error),
}

/// A decoded delivery, by message type.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    JobRequested(Envelope<JobRequested>),
    TaskRequested(Envelope<TaskRequested>),
}

impl Incoming {
    /// Reads a delivery's body.
    ///
    /// # Errors
    /// The body is not an envelope, names an unknown type or version, or has a bad payload.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let raw: Envelope = serde_json::from_slice(body).map_err(DecodeError::NotAnEnvelope)?;
        match (raw.message_type.as_str(), raw.schema_version) {
            (JobRequested::TYPE, JobRequested::VERSION) => typed(raw).map(Incoming::JobRequested),
            (TaskRequested::TYPE, TaskRequested::VERSION) => {
                typed(raw).map(Incoming::TaskRequested)
            }
            _ => Err(DecodeError::UnknownType(
                raw.message_type,
                raw.schema_version,
            )),
        }
    }
}

/// The facts of a delivery the metrics need, read without checking its type or payload:
/// cheaper than [`Incoming::decode`], and available for a message that fails it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Header {
    pub job_kind: JobKind,
    pub created_at: DateTime<Utc>,
}

impl Header {
    /// Reads a delivery's header; `None` when the body is not an envelope.
    #[must_use]
    pub fn peek(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// How long ago the message was created; zero when the clock of the process that created
    /// it is ahead of this one's.
    #[must_use]
    pub fn age(&self) -> std::time::Duration {
        (Utc::now() - self.created_at).to_std().unwrap_or_default()
    }
}

fn typed<P: Message>(raw: Envelope) -> Result<Envelope<P>, DecodeError> {
    let payload =
        serde_json::from_value(raw.payload).map_err(|e| DecodeError::BadPayload(P::TYPE, e))?;
    Ok(Envelope {
        message_type: raw.message_type,
        schema_version: raw.schema_version,
        message_id: raw.message_id,
        domain_id: raw.domain_id,
        job_kind: raw.job_kind,
        job_id: raw.job_id,
        task_id: raw.task_id,
        attempt: raw.attempt,
        created_at: raw.created_at,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_routes_by_kind() {
        let env = Envelope::new(
            DomainId::DEFAULT,
            JobKind::Inventory,
            JobId::new(),
            Some(TaskId::new()),
            1,
            TaskRequested {},
        );
        assert_eq!(env.routing_key(), "inventory.task.requested");
        let body = serde_json::to_vec(&env).expect("serializes");
        assert_eq!(
            Incoming::decode(&body).expect("decodes"),
            Incoming::TaskRequested(env)
        );
    }

    #[test]
    fn garbage_and_unknown_types_are_rejected_with_a_reason() {
        assert!(matches!(
            Incoming::decode(b"not json"),
            Err(DecodeError::NotAnEnvelope(_))
        ));
        let mut env = serde_json::to_value(Envelope::new(
            DomainId::DEFAULT,
            JobKind::Inventory,
            JobId::new(),
            None,
            1,
            JobRequested {},
        ))
        .expect("json");
        env["type"] = "job.exploded".into();
        let body = serde_json::to_vec(&env).expect("json");
        let err = Incoming::decode(&body).expect_err("unknown type");
        assert!(err.to_string().contains("job.exploded"));
        // The header is still readable, so a rejected message is counted under its kind.
        let header = Header::peek(&body).expect("header");
        assert_eq!(header.job_kind, JobKind::Inventory);
        assert!(Header::peek(b"not json").is_none());
    }
}
