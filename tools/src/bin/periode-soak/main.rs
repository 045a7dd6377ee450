//! periode-soak: drives a running periode-sse with thousands of streams for a bounded time and
//! checks that it lost nothing and leaked nothing (SPEC §4, §5; run by `scripts/soak.sh`).
//!
//! One thread, one `mio::Poll`, every client socket non-blocking. During the run:
//!  - well-behaved streams, spread over the users, read every event; a third of them come and
//!    go, reconnecting with `Last-Event-ID`, a tenth write junk after their request;
//!  - stalled streams (tiny receive buffer) read their head and never again;
//!  - churners open a stream and drop it soon after (half with a reset);
//!  - garbage clients send malformed or oversized requests, or half a request and leave;
//!  - posters send admin `POST /transactions` for every user (a few "hot" users get many more,
//!    so that their stalled streams fall behind), counting the 201s per user.
//!
//! At the end, with posting stopped: every well-behaved logical client has seen its user's
//! notifications with consecutive ids, none twice, none missing, up to the id the 201s imply;
//! heartbeats kept coming; stalled streams of hot users were cut; and once every client has
//! left, the server's descriptors and RSS are back near their idle level. Exit 1 on any failure.
//!
//! `clients.rs` is the loop and the clients it drives, `phases.rs` the phases of the run in
//! order, `checks.rs` what is checked at the end; `run` below says the order.

mod checks;
mod clients;
mod phases;

use checks::*;
use clients::*;
use phases::*;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use periode_kit::rng::Rng;
use periode_kit::{http, procfs, sock, token};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const STREAM_PATH: &str = "/api/periode-limit/notifications/stream";
const HEALTH_PATH: &str = "/api/periode-limit/notifications/health";
const TRANSACTIONS_PATH: &str = "/api/periode-limit/transactions";
/// Bytes a notification frame takes on the wire, roughly: for deciding whether hot users'
/// stalled streams were pushed past the server's 256 KiB cap.
const NOTIFICATION_BYTES: u64 = 240;
const SLOW_CONSUMER_BYTES: u64 = 256 * 1024;

const USAGE: &str = "\
periode-soak: soak a running periode-sse (see scripts/soak.sh)

  --addr ADDR          server address (default 127.0.0.1:8989)
  --seconds N          length of the load phase (default 60)
  --users N            users 1..=N, created and given a limit first (default 200)
  --streams N          well-behaved streams (default 2400)
  --stalled N          streams that never read (default 300)
  --churn N            streams that keep connecting and dropping (default 200)
  --rate N             transactions per second over all users (default 300)
  --hot-users N        users 1..=N also get --hot-rate each (default 2)
  --hot-rate N         extra transactions per second per hot user (default 70)
  --garbage-rate N     malformed clients per second (default 40)
  --heartbeat SECS     the server's --heartbeat, to check the gaps (default 2)
  --pid PID            the server's pid, for the descriptor and RSS checks
The HS256 key is JWT_SECRET, as for the server.
";

struct Args {
    addr: SocketAddr,
    seconds: u64,
    users: u64,
    streams: usize,
    stalled: usize,
    churn: usize,
    rate: u64,
    hot_users: u64,
    hot_rate: u64,
    garbage_rate: u64,
    heartbeat_secs: u64,
    pid: Option<u32>,
    secret: Vec<u8>,
}

fn parse_args() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut args = Args {
        addr: "127.0.0.1:8989".parse().map_err(|_| "default address")?,
        seconds: 60,
        users: 200,
        streams: 2400,
        stalled: 300,
        churn: 200,
        rate: 300,
        hot_users: 2,
        hot_rate: 70,
        garbage_rate: 40,
        heartbeat_secs: 2,
        pid: None,
        secret: std::env::var("JWT_SECRET").map_err(|_| "set JWT_SECRET")?.into_bytes(),
    };
    let mut parser = lexopt::Parser::from_env();
    let number = |parser: &mut lexopt::Parser, name: &str| -> Result<u64, String> {
        let value = parser.value().map_err(|e| e.to_string())?;
        value.string().ok().and_then(|s| s.parse().ok()).ok_or(format!("{name} needs a number"))
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("addr") => {
                let value = parser.value().map_err(|e| e.to_string())?;
                args.addr = value
                    .string()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--addr needs an address like 127.0.0.1:8989")?;
            }
            Long("seconds") => args.seconds = number(&mut parser, "--seconds")?,
            Long("users") => args.users = number(&mut parser, "--users")?.max(1),
            Long("streams") => args.streams = number(&mut parser, "--streams")? as usize,
            Long("stalled") => args.stalled = number(&mut parser, "--stalled")? as usize,
            Long("churn") => args.churn = number(&mut parser, "--churn")? as usize,
            Long("rate") => args.rate = number(&mut parser, "--rate")?,
            Long("hot-users") => args.hot_users = number(&mut parser, "--hot-users")?,
            Long("hot-rate") => args.hot_rate = number(&mut parser, "--hot-rate")?,
            Long("garbage-rate") => args.garbage_rate = number(&mut parser, "--garbage-rate")?,
            Long("heartbeat") => args.heartbeat_secs = number(&mut parser, "--heartbeat")?.max(1),
            Long("pid") => args.pid = Some(number(&mut parser, "--pid")? as u32),
            Long("help") | Short('h') => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    args.hot_users = args.hot_users.min(args.users);
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("periode-soak: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            report.print();
            if report.failures.is_empty() {
                println!("soak: PASS");
                ExitCode::SUCCESS
            } else {
                println!("soak: FAIL ({} problems)", report.failures.len());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("periode-soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Report, String> {
    let (setup, mut report) = set_up(args)?;
    let mut soak = Soak {
        args,
        poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
        conns: slab::Slab::with_capacity(args.streams + args.churn + 256),
        next_gen: 1,
        logical: Vec::with_capacity(args.streams),
        user_tokens: setup.user_tokens,
        admin_token: setup.admin_token,
        rng: Rng::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id())),
        stats: Stats::default(),
        report: std::mem::take(&mut report),
        loading: true,
    };
    let mut stalled = open_stalled_streams(&mut soak);
    soak.add_logical_clients();
    let mut events = Events::with_capacity(4096);
    let rss_peak = load(&mut soak, &mut events)?;
    wind_down(&mut soak, &mut events)?;
    // What every user's last id must be now.
    let final_ids: BTreeMap<u64, u64> = (1..=args.users)
        .map(|user| {
            let created = soak.stats.posts_created.get(&user).copied().unwrap_or(0);
            (user, setup.base_ids[&user] + created)
        })
        .collect();
    catch_up(&mut soak, &mut events, &final_ids)?;
    let silent_streams = settle(&mut soak, &mut events)?;

    let mut report = std::mem::take(&mut soak.report);
    report_load(&mut report, &soak, stalled.len(), silent_streams);
    check_clients(&mut report, &soak, &final_ids);
    check_stalled(&mut report, &soak, &mut stalled);
    // Everyone leaves; the server must come back to its idle footprint.
    let keys: Vec<usize> = soak.conns.iter().map(|(k, _)| k).collect();
    for key in keys {
        soak.close(key);
    }
    drop(stalled);
    check_back_to_idle(&mut report, &soak, setup.idle, rss_peak);
    Ok(report)
}
