//! The 5-minute rollup packed by hour (PostgreSQL): one row per series and hour holds the
//! hour's twelve 5-minute buckets as arrays (`min`, `max`, `sum`, `count`, slot `i` starting
//! `5 × (i - 1)` minutes after `hour_start`; a slot counting 0 is empty).
//!
//! A row per bucket made the 5-minute rollup a fifth of all rows written on ingest, with an
//! index entry each; packed, it is a sixtieth, and ingest writes about a tenth less (see
//! BENCHMARKS.md). Readers unnest the arrays, and group partial rows as before.
//!
//! The stored buckets are converted both ways, each in one statement (the day partitions are
//! made first, the same days as before): on a large installation, this migration reads and
//! writes the whole 5-minute rollup once. SQLite (the standalone mode) keeps a row per bucket:
//! it has no arrays, and its ingest is not the bottleneck there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// After `{into}` was renamed `{to}`, its day partitions still carry the old name: renames
/// them `{to}_pYYYYMMDD`, and makes the same days' partitions of the new `{into}`.
const MOVE_PARTITIONS: &str = "
DO $$
DECLARE part record; day date;
BEGIN
  FOR part IN SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = to_regclass('{to}') LOOP
    day := to_date(substring(part.name FROM '_p([0-9]{8})$'), 'YYYYMMDD');
    EXECUTE format('ALTER TABLE %I RENAME TO %I', part.name, '{to}_p' || to_char(day, 'YYYYMMDD'));
    EXECUTE format('CREATE TABLE %I PARTITION OF {into} FOR VALUES FROM (%L) TO (%L)',
                   '{into}_p' || to_char(day, 'YYYYMMDD'),
                   day::text || ' 00:00:00+00', (day + 1)::text || ' 00:00:00+00');
  END LOOP;
END $$;
";

const PG_UP: &str = "
ALTER TABLE metric_rollups_5m RENAME TO metric_rollups_5m_rows;
ALTER INDEX ix_metric_rollups_5m_series RENAME TO ix_metric_rollups_5m_rows_series;
CREATE TABLE metric_rollups_5m (
    domain_id uuid NOT NULL,
    resource_id uuid NOT NULL,
    metric text NOT NULL,
    hour_start timestamptz NOT NULL,
    min double precision[] NOT NULL,
    max double precision[] NOT NULL,
    sum double precision[] NOT NULL,
    count bigint[] NOT NULL
) PARTITION BY RANGE (hour_start);
CREATE INDEX ix_metric_rollups_5m_series ON metric_rollups_5m (resource_id, metric, hour_start);
";

/// Each series' hour, with its twelve slots filled from the buckets' grouped rows.
const PG_UP_CONVERT: &str = "
INSERT INTO metric_rollups_5m (domain_id, resource_id, metric, hour_start, min, max, sum, count)
SELECT domain_id, resource_id, metric, to_timestamp(h),
       array_agg(coalesce(mn, 0) ORDER BY s), array_agg(coalesce(mx, 0) ORDER BY s),
       array_agg(coalesce(sm, 0) ORDER BY s), array_agg(coalesce(n, 0) ORDER BY s)
FROM (
    SELECT k.domain_id, k.resource_id, k.metric, k.h, s, r.mn, r.mx, r.sm, r.n
    FROM (SELECT DISTINCT domain_id, resource_id, metric,
                 CAST(extract(epoch FROM bucket) AS bigint) / 3600 * 3600 AS h
          FROM metric_rollups_5m_rows) k
    CROSS JOIN generate_series(0, 11) AS s
    LEFT JOIN (SELECT domain_id, resource_id, metric,
                      CAST(extract(epoch FROM bucket) AS bigint) AS e,
                      min(min) AS mn, max(max) AS mx, sum(sum) AS sm,
                      CAST(sum(count) AS bigint) AS n
               FROM metric_rollups_5m_rows GROUP BY 1, 2, 3, 4) r
      ON r.domain_id = k.domain_id AND r.resource_id = k.resource_id
         AND r.metric = k.metric AND r.e = k.h + s * 300
) x
GROUP BY domain_id, resource_id, metric, h;
DROP TABLE metric_rollups_5m_rows;
";

const PG_DOWN: &str = "
ALTER TABLE metric_rollups_5m RENAME TO metric_rollups_5m_packed;
ALTER INDEX ix_metric_rollups_5m_series RENAME TO ix_metric_rollups_5m_packed_series;
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
";

const PG_DOWN_CONVERT: &str = "
INSERT INTO metric_rollups_5m (domain_id, resource_id, metric, bucket, min, max, sum, count)
SELECT p.domain_id, p.resource_id, p.metric, p.hour_start + (s.i - 1) * interval '5 minutes',
       s.mn, s.mx, s.sm, s.n
FROM metric_rollups_5m_packed p
CROSS JOIN LATERAL unnest(p.min, p.max, p.sum, p.count) WITH ORDINALITY AS s(mn, mx, sm, n, i)
WHERE s.n > 0;
DROP TABLE metric_rollups_5m_packed;
";

fn move_partitions(to: &str, into: &str) -> String {
    MOVE_PARTITIONS.replace("{to}", to).replace("{into}", into)
}

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = m.get_connection();
        db.execute_unprepared(PG_UP).await?;
        db.execute_unprepared(&move_partitions(
            "metric_rollups_5m_rows",
            "metric_rollups_5m",
        ))
        .await?;
        db.execute_unprepared(PG_UP_CONVERT).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = m.get_connection();
        db.execute_unprepared(PG_DOWN).await?;
        db.execute_unprepared(&move_partitions(
            "metric_rollups_5m_packed",
            "metric_rollups_5m",
        ))
        .await?;
        db.execute_unprepared(PG_DOWN_CONVERT).await?;
        Ok(())
    }
}
