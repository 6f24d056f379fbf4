//! The ingest path of `resources`, as measured by `gleaner-bench ingest` (BENCHMARKS.md):
//! - `last_diff`: what the last update changed. The upsert computes it in its `SET` clause,
//!   the one place that sees the old row and the new one (PostgreSQL 15 cannot return old
//!   values), and hands it to `resource_changes`.
//! - no foreign key from `resources.domain_id`: its check per row cost about a tenth of the
//!   write, and the column is maintained by Gleaner alone.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::json_binary_null;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("resources")
                .add_column_if_not_exists(json_binary_null("last_diff"))
                .take(),
        )
        .await?;
        // SQLite cannot drop a constraint, and enforces foreign keys only when asked to.
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "ALTER TABLE resources DROP CONSTRAINT IF EXISTS fk_resources_domain",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("resources")
                .drop_column("last_diff")
                .take(),
        )
        .await?;
        if m.get_database_backend() == DbBackend::Postgres {
            m.create_foreign_key(
                ForeignKey::create()
                    .name("fk_resources_domain")
                    .from("resources", "domain_id")
                    .to("domains", "id")
                    .on_delete(ForeignKeyAction::Cascade)
                    .take(),
            )
            .await?;
        }
        Ok(())
    }
}
