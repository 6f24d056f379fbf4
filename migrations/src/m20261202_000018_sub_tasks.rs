//! Sub-tasks: a plugin that splits an account's collection (a Cloudforet collector's
//! `Job.get_tasks`) has one task per part, which any worker may run.
//!
//! - `job_tasks.sub_task`: the plugin's options of the part (`task_options`), as it gave them;
//!   `part` (from 0) and `parts` its place among the account's parts. Null for a task that is
//!   a whole account.
//! - `job_tasks.seen_keys`: the key hashes (8 bytes each, big-endian) a part that succeeded
//!   saw; the last part to succeed sweeps what none of them saw, and clears them.
//! - One task per (job, service account, month) becomes one per (job, service account,
//!   month, part).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

const TASK_UNIT: &str = "ux_job_tasks_job_id_service_account_id_month";

/// The unique index of a task's unit, with the part or without.
fn unit_index(backend: DbBackend, with_part: bool) -> String {
    let epoch = if backend == DbBackend::Postgres {
        "DATE '1970-01-01'"
    } else {
        "'1970-01-01'"
    };
    let part = if with_part {
        ", COALESCE(part, -1)"
    } else {
        ""
    };
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {TASK_UNIT} ON job_tasks \
         (job_id, service_account_id, COALESCE(month, {epoch}){part})"
    )
}

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per statement.
        let columns = [
            ColumnDef::new(Alias::new("sub_task"))
                .json_binary()
                .null()
                .to_owned(),
            ColumnDef::new(Alias::new("part"))
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(Alias::new("parts"))
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(Alias::new("seen_keys"))
                .binary()
                .null()
                .to_owned(),
        ];
        for mut column in columns {
            m.alter_table(
                Table::alter()
                    .table(Alias::new("job_tasks"))
                    .add_column(&mut column)
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS {TASK_UNIT}"))
            .await?;
        db.execute_unprepared(&unit_index(m.get_database_backend(), true))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS {TASK_UNIT}"))
            .await?;
        // The older index allows one task per account, job and month: parts beyond the first
        // go.
        db.execute_unprepared("DELETE FROM job_tasks WHERE part > 0")
            .await?;
        db.execute_unprepared(&unit_index(m.get_database_backend(), false))
            .await?;
        for column in ["sub_task", "part", "parts", "seen_keys"] {
            m.alter_table(
                Table::alter()
                    .table(Alias::new("job_tasks"))
                    .drop_column(Alias::new(column))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
