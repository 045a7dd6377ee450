//! Fuzzes the JWT verifier three ways, chosen by the first input byte:
//!
//! 0. the bytes as a token: never a panic, never accepted (no one can forge the MAC);
//! 1. the bytes as header and payload JSON (split at the first NUL), correctly signed: the
//!    claim rules run on arbitrary JSON; what passes has `alg` HS256, a user id ≥ 0 and an
//!    `exp` within the leeway;
//! 2. the bytes as edits to a valid token: whatever verifies must carry the very same
//!    `header.payload` bytes as the original, since the MAC covers exactly those.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use periode_sse::domain::{Role, UserId};
use periode_sse::jwt;

const KEY: &[u8] = b"fuzzing-key-of-at-least-thirty-two-bytes";
const NOW: i64 = 1_760_000_000;

fn signed(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut token = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY).expect("any key length");
    mac.update(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    token.into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => assert!(jwt::verify(rest, KEY, NOW).is_err(), "an unsigned token verified"),
        1 => {
            let (header, payload) = match rest.iter().position(|b| *b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (&br#"{"alg":"HS256"}"#[..], rest),
            };
            if let Ok(claims) = jwt::verify(&signed(header, payload), KEY, NOW) {
                assert!(claims.user.0 >= 0);
                assert!(NOW <= claims.expires_at.saturating_add(jwt::LEEWAY_SECS));
                let header = String::from_utf8_lossy(header);
                assert!(header.contains("HS256") && !header.contains("crit"), "{header}");
            }
        }
        _ => {
            let original = jwt::sign(UserId(13), Role::User, NOW, 3600, KEY).into_bytes();
            let mut token = original.clone();
            // Each pair of bytes is an edit: position, then the new byte (0 deletes).
            for edit in rest.chunks_exact(2) {
                if token.is_empty() {
                    break;
                }
                let at = usize::from(edit[0]) % token.len();
                match edit[1] {
                    0 => {
                        token.remove(at);
                    }
                    b => token[at] = b,
                }
            }
            if jwt::verify(&token, KEY, NOW).is_ok() {
                let signed_part = |t: &[u8]| t.iter().rposition(|b| *b == b'.').map(|i| t[..i].to_vec());
                assert_eq!(signed_part(&token), signed_part(&original), "a changed token verified");
            }
        }
    }
});
