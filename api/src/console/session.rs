//! The console's sign-in: an API key kept in a sealed cookie, and the CSRF token of its forms.
//!
//! # Design
//!
//! The cookie holds the API key and an expiry, sealed (XChaCha20-Poly1305) with the server's
//! secret key under an associated-data label of its own, so it cannot be read or made by the
//! browser, and any API process of the deployment opens it. Every page then acts exactly as
//! that key through the API, so revoking the key ends the session within the second the API's
//! key check trusts (`auth::CHECK_EVERY`), and a key's role and projects limit the console as
//! they limit the API. Signing out clears the cookie; a copy of it taken before would stay
//! usable until it expires ([`LIFETIME`]) or its key is revoked.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it) and `Secure` when the request came over HTTPS. Each form also carries a token
//! derived from the cookie ([`Session::csrf`]), checked on every POST: a page of another
//! origin cannot read the cookie, so it cannot make the token either.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use gleaner_common::crypto::{Cipher, Sealed};
use gleaner_common::id::{DomainId, SecretId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::AppState;

/// The cookie's name.
pub const COOKIE: &str = "gleaner_session";
/// How long a sign-in lasts: a working day.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

// The sealing's associated data: what makes a cookie unusable as a credential's ciphertext and
// the reverse. Fixed ids, never those of a real domain or secret (those are UUIDv7).
const LABEL_DOMAIN: DomainId = DomainId::from_uuid(uuid::Uuid::from_u128(0x676c_6561_6e65_7200));
const LABEL_SECRET: SecretId = SecretId::from_uuid(uuid::Uuid::from_u128(0x636f_6e73_6f6c_6500));

#[derive(Serialize, Deserialize)]
struct Payload {
    key: String,
    /// Unix seconds.
    exp: i64,
}

/// A signed-in browser: the key its pages act as.
#[derive(Clone)]
pub struct Session {
    key: String,
    cookie: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

impl Session {
    /// The API key the pages act as.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A key being signed in with, before it has a cookie.
    pub(crate) fn probe(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            cookie: String::new(),
        }
    }

    /// The token every form of this session carries: a digest of the cookie, which only this
    /// browser holds.
    #[must_use]
    pub fn csrf(&self) -> String {
        csrf_of(&self.cookie)
    }

    /// Whether `token` is this session's.
    #[must_use]
    pub fn csrf_ok(&self, token: &str) -> bool {
        // Compared as digests: the time taken tells nothing of the expected token.
        Sha256::digest(token.as_bytes()) == Sha256::digest(self.csrf().as_bytes())
    }
}

fn csrf_of(cookie: &str) -> String {
    hex::encode(Sha256::digest(format!("gleaner csrf\0{cookie}").as_bytes()))
}

/// A new session's cookie value for `key`.
///
/// # Errors
/// Only if sealing fails, which it does not for a key's size.
pub fn seal(cipher: &Cipher, key: &str) -> Result<String, gleaner_common::crypto::CryptoError> {
    let exp = Utc::now().timestamp() + i64::try_from(LIFETIME.as_secs()).unwrap_or(i64::MAX);
    let payload = serde_json::to_vec(&Payload {
        key: key.to_owned(),
        exp,
    })
    .unwrap_or_default();
    let sealed = cipher.seal(LABEL_DOMAIN, LABEL_SECRET, &payload)?;
    let mut bytes = sealed.nonce;
    bytes.extend(sealed.ciphertext);
    Ok(hex::encode(bytes))
}

/// The key in a cookie value, if it is one this deployment sealed and it has not expired.
fn open(cipher: &Cipher, cookie: &str) -> Option<String> {
    let bytes = hex::decode(cookie).ok()?;
    if bytes.len() < 24 {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(24);
    let sealed = Sealed {
        nonce: nonce.to_vec(),
        ciphertext: ciphertext.to_vec(),
        key_id: None,
    };
    let plain = cipher.open(LABEL_DOMAIN, LABEL_SECRET, &sealed).ok()?;
    let p: Payload = serde_json::from_slice(&plain).ok()?;
    (p.exp > Utc::now().timestamp()).then_some(p.key)
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the browser reached us over HTTPS: directly, or through a proxy that says so.
fn https(parts: &HeaderMap) -> bool {
    parts
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` of a new session (`Some`) or of signing out (`None`).
#[must_use]
pub fn set_cookie(value: Option<&str>, request: &HeaderMap) -> HeaderValue {
    let secure = if https(request) { "; Secure" } else { "" };
    let v = match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    // Hex, digits and ASCII punctuation only.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Not signed in: pages send the browser to the sign-in page, and come back after it.
pub struct SignIn(String);

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        let to = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &self.0)
            .finish();
        Redirect::to(&format!("/sign-in?{to}")).into_response()
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = SignIn;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignIn> {
        let back = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let value = cookie(&parts.headers, COOKIE).ok_or_else(|| SignIn(back.clone()))?;
        let key = open(&state.cipher, value).ok_or(SignIn(back))?;
        Ok(Self {
            key,
            cookie: value.to_owned(),
        })
    }
}

/// A POST of a console form: the session that sent it and the form's fields, its CSRF token
/// checked. Every handler of a form takes it, so none can forget the check.
pub struct Posted {
    pub session: Session,
    pub values: std::collections::HashMap<String, String>,
}

impl axum::extract::FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let req = axum::extract::Request::from_parts(parts, body);
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // A repeated name keeps its last value, as a form's fields are read.
        let values: std::collections::HashMap<String, String> = pairs.into_iter().collect();
        if !session.csrf_ok(values.get("csrf").map_or("", String::as_str)) {
            return Err(super::csrf_refused());
        }
        Ok(Self { session, values })
    }
}

#[cfg(test)]
mod tests {
    use gleaner_common::crypto::SecretKey;

    use super::*;

    #[test]
    fn a_cookie_opens_only_with_its_servers_key_and_unaltered() {
        let cipher = Cipher::new(&SecretKey::generate());
        let value = seal(&cipher, "glk_abc").expect("seals");
        assert_eq!(open(&cipher, &value).as_deref(), Some("glk_abc"));
        assert!(
            !value.contains("glk_abc"),
            "the key is not readable in the cookie"
        );
        let other = Cipher::new(&SecretKey::generate());
        assert_eq!(open(&other, &value), None);
        let mut altered = value.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            open(&cipher, &String::from_utf8(altered).expect("hex")),
            None
        );
        assert_eq!(open(&cipher, "zz"), None);
        assert_eq!(open(&cipher, ""), None);
    }

    #[test]
    fn the_csrf_token_belongs_to_one_cookie() {
        let a = Session {
            key: "k".into(),
            cookie: "aa".into(),
        };
        let b = Session {
            key: "k".into(),
            cookie: "bb".into(),
        };
        assert!(a.csrf_ok(&a.csrf()));
        assert!(!a.csrf_ok(&b.csrf()));
        assert!(!a.csrf_ok(""));
    }

    #[test]
    fn cookies_are_read_among_others_and_flagged() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gleaner_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        let set = set_cookie(Some("v"), &h);
        let set = set.to_str().expect("ascii");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(
            !set.contains("Secure"),
            "plain HTTP cannot keep a Secure cookie"
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(
            set_cookie(None, &h)
                .to_str()
                .expect("ascii")
                .ends_with("; Secure")
        );
    }
}
