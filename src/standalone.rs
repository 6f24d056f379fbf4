//! The standalone mode: the API, the worker pool and the scheduler in one process, with a
//! SQLite file for storage and the outbox table as the queue. Nothing else to install.
//!
//! Everything above the storage and broker seams is the code of the distributed mode: the same
//! API router, store functions, planner, runner and plugins. What differs is the sink
//! ([`SqliteSink`] instead of COPY into PostgreSQL) and the dispatch ([`local`] reads the
//! outbox instead of a relay publishing it to RabbitMQ).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use gleaner_common::config::{DatabaseSettings, Settings};
use gleaner_common::crypto::SecretKey;
use gleaner_common::outbox::Signal;
use gleaner_common::store;
use gleaner_scheduler::SystemClock;
use gleaner_worker::local::{self, DispatchSettings};
use gleaner_worker::lock::LocalLocks;
use gleaner_worker::sink::sqlite::SqliteSink;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app;

/// Writes `text` to `file`, readable by its owner only, whole or not at all: under another name
/// first, then renamed, so a crash leaves no half-written file.
///
/// # Errors
/// The file cannot be written.
pub fn write_private(file: &Path, text: &str) -> anyhow::Result<()> {
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    writeln!(f, "{text}").with_context(|| format!("writing {}", partial.display()))?;
    f.sync_all()?;
    std::fs::rename(&partial, file)
        .with_context(|| format!("renaming {} to {}", partial.display(), file.display()))
}

/// Gives the default domain an admin API key written to `file` (owner-only) when it has no key
/// that works: the first start of an installation. Returns whether it created one.
///
/// # Errors
/// The database or the file failed.
pub async fn bootstrap_admin_key(
    db: &sea_orm::DatabaseConnection,
    file: &Path,
) -> anyhow::Result<bool> {
    let Some(secret) = store::api_key::bootstrap(db, gleaner_common::id::DomainId::DEFAULT).await?
    else {
        return Ok(false);
    };
    write_private(file, secret.expose())?;
    info!(file = %file.display(), "created an admin API key of the default domain");
    Ok(true)
}

/// A data directory, held exclusively by this process while the value lives: two processes
/// on one SQLite file would each take the other's running tasks for orphans.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and locks it.
    ///
    /// # Errors
    /// The directory cannot be created, or another process holds it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("creating the data directory {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        let lock_path = path.join("gleaner.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another Gleaner is already using the data directory {}; stop it first, or \
                 pass a different --data-dir",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        Ok(Self { path, _lock: lock })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite database of this directory, as a URL: sqlx percent-decodes the path and cuts
    /// it at `?` or `#`, so those (and `%`) are escaped.
    #[must_use]
    pub fn database_url(&self) -> String {
        Self::database_url_of(&self.path)
    }

    /// [`DataDir::database_url`] of a directory this process does not hold (an operator's
    /// command beside a running standalone process: SQLite lets both write, one at a time).
    #[must_use]
    pub fn database_url_of(dir: &Path) -> String {
        let path = dir.join("gleaner.db").display().to_string();
        let escaped = path
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('#', "%23");
        format!("sqlite://{escaped}")
    }

    /// Where the default domain's first admin API key is written on the first start.
    #[must_use]
    pub fn admin_key_file(&self) -> PathBuf {
        self.path.join("admin.key")
    }

    /// The credentials key: `GLEANER_SECRET_KEY` when set, otherwise the one kept in
    /// `secret.key`, created (readable by the owner only) on the first start. `has_secrets`:
    /// credentials are already stored, so a new key would make them unreadable and is refused.
    ///
    /// # Errors
    /// The key file cannot be read or written, holds no valid key, or is missing while
    /// credentials are stored.
    pub fn secret_key(&self, settings: &Settings, has_secrets: bool) -> anyhow::Result<String> {
        let file = self.path.join("secret.key");
        let stored = match std::fs::read_to_string(&file) {
            Ok(text) => {
                let key = text.trim().to_owned();
                key.parse::<SecretKey>()
                    .with_context(|| format!("{} does not hold a valid key", file.display()))?;
                Some(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        if let Some(key) = &settings.secret_key {
            if stored.as_ref().is_some_and(|s| s != key) {
                tracing::warn!(file = %file.display(), "GLEANER_SECRET_KEY differs from the key file; using GLEANER_SECRET_KEY");
            }
            return Ok(key.clone());
        }
        if let Some(key) = stored {
            return Ok(key);
        }
        if has_secrets {
            bail!(
                "credentials are stored in {} but {} is missing: restore it, or set \
                 GLEANER_SECRET_KEY to the key they were stored with",
                self.path.display(),
                file.display()
            );
        }
        let key = SecretKey::generate().to_hex();
        write_private(&file, &key)?;
        info!(file = %file.display(), "created the key that encrypts credentials; back it up with the data");
        Ok(key)
    }
}

/// Connections of the standalone mode's main pool, at most.
const STANDALONE_POOL: u32 = 6;

/// Runs everything on `dir` until `shutdown`: applies migrations, serves the API on `listener`,
/// dispatches jobs and tasks in process (a task a previous process left running is taken over
/// when its message, still in the outbox, is delivered), and runs the scheduler. On shutdown the API stops taking requests, running tasks
/// get the worker grace period to finish and are then released for the next start.
///
/// # Errors
/// The database cannot be opened or migrated, or the server fails.
pub async fn run(
    settings: &Settings,
    dir: &DataDir,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The API's `/metrics` serves the in-process worker's metrics too: one recorder.
    gleaner_common::metrics::install();
    let mut settings = settings.clone();
    settings.database_url = dir.database_url();
    settings.database.schema = None;
    // SQLite has one writer, and each connection keeps its own 32 MB page cache: a few
    // connections serve the API and the dispatcher as well as twenty, with less memory.
    settings.database.max_connections = settings.database.max_connections.min(STANDALONE_POOL);
    let db = app::database(&settings, true).await?;
    let has_secrets = store::service_account::secrets_stored(&db).await?;
    settings.secret_key = Some(dir.secret_key(&settings, has_secrets)?);

    let signal = Signal::new();
    // Whatever the outbox holds from the previous run is dispatched at once.
    signal.notify();
    // The sink writes through a connection of its own: SQLite drops a connection's page cache
    // whenever another connection wrote since it last read, so batches sharing the pool with
    // the API and the task updates would re-read the indexes of `resources` each time (no
    // difference measured at 200,000 resources, where the OS cache holds them). Writers are
    // serialized by SQLite's write lock anyway, so one connection costs no parallelism.
    let sink_db = gleaner_common::db::connect(
        &settings.database_url,
        &DatabaseSettings {
            max_connections: 1,
            schema: None,
        },
    )
    .await?;
    let sink = Arc::new(SqliteSink::new(
        sink_db.get_sqlite_connection_pool().clone(),
    ));
    // This process owns the data directory (its lock file), so a task left running was left
    // by a previous process that was killed: it runs again, its attempt counted as failed,
    // before anything else starts.
    let recovered = gleaner_common::lifecycle::task::recover(&db).await?;
    if recovered != Default::default() {
        tracing::warn!(
            requeued = recovered.requeued,
            failed = recovered.failed,
            "tasks left running by a previous process were brought back"
        );
    }
    let ctx = app::worker_context(
        &settings,
        db.clone(),
        signal.clone(),
        sink,
        Arc::new(LocalLocks::default()),
    )?;
    let state = app::api_state(&settings, db.clone(), signal.clone(), None)?;
    let key_file = dir.admin_key_file();
    if bootstrap_admin_key(&db, &key_file).await? {
        println!(
            "An admin API key is in {0}: export GLEANER_API_KEY=$(cat {0})",
            key_file.display()
        );
    }
    // On stdout, beside the line that says where it listens.
    println!(
        "Try: curl -s -H \"authorization: Bearer $GLEANER_API_KEY\" http://{}/v1/plugins",
        listener.local_addr()?
    );

    let dispatch = DispatchSettings {
        poll_interval: settings.outbox.poll_interval,
        grace: settings.worker.shutdown_grace,
    };
    let mut dispatcher = tokio::spawn(local::run(ctx, dispatch, shutdown.clone()));
    let reaper = gleaner_worker::reaper::spawn(
        db.clone(),
        &settings.worker,
        signal.clone(),
        shutdown.clone(),
    );
    let scheduler = tokio::spawn({
        let (scheduler, signal, shutdown) = (
            app::scheduler(&settings, db.clone()),
            signal.clone(),
            shutdown.clone(),
        );
        async move {
            gleaner_scheduler::run(
                scheduler,
                "main".to_owned(),
                Arc::new(SystemClock),
                signal,
                shutdown,
            )
            .await;
        }
    });
    let serve = app::serve(state, listener, shutdown.clone());
    tokio::pin!(serve);
    // The dispatcher returns only on shutdown: if it ends before, jobs would be accepted and
    // never run, so the process stops instead. Either way the API finishes its requests.
    let served = tokio::select! {
        served = &mut serve => served,
        ended = &mut dispatcher => {
            if shutdown.is_cancelled() {
                serve.await
            } else {
                shutdown.cancel();
                serve.await.ok();
                Err(anyhow::anyhow!("the in-process dispatcher stopped unexpectedly: {ended:?}"))
            }
        }
    };
    shutdown.cancel();
    if !dispatcher.is_finished() {
        dispatcher.await.ok();
    }
    scheduler.await.ok();
    reaper.await.ok();
    db.close().await.ok();
    sink_db.close().await.ok();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("gleaner-datadir-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn a_data_directory_is_held_by_one_process_at_a_time() {
        let path = temp_dir();
        let first = DataDir::open(&path).expect("first open");
        let second = DataDir::open(&path).expect_err("the directory is held");
        assert!(
            second
                .to_string()
                .contains("already using the data directory"),
            "{second:#}"
        );
        drop(first);
        DataDir::open(&path).expect("free again once the first lets go");
        std::fs::remove_dir_all(&path).ok();
    }

    #[tokio::test]
    async fn a_data_directory_may_have_any_name() {
        let path = temp_dir().join("odd %41 name?x=1#frag");
        let dir = DataDir::open(&path).expect("open");
        let db = gleaner_common::db::connect(&dir.database_url(), &Default::default())
            .await
            .expect("connects");
        db.close().await.ok();
        assert!(
            path.join("gleaner.db").exists(),
            "the file is where it was asked"
        );
        std::fs::remove_dir_all(path.parent().expect("parent")).ok();
    }

    #[test]
    fn the_key_is_created_once_then_kept_unless_the_environment_gives_one() {
        let path = temp_dir();
        let dir = DataDir::open(&path).expect("open");
        let settings = Settings::default();
        let created = dir.secret_key(&settings, false).expect("created");
        assert!(created.parse::<SecretKey>().is_ok());
        assert_eq!(dir.secret_key(&settings, true).expect("read back"), created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path.join("secret.key"))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
        }
        let given = SecretKey::generate().to_hex();
        let from_env = Settings {
            secret_key: Some(given.clone()),
            ..Settings::default()
        };
        assert_eq!(dir.secret_key(&from_env, true).expect("given"), given);
        std::fs::write(path.join("secret.key"), "not a key").expect("overwrite");
        assert!(
            dir.secret_key(&settings, false).is_err(),
            "a corrupt key file is an error"
        );
        std::fs::remove_file(path.join("secret.key")).expect("remove");
        let refused = dir
            .secret_key(&settings, true)
            .expect_err("no new key over stored credentials");
        assert!(refused.to_string().contains("is missing"), "{refused:#}");
        std::fs::remove_dir_all(&path).ok();
    }
}
