//! The reaper: what keeps a job from staying unfinished forever.
//!
//! - A task whose lease expired (its worker was killed, or lost the database for longer than
//!   the lease) runs again as a new attempt, or fails when it has no attempts left
//!   ([`task::reap`]).
//! - A job past its deadline (the collector's `job_timeout_seconds` after it was accepted) fails
//!   with reason "timeout", and its unfinished tasks with it; their workers see it at their
//!   next heartbeat and stop their plugins.
//! - A running job whose tasks have all ended (its last task's worker died between recording
//!   the outcome and ending the job) ends.
//!
//! Every worker runs a reaper. Each of its writes is fenced (by the task's attempt and status,
//! by the job's status), so two reapers, or a reaper and a worker finishing the same task, never
//! both take effect.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gleaner_common::lifecycle::{job, task};
use gleaner_common::store;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use gleaner_common::outbox::Signal;

/// Rows handled per query: a backlog after a long outage is worked off over several passes.
const BATCH: u64 = 200;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Tasks queued again for a new attempt.
    pub requeued: usize,
    /// Tasks failed because their last attempt's lease expired.
    pub failed: usize,
    /// Jobs failed with reason "timeout".
    pub timed_out: usize,
    /// Jobs ended because all their tasks had.
    pub concluded: usize,
    /// Tasks queued for long with no sign of their message, given a new one.
    pub nudged: usize,
}

impl Reaped {
    fn is_empty(&self) -> bool {
        *self == Reaped::default()
    }
}

/// One pass at `now`. `forgotten_after` is how long a task may stay QUEUED before its message
/// is presumed lost and sent again (longer than any retry's backoff).
///
/// # Errors
/// Database errors; the next pass tries again.
pub async fn pass(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    forgotten_after: Duration,
) -> Result<Reaped, store::Error> {
    let mut reaped = Reaped {
        timed_out: job::expire(db, now, BATCH).await?.len(),
        ..Reaped::default()
    };
    let abandoned = task::reap(db, now, BATCH).await?;
    reaped.requeued = abandoned.requeued;
    reaped.failed = abandoned.failed;
    let forgotten =
        now - chrono::Duration::from_std(forgotten_after).unwrap_or(chrono::Duration::MAX);
    match task::nudge(db, forgotten, BATCH).await {
        Ok(n) => reaped.nudged = n,
        Err(e) => warn!(error = %e, "sending forgotten tasks' messages again failed"),
    }
    // An hour after its job finished, a part's sweep is done or will not come.
    if let Err(e) = task::forget_finished_parts(db, now - chrono::Duration::hours(1)).await {
        warn!(error = %e, "dropping what finished jobs' parts saw failed");
    }
    for id in job::unconcluded(db, BATCH).await? {
        match job::conclude(db, id).await {
            Ok(Some(_)) => reaped.concluded += 1,
            Ok(None) => {}
            Err(e) => warn!(job_id = %id, error = %e, "ending the job failed"),
        }
    }
    Ok(reaped)
}

/// Spawns [`run`] with a worker's settings.
#[must_use]
pub fn spawn(
    db: DatabaseConnection,
    settings: &gleaner_common::config::WorkerSettings,
    signal: Signal,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(
        db,
        settings.reap_interval,
        settings.forgotten_after(),
        signal,
        token,
    ))
}

/// Runs passes every `interval` (with jitter, so the reapers of a fleet spread out) until
/// `token` is cancelled. Wakes `signal` when a pass queued messages.
pub async fn run(
    db: DatabaseConnection,
    interval: Duration,
    forgotten_after: Duration,
    signal: Signal,
    token: CancellationToken,
) {
    loop {
        let jitter = 0.75 + rand::random::<f64>() / 2.0;
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(interval.mul_f64(jitter)) => {}
        }
        match pass(&db, Utc::now(), forgotten_after).await {
            Ok(r) if r.is_empty() => {}
            Ok(r) => {
                info!(
                    requeued = r.requeued,
                    failed = r.failed,
                    timed_out = r.timed_out,
                    concluded = r.concluded,
                    nudged = r.nudged,
                    "reaper pass"
                );
                signal.notify();
            }
            Err(e) => warn!(error = %e, "reaper pass failed; trying again at the next one"),
        }
    }
}
