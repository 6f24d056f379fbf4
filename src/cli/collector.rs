//! `gleaner collectors`.

use reqwest::Method;
use serde_json::{Map, Value};

use super::{Client, Column, Error, Output, confirm, items, json_arg, pairs, resolve};

/// Collectors: a plugin with its options, run on demand or on schedules.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the collectors.
    #[command(alias = "list")]
    Ls {
        /// Only collectors in this state (ENABLED or DISABLED).
        #[arg(long, value_parser = ["ENABLED", "DISABLED"], ignore_case = true)]
        state: Option<String>,
        /// Only collectors of this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Only collectors whose name contains this.
        #[arg(long)]
        name: Option<String>,
    },
    /// One collector, with what it collected.
    Show {
        /// Its name or id.
        collector: String,
    },
    /// The plugins a collector can run, and their versions.
    Plugins,
    /// Create a collector.
    Create {
        /// 1–255 characters, unique.
        #[arg(long)]
        name: String,
        /// A plugin id (`gleaner collectors plugins` lists them).
        #[arg(long)]
        plugin: String,
        /// A version to pin (default: follow the plugin's latest).
        #[arg(long)]
        version: Option<String>,
        /// 0–1,000,000 (default 10); lower wins when collectors report the same field.
        #[arg(long)]
        priority: Option<i64>,
        /// The plugin's options as JSON, `@FILE`, or `-` for standard input.
        #[arg(long, value_name = "JSON|@FILE|-")]
        options: Option<String>,
        /// A tag; repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// A job unfinished this long after it was accepted fails (1–604,800; default 7,200).
        #[arg(long)]
        job_timeout_seconds: Option<i64>,
    },
    /// Change a collector.
    Update {
        /// Its name or id.
        collector: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        priority: Option<i64>,
        /// A version to pin, or `latest` to follow the plugin's latest.
        #[arg(long)]
        version: Option<String>,
        /// Replaces the options: JSON, `@FILE`, or `-` for standard input.
        #[arg(long, value_name = "JSON|@FILE|-")]
        options: Option<String>,
        /// Replaces the tags; repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Removes every tag.
        #[arg(long, conflicts_with = "tags")]
        clear_tags: bool,
        #[arg(long)]
        job_timeout_seconds: Option<i64>,
    },
    /// Delete a collector and its schedules; its resources and jobs stay.
    #[command(alias = "rm")]
    Delete {
        /// Its name or id.
        collector: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Let the collector collect again.
    Enable {
        /// Its name or id.
        collector: String,
    },
    /// Refuse collections (schedules skip it, `collect` is refused).
    Disable {
        /// Its name or id.
        collector: String,
    },
    /// Check every account the collector collects with, without collecting.
    Verify {
        /// Its name or id.
        collector: String,
    },
    /// The collector's job history, newest first.
    Jobs {
        /// Its name or id.
        collector: String,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

const COLUMNS: &[Column] = &[
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("STATE", "state"),
    Column("PRIORITY", "priority"),
    Column("PLUGIN", "plugin_id"),
    Column("VERSION", "version"),
    Column("LAST COLLECTED", "last_collected_at"),
    Column("NEXT SCHEDULED", "next_scheduled_at"),
    Column("LAST JOB", "last_job.status"),
];

const PLUGINS: &[Column] = &[
    Column("ID", "id"),
    Column("KIND", "kind"),
    Column("PROVIDER", "provider"),
    Column("LATEST", "latest"),
    Column("VERSIONS", "versions"),
    Column("OFFICIAL", "official"),
];

/// Runs `gleaner collectors`.
///
/// # Errors
/// What the API answers, as [`Error`].
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Ls {
            state,
            plugin,
            name,
        } => {
            let list = c.get("v1/collectors", &[]).await?;
            let kept: Vec<Value> = items(&list)
                .iter()
                .filter(|i| {
                    state.as_deref().is_none_or(|s| {
                        i["state"]
                            .as_str()
                            .is_some_and(|v| v.eq_ignore_ascii_case(s))
                    }) && plugin.as_deref().is_none_or(|p| i["plugin_id"] == p)
                        && name
                            .as_deref()
                            .is_none_or(|n| i["name"].as_str().is_some_and(|v| v.contains(n)))
                })
                .cloned()
                .collect();
            let whole = serde_json::json!({ "items": kept });
            out.list(&whole, &kept, COLUMNS)
        }
        Action::Show { collector } => {
            let id = id(c, &collector).await?;
            out.one(&c.get(&format!("v1/collectors/{id}"), &[]).await?)
        }
        Action::Plugins => {
            let list = c.get("v1/plugins", &[]).await?;
            out.list(&list, items(&list), PLUGINS)
        }
        Action::Create {
            name,
            plugin,
            version,
            priority,
            options,
            tags,
            job_timeout_seconds,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), name.into());
            body.insert("plugin_id".into(), plugin.into());
            if let Some(v) = version {
                body.insert("version".into(), v.into());
            }
            if let Some(p) = priority {
                body.insert("priority".into(), p.into());
            }
            if let Some(o) = options {
                body.insert("options".into(), json_arg("--options", &o)?);
            }
            if !tags.is_empty() {
                body.insert("tags".into(), pairs("--tag", &tags)?.into());
            }
            if let Some(t) = job_timeout_seconds {
                body.insert("job_timeout_seconds".into(), t.into());
            }
            let col = c
                .call(Method::POST, "v1/collectors", Some(&body.into()))
                .await?;
            out.one(&col)
        }
        Action::Update {
            collector,
            name,
            priority,
            version,
            options,
            tags,
            clear_tags,
            job_timeout_seconds,
        } => {
            let id = id(c, &collector).await?;
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), n.into());
            }
            if let Some(p) = priority {
                body.insert("priority".into(), p.into());
            }
            match version.as_deref() {
                Some("latest") => {
                    body.insert("version".into(), Value::Null);
                }
                Some(v) => {
                    body.insert("version".into(), v.into());
                }
                None => {}
            }
            if let Some(o) = options {
                body.insert("options".into(), json_arg("--options", &o)?);
            }
            if !tags.is_empty() || clear_tags {
                body.insert("tags".into(), pairs("--tag", &tags)?.into());
            }
            if let Some(t) = job_timeout_seconds {
                body.insert("job_timeout_seconds".into(), t.into());
            }
            if body.is_empty() {
                return Err(Error::Usage(
                    "nothing to change: give --name, --priority, --version, --options, --tag, --clear-tags or --job-timeout-seconds".into(),
                ));
            }
            let col = c
                .call(
                    Method::PATCH,
                    &format!("v1/collectors/{id}"),
                    Some(&body.into()),
                )
                .await?;
            out.one(&col)
        }
        Action::Delete { collector, yes } => {
            let id = id(c, &collector).await?;
            confirm(
                yes,
                &format!("Delete collector {collector} and its schedules?"),
            )?;
            c.call(Method::DELETE, &format!("v1/collectors/{id}"), None)
                .await?;
            out.done(&format!("Deleted collector {collector}"), &Value::Null)
        }
        Action::Enable { collector } => switch(c, out, &collector, "enable").await,
        Action::Disable { collector } => switch(c, out, &collector, "disable").await,
        Action::Verify { collector } => {
            let id = id(c, &collector).await?;
            let v = c
                .call(Method::POST, &format!("v1/collectors/{id}/verify"), None)
                .await?;
            let accounts = v["accounts"].as_array().map_or(0, Vec::len);
            out.done(&format!("{collector}: {accounts} account(s) verified"), &v)
        }
        Action::Jobs { collector, limit } => {
            let id = id(c, &collector).await?;
            let list = c
                .get(
                    &format!("v1/collectors/{id}/jobs"),
                    &[("limit", limit.to_string())],
                )
                .await?;
            out.list(&list, items(&list), super::job::COLUMNS)
        }
    }
}

async fn switch(c: &Client, out: Output, collector: &str, verb: &str) -> Result<(), Error> {
    let id = id(c, collector).await?;
    let col = c
        .call(Method::POST, &format!("v1/collectors/{id}/{verb}"), None)
        .await?;
    out.done(
        &format!(
            "Collector {collector} is {}",
            super::output::cell(&col["state"])
        ),
        &col,
    )
}

/// A collector's id from its name or id.
///
/// # Errors
/// [`Error::Problem`] (404) when no collector has that name.
pub async fn id(c: &Client, name_or_id: &str) -> Result<String, Error> {
    resolve(c, "collector", "v1/collectors", name_or_id).await
}
