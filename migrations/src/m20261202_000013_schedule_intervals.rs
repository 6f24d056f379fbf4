//! `schedules.every_minutes`: a schedule fires every N minutes (1–1440) from local midnight
//! instead of at given hours. Null for an hours schedule; an interval schedule keeps `hours` as
//! an empty array, so the column stays NOT NULL and rows written before this migration need no
//! change.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::integer_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("schedules")
                .add_column_if_not_exists(integer_null("every_minutes"))
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The previous schema cannot say when an interval schedule fires, and its code would
        // read the empty `hours` as a corrupt row: such schedules go, with their fires
        // (cascade), rather than break every listing of their collector.
        m.exec_stmt(
            Query::delete()
                .from_table("schedules")
                .and_where(Expr::col("every_minutes").is_not_null())
                .take(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("schedules")
                .drop_column("every_minutes")
                .take(),
        )
        .await
    }
}
