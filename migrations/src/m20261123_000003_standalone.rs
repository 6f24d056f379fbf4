//! What the standalone mode (SQLite, in-process dispatch) needs:
//! - `outbox.dead_at`: the in-process dispatcher keeps a message in the outbox until it is
//!   handled, so a message that can never be handled is marked dead there, with its reason in
//!   `last_error`, instead of going to a dead-letter queue.
//! - On SQLite, the default domain's id as the 16-byte blob SeaORM binds a UUID as: migration
//!   000001 wrote it as text, which no bound UUID equals.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::timestamp_with_time_zone_null;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `DomainId::DEFAULT` as text and as an SQLite blob literal.
const DEFAULT_DOMAIN_TEXT: &str = "00000000-0000-7000-8000-000000000001";
const DEFAULT_DOMAIN_BLOB: &str = "X'00000000000070008000000000000001'";

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("outbox")
                .add_column_if_not_exists(timestamp_with_time_zone_null("dead_at"))
                .take(),
        )
        .await?;
        if m.get_database_backend() == DbBackend::Sqlite {
            m.get_connection()
                .execute_unprepared(&format!(
                    "UPDATE domains SET id = {DEFAULT_DOMAIN_BLOB} WHERE id = '{DEFAULT_DOMAIN_TEXT}'"
                ))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Sqlite {
            m.get_connection()
                .execute_unprepared(&format!(
                    "UPDATE domains SET id = '{DEFAULT_DOMAIN_TEXT}' WHERE id = {DEFAULT_DOMAIN_BLOB}"
                ))
                .await?;
        }
        m.alter_table(Table::alter().table("outbox").drop_column("dead_at").take())
            .await
    }
}
