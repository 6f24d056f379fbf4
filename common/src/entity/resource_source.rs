//! The `resource_sources` table: one collector's report of a resource several collectors report.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "resource_sources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub collector_id: Uuid,
    pub domain_id: Uuid,
    pub service_account_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub name: Option<String>,
    pub region: Option<String>,
    pub data: Json,
    pub missed_runs: i32,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
