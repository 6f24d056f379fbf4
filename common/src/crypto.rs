//! Encryption of credentials at rest.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per secret: nonces this long can be drawn at
//! random without a collision budget to track. The secret's own id and domain are bound in as
//! associated data, so a ciphertext copied onto another row fails to decrypt instead of
//! silently lending its credentials to another account.
//!
//! Every sealed secret is stored with the [`KeyId`] of the key that sealed it, so that the key
//! can change: during a rollover a [`Cipher`] holds the current key, which seals, and the
//! previous one, and opens each secret with the key it names. Secrets stored before key ids
//! existed name none; they are tried with the current key, then the previous one.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest as _, Sha256};

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

    /// The key's id, stored beside every secret it seals.
    #[must_use]
    pub fn id(&self) -> KeyId {
        // A label first, so the id is no other fingerprint of the key a tool might compute (a
        // plain SHA-256 of it). SHA-256 being one-way, the id tells nothing about the key.
        let digest = Sha256::new()
            .chain_update(b"gleaner secret key id\0")
            .chain_update(self.0)
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

/// Names a [`SecretKey`]: the first 8 bytes of a SHA-256 of it, shown and stored as 16 hex
/// characters. Enough to tell a handful of keys apart; not a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A key id that is not 16 hex characters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a key id is 16 hex characters")]
pub struct KeyIdError;

impl FromStr for KeyId {
    type Err = KeyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(s, &mut id).map_err(|_| KeyIdError)?;
        Ok(Self(id))
    }
}

/// A sealed secret: what the `secrets` table stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    /// The key that sealed it; `None` for secrets stored before key ids were.
    pub key_id: Option<KeyId>,
}

/// Encryption failed, or the ciphertext does not belong to the configured keys, domain and
/// secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The secret names a key that is not configured: it needs the key it was sealed with.
    #[error(
        "the secret was sealed with key {sealed_with}, which is neither GLEANER_SECRET_KEY (key {current}) nor GLEANER_SECRET_KEY_PREVIOUS ({})",
        previous.map_or_else(|| "unset".to_owned(), |p| format!("key {p}"))
    )]
    UnknownKey {
        sealed_with: KeyId,
        current: KeyId,
        previous: Option<KeyId>,
    },
    /// The key fits but the ciphertext does not open: the row was altered or moved (or, for a
    /// secret that names no key, neither configured key sealed it).
    #[error(
        "the secret could not be decrypted with the configured key (wrong GLEANER_SECRET_KEY, or a tampered row)"
    )]
    Undecryptable,
    /// The AEAD refused to seal, which it does not for the sizes Gleaner uses.
    #[error("the secret could not be encrypted")]
    Seal,
}

/// One key, ready to seal and open.
#[derive(Clone)]
struct Keyed {
    id: KeyId,
    aead: XChaCha20Poly1305,
}

impl Keyed {
    fn new(key: &SecretKey) -> Self {
        Self {
            id: key.id(),
            aead: XChaCha20Poly1305::new(&key.0.into()),
        }
    }

    fn open(&self, nonce: &XNonce, aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        self.aead
            .decrypt(
                nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// Seals with the current key and opens with the current or the previous one.
#[derive(Clone)]
pub struct Cipher {
    current: Keyed,
    previous: Option<Keyed>,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher(current {}", self.current.id)?;
        if let Some(p) = &self.previous {
            write!(f, ", previous {}", p.id)?;
        }
        f.write_str(")")
    }
}

impl Cipher {
    /// A cipher of one key.
    #[must_use]
    pub fn new(key: &SecretKey) -> Self {
        Self {
            current: Keyed::new(key),
            previous: None,
        }
    }

    /// The same cipher, also opening what `previous` sealed: the rollover from `previous` to
    /// the current key. A previous key equal to the current one changes nothing.
    #[must_use]
    pub fn with_previous(mut self, previous: &SecretKey) -> Self {
        let previous = Keyed::new(previous);
        self.previous = (previous.id != self.current.id).then_some(previous);
        self
    }

    /// The id of the key that seals.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        self.current.id
    }

    /// The id of the previous key, if one is configured.
    #[must_use]
    pub fn previous_key_id(&self) -> Option<KeyId> {
        self.previous.as_ref().map(|p| p.id)
    }

    fn aad(domain: DomainId, secret: SecretId) -> [u8; 32] {
        let mut aad = [0u8; 32];
        aad[..16].copy_from_slice(domain.as_uuid().as_bytes());
        aad[16..].copy_from_slice(secret.as_uuid().as_bytes());
        aad
    }

    /// Encrypts `plaintext` for the secret `secret` of `domain`, with the current key.
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
            .current
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
            key_id: Some(self.current.id),
        })
    }

    /// Decrypts a sealed secret with the key it names, or, when it names none, with the current
    /// key and then the previous one. Also returns the id of the key that opened it.
    ///
    /// # Errors
    /// [`CryptoError::UnknownKey`] when it names a key this cipher does not hold;
    /// [`CryptoError::Undecryptable`] when the row was altered or moved, or names no key and
    /// neither key opens it.
    pub fn open_with_id(
        &self,
        domain: DomainId,
        secret: SecretId,
        sealed: &Sealed,
    ) -> Result<(Vec<u8>, KeyId), CryptoError> {
        if sealed.nonce.len() != 24 {
            return Err(CryptoError::Undecryptable);
        }
        let nonce = XNonce::from_slice(&sealed.nonce);
        let aad = Self::aad(domain, secret);
        let candidates = match sealed.key_id {
            Some(id) => {
                let key = std::iter::once(&self.current)
                    .chain(&self.previous)
                    .find(|k| k.id == id)
                    .ok_or(CryptoError::UnknownKey {
                        sealed_with: id,
                        current: self.current.id,
                        previous: self.previous_key_id(),
                    })?;
                vec![key]
            }
            None => std::iter::once(&self.current)
                .chain(&self.previous)
                .collect(),
        };
        candidates
            .into_iter()
            .find_map(|k| Some((k.open(nonce, &aad, &sealed.ciphertext)?, k.id)))
            .ok_or(CryptoError::Undecryptable)
    }

    /// Decrypts a sealed secret (see [`Cipher::open_with_id`]).
    ///
    /// # Errors
    /// The keys that could have sealed it are not configured, or the row was altered or moved.
    pub fn open(
        &self,
        domain: DomainId,
        secret: SecretId,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_with_id(domain, secret, sealed).map(|(p, _)| p)
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

    // SHA-256 of `gleaner secret key id\0` and 32 zero bytes, first 8 bytes: computed with
    // Python's hashlib, independently of this code.
    const ZEROS_ID: &str = "6ba1d350cb5da610";

    #[test]
    fn key_ids_differ_per_key_and_are_stable() {
        let zeros: SecretKey = "0".repeat(64).parse().expect("a key of zeros");
        // Pinned: ids are stored with every secret, so they must never change for a key.
        assert_eq!(zeros.id().to_string(), ZEROS_ID);
        assert_eq!(zeros.clone().id(), zeros.id());
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), zeros.id());
        let shown = a.id().to_string();
        assert_eq!(shown.len(), 16);
        assert_eq!(shown.parse::<KeyId>().expect("round trip"), a.id());
        assert!(
            !a.to_hex().contains(&shown),
            "the id is not a piece of the key"
        );
        for bad in ["abc", &"zz".repeat(8), &shown.repeat(2)] {
            assert_eq!(bad.parse::<KeyId>(), Err(KeyIdError), "{bad}");
        }
    }

    #[test]
    fn a_secret_sealed_with_the_previous_key_opens_during_the_rollover() {
        let (old, new) = (SecretKey::generate(), SecretKey::generate());
        let (domain, secret) = (DomainId::new(), SecretId::new());
        let sealed = Cipher::new(&old)
            .seal(domain, secret, b"creds")
            .expect("seals");
        assert_eq!(sealed.key_id, Some(old.id()));

        let rollover = Cipher::new(&new).with_previous(&old);
        assert_eq!(rollover.key_id(), new.id());
        assert_eq!(rollover.previous_key_id(), Some(old.id()));
        assert_eq!(
            rollover
                .open_with_id(domain, secret, &sealed)
                .expect("opens"),
            (b"creds".to_vec(), old.id())
        );
        // A secret stored before key ids existed names none: both keys are tried.
        let unnamed = Sealed {
            key_id: None,
            ..sealed.clone()
        };
        assert_eq!(
            rollover
                .open_with_id(domain, secret, &unnamed)
                .expect("opens"),
            (b"creds".to_vec(), old.id())
        );
        // New secrets are sealed with the current key.
        let fresh = rollover.seal(domain, secret, b"creds").expect("seals");
        assert_eq!(fresh.key_id, Some(new.id()));
        assert_eq!(
            Cipher::new(&new)
                .open(domain, secret, &fresh)
                .expect("opens"),
            b"creds"
        );
        // The associated data still binds the row during the rollover.
        assert!(matches!(
            rollover.open(domain, SecretId::new(), &sealed),
            Err(CryptoError::Undecryptable)
        ));
        // The same key given twice is one key.
        assert_eq!(
            Cipher::new(&new).with_previous(&new).previous_key_id(),
            None
        );
    }

    #[test]
    fn after_rotation_the_old_key_alone_opens_nothing() {
        let (old, new) = (SecretKey::generate(), SecretKey::generate());
        let (domain, secret) = (DomainId::new(), SecretId::new());
        let sealed = Cipher::new(&old)
            .seal(domain, secret, b"creds")
            .expect("seals");
        // What rotation does to a row: open with whichever key, seal with the current one.
        let rollover = Cipher::new(&new).with_previous(&old);
        let plaintext = rollover.open(domain, secret, &sealed).expect("opens");
        let rotated = rollover.seal(domain, secret, &plaintext).expect("seals");

        let old_alone = Cipher::new(&old);
        let err = old_alone
            .open(domain, secret, &rotated)
            .expect_err("the old key cannot open it");
        assert!(
            matches!(err, CryptoError::UnknownKey { sealed_with, current, previous: None }
                if sealed_with == new.id() && current == old.id()),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the secret was sealed with key {}, which is neither GLEANER_SECRET_KEY (key {}) nor GLEANER_SECRET_KEY_PREVIOUS (unset)",
                new.id(),
                old.id()
            )
        );
        // Nor can it by trying, with the key id wiped.
        let unnamed = Sealed {
            key_id: None,
            ..rotated.clone()
        };
        assert!(matches!(
            old_alone.open(domain, secret, &unnamed),
            Err(CryptoError::Undecryptable)
        ));
        assert_eq!(
            Cipher::new(&new)
                .open(domain, secret, &rotated)
                .expect("opens"),
            b"creds"
        );
    }
}
