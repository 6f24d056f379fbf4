//! The `secrets` table as a whole: re-encrypting every stored credential under a new key.
//!
//! One account's secret is sealed and opened by [`super::service_account`]; this module turns
//! rows into [`Sealed`] values and carries out `gleaner rotate-secret-key`.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait as _, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::{Error, Result};
use crate::crypto::{Cipher, KeyId, Sealed};
use crate::entity::{secret, service_account};
use crate::id::{DomainId, SecretId};

/// A row as the cipher takes it.
///
/// # Errors
/// [`Error::Corrupt`] when its key id is not one.
pub(crate) fn sealed(row: secret::Model) -> Result<Sealed> {
    let key_id = row
        .key_id
        .as_deref()
        .map(|k| {
            k.parse::<KeyId>()
                .map_err(|e| Error::Corrupt(format!("secret {}: key id `{k}`: {e}", row.id)))
        })
        .transpose()?;
    Ok(Sealed {
        nonce: row.nonce,
        ciphertext: row.ciphertext,
        key_id,
    })
}

/// What a rotation did to the secrets it found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotated {
    /// Re-encrypted from the previous key (or, naming no key, found under it) to the current one.
    pub resealed: u64,
    /// Named no key and were under the current one already: their key id is now filled in.
    pub labelled: u64,
    /// Already under the current key: left as they were.
    pub unchanged: u64,
}

/// How far a rotation is: `done` of the `total` secrets it found at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Re-encrypts every secret that the cipher's previous key sealed with its current key. Run it
/// in a transaction ([`super::begin_write`]) and commit after: then either every secret ends
/// under the current key, or nothing changes. Secrets already under the current key are left
/// alone, so running it again does nothing; secrets stored before key ids existed are opened by
/// trying both keys, and get their key id.
///
/// Rows are read `batch` at a time (by id, within the transaction), and `progress` is called
/// after each batch. Secrets written meanwhile by other processes are sealed with their current
/// key, which must be this cipher's (deploy the new key everywhere first).
///
/// # Errors
/// [`Error::Undecryptable`] naming the first secret that neither key opens, and its accounts;
/// [`Error::Corrupt`] for a malformed key id; database errors.
pub async fn rotate(
    txn: &impl ConnectionTrait,
    cipher: &Cipher,
    batch: u64,
    mut progress: impl FnMut(Progress),
) -> Result<Rotated> {
    let total = secret::Entity::find().count(txn).await?;
    let current = cipher.key_id();
    let mut rotated = Rotated::default();
    let mut done = 0;
    let mut after = None;
    loop {
        let mut page = secret::Entity::find()
            .order_by_asc(secret::Column::Id)
            .limit(batch.max(1));
        if let Some(last) = after {
            page = page.filter(secret::Column::Id.gt(last));
        }
        let rows = page.all(txn).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        done += rows.len() as u64;
        for row in rows {
            let (id, domain) = (
                SecretId::from_uuid(row.id),
                DomainId::from_uuid(row.domain_id),
            );
            let sealed = sealed(row)?;
            if sealed.key_id == Some(current) {
                rotated.unchanged += 1;
                continue;
            }
            let (plaintext, opened_by) = match cipher.open_with_id(domain, id, &sealed) {
                Ok(opened) => opened,
                Err(cause) => {
                    return Err(Error::Undecryptable {
                        secret: id,
                        owner: owner(txn, id).await?,
                        cause,
                    });
                }
            };
            let mut update = secret::Entity::update_many()
                .col_expr(secret::Column::KeyId, Expr::value(current.to_string()))
                .filter(secret::Column::Id.eq(id.as_uuid()));
            if opened_by == current {
                rotated.labelled += 1;
            } else {
                let resealed = cipher.seal(domain, id, &plaintext)?;
                update = update
                    .col_expr(secret::Column::Nonce, Expr::value(resealed.nonce))
                    .col_expr(secret::Column::Ciphertext, Expr::value(resealed.ciphertext));
                rotated.resealed += 1;
            }
            // A secret deleted meanwhile (its account's credentials replaced) updates no row,
            // which is as good.
            update.exec(txn).await?;
        }
        progress(Progress { done, total });
    }
    Ok(rotated)
}

/// Who uses a secret, for an error: its service accounts' names and providers.
async fn owner(db: &impl ConnectionTrait, id: SecretId) -> Result<String> {
    let accounts = service_account::Entity::find()
        .filter(service_account::Column::SecretId.eq(id.as_uuid()))
        .order_by_asc(service_account::Column::Name)
        .all(db)
        .await?;
    if accounts.is_empty() {
        return Ok("no service account".to_owned());
    }
    let names: Vec<String> = accounts
        .iter()
        .map(|a| format!("'{}' ({}, {})", a.name, a.provider, a.id))
        .collect();
    Ok(format!("service account {}", names.join(", ")))
}
