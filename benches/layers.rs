//! The pure layers, socket-free: JWT verification, request parsing, SSE framing, the timer
//! wheel and the registry at 100 000 entries. Each group is parameterised (`BenchmarkId`) and
//! reports throughput in elements (tokens, requests, frames, entries) per second.
//!
//! Run: `cargo bench --bench layers` (add `-- jwt` etc. to pick one group).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, KeyInit, Mac};
use periode_sse::domain::UserId;
use periode_sse::http::{parse_request, Parse};
use periode_sse::registry::Registry;
use periode_sse::timer::TimerWheel;
use periode_sse::{jwt, sse};
use sha2::Sha256;
use std::hint::black_box;

const KEY: &[u8] = b"bench-secret-0123456789abcdef-0123456789";
const NOW: i64 = 1_760_000_000;

/// A compact HS256 token over exactly `payload` (so claim sets of any size can be measured).
fn token_for(payload: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(payload.as_bytes());
    let signing_input = format!("{header}.{body}");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).expect("any key length");
    mac.update(signing_input.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{tag}")
}

fn bench_jwt(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify");
    group.throughput(Throughput::Elements(1));
    let exp = NOW + 3600;
    let cases = [
        // What `periode-sse token` and the density tool mint.
        ("sign", jwt::sign(UserId(13), periode_sse::domain::Role::User, NOW, 3600, KEY)),
        ("userId_int", token_for(&format!(r#"{{"userId":13,"exp":{exp}}}"#))),
        (
            "extra_claims_1k",
            token_for(&format!(
                r#"{{"sub":"13","exp":{exp},"role":"user","scope":"{}"}}"#,
                "x".repeat(1000)
            )),
        ),
        ("bad_signature", {
            let mut t = jwt::sign(UserId(13), periode_sse::domain::Role::User, NOW, 3600, KEY);
            t.pop();
            t.push('A');
            t
        }),
    ];
    for (name, token) in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), token, |b, token| {
            b.iter(|| black_box(jwt::verify(black_box(token.as_bytes()), KEY, NOW)).is_ok())
        });
    }
    // What the server does: the key's HMAC blocks hashed once, cloned per token.
    let key = jwt::Key::new(KEY);
    group.bench_with_input(
        BenchmarkId::from_parameter("sign_prepared_key"),
        &cases[0].1,
        |b, t| b.iter(|| black_box(jwt::verify_with(black_box(t.as_bytes()), &key, NOW)).is_ok()),
    );
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let token = jwt::sign(UserId(13), periode_sse::domain::Role::User, NOW, 3600, KEY);
    let stream = format!(
        "GET /api/periode-limit/notifications/stream HTTP/1.1\r\nHost: edge.example:8989\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0\r\n\
         Accept: text/event-stream\r\nCache-Control: no-cache\r\nAuthorization: Bearer {token}\r\n\
         Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n"
    );
    let resume = format!(
        "GET /api/periode-limit/notifications/stream?access_token={token}&lastEventId=41 \
         HTTP/1.1\r\nHost: edge.example:8989\r\nAccept: text/event-stream\r\nLast-Event-ID: 41\r\n\
         Origin: https://app.example\r\n\r\n"
    );
    let body = r#"{"amount":5000,"description":"coffee","occurredAt":"2025-10-21T09:09:05.915Z"}"#;
    let post = format!(
        "POST /api/periode-limit/transactions HTTP/1.1\r\nHost: edge.example\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut group = c.benchmark_group("parse_request");
    group.throughput(Throughput::Elements(1));
    for (name, request) in
        [("stream_bearer", &stream), ("stream_query_resume", &resume), ("post_transaction", &post)]
    {
        group.bench_with_input(BenchmarkId::from_parameter(name), request, |b, request| {
            b.iter(|| match parse_request(black_box(request.as_bytes())) {
                Parse::Complete(r, n) => black_box((r.path.len(), n)),
                _ => panic!("the bench request must parse"),
            })
        });
    }
    group.finish();
}

fn bench_sse(c: &mut Criterion) {
    let notification = concat!(
        r#"{"userId":13,"currentSpending":267000,"maxSpending":200000,"alertPercentage":85,"#,
        r#""currentPercentage":133.5,"isAlert":true,"timestamp":"2025-10-21T09:09:05.915Z"}"#
    );
    let multiline = "line one\nline two\r\nline three\rline four";
    let mut group = c.benchmark_group("sse_encode");
    group.throughput(Throughput::Elements(1));
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    group.bench_function(BenchmarkId::from_parameter("heartbeat"), |b| {
        b.iter(|| {
            out.clear();
            let inner = sse::encode_chunk(&mut out, |o| {
                sse::encode_heartbeat(o, black_box(1_760_000_000_123))
            });
            black_box((out.len(), inner))
        })
    });
    group.bench_function(BenchmarkId::from_parameter("notification"), |b| {
        b.iter(|| {
            out.clear();
            let inner = sse::encode_chunk(&mut out, |o| {
                sse::encode_event(o, Some(black_box(41)), "notification", black_box(notification))
            });
            black_box((out.len(), inner))
        })
    });
    group.bench_function(BenchmarkId::from_parameter("multiline_data"), |b| {
        b.iter(|| {
            out.clear();
            let inner = sse::encode_chunk(&mut out, |o| {
                sse::encode_event(o, None, "message", black_box(multiline))
            });
            black_box((out.len(), inner))
        })
    });
    group.finish();
}

/// Deadlines spread over 30 s (a heartbeat period), as idle streams' are.
fn deadline_of(key: usize) -> u64 {
    1_000 + (key as u64 * 7_919) % 30_000
}

fn full_wheel(n: usize) -> TimerWheel {
    let mut wheel = TimerWheel::new(0);
    for key in 0..n {
        wheel.schedule(key, deadline_of(key));
    }
    wheel
}

fn bench_timer(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer_wheel");
    group.sample_size(20);
    let n = 100_000usize;
    {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("insert", n), &n, |b, &n| {
            b.iter_batched(
                || TimerWheel::new(0),
                |mut wheel| {
                    for key in 0..n {
                        wheel.schedule(key, deadline_of(key));
                    }
                    wheel
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("reschedule", n), &n, |b, &n| {
            // What a heartbeat does: move an entry one period on.
            b.iter_batched(
                || full_wheel(n),
                |mut wheel| {
                    for key in 0..n {
                        wheel.schedule(key, deadline_of(key) + 30_000);
                    }
                    wheel
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("cancel", n), &n, |b, &n| {
            b.iter_batched(
                || full_wheel(n),
                |mut wheel| {
                    for key in 0..n {
                        wheel.cancel(key);
                    }
                    wheel
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("expire", n), &n, |b, &n| {
            // One turn of the loop per 10 ms tick over the whole period: every entry fires once.
            b.iter_batched(
                || (full_wheel(n), Vec::with_capacity(n)),
                |(mut wheel, mut due)| {
                    // At the last millisecond of each tick, so that every tick is whole.
                    let mut now = 9;
                    while now <= 31_009 {
                        wheel.expire_due(now, &mut due);
                        now += 10;
                    }
                    (wheel, due)
                },
                BatchSize::LargeInput,
            )
        });
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("next_wait", n), &n, |b, &n| {
            let wheel = full_wheel(n);
            b.iter(|| black_box(wheel.next_wait_ms(black_box(500))))
        });
    }
    group.finish();
}

fn full_registry(n: usize, per_user: usize) -> Registry {
    let mut registry = Registry::new();
    for key in 0..n {
        registry.add(UserId((key / per_user) as i64 + 1), key);
    }
    registry
}

fn bench_registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    group.sample_size(20);
    let n = 100_000usize;
    for &per_user in &[1usize, 100] {
        group.throughput(Throughput::Elements(n as u64));
        let param = format!("{n}_streams_{per_user}_per_user");
        group.bench_with_input(BenchmarkId::new("add", &param), &per_user, |b, &per_user| {
            b.iter_batched(
                Registry::new,
                |mut registry| {
                    for key in 0..n {
                        registry.add(UserId((key / per_user) as i64 + 1), key);
                    }
                    registry
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("remove", &param), &per_user, |b, &per_user| {
            b.iter_batched(
                || full_registry(n, per_user),
                |mut registry| {
                    // Interleaved, as streams close: not in the order they were added.
                    for i in 0..n {
                        let key = (i * 7_919) % n;
                        registry.remove(UserId((key / per_user) as i64 + 1), key);
                    }
                    registry
                },
                BatchSize::LargeInput,
            )
        });
        let registry = full_registry(n, per_user);
        let users = n / per_user;
        group.bench_with_input(BenchmarkId::new("lookup", &param), &users, |b, &users| {
            // `streams_of` for every user: what a fan-out to each user in turn asks.
            b.iter(|| {
                let mut total = 0usize;
                for user in 1..=users {
                    total += registry.streams_of(UserId(user as i64)).len();
                }
                black_box(total)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_jwt, bench_parse, bench_sse, bench_timer, bench_registry);
criterion_main!(benches);
