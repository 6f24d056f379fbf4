//! What a caller's options may make a worker reach: files inside the directories the operator
//! allows (GLEANER_FILES__ALLOW), endpoints the operator allows
//! (GLEANER_NETWORK__ALLOW_ENDPOINTS) or the provider's own. Everything else is refused with 400
//! naming the option, and starts no job.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::in_both_modes;
use crate::support::{Mode, Options, TestEnv, fields};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/focus/focus_sample_subset.csv"
);

/// The one directory these tests allow; each test works in a folder of its own inside it.
fn allowed_root() -> PathBuf {
    std::env::temp_dir().join("gleaner-it-access")
}

/// The one local endpoint these tests allow (nothing listens there).
const ALLOWED_ENDPOINT: &str = "http://127.0.0.1:9";

fn narrow(s: &mut gleaner_common::config::Settings) {
    s.files.allow = vec![allowed_root()];
    s.network.allow_endpoints = vec![ALLOWED_ENDPOINT.into()];
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a path in UTF-8")
}

/// POST /v1/collectors with `options`; the answer's status and the fields its errors name.
async fn create(env: &TestEnv, name: &str, options: Value) -> anyhow::Result<(StatusCode, Value)> {
    let a = env
        .post(
            "/v1/collectors",
            json!({"name": name, "plugin_id": "focus", "options": options}),
        )
        .await?;
    Ok((a.status, a.body))
}

async fn options_reaching_past_the_allowlists_get_400_and_start_no_job(
    mode: Mode,
) -> anyhow::Result<()> {
    let mut env = TestEnv::start_with(
        mode,
        Options {
            tune: narrow,
            ..Options::default()
        },
    )
    .await?;
    let dir = allowed_root().join(&env.name);
    let _clean = RemoveOnDrop(dir.clone());
    std::fs::create_dir_all(dir.join("export"))?;
    std::fs::copy(SAMPLE, dir.join("export/sample.csv"))?;
    let secret = std::env::temp_dir().join(format!("{}-secret.csv", env.name));
    let _secret = RemoveOnDrop(secret.clone());
    std::fs::write(&secret, "not for callers")?;
    std::os::unix::fs::symlink(&secret, dir.join("out.csv"))?;
    std::os::unix::fs::symlink("/etc", dir.join("etc"))?;
    let project = env.create("/v1/projects", json!({"name": "p"})).await?;
    env.create(
        "/v1/service-accounts",
        json!({"name": "focus", "provider": "focus", "project_id": project["id"], "credentials": {}}),
    )
    .await?;

    let outside = [
        path(&secret)?.to_owned(),
        "/etc/passwd".to_owned(),
        "/".to_owned(),
        format!("{}/../{}-secret.csv", path(&dir)?, env.name),
        format!("{}/../../../etc/passwd", path(&dir)?),
        format!("{}/./../{}-secret.csv", path(&dir)?, env.name),
        path(&dir.join("out.csv"))?.to_owned(),
        path(&dir.join("etc/passwd"))?.to_owned(),
        "etc/passwd".to_owned(),
    ];
    let mut details = Vec::new();
    for (n, p) in outside.iter().enumerate() {
        let (status, body) = create(&env, &format!("c{n}"), json!({"path": p})).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{p}: {body}");
        assert_eq!(fields(&body), ["options.path"], "{p}: {body}");
        details.push(body["errors"][0]["detail"].clone());
    }
    // A missing file outside is refused in the same words as an existing one.
    for p in [
        "/etc/no-such-file".to_owned(),
        path(&dir.join("etc/no-such-file"))?.to_owned(),
    ] {
        let (_, missing) = create(&env, "m", json!({"path": p})).await?;
        assert_eq!(missing["errors"][0]["detail"], details[1], "{p}: {missing}");
    }
    // The bucket's name and region are written into the URL called: nothing that moves its
    // host gets through.
    for (field, options) in [
        (
            "options.region",
            json!({"bucket": "exports", "region": "x@10.0.0.7:8443/"}),
        ),
        ("options.bucket", json!({"bucket": "v1/secrets"})),
    ] {
        let (status, body) = create(&env, "r", options).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(fields(&body), [field], "{body}");
    }
    for url in [
        "http://127.0.0.1:5432",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://s3.amazonaws.com@169.254.169.254/",
        "https://127.0.0.1:9",
        "file:///etc/passwd",
    ] {
        let (status, body) = create(
            &env,
            "e",
            json!({"bucket": "bucket-b", "endpoint_url": url}),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(fields(&body), ["options.endpoint_url"], "{url}: {body}");
    }
    let listed = env.get("/v1/collectors").await?;
    assert_eq!(listed.body["items"], json!([]), "nothing was created");

    // Inside the allowlists: accepted, and a link in an allowed folder that leads out fails the
    // import before any file is read.
    let (status, ok) = create(&env, "inside", json!({"path": path(&dir.join("export"))?})).await?;
    assert_eq!(status, StatusCode::CREATED, "{ok}");
    let inside = ok["id"].as_str().context("id")?.to_owned();
    let (status, body) = create(
        &env,
        "endpoint",
        json!({"bucket": "bucket-b", "endpoint_url": ALLOWED_ENDPOINT}),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = create(
        &env,
        "aws",
        json!({"bucket": "bucket-b", "endpoint_url": "https://s3.eu-west-1.amazonaws.com"}),
    )
    .await?;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the provider's endpoints need no allowlist: {body}"
    );
    let patched = env
        .patch(
            &format!("/v1/collectors/{inside}"),
            json!({"options": {"path": "/etc/passwd"}}),
        )
        .await?;
    assert_eq!(
        patched.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        patched.body
    );
    assert_eq!(fields(&patched.body), ["options.path"]);

    std::os::unix::fs::symlink(&secret, dir.join("export/zz.csv"))?;
    let window = json!({"start_month": "2024-09", "end_month": "2024-09"});
    let a = env
        .post(&format!("/v1/collectors/{inside}/collect"), window.clone())
        .await?;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let job = env
        .wait_job(a.body["job_id"].as_str().context("job")?)
        .await?;
    assert_eq!(job["status"], "FAILURE", "{job}");
    let tasks = env
        .get(&format!(
            "/v1/jobs/{}/tasks",
            job["id"].as_str().unwrap_or_default()
        ))
        .await?;
    let error = tasks.body["items"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("leads outside"), "{error}");
    assert!(!error.contains("not for callers"), "{error}");
    let costs = env
        .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01")
        .await?;
    assert_eq!(
        costs.body["items"],
        json!([]),
        "nothing was imported: {:?}",
        costs.body
    );
    std::fs::remove_file(dir.join("export/zz.csv"))?;

    // The operator closes the disk: the collector's options are refused at verification and
    // collection, and no job starts.
    let jobs_before = env.get("/v1/jobs").await?.body["items"]
        .as_array()
        .map_or(0, Vec::len);
    env.restart(|s| s.files.allow.clear()).await?;
    let verify = env
        .post(&format!("/v1/collectors/{inside}/verify"), json!({}))
        .await?;
    assert_eq!(verify.status, StatusCode::BAD_REQUEST, "{:?}", verify.body);
    assert_eq!(fields(&verify.body), ["options.path"]);
    let collect = env
        .post(&format!("/v1/collectors/{inside}/collect"), window)
        .await?;
    assert_eq!(
        collect.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        collect.body
    );
    assert_eq!(fields(&collect.body), ["options.path"]);
    let detail = collect.body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("GLEANER_FILES__ALLOW"), "{detail}");
    let jobs_after = env.get("/v1/jobs").await?.body["items"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        jobs_after, jobs_before,
        "a refused collection starts no job"
    );
    Ok(())
}

in_both_modes!(options_reaching_past_the_allowlists_get_400_and_start_no_job);
