//! The audit log: every change made through the API, with the key that made it.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::Result;
use crate::entity::audit;
use crate::id::{ApiKeyId, DomainId};

/// One change, as it is recorded.
#[derive(Clone, Debug)]
pub struct Change {
    pub domain: DomainId,
    pub key: Option<ApiKeyId>,
    pub method: String,
    /// The route's template, e.g. `/v1/collectors/{id}`.
    pub route: String,
    /// The object changed: the route's id, or the id of what a POST created.
    pub target_id: Option<String>,
    pub status: u16,
}

/// An entry of the audit log as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Entry {
    pub id: i64,
    pub api_key_id: Option<ApiKeyId>,
    pub method: String,
    pub route: String,
    pub target_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `success` (2xx) or `failure`.
    pub outcome: String,
    pub at: DateTime<Utc>,
}

/// Records a change.
///
/// # Errors
/// Database errors only.
pub async fn record(db: &impl ConnectionTrait, c: Change) -> Result<()> {
    let outcome = if (200..300).contains(&c.status) {
        "success"
    } else {
        "failure"
    };
    let row = audit::ActiveModel {
        id: NotSet,
        domain_id: Set(c.domain.as_uuid()),
        api_key_id: Set(c.key.map(|k| k.as_uuid())),
        method: Set(c.method),
        route: Set(c.route),
        target_id: Set(c.target_id),
        status: Set(i32::from(c.status)),
        outcome: Set(Some(outcome.to_owned())),
        at: Set(Utc::now().fixed_offset()),
    };
    audit::Entity::insert(row)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// One page of the domain's audit log, newest first, after `cursor` (the previous page's
/// last id), optionally of one target.
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    target_id: Option<&str>,
    cursor: Option<i64>,
    limit: u64,
) -> Result<Vec<Entry>> {
    let mut q = audit::Entity::find().filter(audit::Column::DomainId.eq(domain.as_uuid()));
    if let Some(t) = target_id {
        q = q.filter(audit::Column::TargetId.eq(t));
    }
    if let Some(c) = cursor {
        q = q.filter(audit::Column::Id.lt(c));
    }
    let rows = q
        .order_by_desc(audit::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|m| Entry {
            id: m.id,
            api_key_id: m.api_key_id.map(Into::into),
            method: m.method,
            route: m.route,
            target_id: m.target_id,
            status: u16::try_from(m.status).unwrap_or(0),
            outcome: m.outcome.unwrap_or_default(),
            at: m.at.to_utc(),
        })
        .collect())
}
