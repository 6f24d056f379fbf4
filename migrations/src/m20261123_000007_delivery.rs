//! What delivery guarantees need:
//! - `collectors.job_timeout_seconds`: a job of the collector still unfinished this long after
//!   it was accepted fails with reason "timeout" (default two hours);
//! - `jobs.deadline_at`: that instant, fixed when the job is accepted, so a later change of the
//!   collector's timeout does not move the deadline of jobs already running;
//! - `job_tasks.previous_attempts`: the attempts before the current one, with their errors, so a
//!   task that succeeded on its third attempt shows why the first two failed;
//! - `outbox.not_before`: a message to be delivered later (a task's retry after a backoff);
//! - `outbox.destination`: `work` for the work exchange, `events` for the job events published
//!   to integrations;
//! - an index for the reaper, which looks for jobs past their deadline (the one on task leases
//!   came with migration 000001).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{integer, json_binary_null, string, timestamp_with_time_zone_null};

use crate::util::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Two hours: long enough for a large estate, short enough that a stuck job is noticed the
/// same day.
const DEFAULT_TIMEOUT_SECONDS: i32 = 7200;

const JOB_DEADLINE: &[&str] = &["status", "deadline_at"];

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            (
                "collectors",
                integer("job_timeout_seconds")
                    .default(DEFAULT_TIMEOUT_SECONDS)
                    .take(),
            ),
            ("jobs", timestamp_with_time_zone_null("deadline_at")),
            ("job_tasks", json_binary_null("previous_attempts")),
            ("outbox", timestamp_with_time_zone_null("not_before")),
            ("outbox", string("destination").default("work").take()),
        ];
        for (table, mut column) in columns {
            m.alter_table(
                Table::alter()
                    .table(table)
                    .add_column_if_not_exists(&mut column)
                    .take(),
            )
            .await?;
        }
        m.create_index(index("jobs", JOB_DEADLINE).if_not_exists().take())
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(format!("ix_jobs_{}", JOB_DEADLINE.join("_")))
                .table("jobs")
                .to_owned(),
        )
        .await?;
        for (table, column) in [
            ("outbox", "destination"),
            ("outbox", "not_before"),
            ("job_tasks", "previous_attempts"),
            ("jobs", "deadline_at"),
            ("collectors", "job_timeout_seconds"),
        ] {
            m.alter_table(Table::alter().table(table).drop_column(column).take())
                .await?;
        }
        Ok(())
    }
}
