//! `gleaner login` and `gleaner logout`: the server and key the other commands use.

use std::io::IsTerminal as _;

use serde_json::json;

use super::client::{self, Client, Login};
use super::{Error, Output};

/// Store a server and an API key for the other commands.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The API's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// Read the key from standard input instead of asking for it (for scripts).
    #[arg(long)]
    pub api_key_stdin: bool,
    #[command(flatten)]
    pub out: Output,
}

/// Checks the key against the server, then stores both with owner-only permissions.
///
/// # Errors
/// [`Error::Problem`] when the server refuses the key; nothing is stored then.
pub async fn login(args: Args) -> Result<(), Error> {
    let key = read_key(args.api_key_stdin)?;
    let c = Client::new(&args.server, Some(key.clone()))?;
    // Any key can read projects: this proves the server answers and knows the key.
    c.get("v1/projects", &[]).await?;
    let path = client::login_path()?;
    Login {
        server: Some(c.server().to_string()),
        api_key: Some(key),
    }
    .write(&path)?;
    args.out.done(
        &format!("Logged in to {}; saved in {}", c.server(), path.display()),
        &json!({"server": c.server().as_str(), "config": path}),
    )
}

/// Forget the stored server and key.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {}

/// Removes the stored login; there being none is no error.
///
/// # Errors
/// [`Error::Io`] when the file exists but cannot be removed.
pub fn logout(_: LogoutArgs) -> Result<(), Error> {
    let path = client::login_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => println!("Removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("Not logged in"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn read_key(from_stdin: bool) -> Result<String, Error> {
    let key = if !from_stdin && std::io::stdin().is_terminal() {
        rpassword::prompt_password("API key: ")?
    } else if !from_stdin {
        // The environment is a fine source in scripts too, but never the command line: argv
        // is visible to every user of the machine.
        match std::env::var(client::KEY_VAR)
            .ok()
            .filter(|k| !k.is_empty())
        {
            Some(k) => k,
            None => {
                return Err(Error::Usage(format!(
                    "no terminal to ask for the key on: pass --api-key-stdin, or set {}",
                    client::KEY_VAR
                )));
            }
        }
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(Error::Usage("the API key is empty".into()));
    }
    Ok(key)
}
