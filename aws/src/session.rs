//! From a service account's credentials to configured SDK clients.
//!
//! Every client of one collection shares one [`Session`]: its credentials (a key pair, or a
//! role assumed through STS), one HTTP client for the whole process (rustls on ring), the retry
//! policy of [`AwsSettings`], and a retry budget of its own, so that one throttled account does
//! not spend the retries of another collection running on the same worker.

use std::sync::OnceLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_ec2::config::SharedHttpClient;
use aws_sdk_ec2::config::retry::{RetryPartition, TokenBucket};
use aws_smithy_http_client::tls;
use gleaner_common::config::AwsSettings;
use gleaner_common::provider::is_aws_region;
use gleaner_worker::plugin::PluginError;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Failure, classify};

/// The region calls go to when the credentials name none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A service account's AWS credentials, as the provider's schema names them.
#[derive(Clone, Default)]
pub struct AwsCredentials {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    /// The home region.
    pub region: Option<String>,
    role_arn: Option<String>,
    external_id: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("role_arn", &self.role_arn)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    /// Reads the decrypted credentials of a service account.
    ///
    /// # Errors
    /// Neither a key pair nor a role, or half a key pair.
    pub fn from_secret(secret: &Map<String, Value>) -> Result<Self, PluginError> {
        let text = |name: &str| {
            secret
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let creds = Self {
            access_key_id: text("aws_access_key_id"),
            secret_access_key: text("aws_secret_access_key"),
            session_token: text("aws_session_token"),
            region: text("region_name"),
            role_arn: text("role_arn"),
            external_id: text("external_id"),
        };
        if let Some(region) = creds.region.as_deref().filter(|r| !is_aws_region(r)) {
            return Err(PluginError::Permanent(format!(
                "region_name `{region}` is not an AWS region name (like eu-west-1)"
            )));
        }
        match (&creds.access_key_id, &creds.secret_access_key, &creds.role_arn) {
            (Some(_), Some(_), _) | (None, None, Some(_)) => Ok(creds),
            _ => Err(PluginError::Permanent(
                "the service account needs aws_access_key_id and aws_secret_access_key, or a role_arn to assume".into(),
            )),
        }
    }

    /// The home region: where regions are discovered and global services are called.
    #[must_use]
    pub fn home(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
}

/// One HTTP client for every AWS call of the process: connections are pooled across
/// collections.
fn http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https()
        })
        .clone()
}

/// The clients' configuration for one collection.
pub struct Session {
    config: SdkConfig,
    /// A retry budget of this collection's own.
    partition: RetryPartition,
    /// Whether calls go to an endpoint of the user's (S3 is then addressed path-style).
    custom_endpoint: bool,
    /// Bounds the calls in flight over every region and service.
    calls: Semaphore,
}

/// The options of an AWS plugin: they may name the endpoint its calls go to.
pub(crate) trait Endpoint {
    fn endpoint_url(&self) -> Option<&str>;
}

/// A plugin's options, checked against its schema and the operator's allowlists, and a
/// session with the account's credentials at the endpoint they name: how every AWS plugin
/// starts a call.
///
/// # Errors
/// Options or credentials refused ([`Session::open`]'s errors too).
pub(crate) async fn open_checked<T: serde::de::DeserializeOwned + Endpoint>(
    info: &gleaner_common::plugin::PluginInfo,
    access: &gleaner_common::access::Access,
    settings: &AwsSettings,
    options: &Value,
    secret: &Map<String, Value>,
) -> Result<(T, Session), PluginError> {
    let opts: T = gleaner_worker::plugin::checked_options(info, access, options)?;
    let creds = AwsCredentials::from_secret(secret)?;
    let session = Session::open(&creds, opts.endpoint_url(), settings).await?;
    Ok((opts, session))
}

impl Session {
    /// Configures the clients; with a role, they call AWS with the role's credentials, which
    /// STS issues (and renews) on the first call.
    ///
    /// # Errors
    /// A role without a key pair while the operator does not let roles be assumed from the
    /// worker's own credentials.
    pub async fn open(
        creds: &AwsCredentials,
        endpoint_url: Option<&str>,
        settings: &AwsSettings,
    ) -> Result<Self, PluginError> {
        let retry = RetryConfig::standard()
            .with_max_attempts(settings.max_attempts.max(1))
            .with_initial_backoff(settings.initial_backoff)
            .with_max_backoff(Duration::from_secs(20));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(creds.home().to_owned()))
            .http_client(http_client())
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let keys = match (&creds.access_key_id, &creds.secret_access_key) {
            (Some(id), Some(secret)) => Some(Credentials::new(
                id,
                secret,
                creds.session_token.clone(),
                None,
                "gleaner-service-account",
            )),
            _ => None,
        };
        let config = match (&creds.role_arn, keys) {
            (None, Some(keys)) => loader.credentials_provider(keys).load().await,
            (None, None) => {
                return Err(PluginError::Permanent(
                    "the service account has neither a key pair nor a role".into(),
                ));
            }
            (Some(role), keys) => {
                let base = match keys {
                    Some(keys) => loader.credentials_provider(keys).load().await,
                    None if settings.worker_credentials => loader.load().await,
                    None => {
                        return Err(PluginError::Permanent(
                            "this service account has a role_arn and no key pair, and this Gleaner does not assume roles from the worker's own credentials (GLEANER_AWS__WORKER_CREDENTIALS)".into(),
                        ));
                    }
                };
                let mut assume = AssumeRoleProvider::builder(role)
                    .session_name("gleaner")
                    .configure(&base);
                if let Some(id) = &creds.external_id {
                    assume = assume.external_id(id);
                }
                let provider = assume.build().await;
                base.into_builder()
                    .credentials_provider(SharedCredentialsProvider::new(provider))
                    .build()
            }
        };
        Ok(Self {
            config,
            partition: RetryPartition::custom("gleaner-collection")
                .token_bucket(TokenBucket::default())
                .build(),
            custom_endpoint: endpoint_url.is_some(),
            calls: Semaphore::new(settings.calls_in_flight.max(1)),
        })
    }

    /// The home region.
    #[must_use]
    pub fn home(&self) -> &str {
        self.config.region().map_or(DEFAULT_REGION, AsRef::as_ref)
    }

    /// A permit for one call; held while the call (with its retries) is in flight.
    pub async fn call(&self) -> SemaphorePermit<'_> {
        self.calls
            .acquire()
            .await
            .expect("the session's semaphore is never closed")
    }

    /// The account the credentials act in, and its partition (`aws`, `aws-cn`, ...), from
    /// STS GetCallerIdentity: what `verify` checks, and what ARNs are made of.
    ///
    /// # Errors
    /// Credentials refused: permanent; STS unreachable or throttled past the retries:
    /// transient.
    pub async fn identity(&self) -> Result<Identity, PluginError> {
        let sts = self.sts();
        let _permit = self.call().await;
        let me = sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| match classify(e) {
                Failure::Transient(e) => {
                    PluginError::Transient(format!("sts:GetCallerIdentity: {e}"))
                }
                Failure::Denied(e) | Failure::Gone(e) | Failure::Other(e) => {
                    PluginError::Permanent(format!(
                        "the credentials were refused (sts:GetCallerIdentity): {e}"
                    ))
                }
            })?;
        let account = me.account().unwrap_or_default().to_owned();
        let partition = me
            .arn()
            .and_then(|arn| arn.split(':').nth(1))
            .filter(|p| !p.is_empty())
            .unwrap_or("aws")
            .to_owned();
        Ok(Identity { account, partition })
    }

    /// An STS client in the home region.
    #[must_use]
    pub fn sts(&self) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&self.config)
                .retry_partition(self.partition.clone())
                .build(),
        )
    }

    /// An S3 client for `region`, path-style when the endpoint is the user's.
    #[must_use]
    pub fn s3(&self, region: &str) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.config)
                .region(Region::new(region.to_owned()))
                .force_path_style(self.custom_endpoint)
                .retry_partition(self.partition.clone())
                .build(),
        )
    }
}

/// Client constructors for `region`, one per service.
macro_rules! clients {
    ($($name:ident => $sdk:ident),* $(,)?) => {
        impl Session {
            $(
                #[must_use]
                pub fn $name(&self, region: &str) -> $sdk::Client {
                    $sdk::Client::from_conf(
                        $sdk::config::Builder::from(&self.config)
                            .region(Region::new(region.to_owned()))
                            .retry_partition(self.partition.clone())
                            .build(),
                    )
                }
            )*
        }
    };
}

clients! {
    ec2 => aws_sdk_ec2,
    iam => aws_sdk_iam,
    rds => aws_sdk_rds,
    lambda => aws_sdk_lambda,
    elbv2 => aws_sdk_elasticloadbalancingv2,
    autoscaling => aws_sdk_autoscaling,
    dynamodb => aws_sdk_dynamodb,
    eks => aws_sdk_eks,
    sqs => aws_sdk_sqs,
    sns => aws_sdk_sns,
    cost_explorer => aws_sdk_costexplorer,
    cloudwatch => aws_sdk_cloudwatch,
}

/// Who the credentials are.
#[derive(Clone, Debug)]
pub struct Identity {
    pub account: String,
    pub partition: String,
}

impl Identity {
    /// An ARN in this account: `arn:{partition}:{service}:{region}:{account}:{resource}`.
    #[must_use]
    pub fn arn(&self, service: &str, region: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{region}:{}:{resource}",
            self.partition, self.account
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_region_that_is_not_a_region_name_is_refused() {
        let secret = json!({"aws_access_key_id": "a", "aws_secret_access_key": "s",
                            "region_name": "evil.example/x"});
        let refused = AwsCredentials::from_secret(secret.as_object().unwrap()).unwrap_err();
        assert!(
            refused.to_string().contains("not an AWS region name"),
            "{refused}"
        );
    }
}
