//! Database migrations, in order. They use sea-orm-migration only and never the entities, so
//! an old migration cannot change when an entity does. A released migration is never edited:
//! a schema change is a new file.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_core;
mod m20261123_000002_resource_ingest;
mod util;

/// Applies Gleaner's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_core::Migration),
            Box::new(m20261123_000002_resource_ingest::Migration),
        ]
    }
}
