//! Authentication (SPEC §2): missing, malformed, forged and expired tokens, the accepted
//! forms (header and `access_token`), inactive and unknown users, admin-only routes.
//! Each test starts its own server (the real binary) on a free loopback port with a temporary
//! SQLite file; every wait has a deadline.

mod common;
use common::*;

#[test]
fn a_missing_token_is_401_bearer() {
    let server = Server::start(&[]);
    for path in [HEALTH, STATUS, STREAM, "/metrics"] {
        let r = server.get(path, None);
        assert_error(&r, 401, None, path);
        assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"), "{path}");
    }
    // An empty access_token is no token either.
    let r = server.get(&format!("{HEALTH}?access_token="), None);
    assert_error(&r, 401, None, "empty access_token");
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"));
}

#[test]
fn bad_tokens_are_401_invalid_token() {
    let server = Server::start(&[]);
    let now = now_secs();
    let good_payload = format!(r#"{{"sub":"13","exp":{}}}"#, now + 600);
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let good = sign(&good_payload);
    let (gh, gp, gs) = {
        let parts: Vec<&str> = good.split('.').collect();
        (parts[0].to_string(), parts[1].to_string(), parts[2].to_string())
    };
    let mut flipped_sig = b64_decode(&gs);
    flipped_sig[0] ^= 1;
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "abc".to_string()),
        ("wrong key", sign_with(hs256, &good_payload, b"another-secret-of-thirty-two-bytes!!")),
        ("flipped signature bit", format!("{gh}.{gp}.{}", b64(&flipped_sig))),
        (
            "alg none, empty signature",
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good_payload)),
        ),
        (
            "alg none, no signature part",
            format!("{}.{}", b64(r#"{"alg":"none"}"#), b64(&good_payload)),
        ),
        (
            "alg HS512",
            sign_with(r#"{"alg":"HS512","typ":"JWT"}"#, &good_payload, SECRET.as_bytes()),
        ),
        (
            "alg hs256 lowercase",
            sign_with(r#"{"alg":"hs256","typ":"JWT"}"#, &good_payload, SECRET.as_bytes()),
        ),
        ("alg missing", sign_with(r#"{"typ":"JWT"}"#, &good_payload, SECRET.as_bytes())),
        (
            "crit header",
            sign_with(r#"{"alg":"HS256","crit":["exp"]}"#, &good_payload, SECRET.as_bytes()),
        ),
        ("expired", sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now - 120))),
        ("exp missing", sign(r#"{"sub":"13"}"#)),
        (
            "nbf in the future",
            sign(&format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 300)),
        ),
        (
            "sub and userId disagree",
            sign(&format!(r#"{{"sub":"13","userId":14,"exp":{}}}"#, now + 600)),
        ),
        ("no user id", sign(&format!(r#"{{"exp":{}}}"#, now + 600))),
        ("payload not JSON", sign_with(hs256, "not json", SECRET.as_bytes())),
        ("unknown role", sign(&format!(r#"{{"sub":"13","role":"root","exp":{}}}"#, now + 600))),
        ("four parts", format!("{good}.x")),
    ];
    for (name, token) in &cases {
        for path in [HEALTH, STREAM] {
            let r = server.get(path, Some(token));
            let context = format!("{name} on {path}");
            assert_error(&r, 401, None, &context);
            assert_eq!(
                r.header("WWW-Authenticate").as_deref(),
                Some(INVALID_TOKEN),
                "{context}: {r:?}"
            );
        }
    }
    // The same bad token in the query parameter.
    let r = server.get(&format!("{HEALTH}?access_token=abc"), None);
    assert_error(&r, 401, None, "access_token=abc");
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some(INVALID_TOKEN));
    let lines = server.log.lines();
    for (name, token) in &cases {
        if token.len() > 8 {
            assert!(lines.iter().all(|l| !l.contains(token.as_str())), "{name} token logged");
        }
    }
}

#[test]
fn accepted_token_forms() {
    let server = Server::start(&[]);
    let now = now_secs();
    let cases = [
        ("sub as integer", format!(r#"{{"sub":13,"exp":{}}}"#, now + 600)),
        ("userId only", format!(r#"{{"userId":13,"exp":{}}}"#, now + 600)),
        ("sub and userId agree", format!(r#"{{"sub":"13","userId":13,"exp":{}}}"#, now + 600)),
        ("expired within leeway", format!(r#"{{"sub":"13","exp":{}}}"#, now - 30)),
        ("nbf within leeway", format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 30)),
        ("role user", format!(r#"{{"sub":"13","role":"user","exp":{}}}"#, now + 600)),
        (
            "admin serves its own sub",
            format!(r#"{{"sub":"13","role":"admin","exp":{}}}"#, now + 600),
        ),
    ];
    for (name, payload) in cases {
        let r = server.get(HEALTH, Some(&sign(&payload)));
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_json(&r.json(), &health_json(13, 0, 0), name);
    }
    // kid/jku are ignored.
    let header = r#"{"alg":"HS256","typ":"JWT","kid":"k1","jku":"http://127.0.0.1:1/keys"}"#;
    let token =
        sign_with(header, &format!(r#"{{"sub":"13","exp":{}}}"#, now + 600), SECRET.as_bytes());
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
    // "bearer" is case-insensitive (RFC 6750 / RFC 9110 auth-scheme).
    let raw = format!(
        "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: bearer {}\r\nConnection: close\r\n\r\n",
        server.token(13)
    );
    assert_eq!(request(server.addr, &raw).status, 200);
}

#[test]
fn unknown_and_inactive_users_are_403() {
    let server = Server::start(&[]);
    let r = server.get(HEALTH, Some(&server.token(999)));
    assert_error(&r, 403, None, "unknown user 999");
    assert_eq!(r.header("WWW-Authenticate"), None, "{r:?}");

    let token = server.create_user(50);
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
    let r = server.send_json(
        "PUT",
        "/api/admin/users/50",
        &server.admin_token(),
        r#"{"active":false}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_json(&r.json(), &json!({"id":50,"active":false}), "deactivate answer");
    for path in [HEALTH, STATUS, STREAM] {
        let r = server.get(path, Some(&token));
        assert_error(&r, 403, None, &format!("inactive user on {path}"));
        assert_eq!(r.header("WWW-Authenticate"), None, "{r:?}");
    }
    // Reactivated, it works again.
    let r =
        server.send_json("PUT", "/api/admin/users/50", &server.admin_token(), r#"{"active":true}"#);
    assert_json(&r.json(), &json!({"id":50,"active":true}), "reactivate answer");
    assert_eq!(server.get(HEALTH, Some(&token)).status, 200);
}

#[test]
fn access_token_query_parameter_works_for_stream_and_health() {
    let server = Server::start(&[]);
    let token = server.token(13);
    let r = server.get(&format!("{HEALTH}?access_token={token}"), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_json(&r.json(), &health_json(13, 0, 0), "health via access_token");
    let mut s = Stream::open(server.addr, "", &format!("{STREAM}?access_token={token}"));
    expect_stream_start(&mut s, 5000);
    let note = s.next_event(SECS_5).expect("notification");
    assert_notification(&note, 13, 267000, 200000, 85.0, 133.5);
    assert!(
        server.log.lines().iter().all(|l| !l.contains(&token)),
        "the access_token appears in the log"
    );
}

#[test]
fn metrics_need_an_admin_token() {
    let server = Server::start(&[]);
    let r = server.get("/metrics", Some(&server.token(13)));
    assert_error(&r, 403, None, "user token on /metrics");
    assert_eq!(r.header("WWW-Authenticate"), None);
    let r = server.get("/metrics", Some(&server.admin_token()));
    assert_eq!(r.status, 200, "{r:?}");
    let content_type = r.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "metrics Content-Type {content_type:?}"
    );
    assert!(r.body.contains("# TYPE "), "not Prometheus text: {:?}", r.body);
    for line in r.body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
}

/// Invalid percent-encoding in the query makes `access_token` unreadable: the token is
/// missing (401 with a bare `Bearer` challenge), not a 400 and not a crash.
#[test]
fn invalid_percent_encoding_is_a_missing_token() {
    let server = Server::start(&[]);
    for query in ["access_token=%zz", "access_token=%4", "access_token=%", "%zz=1"] {
        let r = server.get(&format!("{HEALTH}?{query}"), None);
        assert_eq!(r.status, 401, "?{query}: {}", r.body);
        assert_eq!(r.header("WWW-Authenticate").as_deref(), Some("Bearer"), "?{query}");
        assert_json_error(&r, query);
    }
    // A valid token, percent-encoded, beside a badly encoded parameter: served.
    let token = server.token(USER).replace('.', "%2E");
    let r = server.get(&format!("{HEALTH}?x=%zz&access_token={token}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("Cache-Control").as_deref(),
        Some("no-store"),
        "an answer to a token in the URL must not be cached"
    );
    assert_serving(&server);
}

/// A 7 KiB token of garbage fits in the head and is simply an invalid token.
#[test]
fn a_7_kib_garbage_token_is_invalid() {
    let server = Server::start(&[]);
    let mut rng = Rng::new(0x5eed_0007);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let garbage: String = (0..7 * 1024)
        .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
        .collect();
    let r = server.get(HEALTH, Some(&garbage));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some(r#"Bearer error="invalid_token""#));
    assert_json_error(&r, "7 KiB garbage token");
    let r = server.get(&format!("{HEALTH}?access_token={garbage}"), None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("WWW-Authenticate").as_deref(), Some(r#"Bearer error="invalid_token""#));
    assert_serving(&server);
}

/// Every rule of SPEC §2 that makes a token bad: 401 with `Bearer error="invalid_token"`.
#[test]
fn jwt_attacks_are_refused_with_invalid_token() {
    let server = Server::start(&[]);
    let secret = SECRET.as_bytes();
    let payload = valid_payload(USER);
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    let good = sign(&payload);
    let (good_head, good_rest) = good.split_once('.').expect("dot");
    let (good_payload, good_sig) = good_rest.split_once('.').expect("dot");
    let admin_payload = format!(r#"{{"sub":"0","role":"admin","exp":{}}}"#, now_secs() + 600);
    let now = now_secs();

    let mut cases: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(payload.as_bytes())),
        ),
        ("alg none, HS256 signature", sign_with(r#"{"alg":"none","typ":"JWT"}"#, &payload, secret)),
        ("alg None", sign_with(r#"{"alg":"None"}"#, &payload, secret)),
        ("alg NONE", sign_with(r#"{"alg":"NONE"}"#, &payload, secret)),
        (
            "alg nOnE, no signature",
            format!("{}.{}.", b64(br#"{"alg":"nOnE"}"#), b64(payload.as_bytes())),
        ),
        (
            "alg HS384 with an HMAC-SHA384",
            hmac_token(384, r#"{"alg":"HS384","typ":"JWT"}"#, &payload, secret),
        ),
        (
            "alg HS512 with an HMAC-SHA512",
            hmac_token(512, r#"{"alg":"HS512","typ":"JWT"}"#, &payload, secret),
        ),
        (
            "alg RS256, signed with the secret as an HMAC key",
            sign_with(r#"{"alg":"RS256","typ":"JWT"}"#, &payload, secret),
        ),
        (
            "alg ES256, signed with the secret as an HMAC key",
            sign_with(r#"{"alg":"ES256","typ":"JWT"}"#, &payload, secret),
        ),
        ("alg hs256 (case)", sign_with(r#"{"alg":"hs256"}"#, &payload, secret)),
        ("alg with a trailing space", sign_with(r#"{"alg":"HS256 "}"#, &payload, secret)),
        ("alg as an array", sign_with(r#"{"alg":["HS256"]}"#, &payload, secret)),
        ("alg null", sign_with(r#"{"alg":null}"#, &payload, secret)),
        ("header without alg", sign_with(r#"{"typ":"JWT"}"#, &payload, secret)),
        ("empty header object", sign_with("{}", &payload, secret)),
        (
            "alg twice, HS256 then none",
            sign_with(r#"{"alg":"HS256","alg":"none"}"#, &payload, secret),
        ),
        (
            "alg twice, none then HS256",
            sign_with(r#"{"alg":"none","alg":"HS256"}"#, &payload, secret),
        ),
        ("crit header", sign_with(r#"{"alg":"HS256","crit":["exp"]}"#, &payload, secret)),
        ("crit empty list", sign_with(r#"{"alg":"HS256","crit":[]}"#, &payload, secret)),
        ("header is an array", sign_with(r#"["HS256"]"#, &payload, secret)),
        ("header is not JSON", sign_with("alg=HS256", &payload, secret)),
        (
            "signature over a modified payload (user 13 → admin)",
            format!("{good_head}.{}.{good_sig}", b64(admin_payload.as_bytes())),
        ),
        (
            "signature of another token",
            format!("{good_head}.{good_payload}.{}", {
                let other = sign(&valid_payload(14));
                other.rsplit('.').next().unwrap_or_default().to_string()
            }),
        ),
        ("signed with an empty key", sign_with(hs, &payload, b"")),
        (
            "signed with another key",
            sign_with(hs, &payload, b"another-secret-of-thirty-two-bytes!!"),
        ),
        (
            "signed with the secret plus one byte",
            sign_with(hs, &payload, format!("{SECRET}x").as_bytes()),
        ),
        ("no signature", format!("{good_head}.{good_payload}.")),
        ("truncated signature", good[..good.len() - 1].to_string()),
        ("padded signature", format!("{good}=")),
        ("signature in standard base64", standard_alphabet_token()),
        ("two parts", format!("{good_head}.{good_payload}")),
        ("four parts", format!("{good}.{good_sig}")),
        ("header with padding", format!("{good_head}=.{good_payload}.{good_sig}")),
        ("exp 65 s ago", sign(&format!(r#"{{"sub":"13","exp":{}}}"#, now - 65))),
        ("nbf in 70 s", sign(&format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 70))),
        ("exp as a string", sign(&format!(r#"{{"sub":"13","exp":"{}"}}"#, now + 600))),
        ("exp null", sign(r#"{"sub":"13","exp":null}"#)),
        ("exp true", sign(r#"{"sub":"13","exp":true}"#)),
        ("exp an object", sign(r#"{"sub":"13","exp":{"v":1}}"#)),
        ("exp missing", sign(r#"{"sub":"13"}"#)),
        ("nbf as a string", sign(&format!(r#"{{"sub":"13","exp":{},"nbf":"0"}}"#, now + 600))),
        (
            "sub and userId disagree",
            sign(&format!(r#"{{"sub":"13","userId":14,"exp":{}}}"#, now + 600)),
        ),
        ("sub not a number", sign(&format!(r#"{{"sub":"thirteen","exp":{}}}"#, now + 600))),
        ("sub negative", sign(&format!(r#"{{"sub":"-13","exp":{}}}"#, now + 600))),
        ("no user at all", sign(&format!(r#"{{"exp":{}}}"#, now + 600))),
        ("role root", sign(&format!(r#"{{"sub":"13","role":"root","exp":{}}}"#, now + 600))),
        ("payload is an array", sign("[13]")),
        ("payload is not JSON", sign("sub=13")),
        ("an empty token", String::new()),
        ("dots only", "..".to_string()),
    ];
    // A forged admin token on an admin route, and forged tokens in the query.
    let forged_admin = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(admin_payload.as_bytes()));
    cases.push(("alg none, admin", forged_admin.clone()));

    let mut failures = Vec::new();
    let challenge = r#"Bearer error="invalid_token""#;
    let check = |failures: &mut Vec<String>, what: String, r: Response, want: u16| {
        let header = r.header("WWW-Authenticate");
        if r.status != want || (want == 401 && header.as_deref() != Some(challenge)) {
            failures
                .push(format!("{what}: got {} (WWW-Authenticate {header:?}) {}", r.status, r.body));
        }
    };
    for (what, token) in &cases {
        let r = server.get(HEALTH, Some(token));
        if token.is_empty() {
            // `Authorization: Bearer ` with nothing after it: a missing token.
            if r.status != 401 || r.header("WWW-Authenticate").as_deref() != Some("Bearer") {
                failures.push(format!(
                    "{what}: got {} {:?}",
                    r.status,
                    r.header("WWW-Authenticate")
                ));
            }
            continue;
        }
        check(&mut failures, format!("{what} (header)"), r, 401);
        let r = server.get(&format!("{HEALTH}?access_token={token}"), None);
        check(&mut failures, format!("{what} (query)"), r, 401);
    }
    let r = server.get("/metrics", Some(&forged_admin));
    check(&mut failures, "alg none admin on /metrics".into(), r, 401);
    let r = server.send_json("PUT", "/api/admin/users/99", &forged_admin, r#"{"active":true}"#);
    check(&mut failures, "alg none admin on PUT /api/admin/users".into(), r, 401);
    let r = server.get(&format!("/api/admin/users/99?access_token={forged_admin}"), None);
    check(&mut failures, "alg none admin, GET on an admin route (405 before auth)".into(), r, 405);
    assert!(
        failures.is_empty(),
        "JWT attacks not refused as SPEC §2 says:\n{}",
        failures.join("\n")
    );
    assert_serving(&server);
}

/// SPEC §2: exp and nbf have 60 s of leeway. Margins of a few seconds keep the test off the
/// exact edge, which the unit tests cover with an explicit clock.
#[test]
fn jwt_leeway_edges() {
    let server = Server::start(&[]);
    let now = now_secs();
    let cases = [
        ("exp 59 s ago", format!(r#"{{"sub":"13","exp":{}}}"#, now - 59), 200),
        ("exp 65 s ago", format!(r#"{{"sub":"13","exp":{}}}"#, now - 65), 401),
        ("nbf in 55 s", format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 55), 200),
        ("nbf in 70 s", format!(r#"{{"sub":"13","exp":{},"nbf":{}}}"#, now + 600, now + 70), 401),
        ("exp as a float", format!(r#"{{"sub":"13","exp":{}.5}}"#, now + 600), 200),
        ("exp far future", r#"{"sub":"13","exp":1e300}"#.to_string(), 200),
        ("sub as an integer", format!(r#"{{"sub":13,"exp":{}}}"#, now + 600), 200),
        ("userId only", format!(r#"{{"userId":13,"exp":{}}}"#, now + 600), 200),
        ("sub and userId agree", format!(r#"{{"sub":"13","userId":13,"exp":{}}}"#, now + 600), 200),
        ("unknown user", format!(r#"{{"sub":"999","exp":{}}}"#, now + 600), 403),
    ];
    let mut failures = Vec::new();
    for (what, payload, want) in cases {
        let r = server.get(HEALTH, Some(&sign(&payload)));
        if r.status != want {
            failures.push(format!("{what}: want {want}, got {} {}", r.status, r.body));
        }
        if want == 401
            && r.header("WWW-Authenticate").as_deref() != Some(r#"Bearer error="invalid_token""#)
        {
            failures.push(format!("{what}: WWW-Authenticate {:?}", r.header("WWW-Authenticate")));
        }
    }
    // The scheme name is case-insensitive (RFC 7235 §2.1).
    let r = request(
        server.addr,
        &format!(
            "GET {HEALTH} HTTP/1.1\r\nHost: t\r\nAuthorization: bearer {}\r\nConnection: close\r\n\r\n",
            server.token(USER)
        ),
    );
    if r.status != 200 {
        failures.push(format!("lower-case bearer: {} {}", r.status, r.body));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SPEC §2: `kid`, `jku`, `x5u` are ignored and never fetched: a token that points them at a
/// loopback listener is accepted when otherwise valid, and nothing ever connects there.
#[test]
fn jwt_header_urls_are_never_fetched() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = Server::start(&[]);
    let payload = valid_payload(USER);
    let headers = [
        format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{url}/key"}}"#),
        format!(r#"{{"alg":"HS256","jku":"{url}/jwks.json"}}"#),
        format!(r#"{{"alg":"HS256","x5u":"{url}/cert.pem"}}"#),
        format!(
            r#"{{"alg":"HS256","kid":"../../../../dev/null","jku":"{url}/a","x5u":"{url}/b"}}"#
        ),
        r#"{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"},"x5c":["AAAA"],"x5t":"x"}"#.to_string(),
    ];
    for header in &headers {
        let r = server.get(HEALTH, Some(&sign_with(header, &payload, SECRET.as_bytes())));
        assert_eq!(r.status, 200, "header {header}: {}", r.body);
    }
    // The same URLs on a token with a wrong signature: refused, still not fetched.
    let forged = sign_with(&headers[1], &payload, b"an attacker's key of enough bytes....");
    let r = server.get(HEALTH, Some(&forged));
    assert_eq!(r.status, 401, "{}", r.body);
    thread::sleep(Duration::from_millis(500));
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the server connected to a URL from a token header ({from})"),
        Err(e) => panic!("accept: {e}"),
    }
}
