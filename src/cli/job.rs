//! `gleaner jobs` and `gleaner collect`: jobs, and following one to its end with a progress
//! bar per task.
//!
//! Following reads the job event stream (`GET /v1/jobs/events`), opened before the collection
//! is asked for so that no change is missed, and also reads the job every few seconds: a
//! stream cut by a proxy or a restarting API process then costs a little latency, never the
//! end of the job. The stream is opened again after a cut, from its last event id.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::output::{at, cell};
use super::{Client, Column, Error, Output, collector, confirm, items};

/// Jobs: one collection or billing import each, with a task per account.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// The newest jobs first.
    #[command(alias = "list")]
    Ls {
        /// Only this collector's jobs, by name or id.
        #[arg(long)]
        collector: Option<String>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One job and its tasks, with their errors.
    Show {
        /// The job's id.
        job: String,
    },
    /// A job's tasks, with their attempts, errors and the plugin's stderr.
    Tasks {
        /// The job's id.
        job: String,
    },
    /// Cancel a job and its unfinished tasks.
    Cancel {
        /// The job's id.
        job: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Follow a job to its end; exits non-zero unless it ends in SUCCESS.
    Wait {
        /// The job's id.
        job: String,
        #[command(flatten)]
        timeout: Timeout,
    },
}

/// How long to follow a job.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Timeout {
    /// Give up following after this many seconds (exit 7); the job itself goes on.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

/// The columns of a list of jobs.
pub const COLUMNS: &[Column] = &[
    Column("ID", "id"),
    Column("STATUS", "status"),
    Column("PLUGIN", "plugin_id"),
    Column("TRIGGER", "trigger"),
    Column("TASKS", "tasks"),
    Column("CREATED", "counts.created"),
    Column("UPDATED", "counts.updated"),
    Column("DELETED", "counts.deleted"),
    Column("FAILED", "counts.failed"),
    Column("STARTED", "started_at"),
    Column("DURATION MS", "duration_ms"),
];

const TASKS: &[Column] = &[
    Column("ID", "id"),
    Column("ACCOUNT", "service_account_id"),
    Column("PART", "part"),
    Column("STATUS", "status"),
    Column("ATTEMPT", "attempt"),
    Column("CREATED", "counts.created"),
    Column("UPDATED", "counts.updated"),
    Column("UNCHANGED", "counts.unchanged"),
    Column("DELETED", "counts.deleted"),
    Column("FAILED", "counts.failed"),
    Column("ERROR", "error"),
];

/// Runs `gleaner jobs`.
///
/// # Errors
/// What the API answers, as [`Error`]; [`Error::JobFailed`] when a waited job fails.
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Ls { collector, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(col) = collector {
                q.push(("collector_id", collector::id(c, &col).await?));
            }
            let list = c.get("v1/jobs", &q).await?;
            let rows: Vec<Value> = items(&list).iter().cloned().map(readable).collect();
            out.list(&list, &rows, COLUMNS)
        }
        Action::Show { job } => {
            let j = c.get(&format!("v1/jobs/{job}"), &[]).await?;
            if out.format != super::Format::Table {
                return out.one(&j);
            }
            out.one(&j)?;
            println!();
            tasks(c, out, &job).await
        }
        Action::Tasks { job } => tasks(c, out, &job).await,
        Action::Cancel { job, yes } => {
            confirm(yes, &format!("Cancel job {job}?"))?;
            let j = c
                .call(Method::POST, &format!("v1/jobs/{job}/cancel"), None)
                .await?;
            out.done(&format!("Job {job} is {}", cell(&j["status"])), &j)
        }
        Action::Wait { job, timeout } => {
            let stream = Events::open(c, None).await?;
            let first = c.get(&format!("v1/jobs/{job}"), &[]).await?;
            let end = follow(c, stream, first, timeout).await?;
            finish(out, &end)
        }
    }
}

async fn tasks(c: &Client, out: Output, job: &str) -> Result<(), Error> {
    let list = c.get(&format!("v1/jobs/{job}/tasks"), &[]).await?;
    let rows: Vec<Value> = items(&list).iter().cloned().map(readable).collect();
    out.list(&list, &rows, TASKS)
}

/// Adds the cells a table shows that the API gives in pieces: `tasks` as done/total, and
/// `part` counted from 1 (the API's `part` counts from 0), as the progress lines show it.
fn readable(mut j: Value) -> Value {
    let tasks = format!("{}/{}", cell(&j["tasks_done"]), cell(&j["tasks_total"]));
    let part = j["sub_task"]["part"]
        .as_i64()
        .map(|p| format!("{}/{}", p + 1, cell(&j["sub_task"]["parts"])));
    if let Some(o) = j.as_object_mut() {
        o.insert("tasks".into(), tasks.into());
        if let Some(p) = part {
            o.insert("part".into(), p.into());
        }
    }
    j
}

/// Collect now, and optionally follow the job to its end.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// The collector, by name or id.
    pub collector: String,
    /// Follow the job with a progress bar per task; exit non-zero unless it ends in SUCCESS.
    #[arg(long)]
    pub wait: bool,
    /// Billing collectors: the first month to import (YYYY-MM).
    #[arg(long)]
    pub start_month: Option<String>,
    /// Billing collectors: the last month to import (YYYY-MM), included.
    #[arg(long)]
    pub end_month: Option<String>,
    #[command(flatten)]
    pub timeout: Timeout,
    #[command(flatten)]
    pub out: Output,
}

/// Runs `gleaner collect`.
///
/// # Errors
/// What the API answers, as [`Error`]; [`Error::JobFailed`] when the job fails.
pub async fn collect(c: &Client, args: CollectArgs) -> Result<(), Error> {
    let id = collector::id(c, &args.collector).await?;
    let mut body = Map::new();
    if let Some(m) = args.start_month {
        body.insert("start_month".into(), m.into());
    }
    if let Some(m) = args.end_month {
        body.insert("end_month".into(), m.into());
    }
    // Listening first: a job that ends before the stream is open would otherwise only be
    // seen by the periodic read.
    let stream = if args.wait {
        Some(Events::open(c, Some(&id)).await?)
    } else {
        None
    };
    let accepted = c
        .call(
            Method::POST,
            &format!("v1/collectors/{id}/collect"),
            (!body.is_empty()).then_some(Value::Object(body)).as_ref(),
        )
        .await?;
    let Some(stream) = stream else {
        return args.out.done(
            &format!(
                "Job {} {}; follow it with `gleaner jobs wait {}`",
                cell(&accepted["job_id"]),
                cell(&accepted["status"]),
                cell(&accepted["job_id"])
            ),
            &accepted,
        );
    };
    let job_id = cell(&accepted["job_id"]);
    let first = c.get(&format!("v1/jobs/{job_id}"), &[]).await?;
    let end = follow(c, stream, first, args.timeout).await?;
    finish(args.out, &end)
}

/// Prints the job's end, and fails unless it is SUCCESS.
fn finish(out: Output, job: &Value) -> Result<(), Error> {
    let status = cell(&job["status"]);
    let counts = &job["counts"];
    let secs = job["duration_ms"].as_f64().map(|ms| ms / 1000.0);
    let summary = format!(
        "Job {} {status}{}: {} of {} tasks; created {}, updated {}, unchanged {}, deleted {}, failed {}",
        cell(&job["id"]),
        secs.map(|s| format!(" in {s:.1} s")).unwrap_or_default(),
        cell(&job["tasks_done"]),
        cell(&job["tasks_total"]),
        cell(&counts["created"]),
        cell(&counts["updated"]),
        cell(&counts["unchanged"]),
        cell(&counts["deleted"]),
        cell(&counts["failed"]),
    );
    out.done(&summary, job)?;
    if status == "SUCCESS" {
        Ok(())
    } else {
        let why = job["error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        Err(Error::JobFailed(format!(
            "job {} ended {status}{why} (see `gleaner jobs show {}`)",
            cell(&job["id"]),
            cell(&job["id"])
        )))
    }
}

fn ended(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("SUCCESS" | "FAILURE" | "CANCELED")
    )
}

type EventStream = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// The job event stream, opened again from its last id after a cut.
struct Events {
    stream: Option<EventStream>,
    collector: Option<String>,
    last_id: Option<String>,
}

impl Events {
    async fn open(c: &Client, collector: Option<&str>) -> Result<Self, Error> {
        let mut e = Self {
            stream: None,
            collector: collector.map(str::to_owned),
            last_id: None,
        };
        e.connect(c).await?;
        Ok(e)
    }

    async fn connect(&mut self, c: &Client) -> Result<(), Error> {
        let mut r = c.request(Method::GET, "v1/jobs/events")?;
        if let Some(col) = &self.collector {
            r = r.query(&[("collector_id", col)]);
        }
        if let Some(id) = &self.last_id {
            r = r.header("last-event-id", id);
        }
        let resp = r.send().await.map_err(|e| c.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(Error::Problem(Box::new(super::client::problem_of(
                status, &body,
            ))));
        }
        self.stream = Some(Box::pin(resp.bytes_stream().eventsource()));
        Ok(())
    }

    /// The next job of the stream; `None` when the stream was cut (it is opened again on the
    /// next call).
    async fn next(&mut self, c: &Client) -> Option<Value> {
        if self.stream.is_none() {
            // A failed reconnect leaves it closed; the periodic read still follows the job.
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.connect(c).await.ok()?;
        }
        let s = self.stream.as_mut()?;
        loop {
            match s.next().await {
                Some(Ok(ev)) => {
                    if !ev.id.is_empty() {
                        self.last_id = Some(ev.id.clone());
                    }
                    if ev.event == "job"
                        && let Ok(v) = serde_json::from_str(&ev.data)
                    {
                        return Some(v);
                    }
                }
                Some(Err(_)) | None => {
                    self.stream = None;
                    return None;
                }
            }
        }
    }
}

// How often the job is read besides the stream, and its tasks at most: each read is one
// small query, and a person watching cannot tell a second apart.
const POLL: Duration = Duration::from_secs(3);
const TASKS_EVERY: Duration = Duration::from_millis(500);
// More task bars than this would scroll the terminal; the job's bar still counts them all.
const MAX_TASK_BARS: usize = 20;

/// Follows a job to its end: the job's bar counts tasks, and each task has a line of its own
/// with its status and counts. Without a terminal, a line per change of status or progress
/// goes to stderr instead, for logs.
async fn follow(c: &Client, mut events: Events, first: Value, t: Timeout) -> Result<Value, Error> {
    let job_id = cell(&first["id"]);
    let deadline = t.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut view = Progress::new(c, &job_id).await;
    let mut job = first;
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    let mut tasks_read = Instant::now() - TASKS_EVERY;
    loop {
        if tasks_read.elapsed() >= TASKS_EVERY || ended(&job) {
            if let Ok(t) = c.get(&format!("v1/jobs/{job_id}/tasks"), &[]).await {
                view.tasks(items(&t));
            }
            tasks_read = Instant::now();
        }
        view.job(&job);
        if ended(&job) {
            view.done();
            return Ok(job);
        }
        let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            ev = events.next(c) => {
                if let Some(j) = ev.filter(|j| cell(&j["id"]) == job_id) {
                    job = j;
                }
            }
            _ = poll.tick() => {
                if let Ok(j) = c.get(&format!("v1/jobs/{job_id}"), &[]).await {
                    job = j;
                }
            }
            () = tokio::time::sleep_until(sleep_until) => {
                view.done();
                return Err(Error::TimedOut(format!(
                    "job {job_id} is still {} after {} s; it goes on: `gleaner jobs wait {job_id}`",
                    cell(&job["status"]),
                    t.timeout.unwrap_or_default()
                )));
            }
        }
    }
}

/// What a person sees while a job runs.
struct Progress {
    bars: MultiProgress,
    job: ProgressBar,
    tasks: HashMap<String, ProgressBar>,
    names: HashMap<String, String>,
    terminal: bool,
    last_line: String,
}

impl Progress {
    async fn new(c: &Client, job_id: &str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bars = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let job = bars.add(ProgressBar::new(0));
        job.set_style(
            ProgressStyle::with_template(
                "{spinner} job {prefix} [{bar:30}] {pos}/{len} tasks {elapsed} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        job.set_prefix(job_id.chars().take(8).collect::<String>());
        job.enable_steady_tick(Duration::from_millis(120));
        // Accounts by name on the task lines; ids when the list cannot be read.
        let names = match c.get("v1/service-accounts", &[]).await {
            Ok(list) => items(&list)
                .iter()
                .map(|a| (cell(&a["id"]), cell(&a["name"])))
                .collect(),
            Err(_) => HashMap::new(),
        };
        Self {
            bars,
            job,
            tasks: HashMap::new(),
            names,
            terminal,
            last_line: String::new(),
        }
    }

    fn job(&mut self, j: &Value) {
        let total = j["tasks_total"].as_u64().unwrap_or(0);
        let done = j["tasks_done"].as_u64().unwrap_or(0);
        self.job.set_length(total);
        self.job.set_position(done);
        let msg = format!("{} {}", cell(&j["status"]), counts(&j["counts"]));
        self.job.set_message(msg.clone());
        if !self.terminal {
            // Status and task progress only: counts change with every batch.
            let line = format!(
                "job {}: {} {done}/{total} tasks",
                cell(&j["id"]),
                cell(&j["status"])
            );
            if line != self.last_line {
                eprintln!("{line}");
                self.last_line = line;
            }
        }
    }

    fn tasks(&mut self, tasks: &[Value]) {
        if tasks.len() > MAX_TASK_BARS || !self.terminal {
            return;
        }
        for t in tasks {
            let id = cell(&t["id"]);
            let account = cell(&t["service_account_id"]);
            let name = self.names.get(&account).cloned().unwrap_or(account);
            let label = match at(t, "sub_task.part").as_i64() {
                Some(p) => format!("{name} part {}/{}", p + 1, cell(at(t, "sub_task.parts"))),
                None if !t["month"].is_null() => format!("{name} {}", cell(&t["month"])),
                None => name,
            };
            let bar = self.tasks.entry(id).or_insert_with(|| {
                let b = self.bars.add(ProgressBar::new_spinner());
                b.set_style(
                    ProgressStyle::with_template("  {spinner} {prefix:30} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.set_prefix(label);
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            let status = cell(&t["status"]);
            let mut msg = format!("{status} {}", counts(&t["counts"]));
            if let Some(e) = t["error"].as_str() {
                msg.push_str(&format!(" — {e}"));
            }
            if bar.is_finished() {
                continue;
            }
            bar.set_message(msg.clone());
            if matches!(status.as_str(), "SUCCESS" | "FAILURE" | "CANCELED") {
                bar.finish_with_message(msg);
            }
        }
    }

    fn done(&self) {
        for b in self.tasks.values() {
            if !b.is_finished() {
                b.abandon();
            }
        }
        // Finished bars keep their last frame: the tasks' ends stay on the screen above the
        // summary.
        self.job.finish();
    }
}

fn counts(c: &Value) -> String {
    format!(
        "created {} updated {} unchanged {} deleted {} failed {}",
        cell(&c["created"]),
        cell(&c["updated"]),
        cell(&c["unchanged"]),
        cell(&c["deleted"]),
        cell(&c["failed"])
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tasks_and_parts_read_as_people_count() {
        let t = readable(
            json!({"tasks_done": 1, "tasks_total": 3, "sub_task": {"part": 0, "parts": 2}}),
        );
        assert_eq!(t["tasks"], "1/3");
        assert_eq!(t["part"], "1/2");
        assert!(readable(json!({"sub_task": null})).get("part").is_none());
    }
}
