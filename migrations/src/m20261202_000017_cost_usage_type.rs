//! `usage_type` on cost records: what a charge was for, finer than the service (AWS's
//! `USE1-BoxUsage:t3.micro`). Cloudforet cost data sources report it, and AWS's FOCUS export
//! keeps it as `x_UsageType`. Nullable, so adding it rewrites no row.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: [&str; 2] = ["costs", "cost_staging"];

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .add_column(ColumnDef::new(Alias::new("usage_type")).text().null())
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .drop_column(Alias::new("usage_type"))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
