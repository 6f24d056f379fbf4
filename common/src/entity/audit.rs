//! The `audit_log` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub domain_id: Uuid,
    pub api_key_id: Option<Uuid>,
    pub method: String,
    /// The route's template, e.g. `/v1/collectors/{id}`.
    pub route: String,
    pub target_id: Option<String>,
    pub status: i32,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    pub at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
