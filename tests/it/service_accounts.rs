//! Service accounts: credentials validated, encrypted at rest, never returned.

use serde_json::json;

use crate::support::{Mode, TestEnv};

async fn credentials_are_encrypted_at_rest_and_never_returned(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let project = env
        .create("/v1/projects", json!({"name": "billing"}))
        .await?;
    let secret = "hb-secret-key-9f8e7d";
    let sa = env
        .create(
            "/v1/service-accounts",
            json!({"name": "hb", "provider": "hyperbilling", "project_id": project["id"], "credentials": {"account": "acme", "email": "ops@acme.test", "key": secret}}),
        )
        .await?;
    assert_eq!(sa["has_credentials"], true);
    assert!(!sa.to_string().contains(secret));
    let listed = env.get("/v1/service-accounts").await?;
    assert!(!listed.body.to_string().contains(secret));
    assert!(
        !listed.body.to_string().contains("acme"),
        "no credential field is returned"
    );
    assert_eq!(env.scalar("SELECT count(*) FROM secrets").await?, 1);
    assert_eq!(
        env.scalar(&match mode {
            Mode::Distributed => {
                format!("SELECT count(*) FROM secrets WHERE position('{secret}'::bytea in ciphertext) > 0")
            }
            Mode::Standalone => {
                format!("SELECT count(*) FROM secrets WHERE instr(ciphertext, CAST('{secret}' AS BLOB)) > 0")
            }
        })
        .await?,
        0
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM outbox WHERE body LIKE '%hb-secret%'")
            .await?,
        0
    );
    Ok(())
}

async fn providers_list_their_credential_schemas(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let p = env.get("/v1/providers").await?;
    let hb = p.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p["id"] == "hyperbilling")
        .expect("hyperbilling listed");
    let fields: Vec<_> = hb["credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| (f["name"].clone(), f["secret"].clone()))
        .collect();
    assert_eq!(
        fields,
        vec![
            (json!("account"), json!(false)),
            (json!("email"), json!(false)),
            (json!("key"), json!(true))
        ]
    );
    Ok(())
}

async fn updates_are_validated_like_creates(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let a = env.create("/v1/projects", json!({"name": "a"})).await?;
    let b = env.create("/v1/projects", json!({"name": "b"})).await?;
    let sa = env
        .create(
            "/v1/service-accounts",
            json!({"name": "hb", "provider": "hyperbilling", "project_id": a["id"], "credentials": {"account": "acme", "email": "ops@acme.test", "key": "old-key-1"}}),
        )
        .await?;
    let path = format!(
        "/v1/service-accounts/{}",
        sa["id"].as_str().unwrap_or_default()
    );
    for (body, field) in [
        (
            json!({"credentials": {"account": "acme", "email": "ops@acme.test"}}),
            "credentials.key",
        ),
        (
            json!({"credentials": {"account": "acme", "email": "nope", "key": "k"}}),
            "credentials.email",
        ),
        (json!({"project_id": null}), "project_id"),
        (json!({"name": "  "}), "name"),
    ] {
        let r = env.patch(&path, body.clone()).await?;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {r:?}");
    }
    let r = env
        .patch(
            &path,
            json!({"name": "hb-2", "project_id": b["id"], "credentials": {"account": "acme", "email": "ops@acme.test", "key": "new-key-2"}}),
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["name"], "hb-2");
    assert_eq!(r.body["project_id"], b["id"]);
    assert!(!r.body.to_string().contains("new-key-2"));
    // The old secret went with the change: one secret row, the new one.
    assert_eq!(env.scalar("SELECT count(*) FROM secrets").await?, 1);
    Ok(())
}

crate::in_both_modes!(
    credentials_are_encrypted_at_rest_and_never_returned,
    providers_list_their_credential_schemas,
    updates_are_validated_like_creates,
);
