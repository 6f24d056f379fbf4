//! Requests to collect through RabbitMQ: what integrations that speak AMQP rather than HTTP
//! publish, and `gleaner api` consumes.
//!
//! An integration publishes to the exchange `<prefix>.requests` with routing key `collect`:
//!
//! ```json
//! {"request_id": "nightly-2026-12-03", "collector_name": "aws-inventory"}
//! {"request_id": "...", "collector_id": "0190...", "window": {"start_month": "2026-01"}}
//! ```
//!
//! with its API key in the message header `authorization` (`Bearer <key>`, or the key alone),
//! and, for an answer, `reply_to` (and a `correlation_id`, echoed back).
//!
//! Each request is sent to the API's own routes, in process: `GET /v1/collectors?name=` for a
//! name, then `POST /v1/collectors/{id}/collect` with the request id as its
//! `Idempotency-Key`. So a request is authorized, rate-limited, audited and validated exactly
//! like the HTTP call, and the same `request_id` twice (a publisher's retry, a redelivery after
//! a crash) gives the same job.
//!
//! How a request ends:
//! - accepted: the reply `{request_id, job_id, status, replayed}` (`application/json`, header
//!   `status` 202); the delivery is acknowledged after the reply is published;
//! - refused for good (a malformed message, an unknown collector, a bad or insufficient key, a
//!   disabled collector, any other 4xx): the message is published to the dead-letter exchange
//!   with its reason in `x-gleaner-reason`, and the reply is the API's problem
//!   (`application/problem+json`, header `status`) with the `request_id`;
//! - failing for now (the database down, the key over its rate, any 5xx): retried here with a
//!   growing delay for up to [`RETRY_FOR`] while the delivery is held, then handed back to the
//!   queue; on the delivery before the queue's limit ([`broker::DELIVERY_LIMIT`]), dead-lettered
//!   here with the last reason, so that the broker never dead-letters it with its key;
//! - a `reply_to` replies may not go to ([`reply_to`]): refused, dead-lettered, not replied to.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::IntoResponse as _;
use futures::StreamExt as _;
use gleaner_common::broker::{self, Names};
use gleaner_common::model::{IdempotencyKey, Invalid};
use gleaner_common::retry::RetryPolicy;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::collector::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use crate::problem::{ApiError, Code};

/// The message header holding the API key.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// The reply's header holding the HTTP status the request got.
pub const STATUS_HEADER: &str = "status";

/// How the intake runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub amqp_url: String,
    pub names: Names,
    /// Requests handled at once, and the consumer's prefetch.
    pub concurrency: u16,
    /// Queues replies may go to besides direct reply-to and server-named ones ([`reply_to`]).
    pub reply_queues: Vec<String>,
    /// How long requests in flight may finish after a stop is asked for; the rest go back to
    /// the queue.
    pub grace: Duration,
}

/// Retries of a request that failed for now, while its delivery is held: from half a second
/// growing to 30 s, for at most [`RETRY_FOR`].
const RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
    multiplier: 2.0,
    jitter: 0.3,
    max_attempts: u32::MAX,
};

/// How long a delivery is held while its request is retried: well inside RabbitMQ's consumer
/// timeout (30 minutes by default), even with a last attempt waiting on a database that does
/// not answer.
const RETRY_FOR: Duration = Duration::from_secs(10 * 60);

/// The header a quorum queue counts a message's earlier deliveries in.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// A request to collect, as published.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectMessage {
    request_id: String,
    collector_id: Option<String>,
    collector_name: Option<String>,
    /// The body of the HTTP `collect`: `{start_month?, end_month?}` of a billing backfill.
    window: Option<Value>,
}

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    /// 202: the job (new, or the one this request id produced before).
    Accepted { body: Value, replayed: bool },
    /// Can never succeed as sent: dead-lettered, and answered with the problem.
    Refused { status: StatusCode, problem: Value },
    /// May succeed later; `after` is what the API's `Retry-After` asked.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// Why a connection's session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker closed the consumer")]
    Closed,
}

/// Consumes `<prefix>.requests.collect` until `shutdown`, sending each request to `router`
/// (the API's, with its keys and rules); reconnects with backoff when the broker goes away.
pub async fn run(router: Router, settings: Settings, shutdown: CancellationToken) {
    let mut inflight = JoinSet::new();
    let backoff = RetryPolicy::forever(Duration::from_millis(200), Duration::from_secs(15));
    let mut delays = backoff.delays();
    while !shutdown.is_cancelled() {
        // Requests of a lost connection stop retrying: the broker delivers them again.
        let lost = shutdown.child_token();
        match session(&router, &settings, &shutdown, &lost, &mut inflight).await {
            Ok(()) => break,
            Err(e) => {
                lost.cancel();
                let d = delays.next().unwrap_or(Duration::from_secs(15));
                warn!(error = %e, retry_in_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX), "the request intake lost its connection; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
    // The session that stopped gave its requests their grace before closing its connection;
    // what is left belongs to a lost connection, whose deliveries the broker has taken back.
    inflight.abort_all();
}

/// One connection's life: `Ok` on shutdown, `Err` when the connection broke.
async fn session(
    router: &Router,
    settings: &Settings,
    shutdown: &CancellationToken,
    lost: &CancellationToken,
    inflight: &mut JoinSet<()>,
) -> Result<(), SessionError> {
    let conn = broker::connect(&settings.amqp_url, "gleaner-api requests").await?;
    let channel = conn.create_channel().await?;
    broker::declare(&channel, &settings.names).await?;
    // Replies and dead letters go out on a channel in confirm mode: a request is acknowledged
    // only once what it produced is with the broker.
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_qos(settings.concurrency.max(1), BasicQosOptions::default())
        .await?;
    let tag = format!("gleaner-api-{}", std::process::id());
    let mut consumer = channel
        .basic_consume(
            settings.names.collect_requests_queue().into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue = %settings.names.collect_requests_queue(), concurrency = settings.concurrency, "taking requests to collect");
    loop {
        while inflight.try_join_next().is_some() {}
        let delivery = tokio::select! {
            () = shutdown.cancelled() => {
                // No new deliveries; those in flight may finish (their channel stays open for
                // the grace).
                let cancel = BasicCancelOptions::default();
                if let Err(e) = channel.basic_cancel(tag.as_str().into(), cancel).await {
                    debug!(error = %e, "cancelling the request consumer");
                }
                let _ = tokio::time::timeout(settings.grace, async {
                    while inflight.join_next().await.is_some() {}
                })
                .await;
                if let Err(e) = conn.close(200, "api stopping".into()).await {
                    debug!(error = %e, "closing the request intake's connection");
                }
                return Ok(());
            }
            next = consumer.next() => next,
        };
        let delivery = match delivery {
            Some(d) => d?,
            None => return Err(SessionError::Closed),
        };
        // The broker closes a channel over a publish it refuses: without it, nothing could be
        // replied to or dead-lettered.
        if !publish.status().connected() {
            return Err(SessionError::Closed);
        }
        let (router, publish) = (router.clone(), publish.clone());
        let settings = settings.clone();
        let stop = lost.clone();
        inflight.spawn(async move {
            settle(&router, &publish, &settings, delivery, &stop).await;
        });
    }
}

/// Handles one delivery to its end: replied to and acknowledged, dead-lettered, or handed
/// back.
async fn settle(
    router: &Router,
    publish: &Channel,
    settings: &Settings,
    delivery: Delivery,
    stop: &CancellationToken,
) {
    let correlation = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(ToString::to_string);
    let span = info_span!("request", request_id = tracing::field::Empty, correlation_id = ?correlation, job_id = tracing::field::Empty, redelivered = delivery.redelivered);
    async {
        let key = authorization(&delivery.properties);
        let parsed = parse(&delivery.data).and_then(|m| {
            reply_to(
                &delivery.properties,
                &settings.names,
                &settings.reply_queues,
            )
            .map(|()| m)
        });
        // Only an id that passed the checks is echoed: it is at most 255 visible characters.
        let request_id = match &parsed {
            Ok(m) => Some(m.request_id.clone()),
            Err(_) => request_id_of(&delivery.data),
        };
        if let Some(id) = &request_id {
            tracing::Span::current().record("request_id", id.as_str());
        }
        let outcome = match parsed {
            Ok(m) => match with_retries(router, &m, key.as_deref(), stop).await {
                Ok(outcome) => outcome,
                Err(reason) => {
                    give_up(publish, &settings.names, &delivery, &reason, stop).await;
                    return;
                }
            },
            Err(e) => refusal(e).await,
        };
        match outcome {
            Outcome::Accepted { mut body, replayed } => {
                if let Some(job) = body.get("job_id").and_then(Value::as_str) {
                    tracing::Span::current().record("job_id", job);
                }
                body["request_id"] = json!(request_id);
                body["replayed"] = json!(replayed);
                let outcome = if replayed { "replayed" } else { "accepted" };
                metrics::counter!(gleaner_common::metrics::REQUESTS, "outcome" => outcome)
                    .increment(1);
                info!(replayed, "request accepted");
                reply(
                    publish,
                    &delivery,
                    StatusCode::ACCEPTED,
                    "application/json",
                    &body,
                    request_id.as_deref(),
                )
                .await;
                ack(&delivery).await;
            }
            Outcome::Refused {
                status,
                mut problem,
            } => {
                let reason = format!(
                    "{} {}: {}",
                    status.as_u16(),
                    problem["title"].as_str().unwrap_or("refused"),
                    problem["detail"].as_str().unwrap_or_default()
                );
                warn!(reason = %reason, "request refused; dead-lettering it");
                metrics::counter!(gleaner_common::metrics::REQUESTS, "outcome" => "refused")
                    .increment(1);
                if !dead_lettered(publish, &settings.names, &delivery, &reason).await {
                    return;
                }
                if request_id.is_some() {
                    problem["request_id"] = json!(request_id);
                }
                // A reply_to refused is not replied to.
                if !problem["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|f| f["field"] == "reply_to"))
                {
                    reply(
                        publish,
                        &delivery,
                        status,
                        crate::problem::CONTENT_TYPE,
                        &problem,
                        request_id.as_deref(),
                    )
                    .await;
                }
                ack(&delivery).await;
            }
            Outcome::Retry { .. } => unreachable!("retries end in the loop"),
        }
    }
    .instrument(span)
    .await;
}

/// Dead-letters the request with `reason`, without its key (operators read the dead-letter
/// queue), and waits for the confirm; `false`, with the delivery handed back after a pause, when
/// that failed.
async fn dead_lettered(
    publish: &Channel,
    names: &Names,
    delivery: &Delivery,
    reason: &str,
) -> bool {
    match broker::dead_letter(publish, names, delivery, reason, &[AUTHORIZATION_HEADER]).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "could not dead-letter a request; handing it back");
            // A short pause keeps a failing broker from being hammered.
            tokio::time::sleep(Duration::from_secs(1)).await;
            requeue(delivery).await;
            false
        }
    }
}

/// A request that still fails for now after [`RETRY_FOR`], or whose connection or process is
/// going: handed back to its queue; or, on its last delivery before the queue's limit (when the
/// broker would dead-letter it with its key), dead-lettered here with `reason` and without it.
async fn give_up(
    publish: &Channel,
    names: &Names,
    delivery: &Delivery,
    reason: &str,
    stop: &CancellationToken,
) {
    let deliveries = broker::header_count(&delivery.properties, DELIVERY_COUNT) + 1;
    if deliveries + 1 >= u64::try_from(broker::DELIVERY_LIMIT).unwrap_or(u64::MAX) {
        let reason = format!("still failing after {deliveries} deliveries; last: {reason}");
        warn!(reason = %reason, "dead-lettering a request at the queue's delivery limit");
        metrics::counter!(gleaner_common::metrics::REQUESTS, "outcome" => "refused").increment(1);
        if dead_lettered(publish, names, delivery, &reason).await {
            ack(delivery).await;
        }
        return;
    }
    if !stop.is_cancelled() {
        warn!(reason = %reason, deliveries, "a request still fails; handing it back to its queue");
    }
    metrics::counter!(gleaner_common::metrics::REQUESTS, "outcome" => "requeued").increment(1);
    requeue(delivery).await;
}

async fn requeue(delivery: &Delivery) {
    let nack = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.nack(nack).await {
        warn!(error = %e, "could not hand a request back; the broker redelivers it");
    }
}

/// Sends the request until it is accepted or refused; `Err` with the last reason when it still
/// failed for now after [`RETRY_FOR`], or when its connection or the process is going.
async fn with_retries(
    router: &Router,
    m: &CollectMessage,
    key: Option<&str>,
    stop: &CancellationToken,
) -> Result<Outcome, String> {
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        let outcome = handle(router, m, key).await;
        let Outcome::Retry { reason, after } = outcome else {
            return Ok(outcome);
        };
        attempt += 1;
        let delay = RETRY
            .jittered_delay_for(attempt)
            .max(after.unwrap_or_default());
        if stop.is_cancelled() || started.elapsed() + delay > RETRY_FOR {
            return Err(reason);
        }
        debug!(reason = %reason, attempt, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "a request failed for now; retrying");
        tokio::select! {
            () = stop.cancelled() => return Err(reason),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Checks the request's `reply_to`: RabbitMQ's direct reply-to, a server-named queue
/// (`amq.gen-…`, which only the broker names), or a queue the operator allows in `allowed`;
/// never one of Gleaner's own (a request could otherwise make the API publish into a work
/// queue).
fn reply_to(props: &BasicProperties, names: &Names, allowed: &[String]) -> Result<(), ApiError> {
    let Some(queue) = props.reply_to().as_ref().map(ShortString::as_str) else {
        return Ok(());
    };
    let own = queue.starts_with(&format!("{}.", names.prefix()));
    let fine = queue == "amq.rabbitmq.reply-to"
        || queue.starts_with("amq.rabbitmq.reply-to.")
        || queue.starts_with("amq.gen-")
        || allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => queue.starts_with(prefix),
            None => queue == a,
        });
    if fine && !own {
        return Ok(());
    }
    Err(ApiError::invalid(vec![Invalid::new(
        "reply_to",
        format!(
            "replies do not go to `{queue}`: use amq.rabbitmq.reply-to, a server-named queue, \
             or a queue GLEANER_API__REQUESTS__REPLY_QUEUES allows"
        ),
    )]))
}

/// The message's API key: its `authorization` header, with or without `Bearer `.
fn authorization(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let value = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(AUTHORIZATION_HEADER))
        .map(|(_, v)| v)?;
    let raw = match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        _ => return None,
    };
    let raw = raw.trim();
    let key = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .unwrap_or(raw)
        .trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// The message, checked as far as it can be without the API.
fn parse(data: &[u8]) -> Result<CollectMessage, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let m: CollectMessage = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let detail = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        ApiError::new(
            Code::MalformedBody,
            format!("the request is not a JSON request to collect: {detail}"),
        )
    })?;
    let mut errors = Vec::new();
    if let Err(e) = IdempotencyKey::parse("request_id", &m.request_id) {
        errors.push(e);
    }
    match (&m.collector_id, &m.collector_name) {
        (Some(_), Some(_)) => errors.push(Invalid::new(
            "collector_name",
            "give collector_id or collector_name, not both",
        )),
        (None, None) => errors.push(Invalid::new(
            "collector_id",
            "collector_id or collector_name is required",
        )),
        _ => {}
    }
    if let Some(w) = &m.window
        && !w.is_object()
    {
        errors.push(Invalid::new(
            "window",
            "must be an object: {\"start_month\": \"YYYY-MM\", \"end_month\": \"YYYY-MM\"}",
        ));
    }
    if errors.is_empty() {
        Ok(m)
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// The `request_id` of a message that did not parse as a whole, for its reply.
fn request_id_of(data: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let raw = v.get("request_id")?.as_str()?;
    IdempotencyKey::parse("request_id", raw)
        .ok()
        .map(|k| k.as_str().to_owned())
}

/// Sends the request to the API: the collector's id from its name if need be, then `collect`.
async fn handle(router: &Router, m: &CollectMessage, key: Option<&str>) -> Outcome {
    let id = match (&m.collector_id, &m.collector_name) {
        (Some(id), _) => id.clone(),
        (None, Some(name)) => {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("name", name)
                .finish();
            let (status, headers, body) = call(
                router,
                Method::GET,
                &format!("/v1/collectors?{query}"),
                key,
                None,
                None,
            )
            .await;
            if status != StatusCode::OK {
                return outcome_of(status, &headers, body);
            }
            match body["items"][0]["id"].as_str() {
                Some(id) => id.to_owned(),
                None => {
                    return refusal(ApiError::new(
                        Code::NotFound,
                        format!("no collector is named '{name}'"),
                    ))
                    .await;
                }
            }
        }
        (None, None) => unreachable!("parse requires one"),
    };
    // An id that is not one is the API's to refuse, with its own words.
    let path = format!(
        "/v1/collectors/{}/collect",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    );
    let (status, headers, body) = call(
        router,
        Method::POST,
        &path,
        key,
        Some(&m.request_id),
        m.window.as_ref(),
    )
    .await;
    outcome_of(status, &headers, body)
}

/// What an answer of the API means for the request.
fn outcome_of(status: StatusCode, headers: &axum::http::HeaderMap, body: Value) -> Outcome {
    if status.is_success() {
        return Outcome::Accepted {
            replayed: headers.contains_key(IDEMPOTENT_REPLAYED),
            body,
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        let after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        return Outcome::Retry {
            reason: format!(
                "{}: {}",
                status.as_u16(),
                body["detail"].as_str().unwrap_or_default()
            ),
            after,
        };
    }
    Outcome::Refused {
        status,
        problem: body,
    }
}

/// A refusal of the intake's own, in the API's problem format.
async fn refusal(e: ApiError) -> Outcome {
    let response = e.into_response();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    Outcome::Refused {
        status,
        problem: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// One request to the API's router; its status, headers and JSON body.
async fn call(
    router: &Router,
    method: Method,
    path: &str,
    key: Option<&str>,
    idempotency_key: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if let Some(k) = idempotency_key {
        req = req.header(IDEMPOTENCY_KEY, k);
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let req = match req.body(body) {
        Ok(r) => r,
        // A key or request id that cannot be a header value: refused like a malformed one.
        Err(e) => {
            let problem = ApiError::new(
                Code::InvalidInput,
                format!("the request cannot be sent: {e}"),
            );
            let response = problem.into_response();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            return (
                status,
                axum::http::HeaderMap::new(),
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            );
        }
    };
    let response = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

/// Publishes the answer to the request's `reply_to`, if it gave one. A reply that cannot be
/// delivered (the integration's queue is gone) is dropped: the job exists either way.
async fn reply(
    publish: &Channel,
    delivery: &Delivery,
    status: StatusCode,
    content_type: &str,
    body: &Value,
    request_id: Option<&str>,
) {
    let Some(reply_to) = delivery.properties.reply_to().as_ref() else {
        return;
    };
    let correlation = delivery
        .properties
        .correlation_id()
        .clone()
        .or_else(|| request_id.and_then(|id| ShortString::try_new(id).ok()));
    let mut headers = FieldTable::default();
    headers.insert(
        STATUS_HEADER.into(),
        AMQPValue::LongInt(i32::from(status.as_u16())),
    );
    let mut props = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_headers(headers);
    if let Some(c) = correlation {
        props = props.with_correlation_id(c);
    }
    let confirm = publish
        .basic_publish(
            "".into(),
            reply_to.clone(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            props,
        )
        .await;
    if let Err(e) = broker::confirmed(confirm, reply_to.as_str()).await {
        warn!(error = %e, reply_to = %reply_to, "could not publish a reply");
    }
}

async fn ack(delivery: &Delivery) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        // The channel closed since: the broker delivers it again, and the same request id gives
        // the same job.
        Ok(false) => warn!("could not acknowledge a request: its channel closed"),
        Err(e) => warn!(error = %e, "could not acknowledge a request"),
    }
}

/// For tests of what this module keeps to itself.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_with_or_without_bearer() {
        for raw in ["Bearer gk_abc", "gk_abc", "  bearer gk_abc "] {
            let mut h = FieldTable::default();
            h.insert("Authorization".into(), AMQPValue::LongString(raw.into()));
            let props = BasicProperties::default().with_headers(h);
            assert_eq!(authorization(&props).as_deref(), Some("gk_abc"), "{raw}");
        }
        assert_eq!(authorization(&BasicProperties::default()), None);
    }

    #[test]
    fn replies_go_to_reply_queues_and_those_allowed_never_to_gleaners_own() {
        let names = Names::new("gleaner");
        let allowed = vec![
            "replies.*".to_owned(),
            "billing-bot".to_owned(),
            "gleaner.*".to_owned(),
        ];
        let check = |queue: Option<&str>| {
            let mut props = BasicProperties::default();
            if let Some(q) = queue {
                props = props.with_reply_to(q.into());
            }
            reply_to(&props, &names, &allowed).is_ok()
        };
        for fine in [
            None,
            Some("amq.rabbitmq.reply-to"),
            Some("amq.rabbitmq.reply-to.g1h2AA.abc"),
            Some("amq.gen-JzTY20BRgKO-HjmUJj0wLg"),
            Some("replies.ci"),
            Some("billing-bot"),
        ] {
            assert!(check(fine), "{fine:?}");
        }
        // Gleaner's own queues even when a pattern would allow them; anything unlisted.
        for refused in [
            "gleaner.inventory",
            "gleaner.requests.collect",
            "billing-bot-2",
            "other",
            "amq.direct",
        ] {
            assert!(!check(Some(refused)), "{refused}");
        }
    }

    #[test]
    fn the_delivery_count_is_read_from_the_quorum_queue_header() {
        let mut h = FieldTable::default();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        let props = BasicProperties::default().with_headers(h);
        assert_eq!(broker::header_count(&props, DELIVERY_COUNT), 3);
        assert_eq!(
            broker::header_count(&BasicProperties::default(), DELIVERY_COUNT),
            0
        );
    }

    #[test]
    fn a_message_names_one_collector_and_a_valid_request_id() {
        let ok = parse(br#"{"request_id":"r-1","collector_name":"aws"}"#).expect("valid");
        assert_eq!(ok.collector_name.as_deref(), Some("aws"));
        for bad in [
            &br#"{"request_id":"r-1"}"#[..],
            br#"{"request_id":"r-1","collector_id":"x","collector_name":"y"}"#,
            br#"{"request_id":"has space","collector_name":"y"}"#,
            br#"{"request_id":"r","collector_name":"y","window":"2024-01"}"#,
            br#"{"request_id":"r","collector_name":"y","extra":1}"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
