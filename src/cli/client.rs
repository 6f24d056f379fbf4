//! The HTTP client every command goes through: where the server is, the key, and the API's
//! problem+json turned into [`Error::Problem`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::Error;

/// Overrides the stored server.
pub const SERVER_VAR: &str = "GLEANER_SERVER";
/// Overrides the stored key.
pub const KEY_VAR: &str = "GLEANER_API_KEY";
/// Where `login` keeps the server and key, instead of the user's config directory.
pub const CONFIG_VAR: &str = "GLEANER_CLI_CONFIG";

/// What `gleaner login` stores.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Login {
    pub server: Option<String>,
    pub api_key: Option<String>,
}

/// `$GLEANER_CLI_CONFIG`, else `cli.toml` in the user's config directory
/// (`$XDG_CONFIG_HOME/gleaner`, by default `~/.config/gleaner`).
///
/// # Errors
/// [`Error::Config`] when there is no home directory to find it in.
pub fn login_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(CONFIG_VAR).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    use etcetera::BaseStrategy as _;
    let base = etcetera::choose_base_strategy()
        .map_err(|e| Error::Config(format!("no config directory to keep the login in: {e}")))?;
    Ok(base.config_dir().join("gleaner").join("cli.toml"))
}

impl Login {
    /// The stored login, or an empty one when there is none yet.
    ///
    /// # Errors
    /// [`Error::Config`] when the file exists but cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the login readable by its owner only: the key is a password. The file is
    /// created with mode 0600 and its directory 0700, so the key is never readable by others,
    /// not even for a moment.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let fail = |e: std::io::Error| Error::Config(format!("{}: {e}", path.display()));
        let text = toml::to_string(self).map_err(|e| Error::Config(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir).map_err(fail)?;
        }
        let tmp = path.with_extension("toml.tmp");
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        {
            use std::io::Write as _;
            let mut f = o.open(&tmp).map_err(fail)?;
            // An older file of another mode keeps it through `open`: set it again.
            #[cfg(unix)]
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(fail)?;
            f.write_all(text.as_bytes()).map_err(fail)?;
            f.sync_all().map_err(fail)?;
        }
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// A problem+json body, as far as the CLI prints it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
    #[serde(default)]
    pub stderr: Option<String>,
}

/// One offending field of a problem.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

/// A client of one server with one key.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
}

// Long enough for a slow verify (the API answers 504 itself at its own timeout); the event
// stream has no timeout of its own, only its idle read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl Client {
    /// A client of `server` with `key`.
    ///
    /// # Errors
    /// [`Error::Config`] for a server that is not an `http` or `https` URL.
    pub fn new(server: &str, key: Option<String>) -> Result<Self, Error> {
        let mut base = Url::parse(server)
            .map_err(|e| Error::Config(format!("server `{server}` is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "server `{server}` must be an http:// or https:// URL"
            )));
        }
        // `join` replaces the last segment of a base without a trailing slash.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("gleaner-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self { http, base, key })
    }

    /// The server and key from the environment, else from `gleaner login`'s file.
    ///
    /// # Errors
    /// [`Error::Config`] when neither names a server.
    pub fn from_login() -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        // The environment alone needs no file: a broken one does not stop a script that sets both.
        let stored = match (var(SERVER_VAR), var(KEY_VAR)) {
            (Some(_), Some(_)) => Login::default(),
            _ => Login::read(&login_path()?)?,
        };
        let server = var(SERVER_VAR).or(stored.server).ok_or_else(|| {
            Error::Config(format!(
                "no server: run `gleaner login --server URL`, or set {SERVER_VAR}"
            ))
        })?;
        Self::new(&server, var(KEY_VAR).or(stored.api_key))
    }

    /// The server's base URL.
    pub fn server(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::Config(format!("{path}: {e}")))
    }

    /// A request to `path` (relative to the server) with the key.
    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, Error> {
        let mut r = self.http.request(method, self.url(path)?);
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        Ok(r)
    }

    /// Sends and reads a JSON answer; `null` for 204.
    ///
    /// # Errors
    /// [`Error::Problem`] for an error status, [`Error::Unreachable`] when the server does not
    /// answer.
    pub async fn send(&self, r: reqwest::RequestBuilder) -> Result<Value, Error> {
        let resp = r
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status == StatusCode::NO_CONTENT || (status.is_success() && bytes.is_empty()) {
            return Ok(Value::Null);
        }
        if !status.is_success() {
            return Err(Error::Problem(Box::new(problem_of(status, &bytes))));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Unreachable(format!("{}: the answer is not JSON: {e}", self.base)))
    }

    pub(crate) fn unreachable(&self, e: reqwest::Error) -> Error {
        // reqwest's message leaves out the cause ("connection refused"), which users need.
        let mut msg = format!("{}: {e}", self.base);
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        Error::Unreachable(msg)
    }

    /// `GET path?query`.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Error> {
        self.send(self.request(Method::GET, path)?.query(query))
            .await
    }

    /// `method path` with a JSON body.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let mut r = self.request(method, path)?;
        if let Some(b) = body {
            r = r.json(b);
        }
        self.send(r).await
    }
}

/// The problem in an error answer; a body that is not problem+json (a proxy's page, say)
/// becomes one with the status and the body's start.
pub(crate) fn problem_of(status: StatusCode, body: &[u8]) -> Problem {
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) if !p.title.is_empty() || !p.detail.is_empty() => p,
        _ => Problem {
            kind: String::new(),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_owned(),
            ..Problem::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_below_a_server_with_a_path() {
        let c = Client::new("https://example.com/gleaner", None).expect("a URL");
        assert_eq!(
            c.url("/v1/jobs").expect("joins").as_str(),
            "https://example.com/gleaner/v1/jobs"
        );
        let c = Client::new("http://127.0.0.1:8080", None).expect("a URL");
        assert_eq!(
            c.url("v1/jobs/x/tasks").expect("joins").as_str(),
            "http://127.0.0.1:8080/v1/jobs/x/tasks"
        );
        for bad in ["127.0.0.1:8080", "ftp://example.com", "mailto:a@b", ""] {
            assert!(Client::new(bad, None).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn a_body_that_is_not_a_problem_still_reads() {
        let p = problem_of(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(p.status, 502);
        assert_eq!(p.title, "Bad Gateway");
        assert_eq!(p.detail, "<html>bad gateway</html>");
        let p = problem_of(
            StatusCode::CONFLICT,
            br#"{"type":"/problems/duplicate-name","title":"Name already in use","status":409,"detail":"taken","errors":[{"field":"name","detail":"must be unique"}]}"#,
        );
        assert_eq!(p.errors[0].field, "name");
        assert_eq!(p.kind, "/problems/duplicate-name");
    }

    #[test]
    fn the_login_file_is_the_owners_alone() {
        let dir = std::env::temp_dir().join(format!("gleaner-login-{}", uuid::Uuid::new_v4()));
        let path = dir.join("sub").join("cli.toml");
        let login = Login {
            server: Some("http://127.0.0.1:1".into()),
            api_key: Some("glk_secret".into()),
        };
        login.write(&path).expect("writes");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode =
                |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().expect("a dir")), 0o700);
        }
        let back = Login::read(&path).expect("reads");
        assert_eq!(back.api_key.as_deref(), Some("glk_secret"));
        assert!(
            Login::read(&dir.join("none.toml"))
                .expect("absent is empty")
                .server
                .is_none()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
