//! Idempotency keys: which job a keyed request to collect produced
//! ([`crate::lifecycle::job::enqueue_once`]).

use chrono::{DateTime, FixedOffset, NaiveDate};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::Result;
use crate::billing::{Month, Window};
use crate::entity::idempotency_key::{self, Column, Entity};
use crate::id::{CollectorId, DomainId, JobId};
use crate::model::IdempotencyKey;

/// A key as stored: the request it came with, and its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub key: String,
    pub collector_id: CollectorId,
    pub window: Option<Window>,
    pub job_id: JobId,
}

impl Seen {
    /// Whether this is the request the key was first given with.
    #[must_use]
    pub fn is_for(&self, collector_id: CollectorId, window: Option<Window>) -> bool {
        self.collector_id == collector_id && self.window == window
    }
}

/// The key's request and job, if it was given since `cutoff`.
///
/// # Errors
/// Database errors only.
pub async fn find(
    db: &impl ConnectionTrait,
    domain: DomainId,
    key: &IdempotencyKey,
    cutoff: DateTime<FixedOffset>,
) -> Result<Option<Seen>> {
    let row = Entity::find()
        .filter(Column::DomainId.eq(domain.as_uuid()))
        .filter(Column::Key.eq(key.as_str()))
        .filter(Column::CreatedAt.gte(cutoff))
        .one(db)
        .await?;
    Ok(row.map(|r| Seen {
        window: window_of(r.window_start, r.window_end),
        key: r.key,
        collector_id: r.collector_id.into(),
        job_id: r.job_id.into(),
    }))
}

fn window_of(start: Option<NaiveDate>, end: Option<NaiveDate>) -> Option<Window> {
    Some(Window {
        start: Month::of(start?),
        end: Month::of(end?),
    })
}

/// Deletes the key if it was given before `cutoff`: it then names a new request.
///
/// # Errors
/// Database errors only.
pub async fn forget_expired(
    db: &impl ConnectionTrait,
    domain: DomainId,
    key: &IdempotencyKey,
    cutoff: DateTime<FixedOffset>,
) -> Result<()> {
    Entity::delete_many()
        .filter(Column::DomainId.eq(domain.as_uuid()))
        .filter(Column::Key.eq(key.as_str()))
        .filter(Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(())
}

/// Stores the key with its request and job; `false` when the key is taken already.
///
/// # Errors
/// Database errors only.
pub async fn remember(
    db: &impl ConnectionTrait,
    domain: DomainId,
    key: &IdempotencyKey,
    collector_id: CollectorId,
    window: Option<Window>,
    job_id: JobId,
) -> Result<bool> {
    let row = idempotency_key::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        domain_id: Set(domain.as_uuid()),
        key: Set(key.as_str().to_owned()),
        collector_id: Set(collector_id.as_uuid()),
        window_start: Set(window.map(|w| w.start.first_day())),
        window_end: Set(window.map(|w| w.end.first_day())),
        job_id: Set(job_id.as_uuid()),
        created_at: Set(chrono::Utc::now().fixed_offset()),
    };
    let inserted = Entity::insert(row)
        .on_conflict(
            OnConflict::columns([Column::DomainId, Column::Key])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(inserted > 0)
}

/// Deletes every key given before `cutoff`, at most `batch` of them; how many it deleted.
///
/// # Errors
/// Database errors only.
pub async fn prune(
    db: &impl ConnectionTrait,
    cutoff: DateTime<FixedOffset>,
    batch: u64,
) -> Result<u64> {
    use sea_orm::sea_query::Query;
    // A bounded delete: a backlog (a scheduler down for days) is worked off over passes, each
    // a short transaction.
    let ids = Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(Column::CreatedAt.lt(cutoff))
        .limit(batch)
        .to_owned();
    let deleted = Entity::delete_many()
        .filter(Column::Id.in_subquery(ids))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}
