//! `GET /openapi.json` describes every route the API serves, and only those.

use std::collections::BTreeSet;

use anyhow::Context as _;
use serde_json::json;

use crate::support::{Mode, TestEnv};

/// Every route of the API: (method, path, whether it can fail on input, so must document a 4xx
/// problem+json answer). A route added to the router goes here too.
const ROUTES: &[(&str, &str, bool)] = &[
    ("get", "/healthz", false),
    ("get", "/readyz", false),
    ("get", "/metrics", false),
    ("get", "/openapi.json", false),
    ("get", "/v1/projects", false),
    ("post", "/v1/projects", true),
    ("get", "/v1/projects/{id}", true),
    ("get", "/v1/providers", false),
    ("get", "/v1/service-accounts", true),
    ("post", "/v1/service-accounts", true),
    ("get", "/v1/service-accounts/{id}", true),
    ("patch", "/v1/service-accounts/{id}", true),
    ("post", "/v1/service-accounts/{id}/verify", true),
    ("get", "/v1/plugins", false),
    ("post", "/v1/plugins", true),
    ("get", "/v1/plugins/{id}", true),
    ("get", "/v1/collectors", false),
    ("post", "/v1/collectors", true),
    ("get", "/v1/collectors/{id}", true),
    ("patch", "/v1/collectors/{id}", true),
    ("delete", "/v1/collectors/{id}", true),
    ("post", "/v1/collectors/{id}/collect", true),
    ("post", "/v1/collectors/{id}/enable", true),
    ("post", "/v1/collectors/{id}/disable", true),
    ("post", "/v1/collectors/{id}/verify", true),
    ("get", "/v1/collectors/{id}/credentials", true),
    ("get", "/v1/collectors/{id}/jobs", true),
    ("get", "/v1/jobs", true),
    ("get", "/v1/jobs/events", true),
    ("get", "/v1/jobs/{id}", true),
    ("get", "/v1/jobs/{id}/tasks", true),
    ("post", "/v1/jobs/{id}/cancel", true),
    ("get", "/v1/resources", true),
    ("get", "/v1/resources/{id}", true),
    ("get", "/v1/collectors/{id}/schedules", true),
    ("post", "/v1/collectors/{id}/schedules", true),
    ("get", "/v1/schedules/{id}", true),
    ("patch", "/v1/schedules/{id}", true),
    ("delete", "/v1/schedules/{id}", true),
    ("get", "/v1/schedules/{id}/fires", true),
    ("get", "/v1/resources/{id}/changes", true),
    ("get", "/v1/catalog", true),
    ("get", "/v1/costs", true),
    ("get", "/v1/costs/summary", true),
    ("get", "/v1/dashboards/billing", true),
    ("get", "/v1/projects/{id}/billing", true),
    ("post", "/v1/api-keys", true),
    ("get", "/v1/api-keys", false),
    ("delete", "/v1/api-keys/{id}", true),
    ("get", "/v1/audit", true),
    ("get", "/v1/metrics", true),
    ("post", "/v1/metrics/query", true),
    ("get", "/v1/metrics/top", true),
    ("get", "/v1/resources/{id}/metrics", true),
    ("get", "/v1/resources/{id}/metrics/{metric}", true),
];

async fn openapi_document_describes_every_route(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let a = env.get("/openapi.json").await?;
    assert_eq!(a.status, 200);
    assert!(a.content_type.starts_with("application/json"), "{a:?}");
    let doc = a.body;
    let version = doc["openapi"].as_str().context("openapi")?;
    assert!(version.starts_with("3.1"), "openapi is {version}");
    assert_eq!(doc["info"]["title"], "Gleaner");

    let paths = doc["paths"].as_object().context("paths")?;
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, expected,
        "the document and the route list differ"
    );

    for (method, path, fails_on_input) in ROUTES {
        let responses = doc["paths"][path][method]["responses"]
            .as_object()
            .with_context(|| format!("{method} {path}: responses"))?;
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} documents no 2xx answer"
        );
        if *fails_on_input {
            let problem = responses.iter().find(|(status, r)| {
                status.starts_with('4')
                    && r["content"]["application/problem+json"]["schema"]["$ref"]
                        == "#/components/schemas/Problem"
            });
            assert!(
                problem.is_some(),
                "{method} {path} documents no 4xx problem+json answer"
            );
        }
    }
    // The bearer scheme, and what each route asks for: every /v1 route a key (and answers 401
    // and 403 as documented), the probes and the document nothing.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["type"], "http",
        "{}",
        doc["components"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let anonymous = env.api.clone().without_key();
    for (method, path, _) in ROUTES {
        let op = &doc["paths"][path][method];
        if path.starts_with("/v1/") {
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
            for status in ["401", "403", "429"] {
                assert_eq!(
                    op["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} documents no {status}"
                );
            }
            if *path == "/v1/jobs/events" {
                continue;
            }
            let url = path.replace("{id}", "01a207cc-0000-7000-8000-000000000000");
            let a = match *method {
                "get" => anonymous.get(&url).await?,
                "post" => anonymous.post(&url, json!({})).await?,
                "patch" => anonymous.patch(&url, json!({})).await?,
                "delete" => anonymous.delete(&url).await?,
                other => anyhow::bail!("no client method for {other}"),
            };
            assert_eq!(a.status, 401, "{method} {path} without a key: {}", a.body);
        } else if *path != "/metrics" {
            assert_eq!(op["security"], json!([{}]), "{method} {path} is open");
            assert!(op["responses"]["401"].is_null(), "{method} {path} is open");
        }
    }
    for (method, path) in [
        ("post", "/v1/collectors"),
        ("patch", "/v1/service-accounts/{id}"),
    ] {
        for status in ["413", "415"] {
            assert!(
                doc["paths"][path][method]["responses"][status].is_object(),
                "{method} {path} documents no {status}"
            );
        }
    }

    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "errors"] {
        assert!(
            problem["properties"][field].is_object(),
            "Problem lacks {field}"
        );
    }

    // Each listed route is served: not the fallback's "no such route" 404, nor a 405.
    let unknown = "01a207cc-0000-7000-8000-000000000000";
    for (method, path, _) in ROUTES {
        let path = path.replace("{id}", unknown);
        if path == "/v1/jobs/events" {
            // A stream never ends by itself: opening it (200, `text/event-stream`) is the check.
            drop(env.events(&path, None).await?);
            continue;
        }
        let a = match *method {
            "get" => env.get(&path).await?,
            "post" => env.post(&path, json!({})).await?,
            "patch" => env.patch(&path, json!({})).await?,
            "delete" => env.delete(&path).await?,
            other => anyhow::bail!("no client method for {other}"),
        };
        let fallback = a.body["detail"] == "no such route";
        assert!(
            a.status != 405 && !fallback,
            "{method} {path} is not served: {} {}",
            a.status,
            a.body
        );
    }
    Ok(())
}

crate::in_both_modes!(openapi_document_describes_every_route,);
