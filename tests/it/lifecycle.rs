//! Each transition of [`gleaner_common::lifecycle`], on a store with nothing else running on
//! it, in both backends: what it writes (rows, messages, events), and what it refuses to do.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use gleaner_common::crypto::{Cipher, SecretKey};
use gleaner_common::entity::{job, job_task, outbox};
use gleaner_common::id::{CollectorId, DomainId, JobId, TaskId};
use gleaner_common::lifecycle::job::{self as job_life, Unit};
use gleaner_common::lifecycle::task::{self as task_life, PreviousAttempt};
use gleaner_common::lifecycle::{Attempt, Ended, Outcome, fence};
use gleaner_common::model::{
    CollectorState, JobKind, JobStatus, JobTimeout, Name, Priority, Trigger,
};
use gleaner_common::plugin::Catalog;
use gleaner_common::retry::RetryPolicy;
use gleaner_common::store::{self, collector, project, service_account};
use sea_orm::{EntityTrait, QueryOrder};
use serde_json::json;

use crate::in_both_modes;
use crate::support::{Mode, TestStore};

/// A store with a project, `accounts` demo service accounts and a demo collector.
struct World {
    store: TestStore,
    catalog: Catalog,
    collector: CollectorId,
    accounts: Vec<gleaner_common::id::ServiceAccountId>,
}

const DOMAIN: DomainId = DomainId::DEFAULT;

impl World {
    async fn new(mode: Mode, accounts: usize) -> anyhow::Result<Self> {
        let store = TestStore::open(mode).await?;
        let catalog = gleaner_worker::Registry::builtin(std::sync::Arc::default()).catalog();
        let cipher = Cipher::new(&SecretKey::generate());
        let p = project::create(&store.db, DOMAIN, Name::parse("name", "p")?).await?;
        let mut ids = Vec::new();
        for n in 0..accounts {
            let a = service_account::create(
                &store.db,
                &cipher,
                DOMAIN,
                service_account::NewServiceAccount {
                    name: Name::parse("name", &format!("a{n}"))?,
                    provider: gleaner_common::provider::find("demo").context("demo")?,
                    project_id: Some(p.id),
                    credentials: serde_json::Map::new(),
                },
            )
            .await?;
            ids.push(a.id);
        }
        let plugin = catalog.get("demo").context("the demo plugin")?.clone();
        let c = collector::create(
            &store.db,
            DOMAIN,
            collector::NewCollector {
                name: Name::parse("name", "c")?,
                plugin: &plugin,
                version: None,
                priority: Priority::new("priority", 10)?,
                options: json!({"resources": 1}),
                tags: Default::default(),
                job_timeout: JobTimeout::new("job_timeout_seconds", 3600)?,
            },
        )
        .await?;
        Ok(Self {
            store,
            catalog,
            collector: c.id,
            accounts: ids,
        })
    }

    /// A job of the collector, accepted and planned: its id and its tasks.
    async fn planned(&self, max_attempts: i32) -> anyhow::Result<(JobId, Vec<TaskId>)> {
        let id = self.enqueue().await?;
        let input = job_life::plan_input(&self.store.db, id)
            .await?
            .context("the job")?;
        let tasks = job_life::plan(
            &self.store.db,
            &input,
            &self.units(),
            None,
            max_attempts,
            "none",
        )
        .await?
        .context("planned")?;
        Ok((id, tasks))
    }

    /// One task per account.
    fn units(&self) -> Vec<Unit> {
        self.accounts
            .iter()
            .map(|&account| Unit {
                account,
                month: None,
                sub_task: None,
            })
            .collect()
    }

    async fn enqueue(&self) -> store::Result<JobId> {
        job_life::enqueue(
            &self.store.db,
            &self.catalog,
            &gleaner_common::access::Access::default(),
            DOMAIN,
            self.collector,
            Trigger::Manual,
            None,
        )
        .await
    }

    /// A job planned and its first task claimed (attempt 1).
    async fn running(&self, max_attempts: i32) -> anyhow::Result<(JobId, Vec<TaskId>, Attempt)> {
        let (job, tasks) = self.planned(max_attempts).await?;
        let first = Attempt {
            task: tasks[0],
            number: 1,
        };
        self.claim(first).await?.context("claimed")?;
        Ok((job, tasks, first))
    }

    async fn claim(
        &self,
        attempt: Attempt,
    ) -> store::Result<Option<gleaner_common::lifecycle::Claimed>> {
        let mut one = task_life::claim(&self.store.db, &[attempt], "me", LEASE).await?;
        Ok(one.pop().flatten())
    }

    async fn task(&self, id: TaskId) -> anyhow::Result<job_task::Model> {
        job_task::Entity::find_by_id(id.as_uuid())
            .one(&self.store.db)
            .await?
            .context("the task")
    }

    async fn job(&self, id: JobId) -> anyhow::Result<job::Model> {
        job::Entity::find_by_id(id.as_uuid())
            .one(&self.store.db)
            .await?
            .context("the job")
    }

    /// The outbox's rows, oldest first: (routing key, attempt of its envelope, not before).
    async fn messages(&self) -> anyhow::Result<Vec<(String, u64, bool)>> {
        let rows = outbox::Entity::find()
            .order_by_asc(outbox::Column::Id)
            .all(&self.store.db)
            .await?;
        rows.iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_str(&r.body)?;
                let attempt = body["attempt"].as_u64().unwrap_or(0);
                Ok((r.routing_key.clone(), attempt, r.not_before.is_some()))
            })
            .collect()
    }

    async fn clear_outbox(&self) -> anyhow::Result<()> {
        self.store.execute("DELETE FROM outbox").await
    }
}

const LEASE: Duration = Duration::from_secs(60);

fn success() -> Outcome {
    Outcome {
        status: JobStatus::Success,
        error: None,
        stderr: None,
        sweep: None,
    }
}

fn history(t: &job_task::Model) -> Vec<PreviousAttempt> {
    t.previous_attempts
        .clone()
        .map(|v| serde_json::from_value(v).expect("a history"))
        .unwrap_or_default()
}

/// The parts of a job's collection of an account see whether another collection of the account
/// ran after the first of them began: then what they saw is not the account's whole.
async fn parts_know_when_another_collection_ran_between_them(mode: Mode) -> anyhow::Result<()> {
    use gleaner_common::lifecycle::task::SubTask;
    let w = World::new(mode, 1).await?;
    let account = w.accounts[0];
    let n = w.enqueue().await?;
    let input = job_life::plan_input(&w.store.db, n)
        .await?
        .context("the job")?;
    let parts: Vec<Unit> = (0..2)
        .map(|part| Unit {
            account,
            month: None,
            sub_task: Some(SubTask {
                options: json!({"part": part}),
                part,
                parts: 2,
            }),
        })
        .collect();
    let tasks = job_life::plan(&w.store.db, &input, &parts, None, 3, "none")
        .await?
        .context("planned")?;
    assert_eq!(tasks.len(), 2, "two parts of one account, one task each");
    let first = Attempt {
        task: tasks[0],
        number: 1,
    };
    let claimed = w.claim(first).await?.context("claimed")?;
    assert_eq!(
        claimed.sub_task.map(|s| (s.part, s.parts, s.options)),
        Some((0, 2, json!({"part": 0})))
    );
    task_life::end(&w.store.db, first, Ended::Done(success()), None).await?;
    assert!(!task_life::collected_meanwhile(&w.store.db, n, Some(account)).await?);
    // Another job of the collector collects the whole account before the second part runs.
    let (_, others, other) = w.running(3).await?;
    assert_eq!(others.len(), 1);
    assert!(
        task_life::collected_meanwhile(&w.store.db, n, Some(account)).await?,
        "a collection waiting or running counts"
    );
    task_life::end(&w.store.db, other, Ended::Done(success()), None).await?;
    assert!(task_life::collected_meanwhile(&w.store.db, n, Some(account)).await?);
    Ok(())
}

in_both_modes!(
    parts_know_when_another_collection_ran_between_them,
    enqueue_writes_the_job_its_message_and_its_event_together,
    planning_twice_plans_once,
    a_claim_starts_only_the_attempt_its_message_names,
    a_claim_whose_follow_up_read_fails_leaves_the_task_claimable,
    a_heartbeat_renews_the_lease_while_the_attempt_owns_the_task,
    an_end_is_recorded_once_and_the_last_one_concludes_the_job,
    a_retry_counts_the_attempt_until_none_is_left,
    a_release_hands_the_task_back_without_counting_the_attempt,
    an_outcome_the_database_refuses_counts_as_a_failed_attempt,
    nul_characters_in_an_outcome_are_stored_replaced,
    cancel_ends_the_job_and_its_open_tasks,
    expire_fails_a_job_past_its_deadline,
    reap_brings_back_expired_leases_as_failed_attempts,
    recover_brings_back_every_running_task,
    nudge_sends_a_lost_message_again,
    the_fence_holds_only_for_the_attempt_that_owns_the_task,
    conclude_ends_a_job_once_every_task_has_ended,
    a_load_shows_its_progress_while_its_attempt_owns_the_task,
);

async fn enqueue_writes_the_job_its_message_and_its_event_together(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let id = w.enqueue().await?;
    let j = w.job(id).await?;
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.kind, JobKind::Inventory);
    assert!(j.deadline_at.is_some());
    let messages = w.messages().await?;
    assert_eq!(
        messages,
        vec![
            ("inventory.job.requested".to_owned(), 1, false),
            ("job.queued".to_owned(), 0, false)
        ]
    );
    // A disabled collector accepts nothing, and nothing is written.
    collector::set_state(&w.store.db, DOMAIN, w.collector, CollectorState::Disabled).await?;
    let refused = w.enqueue().await;
    assert!(
        matches!(refused, Err(store::Error::State(_))),
        "{refused:?}"
    );
    assert_eq!(w.store.scalar("SELECT count(*) FROM jobs").await?, 1);
    assert_eq!(w.store.scalar("SELECT count(*) FROM outbox").await?, 2);
    Ok(())
}

async fn planning_twice_plans_once(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 3).await?;
    let id = w.enqueue().await?;
    w.clear_outbox().await?;
    let input = job_life::plan_input(&w.store.db, id)
        .await?
        .context("the job")?;
    let units = w.units();
    let tasks = job_life::plan(&w.store.db, &input, &units, None, 3, "none")
        .await?
        .context("planned")?;
    assert_eq!(tasks.len(), 3);
    for t in &tasks {
        let row = w.task(*t).await?;
        assert_eq!(
            (row.status, row.attempt, row.max_attempts),
            (JobStatus::Queued, 0, 3)
        );
    }
    assert_eq!(w.job(id).await?.status, JobStatus::InProgress);
    let messages = w.messages().await?;
    let requested = messages
        .iter()
        .filter(|m| *m == &("inventory.task.requested".to_owned(), 1, false))
        .count();
    assert_eq!(requested, 3, "{messages:?}");
    assert!(messages.contains(&("job.started".to_owned(), 0, false)));
    // The same message again plans nothing.
    let again = job_life::plan(&w.store.db, &input, &units, None, 3, "none").await?;
    assert_eq!(again, None);
    assert_eq!(w.store.scalar("SELECT count(*) FROM job_tasks").await?, 3);
    assert_eq!(w.messages().await?.len(), messages.len());

    // With nothing to collect from, a job fails at once, saying why.
    let empty = w.enqueue().await?;
    let input = job_life::plan_input(&w.store.db, empty)
        .await?
        .context("the job")?;
    let none = job_life::plan(&w.store.db, &input, &[], None, 3, "no accounts").await?;
    assert_eq!(none, Some(Vec::new()));
    let j = w.job(empty).await?;
    assert_eq!(j.status, JobStatus::Failure);
    assert_eq!(j.error.as_deref(), Some("no accounts"));
    Ok(())
}

async fn a_claim_starts_only_the_attempt_its_message_names(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 2).await?;
    let (job, tasks) = w.planned(3).await?;
    let first = Attempt {
        task: tasks[0],
        number: 1,
    };
    // A message of a later attempt, or a wrong one, starts nothing.
    for wrong in [0, 2, 5] {
        let other = Attempt {
            number: wrong,
            ..first
        };
        assert!(w.claim(other).await?.is_none(), "attempt {wrong}");
    }
    let claimed = w.claim(first).await?.context("claimed")?;
    assert_eq!(claimed.attempt, first);
    assert_eq!(claimed.job_id, job);
    assert_eq!(claimed.plugin_id, "demo");
    assert_eq!(claimed.service_account_id, Some(w.accounts[0]));
    assert_eq!(claimed.secret, Some(None), "the account has no credentials");
    let row = w.task(tasks[0]).await?;
    assert_eq!((row.status, row.attempt), (JobStatus::InProgress, 1));
    assert_eq!(row.lease_owner.as_deref(), Some("me"));
    assert!(row.lease_expires_at.is_some());
    // The same message delivered again starts nothing: the attempt runs.
    assert!(w.claim(first).await?.is_none());
    // A group: one claim per task, the duplicate and the stale one get nothing.
    let second = Attempt {
        task: tasks[1],
        number: 1,
    };
    let group = task_life::claim(&w.store.db, &[second, first, second], "me", LEASE).await?;
    assert_eq!(
        group.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, false]
    );
    Ok(())
}

async fn a_claim_whose_follow_up_read_fails_leaves_the_task_claimable(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (job, tasks) = w.planned(3).await?;
    let job_sql = w.store.uuid_sql(job);
    // The job row cannot be read back: its kind is not one Gleaner knows.
    w.store
        .execute(&format!(
            "UPDATE jobs SET kind = 'bogus' WHERE id = {job_sql}"
        ))
        .await?;
    let first = Attempt {
        task: tasks[0],
        number: 1,
    };
    let failed = w.claim(first).await;
    assert!(failed.is_err(), "{failed:?}");
    let row = w.task(tasks[0]).await?;
    assert_eq!((row.status, row.attempt), (JobStatus::Queued, 0));
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.started_at, None);
    // Once readable, the same message starts attempt 1, with no failed attempt behind it.
    w.store
        .execute(&format!(
            "UPDATE jobs SET kind = 'inventory' WHERE id = {job_sql}"
        ))
        .await?;
    let claimed = w.claim(first).await?.context("claimed")?;
    assert_eq!(claimed.attempt.number, 1);
    assert!(history(&w.task(tasks[0]).await?).is_empty());
    Ok(())
}

async fn a_heartbeat_renews_the_lease_while_the_attempt_owns_the_task(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (job, tasks, first) = w.running(3).await?;
    let before = w
        .task(tasks[0])
        .await?
        .lease_expires_at
        .context("a lease")?;
    assert!(task_life::heartbeat(&w.store.db, first, Duration::from_secs(3600)).await?);
    let after = w
        .task(tasks[0])
        .await?
        .lease_expires_at
        .context("a lease")?;
    assert!(
        after > before + chrono::Duration::minutes(30),
        "{before} → {after}"
    );
    let stale = Attempt { number: 2, ..first };
    assert!(!task_life::heartbeat(&w.store.db, stale, LEASE).await?);
    job_life::cancel(&w.store.db, DOMAIN, job).await?;
    assert!(
        !task_life::heartbeat(&w.store.db, first, LEASE).await?,
        "a canceled task's worker must stop"
    );
    Ok(())
}

async fn an_end_is_recorded_once_and_the_last_one_concludes_the_job(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 2).await?;
    let (job, tasks, first) = w.running(3).await?;
    w.clear_outbox().await?;
    let ended = task_life::end(&w.store.db, first, Ended::Done(success()), None).await?;
    assert_eq!(ended.status(), Some(JobStatus::Success));
    let row = w.task(tasks[0]).await?;
    assert_eq!(row.status, JobStatus::Success);
    assert!(row.finished_at.is_some());
    assert_eq!(row.lease_owner, None);
    // One task is left: the job runs on.
    assert_eq!(w.job(job).await?.status, JobStatus::InProgress);
    // The same end again is stale.
    let again = task_life::end(&w.store.db, first, Ended::Done(success()), None).await?;
    assert!(matches!(again, Ended::Stale), "{again:?}");

    let second = Attempt {
        task: tasks[1],
        number: 1,
    };
    w.claim(second).await?.context("claimed")?;
    let failure = Outcome::failure("it broke");
    task_life::end(&w.store.db, second, Ended::Done(failure), None).await?;
    let j = w.job(job).await?;
    assert_eq!(j.status, JobStatus::Failure);
    assert_eq!(j.error.as_deref(), Some("1 of 2 tasks failed"));
    assert_eq!((j.tasks_done, j.tasks_failed), (2, 1));
    assert_eq!(
        w.messages().await?,
        vec![("job.failed".to_owned(), 0, false)]
    );
    Ok(())
}

async fn a_retry_counts_the_attempt_until_none_is_left(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (job, tasks, first) = w.running(2).await?;
    w.clear_outbox().await?;
    let backoff = RetryPolicy {
        initial: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    let ended = task_life::end(
        &w.store.db,
        first,
        Ended::Retry("flaky".into()),
        Some(&backoff),
    )
    .await?;
    assert!(
        matches!(&ended, Ended::Retry(e) if e == "flaky"),
        "{ended:?}"
    );
    let row = w.task(tasks[0]).await?;
    assert_eq!((row.status, row.attempt), (JobStatus::Queued, 1));
    let h = history(&row);
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].attempt, h[0].error.as_str()), (1, "flaky"));
    assert_eq!(h[0].worker.as_deref(), Some("me"));
    // The next attempt's message waits out the backoff.
    assert_eq!(
        w.messages().await?,
        vec![("inventory.task.requested".to_owned(), 2, true)]
    );

    let second = Attempt { number: 2, ..first };
    w.claim(second).await?.context("claimed")?;
    let last = task_life::end(
        &w.store.db,
        second,
        Ended::Retry("flaky again".into()),
        None,
    )
    .await?;
    let Ended::Done(outcome) = last else {
        anyhow::bail!("the last attempt should end the task: {last:?}");
    };
    assert_eq!(outcome.status, JobStatus::Failure);
    let row = w.task(tasks[0]).await?;
    assert_eq!(row.status, JobStatus::Failure);
    assert_eq!(
        row.error.as_deref(),
        Some("flaky again (2 of 2 attempts failed: no attempts left)")
    );
    assert_eq!(w.job(job).await?.status, JobStatus::Failure);
    Ok(())
}

async fn a_release_hands_the_task_back_without_counting_the_attempt(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (_, tasks, first) = w.running(1).await?;
    w.clear_outbox().await?;
    let ended = task_life::end(&w.store.db, first, Ended::Released, None).await?;
    assert!(matches!(ended, Ended::Released), "{ended:?}");
    let row = w.task(tasks[0]).await?;
    assert_eq!((row.status, row.attempt), (JobStatus::Queued, 1));
    assert!(history(&row).is_empty(), "a hand-back is no failure");
    assert_eq!(row.lease_owner, None);
    assert_eq!(
        w.messages().await?,
        vec![("inventory.task.requested".to_owned(), 2, false)]
    );
    // Its only attempt is still to come.
    let again = Attempt { number: 2, ..first };
    w.claim(again).await?.context("claimed")?;
    let ended = task_life::end(&w.store.db, again, Ended::Released, None).await?;
    assert!(matches!(ended, Ended::Released));
    let twice = task_life::end(&w.store.db, again, Ended::Released, None).await?;
    assert!(matches!(twice, Ended::Stale), "{twice:?}");
    Ok(())
}

/// A trigger makes the database refuse every SUCCESS of a task, as it would refuse a value it
/// cannot hold.
async fn refuse_success(store: &TestStore) -> anyhow::Result<()> {
    match store.mode {
        Mode::Distributed => {
            store
                .execute(
                    "CREATE FUNCTION refuse_success() RETURNS trigger AS $$ BEGIN \
                     RAISE EXCEPTION 'this store refuses a SUCCESS'; END $$ LANGUAGE plpgsql",
                )
                .await?;
            store
                .execute(
                    "CREATE TRIGGER refuse_success BEFORE UPDATE ON job_tasks FOR EACH ROW \
                     WHEN (NEW.status = 'SUCCESS') EXECUTE FUNCTION refuse_success()",
                )
                .await
        }
        Mode::Standalone => {
            store
                .execute(
                    "CREATE TRIGGER refuse_success BEFORE UPDATE ON job_tasks \
                     WHEN NEW.status = 'SUCCESS' \
                     BEGIN SELECT RAISE(ABORT, 'this store refuses a SUCCESS'); END",
                )
                .await
        }
    }
}

async fn an_outcome_the_database_refuses_counts_as_a_failed_attempt(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (job, tasks, first) = w.running(2).await?;
    refuse_success(&w.store).await?;
    let ended = task_life::end(&w.store.db, first, Ended::Done(success()), None).await?;
    let Ended::Retry(why) = &ended else {
        anyhow::bail!("the refused end should count as a failed attempt: {ended:?}");
    };
    assert!(why.contains("the outcome could not be recorded"), "{why}");
    assert!(why.contains("this store refuses a SUCCESS"), "{why}");
    let row = w.task(tasks[0]).await?;
    assert_eq!((row.status, history(&row).len()), (JobStatus::Queued, 1));

    let second = Attempt { number: 2, ..first };
    w.claim(second).await?.context("claimed")?;
    let last = task_life::end(&w.store.db, second, Ended::Done(success()), None).await?;
    assert_eq!(last.status(), Some(JobStatus::Failure), "{last:?}");
    let row = w.task(tasks[0]).await?;
    assert_eq!(row.status, JobStatus::Failure);
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("the outcome could not be recorded"),
        "{error}"
    );
    assert!(error.contains("2 of 2 attempts failed"), "{error}");
    assert_eq!(w.job(job).await?.status, JobStatus::Failure);
    Ok(())
}

async fn nul_characters_in_an_outcome_are_stored_replaced(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (_, tasks, first) = w.running(1).await?;
    let outcome = Outcome {
        status: JobStatus::Failure,
        error: Some("bad\0item".into()),
        stderr: Some("line\0one".into()),
        sweep: None,
    };
    let ended = task_life::end(&w.store.db, first, Ended::Done(outcome), None).await?;
    assert_eq!(ended.status(), Some(JobStatus::Failure));
    let row = w.task(tasks[0]).await?;
    assert_eq!(row.error.as_deref(), Some("bad\u{FFFD}item"));
    assert_eq!(row.stderr.as_deref(), Some("line\u{FFFD}one"));
    Ok(())
}

async fn cancel_ends_the_job_and_its_open_tasks(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 2).await?;
    let (job, tasks, _) = w.running(3).await?;
    job_life::cancel(&w.store.db, DOMAIN, job).await?;
    let j = w.job(job).await?;
    assert_eq!(j.status, JobStatus::Canceled);
    assert_eq!(j.error.as_deref(), Some("canceled by request"));
    for t in &tasks {
        let row = w.task(*t).await?;
        assert_eq!(row.status, JobStatus::Canceled, "{t}");
        assert_eq!(row.lease_owner, None);
    }
    // Again: nothing changes. Another domain's job does not exist.
    job_life::cancel(&w.store.db, DOMAIN, job).await?;
    let other = DomainId::from_uuid(uuid::Uuid::now_v7());
    let hidden = job_life::cancel(&w.store.db, other, job).await;
    assert!(
        matches!(hidden, Err(store::Error::NotFound { .. })),
        "{hidden:?}"
    );
    // A job that ended otherwise cannot be canceled.
    let (done, done_tasks) = w.planned(1).await?;
    for t in done_tasks {
        let a = Attempt { task: t, number: 1 };
        w.claim(a).await?.context("claimed")?;
        task_life::end(&w.store.db, a, Ended::Done(success()), None).await?;
    }
    assert_eq!(w.job(done).await?.status, JobStatus::Success);
    let refused = job_life::cancel(&w.store.db, DOMAIN, done).await;
    assert!(
        matches!(refused, Err(store::Error::State(_))),
        "{refused:?}"
    );
    Ok(())
}

async fn expire_fails_a_job_past_its_deadline(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 2).await?;
    let (job, tasks, _) = w.running(3).await?;
    // Not yet.
    assert!(
        job_life::expire(&w.store.db, Utc::now(), 10)
            .await?
            .is_empty()
    );
    let later = Utc::now() + chrono::Duration::hours(2);
    assert_eq!(job_life::expire(&w.store.db, later, 10).await?, vec![job]);
    let j = w.job(job).await?;
    assert_eq!(j.status, JobStatus::Failure);
    assert_eq!(
        j.error.as_deref(),
        Some("timeout: the job did not finish within 3600 s")
    );
    for t in tasks {
        assert_eq!(w.task(t).await?.status, JobStatus::Failure);
    }
    assert!(job_life::expire(&w.store.db, later, 10).await?.is_empty());
    Ok(())
}

async fn reap_brings_back_expired_leases_as_failed_attempts(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (job, tasks, first) = w.running(2).await?;
    w.clear_outbox().await?;
    let reaped = task_life::reap(&w.store.db, Utc::now(), 10).await?;
    assert_eq!(reaped, task_life::Reaped::default(), "the lease runs");
    let later = Utc::now() + chrono::Duration::minutes(2);
    let reaped = task_life::reap(&w.store.db, later, 10).await?;
    assert_eq!((reaped.requeued, reaped.failed), (1, 0));
    let row = w.task(tasks[0]).await?;
    assert_eq!(row.status, JobStatus::Queued);
    let h = history(&row);
    assert!(
        h[0].error.contains("lease of attempt 1 expired: worker me"),
        "{h:?}"
    );
    assert_eq!(
        w.messages().await?,
        vec![("inventory.task.requested".to_owned(), 2, false)]
    );
    // The last attempt's lease: the task fails.
    let second = Attempt { number: 2, ..first };
    w.claim(second).await?.context("claimed")?;
    let reaped = task_life::reap(&w.store.db, later + chrono::Duration::minutes(2), 10).await?;
    assert_eq!((reaped.requeued, reaped.failed), (0, 1));
    assert_eq!(w.task(tasks[0]).await?.status, JobStatus::Failure);
    assert_eq!(w.job(job).await?.status, JobStatus::Failure);
    Ok(())
}

async fn recover_brings_back_every_running_task(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 2).await?;
    let (_, tasks, _) = w.running(3).await?;
    w.clear_outbox().await?;
    // Its lease runs on: only a store's one process may say that nobody runs it.
    let recovered = task_life::recover(&w.store.db).await?;
    assert_eq!((recovered.requeued, recovered.failed), (1, 0));
    let row = w.task(tasks[0]).await?;
    assert_eq!(row.status, JobStatus::Queued);
    let h = history(&row);
    assert!(
        h[0].error
            .contains("attempt 1 was running when the process stopped"),
        "{h:?}"
    );
    // The queued task was left alone.
    let other = w.task(tasks[1]).await?;
    assert_eq!((other.status, other.attempt), (JobStatus::Queued, 0));
    assert_eq!(
        w.messages().await?,
        vec![("inventory.task.requested".to_owned(), 2, false)]
    );
    Ok(())
}

async fn nudge_sends_a_lost_message_again(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (_, tasks) = w.planned(3).await?;
    w.clear_outbox().await?;
    assert_eq!(
        task_life::nudge(&w.store.db, Utc::now() - chrono::Duration::hours(1), 10).await?,
        0
    );
    let before = Utc::now();
    let later = before + chrono::Duration::seconds(1);
    assert_eq!(task_life::nudge(&w.store.db, later, 10).await?, 1);
    assert_eq!(
        w.messages().await?,
        vec![("inventory.task.requested".to_owned(), 1, false)]
    );
    // Nudged since `before`: a pass of the same cutoff leaves it alone.
    assert_eq!(task_life::nudge(&w.store.db, before, 10).await?, 0);
    // The message starts the task's first attempt.
    let first = Attempt {
        task: tasks[0],
        number: 1,
    };
    assert!(w.claim(first).await?.is_some());
    Ok(())
}

async fn the_fence_holds_only_for_the_attempt_that_owns_the_task(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (_, tasks, first) = w.running(3).await?;
    let stale = Attempt { number: 7, ..first };
    let counts = gleaner_common::model::Counts {
        created: 2,
        unchanged: 1,
        ..Default::default()
    };
    match mode {
        Mode::Distributed => {
            let pool = w.store.db.get_postgres_connection_pool();
            let mut tx = pool.begin().await?;
            assert!(!fence::pg::hold(&mut tx, stale).await?);
            assert!(fence::pg::hold(&mut tx, first).await?);
            let held = fence::pg::hold_many(&mut tx, &[stale, first]).await?;
            assert_eq!(
                held.into_iter().collect::<Vec<_>>(),
                vec![first.task.as_uuid()]
            );
            fence::pg::add_progress(&mut tx, &[(first, counts), (stale, counts)]).await?;
            tx.commit().await?;
        }
        Mode::Standalone => {
            let pool = w.store.db.get_sqlite_connection_pool();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            assert!(!fence::sqlite::hold(&mut tx, stale).await?);
            assert!(fence::sqlite::hold(&mut tx, first).await?);
            fence::sqlite::add_progress(&mut tx, first, &counts).await?;
            fence::sqlite::add_progress(&mut tx, stale, &counts).await?;
            tx.commit().await?;
        }
    }
    let row = w.task(tasks[0]).await?;
    assert_eq!(
        (row.created, row.unchanged),
        (2, 1),
        "counted once, for the owner"
    );
    Ok(())
}

async fn conclude_ends_a_job_once_every_task_has_ended(mode: Mode) -> anyhow::Result<()> {
    let w = World::new(mode, 2).await?;
    let (job, tasks, first) = w.running(3).await?;
    task_life::end(&w.store.db, first, Ended::Done(success()), None).await?;
    // One task is left: nothing to conclude.
    assert_eq!(job_life::conclude(&w.store.db, job).await?, None);
    assert!(job_life::unconcluded(&w.store.db, 10).await?.is_empty());
    // The other ends, but its worker dies before concluding the job.
    let t = w.store.uuid_sql(tasks[1]);
    w.store
        .execute(&format!(
            "UPDATE job_tasks SET status = 'FAILURE' WHERE id = {t}"
        ))
        .await?;
    assert_eq!(w.job(job).await?.status, JobStatus::InProgress);
    assert_eq!(job_life::unconcluded(&w.store.db, 10).await?, vec![job]);
    w.clear_outbox().await?;
    assert_eq!(
        job_life::conclude(&w.store.db, job).await?,
        Some(JobStatus::Failure)
    );
    let j = w.job(job).await?;
    assert_eq!((j.tasks_done, j.tasks_failed), (2, 1));
    assert!(j.finished_at.is_some());
    assert_eq!(
        w.messages().await?,
        vec![("job.failed".to_owned(), 0, false)]
    );
    // Once only.
    assert_eq!(job_life::conclude(&w.store.db, job).await?, None);
    assert!(job_life::unconcluded(&w.store.db, 10).await?.is_empty());
    Ok(())
}

async fn a_load_shows_its_progress_while_its_attempt_owns_the_task(
    mode: Mode,
) -> anyhow::Result<()> {
    let w = World::new(mode, 1).await?;
    let (job, tasks, first) = w.running(3).await?;
    assert!(task_life::loading(&w.store.db, first, job, 100_000).await?);
    assert_eq!(w.task(tasks[0]).await?.created, 100_000);
    let stale = Attempt { number: 2, ..first };
    assert!(!task_life::loading(&w.store.db, stale, job, 5).await?);
    assert_eq!(w.task(tasks[0]).await?.created, 100_000);
    Ok(())
}
