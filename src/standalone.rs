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

    fn key_file(&self) -> PathBuf {
        self.path.join("secret.key")
    }

    fn previous_key_file(&self) -> PathBuf {
        self.path.join("secret.key.previous")
    }

    /// The credentials keys: `GLEANER_SECRET_KEY` (and `GLEANER_SECRET_KEY_PREVIOUS`) when set,
    /// otherwise the one kept in `secret.key`, created (readable by the owner only) on the
    /// first start, with the one kept in `secret.key.previous` while a rotation is unfinished
    /// (or else `GLEANER_SECRET_KEY_PREVIOUS`).
    /// `has_secrets`: credentials are already stored, so a new key would make them unreadable
    /// and is refused.
    ///
    /// # Errors
    /// A key file cannot be read or written, holds no valid key, or `secret.key` is missing
    /// while credentials are stored.
    pub fn secret_keys(&self, settings: &Settings, has_secrets: bool) -> anyhow::Result<Keys> {
        let file = self.key_file();
        let stored = read_key(&file)?;
        if let Some(key) = &settings.secret_key {
            let given = key.parse::<SecretKey>().ok().map(|k| k.id());
            if stored.as_ref().is_some_and(|s| Some(s.id()) != given) {
                tracing::warn!(file = %file.display(), "GLEANER_SECRET_KEY differs from the key file; using GLEANER_SECRET_KEY");
            }
            return Ok(Keys {
                current: key.clone(),
                previous: settings.secret_key_previous.clone(),
            });
        }
        if let Some(current) = stored {
            // An unfinished rotation's previous key is the one the data needs.
            let previous = match read_key(&self.previous_key_file())? {
                Some(p) => Some(p.to_hex()),
                None => settings.secret_key_previous.clone(),
            };
            return Ok(Keys {
                current: current.to_hex(),
                previous,
            });
        }
        if has_secrets {
            return Err(self.missing_key());
        }
        let key = SecretKey::generate().to_hex();
        self.write_key(&file, &key)?;
        info!(file = %file.display(), "created the key that encrypts credentials; back it up with the data");
        Ok(Keys {
            current: key,
            previous: settings.secret_key_previous.clone(),
        })
    }

    fn missing_key(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "credentials are stored in {} but {} is missing: restore it, or set \
             GLEANER_SECRET_KEY to the key they were stored with",
            self.path.display(),
            self.key_file().display()
        )
    }

    /// Writes `key` to `file` whole ([`write_private`]), the directory synced too, so the
    /// rename itself survives a power loss.
    fn write_key(&self, file: &Path, key: &str) -> anyhow::Result<()> {
        write_private(file, key)?;
        self.sync()
    }

    fn sync(&self) -> anyhow::Result<()> {
        #[cfg(unix)]
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.path.display()))?;
        Ok(())
    }

    /// The rotation of the key kept in `secret.key` to make: from that key to a new one, or,
    /// when `secret.key.previous` holds another key, the rotation an earlier run started and did
    /// not finish (its process died), from that key to the one in `secret.key`. Writes nothing:
    /// re-encrypt inside a transaction, then [`DataDir::keep_rotated_key`] before committing it,
    /// and [`DataDir::finish_key_rotation`] once it is durable.
    ///
    /// # Errors
    /// `secret.key` is missing while credentials are stored (without them, `None`: there is
    /// nothing to rotate), or a key file cannot be read.
    pub fn key_rotation(&self, has_secrets: bool) -> anyhow::Result<Option<KeyRotation>> {
        let Some(kept) = read_key(&self.key_file())? else {
            if has_secrets {
                return Err(self.missing_key());
            }
            return Ok(None);
        };
        if let Some(previous) = read_key(&self.previous_key_file())?
            && previous.id() != kept.id()
        {
            return Ok(Some(KeyRotation {
                current: kept,
                previous,
                resumed: true,
            }));
        }
        // (A `secret.key.previous` equal to `secret.key` was left by a run that died before it
        // replaced the key: that run changed nothing, and this one starts over.)
        Ok(Some(KeyRotation {
            current: SecretKey::generate(),
            previous: kept,
            resumed: false,
        }))
    }

    /// Keeps a new rotation's keys: the old key in `secret.key.previous` first, then the new one
    /// in `secret.key`, each written whole. A resumed rotation's keys are kept already. Call it
    /// after re-encrypting and before committing: at every point of the way, the two files hold
    /// every key a stored secret may need, and the standalone mode opens secrets with both.
    ///
    /// # Errors
    /// A key file cannot be written.
    pub fn keep_rotated_key(&self, rotation: &KeyRotation) -> anyhow::Result<()> {
        if rotation.resumed {
            return Ok(());
        }
        self.write_key(&self.previous_key_file(), &rotation.previous.to_hex())?;
        self.write_key(&self.key_file(), &rotation.current.to_hex())
    }

    /// Ends a rotation: removes `secret.key.previous`. Call it only once every secret is
    /// durably under the key in `secret.key`.
    ///
    /// # Errors
    /// The file cannot be removed.
    pub fn finish_key_rotation(&self) -> anyhow::Result<()> {
        let file = self.previous_key_file();
        match std::fs::remove_file(&file) {
            Ok(()) => self.sync(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
}

/// The keys a process of a data directory uses, as text (see [`Settings::cipher`]).
#[derive(Clone, Debug)]
pub struct Keys {
    pub current: String,
    pub previous: Option<String>,
}

/// A rotation of the key kept in a data directory: re-encrypt from `previous` to `current`.
#[derive(Debug)]
pub struct KeyRotation {
    pub current: SecretKey,
    pub previous: SecretKey,
    /// An earlier rotation's, which had stopped before its end.
    pub resumed: bool,
}

/// The key kept in `file`; `None` when there is no such file.
fn read_key(file: &Path) -> anyhow::Result<Option<SecretKey>> {
    match std::fs::read_to_string(file) {
        Ok(text) => text
            .parse::<SecretKey>()
            .map(Some)
            .with_context(|| format!("{} does not hold a valid key", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
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
    // SQLite has one writer, and each connection keeps its own page cache: a few
    // connections serve the API and the dispatcher as well as twenty, with less memory.
    settings.database.max_connections = settings.database.max_connections.min(STANDALONE_POOL);
    let db = app::database(&settings, true).await?;
    let has_secrets = store::service_account::secrets_stored(&db).await?;
    let keys = dir.secret_keys(&settings, has_secrets)?;
    settings.secret_key = Some(keys.current);
    settings.secret_key_previous = keys.previous;

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
        let created = dir.secret_keys(&settings, false).expect("created");
        assert!(created.current.parse::<SecretKey>().is_ok());
        assert_eq!(created.previous, None);
        assert_eq!(
            dir.secret_keys(&settings, true).expect("read back").current,
            created.current
        );
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
        assert_eq!(
            dir.secret_keys(&from_env, true).expect("given").current,
            given
        );
        std::fs::write(path.join("secret.key"), "not a key").expect("overwrite");
        assert!(
            dir.secret_keys(&settings, false).is_err(),
            "a corrupt key file is an error"
        );
        std::fs::remove_file(path.join("secret.key")).expect("remove");
        let refused = dir
            .secret_keys(&settings, true)
            .expect_err("no new key over stored credentials");
        assert!(refused.to_string().contains("is missing"), "{refused:#}");
        std::fs::remove_dir_all(&path).ok();
    }

    fn keys_of(dir: &DataDir) -> (String, Option<String>) {
        let keys = dir.secret_keys(&Settings::default(), true).expect("keys");
        (keys.current, keys.previous)
    }

    /// Each state a rotation can be stopped in leaves files from which a start reads both keys
    /// the data may need, and from which the next rotation resumes.
    #[test]
    fn a_rotation_of_the_kept_key_can_stop_anywhere() {
        let path = temp_dir();
        let dir = DataDir::open(&path).expect("open");
        assert!(
            dir.key_rotation(false).expect("no key yet").is_none(),
            "nothing to rotate before the first start"
        );
        assert!(
            dir.key_rotation(true).is_err(),
            "a missing key over stored credentials is an error"
        );
        let old = dir
            .secret_keys(&Settings::default(), false)
            .expect("created")
            .current;

        // Planned only: nothing written, so stopping here changes nothing.
        let rotation = dir.key_rotation(true).expect("plans").expect("a key");
        assert!(!rotation.resumed);
        assert_eq!(rotation.previous.to_hex(), old);
        let new = rotation.current.to_hex();
        assert_ne!(new, old);
        assert_eq!(keys_of(&dir), (old.clone(), None));
        assert_ne!(
            dir.key_rotation(true)
                .expect("plans")
                .expect("a key")
                .current
                .to_hex(),
            new,
            "each plan makes a key of its own"
        );

        // Kept: the new key in `secret.key`, the old one beside it.
        dir.keep_rotated_key(&rotation).expect("kept");
        assert_eq!(keys_of(&dir), (new.clone(), Some(old.clone())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path.join("secret.key.previous"))
                .expect("previous key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
        }

        // Stopped before the transaction committed (or before the old key was removed):
        // resumed with the same keys, which are kept already.
        let resumed = dir.key_rotation(true).expect("resumes").expect("a key");
        assert!(resumed.resumed);
        assert_eq!(
            (resumed.current.to_hex(), resumed.previous.to_hex()),
            (new.clone(), old.clone())
        );
        dir.keep_rotated_key(&resumed).expect("kept");
        assert_eq!(keys_of(&dir), (new.clone(), Some(old.clone())));
        dir.finish_key_rotation().expect("finishes");
        assert_eq!(keys_of(&dir), (new.clone(), None));
        dir.finish_key_rotation()
            .expect("finishing twice is harmless");

        // Stopped after the old key was copied but before the new one replaced it: that run
        // changed nothing, and the next one starts over with a key of its own.
        std::fs::write(path.join("secret.key.previous"), format!("{new}\n")).expect("copy");
        let again = dir.key_rotation(true).expect("plans").expect("a key");
        assert!(!again.resumed);
        assert_eq!(again.previous.to_hex(), new);
        assert_ne!(again.current.to_hex(), new);
        dir.keep_rotated_key(&again).expect("kept");
        assert!(
            !path.join("secret.key.partial").exists(),
            "no partial file is left"
        );
        std::fs::remove_dir_all(&path).ok();
    }
}
