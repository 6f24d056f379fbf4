//! The plugin catalog as a domain sees it: the official plugins built into Gleaner, and the
//! private plugins its users registered (external executables, one row per plugin with every
//! registered version in `versions`).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use super::{Error, Result, is_unique_violation};
use crate::entity::plugin;
use crate::external::{Metadata, Spec};
use crate::id::DomainId;
use crate::model::Invalid;
use crate::plugin::{Catalog, PluginInfo};

/// One registered version of a private plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivateVersion {
    pub version: String,
    pub spec: Spec,
    pub metadata: Metadata,
    pub registered_at: DateTime<Utc>,
}

/// A private plugin to register: `init` has already answered with `metadata`.
#[derive(Clone, Debug)]
pub struct Registration {
    pub id: String,
    pub version: semver::Version,
    pub spec: Spec,
    pub metadata: Metadata,
}

fn versions_of(m: &plugin::Model) -> Result<Vec<PrivateVersion>> {
    serde_json::from_value(m.versions.clone())
        .map_err(|e| Error::Corrupt(format!("versions of plugin `{}`: {e}", m.id)))
}

/// The catalog entry of a private plugin, described by `shown` (its latest version unless a
/// collector pins another).
fn info(id: &str, versions: &[PrivateVersion], shown: &PrivateVersion) -> PluginInfo {
    let meta = &shown.metadata;
    PluginInfo {
        id: id.to_owned(),
        name: meta.name.clone(),
        description: meta.description.clone(),
        kind: meta.kind,
        provider: meta.provider.clone(),
        versions: versions.iter().map(|v| v.version.clone()).collect(),
        latest: versions
            .last()
            .map_or_else(String::new, |v| v.version.clone()),
        official: false,
        resource_types: meta.resource_types.clone(),
        options_schema: meta.options_schema.clone(),
        metrics: meta.metrics.clone(),
    }
}

fn latest_info(m: &plugin::Model) -> Result<PluginInfo> {
    let versions = versions_of(m)?;
    let latest = versions
        .last()
        .ok_or_else(|| Error::Corrupt(format!("plugin `{}` has no version", m.id)))?;
    Ok(info(&m.id, &versions, latest))
}

/// A plugin by id: official first, then the domain's private ones. `None` when neither has it.
///
/// # Errors
/// Database errors only.
pub async fn find(
    db: &impl ConnectionTrait,
    catalog: &Catalog,
    domain: DomainId,
    id: &str,
) -> Result<Option<PluginInfo>> {
    if let Some(p) = catalog.get(id) {
        return Ok(Some(p.clone()));
    }
    plugin::Entity::find_by_id((domain.as_uuid(), id.to_owned()))
        .one(db)
        .await?
        .map(|m| latest_info(&m))
        .transpose()
}

/// Every plugin the domain can use: official ones, then private ones, each sorted by id.
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    catalog: &Catalog,
    domain: DomainId,
) -> Result<Vec<PluginInfo>> {
    let mut all = catalog.official().to_vec();
    let rows = plugin::Entity::find()
        .filter(plugin::Column::DomainId.eq(domain.as_uuid()))
        .order_by_asc(plugin::Column::Id)
        .all(db)
        .await?;
    for m in &rows {
        all.push(latest_info(m)?);
    }
    Ok(all)
}

/// What a worker needs to run a private plugin at `version`: its catalog entry as of that
/// version, how to start it, and what a Cloudforet plugin's `init` answered (an empty map for
/// others). `None` when the domain has no such plugin or version.
///
/// # Errors
/// Database errors only.
pub async fn runnable(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: &str,
    version: &str,
) -> Result<Option<(PluginInfo, Spec, serde_json::Map<String, serde_json::Value>)>> {
    let Some(m) = plugin::Entity::find_by_id((domain.as_uuid(), id.to_owned()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let versions = versions_of(&m)?;
    Ok(versions.iter().find(|v| v.version == version).map(|v| {
        let init = match &v.metadata.plugin_metadata {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        (info(id, &versions, v), v.spec.clone(), init)
    }))
}

/// Checks that the domain's private plugin `id` does not have `version` yet, before anything
/// is run to register it; [`register`] checks again in its transaction.
///
/// # Errors
/// [`Error::Conflict`] naming `version`; database errors.
pub async fn ensure_new_version(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: &str,
    version: &str,
) -> Result<()> {
    match runnable(db, domain, id, version).await? {
        Some(_) => Err(version_taken(id, version)),
        None => Ok(()),
    }
}

fn version_taken(id: &str, version: &str) -> Error {
    Error::Conflict {
        field: "version",
        detail: format!(
            "plugin `{id}` already has version {version}; register a new version instead"
        ),
    }
}

/// Registers a private plugin, or a new version of one.
///
/// # Errors
/// [`Error::Conflict`] naming `id` when an official plugin has that id, or `version` when the
/// version is registered already; [`Error::Invalid`] naming `metadata.kind` or
/// `metadata.provider` when a new version changes what the plugin is.
pub async fn register<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    catalog: &Catalog,
    domain: DomainId,
    reg: Registration,
) -> Result<PluginInfo> {
    if catalog.get(&reg.id).is_some() {
        return Err(Error::Conflict {
            field: "id",
            detail: format!("`{}` is the id of an official plugin", reg.id),
        });
    }
    let txn = super::begin_write(db).await?;
    let existing = plugin::Entity::find_by_id((domain.as_uuid(), reg.id.clone()))
        .lock_exclusive()
        .one(&txn)
        .await?;
    let now = Utc::now();
    let new = PrivateVersion {
        version: reg.version.to_string(),
        spec: reg.spec,
        metadata: reg.metadata,
        registered_at: now,
    };
    let mut versions = match &existing {
        Some(m) => versions_of(m)?,
        None => Vec::new(),
    };
    if versions.iter().any(|v| v.version == new.version) {
        return Err(version_taken(&reg.id, &new.version));
    }
    if let Some(first) = versions.first() {
        let mut errors = Vec::new();
        if first.metadata.kind != new.metadata.kind {
            errors.push(Invalid::new(
                "metadata.kind",
                format!(
                    "the plugin's earlier versions are of kind {:?}; a version cannot change it",
                    first.metadata.kind
                ),
            ));
        }
        if first.metadata.provider != new.metadata.provider {
            errors.push(Invalid::new(
                "metadata.provider",
                format!(
                    "the plugin's earlier versions are for provider `{}`; a version cannot change it",
                    first.metadata.provider
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
    }
    versions.push(new);
    // Sorted by semantic version, so "latest" is the highest, not the last registered.
    versions.sort_by_key(|v| semver_of(&v.version));
    let Some(shown) = versions.last() else {
        return Err(Error::Corrupt(format!(
            "plugin `{}` has no version",
            reg.id
        )));
    };
    let info = info(&reg.id, &versions, shown);
    let latest = shown.metadata.clone();
    let versions_json =
        serde_json::to_value(&versions).map_err(|e| Error::Corrupt(e.to_string()))?;
    let metadata_json = serde_json::to_value(&latest).map_err(|e| Error::Corrupt(e.to_string()))?;
    let now = now.fixed_offset();
    let row = plugin::ActiveModel {
        domain_id: Set(domain.into()),
        id: Set(reg.id.clone()),
        kind: Set(latest.kind.as_str().to_owned()),
        provider: Set(latest.provider.clone()),
        name: Set(latest.name.clone()),
        description: Set(Some(latest.description.clone())),
        versions: Set(versions_json),
        metadata: Set(metadata_json),
        created_at: Set(existing.as_ref().map_or(now, |m| m.created_at)),
        updated_at: Set(now),
    };
    let result = if existing.is_some() {
        plugin::Entity::update(row).exec(&txn).await.map(|_| ())
    } else {
        plugin::Entity::insert(row)
            .exec_without_returning(&txn)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(Error::Conflict {
                field: "version",
                detail: format!("plugin `{}` was registered concurrently; retry", reg.id),
            });
        }
        Err(e) => return Err(e.into()),
    }
    txn.commit().await?;
    Ok(info)
}

/// Versions are validated as semantic versions on registration; anything else sorts first.
fn semver_of(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v).ok()
}
