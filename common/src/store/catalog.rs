//! Catalog data collectors report besides resources: Cloudforet plugins' cloud service types,
//! regions, namespaces and metric definitions. Each report replaces the entry of the same
//! domain, provider, kind and key.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::Result;
use crate::entity::catalog_entry;
use crate::id::{CollectorId, DomainId};

/// One entry to store.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `cloud_service_type`, `region`, `namespace` or `metric`.
    pub kind: &'static str,
    pub provider: String,
    pub key: String,
    pub name: Option<String>,
    pub data: Value,
}

/// One stored entry, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CatalogEntry {
    #[schema(example = "region")]
    pub kind: String,
    #[schema(example = "aws")]
    pub provider: String,
    /// What the plugin's match rules made of it, e.g. `us-east-1/aws`.
    pub key: String,
    pub name: Option<String>,
    /// Everything the plugin reported of it.
    pub data: Value,
    /// The collector that reported it last.
    pub collector_id: Option<CollectorId>,
    pub updated_at: DateTime<Utc>,
}

/// Rows per statement: 8 values each, far under either database's parameter limit.
const ROWS: usize = 500;

/// Stores `entries` (the newest report of each wins).
///
/// # Errors
/// Database errors only.
pub async fn upsert(
    db: &impl ConnectionTrait,
    domain: DomainId,
    collector: Option<CollectorId>,
    entries: &[Entry],
) -> Result<()> {
    let now = Utc::now();
    for chunk in entries.chunks(ROWS) {
        // One key once per statement: PostgreSQL refuses to update a row twice in one.
        let mut rows: Vec<catalog_entry::ActiveModel> = Vec::with_capacity(chunk.len());
        let mut seen = std::collections::HashSet::with_capacity(chunk.len());
        for e in chunk.iter().rev() {
            if !seen.insert((e.provider.as_str(), e.kind, e.key.as_str())) {
                continue;
            }
            rows.push(catalog_entry::ActiveModel {
                domain_id: Set(domain.as_uuid()),
                provider: Set(e.provider.clone()),
                kind: Set(e.kind.to_owned()),
                key: Set(e.key.clone()),
                name: Set(e.name.clone()),
                data: Set(e.data.clone()),
                collector_id: Set(collector.map(|c| c.as_uuid())),
                updated_at: Set(now.into()),
            });
        }
        catalog_entry::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::columns([
                    catalog_entry::Column::DomainId,
                    catalog_entry::Column::Provider,
                    catalog_entry::Column::Kind,
                    catalog_entry::Column::Key,
                ])
                .update_columns([
                    catalog_entry::Column::Name,
                    catalog_entry::Column::Data,
                    catalog_entry::Column::CollectorId,
                    catalog_entry::Column::UpdatedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The domain's entries, by kind, provider and key; optionally of one kind and provider.
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    kind: Option<&str>,
    provider: Option<&str>,
) -> Result<Vec<CatalogEntry>> {
    let mut q =
        catalog_entry::Entity::find().filter(catalog_entry::Column::DomainId.eq(domain.as_uuid()));
    if let Some(kind) = kind {
        q = q.filter(catalog_entry::Column::Kind.eq(kind));
    }
    if let Some(provider) = provider {
        q = q.filter(catalog_entry::Column::Provider.eq(provider));
    }
    let rows = q
        .order_by_asc(catalog_entry::Column::Kind)
        .order_by_asc(catalog_entry::Column::Provider)
        .order_by_asc(catalog_entry::Column::Key)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|m| CatalogEntry {
            kind: m.kind,
            provider: m.provider,
            key: m.key,
            name: m.name,
            data: m.data,
            collector_id: m.collector_id.map(CollectorId::from_uuid),
            updated_at: m.updated_at.with_timezone(&Utc),
        })
        .collect())
}
