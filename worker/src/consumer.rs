//! The RabbitMQ consumer: manual acknowledgement once the work a message asks for is in the
//! database, an explicit prefetch, bounded concurrency, reconnection with backoff, and a
//! graceful stop.
//!
//! When a delivery is acknowledged:
//! - `job.requested`: once the job's tasks are planned (committed with their messages);
//! - `task.requested`: once the task's attempt is claimed and its lease committed, before the
//!   task runs: from then on the database owns the task, and its lease, heartbeats and the
//!   reaper bring it back if this worker dies. A task of hours so holds no delivery open, and
//!   RabbitMQ's consumer timeout (which closes a channel holding a delivery unacknowledged past
//!   `consumer_timeout`, 30 minutes by default) never closes the worker's channel;
//! - a delivery that waits for a free task slot (the worker runs `max_tasks` already) is handed
//!   back to its queue after `delivery_hold`, republished for another worker, for the same
//!   reason.
//!
//! Settling a message that was not handled:
//! - one that can never be handled (it does not decode) is published to the dead-letter
//!   exchange with the reason in its `x-gleaner-reason` header, then acknowledged;
//! - one that may succeed later (the database is down) is published again through a delay
//!   queue, after a backoff that grows per retry (`x-gleaner-retries`), then acknowledged; after
//!   [`MESSAGE_RETRIES`] it is dead-lettered with its last reason. A requeue would instead
//!   deliver it again at once and use up the queue's delivery limit within seconds;
//! - when publishing the copy fails, it is requeued (nack), the broker's own safety net: a
//!   message that keeps failing that way is dead-lettered by the delivery limit.
//!
//! A crash between the publish and the ack delivers the message twice, which handlers tolerate.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::SelectAll;
use gleaner_common::broker::{self, Names, PublishError};
use gleaner_common::model::JobKind;
use gleaner_common::retry::RetryPolicy;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{Context, Received, Settlement, drain, receive, run_claimed};

/// Retries of a message whose handling failed transiently before it is dead-lettered: with
/// delays growing from 1 s to a minute, about 15 minutes of a dependency being down.
pub const MESSAGE_RETRIES: u32 = 20;

/// The header counting a message's retries.
const RETRIES_HEADER: &str = "x-gleaner-retries";

/// Delays between a message's retries.
const MESSAGE_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    multiplier: 2.0,
    jitter: 0.3,
    max_attempts: MESSAGE_RETRIES,
};

/// Settings of the consumer loop.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    pub amqp_url: String,
    pub names: Names,
    pub kinds: Vec<JobKind>,
    pub prefetch: u16,
    /// How long in-flight tasks may run on after a stop is requested before they are released.
    pub grace: Duration,
    /// How long a delivery may wait for a free task slot before it is handed back.
    pub hold: Duration,
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
    let limit = Arc::new(Semaphore::new(ctx.settings.tasks_at_once()));
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
    // Retries and dead letters are published on a channel of their own, in confirm mode, so a
    // message is acknowledged only once its copy is safely with the broker.
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
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
    info!(kinds = ?settings.kinds, prefetch = settings.prefetch, concurrency = ctx.settings.concurrency, max_tasks = ctx.settings.tasks_at_once(), "consuming");
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
        // Each delivery waits for its slot on its own clock: at most `hold`, so that none stays
        // unacknowledged long enough for the broker's consumer timeout.
        let (ctx, abort, limit) = (Arc::clone(ctx), abort.clone(), Arc::clone(limit));
        let (publish, names, hold) = (publish.clone(), settings.names.clone(), settings.hold);
        let stop = shutdown.clone();
        inflight.spawn(async move {
            let permit = tokio::select! {
                // Not started: leave it unacked; closing the channel hands it back.
                () = stop.cancelled() => return,
                p = tokio::time::timeout(hold, limit.acquire_owned()) => p,
            };
            match permit {
                Ok(permit) => {
                    let permit = permit.expect("the semaphore is never closed");
                    process(&ctx, delivery, &publish, &names, &abort).await;
                    drop(permit);
                }
                Err(_) => hand_back(&publish, &names, delivery).await,
            }
        });
    }
}

async fn close(conn: &Connection) {
    if let Err(e) = conn.close(200, "worker stopping".into()).await {
        debug!(error = %e, "closing the connection");
    }
}

async fn process(
    ctx: &Context,
    delivery: Delivery,
    publish: &Channel,
    names: &Names,
    abort: &CancellationToken,
) {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let span = info_span!("message", message_id = %message_id, routing_key = %delivery.routing_key, redelivered = delivery.redelivered);
    async {
        let retries = u32::try_from(broker::header_count(&delivery.properties, RETRIES_HEADER))
            .unwrap_or(0);
        // A retry's copy arrives as a first delivery, after its backoff: not queue lag.
        let received =
            crate::metrics::Received::new(
            &ctx.name,
            &delivery.data,
            !delivery.redelivered && retries == 0,
        );
        let settlement = match receive(ctx, &delivery.data).await {
            Received::Settle(settlement) => settlement,
            Received::Claimed(claimed) => {
                received.settled(&Settlement::Ack);
                if let Err(e) = settled(delivery.ack(BasicAckOptions::default()).await) {
                    // The channel is gone: the broker delivers the message again, and that
                    // delivery finds the attempt started and is dropped.
                    warn!(error = %e, "could not acknowledge a claimed task's message");
                }
                run_claimed(ctx, *claimed, abort.clone()).await;
                return;
            }
        };
        let settlement = match settlement {
            Settlement::Retry(reason) if retries >= MESSAGE_RETRIES && !abort.is_cancelled() => {
                Settlement::DeadLetter(format!(
                    "still failing after {retries} retries; last error: {reason}"
                ))
            }
            s => s,
        };
        received.settled(&settlement);
        let result = match &settlement {
            Settlement::Ack => delivery.ack(BasicAckOptions::default()).await,
            Settlement::DeadLetter(reason) => {
                error!(reason = %reason, "dead-lettering a message that can never be handled");
                match broker::dead_letter(publish, names, &delivery, reason, &[]).await {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        warn!(error = %e, "publishing the dead letter failed; rejecting it instead (the broker dead-letters it without the reason)");
                        delivery.reject(BasicRejectOptions { requeue: false }).await
                    }
                }
            }
            // Stopping: hand it back at once for another worker.
            Settlement::Retry(_) if abort.is_cancelled() => requeue(&delivery).await,
            Settlement::Retry(reason) => {
                let delay = MESSAGE_RETRY.jittered_delay_for(retries + 2);
                warn!(reason = %reason, retry = retries + 1, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "message will be delivered again");
                match retry_later(publish, names, &delivery, retries + 1, delay).await {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        warn!(error = %e, "publishing the retry failed; requeueing the message");
                        // A short pause keeps a failing broker from being hammered.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        requeue(&delivery).await
                    }
                }
            }
        };
        if let Err(e) = settled(result) {
            // The channel is gone; the broker redelivers the message to another consumer.
            warn!(error = %e, ?settlement, "could not settle the message");
        }
    }
    .instrument(span)
    .await;
}

/// Gives a delivery that waited `delivery_hold` for a free task slot back to its queue: a copy
/// is published to the work exchange under its routing key (to be taken by whichever worker
/// has room), then the delivery is acknowledged. A requeue would count as a failed delivery
/// against the queue's delivery limit, and dead-letter a message that only waited.
async fn hand_back(publish: &Channel, names: &Names, delivery: Delivery) {
    let confirm = publish
        .basic_publish(
            names.work_exchange().into(),
            delivery.routing_key.clone(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            delivery.properties.clone(),
        )
        .await;
    let settled = match broker::confirmed(confirm, delivery.routing_key.as_str()).await {
        Ok(()) => {
            debug!(routing_key = %delivery.routing_key, "no free task slot in time; the message was handed back");
            delivery.ack(BasicAckOptions::default()).await
        }
        Err(e) => {
            warn!(error = %e, "handing a waiting message back failed; requeueing it");
            requeue(&delivery).await
        }
    };
    if let Err(e) = self::settled(settled) {
        warn!(error = %e, "could not settle a message handed back");
    }
}

/// Whether settling a delivery took: lapin answers `Ok(false)` for a delivery whose channel
/// closed since, which was not settled (the broker delivers it again).
fn settled(result: lapin::Result<bool>) -> Result<(), String> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err("its channel closed".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn requeue(delivery: &Delivery) -> lapin::Result<bool> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
}

/// The delivery's properties with one more header.
fn with_header(delivery: &Delivery, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    delivery.properties.clone().with_headers(headers)
}

/// Publishes the delivery again through a delay queue, counting the retry, and waits for the
/// confirm.
async fn retry_later(
    publish: &Channel,
    names: &Names,
    delivery: &Delivery,
    retries: u32,
    delay: Duration,
) -> Result<(), PublishError> {
    let props = with_header(delivery, RETRIES_HEADER, AMQPValue::LongUInt(retries));
    let confirm = broker::publish_delayed(
        publish,
        names,
        delivery.routing_key.as_str(),
        &delivery.data,
        props,
        delay,
    )
    .await;
    broker::confirmed(confirm, delivery.routing_key.as_str()).await
}
