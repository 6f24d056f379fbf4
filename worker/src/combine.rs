//! Group commit: the same small database operation asked for by many concurrent tasks runs
//! once for all of them.
//!
//! A worker runs many small tasks at once, and each one claims itself, writes a batch and
//! records its end: about twenty round trips in four transactions for a task of one resource.
//! A [`Combiner`] queues such requests; while one group runs, the next ones gather, and the
//! next group takes every request waiting (up to a cap). Under load a round trip then serves
//! the whole group, and an idle worker pays no wait: a lone request runs at once, as a group
//! of one.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gleaner_common::id::{CollectorId, DomainId};
use gleaner_common::lifecycle::{self, Attempt, Claimed, Ended, Outcome};
use gleaner_common::retry::RetryPolicy;
use gleaner_common::store;
use gleaner_common::store::resource::{self, Sweep, SweepPlan};
use sea_orm::DatabaseConnection;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use crate::sink::{ResourceSink, SinkError, Write, Written};

/// A group's work: one answer per request, in the requests' order.
pub type GroupFn<Req, Resp> =
    Arc<dyn Fn(Vec<Req>) -> Pin<Box<dyn Future<Output = Vec<Resp>> + Send>> + Send + Sync>;

/// Requests waiting for their group.
type Queue<Req, Resp> = mpsc::UnboundedSender<(Req, oneshot::Sender<Resp>)>;

/// Gathers concurrent requests into groups and runs each group with one call.
pub struct Combiner<Req, Resp> {
    run: GroupFn<Req, Resp>,
    max_group: usize,
    parallel: usize,
    /// Started on first use, inside the runtime that uses it.
    queue: OnceLock<Queue<Req, Resp>>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[error("the worker's group commit stopped")]
pub struct Stopped;

impl<Req: Send + 'static, Resp: Send + 'static> Combiner<Req, Resp> {
    /// Groups of at most `max_group` requests, at most `parallel` of them running at once (the
    /// database connections the combiner may hold).
    pub fn new(max_group: usize, parallel: usize, run: GroupFn<Req, Resp>) -> Self {
        Self {
            run,
            max_group: max_group.max(1),
            parallel: parallel.max(1),
            queue: OnceLock::new(),
        }
    }

    /// Runs `req` in the next group and returns its answer.
    ///
    /// # Errors
    /// The group's task panicked, or the runtime is shutting down.
    pub async fn call(&self, req: Req) -> Result<Resp, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.queue().send((req, tx)).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    fn queue(&self) -> &Queue<Req, Resp> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(gather(
                rx,
                Arc::clone(&self.run),
                self.max_group,
                self.parallel,
            ));
            tx
        })
    }
}

/// Takes a permit, then every request waiting (up to `max_group`), and runs them as a group:
/// requests that arrive while all permits are taken wait and join the next group.
async fn gather<Req: Send + 'static, Resp: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<(Req, oneshot::Sender<Resp>)>,
    run: GroupFn<Req, Resp>,
    max_group: usize,
    parallel: usize,
) {
    let permits = Arc::new(Semaphore::new(parallel));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = group.into_iter().unzip();
            let answers = run(reqs).await;
            debug_assert_eq!(answers.len(), replies.len(), "one answer per request");
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The asker may have gone (its task was aborted): nothing to tell.
                let _ = reply.send(answer);
            }
            drop(permit);
        });
    }
}

/// Requests in one group at most: bounds a statement's arrays and a transaction's length.
const MAX_GROUP: usize = 64;

/// Groups of one kind running at once: database connections each combiner may hold. One:
/// requests that come while a group runs wait for it and form the next group, which is what
/// makes groups under load (with two, most requests found a free slot and ran alone).
const PARALLEL: usize = 1;

/// A combiner of the worker's: groups of up to [`MAX_GROUP`], [`PARALLEL`] at a time, each
/// run by `run`.
fn grouped<Req, Resp, F, Fut>(run: F) -> Combiner<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    Combiner::new(
        MAX_GROUP,
        PARALLEL,
        Arc::new(move |reqs| Box::pin(run(reqs))),
    )
}

/// An attempt's outcome, for [`lifecycle::task::end_many`].
type End = (Attempt, Outcome);

/// The database operations every task makes, combined across the worker's running tasks.
pub struct Groups {
    claims: Combiner<Attempt, Result<Option<Claimed>, store::Error>>,
    writes: Combiner<Write, Result<Written, SinkError>>,
    ends: Combiner<End, Result<Ended, store::Error>>,
    collectors: Combiner<DomainId, CollectorsOf>,
    sweeps: Combiner<Sweep, Result<SweepPlan, store::Error>>,
}

/// The collectors of a domain: id, plugin and version.
type CollectorsOf = Result<Vec<(CollectorId, String, String)>, store::Error>;

impl Groups {
    /// Claims for `owner` under `lease`; writes through `sink`; an outcome the database
    /// refuses is retried after `backoff` ([`lifecycle::task::end`]).
    pub fn new(
        db: &DatabaseConnection,
        sink: &Arc<dyn ResourceSink>,
        owner: &str,
        lease: Duration,
        backoff: RetryPolicy,
    ) -> Self {
        let claim_db = db.clone();
        let owner: Arc<str> = owner.into();
        let claims = grouped(move |attempts: Vec<Attempt>| {
            let (db, owner) = (claim_db.clone(), Arc::clone(&owner));
            async move {
                let (db, owner) = (&db, &*owner);
                or_one_by_one(
                    "claims",
                    attempts,
                    |attempts| async move {
                        lifecycle::task::claim(db, &attempts, owner, lease).await
                    },
                    |attempt| async move {
                        let mut one = lifecycle::task::claim(db, &[attempt], owner, lease).await?;
                        Ok(one.pop().flatten())
                    },
                )
                .await
            }
        });
        let sink = Arc::clone(sink);
        let writes = grouped(move |writes: Vec<Write>| {
            let sink = Arc::clone(&sink);
            async move { sink.write_many(writes).await }
        });
        let end_db = db.clone();
        let ends = grouped(move |ends: Vec<End>| {
            let db = end_db.clone();
            async move {
                let db = &db;
                or_one_by_one(
                    "task ends",
                    ends,
                    |ends| async move {
                        let recorded = lifecycle::task::end_many(db, ends.clone()).await?;
                        Ok(ends
                            .into_iter()
                            .zip(recorded)
                            .map(|((_, outcome), recorded)| {
                                if recorded {
                                    Ended::Done(outcome)
                                } else {
                                    Ended::Stale
                                }
                            })
                            .collect())
                    },
                    // Alone, an outcome the database refuses counts as a failed attempt.
                    |(attempt, outcome)| {
                        lifecycle::task::end(db, attempt, Ended::Done(outcome), Some(&backoff))
                    },
                )
                .await
            }
        });
        let collectors_db = db.clone();
        let collectors = grouped(move |domains: Vec<DomainId>| {
            let db = collectors_db.clone();
            async move {
                // One read per domain of the group, each answer shared by its askers.
                let mut read: HashMap<DomainId, Vec<(CollectorId, String, String)>> =
                    HashMap::new();
                let mut out = Vec::with_capacity(domains.len());
                for d in domains {
                    if let Some(found) = read.get(&d) {
                        out.push(Ok(found.clone()));
                        continue;
                    }
                    let found = store::collector::plugins(&db, d).await;
                    if let Ok(found) = &found {
                        read.insert(d, found.clone());
                    }
                    out.push(found);
                }
                out
            }
        });
        let sweep_db = db.clone();
        let sweeps = grouped(move |sweeps: Vec<Sweep>| {
            let db = sweep_db.clone();
            async move {
                let db = &db;
                or_one_by_one(
                    "sweep plans",
                    sweeps,
                    |sweeps| resource::plan_sweeps(db, sweeps),
                    |s| resource::plan_sweep(db, s),
                )
                .await
            }
        });
        Self {
            claims,
            writes,
            ends,
            collectors,
            sweeps,
        }
    }

    /// [`lifecycle::task::claim`], in a group.
    ///
    /// # Errors
    /// Database errors only; then the attempt did not start.
    pub async fn claim(&self, attempt: Attempt) -> Result<Option<Claimed>, store::Error> {
        self.claims.call(attempt).await.map_err(stopped)?
    }

    /// [`ResourceSink::write`], in a group.
    ///
    /// # Errors
    /// As [`ResourceSink::write`].
    pub async fn write(&self, write: Write) -> Result<Written, SinkError> {
        self.writes
            .call(write)
            .await
            .map_err(|e| SinkError::Db(e.to_string()))?
    }

    /// [`lifecycle::task::end`] of an outcome, in a group.
    ///
    /// # Errors
    /// Database errors that may pass; nothing was recorded.
    pub async fn end(&self, attempt: Attempt, outcome: Outcome) -> Result<Ended, store::Error> {
        self.ends.call((attempt, outcome)).await.map_err(stopped)?
    }

    /// [`resource::plan_sweep`], in a group.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn plan_sweep(&self, sweep: Sweep) -> Result<SweepPlan, store::Error> {
        self.sweeps.call(sweep).await.map_err(stopped)?
    }

    /// [`store::collector::plugins`], in a group.
    ///
    /// # Errors
    /// Database errors only.
    pub async fn collectors(&self, domain: DomainId) -> CollectorsOf {
        self.collectors.call(domain).await.map_err(stopped)?
    }
}

/// The answers of `group`, or, when the group failed, of `one` for each request in turn: one
/// request's failure (a bad row, a lost race) is then its own, not the group's.
async fn or_one_by_one<Req, Resp, GF, OF>(
    what: &str,
    reqs: Vec<Req>,
    group: impl FnOnce(Vec<Req>) -> GF,
    one: impl Fn(Req) -> OF,
) -> Vec<Result<Resp, store::Error>>
where
    Req: Clone,
    GF: Future<Output = Result<Vec<Resp>, store::Error>>,
    OF: Future<Output = Result<Resp, store::Error>>,
{
    match group(reqs.clone()).await {
        Ok(all) => all.into_iter().map(Ok).collect(),
        Err(e) => {
            debug!(error = %e, requests = reqs.len(), "a group of {what} failed; running them one by one");
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                out.push(one(r).await);
            }
            out
        }
    }
}

/// Transient, like a lost connection: the caller's retry asks again.
fn stopped(e: Stopped) -> store::Error {
    store::Error::Db(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(
        e.to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_groups_and_each_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let combiner: Arc<Combiner<u32, u32>> = Arc::new(Combiner::new(
            8,
            1,
            Arc::new(move |reqs: Vec<u32>| {
                seen.lock().expect("lock").push(reqs.len());
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    reqs.into_iter().map(|r| r * 10).collect()
                })
            }),
        ));
        let calls: Vec<_> = (0..20)
            .map(|n| {
                let c = Arc::clone(&combiner);
                tokio::spawn(async move { (n, c.call(n).await.expect("answered")) })
            })
            .collect();
        for call in calls {
            let (n, answer) = call.await.expect("joined");
            assert_eq!(answer, n * 10);
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|s| *s <= 8), "{sizes:?}");
        assert!(
            sizes.len() < 20,
            "requests waiting behind a running group join the next one: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_lone_request_runs_at_once() {
        let combiner: Combiner<u32, u32> = Combiner::new(
            8,
            2,
            Arc::new(|reqs: Vec<u32>| Box::pin(async move { reqs })),
        );
        let answer = tokio::time::timeout(Duration::from_secs(1), combiner.call(7)).await;
        assert_eq!(answer.expect("no wait for company").expect("answered"), 7);
    }
}
