//! In-process dispatch for the standalone mode: the outbox table is the queue.
//!
//! The distributed relay deletes an outbox row once RabbitMQ has confirmed it, and the broker
//! keeps the message until a worker acknowledges it. Here there is no broker, so the row itself
//! stays until its message has been handled ([`crate::receive`] returned), which gives the same
//! guarantee: a message is removed only after its effect committed, and a process killed at any
//! moment finds every unsettled message still in the outbox when it starts again. Handlers are
//! idempotent, so a message handled twice has one effect.
//!
//! A task's message is settled (its row deleted) once the task's attempt is claimed, as with
//! RabbitMQ: the database owns the task from then on. A task left running by a process that
//! was killed is brought back at the next start ([`gleaner_common::lifecycle::task::recover`]).
//!
//! - Ack: the row is deleted.
//! - Retry: the row stays, with the reason in `last_error`, and is delivered again after a delay
//!   that doubles per attempt ([`RETRY`]).
//! - Every hand-out counts in `publish_attempts`, including one cut short by a crash, so a
//!   message that keeps killing the process is not delivered forever: at [`DELIVERY_LIMIT`] it
//!   is marked dead instead of delivered again.
//! - Dead letter: the row is marked dead (`dead_at`), with the reason in `last_error`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gleaner_common::retry::RetryPolicy;
use gleaner_common::store::outbox::{self, Delivery};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{Context, Received, Settlement, drain, receive, run_claimed};

/// Deliveries of a message before it is marked dead: the same limit as the queues'
/// `x-delivery-limit` in the distributed mode, which also counts every delivery.
pub const DELIVERY_LIMIT: i32 = 10;

/// Delays between the deliveries of a message that asked to be retried: 1 s, doubling, at
/// most a minute.
pub const RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    multiplier: 2.0,
    jitter: 0.0,
    max_attempts: DELIVERY_LIMIT.unsigned_abs(),
};

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
    // The set holds plain ids, valid whatever a panicking holder was doing: poisoning is
    // ignored rather than spread.
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Vec<i64> {
        self.set().iter().copied().collect()
    }

    fn insert(&self, id: i64) {
        self.set().insert(id);
    }

    fn remove(&self, id: i64) {
        self.set().remove(&id);
    }
}

/// A handler's hold on its row and its concurrency permit, given back when dropped, also when
/// the handler panics (its row would otherwise never be delivered again).
struct Release {
    busy: Busy,
    id: i64,
    freed: Arc<Notify>,
    permit: Option<OwnedSemaphorePermit>,
    /// Set when the row stays busy through a retry delay (a timer frees it).
    delayed: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        // The permit first, so the dispatcher finds it free when woken.
        self.permit.take();
        if !self.delayed {
            self.busy.remove(self.id);
        }
        self.freed.notify_one();
    }
}

/// Dispatches outbox rows to handlers until `shutdown`, then stops taking rows, lets in-flight
/// ones finish within the grace period, releases the rest (their rows stay for the next start),
/// and returns.
pub async fn run(ctx: Arc<Context>, settings: DispatchSettings, shutdown: CancellationToken) {
    let abort = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(ctx.settings.tasks_at_once()));
    let busy = Busy::default();
    // Woken when a handler finishes or a retry delay ends.
    let freed = Arc::new(Notify::new());
    let mut inflight = JoinSet::new();
    info!(
        concurrency = ctx.settings.concurrency,
        max_tasks = ctx.settings.tasks_at_once(),
        "dispatching in process"
    );
    let backoff = RetryPolicy::forever(Duration::from_millis(200), Duration::from_secs(10));
    let mut delays = backoff.delays();
    while !shutdown.is_cancelled() {
        while let Some(done) = inflight.try_join_next() {
            if let Err(e) = done {
                error!(error = %e, "a message handler panicked; its message will be delivered again");
            }
        }
        let free = limit.available_permits();
        let wait = if free == 0 {
            None
        } else {
            match outbox::next_deliveries(&ctx.db, &busy.snapshot(), free as u64).await {
                Ok(rows) => {
                    delays = backoff.delays();
                    for row in rows {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        let permit = Arc::clone(&limit)
                            .try_acquire_owned()
                            .expect("no more rows than free permits");
                        busy.insert(row.id);
                        let release = Release {
                            busy: busy.clone(),
                            id: row.id,
                            freed: Arc::clone(&freed),
                            permit: Some(permit),
                            delayed: false,
                        };
                        let (ctx, abort) = (Arc::clone(&ctx), abort.clone());
                        inflight.spawn(async move { deliver(&ctx, row, release, &abort).await });
                    }
                    Some(settings.poll_interval)
                }
                Err(e) => {
                    let d = delays.next().unwrap_or(Duration::from_secs(10));
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
    drain(&mut inflight, &abort, settings.grace).await;
}

/// Counts the delivery, handles the row and settles it.
async fn deliver(
    ctx: &Arc<Context>,
    row: Delivery,
    mut release: Release,
    abort: &CancellationToken,
) {
    let span = info_span!("message", outbox_id = row.id, delivery = row.attempts + 1);
    async {
        if row.event {
            // No broker to announce it on in this mode; the job event stream of the API
            // (`GET /v1/jobs/events`) shows the same changes.
            if let Err(e) = outbox::delete(&ctx.db, &[row.id]).await {
                warn!(error = %e, "could not drop a job event");
            }
            return;
        }
        if row.attempts >= DELIVERY_LIMIT {
            let reason = format!(
                "delivered {} times without being settled (the process stopped or failed each time)",
                row.attempts
            );
            error!(reason = %reason, "delivery limit reached; the message is marked dead");
            crate::metrics::Received::new(&ctx.name, row.body.as_bytes(), false).delivery_limit();
            if let Err(e) = outbox::mark_dead(&ctx.db, row.id, &reason).await {
                warn!(error = %e, "could not mark the message dead");
            }
            return;
        }
        if let Err(e) = outbox::count_delivery(&ctx.db, row.id, 1).await {
            // Not counted, not handled: it is delivered again after the poll interval.
            warn!(error = %e, "could not count the delivery");
            return;
        }
        let received =
            crate::metrics::Received::new(&ctx.name, row.body.as_bytes(), row.attempts == 0);
        let settlement = match receive(ctx, row.body.as_bytes()).await {
            Received::Settle(settlement) => settlement,
            Received::Claimed(claimed) => {
                received.settled(&Settlement::Ack);
                if let Err(e) = outbox::delete(&ctx.db, &[row.id]).await {
                    // Delivered again, it finds the attempt started and is dropped.
                    warn!(error = %e, "could not settle a claimed task's message");
                }
                // Free for the next poll at once; the task keeps its concurrency permit.
                release.busy.remove(row.id);
                run_claimed(ctx, *claimed, abort.clone()).await;
                return;
            }
        };
        received.settled(&settlement);
        let settled = match &settlement {
            Settlement::Ack => outbox::delete(&ctx.db, &[row.id]).await,
            Settlement::DeadLetter(reason) => {
                error!(reason = %reason, "a message that can never be handled is marked dead");
                outbox::mark_dead(&ctx.db, row.id, reason).await
            }
            // Stopping gracefully: the row stays and is delivered at the next start, and this
            // delivery does not count against it.
            Settlement::Retry(_) if abort.is_cancelled() => {
                outbox::count_delivery(&ctx.db, row.id, -1).await
            }
            Settlement::Retry(reason) => {
                let delay = RETRY.delay_for(u32::try_from(row.attempts + 2).unwrap_or(u32::MAX));
                warn!(reason = %reason, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "message will be delivered again");
                // Keep the row busy through the delay, without holding a concurrency permit.
                release.delayed = true;
                let (busy, freed, id) = (release.busy.clone(), Arc::clone(&release.freed), row.id);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    busy.remove(id);
                    freed.notify_one();
                });
                outbox::record_error(&ctx.db, row.id, reason).await
            }
        };
        if let Err(e) = settled {
            // The row stays and is handled again: harmless, handlers are idempotent.
            warn!(error = %e, ?settlement, "could not settle the message");
        } else {
            debug!(?settlement, "message settled");
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        // `delay_for(n)` is the delay before delivery n: after the first failed delivery, 1 s.
        assert_eq!(RETRY.delay_for(2), Duration::from_secs(1));
        assert_eq!(RETRY.delay_for(5), Duration::from_secs(8));
        assert_eq!(RETRY.delay_for(11), Duration::from_secs(60));
    }
}
