//! Where collected items are written: the storage seam of the worker.
//!
//! A sink writes one batch in one transaction, together with the task's progress, and fenced
//! by the task's attempt: a stale attempt writes nothing.

use async_trait::async_trait;
use gleaner_common::id::{CollectorId, DomainId, JobId, ProjectId, ServiceAccountId, TaskId};
use gleaner_common::model::Counts;
use xxhash_rust::xxh3::Xxh3;

use crate::plugin::ResourceItem;

pub mod postgres;
pub mod sqlite;

/// Who a batch belongs to.
#[derive(Clone, Debug)]
pub struct Scope {
    pub domain: DomainId,
    pub provider: String,
    pub project_id: Option<ProjectId>,
    pub service_account_id: Option<ServiceAccountId>,
    pub collector_id: Option<CollectorId>,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: i32,
}

/// What writing a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed, with what changed.
    Committed(Counts),
    /// A newer attempt owns the task: nothing was written.
    Stale,
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("database error while writing a batch: {0}")]
    Db(String),
    #[error("item `{key}` has data that is not a JSON object")]
    NotAnObject { key: String },
    /// Stored data cannot be read: writing again will not help.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl SinkError {
    /// Whether writing the batch again may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Db(_))
    }
}

/// Writes batches of resources.
#[async_trait]
pub trait ResourceSink: Send + Sync {
    /// Upserts a batch (items with distinct keys), records created and updated resources in
    /// their history, and adds the counts (plus `failed` item errors) to the task's progress.
    ///
    /// # Errors
    /// The database failed; nothing of the batch was committed.
    async fn write(
        &self,
        scope: &Scope,
        batch: &[ResourceItem],
        failed: i64,
    ) -> Result<Written, SinkError>;
}

/// A resource's content hash: equal content gives an equal hash whatever the key order of the
/// plugin's JSON, because `serde_json` maps are sorted.
#[must_use]
pub fn content_hash(item: &ResourceItem, data_json: &[u8]) -> i64 {
    let mut h = Xxh3::new();
    h.update(item.name.as_deref().unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(item.region.as_deref().unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(data_json);
    i64::from_ne_bytes(h.digest().to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn item(data: &str) -> (ResourceItem, Vec<u8>) {
        let data: Value = serde_json::from_str(data).expect("json");
        let bytes = serde_json::to_vec(&data).expect("json");
        (
            ResourceItem {
                resource_type: "t".into(),
                resource_key: "k".into(),
                name: None,
                region: None,
                data,
            },
            bytes,
        )
    }

    #[test]
    fn hash_ignores_key_order_but_not_values() {
        let (a, ab) = item(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#);
        let (b, bb) = item(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#);
        assert_eq!(
            content_hash(&a, &ab),
            content_hash(&b, &bb),
            "serde_json must keep maps sorted (no preserve_order)"
        );
        let (c, cb) = item(r#"{"a": {"x": 3, "y": 2}, "b": 2}"#);
        assert_ne!(content_hash(&a, &ab), content_hash(&c, &cb));
    }
}
