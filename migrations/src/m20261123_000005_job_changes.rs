//! `ix_jobs_domain_id_updated_at_id`: `GET /v1/jobs/events` polls for the jobs of a domain whose
//! `(updated_at, id)` moved past its cursor. With this index each poll is one short range scan
//! at the index's right edge, however long the job history grows.

use sea_orm_migration::prelude::*;

use crate::util::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

const COLUMNS: &[&str] = &["domain_id", "updated_at", "id"];

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(index("jobs", COLUMNS).if_not_exists().take())
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(format!("ix_jobs_{}", COLUMNS.join("_")))
                .table("jobs")
                .to_owned(),
        )
        .await
    }
}
