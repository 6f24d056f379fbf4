//! Gleaner's scheduler: turns collector schedules into jobs.
//!
//! A skeleton for now: the process starts, connects, and waits for shutdown. Schedules, leader
//! election and catch-up arrive with the scheduler issue.

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown` is cancelled.
pub async fn run(_db: DatabaseConnection, shutdown: CancellationToken) {
    tracing::info!("scheduler started (no schedule support yet)");
    shutdown.cancelled().await;
    tracing::info!("scheduler stopped");
}
