//! Database connections.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::config::DatabaseSettings;

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the database at {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("the database URL `{0}` is not a valid URL")]
    BadUrl(String),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Connects a pool. With `settings.schema` set, every connection of the pool uses that schema
/// (tests give each test its own).
///
/// # Errors
/// The server is unreachable or refuses the credentials.
pub async fn connect(url: &str, settings: &DatabaseSettings) -> Result<DatabaseConnection, Error> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(settings.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        // Statement logging at INFO would print every query; keep it for RUST_LOG=sqlx=debug.
        .sqlx_logging(false);
    if is_sqlite(url) {
        opts.map_sqlx_sqlite_opts(sqlite_options);
    } else if let Some(schema) = &settings.schema {
        opts.set_schema_search_path(schema.clone());
    }
    Database::connect(opts)
        .await
        .map_err(|source| Error::Connect {
            url: redact(url),
            source,
        })
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// SQLite as a server-less store: the file is created when missing; write-ahead logging lets
/// readers go on while one writer commits, and `synchronous = NORMAL` is durable with WAL
/// across process crashes (only a power loss can drop the last commits); writers wait for each
/// other instead of failing with "database is locked". An 8 MiB page cache per connection
/// (SQLite's default is 2 MiB; the OS caches the file besides): 32 MiB made a 200,000-resource
/// collection no faster and the process 45–55 MB larger (BENCHMARKS.md, "Standalone ingest").
fn sqlite_options(o: SqliteConnectOptions) -> SqliteConnectOptions {
    o.create_if_missing(true)
        .pragma("cache_size", "-8192")
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true)
}

/// Creates the PostgreSQL database named in `url` if it does not exist yet, so that
/// `gleaner migrate` works on a fresh server.
///
/// # Errors
/// The server is unreachable, or the user may not create databases.
pub async fn ensure_database(url: &str) -> Result<(), Error> {
    if !url.starts_with("postgres") {
        return Ok(());
    }
    let (base, name) = split_database(url).ok_or_else(|| Error::BadUrl(redact(url)))?;
    let admin_url = format!("{base}/postgres");
    let admin = Database::connect(
        ConnectOptions::new(admin_url.clone())
            .sqlx_logging(false)
            .to_owned(),
    )
    .await
    .map_err(|source| Error::Connect {
        url: redact(&admin_url),
        source,
    })?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.clone().into()],
        ))
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match admin
            .execute_unprepared(&format!("CREATE DATABASE \"{quoted}\""))
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE (PostgreSQL reports
            // the race as a duplicate key in pg_database rather than "already exists").
            Err(e)
                if e.to_string().contains("already exists")
                    || e.to_string().contains("pg_database_datname_index") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Splits `postgres://user@host:port/db?params` into the part before the database and the
/// database name.
fn split_database(url: &str) -> Option<(String, String)> {
    let without_query = url.split('?').next()?;
    let scheme_end = without_query.find("://")? + 3;
    let slash = without_query[scheme_end..].find('/')? + scheme_end;
    let name = &without_query[slash + 1..];
    if name.is_empty() {
        return None;
    }
    Some((without_query[..slash].to_owned(), name.to_owned()))
}

/// The URL with any password replaced, for error messages and logs.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_file_is_created_in_wal_mode_with_foreign_keys() {
        let dir = std::env::temp_dir().join(format!("gleaner-db-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gleaner.db");
        let url = format!("sqlite://{}", file.display());
        let db = connect(&url, &DatabaseSettings::default())
            .await
            .expect("connects, creating the file");
        let pragma = |sql: &'static str| {
            let db = db.clone();
            async move {
                let row = db
                    .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
                    .await
                    .expect("pragma")
                    .expect("a row");
                row.try_get_by_index::<String>(0)
                    .or_else(|_| row.try_get_by_index::<i64>(0).map(|v| v.to_string()))
                    .expect("value")
            }
        };
        assert_eq!(pragma("PRAGMA journal_mode").await, "wal");
        assert_eq!(pragma("PRAGMA foreign_keys").await, "1");
        assert!(file.exists());
        db.close().await.ok();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn database_name_is_split_off() {
        assert_eq!(
            split_database("postgres://root@127.0.0.1:5432/gleaner?sslmode=disable"),
            Some(("postgres://root@127.0.0.1:5432".into(), "gleaner".into()))
        );
        assert_eq!(split_database("postgres://root@127.0.0.1:5432/"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
