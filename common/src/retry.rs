//! Retrying with exponential backoff and jitter.
//!
//! The only module that uses the `backoff` crate, which is unmaintained: callers pass a plain
//! [`RetryPolicy`], so replacing the crate touches this file alone.

use std::future::Future;
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff as _;

/// How to retry: delays grow from `initial` by `multiplier` up to `max`, each randomised by
/// ±`jitter`, for at most `max_attempts` attempts in all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.3,
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// A policy that never gives up, for connections a process cannot work without.
    #[must_use]
    pub fn forever(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            max_attempts: u32::MAX,
            ..Self::default()
        }
    }

    /// The sequence of delays this policy waits between attempts.
    #[must_use]
    pub fn delays(&self) -> Delays {
        let inner = ExponentialBackoff {
            current_interval: self.initial,
            initial_interval: self.initial,
            randomization_factor: self.jitter,
            multiplier: self.multiplier,
            max_interval: self.max,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Delays {
            inner,
            remaining: self.max_attempts.saturating_sub(1),
        }
    }

    /// The delay before attempt `attempt` (1-based: the delay after the first failure is
    /// `delay_for(2)`), without jitter: for retry queues whose delay must be fixed per tier.
    #[must_use]
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(2)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The delay, with jitter, before attempt `attempt` (1-based: the delay after the first
    /// failure is `jittered_delay_for(2)`); the maximum once the policy's attempts are used up.
    #[must_use]
    pub fn jittered_delay_for(&self, attempt: u32) -> Duration {
        let uncapped = RetryPolicy {
            max_attempts: u32::MAX,
            ..*self
        };
        uncapped
            .delays()
            .nth(attempt.saturating_sub(2) as usize)
            .unwrap_or(self.max)
    }

    /// Runs `op` until it succeeds, `should_retry` says an error is permanent, or attempts
    /// run out. Each retried error is logged with the delay before the next attempt.
    ///
    /// # Errors
    /// The last error of `op`.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        mut should_retry: impl FnMut(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut delays = self.delays();
        let mut attempt = 1u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let Some(delay) = delays.next().filter(|_| should_retry(&e)) else {
                        return Err(e);
                    };
                    tracing::warn!(what, attempt, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Delays between attempts; ends when the policy's attempts are used up.
pub struct Delays {
    inner: ExponentialBackoff,
    remaining: u32,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.inner.next_backoff()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_grow_within_jitter_and_stop_at_max_attempts() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            multiplier: 2.0,
            jitter: 0.25,
            max_attempts: 5,
        };
        let d: Vec<_> = p.delays().collect();
        assert_eq!(d.len(), 4);
        let bounds = [(75, 125), (150, 250), (300, 500), (300, 500)];
        for (got, (lo, hi)) in d.iter().zip(bounds) {
            let ms = got.as_millis();
            assert!((lo..=hi).contains(&ms), "{ms} not in {lo}..={hi}");
        }
    }

    #[test]
    fn fixed_delay_per_attempt_is_capped() {
        let p = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay_for(2), Duration::from_secs(1));
        assert_eq!(p.delay_for(3), Duration::from_secs(2));
        assert_eq!(p.delay_for(10), Duration::from_secs(5));
    }

    #[test]
    fn jittered_delays_grow_per_attempt() {
        let p = RetryPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.3,
            max_attempts: 3,
        };
        for (attempt, (lo, hi)) in [
            (2, (7_000, 13_000)),
            (3, (14_000, 26_000)),
            (9, (42_000, 78_000)),
        ] {
            let ms = p.jittered_delay_for(attempt).as_millis();
            assert!((lo..=hi).contains(&ms), "attempt {attempt}: {ms} ms");
        }
    }

    #[tokio::test]
    async fn run_retries_transient_errors_and_stops_on_permanent_ones() {
        let p = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_attempts: 4,
            ..RetryPolicy::default()
        };
        let calls = AtomicU32::new(0);
        let ok: Result<u32, String> = p
            .run(
                "test",
                |_| true,
                || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if n < 3 {
                        Err(format!("transient {n}"))
                    } else {
                        Ok(n)
                    }
                },
            )
            .await;
        assert_eq!(ok, Ok(3));

        calls.store(0, Ordering::SeqCst);
        let err: Result<(), String> = p
            .run(
                "test",
                |e: &String| !e.starts_with("permanent"),
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("permanent".to_owned())
                },
            )
            .await;
        assert_eq!(err, Err("permanent".to_owned()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
