//! The `secrets` table as a whole.
//!
//! One account's secret is sealed and opened by [`super::service_account`]; this module turns
//! rows into [`Sealed`] values.

use super::{Error, Result};
use crate::crypto::{KeyId, Sealed};
use crate::entity::secret;

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
