//! Stream tickets in cluster mode (SPEC §8, §7): two real nodes on one throwaway PostgreSQL
//! (one cluster for this test binary, a fresh database per test). A ticket minted on one node
//! opens that ticket's user's stream on the other, once: a second use on either node, or a
//! ticket nobody minted, is `401 invalid_token`; of two nodes redeeming one ticket at the same
//! moment exactly one opens a stream; the stream opened with it resumes and receives like one
//! opened with the token; while PostgreSQL is down both minting and redeeming are `503
//! storage_unavailable`, and a ticket that could not be redeemed then still works once after;
//! no ticket reaches either node's log. Built only with `--features postgres`;
//! `scripts/pg-test.sh` runs it.
#![cfg(feature = "postgres")]

mod common;
use common::*;

static NEXT_DB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fresh database on the binary's cluster, as a `--db` URI.
fn fresh_database() -> String {
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    pg::cluster().create_db(&format!("ctickets_{}_{n}", std::process::id()))
}

/// A node that logs everything it can, so that the log can be searched for tickets.
fn node(uri: &str) -> Server {
    Server::start_with(Options {
        args: &["--db", uri, "--access-log", "--log-level", "trace"],
        ..Options::default()
    })
}

fn open_ticket(server: &Server, target_query: &str) -> Stream {
    Stream::open(server.addr, "", &format!("{STREAM}?{target_query}"))
}

/// Every line of both logs is free of every ticket, and of any `ticket=` query.
fn assert_no_ticket_logged(nodes: &[&Server], tickets: &[String]) {
    for server in nodes {
        for line in server.log.lines() {
            for ticket in tickets {
                assert!(!line.contains(ticket.as_str()), "a ticket in the log: {line}");
            }
            assert!(!line.contains("ticket="), "{line}");
        }
    }
}

#[test]
fn a_ticket_minted_on_one_node_opens_its_users_stream_once_on_the_other() {
    let uri = fresh_database();
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(51);
    assert_eq!(a.set_month_limit(51, 1000, 80.0).status, 200);
    spend(&a, &token, 100);
    let ticket = mint(&a, &token);

    // On B, which has never seen the user: the stream is user 51's, with its snapshot.
    let mut on_b = open_ticket(&b, &format!("ticket={ticket}"));
    assert_eq!(on_b.status, 200, "{}", on_b.head);
    assert_eq!(on_b.header("Content-Type").as_deref(), Some("text/event-stream"));
    assert_eq!(on_b.header("Cache-Control").as_deref(), Some("no-cache, no-store"));
    assert_eq!(on_b.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    let snapshot = next_note(&mut on_b).json();
    assert_eq!(snapshot["userId"], json!(51));
    assert_eq!(snapshot["currentSpending"], json!(100));
    assert_eq!(b.health(&token)["connectedClients"], json!(1));
    assert_eq!(a.health(&token)["connectedClients"], json!(0));

    // It stays that user's stream: a write on A reaches it, with its id.
    spend(&a, &token, 250);
    let ev = next_note(&mut on_b);
    assert_eq!(note_id(&ev), 3);
    assert_eq!(ev.json()["userId"], json!(51));
    assert_eq!(ev.json()["currentSpending"], json!(350));

    // Used: refused on A and on B, while the stream is open and after it closed.
    assert_invalid_ticket(&get_with_ticket(&a, &ticket), "second use, on A");
    assert_invalid_ticket(&get_with_ticket(&b, &ticket), "second use, on B");
    drop(on_b);
    wait_until("B's stream is gone", WAIT, || b.health(&token)["connectedClients"] == 0);
    assert_invalid_ticket(&get_with_ticket(&b, &ticket), "third use, on B");
    assert_invalid_ticket(&get_with_ticket(&a, &ticket), "third use, on A");

    // And the other way round: minted on B (cold there until now), used on A.
    let from_b = mint(&b, &token);
    let mut on_a = open_ticket(&a, &format!("ticket={from_b}"));
    assert_eq!(on_a.status, 200, "{}", on_a.head);
    assert_eq!(on_a.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_eq!(next_note(&mut on_a).json()["userId"], json!(51));
    assert_invalid_ticket(&get_with_ticket(&b, &from_b), "B's ticket used on A, then on B");
    assert_no_ticket_logged(&[&a, &b], &[ticket, from_b]);
}

#[test]
fn unknown_and_malformed_tickets_are_401_on_every_node() {
    let uri = fresh_database();
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(52);
    let real = mint(&a, &token);
    let mut changed = real.clone().into_bytes();
    changed[7] = if changed[7] == b'A' { b'B' } else { b'A' };
    let changed = String::from_utf8(changed).expect("base64url is ASCII");
    let cases = [
        ("made up", "AAAAAAAAAAAAAAAAAAAAAA".to_string()),
        ("one character changed", changed),
        ("too short", real[..21].to_string()),
        ("garbage", "%00%ff%22not-a-ticket".to_string()),
        ("a token in the ticket's place", token.clone()),
    ];
    for server in [&a, &b] {
        for (name, ticket) in &cases {
            assert_invalid_ticket(&get_with_ticket(server, ticket), name);
        }
    }
    // None of that used the real one up: it still opens its stream, on B.
    let mut s = open_ticket(&b, &format!("ticket={real}"));
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_no_ticket_logged(&[&a, &b], &[real]);
}

#[test]
fn a_ticket_is_its_users_whoever_presents_it_and_resumes_like_a_token() {
    let uri = fresh_database();
    let (a, b) = (node(&uri), node(&uri));
    let alice = a.create_user(53);
    let bob = a.create_user(54);
    assert_eq!(a.set_month_limit(53, 1000, 80.0).status, 200);
    assert_eq!(a.set_month_limit(54, 1000, 80.0).status, 200);
    for amount in [10, 20, 30] {
        spend(&a, &bob, amount);
    }
    // Bob's ticket, minted with his token on A, opens Bob's stream on B: resumed after id 2,
    // it replays ids 3 and 4 as a token's stream would.
    let ticket = mint(&a, &bob);
    let mut s = open_ticket(&b, &format!("ticket={ticket}&lastEventId=2"));
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    let replayed: Vec<(u64, i64)> = (0..2)
        .map(|_| {
            let ev = next_note(&mut s);
            assert_eq!(ev.json()["userId"], json!(54));
            (note_id(&ev), ev.json()["currentSpending"].as_i64().unwrap_or(-1))
        })
        .collect();
    assert_eq!(replayed, vec![(3, 30), (4, 60)]);
    assert_eq!(b.health(&bob)["connectedClients"], json!(1));
    assert_eq!(b.health(&alice)["connectedClients"], json!(0));
    // Alice's writes never reach it.
    spend(&a, &alice, 500);
    assert_quiet(&mut s, Duration::from_millis(300));

    // A ticket of a user deactivated since it was minted: 403 on the other node.
    let later = mint(&b, &alice);
    let r = a.send_json("PUT", "/api/admin/users/53", &a.admin_token(), r#"{"active":false}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("node A refuses the deactivated user", WAIT, || {
        a.get(HEALTH, Some(&alice)).status == 403
    });
    assert_error(&get_with_ticket(&a, &later), 403, Some("user_inactive"), "inactive");
    // Nor can the deactivated user buy another, on either node.
    wait_until("node B refuses the deactivated user", WAIT, || {
        b.get(HEALTH, Some(&alice)).status == 403
    });
    assert_error(&post_ticket(&b, &alice), 403, Some("user_inactive"), "inactive mint");
    assert_no_ticket_logged(&[&a, &b], &[ticket, later]);
}

#[test]
fn one_ticket_presented_to_both_nodes_at_once_opens_one_stream() {
    let uri = fresh_database();
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(55);
    for round in 0..5 {
        let ticket = mint(&a, &token);
        let statuses: Vec<u16> = thread::scope(|scope| {
            let handles: Vec<_> = [&a, &b, &a, &b]
                .into_iter()
                .map(|server| {
                    let ticket = ticket.clone();
                    scope.spawn(move || {
                        let s = open_ticket(server, &format!("ticket={ticket}"));
                        s.status
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a request")).collect()
        });
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![200, 401, 401, 401], "round {round}: {statuses:?}");
        wait_until("the stream is gone", WAIT, || {
            a.health(&token)["connectedClients"] == 0 && b.health(&token)["connectedClients"] == 0
        });
    }
}

#[test]
fn while_postgresql_is_down_tickets_are_503_and_an_unused_one_works_after() {
    let mut cluster = pg::pg_harness::Pg::start();
    let uri = cluster.create_db("ctickets_outage");
    let (a, b) = (node(&uri), node(&uri));
    let token = a.create_user(56);
    let ticket = mint(&a, &token);
    cluster.stop();
    // Refused, not hung (the client's read timeout is the bound), on both routes.
    assert_error(&post_ticket(&a, &token), 503, Some("storage_unavailable"), "mint, store down");
    let r = get_with_ticket(&b, &ticket);
    assert_error(&r, 503, Some("storage_unavailable"), "redeem, store down");
    cluster.run();
    // Nothing used the ticket up: once PostgreSQL is back it opens its stream on B, once.
    wait_until("a ticket is minted again on node A", WAIT, || {
        post_ticket(&a, &token).status == 201
    });
    let mut s = open_ticket(&b, &format!("ticket={ticket}"));
    assert_eq!(s.status, 200, "{}", s.head);
    assert_eq!(s.next_event(WAIT).map(|e| e.event).as_deref(), Some("connected"));
    assert_invalid_ticket(&get_with_ticket(&a, &ticket), "used after the outage");
    assert_no_ticket_logged(&[&a, &b], &[ticket]);
}
