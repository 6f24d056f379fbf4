//! Rotating the key that encrypts credentials: the rollover (new key current, old key
//! previous), `gleaner rotate-secret-key`, and the old key dropped. Every account still
//! collects with its credentials, and the old key alone reads none of them.

use std::path::Path;

use anyhow::Context as _;
use gleaner_common::crypto::{Cipher, CryptoError, SecretKey};
use gleaner_common::id::{DomainId, ServiceAccountId};
use gleaner_common::model::Name;
use gleaner_common::store::secret::{Progress, Rotated};
use gleaner_common::store::{self, service_account};
use gleaner_common::{config::Settings, provider};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value, json};

use crate::in_both_modes;
use crate::standalone::{Standalone, on_fresh_dir};
use crate::support::{Api, Mode, TestEnv, TestStore};

/// The private cost plugin of the tests reports costs of the billing account named in the
/// credentials (`secret.account`): what a collection shows of the credentials it was given.
fn costs_plugin() -> Value {
    json!({"id": "hb-costs", "version": "1.0.0",
           "command": format!("{}/tests/plugins/costs.sh", env!("CARGO_MANIFEST_DIR"))})
}

/// A `hyperbilling` account whose credentials name the billing account `account`.
async fn hb_account(api: &Api, project: &Value, account: &str) -> anyhow::Result<String> {
    let sa = api
        .create(
            "/v1/service-accounts",
            json!({"name": account, "provider": "hyperbilling", "project_id": project["id"],
                   "credentials": {"account": account, "email": "ops@acme.test", "key": format!("key-of-{account}")}}),
        )
        .await?;
    Ok(sa["id"].as_str().context("id")?.to_owned())
}

/// Runs a billing job of `collector` for September 2024; insists on SUCCESS. Returns the billing
/// accounts of the month's costs, sorted: one per account whose credentials the plugin read.
async fn collect_billing_accounts(api: &Api, collector: &str) -> anyhow::Result<Vec<String>> {
    let a = api
        .post(
            &format!("/v1/collectors/{collector}/collect"),
            json!({"start_month": "2024-09", "end_month": "2024-09"}),
        )
        .await?;
    anyhow::ensure!(a.status == reqwest::StatusCode::ACCEPTED, "collect: {a:?}");
    let job = api
        .wait_job(a.body["job_id"].as_str().context("job_id")?)
        .await?;
    anyhow::ensure!(job["status"] == "SUCCESS", "{job}");
    let summary = api
        .get("/v1/costs/summary?start=2024-09-01&end=2024-10-01&group_by=billing_account")
        .await?;
    let mut accounts: Vec<String> = summary.body["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["billing_account"].as_str().map(str::to_owned))
        .collect();
    accounts.sort();
    Ok(accounts)
}

/// Every account's credentials through the store with `cipher`.
async fn read_all(
    db: &DatabaseConnection,
    cipher: &Cipher,
    ids: &[String],
) -> Vec<Result<Map<String, Value>, store::Error>> {
    let mut out = Vec::new();
    for id in ids {
        let id: ServiceAccountId = id.parse().expect("an account id");
        out.push(service_account::credentials(db, cipher, DomainId::DEFAULT, id).await);
    }
    out
}

/// Asserts that `old` alone opens none of the accounts' credentials: each fails with the crypto
/// error naming the key that sealed it.
async fn assert_unreadable_with(
    db: &DatabaseConnection,
    old: &SecretKey,
    sealed_with: &SecretKey,
    ids: &[String],
) {
    for (id, read) in ids.iter().zip(read_all(db, &Cipher::new(old), ids).await) {
        match read {
            Err(store::Error::Crypto(CryptoError::UnknownKey {
                sealed_with: k,
                current,
                previous: None,
            })) => {
                assert_eq!(k, sealed_with.id(), "account {id}");
                assert_eq!(current, old.id(), "account {id}");
            }
            other => panic!("account {id} with the old key alone: {other:?}"),
        }
    }
}

async fn rotation_keeps_every_account_collecting_and_locks_out_the_old_key(
    mode: Mode,
) -> anyhow::Result<()> {
    let mut env = TestEnv::start(mode).await?;
    let old: SecretKey = env.settings.secret_key.as_deref().context("key")?.parse()?;
    let new = SecretKey::generate();
    env.create("/v1/plugins", costs_plugin()).await?;
    let project = env.create("/v1/projects", json!({"name": "hb"})).await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(hb_account(&env, &project, &format!("acme-{n}")).await?);
    }
    let c = env
        .create(
            "/v1/collectors",
            json!({"name": "hb", "plugin_id": "hb-costs"}),
        )
        .await?;
    let collector = c["id"].as_str().context("id")?.to_owned();
    assert_eq!(
        collect_billing_accounts(&env, &collector).await?,
        ["acme-0", "acme-1", "acme-2"]
    );

    // The rollover: every process with the new key, and the old one as the previous key.
    let (old_hex, new_hex) = (old.to_hex(), new.to_hex());
    env.restart(|s| {
        s.secret_key = Some(new_hex.clone());
        s.secret_key_previous = Some(old_hex.clone());
    })
    .await?;
    // What the old key sealed still opens; what is stored now is sealed with the new key.
    assert_eq!(
        collect_billing_accounts(&env, &collector).await?,
        ["acme-0", "acme-1", "acme-2"]
    );
    ids.push(hb_account(&env, &project, "acme-3").await?);

    // The rotation: on PostgreSQL while everything runs; a standalone data directory is held
    // by its process, which is stopped meanwhile.
    let rotate = async |env: &mut TestEnv| -> anyhow::Result<Rotated> {
        let report = match env.data_dir().map(Path::to_owned) {
            None => gleaner::cmd::rotate_secret_key::rotate_database(&env.settings, 2).await?,
            Some(path) => {
                env.stop().await;
                let dir = gleaner::standalone::DataDir::open(&path)?;
                let report =
                    gleaner::cmd::rotate_secret_key::rotate_data_dir(&env.settings, &dir, 2).await;
                drop(dir);
                env.start_again(|_| {}).await?;
                report?
            }
        };
        assert_eq!(report.key, Some(new.id()));
        Ok(report.rotated)
    };
    assert_eq!(
        rotate(&mut env).await?,
        Rotated {
            resealed: 3,
            labelled: 0,
            unchanged: 1
        }
    );
    assert_eq!(
        rotate(&mut env).await?,
        Rotated {
            resealed: 0,
            labelled: 0,
            unchanged: 4
        },
        "a second run has nothing left to do"
    );

    // The previous key dropped: the new key alone reads everything.
    env.restart(|s| s.secret_key_previous = None).await?;
    assert_eq!(
        collect_billing_accounts(&env, &collector).await?,
        ["acme-0", "acme-1", "acme-2", "acme-3"]
    );
    let with_new = read_all(&env.db, &Cipher::new(&new), &ids).await;
    for (n, read) in with_new.into_iter().enumerate() {
        let creds = read.with_context(|| format!("account {n} with the new key"))?;
        assert_eq!(creds["account"], format!("acme-{n}"));
    }
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM secrets WHERE key_id = '{}'",
            new.id()
        ))
        .await?,
        4
    );
    // And a process with the old key alone reads nothing.
    assert_unreadable_with(&env.db, &old, &new, &ids).await;
    Ok(())
}

/// Creates a service account with credentials through the store, sealed by `cipher`.
async fn stored_account(
    db: &DatabaseConnection,
    cipher: &Cipher,
    name: &str,
) -> anyhow::Result<ServiceAccountId> {
    let mut credentials = Map::new();
    credentials.insert("token".into(), json!(format!("token-of-{name}")));
    let sa = service_account::create(
        db,
        cipher,
        DomainId::DEFAULT,
        service_account::NewServiceAccount {
            name: Name::parse("name", name)?,
            provider: provider::find("aws").context("aws")?,
            project_id: None,
            credentials,
        },
    )
    .await?;
    Ok(sa.id)
}

/// Every secret row, in order, as (nonce, ciphertext, key id) in hex.
async fn secret_rows(store: &TestStore) -> anyhow::Result<Vec<String>> {
    use sea_orm::{EntityTrait as _, QueryOrder as _};
    let rows = gleaner_common::entity::secret::Entity::find()
        .order_by_asc(gleaner_common::entity::secret::Column::Id)
        .all(&store.db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| format!("{:?} {:?} {:?}", r.nonce, r.ciphertext, r.key_id))
        .collect())
}

async fn rotate_in_one_transaction(
    db: &DatabaseConnection,
    cipher: &Cipher,
    progress: &mut Vec<Progress>,
) -> Result<Rotated, store::Error> {
    let txn = store::begin_write(db).await?;
    let rotated = store::secret::rotate(&txn, cipher, 2, |p| progress.push(p)).await?;
    txn.commit().await?;
    Ok(rotated)
}

/// A secret that neither key opens stops the rotation, naming it and its account, and nothing
/// changes; secrets stored before key ids existed are rotated by trying both keys.
async fn a_secret_neither_key_opens_stops_the_rotation_and_changes_nothing(
    mode: Mode,
) -> anyhow::Result<()> {
    let store = TestStore::open(mode).await?;
    let (old, new, stranger) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let (old_cipher, new_cipher) = (Cipher::new(&old), Cipher::new(&new));
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(stored_account(&store.db, &old_cipher, &format!("old-{n}")).await?);
    }
    let odd = stored_account(&store.db, &Cipher::new(&stranger), "sealed-elsewhere").await?;
    let before = secret_rows(&store).await?;

    let rollover = Cipher::new(&new).with_previous(&old);
    let mut progress = Vec::new();
    let err = rotate_in_one_transaction(&store.db, &rollover, &mut progress)
        .await
        .expect_err("one secret opens with neither key");
    let shown = err.to_string();
    assert!(matches!(err, store::Error::Undecryptable { .. }), "{err:?}");
    assert!(
        shown.contains(&format!("service account 'sealed-elsewhere' (aws, {odd})")),
        "{shown}"
    );
    assert!(shown.contains(&stranger.id().to_string()), "{shown}");
    assert_eq!(secret_rows(&store).await?, before, "nothing changed");

    // Without it, and with the others stored before key ids existed (no id: both keys tried).
    store
        .execute(&format!(
            "DELETE FROM secrets WHERE id = (SELECT secret_id FROM service_accounts WHERE id = {})",
            store.uuid_sql(odd)
        ))
        .await?;
    store.execute("UPDATE secrets SET key_id = NULL").await?;
    let fresh = stored_account(&store.db, &rollover, "new-0").await?;
    let unlabelled_new = stored_account(&store.db, &rollover, "new-1").await?;
    store
        .execute(&format!(
            "UPDATE secrets SET key_id = NULL WHERE id = (SELECT secret_id FROM service_accounts WHERE id = {})",
            store.uuid_sql(unlabelled_new)
        ))
        .await?;
    progress.clear();
    let rotated = rotate_in_one_transaction(&store.db, &rollover, &mut progress).await?;
    assert_eq!(
        rotated,
        Rotated {
            resealed: 4,
            labelled: 1,
            unchanged: 1
        }
    );
    assert_eq!(
        progress,
        [(2, 6), (4, 6), (6, 6)].map(|(done, total)| Progress { done, total }),
        "a count after each batch of two"
    );
    assert_eq!(
        store
            .scalar(&format!(
                "SELECT count(*) FROM secrets WHERE key_id = '{}'",
                new.id()
            ))
            .await?,
        6
    );
    ids.extend([fresh, unlabelled_new]);
    for id in &ids {
        service_account::credentials(&store.db, &new_cipher, DomainId::DEFAULT, *id)
            .await
            .with_context(|| format!("account {id} with the new key alone"))?;
        let read =
            service_account::credentials(&store.db, &old_cipher, DomainId::DEFAULT, *id).await;
        assert!(
            matches!(
                read,
                Err(store::Error::Crypto(CryptoError::UnknownKey { .. }))
            ),
            "account {id} with the old key alone: {read:?}"
        );
    }
    Ok(())
}

in_both_modes!(
    rotation_keeps_every_account_collecting_and_locks_out_the_old_key,
    a_secret_neither_key_opens_stops_the_rotation_and_changes_nothing,
);

/// Runs `gleaner rotate-secret-key --data-dir DIR` with the key kept in the directory; its
/// stdout.
async fn rotate_binary(dir: &Path, log: &Path) -> anyhow::Result<std::process::Output> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gleaner"))
        .arg("rotate-secret-key")
        .arg("--data-dir")
        .arg(dir)
        .env_remove("GLEANER_SECRET_KEY")
        .env_remove("GLEANER_SECRET_KEY_PREVIOUS")
        .env("RUST_LOG", "info")
        .stderr(stderr)
        .output()
        .await
        .context("running gleaner rotate-secret-key")?;
    Ok(out)
}

fn kept_key(dir: &Path, file: &str) -> anyhow::Result<SecretKey> {
    let text =
        std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))?;
    Ok(text.parse()?)
}

/// The key kept in a standalone data directory: replaced by the command, resumed after a crash
/// in the middle, and whatever state it stopped in, the standalone mode reads every credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_key_of_a_data_directory_is_replaced_and_a_stopped_rotation_loses_nothing()
-> anyhow::Result<()> {
    on_fresh_dir("rotate", async |dir, log| {
        let plugins = [("GLEANER_PLUGINS__DIR", env!("CARGO_MANIFEST_DIR"))];
        let first = Standalone::start(dir, log, &plugins).await?;
        first.create("/v1/plugins", costs_plugin()).await?;
        let project = first.create("/v1/projects", json!({"name": "hb"})).await?;
        let ids = [
            hb_account(&first, &project, "acme-0").await?,
            hb_account(&first, &project, "acme-1").await?,
        ];
        let c = first
            .create(
                "/v1/collectors",
                json!({"name": "hb", "plugin_id": "hb-costs"}),
            )
            .await?;
        let collector = c["id"].as_str().context("id")?.to_owned();
        let both = ["acme-0", "acme-1"];
        assert_eq!(collect_billing_accounts(&first, &collector).await?, both);
        let refused = rotate_binary(dir, log).await?;
        assert!(!refused.status.success(), "the directory is in use");
        first.kill().await?;
        let k0 = kept_key(dir, "secret.key")?;

        // A rotation stopped after keeping its new key, before its transaction committed.
        let k1 = SecretKey::generate();
        std::fs::write(dir.join("secret.key.previous"), k0.to_hex() + "\n")?;
        std::fs::write(dir.join("secret.key"), k1.to_hex() + "\n")?;
        let second = Standalone::start(dir, log, &plugins).await?;
        assert_eq!(
            collect_billing_accounts(&second, &collector).await?,
            both,
            "the previous key still opens what it sealed"
        );
        second.kill().await?;

        // Run again, the command finishes that rotation.
        let out = rotate_binary(dir, log).await?;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8(out.stdout)?,
            format!(
                "2 secret(s) re-encrypted with key {}; 0 already under it\n",
                k1.id()
            )
        );
        assert_eq!(kept_key(dir, "secret.key")?.id(), k1.id());
        assert!(!dir.join("secret.key.previous").exists());
        let db = connect(dir).await?;
        assert_unreadable_with(&db, &k0, &k1, &ids).await;
        db.close().await?;

        // And a rotation of its own makes a new key.
        let out = rotate_binary(dir, log).await?;
        assert!(out.status.success(), "{out:?}");
        let k2 = kept_key(dir, "secret.key")?;
        assert_ne!(k2.id(), k1.id());
        assert_eq!(
            String::from_utf8(out.stdout)?,
            format!(
                "2 secret(s) re-encrypted with key {}; 0 already under it\n",
                k2.id()
            )
        );
        assert!(!dir.join("secret.key.previous").exists());
        let db = connect(dir).await?;
        assert_unreadable_with(&db, &k1, &k2, &ids).await;
        db.close().await?;

        let third = Standalone::start(dir, log, &plugins).await?;
        assert_eq!(collect_billing_accounts(&third, &collector).await?, both);
        third.kill().await
    })
    .await
}

/// The data directory's database (the directory is locked only while its URL is read).
async fn connect(dir: &Path) -> anyhow::Result<DatabaseConnection> {
    let url = gleaner::standalone::DataDir::open(dir)?.database_url();
    Ok(gleaner_common::db::connect(&url, &Settings::default().database).await?)
}
