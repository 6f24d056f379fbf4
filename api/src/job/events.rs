//! `GET /v1/jobs/events`: a live stream of job changes, as server-sent events.
//!
//! # Design
//!
//! The stream polls the database rather than listening in process: in the distributed mode the
//! worker that moves a job along is another process, and the standalone mode has no broker to
//! listen to. What it polls is `jobs.updated_at`, which every change a client can see moves:
//! creation, planning, each task's claim, each batch a task commits (its counts are the job's,
//! summed; the sinks touch the job in the batch's transaction) and each task's end. So a poll is
//! one range scan of the index `(domain_id, updated_at, id)` for the rows after a cursor
//! ([`view::changed_after`]), which finds nothing most of the time; only jobs that changed are then
//! read in full, with their counts ([`view::get_many`]).
//!
//! A timestamp cursor can miss a change whose transaction commits after a later one: its
//! `updated_at` is taken before its commit, and processes' clocks differ a little. So each poll
//! scans again from [`LOOKBACK`] before the highest cursor seen, and skips a job whose
//! `updated_at` is the one last sent for it. Event ids are that highest cursor, so they only
//! grow; a client resuming with `Last-Event-ID` gets the changes after it, and the first poll
//! takes what is at or before it as already seen.
//!
//! The stream ends when the client goes away (the body is dropped, with any query in flight) or
//! when the server shuts down ([`crate::Inner::shutdown`]); a comment every [`KEEP_ALIVE`] keeps
//! idle connections open through proxies.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use super::view::{self, ChangeCursor};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use gleaner_common::id::{CollectorId, DomainId, JobId};
use gleaner_common::store::{self, collector};
use serde::Deserialize;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::StreamSlot;
use crate::extract::{ApiQuery, Auth};
use crate::problem::{self, ApiError, ApiResult, Code, Problem};

/// How far behind the highest cursor each poll looks again: longer than a job write's
/// transaction takes to commit after it stamped `updated_at` (the stamp is taken just before
/// the job row is written, and the rest of each such transaction is short), plus the clock
/// differences between the processes that write jobs.
const LOOKBACK: Duration = Duration::from_secs(10);

/// The SSE keep-alive comment's period: below the common 30–60 s idle timeouts of proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Cursors read per query; a poll reads pages until one is short.
const SCAN_PAGE: u64 = 500;

/// Jobs sent per poll at most; a larger burst continues at the next poll.
const MAX_EVENTS_PER_POLL: usize = 500;

/// The shortest poll interval honoured, whatever the settings say.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";

/// Seconds a key at its stream limit is told to wait: streams end when clients go away, which
/// a server sees only at its next write (a keep-alive at the latest).
const STREAM_RETRY_AFTER: u64 = 15;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only the jobs of this collector.
    collector_id: Option<CollectorId>,
}

// The 200's schema is that of each event: OpenAPI 3.1 has no other way to describe a stream's
// items (3.2's `itemSchema` says the same), and `string` there would say each event is a
// JSON string. The events sent are built from this type, so they cannot drift from it.
/// One event of `GET /v1/jobs/events`, by its fields.
#[derive(Debug, ToSchema)]
pub(super) struct JobEvent {
    /// Always `job`.
    #[schema(pattern = "^job$", example = "job")]
    event: &'static str,
    /// The event's cursor, `<unix nanoseconds>_<job id>`: send the last one received back as
    /// `Last-Event-ID` to resume after it.
    #[schema(example = "1727740800000000000_01922f4c-0000-7000-8000-000000000000")]
    id: String,
    /// The job as `GET /v1/jobs/{id}` shows it (a `Job`), as JSON text.
    #[schema(content_media_type = "application/json")]
    data: String,
}

impl From<JobEvent> for Event {
    fn from(e: JobEvent) -> Self {
        Event::default().event(e.event).id(e.id).data(e.data)
    }
}

/// A live stream of job changes, as server-sent events.
///
/// Each event is `event: job`, `id: <cursor>` and `data: <the job as GET /v1/jobs/{id} shows
/// it>`, sent when a job is created or its status or progress changes (changes closer together
/// than the poll interval, 500 ms by default, arrive as one). Ids grow with each event; send
/// the last one back as `Last-Event-ID` to resume after it. A comment every 15 s keeps the
/// connection open.
#[utoipa::path(
    get, path = "/v1/jobs/events", operation_id = "job_events", tag = "jobs",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header,
            description = "The id of the last event received: resume after it",
            example = "1727740800000000000_01922f4c-0000-7000-8000-000000000000"),
    ),
    responses(
        (status = 200, description = "The stream: `text/event-stream`, each event's `data` a \
            `Job`", content_type = "text/event-stream", body = JobEvent),
        (status = 400, description = "A malformed `collector_id` or `Last-Event-ID`, or an \
            unknown query parameter", body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that `collector_id`",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 429, description = "The key holds its maximum of open streams \
            (`GLEANER_API__EVENT_STREAMS_PER_KEY`), or is over its rate",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let domain = auth.domain();
    let Some(slot) = state.limits.open_stream(auth.0.key) else {
        return Err(ApiError::new(
            Code::TooManyRequests,
            format!(
                "this API key holds {} event streams open already (GLEANER_API__EVENT_STREAMS_PER_KEY): close one first",
                state.limits.streams_per_key()
            ),
        )
        .with_retry_after(STREAM_RETRY_AFTER));
    };
    let resume = match headers.get(LAST_EVENT_ID) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<ChangeCursor>().ok())
                .ok_or_else(|| {
                    ApiError::field(
                        Code::InvalidInput,
                        "Last-Event-ID",
                        "is not the id of an event of this stream",
                    )
                })?,
        ),
        None => None,
    };
    if let Some(c) = q.collector_id {
        // 404 for an unknown collector rather than a stream that stays silent.
        collector::get(&state.db, domain, c).await?;
    }
    // The key is checked again as the stream goes on: revoked or expired, the stream ends.
    let key = crate::auth::bearer(&headers).unwrap_or_default().to_owned();
    let poller = Poller::new(state, domain, q.collector_id, resume, (slot, key));
    let span = tracing::Span::current();
    let stream = futures::stream::unfold(poller, move |mut p| {
        let span = span.clone();
        async move { p.next().instrument(span).await.map(|e| (Ok(e), p)) }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One stream's polling state.
struct Poller {
    /// The key's stream slot, freed when the stream is dropped (the client went away).
    _slot: StreamSlot,
    /// The API key the stream was opened with.
    key: String,
    state: AppState,
    shutdown: CancellationToken,
    domain: DomainId,
    collector: Option<CollectorId>,
    /// The highest cursor scanned: the id of each event, and (less [`LOOKBACK`]) where the next
    /// scan starts.
    high: ChangeCursor,
    /// Whether a scan ran: the first one takes what is at or before `high` as seen.
    started: bool,
    /// Per job changed within the lookback window, the `updated_at` of what was last sent (or
    /// taken as seen), so a scan that finds it again skips it.
    sent: HashMap<JobId, DateTime<Utc>>,
    pending: VecDeque<Event>,
    ticker: Interval,
}

impl Poller {
    /// From `resume` (a `Last-Event-ID`), or from now: a new client wants what changes next.
    fn new(
        state: AppState,
        domain: DomainId,
        collector: Option<CollectorId>,
        resume: Option<ChangeCursor>,
        (slot, key): (StreamSlot, String),
    ) -> Self {
        let high = resume.unwrap_or_else(|| ChangeCursor {
            at: Utc::now(),
            id: JobId::from_uuid(uuid::Uuid::max()),
        });
        // A zero period would make `interval` panic (and poll in a busy loop).
        let period = state.events_poll_interval.max(MIN_POLL_INTERVAL);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            _slot: slot,
            key,
            shutdown: state.shutdown.clone(),
            state,
            domain,
            collector,
            high,
            started: false,
            sent: HashMap::new(),
            pending: VecDeque::new(),
            ticker,
        }
    }

    /// The next event; `None` once the server shuts down or the stream's key stops working.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                _ = self.ticker.tick() => {}
            }
            // As for a request: this process's check of the key is trusted for
            // `auth::CHECK_EVERY`, so a revocation ends the stream within that.
            match self.state.keys.caller(&self.state.db, &self.key).await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                // The database is away: the scan fails the same way and is retried.
                Err(_) => {}
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                scanned = self.scan() => {
                    if let Err(e) = scanned {
                        // The next tick tries again; the client keeps its connection.
                        tracing::warn!(error = %e, "polling for job changes failed");
                    }
                }
            }
        }
    }

    /// One poll: queues an event per job that changed since it was last sent.
    async fn scan(&mut self) -> Result<(), store::Error> {
        let db = &self.state.db;
        let lookback = chrono::Duration::from_std(LOOKBACK).unwrap_or(chrono::Duration::MAX);
        let mut from = ChangeCursor {
            at: self.high.at - lookback,
            id: JobId::from_uuid(uuid::Uuid::nil()),
        };
        let mut fresh = Vec::new();
        'pages: loop {
            let page =
                view::changed_after(db, self.domain, self.collector, from, SCAN_PAGE).await?;
            for c in &page {
                if self.sent.get(&c.id) == Some(&c.at) {
                    continue;
                }
                if !self.started && *c <= self.high {
                    // The client saw it before it reconnected, or it predates the connection.
                    self.sent.insert(c.id, c.at);
                    continue;
                }
                fresh.push(*c);
                if fresh.len() == MAX_EVENTS_PER_POLL {
                    break 'pages;
                }
            }
            match page.last() {
                Some(last) if page.len() as u64 == SCAN_PAGE => from = *last,
                _ => break,
            }
        }
        self.started = true;

        let ids: Vec<JobId> = fresh.iter().map(|c| c.id).collect();
        let mut jobs: HashMap<JobId, _> = view::get_many(db, self.domain, &ids)
            .await?
            .into_iter()
            .map(|(read, job)| (job.id, (read, job)))
            .collect();
        for c in fresh {
            let Some((read, job)) = jobs.remove(&c.id) else {
                continue; // deleted meanwhile
            };
            // `high` follows the scan, not the read: a job that moved on after the scan may
            // have passed changes of other jobs the scan did not see yet.
            self.high = self.high.max(c);
            // What was sent is the job as read, which may be newer than the scan found it.
            self.sent.insert(c.id, read.at);
            match serde_json::to_string(&job) {
                Ok(data) => self.pending.push_back(
                    JobEvent {
                        event: "job",
                        id: self.high.to_string(),
                        data,
                    }
                    .into(),
                ),
                Err(e) => tracing::error!(error = %e, job_id = %job.id, "a job did not serialize"),
            }
        }
        let horizon = self.high.at - lookback;
        self.sent.retain(|_, at| *at >= horizon);
        Ok(())
    }
}
