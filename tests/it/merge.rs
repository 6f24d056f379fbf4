//! Several collectors reporting the same resources: the lower priority number wins, field by
//! field; priority changes and deletions re-merge.

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::support::{Api, Mode, TestEnv};

/// A demo collector named `name` over the demo accounts that exist.
async fn demo(api: &Api, name: &str, priority: i64, options: Value) -> anyhow::Result<String> {
    let c = api
        .create(
            "/v1/collectors",
            json!({"name": name, "plugin_id": "demo", "priority": priority, "options": options}),
        )
        .await?;
    Ok(c["id"].as_str().context("id")?.to_owned())
}

/// `revision` of every resource, as counts by value.
async fn revisions(env: &TestEnv) -> anyhow::Result<Vec<(Value, i64)>> {
    let mut out: Vec<(Value, i64)> = Vec::new();
    for d in env
        .json_column("SELECT data FROM resources WHERE provider = 'demo'")
        .await?
    {
        let r = d["revision"].clone();
        match out.iter_mut().find(|(v, _)| *v == r) {
            Some((_, n)) => *n += 1,
            None => out.push((r, 1)),
        }
    }
    Ok(out)
}

async fn two_collectors_on_one_estate_show_the_lower_priority_number(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    // One account; the first collector creates 600 resources (more than a batch in tests).
    let first = env
        .demo_collector(
            1,
            json!({"resources": 600, "change_ratio": 1.0, "revision": 1}),
        )
        .await?;
    env.patch(&format!("/v1/collectors/{first}"), json!({"priority": 5}))
        .await?;
    let job = env.collect(&first).await?;
    assert_eq!(job["counts"]["created"], 600, "{job}");

    // The same estate (same keys) from a second collector of priority 10, revision 2.
    let second = demo(
        &env,
        "second",
        10,
        json!({"resources": 600, "change_ratio": 1.0, "revision": 2}),
    )
    .await?;
    let job = env.collect(&second).await?;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["counts"]["created"], 0, "{job}");
    assert_eq!(
        job["counts"]["unchanged"], 600,
        "the first collector wins: {job}"
    );
    assert_eq!(revisions(&env).await?, [(json!(1), 600)]);
    assert_eq!(env.scalar("SELECT count(*) FROM resources").await?, 600);
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_sources").await?,
        1200
    );

    // Collecting the winner again changes nothing; the loser again, nothing either.
    let job = env.collect(&first).await?;
    assert_eq!(job["counts"]["unchanged"], 600, "{job}");
    let job = env.collect(&second).await?;
    assert_eq!(job["counts"]["unchanged"], 600, "{job}");
    assert_eq!(revisions(&env).await?, [(json!(1), 600)]);

    // The loser now has the lower number: every resource shows its revision, with a change.
    let changes = env.scalar("SELECT count(*) FROM resource_changes").await?;
    env.patch(&format!("/v1/collectors/{second}"), json!({"priority": 1}))
        .await?;
    assert_eq!(revisions(&env).await?, [(json!(2), 600)]);
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_changes").await? - changes,
        600
    );
    let owners = env
        .scalar(&format!(
            "SELECT count(*) FROM resources WHERE collector_id = {}",
            env.uuid_sql(&second)?
        ))
        .await?;
    assert_eq!(owners, 600, "the winner owns the resources");

    // Deleting the winner leaves the other collector's report alone, back on the bulk path.
    let gone = env.delete(&format!("/v1/collectors/{second}")).await?;
    assert_eq!(gone.status, 204, "{}", gone.body);
    assert_eq!(revisions(&env).await?, [(json!(1), 600)]);
    assert_eq!(
        env.scalar("SELECT count(*) FROM resource_sources").await?,
        0
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM resources WHERE merged")
            .await?,
        0
    );
    let job = env.collect(&first).await?;
    assert_eq!(job["counts"]["unchanged"], 600, "{job}");
    Ok(())
}

async fn fields_merge_one_by_one_and_equal_priority_takes_the_newest(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    env.create(
        "/v1/plugins",
        json!({"id": "json-inventory", "version": "1.0.0", "command": crate::plugins::example()}),
    )
    .await?;
    let project = env.create("/v1/projects", json!({"name": "p"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "sa", "provider": "demo", "project_id": project["id"], "credentials": {}}),
    )
    .await?;
    let dir = std::env::temp_dir();
    let tag = rand::random::<u64>();
    let (path_x, path_y) = (
        dir.join(format!("gleaner-it-x-{tag}.json")),
        dir.join(format!("gleaner-it-y-{tag}.json")),
    );
    let _cleanup = (
        crate::plugins::RemoveOnDrop(path_x.clone()),
        crate::plugins::RemoveOnDrop(path_y.clone()),
    );
    std::fs::write(
        &path_x,
        json!([{"id": "a", "cpu": 2, "owner": "x"}, {"id": "b", "cpu": 1}]).to_string(),
    )?;
    std::fs::write(
        &path_y,
        json!([{"id": "a", "cpu": 4, "disk": 100}, {"id": "b", "cpu": 3}]).to_string(),
    )?;
    let collector = |name: &'static str, priority: i64, path: &std::path::Path| {
        let body = json!({"name": name, "plugin_id": "json-inventory", "priority": priority,
                          "options": {"path": path}});
        let env = &env;
        async move {
            let c = env.create("/v1/collectors", body).await?;
            anyhow::Ok(c["id"].as_str().context("id")?.to_owned())
        }
    };
    let x = collector("x", 1, &path_x).await?;
    let y = collector("y", 2, &path_y).await?;
    assert_eq!(env.collect(&x).await?["status"], "SUCCESS");
    assert_eq!(env.collect(&y).await?["status"], "SUCCESS");
    let a = resource(&env, "a").await?;
    assert_eq!(
        a["data"],
        json!({"id": "a", "cpu": 2, "owner": "x", "disk": 100}),
        "x wins cpu, y adds disk"
    );
    assert_eq!(a["collector_id"], json!(x));
    let history = env
        .get(&format!(
            "/v1/resources/{}/changes",
            a["id"].as_str().unwrap_or("")
        ))
        .await?;
    let last = history.body["items"]
        .as_array()
        .and_then(|i| i.last())
        .context("a change")?
        .clone();
    assert_eq!(last["kind"], "UPDATED");
    assert_eq!(last["diff"], json!({"disk": {"old": null, "new": 100}}));

    // Equal priorities: the newest report wins.
    env.patch(&format!("/v1/collectors/{y}"), json!({"priority": 1}))
        .await?;
    env.collect(&y).await?;
    assert_eq!(resource(&env, "a").await?["data"]["cpu"], 4);
    env.collect(&x).await?;
    assert_eq!(resource(&env, "a").await?["data"]["cpu"], 2);

    // A field the winner stops reporting shows the other collector's value.
    std::fs::write(
        &path_x,
        json!([{"id": "a", "cpu": 2}, {"id": "b", "cpu": 1}]).to_string(),
    )?;
    env.collect(&x).await?;
    let a = resource(&env, "a").await?;
    assert_eq!(a["data"], json!({"id": "a", "cpu": 2, "disk": 100}));

    // y stops reporting b: after 3 of y's successful runs its report is dropped, and b shows
    // x's alone; x stops too: after 3 of x's runs b is DELETED.
    std::fs::write(
        &path_y,
        json!([{"id": "a", "cpu": 4, "disk": 100}]).to_string(),
    )?;
    for _ in 0..3 {
        assert_eq!(env.collect(&y).await?["counts"]["deleted"], 0);
    }
    assert_eq!(resource(&env, "b").await?["state"], "ACTIVE");
    assert_eq!(resource(&env, "b").await?["data"]["cpu"], 1);
    std::fs::write(&path_x, json!([{"id": "a", "cpu": 2}]).to_string())?;
    let mut deleted = 0;
    for _ in 0..3 {
        deleted += env.collect(&x).await?["counts"]["deleted"]
            .as_i64()
            .unwrap_or(0);
    }
    assert_eq!(deleted, 1);
    assert_eq!(resource(&env, "b").await?["state"], "DELETED");
    assert_eq!(resource(&env, "a").await?["state"], "ACTIVE");
    Ok(())
}

async fn resource(api: &Api, key: &str) -> anyhow::Result<Value> {
    let page = api.get("/v1/resources?limit=100").await?;
    page.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|r| r["resource_key"] == key)
        .cloned()
        .with_context(|| format!("resource {key}"))
}

crate::in_both_modes!(
    two_collectors_on_one_estate_show_the_lower_priority_number,
    fields_merge_one_by_one_and_equal_priority_takes_the_newest,
);
