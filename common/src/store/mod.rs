//! Store functions: the only code that reads and writes rows.
//!
//! Each takes `&impl ConnectionTrait`, so the caller owns the transaction (a job row and its
//! outbox row commit together), and returns domain types, never entity `Model`s.

pub mod api_key;
pub mod audit;
pub mod catalog;
pub mod census;
pub mod collector;
pub mod cost;
pub mod idempotency;
pub mod job;
pub mod merge;
pub mod metric;
pub mod outbox;
pub mod plugin;
pub mod project;
pub mod resource;
pub mod schedule;
pub mod secret;
pub mod service_account;

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
    /// An idempotency key given again with another request than the one it was first given
    /// with.
    #[error("{0}")]
    KeyReused(String),
    /// Concurrent requests kept the call from completing; the same call again will.
    #[error("{0}")]
    Contended(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A stored secret that none of the configured keys opens; `owner` names the service
    /// accounts that use it.
    #[error("secret {secret} of {owner} cannot be decrypted: {cause}")]
    Undecryptable {
        secret: crate::id::SecretId,
        owner: String,
        cause: CryptoError,
    },
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
            Error::Contended(_) => true,
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

/// Whether a database error may pass if the same statement is tried again: the connection or
/// the pool failed, or the database asked to retry (a serialization failure, a deadlock, a busy
/// SQLite file, a server shutting down). Decided from the error's kind and SQLSTATE, never from
/// its words; anything else (a value the database refuses, a constraint, a bad query) fails
/// again the same way.
#[must_use]
pub fn is_transient(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        // A connection that could not be made, whatever the cause.
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            is_transient_sqlx(e)
        }
        _ => false,
    }
}

/// [`is_transient`] for an error of sqlx itself (the sinks write through sqlx).
#[must_use]
pub fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        // The connection broke, or its protocol state (a proxy cutting it, say).
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let Some(code) = d.code() else {
                return false;
            };
            if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                transient_sqlite(&code)
            } else {
                transient_sqlstate(&code)
            }
        }
        _ => false,
    }
}

/// PostgreSQL's SQLSTATEs worth a retry: class 08 (connection exception), 40001 (serialization
/// failure), 40P01 (deadlock), 53 (insufficient resources: too many connections, out of
/// memory or disk), 57014 (canceled: a `statement_timeout`, or an operator's
/// `pg_cancel_backend`), 57P01–57P03 (the server is shutting down, restarting or starting),
/// and 55P03 (a lock not available within `lock_timeout`).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001" | "40P01" | "57014" | "57P01" | "57P02" | "57P03" | "55P03"
        )
}

/// SQLite's result codes worth a retry: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their
/// extended codes (the primary code is the low byte).
fn transient_sqlite(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Whether `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Binds values as `$n` (PostgreSQL) or `?n` (SQLite) in the order they are pushed.
pub(crate) struct Params {
    pub(crate) values: Vec<sea_orm::Value>,
    mark: char,
}

impl Params {
    pub(crate) fn new(backend: sea_orm::DbBackend) -> Self {
        Self {
            values: Vec::new(),
            mark: if backend == sea_orm::DbBackend::Postgres {
                '$'
            } else {
                '?'
            },
        }
    }

    pub(crate) fn is_postgres(&self) -> bool {
        self.mark == '$'
    }

    pub(crate) fn push(&mut self, v: impl Into<sea_orm::Value>) -> String {
        self.values.push(v.into());
        format!("{}{}", self.mark, self.values.len())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;
    use std::sync::Arc;

    use sea_orm::RuntimeErr;

    use super::*;

    /// A PostgreSQL error with a SQLSTATE, as sqlx reports one.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Words that an error's text might hold: they must not decide anything.
            write!(
                f,
                "connection deadlock detected, could not serialize ({})",
                self.0
            )
        }
    }

    impl StdError for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "a database error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn exec(e: sqlx::Error) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
    }

    #[test]
    fn a_database_error_is_transient_by_its_sqlstate_not_its_words() {
        for (code, transient) in [
            ("40001", true),
            ("40P01", true),
            ("08006", true),
            ("57P01", true),
            ("53300", true),
            ("55P03", true),
            ("57014", true),
            // A value refused, a constraint, a syntax error, a raised exception.
            ("22021", false),
            ("23505", false),
            ("42601", false),
            ("P0001", false),
        ] {
            let e = exec(sqlx::Error::Database(Box::new(Sqlstate(code))));
            assert_eq!(is_transient(&e), transient, "{code}");
        }
    }

    #[test]
    fn connection_and_pool_failures_are_transient_and_decoding_is_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_transient(&exec(sqlx::Error::Io(io))));
        assert!(is_transient(&exec(sqlx::Error::PoolTimedOut)));
        assert!(is_transient(&DbErr::ConnectionAcquire(
            sea_orm::ConnAcquireErr::Timeout
        )));
        assert!(!is_transient(&exec(sqlx::Error::RowNotFound)));
        assert!(!is_transient(&DbErr::Type("connection".into())));
        assert!(!is_transient(&DbErr::Custom("database is locked".into())));
    }

    #[tokio::test]
    async fn a_busy_sqlite_file_is_transient() {
        use sqlx::ConnectOptions as _;
        let dir = std::env::temp_dir().join(format!("gleaner-busy-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("busy.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = options.connect().await.expect("a connection");
        let mut other = options.connect().await.expect("another connection");
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .expect("the write lock");
        let busy = sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .expect_err("the file is locked");
        assert!(is_transient_sqlx(&busy), "{busy}");
        let refused = sqlx::raw_sql("SELECT * FROM no_such_table")
            .execute(&mut holder)
            .await
            .expect_err("no such table");
        assert!(!is_transient_sqlx(&refused), "{refused}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
