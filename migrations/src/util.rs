//! Small helpers that keep table definitions readable.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema;

/// A table with a UUID primary key `id` and a `domain_id` pointing at its tenant.
pub fn tenant_table(name: &'static str) -> TableCreateStatement {
    Table::create()
        .table(name)
        .col(schema::pk_uuid("id"))
        .col(schema::uuid("domain_id"))
        .foreign_key(
            ForeignKey::create()
                .name(format!("fk_{name}_domain"))
                .from(name, "domain_id")
                .to("domains", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .take()
}

/// `created_at` and `updated_at`, both set by the database on insert.
pub fn timestamps(t: &mut TableCreateStatement) -> &mut TableCreateStatement {
    t.col(schema::timestamp_with_time_zone("created_at").default(Expr::current_timestamp()))
        .col(schema::timestamp_with_time_zone("updated_at").default(Expr::current_timestamp()))
}

/// An index named after its table and columns.
pub fn index(table: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(format!("ix_{table}_{}", cols.join("_")))
        .table(table);
    for c in cols {
        idx.col(*c);
    }
    idx.take()
}

/// A unique index named after its table and columns.
pub fn unique(table: &'static str, cols: &[&'static str]) -> IndexCreateStatement {
    let mut idx = index(table, cols);
    idx.name(format!("ux_{table}_{}", cols.join("_"))).unique();
    idx
}

/// A counter column starting at zero.
pub fn counter(name: &'static str) -> ColumnDef {
    schema::big_integer(name).default(0).take()
}

/// Runs `sql` in PostgreSQL only: for what SQLite (the standalone mode) does without.
pub async fn postgres_only(m: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if m.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres {
        m.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}
