//! The command line of periode-density: which server, how many streams, which phases.

use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
periode-density: opens N SSE streams against a server and measures what they cost

USAGE: periode-density [OPTIONS]
       periode-density summarize REPORT.json...   (medians per label, as a Markdown table)

Target:
  --target periode|axum|hono|nchan   protocol to speak (default periode)
  --addr HOST:PORT                   server address (default 127.0.0.1:8989)
  --pid PID                          server process to read /proc from (RSS, PSS, CPU)
  --server PATH                      start this periode-sse binary ourselves (temp db, free port)
  --db PATH                          with --server: database to use (default: a temp file)
  --heartbeat SECS                   with --server: its --heartbeat (default 30)
  --server-arg ARG                   with --server: one more argument for it (repeatable)
  --secret TEXT                      HS256 key (default: env JWT_SECRET; --server makes one)
  --no-setup                         do not create users and limits (periode target)
  --label TEXT                       free text copied into the report
  --write-addr HOST:PORT             send the fan-out probe's POSTs (and, without --node, the
                                     writers') to this node instead of --addr (cluster mode:
                                     write on node A, stream from node B)
  --node HOST:PORT                   one more node of a cluster (repeatable): streams and
                                     writers are spread round-robin over --addr and these

Load:
  --streams N                        streams to open (default 1000)
  --per-user N                       streams per user (default 100)
  --window N                         connects in flight at once (default 1000)
  --spread / --no-spread             client source addresses 127.0.0.2-9 (default: N > 1000)
  --connect-secs S                   connect phase deadline (default 120)
  --settle-secs S                    idle wait before memory is read (default 3)
  --snapshot CMD                     run `sh -c CMD` right after each memory reading, with
                                     PERIODE_PID and PERIODE_POINT (before, after) set: to keep
                                     /proc/PID/smaps or malloc_stats beside the figures
  --fanout-posts N                   events to time to one user's streams (default 50; 0 skips)
  --fanout-gap-ms MS                 pause between them (default 20)
  --heartbeat-window S               measure CPU per heartbeat over S seconds (default 0: skip)
  --writers N                        concurrent transaction writers (default 0: skip)
  --writers-secs S                   how long they write (default 10)
  --writers-rate R                   paced: R writes/s in all, on a fixed schedule (default 0:
                                     closed loop, each writer sends again once answered)
  --quiet                            no table on stderr
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Periode,
    Axum,
    Hono,
    Nchan,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Periode => "periode",
            Target::Axum => "axum",
            Target::Hono => "hono",
            Target::Nchan => "nchan",
        }
    }

    pub fn uses_tokens(self) -> bool {
        self != Target::Nchan
    }
}

pub struct Args {
    pub target: Target,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub server: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub heartbeat_secs: u64,
    pub server_args: Vec<String>,
    pub secret: Option<String>,
    pub setup: bool,
    pub label: Option<String>,
    /// Where the probe's POSTs go (default `addr`).
    pub write_addr: Option<SocketAddr>,
    /// More nodes of one cluster, beside `addr`.
    pub nodes: Vec<SocketAddr>,
    pub streams: usize,
    pub per_user: usize,
    pub window: usize,
    pub spread: Option<bool>,
    pub connect_secs: u64,
    pub settle_secs: f64,
    /// A shell command run after each memory reading (see `--snapshot`).
    pub snapshot: Option<String>,
    pub fanout_posts: usize,
    pub fanout_gap_ms: u64,
    pub heartbeat_window: u64,
    pub writers: usize,
    pub writers_secs: u64,
    /// Writes per second across all writers (0: each writer sends as soon as it is answered).
    pub writers_rate: f64,
    pub quiet: bool,
}

pub fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        target: Target::Periode,
        addr: "127.0.0.1:8989".parse().expect("literal address"), // ok: a constant
        pid: None,
        server: None,
        db: None,
        heartbeat_secs: 30,
        server_args: Vec::new(),
        secret: std::env::var("JWT_SECRET").ok(),
        setup: true,
        label: None,
        write_addr: None,
        nodes: Vec::new(),
        streams: 1000,
        per_user: 100,
        window: 1000,
        spread: None,
        connect_secs: 120,
        settle_secs: 3.0,
        snapshot: None,
        fanout_posts: 50,
        fanout_gap_ms: 20,
        heartbeat_window: 0,
        writers: 0,
        writers_secs: 10,
        writers_rate: 0.0,
        quiet: false,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("target") => {
                a.target = match parser.value()?.string()?.as_str() {
                    "periode" => Target::Periode,
                    "axum" => Target::Axum,
                    "hono" => Target::Hono,
                    "nchan" => Target::Nchan,
                    other => return Err(format!("unknown target {other:?}").into()),
                }
            }
            Long("addr") => a.addr = parser.value()?.parse()?,
            Long("pid") => a.pid = Some(parser.value()?.parse()?),
            Long("server") => a.server = Some(parser.value()?.into()),
            Long("db") => a.db = Some(parser.value()?.into()),
            Long("heartbeat") => a.heartbeat_secs = parser.value()?.parse()?,
            Long("server-arg") => a.server_args.push(parser.value()?.string()?),
            Long("secret") => a.secret = Some(parser.value()?.string()?),
            Long("no-setup") => a.setup = false,
            Long("label") => a.label = Some(parser.value()?.string()?),
            Long("write-addr") => a.write_addr = Some(parser.value()?.parse()?),
            Long("node") => a.nodes.push(parser.value()?.parse()?),
            Long("streams") => a.streams = parser.value()?.parse()?,
            Long("per-user") => a.per_user = parser.value()?.parse::<usize>()?.max(1),
            Long("window") => a.window = parser.value()?.parse::<usize>()?.max(1),
            Long("spread") => a.spread = Some(true),
            Long("no-spread") => a.spread = Some(false),
            Long("connect-secs") => a.connect_secs = parser.value()?.parse()?,
            Long("settle-secs") => a.settle_secs = parser.value()?.parse()?,
            Long("snapshot") => a.snapshot = Some(parser.value()?.string()?),
            Long("fanout-posts") => a.fanout_posts = parser.value()?.parse()?,
            Long("fanout-gap-ms") => a.fanout_gap_ms = parser.value()?.parse()?,
            Long("heartbeat-window") => a.heartbeat_window = parser.value()?.parse()?,
            Long("writers") => a.writers = parser.value()?.parse()?,
            Long("writers-secs") => a.writers_secs = parser.value()?.parse()?,
            Long("writers-rate") => a.writers_rate = parser.value()?.parse()?,
            Long("quiet") => a.quiet = true,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}
