//! Schedules through the API, and the scheduler on a simulated clock: fires at the right
//! instants (at hours of the day, or every N minutes), exactly once, SKIPPED on overlap, caught
//! up or MISSED after downtime.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Timelike as _, Utc};
use gleaner_scheduler::Scheduler;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::support::{Mode, TestEnv};

fn scheduler(env: &TestEnv) -> Scheduler {
    gleaner::app::scheduler(&env.settings, env.db.clone())
}

fn instant(v: &Value) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(v.as_str().context("an instant")?)?.with_timezone(&Utc))
}

/// The schedule's fires, oldest first, as (fire time, outcome, job id, reason).
async fn fires(
    env: &TestEnv,
    schedule: &str,
) -> anyhow::Result<Vec<(DateTime<Utc>, String, Value, Value)>> {
    let a = env
        .get(&format!("/v1/schedules/{schedule}/fires?limit=1000"))
        .await?;
    anyhow::ensure!(a.status == StatusCode::OK, "{}", a.body);
    let mut out = Vec::new();
    for f in a.body["items"].as_array().context("items")? {
        out.push((
            instant(&f["fire_time"])?,
            f["outcome"].as_str().unwrap_or_default().to_owned(),
            f["job_id"].clone(),
            f["reason"].clone(),
        ));
    }
    out.reverse();
    Ok(out)
}

/// How long a test waits for the scheduler or a worker to act.
const WAIT: Duration = Duration::from_secs(15);

/// Polls `probe` every 50 ms until it breaks with a value; after `within`, fails naming `what`
/// it waited for and the state the probe last observed.
async fn eventually<T, S: std::fmt::Debug, F>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> F,
) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<ControlFlow<T, S>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await? {
            ControlFlow::Break(done) => return Ok(done),
            ControlFlow::Continue(state) => anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; last observed: {state:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn schedule(env: &TestEnv, collector: &str, body: Value) -> anyhow::Result<Value> {
    env.create(&format!("/v1/collectors/{collector}/schedules"), body)
        .await
}

async fn the_schedule_api_checks_its_input_and_shows_the_next_fires(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let path = format!("/v1/collectors/{collector}/schedules");
    let bad = env
        .post(
            &path,
            json!({"name": "x", "timezone": "Mars/Olympus", "hours": []}),
        )
        .await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let fields = crate::support::strs(&bad.body["errors"], "field");
    assert_eq!(fields, ["timezone", "hours"]);
    let bad = env
        .post(
            &path,
            json!({"name": "x", "timezone": "UTC", "hours": [24]}),
        )
        .await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["errors"][0]["field"], "hours");

    let s = schedule(
        &env,
        &collector,
        json!({"name": "seoul", "timezone": "Asia/Seoul", "hours": [18, 0, 6, 12]}),
    )
    .await?;
    assert_eq!(s["hours"], json!([0, 6, 12, 18]));
    assert_eq!(s.get("every_minutes"), Some(&Value::Null), "{s}");
    assert_eq!(s["state"], "ENABLED");
    let next: Vec<DateTime<Utc>> = s["next_fires"]
        .as_array()
        .context("next_fires")?
        .iter()
        .map(instant)
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(next.len(), 5);
    let now = Utc::now();
    assert!(next[0] > now && next[0] - now <= chrono::Duration::hours(6));
    for w in next.windows(2) {
        assert_eq!(w[1] - w[0], chrono::Duration::hours(6));
    }
    // Seoul is UTC+9 without DST: 0, 6, 12, 18 there are 15, 21, 3, 9 UTC.
    for t in &next {
        assert!([3, 9, 15, 21].contains(&t.format("%H").to_string().parse::<u32>()?));
        assert_eq!(t.format("%M:%S").to_string(), "00:00");
    }
    // The collector list shows when its schedules collect next.
    let c = env.get(&format!("/v1/collectors/{collector}")).await?;
    assert_eq!(instant(&c.body["next_scheduled_at"])?, next[0]);
    assert_eq!(c.body["links"]["schedules"], json!(path));
    let history = env
        .get(c.body["links"]["jobs"].as_str().context("jobs link")?)
        .await?;
    assert_eq!(history.status, StatusCode::OK);
    let listed = env.get("/v1/collectors").await?;
    assert_eq!(
        instant(&listed.body["items"][0]["next_scheduled_at"])?,
        next[0]
    );
    let dup = env
        .post(
            &path,
            json!({"name": "seoul", "timezone": "UTC", "hours": [1]}),
        )
        .await?;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.body["errors"][0]["field"], "name");

    let id = s["id"].as_str().context("id")?;
    let paused = env
        .patch(&format!("/v1/schedules/{id}"), json!({"state": "PAUSED"}))
        .await?;
    assert_eq!(paused.body["next_fires"], json!([]));
    let c = env.get(&format!("/v1/collectors/{collector}")).await?;
    assert_eq!(
        c.body["next_scheduled_at"],
        Value::Null,
        "paused: nothing scheduled"
    );
    let moved = env
        .patch(
            &format!("/v1/schedules/{id}"),
            json!({"state": "ENABLED", "timezone": "UTC", "hours": [7]}),
        )
        .await?;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    assert_eq!(
        instant(&moved.body["next_fires"][0])?
            .format("%H:%M")
            .to_string(),
        "07:00"
    );
    let list = env.get(&path).await?;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));

    // Deleting the collector deletes its schedules.
    let gone = env.delete(&format!("/v1/collectors/{collector}")).await?;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    let after = env.get(&format!("/v1/schedules/{id}")).await?;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    assert_eq!(env.scalar("SELECT count(*) FROM schedules").await?, 0);
    Ok(())
}

async fn a_seoul_schedule_fires_at_its_instants_for_three_days(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let s = schedule(
        &env,
        &collector,
        json!({"name": "seoul", "timezone": "Asia/Seoul", "hours": [0, 6, 12, 18]}),
    )
    .await?;
    let id = s["id"].as_str().context("id")?.to_owned();
    let mut expected = vec![instant(&s["next_fires"][0])?];
    let sched = scheduler(&env);
    // Twelve fires; the clock visits each fire time, and the half-way points between them.
    for _ in 0..12 {
        let fire = *expected.last().context("fire")?;
        let before = sched.tick(fire - chrono::Duration::minutes(1)).await?;
        assert_eq!(before.queued, 0, "nothing is due a minute early");
        let at = sched.tick(fire).await?;
        assert_eq!(at.queued, 1, "one job at {fire}");
        let again = sched.tick(fire + chrono::Duration::seconds(30)).await?;
        assert_eq!(again.queued, 0, "a fire queues once");
        let (_, outcome, job, _) = fires(&env, &id).await?.last().cloned().context("fire")?;
        assert_eq!(outcome, "QUEUED");
        let job = env.wait_job(job.as_str().context("job id")?).await?;
        assert_eq!(job["status"], "SUCCESS", "{job}");
        assert_eq!(job["trigger"], "schedule", "{job}");
        assert_eq!(job["schedule_id"], json!(id));
        assert_eq!(instant(&job["fire_time"])?, fire);
        let next = fire + chrono::Duration::hours(6);
        expected.push(next);
    }
    expected.pop();
    let got: Vec<DateTime<Utc>> = fires(&env, &id).await?.into_iter().map(|f| f.0).collect();
    assert_eq!(got, expected);
    for t in &got {
        assert!([3, 9, 15, 21].contains(&t.format("%H").to_string().parse::<u32>()?));
    }
    Ok(())
}

async fn overlap_is_skipped_and_downtime_is_caught_up_or_missed(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let s = schedule(
        &env,
        &collector,
        json!({"name": "daily", "timezone": "America/New_York", "hours": [9]}),
    )
    .await?;
    let id = s["id"].as_str().context("id")?.to_owned();
    let day = |n: usize| instant(&s["next_fires"][n]);
    let sched = scheduler(&env);

    // Overlap: a job of the collector is still running when the fire comes (a long collection,
    // written as a row so that it runs exactly as long as the test needs).
    let running = uuid::Uuid::now_v7().to_string();
    env.db
        .execute_unprepared(&format!(
            "INSERT INTO jobs (id, domain_id, kind, collector_id, plugin_id, plugin_version,
                 options, trigger, status)
             VALUES ({}, {}, 'inventory', {}, 'demo', '1.0.0', '{{}}', 'manual', 'IN_PROGRESS')",
            env.uuid_sql(&running)?,
            env.uuid_sql(&gleaner_common::id::DomainId::DEFAULT.to_string())?,
            env.uuid_sql(&collector)?,
        ))
        .await?;
    let fired = sched.tick(day(0)?).await?;
    assert_eq!((fired.queued, fired.skipped), (0, 1), "{fired:?}");
    let last = fires(&env, &id).await?.last().cloned().context("fire")?;
    assert_eq!((last.0, last.1.as_str()), (day(0)?, "SKIPPED"));
    assert_eq!(
        last.3.as_str(),
        Some(format!("the collector's previous job {running} was still running").as_str())
    );
    env.db
        .execute_unprepared(&format!(
            "UPDATE jobs SET status = 'SUCCESS' WHERE id = {}",
            env.uuid_sql(&running)?
        ))
        .await?;

    // Down for 30 minutes after the next fire: caught up, once.
    let fired = sched.tick(day(1)? + chrono::Duration::minutes(30)).await?;
    assert_eq!((fired.queued, fired.missed), (1, 0), "{fired:?}");
    let last = fires(&env, &id).await?.last().cloned().context("fire")?;
    assert_eq!((last.0, last.1.as_str()), (day(1)?, "QUEUED"));
    env.wait_job(last.2.as_str().context("job")?).await?;

    // Down for 3 hours after the one after: MISSED, with the reason, and no job.
    let jobs_before = env.scalar("SELECT count(*) FROM jobs").await?;
    let fired = sched.tick(day(2)? + chrono::Duration::hours(3)).await?;
    assert_eq!((fired.queued, fired.missed), (0, 1), "{fired:?}");
    let last = fires(&env, &id).await?.last().cloned().context("fire")?;
    assert_eq!((last.0, last.1.as_str()), (day(2)?, "MISSED"));
    assert!(
        last.3
            .as_str()
            .is_some_and(|r| r.contains("catch-up window"))
    );
    assert_eq!(env.scalar("SELECT count(*) FROM jobs").await?, jobs_before);

    // A disabled collector's fire is neither run nor recorded; nor a paused schedule's.
    env.post(&format!("/v1/collectors/{collector}/disable"), json!(null))
        .await?;
    let fired = sched.tick(day(3)?).await?;
    assert_eq!(fired.queued + fired.skipped + fired.missed, 0);
    env.post(&format!("/v1/collectors/{collector}/enable"), json!(null))
        .await?;
    env.patch(&format!("/v1/schedules/{id}"), json!({"state": "PAUSED"}))
        .await?;
    let fired = sched.tick(day(4)?).await?;
    assert_eq!(fired.schedules, 0);
    assert_eq!(fires(&env, &id).await?.len(), 3);
    Ok(())
}

/// Two schedulers passing at the same instants (two replicas in a split second, or a leader
/// replaced mid-pass) record each fire once and queue one job per fire.
async fn two_schedulers_fire_each_instant_once(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let mut ids = Vec::new();
    let mut now = Utc::now();
    // 24 schedules due at the same instant: the next full hour.
    for n in 0..24 {
        let s = schedule(
            &env,
            &collector,
            json!({"name": format!("s{n}"), "timezone": "UTC",
                   "hours": [(Utc::now() + chrono::Duration::hours(1)).format("%H").to_string().parse::<u8>()?]}),
        )
        .await?;
        now = instant(&s["next_fires"][0])?;
        ids.push(s["id"].as_str().context("id")?.to_owned());
    }
    let (a, b) = (scheduler(&env), scheduler(&env));
    let (ra, rb) = tokio::join!(a.tick(now), b.tick(now));
    let (ra, rb) = (ra?, rb?);
    assert_eq!(
        ra.queued + ra.skipped + rb.queued + rb.skipped,
        24,
        "{ra:?} {rb:?}"
    );
    let mut recorded = 0;
    for id in &ids {
        recorded += fires(&env, id).await?.len();
    }
    assert_eq!(recorded, 24);
    let jobs = env
        .scalar("SELECT count(*) FROM jobs WHERE trigger = 'schedule'")
        .await?;
    let queued = env
        .scalar("SELECT count(*) FROM schedule_fires WHERE outcome = 'QUEUED'")
        .await?;
    assert_eq!(jobs, queued, "one job per queued fire");
    assert!(queued >= 1);
    // The queued jobs run, and end before the environment stops.
    for id in &ids {
        for (_, outcome, job, _) in fires(&env, id).await? {
            if outcome == "QUEUED" {
                let job = env.wait_job(job.as_str().context("job id")?).await?;
                assert_eq!(job["status"], "SUCCESS", "{job}");
            }
        }
    }
    Ok(())
}

/// New York across both DST changes of 2027, on a simulated clock: the hour that does not
/// exist fires at the first instant after the jump, the hour that occurs twice fires once.
async fn new_york_fires_right_across_both_dst_changes(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let calendar = gleaner_common::calendar::Calendar::new("America/New_York", &[1, 2, 3])
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let sched = scheduler(&env);
    let utc = |s: &str| -> anyhow::Result<DateTime<Utc>> {
        Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
    };
    for (created, expected) in [
        (
            "2027-03-13T12:00:00Z",
            // 14 March: 01:00 EST, then 02:00 (absent) and 03:00 EDT are one instant.
            vec![
                "2027-03-14T06:00:00Z",
                "2027-03-14T07:00:00Z",
                "2027-03-15T05:00:00Z",
            ],
        ),
        (
            "2027-11-06T12:00:00Z",
            // 7 November: 01:00 EDT (the first of two), 02:00 EST, 03:00 EST.
            vec![
                "2027-11-07T05:00:00Z",
                "2027-11-07T07:00:00Z",
                "2027-11-07T08:00:00Z",
            ],
        ),
    ] {
        let s = gleaner_common::store::schedule::create(
            &env.db,
            gleaner_common::id::DomainId::DEFAULT,
            collector.parse()?,
            gleaner_common::model::Name::parse("name", &format!("ny-{created}"))?,
            &calendar,
            gleaner_common::model::ScheduleState::Enabled,
            utc(created)?,
        )
        .await?;
        let id = s.id.to_string();
        for _ in 0..expected.len() {
            let shown = env.get(&format!("/v1/schedules/{id}")).await?;
            let fire = instant(&shown.body["next_fires"][0])?;
            assert_eq!(sched.tick(fire).await?.queued, 1, "at {fire}");
            let all = fires(&env, &id).await?;
            let last = all.last().cloned().context("fire")?;
            env.wait_job(last.2.as_str().with_context(|| format!("job of {all:?}"))?)
                .await?;
        }
        let got: Vec<String> = fires(&env, &id)
            .await?
            .into_iter()
            .map(|f| f.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect();
        assert_eq!(got, expected);
        env.delete(&format!("/v1/schedules/{id}")).await?;
    }
    Ok(())
}

/// Minutes since midnight UTC.
fn minute_of_day(t: &DateTime<Utc>) -> u32 {
    t.hour() * 60 + t.minute()
}

/// The fire instants a schedule shows.
fn next_fires(s: &Value) -> anyhow::Result<Vec<DateTime<Utc>>> {
    s["next_fires"]
        .as_array()
        .context("next_fires")?
        .iter()
        .map(instant)
        .collect()
}

async fn interval_schedules_are_checked_and_switch_kinds(mode: Mode) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let path = format!("/v1/collectors/{collector}/schedules");
    let both = env
        .post(
            &path,
            json!({"name": "x", "timezone": "UTC", "hours": [1], "every_minutes": 5}),
        )
        .await?;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    assert_eq!(both.content_type, "application/problem+json");
    assert_eq!(
        both.body,
        json!({
            "type": "/problems/invalid-input",
            "title": "Invalid input",
            "status": 400,
            "detail": "every_minutes: cannot be given with `hours`: a schedule fires at hours of \
                the day or every N minutes, not both",
            "errors": [{
                "field": "every_minutes",
                "detail": "cannot be given with `hours`: a schedule fires at hours of the day \
                    or every N minutes, not both",
            }],
        })
    );
    // (body, the field named, why)
    let cases = [
        (json!({}), "hours", "neither hours nor every_minutes"),
        (json!({"every_minutes": 0}), "every_minutes", "zero"),
        (json!({"every_minutes": -5}), "every_minutes", "negative"),
        (
            json!({"every_minutes": 1441}),
            "every_minutes",
            "longer than a day",
        ),
        (
            json!({"every_minutes": 7.5}),
            "every_minutes",
            "not an integer",
        ),
        (json!({"every_minutes": "5"}), "every_minutes", "a string"),
        (
            json!({"hours": [], "every_minutes": 5}),
            "every_minutes",
            "both, hours empty",
        ),
    ];
    for (fields, field, why) in cases {
        let mut body = json!({"name": "x", "timezone": "UTC"});
        for (k, v) in fields.as_object().context("fields")? {
            body[k] = v.clone();
        }
        let bad = env.post(&path, body).await?;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{why}: {}", bad.body);
        assert_eq!(bad.body["type"], "/problems/invalid-input", "{why}");
        assert_eq!(
            crate::support::strs(&bad.body["errors"], "field"),
            [field],
            "{why}: {}",
            bad.body
        );
    }
    assert_eq!(env.scalar("SELECT count(*) FROM schedules").await?, 0);

    let s = schedule(
        &env,
        &collector,
        json!({"name": "quarter", "timezone": "UTC", "every_minutes": 15}),
    )
    .await?;
    assert_eq!((&s["every_minutes"], &s["hours"]), (&json!(15), &json!([])));
    let next = next_fires(&s)?;
    assert_eq!(next.len(), 5);
    let now = Utc::now();
    assert!(
        next[0] > now - chrono::Duration::seconds(5)
            && next[0] - now <= chrono::Duration::minutes(15)
    );
    assert!(
        next.windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::minutes(15))
    );
    for t in &next {
        assert!(
            ["00:00", "15:00", "30:00", "45:00"].contains(&t.format("%M:%S").to_string().as_str()),
            "{t}"
        );
    }
    let id = s["id"].as_str().context("id")?.to_owned();
    let shown = env.get(&format!("/v1/schedules/{id}")).await?;
    assert_eq!(shown.body["every_minutes"], 15);
    assert_eq!(next_fires(&shown.body)?, next);
    let c = env.get(&format!("/v1/collectors/{collector}")).await?;
    assert_eq!(instant(&c.body["next_scheduled_at"])?, next[0]);

    // Both kinds in one change are refused, and change nothing.
    let at = format!("/v1/schedules/{id}");
    for (change, field, why) in [
        (
            json!({"hours": [7], "every_minutes": 5}),
            "every_minutes",
            "both kinds",
        ),
        (
            json!({"every_minutes": 1441}),
            "every_minutes",
            "longer than a day",
        ),
        (
            json!({"every_minutes": 0.5}),
            "every_minutes",
            "not an integer",
        ),
        (json!({"hours": []}), "hours", "no hours"),
    ] {
        let bad = env.patch(&at, change).await?;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{why}: {}", bad.body);
        assert_eq!(
            crate::support::strs(&bad.body["errors"], "field"),
            [field],
            "{why}: {}",
            bad.body
        );
    }
    assert_eq!(env.get(&at).await?.body["every_minutes"], 15);

    // `hours` makes it an hours schedule...
    let hourly = env.patch(&at, json!({"hours": [7]})).await?;
    assert_eq!(hourly.status, StatusCode::OK, "{}", hourly.body);
    assert_eq!(hourly.body["every_minutes"], Value::Null);
    assert_eq!(hourly.body["hours"], json!([7]));
    let next = next_fires(&hourly.body)?;
    assert!(
        next.iter()
            .all(|t| t.format("%H:%M:%S").to_string() == "07:00:00")
    );
    // ... and `every_minutes` an interval one again, in the timezone it keeps or is given:
    // every 90 minutes from midnight in Kolkata (UTC+05:30) is 18:30, 20:00, ... UTC.
    let again = env
        .patch(
            &at,
            json!({"every_minutes": 90, "timezone": "Asia/Kolkata"}),
        )
        .await?;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        (&again.body["every_minutes"], &again.body["hours"]),
        (&json!(90), &json!([]))
    );
    assert_eq!(again.body["timezone"], "Asia/Kolkata");
    let next = next_fires(&again.body)?;
    assert!(
        next.windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::minutes(90))
    );
    for t in &next {
        assert_eq!(minute_of_day(t) % 90, (18 * 60 + 30) % 90, "{t}");
    }
    // A timezone alone keeps the interval.
    let moved = env.patch(&at, json!({"timezone": "UTC"})).await?;
    assert_eq!(moved.body["every_minutes"], 90);
    for t in &next_fires(&moved.body)? {
        assert_eq!(minute_of_day(t) % 90, 0, "{t}");
    }
    let paused = env.patch(&at, json!({"state": "PAUSED"})).await?;
    assert_eq!(
        (&paused.body["every_minutes"], &paused.body["next_fires"]),
        (&json!(90), &json!([]))
    );
    Ok(())
}

/// Every 5 minutes, on a simulated clock moved minute by minute through an hour, with two
/// schedulers passing at each instant: twelve fires, each once, each with its job.
async fn a_five_minute_schedule_fires_twelve_times_an_hour_once_each(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start(mode).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    // Kolkata is UTC+05:30: its midnight is on a 5-minute step of UTC too.
    let s = schedule(
        &env,
        &collector,
        json!({"name": "five", "timezone": "Asia/Kolkata", "every_minutes": 5}),
    )
    .await?;
    let id = s["id"].as_str().context("id")?.to_owned();
    let first = instant(&s["next_fires"][0])?;
    assert_eq!(first.timestamp() % 300, 0, "{first}");
    let (a, b) = (scheduler(&env), scheduler(&env));
    let mut queued_at = Vec::new();
    for minute in 0..60 {
        let now = first + chrono::Duration::minutes(minute);
        let (ra, rb) = tokio::join!(a.tick(now), b.tick(now));
        let (ra, rb) = (ra?, rb?);
        assert_eq!(
            ra.skipped + rb.skipped + ra.missed + rb.missed,
            0,
            "{ra:?} {rb:?}"
        );
        let queued = ra.queued + rb.queued;
        if minute % 5 == 0 {
            assert_eq!(queued, 1, "one job at {now}: {ra:?} {rb:?}");
            queued_at.push(now);
            let (fire, outcome, job, _) =
                fires(&env, &id).await?.last().cloned().context("fire")?;
            assert_eq!((fire, outcome.as_str()), (now, "QUEUED"));
            let job = env.wait_job(job.as_str().context("job id")?).await?;
            assert_eq!(job["status"], "SUCCESS", "{job}");
            assert_eq!(instant(&job["fire_time"])?, now);
        } else {
            assert_eq!(queued, 0, "nothing is due at {now}");
        }
        // Half a minute on, the same fire does not queue again.
        let later = now + chrono::Duration::seconds(30);
        let (ra, rb) = tokio::join!(a.tick(later), b.tick(later));
        assert_eq!(ra?.queued + rb?.queued, 0, "at {later}");
    }
    assert_eq!(queued_at.len(), 12);
    let all = fires(&env, &id).await?;
    let got: Vec<DateTime<Utc>> = all.iter().map(|f| f.0).collect();
    assert_eq!(got, queued_at);
    assert!(all.iter().all(|f| f.1 == "QUEUED"), "{all:?}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE trigger = 'schedule'")
            .await?,
        12
    );
    // The schedule shows the thirteenth, an hour after the first.
    let shown = env.get(&format!("/v1/schedules/{id}")).await?;
    assert_eq!(
        instant(&shown.body["next_fires"][0])?,
        first + chrono::Duration::hours(1)
    );
    Ok(())
}

/// A burst of fires over many collectors, in small batches and (on PostgreSQL) concurrent
/// lanes: each collector with two schedules at the instant gets one job, its other fire
/// SKIPPED for that job, whichever batch or lane recorded them.
async fn a_burst_queues_one_job_per_collector_across_batches_and_lanes(
    mode: Mode,
) -> anyhow::Result<()> {
    let env = TestEnv::start_with(
        mode,
        crate::support::Options {
            tune: |s| s.scheduler.batch_size = 3,
            ..crate::support::Options::default()
        },
    )
    .await?;
    let mut at = None;
    for _ in 0..8 {
        let collector = env.demo_collector(0, json!({"resources": 1})).await?;
        for name in ["a", "b"] {
            let s = schedule(
                &env,
                &collector,
                json!({"name": name, "timezone": "UTC", "hours": [9]}),
            )
            .await?;
            at = Some(instant(&s["next_fires"][0])?);
        }
    }
    let fired = scheduler(&env).tick(at.context("a fire")?).await?;
    assert_eq!(
        (fired.schedules, fired.queued, fired.skipped),
        (16, 8, 8),
        "{fired:?}"
    );
    assert_eq!(env.scalar("SELECT count(*) FROM jobs").await?, 8);
    assert_eq!(
        env.scalar("SELECT count(DISTINCT collector_id) FROM jobs")
            .await?,
        8
    );
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM schedule_fires WHERE outcome = 'SKIPPED' \
             AND reason LIKE '%was still queued'"
        )
        .await?,
        8
    );
    Ok(())
}

crate::in_both_modes!(
    a_burst_queues_one_job_per_collector_across_batches_and_lanes,
    interval_schedules_are_checked_and_switch_kinds,
    a_five_minute_schedule_fires_twelve_times_an_hour_once_each,
    new_york_fires_right_across_both_dst_changes,
    the_schedule_api_checks_its_input_and_shows_the_next_fires,
    a_seoul_schedule_fires_at_its_instants_for_three_days,
    overlap_is_skipped_and_downtime_is_caught_up_or_missed,
    two_schedulers_fire_each_instant_once,
);

/// A clock the test moves.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }
}

/// One scheduler replica's view of the [`ManualClock`], counting its reads.
///
/// `gleaner_scheduler::run` reads its clock only while it leads, and twice a pass: for the
/// pass's instant, then to choose how long to sleep after it. So a read shows that the replica
/// leads, and three reads after the time moved include a whole pass at the new time (the pass
/// under way then may account for one of them).
struct ReplicaClock {
    time: Arc<ManualClock>,
    reads: AtomicUsize,
}

impl gleaner_scheduler::Clock for ReplicaClock {
    fn now(&self) -> DateTime<Utc> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        *self.time.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReplicaClock {
    fn new(time: &Arc<ManualClock>) -> Arc<Self> {
        Arc::new(Self {
            time: time.clone(),
            reads: AtomicUsize::new(0),
        })
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// Waits until the replica has read the clock `more` times from now.
    async fn read_again(&self, more: usize, what: &str) -> anyhow::Result<()> {
        let target = self.reads() + more;
        eventually(what, WAIT, || async {
            let reads = self.reads();
            Ok(if reads >= target {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{reads} reads of the clock, waiting for {target}"))
            })
        })
        .await
    }
}

/// Two scheduler processes' loops on one PostgreSQL schema, over twelve simulated hours; the
/// leader is killed (its task aborted, its connection dropped) half-way: every fire still
/// happens, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_replicas_with_the_leader_killed_fire_every_hour_once() -> anyhow::Result<()>
{
    let env = TestEnv::start(Mode::Distributed).await?;
    let collector = env.demo_collector(1, json!({"resources": 3})).await?;
    let s = schedule(
        &env,
        &collector,
        json!({"name": "hourly", "timezone": "UTC", "hours": (0..24).collect::<Vec<_>>()}),
    )
    .await?;
    let id = s["id"].as_str().context("id")?.to_owned();
    let first = instant(&s["next_fires"][0])?;
    let time = Arc::new(ManualClock(Mutex::new(
        first - chrono::Duration::minutes(1),
    )));
    let schema = env.settings.database.schema.clone().context("schema")?;
    let replica = |clock: Arc<ReplicaClock>| {
        let (sched, schema) = (scheduler(&env), schema.clone());
        tokio::spawn(async move {
            gleaner_scheduler::run(
                sched,
                schema,
                clock,
                gleaner_common::outbox::Signal::new(),
                tokio_util::sync::CancellationToken::new(),
            )
            .await;
        })
    };
    let (leader_clock, follower_clock) = (ReplicaClock::new(&time), ReplicaClock::new(&time));
    let leader = replica(leader_clock.clone());
    // The first replica leads before the second starts.
    leader_clock
        .read_again(1, "the first replica's first pass")
        .await?;
    let follower = replica(follower_clock.clone());
    for hour in 0..12 {
        if hour == 6 {
            assert_eq!(
                follower_clock.reads(),
                0,
                "the second replica made no pass while the first led"
            );
            leader.abort();
        }
        let fire = first + chrono::Duration::hours(hour);
        time.set(fire);
        let fired = usize::try_from(hour)? + 1;
        let last = eventually(&format!("the fire at {fire}"), WAIT, || async {
            let all = fires(&env, &id).await?;
            Ok(if all.len() >= fired {
                ControlFlow::Break(all.last().cloned().context("fire")?)
            } else {
                ControlFlow::Continue(all)
            })
        })
        .await?;
        assert_eq!((last.0, last.1.as_str()), (fire, "QUEUED"));
        env.wait_job(last.2.as_str().context("job")?).await?;
    }
    assert!(
        follower_clock.reads() > 0,
        "the second replica took over when the first was killed"
    );
    // Nothing fires twice: a whole pass of the second replica at the last fire's instant
    // (seen through its clock) records no fire again.
    follower_clock
        .read_again(3, "a whole pass of the second replica after the last fire")
        .await?;
    follower.abort();
    let all = fires(&env, &id).await?;
    assert_eq!(all.len(), 12, "{all:?}");
    assert!(all.iter().all(|f| f.1 == "QUEUED"));
    let jobs = env
        .scalar("SELECT count(*) FROM jobs WHERE trigger = 'schedule'")
        .await?;
    assert_eq!(jobs, 12);
    Ok(())
}
