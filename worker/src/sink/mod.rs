//! Where collected items are written: the storage seam of the worker.
//!
//! A sink writes one batch in one transaction, together with the task's progress, and fenced
//! by the task's attempt: a stale attempt writes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use gleaner_common::id::{CollectorId, DomainId, JobId, ProjectId, ServiceAccountId, TaskId};
use gleaner_common::lifecycle::Attempt;
use gleaner_common::model::Counts;
use gleaner_common::store::resource;

use crate::plugin::ResourceItem;

pub mod costs;
pub mod costs_sqlite;
pub mod metrics;
pub mod metrics_sqlite;
mod pg_group;
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
    /// Another collector of the domain reports resources of this provider: the batch may hold
    /// resources it owns, which go through the priority merge instead of the bulk upsert.
    pub shared: bool,
    /// Set while the task's collector and account had nothing stored when the task turned big
    /// (a first collection): its batches are copied straight into `resources`, and the first
    /// that finds a key stored after all clears it and is upserted instead. Shared by the
    /// task's writers; `None` for batches that always upsert.
    pub fresh: Option<Arc<AtomicBool>>,
}

impl Scope {
    /// Whether the batch may be copied straight into `resources`: nothing of the task's
    /// collector and account was stored, and no other collector shares the provider.
    #[must_use]
    pub fn fresh(&self) -> bool {
        !self.shared
            && self
                .fresh
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// A batch found a key stored: the task's later batches are upserted.
    pub fn not_fresh(&self) {
        if let Some(f) = &self.fresh {
            f.store(false, Ordering::Relaxed);
        }
    }

    /// The attempt the batch is fenced by.
    #[must_use]
    pub fn attempt(&self) -> Attempt {
        Attempt {
            task: self.task_id,
            number: self.attempt,
        }
    }
}

/// What writing a batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed, with what changed; `contested` are the batch's indexes of resources another
    /// collector owns (or several do): the bulk path left them for the priority merge.
    Committed {
        counts: Counts,
        contested: Vec<usize>,
    },
    /// A newer attempt owns the task: nothing was written.
    Stale,
}

/// Why a batch could not be written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SinkError {
    /// The database could not be reached, or asked to try again: writing again may succeed.
    #[error("database error while writing a batch: {0}")]
    Db(String),
    /// The database refused what was written (a value it cannot hold, a constraint): writing
    /// the same again fails the same way.
    #[error("the database refused the write: {0}")]
    Refused(String),
    #[error("item `{key}` has data that is not a JSON object")]
    NotAnObject { key: String },
    /// The priority merge of resources several collectors report failed.
    #[error("merging resources other collectors report failed: {0}")]
    Merge(String),
    /// Stored data cannot be read: writing again will not help.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for SinkError {
    /// Transient or refused by the error's kind ([`gleaner_common::store::is_transient_sqlx`]).
    fn from(e: sqlx::Error) -> Self {
        if gleaner_common::store::is_transient_sqlx(&e) {
            SinkError::Db(e.to_string())
        } else {
            SinkError::Refused(e.to_string())
        }
    }
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
    /// Resources another collector owns are left out and named in `contested`.
    ///
    /// # Errors
    /// The database failed; nothing of the batch was committed.
    async fn write(
        &self,
        scope: &Scope,
        batch: &[ResourceItem],
        failed: i64,
    ) -> Result<Written, SinkError>;

    /// Whether batches of one task, on disjoint keys, may be written at the same time by as
    /// many concurrent calls of [`ResourceSink::write`]: a database with one writer at a time
    /// gains nothing from it.
    fn concurrent_batches(&self) -> bool {
        false
    }

    /// Whether the sink copies a first collection's batches straight into the table when the
    /// scope says so ([`Scope::fresh`]), rather than upserting them.
    fn copies_fresh(&self) -> bool {
        false
    }

    /// Whether [`ResourceSink::write_many`] writes a batch of `rows` for `scope` together with
    /// others; the rest are better written alone.
    fn combines(&self, _scope: &Scope, _rows: usize) -> bool {
        false
    }

    /// Writes the batches of several tasks, each fenced by its own attempt: one answer per
    /// write, in order. Writing them one by one unless the sink knows better.
    async fn write_many(&self, writes: Vec<Write>) -> Vec<Result<Written, SinkError>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(self.write(&w.scope, &w.batch, w.failed).await);
        }
        out
    }
}

/// One task's batch, for [`ResourceSink::write_many`].
#[derive(Clone, Debug)]
pub struct Write {
    pub scope: Scope,
    pub batch: Vec<ResourceItem>,
    /// Item errors to add to the task's progress.
    pub failed: i64,
}

/// The indexes in `batch` of the given (type, key) pairs.
fn indexes_of(
    batch: &[ResourceItem],
    keys: impl IntoIterator<Item = (String, String)>,
) -> Vec<usize> {
    let keys: std::collections::HashSet<(String, String)> = keys.into_iter().collect();
    batch
        .iter()
        .enumerate()
        .filter(|(_, i)| keys.contains(&(i.resource_type.clone(), i.resource_key.clone())))
        .map(|(n, _)| n)
        .collect()
}

/// A resource's content hash: equal content gives an equal hash whatever the key order of the
/// plugin's JSON, because `serde_json` maps are sorted.
#[must_use]
pub fn content_hash(item: &ResourceItem, data_json: &[u8]) -> i64 {
    resource::content_hash(item.name.as_deref(), item.region.as_deref(), data_json)
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
