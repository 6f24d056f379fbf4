//! Priority merge: when several collectors report the same resource, each one's report is kept
//! in `resource_sources` and the resource shows, field by field, the value of the collector with
//! the lowest priority number (newest on a tie).
//!
//! A resource only one collector reports has no source rows (`merged` false): the bulk ingest
//! path writes it directly, at no extra cost. The first time a second collector reports it, both
//! reports become source rows and `merged` turns true.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    boolean, integer, json_binary, text_null, timestamp_with_time_zone, uuid, uuid_null,
};

use crate::util::index;

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
                .add_column_if_not_exists(boolean("merged").default(false))
                .take(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("resource_sources")
                .if_not_exists()
                .col(uuid("resource_id"))
                .col(uuid("collector_id"))
                .col(uuid("domain_id"))
                .col(uuid_null("service_account_id"))
                .col(uuid_null("project_id"))
                .col(text_null("name"))
                .col(text_null("region"))
                .col(json_binary("data"))
                .col(integer("missed_runs").default(0))
                .col(timestamp_with_time_zone("updated_at").default(Expr::current_timestamp()))
                .primary_key(Index::create().col("resource_id").col("collector_id"))
                .take(),
        )
        .await?;
        m.create_index(index(
            "resource_sources",
            &["collector_id", "service_account_id"],
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("resource_sources").if_exists().take())
            .await?;
        m.alter_table(
            Table::alter()
                .table("resources")
                .drop_column("merged")
                .take(),
        )
        .await
    }
}
