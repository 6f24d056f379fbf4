//! Providers and the shape of their credentials.
//!
//! A service account's credentials are checked against its provider's schema before they are
//! encrypted, so a typo in a field name is reported at once, naming the field, instead of
//! surfacing as an opaque plugin failure hours later.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::access::Access;
use crate::model::Invalid;

/// One credential field.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Field {
    pub name: &'static str,
    /// Always `"string"` today; kept so clients can build forms without guessing.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub required: bool,
    /// Secret fields are shown as password inputs and never echoed back.
    pub secret: bool,
    pub description: &'static str,
    /// A URL a worker calls: it must be one the operator allows ([`Provider::check_access`]).
    #[serde(skip)]
    pub endpoint: bool,
}

const fn field(
    name: &'static str,
    required: bool,
    secret: bool,
    description: &'static str,
) -> Field {
    Field {
        name,
        kind: "string",
        required,
        secret,
        description,
        endpoint: false,
    }
}

/// A field holding a URL a worker calls.
const fn endpoint(name: &'static str, required: bool, description: &'static str) -> Field {
    Field {
        endpoint: true,
        ..field(name, required, false, description)
    }
}

/// A provider Gleaner knows.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Provider {
    pub id: &'static str,
    pub name: &'static str,
    /// Service accounts of billing providers carry cost data and must belong to a project.
    pub billing_only: bool,
    pub credentials: &'static [Field],
}

/// Every provider, in display order.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        id: "demo",
        name: "Demo (synthetic estate, no credentials)",
        billing_only: false,
        credentials: &[],
    },
    Provider {
        id: "aws",
        name: "Amazon Web Services",
        billing_only: false,
        credentials: &[
            field(
                "aws_access_key_id",
                false,
                false,
                "Access key id (without a key pair, `role_arn` is assumed from the worker's own credentials, where the operator allows it)",
            ),
            field("aws_secret_access_key", false, true, "Secret access key"),
            field(
                "aws_session_token",
                false,
                true,
                "Session token, for temporary credentials",
            ),
            field(
                "region_name",
                false,
                false,
                "Home region: where regions are discovered (default us-east-1)",
            ),
            field("role_arn", false, false, "Role to assume"),
            field(
                "external_id",
                false,
                true,
                "External id for the assumed role",
            ),
        ],
    },
    Provider {
        id: "google_cloud",
        name: "Google Cloud",
        billing_only: false,
        credentials: &[
            field("type", false, false, "Key type (service_account)"),
            field("project_id", true, false, "Project id"),
            field("private_key_id", true, false, "Private key id"),
            field("private_key", true, true, "Private key (PEM)"),
            field("client_email", true, false, "Service account e-mail"),
            field("client_id", true, false, "Client id"),
            field("auth_uri", false, false, "OAuth authorisation URI"),
            field("token_uri", false, false, "OAuth token URI"),
        ],
    },
    Provider {
        id: "azure",
        name: "Microsoft Azure",
        billing_only: false,
        credentials: &[
            field("tenant_id", true, false, "Directory (tenant) id"),
            field("client_id", true, false, "Application (client) id"),
            field("client_secret", true, true, "Client secret"),
            field("subscription_id", true, false, "Subscription id"),
        ],
    },
    Provider {
        id: "hyperbilling",
        name: "Hyperbilling",
        billing_only: true,
        credentials: &[
            field("account", true, false, "Hyperbilling account"),
            field("email", true, false, "E-mail of the Hyperbilling user"),
            field("key", true, true, "API key"),
        ],
    },
    Provider {
        id: "focus",
        name: "FOCUS cost export (any cloud)",
        billing_only: true,
        credentials: &[
            field(
                "aws_access_key_id",
                false,
                false,
                "Access key id, when the export is in a bucket",
            ),
            field(
                "aws_secret_access_key",
                false,
                true,
                "Secret access key, when the export is in a bucket",
            ),
            field(
                "billing_account_id",
                false,
                false,
                "Import only this BillingAccountId's rows (all rows when empty)",
            ),
        ],
    },
    Provider {
        id: "prometheus",
        name: "Prometheus server (node_exporter metrics)",
        billing_only: false,
        credentials: &[
            endpoint(
                "url",
                true,
                "The Prometheus server's base URL, e.g. http://prometheus.internal:9090 (one of GLEANER_NETWORK__ALLOW_ENDPOINTS)",
            ),
            field(
                "bearer_token",
                false,
                true,
                "A bearer token sent with every request",
            ),
            field("username", false, false, "Basic authentication user"),
            field("password", false, true, "Basic authentication password"),
        ],
    },
];

/// Looks a provider up by id.
#[must_use]
pub fn find(id: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.id == id)
}

impl Provider {
    /// Checks credentials against the schema; errors name the field as `credentials.<name>`.
    ///
    /// # Errors
    /// Every problem found, not only the first.
    pub fn validate(&self, credentials: &Value) -> Result<Map<String, Value>, Vec<Invalid>> {
        let Value::Object(map) = credentials else {
            return Err(vec![Invalid::new("credentials", "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        for key in map.keys() {
            if !self.credentials.iter().any(|f| f.name == key) {
                let known: Vec<_> = self.credentials.iter().map(|f| f.name).collect();
                let detail = if known.is_empty() {
                    format!("unknown field; provider `{}` takes no credentials", self.id)
                } else {
                    format!(
                        "unknown field; provider `{}` takes {}",
                        self.id,
                        known.join(", ")
                    )
                };
                errors.push(Invalid::new(format!("credentials.{key}"), detail));
            }
        }
        for f in self.credentials {
            match map.get(f.name) {
                None | Some(Value::Null) if f.required => {
                    errors.push(Invalid::new(
                        format!("credentials.{}", f.name),
                        "is required",
                    ));
                }
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.trim().is_empty() && f.required => {
                    errors.push(Invalid::new(
                        format!("credentials.{}", f.name),
                        "must not be empty",
                    ));
                }
                Some(Value::String(s)) if f.name == "email" && !looks_like_email(s) => {
                    errors.push(Invalid::new(
                        format!("credentials.{}", f.name),
                        "must be an e-mail address",
                    ));
                }
                Some(Value::String(_)) => {}
                Some(_) => errors.push(Invalid::new(
                    format!("credentials.{}", f.name),
                    "must be a string",
                )),
            }
        }
        if self.id == "aws" {
            errors.extend(aws_pairs(map));
        }
        if self.id == "prometheus" {
            errors.extend(prometheus_auth(map));
        }
        if errors.is_empty() {
            Ok(map.clone())
        } else {
            Err(errors)
        }
    }
}

impl Provider {
    /// Checks that every URL field of `credentials` names an endpoint `access` allows; errors
    /// name `credentials.<field>`. A field that is missing or not a string is [`Self::validate`]'s
    /// to report.
    ///
    /// # Errors
    /// Every URL the operator does not allow.
    pub fn check_access(
        &self,
        access: &Access,
        credentials: &Map<String, Value>,
    ) -> Result<(), Vec<Invalid>> {
        let errors: Vec<Invalid> = self
            .credentials
            .iter()
            .filter(|f| f.endpoint)
            .filter_map(|f| {
                let raw = credentials.get(f.name)?.as_str()?;
                access
                    .endpoint(&format!("credentials.{}", f.name), raw, &[])
                    .err()
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A Prometheus server's URL is a base to join API paths to, and it authenticates with a bearer
/// token or a user and password, not both: the credentials never ride in the URL, which is not
/// a secret field.
fn prometheus_auth(map: &Map<String, Value>) -> Vec<Invalid> {
    let given = |name: &str| {
        map.get(name)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let mut errors = Vec::new();
    if let Some(raw) = map.get("url").and_then(Value::as_str)
        && !raw.trim().is_empty()
    {
        match url::Url::parse(raw) {
            Err(e) => errors.push(Invalid::new(
                "credentials.url",
                format!("is not a URL: {e}"),
            )),
            Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() => {
                errors.push(Invalid::new(
                    "credentials.url",
                    "must be an http:// or https:// URL with a host",
                ));
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                errors.push(Invalid::new(
                    "credentials.url",
                    "must not carry a user or password: give them as username and password",
                ));
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                errors.push(Invalid::new(
                    "credentials.url",
                    "must not have a query or a fragment: it is the base the API's paths are joined to",
                ));
            }
            Ok(_) => {}
        }
    }
    if given("bearer_token") && (given("username") || given("password")) {
        errors.push(Invalid::new(
            "credentials.bearer_token",
            "give either bearer_token or username and password, not both",
        ));
    }
    if given("username") != given("password") {
        let missing = if given("username") {
            "password"
        } else {
            "username"
        };
        errors.push(Invalid::new(
            format!("credentials.{missing}"),
            "username and password go together",
        ));
    }
    errors
}

/// AWS credentials are a key pair (with an optional session token), a role, or both.
fn aws_pairs(map: &Map<String, Value>) -> Vec<Invalid> {
    let given = |name: &str| {
        map.get(name)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    let key = given("aws_access_key_id");
    let secret = given("aws_secret_access_key");
    let mut errors = Vec::new();
    if key && !secret {
        errors.push(Invalid::new(
            "credentials.aws_secret_access_key",
            "is required with aws_access_key_id",
        ));
    }
    if secret && !key {
        errors.push(Invalid::new(
            "credentials.aws_access_key_id",
            "is required with aws_secret_access_key",
        ));
    }
    if given("aws_session_token") && !key {
        errors.push(Invalid::new(
            "credentials.aws_session_token",
            "goes with a key pair (aws_access_key_id and aws_secret_access_key)",
        ));
    }
    if !key && !secret && !given("role_arn") {
        errors.push(Invalid::new(
            "credentials.aws_access_key_id",
            "is required, unless role_arn names a role to assume from the worker's own credentials",
        ));
    }
    if let Some(region) = map.get("region_name").and_then(Value::as_str)
        && !region.is_empty()
        && !is_aws_region(region)
    {
        errors.push(Invalid::new(
            "credentials.region_name",
            "must be an AWS region name, like eu-west-1",
        ));
    }
    if given("external_id") && !given("role_arn") {
        errors.push(Invalid::new(
            "credentials.external_id",
            "goes with role_arn",
        ));
    }
    errors
}

/// Whether `s` is spelled like an AWS region (`eu-west-1`, `us-gov-west-1`): letters in
/// dash-separated parts, then a number. A region becomes part of the host name each call goes to
/// (`ec2.{region}.amazonaws.com`), so nothing else may pass: not a dot, a slash or an `@`.
#[must_use]
pub fn is_aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let Some((number, words)) = parts.split_last() else {
        return false;
    };
    s.len() <= 32
        && words.len() >= 2
        && words[0].len() == 2
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

fn looks_like_email(s: &str) -> bool {
    let mut parts = s.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(local), Some(domain), None) if !local.is_empty() && domain.contains('.'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errs: Vec<Invalid>) -> Vec<String> {
        errs.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn demo_takes_no_credentials() {
        let demo = find("demo").expect("demo exists");
        assert!(demo.validate(&json!({})).is_ok());
        assert_eq!(
            fields(demo.validate(&json!({"key": "x"})).unwrap_err()),
            ["credentials.key"]
        );
    }

    #[test]
    fn hyperbilling_names_each_bad_field() {
        let hb = find("hyperbilling").expect("hyperbilling exists");
        assert!(
            hb.validate(&json!({"account": "a", "email": "ops@example.com", "key": "k"}))
                .is_ok()
        );
        let cases = [
            (
                json!({"account": "a", "email": "ops@example.com"}),
                vec!["credentials.key"],
            ),
            (
                json!({"account": "a", "email": "not-an-email", "key": "k"}),
                vec!["credentials.email"],
            ),
            (
                json!({"account": 7, "email": "ops@example.com", "key": "k"}),
                vec!["credentials.account"],
            ),
            (
                json!({"account": "a", "email": "ops@example.com", "key": "k", "extra": 1}),
                vec!["credentials.extra"],
            ),
            (json!("a string"), vec!["credentials"]),
        ];
        for (input, want) in cases {
            assert_eq!(fields(hb.validate(&input).unwrap_err()), want, "{input}");
        }
    }

    #[test]
    fn aws_takes_a_key_pair_a_role_or_both() {
        let aws = find("aws").expect("aws exists");
        for ok in [
            json!({"aws_access_key_id": "AKIA", "aws_secret_access_key": "s"}),
            json!({"aws_access_key_id": "AKIA", "aws_secret_access_key": "s", "aws_session_token": "t"}),
            json!({"role_arn": "arn:aws:iam::1:role/r", "external_id": "x"}),
            json!({"aws_access_key_id": "AKIA", "aws_secret_access_key": "s", "role_arn": "arn:aws:iam::1:role/r"}),
        ] {
            assert!(aws.validate(&ok).is_ok(), "{ok}");
        }
        let cases = [
            (json!({}), vec!["credentials.aws_access_key_id"]),
            (
                json!({"aws_access_key_id": "AKIA"}),
                vec!["credentials.aws_secret_access_key"],
            ),
            (
                json!({"aws_secret_access_key": "s", "role_arn": "arn:aws:iam::1:role/r"}),
                vec!["credentials.aws_access_key_id"],
            ),
            (
                json!({"aws_session_token": "t", "role_arn": "arn:aws:iam::1:role/r"}),
                vec!["credentials.aws_session_token"],
            ),
            (
                json!({"aws_access_key_id": "AKIA", "aws_secret_access_key": "s", "external_id": "x"}),
                vec!["credentials.external_id"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(fields(aws.validate(&input).unwrap_err()), want, "{input}");
        }
        let keys = |region: &str| json!({"aws_access_key_id": "AKIA", "aws_secret_access_key": "s", "region_name": region});
        for ok in [
            "us-east-1",
            "eu-west-1",
            "us-gov-west-1",
            "ap-southeast-12",
            "cn-north-1",
        ] {
            assert!(aws.validate(&keys(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "us",
            "us-east",
            "useast-1",
            "us-east-1.evil.example",
            "us-east-1/",
            "attacker.example#",
            "us@east-1",
            "US-EAST-1",
            "us--1",
        ] {
            assert_eq!(
                fields(aws.validate(&keys(bad)).unwrap_err()),
                ["credentials.region_name"],
                "{bad}"
            );
        }
    }

    #[test]
    fn prometheus_takes_a_base_url_and_one_way_to_authenticate() {
        let p = find("prometheus").expect("prometheus exists");
        for ok in [
            json!({"url": "http://127.0.0.1:9090"}),
            json!({"url": "https://prom.example.com/prometheus/", "bearer_token": "t"}),
            json!({"url": "http://prom:9090", "username": "u", "password": "p"}),
        ] {
            assert!(p.validate(&ok).is_ok(), "{ok}");
        }
        let cases = [
            (json!({}), vec!["credentials.url"]),
            (json!({"url": "prom:9090"}), vec!["credentials.url"]),
            (json!({"url": "ftp://prom"}), vec!["credentials.url"]),
            (
                json!({"url": "http://u:p@prom:9090"}),
                vec!["credentials.url"],
            ),
            (
                json!({"url": "http://prom:9090/?x=1"}),
                vec!["credentials.url"],
            ),
            (
                json!({"url": "http://prom", "bearer_token": "t", "username": "u", "password": "p"}),
                vec!["credentials.bearer_token"],
            ),
            (
                json!({"url": "http://prom", "username": "u"}),
                vec!["credentials.password"],
            ),
            (
                json!({"url": "http://prom", "password": "p"}),
                vec!["credentials.username"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(fields(p.validate(&input).unwrap_err()), want, "{input}");
        }
        let access = Access::new(&[], &["http://127.0.0.1:*".into()]).expect("a pattern");
        let creds = |url: &str| p.validate(&json!({"url": url})).expect("well formed");
        assert!(
            p.check_access(&access, &creds("http://127.0.0.1:9090"))
                .is_ok()
        );
        for outside in [
            "http://169.254.169.254/",
            "http://localhost:9090",
            "https://127.0.0.1:9090",
        ] {
            assert_eq!(
                fields(p.check_access(&access, &creds(outside)).unwrap_err()),
                ["credentials.url"],
                "{outside}"
            );
        }
    }

    #[test]
    fn every_provider_has_a_unique_id() {
        let mut ids: Vec<_> = PROVIDERS.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), PROVIDERS.len());
    }
}
