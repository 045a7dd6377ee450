//! Writes and the status they answer with (SPEC §1, §2): transactions and limits, their
//! validation, the status arithmetic, concurrent writers and the bounds of time values.
//! Each test starts its own server (the real binary) on a free loopback port with a temporary
//! SQLite file; every wait has a deadline.

mod common;
use common::*;

#[test]
fn status_of_the_demo_user_is_exact() {
    let server = Server::start(&[]);
    let r = server.get(STATUS, Some(&server.token(13)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.head.lines().next(), Some("HTTP/1.1 200 OK"));
    assert_eq!(r.header("Content-Type").as_deref(), Some("application/json"));
    assert_json(&r.json(), &demo_status(), "status");
}

#[test]
fn status_without_a_limit_is_404_no_active_limit() {
    let server = Server::start(&[]);
    let token = server.create_user(40);
    let r = server.get(STATUS, Some(&token));
    assert_error(&r, 404, Some("no_active_limit"), "status without limit");
    // A limit that does not cover now is no active limit either.
    let body = r#"{"maxLimit":1000,"alertPercentage":50,"periodeStart":"2020-01-01T00:00:00.000Z","periodeEnd":"2020-01-31T23:59:59.999Z"}"#;
    assert_eq!(server.send_json("PUT", LIMIT, &token, body).status, 200);
    let r = server.get(STATUS, Some(&token));
    assert_error(&r, 404, Some("no_active_limit"), "status with a past limit");
    // An admin token serves its own sub, which needs no user row.
    let r = server.get(STATUS, Some(&server.admin_token()));
    assert_error(&r, 404, Some("no_active_limit"), "status for the admin's sub 0");
    let r = server.get(HEALTH, Some(&server.admin_token()));
    assert_json(&r.json(), &health_json(0, 0, 0), "health for the admin's sub 0");
}

#[test]
fn status_percentage_is_rounded_half_away_from_zero_in_integers() {
    let server = Server::start(&[]);
    // (max, alert, amounts, percentage, isAlert)
    let cases: [(i64, &str, &[i64], f64, bool); 9] = [
        (3, "85", &[1], 33.33, false),
        (3, "85", &[2], 66.67, false),
        // 1.005 exactly: a float computation gives 1.0 (1.005 is 1.00499… in binary).
        (200_000, "85", &[2_010], 1.01, false),
        (800, "85", &[1], 0.13, false),
        (200_000, "85", &[170_000], 85.0, true),
        // 33.335 rounds to 33.34, and isAlert compares the rounded value.
        (200_000, "33.34", &[66_670], 33.34, true),
        (3, "33.33", &[1], 33.33, true),
        (3, "33.34", &[1], 33.33, false),
        // 10^15 × 100 × 100 overflows i64: the arithmetic must not.
        (1, "100", &[1_000_000_000_000_000], 100_000_000_000_000_000.0, true),
    ];
    for (i, (max, alert, amounts, pct, is_alert)) in cases.iter().enumerate() {
        let user = 100 + i as i64;
        let token = user_with_spending(&server, user, *max, alert, amounts);
        let r = server.get(STATUS, Some(&token));
        assert_eq!(r.status, 200, "case {i}: {r:?}");
        let (start, end) = current_month();
        let alert: f64 = alert.parse().unwrap();
        assert_json(
            &r.json(),
            &json!({
                "currentSpending": amounts.iter().sum::<i64>(),
                "maxLimit": max,
                "alertPercentage": alert,
                "currentPercentage": pct,
                "isAlert": is_alert,
                "periodeStart": start,
                "periodeEnd": end,
            }),
            &format!("case {i}: max {max}, alert {alert}, amounts {amounts:?}"),
        );
    }
}

#[test]
fn status_counts_transactions_inside_the_period_bounds_only() {
    let server = Server::start(&[]);
    let token = user_with_spending(&server, 60, 1000, "50", &[]);
    let (start, end) = current_month();
    let start_ms = parse_utc_ms(&start).unwrap();
    let end_ms = parse_utc_ms(&end).unwrap();
    assert_eq!(format_utc_ms(start_ms), start);
    assert_eq!(format_utc_ms(end_ms), end);
    let at = [(start_ms - 1, 1), (start_ms, 10), (end_ms, 100), (end_ms + 1, 1000)];
    for (ms, amount) in at {
        let body = format!(r#"{{"amount":{amount},"occurredAt":"{}"}}"#, format_utc_ms(ms));
        let r = server.send_json("POST", TRANSACTIONS, &token, &body);
        assert_eq!(r.status, 201, "{body}: {r:?}");
    }
    let status = server.get(STATUS, Some(&token)).json();
    assert_eq!(status["currentSpending"], 110, "only the two at the bounds count: {status}");
    assert_eq!(status["currentPercentage"].as_f64(), Some(11.0), "{status}");
}

#[test]
fn transaction_answer_is_canonical_and_status_null_without_a_limit() {
    let server = Server::start(&[]);
    let t3 = server.create_user(3);
    let r = post_tx(
        &server,
        &t3,
        r#"{"amount":5000,"description":"coffee","occurredAt":"2025-01-01T07:00:00+07:00"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let id = v["transaction"]["id"].as_u64().expect("id");
    assert_eq!(
        v,
        json!({"transaction":{"id":id,"userId":3,"amount":5000,"description":"coffee",
                              "occurredAt":"2025-01-01T00:00:00.000Z"},
               "status":null})
    );

    // For the demo user, a transaction outside the active range leaves the total alone.
    let t13 = server.token(DEMO_USER);
    let r = post_tx(&server, &t13, r#"{"amount":777,"occurredAt":"2025-01-01T07:00:00+07:00"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["transaction"]["occurredAt"], "2025-01-01T00:00:00.000Z");
    assert_eq!(v["transaction"]["userId"], 13);
    assert!(v["transaction"]["id"].as_u64().expect("id") > id);
    assert_eq!(v["status"]["currentSpending"], DEMO_SPENT);
    assert_eq!(status_of(&server, &t13)["currentSpending"], DEMO_SPENT);
}

#[test]
fn bad_writes_are_refused_and_store_nothing() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    let admin = server.admin_token();
    server.create_user(2);
    let (start, end) = current_month();
    let mut s = open(&server, &t);
    let k = note_id(&next_note(&mut s));

    let long_ascii = "a".repeat(201);
    let long_e = "é".repeat(201);
    let long_emoji = "😀".repeat(201);
    let bad_transactions: Vec<(String, &str)> = vec![
        (r#"{"description":"no amount"}"#.into(), "amount missing"),
        (r#"{"amount":"abc"}"#.into(), "amount a string"),
        (r#"{"amount":"5000"}"#.into(), "amount a numeric string"),
        (r#"{"amount":0}"#.into(), "amount 0"),
        (r#"{"amount":-5}"#.into(), "amount negative"),
        (r#"{"amount":1.5}"#.into(), "amount fractional"),
        (r#"{"amount":9223372036854775808}"#.into(), "amount over i64"),
        (r#"{"amount":1e30}"#.into(), "amount 1e30"),
        (r#"{"amount":null}"#.into(), "amount null"),
        (format!(r#"{{"amount":5,"description":"{long_ascii}"}}"#), "description 201 ASCII chars"),
        (format!(r#"{{"amount":5,"description":"{long_e}"}}"#), "description 201 é"),
        (format!(r#"{{"amount":5,"description":"{long_emoji}"}}"#), "description 201 emoji"),
        (r#"{"amount":5,"description":42}"#.into(), "description a number"),
        (r#"{"amount":5,"occurredAt":"yesterday"}"#.into(), "occurredAt yesterday"),
        (r#"{"amount":5,"occurredAt":12345}"#.into(), "occurredAt a number"),
        ("not json".into(), "body not JSON"),
        (r#"[{"amount":5}]"#.into(), "body a JSON array"),
        ("".into(), "empty body"),
        (r#"{"amount":5"#.into(), "truncated JSON"),
    ];
    for (body, what) in &bad_transactions {
        assert_error(&post_tx(&server, &t, body), 400, None, what);
    }

    let bad_limits: Vec<(String, &str)> = vec![
        (limit_body(1000, "0", &start, &end), "alertPercentage 0"),
        (limit_body(1000, "-1", &start, &end), "alertPercentage negative"),
        (limit_body(1000, "100.5", &start, &end), "alertPercentage 100.5"),
        (limit_body(1000, "\"x\"", &start, &end), "alertPercentage \"x\""),
        (limit_body(1000, "85", &start, &start), "periodeStart = periodeEnd"),
        (limit_body(1000, "85", &end, &start), "periodeStart > periodeEnd"),
        (limit_body(0, "85", &start, &end), "maxLimit 0"),
        (limit_body(-10, "85", &start, &end), "maxLimit negative"),
        (limit_body(1000, "85", "soon", &end), "periodeStart not a time"),
        (
            format!(
                r#"{{"maxLimit":1.5,"alertPercentage":85,"periodeStart":"{start}","periodeEnd":"{end}"}}"#
            ),
            "maxLimit fractional",
        ),
        (
            format!(r#"{{"alertPercentage":85,"periodeStart":"{start}","periodeEnd":"{end}"}}"#),
            "maxLimit missing",
        ),
        ("not json".into(), "limit body not JSON"),
        ("[]".into(), "limit body an array"),
    ];
    for (body, what) in &bad_limits {
        assert_error(&server.send_json("PUT", LIMIT, &t, body), 400, None, what);
    }

    // Naming someone else, or no one, or a stranger.
    assert_error(
        &post_tx(&server, &t, r#"{"userId":2,"amount":5}"#),
        403,
        None,
        "user token writing for user 2",
    );
    assert_error(
        &server.send_json(
            "PUT",
            LIMIT,
            &t,
            &format!(
                r#"{{"userId":2,"maxLimit":5,"alertPercentage":50,"periodeStart":"{start}","periodeEnd":"{end}"}}"#
            ),
        ),
        403,
        None,
        "user token setting user 2's limit",
    );
    assert_error(
        &post_tx(&server, &admin, r#"{"amount":5}"#),
        400,
        None,
        "admin write without userId",
    );
    assert_error(
        &server.send_json("PUT", LIMIT, &admin, &limit_body(5, "50", &start, &end)),
        400,
        None,
        "admin limit without userId",
    );
    assert_error(
        &post_tx(&server, &admin, r#"{"userId":999,"amount":5}"#),
        404,
        Some("unknown_user"),
        "admin write for unknown user",
    );
    assert_error(
        &server.send_json("PUT", "/api/admin/users/13", &admin, r#"{"active":"yes"}"#),
        400,
        None,
        "admin PUT user active:\"yes\"",
    );
    assert_error(
        &server.send_json("PUT", "/api/admin/users/13", &admin, "{}"),
        400,
        None,
        "admin PUT user without active",
    );
    assert_error(
        &server.send_json("PUT", "/api/admin/users/5", &t, r#"{"active":true}"#),
        403,
        None,
        "non-admin on /api/admin/users/5",
    );
    assert_error(&server.get("/metrics", Some(&t)), 403, None, "non-admin on /metrics");

    // Nothing stored: the status is as seeded, user 13 is still active, and no user 5 or 999
    // was made as a side effect.
    let st = status_of(&server, &t);
    assert_eq!(st["currentSpending"], DEMO_SPENT);
    assert_eq!(st["maxLimit"], DEMO_LIMIT);
    assert_eq!(as_f64(&st["alertPercentage"]), 85.0);
    assert_eq!(st["periodeStart"], start.as_str());
    assert_eq!(st["periodeEnd"], end.as_str());
    assert_eq!(server.get(HEALTH, Some(&server.token(5))).status, 403);
    assert_eq!(server.get(HEALTH, Some(&server.token(999))).status, 403);

    // 200 multi-byte characters are fine (characters, not bytes), naming oneself is fine, and
    // this is the first notification since the snapshot: nothing was pushed by the refusals.
    let desc = "é".repeat(200);
    let r = post_tx(&server, &t, &format!(r#"{{"userId":13,"amount":1,"description":"{desc}"}}"#));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["transaction"]["description"], desc.as_str());
    assert_note(&next_note(&mut s), k + 1, DEMO_USER, DEMO_SPENT + 1, DEMO_LIMIT);
    let r = post_tx(&server, &t, &format!(r#"{{"amount":2,"description":"{}"}}"#, "a".repeat(200)));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_note(&next_note(&mut s), k + 2, DEMO_USER, DEMO_SPENT + 3, DEMO_LIMIT);
    // Characters outside the BMP count once each, written raw or as JSON surrogate escapes.
    let emoji = "😀".repeat(200);
    for body in [
        format!(r#"{{"amount":3,"description":"{emoji}"}}"#),
        format!(r#"{{"amount":3,"description":"{}"}}"#, r"\ud83d\ude00".repeat(200)),
    ] {
        let r = post_tx(&server, &t, &body);
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["transaction"]["description"], emoji.as_str());
    }
    assert_note(&next_note(&mut s), k + 3, DEMO_USER, DEMO_SPENT + 6, DEMO_LIMIT);
    assert_note(&next_note(&mut s), k + 4, DEMO_USER, DEMO_SPENT + 9, DEMO_LIMIT);
}

#[test]
fn limit_answers_its_own_range_and_pushes_only_when_it_covers_now() {
    let server = Server::start(&[]);
    let user = 50;
    let t = server.create_user(user);
    let mut s = open(&server, &t);

    // No limit at all: status null.
    let r = post_tx(&server, &t, r#"{"amount":12345,"occurredAt":"2020-01-15T12:00:00.000Z"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], Value::Null);

    // A limit over January 2020: answered over its range, though it does not cover now.
    let r = server.send_json(
        "PUT",
        LIMIT,
        &t,
        &limit_body(100_000, "12.35", "2020-01-01T00:00:00.000Z", "2020-01-31T23:59:59.999Z"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["currentSpending"], 12_345);
    assert_eq!(v["maxLimit"], 100_000);
    assert_eq!(as_f64(&v["alertPercentage"]), 12.35);
    // 12345 * 100 / 100000 = 12.345 → 12.35 (half away from zero), and 12.35 ≥ 12.35.
    assert_eq!(as_f64(&v["currentPercentage"]), 12.35);
    assert_eq!(v["isAlert"], true);
    assert_eq!(v["periodeStart"], "2020-01-01T00:00:00.000Z");
    assert_eq!(v["periodeEnd"], "2020-01-31T23:59:59.999Z");
    assert_error(
        &server.get(STATUS, Some(&t)),
        404,
        Some("no_active_limit"),
        "status with a limit in 2020",
    );

    // A transaction now, under a limit that does not cover now: null status, nothing pushed.
    let r = post_tx(&server, &t, r#"{"amount":500}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["status"], Value::Null);

    // A limit over this month: pushed, and it is the first thing the stream sees.
    let (start, end) = current_month();
    let r = server.send_json("PUT", LIMIT, &t, &limit_body(1000, "50", &start, &end));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["currentSpending"], 500);
    assert_eq!(as_f64(&v["currentPercentage"]), 50.0);
    assert_eq!(v["isAlert"], true);
    let ev = next_note(&mut s);
    let m = note_id(&ev);
    assert_note(&ev, m, user, 500, 1000);
    assert!(m > 0);

    // Stored: exactly one notification, so a resume from 0 replays only it.
    let mut again = open_after(&server, &t, "0");
    assert_note(&next_note(&mut again), m, user, 500, 1000);
    spend(&server, &t, 250);
    assert_note(&next_note(&mut again), m + 1, user, 750, 1000);
    assert_note(&next_note(&mut s), m + 1, user, 750, 1000);
}

#[test]
fn concurrent_writers_give_consecutive_ids_and_the_right_total() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    let mut s = open(&server, &t);
    let k = note_id(&next_note(&mut s));

    let threads = 16;
    let per_thread = 10;
    let answers: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|n| {
                let t = t.clone();
                let addr = server.addr;
                scope.spawn(move || {
                    let mut client = Client::new(addr);
                    (0..per_thread)
                        .map(|i| {
                            let amount = 1 + n * per_thread + i; // 1..=160, all distinct
                            let r = client.send(
                                "POST",
                                TRANSACTIONS,
                                &t,
                                &format!(r#"{{"amount":{amount}}}"#),
                            );
                            assert_eq!(r.status, 201, "{}", r.body);
                            r.json()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answers: Vec<Value> = answers.into_iter().flatten().collect();
    assert_eq!(answers.len(), 160);
    let sum: i64 = (1..=160).sum();
    let tx_ids: BTreeSet<u64> =
        answers.iter().map(|v| v["transaction"]["id"].as_u64().expect("id")).collect();
    assert_eq!(tx_ids.len(), 160, "transaction ids not unique");

    let mut totals_seen = Vec::new();
    for i in 1..=160u64 {
        let ev = next_note(&mut s);
        assert_eq!(note_id(&ev), k + i, "ids must be consecutive: {ev:?}");
        let total = ev.json()["currentSpending"].as_i64().expect("total");
        if let Some(&prev) = totals_seen.last() {
            assert!(total > prev, "totals must grow with ids: {prev} then {total}");
        }
        totals_seen.push(total);
    }
    assert_eq!(*totals_seen.last().unwrap(), DEMO_SPENT + sum);
    assert_eq!(status_of(&server, &t)["currentSpending"], DEMO_SPENT + sum);
    // Each answer's status is the total right after its own write: the same 160 totals.
    let answered: BTreeSet<i64> = answers
        .iter()
        .map(|v| v["status"]["currentSpending"].as_i64().expect("status total"))
        .collect();
    let pushed: BTreeSet<i64> = totals_seen.iter().copied().collect();
    assert_eq!(answered, pushed);
}

/// RFC 3339 UTC with a four-digit year spans 0000-01-01T00:00:00.000Z to
/// 9999-12-31T23:59:59.999Z. An input whose offset carries it past either end names an instant
/// the server cannot write back; storing it and answering another instant is not what was
/// asked, so it must be refused like any other bad time.
#[test]
fn times_beyond_the_four_digit_years_are_refused_not_clamped() {
    let server = Server::start(&[]);
    let t = server.token(DEMO_USER);
    for at in [
        "9999-12-31T23:30:00-01:00", // 10000-01-01T00:30:00Z
        "0000-01-01T00:30:00+01:00", // -0001-12-31T23:30:00Z
    ] {
        let r = post_tx(&server, &t, &format!(r#"{{"amount":1,"occurredAt":"{at}"}}"#));
        assert_error(&r, 400, None, &format!("occurredAt {at} (answered {})", r.body));
    }
    // Both ends past year 9999: distinct instants as sent, but no way to write them apart.
    let r = server.send_json(
        "PUT",
        LIMIT,
        &t,
        &limit_body(1000, "50", "9999-12-31T23:30:00-01:00", "9999-12-31T23:59:00-01:00"),
    );
    assert_error(&r, 400, None, &format!("limit beyond 9999 (answered {})", r.body));
    // The edges themselves are fine.
    let r = post_tx(&server, &t, r#"{"amount":1,"occurredAt":"9999-12-31T23:59:59.999Z"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["transaction"]["occurredAt"], "9999-12-31T23:59:59.999Z");
    assert_eq!(status_of(&server, &t)["currentSpending"], DEMO_SPENT);
}

/// Deeply nested JSON bodies are a 400 (the parser's depth limit), never a stack overflow.
/// 100 000 levels do not fit in a body at all: that is a 413 before any parsing.
#[test]
fn deeply_nested_json_is_400() {
    let server = Server::start(&[]);
    let token = server.token(USER);
    let admin = server.admin_token();
    let arrays = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let objects = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let cases = [
        ("arrays as amount", format!(r#"{{"amount":{}}}"#, arrays(32_000))),
        ("arrays in an unknown member", format!(r#"{{"amount":5,"x":{}}}"#, arrays(32_000))),
        ("objects in an unknown member", format!(r#"{{"amount":5,"x":{}}}"#, objects(10_000))),
        ("the body itself", arrays(32_000)),
        ("unclosed", "[".repeat(60_000)),
        ("just past the depth limit", format!(r#"{{"amount":5,"x":{}}}"#, arrays(200))),
    ];
    for (what, body) in &cases {
        assert!(body.len() <= 64 * 1024);
        let r = server.send_json("POST", TRANSACTIONS, &token, body);
        assert_eq!(r.status, 400, "nested JSON, {what}: {}", r.body);
        assert_json_error(&r, what);
        let r = server.send_json("PUT", LIMIT, &admin, body);
        assert_eq!(r.status, 400, "nested JSON as a limit, {what}: {}", r.body);
        assert_serving(&server);
    }
    let r = server.send_json("POST", TRANSACTIONS, &token, &arrays(100_000));
    assert_eq!(r.status, 413, "100 000 levels is a body over 64 KiB: {}", r.body);
    assert_serving(&server);
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.json()["currentSpending"], 267000, "nothing was stored");
}

/// Numbers that do not fit i64 are a 400 wherever they appear; nothing is stored.
#[test]
fn numbers_beyond_i64_get_400() {
    let server = Server::start(&[]);
    let user = 77;
    let token = server.create_user(user);
    assert_eq!(server.set_month_limit(user, 1000, 80.0).status, 200);
    let admin = server.admin_token();
    let (start, end) = current_month();
    let transaction_cases = [
        r#"{"amount":9223372036854775808}"#,
        r#"{"amount":18446744073709551616}"#,
        r#"{"amount":99999999999999999999999999999999}"#,
        r#"{"amount":-9223372036854775809}"#,
        r#"{"amount":1e19}"#,
        r#"{"amount":1e400}"#,
        r#"{"amount":-1e400}"#,
        r#"{"amount":9.3e18}"#,
        r#"{"amount":5,"userId":9223372036854775808}"#,
        r#"{"amount":5,"userId":77.5}"#,
        r#"{"amount":5,"userId":1e400}"#,
    ];
    for body in transaction_cases {
        let r = server.send_json("POST", TRANSACTIONS, &token, body);
        assert_eq!(r.status, 400, "user POST {body}: {}", r.body);
        assert_json_error(&r, body);
    }
    for body in [
        r#"{"amount":5,"userId":9223372036854775808}"#,
        r#"{"amount":5,"userId":-9223372036854775809}"#,
        r#"{"amount":5,"userId":1e30}"#,
    ] {
        let r = server.send_json("POST", TRANSACTIONS, &admin, body);
        assert_eq!(r.status, 400, "admin POST {body}: {}", r.body);
    }
    for (max, alert) in [("9223372036854775808", "80"), ("1e30", "80"), ("1000", "1e400")] {
        let body = format!(
            r#"{{"maxLimit":{max},"alertPercentage":{alert},"periodeStart":"{start}","periodeEnd":"{end}"}}"#
        );
        let r = server.send_json("PUT", LIMIT, &token, &body);
        assert_eq!(r.status, 400, "PUT {body}: {}", r.body);
    }
    for id in ["9223372036854775808", "99999999999999999999", "-1", "1e3"] {
        let r = server.send_json(
            "PUT",
            &format!("/api/admin/users/{id}"),
            &admin,
            r#"{"active":true}"#,
        );
        assert_eq!(r.status, 400, "PUT /api/admin/users/{id}: {}", r.body);
    }
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["currentSpending"], 0, "nothing was stored");
    assert_eq!(status.json()["maxLimit"], 1000, "the limit was not replaced");

    // i64::MAX itself fits; one more unit would take the total past i64: 400, not a wrap.
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":9223372036854775807}"#);
    assert_eq!(r.status, 201, "amount i64::MAX: {}", r.body);
    assert_eq!(r.json()["status"]["currentSpending"], i64::MAX);
    let r = server.send_json("POST", TRANSACTIONS, &token, r#"{"amount":1}"#);
    assert_eq!(r.status, 400, "a total beyond i64: {}", r.body);
    let status = server.get(STATUS, Some(&token));
    assert_eq!(status.json()["currentSpending"], i64::MAX);
    assert_serving(&server);
}
