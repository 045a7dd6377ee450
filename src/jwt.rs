//! HS256 JSON Web Tokens, verified and signed by hand (RFC 7515 compact form, RFC 7519 claims).
//! `verify` takes the bytes a peer sent, the server's key and `now`, and returns the claims the
//! rest of the server may trust, or why the token is refused; `sign` mints tokens for the `token`
//! subcommand and for tests. Every token is attacker input, so this module never panics on any
//! bytes, never does I/O, and never logs or echoes a token or any part of one: errors carry no
//! token bytes, only which rule failed.
//!
//! `verify` checks in this order, stopping at the first failure: size and shape (at most 8 KiB,
//! exactly three unpadded base64url parts), the header (`alg` exactly "HS256", no `crit`), the
//! signature (HMAC-SHA256 over the received `header.payload` bytes, compared in constant time),
//! and only then the payload: `exp` (required, then expiry), `nbf`, the user id (`sub` and/or
//! `userId`), `role`. Nothing in the payload is decoded before the signature has passed, so a
//! forged token can only ever learn "signature does not match".
//!
//! Key rotation (`Keys`, SPEC §8): a token is verified against the current key and, only when
//! that MAC does not match, against the previous key; signing only ever uses the current key.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::Sha256;

use crate::domain::{Role, UserId};

/// Clock skew tolerated on `exp` and `nbf`, in seconds (SPEC §2).
pub const LEEWAY_SECS: i64 = 60;

/// Longest token accepted, in bytes. Real tokens are a few hundred bytes; the cap bounds the
/// base64 and JSON work an unauthenticated peer can ask for.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// `{"alg":"HS256","typ":"JWT"}` in base64url: the header of every token `sign` makes.
const SIGNED_HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

type HmacSha256 = Hmac<Sha256>;

/// What a verified token says. Only `verify` makes these from peer bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user: UserId,
    pub role: Role,
    /// `exp` in unix seconds, floored when the token gave a fraction. The token stops being
    /// accepted once `now > expires_at + LEEWAY_SECS`.
    pub expires_at: i64,
}

/// Why a token was refused. Every variant is answered with the same `401 invalid_token`; the
/// detail is for logs and tests, and never includes the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three dot-separated parts, or longer than 8 KiB.
    Format,
    /// A part is not unpadded, canonical base64url.
    Base64,
    /// The header or payload is not a JSON object (or repeats a member this module reads).
    Json,
    /// The header's `alg` is missing or is anything but "HS256".
    Algorithm,
    /// The header has a `crit` member: we understand no extensions, so we must refuse.
    Critical,
    /// The MAC does not match (or the key is empty).
    Signature,
    /// `exp` plus the leeway is in the past.
    Expired,
    /// `nbf` minus the leeway is in the future.
    NotYetValid,
    /// A claim is missing or has the wrong type or value; the text says which.
    Claims(&'static str),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Format => f.write_str("token is not three base64url parts within 8 KiB"),
            JwtError::Base64 => f.write_str("token part is not unpadded base64url"),
            JwtError::Json => f.write_str("token header or payload is not a JSON object"),
            JwtError::Algorithm => f.write_str("token alg is not HS256"),
            JwtError::Critical => f.write_str("token has a crit header"),
            JwtError::Signature => f.write_str("signature does not match"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::Claims(what) => write!(f, "bad token claims: {what}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// An HS256 key with HMAC's inner and outer key blocks already hashed: a verification clones
/// it instead of hashing the key again, which saves two of the five SHA-256 compressions a
/// typical token costs. An empty key verifies nothing.
#[derive(Clone)]
pub struct Key(Option<HmacSha256>);

impl Key {
    pub fn new(bytes: &[u8]) -> Key {
        // HMAC takes keys of any length; an empty one would "verify" forged tokens.
        Key(if bytes.is_empty() { None } else { HmacSha256::new_from_slice(bytes).ok() })
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("jwt::Key(..)") // never the key itself
    }
}

/// The keys a server verifies with during a key rotation (SPEC §8): the current one
/// (`JWT_SECRET`), which is also the only one anything is signed with, and optionally the
/// previous one (`JWT_SECRET_PREVIOUS`), accepted for verification only, so that changing the
/// key logs no one out: tokens signed before the change keep working until they expire.
#[derive(Clone, Debug)]
pub struct Keys {
    current: Key,
    previous: Option<Key>,
}

impl Keys {
    /// `previous` is `None` outside a rotation. A previous key equal to the current one is
    /// harmless: it only repeats a check that already failed.
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Keys {
        Keys { current: Key::new(current), previous: previous.map(Key::new) }
    }

    /// The key tokens are signed with; the previous key is never handed out for signing.
    pub fn current(&self) -> &Key {
        &self.current
    }

    /// Whether a previous key is configured (for the start-up log line, never the key).
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// `sign` with the current key.
    pub fn sign(&self, user: UserId, role: Role, issued_at: i64, ttl_secs: i64) -> String {
        sign_with(user, role, issued_at, ttl_secs, &self.current)
    }
}

/// Checks a compact HS256 token against `key` at `now_secs` (unix seconds) and returns its
/// claims. See the module comment for the order of checks.
pub fn verify(token: &[u8], key: &[u8], now_secs: i64) -> Result<Claims, JwtError> {
    verify_with(token, &Key::new(key), now_secs)
}

/// `verify` with a prepared key: what the server calls for every request.
pub fn verify_with(token: &[u8], key: &Key, now_secs: i64) -> Result<Claims, JwtError> {
    verify_against(token, key, None, now_secs)
}

/// `verify` against the current key, and then, only if its MAC did not match, the previous
/// one. Every other rule is checked once, whichever key signed the token: a token signed
/// with the previous key is exactly as good as one signed with the current key, no better.
pub fn verify_with_keys(token: &[u8], keys: &Keys, now_secs: i64) -> Result<Claims, JwtError> {
    verify_against(token, &keys.current, keys.previous.as_ref(), now_secs)
}

fn verify_against(
    token: &[u8],
    key: &Key,
    previous: Option<&Key>,
    now_secs: i64,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Format);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Format);
    };

    // The header is read before the MAC is checked: it says which MAC, and refusing anything
    // but HS256 up front is what stops `alg: none` and algorithm-confusion tricks.
    let header: Header = parse_json_object(&decode_part(header_b64)?)?;
    match header.alg {
        Some(Value::String(alg)) if alg == "HS256" => {}
        _ => return Err(JwtError::Algorithm),
    }
    if header.crit.is_some() {
        return Err(JwtError::Critical);
    }

    // The exact bytes received, dots included: re-serialising the JSON would change them.
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    match (check_signature(signing_input, signature_b64, key), previous) {
        (Err(JwtError::Signature), Some(previous)) => {
            check_signature(signing_input, signature_b64, previous)?
        }
        (result, _) => result?,
    }

    let payload: Payload = parse_json_object(&decode_part(payload_b64)?)?;
    claims_from(&payload, now_secs)
}

/// Signs the claims `{"sub":"<id>","role":"user|admin","iat":issued_at,"exp":issued_at+ttl}`
/// into a compact JWS string.
pub fn sign(user: UserId, role: Role, issued_at: i64, ttl_secs: i64, key: &[u8]) -> String {
    sign_with(user, role, issued_at, ttl_secs, &Key::new(key))
}

/// `sign` with a prepared key. An empty key signs nothing: the token gets an empty signature,
/// which no verifier accepts.
pub fn sign_with(user: UserId, role: Role, issued_at: i64, ttl_secs: i64, key: &Key) -> String {
    let payload = format!(
        r#"{{"sub":"{}","role":"{}","iat":{},"exp":{}}}"#,
        user.0,
        role.as_str(),
        issued_at,
        issued_at.saturating_add(ttl_secs)
    );
    let mut token = String::with_capacity(SIGNED_HEADER_B64.len() + payload.len() * 4 / 3 + 48);
    token.push_str(SIGNED_HEADER_B64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    // The prepared key is cloned, not rebuilt; an empty key (`Key(None)`) leaves the token
    // with an empty signature, which no verifier accepts: failing closed, without a panic.
    let tag = key.0.clone().map(|mac| mac.chain_update(token.as_bytes()).finalize().into_bytes());
    token.push('.');
    if let Some(tag) = tag {
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    }
    token
}

/// The header members this module reads; all others (`typ`, `kid`, `jku`, `x5u`, …) are
/// ignored and never acted on. serde rejects a repeated `alg` or `crit`, so two parsers can
/// never disagree about which one counts.
#[derive(Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "present")]
    alg: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
}

/// The claims this module reads, each kept as raw JSON so that a wrong type becomes a precise
/// `JwtError::Claims` rather than a generic `Json`.
#[derive(Deserialize)]
struct Payload {
    #[serde(default, deserialize_with = "present")]
    sub: Option<Value>,
    #[serde(default, deserialize_with = "present", rename = "userId")]
    user_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    role: Option<Value>,
}

/// Deserialises a member that is present as `Some`, even when its value is `null`; plain
/// `Option` would read `"crit": null` or `"exp": null` as absent.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Verifies the MAC of `signing_input` (`header.payload` as received) against the base64url
/// `signature_b64`, in constant time.
fn check_signature(signing_input: &[u8], signature_b64: &[u8], key: &Key) -> Result<(), JwtError> {
    let signature = decode_part(signature_b64)?;
    let Some(mac) = key.0.clone() else {
        return Err(JwtError::Signature);
    };
    // `verify_slice` compares in constant time and refuses a tag of the wrong length.
    mac.chain_update(signing_input).verify_slice(&signature).map_err(|_| JwtError::Signature)
}

/// Decodes one part: the URL-safe alphabet only, no `=` padding, no whitespace, and no stray
/// low bits in the last character (so each signature has exactly one spelling).
fn decode_part(part: &[u8]) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Base64)
}

/// Parses `bytes` as one JSON object. serde_json's default recursion limit (128) stays on, so
/// deeply nested input is an error, not a stack overflow.
fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JwtError> {
    // A derived struct would also accept a JSON array, matching members by position.
    let first = bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(JwtError::Json);
    }
    serde_json::from_slice(bytes).map_err(|_| JwtError::Json)
}

/// Applies the claim rules of SPEC §2 to a payload whose signature has already passed.
fn claims_from(payload: &Payload, now_secs: i64) -> Result<Claims, JwtError> {
    let expires_at = match &payload.exp {
        None => return Err(JwtError::Claims("exp is missing")),
        Some(exp) => {
            numeric_date(exp, Rounding::Down).ok_or(JwtError::Claims("exp is not a number"))?
        }
    };
    if now_secs > expires_at.saturating_add(LEEWAY_SECS) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = &payload.nbf {
        let not_before =
            numeric_date(nbf, Rounding::Up).ok_or(JwtError::Claims("nbf is not a number"))?;
        if now_secs.saturating_add(LEEWAY_SECS) < not_before {
            return Err(JwtError::NotYetValid);
        }
    }

    let from_sub = match &payload.sub {
        None => None,
        Some(sub) => Some(id_from_sub(sub).ok_or(JwtError::Claims("sub is not a user id"))?),
    };
    let from_user_id = match &payload.user_id {
        None => None,
        Some(id) => {
            Some(non_negative_integer(id).ok_or(JwtError::Claims("userId is not a user id"))?)
        }
    };
    let user = match (from_sub, from_user_id) {
        (Some(sub), Some(user_id)) if sub != user_id => {
            return Err(JwtError::Claims("sub and userId disagree"))
        }
        (Some(id), _) | (None, Some(id)) => UserId(id),
        (None, None) => return Err(JwtError::Claims("sub or userId is missing")),
    };

    let role = match &payload.role {
        None => Role::User,
        Some(Value::String(role)) if role == "user" => Role::User,
        Some(Value::String(role)) if role == "admin" => Role::Admin,
        Some(_) => return Err(JwtError::Claims("role is not \"user\" or \"admin\"")),
    };

    Ok(Claims { user, role, expires_at })
}

/// Which way a fractional NumericDate is rounded to whole seconds. With whole-second `now`,
/// flooring `exp` and ceiling `nbf` give exactly the answers the fractions would.
#[derive(Clone, Copy)]
enum Rounding {
    Down,
    Up,
}

/// A NumericDate (RFC 7519 §2): any JSON number, in unix seconds.
fn numeric_date(value: &Value, rounding: Rounding) -> Option<i64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(secs) = number.as_i64() {
        return Some(secs);
    }
    if number.is_u64() {
        // Above i64::MAX: further in the future than anything we can compare with.
        return Some(i64::MAX);
    }
    let secs = number.as_f64()?;
    let secs = match rounding {
        Rounding::Down => secs.floor(),
        Rounding::Up => secs.ceil(),
    };
    // `as` saturates at i64's bounds; serde_json never yields NaN or infinity.
    Some(secs as i64)
}

/// `sub` is a decimal string (RFC 7519 makes it a string) or, as some issuers write it, a
/// JSON integer.
fn id_from_sub(sub: &Value) -> Option<i64> {
    match sub {
        // Digits only: `str::parse` would also take a leading '+'.
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()
        }
        Value::String(_) => None,
        other => non_negative_integer(other),
    }
}

/// A JSON integer in 0..=i64::MAX; floats such as `13.0` are not ids.
fn non_negative_integer(value: &Value) -> Option<i64> {
    value.as_i64().filter(|id| *id >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 Appendix A.1: key (a JWK `k`), token, and a clock an hour before its `exp`.
    const RFC_KEY_JWK: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    const RFC_TOKEN: &str = concat!(
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9",
        ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9p",
        "c19yb290Ijp0cnVlfQ",
        ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    );
    const RFC_EXP: i64 = 1_300_819_380;
    const RFC_NOW: i64 = RFC_EXP - 3600;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_730_000_000;

    fn rfc_key() -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(RFC_KEY_JWK).expect("the RFC key is base64url")
    }

    fn b64(bytes: &str) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with arbitrary header and payload JSON, correctly signed with `KEY`.
    fn token_with(header: &str, payload: &str) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(payload));
        let tag = HmacSha256::new_from_slice(KEY)
            .expect("any key length")
            .chain_update(signing_input.as_bytes())
            .finalize()
            .into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// A correctly signed HS256 token with the given payload.
    fn signed(payload: &str) -> String {
        token_with(r#"{"alg":"HS256","typ":"JWT"}"#, payload)
    }

    fn user(id: i64) -> Result<Claims, JwtError> {
        Ok(Claims { user: UserId(id), role: Role::User, expires_at: NOW + 600 })
    }

    #[test]
    fn rfc7515_vector_passes_the_mac_and_then_lacks_a_user() {
        let token = RFC_TOKEN.as_bytes();
        let dot = token.iter().rposition(|&b| b == b'.').expect("three parts");
        let key = rfc_key();
        assert_eq!(key.len(), 64);
        assert_eq!(check_signature(&token[..dot], &token[dot + 1..], &Key::new(&key)), Ok(()));
        assert_eq!(
            check_signature(&token[..dot], &token[dot + 1..], &Key::new(b"another key")),
            Err(JwtError::Signature)
        );
        // Signature and exp pass; it has no `sub`, so it fails on claims, not on the MAC.
        assert!(matches!(verify(token, &key, RFC_NOW), Err(JwtError::Claims(_))));
        // Leeway edges on a real, externally produced token.
        assert!(matches!(verify(token, &key, RFC_EXP + 60), Err(JwtError::Claims(_))));
        assert_eq!(verify(token, &key, RFC_EXP + 61), Err(JwtError::Expired));
    }

    #[test]
    fn rfc7515_vector_with_the_real_clock_is_expired() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        assert_eq!(verify(RFC_TOKEN.as_bytes(), &rfc_key(), now), Err(JwtError::Expired));
    }

    #[test]
    fn tampering_is_caught_by_the_mac() {
        let key = rfc_key();
        let (header, rest) = RFC_TOKEN.split_once('.').expect("dot");
        let (payload, signature) = rest.split_once('.').expect("dot");
        // Flip one payload character ('J' -> 'K' keeps it valid base64url).
        let mut flipped = payload.to_owned();
        flipped.replace_range(3..4, if &payload[3..4] == "J" { "K" } else { "J" });
        let forged = format!("{header}.{flipped}.{signature}");
        assert_eq!(verify(forged.as_bytes(), &key, RFC_NOW), Err(JwtError::Signature));

        let cases: &[(&str, &[u8])] =
            &[("right token, wrong key", b"0123456789abcdef0123456789abcdeX"), ("empty key", b"")];
        for (name, wrong_key) in cases {
            let token = sign(UserId(1), Role::User, NOW, 600, KEY);
            assert_eq!(
                verify(token.as_bytes(), wrong_key, NOW),
                Err(JwtError::Signature),
                "{name}"
            );
        }

        let token = sign(UserId(1), Role::User, NOW, 600, KEY);
        let (signing_input, signature) = token.rsplit_once('.').expect("dot");
        let cases = [
            ("empty signature", format!("{signing_input}.")),
            ("short signature", format!("{signing_input}.{}", &signature[..40])),
            ("long signature", format!("{signing_input}.{signature}AAAA")),
            (
                "signature of another token",
                format!("{signing_input}.{}", &RFC_TOKEN[RFC_TOKEN.len() - 43..]),
            ),
        ];
        for (name, token) in cases {
            assert_eq!(verify(token.as_bytes(), KEY, NOW), Err(JwtError::Signature), "{name}");
        }
    }

    #[test]
    fn header_rules() {
        let payload = r#"{"sub":"13","exp":1730000600}"#;
        let cases: &[(&str, &str, Result<Claims, JwtError>)] = &[
            ("alg none", r#"{"alg":"none"}"#, Err(JwtError::Algorithm)),
            ("alg None", r#"{"alg":"None"}"#, Err(JwtError::Algorithm)),
            ("alg HS384", r#"{"alg":"HS384"}"#, Err(JwtError::Algorithm)),
            ("alg HS512", r#"{"alg":"HS512"}"#, Err(JwtError::Algorithm)),
            ("alg RS256", r#"{"alg":"RS256"}"#, Err(JwtError::Algorithm)),
            ("alg lower case", r#"{"alg":"hs256"}"#, Err(JwtError::Algorithm)),
            ("alg not a string", r#"{"alg":256}"#, Err(JwtError::Algorithm)),
            ("alg null", r#"{"alg":null}"#, Err(JwtError::Algorithm)),
            ("alg missing", r#"{"typ":"JWT"}"#, Err(JwtError::Algorithm)),
            ("crit", r#"{"alg":"HS256","crit":["exp"]}"#, Err(JwtError::Critical)),
            ("crit null", r#"{"alg":"HS256","crit":null}"#, Err(JwtError::Critical)),
            ("alg twice", r#"{"alg":"HS256","alg":"none"}"#, Err(JwtError::Json)),
            ("header is an array", r#"["HS256"]"#, Err(JwtError::Json)),
            ("header is a string", r#""HS256""#, Err(JwtError::Json)),
            ("header is not JSON", "alg=HS256", Err(JwtError::Json)),
            ("header is empty", "", Err(JwtError::Json)),
            ("trailing bytes", r#"{"alg":"HS256"} x"#, Err(JwtError::Json)),
            (
                "ignored members",
                r#"{"alg":"HS256","typ":"JWT","kid":"k1","jku":"https://x/","x5u":"https://y/"}"#,
                user(13),
            ),
            ("whitespace in the JSON", " \r\n{ \"alg\" : \"HS256\" }\n", user(13)),
        ];
        for (name, header, want) in cases {
            let token = token_with(header, payload);
            assert_eq!(verify(token.as_bytes(), KEY, NOW), *want, "{name}");
        }
    }

    #[test]
    fn alg_none_with_an_empty_signature_is_refused() {
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"1","exp":2e9}"#));
        assert_eq!(verify(token.as_bytes(), KEY, NOW), Err(JwtError::Algorithm));
    }

    #[test]
    fn claim_rules() {
        let cases: &[(&str, &str, Result<Claims, JwtError>)] = &[
            ("sub as string", r#"{"sub":"13","exp":1730000600}"#, user(13)),
            ("sub as integer", r#"{"sub":13,"exp":1730000600}"#, user(13)),
            ("sub zero", r#"{"sub":"0","exp":1730000600}"#, user(0)),
            ("sub i64::MAX", r#"{"sub":"9223372036854775807","exp":1730000600}"#, user(i64::MAX)),
            ("userId only", r#"{"userId":13,"exp":1730000600}"#, user(13)),
            ("sub and userId agree", r#"{"sub":"13","userId":13,"exp":1730000600}"#, user(13)),
            (
                "sub and userId disagree",
                r#"{"sub":"13","userId":14,"exp":1730000600}"#,
                Err(JwtError::Claims("sub and userId disagree")),
            ),
            ("no user", r#"{"exp":1730000600}"#, Err(JwtError::Claims("sub or userId is missing"))),
            (
                "sub negative",
                r#"{"sub":"-1","exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub with plus",
                r#"{"sub":"+1","exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub empty",
                r#"{"sub":"","exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub with space",
                r#"{"sub":" 1","exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub a name",
                r#"{"sub":"joe","exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub too big",
                r#"{"sub":"9223372036854775808","exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub float",
                r#"{"sub":13.0,"exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub null",
                r#"{"sub":null,"exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "sub negative integer",
                r#"{"sub":-13,"exp":1730000600}"#,
                Err(JwtError::Claims("sub is not a user id")),
            ),
            (
                "userId as string",
                r#"{"userId":"13","exp":1730000600}"#,
                Err(JwtError::Claims("userId is not a user id")),
            ),
            (
                "userId negative",
                r#"{"userId":-1,"exp":1730000600}"#,
                Err(JwtError::Claims("userId is not a user id")),
            ),
            ("sub twice", r#"{"sub":"1","sub":"2","exp":1730000600}"#, Err(JwtError::Json)),
            (
                "role admin",
                r#"{"sub":"0","role":"admin","exp":1730000600}"#,
                Ok(Claims { user: UserId(0), role: Role::Admin, expires_at: NOW + 600 }),
            ),
            ("role user", r#"{"sub":"13","role":"user","exp":1730000600}"#, user(13)),
            (
                "role other",
                r#"{"sub":"13","role":"root","exp":1730000600}"#,
                Err(JwtError::Claims("role is not \"user\" or \"admin\"")),
            ),
            (
                "role upper case",
                r#"{"sub":"13","role":"ADMIN","exp":1730000600}"#,
                Err(JwtError::Claims("role is not \"user\" or \"admin\"")),
            ),
            (
                "role null",
                r#"{"sub":"13","role":null,"exp":1730000600}"#,
                Err(JwtError::Claims("role is not \"user\" or \"admin\"")),
            ),
            ("exp missing", r#"{"sub":"13"}"#, Err(JwtError::Claims("exp is missing"))),
            (
                "exp string",
                r#"{"sub":"13","exp":"1730000600"}"#,
                Err(JwtError::Claims("exp is not a number")),
            ),
            (
                "exp null",
                r#"{"sub":"13","exp":null}"#,
                Err(JwtError::Claims("exp is not a number")),
            ),
            (
                "exp bool",
                r#"{"sub":"13","exp":true}"#,
                Err(JwtError::Claims("exp is not a number")),
            ),
            ("exp fraction floors", r#"{"sub":"13","exp":1730000600.999}"#, user(13)),
            (
                "exp beyond u64",
                r#"{"sub":"13","exp":1e30}"#,
                Ok(Claims { user: UserId(13), role: Role::User, expires_at: i64::MAX }),
            ),
            (
                "exp beyond i64",
                r#"{"sub":"13","exp":18446744073709551615}"#,
                Ok(Claims { user: UserId(13), role: Role::User, expires_at: i64::MAX }),
            ),
            ("exp far past", r#"{"sub":"13","exp":-9223372036854775808}"#, Err(JwtError::Expired)),
            ("exp too big for JSON", r#"{"sub":"13","exp":1e400}"#, Err(JwtError::Json)),
            (
                "nbf string",
                r#"{"sub":"13","exp":1730000600,"nbf":"0"}"#,
                Err(JwtError::Claims("nbf is not a number")),
            ),
            ("nbf past", r#"{"sub":"13","exp":1730000600,"nbf":1700000000}"#, user(13)),
            // Expiry is checked before the user claims.
            ("expired and no user", r#"{"exp":1}"#, Err(JwtError::Expired)),
            ("payload is an array", r#"[1730000600]"#, Err(JwtError::Json)),
            ("payload is null", "null", Err(JwtError::Json)),
            ("payload is empty", "", Err(JwtError::Json)),
        ];
        for (name, payload, want) in cases {
            assert_eq!(verify(signed(payload).as_bytes(), KEY, NOW), *want, "{name}");
        }
    }

    #[test]
    fn exp_and_nbf_leeway_edges() {
        let exp = NOW;
        let cases: &[(&str, String, i64, Result<(), JwtError>)] = &[
            ("exp now", format!(r#"{{"sub":"1","exp":{exp}}}"#), exp, Ok(())),
            ("exp + 60", format!(r#"{{"sub":"1","exp":{exp}}}"#), exp + 60, Ok(())),
            ("exp + 61", format!(r#"{{"sub":"1","exp":{exp}}}"#), exp + 61, Err(JwtError::Expired)),
            ("exp.5 + 60", format!(r#"{{"sub":"1","exp":{exp}.5}}"#), exp + 60, Ok(())),
            (
                "exp.5 + 61",
                format!(r#"{{"sub":"1","exp":{exp}.5}}"#),
                exp + 61,
                Err(JwtError::Expired),
            ),
            (
                "nbf now + 60",
                format!(r#"{{"sub":"1","exp":{exp},"nbf":{}}}"#, NOW + 60),
                NOW,
                Ok(()),
            ),
            (
                "nbf now + 61",
                format!(r#"{{"sub":"1","exp":{exp},"nbf":{}}}"#, NOW + 61),
                NOW,
                Err(JwtError::NotYetValid),
            ),
            (
                "nbf now + 60.5",
                format!(r#"{{"sub":"1","exp":{exp},"nbf":{}.5}}"#, NOW + 60),
                NOW,
                Err(JwtError::NotYetValid),
            ),
            (
                "nbf now + 59.5",
                format!(r#"{{"sub":"1","exp":{exp},"nbf":{}.5}}"#, NOW + 59),
                NOW,
                Ok(()),
            ),
            (
                "now i64::MAX",
                format!(r#"{{"sub":"1","exp":{exp}}}"#),
                i64::MAX,
                Err(JwtError::Expired),
            ),
        ];
        for (name, payload, now, want) in cases {
            let got = verify(signed(payload).as_bytes(), KEY, *now).map(|_| ());
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        for (id, role) in [(13, Role::User), (0, Role::Admin), (i64::MAX, Role::Admin)] {
            let token = sign(UserId(id), role, NOW, 3600, KEY);
            let want = Claims { user: UserId(id), role, expires_at: NOW + 3600 };
            assert_eq!(verify(token.as_bytes(), KEY, NOW), Ok(want));
            assert_eq!(verify(token.as_bytes(), KEY, NOW + 3660), Ok(want));
            assert_eq!(verify(token.as_bytes(), KEY, NOW + 3661), Err(JwtError::Expired));
        }
        assert_eq!(b64(r#"{"alg":"HS256","typ":"JWT"}"#), SIGNED_HEADER_B64);
    }

    #[test]
    fn sign_matches_an_independent_implementation() {
        // Computed with Python's hmac/hashlib/base64 modules from the same claims and key.
        let want = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                    eyJzdWIiOiIxMyIsInJvbGUiOiJ1c2VyIiwiaWF0IjoxNzMwMDAwMDAw\
                    LCJleHAiOjE3MzAwMDM2MDB9.\
                    aBnAJQmFMPPyE4mjtNXYSKNrNcOcJaIK5kjQWf6s-nI";
        assert_eq!(sign(UserId(13), Role::User, NOW, 3600, KEY), want);
    }

    #[test]
    fn malformed_compact_forms() {
        let good = sign(UserId(1), Role::User, NOW, 600, KEY);
        let (header, rest) = good.split_once('.').expect("dot");
        let (payload, signature) = rest.split_once('.').expect("dot");
        let cases = [
            ("empty", String::new(), JwtError::Format),
            ("one part", header.to_owned(), JwtError::Format),
            ("two parts", format!("{header}.{payload}"), JwtError::Format),
            ("four parts", format!("{good}.{signature}"), JwtError::Format),
            ("trailing dot", format!("{good}."), JwtError::Format),
            ("only dots", "..".to_owned(), JwtError::Json),
            ("padded header", format!("{header}=.{payload}.{signature}"), JwtError::Base64),
            ("padded payload", format!("{header}.{payload}=.{signature}"), JwtError::Signature),
            ("padded signature", format!("{header}.{payload}.{signature}="), JwtError::Base64),
            (
                "standard alphabet",
                format!("{header}.{payload}.+{}", &signature[1..]),
                JwtError::Base64,
            ),
            ("space inside", format!("{header}.{payload}. {signature}"), JwtError::Base64),
            ("newline at end", format!("{good}\n"), JwtError::Base64),
            (
                "non-canonical last char",
                format!("{header}.{payload}.{}", non_canonical(signature)),
                JwtError::Base64,
            ),
            ("10 KiB", format!("{header}.{}.{signature}", "A".repeat(10 * 1024)), JwtError::Format),
        ];
        for (name, token, want) in cases {
            assert_eq!(verify(token.as_bytes(), KEY, NOW), Err(want), "{name}");
        }
    }

    /// The same bytes with the unused low bits of the last base64 character set.
    fn non_canonical(signature: &str) -> String {
        // 32 bytes encode to 43 characters; the last carries 4 bits and 2 unused ones.
        let mut chars: Vec<u8> = signature.bytes().collect();
        let last = chars.last_mut().expect("non-empty");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|c| c == last).expect("base64url");
        *last = alphabet[index | 1];
        String::from_utf8(chars).expect("ASCII")
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // As deep as fits in 8 KiB of token. Members we read go through serde_json's recursion
        // limit (128); members we ignore are skipped by a loop that does not recurse at all.
        let deep = format!("{}1{}", "[".repeat(2500), "]".repeat(2500));
        let known = format!(r#"{{"sub":{deep},"exp":1730000600}}"#);
        assert_eq!(verify(signed(&known).as_bytes(), KEY, NOW), Err(JwtError::Json));
        let header = format!(r#"{{"alg":{deep}}}"#);
        let token = token_with(&header, r#"{"sub":"1","exp":1730000600}"#);
        assert_eq!(verify(token.as_bytes(), KEY, NOW), Err(JwtError::Json));

        let ignored = format!(r#"{{"x":{deep},"sub":"1","exp":1730000600}}"#);
        assert!(signed(&ignored).len() <= MAX_TOKEN_BYTES);
        assert!(verify(signed(&ignored).as_bytes(), KEY, NOW).is_ok());
        let header = format!(r#"{{"alg":"HS256","x":{deep}}}"#);
        let token = token_with(&header, r#"{"sub":"1","exp":1730000600}"#);
        assert!(verify(token.as_bytes(), KEY, NOW).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let good = sign(UserId(7), Role::Admin, NOW, 600, KEY).into_bytes();
        let alphabet = b"AZaz09-_.=+/ {}\"\xff\x00\xc3";
        for round in 0..20_000 {
            let token: Vec<u8> = match round % 3 {
                // Raw bytes of any value, including invalid UTF-8.
                0 => (0..next() % 300).map(|_| next() as u8).collect(),
                // Characters that matter to the parsers.
                1 => (0..next() % 300)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
                // A valid token with one to three bytes changed.
                _ => {
                    let mut token = good.clone();
                    for _ in 0..1 + next() % 3 {
                        let at = (next() % token.len() as u64) as usize;
                        token[at] = next() as u8;
                    }
                    token
                }
            };
            let result = verify(&token, KEY, NOW);
            if token != good {
                assert!(result.is_err(), "accepted a changed token: {token:?}");
            }
        }
    }

    #[test]
    fn rotation_accepts_the_previous_key_for_verification_only() {
        const OLD: &[u8] = b"the-previous-key-0123456789abcdef";
        const OTHER: &[u8] = b"some-other-key-0123456789abcdefgh";
        let keys = Keys::new(KEY, Some(OLD));
        assert!(keys.rotating());
        let want = Claims { user: UserId(13), role: Role::User, expires_at: NOW + 600 };
        let by_current = sign(UserId(13), Role::User, NOW, 600, KEY);
        let by_previous = sign(UserId(13), Role::User, NOW, 600, OLD);
        let by_other = sign(UserId(13), Role::User, NOW, 600, OTHER);
        assert_eq!(verify_with_keys(by_current.as_bytes(), &keys, NOW), Ok(want));
        assert_eq!(verify_with_keys(by_previous.as_bytes(), &keys, NOW), Ok(want));
        assert_eq!(
            verify_with_keys(by_other.as_bytes(), &keys, NOW),
            Err(JwtError::Signature),
            "a key that is neither current nor previous"
        );
        // Without a rotation the previous key's tokens are refused again.
        let current_only = Keys::new(KEY, None);
        assert!(!current_only.rotating());
        assert_eq!(verify_with_keys(by_current.as_bytes(), &current_only, NOW), Ok(want));
        assert_eq!(
            verify_with_keys(by_previous.as_bytes(), &current_only, NOW),
            Err(JwtError::Signature)
        );
        // The previous key gets no leniency: expiry and claims are checked as for the current.
        assert_eq!(
            verify_with_keys(by_previous.as_bytes(), &keys, NOW + 661),
            Err(JwtError::Expired)
        );
        let no_user = token_with(r#"{"alg":"HS256"}"#, r#"{"exp":1730000600}"#);
        assert_eq!(
            verify_with_keys(no_user.as_bytes(), &Keys::new(OTHER, Some(KEY)), NOW),
            Err(JwtError::Claims("sub or userId is missing"))
        );
        // Errors before the MAC are not retried with the previous key.
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"1","exp":2e9}"#));
        assert_eq!(verify_with_keys(none.as_bytes(), &keys, NOW), Err(JwtError::Algorithm));
        // An empty previous key verifies nothing.
        let empty_previous = Keys::new(KEY, Some(b""));
        let by_empty = sign(UserId(13), Role::User, NOW, 600, b"");
        assert_eq!(
            verify_with_keys(by_empty.as_bytes(), &empty_previous, NOW),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn rotation_signs_with_the_current_key_only() {
        const OLD: &[u8] = b"the-previous-key-0123456789abcdef";
        let keys = Keys::new(KEY, Some(OLD));
        let token = keys.sign(UserId(13), Role::User, NOW, 3600);
        assert_eq!(token, sign(UserId(13), Role::User, NOW, 3600, KEY));
        assert_eq!(token, sign_with(UserId(13), Role::User, NOW, 3600, keys.current()));
        assert!(verify(token.as_bytes(), KEY, NOW).is_ok());
        assert_eq!(verify(token.as_bytes(), OLD, NOW), Err(JwtError::Signature));
        // Debug shows neither key.
        let shown = format!("{keys:?}");
        assert!(!shown.contains("previous-key") && !shown.contains("0123"), "{shown}");
    }

    #[test]
    fn errors_display_without_token_bytes() {
        let cases = [
            (JwtError::Expired, "token expired"),
            (JwtError::Signature, "signature does not match"),
            (JwtError::Algorithm, "token alg is not HS256"),
            (
                JwtError::Claims("sub and userId disagree"),
                "bad token claims: sub and userId disagree",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }
}
