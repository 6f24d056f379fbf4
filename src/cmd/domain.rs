//! `gleaner domain`: domains (tenants) and their operators' API keys.

use std::path::PathBuf;

use anyhow::Context as _;
use gleaner_common::config::Settings;
use gleaner_common::model::Name;
use gleaner_common::store::api_key;

use crate::app;
use crate::standalone::DataDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// A standalone data directory to act on, instead of the database of
    /// `GLEANER_DATABASE_URL` (it may be in use by `gleaner standalone`).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Creates a domain and prints its first API key, an admin one, once.
    Create {
        /// 1–255 characters, unique.
        name: String,
    },
    /// Creates another admin API key of a domain (of `default`, for a first key there, or one
    /// that replaces a lost key) and prints it, once.
    Key {
        /// The domain's name.
        name: String,
    },
    /// When the default domain has no key that works (a first start), creates an admin key
    /// and writes it to FILE, readable by its owner only; otherwise does nothing.
    Bootstrap {
        /// Where to write the key.
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// Runs the action; keys go to stdout alone (for scripts), what happened to stderr.
///
/// # Errors
/// The database is unreachable, the name is invalid or taken, or the file cannot be written.
pub async fn run(args: Args, settings: &Settings) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    if let Some(dir) = &args.data_dir {
        settings.database_url = DataDir::database_url_of(dir);
        settings.database.schema = None;
    }
    let db = app::database(&settings, true).await?;
    match args.action {
        Action::Create { name } => {
            let name = Name::parse("name", &name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (id, secret) = api_key::create_domain(&db, &name).await?;
            eprintln!(
                "Created domain '{name}' ({id}). Its admin API key, shown this once (send it as \
                 `authorization: Bearer <key>`):"
            );
            println!("{}", secret.expose());
        }
        Action::Key { name } => {
            let domain = api_key::find_domain(&db, &name).await?;
            let secret = api_key::create_admin_key(&db, domain).await?;
            eprintln!("A new admin API key of domain '{name}', shown this once:");
            println!("{}", secret.expose());
        }
        Action::Bootstrap { key_file } => {
            if crate::standalone::bootstrap_admin_key(&db, &key_file)
                .await
                .with_context(|| format!("writing {}", key_file.display()))?
            {
                eprintln!(
                    "An admin API key of the default domain is in {0}: export GLEANER_API_KEY=$(cat {0})",
                    key_file.display()
                );
            } else {
                eprintln!(
                    "The default domain has a working API key already; `gleaner domain key default` makes another."
                );
            }
        }
    }
    db.close().await?;
    Ok(())
}
