//! The `jobs` table.

use crate::model::{JobKind, JobStatus, Trigger};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub domain_id: Uuid,
    pub kind: JobKind,
    pub collector_id: Option<Uuid>,
    pub plugin_id: String,
    pub plugin_version: String,
    pub options: Json,
    pub trigger: Trigger,
    pub schedule_id: Option<Uuid>,
    pub fire_time: Option<DateTimeWithTimeZone>,
    pub status: JobStatus,
    pub tasks_total: i32,
    pub tasks_done: i32,
    pub tasks_failed: i32,
    pub error: Option<String>,
    pub started_at: Option<DateTimeWithTimeZone>,
    pub finished_at: Option<DateTimeWithTimeZone>,
    /// When the job fails with reason "timeout" if it has not ended.
    pub deadline_at: Option<DateTimeWithTimeZone>,
    /// Billing: the first and last month the job covers (first days of months).
    pub window_start: Option<Date>,
    pub window_end: Option<Date>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
