//! Resource counts kept where resources change (PostgreSQL).
//!
//! `GET /v1/resources` shows the `total` of its filters on every page, and a collector's detail
//! its resources by type. Counted from `resources`, both read every matching row: 460 ms a page
//! at 200,000 resources. `resource_counts` holds how many resources there are per (domain,
//! collector, service account, project, type, state), and the API sums its few rows instead.
//!
//! Statement-level triggers on `resources` append one row per key a statement changed, with the
//! signed difference. They run inside the writing statement's transaction, so a reader's
//! snapshot sees the counts of exactly the resources it sees, whatever wrote them (the sinks,
//! the merge, the sweep, a deletion); and appended rows take no lock that two writers could wait
//! on, where an upserted counter would serialize every batch of a collector. The scheduler's
//! leader folds the rows into one per key (`store::resource::fold_counts`).
//!
//! SQLite (the standalone mode, one process and a small estate) counts `resources` directly.
//!
//! Pages of `GET /v1/resources` are keyset pages in id order. Each filter gets an index that
//! reads its rows in that order (the collector's is the primary key, ids being time-ordered,
//! or the existing (collector, type, id) one): without them a rare project, account or type
//! read the whole table through the primary key to fill a page. Resources not ACTIVE are few,
//! so their index is partial.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PG_UP: &str = "
CREATE TABLE resource_counts (
    domain_id uuid NOT NULL,
    collector_id uuid,
    service_account_id uuid,
    project_id uuid,
    resource_type text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
);
CREATE INDEX ix_resource_counts_domain_id_collector_id ON resource_counts (domain_id, collector_id);

CREATE FUNCTION gleaner_count_resources() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO resource_counts
            (domain_id, collector_id, service_account_id, project_id, resource_type, state, n)
        SELECT domain_id, collector_id, service_account_id, project_id, resource_type, state,
               count(*)
        FROM gleaner_new GROUP BY 1, 2, 3, 4, 5, 6;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO resource_counts
            (domain_id, collector_id, service_account_id, project_id, resource_type, state, n)
        SELECT domain_id, collector_id, service_account_id, project_id, resource_type, state,
               sum(n)
        FROM (SELECT domain_id, collector_id, service_account_id, project_id, resource_type,
                     state, 1 AS n FROM gleaner_new
              UNION ALL
              SELECT domain_id, collector_id, service_account_id, project_id, resource_type,
                     state, -1 FROM gleaner_old) d
        GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(n) <> 0;
    ELSE
        INSERT INTO resource_counts
            (domain_id, collector_id, service_account_id, project_id, resource_type, state, n)
        SELECT domain_id, collector_id, service_account_id, project_id, resource_type, state,
               -count(*)
        FROM gleaner_old GROUP BY 1, 2, 3, 4, 5, 6;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION gleaner_uncount_resources() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM resource_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER resources_counted_insert AFTER INSERT ON resources
    REFERENCING NEW TABLE AS gleaner_new
    FOR EACH STATEMENT EXECUTE FUNCTION gleaner_count_resources();
CREATE TRIGGER resources_counted_update AFTER UPDATE ON resources
    REFERENCING OLD TABLE AS gleaner_old NEW TABLE AS gleaner_new
    FOR EACH STATEMENT EXECUTE FUNCTION gleaner_count_resources();
CREATE TRIGGER resources_counted_delete AFTER DELETE ON resources
    REFERENCING OLD TABLE AS gleaner_old
    FOR EACH STATEMENT EXECUTE FUNCTION gleaner_count_resources();
CREATE TRIGGER resources_counted_truncate AFTER TRUNCATE ON resources
    FOR EACH STATEMENT EXECUTE FUNCTION gleaner_uncount_resources();

INSERT INTO resource_counts
    (domain_id, collector_id, service_account_id, project_id, resource_type, state, n)
SELECT domain_id, collector_id, service_account_id, project_id, resource_type, state, count(*)
FROM resources GROUP BY 1, 2, 3, 4, 5, 6;
";

const PG_DOWN: &str = "
DROP TRIGGER resources_counted_truncate ON resources;
DROP TRIGGER resources_counted_delete ON resources;
DROP TRIGGER resources_counted_update ON resources;
DROP TRIGGER resources_counted_insert ON resources;
DROP FUNCTION gleaner_uncount_resources();
DROP FUNCTION gleaner_count_resources();
DROP TABLE resource_counts;
";

/// Both databases take these as written.
const INDEXES: &str = "
CREATE INDEX ix_resources_domain_id_project_id_id ON resources (domain_id, project_id, id);
CREATE INDEX ix_resources_domain_id_service_account_id_id
    ON resources (domain_id, service_account_id, id);
CREATE INDEX ix_resources_domain_id_resource_type_id ON resources (domain_id, resource_type, id);
CREATE INDEX ix_resources_domain_id_state_id ON resources (domain_id, state, id)
    WHERE state <> 'ACTIVE';
";

const DROP_INDEXES: &str = "
DROP INDEX ix_resources_domain_id_state_id;
DROP INDEX ix_resources_domain_id_resource_type_id;
DROP INDEX ix_resources_domain_id_service_account_id_id;
DROP INDEX ix_resources_domain_id_project_id_id;
";

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        // SQLite runs one statement per call.
        for sql in INDEXES.split(';').filter(|s| !s.trim().is_empty()) {
            db.execute_unprepared(sql).await?;
        }
        if m.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(PG_UP).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if m.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(PG_DOWN).await?;
        }
        for sql in DROP_INDEXES.split(';').filter(|s| !s.trim().is_empty()) {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
