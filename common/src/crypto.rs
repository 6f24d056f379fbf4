//! Encryption of credentials at rest.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per secret: nonces this long can be drawn at
//! random without a collision budget to track. The secret's own id and domain are bound in as
//! associated data, so a ciphertext copied onto another row fails to decrypt instead of
//! silently lending its credentials to another account.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::id::{DomainId, SecretId};

/// The 32-byte key that encrypts credentials. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Why a key could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("expected 64 hex characters (32 bytes), got {0} characters")]
    WrongLength(usize),
    #[error("expected 64 hex characters (32 bytes), found a character that is not hex")]
    NotHex,
}

impl FromStr for SecretKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(KeyError::WrongLength(s.len()));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(s, &mut key).map_err(|_| KeyError::NotHex)?;
        Ok(Self(key))
    }
}

impl SecretKey {
    /// A random key, for tests and for standalone mode's generated key file.
    #[must_use]
    pub fn generate() -> Self {
        Self(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// The key as 64 hex characters, to be written where it is kept.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A sealed secret: what the `secrets` table stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Encryption failed or the ciphertext does not belong to this key, domain and secret.
#[derive(Debug, thiserror::Error)]
#[error(
    "the secret could not be decrypted with the configured key (wrong GLEANER_SECRET_KEY, or a tampered row)"
)]
pub struct CryptoError;

/// Seals and opens credentials.
#[derive(Clone)]
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    #[must_use]
    pub fn new(key: &SecretKey) -> Self {
        Self {
            aead: XChaCha20Poly1305::new(&key.0.into()),
        }
    }

    fn aad(domain: DomainId, secret: SecretId) -> [u8; 32] {
        let mut aad = [0u8; 32];
        aad[..16].copy_from_slice(domain.as_uuid().as_bytes());
        aad[16..].copy_from_slice(secret.as_uuid().as_bytes());
        aad
    }

    /// Encrypts `plaintext` for the secret `secret` of `domain`.
    ///
    /// # Errors
    /// Only if the AEAD rejects the input, which it does not for sizes Gleaner uses.
    pub fn seal(
        &self,
        domain: DomainId,
        secret: SecretId,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = Self::aad(domain, secret);
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError)?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts a sealed secret.
    ///
    /// # Errors
    /// The key differs from the one that sealed it, or the row was altered or moved.
    pub fn open(
        &self,
        domain: DomainId,
        secret: SecretId,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, CryptoError> {
        if sealed.nonce.len() != 24 {
            return Err(CryptoError);
        }
        let nonce = XNonce::from_slice(&sealed.nonce);
        let aad = Self::aad(domain, secret);
        self.aead
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_opens_only_for_its_own_row_and_key() {
        let cipher = Cipher::new(&SecretKey::generate());
        let (domain, secret) = (DomainId::new(), SecretId::new());
        let sealed = cipher
            .seal(domain, secret, b"{\"key\":\"hunter2\"}")
            .expect("seals");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            cipher.open(domain, secret, &sealed).expect("opens"),
            b"{\"key\":\"hunter2\"}"
        );
        assert!(
            cipher.open(domain, SecretId::new(), &sealed).is_err(),
            "moved to another secret"
        );
        assert!(
            cipher.open(DomainId::new(), secret, &sealed).is_err(),
            "moved to another domain"
        );
        let other = Cipher::new(&SecretKey::generate());
        assert!(other.open(domain, secret, &sealed).is_err(), "wrong key");
    }

    #[test]
    fn key_parsing_rejects_bad_input() {
        assert_eq!(
            "ab".parse::<SecretKey>().unwrap_err(),
            KeyError::WrongLength(2)
        );
        assert_eq!(
            "zz".repeat(32).parse::<SecretKey>().unwrap_err(),
            KeyError::NotHex
        );
        let key = SecretKey::generate();
        let back: SecretKey = key.to_hex().parse().expect("hex round trip");
        assert_eq!(back.0, key.0);
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
    }
}
