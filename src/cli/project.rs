//! `gleaner projects`.

use reqwest::Method;
use serde_json::json;

use super::{Client, Column, Error, Output, items, resolve};

/// Projects group service accounts, their resources and their costs.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the projects.
    #[command(alias = "list")]
    Ls,
    /// One project.
    Show {
        /// Its name or id.
        project: String,
    },
    /// Create a project.
    Create {
        /// 1–255 characters, unique.
        name: String,
    },
}

const COLUMNS: &[Column] = &[
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("CREATED", "created_at"),
];

/// Runs `gleaner projects`.
///
/// # Errors
/// What the API answers, as [`Error`].
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Ls => {
            let list = c.get("v1/projects", &[]).await?;
            out.list(&list, items(&list), COLUMNS)
        }
        Action::Show { project } => {
            let id = id(c, &project).await?;
            out.one(&c.get(&format!("v1/projects/{id}"), &[]).await?)
        }
        Action::Create { name } => {
            let p = c
                .call(Method::POST, "v1/projects", Some(&json!({ "name": name })))
                .await?;
            out.one(&p)
        }
    }
}

/// A project's id from its name or id.
///
/// # Errors
/// [`Error::Problem`] (404) when no project has that name.
pub async fn id(c: &Client, name_or_id: &str) -> Result<String, Error> {
    resolve(c, "project", "v1/projects", name_or_id).await
}
