//! The core schema: tenants, accounts, plugins, collectors, jobs, resources and the outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, binary, integer, json_binary, json_binary_null, text, text_null,
    timestamp_with_time_zone, timestamp_with_time_zone_null, uuid, uuid_null,
};
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::util::{counter, index, tenant_table, timestamps, unique};

/// The default domain's id; the same constant as `gleaner_common::id::DomainId::DEFAULT`.
const DEFAULT_DOMAIN: &str = "00000000-0000-7000-8000-000000000001";

/// Every table, children first, for `down`.
const TABLES: [&str; 11] = [
    "outbox",
    "resource_changes",
    "resources",
    "job_tasks",
    "jobs",
    "collectors",
    "plugins",
    "service_accounts",
    "secrets",
    "projects",
    "domains",
];

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides `SchemaManager`'s lifetime; matching it exactly is required.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("domains")
                .col(sea_orm_migration::schema::pk_uuid("id"))
                .col(text("name"))
                .col(timestamp_with_time_zone("created_at").default(Expr::current_timestamp()))
                .take(),
        )
        .await?;
        m.create_index(unique("domains", &["name"])).await?;
        m.get_connection()
            .execute_unprepared(&format!(
                "INSERT INTO domains (id, name) VALUES ('{DEFAULT_DOMAIN}', 'default')"
            ))
            .await?;

        m.create_table(timestamps(tenant_table("projects").col(text("name"))).take())
            .await?;
        m.create_index(unique("projects", &["domain_id", "name"]))
            .await?;

        m.create_table(
            tenant_table("secrets")
                .col(binary("nonce"))
                .col(binary("ciphertext"))
                .col(timestamp_with_time_zone("created_at").default(Expr::current_timestamp()))
                .take(),
        )
        .await?;

        m.create_table(
            timestamps(
                tenant_table("service_accounts")
                    .col(uuid_null("project_id"))
                    .col(text("provider"))
                    .col(text("name"))
                    .col(uuid_null("secret_id"))
                    .foreign_key(&mut fk(
                        "service_accounts",
                        "project_id",
                        "projects",
                        ForeignKeyAction::Restrict,
                    ))
                    .foreign_key(&mut fk(
                        "service_accounts",
                        "secret_id",
                        "secrets",
                        ForeignKeyAction::SetNull,
                    )),
            )
            .take(),
        )
        .await?;
        m.create_index(unique(
            "service_accounts",
            &["domain_id", "provider", "name"],
        ))
        .await?;
        m.create_index(index("service_accounts", &["project_id"]))
            .await?;

        // Private plugins registered by users; official ones are built into the worker.
        m.create_table(
            timestamps(
                Table::create()
                    .table("plugins")
                    .col(text("id"))
                    .col(uuid("domain_id"))
                    .col(text("kind"))
                    .col(text("provider"))
                    .col(text("name"))
                    .col(text_null("description"))
                    .col(json_binary("versions"))
                    .col(json_binary("metadata"))
                    .primary_key(Index::create().col("domain_id").col("id"))
                    .foreign_key(&mut fk(
                        "plugins",
                        "domain_id",
                        "domains",
                        ForeignKeyAction::Cascade,
                    )),
            )
            .take(),
        )
        .await?;

        m.create_table(
            timestamps(
                tenant_table("collectors")
                    .col(text("name"))
                    .col(text("plugin_id"))
                    .col(text("version"))
                    .col(text("upgrade_mode"))
                    .col(integer("priority"))
                    .col(json_binary("options"))
                    .col(json_binary("tags"))
                    .col(text("state"))
                    .col(uuid_null("last_job_id"))
                    .col(timestamp_with_time_zone_null("last_collected_at")),
            )
            .take(),
        )
        .await?;
        m.create_index(unique("collectors", &["domain_id", "name"]))
            .await?;

        m.create_table(
            timestamps(
                tenant_table("jobs")
                    .col(text("kind"))
                    .col(uuid_null("collector_id"))
                    .col(text("plugin_id"))
                    .col(text("plugin_version"))
                    .col(json_binary("options"))
                    .col(text("trigger"))
                    .col(uuid_null("schedule_id"))
                    .col(timestamp_with_time_zone_null("fire_time"))
                    .col(text("status"))
                    .col(integer("tasks_total").default(0))
                    .col(integer("tasks_done").default(0))
                    .col(integer("tasks_failed").default(0))
                    .col(text_null("error"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("finished_at"))
                    .foreign_key(&mut fk(
                        "jobs",
                        "collector_id",
                        "collectors",
                        ForeignKeyAction::SetNull,
                    )),
            )
            .take(),
        )
        .await?;
        m.create_index(index("jobs", &["domain_id", "collector_id", "id"]))
            .await?;
        m.create_index(index("jobs", &["status"])).await?;

        m.create_table(
            timestamps(
                tenant_table("job_tasks")
                    .col(uuid("job_id"))
                    .col(uuid_null("service_account_id"))
                    .col(text("status"))
                    .col(integer("attempt").default(0))
                    .col(integer("max_attempts"))
                    .col(text_null("lease_owner"))
                    .col(timestamp_with_time_zone_null("lease_expires_at"))
                    .col(counter("created"))
                    .col(counter("updated"))
                    .col(counter("unchanged"))
                    .col(counter("deleted"))
                    .col(counter("failed"))
                    .col(text_null("error"))
                    .col(text_null("stderr"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("finished_at"))
                    .foreign_key(&mut fk(
                        "job_tasks",
                        "job_id",
                        "jobs",
                        ForeignKeyAction::Cascade,
                    )),
            )
            .take(),
        )
        .await?;
        m.create_index(unique("job_tasks", &["job_id", "service_account_id"]))
            .await?;
        m.create_index(index("job_tasks", &["status", "lease_expires_at"]))
            .await?;

        // No foreign keys on the ingest path: each would cost an index probe per row written,
        // and these columns are maintained by Gleaner alone.
        m.create_table(
            timestamps(
                tenant_table("resources")
                    .col(text("provider"))
                    .col(text("resource_type"))
                    .col(text("resource_key"))
                    .col(text_null("name"))
                    .col(text_null("region"))
                    .col(uuid_null("project_id"))
                    .col(uuid_null("service_account_id"))
                    .col(uuid_null("collector_id"))
                    .col(json_binary("data"))
                    .col(big_integer("content_hash"))
                    .col(text("state"))
                    .col(integer("missed_runs").default(0))
                    .col(uuid_null("created_job_id"))
                    .col(uuid_null("updated_job_id"))
                    .col(timestamp_with_time_zone_null("deleted_at")),
            )
            .take(),
        )
        .await?;
        m.create_index(unique(
            "resources",
            &["domain_id", "provider", "resource_type", "resource_key"],
        ))
        .await?;
        m.create_index(index(
            "resources",
            &["domain_id", "collector_id", "resource_type", "id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table("resource_changes")
                .col(sea_orm_migration::schema::big_pk_auto("id"))
                .col(uuid("domain_id"))
                .col(uuid("resource_id"))
                .col(uuid_null("job_id"))
                .col(text("kind"))
                .col(json_binary_null("diff"))
                .col(timestamp_with_time_zone("created_at").default(Expr::current_timestamp()))
                .take(),
        )
        .await?;
        m.create_index(index("resource_changes", &["resource_id", "id"]))
            .await?;
        m.create_index(index("resource_changes", &["job_id"]))
            .await?;

        m.create_table(
            Table::create()
                .table("outbox")
                .col(sea_orm_migration::schema::big_pk_auto("id"))
                .col(uuid("domain_id"))
                .col(uuid("message_id"))
                .col(text("routing_key"))
                .col(text("body"))
                .col(integer("publish_attempts").default(0))
                .col(text_null("last_error"))
                .col(timestamp_with_time_zone("created_at").default(Expr::current_timestamp()))
                .take(),
        )
        .await?;

        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection().execute_unprepared(PG_FUNCTIONS).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS gleaner_jsonb_diff(jsonb, jsonb)")
                .await?;
        }
        for t in TABLES {
            m.drop_table(Table::drop().table(t).if_exists().take())
                .await?;
        }
        Ok(())
    }
}

fn fk(
    from: &'static str,
    col: &'static str,
    to: &'static str,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{from}_{col}"))
        .from(from, col)
        .to(to, "id")
        .on_delete(on_delete)
        .take()
}

/// The field-level diff of two JSON objects, computed where the old row already is:
/// `{"field": {"old": .., "new": ..}}` for each top-level key whose value differs.
const PG_FUNCTIONS: &str = r"
CREATE FUNCTION gleaner_jsonb_diff(old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(jsonb_object_agg(k, jsonb_build_object('old', old -> k, 'new', new -> k)), '{}'::jsonb)
  FROM (SELECT jsonb_object_keys(old) UNION SELECT jsonb_object_keys(new)) AS keys(k)
  WHERE (old -> k) IS DISTINCT FROM (new -> k)
$$;
";
