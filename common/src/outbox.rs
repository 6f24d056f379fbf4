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
use crate::store::{self, outbox};

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

    /// One round: lock a batch, publish it, delete what was confirmed. Returns how many rows
    /// were published.
    ///
    /// # Errors
    /// A database error, or the broker refusing every message of the batch.
    pub async fn publish_once(&self) -> Result<usize, RelayError> {
        let txn = store::begin_write(&self.db)
            .await
            .map_err(store::Error::from)?;
        let batch = outbox::lock_batch(&txn, self.settings.batch_size).await?;
        if batch.is_empty() {
            // Roll back now: a dropped transaction only rolls back when its connection is next
            // used, and until then it holds a lock on `outbox` that blocks migrations.
            txn.rollback().await.map_err(store::Error::from)?;
            return Ok(0);
        }
        let results = self.publisher.publish(&batch).await;
        let mut sent = Vec::with_capacity(batch.len());
        let mut failed = Vec::new();
        let mut first_error = None;
        for (row, result) in batch.iter().zip(results) {
            match result {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    failed.push(row.id);
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        crate::metrics::outbox_publish_failed(failed.len());
        outbox::delete(&txn, &sent).await?;
        if let Some(err) = &first_error {
            outbox::record_failure(&txn, &failed, err).await?;
        }
        txn.commit().await.map_err(store::Error::from)?;
        debug!(
            published = sent.len(),
            failed = failed.len(),
            "outbox round"
        );
        match first_error {
            Some(e) if sent.is_empty() => Err(RelayError::Broker(e)),
            _ => Ok(sent.len()),
        }
    }
}

/// Why a relay round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the broker refused the batch: {0}")]
    Broker(String),
}
