//! `catalog_entries`: what collectors report besides resources (Cloudforet plugins'
//! `CloudServiceType`, `Region`, `Namespace` and `Metric` items). One row per domain,
//! provider, kind and key, replaced by each report; the collector that reported it last is
//! kept. They are not resources: nothing counts, merges or sweeps them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    json_binary, text, text_null, timestamp_with_time_zone, uuid, uuid_null,
};

use crate::util::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("catalog_entries")
                .if_not_exists()
                .col(uuid("domain_id"))
                .col(text("provider"))
                .col(text("kind"))
                .col(text("key"))
                .col(text_null("name"))
                .col(json_binary("data"))
                .col(uuid_null("collector_id"))
                .col(timestamp_with_time_zone("updated_at").default(Expr::current_timestamp()))
                .primary_key(
                    Index::create()
                        .col("domain_id")
                        .col("provider")
                        .col("kind")
                        .col("key"),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_catalog_entries_domain")
                        .from("catalog_entries", "domain_id")
                        .to("domains", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .take(),
        )
        .await?;
        m.create_index(index("catalog_entries", &["domain_id", "kind"]))
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("catalog_entries").if_exists().take())
            .await
    }
}
