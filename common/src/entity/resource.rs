//! The `resources` table.

use crate::model::ResourceState;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "resources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub domain_id: Uuid,
    pub provider: String,
    pub resource_type: String,
    pub resource_key: String,
    pub name: Option<String>,
    pub region: Option<String>,
    pub project_id: Option<Uuid>,
    pub service_account_id: Option<Uuid>,
    pub collector_id: Option<Uuid>,
    pub data: Json,
    /// What the last update changed (`{"field": {"old", "new"}}`); null until one does.
    pub last_diff: Option<Json>,
    pub content_hash: i64,
    pub state: ResourceState,
    pub missed_runs: i32,
    /// Several collectors report it: their reports are in `resource_sources`.
    pub merged: bool,
    pub created_job_id: Option<Uuid>,
    pub updated_job_id: Option<Uuid>,
    pub deleted_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
