//! Row counts for the metrics endpoint: jobs by status and the outbox's backlog.
//!
//! Read at every scrape, so each is one cheap statement: the job count groups over the index
//! on `jobs.status`, and the outbox holds only messages not yet published (distributed) or not
//! yet handled (standalone), a short table when things are healthy.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
};

use super::Result;
use crate::entity::{job, outbox};
use crate::model::JobStatus;

/// What the store holds, as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Jobs per status; a status without jobs is absent.
    pub jobs: Vec<(JobStatus, u64)>,
    /// Outbox rows still to publish (distributed) or to handle (standalone).
    pub outbox_pending: u64,
    /// Outbox rows marked dead: the standalone mode's dead letters.
    pub outbox_dead: u64,
}

impl Census {
    /// Jobs with `status`, zero when there are none.
    #[must_use]
    pub fn jobs_with(&self, status: JobStatus) -> u64 {
        self.jobs
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// Counts jobs by status and the outbox's rows, in PostgreSQL and SQLite alike.
///
/// # Errors
/// Database errors only.
pub async fn read(db: &impl ConnectionTrait) -> Result<Census> {
    let jobs: Vec<(JobStatus, i64)> = job::Entity::find()
        .select_only()
        .column(job::Column::Status)
        .column_as(job::Column::Id.count(), "count")
        .group_by(job::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let outbox_pending = outbox::Entity::find()
        .filter(outbox::Column::DeadAt.is_null())
        .count(db)
        .await?;
    let outbox_dead = outbox::Entity::find()
        .filter(outbox::Column::DeadAt.is_not_null())
        .count(db)
        .await?;
    Ok(Census {
        jobs: jobs
            .into_iter()
            .map(|(status, n)| (status, n.unsigned_abs()))
            .collect(),
        outbox_pending,
        outbox_dead,
    })
}
