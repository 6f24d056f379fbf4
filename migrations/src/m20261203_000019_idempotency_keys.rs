//! Idempotency keys: what makes a collection asked for twice (an HTTP `collect` retried with
//! its `Idempotency-Key`, a queue request delivered again with its `request_id`) one job.
//!
//! A key is unique per domain. It remembers the request it was first given with (the
//! collector and the month window), so the same key on another request is refused rather
//! than answered with an unrelated job, and the job it produced. Keys older than the retention
//! are deleted by the scheduler's leader and are no longer matched.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{date_null, string, timestamp_with_time_zone, uuid};

use crate::util::{index, tenant_table, unique};

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            tenant_table("idempotency_keys")
                .if_not_exists()
                .col(string("key"))
                .col(uuid("collector_id"))
                .col(date_null("window_start"))
                .col(date_null("window_end"))
                .col(uuid("job_id"))
                .col(timestamp_with_time_zone("created_at"))
                .take(),
        )
        .await?;
        m.create_index(unique("idempotency_keys", &["domain_id", "key"]))
            .await?;
        m.create_index(index("idempotency_keys", &["created_at"]))
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("idempotency_keys").take())
            .await
    }
}
