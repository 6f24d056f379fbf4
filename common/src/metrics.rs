//! Prometheus metrics: the process's recorder, the names Gleaner records, and the helpers the
//! rest of the code calls (one line at each place something happens).
//!
//! The API serves them at `GET /metrics`, a worker on its own listener
//! (`GLEANER_WORKER__METRICS_LISTEN`), both as Prometheus text (format 0.0.4). The standalone
//! mode's API shows its in-process worker's metrics too: one process, one recorder.
//!
//! | Name | Type | Labels | Recorded by |
//! |---|---|---|---|
//! | `gleaner_task_duration_seconds` | histogram | `worker`, `kind`, `status` | worker: a task's run, from claim to recorded outcome |
//! | `gleaner_queue_lag_seconds` | histogram | `worker`, `kind` | worker: a message's first delivery, from its creation (the job's commit) to a handler taking it |
//! | `gleaner_messages_handled_total` | counter | `worker`, `kind`, `outcome` (`ack`, `retry`, `dead_letter`) | worker: each delivery, by how it was settled |
//! | `gleaner_task_retries_total` | counter | `worker`, `kind` | worker: task runs after the first (attempt ≥ 2) |
//! | `gleaner_dead_letters_total` | counter | `worker`, `kind`, `reason` (`malformed`, `rejected`, `delivery_limit`) | worker: messages dead-lettered by the worker |
//! | `gleaner_outbox_publish_failures_total` | counter | none | outbox relay (API and worker): messages the broker refused |
//! | `gleaner_requests_total` | counter | `outcome` (`accepted`, `replayed`, `refused`, `requeued`) | API: requests to collect taken from the queue `<prefix>.requests.collect` |
//! | `gleaner_jobs` | gauge | `status` | API, at scrape time: jobs in the store by status |
//! | `gleaner_outbox_pending` | gauge | none | API, at scrape time: outbox rows not yet published (standalone: not yet handled) |
//! | `gleaner_outbox_dead` | gauge | none | API, at scrape time: outbox rows marked dead (the standalone mode's dead letters) |
//!
//! `worker` is the worker's name (`GLEANER_WORKER__NAME`, by default its host and process id), so
//! the workers of one process (tests run several) keep their own series; a scrape of one
//! worker's listener shows only its own. `kind` is the job kind (`inventory`, `billing`,
//! `metrics`; `unknown` for a message whose
//! envelope cannot be read) and `status` a job status (`SUCCESS`, `FAILURE`, ...). RabbitMQ
//! dead-letters a message redelivered past the queue's delivery limit by itself: those are in
//! RabbitMQ's own metrics, not in `gleaner_dead_letters_total`.
//!
//! The gauges read from the store are rendered per scrape from that API's database rather than
//! kept in the recorder: every API of an installation reports the same values (aggregate them
//! with `max`, not `sum`), and they are absent from a scrape when the database did not answer.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::{JobKind, JobStatus};
use crate::store::census::Census;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

pub const TASK_DURATION: &str = "gleaner_task_duration_seconds";
pub const QUEUE_LAG: &str = "gleaner_queue_lag_seconds";
pub const MESSAGES_HANDLED: &str = "gleaner_messages_handled_total";
pub const TASK_RETRIES: &str = "gleaner_task_retries_total";
pub const DEAD_LETTERS: &str = "gleaner_dead_letters_total";
pub const OUTBOX_PUBLISH_FAILURES: &str = "gleaner_outbox_publish_failures_total";
pub const REQUESTS: &str = "gleaner_requests_total";
pub const JOBS: &str = "gleaner_jobs";
pub const OUTBOX_PENDING: &str = "gleaner_outbox_pending";
pub const OUTBOX_DEAD: &str = "gleaner_outbox_dead";

/// Task durations in seconds: a demo task takes well under a second, a large account's
/// inventory minutes, a billing export can take hours.
const TASK_DURATION_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Queue lag in seconds: milliseconds when workers keep up (the relay is woken at commit),
/// minutes when a backlog builds.
const QUEUE_LAG_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes: a scrape
/// does it too, but a worker whose listener could not bind is never scraped, and unfolded
/// samples would pile up. The exporter's own default.
const UPKEEP: Duration = Duration::from_secs(5);

/// The label of a message whose kind could not be read.
const UNKNOWN_KIND: &str = "unknown";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How a delivery was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Retry,
    DeadLetter,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ack, Outcome::Retry, Outcome::DeadLetter];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry => "retry",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// Why the worker dead-lettered a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The body is not an envelope at all.
    Malformed,
    /// An envelope, but of an unknown type or version, or missing what its type needs.
    Rejected,
    /// The standalone dispatcher delivered it too many times without it being settled.
    DeliveryLimit,
}

impl DeadLetterReason {
    const ALL: [DeadLetterReason; 3] = [
        DeadLetterReason::Malformed,
        DeadLetterReason::Rejected,
        DeadLetterReason::DeliveryLimit,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Malformed => "malformed",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Installs the process's recorder, once: later calls return the same handle, so every
/// component of a process (and every test environment of a test binary) may call it.
/// Values recorded before the first call are lost, so components call it as they start.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(TASK_DURATION.into()), &TASK_DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(QUEUE_LAG.into()), &QUEUE_LAG_BUCKETS)
            })
            .expect("the bucket lists are constant and not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = ::metrics::set_global_recorder(recorder) {
            // Only another library installing its own recorder first gets here.
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics shows only the store's gauges");
        }
        describe();
        start_upkeep(handle.clone());
        handle
    })
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        TASK_DURATION,
        Unit::Seconds,
        "Run time of a task, from its claim to its recorded outcome."
    );
    describe_histogram!(
        QUEUE_LAG,
        Unit::Seconds,
        "Time from a message's creation to a worker taking its first delivery."
    );
    describe_counter!(
        MESSAGES_HANDLED,
        "Deliveries handled by the worker, by how they were settled."
    );
    describe_counter!(TASK_RETRIES, "Task runs after the first attempt.");
    describe_counter!(DEAD_LETTERS, "Messages the worker dead-lettered.");
    describe_counter!(
        REQUESTS,
        "Requests to collect taken from the request queue, by outcome."
    );
    describe_counter!(
        OUTBOX_PUBLISH_FAILURES,
        "Outbox messages the broker refused or could not take; they stay in the outbox."
    );
    ::metrics::counter!(OUTBOX_PUBLISH_FAILURES).increment(0);
}

/// A worker named `worker` starts: every series of its counters starts at zero, so `rate()`
/// and `increase()` see the first event instead of a series appearing with its value already
/// counted.
pub fn worker_started(worker: &str) {
    let worker = worker.to_owned();
    for kind in JobKind::ALL.map(JobKind::as_str) {
        for outcome in Outcome::ALL.map(Outcome::as_str) {
            ::metrics::counter!(MESSAGES_HANDLED, "worker" => worker.clone(), "kind" => kind, "outcome" => outcome)
                .increment(0);
        }
        for reason in DeadLetterReason::ALL.map(DeadLetterReason::as_str) {
            ::metrics::counter!(DEAD_LETTERS, "worker" => worker.clone(), "kind" => kind, "reason" => reason)
                .increment(0);
        }
        ::metrics::counter!(TASK_RETRIES, "worker" => worker.clone(), "kind" => kind).increment(0);
    }
}

fn start_upkeep(handle: PrometheusHandle) {
    // A thread rather than a task: the recorder outlives any one runtime (tests start one
    // per test), and the upkeep is a few microseconds every few seconds.
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                handle.run_upkeep();
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no metrics upkeep thread; histograms are folded at each scrape only");
    }
}

fn kind_label(kind: Option<JobKind>) -> &'static str {
    kind.map_or(UNKNOWN_KIND, JobKind::as_str)
}

/// A task of worker `worker` ended after it ran for `elapsed`.
pub fn task_finished(worker: &str, kind: JobKind, status: JobStatus, elapsed: Duration) {
    ::metrics::histogram!(TASK_DURATION, "worker" => worker.to_owned(), "kind" => kind.as_str(), "status" => status.as_str())
        .record(elapsed.as_secs_f64());
}

/// A delivery was settled; `kind` is `None` when its envelope could not be read.
pub fn message_handled(worker: &str, kind: Option<JobKind>, outcome: Outcome) {
    ::metrics::counter!(MESSAGES_HANDLED, "worker" => worker.to_owned(), "kind" => kind_label(kind), "outcome" => outcome.as_str())
        .increment(1);
}

/// A message's first delivery reached a handler `lag` after the message was created.
pub fn queue_lag(worker: &str, kind: JobKind, lag: Duration) {
    ::metrics::histogram!(QUEUE_LAG, "worker" => worker.to_owned(), "kind" => kind.as_str())
        .record(lag.as_secs_f64());
}

/// A task started again (attempt 2 or later).
pub fn task_retried(worker: &str, kind: JobKind) {
    ::metrics::counter!(TASK_RETRIES, "worker" => worker.to_owned(), "kind" => kind.as_str())
        .increment(1);
}

/// The worker dead-lettered a message; `kind` is `None` when its envelope could not be read.
pub fn dead_lettered(worker: &str, kind: Option<JobKind>, reason: DeadLetterReason) {
    ::metrics::counter!(DEAD_LETTERS, "worker" => worker.to_owned(), "kind" => kind_label(kind), "reason" => reason.as_str())
        .increment(1);
}

/// The broker refused `messages` outbox messages in a relay round.
pub fn outbox_publish_failed(messages: usize) {
    if messages > 0 {
        ::metrics::counter!(OUTBOX_PUBLISH_FAILURES).increment(messages as u64);
    }
}

/// This process's metrics as Prometheus text.
#[must_use]
pub fn render() -> String {
    render_with(None)
}

/// This process's metrics, then the store's gauges when `census` is given.
#[must_use]
pub fn render_with(census: Option<&Census>) -> String {
    let mut out = install().render();
    if let Some(census) = census {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        gauge_header(&mut out, JOBS, "Jobs in the store, by status.");
        // Every status, zero included: a series that vanishes is not a series at zero.
        for status in JobStatus::ALL {
            let n = census.jobs_with(status);
            let _ = writeln!(out, "{JOBS}{{status=\"{}\"}} {n}", status.as_str());
        }
        gauge_header(
            &mut out,
            OUTBOX_PENDING,
            "Outbox rows not yet published (standalone: not yet handled).",
        );
        let _ = writeln!(out, "{OUTBOX_PENDING} {}", census.outbox_pending);
        gauge_header(
            &mut out,
            OUTBOX_DEAD,
            "Outbox rows marked dead (the standalone mode's dead letters).",
        );
        let _ = writeln!(out, "{OUTBOX_DEAD} {}", census.outbox_dead);
    }
    out
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_keeps_one_recorder() {
        assert!(std::ptr::eq(install(), install()));
    }

    #[test]
    fn render_shows_every_metric_with_its_labels() {
        install();
        let w = "unit-test";
        worker_started(w);
        task_finished(
            w,
            JobKind::Inventory,
            JobStatus::Success,
            Duration::from_millis(1500),
        );
        queue_lag(w, JobKind::Billing, Duration::from_millis(20));
        message_handled(w, Some(JobKind::Inventory), Outcome::Ack);
        message_handled(w, None, Outcome::DeadLetter);
        task_retried(w, JobKind::Inventory);
        dead_lettered(w, None, DeadLetterReason::Malformed);
        outbox_publish_failed(2);
        let census = Census {
            jobs: vec![(JobStatus::Success, 3), (JobStatus::Failure, 1)],
            outbox_pending: 4,
            outbox_dead: 0,
        };
        let text = render_with(Some(&census));
        for expected in [
            "# TYPE gleaner_task_duration_seconds histogram",
            "gleaner_task_duration_seconds_bucket{worker=\"unit-test\",kind=\"inventory\",status=\"SUCCESS\",le=\"5\"} 1\n",
            "gleaner_task_duration_seconds_bucket{worker=\"unit-test\",kind=\"inventory\",status=\"SUCCESS\",le=\"14400\"} 1\n",
            "gleaner_queue_lag_seconds_bucket{worker=\"unit-test\",kind=\"billing\",le=\"0.025\"} 1\n",
            "gleaner_messages_handled_total{worker=\"unit-test\",kind=\"inventory\",outcome=\"ack\"} 1\n",
            "gleaner_messages_handled_total{worker=\"unit-test\",kind=\"unknown\",outcome=\"dead_letter\"} 1\n",
            "gleaner_messages_handled_total{worker=\"unit-test\",kind=\"metrics\",outcome=\"retry\"} 0\n",
            "gleaner_task_retries_total{worker=\"unit-test\",kind=\"inventory\"} 1\n",
            "gleaner_dead_letters_total{worker=\"unit-test\",kind=\"unknown\",reason=\"malformed\"} 1\n",
            "# TYPE gleaner_outbox_publish_failures_total counter",
            "# TYPE gleaner_jobs gauge",
            "gleaner_jobs{status=\"SUCCESS\"} 3\n",
            "gleaner_jobs{status=\"FAILURE\"} 1\n",
            "gleaner_jobs{status=\"QUEUED\"} 0\n",
            "gleaner_outbox_pending 4\n",
            "gleaner_outbox_dead 0\n",
        ] {
            assert!(text.contains(expected), "no `{expected}` in:\n{text}");
        }
        assert!(!render().contains(JOBS), "the store's gauges need a census");
    }
}
