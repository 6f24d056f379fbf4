//! The life of a job and of its tasks: every change of their state, each one a function of
//! this module, fenced so that a message delivered twice, a worker that died, or two processes
//! racing have one effect.
//!
//! # Life of a job
//!
//! | from          | transition            | to                     | writes with it                            |
//! |---------------|-----------------------|------------------------|-------------------------------------------|
//! | —             | [`job::enqueue`]      | QUEUED                 | `job.requested` message, `job.queued`     |
//! | QUEUED        | [`job::plan`]         | IN_PROGRESS            | one task per unit, their `task.requested` messages, `job.started` |
//! | QUEUED        | [`job::plan`] (no account) | FAILURE           | `job.failed`                              |
//! | IN_PROGRESS   | [`job::conclude`]     | SUCCESS or FAILURE     | `job.succeeded` / `job.failed`            |
//! | QUEUED, IN_PROGRESS | [`job::cancel`] | CANCELED               | its open tasks CANCELED, `job.canceled`   |
//! | QUEUED, IN_PROGRESS | [`job::expire`] | FAILURE "timeout"      | its open tasks FAILURE, `job.failed`      |
//!
//! A job ends when its last task does: [`job::conclude`] runs after every task's end, and the
//! reaper concludes a job whose last task's worker died between the two.
//!
//! # Life of a task
//!
//! A task belongs to one job and one service account (and, for billing, one month). Its
//! `attempt` counts the runs that started; a `task.requested` message names the attempt it
//! starts, so a message delivered twice, or late, starts nothing.
//!
//! | from        | transition          | to                 | writes with it                              |
//! |-------------|---------------------|--------------------|---------------------------------------------|
//! | QUEUED (n)  | [`task::claim`] (message n+1) | IN_PROGRESS (n+1), leased | — |
//! | IN_PROGRESS | [`task::heartbeat`] | IN_PROGRESS        | the lease, extended                         |
//! | IN_PROGRESS | [`task::end`] `Done`| SUCCESS or FAILURE | the sweep of what it no longer saw; then [`job::conclude`] |
//! | IN_PROGRESS | [`task::end`] `Retry` | QUEUED, or FAILURE when no attempt is left | the attempt in `previous_attempts`, a delayed `task.requested` |
//! | IN_PROGRESS | [`task::end`] `Released` | QUEUED (the attempt does not count) | `task.requested`         |
//! | IN_PROGRESS | [`task::reap`] (lease expired) | as `Retry`       | as `Retry`                                  |
//! | IN_PROGRESS | [`task::recover`] (standalone start) | as `Retry` | as `Retry`                                |
//! | QUEUED      | [`task::nudge`] (its message lost) | QUEUED | a new `task.requested`                      |
//! | QUEUED, IN_PROGRESS | its job's cancel or expiry | CANCELED or FAILURE | —                       |
//!
//! # Who owns a task
//!
//! A message only says that work exists. Once [`task::claim`] has committed the attempt and its
//! lease, the database owns the task: the dispatcher settles the message at once, and from then
//! on the lease, the heartbeats and the reaper ([`task::reap`]), never the broker, bring the task
//! back if its worker dies. A task may so run for hours without holding a broker delivery open.
//!
//! # Fencing
//!
//! Every write after the claim names the attempt ([`task::Attempt`]) and matches only while that
//! attempt runs (IN_PROGRESS, same attempt number). When it matches nothing, a newer attempt, a
//! cancel or a timeout owns the task, and the stale worker stops without writing. The sinks take
//! the same fence inside their own transactions through [`fence`].
//!
//! # The attempt budget
//!
//! Every run that did not end with an outcome counts against the task's `max_attempts`: a
//! transient failure, a lease that expired, a process that died, and an outcome the database
//! refused to store. Only a run handed back by a stopping worker does not. Once the attempts
//! are spent, the task ends FAILURE with the last reason.

pub mod fence;
pub mod job;
pub mod task;

pub use task::{Attempt, Claimed, Ended, Outcome};

/// Replaces NUL characters, which PostgreSQL refuses in text (and in JSON strings), so that a
/// plugin's stderr or message is kept rather than failing the write that records it.
#[must_use]
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_replaces_nul_characters_only() {
        assert_eq!(clean("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(
            clean("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }
}
