//! The `resource_changes` table.

use crate::model::ChangeKind;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "resource_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub domain_id: Uuid,
    pub resource_id: Uuid,
    pub job_id: Option<Uuid>,
    pub kind: ChangeKind,
    pub diff: Option<Json>,
    pub created_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
