//! Domain vocabulary shared by every component: kinds, states and values with rules.
//!
//! The enums are stored as text (SeaORM active enums over `String`), so the same column works on
//! PostgreSQL and SQLite and a row read by `psql` says what it means.

use std::fmt;

use sea_orm::{DeriveActiveEnum, EnumIter};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an API key may do. Each role may do what the ones below it may.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads only.
    #[sea_orm(string_value = "viewer")]
    Viewer,
    /// Projects, service accounts, collectors, schedules, collections, cancels, costs.
    #[sea_orm(string_value = "member")]
    Member,
    /// Everything: API keys, private plugins, the audit log, the domain's settings.
    #[sea_orm(string_value = "admin")]
    Admin,
}

impl Role {
    /// The name used in JSON and in the database.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

/// What a job collects. Each kind has its own queue, so a backlog of one never starves another.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[sea_orm(string_value = "inventory")]
    Inventory,
    #[sea_orm(string_value = "billing")]
    Billing,
    #[sea_orm(string_value = "metrics")]
    Metrics,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Inventory, JobKind::Billing, JobKind::Metrics];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Inventory => "inventory",
            JobKind::Billing => "billing",
            JobKind::Metrics => "metrics",
        }
    }
}

/// A job's state. QUEUED → IN_PROGRESS → one of the terminal states.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    #[sea_orm(string_value = "QUEUED")]
    Queued,
    #[sea_orm(string_value = "IN_PROGRESS")]
    InProgress,
    #[sea_orm(string_value = "SUCCESS")]
    Success,
    #[sea_orm(string_value = "FAILURE")]
    Failure,
    #[sea_orm(string_value = "CANCELED")]
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::InProgress,
        JobStatus::Success,
        JobStatus::Failure,
        JobStatus::Canceled,
    ];

    /// The name stored and shown by the API (`SUCCESS`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Success => "SUCCESS",
            JobStatus::Failure => "FAILURE",
            JobStatus::Canceled => "CANCELED",
        }
    }

    #[must_use]
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failure | JobStatus::Canceled
        )
    }
}

/// A task's state; the same states as a job.
pub type TaskStatus = JobStatus;

/// Whether a collector may collect.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CollectorState {
    #[sea_orm(string_value = "ENABLED")]
    Enabled,
    #[sea_orm(string_value = "DISABLED")]
    Disabled,
}

/// Whether a schedule fires.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScheduleState {
    #[sea_orm(string_value = "ENABLED")]
    Enabled,
    #[sea_orm(string_value = "PAUSED")]
    Paused,
}

/// What became of one fire of a schedule.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FireOutcome {
    /// A job was queued (`job_id`).
    #[sea_orm(string_value = "QUEUED")]
    Queued,
    /// The collector's previous job was still queued or running (`reason`).
    #[sea_orm(string_value = "SKIPPED")]
    Skipped,
    /// No scheduler ran within the catch-up window after the fire time.
    #[sea_orm(string_value = "MISSED")]
    Missed,
}

/// Whether a collector follows the plugin's latest version or stays on the one it names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpgradeMode {
    #[sea_orm(string_value = "AUTO")]
    Auto,
    #[sea_orm(string_value = "MANUAL")]
    Manual,
}

/// Whether a stored resource was seen recently.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceState {
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "DELETED")]
    Deleted,
}

/// What happened to a resource in one change record.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeKind {
    #[sea_orm(string_value = "CREATED")]
    Created,
    #[sea_orm(string_value = "UPDATED")]
    Updated,
    #[sea_orm(string_value = "DELETED")]
    Deleted,
}

/// How a job came to be.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize, ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    #[sea_orm(string_value = "manual")]
    Manual,
    #[sea_orm(string_value = "schedule")]
    Schedule,
}

/// What a job or task did to the stored data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
    pub failed: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.failed += o.failed;
    }
}

impl Counts {
    /// Items the task stored or confirmed.
    #[must_use]
    pub const fn seen(&self) -> i64 {
        self.created + self.updated + self.unchanged
    }
}

/// A value that broke a rule, named by field, for the API to report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct Invalid {
    pub field: String,
    pub detail: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// A name of a project, collector or service account: 1–255 characters, not blank, no control
/// characters (they break consoles and logs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// # Errors
    /// The name is blank, too long, or has control characters.
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > 255 {
            return Err(Invalid::new(field, "must be at most 255 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(Invalid::new(field, "must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    #[must_use]
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What makes a request to collect idempotent: an HTTP `Idempotency-Key`, or a queue request's
/// `request_id`. 1–255 visible ASCII characters (what an HTTP header value may hold without
/// encoding), compared exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key.
    pub const MAX_LEN: usize = 255;

    /// # Errors
    /// The key is empty, too long, or has a character that is not visible ASCII.
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(Invalid::new(field, "must be at most 255 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid::new(
                field,
                "must be visible ASCII characters only (no spaces)",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A collector's priority: a lower number wins when collectors report the same field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Priority(i32);

impl Priority {
    pub const DEFAULT: Priority = Priority(10);
    const MAX: i32 = 1_000_000;

    /// # Errors
    /// The number is negative or above 1,000,000.
    pub fn new(field: &str, value: i64) -> Result<Self, Invalid> {
        if !(0..=i64::from(Self::MAX)).contains(&value) {
            return Err(Invalid::new(
                field,
                format!("must be between 0 and {}", Self::MAX),
            ));
        }
        Ok(Self(i32::try_from(value).unwrap_or(Self::MAX)))
    }

    #[must_use]
    pub const fn get(self) -> i32 {
        self.0
    }
}

/// How long a job may run, from its acceptance, before it fails with reason "timeout".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobTimeout(i32);

impl JobTimeout {
    /// Two hours: long enough for a large estate, short enough that a stuck job is noticed the
    /// same day.
    pub const DEFAULT: JobTimeout = JobTimeout(7200);
    /// A week: a collection longer than that is a bug, not a workload.
    const MAX: i32 = 7 * 24 * 3600;

    /// # Errors
    /// Below one second or above a week.
    pub fn new(field: &str, seconds: i64) -> Result<Self, Invalid> {
        if !(1..=i64::from(Self::MAX)).contains(&seconds) {
            return Err(Invalid::new(
                field,
                format!("must be between 1 and {} seconds", Self::MAX),
            ));
        }
        Ok(Self(i32::try_from(seconds).unwrap_or(Self::MAX)))
    }

    #[must_use]
    pub const fn seconds(self) -> i32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_wire_names() {
        for status in JobStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).expect("serializes"),
                status.as_str()
            );
            assert_eq!(
                sea_orm::ActiveEnum::to_value(&status).as_str(),
                status.as_str()
            );
        }
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            Name::parse("name", "  prod ").expect("valid").as_str(),
            "prod"
        );
        let cases = [
            ("", "empty"),
            ("   ", "blank"),
            ("a\nb", "control character"),
            (&"x".repeat(256), "too long"),
        ];
        for (input, why) in cases {
            let err = Name::parse("name", input).expect_err(why);
            assert_eq!(err.field, "name", "{why}");
        }
    }

    #[test]
    fn priority_bounds() {
        assert_eq!(
            Priority::new("priority", 0).expect("zero is valid").get(),
            0
        );
        assert!(Priority::new("priority", -1).is_err());
        assert!(Priority::new("priority", 1_000_001).is_err());
    }

    #[test]
    fn job_status_wire_names_are_screaming() {
        assert_eq!(
            serde_json::to_string(&JobStatus::InProgress).expect("json"),
            "\"IN_PROGRESS\""
        );
        assert!(JobStatus::Canceled.is_terminal());
        assert!(!JobStatus::Queued.is_terminal());
    }
}
