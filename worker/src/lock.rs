//! Locks that keep two collections of the same collector and service account from running at
//! once: in Redis when workers are distributed, in process in the standalone mode.
//!
//! A Redis lock is a key set with `NX` and an expiry, holding a random token: it is renewed
//! while held and released only by its holder (compare-and-delete), and a worker that dies
//! without releasing it frees it when the expiry passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use gleaner_common::lifecycle::Claimed;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Context;
use crate::plugin::TargetScope;

/// A held lock; dropping it releases the lock.
pub struct Held {
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
    lost: CancellationToken,
}

impl Held {
    /// A lock that guards nothing (a task without a collector has nothing to exclude).
    #[must_use]
    pub fn none() -> Self {
        Self {
            on_drop: None,
            lost: CancellationToken::new(),
        }
    }

    /// Cancelled if the lock was lost while held (it expired in Redis): the holder must stop,
    /// since another collection may now take it.
    #[must_use]
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Two locks held as one: lost when either is, released together.
    #[must_use]
    pub fn both(mut a: Held, mut b: Held) -> Held {
        let lost = CancellationToken::new();
        for token in [a.lost.clone(), b.lost.clone()] {
            let lost = lost.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = token.cancelled() => lost.cancel(),
                    () = lost.cancelled() => {}
                }
            });
        }
        let (first, second) = (a.on_drop.take(), b.on_drop.take());
        let done = lost.clone();
        Held {
            lost,
            on_drop: Some(Box::new(move || {
                // Ends the watchers above, whichever way the locks went.
                done.cancel();
                for release in [first, second].into_iter().flatten() {
                    release();
                }
            })),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(release) = self.on_drop.take() {
            release();
        }
    }
}

/// Why a lock could not be asked for.
#[derive(Debug, thiserror::Error)]
#[error("the lock service failed: {0}")]
pub struct LockError(String);

/// A set of named locks.
#[async_trait]
pub trait Locks: Send + Sync {
    /// Takes `key` if nobody holds it, or if `owner` does: the holders of one owner share the
    /// lock (the parts of one job's collection of an account), and it is free once the last
    /// of them let it go. `None` as owner is a holder of its own. `None` when another owner
    /// holds it.
    ///
    /// # Errors
    /// The lock service is unreachable.
    async fn try_acquire(&self, key: &str, owner: Option<&str>) -> Result<Option<Held>, LockError>;
}

/// In-process locks, for the standalone mode (one process per data directory): each key's
/// owner and how many of its holders hold it.
#[derive(Clone, Default)]
pub struct LocalLocks(Arc<Mutex<HashMap<String, (String, usize)>>>);

#[async_trait]
impl Locks for LocalLocks {
    async fn try_acquire(&self, key: &str, owner: Option<&str>) -> Result<Option<Held>, LockError> {
        let owner = owner.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match held.get_mut(key) {
            Some((o, holders)) if *o == owner => *holders += 1,
            Some(_) => return Ok(None),
            None => {
                held.insert(key.to_owned(), (owner, 1));
            }
        }
        let (set, key) = (self.0.clone(), key.to_owned());
        Ok(Some(Held {
            lost: CancellationToken::new(),
            on_drop: Some(Box::new(move || {
                let mut held = set.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((_, holders)) = held.get_mut(&key) {
                    *holders -= 1;
                    if *holders == 0 {
                        held.remove(&key);
                    }
                }
            })),
        }))
    }
}

/// Locks in Redis, shared by every worker.
#[derive(Clone)]
pub struct RedisLocks {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

/// A lock is two keys: the owner (`KEYS[1]`) and the set of its holders' tokens (`KEYS[2]`),
/// expiring together. ARGV: owner, holder token, expiry in milliseconds.
const ACQUIRE: &str = "local owner = redis.call('get', KEYS[1]) \
    if owner and owner ~= ARGV[1] then return 0 end \
    if not owner then redis.call('del', KEYS[2]) end \
    redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[3]) \
    redis.call('sadd', KEYS[2], ARGV[2]) \
    redis.call('pexpire', KEYS[2], ARGV[3]) \
    return 1";
const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] \
    and redis.call('sismember', KEYS[2], ARGV[2]) == 1 then \
    redis.call('pexpire', KEYS[1], ARGV[3]) \
    return redis.call('pexpire', KEYS[2], ARGV[3]) else return 0 end";
/// The last holder of an owner frees the lock. A holder that died stays in the set until the
/// lock expires, which the owner's other holders keep from happening while they live.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
    redis.call('srem', KEYS[2], ARGV[2]) \
    if redis.call('scard', KEYS[2]) == 0 then redis.call('del', KEYS[1], KEYS[2]) end \
    return 1 else return 0 end";

impl RedisLocks {
    /// Connects to Redis; keys are `<prefix>:lock:<key>` (and its holders,
    /// `<prefix>:lock:<key>:holders`) and expire `ttl` after a holder last renewed them (every
    /// third of `ttl`).
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, LockError> {
        let client = redis::Client::open(url).map_err(|e| LockError(e.to_string()))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| LockError(format!("{}: {e}", gleaner_common::db::redact(url))))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one of the lock scripts on a lock's two keys.
async fn script(
    conn: &mut ConnectionManager,
    source: &str,
    keys: &[String; 2],
    (owner, token, ttl): (&str, &str, Duration),
) -> redis::RedisResult<i64> {
    redis::Script::new(source)
        .key(&keys[0])
        .key(&keys[1])
        .arg(owner)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async(conn)
        .await
}

#[async_trait]
impl Locks for RedisLocks {
    async fn try_acquire(&self, key: &str, owner: Option<&str>) -> Result<Option<Held>, LockError> {
        // The key a lock has always had (workers of an older version take it with `SET NX`):
        // a rolling upgrade keeps excluding them.
        let lock = format!("{}:lock:{key}", self.prefix);
        let keys = [lock.clone(), format!("{lock}:holders")];
        let token = uuid::Uuid::new_v4().to_string();
        let owner = owner.map_or_else(|| token.clone(), str::to_owned);
        let mut conn = self.conn.clone();
        let taken = script(&mut conn, ACQUIRE, &keys, (&owner, &token, self.ttl))
            .await
            .map_err(|e| LockError(e.to_string()))?;
        if taken != 1 {
            return Ok(None);
        }
        let ttl = self.ttl;
        let lost = CancellationToken::new();
        let renew_lost = lost.clone();
        let (renew_keys, renew_owner, renew_token, mut renew_conn) =
            (keys.clone(), owner.clone(), token.clone(), conn.clone());
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let renewed = script(
                    &mut renew_conn,
                    RENEW,
                    &renew_keys,
                    (&renew_owner, &renew_token, ttl),
                )
                .await;
                match renewed {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!(key = %renew_keys[0], "a collection lock expired while held");
                        renew_lost.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(key = %renew_keys[0], error = %e, "renewing a collection lock failed")
                    }
                }
            }
        });
        Ok(Some(Held {
            lost,
            on_drop: Some(Box::new(move || {
                renewal.abort();
                // Drop cannot wait: release in the background; the expiry covers a failure.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let released =
                            script(&mut conn, RELEASE, &keys, (&owner, &token, ttl)).await;
                        if let Err(e) = released {
                            tracing::warn!(key = %keys[0], error = %e, "releasing a collection lock failed; it expires by itself");
                        }
                    });
                }
            })),
        }))
    }
}

/// The lock of the collections of one collector for one service account.
#[must_use]
pub fn collection_key(collector: &str, service_account: Option<&str>) -> String {
    format!("collect:{collector}:{}", service_account.unwrap_or("-"))
}

/// How often a task waiting for the collection lock asks again.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// Waits until no other collection of the same collector and service account runs, and takes
/// its lock (the documented rule: the later collection waits, its task claimed and leased, rather
/// than overlap or be skipped). `None` when the worker stops while waiting.
pub(crate) async fn wait_for_collection(
    ctx: &Context,
    claimed: &Claimed,
    stop: &CancellationToken,
) -> Result<Option<Held>, LockError> {
    let Some(collector) = claimed.collector_id else {
        return Ok(Some(Held::none()));
    };
    // A metric series belongs to a resource, not to a collector: two metric collectors of one
    // account would both append after the same watermarks, so they take turns. A source that
    // collects for its project's resources (`prometheus`) shares them with every account of
    // its kind in the domain (two servers of one project, or one without a project): those
    // tasks take turns domain-wide.
    let key = if claimed.kind == gleaner_common::model::JobKind::Metrics {
        let shared = ctx
            .registry
            .get(&claimed.plugin_id)
            .and_then(|p| p.metric_targets(&claimed.options).ok())
            .is_some_and(|scope| matches!(scope, TargetScope::Project(_)));
        if shared {
            collection_key("metrics", Some(&format!("domain-{}", claimed.domain)))
        } else {
            collection_key(
                "metrics",
                claimed.service_account_id.map(|s| s.to_string()).as_deref(),
            )
        }
    } else {
        collection_key(
            &collector.to_string(),
            claimed.service_account_id.map(|s| s.to_string()).as_deref(),
        )
    };
    // The parts of one job's collection of an account share its lock: they run at once, and
    // no other collection of the account runs while one of them (or its sweep) does. Each
    // part also holds a lock of its own, so that a part's next attempt waits for a previous
    // one still running, as a whole collection's does.
    let owner = claimed
        .sub_task
        .as_ref()
        .map(|_| format!("job-{}", claimed.job_id));
    let part_key = claimed.sub_task.as_ref().map(|part| {
        format!(
            "{key}:job-{}:part-{}-of-{}",
            claimed.job_id, part.part, part.parts
        )
    });
    let take = || async {
        let part = match &part_key {
            Some(k) => match ctx.locks.try_acquire(k, None).await? {
                Some(held) => Some(held),
                None => return Ok(None),
            },
            None => None,
        };
        let Some(account) = ctx.locks.try_acquire(&key, owner.as_deref()).await? else {
            return Ok(None);
        };
        Ok(Some(match part {
            Some(part) => Held::both(account, part),
            None => account,
        }))
    };
    let mut waited = false;
    loop {
        let attempt = ctx
            .db_retry
            .run("take the collection lock", |_: &LockError| true, take)
            .await?;
        if let Some(held) = attempt {
            if waited {
                info!("the other collection ended; starting");
            }
            return Ok(Some(held));
        }
        if !waited {
            info!("another collection of this collector and account is running; waiting for it");
            waited = true;
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exclusive(locks: &dyn Locks) {
        let key = format!("t-{}", uuid::Uuid::new_v4());
        let held = locks
            .try_acquire(&key, None)
            .await
            .expect("lock")
            .expect("free");
        assert!(locks.try_acquire(&key, None).await.expect("lock").is_none());
        assert!(
            locks
                .try_acquire(&format!("{key}-other"), None)
                .await
                .expect("lock")
                .is_some()
        );
        drop(held);
        released(locks, &key, None).await;
    }

    /// Waits until `owner` can take `key` (Redis releases in the background).
    async fn released(locks: &dyn Locks, key: &str, owner: Option<&str>) {
        for _ in 0..100 {
            if locks.try_acquire(key, owner).await.expect("lock").is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the lock was not released");
    }

    /// Holders of one owner share the lock; others wait until the last of them is gone.
    async fn shared(locks: &dyn Locks) {
        let key = format!("t-{}", uuid::Uuid::new_v4());
        let first = locks
            .try_acquire(&key, Some("job-1"))
            .await
            .expect("lock")
            .expect("free");
        let second = locks
            .try_acquire(&key, Some("job-1"))
            .await
            .expect("lock")
            .expect("shared");
        assert!(
            locks
                .try_acquire(&key, Some("job-2"))
                .await
                .expect("lock")
                .is_none()
        );
        assert!(locks.try_acquire(&key, None).await.expect("lock").is_none());
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            locks.try_acquire(&key, None).await.expect("lock").is_none(),
            "one holder of job-1 is left"
        );
        drop(second);
        released(locks, &key, Some("job-2")).await;
    }

    #[tokio::test]
    async fn local_locks_are_shared_by_an_owner_only() {
        shared(&LocalLocks::default()).await;
    }

    #[tokio::test]
    async fn local_locks_are_exclusive_until_dropped() {
        exclusive(&LocalLocks::default()).await;
    }

    /// On the real Redis of the test machine.
    #[tokio::test]
    async fn redis_locks_are_exclusive_until_dropped_and_renewed_while_held() {
        let prefix = format!("gleaner-test-{}", uuid::Uuid::new_v4());
        let locks = RedisLocks::connect(
            "redis://127.0.0.1:6379",
            &prefix,
            Duration::from_millis(300),
        )
        .await
        .expect("redis");
        exclusive(&locks).await;
        shared(&locks).await;
        // Held past several expiries: renewal keeps it.
        let held = locks
            .try_acquire("renewed", None)
            .await
            .expect("lock")
            .expect("free");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            locks
                .try_acquire("renewed", None)
                .await
                .expect("lock")
                .is_none()
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut conn = locks.conn.clone();
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .expect("keys");
        assert!(left.is_empty(), "{left:?}");
    }
}
