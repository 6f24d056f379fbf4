//! API keys and the domains they belong to.
//!
//! A key is `glk_` followed by 64 hex characters: 256 random bits. Only its SHA-256 is stored
//! (`hash`), so the database never holds a usable key; a fast hash is enough for a key of that
//! entropy, and lets every request be checked cheaply. The key itself is shown once, when it
//! is created.

use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use super::{Error, Result, is_unique_violation};
use crate::entity::{api_key, domain, project};
use crate::id::{ApiKeyId, DomainId, ProjectId};
use crate::model::{Invalid, Name, Role};

/// What every key starts with, so a key found in a log or a repository is recognizable.
pub const PREFIX: &str = "glk_";

/// Characters of a key shown in listings (the prefix and 8 of its hex characters).
const SHOWN: usize = PREFIX.len() + 8;

/// A key's secret: shown once, when the key is created.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{PREFIX}{}", hex::encode(bytes)))
    }

    /// The key, to hand to its user.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// SHA-256 of a presented key, hex: what `api_keys.hash` holds.
#[must_use]
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether `key` is shaped like a Gleaner key: worth a lookup.
#[must_use]
pub fn well_formed(key: &str) -> bool {
    key.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An API key as the API shows it: never its secret.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub role: Role,
    /// The projects it is limited to; absent: the whole domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_ids: Option<Vec<ProjectId>>,
    /// The start of the key, to tell keys apart.
    #[schema(example = "glk_3f9a1c07")]
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a request last used it, to the minute (a use is noted when the last note is a
    /// minute old).
    pub last_used_at: Option<DateTime<Utc>>,
}

fn projects_of(value: Option<&serde_json::Value>) -> Result<Option<Vec<ProjectId>>> {
    value
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| Error::Corrupt(format!("project_ids of an API key: {e}")))
        })
        .transpose()
}

impl TryFrom<api_key::Model> for ApiKey {
    type Error = Error;

    fn try_from(m: api_key::Model) -> Result<Self> {
        Ok(Self {
            id: m.id.into(),
            project_ids: projects_of(m.project_ids.as_ref())?,
            name: m.name,
            role: m.role,
            prefix: m.prefix,
            created_at: m.created_at.to_utc(),
            expires_at: m.expires_at.map(|t| t.to_utc()),
            revoked_at: m.revoked_at.map(|t| t.to_utc()),
            last_used_at: m.last_used_at.map(|t| t.to_utc()),
        })
    }
}

/// A key to create.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: Name,
    pub role: Role,
    /// Limits the key to these projects of its domain.
    pub project_ids: Option<Vec<ProjectId>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates a key of `domain`: the key as listed, and its secret, which is never shown again.
///
/// # Errors
/// [`Error::Conflict`] naming `name` when the domain has a key of that name;
/// [`Error::Invalid`] naming `project_ids` for a project the domain does not have, or
/// `expires_at` for an instant already past.
pub async fn create(
    db: &impl ConnectionTrait,
    domain: DomainId,
    new: NewKey,
) -> Result<(ApiKey, Secret)> {
    if let Some(projects) = &new.project_ids {
        if projects.is_empty() {
            return Err(Error::Invalid(vec![Invalid::new(
                "project_ids",
                "an empty list would limit the key to nothing: leave it out for the whole domain",
            )]));
        }
        let ids: Vec<uuid::Uuid> = projects.iter().map(|p| p.as_uuid()).collect();
        let found = project::Entity::find()
            .filter(project::Column::DomainId.eq(domain.as_uuid()))
            .filter(project::Column::Id.is_in(ids.clone()))
            .all(db)
            .await?;
        if let Some(missing) = ids.iter().find(|id| !found.iter().any(|p| p.id == **id)) {
            return Err(Error::Invalid(vec![Invalid::new(
                "project_ids",
                format!("project {missing} does not exist"),
            )]));
        }
    }
    let now = Utc::now();
    if new.expires_at.is_some_and(|t| t <= now) {
        return Err(Error::Invalid(vec![Invalid::new(
            "expires_at",
            "must be in the future",
        )]));
    }
    let secret = Secret::generate();
    let projects = new
        .project_ids
        .as_ref()
        .map(|p| serde_json::to_value(p).map_err(|e| Error::Corrupt(e.to_string())))
        .transpose()?;
    let row = api_key::ActiveModel {
        id: Set(ApiKeyId::new().into()),
        domain_id: Set(domain.into()),
        name: Set(new.name.to_string()),
        role: Set(new.role),
        project_ids: Set(projects),
        hash: Set(hash(secret.expose())),
        prefix: Set(secret.expose()[..SHOWN].to_owned()),
        created_at: Set(now.fixed_offset()),
        expires_at: Set(new.expires_at.map(|t| t.fixed_offset())),
        revoked_at: Set(None),
        last_used_at: Set(None),
    };
    match api_key::Entity::insert(row).exec_with_returning(db).await {
        Ok(m) => Ok((m.try_into()?, secret)),
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict {
            field: "name",
            detail: format!("an API key named '{}' already exists", new.name),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The domain's keys, oldest first, revoked ones included.
///
/// # Errors
/// Database errors only.
pub async fn list(db: &impl ConnectionTrait, domain: DomainId) -> Result<Vec<ApiKey>> {
    api_key::Entity::find()
        .filter(api_key::Column::DomainId.eq(domain.as_uuid()))
        .order_by_asc(api_key::Column::CreatedAt)
        .order_by_asc(api_key::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
}

/// Revokes a key: from now on it authenticates nothing (an API process that checked it within
/// the last second may still take it until it checks again). Revoking a revoked key changes
/// nothing.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such key.
pub async fn revoke(db: &impl ConnectionTrait, domain: DomainId, id: ApiKeyId) -> Result<ApiKey> {
    let now = Utc::now().fixed_offset();
    api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(now))
        .filter(api_key::Column::Id.eq(id.as_uuid()))
        .filter(api_key::Column::DomainId.eq(domain.as_uuid()))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    api_key::Entity::find_by_id(id.as_uuid())
        .filter(api_key::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("API key", id))?
        .try_into()
}

/// Who a request comes from: what its key allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key: ApiKeyId,
    pub domain: DomainId,
    pub role: Role,
    /// The projects the key is limited to; `None`: the whole domain.
    pub projects: Option<Vec<ProjectId>>,
}

/// The caller a presented key stands for: `None` when the key is unknown, revoked or expired.
/// Notes the key's use (`last_used_at`, to the minute).
///
/// # Errors
/// Database errors only.
pub async fn authenticate(db: &impl ConnectionTrait, key: &str) -> Result<Option<Caller>> {
    if !well_formed(key) {
        return Ok(None);
    }
    let now = Utc::now().fixed_offset();
    let Some(m) = api_key::Entity::find()
        .filter(api_key::Column::Hash.eq(hash(key)))
        .filter(api_key::Column::RevokedAt.is_null())
        .filter(
            Condition::any()
                .add(api_key::Column::ExpiresAt.is_null())
                .add(api_key::Column::ExpiresAt.gt(now)),
        )
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    // To the minute: a busy key is checked every second by every API process, and each write
    // of the same row waits for the one before.
    let stale = now - chrono::Duration::minutes(1);
    if m.last_used_at.is_none_or(|t| t < stale) {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(m.id))
            .filter(
                Condition::any()
                    .add(api_key::Column::LastUsedAt.is_null())
                    .add(api_key::Column::LastUsedAt.lt(stale)),
            )
            .exec(db)
            .await?;
    }
    Ok(Some(Caller {
        key: m.id.into(),
        domain: m.domain_id.into(),
        role: m.role,
        projects: projects_of(m.project_ids.as_ref())?,
    }))
}

/// The name an operator's first key of a domain gets.
const FIRST_KEY: &str = "admin";

/// Creates a domain with its first key, an admin one: its id and the key's secret.
///
/// # Errors
/// [`Error::Conflict`] naming `name` when a domain of that name exists.
pub async fn create_domain<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    name: &Name,
) -> Result<(DomainId, Secret)> {
    let txn = super::begin_write(db).await?;
    let id = DomainId::from_uuid(uuid::Uuid::now_v7());
    let row = domain::ActiveModel {
        id: Set(id.as_uuid()),
        name: Set(name.to_string()),
        created_at: Set(Utc::now().fixed_offset()),
    };
    if let Err(e) = domain::Entity::insert(row)
        .exec_without_returning(&txn)
        .await
    {
        txn.rollback().await?;
        return Err(if is_unique_violation(&e) {
            Error::Conflict {
                field: "name",
                detail: format!("a domain named '{name}' already exists"),
            }
        } else {
            e.into()
        });
    }
    let (_, secret) = create(&txn, id, admin_key(FIRST_KEY)?).await?;
    txn.commit().await?;
    Ok((id, secret))
}

/// A domain by its name.
///
/// # Errors
/// [`Error::NotFound`] when there is none of that name.
pub async fn find_domain(db: &impl ConnectionTrait, name: &str) -> Result<DomainId> {
    domain::Entity::find()
        .filter(domain::Column::Name.eq(name))
        .one(db)
        .await?
        .map(|d| DomainId::from_uuid(d.id))
        .ok_or_else(|| Error::not_found("domain", name))
}

/// An admin key of no limit named `name`.
fn admin_key(name: &str) -> Result<NewKey> {
    Ok(NewKey {
        name: Name::parse("name", name).map_err(|e| Error::Invalid(vec![e]))?,
        role: Role::Admin,
        project_ids: None,
        expires_at: None,
    })
}

/// Another admin key of a domain, for its operator (a lost key, the default domain's first):
/// named `admin-<n>` after the domain's keys.
///
/// # Errors
/// Database errors only.
pub async fn create_admin_key(db: &impl ConnectionTrait, domain: DomainId) -> Result<Secret> {
    let keys = list(db, domain).await?;
    let name = if keys.iter().any(|k| k.name == FIRST_KEY) {
        format!("{FIRST_KEY}-{}", keys.len() + 1)
    } else {
        FIRST_KEY.to_owned()
    };
    Ok(create(db, domain, admin_key(&name)?).await?.1)
}

/// An admin key for `domain` when it has no key that works (none, or all revoked or expired):
/// for a first start. `None` when it has one.
///
/// # Errors
/// Database errors only.
pub async fn bootstrap(db: &impl ConnectionTrait, domain: DomainId) -> Result<Option<Secret>> {
    let now = Utc::now();
    let working = list(db, domain)
        .await?
        .iter()
        .any(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|t| t > now));
    if working {
        return Ok(None);
    }
    create_admin_key(db, domain).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_recognizable_and_only_its_hash_is_kept() {
        let s = Secret::generate();
        let key = s.expose();
        assert!(key.starts_with("glk_") && key.len() == 68, "{key}");
        assert!(well_formed(key));
        assert_ne!(Secret::generate(), s, "random");
        assert_eq!(hash(key), hash(key));
        assert_eq!(hash(key).len(), 64);
        assert!(!hash(key).contains(&key[PREFIX.len()..]));
        assert_eq!(format!("{s:?}"), "Secret(..)");
        for bad in ["", "glk_", "glk_xyz", &key[1..], &format!("{key}0")] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
