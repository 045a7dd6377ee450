//! Property tests (proptest, on stable) for the pure layers that see peer bytes: the request
//! parser, the JWT verifier, RFC 3339 times, percent-decoding, SSE framing and the timer wheel.
//! Case counts are bounded so the whole file runs in seconds in a debug build; the cargo-fuzz
//! targets in `fuzz/` run the same entry points for as long as one likes.
//!
//! Invariants checked: nothing panics on any input; the parser never claims more bytes than it
//! was given, and a request split anywhere is `Partial` until its last byte and then the same
//! `Complete`; no changed token ever verifies; times round-trip; every timer fires on time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use periode_sse::domain::{Role, UserId};
use periode_sse::http::{self, parse_request, Method, Parse};
use periode_sse::jwt;
use periode_sse::sse;
use periode_sse::time::{format_rfc3339_ms, parse_rfc3339_ms};
use periode_sse::timer::TimerWheel;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// `cases` cases, and no regression files written beside the sources: a failure prints its
/// minimal input, which belongs in a plain `#[test]` (see the regressions at the bottom).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- the request parser ----------------------------------------------------------------------

/// What must hold for any input, whatever the verdict.
fn check_parse_invariants(buf: &[u8]) -> Result<(), TestCaseError> {
    match parse_request(buf) {
        Parse::Partial => {
            // A partial head is only ever held up to the head limit (plus a body's worth).
            prop_assert!(
                buf.len() <= http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES,
                "Partial on {} bytes",
                buf.len()
            );
        }
        Parse::Complete(req, used) => {
            prop_assert!(used >= 1 && used <= buf.len(), "used {used} of {}", buf.len());
            prop_assert!(req.body.len() <= http::MAX_BODY_BYTES);
            prop_assert!(used - req.body.len() <= http::MAX_HEAD_BYTES, "head over 8 KiB");
            prop_assert!(!req.path.contains('?'), "the query is split off the path");
            prop_assert!(!req.path.contains('\0') && !req.query.contains('\0'));
            if req.http10 && req.keep_alive {
                // HTTP/1.0 keeps the connection only when asked to.
                prop_assert!(contains_ci(&buf[..used], b"keep-alive"));
            }
        }
        Parse::Reject(r) => {
            prop_assert!(
                [400, 413, 431, 501].contains(&r.status),
                "unexpected rejection status {}",
                r.status
            );
        }
    }
    Ok(())
}

fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// A valid request, and what the parser must read from it.
#[derive(Debug, Clone)]
struct ValidRequest {
    bytes: Vec<u8>,
    method: Method,
    path: String,
    query: String,
    body: Vec<u8>,
    http10: bool,
    keep_alive: bool,
}

fn method_strategy() -> impl Strategy<Value = (&'static str, Method)> {
    prop_oneof![
        Just(("GET", Method::Get)),
        Just(("POST", Method::Post)),
        Just(("PUT", Method::Put)),
        Just(("OPTIONS", Method::Options)),
        Just(("HEAD", Method::Head)),
        Just(("DELETE", Method::Other)),
    ]
}

fn valid_request() -> impl Strategy<Value = ValidRequest> {
    let header = ("[A-Za-z][A-Za-z0-9-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?").prop_filter(
        "framing headers are chosen separately",
        |(name, _)| {
            let lower = name.to_ascii_lowercase();
            lower != "content-length" && lower != "transfer-encoding" && lower != "connection"
        },
    );
    (
        method_strategy(),
        // Paths may carry UTF-8 (httparse takes bytes above 0x7f in the target).
        prop_oneof![3 => "/[A-Za-z0-9._~/-]{0,40}", 1 => "/([A-Za-z0-9._~/-]|[^\x00-\x7f]){0,20}"],
        proptest::option::of("[A-Za-z0-9=&%._-]{0,40}"),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just("close"), Just("keep-alive"), Just("Keep-Alive")]),
        prop::collection::vec(header, 0..8),
        prop::collection::vec(any::<u8>(), 0..120),
        any::<bool>(),
    )
        .prop_map(
            |((method_text, method), path, query, http10, connection, headers, body, length)| {
                let target = match &query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.clone(),
                };
                let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                let mut head = format!("{method_text} {target} {version}\r\n");
                for (name, value) in &headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                if let Some(c) = connection {
                    head.push_str(&format!("Connection: {c}\r\n"));
                }
                // A body needs a Content-Length; an empty one may have it or not.
                if !body.is_empty() || length {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                head.push_str("\r\n");
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(&body);
                let keep_alive = match connection {
                    Some("close") => false,
                    Some(_) => true,
                    None => !http10,
                };
                ValidRequest {
                    bytes,
                    method,
                    path,
                    query: query.unwrap_or_default(),
                    body,
                    http10,
                    keep_alive,
                }
            },
        )
}

/// Bytes assembled from pieces that matter to an HTTP parser: more likely than uniform bytes
/// to get deep into it.
fn http_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"GET ",
        b"POST ",
        b"PRI * HTTP/2.0",
        b"/",
        b"/api/periode-limit/notifications/stream",
        b"?access_token=",
        b"%",
        b"%zz",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"\r",
        b": ",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Authorization: Bearer ",
        b"Last-Event-ID: ",
        b"0",
        b"65536",
        b"99999999999999999999",
        b"-1",
        b"\0",
        b"\xff",
        b"\t",
        b" ",
        b"a",
        b"{\"amount\":1}",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..40).prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match *m {
        Mutation::Replace(at, b) if len > 0 => bytes[at % len] = b,
        Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
        Mutation::Delete(at) if len > 0 => {
            bytes.remove(at % len);
        }
        Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
        Mutation::Duplicate(at, n) if len > 0 => {
            let from = at % len;
            let to = (from + n).min(len);
            let copy = bytes[from..to].to_vec();
            bytes.splice(to..to, copy);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_parse_invariants(&buf)?;
    }

    #[test]
    fn parse_never_panics_on_http_ish_bytes(buf in http_ish_bytes()) {
        check_parse_invariants(&buf)?;
    }
}

proptest! {
    #![proptest_config(config(800))]

    #[test]
    fn parse_never_panics_on_mutated_requests(
        req in valid_request(),
        mutations in prop::collection::vec(mutation(), 1..6),
        pipelined in any::<bool>(),
    ) {
        let mut bytes = req.bytes.clone();
        if pipelined {
            bytes.extend_from_slice(&req.bytes);
        }
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_parse_invariants(&bytes)?;
    }

    /// Oversized inputs: the verdict comes from the limits, never from reading everything.
    #[test]
    fn parse_holds_its_limits(
        req in valid_request(),
        pad in 8 * 1024usize..12 * 1024,
        body_len in 0usize..80 * 1024,
    ) {
        // A header big enough to push the head past 8 KiB: 431, complete or not.
        let text = String::from_utf8_lossy(&req.bytes).to_string();
        let (first_line, _) = text.split_once("\r\n").unwrap_or((&text, ""));
        let big = format!("{first_line}\r\nX-Pad: {}\r\n\r\n", "p".repeat(pad));
        match parse_request(big.as_bytes()) {
            Parse::Reject(r) => prop_assert_eq!(r.status, 431),
            other => prop_assert!(false, "a {}-byte head: {:?}", big.len(), other),
        }
        match parse_request(&big.as_bytes()[..big.len() - 4]) {
            Parse::Reject(r) => prop_assert_eq!(r.status, 431),
            other => prop_assert!(false, "an unfinished {}-byte head: {:?}", big.len(), other),
        }
        // A Content-Length over 64 KiB is refused from the head alone.
        let head = format!("POST /x HTTP/1.1\r\nContent-Length: {body_len}\r\n\r\n");
        let verdict = parse_request(head.as_bytes());
        if body_len > http::MAX_BODY_BYTES {
            prop_assert!(matches!(verdict, Parse::Reject(r) if r.status == 413));
        } else if body_len > 0 {
            prop_assert_eq!(verdict, Parse::Partial);
        }
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Split anywhere: every proper prefix is Partial; the whole is Complete with exactly its
    /// own length, the same with another request pipelined behind it, and it reads back what
    /// was written.
    #[test]
    fn a_split_request_is_partial_then_the_same_complete(
        req in valid_request(),
        next in valid_request(),
    ) {
        for cut in 0..req.bytes.len() {
            let verdict = parse_request(&req.bytes[..cut]);
            prop_assert_eq!(verdict, Parse::Partial, "cut at {} of {}", cut, req.bytes.len());
        }
        let whole = parse_request(&req.bytes);
        let Parse::Complete(parsed, used) = whole else {
            return Err(TestCaseError::fail(format!("not complete: {whole:?}")));
        };
        prop_assert_eq!(used, req.bytes.len());
        prop_assert_eq!(parsed.method, req.method);
        prop_assert_eq!(parsed.path, req.path.as_str());
        prop_assert_eq!(parsed.query, req.query.as_str());
        prop_assert_eq!(parsed.body, &req.body[..]);
        prop_assert_eq!(parsed.http10, req.http10);
        prop_assert_eq!(parsed.keep_alive, req.keep_alive);

        let mut two = req.bytes.clone();
        two.extend_from_slice(&next.bytes);
        let again = parse_request(&two);
        prop_assert_eq!(again, parse_request(&req.bytes), "a pipelined request changed the first");
        if let Parse::Complete(_, used) = parse_request(&two) {
            let second = parse_request(&two[used..]);
            prop_assert!(
                matches!(second, Parse::Complete(_, n) if n == next.bytes.len()),
                "the pipelined request: {:?}", second
            );
        }
    }
}

// ---- percent-decoding ------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn percent_decode_never_panics(input in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Some(out) = http::percent_decode(&input) {
            prop_assert!(out.len() <= input.len());
        }
    }

    #[test]
    fn percent_decode_never_panics_on_escapes(input in "([%+a-zA-Z0-9]|%[0-9a-fA-F]{0,2}){0,60}") {
        if let Some(out) = http::percent_decode(input.as_bytes()) {
            prop_assert!(out.len() <= input.len());
        }
        let _ = http::query_param(&input, "access_token");
        let _ = http::query_param(&format!("access_token={input}&lastEventId={input}"), "lastEventId");
    }

    #[test]
    fn percent_decode_inverts_percent_encoding(
        bytes in prop::collection::vec(any::<u8>(), 0..100),
        upper in any::<bool>(),
    ) {
        let encoded: String = bytes
            .iter()
            .map(|b| if upper { format!("%{b:02X}") } else { format!("%{b:02x}") })
            .collect();
        prop_assert_eq!(http::percent_decode(encoded.as_bytes()), Some(bytes.clone()));
        let query = format!("x=1&access_token={encoded}");
        let want = if bytes.is_empty() { Some(Vec::new()) } else { Some(bytes) };
        prop_assert_eq!(http::query_param(&query, "access_token"), want);
    }
}

// ---- JWT -------------------------------------------------------------------------------------

const KEY: &[u8] = b"property-test-key-of-at-least-32-bytes";
const NOW: i64 = 1_760_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(header: &str, payload: &str, key: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// A JSON value of the kinds claims come in, odd ones included.
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        (NOW - 200..NOW + 200).prop_map(|v| v.to_string()),
        (NOW - 200..NOW + 200, 0u32..1000).prop_map(|(v, f)| format!("{v}.{f:03}")),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1e400".to_string()),
        Just("-0".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        "[0-9]{0,25}".prop_map(|s| format!("\"{s}\"")),
        "[ -~&&[^\"\\\\]]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("\"admin\"".to_string()),
        Just("\"user\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[[[[[[1]]]]]]".to_string()),
    ]
}

/// A payload object with any subset of the claims the verifier reads, plus noise.
fn payload() -> impl Strategy<Value = String> {
    let member = (
        prop_oneof![
            Just("sub"),
            Just("userId"),
            Just("exp"),
            Just("nbf"),
            Just("role"),
            Just("iat"),
            Just("x"),
        ],
        json_value(),
    );
    prop::collection::vec(member, 0..7).prop_map(|members| {
        let inner: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    })
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_string()),
        1 => json_value().prop_map(|v| format!(r#"{{"alg":{v}}}"#)),
        1 => json_value().prop_map(|v| format!(r#"{{"alg":"HS256","crit":{v}}}"#)),
        1 => json_value().prop_map(|v| format!(r#"{{"alg":"HS256","kid":{v}}}"#)),
        1 => Just(r#"{"alg":"HS256","alg":"HS256"}"#.to_string()),
        1 => "[ -~]{0,20}",
    ]
}

/// A token as `sign` makes it.
fn signed_token() -> impl Strategy<Value = (String, i64, Role)> {
    (0..=i64::MAX, any::<bool>(), 61i64..100_000).prop_map(|(user, admin, ttl)| {
        let role = if admin { Role::Admin } else { Role::User };
        (jwt::sign(UserId(user), role, NOW, ttl, KEY), user, role)
    })
}

/// Characters a token mutation may bring in: the base64url alphabet, its look-alikes and
/// bytes that are not text at all.
fn token_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()
        ),
        1 => prop::sample::select(b".=+/ \t\r\n\0".to_vec()),
        1 => any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum TokenMutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    SwapParts(usize, usize),
}

fn token_mutation() -> impl Strategy<Value = TokenMutation> {
    prop_oneof![
        4 => (any::<usize>(), token_byte()).prop_map(|(at, b)| TokenMutation::Replace(at, b)),
        2 => (any::<usize>(), token_byte()).prop_map(|(at, b)| TokenMutation::Insert(at, b)),
        2 => any::<usize>().prop_map(TokenMutation::Delete),
        1 => (0usize..3, 0usize..3).prop_map(|(a, b)| TokenMutation::SwapParts(a, b)),
    ]
}

fn apply_token_mutation(token: &mut Vec<u8>, m: &TokenMutation) {
    let len = token.len();
    match *m {
        TokenMutation::Replace(at, b) if len > 0 => token[at % len] = b,
        TokenMutation::Insert(at, b) => token.insert(at % (len + 1), b),
        TokenMutation::Delete(at) if len > 0 => {
            token.remove(at % len);
        }
        TokenMutation::SwapParts(a, b) => {
            let mut parts: Vec<Vec<u8>> = token.split(|c| *c == b'.').map(<[u8]>::to_vec).collect();
            if a < parts.len() && b < parts.len() {
                parts.swap(a, b);
                *token = parts.join(&b'.');
            }
        }
        _ => {}
    }
}

/// The one change to a token that leaves what it says intact: re-spelling the signature's
/// last base64 character with different unused low bits. The MAC bytes are the same, so
/// accepting it would be harmless; refusing it (strict canonical base64) is fine too.
fn same_claims_and_mac(original: &[u8], mutated: &[u8]) -> bool {
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let (Some(a), Some(b)) =
        (original.iter().rposition(|c| *c == b'.'), mutated.iter().rposition(|c| *c == b'.'))
    else {
        return false;
    };
    original[..a] == mutated[..b]
        && matches!(
            (lenient.decode(&original[a + 1..]), lenient.decode(&mutated[b + 1..])),
            (Ok(x), Ok(y)) if x == y
        )
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn verify_never_panics_on_arbitrary_bytes(token in prop::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(jwt::verify(&token, KEY, NOW).is_err());
    }

    #[test]
    fn verify_refuses_unsigned_parts(
        parts in prop::collection::vec(prop::collection::vec(token_byte(), 0..80), 0..5),
    ) {
        let token = parts.join(&b'.');
        prop_assert!(jwt::verify(&token, KEY, NOW).is_err());
    }

    /// Correctly signed tokens with any claims: never a panic, and what is accepted obeys
    /// SPEC §2 (a non-negative user, not expired beyond the leeway, a known role).
    #[test]
    fn verify_applies_the_claim_rules_to_signed_tokens(header in header(), payload in payload()) {
        let token = hs256(&header, &payload, KEY);
        let result = jwt::verify(token.as_bytes(), KEY, NOW);
        if let Ok(claims) = result {
            prop_assert!(header.contains(r#""alg":"HS256""#), "accepted header {header}");
            prop_assert!(!header.contains("crit"), "accepted a crit header {header}");
            prop_assert!(claims.user.0 >= 0);
            prop_assert!(NOW <= claims.expires_at.saturating_add(jwt::LEEWAY_SECS));
            prop_assert!(payload.contains("\"exp\""));
            prop_assert!(payload.contains("\"sub\"") || payload.contains("\"userId\""));
        }
        // The same token under another key never verifies.
        let other_key = b"another-key-of-at-least-32-bytes!!";
        prop_assert!(jwt::verify(token.as_bytes(), other_key, NOW).is_err());
    }

    /// No change to a valid token's bytes makes a token that verifies (beyond the harmless
    /// re-spelling of the signature's unused bits, see `same_claims_and_mac`).
    #[test]
    fn verify_never_accepts_a_changed_token(
        (token, user, role) in signed_token(),
        mutations in prop::collection::vec(token_mutation(), 1..4),
    ) {
        let original = token.into_bytes();
        let claims = jwt::verify(&original, KEY, NOW).expect("sign then verify");
        prop_assert_eq!((claims.user, claims.role), (UserId(user), role));
        let mut changed = original.clone();
        for m in &mutations {
            apply_token_mutation(&mut changed, m);
        }
        if changed != original && jwt::verify(&changed, KEY, NOW).is_ok() {
            prop_assert!(
                same_claims_and_mac(&original, &changed),
                "a changed token verified: {:?}", String::from_utf8_lossy(&changed)
            );
        }
    }
}

// ---- RFC 3339 --------------------------------------------------------------------------------

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in epoch ms: what four-digit years
/// can write.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// Days since 1970-01-01 of a civil date, computed independently of the server (by counting
/// whole years and months), as an oracle.
fn days_since_epoch(year: i64, month: u32, day: u32) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_before_year = |y: i64| {
        // Days from 0000-01-01 to y-01-01.
        let y1 = y - 1;
        if y == 0 {
            0
        } else {
            365 * y + y1.div_euclid(4) - y1.div_euclid(100) + y1.div_euclid(400) + 1
        }
    };
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut days = days_before_year(year) - days_before_year(1970);
    for m in 1..month {
        days += month_days[(m - 1) as usize] + i64::from(m == 2 && leap(year));
    }
    days + i64::from(day) - 1
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn rfc3339_round_trips(ms in MIN_MS..=MAX_MS) {
        let text = format_rfc3339_ms(ms);
        prop_assert_eq!(text.len(), 24, "{}", text);
        prop_assert_eq!(parse_rfc3339_ms(&text), Ok(ms), "{}", text);
    }

    #[test]
    fn rfc3339_formats_any_instant_parseably(ms in any::<i64>()) {
        let text = format_rfc3339_ms(ms);
        prop_assert_eq!(parse_rfc3339_ms(&text), Ok(ms.clamp(MIN_MS, MAX_MS)), "{}", text);
    }

    #[test]
    fn rfc3339_sorts_as_instants(a in MIN_MS..=MAX_MS, b in MIN_MS..=MAX_MS) {
        prop_assert_eq!(a.cmp(&b), format_rfc3339_ms(a).cmp(&format_rfc3339_ms(b)));
    }

    #[test]
    fn rfc3339_parse_never_panics(text in "[0-9Tt:.Zz+ -]{0,40}", bytes in ".{0,40}") {
        for input in [&text, &bytes] {
            if let Ok(ms) = parse_rfc3339_ms(input) {
                prop_assert!((MIN_MS..=MAX_MS).contains(&ms), "{} → {}", input, ms);
                prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
            }
        }
    }

    /// Any well-formed date-time, any offset and fraction, against an independent oracle.
    #[test]
    fn rfc3339_parses_what_it_should(
        (year, month, day) in (0i64..=9999, 1u32..=12)
            .prop_flat_map(|(y, m)| (Just(y), Just(m), 1..=days_in_month(y, m))),
        (hour, minute, second) in (0u32..24, 0u32..60, 0u32..60),
        fraction in proptest::option::of("[0-9]{1,9}"),
        offset in proptest::option::of((any::<bool>(), 0u32..24, 0u32..60)),
        lower in any::<bool>(),
    ) {
        let mut text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
        if lower {
            text = text.replace('T', "t");
        }
        let mut millis = 0i64;
        if let Some(f) = &fraction {
            text.push('.');
            text.push_str(f);
            let first3 = format!("{f:0<3}");
            millis = first3[..3].parse().expect("digits");
        }
        let offset_minutes = match offset {
            None => {
                text.push(if lower { 'z' } else { 'Z' });
                0
            }
            Some((negative, h, m)) => {
                text.push_str(&format!("{}{h:02}:{m:02}", if negative { '-' } else { '+' }));
                let minutes = i64::from(h * 60 + m);
                if negative { -minutes } else { minutes }
            }
        };
        let want = days_since_epoch(year, month, day) * 86_400_000
            + i64::from((hour * 60 + minute) * 60 + second) * 1000
            + millis
            - offset_minutes * 60_000;
        let got = parse_rfc3339_ms(&text);
        if (MIN_MS..=MAX_MS).contains(&want) {
            prop_assert_eq!(got, Ok(want), "{}", text);
        } else {
            prop_assert!(got.is_err(), "{} is outside years 0000-9999 in UTC: {:?}", text, got);
        }
    }
}

// ---- SSE framing -----------------------------------------------------------------------------

/// What a WHATWG (HTML §9.2.6) parser makes of a stream: (event type, data, last event id),
/// through the kit's SSE oracle (the one the integration tests read streams with).
fn whatwg_events(stream: &str) -> Vec<(String, String, String)> {
    periode_kit::sse::parse_all(stream)
        .into_iter()
        .filter(|ev| ev.retry.is_none() || !ev.data.is_empty())
        .map(|ev| {
            let name = if ev.event.is_empty() { "message".to_string() } else { ev.event };
            (name, ev.data, ev.id.unwrap_or_default())
        })
        .collect()
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any data, any event name: a browser sees exactly one event carrying the data (line
    /// breaks normalised to LF), the name without line breaks, and the id.
    #[test]
    fn sse_events_survive_any_data(
        data in "(.|\r|\n|\r\n){0,80}",
        name in "[a-z]([ -~]|\r|\n){0,20}",
        id in proptest::option::of(any::<u64>()),
        chunked in any::<bool>(),
    ) {
        let mut out = Vec::new();
        let frame = if chunked {
            sse::encode_chunk(&mut out, |o| sse::encode_event(o, id, &name, &data))
        } else {
            sse::encode_event(&mut out, id, &name, &data);
            0..out.len()
        };
        if chunked {
            // `<hex len>\r\n<frame>\r\n`, and the length is right.
            let text = String::from_utf8(out.clone()).expect("UTF-8 in, UTF-8 out");
            let (size, rest) = text.split_once("\r\n").expect("size line");
            let size = usize::from_str_radix(size, 16).expect("hex size");
            prop_assert_eq!(size, frame.len());
            prop_assert_eq!(&rest.as_bytes()[..size], &out[frame.clone()]);
            prop_assert_eq!(&rest.as_bytes()[size..], b"\r\n");
        }
        let text = String::from_utf8(out[frame].to_vec()).expect("UTF-8");
        let events = whatwg_events(&text);
        prop_assert_eq!(events.len(), 1, "{:?}", text);
        let (got_name, got_data, got_id) = &events[0];
        let want_name: String = name.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        prop_assert_eq!(got_name, &want_name);
        prop_assert_eq!(got_data, &data.replace("\r\n", "\n").replace('\r', "\n"));
        prop_assert_eq!(got_id, &id.map(|i| i.to_string()).unwrap_or_default());
    }
}

// ---- the timer wheel -------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum TimerOp {
    /// Schedule key at now + delay.
    Schedule(usize, u64),
    Cancel(usize),
    /// Move the clock forward, then expire what is due.
    Advance(u64),
}

fn timer_op() -> impl Strategy<Value = TimerOp> {
    prop_oneof![
        3 => (0usize..24, prop_oneof![0u64..30, 0u64..2_000, 0u64..100_000])
            .prop_map(|(k, d)| TimerOp::Schedule(k, d)),
        1 => (0usize..24).prop_map(TimerOp::Cancel),
        4 => prop_oneof![0u64..15, 0u64..1_000, 0u64..50_000].prop_map(TimerOp::Advance),
    ]
}

/// How late the wheel may fire: its tick (deadlines are filed per 10 ms slot, and one due in
/// the slot being expired goes to the next). Lateness beyond this is a bug.
const TIMER_SLACK_MS: u64 = 10;

proptest! {
    #![proptest_config(config(500))]

    /// Against a plain map: each `expire_due` returns the keys whose deadline has come (never
    /// early, never twice, never more than one tick late), and `next_wait_ms` never sleeps
    /// past that — the loop's timeouts, heartbeats and expiries all depend on both.
    #[test]
    fn the_timer_wheel_fires_every_deadline_on_time(
        start in 0u64..1_000_000,
        ops in prop::collection::vec(timer_op(), 1..200),
    ) {
        let mut wheel = TimerWheel::new(start);
        // key → (deadline, the latest instant it may fire at)
        let mut model: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        let mut now = start;
        let mut due = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                TimerOp::Schedule(key, delay) => {
                    let deadline = now + delay;
                    wheel.schedule(key, deadline);
                    model.insert(key, (deadline, deadline.max(now) + TIMER_SLACK_MS));
                }
                TimerOp::Cancel(key) => {
                    wheel.cancel(key);
                    model.remove(&key);
                }
                TimerOp::Advance(by) => {
                    match wheel.next_wait_ms(now) {
                        Some(wait) => {
                            let latest = model.values().map(|(_, l)| *l).min();
                            let latest = latest.expect("the wheel has a deadline the model lacks");
                            prop_assert!(
                                now + wait <= latest.max(now),
                                "step {}: at {} ms next_wait_ms is {}, past {} (deadlines {:?})",
                                step, now, wait, latest, model
                            );
                        }
                        None => prop_assert!(model.is_empty(), "step {}: {:?} pending", step, model),
                    }
                    now += by;
                    due.clear();
                    wheel.expire_due(now, &mut due);
                    for key in &due {
                        let entry = model.remove(key);
                        prop_assert!(entry.is_some(), "step {}: fired {} twice or unscheduled", step, key);
                        let (deadline, _) = entry.unwrap_or_default();
                        prop_assert!(deadline <= now, "step {}: fired {} early", step, key);
                    }
                    let late: Vec<_> = model.iter().filter(|(_, (_, l))| *l <= now).collect();
                    prop_assert!(
                        late.is_empty(),
                        "step {}: at {} ms these did not fire: {:?} (key → (deadline, latest)); ops {:?}",
                        step, now, late, &ops[..=step]
                    );
                }
            }
            prop_assert_eq!(wheel.len(), model.len());
        }
    }
}

// ---- regressions: minimal inputs proptest found, kept as plain tests ------------------------

/// A deadline checked once inside its own 10 ms tick, before it was due, must still fire once
/// it is due, not a whole turn of the wheel (40.96 s) later. Found by
/// `the_timer_wheel_fires_every_deadline_on_time`; over sockets it shows up as heartbeats that
/// stop for seconds under load and slowloris requests not answered 408 after 10 s.
#[test]
fn a_deadline_seen_early_in_its_tick_still_fires() {
    let mut wheel = TimerWheel::new(0);
    let mut due = Vec::new();
    wheel.schedule(7, 15);
    wheel.expire_due(10, &mut due);
    assert_eq!(due, Vec::<usize>::new(), "not due at 10 ms");
    let wait = wheel.next_wait_ms(10);
    assert!(wait.is_some_and(|w| w <= 15), "at 10 ms the next wait is {wait:?}, the deadline 15");
    wheel.expire_due(30, &mut due);
    assert_eq!(due, vec![7], "the 15 ms deadline has not fired at 30 ms");
}

/// A UTF-8 character across byte 7 or 8 of the target (where `http://` / `https://` would
/// end) must not panic the parser: over a socket this request kills the whole server. Found by
/// the `request` fuzz target.
#[test]
fn a_utf8_target_does_not_panic() {
    for target in ["/abcdeé", "/abcdefé", "/ߧߧߧߧ", "hé", "é/"] {
        let raw = format!("GET {target} HTTP/1.1\r\n\r\n");
        let verdict = std::panic::catch_unwind(|| match parse_request(raw.as_bytes()) {
            Parse::Complete(req, _) => Some(req.path.to_string()),
            _ => None,
        });
        assert!(verdict.is_ok(), "parse_request panicked on {raw:?}");
    }
}
