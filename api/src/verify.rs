//! `POST /v1/service-accounts/{id}/verify` and `POST /v1/collectors/{id}/verify`: a plugin checks
//! credentials (and a collector's options) before anything is collected.
//!
//! The check runs here, in the API process, through the [`Verifier`] in the state (the worker's
//! plugin registry: built-in plugins, and private ones from `GLEANER_PLUGINS__DIR`), on
//! credentials decrypted here; no job is created.
//!
//! Which plugin checks a service account, unless the request names a collector:
//! 1. the domain's oldest enabled collector whose plugin serves the account's provider, with
//!    its version and options; else the oldest disabled one: what a collection would run;
//! 2. else the first catalog plugin of the provider (official ones first, then private ones,
//!    each by id) whose options schema accepts `{}`, at its latest version with `{}`;
//! 3. else 422 `/problems/no-plugin`.
//!
//! A collector checks every account its jobs get a task for: the accounts of its plugin's
//! provider, as the planner links them.
//!
//! Answers: 200 saying what was checked when every account passed; 422
//! `/problems/verification-failed` with one `errors` entry per account that did not
//! (`service_accounts.<id>`, the plugin's reason); 504 `/problems/verification-timed-out` when
//! the only failures are checks still running at the deadline (`GLEANER_API__VERIFY_TIMEOUT`).
//! Reasons are the plugin's words with every credential value redacted, cut to 1,000 bytes: a
//! reason never carries what the plugin was given, nor more than a message.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use futures::{StreamExt as _, TryStreamExt as _};
use gleaner_common::external::redact;
use gleaner_common::id::{CollectorId, DomainId, ServiceAccountId};
use gleaner_common::model::{CollectorState, Invalid};
use gleaner_common::plugin::{PluginInfo, VerifyError, VerifyRequest};
use gleaner_common::store::collector::{self, Collector};
use gleaner_common::store::service_account::{self, ServiceAccount};
use gleaner_common::store::{self, plugin};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::collector::plugin_of;
use crate::extract::{Auth, OptionalJson, Tenant, parse_id};
use crate::problem::{self, ApiError, ApiResult, Code, FieldError, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(service_account))
        .routes(routes!(collector))
}

/// Accounts checked at once by one request. An external plugin's check is a process on the API
/// host: this bounds how many one request starts, while a collector of many accounts still
/// finishes well within the deadline when each check takes a fraction of a second.
const PARALLEL_CHECKS: usize = 4;

/// The longest reason shown, in bytes: a message, not a dump of what the plugin read.
const MAX_REASON: usize = 1000;

/// What was checked, when every check passed.
#[derive(Debug, Serialize, ToSchema)]
struct Verification {
    /// Always `true`: a failed check answers 422 or 504 instead.
    ok: bool,
    #[schema(example = "demo")]
    plugin_id: String,
    #[schema(example = "1.0.0")]
    version: String,
    /// The collector whose plugin, version and options were used; `null` when a catalog plugin
    /// checked the account with empty options, no collector of its provider existing.
    collector_id: Option<CollectorId>,
    /// Each account checked, oldest first.
    accounts: Vec<AccountVerified>,
}

/// One service account that passed.
#[derive(Debug, Serialize, ToSchema)]
struct AccountVerified {
    service_account_id: ServiceAccountId,
    name: String,
    /// Always `true`.
    ok: bool,
}

/// Which collector's plugin checks the account; the body is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyServiceAccount {
    /// Check with this collector's plugin, version and options instead of the default choice;
    /// its plugin must serve the account's provider.
    collector_id: Option<CollectorId>,
}

/// A plugin, at a version, with options: what checks the accounts.
#[derive(Debug)]
struct Check {
    plugin_id: String,
    version: String,
    options: Value,
    collector_id: Option<CollectorId>,
}

impl Check {
    /// What a collection of `c` would run now: 400 naming the option when its options reach
    /// past the operator's allowlists, as a collection would be refused.
    fn of(state: &AppState, c: &Collector, plugin: &PluginInfo) -> ApiResult<Self> {
        state
            .access
            .check(&plugin.options_schema, &c.options)
            .map_err(ApiError::invalid)?;
        Ok(Self {
            plugin_id: plugin.id.clone(),
            version: c.version_to_run(plugin).to_owned(),
            options: c.options.clone(),
            collector_id: Some(c.id),
        })
    }
}

/// How one account's check ended.
#[derive(Debug)]
enum Outcome {
    Verified,
    Refused(String),
    Transient(String),
    TimedOut,
}

impl Outcome {
    fn reason(&self, timeout: Duration) -> String {
        match self {
            Outcome::Verified => "verified".to_owned(),
            Outcome::Refused(r) => r.clone(),
            Outcome::Transient(r) => {
                format!("{r} (a temporary failure: check again later)")
            }
            Outcome::TimedOut => format!(
                "the plugin did not finish its check within {} s",
                timeout.as_secs()
            ),
        }
    }
}

/// Checks a service account's credentials with a plugin of its provider (see the module's
/// documentation for which): 200 with what was checked, or 422 with the plugin's reason.
#[utoipa::path(
    post,
    path = "/v1/service-accounts/{id}/verify",
    operation_id = "verify_service_account",
    tag = "service accounts",
    params(("id" = ServiceAccountId, Path, description = "The service account's id")),
    request_body(content = Option<VerifyServiceAccount>,
        description = "Optional: the collector whose plugin and options to check with"),
    responses(
        (status = 200, description = "The plugin accepted the credentials", body = Verification),
        (status = 400, description = "A malformed body, or a `collector_id` that does not exist \
            or whose plugin serves another provider",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No service account with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The collector's plugin left the catalog",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 415, description = "The body is not JSON",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 422, description = "`/problems/verification-failed`: the plugin refused \
            (`errors` names the account, with the plugin's reason); `/problems/no-plugin`: no \
            plugin can check the provider's accounts",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 504, description = "The plugin did not finish within the verify timeout",
            body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn service_account(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<VerifyServiceAccount>,
) -> ApiResult<Json<Verification>> {
    let domain = auth.domain();
    let account = crate::service_account::visible(&state, &auth, &id).await?;
    let check = match body.and_then(|b| b.collector_id) {
        Some(c) => named_collector(&state, domain, c, &account.provider).await?,
        None => default_check(&state, domain, &account.provider).await?,
    };
    verify(&state, domain, &check, vec![account]).await
}

/// Checks a collector's plugin, with its options, against every service account its jobs
/// collect with: 200 when all passed, or 422 naming each account that did not, with the
/// plugin's reason.
#[utoipa::path(
    post,
    path = "/v1/collectors/{id}/verify",
    operation_id = "verify_collector",
    tag = "collectors",
    params(("id" = CollectorId, Path, description = "The collector's id")),
    responses(
        (status = 200, description = "The plugin accepted the options with every account",
            body = Verification),
        (status = 400, description = "The collector's options reach past the operator's \
            allowlists (`options.<name>`)", body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 404, description = "No collector with that id",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 409, description = "The collector's plugin left the catalog",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 422, description = "`/problems/verification-failed`: the plugin refused some \
            accounts (`errors` has one entry per account, with the plugin's reason), or no \
            account of the plugin's provider exists",
            body = Problem, content_type = problem::CONTENT_TYPE),
        (status = 504, description = "Checks were still running at the verify timeout, and \
            none of the others failed", body = Problem, content_type = problem::CONTENT_TYPE),
    ),
)]
async fn collector(
    State(state): State<AppState>,
    Tenant(domain): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Verification>> {
    let id: CollectorId = parse_id("collector", &id)?;
    let c = collector::get(&state.db, domain, id).await?;
    let plugin = plugin_of(&state, domain, &c).await?;
    // The planner gives a job one task per account of the plugin's provider: those are the
    // credentials the collector uses.
    let filter = service_account::Filter {
        provider: Some(&plugin.provider),
        ..service_account::Filter::default()
    };
    let accounts = service_account::list(&state.db, domain, &filter).await?;
    if accounts.is_empty() {
        return Err(ApiError::new(
            Code::VerificationFailed,
            format!(
                "no service account of provider `{}` exists to verify with, and a collection would fail the same way: create one first",
                plugin.provider
            ),
        ));
    }
    verify(&state, domain, &Check::of(&state, &c, &plugin)?, accounts).await
}

/// The check of a collector the request named: an input error naming `collector_id` when it
/// does not exist or its plugin serves another provider.
async fn named_collector(
    state: &AppState,
    domain: DomainId,
    id: CollectorId,
    provider: &str,
) -> ApiResult<Check> {
    let c = match collector::get(&state.db, domain, id).await {
        Ok(c) => c,
        Err(store::Error::NotFound { .. }) => {
            return Err(Invalid::new("collector_id", format!("no collector with id {id}")).into());
        }
        Err(e) => return Err(e.into()),
    };
    let plugin = plugin_of(state, domain, &c).await?;
    if plugin.provider != provider {
        return Err(Invalid::new(
            "collector_id",
            format!(
                "collector '{}' runs plugin `{}`, which serves provider `{}`, not `{provider}`",
                c.name, plugin.id, plugin.provider
            ),
        )
        .into());
    }
    Check::of(state, &c, &plugin)
}

/// The check of an account of `provider` when the request names no collector: see the
/// module's documentation.
async fn default_check(state: &AppState, domain: DomainId, provider: &str) -> ApiResult<Check> {
    let collectors = collector::list(&state.db, domain).await?;
    // Listed oldest first: enabled ones, then disabled ones, keep that order.
    let (enabled, disabled): (Vec<_>, Vec<_>) = collectors
        .into_iter()
        .partition(|c| c.state == CollectorState::Enabled);
    let mut seen: Vec<PluginInfo> = Vec::new();
    for c in enabled.iter().chain(&disabled) {
        let plugin = match seen.iter().find(|p| p.id == c.plugin_id) {
            Some(p) => p.clone(),
            None => match plugin::find(&state.db, &state.catalog, domain, &c.plugin_id).await? {
                Some(p) => {
                    seen.push(p.clone());
                    p
                }
                // Left the catalog: it cannot collect either.
                None => continue,
            },
        };
        if plugin.provider == provider {
            return Check::of(state, c, &plugin);
        }
    }
    let candidates: Vec<PluginInfo> = plugin::list(&state.db, &state.catalog, domain)
        .await?
        .into_iter()
        .filter(|p| p.provider == provider)
        .collect();
    let empty = json!({});
    if let Some(p) = candidates
        .iter()
        .find(|p| p.validate_options(&empty).is_ok())
    {
        return Ok(Check {
            plugin_id: p.id.clone(),
            version: p.latest.clone(),
            options: empty,
            collector_id: None,
        });
    }
    let detail = if candidates.is_empty() {
        format!(
            "no plugin serves provider `{provider}`, so nothing can check its accounts: register a private plugin of that provider"
        )
    } else {
        let ids: Vec<String> = candidates.iter().map(|p| format!("`{}`", p.id)).collect();
        format!(
            "no collector uses provider `{provider}`, and its plugins ({}) need options to check an account: create a collector, or name one as `collector_id`",
            ids.join(", ")
        )
    };
    Err(ApiError::new(Code::NoPlugin, detail))
}

/// Runs `check` against each account, `PARALLEL_CHECKS` at a time, all within one deadline,
/// and answers.
async fn verify(
    state: &AppState,
    domain: DomainId,
    check: &Check,
    accounts: Vec<ServiceAccount>,
) -> ApiResult<Json<Verification>> {
    let deadline = Instant::now() + state.verify_timeout;
    let results: Vec<(ServiceAccount, Outcome)> = futures::stream::iter(accounts)
        .map(|account| async move {
            let outcome = verify_one(state, domain, check, &account, deadline).await?;
            Ok::<_, ApiError>((account, outcome))
        })
        .buffered(PARALLEL_CHECKS)
        .try_collect()
        .await?;
    let failed = results
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Verified))
        .count();
    tracing::info!(
        plugin_id = %check.plugin_id,
        version = %check.version,
        accounts = results.len(),
        failed,
        "verification finished"
    );
    answer(check, results, state.verify_timeout)
}

/// One account's check. Its credentials are decrypted here and go nowhere but to the plugin.
async fn verify_one(
    state: &AppState,
    domain: DomainId,
    check: &Check,
    account: &ServiceAccount,
    deadline: Instant,
) -> ApiResult<Outcome> {
    let secret = service_account::credentials(&state.db, &state.cipher, domain, account.id).await?;
    let request = VerifyRequest {
        domain,
        plugin_id: &check.plugin_id,
        version: &check.version,
        options: &check.options,
        secret: &secret,
    };
    // Dropping a check at the deadline kills an external plugin's process group.
    let result = tokio::time::timeout_at(deadline, state.verifier.verify(&state.db, request)).await;
    // Plugins echo what they were given: nothing of the credentials leaves in an answer.
    let shown = |reason: &str| cut(&redact(reason, &secret), MAX_REASON).to_owned();
    Ok(match result {
        Err(_) => Outcome::TimedOut,
        Ok(Ok(())) => Outcome::Verified,
        Ok(Err(VerifyError::Refused(r))) => Outcome::Refused(shown(&r)),
        Ok(Err(VerifyError::Transient(r))) => Outcome::Transient(shown(&r)),
        Ok(Err(VerifyError::UnknownPlugin { id, version })) => {
            return Err(ApiError::new(
                Code::Conflict,
                format!("plugin `{id}` version {version} is no longer in the catalog"),
            ));
        }
        Ok(Err(VerifyError::Store(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(ApiError::internal(e)),
    })
}

/// The first `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// 200 when every account passed; otherwise the problem naming each account that did not.
fn answer(
    check: &Check,
    results: Vec<(ServiceAccount, Outcome)>,
    timeout: Duration,
) -> ApiResult<Json<Verification>> {
    let total = results.len();
    let failed: Vec<&(ServiceAccount, Outcome)> = results
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Verified))
        .collect();
    if failed.is_empty() {
        return Ok(Json(Verification {
            ok: true,
            plugin_id: check.plugin_id.clone(),
            version: check.version.clone(),
            collector_id: check.collector_id,
            accounts: results
                .into_iter()
                .map(|(a, _)| AccountVerified {
                    service_account_id: a.id,
                    name: a.name,
                    ok: true,
                })
                .collect(),
        }));
    }
    let code = if failed.iter().all(|(_, o)| matches!(o, Outcome::TimedOut)) {
        Code::VerificationTimedOut
    } else {
        Code::VerificationFailed
    };
    let plugin = format!("plugin `{}` {}", check.plugin_id, check.version);
    let detail = match failed.as_slice() {
        [(account, outcome)] if total == 1 => format!(
            "{plugin} did not verify service account '{}': {}",
            account.name,
            outcome.reason(timeout)
        ),
        _ => {
            let names: Vec<String> = failed
                .iter()
                .map(|(a, _)| format!("'{}'", a.name))
                .collect();
            format!(
                "{plugin} did not verify {} of {total} service accounts: {}; `errors` has each reason",
                failed.len(),
                names.join(", ")
            )
        }
    };
    let errors = failed
        .iter()
        .map(|(account, outcome)| FieldError {
            field: format!("service_accounts.{}", account.id),
            detail: outcome.reason(timeout),
        })
        .collect();
    Err(ApiError::new(code, detail).with_errors(errors))
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("abcdef", 3), "abc");
        // `é` is two bytes: a cut inside it keeps the character out.
        assert_eq!(cut("aé", 2), "a");
    }
}
