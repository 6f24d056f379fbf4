//! Service accounts and their encrypted credentials.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{Error, Result, is_unique_violation};
use crate::crypto::Cipher;
use crate::entity::{project, secret, service_account};
use crate::id::{DomainId, ProjectId, SecretId, ServiceAccountId};
use crate::model::{Invalid, Name};
use crate::provider::Provider;

/// A service account as the API shows it: never its credentials.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ServiceAccount {
    pub id: ServiceAccountId,
    pub name: String,
    pub provider: String,
    pub project_id: Option<ProjectId>,
    pub has_credentials: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<service_account::Model> for ServiceAccount {
    fn from(m: service_account::Model) -> Self {
        Self {
            id: m.id.into(),
            name: m.name,
            provider: m.provider,
            project_id: m.project_id.map(Into::into),
            has_credentials: m.secret_id.is_some(),
            created_at: m.created_at.to_utc(),
            updated_at: m.updated_at.to_utc(),
        }
    }
}

/// A validated request to create a service account.
#[derive(Debug)]
pub struct NewServiceAccount {
    pub name: Name,
    pub provider: &'static Provider,
    pub project_id: Option<ProjectId>,
    /// Already checked against the provider's schema.
    pub credentials: Map<String, Value>,
}

/// Creates a service account, sealing its credentials (if any) in the same transaction.
///
/// # Errors
/// [`Error::Invalid`] naming `project_id` when the project does not exist or is missing for a
/// billing provider; [`Error::Conflict`] naming `name` when the provider already has an account of
/// that name.
pub async fn create<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    cipher: &Cipher,
    domain: DomainId,
    new: NewServiceAccount,
) -> Result<ServiceAccount> {
    check_project(db, domain, new.provider, new.project_id).await?;

    let txn = super::begin_write(db).await?;
    let secret_id = seal(&txn, cipher, domain, &new.credentials).await?;
    let now = Utc::now().fixed_offset();
    let row = service_account::ActiveModel {
        id: Set(ServiceAccountId::new().into()),
        domain_id: Set(domain.into()),
        project_id: Set(new.project_id.map(Into::into)),
        provider: Set(new.provider.id.to_owned()),
        name: Set(new.name.to_string()),
        secret_id: Set(secret_id.map(Into::into)),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let created = match service_account::Entity::insert(row)
        .exec_with_returning(&txn)
        .await
    {
        Ok(m) => m,
        Err(e) if is_unique_violation(&e) => {
            return Err(name_taken(new.provider, &new.name.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    txn.commit().await?;
    Ok(created.into())
}

/// The conflict of a name another account of the provider has.
fn name_taken(provider: &Provider, name: &str) -> Error {
    Error::Conflict {
        field: "name",
        detail: format!(
            "a `{}` service account named '{name}' already exists",
            provider.id
        ),
    }
}

/// Refuses a project that does not exist, or none for a billing provider; errors name
/// `project_id`.
async fn check_project(
    db: &impl ConnectionTrait,
    domain: DomainId,
    provider: &Provider,
    project_id: Option<ProjectId>,
) -> Result<()> {
    match project_id {
        Some(pid) => {
            let exists = project::Entity::find_by_id(pid.as_uuid())
                .filter(project::Column::DomainId.eq(domain.as_uuid()))
                .one(db)
                .await?
                .is_some();
            if !exists {
                return Err(Error::Invalid(vec![Invalid::new(
                    "project_id",
                    format!("no project with id {pid}"),
                )]));
            }
        }
        None if provider.billing_only => {
            return Err(Error::Invalid(vec![Invalid::new(
                "project_id",
                format!(
                    "is required: `{}` accounts carry billing data, which is totalled per project",
                    provider.id
                ),
            )]));
        }
        None => {}
    }

    Ok(())
}

/// Seals non-empty credentials into a new secret row; `None` for `{}`.
async fn seal(
    txn: &impl ConnectionTrait,
    cipher: &Cipher,
    domain: DomainId,
    credentials: &Map<String, Value>,
) -> Result<Option<SecretId>> {
    if credentials.is_empty() {
        return Ok(None);
    }
    let id = SecretId::new();
    let plaintext = serde_json::to_vec(credentials).map_err(|e| Error::Corrupt(e.to_string()))?;
    let sealed = cipher.seal(domain, id, &plaintext)?;
    secret::Entity::insert(secret::ActiveModel {
        id: Set(id.into()),
        domain_id: Set(domain.into()),
        nonce: Set(sealed.nonce),
        ciphertext: Set(sealed.ciphertext),
        key_id: Set(sealed.key_id.map(|k| k.to_string())),
        created_at: Set(Utc::now().fixed_offset()),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(Some(id))
}

/// A validated change to a service account; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ServiceAccountUpdate {
    pub name: Option<Name>,
    /// `Some(None)` removes the project (refused for billing providers).
    pub project_id: Option<Option<ProjectId>>,
    /// Replaces the credentials as a whole; already checked against the provider's schema.
    pub credentials: Option<Map<String, Value>>,
}

/// Changes a service account; new credentials replace the old ones (whose secret is deleted)
/// in the same transaction. Tasks already claimed run with what they read.
///
/// # Errors
/// [`Error::NotFound`]; [`Error::Invalid`] naming `project_id`; [`Error::Conflict`] naming
/// `name`.
pub async fn update<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    cipher: &Cipher,
    domain: DomainId,
    id: ServiceAccountId,
    change: ServiceAccountUpdate,
) -> Result<ServiceAccount> {
    let txn = super::begin_write(db).await?;
    // Locked (SQLite's write transaction already is): two updates of one account's credentials
    // must not both replace the same secret.
    let mut current = service_account::Entity::find_by_id(id.as_uuid())
        .filter(service_account::Column::DomainId.eq(domain.as_uuid()));
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        current = current.lock_exclusive();
    }
    let current = current
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("service account", id))?;
    let provider = crate::provider::find(&current.provider).ok_or_else(|| {
        Error::Corrupt(format!(
            "service account {id} has unknown provider `{}`",
            current.provider
        ))
    })?;
    if let Some(project_id) = change.project_id {
        check_project(&txn, domain, provider, project_id).await?;
    }
    let mut row: service_account::ActiveModel = current.clone().into();
    if let Some(name) = &change.name {
        row.name = Set(name.to_string());
    }
    if let Some(project_id) = change.project_id {
        row.project_id = Set(project_id.map(Into::into));
    }
    if let Some(credentials) = &change.credentials {
        row.secret_id = Set(seal(&txn, cipher, domain, credentials)
            .await?
            .map(Into::into));
    }
    row.updated_at = Set(Utc::now().fixed_offset());
    let updated = match service_account::Entity::update(row).exec(&txn).await {
        Ok(m) => m,
        Err(e) if is_unique_violation(&e) => {
            let name = change.name.map(|n| n.to_string()).unwrap_or_default();
            return Err(name_taken(provider, &name));
        }
        Err(e) => return Err(e.into()),
    };
    if let (Some(_), Some(old)) = (&change.credentials, current.secret_id) {
        secret::Entity::delete_by_id(old).exec(&txn).await?;
    }
    txn.commit().await?;
    Ok(updated.into())
}

/// Filters of a service-account listing; each `None` matches every account.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    /// Only the accounts of this provider.
    pub provider: Option<&'a str>,
    /// Only the accounts of this project.
    pub project_id: Option<ProjectId>,
    /// Only these accounts.
    pub ids: Option<&'a [ServiceAccountId]>,
    /// Only these projects' accounts (an API key limited to them).
    pub projects: Option<&'a [ProjectId]>,
}

/// The service accounts of the domain that match `filter`, oldest first.
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    filter: &Filter<'_>,
) -> Result<Vec<ServiceAccount>> {
    let mut q = service_account::Entity::find()
        .filter(service_account::Column::DomainId.eq(domain.as_uuid()));
    if let Some(p) = filter.provider {
        q = q.filter(service_account::Column::Provider.eq(p));
    }
    if let Some(p) = filter.project_id {
        q = q.filter(service_account::Column::ProjectId.eq(p.as_uuid()));
    }
    if let Some(ids) = filter.ids {
        q = q.filter(service_account::Column::Id.is_in(ids.iter().map(ServiceAccountId::as_uuid)));
    }
    if let Some(projects) = filter.projects {
        q = q
            .filter(service_account::Column::ProjectId.is_in(projects.iter().map(|p| p.as_uuid())));
    }
    let rows = q.order_by_asc(service_account::Column::Id).all(db).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// One service account.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such account.
pub async fn get(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ServiceAccountId,
) -> Result<ServiceAccount> {
    find(db, domain, id).await.map(Into::into)
}

async fn find(
    db: &impl ConnectionTrait,
    domain: DomainId,
    id: ServiceAccountId,
) -> Result<service_account::Model> {
    service_account::Entity::find_by_id(id.as_uuid())
        .filter(service_account::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("service account", id))
}

/// The decrypted credentials of an account, for a plugin run. Never log or return them.
///
/// # Errors
/// [`Error::NotFound`] for an unknown account; [`Error::Crypto`] when neither configured key
/// (current or previous) is the one that sealed them.
pub async fn credentials(
    db: &impl ConnectionTrait,
    cipher: &Cipher,
    domain: DomainId,
    id: ServiceAccountId,
) -> Result<Map<String, Value>> {
    // Twice: a secret found missing was most likely replaced by an update between the two
    // reads, and the account, read again, points at the new one.
    let mut found = None;
    for _ in 0..2 {
        let account = find(db, domain, id).await?;
        let Some(secret_id) = account.secret_id else {
            return Ok(Map::new());
        };
        if let Some(row) = secret::Entity::find_by_id(secret_id).one(db).await? {
            found = Some((secret_id, row));
            break;
        }
    }
    let (secret_id, row) = found.ok_or_else(|| {
        Error::Corrupt(format!("service account {id} points at a missing secret"))
    })?;
    let plaintext = cipher.open(
        domain,
        SecretId::from_uuid(secret_id),
        &super::secret::sealed(row)?,
    )?;
    serde_json::from_slice(&plaintext)
        .map_err(|e| Error::Corrupt(format!("secret of service account {id}: {e}")))
}

/// Whether any encrypted credentials are stored, in any domain: a new credentials key would
/// make them unreadable.
///
/// # Errors
/// Database errors only.
pub async fn secrets_stored(db: &impl ConnectionTrait) -> Result<bool> {
    use sea_orm::PaginatorTrait as _;
    Ok(crate::entity::secret::Entity::find().count(db).await? > 0)
}
