//! `gleaner resources`.

use serde_json::Value;

use super::{Client, Column, Error, Format, Output, collector, items, project, service_account};

/// Resources: what collectors found, with their history.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// A page of resources; the table ends with how many match.
    #[command(alias = "list")]
    Ls {
        /// Only this type, e.g. compute.instance.
        #[arg(long = "type")]
        resource_type: Option<String>,
        /// Only this project's, by name or id.
        #[arg(long)]
        project: Option<String>,
        /// Only those found with this service account, by name or id.
        #[arg(long)]
        account: Option<String>,
        /// Only this collector's, by name or id.
        #[arg(long)]
        collector: Option<String>,
        /// Only resources in this state.
        #[arg(long, value_parser = ["ACTIVE", "DELETED"], ignore_case = true)]
        state: Option<String>,
        /// Resources per page (1–1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The page after this cursor (printed under the previous page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One resource with its data.
    Show {
        /// The resource's id.
        resource: String,
    },
    /// A resource's history, oldest first: what each job changed.
    Changes {
        /// The resource's id.
        resource: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

const COLUMNS: &[Column] = &[
    Column("ID", "id"),
    Column("TYPE", "resource_type"),
    Column("NAME", "name"),
    Column("REGION", "region"),
    Column("STATE", "state"),
    Column("KEY", "resource_key"),
    Column("UPDATED", "updated_at"),
];

const CHANGES: &[Column] = &[
    Column("AT", "created_at"),
    Column("KIND", "kind"),
    Column("JOB", "job_id"),
    Column("CHANGED", "changed"),
];

/// Runs `gleaner resources`.
///
/// # Errors
/// What the API answers, as [`Error`].
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Ls {
            resource_type,
            project,
            account,
            collector,
            state,
            limit,
            cursor,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(t) = resource_type {
                q.push(("resource_type", t));
            }
            if let Some(p) = project {
                q.push(("project_id", project::id(c, &p).await?));
            }
            if let Some(a) = account {
                q.push(("service_account_id", service_account::id(c, &a).await?));
            }
            if let Some(col) = collector {
                q.push(("collector_id", collector::id(c, &col).await?));
            }
            if let Some(s) = state {
                q.push(("state", s.to_ascii_uppercase()));
            }
            if let Some(cur) = cursor {
                q.push(("cursor", cur));
            }
            let page = c.get("v1/resources", &q).await?;
            out.list(&page, items(&page), COLUMNS)?;
            if out.format == Format::Table {
                eprintln!(
                    "{} shown of {} matching",
                    items(&page).len(),
                    super::output::cell(&page["total"])
                );
                if let Some(next) = page["next_cursor"].as_str() {
                    eprintln!("next page: --cursor {next}");
                }
            }
            Ok(())
        }
        Action::Show { resource } => {
            out.one(&c.get(&format!("v1/resources/{resource}"), &[]).await?)
        }
        Action::Changes { resource, limit } => {
            let page = c
                .get(
                    &format!("v1/resources/{resource}/changes"),
                    &[("limit", limit.to_string())],
                )
                .await?;
            let rows: Vec<Value> = items(&page).iter().cloned().map(with_changed).collect();
            out.list(&page, &rows, CHANGES)
        }
    }
}

/// Adds `changed`: each changed field as `field: old → new`, the diff a person reads.
fn with_changed(mut ch: Value) -> Value {
    let text = ch["diff"].as_object().map(|d| {
        d.iter()
            .map(|(field, v)| format!("{field}: {} → {}", short(&v["old"]), short(&v["new"])))
            .collect::<Vec<_>>()
            .join("; ")
    });
    if let (Some(t), Some(o)) = (text, ch.as_object_mut()) {
        o.insert("changed".into(), t.into());
    }
    ch
}

/// A value in at most 60 characters.
fn short(v: &Value) -> String {
    let s = if v.is_null() {
        "null".to_owned()
    } else {
        v.to_string()
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_diff_reads_field_by_field() {
        let ch = with_changed(json!({"kind": "UPDATED", "diff": {
            "name": {"old": "a", "new": "b"},
            "data": {"old": {"size": 1}, "new": {"size": "x".repeat(80)}},
        }}));
        let text = ch["changed"].as_str().expect("a diff");
        assert!(
            text.starts_with(r#"data: {"size":1} → {"size":"xxx"#),
            "{text}"
        );
        assert!(text.contains("…; name: \"a\" → \"b\""), "{text}");
        assert!(
            with_changed(json!({"kind": "CREATED", "diff": null}))
                .get("changed")
                .is_none()
        );
    }
}
