//! In-process dispatch for the standalone mode: the outbox table is the queue.
//!
//! The distributed relay deletes an outbox row once RabbitMQ has confirmed it, and the broker
//! keeps the message until a worker acknowledges it. Here there is no broker, so the row itself
//! stays until its message has been handled ([`crate::handle`] returned), which gives the same
//! guarantee: a message is removed only after its effect committed, and a process killed at any
//! moment finds every unfinished message still in the outbox when it starts again. Handlers are
//! idempotent, so a message handled twice has one effect.
//!
//! - Ack: the row is deleted.
//! - Retry: the row stays, counted in `publish_attempts`, and is delivered again after a delay
//!   that doubles per attempt; after [`DELIVERY_LIMIT`] attempts it is marked dead.
//! - Dead letter: the row is marked dead (`dead_at`), with the reason in `last_error`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gleaner_common::store::outbox::{self, Delivery};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{Context, Disposition, handle};

/// Deliveries of a message before it is marked dead: the same limit as the queues'
/// `x-delivery-limit` in the distributed mode.
pub const DELIVERY_LIMIT: i32 = 10;

/// Settings of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// How often the outbox is read when nothing signalled new rows.
    pub poll_interval: Duration,
    /// How long in-flight tasks may run on after a stop is requested before they are released.
    pub grace: Duration,
}

/// Rows being handled or waiting for their retry delay: not to be fetched again meanwhile.
#[derive(Clone, Default)]
struct Busy(Arc<Mutex<HashSet<i64>>>);

impl Busy {
    fn snapshot(&self) -> Vec<i64> {
        self.0
            .lock()
            .expect("never poisoned")
            .iter()
            .copied()
            .collect()
    }

    fn insert(&self, id: i64) {
        self.0.lock().expect("never poisoned").insert(id);
    }

    fn remove(&self, id: i64) {
        self.0.lock().expect("never poisoned").remove(&id);
    }
}

/// Dispatches outbox rows to handlers until `shutdown`, then stops taking rows, lets in-flight
/// ones finish within the grace period, releases the rest (their rows stay for the next start),
/// and returns.
pub async fn run(ctx: Arc<Context>, settings: DispatchSettings, shutdown: CancellationToken) {
    let abort = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(ctx.settings.concurrency.max(1)));
    let busy = Busy::default();
    // Woken when a handler finishes or a retry delay ends.
    let freed = Arc::new(Notify::new());
    let mut inflight = JoinSet::new();
    info!(
        concurrency = ctx.settings.concurrency,
        "dispatching in process"
    );
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        while inflight.try_join_next().is_some() {}
        let free = limit.available_permits();
        let wait = if free == 0 {
            None
        } else {
            match outbox::next_deliveries(&ctx.db, &busy.snapshot(), free as u64).await {
                Ok(rows) => {
                    failures = 0;
                    for row in rows {
                        let permit = Arc::clone(&limit)
                            .try_acquire_owned()
                            .expect("no more rows than free permits");
                        busy.insert(row.id);
                        let (ctx, busy, freed, abort) = (
                            Arc::clone(&ctx),
                            busy.clone(),
                            Arc::clone(&freed),
                            abort.clone(),
                        );
                        inflight.spawn(async move {
                            deliver(&ctx, row, &busy, &freed, &abort).await;
                            drop(permit);
                            freed.notify_one();
                        });
                    }
                    Some(settings.poll_interval)
                }
                Err(e) => {
                    failures += 1;
                    let d = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                    warn!(error = %e, retry_in_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX), "reading the outbox failed");
                    Some(d)
                }
            }
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = ctx.signal.notified() => {}
            () = freed.notified() => {}
            () = sleep => {}
        }
    }
    if !inflight.is_empty() {
        info!(
            messages = inflight.len(),
            grace_ms = u64::try_from(settings.grace.as_millis()).unwrap_or(u64::MAX),
            "waiting for in-flight messages"
        );
        let all_done = async { while inflight.join_next().await.is_some() {} };
        if tokio::time::timeout(settings.grace, all_done)
            .await
            .is_err()
        {
            warn!(
                messages = inflight.len(),
                "grace period over; releasing in-flight tasks"
            );
            abort.cancel();
            while inflight.join_next().await.is_some() {}
        }
    }
}

/// Handles one row and settles it.
async fn deliver(
    ctx: &Arc<Context>,
    row: Delivery,
    busy: &Busy,
    freed: &Arc<Notify>,
    abort: &CancellationToken,
) {
    let span = info_span!("message", outbox_id = row.id, attempt = row.attempts + 1);
    async {
        let disposition = handle(ctx, row.body.as_bytes(), abort).await;
        let settled = match &disposition {
            Disposition::Ack => outbox::delete(&ctx.db, &[row.id]).await,
            Disposition::DeadLetter(reason) => {
                error!(reason = %reason, "a message that can never be handled is marked dead");
                outbox::mark_dead(&ctx.db, row.id, reason).await
            }
            // Stopping: the row stays as it is and is delivered at the next start.
            Disposition::Retry(_) if abort.is_cancelled() => Ok(()),
            Disposition::Retry(reason) if row.attempts + 1 >= DELIVERY_LIMIT => {
                error!(reason = %reason, "delivery limit reached; the message is marked dead");
                outbox::mark_dead(
                    &ctx.db,
                    row.id,
                    &format!("{DELIVERY_LIMIT} deliveries failed; last: {reason}"),
                )
                .await
            }
            Disposition::Retry(reason) => {
                let delay = retry_delay(row.attempts);
                warn!(reason = %reason, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "message will be delivered again");
                let recorded = outbox::record_failure(&ctx.db, &[row.id], reason).await;
                // Keep the row busy through the delay, without holding a concurrency permit.
                let (busy, freed, id) = (busy.clone(), Arc::clone(freed), row.id);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    busy.remove(id);
                    freed.notify_one();
                });
                if let Err(e) = recorded {
                    warn!(error = %e, "recording the failed delivery");
                }
                return;
            }
        };
        if let Err(e) = settled {
            // The row stays and is handled again: harmless, handlers are idempotent.
            warn!(error = %e, ?disposition, "could not settle the message");
        } else {
            debug!(?disposition, "message settled");
        }
        busy.remove(row.id);
    }
    .instrument(span)
    .await;
}

/// 1 s, doubling per failed delivery, at most a minute.
fn retry_delay(attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 6)).unwrap_or(6);
    Duration::from_secs(1 << exp).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(9), Duration::from_secs(60));
    }
}
