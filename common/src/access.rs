//! What a caller may make a worker reach: files on its disk and URLs on its network.
//!
//! A plugin option whose value a worker opens or calls is marked in the plugin's options schema
//! with `"x-gleaner-access"`: `"file"` for a path on the worker's disk, `"endpoint"` for a URL
//! the worker calls (with `"x-gleaner-public-endpoints"`, the provider's own endpoints, allowed
//! without the operator's say). Only the operator widens what is reachable:
//! - a file must resolve, with links followed, inside a directory of `GLEANER_FILES__ALLOW`;
//!   none named, every file option is refused;
//! - an endpoint must match `GLEANER_NETWORK__ALLOW_ENDPOINTS` or the option's public endpoints.
//!
//! The API checks a collector's options when they are set and again before each verification
//! and collection; the worker checks them before a run, and a plugin that walks a folder checks
//! each file it opens ([`Access::file_inside`]), since a link inside an allowed folder can lead
//! anywhere.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::model::Invalid;

/// The schema keyword marking an option a worker reaches.
pub const MARK: &str = "x-gleaner-access";
/// The schema keyword listing an endpoint option's public endpoints (patterns as in
/// [`Endpoint`]).
pub const PUBLIC_ENDPOINTS: &str = "x-gleaner-public-endpoints";

/// What the operator lets callers' options reach.
#[derive(Clone, Debug, Default)]
pub struct Access {
    dirs: Vec<PathBuf>,
    endpoints: Vec<Endpoint>,
}

/// Why an allowlist entry is unusable, at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GLEANER_FILES__ALLOW: `{0}` is not an absolute path")]
    RelativeDir(String),
    #[error("GLEANER_NETWORK__ALLOW_ENDPOINTS: {0}")]
    Endpoint(String),
}

impl Access {
    /// The operator's allowlists: absolute directories, and endpoint patterns.
    ///
    /// # Errors
    /// A relative directory, or a pattern that is not `scheme://host[:port]`.
    pub fn new(dirs: &[PathBuf], endpoints: &[String]) -> Result<Self, Error> {
        let dirs = dirs
            .iter()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| {
                if d.is_absolute() {
                    Ok(lexical(d))
                } else {
                    Err(Error::RelativeDir(d.display().to_string()))
                }
            })
            .collect::<Result<_, _>>()?;
        let endpoints = endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.parse().map_err(Error::Endpoint))
            .collect::<Result<_, _>>()?;
        Ok(Self { dirs, endpoints })
    }

    /// Checks every marked option of `options` against the allowlists; an option the schema
    /// does not mark is not looked at. Errors name `options.<name>`.
    ///
    /// # Errors
    /// Every option that reaches outside what is allowed.
    pub fn check(&self, schema: &Value, options: &Value) -> Result<(), Vec<Invalid>> {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return Ok(());
        };
        let mut errors = Vec::new();
        for (name, spec) in properties {
            let Some(value) = options.get(name) else {
                continue;
            };
            let field = format!("options.{name}");
            let Some(raw) = value.as_str() else {
                if spec.get(MARK).is_some() && !value.is_null() {
                    errors.push(Invalid::new(field, "must be a string"));
                }
                continue;
            };
            let checked = match spec.get(MARK).and_then(Value::as_str) {
                Some("file") => self.file(&field, raw).map(drop),
                Some("endpoint") => {
                    let public: Vec<Endpoint> = spec
                        .get(PUBLIC_ENDPOINTS)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str()?.parse().ok())
                        .collect();
                    self.endpoint(&field, raw, &public)
                }
                Some(other) => Err(Invalid::new(
                    field,
                    format!("the plugin marks this option with an unknown access `{other}`"),
                )),
                None => Ok(()),
            };
            errors.extend(checked.err());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// `raw` as the path to open: absolute, without `..`, and inside an allowed directory once
    /// links are followed. A path that does not exist (yet) but lies inside one is allowed: it
    /// is the operator's directory, and whoever reads it checks again ([`Self::file_inside`]).
    ///
    /// # Errors
    /// The path is refused; the error is the same whether or not it exists.
    pub fn file(&self, field: &str, raw: &str) -> Result<PathBuf, Invalid> {
        if self.dirs.is_empty() {
            return Err(Invalid::new(
                field,
                "reading files on the workers' disks is off: the operator allows no directory \
                 (GLEANER_FILES__ALLOW)",
            ));
        }
        let outside = || {
            Invalid::new(
                field,
                format!(
                    "must be an absolute path inside a directory the operator allows ({}), \
                     without `..`, and not a link that leads out of it",
                    self.dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        let path = Path::new(raw);
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(outside());
        }
        let path = lexical(path);
        let real_dirs = self.canonical_dirs();
        let inside = |p: &Path| real_dirs.iter().any(|d| p.starts_with(d));
        if !self.dirs.iter().any(|d| path.starts_with(d)) && !inside(&path) {
            return Err(outside());
        }
        match std::fs::canonicalize(&path) {
            Ok(real) if inside(&real) => Ok(real),
            Ok(_) => Err(outside()),
            // Missing, or a dangling link: nothing to read now; a reader checks what it opens.
            // Its nearest existing folder must be inside, or a link out of an allowed folder
            // would tell a missing file (accepted) from an existing one (refused).
            Err(_) => {
                let nearest = path
                    .ancestors()
                    .skip(1)
                    .find_map(|a| std::fs::canonicalize(a).ok());
                if nearest.is_some_and(|real| inside(&real)) {
                    Ok(path)
                } else {
                    Err(outside())
                }
            }
        }
    }

    /// Whether the file at `path`, with links followed, is inside an allowed directory. `false`
    /// when it cannot be resolved.
    #[must_use]
    pub fn file_inside(&self, path: &Path) -> bool {
        let Ok(real) = std::fs::canonicalize(path) else {
            return false;
        };
        self.canonical_dirs().iter().any(|d| real.starts_with(d))
    }

    /// The allowed directories with links followed, those that exist now.
    fn canonical_dirs(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect()
    }

    /// Checks that `raw` is a URL the operator allows, or one of `public`.
    ///
    /// # Errors
    /// It is not an http(s) URL with a host, or matches neither list.
    pub fn endpoint(&self, field: &str, raw: &str, public: &[Endpoint]) -> Result<(), Invalid> {
        let url =
            url::Url::parse(raw).map_err(|e| Invalid::new(field, format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Invalid::new(field, "must be an http:// or https:// URL"));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(Invalid::new(field, "must name a host"));
        };
        let host = host.to_ascii_lowercase();
        if self
            .endpoints
            .iter()
            .chain(public)
            .any(|e| e.matches(url.scheme(), &host, port))
        {
            return Ok(());
        }
        Err(Invalid::new(
            field,
            format!(
                "`{}://{host}:{port}` is neither a public endpoint of the provider nor one the \
                 operator allows (GLEANER_NETWORK__ALLOW_ENDPOINTS)",
                url.scheme()
            ),
        ))
    }
}

/// An allowed endpoint: `scheme://host[:port]`. A `*` label of the host matches any one label
/// (`https://s3.*.amazonaws.com`), a port of `*` any port; without a port, the scheme's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    scheme: String,
    host: Vec<String>,
    /// `None`: any port.
    port: Option<u16>,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("`{raw}` {why}; write scheme://host[:port], e.g. http://127.0.0.1:9000")
        };
        let (scheme, rest) = raw
            .trim()
            .split_once("://")
            .ok_or_else(|| bad("has no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("is not http or https")),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("has user information"));
        }
        // An IPv6 host is bracketed, and has colons of its own.
        let (host, port) = match authority.rfind(':') {
            Some(at) if !authority[at..].contains(']') => {
                (&authority[..at], Some(&authority[at + 1..]))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = match port {
            None => Some(default),
            Some("*") => None,
            Some(p) => Some(p.parse().map_err(|_| bad("has a malformed port"))?),
        };
        Ok(Self {
            scheme,
            host: host
                .to_ascii_lowercase()
                .split('.')
                .map(str::to_owned)
                .collect(),
            port,
        })
    }
}

impl Endpoint {
    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let labels: Vec<&str> = host.split('.').collect();
        self.scheme == scheme
            && self.port.is_none_or(|p| p == port)
            && labels.len() == self.host.len()
            && self
                .host
                .iter()
                .zip(&labels)
                .all(|(want, got)| want == got || (want == "*" && !got.is_empty()))
    }
}

/// `path` with `.` and repeated separators gone (`..` is refused before this).
fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"properties": {
            "path": {"type": "string", "x-gleaner-access": "file"},
            "endpoint_url": {"type": "string", "x-gleaner-access": "endpoint",
                "x-gleaner-public-endpoints": ["https://s3.amazonaws.com", "https://s3.*.amazonaws.com"]},
            "other": {"type": "string"}
        }})
    }

    #[test]
    fn endpoints_match_scheme_host_and_port() {
        let a = Access::new(
            &[],
            &[
                "http://127.0.0.1:9000".into(),
                "https://*.example.com".into(),
            ],
        )
        .unwrap();
        let ok = |url: &str| a.check(&schema(), &json!({"endpoint_url": url})).is_ok();
        assert!(ok("http://127.0.0.1:9000/bucket"));
        assert!(ok("https://s3.amazonaws.com"));
        assert!(ok("https://s3.eu-west-1.amazonaws.com/x"));
        assert!(ok("https://minio.example.com"));
        assert!(!ok("http://127.0.0.1:5432"));
        assert!(!ok("http://127.0.0.1"));
        assert!(!ok("https://127.0.0.1:9000"));
        assert!(!ok("http://169.254.169.254/latest/meta-data/"));
        assert!(!ok("http://s3.amazonaws.com"));
        assert!(!ok("https://s3.amazonaws.com.evil.test"));
        assert!(!ok("https://a.b.example.com"));
        assert!(!ok("http://s3.amazonaws.com@169.254.169.254/"));
        assert!(!ok("http://169.254.169.254#@127.0.0.1:9000"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("http://[::1]:9000"));
        let errs = a
            .check(
                &schema(),
                &json!({"endpoint_url": "http://169.254.169.254"}),
            )
            .unwrap_err();
        assert_eq!(errs[0].field, "options.endpoint_url");
    }

    #[test]
    fn any_port_and_ipv6_patterns() {
        let a = Access::new(
            &[],
            &["http://127.0.0.1:*".into(), "http://[::1]:9000".into()],
        )
        .unwrap();
        let ok = |url: &str| a.endpoint("e", url, &[]).is_ok();
        assert!(ok("http://127.0.0.1:1234"));
        assert!(ok("http://[::1]:9000"));
        assert!(!ok("http://[::1]:9001"));
        assert!(!ok("http://127.0.0.2:1234"));
    }

    #[test]
    fn malformed_patterns_fail_at_start() {
        for bad in [
            "127.0.0.1:9000",
            "ftp://x",
            "http://:80",
            "http://x:y",
            "http://u@x",
        ] {
            assert!(Access::new(&[], &[bad.into()]).is_err(), "{bad}");
        }
        assert!(Access::new(&["relative".into()], &[]).is_err());
    }

    #[test]
    fn files_stay_inside_the_allowed_directories() {
        let root = std::env::temp_dir().join(format!("gleaner-access-{}", std::process::id()));
        let allowed = root.join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::write(allowed.join("sub/a.csv"), "x").unwrap();
        std::fs::write(root.join("secret.csv"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("secret.csv"), allowed.join("out.csv")).unwrap();
        std::os::unix::fs::symlink(&root, allowed.join("up")).unwrap();
        let a = Access::new(std::slice::from_ref(&allowed), &[]).unwrap();
        let at = |p: &Path| a.file("options.path", p.to_str().unwrap());
        assert!(at(&allowed.join("sub/a.csv")).is_ok());
        assert!(at(&allowed).is_ok());
        assert!(at(&allowed.join("not-yet.csv")).is_ok());
        let outside = at(&root.join("secret.csv")).unwrap_err();
        let missing = at(&root.join("missing.csv")).unwrap_err();
        assert_eq!(
            outside, missing,
            "the error says nothing of whether a file exists"
        );
        assert!(at(&allowed.join("../secret.csv")).is_err());
        assert!(at(&allowed.join("sub/../../secret.csv")).is_err());
        assert!(at(&allowed.join("out.csv")).is_err());
        assert!(at(&allowed.join("up/secret.csv")).is_err());
        // Through a link that leads out, a missing file is refused in the same words.
        assert_eq!(at(&allowed.join("up/missing.csv")).unwrap_err(), outside);
        assert_eq!(
            at(&allowed.join("up/no/such/dir.csv")).unwrap_err(),
            outside
        );
        assert!(a.file("options.path", "sub/a.csv").is_err());
        assert!(a.file_inside(&allowed.join("sub/a.csv")));
        assert!(!a.file_inside(&allowed.join("out.csv")));
        let none = Access::default().file("options.path", allowed.to_str().unwrap());
        assert!(none.unwrap_err().detail.contains("GLEANER_FILES__ALLOW"));
        // An unmarked option is not looked at; a marked one that is not a string is refused.
        assert!(a.check(&schema(), &json!({"other": "/etc/passwd"})).is_ok());
        assert!(a.check(&schema(), &json!({"path": 5})).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
