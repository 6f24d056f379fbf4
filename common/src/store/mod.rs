//! Store functions: the only code that reads and writes rows.
//!
//! Each takes `&impl ConnectionTrait`, so the caller owns the transaction (a job row and its
//! outbox row commit together), and returns domain types, never entity `Model`s.

pub mod census;
pub mod collector;
pub mod cost;
pub mod job;
pub mod merge;
pub mod outbox;
pub mod plugin;
pub mod project;
pub mod resource;
pub mod schedule;
pub mod service_account;
pub mod task;

use sea_orm::{DbErr, SqlErr, SqliteTransactionMode, TransactionOptions, TransactionTrait};

use crate::crypto::CryptoError;
use crate::model::Invalid;

/// What can go wrong in a store function.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what} `{id}` was not found")]
    NotFound { what: &'static str, id: String },
    /// A value is taken: `field` names the input that clashed.
    #[error("{detail}")]
    Conflict { field: &'static str, detail: String },
    /// The request is valid but the state of the data refuses it.
    #[error("{0}")]
    State(String),
    #[error("invalid input")]
    Invalid(Vec<Invalid>),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// `type Result<T> = Result<T, store::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// Whether retrying the same call may succeed (a lost connection, a serialization failure).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => is_transient(e),
            _ => false,
        }
    }
}

/// Begins a transaction that will write. On SQLite it takes the write lock at `BEGIN`
/// (`BEGIN IMMEDIATE`), waiting for the busy timeout if another writer holds it: a deferred
/// transaction that reads first fails at once with "database is locked" when another
/// connection commits between its read and its first write. PostgreSQL ignores the mode.
///
/// # Errors
/// Database errors only.
pub async fn begin_write<C: TransactionTrait>(db: &C) -> Result<C::Transaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// Whether a database error is about the connection rather than the statement.
#[must_use]
pub fn is_transient(e: &DbErr) -> bool {
    matches!(e, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) || {
        let s = e.to_string();
        s.contains("connection")
            || s.contains("database is locked")
            || s.contains("could not serialize")
            || s.contains("deadlock detected")
    }
}

/// Whether `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}
