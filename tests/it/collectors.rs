//! What the API tells about one collector: the credentials it collects with, its job history.

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::support::{Mode, TestEnv};

/// The `id`s of a listing's `items`, in order.
fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn misbehaving() -> String {
    format!(
        "{}/tests/plugins/misbehaving.sh",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn id(v: &Value) -> anyhow::Result<String> {
    Ok(v["id"].as_str().context("an id")?.to_owned())
}

async fn a_collector_lists_its_providers_accounts_without_secrets(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let p1 = id(&env.create("/v1/projects", json!({"name": "one"})).await?)?;
    let p2 = id(&env.create("/v1/projects", json!({"name": "two"})).await?)?;
    let demo1 = id(&env
        .create(
            "/v1/service-accounts",
            json!({"name": "demo-a", "provider": "demo", "project_id": p1}),
        )
        .await?)?;
    let demo2 = id(&env
        .create(
            "/v1/service-accounts",
            json!({"name": "demo-b", "provider": "demo", "project_id": p2}),
        )
        .await?)?;
    let secret = "aws-secret-0f1e2d3c4b5a";
    let key_id = "AKIAEXAMPLEKEY42";
    let aws = id(&env
        .create(
            "/v1/service-accounts",
            json!({"name": "aws-a", "provider": "aws", "project_id": p1,
                   "credentials": {"aws_access_key_id": key_id, "aws_secret_access_key": secret}}),
        )
        .await?)?;
    let collector = id(&env
        .create(
            "/v1/collectors",
            json!({"name": "demo", "plugin_id": "demo"}),
        )
        .await?)?;
    let path = format!("/v1/collectors/{collector}/credentials");

    let all = env.get(&path).await?;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(ids(&all.body), vec![demo1.clone(), demo2.clone()]);
    // Each item is the account as `GET /v1/service-accounts` shows it.
    let listed = env.get("/v1/service-accounts?provider=demo").await?;
    assert_eq!(all.body["items"], listed.body["items"]);

    let by_project = env.get(&format!("{path}?project_id={p2}")).await?;
    assert_eq!(by_project.status, 200, "{}", by_project.body);
    assert_eq!(ids(&by_project.body), vec![demo2.clone()]);
    let by_ids = env
        .get(&format!("{path}?service_account_ids={demo1},{aws}"))
        .await?;
    assert_eq!(by_ids.status, 200, "{}", by_ids.body);
    assert_eq!(
        ids(&by_ids.body),
        vec![demo1.clone()],
        "another provider's account is not the collector's, even when asked for"
    );
    let both = env
        .get(&format!(
            "{path}?service_account_ids={demo1},{demo2}&project_id={p1}"
        ))
        .await?;
    assert_eq!(ids(&both.body), vec![demo1.clone()]);

    // A collector of an AWS plugin (a private one: registering runs only its `init`) lists the
    // AWS account, with `has_credentials` and no credential value in any field.
    env.create(
        "/v1/plugins",
        json!({"id": "aws-inventory", "version": "1.0.0", "command": misbehaving(),
               "args": ["leaky", "aws"]}),
    )
    .await?;
    let aws_collector = id(&env
        .create(
            "/v1/collectors",
            json!({"name": "aws", "plugin_id": "aws-inventory"}),
        )
        .await?)?;
    let a = env
        .get(&format!("/v1/collectors/{aws_collector}/credentials"))
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(ids(&a.body), vec![aws.clone()]);
    assert_eq!(a.body["items"][0]["has_credentials"], true);
    for body in [&all.body, &by_ids.body, &both.body, &a.body] {
        let text = body.to_string();
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains(key_id), "{text}");
    }

    for (query, field) in [
        ("service_account_ids=nope", "service_account_ids"),
        (
            &format!("service_account_ids={demo1},x") as &str,
            "service_account_ids",
        ),
        ("service_account_ids=", "service_account_ids"),
        ("project_id=nope", "project_id"),
    ] {
        let bad = env.get(&format!("{path}?{query}")).await?;
        assert_eq!(bad.status, 400, "{query}: {}", bad.body);
        assert_eq!(bad.content_type, "application/problem+json");
        assert_eq!(
            bad.body["errors"][0]["field"], field,
            "{query}: {}",
            bad.body
        );
    }
    let unknown = env
        .get("/v1/collectors/01a207cc-0000-7000-8000-000000000000/credentials")
        .await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.body["type"], "/problems/not-found");
    Ok(())
}

async fn a_collectors_job_history_pages_newest_first(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(2, json!({"resources": 30})).await?;
    let mut finished = Vec::new();
    for _ in 0..3 {
        let job = env.collect(&collector).await?;
        assert_eq!(job["status"], "SUCCESS", "{job}");
        finished.push(job);
    }
    // Another collector's job, in between and after, must not show up.
    let other = id(&env
        .create(
            "/v1/collectors",
            json!({"name": "other", "plugin_id": "demo", "options": {"resources": 5}}),
        )
        .await?)?;
    let other_job = env.collect(&other).await?;
    assert_eq!(other_job["status"], "SUCCESS", "{other_job}");

    let path = format!("/v1/collectors/{collector}/jobs");
    let all = env.get(&path).await?;
    assert_eq!(all.status, 200, "{}", all.body);
    let newest_first: Vec<String> = finished.iter().rev().map(id).collect::<Result<_, _>>()?;
    assert_eq!(ids(&all.body), newest_first);
    assert_eq!(all.body["next_cursor"], Value::Null);
    // Each job as `GET /v1/jobs/{id}` shows it: the first run created, the others found the
    // same estate unchanged.
    let items = all.body["items"].as_array().context("items")?;
    for (item, job) in items.iter().zip(finished.iter().rev()) {
        assert_eq!(
            item, job,
            "the history shows the job as GET /v1/jobs/{{id}} does"
        );
        assert_eq!(item["status"], "SUCCESS");
        assert_eq!(item["collector_id"], json!(collector));
        assert_eq!(item["tasks_total"], 2);
        assert_eq!(item["tasks_done"], 2);
        assert!(item["duration_ms"].is_i64(), "{item}");
    }
    assert_eq!(items[2]["counts"]["created"], 60, "{}", items[2]);
    assert_eq!(items[0]["counts"]["unchanged"], 60, "{}", items[0]);
    assert_eq!(items[0]["counts"]["created"], 0, "{}", items[0]);

    let first = env.get(&format!("{path}?limit=2")).await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(ids(&first.body), newest_first[..2].to_vec());
    let cursor = first.body["next_cursor"]
        .as_str()
        .context("a next_cursor after a full page")?;
    let second = env.get(&format!("{path}?limit=2&cursor={cursor}")).await?;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(ids(&second.body), newest_first[2..].to_vec());
    assert_eq!(second.body["next_cursor"], Value::Null);

    let others = env.get(&format!("/v1/collectors/{other}/jobs")).await?;
    assert_eq!(ids(&others.body), vec![id(&other_job)?]);

    for (query, field) in [("limit=0", "limit"), ("cursor=nope", "cursor")] {
        let bad = env.get(&format!("{path}?{query}")).await?;
        assert_eq!(bad.status, 400, "{query}: {}", bad.body);
        assert_eq!(
            bad.body["errors"][0]["field"], field,
            "{query}: {}",
            bad.body
        );
    }
    let unknown = env
        .get("/v1/collectors/01a207cc-0000-7000-8000-000000000000/jobs")
        .await?;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    Ok(())
}

crate::in_both_modes!(
    a_collector_lists_its_providers_accounts_without_secrets,
    a_collectors_job_history_pages_newest_first,
);
