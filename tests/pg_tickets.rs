//! Stream tickets in PostgreSQL (`src/pg/tickets.rs`) against a real, throwaway PostgreSQL
//! (tests/pg_harness), each "node" a connection of its own: a ticket minted on one node is
//! redeemed on another, exactly once even when every node tries at the same instant; it is
//! bound to its claims; it expires (the expiry moved into the past in the table, rather than
//! waited for); only its hash is stored; a user's live tickets are capped; the table is made
//! once however many nodes start together.
//! Run with `cargo test --features postgres --test pg_tickets`.
#![cfg(feature = "postgres")]

mod pg_harness;

use periode_sse::domain::{Role, UserId};
use periode_sse::jwt::Claims;
use periode_sse::pg::connect::connect_async;
use periode_sse::pg::tickets;
use periode_sse::pg::PgUri;
use periode_sse::tickets::{MintError, Minted, Refusal, DEFAULT_MAX_PER_USER};
use pg_harness::Pg;
use std::sync::{Arc, Barrier};

const ALICE: Claims = Claims { user: UserId(13), role: Role::User, expires_at: 1_900_000_000 };
const BOB: Claims = Claims { user: UserId(14), role: Role::User, expires_at: 1_900_000_600 };
const ADMIN: Claims = Claims { user: UserId(0), role: Role::Admin, expires_at: 1_900_001_000 };

/// One node's connection, with the current-thread runtime it runs on (as the store thread's).
struct Node {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Node {
    fn connect(uri: &str) -> Node {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let uri = PgUri::parse(uri).expect("the harness's URI");
        let client = runtime.block_on(connect_async(&uri, "tickets test")).expect("connect");
        Node { runtime, client }
    }

    /// Connects and makes sure the table is there.
    fn start(uri: &str) -> Node {
        let mut node = Node::connect(uri);
        node.runtime.block_on(tickets::ensure_table(&mut node.client)).expect("the table");
        node
    }

    fn mint(&self, claims: Claims) -> Result<Minted, MintError> {
        self.runtime.block_on(tickets::mint(&self.client, claims)).expect("mint: the database")
    }

    fn redeem(&self, ticket: &str) -> Result<Claims, Refusal> {
        self.runtime
            .block_on(tickets::redeem(&self.client, ticket.as_bytes()))
            .expect("redeem: the database")
    }

    fn sweep(&self) -> u64 {
        self.runtime.block_on(tickets::sweep(&self.client)).expect("sweep: the database")
    }
}

fn rows(pg: &Pg, db: &str) -> usize {
    pg.psql(db, "SELECT count(*) FROM stream_tickets").parse().expect("a count")
}

#[test]
fn a_ticket_minted_on_one_node_is_redeemed_once_on_another() {
    let pg = Pg::start();
    let uri = pg.create_db("across");
    let (a, b) = (Node::start(&uri), Node::start(&uri));
    let ticket = a.mint(ALICE).expect("minted").as_str().to_string();
    assert_eq!(ticket.len(), 22);
    assert_eq!(b.redeem(&ticket), Ok(ALICE), "node B redeems node A's ticket");
    assert_eq!(a.redeem(&ticket), Err(Refusal::Unknown), "then it is used, on A too");
    assert_eq!(b.redeem(&ticket), Err(Refusal::Unknown), "and on B");
    // Kept, marked, until its 30 s are over: it still counts toward the user's cap.
    assert_eq!(rows(&pg, "across"), 1, "a used ticket keeps its row until it expires");
    assert_eq!(pg.psql("across", "SELECT used FROM stream_tickets"), "t");
}

#[test]
fn each_ticket_gives_back_the_claims_it_was_minted_for() {
    let pg = Pg::start();
    let uri = pg.create_db("claims");
    let node = Node::start(&uri);
    let minted: Vec<(Claims, String)> = [ALICE, BOB, ADMIN, ALICE]
        .into_iter()
        .map(|c| (c, node.mint(c).expect("minted").as_str().to_string()))
        .collect();
    // Redeemed in another order than minted: each finds its own claims, role and exp.
    for (claims, ticket) in minted.iter().rev() {
        assert_eq!(node.redeem(ticket), Ok(*claims));
    }
}

#[test]
fn when_every_node_redeems_at_once_exactly_one_wins() {
    const NODES: usize = 8;
    let pg = Pg::start();
    let uri = pg.create_db("race");
    let minter = Node::start(&uri);
    for round in 0..5 {
        let ticket = Arc::new(minter.mint(ALICE).expect("minted").as_str().to_string());
        let barrier = Arc::new(Barrier::new(NODES));
        let handles: Vec<_> = (0..NODES)
            .map(|_| {
                let (uri, ticket, barrier) = (uri.clone(), ticket.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let node = Node::connect(&uri);
                    barrier.wait();
                    node.redeem(&ticket)
                })
            })
            .collect();
        let results: Vec<_> =
            handles.into_iter().map(|h| h.join().expect("a node thread")).collect();
        let won = results.iter().filter(|r| **r == Ok(ALICE)).count();
        let lost = results.iter().filter(|r| **r == Err(Refusal::Unknown)).count();
        assert_eq!((won, lost), (1, NODES - 1), "round {round}: {results:?}");
    }
}

#[test]
fn an_expired_ticket_is_refused_and_swept() {
    let pg = Pg::start();
    let uri = pg.create_db("expiry");
    let node = Node::start(&uri);
    let old = node.mint(ALICE).expect("minted").as_str().to_string();
    let fresh = node.mint(BOB).expect("minted").as_str().to_string();
    // Minted 30 s from now, by the database's clock.
    let ttl = pg.psql(
        "expiry",
        "SELECT DISTINCT round(extract(epoch FROM expires_at - now())) FROM stream_tickets",
    );
    assert_eq!(ttl, "30");
    // Alice's ticket's 30 s are over (moved, not waited for).
    pg.psql(
        "expiry",
        "UPDATE stream_tickets SET expires_at = now() - interval '1 millisecond' \
         WHERE user_id = 13",
    );
    assert_eq!(node.redeem(&old), Err(Refusal::Unknown), "expired");
    assert_eq!(rows(&pg, "expiry"), 2, "an expired ticket is not deleted by a refused redeem");
    assert_eq!(node.sweep(), 1);
    assert_eq!(rows(&pg, "expiry"), 1);
    assert_eq!(node.redeem(&fresh), Ok(BOB), "the sweep left the live one");
    assert_eq!(node.sweep(), 0);
}

#[test]
fn the_table_keeps_a_hash_never_the_ticket() {
    let pg = Pg::start();
    let uri = pg.create_db("hashed");
    let node = Node::start(&uri);
    let ticket = node.mint(ALICE).expect("minted").as_str().to_string();
    let bits = periode_kit::b64::decode(&ticket).expect("base64url");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let dump = pg.psql("hashed", "SELECT encode(ticket_hash, 'hex'), * FROM stream_tickets");
    assert!(!dump.contains(&ticket) && !dump.contains(&hex(&bits)), "{dump}");
    let want = hex(&periode_sse::tickets::shared_key(ticket.as_bytes()).expect("a ticket"));
    assert!(dump.starts_with(&want), "the key is SHA-256 of the bits: {dump}");
    let digest =
        pg.psql("hashed", &format!("SELECT encode(sha256('\\x{}'::bytea), 'hex')", hex(&bits)));
    assert_eq!(digest, want, "PostgreSQL's own SHA-256 agrees");
}

#[test]
fn unknown_and_malformed_tickets_are_refused() {
    let pg = Pg::start();
    let uri = pg.create_db("unknown");
    let node = Node::start(&uri);
    let real = node.mint(ALICE).expect("minted").as_str().to_string();
    let cases =
        ["", "AAAAAAAAAAAAAAAAAAAAAA", "short", "+AAAAAAAAAAAAAAAAAAAAA", "x".repeat(400).as_str()]
            .map(str::to_string);
    for case in &cases {
        assert_eq!(node.redeem(case), Err(Refusal::Unknown), "{case:?}");
    }
    assert_eq!(node.redeem(&real), Ok(ALICE), "none of those used the real one up");
}

#[test]
fn a_users_live_tickets_are_capped() {
    let pg = Pg::start();
    let uri = pg.create_db("capped");
    let node = Node::start(&uri);
    let alice: Vec<String> = (0..DEFAULT_MAX_PER_USER)
        .map(|_| node.mint(ALICE).expect("under the cap").as_str().to_string())
        .collect();
    assert_eq!(node.mint(ALICE).map(|_| ()), Err(MintError::UserFull));
    assert!(node.mint(BOB).is_ok(), "another user is not crowded out");
    // A redeemed ticket keeps its place until its 30 s are over (as on SQLite); an expired
    // one frees it.
    assert_eq!(node.redeem(&alice[0]), Ok(ALICE));
    assert_eq!(node.mint(ALICE).map(|_| ()), Err(MintError::UserFull));
    pg.psql(
        "capped",
        "UPDATE stream_tickets SET expires_at = now() - interval '1 second' \
         WHERE ctid IN (SELECT ctid FROM stream_tickets WHERE user_id = 13 LIMIT 2)",
    );
    assert!(node.mint(ALICE).is_ok() && node.mint(ALICE).is_ok());
    assert_eq!(node.mint(ALICE).map(|_| ()), Err(MintError::UserFull));
    let live: usize = pg
        .psql("capped", "SELECT count(*) FROM stream_tickets WHERE user_id = 13")
        .parse()
        .expect("a count");
    assert_eq!(live, DEFAULT_MAX_PER_USER, "minting dropped the user's expired rows");
}

#[test]
fn nodes_starting_together_all_get_the_table() {
    const NODES: usize = 6;
    let pg = Pg::start();
    let uri = pg.create_db("together");
    let barrier = Arc::new(Barrier::new(NODES));
    let handles: Vec<_> = (0..NODES)
        .map(|_| {
            let (uri, barrier) = (uri.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut node = Node::connect(&uri);
                barrier.wait();
                node.runtime.block_on(tickets::ensure_table(&mut node.client))
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a node thread").expect("every node gets the table");
    }
    // And again on a database that has it.
    let node = Node::start(&uri);
    let ticket = node.mint(ALICE).expect("minted").as_str().to_string();
    assert_eq!(node.redeem(&ticket), Ok(ALICE));
}
