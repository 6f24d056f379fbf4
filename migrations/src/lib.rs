//! Database migrations, in order. They use sea-orm-migration only and never the entities, so
//! an old migration cannot change when an entity does. A released migration is never edited:
//! a schema change is a new file.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_core;
mod m20261123_000002_resource_ingest;
mod m20261123_000003_standalone;
mod m20261123_000004_resource_sources;
mod m20261123_000005_job_changes;
mod m20261123_000006_schedules;
mod m20261123_000007_delivery;
mod m20261201_000008_billing;
mod m20261201_000009_task_lookups;
mod m20261202_000010_outbox_claims;
mod m20261202_000011_secret_key_ids;
mod m20261202_000012_api_keys;
mod m20261202_000013_schedule_intervals;
mod m20261202_000014_metrics;
mod m20261202_000015_catalog_entries;
mod m20261202_000016_packed_rollups;
mod m20261202_000017_cost_usage_type;
mod m20261202_000018_sub_tasks;
mod m20261203_000019_idempotency_keys;
mod m20261203_000020_resource_counts;
mod m20261203_000021_cost_rollups_by_service_and_region;
mod m20261204_000022_outbox_claim;
mod m20261204_000023_cost_partitions;
mod util;

/// Applies Gleaner's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_core::Migration),
            Box::new(m20261123_000002_resource_ingest::Migration),
            Box::new(m20261123_000003_standalone::Migration),
            Box::new(m20261123_000004_resource_sources::Migration),
            Box::new(m20261123_000005_job_changes::Migration),
            Box::new(m20261123_000006_schedules::Migration),
            Box::new(m20261123_000007_delivery::Migration),
            Box::new(m20261201_000008_billing::Migration),
            Box::new(m20261201_000009_task_lookups::Migration),
            Box::new(m20261202_000010_outbox_claims::Migration),
            Box::new(m20261202_000011_secret_key_ids::Migration),
            Box::new(m20261202_000012_api_keys::Migration),
            Box::new(m20261202_000013_schedule_intervals::Migration),
            Box::new(m20261202_000014_metrics::Migration),
            Box::new(m20261202_000015_catalog_entries::Migration),
            Box::new(m20261202_000016_packed_rollups::Migration),
            Box::new(m20261202_000017_cost_usage_type::Migration),
            Box::new(m20261202_000018_sub_tasks::Migration),
            Box::new(m20261203_000019_idempotency_keys::Migration),
            Box::new(m20261203_000020_resource_counts::Migration),
            Box::new(m20261203_000021_cost_rollups_by_service_and_region::Migration),
            Box::new(m20261204_000022_outbox_claim::Migration),
            Box::new(m20261204_000023_cost_partitions::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use sea_orm_migration::sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

    use super::*;

    /// The standalone mode keeps its data in SQLite: every migration must apply there, and
    /// undo cleanly.
    #[tokio::test]
    async fn migrations_apply_and_revert_on_sqlite() {
        let db = Database::connect("sqlite::memory:").await.expect("sqlite");
        Migrator::up(&db, None).await.expect("up");
        let columns = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT name FROM pragma_table_info('resources')",
            ))
            .await
            .expect("columns");
        let names: Vec<String> = columns
            .iter()
            .map(|r| r.try_get_by_index(0).expect("name"))
            .collect();
        assert!(names.iter().any(|n| n == "last_diff"), "{names:?}");
        // The default domain's id is stored as SeaORM binds a UUID: a 16-byte blob.
        let domain = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT typeof(id), length(id) FROM domains WHERE name = 'default'",
            ))
            .await
            .expect("query")
            .expect("the default domain");
        assert_eq!(domain.try_get_by_index::<String>(0).expect("type"), "blob");
        assert_eq!(domain.try_get_by_index::<i64>(1).expect("length"), 16);
        Migrator::down(&db, None).await.expect("down");
        Migrator::up(&db, None).await.expect("up again");
    }
}
