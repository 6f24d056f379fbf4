//! What the worker reports to [`gleaner_common::metrics`]: the dispatchers call [`Received`]
//! for each delivery, the runner the `task_*` functions.

use std::time::Duration;

use gleaner_common::envelope::Header;
use gleaner_common::lifecycle::Ended;
use gleaner_common::metrics::{self, DeadLetterReason, Outcome};
use gleaner_common::model::JobKind;

use crate::Settlement;

/// A delivery being handled by worker `worker`, with its header read once on arrival.
pub(crate) struct Received<'a> {
    worker: &'a str,
    header: Option<Header>,
}

impl<'a> Received<'a> {
    /// Reads the delivery's header and, on its first delivery, records how long the message
    /// waited. A redelivery's wait includes its earlier attempts and retry delays, which would
    /// hide the lag of the queue itself.
    pub(crate) fn new(worker: &'a str, body: &[u8], first_delivery: bool) -> Self {
        let header = Header::peek(body);
        if let Some(h) = header.filter(|_| first_delivery) {
            metrics::queue_lag(worker, h.job_kind, h.age());
        }
        Self { worker, header }
    }

    fn kind(&self) -> Option<JobKind> {
        self.header.map(|h| h.job_kind)
    }

    /// Counts how the delivery was settled.
    pub(crate) fn settled(&self, settlement: &Settlement) {
        let outcome = match settlement {
            Settlement::Ack => Outcome::Ack,
            Settlement::Retry(_) => Outcome::Retry,
            Settlement::DeadLetter(_) => {
                // A readable header means the envelope itself was fine: its type, version or
                // contents were refused.
                let reason = if self.header.is_some() {
                    DeadLetterReason::Rejected
                } else {
                    DeadLetterReason::Malformed
                };
                metrics::dead_lettered(self.worker, self.kind(), reason);
                Outcome::DeadLetter
            }
        };
        metrics::message_handled(self.worker, self.kind(), outcome);
    }

    /// Counts a message the standalone dispatcher gave up on after too many deliveries.
    pub(crate) fn delivery_limit(&self) {
        metrics::dead_lettered(self.worker, self.kind(), DeadLetterReason::DeliveryLimit);
        metrics::message_handled(self.worker, self.kind(), Outcome::DeadLetter);
    }
}

/// A claimed task starts; attempts after the first count as retries.
pub(crate) fn task_started(worker: &str, kind: JobKind, attempt: i32) {
    if attempt > 1 {
        metrics::task_retried(worker, kind);
    }
}

/// A task's attempt ended after `elapsed`; counted when the task ended with it (a retry, a
/// hand-back or a stale attempt did not end the task).
pub(crate) fn task_ended(worker: &str, kind: JobKind, ended: &Ended, elapsed: Duration) {
    if let Some(status) = ended.status() {
        metrics::task_finished(worker, kind, status, elapsed);
    }
}
