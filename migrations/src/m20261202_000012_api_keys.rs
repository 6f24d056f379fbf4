//! Who may call the API: API keys, each of one domain, with a role and optionally the projects
//! it is limited to; and the audit log of every change made through the API.
//!
//! A key's secret is never stored: `hash` is its SHA-256 (keys are 256 random bits, so a fast
//! hash is as safe as a slow one and lets every request be checked cheaply). `prefix` is the
//! start of the key, shown in listings so a user can tell keys apart.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, integer, json_binary_null, string, string_null, text, text_null,
    timestamp_with_time_zone, timestamp_with_time_zone_null, uuid, uuid_null,
};

use crate::util::{index, tenant_table, unique};

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            tenant_table("api_keys")
                .if_not_exists()
                .col(string("name"))
                .col(string("role"))
                .col(json_binary_null("project_ids"))
                .col(string("hash"))
                .col(string("prefix"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone_null("expires_at"))
                .col(timestamp_with_time_zone_null("revoked_at"))
                .col(timestamp_with_time_zone_null("last_used_at"))
                .take(),
        )
        .await?;
        m.create_index(unique("api_keys", &["hash"])).await?;
        m.create_index(unique("api_keys", &["domain_id", "name"]))
            .await?;
        m.create_table(
            Table::create()
                .table("audit_log")
                .if_not_exists()
                .col(big_integer("id").auto_increment().primary_key().take())
                .col(uuid("domain_id"))
                .col(uuid_null("api_key_id"))
                .col(string("method"))
                .col(text("route"))
                .col(text_null("target_id"))
                .col(integer("status"))
                .col(string_null("outcome"))
                .col(timestamp_with_time_zone("at"))
                .take(),
        )
        .await?;
        m.create_index(index("audit_log", &["domain_id", "id"]))
            .await?;
        m.create_index(index("audit_log", &["domain_id", "target_id", "id"]))
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("audit_log").take())
            .await?;
        m.drop_table(Table::drop().table("api_keys").take()).await
    }
}
