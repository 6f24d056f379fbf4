//! `gleaner rotate-secret-key`: re-encrypts every stored credential with the current key.
//!
//! Distributed: every process is deployed with the new key in `GLEANER_SECRET_KEY` and the old
//! one in `GLEANER_SECRET_KEY_PREVIOUS` (they seal with the new one and open with either), this
//! command moves what the old key sealed to the new one, then the previous key can go.
//!
//! Standalone (`--data-dir`), the key kept in the data directory: a new key is made, the
//! secrets are re-encrypted to it in a transaction, and before that transaction commits the old
//! key is copied to `secret.key.previous` and the new one replaces `secret.key`; the old key is
//! removed once the commit is durable. Stopped anywhere, the two files hold every key a secret
//! may need (the standalone mode reads both), and running the command again finishes the job.
//! With `GLEANER_SECRET_KEY` set, the data directory's keys come from the environment, as in the
//! distributed mode, and the key files are left alone.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use gleaner_common::config::Settings;
use gleaner_common::crypto::{Cipher, KeyId};
use gleaner_common::store::{self, secret::Rotated};
use gleaner_migrations::{Migrator, MigratorTrait as _};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tracing::{info, warn};

use crate::app;
use crate::standalone::DataDir;

/// Secrets read and re-encrypted per batch, each batch followed by a progress line: enough
/// that the per-query cost is noise, and a line every second or so on a large store.
pub const BATCH: u64 = 1_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rotate the standalone mode's data directory instead of the PostgreSQL database. Without
    /// GLEANER_SECRET_KEY, the key kept there (`secret.key`) is replaced by a new one. The
    /// standalone process must be stopped.
    #[arg(long, env = "GLEANER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Secrets read and re-encrypted per batch; the count done is logged after each.
    #[arg(long, default_value_t = BATCH)]
    pub batch: u64,
}

/// What a rotation did, and the id of the key every secret is under now (`None`: a data
/// directory with neither a key nor credentials yet, where there was nothing to do).
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub rotated: Rotated,
    pub key: Option<KeyId>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(key) = self.key else {
            return f.write_str("no credentials and no key yet: nothing to rotate");
        };
        let r = &self.rotated;
        write!(
            f,
            "{} secret(s) re-encrypted with key {key}; {} already under it",
            r.resealed,
            r.unchanged + r.labelled
        )?;
        if r.labelled > 0 {
            write!(f, " ({} of them now labelled with its id)", r.labelled)?;
        }
        Ok(())
    }
}

/// Re-encrypts the credentials of the database, or of `--data-dir`, and prints what it did.
///
/// # Errors
/// See [`rotate_database`] and [`rotate_data_dir`].
pub async fn run(args: Args, settings: &Settings) -> anyhow::Result<()> {
    let report = match &args.data_dir {
        Some(path) => rotate_data_dir(settings, &DataDir::open(path)?, args.batch).await?,
        None => rotate_database(settings, args.batch).await?,
    };
    println!("{report}");
    Ok(())
}

/// Re-encrypts, in the PostgreSQL database of `settings`, every secret that
/// `GLEANER_SECRET_KEY_PREVIOUS` sealed with `GLEANER_SECRET_KEY`, in one transaction.
///
/// # Errors
/// A key is missing or malformed, the database is unreachable or not migrated, or a secret can
/// be opened by neither key (it is named, and nothing is changed).
pub async fn rotate_database(settings: &Settings, batch: u64) -> anyhow::Result<Report> {
    let cipher = settings.cipher()?;
    let db = app::database(settings, false).await?;
    let result = async {
        let pending = Migrator::get_pending_migrations(&db).await?;
        if !pending.is_empty() {
            bail!(
                "the database has {} migration(s) to apply first (run `gleaner migrate`): {}",
                pending.len(),
                pending
                    .iter()
                    .map(|m| m.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let txn = store::begin_write(&db).await?;
        let rotated = reseal(&txn, &cipher, batch).await?;
        txn.commit()
            .await
            .context("committing the re-encrypted secrets")?;
        anyhow::Ok(Report {
            rotated,
            key: Some(cipher.key_id()),
        })
    }
    .await;
    db.close().await.ok();
    result
}

/// Re-encrypts the credentials of a standalone data directory: with the keys of the
/// environment when `GLEANER_SECRET_KEY` is set, otherwise from the key kept in `secret.key`
/// to a new one, which replaces it (see the module's documentation).
///
/// # Errors
/// A key is missing or malformed, a key file cannot be read or written, the database cannot be
/// opened, or a secret can be opened by neither key (it is named, and nothing is changed).
pub async fn rotate_data_dir(
    settings: &Settings,
    dir: &DataDir,
    batch: u64,
) -> anyhow::Result<Report> {
    let mut settings = settings.clone();
    settings.database_url = dir.database_url();
    settings.database.schema = None;
    settings.database.max_connections = 1;
    // Migrated as at the standalone mode's start, which applies every pending migration.
    let db = app::database(&settings, true).await?;
    let result = async {
        if settings.secret_key.is_some() {
            let cipher = settings.cipher()?;
            let txn = store::begin_write(&db).await?;
            let rotated = reseal(&txn, &cipher, batch).await?;
            txn.commit()
                .await
                .context("committing the re-encrypted secrets")?;
            return Ok(Report {
                rotated,
                key: Some(cipher.key_id()),
            });
        }
        let has_secrets = store::service_account::secrets_stored(&db).await?;
        let Some(rotation) = dir.key_rotation(has_secrets)? else {
            return Ok(Report {
                rotated: Rotated::default(),
                key: None,
            });
        };
        if rotation.resumed {
            info!(
                key = %rotation.current.id(),
                "finishing the rotation an earlier run did not finish"
            );
        }
        let cipher = Cipher::new(&rotation.current).with_previous(&rotation.previous);
        let txn = store::begin_write(&db).await?;
        let rotated = reseal(&txn, &cipher, batch).await?;
        // The new key is kept before the secrets it sealed are committed, and the old one with
        // it: a crash in between leaves both on disk.
        dir.keep_rotated_key(&rotation)?;
        txn.commit()
            .await
            .context("committing the re-encrypted secrets")?;
        make_durable(&db).await?;
        dir.finish_key_rotation()?;
        Ok(Report {
            rotated,
            key: Some(rotation.current.id()),
        })
    }
    .await;
    db.close().await.ok();
    result
}

/// Re-encrypts in `txn`, logging the progress after each batch.
async fn reseal(
    txn: &impl ConnectionTrait,
    cipher: &Cipher,
    batch: u64,
) -> anyhow::Result<Rotated> {
    match cipher.previous_key_id() {
        Some(previous) => info!(
            %previous,
            current = %cipher.key_id(),
            "re-encrypting credentials"
        ),
        None => warn!(
            current = %cipher.key_id(),
            "GLEANER_SECRET_KEY_PREVIOUS is not set: credentials are only checked against \
             GLEANER_SECRET_KEY and labelled with its id"
        ),
    }
    store::secret::rotate(txn, cipher, batch, |p| {
        info!(done = p.done, total = p.total, "re-encrypting credentials");
    })
    .await
    .context("re-encrypting the credentials; nothing was changed")
}

/// Makes the committed transaction durable before the old key is removed: with SQLite's
/// `synchronous = NORMAL`, a commit in WAL mode survives a crash of the process but may be
/// lost with power, and a checkpoint syncs it into the database file.
async fn make_durable(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(FULL)",
        ))
        .await?
        .context("the checkpoint answered nothing")?;
    let busy: i64 = row.try_get_by_index(0)?;
    if busy != 0 {
        bail!(
            "the re-encrypted credentials are committed but could not be synced to disk yet; \
             the old key stays in secret.key.previous: run the command again"
        );
    }
    Ok(())
}
