//! Billing: cost rows, their rollups, and the month windows of billing jobs.
//! - `jobs.window_start`, `jobs.window_end`: the months a billing job covers (first days of
//!   months, both inclusive); null for inventory jobs, and for billing jobs planned with the
//!   default window (the current and the previous month, fixed when the job is planned).
//! - `job_tasks.month`: the month a billing task replaces (first day); null for inventory. A
//!   job has one task per service account and month: the unique index takes the month in,
//!   with null as one value (a plain column would let inventory tasks repeat, nulls being
//!   distinct).
//! - `costs`: one row per cost record, kept per (collector, service account, charge month). A
//!   billing task deletes its month's rows and writes the new ones in one transaction, so a
//!   re-run replaces instead of adding.
//! - `cost_daily`, `cost_monthly`: sums of `costs` per day (and per month) and per every
//!   dimension the summary groups by; `cost_account_monthly` the same per month without service
//!   and region. All are rebuilt for (collector, service account, month) in the load's
//!   transaction; the summary reads the smallest that answers instead of scanning `costs`.
//!
//! - `cost_staging`: rows of SQLite loads not yet committed.
//!
//! Amounts are `numeric` (exact, any precision) in PostgreSQL. SQLite has no exact decimal
//! type: its `numeric` affinity would turn `0.00000080000` into a float, so there they are text.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_pk_auto, date, integer, json_binary_null, text, text_null,
    timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};
use sea_orm_migration::sea_orm::DbBackend;

use crate::util::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// What one billing task replaces: a month of one service account, as one collector reports
/// it (two collectors of the same provider, over different exports, do not overwrite each
/// other).
const REPLACED: [&str; 3] = ["collector_id", "service_account_id", "month"];

/// One task per (job, service account, month).
const TASK_UNIT: &str = "ux_job_tasks_job_id_service_account_id_month";

fn amount(backend: DbBackend, name: &'static str, null: bool) -> ColumnDef {
    let mut c = ColumnDef::new(Alias::new(name));
    if backend == DbBackend::Postgres {
        c.custom(Alias::new("numeric"));
    } else {
        c.text();
    }
    if null {
        c.null();
    } else {
        c.not_null();
    }
    c
}

/// The table of cost rows; a staging table has their attempt instead of an id.
fn cost_rows(backend: DbBackend, name: &'static str, staging: bool) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(name);
    if staging {
        t.col(integer("attempt"));
    } else {
        t.col(big_pk_auto("id"));
    }
    t.col(uuid("domain_id"))
        .col(uuid("collector_id"))
        .col(uuid("service_account_id"))
        .col(uuid("job_id"))
        .col(uuid("task_id"))
        .col(date("month"))
        .col(date("day"))
        .col(timestamp_with_time_zone("charge_period_start"))
        .col(timestamp_with_time_zone_null("charge_period_end"))
        .col(timestamp_with_time_zone_null("billing_period_start"))
        .col(text("provider"))
        .col(text("billing_account_id"))
        .col(text_null("billing_account_name"))
        .col(text_null("sub_account_id"))
        .col(text_null("sub_account_name"))
        .col(text_null("service_name"))
        .col(text_null("service_category"))
        .col(text_null("region_id"))
        .col(text_null("resource_id"))
        .col(text_null("charge_category"))
        .col(text("currency"))
        .col(amount(backend, "billed_cost", false))
        .col(amount(backend, "effective_cost", false))
        .col(amount(backend, "list_cost", false))
        .col(amount(backend, "consumed_quantity", true))
        .col(text_null("consumed_unit"))
        .col(amount(backend, "pricing_quantity", true))
        .col(text_null("pricing_unit"))
        .col(json_binary_null("tags"));
    t.take()
}

fn rollup(backend: DbBackend, name: &'static str, daily: bool) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(name)
        .col(big_pk_auto("id"))
        .col(uuid("domain_id"))
        .col(uuid("collector_id"))
        .col(uuid("service_account_id"))
        .col(date("month"));
    if daily {
        t.col(date("day"));
    }
    t.col(text("provider"))
        .col(text("billing_account_id"))
        .col(text_null("service_name"))
        .col(text_null("region_id"))
        .col(text("currency"))
        .col(amount(backend, "billed_cost", false))
        .col(amount(backend, "effective_cost", false))
        .col(amount(backend, "list_cost", false))
        .col(big_integer("rows"));
    t.take()
}

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let backend = m.get_database_backend();
        for (table, mut column) in [
            (
                "jobs",
                ColumnDef::new(Alias::new("window_start"))
                    .date()
                    .null()
                    .take(),
            ),
            (
                "jobs",
                ColumnDef::new(Alias::new("window_end"))
                    .date()
                    .null()
                    .take(),
            ),
            (
                "job_tasks",
                ColumnDef::new(Alias::new("month")).date().null().take(),
            ),
        ] {
            m.alter_table(
                Table::alter()
                    .table(table)
                    .add_column_if_not_exists(&mut column)
                    .take(),
            )
            .await?;
        }
        let epoch = if backend == DbBackend::Postgres {
            "DATE '1970-01-01'"
        } else {
            "'1970-01-01'"
        };
        let db = m.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ux_job_tasks_job_id_service_account_id")
            .await?;
        db.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {TASK_UNIT} ON job_tasks
                 (job_id, service_account_id, COALESCE(month, {epoch}))"
        ))
        .await?;
        m.create_table(cost_rows(backend, "costs", false)).await?;
        // SQLite's loads stage their rows here, a batch per short transaction, and move them
        // into `costs` at the commit: holding SQLite's single write lock for a whole import
        // would stop every other writer, the task's own heartbeat included.
        m.create_table(cost_rows(backend, "cost_staging", true))
            .await?;
        m.create_index(index("cost_staging", &["task_id", "attempt"]))
            .await?;
        m.create_index(index("costs", &REPLACED)).await?;
        // `GET /v1/costs` pages a range of days in id order.
        m.create_index(index("costs", &["domain_id", "day", "id"]))
            .await?;
        m.create_table(rollup(backend, "cost_daily", true)).await?;
        m.create_table(rollup(backend, "cost_monthly", false))
            .await?;
        // Per account only (service and region left null): what a summary by month, provider,
        // project or account reads, a few rows per account and month.
        m.create_table(rollup(backend, "cost_account_monthly", false))
            .await?;
        for table in ["cost_daily", "cost_monthly", "cost_account_monthly"] {
            m.create_index(index(table, &REPLACED)).await?;
        }
        m.create_index(index("cost_account_monthly", &["domain_id", "month"]))
            .await?;
        // The summary filters every query by domain and a range of days or months.
        m.create_index(index("cost_daily", &["domain_id", "day"]))
            .await?;
        m.create_index(index("cost_monthly", &["domain_id", "month"]))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS {TASK_UNIT}"))
            .await?;
        // The older index allows one task per account and job: billing jobs had one per month.
        db.execute_unprepared("DELETE FROM job_tasks WHERE month IS NOT NULL")
            .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_job_tasks_job_id_service_account_id
                 ON job_tasks (job_id, service_account_id)",
        )
        .await?;
        for table in [
            "cost_account_monthly",
            "cost_monthly",
            "cost_daily",
            "cost_staging",
            "costs",
        ] {
            m.drop_table(Table::drop().table(table).if_exists().take())
                .await?;
        }
        for (table, column) in [
            ("job_tasks", "month"),
            ("jobs", "window_end"),
            ("jobs", "window_start"),
        ] {
            m.alter_table(Table::alter().table(table).drop_column(column).take())
                .await?;
        }
        Ok(())
    }
}
