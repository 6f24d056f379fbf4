//! `gleaner service-accounts`.

use reqwest::Method;
use serde_json::{Map, Value};

use super::{Client, Column, Error, Output, items, json_arg, pairs, project, resolve};

/// Service accounts: a provider's credentials, kept encrypted and never shown again.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    #[command(flatten)]
    pub out: Output,
}

/// Where the credentials of `create` and `update` come from. Never a value on the command line
/// alone: argv is visible to every user of the machine, so secrets come from a file or stdin.
#[derive(Debug, Default, clap::Args)]
pub struct Credentials {
    /// The provider's credential fields as a JSON object: `@FILE`, or `-` for standard input.
    #[arg(long, value_name = "@FILE|-")]
    pub credentials: Option<String>,
    /// One credential field that is not secret (a region, an account id); repeatable, and
    /// merged over `--credentials`.
    #[arg(long = "credential", value_name = "FIELD=VALUE")]
    pub fields: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the service accounts.
    #[command(alias = "list")]
    Ls {
        /// Only this provider's accounts (`gleaner service-accounts providers` lists them).
        #[arg(long)]
        provider: Option<String>,
    },
    /// One service account (never its credentials).
    Show {
        /// Its name or id.
        account: String,
    },
    /// The providers and the credential fields each needs.
    Providers,
    /// Register a service account.
    Create {
        /// 1–255 characters, unique among the provider's accounts.
        #[arg(long)]
        name: String,
        /// A provider id.
        #[arg(long)]
        provider: String,
        /// Its project, by name or id; required for billing providers.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        credentials: Credentials,
    },
    /// Change a service account's name, project or credentials (replaced as a whole).
    Update {
        /// Its name or id.
        account: String,
        #[arg(long)]
        name: Option<String>,
        /// Its new project, by name or id.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        credentials: Credentials,
    },
    /// Check the account's credentials with a plugin of its provider, without collecting.
    Verify {
        /// Its name or id.
        account: String,
        /// The collector whose plugin and options check it (default: its provider's).
        #[arg(long)]
        collector: Option<String>,
    },
}

const COLUMNS: &[Column] = &[
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("PROVIDER", "provider"),
    Column("PROJECT", "project_id"),
    Column("CREDENTIALS", "has_credentials"),
    Column("CREATED", "created_at"),
];

const PROVIDERS: &[Column] = &[
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("BILLING", "billing_only"),
    Column("CREDENTIAL FIELDS", "fields"),
];

/// Runs `gleaner service-accounts`.
///
/// # Errors
/// What the API answers, as [`Error`].
pub async fn run(c: &Client, args: Args) -> Result<(), Error> {
    let out = args.out;
    match args.action {
        Action::Ls { provider } => {
            let q: Vec<(&str, String)> = provider.map(|p| ("provider", p)).into_iter().collect();
            let list = c.get("v1/service-accounts", &q).await?;
            out.list(&list, items(&list), COLUMNS)
        }
        Action::Show { account } => {
            let id = id(c, &account).await?;
            out.one(&c.get(&format!("v1/service-accounts/{id}"), &[]).await?)
        }
        Action::Providers => {
            let list = c.get("v1/providers", &[]).await?;
            // The fields in one cell: a required one marked `*`, a secret one `(secret)`.
            let rows: Vec<Value> = items(&list)
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    let fields: Vec<String> = p["credentials"]
                        .as_array()
                        .map_or(&[][..], Vec::as_slice)
                        .iter()
                        .map(|f| {
                            let mut s = super::output::cell(&f["name"]);
                            if f["required"] == true {
                                s.push('*');
                            }
                            if f["secret"] == true {
                                s.push_str(" (secret)");
                            }
                            s
                        })
                        .collect();
                    p["fields"] = fields.join(", ").into();
                    p
                })
                .collect();
            out.list(&list, &rows, PROVIDERS)
        }
        Action::Create {
            name,
            provider,
            project,
            credentials,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), name.into());
            body.insert("provider".into(), provider.into());
            if let Some(p) = project {
                body.insert("project_id".into(), project::id(c, &p).await?.into());
            }
            if let Some(cred) = credentials.read()? {
                body.insert("credentials".into(), cred);
            }
            let a = c
                .call(Method::POST, "v1/service-accounts", Some(&body.into()))
                .await?;
            out.one(&a)
        }
        Action::Update {
            account,
            name,
            project,
            credentials,
        } => {
            let id = id(c, &account).await?;
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), n.into());
            }
            if let Some(p) = project {
                body.insert("project_id".into(), project::id(c, &p).await?.into());
            }
            if let Some(cred) = credentials.read()? {
                body.insert("credentials".into(), cred);
            }
            if body.is_empty() {
                return Err(Error::Usage(
                    "nothing to change: give --name, --project or credentials".into(),
                ));
            }
            let a = c
                .call(
                    Method::PATCH,
                    &format!("v1/service-accounts/{id}"),
                    Some(&body.into()),
                )
                .await?;
            out.one(&a)
        }
        Action::Verify { account, collector } => {
            let id = id(c, &account).await?;
            let mut body = Map::new();
            if let Some(col) = collector {
                body.insert(
                    "collector_id".into(),
                    super::collector::id(c, &col).await?.into(),
                );
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("v1/service-accounts/{id}/verify"),
                    Some(&body.into()),
                )
                .await?;
            out.done(
                &format!(
                    "{account}: verified by {}",
                    super::output::cell(&v["plugin_id"])
                ),
                &v,
            )
        }
    }
}

impl Credentials {
    /// The credentials object, `None` when neither flag was given.
    fn read(&self) -> Result<Option<Value>, Error> {
        if self.credentials.is_none() && self.fields.is_empty() {
            return Ok(None);
        }
        let mut obj = match self.credentials.as_deref() {
            Some(raw) if raw == "-" || raw.starts_with('@') => {
                match json_arg("--credentials", raw)? {
                    Value::Object(m) => m,
                    _ => {
                        return Err(Error::Usage(
                            "--credentials: expected a JSON object of the provider's fields".into(),
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(Error::Usage(
                    "--credentials takes @FILE or - (standard input): secrets on the command line are visible to every user of the machine".into(),
                ));
            }
            None => Map::new(),
        };
        obj.extend(pairs("--credential", &self.fields)?);
        Ok(Some(Value::Object(obj)))
    }
}

/// A service account's id from its name or id.
///
/// # Errors
/// [`Error::Problem`] (404) when no account has that name, (409) when accounts of two
/// providers share it.
pub async fn id(c: &Client, name_or_id: &str) -> Result<String, Error> {
    resolve(c, "service account", "v1/service-accounts", name_or_id).await
}
