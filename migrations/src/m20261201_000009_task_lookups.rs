//! Two lookups every task makes, each from one index probe instead of a scan of its job or its
//! collector (measured with `gleaner-bench tasks`, BENCHMARKS.md):
//! - `ix_resources_collector_id_service_account_id`: a successful collection reads what its
//!   collector and account stored before, to find what it did not see. Through the
//!   `(domain_id, collector_id, ...)` index that read went over every resource of the
//!   collector, all accounts together: 1.6 ms per task for 3,000 accounts of one resource.
//! - `ix_job_tasks_job_id_status`: a task's end asks whether its job has tasks left, which
//!   otherwise counted them among all of the job's tasks.

use sea_orm_migration::prelude::*;

use crate::util::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, &[&str]); 2] = [
    ("resources", &["collector_id", "service_account_id"]),
    ("job_tasks", &["job_id", "status"]),
];

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, cols) in INDEXES {
            m.create_index(index(table, cols).if_not_exists().take())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (table, cols) in INDEXES {
            m.drop_index(
                Index::drop()
                    .name(format!("ix_{table}_{}", cols.join("_")))
                    .table(table)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
