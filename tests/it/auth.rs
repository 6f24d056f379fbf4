//! Identity and access: every route's rule, enforced; keys created, listed, revoked; one
//! domain never sees another's objects; the key's secret appears nowhere after its creation.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use gleaner_api::auth::{Need, RULES};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::{Answer, Api, Mode, TestEnv};

/// A second domain with an admin key, on the environment's store.
async fn other_domain(env: &TestEnv, name: &str) -> anyhow::Result<Api> {
    let (_, secret) = gleaner_common::store::api_key::create_domain(
        &env.db,
        &gleaner_common::model::Name::parse("name", name)?,
    )
    .await?;
    Ok(env.api.clone().with_key(secret.expose()))
}

/// A key of `role` made by `admin`: its client, and its id.
async fn key_of(admin: &Api, name: &str, body: Value) -> anyhow::Result<(Api, String)> {
    let mut body = body;
    body["name"] = json!(name);
    let created = admin.create("/v1/api-keys", body).await?;
    let secret = created["secret"].as_str().context("secret")?.to_owned();
    let id = created["id"].as_str().context("id")?.to_owned();
    Ok((admin.clone().with_key(secret), id))
}

/// Sends `method path` with `body` (writes) as `api`.
async fn call(api: &Api, method: &str, path: &str, body: Value) -> anyhow::Result<Answer> {
    match method {
        "GET" => api.get(path).await,
        "POST" => api.post(path, body).await,
        "PATCH" => api.patch(path, body).await,
        "DELETE" => api.delete(path).await,
        other => anyhow::bail!("no client for {other}"),
    }
}

/// One object of each kind a route's `{id}` can name, in the domain `api` acts for: the
/// collection of a demo collector over one account, a schedule, a private plugin, a key.
async fn objects(api: &Api, tag: &str) -> anyhow::Result<BTreeMap<&'static str, String>> {
    let collector = api.demo_collector(1, json!({"resources": 2})).await?;
    let job = api.collect(&collector).await?;
    anyhow::ensure!(job["status"] == "SUCCESS", "{job}");
    let projects = api.get("/v1/projects").await?.body;
    let accounts = api.get("/v1/service-accounts").await?.body;
    let resources = api.get("/v1/resources?limit=1").await?.body;
    let schedule = api
        .create(
            &format!("/v1/collectors/{collector}/schedules"),
            json!({"name": "nightly", "timezone": "UTC", "hours": [3]}),
        )
        .await?;
    let plugin =
        crate::plugins::register_misbehaving(api, &format!("private-{tag}"), "crash", "demo", 60)
            .await?;
    let key = api
        .create(
            "/v1/api-keys",
            json!({"name": format!("reader-{tag}"), "role": "viewer"}),
        )
        .await?;
    let id = |v: &Value| v.as_str().map(str::to_owned).context("an id");
    Ok(BTreeMap::from([
        ("projects", id(&projects["items"][0]["id"])?),
        ("service-accounts", id(&accounts["items"][0]["id"])?),
        ("collectors", collector.clone()),
        ("jobs", id(&job["id"])?),
        ("resources", id(&resources["items"][0]["id"])?),
        ("schedules", id(&schedule["id"])?),
        ("plugins", id(&plugin["id"])?),
        ("api-keys", id(&key["id"])?),
    ]))
}

/// `template` with its `{id}` replaced by the object of its kind (the segment after `/v1/`).
fn path_with(template: &str, ids: &BTreeMap<&'static str, String>) -> anyhow::Result<String> {
    if !template.contains("{id}") {
        return Ok(template.to_owned());
    }
    let kind = template
        .trim_start_matches("/v1/")
        .split('/')
        .next()
        .unwrap_or_default();
    let id = ids
        .get(kind)
        .with_context(|| format!("no object for {template}"))?;
    Ok(template.replace("{id}", id))
}

/// A body each write accepts up to its lookup of the `{id}`, so that what it answers says
/// whether the object was found.
fn body_for(method: &str, template: &str) -> Value {
    match (method, template) {
        ("PATCH", "/v1/schedules/{id}") => json!({"hours": [4]}),
        ("POST", "/v1/collectors/{id}/schedules") => {
            json!({"name": "other", "timezone": "UTC", "hours": [5]})
        }
        ("PATCH", _) => json!({"name": "renamed"}),
        ("POST", "/v1/service-accounts/{id}/verify" | "/v1/collectors/{id}/verify") => Value::Null,
        ("POST", "/v1/projects") => json!({"name": "p"}),
        ("POST", "/v1/api-keys") => json!({"name": "k", "role": "viewer"}),
        _ => json!({}),
    }
}

/// Every (method, route template) the API serves, from its OpenAPI document.
fn routes() -> Vec<(String, String)> {
    let doc = gleaner_api::openapi();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                out.push((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

in_both_modes!(
    every_route_needs_its_key_and_role_and_keeps_other_domains_out,
    keys_are_listed_without_secrets_and_a_revoked_key_fails,
    two_domains_never_see_each_others_objects,
);

/// Walks every route of the API: without a key it answers 401 (open routes aside), a viewer's
/// write 403 naming the role it needs, and a route naming another domain's object 404. A route
/// without a rule fails the walk.
async fn every_route_needs_its_key_and_role_and_keeps_other_domains_out(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let other = other_domain(&env, "other").await?;
    let theirs = objects(&other, "theirs").await?;
    let (viewer, _) = key_of(&env.api, "viewer", json!({"role": "viewer"})).await?;
    let anonymous = env.api.clone().without_key();
    let mut walked = 0;
    for (method, template) in routes() {
        let rule = RULES
            .iter()
            .find(|r| r.method == method && r.path == template)
            .with_context(|| format!("{method} {template} has no rule in auth::RULES"))?;
        let Need::Role(role) = rule.need else {
            continue;
        };
        walked += 1;
        let path = path_with(&template, &theirs)?;
        let body = body_for(&method, &template);
        if template == "/v1/jobs/events" {
            // A stream: only its refusal is a plain answer.
            let refused = anonymous.events(&path, None).await;
            let why = refused.err().context("a stream without a key")?.to_string();
            assert!(why.contains("401"), "{method} {template}: {why}");
            continue;
        }
        let a = call(&anonymous, &method, &path, body.clone()).await?;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{method} {template}: {a:?}"
        );
        assert_eq!(
            a.body["type"], "/problems/unauthorized",
            "{method} {template}"
        );
        assert!(a.content_type.starts_with("application/problem+json"));
        if role > gleaner_common::model::Role::Viewer {
            let a = call(&viewer, &method, &path, body.clone()).await?;
            assert_eq!(
                a.status,
                StatusCode::FORBIDDEN,
                "{method} {template}: {a:?}"
            );
            let detail = a.body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(&format!("needs the {} role", role.as_str())),
                "{method} {template}: {detail}"
            );
        }
        if template.contains("{id}") {
            let a = call(&env.api, &method, &path, body).await?;
            assert_eq!(
                a.status,
                StatusCode::NOT_FOUND,
                "{method} {template} reached another domain's object: {a:?}"
            );
        }
    }
    assert!(walked > 40, "walked only {walked} routes");
    // Open routes stay open.
    for open in ["/healthz", "/readyz", "/openapi.json", "/metrics"] {
        let a = anonymous.get(open).await?;
        assert!(a.status.is_success(), "{open}: {a:?}");
    }
    Ok(())
}

async fn keys_are_listed_without_secrets_and_a_revoked_key_fails(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let created = env
        .create("/v1/api-keys", json!({"name": "ci", "role": "member"}))
        .await?;
    let secret = created["secret"].as_str().context("secret")?.to_owned();
    assert!(
        secret.starts_with("glk_") && secret.len() == 68,
        "{created}"
    );
    assert_eq!(created["role"], "member");
    assert_eq!(created["prefix"], secret[..12]);
    let id = created["id"].as_str().context("id")?;
    let ci = env.api.clone().with_key(&secret);
    assert_eq!(ci.get("/v1/projects").await?.status, StatusCode::OK);

    let listed = env.get("/v1/api-keys").await?;
    assert_eq!(listed.status, StatusCode::OK);
    let text = listed.body.to_string();
    assert!(
        !text.contains(&secret[4..]),
        "a listing shows no secret: {text}"
    );
    let mine = listed.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|k| k["id"] == id)
        .context("the new key")?;
    assert!(mine["last_used_at"].is_string(), "{mine}");
    assert!(mine["secret"].is_null());

    // Names are unique; projects must exist; expiries lie ahead.
    let dup = env
        .post("/v1/api-keys", json!({"name": "ci", "role": "viewer"}))
        .await?;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{dup:?}");
    let bad = env
        .post(
            "/v1/api-keys",
            json!({"name": "x", "role": "viewer", "project_ids": ["01a207cc-0000-7000-8000-000000000000"]}),
        )
        .await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["errors"][0]["field"], "project_ids");
    let past = env
        .post(
            "/v1/api-keys",
            json!({"name": "y", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await?;
    assert_eq!(past.body["errors"][0]["field"], "expires_at", "{past:?}");
    let role = env
        .post("/v1/api-keys", json!({"name": "z", "role": "owner"}))
        .await?;
    assert_eq!(role.status, StatusCode::BAD_REQUEST, "{role:?}");

    let mut stream = ci.events("/v1/jobs/events", None).await?;
    let revoked = env.delete(&format!("/v1/api-keys/{id}")).await?;
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    assert!(revoked.body["revoked_at"].is_string());
    // A stream opened with the key ends (no event comes in the meantime: nothing runs).
    let ended = stream
        .next_within(gleaner_api::auth::CHECK_EVERY + Duration::from_secs(2))
        .await?;
    assert!(ended.is_none(), "{ended:?}");
    // At once on the process that revoked it, though the key was used a moment ago.
    let refused = ci.get("/v1/projects").await?;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert!(
        refused.headers.contains_key("www-authenticate"),
        "{refused:?}"
    );
    assert_eq!(refused.content_type, "application/problem+json");
    Ok(())
}

/// The domain's ids found in a listing.
fn ids(listing: &Value) -> Vec<String> {
    listing["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Two domains, each with projects, accounts, collectors, schedules, jobs and resources: no
/// listing, detail or stream of one shows the other's.
async fn two_domains_never_see_each_others_objects(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let other = other_domain(&env, "other").await?;
    let mine = objects(&env.api, "mine").await?;
    let theirs = objects(&other, "theirs").await?;
    for listing in [
        "/v1/projects",
        "/v1/service-accounts",
        "/v1/collectors",
        "/v1/jobs",
        "/v1/resources?limit=1000",
        "/v1/api-keys",
        "/v1/plugins",
    ] {
        for (api, own, foreign) in [(&env.api, &mine, &theirs), (&other, &theirs, &mine)] {
            let a = api.get(listing).await?;
            assert_eq!(a.status, StatusCode::OK, "{listing}: {a:?}");
            let found = ids(&a.body);
            for id in foreign.values() {
                assert!(!found.contains(id), "{listing} shows another domain's {id}");
            }
            let kind = listing.trim_start_matches("/v1/").split(['?', '/']).next();
            if let Some(id) = kind.and_then(|k| own.get(k)) {
                assert!(
                    found.contains(id),
                    "{listing} lacks its own {id}: {}",
                    a.body
                );
            }
        }
    }
    // Each domain's resources are its own collection's.
    let total = |a: &Value| a["total"].as_i64();
    assert_eq!(
        total(&env.get("/v1/resources?limit=1").await?.body),
        Some(2)
    );
    assert_eq!(
        total(&other.get("/v1/resources?limit=1").await?.body),
        Some(2)
    );
    // Costs: the other domain has one more demo account, so twice the costs; no summary, cost
    // row or dashboard of one counts the other's.
    let project = other.get("/v1/projects").await?.body["items"][0]["id"].clone();
    other
        .create(
            "/v1/service-accounts",
            json!({"name": "theirs-2", "provider": "demo", "project_id": project, "credentials": {}}),
        )
        .await?;
    let mut totals = Vec::new();
    for api in [&env.api, &other] {
        let c = api
            .create(
                "/v1/collectors",
                json!({"name": "costs", "plugin_id": "demo-billing", "options": {}}),
            )
            .await?;
        let a = api
            .post(
                &format!("/v1/collectors/{}/collect", c["id"].as_str().context("id")?),
                json!({"start_month": "2024-09", "end_month": "2024-09"}),
            )
            .await?;
        let job = api
            .wait_job(a.body["job_id"].as_str().context("job_id")?)
            .await?;
        assert_eq!(job["status"], "SUCCESS", "{job}");
    }
    for api in [&env.api, &other] {
        let summary = api
            .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01")
            .await?
            .body;
        let total: rust_decimal::Decimal = summary["items"][0]["billed_cost"]
            .as_str()
            .context("a total")?
            .parse()?;
        let dashboard = api.get("/v1/dashboards/billing?month=2024-09").await?.body;
        assert_eq!(
            dashboard["this_month"][0]["billed_cost"], summary["items"][0]["billed_cost"],
            "{dashboard}"
        );
        let own: Vec<String> = ids(&api.get("/v1/service-accounts").await?.body);
        let rows = api
            .get("/v1/costs?start=2024-09-01&end=2024-10-01&limit=1000")
            .await?
            .body;
        for r in rows["items"].as_array().context("items")? {
            let account = r["service_account_id"].as_str().unwrap_or_default();
            assert!(
                own.iter().any(|a| a == account),
                "another domain's cost: {r}"
            );
        }
        totals.push(total);
    }
    assert_eq!(
        totals[0] * rust_decimal::Decimal::from(2),
        totals[1],
        "{totals:?}"
    );
    // The job event stream of one domain replays none of the other's jobs.
    let mut events = env
        .api
        .events(
            "/v1/jobs/events",
            Some("0_00000000-0000-0000-0000-000000000000"),
        )
        .await?;
    let mut seen = Vec::new();
    while let Ok(Some(e)) = events.next_within(Duration::from_secs(2)).await {
        seen.push(e.json()?["id"].as_str().unwrap_or_default().to_owned());
    }
    assert!(seen.contains(&mine["jobs"]), "{seen:?}");
    assert!(!seen.contains(&theirs["jobs"]), "{seen:?}");
    Ok(())
}

in_both_modes!(a_key_limited_to_a_project_sees_only_its_accounts_resources_and_costs);

/// Two projects, each with a demo account and billing account, collected: a key limited to
/// one sees that project's service accounts, resources and costs only, its summary totals are
/// that project's share of the domain's, and it can change nothing that spans the domain.
async fn a_key_limited_to_a_project_sees_only_its_accounts_resources_and_costs(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let mut projects = Vec::new();
    for name in ["alpha", "beta"] {
        let p = env.create("/v1/projects", json!({"name": name})).await?;
        let id = p["id"].as_str().context("id")?.to_owned();
        for i in 0..(if name == "alpha" { 1 } else { 2 }) {
            env.create(
                "/v1/service-accounts",
                json!({"name": format!("{name}-{i}"), "provider": "demo", "project_id": id, "credentials": {}}),
            )
            .await?;
        }
        projects.push(id);
    }
    let (alpha, beta) = (projects[0].clone(), projects[1].clone());
    let inventory = env
        .create(
            "/v1/collectors",
            json!({"name": "inv", "plugin_id": "demo", "options": {"resources": 3}}),
        )
        .await?;
    let job = env.collect(inventory["id"].as_str().context("id")?).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let billing = env
        .create(
            "/v1/collectors",
            json!({"name": "costs", "plugin_id": "demo-billing", "options": {}}),
        )
        .await?;
    let billing_id = billing["id"].as_str().context("id")?;
    let accepted = env
        .post(
            &format!("/v1/collectors/{billing_id}/collect"),
            json!({"start_month": "2024-09", "end_month": "2024-09"}),
        )
        .await?;
    let costs_job = env
        .wait_job(accepted.body["job_id"].as_str().context("job_id")?)
        .await?;
    assert_eq!(costs_job["status"], "SUCCESS", "{costs_job}");

    let (limited, _) = key_of(
        &env.api,
        "alpha-only",
        json!({"role": "member", "project_ids": [alpha]}),
    )
    .await?;
    // Projects and service accounts: alpha's only.
    let seen = ids(&limited.get("/v1/projects").await?.body);
    assert_eq!(seen, vec![alpha.clone()]);
    let accounts = limited.get("/v1/service-accounts").await?.body;
    let items = accounts["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1, "{accounts}");
    assert!(items.iter().all(|a| a["project_id"] == alpha.as_str()));
    let beta_account = env.get("/v1/service-accounts").await?.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|a| a["project_id"] == beta.as_str())
        .and_then(|a| a["id"].as_str().map(str::to_owned))
        .context("a beta account")?;
    for path in [
        format!("/v1/service-accounts/{beta_account}"),
        format!("/v1/projects/{beta}"),
        format!("/v1/projects/{beta}/billing?month=2024-09"),
    ] {
        assert_eq!(
            limited.get(&path).await?.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // The collection's tasks: alpha's account's one of the three (another account's task tells
    // its errors and its plugin's output).
    let job_id = job["id"].as_str().context("job id")?;
    let tasks = limited.get(&format!("/v1/jobs/{job_id}/tasks")).await?.body;
    let own_tasks = tasks["items"].as_array().context("items")?;
    assert_eq!(own_tasks.len(), 1, "{tasks}");
    assert_ne!(own_tasks[0]["service_account_id"], beta_account.as_str());
    let all = env.get(&format!("/v1/jobs/{job_id}/tasks")).await?.body;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3), "{all}");
    // Resources: alpha's account's 3 of the 9.
    let page = limited.get("/v1/resources?limit=1000").await?.body;
    assert_eq!(page["total"], 3, "{page}");
    assert_eq!(env.get("/v1/resources?limit=1").await?.body["total"], 9);
    let beta_resource = env
        .get(&format!("/v1/resources?limit=1&project_id={beta}"))
        .await?
        .body["items"][0]["id"]
        .as_str()
        .context("a beta resource")?
        .to_owned();
    assert_eq!(
        limited
            .get(&format!("/v1/resources/{beta_resource}"))
            .await?
            .status,
        StatusCode::NOT_FOUND
    );
    // Costs: alpha's share, which is a third of the domain's (one account of three).
    let summary = |api: &Api| {
        let api = api.clone();
        async move {
            let a = api
                .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01")
                .await?;
            anyhow::ensure!(a.status == StatusCode::OK, "{a:?}");
            let total: rust_decimal::Decimal = a.body["items"][0]["billed_cost"]
                .as_str()
                .context("a total")?
                .parse()?;
            anyhow::Ok(total)
        }
    };
    let (mine, all) = (summary(&limited).await?, summary(&env.api).await?);
    let per_project = env
        .get(&format!(
            "/v1/costs/summary?start=2024-09-01&end=2024-10-01&project_id={alpha}"
        ))
        .await?;
    let alpha_total: rust_decimal::Decimal = per_project.body["items"][0]["billed_cost"]
        .as_str()
        .context("alpha's total")?
        .parse()?;
    assert_eq!(mine, alpha_total);
    assert_eq!(mine * rust_decimal::Decimal::from(3), all);
    let rows = limited
        .get("/v1/costs?start=2024-09-01&end=2024-10-01&limit=1000")
        .await?;
    let allowed: Vec<&str> = items.iter().filter_map(|a| a["id"].as_str()).collect();
    for r in rows.body["items"].as_array().context("items")? {
        assert!(
            allowed.contains(&r["service_account_id"].as_str().unwrap_or_default()),
            "{r}"
        );
    }
    // Nothing that spans the domain, and no account outside its project.
    let refused = limited
        .post(
            "/v1/collectors",
            json!({"name": "mine", "plugin_id": "demo", "options": {}}),
        )
        .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let elsewhere = limited
        .post(
            "/v1/service-accounts",
            json!({"name": "sneaky", "provider": "demo", "project_id": beta, "credentials": {}}),
        )
        .await?;
    assert_eq!(elsewhere.status, StatusCode::FORBIDDEN, "{elsewhere:?}");
    assert_eq!(elsewhere.body["errors"][0]["field"], "project_id");
    let inside = limited
        .post(
            "/v1/service-accounts",
            json!({"name": "fine", "provider": "demo", "project_id": alpha, "credentials": {}}),
        )
        .await?;
    assert_eq!(inside.status, StatusCode::CREATED, "{inside:?}");
    Ok(())
}

/// Whether `haystack` holds the random part of `secret` (what follows `glk_`).
fn leaks(haystack: &[u8], secret: &str) -> bool {
    let needle = secret.trim_start_matches("glk_").as_bytes();
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A key made on one API process and used on another (`gleaner api`, logging at debug): it
/// is revoked on the first and refused on the second within a second; its secret is in no
/// row of the database (only its SHA-256) and in no line of the second process's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_second_api_process_and_the_secret_is_stored_nowhere()
-> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let port = crate::support::free_port()?;
    let _second = crate::support::api_process(&env, "api-2", port, &[("RUST_LOG", "debug")])?;
    let second = env.api.at(format!("http://127.0.0.1:{port}"));
    second.wait_ready().await?;
    let created = env
        .create("/v1/api-keys", json!({"name": "ci", "role": "member"}))
        .await?;
    let secret = created["secret"].as_str().context("secret")?.to_owned();
    let id = created["id"].as_str().context("id")?.to_owned();
    let ci = second.clone().with_key(&secret);
    assert_eq!(ci.get("/v1/projects").await?.status, StatusCode::OK);
    ci.create("/v1/projects", json!({"name": "made-on-the-second"}))
        .await?;
    // Used a moment ago: the second process has it in its cache.
    assert_eq!(ci.get("/v1/projects").await?.status, StatusCode::OK);
    let revoked_at = std::time::Instant::now();
    let revoked = env.delete(&format!("/v1/api-keys/{id}")).await?;
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    loop {
        let a = ci.get("/v1/projects").await?;
        if a.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert!(
            revoked_at.elapsed() < gleaner_api::auth::CHECK_EVERY + Duration::from_millis(500),
            "the second process still honours the key {:?} after its revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let url = env.settings.database_url.clone();
    let schema = env.settings.database.schema.clone().context("schema")?;
    let dump = tokio::process::Command::new("pg_dump")
        .args(["--data-only", "--schema", &schema, "--dbname", &url])
        .output()
        .await
        .context("running pg_dump")?;
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dump.stdout.len() > 1000, "an empty dump proves nothing");
    assert!(
        !leaks(&dump.stdout, &secret),
        "the secret is in the database"
    );
    let hash = gleaner_common::store::api_key::hash(&secret);
    assert!(
        dump.stdout
            .windows(hash.len())
            .any(|w| w == hash.as_bytes()),
        "the key's hash is what is stored"
    );
    let log = std::fs::read(crate::support::worker_log(&env, "api-2"))?;
    assert!(!log.is_empty(), "the second process logged nothing");
    assert!(!leaks(&log, &secret), "the secret is in the log");
    Ok(())
}

/// The standalone binary at debug level: a key made, used and revoked leaves its secret in no
/// file of the data directory (the database, its journal) and in no line of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_keeps_no_secret_of_a_key_it_made() -> anyhow::Result<()> {
    let dir = crate::standalone::test_dir("secret")?;
    let data = dir.0.join("data");
    let log = dir.0.join("gleaner.log");
    let gleaner =
        crate::standalone::Standalone::start(&data, &log, &[("RUST_LOG", "debug")]).await?;
    let created = gleaner
        .create("/v1/api-keys", json!({"name": "ci", "role": "viewer"}))
        .await?;
    let secret = created["secret"].as_str().context("secret")?.to_owned();
    let ci = gleaner.clone().with_key(&secret);
    assert_eq!(ci.get("/v1/projects").await?.status, StatusCode::OK);
    let id = created["id"].as_str().context("id")?;
    assert_eq!(
        gleaner.delete(&format!("/v1/api-keys/{id}")).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        ci.get("/v1/projects").await?.status,
        StatusCode::UNAUTHORIZED
    );
    gleaner.kill().await?;
    let mut checked = 0;
    for entry in std::fs::read_dir(&data)? {
        let path = entry?.path();
        // The admin's own key, kept on purpose for the operator.
        if path.file_name().is_some_and(|n| n == "admin.key") || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        checked += bytes.len();
        assert!(
            !leaks(&bytes, &secret),
            "the secret is in {}",
            path.display()
        );
    }
    assert!(
        checked > 10_000,
        "only {checked} bytes of data were searched"
    );
    let logged = std::fs::read(&log)?;
    assert!(!logged.is_empty(), "nothing was logged");
    assert!(!leaks(&logged, &secret), "the secret is in the log");
    Ok(())
}

/// Every change, refused ones included, is in the domain's audit log with its key, route,
/// target and outcome; reads are not; only admins read it, a page at a time, and another
/// domain's admin sees none of it.
async fn every_change_is_in_the_audit_log_for_admins_only(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let (viewer, viewer_id) = key_of(&env.api, "viewer", json!({"role": "viewer"})).await?;
    let (member, member_id) = key_of(&env.api, "member", json!({"role": "member"})).await?;
    let collector = member.demo_collector(1, json!({"resources": 2})).await?;
    let job = member.collect(&collector).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let at = format!("/v1/collectors/{collector}");
    let refused = viewer.post(&format!("{at}/collect"), json!({})).await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        member.patch(&at, json!({"priority": 5})).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        member.patch(&at, json!({"priority": -1})).await?.status,
        StatusCode::BAD_REQUEST
    );
    for who in [&viewer, &member] {
        assert_eq!(who.get("/v1/audit").await?.status, StatusCode::FORBIDDEN);
    }

    let log = env.get(&format!("/v1/audit?target_id={collector}")).await?;
    assert_eq!(log.status, StatusCode::OK, "{log:?}");
    let seen: Vec<(String, String, String, u64)> = log.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|e| {
            assert_eq!(e["target_id"], collector.as_str(), "{e}");
            assert!(e["at"].is_string(), "{e}");
            (
                e["api_key_id"].as_str().unwrap_or("-").to_owned(),
                e["method"].as_str().unwrap_or("-").to_owned(),
                e["route"].as_str().unwrap_or("-").to_owned(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let entry = |key: &str, method: &str, route: &str, status: u64| {
        (key.to_owned(), method.to_owned(), route.to_owned(), status)
    };
    assert_eq!(
        seen,
        [
            entry(&member_id, "PATCH", "/v1/collectors/{id}", 400),
            entry(&member_id, "PATCH", "/v1/collectors/{id}", 200),
            entry(&viewer_id, "POST", "/v1/collectors/{id}/collect", 403),
            entry(&member_id, "POST", "/v1/collectors/{id}/collect", 202),
            entry(&member_id, "POST", "/v1/collectors", 201),
        ],
        "newest first"
    );

    // Everything, a page at a time, without reads.
    let mut all = Vec::new();
    let mut next = "/v1/audit?limit=2".to_owned();
    loop {
        let page = env.get(&next).await?.body;
        let items = page["items"].as_array().context("items")?;
        assert!(items.len() <= 2, "{page}");
        all.extend(items.iter().cloned());
        match page["next_cursor"].as_i64() {
            Some(c) => next = format!("/v1/audit?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert!(
        all.iter().all(|e| e["method"] != "GET"),
        "reads are not changes"
    );
    let ids: Vec<i64> = all.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "pages neither overlap nor skip: {ids:?}"
    );
    // The two keys' creation, the demo's project and account, and the five above.
    assert!(all.len() >= 9, "{}", all.len());

    // What a POST under another object created is its target: the schedule, not the collector.
    let schedule = member
        .create(
            &format!("{at}/schedules"),
            json!({"name": "nightly", "timezone": "UTC", "hours": [2]}),
        )
        .await?;
    let schedule = schedule["id"].as_str().context("id")?;
    let its = env
        .get(&format!("/v1/audit?target_id={schedule}"))
        .await?
        .body;
    assert_eq!(its["items"].as_array().map(Vec::len), Some(1), "{its}");
    assert_eq!(its["items"][0]["route"], "/v1/collectors/{id}/schedules");

    let other = other_domain(&env, "other").await?;
    let theirs = other.get("/v1/audit").await?;
    assert_eq!(theirs.body["items"], json!([]), "{theirs:?}");
    Ok(())
}

in_both_modes!(every_change_is_in_the_audit_log_for_admins_only);

/// With `GLEANER_API__METRICS_TOKEN`, `/metrics` asks for that token, and an API key is not it;
/// the probes stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ask_for_their_own_token_when_one_is_set() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Distributed,
        crate::support::Options {
            tune: |s| s.api.metrics_token = Some("scrape-me-0123".into()),
            ..crate::support::Options::default()
        },
    )
    .await?;
    let anonymous = env.api.clone().without_key();
    let refused = anonymous.get("/metrics").await?;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert!(refused.headers.contains_key("www-authenticate"));
    for wrong in [
        "scrape-me-0124",
        "scrape-me-012",
        env.api.key().context("key")?,
    ] {
        let a = anonymous.clone().with_key(wrong).get("/metrics").await?;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{wrong}: {a:?}");
    }
    let scraped = anonymous
        .clone()
        .with_key("scrape-me-0123")
        .get("/metrics")
        .await?;
    assert_eq!(scraped.status, StatusCode::OK, "{scraped:?}");
    assert!(
        scraped
            .body
            .as_str()
            .is_some_and(|t| t.contains("gleaner_")),
        "{scraped:?}"
    );
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(anonymous.get(open).await?.status, StatusCode::OK, "{open}");
    }
    Ok(())
}
