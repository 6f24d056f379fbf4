//! `outbox.claimed_until`: a relay takes a round of rows by setting it, commits, and publishes
//! them with no transaction open, so no row lock is held while it waits for the broker's
//! confirms. Rows claimed by a relay that died are free again once the instant has passed.

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
        .await
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
