//! The `collectors` table.

use crate::model::{CollectorState, UpgradeMode};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "collectors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub plugin_id: String,
    pub version: String,
    pub upgrade_mode: UpgradeMode,
    pub priority: i32,
    pub options: Json,
    pub tags: Json,
    pub state: CollectorState,
    /// A job of this collector unfinished this long after it was accepted fails ("timeout").
    pub job_timeout_seconds: i32,
    pub last_job_id: Option<Uuid>,
    pub last_collected_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
