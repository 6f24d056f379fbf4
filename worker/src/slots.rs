//! How many tasks a worker runs at once.
//!
//! Two limits, because tasks come in two sizes:
//! - A big task holds batches of items in memory (the one being written, its encoding, the next
//!   one waiting in the plugin's channel), a month of costs in a transaction, or a plugin
//!   process. `concurrency` bounds how many do at once: each holds one of its *full* slots.
//! - A small task (a service account with a few resources) holds almost nothing, and a worker's
//!   running tasks share their database round trips ([`crate::combine`]): throughput of small
//!   tasks grows with how many are in flight, which `max_tasks` bounds.
//!
//! Nobody knows a task's size before its plugin runs, so every task starts small, in one of the
//! `max_tasks` places the dispatcher hands out, with room for [`SMALL`] items in its plugin's
//! channel. A task whose plugin reports more takes a full slot first, waiting for one if need
//! be (its plugin waits meanwhile, its lease renewed), and only then gets room for a whole
//! batch. Billing tasks and plugins that run a process take theirs before they start.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Items a task may report before it counts as big: the size of a batch the worker writes
/// together with other tasks' (`ResourceSink::combines`).
pub const SMALL: usize = 64;

/// The worker's full slots.
#[derive(Clone, Debug)]
pub struct Slots {
    full: Arc<Semaphore>,
}

/// A task's full slot, given back when dropped.
#[derive(Debug)]
pub struct Full {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    /// `concurrency` full slots (at least one).
    #[must_use]
    pub fn new(concurrency: usize) -> Self {
        Self {
            full: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Waits for a full slot; `None` when `stop` is cancelled first.
    pub async fn full(&self, stop: &CancellationToken) -> Option<Full> {
        if let Ok(permit) = Arc::clone(&self.full).try_acquire_owned() {
            return Some(Full { _permit: permit });
        }
        debug!("every full slot is taken; the task waits for one");
        tokio::select! {
            () = stop.cancelled() => None,
            permit = Arc::clone(&self.full).acquire_owned() => {
                Some(Full {
                    _permit: permit.expect("the semaphore is never closed"),
                })
            }
        }
    }

    /// Full slots free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.full.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_slot_is_waited_for_and_given_back() {
        let slots = Slots::new(1);
        let stop = CancellationToken::new();
        let first = slots.full(&stop).await.expect("a free slot");
        assert_eq!(slots.free(), 0);
        let waiting = tokio::spawn({
            let (slots, stop) = (slots.clone(), stop.clone());
            async move { slots.full(&stop).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second task waits");
        drop(first);
        assert!(waiting.await.unwrap(), "and gets the slot given back");
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let slots = Slots::new(1);
        let stop = CancellationToken::new();
        let _held = slots.full(&stop).await.expect("a free slot");
        let waiting = tokio::spawn({
            let (slots, stop) = (slots.clone(), stop.clone());
            async move { slots.full(&stop).await.is_none() }
        });
        stop.cancel();
        assert!(waiting.await.unwrap());
    }
}
