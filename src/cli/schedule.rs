//! `gleaner schedules`.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Map, Value};

use super::{Client, Column, Error, Output, collector, confirm, items};

/// Schedules: when a collector collects by itself.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

/// When a schedule fires: exactly one of the two.
#[derive(Debug, Default, clap::Args)]
#[group(multiple = false)]
pub struct When {
    /// Hours of the day, 0–23, in the schedule's timezone: `0,6,12,18`.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(0..=23))]
    pub hours: Option<Vec<u8>>,
    /// Every this many minutes from local midnight (1–1440).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1440))]
    pub every_minutes: Option<u16>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// A collector's schedules, with each one's next fire.
    #[command(alias = "list")]
    Ls {
        /// The collector, by name or id.
        #[arg(long)]
        collector: String,
    },
    /// One schedule, with its next five fires.
    Show {
        /// Its id, or its name with --collector.
        schedule: String,
        #[arg(long)]
        collector: Option<String>,
    },
    /// Add a schedule to a collector.
    Create {
        /// The collector, by name or id.
        #[arg(long)]
        collector: String,
        /// Unique among the collector's schedules.
        #[arg(long)]
        name: String,
        /// An IANA timezone, e.g. Asia/Seoul.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[command(flatten)]
        when: When,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Change a schedule.
    Update {
        /// Its id, or its name with --collector.
        schedule: String,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        timezone: Option<String>,
        #[command(flatten)]
        when: When,
    },
    /// Stop a schedule from firing, keeping it.
    Pause {
        /// Its id, or its name with --collector.
        schedule: String,
        #[arg(long)]
        collector: Option<String>,
    },
    /// Let a paused schedule fire again.
    Resume {
        /// Its id, or its name with --collector.
        schedule: String,
        #[arg(long)]
        collector: Option<String>,
    },
    /// Delete a schedule.
    #[command(alias = "rm")]
    Delete {
        /// Its id, or its name with --collector.
        schedule: String,
        #[arg(long)]
        collector: Option<String>,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// A schedule's fires, newest first: QUEUED with its job, SKIPPED or MISSED with why.
    Fires {
        /// Its id, or its name with --collector.
        schedule: String,
        #[arg(long)]
        collector: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

const COLUMNS: &[Column] = &[
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("STATE", "state"),
    Column("TIMEZONE", "timezone"),
    Column("HOURS", "hours"),
    Column("EVERY MINUTES", "every_minutes"),
    Column("NEXT FIRE (LOCAL)", "next_fire_local"),
    Column("NEXT FIRE (UTC)", "next_fires.0"),
];

const FIRES: &[Column] = &[
    Column("FIRE TIME", "fire_time"),
    Column("OUTCOME", "outcome"),
    Column("JOB", "job_id"),
    Column("REASON", "reason"),
];

/// Runs `gleaner schedules`.
///
/// # Errors
/// What the API answers, as [`Error`].
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Ls { collector } => {
            let col = collector::id(c, &collector).await?;
            let list = c
                .get(&format!("v1/collectors/{col}/schedules"), &[])
                .await?;
            let rows: Vec<Value> = items(&list).iter().cloned().map(with_local_fire).collect();
            out.list(&list, &rows, COLUMNS)
        }
        Action::Show {
            schedule,
            collector,
        } => {
            let id = id(c, collector.as_deref(), &schedule).await?;
            out.one(&with_local_fire(
                c.get(&format!("v1/schedules/{id}"), &[]).await?,
            ))
        }
        Action::Create {
            collector,
            name,
            timezone,
            when,
            paused,
        } => {
            let col = collector::id(c, &collector).await?;
            let mut body = Map::new();
            body.insert("name".into(), name.into());
            body.insert("timezone".into(), timezone.into());
            when.into_body(&mut body);
            if paused {
                body.insert("state".into(), "PAUSED".into());
            }
            let s = c
                .call(
                    Method::POST,
                    &format!("v1/collectors/{col}/schedules"),
                    Some(&body.into()),
                )
                .await?;
            out.one(&with_local_fire(s))
        }
        Action::Update {
            schedule,
            collector,
            name,
            timezone,
            when,
        } => {
            let id = id(c, collector.as_deref(), &schedule).await?;
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), n.into());
            }
            if let Some(t) = timezone {
                body.insert("timezone".into(), t.into());
            }
            when.into_body(&mut body);
            if body.is_empty() {
                return Err(Error::Usage(
                    "nothing to change: give --name, --timezone, --hours or --every-minutes".into(),
                ));
            }
            patch(c, out, &id, body).await
        }
        Action::Pause {
            schedule,
            collector,
        } => {
            let id = id(c, collector.as_deref(), &schedule).await?;
            patch(
                c,
                out,
                &id,
                Map::from_iter([("state".into(), "PAUSED".into())]),
            )
            .await
        }
        Action::Resume {
            schedule,
            collector,
        } => {
            let id = id(c, collector.as_deref(), &schedule).await?;
            patch(
                c,
                out,
                &id,
                Map::from_iter([("state".into(), "ENABLED".into())]),
            )
            .await
        }
        Action::Delete {
            schedule,
            collector,
            yes,
        } => {
            let id = id(c, collector.as_deref(), &schedule).await?;
            confirm(yes, &format!("Delete schedule {schedule}?"))?;
            c.call(Method::DELETE, &format!("v1/schedules/{id}"), None)
                .await?;
            out.done(&format!("Deleted schedule {schedule}"), &Value::Null)
        }
        Action::Fires {
            schedule,
            collector,
            limit,
        } => {
            let id = id(c, collector.as_deref(), &schedule).await?;
            let list = c
                .get(
                    &format!("v1/schedules/{id}/fires"),
                    &[("limit", limit.to_string())],
                )
                .await?;
            out.list(&list, items(&list), FIRES)
        }
    }
}

async fn patch(c: &Client, out: Output, id: &str, body: Map<String, Value>) -> Result<(), Error> {
    let s = c
        .call(
            Method::PATCH,
            &format!("v1/schedules/{id}"),
            Some(&body.into()),
        )
        .await?;
    out.one(&with_local_fire(s))
}

impl When {
    fn into_body(self, body: &mut Map<String, Value>) {
        if let Some(h) = self.hours {
            body.insert("hours".into(), h.into());
        }
        if let Some(m) = self.every_minutes {
            body.insert("every_minutes".into(), m.into());
        }
    }
}

/// Adds `next_fire_local`: the next fire in the schedule's own timezone, which is how its
/// hours were given.
fn with_local_fire(mut s: Value) -> Value {
    let local = (|| {
        let tz: chrono_tz::Tz = s["timezone"].as_str()?.parse().ok()?;
        let at: DateTime<Utc> = s["next_fires"][0].as_str()?.parse().ok()?;
        Some(
            at.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string(),
        )
    })();
    if let (Some(l), Some(obj)) = (local, s.as_object_mut()) {
        obj.insert("next_fire_local".into(), l.into());
    }
    s
}

/// A schedule's id: as given, or found by name among `collector`'s schedules.
async fn id(c: &Client, collector: Option<&str>, schedule: &str) -> Result<String, Error> {
    match collector {
        Some(col) if !super::is_id(schedule) => {
            let col = collector::id(c, col).await?;
            super::resolve(
                c,
                "schedule",
                &format!("v1/collectors/{col}/schedules"),
                schedule,
            )
            .await
        }
        None if !super::is_id(schedule) => Err(Error::Usage(format!(
            "`{schedule}` is not a schedule id: give --collector to find it by name"
        ))),
        _ => Ok(schedule.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_next_fire_is_shown_in_the_schedules_timezone() {
        let s = with_local_fire(json!({
            "timezone": "Asia/Seoul",
            "next_fires": ["2026-12-03T00:00:00Z", "2026-12-03T06:00:00Z"],
        }));
        assert_eq!(s["next_fire_local"], "2026-12-03 09:00 KST");
        let s = with_local_fire(json!({"timezone": "Nowhere/City", "next_fires": []}));
        assert!(s.get("next_fire_local").is_none());
    }
}
