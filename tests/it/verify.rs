//! `POST /v1/service-accounts/{id}/verify` and `POST /v1/collectors/{id}/verify`: a plugin
//! checks credentials and options before a collection, and its refusal comes back with its
//! reason, never with the credentials.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::plugins::{json_inventory, register_misbehaving};
use crate::support::{Api, Mode, Options, TestEnv};

/// The `id` of a created object.
fn id_of(v: &Value) -> anyhow::Result<String> {
    Ok(v["id"].as_str().context("an id")?.to_owned())
}

async fn project(api: &Api) -> anyhow::Result<String> {
    id_of(
        &api.create(
            "/v1/projects",
            json!({"name": format!("p-{}", rand::random::<u32>())}),
        )
        .await?,
    )
}

async fn account(
    api: &Api,
    name: &str,
    provider: &str,
    credentials: Value,
) -> anyhow::Result<String> {
    let project = project(api).await?;
    id_of(
        &api.create(
            "/v1/service-accounts",
            json!({"name": name, "provider": provider, "project_id": project,
                   "credentials": credentials}),
        )
        .await?,
    )
}

async fn collector(api: &Api, name: &str, plugin: &str, options: Value) -> anyhow::Result<String> {
    id_of(
        &api.create(
            "/v1/collectors",
            json!({"name": name, "plugin_id": plugin, "options": options}),
        )
        .await?,
    )
}

async fn verify_account(
    api: &Api,
    id: &str,
    body: Value,
) -> anyhow::Result<crate::support::Answer> {
    api.post(&format!("/v1/service-accounts/{id}/verify"), body)
        .await
}

async fn verify_collector(api: &Api, id: &str) -> anyhow::Result<crate::support::Answer> {
    api.post(&format!("/v1/collectors/{id}/verify"), json!(null))
        .await
}

/// The problem of a plugin that did not verify one account, with its reason.
fn refused_one(plugin: &str, account_id: &str, account_name: &str, reason: &str) -> Value {
    json!({
        "type": "/problems/verification-failed",
        "title": "Verification failed",
        "status": 422,
        "detail": format!("plugin `{plugin}` 1.0.0 did not verify service account '{account_name}': {reason}"),
        "errors": [{"field": format!("service_accounts.{account_id}"), "detail": reason}],
    })
}

async fn a_demo_collector_verifies_with_every_linked_account(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 10})).await?;
    let accounts = env.get("/v1/service-accounts").await?.body["items"].clone();
    let accounts = accounts.as_array().context("accounts")?;
    let checked: Vec<Value> = accounts
        .iter()
        .map(|a| json!({"service_account_id": a["id"], "name": a["name"], "ok": true}))
        .collect();

    let a = verify_collector(&env, &collector).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"ok": true, "plugin_id": "demo", "version": "1.0.0", "collector_id": collector,
               "accounts": checked})
    );

    // One account alone is checked with the collector's plugin and options too.
    let first = accounts[0]["id"].as_str().context("account id")?;
    let one = verify_account(&env, first, json!(null)).await?;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(
        one.body,
        json!({"ok": true, "plugin_id": "demo", "version": "1.0.0", "collector_id": collector,
               "accounts": [checked[0]]})
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs").await?,
        0,
        "nothing collected"
    );
    Ok(())
}

async fn a_collector_whose_options_the_plugin_refuses_fails_verification_with_its_reason(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    // Registered, and its inventory file not written yet: the options name a missing file.
    let file = json_inventory(&env).await?;
    let account = account(&env, "inventory", "demo", json!({})).await?;
    let collector = collector(&env, "inventory", "json-inventory", json!({"path": file.0})).await?;

    let a = verify_collector(&env, &collector).await?;
    let reason = format!(
        "it exited with status 1: json-inventory: FileNotFoundError: [Errno 2] No such file or directory: '{}'",
        file.0.display()
    );
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(a.content_type, "application/problem+json");
    assert_eq!(
        a.body,
        refused_one("json-inventory", &account, "inventory", &reason)
    );

    std::fs::write(&file.0, "[]")?;
    let a = verify_collector(&env, &collector).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["plugin_id"], "json-inventory");
    Ok(())
}

async fn a_private_plugin_refusing_credentials_answers_422_without_the_secret(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    register_misbehaving(&env, "picky", "picky", "aws", 60).await?;
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY";
    let wrong = account(
        &env,
        "wrong",
        "aws",
        json!({"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": secret}),
    )
    .await?;
    let collector = collector(&env, "picky", "picky", json!({})).await?;

    // The plugin echoes the key it refused: the answer shows it redacted.
    let reason = "it exited with status 1: picky: AccessDenied: the key [REDACTED] was refused";
    let a = verify_account(&env, &wrong, json!(null)).await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(a.body, refused_one("picky", &wrong, "wrong", reason));
    assert!(!a.body.to_string().contains(secret), "{}", a.body);

    // With a second account that is right, the collector's answer names the wrong one only.
    let right = account(
        &env,
        "right",
        "aws",
        json!({"aws_access_key_id": "AKIAEXAMPLE2", "aws_secret_access_key": "right-key"}),
    )
    .await?;
    let a = verify_collector(&env, &collector).await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(
        a.body,
        json!({
            "type": "/problems/verification-failed",
            "title": "Verification failed",
            "status": 422,
            "detail": "plugin `picky` 1.0.0 did not verify 1 of 2 service accounts: 'wrong'; `errors` has each reason",
            "errors": [{"field": format!("service_accounts.{wrong}"), "detail": reason}],
        })
    );
    assert!(!a.body.to_string().contains(secret), "{}", a.body);
    let a = verify_account(&env, &right, json!({"collector_id": collector})).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Fixed credentials verify.
    let fixed = env
        .patch(
            &format!("/v1/service-accounts/{wrong}"),
            json!({"credentials": {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
                                   "aws_secret_access_key": "right-key"}}),
        )
        .await?;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.body);
    let a = verify_collector(&env, &collector).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["accounts"].as_array().map(Vec::len), Some(2));
    Ok(())
}

async fn verifying_an_unknown_or_another_domains_id_answers_404(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let not_found = |what: &str, id: &str| {
        json!({"type": "/problems/not-found", "title": "Not found", "status": 404,
               "detail": format!("no {what} with id '{id}'")})
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [unknown.as_str(), "nope"] {
        let a = verify_account(&env, id, json!(null)).await?;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
        assert_eq!(a.body, not_found("service account", id));
        let a = verify_collector(&env, id).await?;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
        assert_eq!(a.body, not_found("collector", id));
    }

    // Objects of another domain are not this domain's to verify.
    let account = id_of(
        &env.create(
            "/v1/service-accounts",
            json!({"name": "elsewhere", "provider": "demo", "credentials": {}}),
        )
        .await?,
    )?;
    let collector = collector(&env, "elsewhere", "demo", json!({})).await?;
    let other = env.uuid_sql(&uuid::Uuid::now_v7().to_string())?;
    env.db
        .execute_unprepared(&format!(
            "INSERT INTO domains (id, name) VALUES ({other}, 'other')"
        ))
        .await?;
    for (table, id) in [("service_accounts", &account), ("collectors", &collector)] {
        env.db
            .execute_unprepared(&format!(
                "UPDATE {table} SET domain_id = {other} WHERE id = {}",
                env.uuid_sql(id)?
            ))
            .await?;
    }
    let a = verify_account(&env, &account, json!(null)).await?;
    assert_eq!(a.body, not_found("service account", &account));
    let a = verify_collector(&env, &collector).await?;
    assert_eq!(a.body, not_found("collector", &collector));
    Ok(())
}

crate::in_both_modes!(
    a_demo_collector_verifies_with_every_linked_account,
    a_collector_whose_options_the_plugin_refuses_fails_verification_with_its_reason,
    a_private_plugin_refusing_credentials_answers_422_without_the_secret,
    verifying_an_unknown_or_another_domains_id_answers_404,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_picks_a_collector_of_the_accounts_provider_else_a_catalog_plugin()
-> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let demo = account(&env, "demo", "demo", json!({})).await?;

    // No collector: the catalog's first plugin of the provider, with empty options.
    let a = verify_account(&env, &demo, json!(null)).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"ok": true, "plugin_id": "demo", "version": "1.0.0", "collector_id": null,
               "accounts": [{"service_account_id": demo, "name": "demo", "ok": true}]})
    );

    // A disabled collector is used when no enabled one is; an enabled one wins.
    let disabled = collector(&env, "disabled", "demo", json!({"seed": 1})).await?;
    env.post(&format!("/v1/collectors/{disabled}/disable"), json!(null))
        .await?;
    let a = verify_account(&env, &demo, json!(null)).await?;
    assert_eq!(a.body["collector_id"], disabled, "{}", a.body);
    let enabled = collector(&env, "enabled", "demo-billing", json!({})).await?;
    let a = verify_account(&env, &demo, json!(null)).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["collector_id"], enabled, "{}", a.body);
    assert_eq!(a.body["plugin_id"], "demo-billing", "{}", a.body);

    // No plugin serves the provider.
    let azure = account(
        &env,
        "azure",
        "azure",
        json!({"tenant_id": "t", "client_id": "c", "client_secret": "secret", "subscription_id": "s"}),
    )
    .await?;
    let a = verify_account(&env, &azure, json!(null)).await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"type": "/problems/no-plugin", "title": "No plugin for the provider", "status": 422,
               "detail": "no plugin serves provider `azure`, so nothing can check its accounts: register a private plugin of that provider"})
    );

    // The provider's plugins need options, which only a collector has.
    let focus = account(&env, "focus", "focus", json!({})).await?;
    let a = verify_account(&env, &focus, json!(null)).await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"type": "/problems/no-plugin", "title": "No plugin for the provider", "status": 422,
               "detail": "no collector uses provider `focus`, and its plugins (`focus`) need options to check an account: create a collector, or name one as `collector_id`"})
    );

    // A collector named in the body must exist and serve the account's provider.
    // (Inside a directory the tests allow, which it does not exist in.)
    let missing = std::env::temp_dir()
        .join(format!("{}-nonexistent/export.csv", env.name))
        .display()
        .to_string();
    let focus_collector = collector(&env, "focus", "focus", json!({"path": missing})).await?;
    let unknown = uuid::Uuid::now_v7().to_string();
    for (id, why) in [
        (unknown.as_str(), "an unknown collector"),
        (focus_collector.as_str(), "another provider's collector"),
    ] {
        let a = verify_account(&env, &demo, json!({"collector_id": id})).await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{why}: {}", a.body);
        assert_eq!(
            crate::support::strs(&a.body["errors"], "field"),
            ["collector_id"],
            "{why}"
        );
    }
    let a = verify_account(&env, &focus, json!({"collector_id": focus_collector})).await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert_eq!(
        a.body,
        refused_one(
            "focus",
            &focus,
            "focus",
            &format!("`{missing}` cannot be read: No such file or directory (os error 2)")
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_does_not_answer_in_time_answers_504() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            tune: |s| s.api.verify_timeout = Duration::from_secs(1),
            ..Options::default()
        },
    )
    .await?;
    register_misbehaving(&env, "sleepy", "sleepy", "demo", 60).await?;
    let account = account(&env, "slow", "demo", json!({})).await?;
    let collector = collector(&env, "sleepy", "sleepy", json!({})).await?;
    let started = Instant::now();
    let a = verify_collector(&env, &collector).await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.body);
    let reason = "the plugin did not finish its check within 1 s";
    assert_eq!(
        a.body,
        json!({
            "type": "/problems/verification-timed-out",
            "title": "Verification timed out",
            "status": 504,
            "detail": format!("plugin `sleepy` 1.0.0 did not verify service account 'slow': {reason}"),
            "errors": [{"field": format!("service_accounts.{account}"), "detail": reason}],
        })
    );
    Ok(())
}
