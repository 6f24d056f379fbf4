//! The outbox relay: publishes rows of the `outbox` table and deletes each row only after the
//! broker confirmed its message. A crash between the confirm and the delete publishes the
//! message again, which consumers tolerate (every handler is idempotent); the reverse, a row
//! deleted but never published, cannot happen.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::Publisher;
use crate::config::OutboxSettings;
use crate::retry::RetryPolicy;
use crate::store;
use crate::store::outbox::{self, Pending};

/// Wakes the relays of this process when a transaction has written outbox rows.
#[derive(Clone, Debug, Default)]
pub struct Signal(Arc<Notify>);

impl Signal {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after committing a transaction that wrote outbox rows.
    pub fn notify(&self) {
        self.0.notify_one();
    }

    /// Waits for the next [`Signal::notify`] (one stored if nobody was waiting).
    pub async fn notified(&self) {
        self.0.notified().await;
    }
}

/// Moves outbox rows to the broker.
pub struct Relay {
    db: DatabaseConnection,
    publisher: Arc<dyn Publisher>,
    signal: Signal,
    settings: OutboxSettings,
}

impl Relay {
    #[must_use]
    pub fn new(
        db: DatabaseConnection,
        publisher: Arc<dyn Publisher>,
        signal: Signal,
        settings: OutboxSettings,
    ) -> Self {
        Self {
            db,
            publisher,
            signal,
            settings,
        }
    }

    /// Publishes until `token` is cancelled: at once when signalled, otherwise every poll
    /// interval, backing off while the broker or database is down.
    pub async fn run(self, token: CancellationToken) {
        let backoff = RetryPolicy::forever(Duration::from_millis(200), Duration::from_secs(10));
        let mut delays = backoff.delays();
        loop {
            let wait = match self.publish_once().await {
                Ok(n) if n as u64 >= self.settings.batch_size => {
                    delays = backoff.delays();
                    continue;
                }
                Ok(_) => {
                    delays = backoff.delays();
                    self.settings.poll_interval
                }
                Err(e) => {
                    let d = delays.next().unwrap_or(Duration::from_secs(10));
                    warn!(error = %e, retry_in_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX), "outbox relay failed");
                    d
                }
            };
            tokio::select! {
                () = token.cancelled() => break,
                () = self.signal.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: claim a batch, publish it, delete what the broker confirmed. Returns how many
    /// rows were published.
    ///
    /// No transaction is open while the broker is waited for: the batch is claimed for a while
    /// (a relay that dies leaves its rows to another one after that), published, its confirms
    /// awaited together, and the claim settled in one short statement each for what was sent,
    /// refused and not delivered. A row the broker refused before is published alone, after the
    /// others: a row that makes the broker close the channel then fails by itself, and after
    /// [`outbox::REFUSALS_BEFORE_DEAD`] refusals it is marked dead with the reason, so it never
    /// holds up the rows behind it.
    ///
    /// # Errors
    /// A database error, or the broker taking none of the batch.
    pub async fn publish_once(&self) -> Result<usize, RelayError> {
        let now = chrono::Utc::now();
        // To the microsecond, as PostgreSQL keeps it: the round's settlements match its claim.
        let until = chrono::DurationRound::duration_trunc(
            now + chrono::Duration::from_std(CLAIM).unwrap_or(chrono::Duration::MAX),
            chrono::Duration::microseconds(1),
        )
        .map_err(|e| RelayError::Broker(format!("a claim's instant: {e}")))?;
        let batch = outbox::claim_batch(&self.db, self.settings.batch_size, now, until).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let (suspects, fresh): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|r| r.refusals > 0);
        // One deadline for the round, suspects included: a round never outlasts its claim.
        let deadline = tokio::time::Instant::now() + crate::broker::CONFIRM_TIMEOUT;
        let mut results = self.publisher.publish(&fresh, deadline).await;
        for row in &suspects {
            let alone = self
                .publisher
                .publish(std::slice::from_ref(row), deadline)
                .await;
            results.extend(alone);
        }
        let (mut sent, mut refused, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
        let (mut refusal, mut failure) = (None, None);
        for (row, result) in fresh.iter().chain(&suspects).zip(results) {
            match result {
                Ok(()) => sent.push(row.id),
                Err(e) if e.is_refusal() => {
                    warn!(outbox_id = row.id, routing_key = %row.routing_key, refusals = row.refusals + 1, error = %e, "the broker refused a message");
                    refused.push(row.id);
                    refusal.get_or_insert(e.to_string());
                }
                Err(e) => {
                    unreachable.push(row.id);
                    failure.get_or_insert(e.to_string());
                }
            }
        }
        crate::metrics::outbox_publish_failed(refused.len() + unreachable.len());
        outbox::sent(&self.db, &sent, until).await?;
        if let Some(e) = &refusal {
            outbox::refused(&self.db, &refused, until, e).await?;
        }
        if let Some(e) = &failure {
            outbox::unreachable(&self.db, &unreachable, until, e).await?;
        }
        debug!(
            published = sent.len(),
            refused = refused.len(),
            unreachable = unreachable.len(),
            "outbox round"
        );
        match failure.or(refusal) {
            Some(e) if sent.is_empty() => Err(RelayError::Broker(e)),
            _ => Ok(sent.len()),
        }
    }
}

/// How long a relay holds the rows of a round: well past the round's one deadline for its
/// confirms ([`crate::broker::CONFIRM_TIMEOUT`]), after which another relay may publish them.
const CLAIM: Duration = Duration::from_secs(300);

/// Why a relay round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the broker refused the batch: {0}")]
    Broker(String),
}
