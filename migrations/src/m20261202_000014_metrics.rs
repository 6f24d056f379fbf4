//! Metric samples, their rollups and the watermarks of their series.
//!
//! - `metric_samples`: `(domain, resource, metric, time, value)`. In PostgreSQL it is
//!   partitioned by day on `time` (native range partitioning): the partitions are made ahead by
//!   the scheduler and by the writers, and a day past the retention is dropped whole, which
//!   costs nothing however many rows it held. No partition exists at first, and none is made
//!   here: `store::metric::maintain` names and makes them.
//! - `metric_rollups_5m`, `metric_rollups_1h`: min, max, sum and count per series and bucket,
//!   added to on ingest, partitioned the same way on `bucket`. A bucket may have several rows
//!   (partial sums of different writes): readers group them.
//! - `metric_watermarks`: the newest sample stored per series, and the collector that stored
//!   it; a collection starts after it.
//!
//! SQLite (the standalone mode) has the same tables unpartitioned, with times as integer
//! milliseconds since the epoch; its retention deletes rows.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PG_UP: &str = "
CREATE TABLE metric_samples (
    domain_id uuid NOT NULL,
    resource_id uuid NOT NULL,
    metric text NOT NULL,
    time timestamptz NOT NULL,
    value double precision NOT NULL
) PARTITION BY RANGE (time);
CREATE INDEX ix_metric_samples_series ON metric_samples (resource_id, metric, time);
CREATE TABLE metric_rollups_5m (
    domain_id uuid NOT NULL,
    resource_id uuid NOT NULL,
    metric text NOT NULL,
    bucket timestamptz NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    count bigint NOT NULL
) PARTITION BY RANGE (bucket);
CREATE INDEX ix_metric_rollups_5m_series ON metric_rollups_5m (resource_id, metric, bucket);
CREATE TABLE metric_rollups_1h (LIKE metric_rollups_5m) PARTITION BY RANGE (bucket);
CREATE INDEX ix_metric_rollups_1h_series ON metric_rollups_1h (resource_id, metric, bucket);
CREATE TABLE metric_watermarks (
    resource_id uuid NOT NULL,
    metric text NOT NULL,
    domain_id uuid NOT NULL,
    collector_id uuid,
    last_time timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resource_id, metric)
);
CREATE INDEX ix_metric_watermarks_collector ON metric_watermarks (collector_id);
";

const PG_DOWN: &str = "
DROP TABLE IF EXISTS metric_watermarks;
DROP TABLE IF EXISTS metric_rollups_1h;
DROP TABLE IF EXISTS metric_rollups_5m;
DROP TABLE IF EXISTS metric_samples;
";

const SQLITE_UP: &str = "
CREATE TABLE metric_samples (
    domain_id blob NOT NULL,
    resource_id blob NOT NULL,
    metric text NOT NULL,
    time integer NOT NULL,
    value real NOT NULL
);
CREATE INDEX ix_metric_samples_series ON metric_samples (resource_id, metric, time);
CREATE INDEX ix_metric_samples_time ON metric_samples (time);
CREATE TABLE metric_rollups_5m (
    domain_id blob NOT NULL,
    resource_id blob NOT NULL,
    metric text NOT NULL,
    bucket integer NOT NULL,
    min real NOT NULL,
    max real NOT NULL,
    sum real NOT NULL,
    count integer NOT NULL
);
CREATE INDEX ix_metric_rollups_5m_series ON metric_rollups_5m (resource_id, metric, bucket);
CREATE INDEX ix_metric_rollups_5m_bucket ON metric_rollups_5m (bucket);
CREATE TABLE metric_rollups_1h (
    domain_id blob NOT NULL,
    resource_id blob NOT NULL,
    metric text NOT NULL,
    bucket integer NOT NULL,
    min real NOT NULL,
    max real NOT NULL,
    sum real NOT NULL,
    count integer NOT NULL
);
CREATE INDEX ix_metric_rollups_1h_series ON metric_rollups_1h (resource_id, metric, bucket);
CREATE INDEX ix_metric_rollups_1h_bucket ON metric_rollups_1h (bucket);
CREATE TABLE metric_watermarks (
    resource_id blob NOT NULL,
    metric text NOT NULL,
    domain_id blob NOT NULL,
    collector_id blob,
    last_time integer NOT NULL,
    updated_at integer NOT NULL,
    PRIMARY KEY (resource_id, metric)
);
CREATE INDEX ix_metric_watermarks_collector ON metric_watermarks (collector_id);
";

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let sql = if m.get_database_backend() == DbBackend::Postgres {
            PG_UP
        } else {
            SQLITE_UP
        };
        m.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The same statements undo both: dropping a partitioned table drops its partitions.
        m.get_connection().execute_unprepared(PG_DOWN).await?;
        Ok(())
    }
}
