//! `secrets.key_id`: the id of the key that sealed each secret (16 hex characters), so that the
//! key can be rotated: processes open a secret with the key it names, and
//! `gleaner rotate-secret-key` finds the secrets still under the previous key.
//!
//! Existing rows are left without one: naming their key needs the key. They are opened by
//! trying the configured keys, and rotation fills their id in.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::text_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("secrets")
                .add_column_if_not_exists(text_null("key_id"))
                .take(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table("secrets").drop_column("key_id").take())
            .await
    }
}
