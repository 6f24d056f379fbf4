//! The RabbitMQ consumer: manual acknowledgement after the work is committed, an explicit
//! prefetch, bounded concurrency, reconnection with backoff, and a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::SelectAll;
use gleaner_common::broker::{self, Names};
use gleaner_common::model::JobKind;
use gleaner_common::retry::RetryPolicy;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{Context, Disposition, drain, handle};

/// Settings of the consumer loop.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub amqp_url: String,
    pub names: Names,
    pub kinds: Vec<JobKind>,
    pub prefetch: u16,
    /// How long in-flight tasks may run on after a stop is requested before they are released.
    pub grace: Duration,
}

/// Why the consumer stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker closed the consumer")]
    Closed,
}

/// Consumes until `shutdown` is cancelled, then stops taking messages, lets in-flight ones finish
/// within the grace period, releases the rest for redelivery, and returns.
pub async fn run(ctx: Arc<Context>, settings: ConsumerSettings, shutdown: CancellationToken) {
    // Cancelled after the grace period: in-flight tasks hand their work back.
    let abort = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(ctx.settings.concurrency.max(1)));
    let mut inflight = JoinSet::new();
    let backoff = RetryPolicy::forever(Duration::from_millis(200), Duration::from_secs(15));
    let mut delays = backoff.delays();
    while !shutdown.is_cancelled() {
        match session(&ctx, &settings, &shutdown, &abort, &limit, &mut inflight).await {
            Ok(()) => break,
            Err(e) => {
                let d = delays.next().unwrap_or(Duration::from_secs(15));
                warn!(error = %e, retry_in_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX), "consumer lost its connection; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
    drain(&mut inflight, &abort, settings.grace).await;
}

/// One connection's life: returns `Ok` on shutdown, `Err` when the connection broke.
async fn session(
    ctx: &Arc<Context>,
    settings: &ConsumerSettings,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
    limit: &Arc<Semaphore>,
    inflight: &mut JoinSet<()>,
) -> Result<(), Error> {
    let conn = broker::connect(&settings.amqp_url, &format!("gleaner-worker {}", ctx.name)).await?;
    let channel = conn.create_channel().await?;
    broker::declare(&channel, &settings.names).await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut streams: SelectAll<Consumer> = SelectAll::new();
    for kind in &settings.kinds {
        let consumer = channel
            .basic_consume(
                settings.names.queue(*kind).into(),
                format!("{}-{}", ctx.name, kind.as_str()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        streams.push(consumer);
    }
    info!(kinds = ?settings.kinds, prefetch = settings.prefetch, concurrency = ctx.settings.concurrency, "consuming");
    loop {
        // Reap finished handlers so the set does not grow without bound.
        while inflight.try_join_next().is_some() {}
        let delivery = tokio::select! {
            () = shutdown.cancelled() => {
                close(&conn).await;
                return Ok(());
            }
            next = streams.next() => next,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Closed),
        };
        let permit = tokio::select! {
            () = shutdown.cancelled() => {
                // Not started: leave it unacked; closing the channel hands it back.
                close(&conn).await;
                return Ok(());
            }
            p = Arc::clone(limit).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let ctx = Arc::clone(ctx);
        let abort = abort.clone();
        inflight.spawn(async move {
            process(&ctx, delivery, &abort).await;
            drop(permit);
        });
    }
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close(200, "worker stopping".into()).await {
        debug!(error = %e, "closing the connection");
    }
}

async fn process(ctx: &Context, delivery: Delivery, abort: &CancellationToken) {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let span = info_span!("message", message_id = %message_id, routing_key = %delivery.routing_key, redelivered = delivery.redelivered);
    async {
        let received = crate::metrics::Received::new(&delivery.data, !delivery.redelivered);
        let disposition = handle(ctx, &delivery.data, abort).await;
        received.settled(&disposition);
        let result = match &disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
            Disposition::DeadLetter(reason) => {
                error!(reason = %reason, "dead-lettering a message that can never be handled");
                delivery.reject(BasicRejectOptions { requeue: false }).await
            }
            Disposition::Retry(reason) => {
                warn!(reason = %reason, "message will be delivered again");
                // A short pause keeps a failing dependency from being hammered by redeliveries.
                if !abort.is_cancelled() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
        };
        if let Err(e) = result {
            // The channel is gone; the broker redelivers the message to another consumer.
            warn!(error = %e, ?disposition, "could not settle the message");
        }
    }
    .instrument(span)
    .await;
}
