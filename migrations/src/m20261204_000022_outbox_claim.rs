//! The relay's claim of outbox rows as a function that the planner runs through the primary key
//! (PostgreSQL).
//!
//! The outbox is empty most of the time, so its statistics say it is. When a job is planned,
//! thousands of rows arrive at once, and until the table is analyzed again the planner read the
//! whole outbox and sorted it for each claim of 500 rows (`auto_explain`: a sequential scan of
//! 6,000 rows, 1.3 ms a claim, 946 claims in a job of 6,000 small tasks). The claim's ids come
//! in id order from the primary key whatever the statistics say, because the function turns
//! sequential scans off for its statement only.

use sea_orm_migration::prelude::*;

use crate::util::postgres_only;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `claim_until`, `expired_before`, `n`: as `store::outbox::claim_batch`'s `until`, `now` and
/// `limit`. Unqualified names resolve in the
/// caller's schema, like every other statement of Gleaner's.
const PG_UP: &str = "
CREATE FUNCTION gleaner_claim_outbox(claim_until timestamptz, expired_before timestamptz, n bigint)
RETURNS SETOF outbox
LANGUAGE sql
SET enable_seqscan = off
AS $$
    UPDATE outbox SET claimed_until = claim_until WHERE id IN (
        SELECT id FROM outbox WHERE dead_at IS NULL
            AND (claimed_until IS NULL OR claimed_until < expired_before)
        ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED)
    RETURNING *
$$";

const PG_DOWN: &str =
    "DROP FUNCTION IF EXISTS gleaner_claim_outbox(timestamptz, timestamptz, bigint)";

// The trait's lifetimes are late-bound by async_trait; naming them here does not compile.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        postgres_only(m, PG_UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        postgres_only(m, PG_DOWN).await
    }
}
