//! Cluster mode (SPEC §7): two and three real nodes on one throwaway PostgreSQL (one cluster
//! for this test binary, a fresh database per test), with `--features postgres`;
//! `scripts/pg-test.sh` runs it. Without the feature only the start-up refusal is tested.

mod common;
use common::*;

/// The binary's answer to a start that must fail: exit status and stderr.
fn refused_start(args: &[&str], secret: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("JWT_SECRET").env_remove("PERIODE_SSE_DB");
    if let Some(secret) = secret {
        cmd.env("JWT_SECRET", secret);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run periode-sse");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[cfg(not(feature = "postgres"))]
#[test]
fn a_postgres_db_without_the_feature_says_how_to_build_with_it() {
    let db = "postgres://periode:hunter2-password@127.0.0.1:1/periode";
    let (code, err) = refused_start(&["--db", db, "--listen", "127.0.0.1:0"], Some(SECRET));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("--features postgres"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

#[cfg(feature = "postgres")]
#[test]
fn jwt_secret_is_required_and_the_password_never_reaches_a_log_line() {
    let uri = fresh_database();
    // Trust authentication ignores the password; the server must still never show it.
    let with_password = uri.replacen("postgres@", "postgres:hunter2-password@", 1);
    let (code, err) = refused_start(&["--db", &with_password, "--listen", "127.0.0.1:0"], None);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("JWT_SECRET"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    let server = node(&with_password);
    server.log.wait_for("listening on", 0, WAIT);
    let log = server.log.lines().join("\n");
    assert!(log.contains("postgres://postgres:***@127.0.0.1"), "{log}");
    assert!(!log.contains("hunter2"), "the password leaked: {log}");
    // `token` takes the same --db and the same rule.
    let (code, err) = refused_start(&["token", "13", "--db", &with_password], None);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("JWT_SECRET") && !err.contains("hunter2"), "{err}");
}

#[cfg(feature = "postgres")]
static NEXT_DB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fresh database on the binary's cluster, as a `--db` URI.
#[cfg(feature = "postgres")]
fn fresh_database() -> String {
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    pg::cluster().create_db(&format!("cluster_{}_{n}", std::process::id()))
}

#[cfg(feature = "postgres")]
fn node(uri: &str) -> Server {
    Server::start_with(Options { args: &["--db", uri], ..Options::default() })
}

/// The next `n` notifications of a stream, as (id, data).
#[cfg(feature = "postgres")]
fn notes(s: &mut Stream, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let ev = next_note(s);
            (note_id(&ev), ev.data)
        })
        .collect()
}

#[cfg(feature = "postgres")]
#[test]
fn a_write_on_either_node_reaches_both_with_equal_ids_and_resumes_on_the_other() {
    let uri = fresh_database();
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(31);
    assert_eq!(a.set_month_limit(31, 1000, 80.0).status, 200);
    let mut on_a = open(&a, &token);
    let mut on_b = open(&b, &token);
    // Both open with a snapshot under id 1 (the limit's notification); a snapshot's
    // timestamp is the time it was read, on each node its own.
    assert_eq!(notes(&mut on_a, 1)[0].0, 1);
    assert_eq!(notes(&mut on_b, 1)[0].0, 1);
    for (i, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        spend(server, &token, 10 * (i as i64 + 1));
    }
    let seen_a = notes(&mut on_a, 4);
    let seen_b = notes(&mut on_b, 4);
    assert_eq!(seen_a, seen_b, "both nodes push the same ids and data");
    assert_eq!(seen_a.iter().map(|n| n.0).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
    let last: Value = serde_json::from_str(&seen_a[3].1).expect("json");
    assert_eq!(last["currentSpending"], json!(100));
    // Resume on the other node after id 3 (as a client moved by the load balancer).
    let mut resumed = open_after(&b, &token, "3");
    assert_eq!(notes(&mut resumed, 2), seen_a[2..].to_vec());
    assert_quiet(&mut resumed, Duration::from_millis(300));
    assert_quiet(&mut on_a, Duration::from_millis(100));
}

#[cfg(feature = "postgres")]
#[test]
fn deactivation_and_limit_changes_take_effect_on_every_node() {
    let uri = fresh_database();
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(32);
    assert_eq!(a.set_month_limit(32, 1000, 80.0).status, 200);
    spend(&a, &token, 100);
    // B learns the user's view, then A changes the limit: B must not answer from a stale one.
    assert_eq!(status_of(&b, &token)["maxLimit"], json!(1000));
    assert_eq!(a.set_month_limit(32, 5000, 80.0).status, 200);
    wait_until("node B sees the new limit", WAIT, || {
        status_of(&b, &token)["maxLimit"] == json!(5000)
    });
    let mut on_b = open(&b, &token);
    let _snapshot = notes(&mut on_b, 1);
    let admin = a.admin_token();
    let r = a.send_json("PUT", "/api/admin/users/32", &admin, r#"{"active":false}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    // B's stream ends, and B refuses the user.
    assert!(on_b.wait_end(WAIT), "node B's stream did not end: {:?}", on_b.body);
    wait_until("node B refuses the deactivated user", WAIT, || {
        b.get(HEALTH, Some(&token)).status == 403
    });
}

#[cfg(feature = "postgres")]
#[test]
fn concurrent_writers_on_three_nodes_get_contiguous_ids_and_exact_totals() {
    let uri = fresh_database();
    let nodes: Vec<Server> = (0..3).map(|_| node(&uri)).collect();
    let token = nodes[0].create_user(33);
    assert_eq!(nodes[0].set_month_limit(33, 1_000_000, 80.0).status, 200);
    let mut streams: Vec<Stream> = nodes.iter().map(|n| open(n, &token)).collect();
    for s in &mut streams {
        assert_eq!(notes(s, 1)[0].0, 1);
    }
    const PER_NODE: i64 = 10;
    thread::scope(|scope| {
        for n in &nodes {
            let token = token.clone();
            scope.spawn(move || {
                for i in 0..PER_NODE {
                    spend(n, &token, i + 1);
                }
            });
        }
    });
    let total = 3 * (1..=PER_NODE).sum::<i64>();
    let seen: Vec<Vec<(u64, String)>> =
        streams.iter_mut().map(|s| notes(s, 3 * PER_NODE as usize)).collect();
    assert_every_node_pushed_contiguous_rising(&seen, 3 * PER_NODE as usize, total, "user");
    for n in &nodes {
        assert_eq!(status_of(n, &token)["currentSpending"], json!(total));
    }
}

/// Many writers per node and several users at once: each node's batches hold several users
/// and several writes of one user (the pipelined batch), while the other node's batches take
/// the same rows. Every user's ids stay contiguous, every node pushes the same notifications,
/// and the totals are exact, in the streams and in each node's cache.
#[cfg(feature = "postgres")]
#[test]
fn many_writers_of_several_users_on_two_nodes_keep_ids_contiguous_and_totals_exact() {
    let uri = fresh_database();
    let nodes: Vec<Server> = (0..2).map(|_| node(&uri)).collect();
    let users = [51i64, 52, 53];
    let tokens: Vec<String> = users.iter().map(|u| nodes[0].create_user(*u)).collect();
    for u in users {
        assert_eq!(nodes[0].set_month_limit(u, 1_000_000_000, 80.0).status, 200);
    }
    // A stream of every user on every node, each opened at the limit's notification (id 1).
    let mut streams: Vec<Vec<Stream>> =
        nodes.iter().map(|n| tokens.iter().map(|t| open(n, t)).collect()).collect();
    for s in streams.iter_mut().flatten() {
        assert_eq!(notes(s, 1)[0].0, 1);
    }
    const WRITERS_PER_USER_AND_NODE: usize = 3;
    const PER_WRITER: i64 = 6;
    thread::scope(|scope| {
        for n in &nodes {
            for token in &tokens {
                for _ in 0..WRITERS_PER_USER_AND_NODE {
                    scope.spawn(move || {
                        for i in 0..PER_WRITER {
                            spend(n, token, i + 1);
                        }
                    });
                }
            }
        }
    });
    let writers = (nodes.len() * WRITERS_PER_USER_AND_NODE) as i64;
    let count = (writers * PER_WRITER) as usize;
    let total = writers * (1..=PER_WRITER).sum::<i64>();
    for (i, token) in tokens.iter().enumerate() {
        let seen: Vec<Vec<(u64, String)>> =
            streams.iter_mut().map(|on_node| notes(&mut on_node[i], count)).collect();
        let user = format!("user {}", users[i]);
        assert_every_node_pushed_contiguous_rising(&seen, count, total, &user);
        for n in &nodes {
            assert_eq!(status_of(n, token)["currentSpending"], json!(total));
        }
    }
    for s in streams.iter_mut().flatten() {
        assert_quiet(s, Duration::from_millis(100));
    }
}

#[cfg(feature = "postgres")]
#[test]
fn three_nodes_starting_at_once_on_an_empty_database_all_come_up() {
    let uri = fresh_database();
    let nodes: Vec<Server> = thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| node(&uri))).collect();
        handles.into_iter().map(|h| h.join().expect("a node started")).collect()
    });
    let token = nodes[2].create_user(34);
    for n in &nodes {
        assert_eq!(n.health(&token)["status"], json!("healthy"));
    }
}

/// What every node's stream of one user saw (`seen`, one list per node, after the opening
/// id 1): the same `count` notifications, ids 2, 3, … without a gap, the spending rising in
/// id order to exactly `total`.
#[cfg(feature = "postgres")]
fn assert_every_node_pushed_contiguous_rising(
    seen: &[Vec<(u64, String)>],
    count: usize,
    total: i64,
    what: &str,
) {
    let ids: Vec<u64> = seen[0].iter().map(|n| n.0).collect();
    assert_eq!(ids, (2..=1 + count as u64).collect::<Vec<_>>(), "{what}: ids contiguous");
    assert!(seen.iter().all(|s| *s == seen[0]), "{what}: every node pushed the same notifications");
    let spending: Vec<i64> = seen[0]
        .iter()
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).expect("json")["currentSpending"]
                .as_i64()
                .expect("spending")
        })
        .collect();
    assert!(spending.windows(2).all(|w| w[0] < w[1]), "{what}: {spending:?}");
    assert_eq!(spending.last().copied(), Some(total), "{what}");
}
