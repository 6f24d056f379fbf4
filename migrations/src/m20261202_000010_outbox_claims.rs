//! `outbox.claimed_until`: a relay takes a round of rows by setting it, commits, and publishes
//! them with no transaction open, so no row lock is held while it waits for the broker's
//! confirms. Rows claimed by a relay that died are free again once the instant has passed.
//!
//! In PostgreSQL, `publish_attempts` now counts the broker's refusals of a row only (five mark
//! it dead); it counted every failed publication before, an unreachable broker's included, so
//! the live rows start again from zero. In SQLite the column counts the in-process
//! dispatcher's deliveries, as before.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::timestamp_with_time_zone_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("outbox")
                .add_column_if_not_exists(timestamp_with_time_zone_null("claimed_until"))
                .take(),
        )
        .await?;
        if m.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared("UPDATE outbox SET publish_attempts = 0 WHERE dead_at IS NULL")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("outbox")
                .drop_column("claimed_until")
                .take(),
        )
        .await
    }
}
