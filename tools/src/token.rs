//! Minting tokens: the well-formed ones a client gets (through the server library's own
//! signer) and the hand-built ones the tests attack the verifier with (any header, any
//! payload, HMAC-SHA256/384/512).

use crate::b64;
use hmac::{KeyInit, Mac};
use periode_sse::domain::{Role, UserId};

/// The JOSE header of every HS256 token the server issues.
pub const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Seconds since the epoch (0 if the clock is before it: tokens then just look expired).
pub fn epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A user token valid from now for `ttl_secs`.
pub fn user(user: u64, ttl_secs: i64, key: &[u8]) -> String {
    periode_sse::jwt::sign(UserId(user as i64), Role::User, epoch_secs(), ttl_secs, key)
}

/// An admin token (subject 0) valid from now for `ttl_secs`.
pub fn admin(ttl_secs: i64, key: &[u8]) -> String {
    periode_sse::jwt::sign(UserId(0), Role::Admin, epoch_secs(), ttl_secs, key)
}

/// The HMAC of a JWS: SHA-256 for 256, SHA-384 for 384, SHA-512 for anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hmac {
    Sha256,
    Sha384,
    Sha512,
}

/// `base64url(header).base64url(payload).base64url(hmac)`, whatever the header says.
pub fn sign_raw(alg: Hmac, header: &str, payload: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
    let tag = mac(alg, input.as_bytes(), key);
    format!("{input}.{}", b64::encode(tag))
}

/// HS256 over `header` and `payload`: the tests' way to write any token the server may see.
pub fn sign_with(header: &str, payload: &str, key: &[u8]) -> String {
    sign_raw(Hmac::Sha256, header, payload, key)
}

fn mac(alg: Hmac, input: &[u8], key: &[u8]) -> Vec<u8> {
    match alg {
        Hmac::Sha256 => tag::<hmac::Hmac<sha2::Sha256>>(input, key),
        Hmac::Sha384 => tag::<hmac::Hmac<sha2::Sha384>>(input, key),
        Hmac::Sha512 => tag::<hmac::Hmac<sha2::Sha512>>(input, key),
    }
}

fn tag<M: Mac + KeyInit>(input: &[u8], key: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length (RFC 2104 §3), so this cannot fail; an empty tag would
    // only make the token invalid.
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_and_a_raw_one_matches_it() {
        let key = b"kit-test-secret-of-at-least-32-bytes";
        let t = user(13, 600, key);
        let claims = periode_sse::jwt::verify(t.as_bytes(), key, epoch_secs());
        assert!(claims.is_ok(), "{claims:?}");
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = String::from_utf8(b64::decode(parts[0]).unwrap_or_default());
        let payload = String::from_utf8(b64::decode(parts[1]).unwrap_or_default());
        let (Ok(header), Ok(payload)) = (header, payload) else { panic!("not UTF-8: {t}") };
        assert_eq!(sign_with(&header, &payload, key), t);
    }
}
