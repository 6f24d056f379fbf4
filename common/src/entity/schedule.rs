//! The `schedules` table.

use crate::model::ScheduleState;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "schedules")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub domain_id: Uuid,
    pub collector_id: Uuid,
    pub name: String,
    pub timezone: String,
    /// A JSON array of hours 0–23; empty for an interval schedule.
    pub hours: Json,
    /// Fires every this many minutes (1–1440) from local midnight; null for an hours schedule.
    pub every_minutes: Option<i32>,
    pub state: ScheduleState,
    /// The next instant it fires; null while paused.
    pub next_fire_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
