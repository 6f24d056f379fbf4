//! Schedules: a collector collects at given hours of the day in a timezone.
//! - `schedules.next_fire_at` is the next instant it fires (null when paused): the scheduler
//!   reads only schedules whose instant has come, through `ix_schedules_state_next_fire_at`,
//!   instead of scanning every schedule on every tick.
//! - `schedule_fires` records each fire's outcome (QUEUED with its job, SKIPPED, MISSED); its
//!   unique (schedule, fire time) makes a fire produce one job however many schedulers run.
//! - Deleting a collector deletes its schedules and their fires (cascade).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_pk_auto, json_binary, text, text_null, timestamp_with_time_zone,
    timestamp_with_time_zone_null, uuid, uuid_null,
};

use crate::util::{index, tenant_table, timestamps, unique};

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            timestamps(
                tenant_table("schedules")
                    .col(uuid("collector_id"))
                    .col(text("name"))
                    .col(text("timezone"))
                    .col(json_binary("hours"))
                    .col(text("state"))
                    .col(timestamp_with_time_zone_null("next_fire_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_schedules_collector")
                            .from("schedules", "collector_id")
                            .to("collectors", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    ),
            )
            .take(),
        )
        .await?;
        m.create_index(unique("schedules", &["collector_id", "name"]))
            .await?;
        m.create_index(index("schedules", &["state", "next_fire_at"]))
            .await?;
        m.create_table(
            Table::create()
                .table("schedule_fires")
                .col(big_pk_auto("id"))
                .col(uuid("schedule_id"))
                .col(timestamp_with_time_zone("fire_time"))
                .col(text("outcome"))
                .col(uuid_null("job_id"))
                .col(text_null("reason"))
                .col(timestamp_with_time_zone("created_at").default(Expr::current_timestamp()))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_schedule_fires_schedule")
                        .from("schedule_fires", "schedule_id")
                        .to("schedules", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .take(),
        )
        .await?;
        m.create_index(unique("schedule_fires", &["schedule_id", "fire_time"]))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("schedule_fires").if_exists().take())
            .await?;
        m.drop_table(Table::drop().table("schedules").if_exists().take())
            .await
    }
}
