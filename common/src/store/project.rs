//! Projects.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Error, Result, is_unique_violation};
use crate::entity::project;
use crate::id::{DomainId, ProjectId};
use crate::model::Name;

/// A project as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<project::Model> for Project {
    fn from(m: project::Model) -> Self {
        Self {
            id: m.id.into(),
            name: m.name,
            created_at: m.created_at.to_utc(),
        }
    }
}

/// Creates a project; names are unique per domain.
///
/// # Errors
/// [`Error::Conflict`] naming `name` when the name is taken.
pub async fn create(db: &impl ConnectionTrait, domain: DomainId, name: Name) -> Result<Project> {
    let now = Utc::now().fixed_offset();
    let row = project::ActiveModel {
        id: Set(ProjectId::new().into()),
        domain_id: Set(domain.into()),
        name: Set(name.to_string()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    match project::Entity::insert(row).exec_with_returning(db).await {
        Ok(m) => Ok(m.into()),
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict {
            field: "name",
            detail: format!("a project named '{name}' already exists"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Every project of the domain, oldest first; only `limit`'s when given (an API key limited to
/// projects).
///
/// # Errors
/// Database errors only.
pub async fn list(
    db: &impl ConnectionTrait,
    domain: DomainId,
    limit: Option<&[ProjectId]>,
) -> Result<Vec<Project>> {
    let mut q = project::Entity::find().filter(project::Column::DomainId.eq(domain.as_uuid()));
    if let Some(ids) = limit {
        q = q.filter(project::Column::Id.is_in(ids.iter().map(|p| p.as_uuid())));
    }
    let rows = q.order_by_asc(project::Column::Id).all(db).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// One project.
///
/// # Errors
/// [`Error::NotFound`] when the domain has no such project.
pub async fn get(db: &impl ConnectionTrait, domain: DomainId, id: ProjectId) -> Result<Project> {
    project::Entity::find_by_id(id.as_uuid())
        .filter(project::Column::DomainId.eq(domain.as_uuid()))
        .one(db)
        .await?
        .map(Into::into)
        .ok_or_else(|| Error::not_found("project", id))
}
