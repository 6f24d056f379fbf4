//! The `outbox` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub domain_id: Uuid,
    pub message_id: Uuid,
    pub routing_key: String,
    pub body: String,
    pub publish_attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTimeWithTimeZone,
    /// Set by the in-process dispatcher when the message can never be handled.
    pub dead_at: Option<DateTimeWithTimeZone>,
    /// Not to be delivered before this instant (a retry waiting out its backoff).
    pub not_before: Option<DateTimeWithTimeZone>,
    /// `work`, or `events` for a job event published to integrations.
    pub destination: String,
    /// A relay is publishing the row until then (`None`: nobody is).
    pub claimed_until: Option<DateTimeWithTimeZone>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
