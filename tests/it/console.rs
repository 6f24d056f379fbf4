//! The console in a real browser (headless chromium), against a live Gleaner.

use anyhow::Context as _;
use serde_json::json;

use crate::support::browser::Browser;
use crate::support::{Mode, TestEnv};

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Distributed => "distributed",
        Mode::Standalone => "standalone",
    }
}

async fn the_guides_path_through_the_console(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    env.create("/v1/projects", json!({"name": "ops"})).await?;
    let browser = Browser::start(&env.base).await?;
    let shot = |name: &str| format!("{name}-{}", mode_name(mode));

    // Signed out, a page sends the browser to sign in, and back after it.
    browser.open("/service-accounts?provider=demo").await?;
    browser.wait_for("#api_key").await?;
    browser.sign_in(env.key().context("key")?).await?;
    assert_eq!(browser.text("h1").await?, "Service accounts");

    // Identity > Service Account > the provider > Add: the form comes from the provider's
    // credential fields; AWS's has a masked secret.
    browser.open("/service-accounts/new?provider=aws").await?;
    let secret = browser
        .wait_for("#f-credentials-aws_secret_access_key")
        .await?;
    assert_eq!(secret.attr("type").await?.as_deref(), Some("password"));
    browser.open("/service-accounts?provider=demo").await?;
    browser.click("#add-account").await?;
    browser
        .wait_for("#f-name")
        .await?
        .send_keys("demo-1")
        .await?;
    browser
        .wait_for("#f-project_id")
        .await?
        .select_by_label("ops")
        .await?;
    browser.click("#account-form button[type=submit]").await?;
    let accounts = browser.text("#accounts").await?;
    assert!(
        accounts.contains("demo-1") && accounts.contains("ops"),
        "{accounts}"
    );
    browser.screenshot(&shot("service-accounts")).await?;

    // The wizard: the plugin, then its options, name, priority and tags.
    let create = async |name: &str| -> anyhow::Result<()> {
        browser.open("/collectors/new").await?;
        browser.click("#plugin-demo").await?;
        browser.click("#wizard-next").await?;
        browser
            .wait_for("#f-options-resources")
            .await?
            .send_keys("25")
            .await?;
        browser.wait_for("#f-name").await?.send_keys(name).await?;
        browser
            .wait_for("#f-tags")
            .await?
            .send_keys("env=dev")
            .await?;
        browser.click("#create-collector").await
    };
    create("estate").await?;
    assert_eq!(browser.text("main h1").await?, "Collector estate");
    // The same name again: refused, the field marked, what was typed kept.
    create("estate").await?;
    let name = browser.wait_for("#f-name[aria-invalid=true]").await?;
    assert_eq!(name.prop("value").await?.as_deref(), Some("estate"));
    let why = browser.text("#f-name-error").await?;
    assert_eq!(why, "must be unique");
    assert_eq!(
        browser
            .wait_for("#f-options-resources")
            .await?
            .prop("value")
            .await?
            .as_deref(),
        Some("25")
    );
    browser.screenshot(&shot("wizard-duplicate-name")).await?;

    // The collector's page: a schedule in Asia/Seoul, its fires in Seoul's time.
    browser.open("/collectors").await?;
    browser.click("#collectors a").await?;
    browser.wait_for("#s-timezone").await?.clear().await?;
    browser
        .wait_for("#s-timezone")
        .await?
        .send_keys("Asia/Seoul")
        .await?;
    browser
        .wait_for("#s-name")
        .await?
        .send_keys("mornings")
        .await?;
    browser.wait_for("#s-hours").await?.send_keys("9").await?;
    browser.click("#add-schedule").await?;
    let fires = browser.text("tr[data-schedule=mornings] .fires").await?;
    assert!(
        fires.contains("09:00 KST") && fires.contains("yours:"),
        "{fires}"
    );

    // Collect now: the job widget reaches SUCCESS with no reload (a mark set in the page must
    // survive).
    browser
        .eval("window.__still_this_page = true; return 1;")
        .await?;
    browser.click("#collect-now").await?;
    let queued = browser.text("#collect-outcome [role=status]").await?;
    assert!(queued.starts_with("Job "), "{queued}");
    let done = browser
        .wait_for("#job-widget-list li[data-status=SUCCESS]")
        .await?;
    assert!(done.text().await?.contains("1/1 tasks"));
    assert_eq!(
        browser
            .eval("return window.__still_this_page === true;")
            .await?,
        json!(true),
        "the page was reloaded"
    );
    browser.screenshot(&shot("collector-collected")).await?;

    // The resources it found, counted; after a collection that changed them, a readable diff.
    browser.open("/resources").await?;
    assert_eq!(browser.text("#resource-count").await?, "25 resources");
    let cid = env.get("/v1/collectors").await?.body["items"][0]["id"]
        .as_str()
        .context("collector id")?
        .to_owned();
    env.patch(
        &format!("/v1/collectors/{cid}"),
        json!({"options": {"resources": 25, "revision": 1, "change_ratio": 1}}),
    )
    .await?;
    let changed = env.collect(&cid).await?;
    assert_eq!(changed["counts"]["updated"], 25, "{changed}");
    browser.open("/resources").await?;
    browser.click("#resources tbody a").await?;
    let diff = browser
        .wait_for("#changes li[data-kind=UPDATED] table.diff")
        .await?
        .text()
        .await?;
    assert!(
        diff.contains("revision 0 1"),
        "the field, before and after: {diff}"
    );
    browser.screenshot(&shot("resource-diff")).await?;

    // Disabled, "collect now" shows the API's refusal beside the button.
    browser.open(&format!("/collectors/{cid}")).await?;
    browser.click("#toggle-state").await?;
    browser.wait_text("#collector-state", "DISABLED").await?;
    browser.click("#collect-now").await?;
    let refusal = browser.text("#collect-outcome [role=alert]").await?;
    assert!(refusal.contains("disabled"), "{refusal}");
    browser.screenshot(&shot("collector-refused")).await?;

    // The collectors list, filtered without a reload.
    browser.open("/collectors").await?;
    assert_eq!(browser.text("#collector-count").await?, "1 collector");
    browser
        .wait_for("#q")
        .await?
        .send_keys("nothing-matches")
        .await?;
    browser
        .client
        .wait()
        .at_most(std::time::Duration::from_secs(10))
        .for_element(fantoccini::Locator::XPath(
            "//p[@id='collector-count' and text()='0 collectors']",
        ))
        .await?;
    browser.close().await
}

crate::in_both_modes!(
    the_guides_path_through_the_console,
    the_billing_dashboard_shows_the_samples_totals
);

async fn the_billing_dashboard_shows_the_samples_totals(mode: Mode) -> anyhow::Result<()> {
    use crate::billing::{SAMPLE, bill, focus_account, focus_collector, september};
    let env = TestEnv::start_with(
        mode,
        crate::support::Options {
            tune: crate::support::allow_test_files_and_endpoints,
            ..crate::support::Options::default()
        },
    )
    .await?;
    focus_account(&env, "focus-all", None).await?;
    let collector = focus_collector(&env, SAMPLE).await?;
    let job = bill(&env, &collector, september()).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let browser = Browser::start(&env.base).await?;
    browser.sign_in(env.key().context("key")?).await?;
    browser.open("/billing").await?;
    browser.wait_for("#month").await?;
    // The month picker: a month input set to September 2024, then "Show".
    browser
        .eval("document.getElementById('month').value = '2024-09'; return 1;")
        .await?;
    browser.click("main form.filters button").await?;
    let total = browser.text("#totals td.total[data-currency=USD]").await?;
    assert_eq!(
        total, "$3.71561541189 USD",
        "the README's total, every decimal"
    );
    let providers = browser.text("#provider-h + table").await?;
    for (provider, billed) in [
        ("AWS", "$1.37790679330 USD"),
        ("Microsoft", "$1.80063469386 USD"),
        ("Oracle", "$0.53707392473 USD"),
    ] {
        assert!(
            providers
                .lines()
                .any(|l| l.contains(provider) && l.contains(billed)),
            "{provider} {billed}: {providers}"
        );
    }
    let accounts = browser.text("#by-account").await?;
    assert!(
        accounts.contains("focus-all") && accounts.contains("$3.71561541189 USD"),
        "{accounts}"
    );
    // The chart is drawn (uPlot makes a canvas), and the project has a page of its own.
    browser.wait_for("#trend-chart canvas").await?;
    browser
        .screenshot(&format!("billing-{}", mode_name(mode)))
        .await?;
    browser.click("#by-project a").await?;
    assert!(
        browser
            .text("main h1")
            .await?
            .starts_with("Billing of project p-focus-all")
    );
    let project_total = browser.text("#totals td.total[data-currency=USD]").await?;
    assert_eq!(project_total, "$3.71561541189 USD");
    browser.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_pages_have_no_serious_accessibility_violation() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Standalone).await?;
    let project = env.create("/v1/projects", json!({"name": "ops"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "demo-1", "provider": "demo", "project_id": project["id"]}),
    )
    .await?;
    let collector = env
        .create(
            "/v1/collectors",
            json!({"name": "estate", "plugin_id": "demo", "options": {"resources": 3}}),
        )
        .await?;
    let cid = collector["id"].as_str().context("collector id")?;
    let job = env.collect(cid).await?;
    let jid = job["id"].as_str().context("job id")?;
    let browser = Browser::start(&env.base).await?;
    let mut found = Vec::new();
    browser.open("/sign-in").await?;
    found.extend(page_violations(&browser, "/sign-in").await?);
    browser.sign_in(env.key().context("key")?).await?;
    for path in [
        "/collectors".to_owned(),
        "/collectors/new".to_owned(),
        "/collectors/new?plugin=demo".to_owned(),
        "/service-accounts".to_owned(),
        "/service-accounts/new?provider=aws".to_owned(),
        "/resources".to_owned(),
        "/billing".to_owned(),
        format!("/collectors/{cid}"),
        "/jobs".to_owned(),
        format!("/jobs/{jid}"),
    ] {
        browser.open(&path).await?;
        browser.wait_for("main h1").await?;
        found.extend(page_violations(&browser, &path).await?);
    }
    browser.close().await?;
    assert!(found.is_empty(), "{found:#?}");
    Ok(())
}

async fn page_violations(browser: &Browser, path: &str) -> anyhow::Result<Vec<String>> {
    Ok(browser
        .accessibility_violations()
        .await?
        .into_iter()
        .map(|v| format!("{path}: {v}"))
        .collect())
}

/// Signing in refuses a wrong key on its field, and forms refuse a missing CSRF token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_forms_refuse_what_they_should() -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        Mode::Standalone,
        crate::support::Options {
            // The limit on an address's failed keys, which the tests turn off elsewhere.
            tune: |s| s.api.failed_auth_per_second = 5,
            ..crate::support::Options::default()
        },
    )
    .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let wrong = http
        .post(format!("{}/sign-in", env.base))
        .form(&[("api_key", "glk_nope"), ("next", "/")])
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let body = wrong.text().await?;
    assert!(
        body.contains(r#"aria-invalid="true""#) && body.contains("unknown, revoked or expired"),
        "{body}"
    );

    let ok = http
        .post(format!("{}/sign-in", env.base))
        .form(&[
            ("api_key", env.key().context("key")?),
            ("next", "//evil.example/"),
        ])
        .send()
        .await?;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/", "never to another host");
    let cookie = ok.headers()["set-cookie"].to_str()?.to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let session = cookie.split(';').next().context("cookie")?.to_owned();
    let collector = env.demo_collector(1, json!({})).await?;

    // A path that is not an id never reaches the API.
    for path in [
        "/collectors/x%3Flimit=1",
        "/jobs/..%2F..%2Fv1%2Fapi-keys",
        "/resources/nope",
    ] {
        let r = http
            .get(format!("{}{path}", env.base))
            .header("cookie", &session)
            .send()
            .await?;
        assert_eq!(r.status(), 404, "{path}");
    }

    // Without the token, or from another site, the form is refused and nothing is collected.
    let no_token = http
        .post(format!("{}/collectors/{collector}/collect", env.base))
        .header("cookie", &session)
        .form(&[("csrf", "x")])
        .send()
        .await?;
    assert_eq!(no_token.status(), 403);
    let page = http
        .get(format!("{}/collectors/{collector}", env.base))
        .header("cookie", &session)
        .send()
        .await?
        .text()
        .await?;
    let token = page
        .split(r#"name="csrf-token" content=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("the page's token")?
        .to_owned();
    let cross = http
        .post(format!("{}/collectors/{collector}/collect", env.base))
        .header("cookie", &session)
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", token.as_str())])
        .send()
        .await?;
    assert_eq!(cross.status(), 403);
    let jobs = env.get(&format!("/v1/collectors/{collector}/jobs")).await?;
    assert_eq!(jobs.body["items"], json!([]), "nothing was collected");

    // With it, the job is queued, and a revoked key ends the session.
    let done = http
        .post(format!("{}/collectors/{collector}/collect", env.base))
        .header("cookie", &session)
        .header("hx-request", "true")
        .form(&[("csrf", token.as_str())])
        .send()
        .await?;
    assert_eq!(done.status(), 200);
    assert!(done.text().await?.contains("QUEUED"));
    let member = env
        .create("/v1/api-keys", json!({"name": "browser", "role": "viewer"}))
        .await?;
    let viewer_cookie = http
        .post(format!("{}/sign-in", env.base))
        .form(&[("api_key", member["secret"].as_str().context("secret")?)])
        .send()
        .await?
        .headers()["set-cookie"]
        .to_str()?
        .split(';')
        .next()
        .context("cookie")?
        .to_owned();
    env.delete(&format!(
        "/v1/api-keys/{}",
        member["id"].as_str().context("id")?
    ))
    .await?;
    let after = http
        .get(format!("{}/collectors", env.base))
        .header("cookie", &viewer_cookie)
        .send()
        .await?;
    assert_eq!(after.status(), 401, "a revoked key's session is over");

    // Guessing keys at the sign-in form meets the API's limit on an address's failures.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = http
            .post(format!("{}/sign-in", env.base))
            .form(&[("api_key", format!("glk_{i:064x}"))])
            .send()
            .await?;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    Ok(())
}

/// A resource's metrics are drawn on its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resources_metrics_are_charted() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Standalone).await?;
    let inventory = env
        .demo_collector(
            1,
            json!({"resources": 2, "resource_types": ["compute.instance"]}),
        )
        .await?;
    assert_eq!(env.collect(&inventory).await?["status"], "SUCCESS");
    let metrics = env
        .create(
            "/v1/collectors",
            json!({"name": "metrics", "plugin_id": "demo-metrics",
                   "options": {"metrics": ["cpu.utilization"]}}),
        )
        .await?;
    let job = env
        .collect(metrics["id"].as_str().context("collector id")?)
        .await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let resources = env
        .get("/v1/resources?resource_type=compute.instance")
        .await?;
    let id = resources.body["items"][0]["id"]
        .as_str()
        .context("a resource")?;
    let browser = Browser::start(&env.base).await?;
    browser.sign_in(env.key().context("key")?).await?;
    browser.open(&format!("/resources/{id}")).await?;
    let caption = browser.text("figure.metric figcaption").await?;
    assert!(
        caption.starts_with("cpu.utilization (Percent), last: "),
        "{caption}"
    );
    browser.wait_for(".metric-chart canvas").await?;
    browser.screenshot("resource-metrics").await?;
    browser.close().await
}
