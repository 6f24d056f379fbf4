//! The `idempotency_keys` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub domain_id: Uuid,
    /// As the client gave it: an HTTP `Idempotency-Key`, or a queue request's `request_id`.
    pub key: String,
    /// The request it was first given with.
    pub collector_id: Uuid,
    pub window_start: Option<Date>,
    pub window_end: Option<Date>,
    /// The job that request produced.
    pub job_id: Uuid,
    pub created_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
