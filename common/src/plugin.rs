//! What the catalog knows of a plugin: its id, kind, provider, versions and options schema.
//!
//! The implementations live in the worker; this description is shared so the API can list
//! plugins and validate a collector's options without depending on the worker crate, and
//! [`Verifier`] is the seam through which the API asks a plugin to check credentials.

use async_trait::async_trait;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::id::DomainId;
use crate::model::{Invalid, JobKind};
use crate::store;

/// What a plugin produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Inventory: cloud resources.
    Collector,
    /// Billing: cost records.
    CostDataSource,
    /// Monitoring: metric samples.
    MetricDataSource,
}

impl PluginKind {
    /// The name used in JSON and in the database.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            PluginKind::Collector => "collector",
            PluginKind::CostDataSource => "cost_data_source",
            PluginKind::MetricDataSource => "metric_data_source",
        }
    }

    /// The job kind (and so the queue) a plugin of this kind runs on.
    #[must_use]
    pub const fn job_kind(self) -> JobKind {
        match self {
            PluginKind::Collector => JobKind::Inventory,
            PluginKind::CostDataSource => JobKind::Billing,
            PluginKind::MetricDataSource => JobKind::Metrics,
        }
    }
}

/// A catalog entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginInfo {
    pub id: String,
    pub name: String,
    pub description: String,
    pub kind: PluginKind,
    /// Service accounts of this provider are linked to the plugin's collectors.
    pub provider: String,
    /// Oldest first.
    pub versions: Vec<String>,
    pub latest: String,
    /// Built into Gleaner (official) or registered by a user (private).
    pub official: bool,
    /// Resource types the plugin reports (collectors), or collects metrics for (metric data
    /// sources).
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// A JSON Schema (draft 2020-12) for the collector's `options`.
    pub options_schema: Value,
    /// Metrics it collects, per resource type (metric data sources only).
    #[serde(default)]
    pub metrics: Vec<crate::metric::MetricInfo>,
}

impl PluginInfo {
    /// The version a collection runs: the latest while its collector follows the latest
    /// (`upgrade_mode` AUTO), else the version pinned.
    #[must_use]
    pub fn version_for<'a>(&'a self, mode: crate::model::UpgradeMode, pinned: &'a str) -> &'a str {
        match mode {
            crate::model::UpgradeMode::Auto => &self.latest,
            crate::model::UpgradeMode::Manual => pinned,
        }
    }

    /// Checks that `version` is one of the plugin's versions; the error names the field
    /// `version` and lists the versions there are.
    ///
    /// # Errors
    /// The plugin has no such version.
    pub fn validate_version(&self, version: &str) -> Result<(), Invalid> {
        if self.versions.iter().any(|v| v == version) {
            return Ok(());
        }
        Err(Invalid::new(
            "version",
            format!(
                "plugin `{}` has no version `{version}`; it has {}",
                self.id,
                self.versions.join(", ")
            ),
        ))
    }

    /// Checks options against the plugin's schema; errors name the field as `options.<path>`.
    ///
    /// # Errors
    /// Every violation found.
    pub fn validate_options(&self, options: &Value) -> Result<(), Vec<Invalid>> {
        let validator = jsonschema::validator_for(&self.options_schema).map_err(|e| {
            vec![Invalid::new(
                "options",
                format!("the plugin's options schema is invalid: {e}"),
            )]
        })?;
        let errors: Vec<Invalid> = validator
            .iter_errors(options)
            .map(|e| {
                let path = e.instance_path().to_string();
                let field = if path.is_empty() {
                    "options".to_owned()
                } else {
                    format!("options{}", path.replace('/', "."))
                };
                Invalid::new(field, e.to_string())
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The plugins a deployment offers.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    official: Vec<PluginInfo>,
}

impl Catalog {
    #[must_use]
    pub fn new(official: Vec<PluginInfo>) -> Self {
        Self { official }
    }

    /// Official plugins.
    #[must_use]
    pub fn official(&self) -> &[PluginInfo] {
        &self.official
    }

    /// Finds an official plugin by id.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&PluginInfo> {
        self.official.iter().find(|p| p.id == id)
    }
}

/// What a plugin is asked to check: its options with one account's credentials.
pub struct VerifyRequest<'a> {
    pub domain: DomainId,
    pub plugin_id: &'a str,
    pub version: &'a str,
    pub options: &'a Value,
    /// Decrypted credentials. Never log or return them.
    pub secret: &'a Map<String, Value>,
}

impl std::fmt::Debug for VerifyRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("domain", &self.domain)
            .field("plugin_id", &self.plugin_id)
            .field("version", &self.version)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a verification did not succeed. The reasons are the plugin's words, which may echo what
/// it was given: callers redact the credentials from them before showing them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The plugin refused the options or the credentials: checking again will not help.
    #[error("{0}")]
    Refused(String),
    /// The plugin could not tell (an endpoint unreachable, a rate limit): a later check may
    /// succeed.
    #[error("{0}")]
    Transient(String),
    /// No plugin of that id and version can run here.
    #[error("plugin `{id}` has no version {version} that can run")]
    UnknownPlugin { id: String, version: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Runs a plugin's credential check. Implemented by the worker's plugin registry, which the
/// API holds behind this trait: the API crate does not depend on the worker crate.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Checks that the plugin can collect with these options and credentials, without
    /// collecting. Callers put their own deadline on it: a built-in plugin's check has none
    /// (an external plugin's is killed after `external::INIT_TIMEOUT`).
    ///
    /// # Errors
    /// The plugin refused or failed ([`VerifyError::Refused`], [`VerifyError::Transient`]),
    /// it cannot be found, or the database failed while looking for it.
    async fn verify(
        &self,
        db: &DatabaseConnection,
        request: VerifyRequest<'_>,
    ) -> Result<(), VerifyError>;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plugin() -> PluginInfo {
        PluginInfo {
            id: "p".into(),
            name: "P".into(),
            description: String::new(),
            kind: PluginKind::Collector,
            provider: "demo".into(),
            versions: vec!["1.0.0".into()],
            latest: "1.0.0".into(),
            official: true,
            resource_types: vec![],
            metrics: vec![],
            options_schema: json!({
                "type": "object",
                "properties": {"resources": {"type": "integer", "minimum": 0}},
                "additionalProperties": false
            }),
        }
    }

    #[test]
    fn options_errors_name_the_field() {
        let p = plugin();
        assert!(p.validate_options(&json!({"resources": 5})).is_ok());
        let errs = p.validate_options(&json!({"resources": -1})).unwrap_err();
        assert_eq!(errs[0].field, "options.resources");
        let errs = p.validate_options(&json!([])).unwrap_err();
        assert_eq!(errs[0].field, "options");
    }
}
