//! Bad input gets problem+json naming the field, and nothing is written.

use serde_json::{Value, json};

use crate::support::{Mode, TestEnv};

async fn row_counts(env: &TestEnv) -> anyhow::Result<Vec<i64>> {
    let mut counts = Vec::new();
    for table in [
        "projects",
        "service_accounts",
        "secrets",
        "collectors",
        "jobs",
        "job_tasks",
        "outbox",
    ] {
        counts.push(env.scalar(&format!("SELECT count(*) FROM {table}")).await?);
    }
    Ok(counts)
}

async fn bad_input_is_refused_naming_the_field_and_writes_nothing(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let project = env.create("/v1/projects", json!({"name": "p"})).await?;
    let collector = env
        .create(
            "/v1/collectors",
            json!({"name": "taken", "plugin_id": "demo"}),
        )
        .await?;
    let before = row_counts(&env).await?;
    let unknown = "01a207cc-0000-7000-8000-000000000000";

    // (path, body, status, field, why)
    let cases: Vec<(String, Value, u16, Option<&str>, &str)> = vec![
        (
            "/v1/collectors".into(),
            json!({"name": "c", "plugin_id": "nope"}),
            400,
            Some("plugin_id"),
            "unknown plugin",
        ),
        (
            "/v1/collectors".into(),
            json!({"name": "c", "plugin_id": "demo", "version": "9.9.9"}),
            400,
            Some("version"),
            "unknown version",
        ),
        (
            "/v1/collectors".into(),
            json!({"name": "c", "plugin_id": "demo", "options": {"resources": "many"}}),
            400,
            Some("options.resources"),
            "options against the schema",
        ),
        (
            "/v1/collectors".into(),
            json!({"name": "c", "plugin_id": "demo", "options": {"bogus": 1}}),
            400,
            Some("options"),
            "unknown option",
        ),
        (
            "/v1/collectors".into(),
            json!({"name": "c", "plugin_id": "demo", "priority": -1}),
            400,
            Some("priority"),
            "negative priority",
        ),
        (
            "/v1/collectors".into(),
            json!({"name": "  ", "plugin_id": "demo"}),
            400,
            Some("name"),
            "blank name",
        ),
        (
            "/v1/collectors".into(),
            json!({"plugin_id": "demo"}),
            400,
            Some("name"),
            "missing name",
        ),
        (
            "/v1/collectors".into(),
            json!({"name": "taken", "plugin_id": "demo"}),
            409,
            Some("name"),
            "duplicate name",
        ),
        (
            "/v1/service-accounts".into(),
            json!({"name": "a", "provider": "demo", "project_id": unknown}),
            400,
            Some("project_id"),
            "missing project",
        ),
        (
            "/v1/service-accounts".into(),
            json!({"name": "a", "provider": "demo", "project_id": "not-a-uuid"}),
            400,
            Some("project_id"),
            "malformed project id",
        ),
        (
            "/v1/service-accounts".into(),
            json!({"name": "a", "provider": "hyperbilling", "project_id": project["id"], "credentials": {"account": "x", "email": "ops@x.test"}}),
            400,
            Some("credentials.key"),
            "credentials missing a field",
        ),
        (
            "/v1/service-accounts".into(),
            json!({"name": "a", "provider": "aws", "credentials": {"aws_access_key_id": "AKIA", "aws_secret_access_key": "s", "token": "t"}}),
            400,
            Some("credentials.token"),
            "credentials with an unknown field",
        ),
        (
            "/v1/service-accounts".into(),
            json!({"name": "a", "provider": "hyperbilling", "credentials": {"account": "x", "email": "ops@x.test", "key": "k"}}),
            400,
            Some("project_id"),
            "billing account without a project",
        ),
        (
            "/v1/service-accounts".into(),
            json!({"name": "a", "provider": "oracle-cloud"}),
            400,
            Some("provider"),
            "unknown provider",
        ),
        (
            format!("/v1/collectors/{unknown}/collect"),
            Value::Null,
            404,
            None,
            "unknown collector",
        ),
        (
            "/v1/collectors/not-an-id/collect".into(),
            Value::Null,
            404,
            None,
            "malformed collector id",
        ),
    ];
    for (path, body, status, field, why) in cases {
        let a = env.post(&path, body).await?;
        assert_eq!(a.status.as_u16(), status, "{why}: {}", a.body);
        assert_eq!(a.content_type, "application/problem+json", "{why}");
        assert_eq!(a.body["status"], status, "{why}");
        assert!(
            a.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("/problems/")),
            "{why}"
        );
        if let Some(field) = field {
            let fields: Vec<_> = a.body["errors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e["field"].clone())
                .collect();
            assert!(
                fields.contains(&json!(field)),
                "{why}: expected field {field} in {}",
                a.body
            );
        }
    }
    let _ = collector;
    assert_eq!(
        row_counts(&env).await?,
        before,
        "a refused request wrote nothing"
    );
    Ok(())
}

async fn malformed_json_and_wrong_media_type_are_problems_too(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let a = env
        .post_raw("/v1/projects", "application/json", "{\"name\": ")
        .await?;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body,
        json!({
            "type": "/problems/malformed-body",
            "title": "Malformed request body",
            "status": 400,
            "detail": "the body is not valid JSON: EOF while parsing a value at line 1 column 9"
        })
    );
    let a = env.post_raw("/v1/projects", "text/plain", "name=x").await?;
    assert_eq!(a.status, 415);
    assert_eq!(a.body["type"], "/problems/unsupported-media-type");
    let a = env
        .post_raw(
            "/v1/projects",
            "application/json",
            "{\"name\": \"x\"} trailing",
        )
        .await?;
    assert_eq!(a.status, 400);
    // serde would read a struct from an array of its fields; a body is an object.
    let a = env
        .post_raw("/v1/projects", "application/json", "[\"x\"]")
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["errors"][0]["field"], "body");
    let a = env.get("/v1/nowhere").await?;
    assert_eq!(a.status, 404);
    assert_eq!(a.content_type, "application/problem+json");
    assert_eq!(env.scalar("SELECT count(*) FROM projects").await?, 0);
    Ok(())
}

async fn duplicate_name_problem_has_the_documented_shape(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    env.create(
        "/v1/collectors",
        json!({"name": "aws-prod", "plugin_id": "demo"}),
    )
    .await?;
    let a = env
        .post(
            "/v1/collectors",
            json!({"name": "aws-prod", "plugin_id": "demo"}),
        )
        .await?;
    assert_eq!(
        a.body,
        json!({
            "type": "/problems/duplicate-name",
            "title": "Name already in use",
            "status": 409,
            "detail": "a collector named 'aws-prod' already exists",
            "errors": [{"field": "name", "detail": "must be unique"}]
        })
    );
    Ok(())
}

async fn a_method_a_route_does_not_take_is_405_naming_those_it_does(
    mode: Mode,
) -> anyhow::Result<()> {
    use reqwest::Method;
    let env = TestEnv::start(mode).await?;
    let anonymous = env.api.clone().without_key();
    // (client, method, path, allowed, why): the 405 comes before the key is asked for.
    let cases = [
        (
            &env.api,
            Method::TRACE,
            "/v1/collectors",
            "GET, POST, HEAD",
            "a listing",
        ),
        (
            &env.api,
            Method::PUT,
            "/v1/projects/x",
            "GET, HEAD",
            "an object",
        ),
        (
            &anonymous,
            Method::OPTIONS,
            "/v1/jobs/x/cancel",
            "POST",
            "no key",
        ),
        (
            &anonymous,
            Method::DELETE,
            "/healthz",
            "GET, HEAD",
            "an open route",
        ),
    ];
    for (client, method, path, allowed, why) in cases {
        let a = client.request(method.clone(), path).await?;
        assert_eq!(a.status, 405, "{why}: {method} {path}: {}", a.body);
        assert_eq!(a.content_type, "application/problem+json", "{why}");
        assert_eq!(a.body["type"], "/problems/method-not-allowed", "{why}");
        assert_eq!(a.headers["allow"], allowed, "{why}");
    }
    // HEAD is GET without the body, under GET's rule.
    let a = env.api.request(Method::HEAD, "/v1/projects").await?;
    assert_eq!((a.status.as_u16(), a.body), (200, Value::Null));
    let a = anonymous.request(Method::HEAD, "/v1/projects").await?;
    assert_eq!(a.status, 401);
    Ok(())
}

async fn a_nul_character_is_refused_naming_where_it_is(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    // PostgreSQL cannot store U+0000: each of these was a 500 from the database there.
    // (path, status, field, why)
    let gets = [
        (
            "/v1/resources?resource_type=a%00",
            400,
            Some("resource_type"),
            "a query filter",
        ),
        (
            "/v1/service-accounts?provider=%00",
            400,
            Some("provider"),
            "a provider filter",
        ),
        (
            "/v1/audit?target_id=%00",
            400,
            Some("target_id"),
            "an audit filter",
        ),
        ("/v1/plugins/demo%00", 404, None, "a plugin id"),
    ];
    for (path, status, field, why) in gets {
        let a = env.get(path).await?;
        assert_eq!(a.status.as_u16(), status, "{why}: {}", a.body);
        if let Some(field) = field {
            assert_eq!(a.body["errors"][0]["field"], field, "{why}");
        }
    }
    let a = env
        .post(
            "/v1/collectors",
            json!({"name": "c", "plugin_id": "demo", "tags": {"team": "a\u{0}"}}),
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        a.body["errors"],
        json!([{"field": "tags.team", "detail": "must not contain the NUL character (U+0000)"}])
    );
    assert_eq!(env.scalar("SELECT count(*) FROM collectors").await?, 0);
    Ok(())
}

crate::in_both_modes!(
    a_method_a_route_does_not_take_is_405_naming_those_it_does,
    a_nul_character_is_refused_naming_where_it_is,
    bad_input_is_refused_naming_the_field_and_writes_nothing,
    malformed_json_and_wrong_media_type_are_problems_too,
    duplicate_name_problem_has_the_documented_shape,
);
