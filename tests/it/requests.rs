//! Requests to collect through RabbitMQ (`<prefix>.requests`, routing key `collect`), and the
//! HTTP `collect`'s `Idempotency-Key`, which gives requests their "same id, same job".

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use gleaner_common::broker::{COLLECT_REQUEST, Names};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Mode, Options, TestEnv, dead_letters, dead_letters_with_headers, fields};

/// How long a reply may take: a request is a few queries, but 1,000 at once share one key's
/// rate (100 a second by default).
const REPLY_WITHIN: Duration = Duration::from_secs(60);

/// A reply to a request: its `status` header, correlation id and JSON body.
#[derive(Debug)]
struct Reply {
    status: i64,
    correlation_id: String,
    content_type: String,
    body: Value,
}

/// An integration: publishes requests and reads its replies from a queue of its own.
struct Requester {
    _conn: Connection,
    ch: Channel,
    exchange: String,
    reply_to: String,
    replies: Consumer,
}

impl Requester {
    async fn open(env: &TestEnv) -> anyhow::Result<Self> {
        let conn =
            gleaner_common::broker::connect(&env.settings.amqp_url, "test-requester").await?;
        let ch = conn.create_channel().await?;
        // A server-named, exclusive queue: gone with the connection.
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let reply_to = q.name().to_string();
        let replies = ch
            .basic_consume(
                reply_to.clone().into(),
                "replies".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let exchange = Names::new(env.settings.amqp.prefix.clone()).requests_exchange();
        Ok(Self {
            _conn: conn,
            ch,
            exchange,
            reply_to,
            replies,
        })
    }

    /// Publishes `body` (raw bytes) with `key` in `authorization` and `correlation` as its
    /// correlation id, and waits for the broker's confirm.
    async fn send(&self, body: &[u8], key: Option<&str>, correlation: &str) -> anyhow::Result<()> {
        self.send_to(body, key, Some(correlation), &self.reply_to)
            .await
    }

    /// [`Self::send`] with the reply going to `reply_to`, and no correlation id if `None`.
    async fn send_to(
        &self,
        body: &[u8],
        key: Option<&str>,
        correlation: Option<&str>,
        reply_to: &str,
    ) -> anyhow::Result<()> {
        let mut headers = FieldTable::default();
        if let Some(k) = key {
            headers.insert(
                "authorization".into(),
                AMQPValue::LongString(format!("Bearer {k}").into()),
            );
        }
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(reply_to.into())
            .with_headers(headers);
        if let Some(c) = correlation {
            props = props.with_correlation_id(c.into());
        }
        self.ch
            .basic_publish(
                self.exchange.clone().into(),
                COLLECT_REQUEST.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        Ok(())
    }

    async fn send_json(
        &self,
        body: &Value,
        key: Option<&str>,
        correlation: &str,
    ) -> anyhow::Result<()> {
        self.send(body.to_string().as_bytes(), key, correlation)
            .await
    }

    async fn next_reply(&mut self) -> anyhow::Result<Reply> {
        let d = tokio::time::timeout(REPLY_WITHIN, self.replies.next())
            .await
            .context("no reply in time")?
            .context("the reply queue closed")??;
        let status = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("status").cloned())
        {
            Some(AMQPValue::LongInt(n)) => i64::from(n),
            Some(AMQPValue::LongLongInt(n)) => n,
            other => bail!("a reply without its status header: {other:?}"),
        };
        Ok(Reply {
            status,
            correlation_id: d
                .properties
                .correlation_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            content_type: d
                .properties
                .content_type()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            body: serde_json::from_slice(&d.data).context("a JSON reply")?,
        })
    }
}

/// A second demo collector, over the accounts `demo_collector` made.
async fn another_collector(env: &TestEnv, name: &str) -> anyhow::Result<String> {
    let c = env
        .api
        .create(
            "/v1/collectors",
            json!({"name": name, "plugin_id": "demo", "options": {"resources": 5}}),
        )
        .await?;
    Ok(c["id"].as_str().context("collector id")?.to_owned())
}

async fn collector_name(env: &TestEnv, id: &str) -> anyhow::Result<String> {
    let c = env.api.get(&format!("/v1/collectors/{id}")).await?;
    Ok(c.body["name"].as_str().context("name")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_its_job_and_the_same_request_id_the_same_job() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let collector = env.demo_collector(1, json!({"resources": 20})).await?;
    let name = collector_name(&env, &collector).await?;
    let key = env.api.key().context("key")?.to_owned();
    let mut integration = Requester::open(&env).await?;

    integration
        .send_json(
            &json!({"request_id": "nightly-1", "collector_name": name}),
            Some(&key),
            "corr-1",
        )
        .await?;
    let first = integration.next_reply().await?;
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(first.correlation_id, "corr-1");
    assert_eq!(first.content_type, "application/json");
    assert_eq!(first.body["request_id"], "nightly-1");
    assert_eq!(first.body["replayed"], false);
    let job = first.body["job_id"].as_str().context("job_id")?.to_owned();
    let done = env.wait_job(&job).await?;
    assert_eq!(done["status"], "SUCCESS", "{done}");

    // The same request id again, this time naming the collector by id: the same job, ended.
    integration
        .send_json(
            &json!({"request_id": "nightly-1", "collector_id": collector}),
            Some(&key),
            "corr-2",
        )
        .await?;
    let again = integration.next_reply().await?;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.correlation_id, "corr-2");
    assert_eq!(again.body["job_id"], job.as_str());
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["status"], "SUCCESS");
    let jobs = env
        .api
        .get(&format!("/v1/collectors/{collector}/jobs"))
        .await?;
    assert_eq!(
        jobs.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        jobs.body
    );

    // A request is audited like the HTTP call it becomes.
    let audit = env.api.get("/v1/audit").await?;
    assert!(
        audit.body["items"]
            .as_array()
            .context("audit items")?
            .iter()
            .any(|e| e["route"] == "/v1/collectors/{id}/collect" && e["status"] == 202),
        "{}",
        audit.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_can_never_succeed_is_dead_lettered_with_its_reason_and_answered()
-> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let collector = env.demo_collector(1, json!({"resources": 5})).await?;
    let name = collector_name(&env, &collector).await?;
    let key = env.api.key().context("key")?.to_owned();
    let viewer = env
        .api
        .create(
            "/v1/api-keys",
            json!({"name": "dashboards", "role": "viewer"}),
        )
        .await?;
    let viewer = viewer["secret"].as_str().context("secret")?.to_owned();
    let disabled = another_collector(&env, "switched-off").await?;
    env.api
        .post(&format!("/v1/collectors/{disabled}/disable"), json!(null))
        .await?;
    let mut integration = Requester::open(&env).await?;

    let bad: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "malformed",
            b"{\"request_id\": \"m-1\", \"collector_name\": ".to_vec(),
            Some(&key),
        ),
        (
            "unknown-field",
            json!({"request_id": "u-1", "collector": name})
                .to_string()
                .into_bytes(),
            Some(&key),
        ),
        (
            "bad-key",
            json!({"request_id": "k-1", "collector_name": name})
                .to_string()
                .into_bytes(),
            Some("gk_not_a_key"),
        ),
        (
            "no-key",
            json!({"request_id": "k-2", "collector_name": name})
                .to_string()
                .into_bytes(),
            None,
        ),
        (
            "viewer",
            json!({"request_id": "v-1", "collector_id": collector})
                .to_string()
                .into_bytes(),
            Some(&viewer),
        ),
        (
            "unknown-collector",
            json!({"request_id": "n-1", "collector_name": "no-such-collector"})
                .to_string()
                .into_bytes(),
            Some(&key),
        ),
        (
            "disabled",
            json!({"request_id": "d-1", "collector_id": disabled})
                .to_string()
                .into_bytes(),
            Some(&key),
        ),
    ];
    for (correlation, body, k) in &bad {
        integration.send(body, *k, correlation).await?;
    }
    // A request id too long for a correlation id, and none given: refused, answered without
    // one (the id is not echoed).
    let long = json!({"request_id": "x".repeat(300), "collector_name": name}).to_string();
    integration
        .send_to(long.as_bytes(), Some(&key), None, &integration.reply_to)
        .await?;
    // A reply aimed at one of Gleaner's own queues: refused, and nothing is published there.
    let names = Names::new(env.settings.amqp.prefix.clone());
    let hijack = json!({"request_id": "h-1", "collector_name": name}).to_string();
    integration
        .send_to(
            hijack.as_bytes(),
            Some(&key),
            Some("hijack"),
            &names.queue(gleaner_common::model::JobKind::Inventory),
        )
        .await?;
    let mut replies = HashMap::new();
    for _ in 0..=bad.len() {
        let r = integration.next_reply().await?;
        replies.insert(r.correlation_id.clone(), r);
    }
    let unnamed = replies
        .get("")
        .context("the reply without a correlation id")?;
    assert_eq!(unnamed.status, 400, "{unnamed:?}");
    assert_eq!(unnamed.body["request_id"], Value::Null);
    assert!(!replies.contains_key("hijack"), "{replies:?}");
    let expect = [
        ("malformed", 400, "/problems/malformed-body"),
        ("unknown-field", 400, "/problems/malformed-body"),
        ("bad-key", 401, "/problems/unauthorized"),
        ("no-key", 401, "/problems/unauthorized"),
        ("viewer", 403, "/problems/forbidden"),
        ("unknown-collector", 404, "/problems/not-found"),
        ("disabled", 409, "/problems/conflict"),
    ];
    for (correlation, status, kind) in expect {
        let r = replies
            .get(correlation)
            .with_context(|| format!("a reply to {correlation}"))?;
        assert_eq!(r.status, status, "{correlation}: {r:?}");
        assert_eq!(r.content_type, "application/problem+json", "{correlation}");
        assert_eq!(r.body["type"], kind, "{correlation}: {r:?}");
        assert_eq!(r.body["status"], status, "{correlation}: {r:?}");
    }
    // The request id is echoed when the message had one.
    assert_eq!(replies["unknown-collector"].body["request_id"], "n-1");
    assert_eq!(replies["malformed"].body["request_id"], Value::Null);

    // Each is in the dead-letter queue, its reason saying why, and no key with it.
    let (_conn, ch) = crate::support::channel(&env).await?;
    let dead = dead_letters_with_headers(&env, &ch).await?;
    assert_eq!(dead.len(), bad.len() + 2, "{dead:?}");
    for (_, _, headers) in &dead {
        assert!(
            !headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case("authorization")),
            "a key in a dead letter: {headers:?}"
        );
    }
    assert!(
        dead.iter()
            .any(|(reason, body, _)| reason.starts_with("400 Invalid input")
                && reason.contains("replies do not go to")
                && body.contains("h-1")),
        "{dead:?}"
    );
    let dead: Vec<(String, String)> = dead.into_iter().map(|(r, b, _)| (r, b)).collect();
    for (reason_part, body_part) in [
        ("400 Malformed request body", "m-1"),
        ("401 Unauthorized", "k-1"),
        ("401 Unauthorized", "k-2"),
        ("403 Forbidden", "v-1"),
        (
            "404 Not found: no collector is named 'no-such-collector'",
            "n-1",
        ),
        ("409 Conflicts with the current state", "d-1"),
    ] {
        assert!(
            dead.iter()
                .any(|(reason, body)| reason.starts_with(reason_part) && body.contains(body_part)),
            "{reason_part} for {body_part}: {dead:?}"
        );
    }
    // None of them made a job.
    assert_eq!(env.scalar("SELECT COUNT(*) FROM jobs").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_published_at_once_all_get_their_replies() -> anyhow::Result<()> {
    // No worker: the jobs stay queued, and the test measures the intake alone.
    let env = TestEnv::start_with(
        Mode::Distributed,
        Options {
            workers: 0,
            ..Options::default()
        },
    )
    .await?;
    let collector = env.demo_collector(1, json!({"resources": 1})).await?;
    let name = collector_name(&env, &collector).await?;
    let key = env.api.key().context("key")?.to_owned();
    let mut integration = Requester::open(&env).await?;
    const N: usize = 1_000;
    for i in 0..N {
        // Half by name, half by id; every tenth request is sent twice.
        let body = if i % 2 == 0 {
            json!({"request_id": format!("bulk-{i}"), "collector_name": name})
        } else {
            json!({"request_id": format!("bulk-{i}"), "collector_id": collector})
        };
        integration
            .send_json(&body, Some(&key), &format!("c-{i}"))
            .await?;
        if i % 10 == 0 {
            integration
                .send_json(&body, Some(&key), &format!("dup-{i}"))
                .await?;
        }
    }
    let expected = N + N / 10;
    let mut jobs_of: HashMap<String, String> = HashMap::new();
    for _ in 0..expected {
        let r = integration.next_reply().await?;
        assert_eq!(r.status, 202, "{r:?}");
        let request = r.body["request_id"]
            .as_str()
            .context("request_id")?
            .to_owned();
        let job = r.body["job_id"].as_str().context("job_id")?.to_owned();
        if let Some(before) = jobs_of.insert(request.clone(), job.clone()) {
            assert_eq!(before, job, "request {request} got two jobs");
        }
    }
    assert_eq!(jobs_of.len(), N);
    let distinct: HashSet<&String> = jobs_of.values().collect();
    assert_eq!(distinct.len(), N, "one job per request id");
    assert_eq!(
        env.scalar("SELECT COUNT(*) FROM jobs").await?,
        i64::try_from(N)?
    );
    let (_conn, ch) = crate::support::channel(&env).await?;
    assert!(dead_letters(&env, &ch).await?.is_empty());
    Ok(())
}

/// Runs the example client of docs/integrations.md: its exit code and stdout.
fn example_client(env: &TestEnv, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/integrations/collect.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .args([
            "--amqp-url",
            &env.settings.amqp_url,
            "--prefix",
            &env.settings.amqp.prefix,
        ])
        .env("GLEANER_API_KEY", env.api.key().context("key")?)
        .output()
        .context("running python3 (scripts/test.sh installs pika)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "pika is missing: {stderr}"
    );
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_python_client_asks_for_a_collection() -> anyhow::Result<()> {
    let env = TestEnv::start(Mode::Distributed).await?;
    let collector = env.demo_collector(1, json!({"resources": 10})).await?;
    let name = collector_name(&env, &collector).await?;
    let (code, out) = example_client(&env, &[&name, "--request-id", "py-1"])?;
    assert_eq!(code, 0, "{out}");
    let reply: Value = serde_json::from_str(out.trim()).context("a JSON line")?;
    let job = reply["job_id"].as_str().context("job_id")?.to_owned();
    assert_eq!(env.wait_job(&job).await?["status"], "SUCCESS");
    // The same request id by collector id: the same job.
    let (code, out) = example_client(&env, &[&collector, "--by-id", "--request-id", "py-1"])?;
    assert_eq!(code, 0, "{out}");
    let again: Value = serde_json::from_str(out.trim())?;
    assert_eq!(again["job_id"], job.as_str());
    assert_eq!(again["replayed"], true);
    // Refused: the problem printed, exit 1.
    let (code, out) = example_client(&env, &["no-such-collector", "--request-id", "py-2"])?;
    assert_eq!(code, 1, "{out}");
    let problem: Value = serde_json::from_str(out.trim())?;
    assert_eq!(problem["status"], 404, "{problem}");
    assert_eq!(problem["request_id"], "py-2");
    Ok(())
}

/// `POST /v1/collectors/{id}/collect` with `Idempotency-Key`.
async fn the_idempotency_key_makes_a_collect_one_job(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 10})).await?;
    let other = another_collector(&env, "other").await?;
    let path = format!("/v1/collectors/{collector}/collect");

    let first = env
        .api
        .post_with(&path, json!(null), &[("Idempotency-Key", "deploy-42")])
        .await?;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let job = first.body["job_id"].as_str().context("job_id")?.to_owned();
    env.wait_job(&job).await?;

    let again = env
        .api
        .post_with(&path, json!(null), &[("Idempotency-Key", "deploy-42")])
        .await?;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["job_id"], job.as_str());
    assert_eq!(again.body["status"], "SUCCESS");
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );

    // The key on another collector is refused, not answered with this job.
    let reused = env
        .api
        .post_with(
            &format!("/v1/collectors/{other}/collect"),
            json!(null),
            &[("Idempotency-Key", "deploy-42")],
        )
        .await?;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.body
    );
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");

    for bad in ["", "has space", &"x".repeat(256)] {
        let a = env
            .api
            .post_with(&path, json!(null), &[("Idempotency-Key", bad)])
            .await?;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", a.body);
        assert_eq!(fields(&a.body), ["Idempotency-Key"], "{bad:?}");
    }

    // The same key sent by many clients at once: one job among them.
    let sends = (0..8).map(|_| {
        env.api
            .post_with(&path, json!(null), &[("Idempotency-Key", "race")])
    });
    let answers = futures::future::join_all(sends).await;
    let mut ids = HashSet::new();
    for a in answers {
        let a = a?;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        ids.insert(a.body["job_id"].as_str().context("job_id")?.to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    // Without a key, each collect is a job of its own.
    let plain = env.start_collect(&collector).await?;
    assert!(!ids.contains(&plain) && plain != job);
    let jobs = env
        .scalar(&format!(
            "SELECT COUNT(*) FROM jobs WHERE collector_id = {}",
            env.uuid_sql(&collector)?
        ))
        .await?;
    assert_eq!(jobs, 3);
    Ok(())
}

/// Makes every idempotency key two days old, past the default day of retention.
async fn age_keys(env: &TestEnv) -> anyhow::Result<()> {
    use gleaner_common::entity::idempotency_key::{Column, Entity};
    use sea_orm::EntityTrait as _;
    use sea_orm::sea_query::Expr;
    let past = (chrono::Utc::now() - chrono::Duration::days(2)).fixed_offset();
    Entity::update_many()
        .col_expr(Column::CreatedAt, Expr::value(past))
        .exec(&env.db)
        .await?;
    Ok(())
}

/// Keys past their retention name new requests, and the scheduler's leader deletes them.
async fn an_idempotency_key_expires_after_its_retention(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 1})).await?;
    let path = format!("/v1/collectors/{collector}/collect");
    let first = env
        .api
        .post_with(&path, json!(null), &[("Idempotency-Key", "old")])
        .await?;
    let job = first.body["job_id"].as_str().context("job_id")?.to_owned();
    env.wait_job(&job).await?;
    age_keys(&env).await?;
    let again = env
        .api
        .post_with(&path, json!(null), &[("Idempotency-Key", "old")])
        .await?;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_ne!(
        again.body["job_id"],
        job.as_str(),
        "an expired key names a new request"
    );
    assert!(again.headers.get("idempotent-replayed").is_none());

    let scheduler = gleaner::app::scheduler(&env.settings, env.db.clone());
    age_keys(&env).await?;
    let pruned = scheduler.prune_idempotency_keys(chrono::Utc::now()).await?;
    assert_eq!(pruned, 1);
    assert_eq!(
        env.scalar("SELECT COUNT(*) FROM idempotency_keys").await?,
        0
    );
    Ok(())
}

crate::in_both_modes!(
    the_idempotency_key_makes_a_collect_one_job,
    an_idempotency_key_expires_after_its_retention,
);
