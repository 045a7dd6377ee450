//! periode-density: how many idle SSE streams one server holds, and what they cost.
//!
//! Opens N streams over loopback (users × streams per user, real tokens), then measures, in
//! bounded phases: connect rate and first-event latency; the server's RSS and PSS growth per
//! stream; idle CPU; fan-out latency of one event to every stream of one user; CPU per
//! heartbeat delivered (server at `--heartbeat 1`); durable writes per second from concurrent
//! writers while fan-out latency is probed; how late other users' heartbeats come, idle and
//! while the writers commit. One JSON object goes to stdout, a table to stderr.
//!
//! For cluster mode, `--write-addr` sends the probe's POSTs to another node than the streams'
//! (cross-node fan-out), and `--node` spreads streams and writers over several nodes.
//!
//! It measures our server (`--target periode`, which it can start itself with `--server`) and
//! the peers in `../shared/peers` (`axum`, `hono`, `nchan`) with the same client code.
//! One thread, one `mio::Poll`; every phase has a deadline; the tool always stops by itself.

mod args;
mod stats;
mod summary;
mod tool;

use args::{parse_args, Args, Target, USAGE};
use periode_kit::{procfs, setup};
use serde_json::json;
use stats::Sample;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tool::{Tool, ROUND_TIMEOUT};

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("summarize") {
        return match summary::run(&argv[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("periode-density: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("periode-density: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(ok) => {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("periode-density: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Runs every phase; returns whether it completed with no failure at all.
fn run(mut args: Args) -> Result<bool, String> {
    check_fd_limit(&args)?;
    let users = args.streams.div_ceil(args.per_user).max(1) as u64;
    let writer_users = args.writers as u64;
    let load_before = procfs::load_average();
    let mut target = start_target(&mut args, users + writer_users)?;
    let tokens = make_tokens(&args, users + writer_users)?;
    let spread = args.spread.unwrap_or(args.streams > 1000);
    let mut tool = Tool::new(&args, users, tokens, spread)?;
    let tool_cpu_start = procfs::self_cpu_us();

    // Baseline.
    std::thread::sleep(Duration::from_millis(300));
    let pid = args.pid;
    let rss_before = pid.and_then(procfs::rss_bytes);
    let pss_before = pid.and_then(procfs::pss_bytes);
    snapshot(&args, pid, "before");

    let connect = measure_connect(&mut tool, &args, pid);
    let settle = measure_settle(&mut tool, &args, pid);
    let fan = measure_fanout(&mut tool, &args, pid);
    let beats = measure_heartbeats(&mut tool, &args, pid);
    let writes = measure_writers(&mut tool, &args, pid, fan.streams);

    // The end.
    let live_at_end = tool.live_streams();
    let tool_cpu_s = (procfs::self_cpu_us() - tool_cpu_start) as f64 / 1e6;
    let rss_at_end = pid.and_then(procfs::rss_bytes);
    let mut shutdown = json!(null);
    if let Some(mut s) = target.spawned.take() {
        let took = setup::stop_server(&mut s, Duration::from_secs(8));
        shutdown = json!({ "exit_ms": took.map(|d| d.as_secs_f64() * 1000.0), "log": s.log });
    }
    let failures: u64 = tool
        .failures
        .iter()
        .filter(|(k, _)| k.as_str() != "ended_by_server")
        .map(|(_, v)| *v)
        .sum();
    let measured = Measured {
        users,
        spread,
        load_before,
        startup: target.startup,
        rss_before,
        pss_before,
        connect,
        settle,
        fan,
        beats,
        writes,
        live_at_end,
        tool_cpu_s,
        rss_at_end,
        shutdown,
        failures,
    };
    let (report, table) = report(&args, &mut tool, measured);
    println!("{report}");
    if !args.quiet {
        print_table(&args, &report, &table, &tool);
    }
    drop(tool);
    if let Some(dir) = target.tmpdir {
        if args.db.is_none() && failures == 0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(failures == 0)
}

/// Everything the phases measured, for the report and the table.
struct Measured {
    users: u64,
    spread: bool,
    load_before: Option<String>,
    startup: serde_json::Value,
    rss_before: Option<u64>,
    pss_before: Option<u64>,
    connect: ConnectFigures,
    settle: SettleFigures,
    fan: FanoutFigures,
    beats: HeartbeatFigures,
    writes: WriterFigures,
    live_at_end: usize,
    tool_cpu_s: f64,
    rss_at_end: Option<u64>,
    shutdown: serde_json::Value,
    failures: u64,
}

/// The JSON report (one object on stdout), and the figures the table adds to it.
fn report(args: &Args, tool: &mut Tool, m: Measured) -> (serde_json::Value, Table) {
    let pid = args.pid;
    let live_after_settle = m.settle.live;
    let per_stream = |before: Option<u64>, after: Option<u64>| -> Option<f64> {
        let (b, a) = (before?, after?);
        (live_after_settle > 0)
            .then(|| (a as f64 - b as f64) / live_after_settle as f64)
            .map(|v| v.round())
    };
    let (rss_after, pss_after) = (m.settle.rss_after, m.settle.pss_after);
    let rss_per = per_stream(m.rss_before, rss_after);
    let pss_per = per_stream(m.pss_before, pss_after);
    let established = m.connect.established;
    let rate_99 = m.connect.rate_99;
    let (fan_streams, fan_p50, fan_p99) = (m.fan.streams, m.fan.p50, m.fan.p99);
    let cpu_per_hb = m.beats.cpu_per_heartbeat;
    let (paced_probe_p99, writes_per_s, writer_probe_p99) =
        (m.writes.paced_probe_p99, m.writes.writes_per_s, m.writes.probe_p99);
    let (idle_cpu, fanout, heartbeat) = (m.settle.idle_cpu, m.fan.report, m.beats.report);
    let (writers, writers_paced) = (m.writes.closed, m.writes.paced);
    let connect_cpu = (m.connect.cpu_start, m.connect.cpu_end);
    let mut first_event = tool.connect.first_event.summary();
    let (connect_secs, connect_tool_us) = (m.connect.secs, m.connect.tool_us);
    let report = json!({
        "tool": "periode-density",
        "label": args.label,
        "target": args.target.name(),
        "addr": args.addr.to_string(),
        "write_addr": args.write_addr.map(|a| a.to_string()),
        "nodes": args.nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "pid": pid,
        "load_average_before": m.load_before,
        "load_average_after": procfs::load_average(),
        "streams_requested": args.streams,
        "per_user": args.per_user,
        "users": m.users,
        "spread_sources": m.spread,
        "window": args.window,
        "heartbeat_secs": args.heartbeat_secs,
        "startup": m.startup,
        "connect": {
            "established": established,
            "secs": connect_secs,
            "secs_to_99pct": tool.connect.time_to_99.map(|d| d.as_secs_f64()),
            "secs_to_all": tool.connect.time_to_all.map(|d| d.as_secs_f64()),
            "streams_per_s_to_99pct": rate_99.map(f64::round),
            "first_event": first_event.take(),
            "server_cpu_us_per_stream": match connect_cpu {
                (Some(a), Some(b)) if established > 0 =>
                    json!(((b.total_us() - a.total_us()) as f64 / established as f64).round()),
                _ => json!(null),
            },
            "server_run_us_per_stream": match connect_cpu {
                (Some(a), Some(b)) if established > 0 =>
                    json!(((b.run_ns - a.run_ns) as f64 / 1000.0 / established as f64).round()),
                _ => json!(null),
            },
            "tool_cpu_us_per_stream": (established > 0)
                .then(|| (connect_tool_us as f64 / established as f64).round()),
        },
        "memory": {
            "live_streams": live_after_settle,
            "rss_before_bytes": m.rss_before,
            "rss_after_bytes": rss_after,
            "rss_at_end_bytes": m.rss_at_end,
            "pss_before_bytes": m.pss_before,
            "pss_after_bytes": pss_after,
            "rss_growth_per_stream_bytes": rss_per,
            "pss_growth_per_stream_bytes": pss_per,
        },
        "idle_cpu": idle_cpu,
        "fanout": fanout,
        "heartbeat": heartbeat,
        "writers": writers,
        "writers_paced": writers_paced,
        "notifications_received": tool.counts.notifications,
        "heartbeats_received": tool.counts.heartbeats,
        "live_streams_at_end": m.live_at_end,
        "failures": tool.failures,
        "failure_count": m.failures,
        "shutdown": m.shutdown,
        "load_generator": {
            "cpu_s": m.tool_cpu_s,
            "max_rss_bytes": procfs::self_max_rss_bytes(),
        },
    });
    let table = Table {
        load_before: m.load_before,
        established,
        rate_99,
        rss_before: m.rss_before,
        rss_after,
        rss_per,
        pss_per,
        fan_streams,
        fan_p50,
        fan_p99,
        cpu_per_hb,
        paced_probe_p99,
        writes_per_s,
        writer_probe_p99,
        failures: m.failures,
        tool_cpu_s: m.tool_cpu_s,
    };
    (report, table)
}

fn check_fd_limit(args: &Args) -> Result<(), String> {
    let fd_limit = procfs::raise_open_files_limit();
    // Streams + POST connections + a margin for the loop itself.
    let needed = args.streams + args.writers + 64;
    if (fd_limit as usize) < needed {
        return Err(format!(
            "{} streams need about {needed} open files; the limit is {fd_limit}",
            args.streams
        ));
    }
    Ok(())
}

/// The server measured: ours, started here on a database of its own, or one already running.
struct Started {
    spawned: Option<setup::Spawned>,
    startup: serde_json::Value,
    tmpdir: Option<std::path::PathBuf>,
}

/// Starts our own server when `--server` says so (creating its users, then restarting it on
/// that database), or creates the users on a running one; sets `args.addr`, `args.pid` and
/// `args.secret` to what was started.
fn start_target(args: &mut Args, all_users: u64) -> Result<Started, String> {
    let Some(bin) = args.server.clone() else {
        if args.target == Target::Periode && args.setup {
            let secret =
                args.secret.clone().ok_or("the periode target needs --secret or JWT_SECRET")?;
            setup::create_users(
                args.addr,
                secret.as_bytes(),
                1..=all_users,
                8,
                Duration::from_secs(120),
            )?;
        }
        return Ok(Started { spawned: None, startup: json!(null), tmpdir: None });
    };
    if args.target != Target::Periode {
        return Err("--server starts periode-sse only".into());
    }
    let secret = args.secret.clone().unwrap_or_else(random_secret);
    args.secret = Some(secret.clone());
    let dir = std::env::temp_dir().join(format!("periode-density.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let db = args.db.clone().unwrap_or_else(|| dir.join("density.db"));
    let log = dir.join("server.log");
    args.addr = SocketAddr::from(([127, 0, 0, 1], setup::free_port()?));
    let spawn = |args: &Args| {
        setup::spawn_server(
            &bin,
            &db,
            args.addr,
            args.heartbeat_secs,
            &secret,
            &log,
            &args.server_args,
        )
    };
    let (mut first, first_ms) = spawn(args)?;
    if args.setup {
        let created = setup::create_users(
            args.addr,
            secret.as_bytes(),
            1..=all_users,
            8,
            Duration::from_secs(120),
        );
        if let Err(e) = created {
            setup::stop_server(&mut first, Duration::from_secs(6));
            return Err(format!("set-up failed: {e}"));
        }
    }
    // Restart on the now-existing database: a clean baseline, and the start-up time that
    // the target speaks of.
    setup::stop_server(&mut first, Duration::from_secs(6));
    let (again, again_ms) = spawn(args)?;
    let startup = json!({
        "first_start_ms": first_ms.as_secs_f64() * 1000.0,
        "existing_db_ms": again_ms.as_secs_f64() * 1000.0,
    });
    args.pid = Some(again.child.id());
    Ok(Started { spawned: Some(again), startup, tmpdir: Some(dir) })
}

/// A token for every user (empty strings for a target that takes none).
fn make_tokens(args: &Args, all_users: u64) -> Result<Vec<String>, String> {
    if args.target.uses_tokens() && args.secret.is_none() {
        return Err(format!("the {} target needs --secret or JWT_SECRET", args.target.name()));
    }
    let key = args.secret.clone().unwrap_or_default();
    Ok((1..=all_users)
        .map(|u| {
            if args.target.uses_tokens() {
                setup::user_token(u, key.as_bytes())
            } else {
                String::new()
            }
        })
        .collect())
}

/// What the connect phase measured.
struct ConnectFigures {
    established: usize,
    rate_99: Option<f64>,
    secs: f64,
    cpu_start: Option<procfs::Cpu>,
    cpu_end: Option<procfs::Cpu>,
    tool_us: u64,
}

/// Opens every stream (within the window) and waits for each one's first event.
fn measure_connect(tool: &mut Tool, args: &Args, pid: Option<u32>) -> ConnectFigures {
    let cpu_start = pid.and_then(procfs::cpu);
    let connect_tool_start = procfs::self_cpu_us();
    let connect_deadline = Instant::now() + Duration::from_secs(args.connect_secs);
    tool.connect.open_started = Instant::now();
    tool.connect.opening = true;
    tool.pump(connect_deadline, |t| {
        !t.connect.opening && t.connect.in_flight == 0 && t.connect.next_open >= t.streams.len()
    });
    let secs = tool.connect.open_started.elapsed().as_secs_f64();
    let cpu_end = pid.and_then(procfs::cpu);
    let tool_us = procfs::self_cpu_us() - connect_tool_start;
    if tool.connect.in_flight > 0 {
        let n = tool.connect.in_flight as u64;
        *tool.failures.entry("not_established_in_time".into()).or_insert(0) += n;
    }
    let established = tool.connect.established;
    let rate_99 = tool.connect.time_to_99.map(|d| tool.connect.target_99 as f64 / d.as_secs_f64());
    ConnectFigures { established, rate_99, secs, cpu_start, cpu_end, tool_us }
}

/// What the settle phase measured: idle memory and idle CPU.
struct SettleFigures {
    rss_after: Option<u64>,
    pss_after: Option<u64>,
    live: usize,
    idle_cpu: serde_json::Value,
}

fn measure_settle(tool: &mut Tool, args: &Args, pid: Option<u32>) -> SettleFigures {
    let settle_cpu_start = pid.and_then(procfs::cpu);
    let settle_start = Instant::now();
    tool.pump(settle_start + Duration::from_secs_f64(args.settle_secs), |_| false);
    let settle_elapsed = settle_start.elapsed().as_secs_f64();
    let settle_cpu_end = pid.and_then(procfs::cpu);
    let rss_after = pid.and_then(procfs::rss_bytes);
    let pss_after = pid.and_then(procfs::pss_bytes);
    snapshot(args, pid, "after");
    let live = tool.live_streams();
    let idle_cpu = match (settle_cpu_start, settle_cpu_end) {
        (Some(a), Some(b)) => json!({
            "window_s": settle_elapsed,
            "cpu_ms": (b.total_us() - a.total_us()) as f64 / 1000.0,
            "run_ms": (b.run_ns - a.run_ns) as f64 / 1e6,
            "heartbeats_in_window": null,
        }),
        _ => json!(null),
    };
    SettleFigures { rss_after, pss_after, live, idle_cpu }
}

/// `--snapshot`: the operator's command, once the figures of `point` are read (so that what
/// it does to the server, e.g. a debugger's attach, is not in them). Bounded: killed after
/// `SNAPSHOT_TIMEOUT`; a failure is said on stderr and changes no figure.
fn snapshot(args: &Args, pid: Option<u32>, point: &str) {
    const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
    let (Some(command), Some(pid)) = (&args.snapshot, pid) else { return };
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PERIODE_PID", pid.to_string())
        .env("PERIODE_POINT", point)
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return eprintln!("periode-density: --snapshot at {point}: {e}"),
    };
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                return eprintln!("periode-density: --snapshot at {point}: {status}")
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return eprintln!("periode-density: --snapshot at {point}: stopped after 60 s");
            }
        }
    }
}

/// What the fan-out rounds measured.
struct FanoutFigures {
    /// Live streams of the fan-out user.
    streams: usize,
    report: serde_json::Value,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn measure_fanout(tool: &mut Tool, args: &Args, pid: Option<u32>) -> FanoutFigures {
    let fan_streams = tool.live_fanout_streams();
    let fanout_cpu_start = pid.and_then(procfs::cpu);
    if args.fanout_posts > 0 && fan_streams > 0 {
        tool.fanout.probes_left = args.fanout_posts;
        tool.fanout.next_probe_at = Instant::now();
        let deadline = Instant::now()
            + Duration::from_secs(10)
            + (ROUND_TIMEOUT + Duration::from_millis(args.fanout_gap_ms))
                * args.fanout_posts as u32;
        tool.pump(deadline, |t| t.fanout.probes_left == 0 && t.fanout.round.is_none());
        tool.fanout.probes_left = 0;
        tool.fanout.round = None;
    }
    let fanout_cpu_end = pid.and_then(procfs::cpu);
    let events_delivered = tool.fanout.to_last.len() * fan_streams;
    let fanout = json!({
        "server_cpu_us_per_event": match (fanout_cpu_start, fanout_cpu_end) {
            (Some(a), Some(b)) if events_delivered > 0 => json!(
                ((b.run_ns - a.run_ns) as f64 / 1000.0 / events_delivered as f64 * 100.0).round()
                    / 100.0
            ),
            _ => json!(null),
        },
        "user_streams": fan_streams,
        "posts": args.fanout_posts,
        "completed": tool.fanout.to_last.len(),
        "timeouts": tool.fanout.timeouts,
        "to_last_stream": tool.fanout.to_last.summary(),
        "to_first_stream": tool.fanout.to_first.summary(),
        "first_to_last_stream": tool.fanout.first_to_last.summary(),
        "post_response": tool.fanout.post_response.summary(),
    });
    let fan_p99 = tool.fanout.to_last.quantile_ms(0.99);
    let fan_p50 = tool.fanout.to_last.quantile_ms(0.5);
    FanoutFigures { streams: fan_streams, report: fanout, p50: fan_p50, p99: fan_p99 }
}

/// What the heartbeat window measured.
struct HeartbeatFigures {
    report: serde_json::Value,
    cpu_per_heartbeat: Option<f64>,
}

fn measure_heartbeats(tool: &mut Tool, args: &Args, pid: Option<u32>) -> HeartbeatFigures {
    let mut heartbeat = json!(null);
    let mut cpu_per_hb = None;
    if args.heartbeat_window > 0 {
        // Skip the first second so that the window holds steady-state rounds only.
        tool.pump(Instant::now() + Duration::from_secs(1), |_| false);
        let cpu_a = pid.and_then(procfs::cpu);
        let tool_a = procfs::self_cpu_us();
        let t0 = Instant::now();
        tool.counts.counting = true;
        tool.counts.counted = 0;
        tool.counts.lateness = Sample::default();
        tool.counts.lateness_on = true;
        tool.pump(t0 + Duration::from_secs(args.heartbeat_window), |_| false);
        tool.counts.counting = false;
        tool.counts.lateness_on = false;
        let window = t0.elapsed().as_secs_f64();
        let cpu_b = pid.and_then(procfs::cpu);
        let tool_b = procfs::self_cpu_us();
        let count = tool.counts.counted;
        let per = |us: f64| (count > 0).then(|| (us / count as f64 * 1000.0).round() / 1000.0);
        let (mut total, mut user, mut system, mut run) = (None, None, None, None);
        if let (Some(a), Some(b)) = (cpu_a, cpu_b) {
            total = per((b.total_us() - a.total_us()) as f64);
            user = per((b.user_us - a.user_us) as f64);
            system = per((b.system_us - a.system_us) as f64);
            run = per((b.run_ns - a.run_ns) as f64 / 1000.0);
        }
        cpu_per_hb = total;
        heartbeat = json!({
            "window_s": window,
            "heartbeats": count,
            "per_s": count as f64 / window,
            "expected_per_s": tool.live_streams() as f64 / args.heartbeat_secs.max(1) as f64,
            "cpu_us_per_heartbeat": total,
            "user_us_per_heartbeat": user,
            "system_us_per_heartbeat": system,
            "schedstat_us_per_heartbeat": run,
            "tool_cpu_us_per_heartbeat": per((tool_b - tool_a) as f64),
            "lateness": tool.counts.lateness.summary(),
        });
    }
    HeartbeatFigures { report: heartbeat, cpu_per_heartbeat: cpu_per_hb }
}

/// What the writers phases measured.
struct WriterFigures {
    paced: serde_json::Value,
    paced_probe_p99: Option<f64>,
    closed: serde_json::Value,
    writes_per_s: Option<f64>,
    probe_p99: Option<f64>,
}

fn measure_writers(
    tool: &mut Tool,
    args: &Args,
    pid: Option<u32>,
    fan_streams: usize,
) -> WriterFigures {
    // With --writers-rate, first a paced phase (the condition: a given rate, and the
    // fan-out latency meanwhile), then the closed-loop one (how far the server goes).
    let mut writers_paced = json!(null);
    let mut paced_probe_p99 = None;
    if args.writers > 0 && args.writers_rate > 0.0 {
        let every = Duration::from_secs_f64(1.0 / args.writers_rate);
        let (report, _, probe_p99) = run_writers(tool, args, pid, fan_streams, Some(every));
        writers_paced = report;
        paced_probe_p99 = probe_p99;
    }
    let mut writers = json!(null);
    let mut writes_per_s = None;
    let mut writer_probe_p99 = None;
    if args.writers > 0 {
        let (report, rate, probe_p99) = run_writers(tool, args, pid, fan_streams, None);
        writers = report;
        writes_per_s = rate;
        writer_probe_p99 = probe_p99;
    }
    WriterFigures {
        paced: writers_paced,
        paced_probe_p99,
        closed: writers,
        writes_per_s,
        probe_p99: writer_probe_p99,
    }
}

/// The figures the table prints beside what the report holds.
struct Table {
    load_before: Option<String>,
    established: usize,
    rate_99: Option<f64>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    rss_per: Option<f64>,
    pss_per: Option<f64>,
    fan_streams: usize,
    fan_p50: Option<f64>,
    fan_p99: Option<f64>,
    cpu_per_hb: Option<f64>,
    paced_probe_p99: Option<f64>,
    writes_per_s: Option<f64>,
    writer_probe_p99: Option<f64>,
    failures: u64,
    tool_cpu_s: f64,
}

/// The table on stderr.
fn print_table(args: &Args, report: &serde_json::Value, t: &Table, tool: &Tool) {
    let pid = args.pid;
    let fmt = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
    };
    let fe = |q: &str| report["connect"]["first_event"][q].as_f64();
    eprintln!(
        "\nperiode-density: target {} at {} (pid {}), load {} -> {}",
        args.target.name(),
        args.addr,
        pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        t.load_before.clone().unwrap_or_default(),
        procfs::load_average().unwrap_or_default()
    );
    let rows: Vec<(&str, String)> = vec![
        ("streams established", format!("{} / {}", t.established, args.streams)),
        ("streams/s to 99 %", fmt(t.rate_99, 0)),
        (
            "server CPU per connect (us)",
            fmt(report["connect"]["server_run_us_per_stream"].as_f64(), 0),
        ),
        (
            "first event p50 / p99 / max (ms)",
            format!(
                "{} / {} / {}",
                fmt(fe("p50_ms"), 2),
                fmt(fe("p99_ms"), 2),
                fmt(fe("max_ms"), 2)
            ),
        ),
        (
            "RSS before -> after (MiB)",
            format!("{} -> {}", fmt(t.rss_before.map(mb), 1), fmt(t.rss_after.map(mb), 1)),
        ),
        ("RSS growth per stream (B)", fmt(t.rss_per, 0)),
        ("PSS growth per stream (B)", fmt(t.pss_per, 0)),
        ("idle CPU over settle (ms)", fmt(report["idle_cpu"]["cpu_ms"].as_f64(), 0)),
        (
            "fan-out streams / posts done",
            format!("{} / {}", t.fan_streams, report["fanout"]["completed"]),
        ),
        (
            "fan-out to last p50 / p99 (ms)",
            format!("{} / {}", fmt(t.fan_p50, 3), fmt(t.fan_p99, 3)),
        ),
        ("fan-out to last max (ms)", fmt(report["fanout"]["to_last_stream"]["max_ms"].as_f64(), 3)),
        (
            "fan-out first->last p50 / p99 (ms)",
            format!(
                "{} / {}",
                fmt(report["fanout"]["first_to_last_stream"]["p50_ms"].as_f64(), 3),
                fmt(report["fanout"]["first_to_last_stream"]["p99_ms"].as_f64(), 3)
            ),
        ),
        (
            "POST answer p50 / p99 (ms)",
            format!(
                "{} / {}",
                fmt(report["fanout"]["post_response"]["p50_ms"].as_f64(), 3),
                fmt(report["fanout"]["post_response"]["p99_ms"].as_f64(), 3)
            ),
        ),
        ("CPU per heartbeat (us)", fmt(t.cpu_per_hb, 2)),
        (
            "  user / schedstat (us)",
            format!(
                "{} / {}",
                fmt(report["heartbeat"]["user_us_per_heartbeat"].as_f64(), 2),
                fmt(report["heartbeat"]["schedstat_us_per_heartbeat"].as_f64(), 2)
            ),
        ),
        (
            "writes/s paced; probe p99 (ms)",
            format!(
                "{}; {}",
                fmt(report["writers_paced"]["writes_per_s"].as_f64(), 0),
                fmt(t.paced_probe_p99, 3)
            ),
        ),
        ("writes/s (writers)", fmt(t.writes_per_s, 0)),
        ("  probe fan-out p99 (ms)", fmt(t.writer_probe_p99, 3)),
        (
            "heartbeat lateness p99 idle / writes",
            format!(
                "{} / {}",
                fmt(report["heartbeat"]["lateness"]["p99_ms"].as_f64(), 3),
                fmt(report["writers"]["heartbeat_lateness"]["p99_ms"].as_f64(), 3)
            ),
        ),
        ("startup, existing db (ms)", fmt(report["startup"]["existing_db_ms"].as_f64(), 1)),
        (
            "failures",
            format!("{} {}", t.failures, serde_json::to_string(&tool.failures).unwrap_or_default()),
        ),
        ("load generator CPU (s)", format!("{:.2}", t.tool_cpu_s)),
    ];
    for (name, value) in rows {
        eprintln!("  {name:<36} {value}");
    }
}

/// One writers phase: `args.writers` keep-alive clients POST for `args.writers_secs`, paced
/// (`every`) or closed-loop, while the fan-out probe keeps running. Returns the report, the
/// achieved writes per second and the probe's p99.
fn run_writers(
    tool: &mut Tool,
    args: &Args,
    pid: Option<u32>,
    fan_streams: usize,
    every: Option<Duration>,
) -> (serde_json::Value, Option<f64>, Option<f64>) {
    tool.writers.ok = 0;
    tool.writers.failed = 0;
    tool.writers.latency = Sample::default();
    tool.writers.every = every;
    let mut probe = Sample::default();
    std::mem::swap(&mut probe, &mut tool.fanout.to_last);
    // The fan-out itself (first stream to last), without the probe's own commit, which on a
    // busy store waits in the queue with the writers'.
    let mut probe_spread = Sample::default();
    std::mem::swap(&mut probe_spread, &mut tool.fanout.first_to_last);
    tool.counts.lateness = Sample::default();
    tool.counts.lateness_on = true;
    let t0 = Instant::now();
    let cpu_a = pid.and_then(procfs::cpu);
    tool.writers.on = true;
    tool.writers.next_at = t0;
    tool.fanout.probes_left = if fan_streams > 0 { usize::MAX } else { 0 };
    tool.fanout.next_probe_at = t0;
    tool.pump(t0 + Duration::from_secs(args.writers_secs), |_| false);
    tool.writers.on = false;
    tool.counts.lateness_on = false;
    tool.fanout.probes_left = 0;
    let window = t0.elapsed().as_secs_f64();
    let ok = tool.writers.ok;
    // Let the last answers and probe events arrive (bounded).
    tool.pump(Instant::now() + Duration::from_secs(3), |t| {
        t.fanout.round.is_none() && t.posts_answered()
    });
    tool.fanout.round = None;
    let cpu_b = pid.and_then(procfs::cpu);
    std::mem::swap(&mut probe, &mut tool.fanout.to_last);
    std::mem::swap(&mut probe_spread, &mut tool.fanout.first_to_last);
    let report = json!({
        "writers": args.writers,
        "writers_rate": every.map(|e| 1.0 / e.as_secs_f64()),
        "window_s": window,
        "writes_ok": ok,
        "writes_failed": tool.writers.failed,
        "writes_per_s": ok as f64 / window,
        "write_latency": tool.writers.latency.summary(),
        "probe_fanout_to_last_stream": probe.summary(),
        "probe_first_to_last_stream": probe_spread.summary(),
        "heartbeat_lateness": tool.counts.lateness.summary(),
        "server_cpu_s": match (cpu_a, cpu_b) {
            (Some(a), Some(b)) => json!((b.total_us() - a.total_us()) as f64 / 1e6),
            _ => json!(null),
        },
    });
    (report, Some(ok as f64 / window), probe.quantile_ms(0.99))
}
