//! The `job_tasks` table.

use crate::model::TaskStatus;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "job_tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub domain_id: Uuid,
    pub job_id: Uuid,
    pub service_account_id: Option<Uuid>,
    /// Billing: the month the task replaces (its first day).
    pub month: Option<Date>,
    pub status: TaskStatus,
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTimeWithTimeZone>,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
    pub failed: i64,
    pub error: Option<String>,
    pub stderr: Option<String>,
    /// The attempts before the current one: `[{attempt, worker, error, started_at, ended_at}]`.
    pub previous_attempts: Option<Json>,
    pub started_at: Option<DateTimeWithTimeZone>,
    pub finished_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
    /// A part of an account's collection: the plugin's options of the part.
    pub sub_task: Option<Json>,
    /// The part's place (from 0) among the account's `parts`.
    pub part: Option<i32>,
    pub parts: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
