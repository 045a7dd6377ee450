//! The phases of a soak, in the order `run` calls them: set-up (users, limits, the idle
//! footprint), stalled streams, the load, the wind-down, the catch-up and the settle; and the
//! blocking requests they ask the server with.

use super::*;

/// One request on a fresh blocking connection; returns the status and body.
pub fn blocking_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> io::Result<(u16, String)> {
    http::call(addr, method, path, token, body).map(|r| (r.status, r.body))
}

/// A metric's value from `/metrics` text (the first line that starts with `name`).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// What the set-up leaves for the run.
pub struct Setup {
    pub admin_token: String,
    pub user_tokens: BTreeMap<u64, String>,
    /// Each user's latest notification id before the load.
    pub base_ids: BTreeMap<u64, u64>,
    /// The server's descriptors and RSS (KiB) once idle, when its pid is known.
    pub idle: Option<(usize, u64)>,
}

/// Waits for the server, creates the users and their limits, and reads the idle footprint.
pub fn set_up(args: &Args) -> Result<(Setup, Report), String> {
    let admin_token = token::admin(6 * 3600, &args.secret);
    let mut report = Report::default();

    // The server is up and takes our key.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match blocking_request(args.addr, "GET", "/metrics", &admin_token, "") {
            Ok((200, _)) => break,
            Ok((status, body)) => return Err(format!("/metrics answered {status}: {body}")),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("the server at {} does not answer: {e}", args.addr)),
        }
    }

    // Users 1..=N, active, each with a limit from 2000 to 2100 (no month edge mid-run).
    let setup_started = Instant::now();
    let mut user_tokens = BTreeMap::new();
    for user in 1..=args.users {
        create_user(args.addr, &admin_token, user)?;
        user_tokens.insert(user, token::user(user, 6 * 3600, &args.secret));
    }
    report.note(format!("{} users set up in {:?}", args.users, setup_started.elapsed()));
    // The id each user's notifications have reached: one per limit PUT so far. Read it back
    // from a resume, so that a database that was not fresh still works.
    let base_ids = last_notification_ids(args.addr, &user_tokens)?;

    // Idle: once the set-up connections have all closed.
    let quiet = wait_until_no_connections(args.addr, &admin_token, Duration::from_secs(10));
    if quiet.is_none_or(|n| n > 1) {
        report.fail(format!("set-up connections still open after 10 s: {quiet:?}"));
    }
    let idle = args.pid.and_then(|pid| Some((procfs::fd_count(pid)?, rss_kib(pid)?)));
    if let Some((fds, rss)) = idle {
        report.note(format!("server idle: {fds} descriptors, {} MiB RSS", rss / 1024));
    }
    Ok((Setup { admin_token, user_tokens, base_ids, idle }, report))
}

/// User `user`, active, with a limit from 2000 to 2100.
pub fn create_user(addr: SocketAddr, admin_token: &str, user: u64) -> Result<(), String> {
    let (status, body) = blocking_request(
        addr,
        "PUT",
        &format!("/api/admin/users/{user}"),
        admin_token,
        r#"{"active":true}"#,
    )
    .map_err(|e| format!("create user {user}: {e}"))?;
    if status != 200 {
        return Err(format!("create user {user}: {status} {body}"));
    }
    let limit = format!(
        r#"{{"userId":{user},"maxLimit":1000000000,"alertPercentage":80,"periodeStart":"2000-01-01T00:00:00.000Z","periodeEnd":"2100-01-01T00:00:00.000Z"}}"#
    );
    let (status, body) = blocking_request(addr, "PUT", "/api/periode-limit", admin_token, &limit)
        .map_err(|e| format!("limit for user {user}: {e}"))?;
    if status != 200 {
        return Err(format!("limit for user {user}: {status} {body}"));
    }
    Ok(())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    procfs::status_kib(pid, "VmRSS:")
}

/// Stalled streams: half on the hot users, whose traffic will push them past the cap.
pub fn open_stalled_streams(soak: &mut Soak) -> Vec<Stalled> {
    let args = soak.args;
    let mut stalled = Vec::with_capacity(args.stalled);
    for i in 0..args.stalled {
        let user = if args.hot_users > 0 && i % 2 == 0 {
            1 + (i as u64 / 2) % args.hot_users
        } else {
            1 + soak.rng.below(args.users)
        };
        let request = soak.stream_request(user, None, false);
        match open_stalled(args.addr, &request) {
            Ok(sock) => stalled.push((user, user <= args.hot_users && i % 2 == 0, sock)),
            Err(e) => soak.report.fail(format!("stalled stream for user {user}: {e}")),
        }
    }
    stalled
}

/// How many transactions and garbage clients are owed, from the rates and the time passed.
#[derive(Default)]
pub struct Credits {
    pub post: f64,
    pub hot: f64,
    pub garbage: f64,
}

/// The load phase: ramps the streams up, keeps churners, garbage and posters going until
/// `--seconds` have passed. Returns the server's peak RSS (KiB) seen meanwhile.
pub fn load(soak: &mut Soak, events: &mut Events) -> Result<u64, String> {
    let args = soak.args;
    let started = Instant::now();
    let load_end = started + Duration::from_secs(args.seconds);
    let mut next_logical = 0;
    let posters: usize = 8;
    for _ in 0..posters {
        soak.spawn_poster();
    }
    let mut churners_started = 0;
    let mut credit = Credits::default();
    let mut last_tick = Instant::now();
    let mut rss_peak = 0;
    let mut next_sample = started;
    while Instant::now() < load_end {
        soak.poll_once(events, Duration::from_millis(5))?;
        let now = Instant::now();
        // Ramp up: 200 new streams per turn.
        for _ in 0..200 {
            if next_logical < soak.logical.len() {
                soak.connect_logical(next_logical, now);
                next_logical += 1;
            }
        }
        while churners_started < args.churn.min(next_logical) {
            soak.spawn_churner(now);
            churners_started += 1;
        }
        let dt = now.saturating_duration_since(last_tick).as_secs_f64();
        last_tick = now;
        credit.post = (credit.post + dt * args.rate as f64).min(200.0);
        credit.hot = (credit.hot + dt * (args.hot_rate * args.hot_users) as f64).min(200.0);
        credit.garbage = (credit.garbage + dt * args.garbage_rate as f64).min(50.0);
        while credit.garbage >= 1.0 {
            credit.garbage -= 1.0;
            soak.spawn_garbage(now);
        }
        soak.post_on_credit(&mut credit);
        // Keep the poster count up (a closed one was reported as a failure).
        let live_posters =
            soak.conns.iter().filter(|(_, c)| matches!(c.kind, Kind::Poster { .. })).count();
        for _ in live_posters..posters {
            soak.spawn_poster();
        }
        soak.on_timers(now);
        if now >= next_sample {
            next_sample = now + Duration::from_secs(1);
            if let Some(rss) = args.pid.and_then(rss_kib) {
                rss_peak = rss_peak.max(rss);
            }
        }
    }
    Ok(rss_peak)
}

/// No more posts, churn or planned disconnects; every in-flight POST answered.
pub fn wind_down(soak: &mut Soak, events: &mut Events) -> Result<(), String> {
    soak.loading = false;
    let keys: Vec<usize> = soak
        .conns
        .iter()
        .filter(|(_, c)| matches!(c.kind, Kind::Churn { .. } | Kind::Garbage { .. }))
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        soak.close(key);
    }
    for l in soak.logical.iter_mut() {
        l.comes_and_goes = false;
    }
    let keys: Vec<usize> = soak.conns.iter().map(|(k, _)| k).collect();
    for key in keys {
        if let Kind::Stream { logical, .. } = soak.conns[key].kind {
            soak.conns[key].kind = Kind::Stream { logical, close_at: None };
        }
    }
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while soak.posters_busy() && Instant::now() < drain_deadline {
        soak.poll_once(events, Duration::from_millis(10))?;
    }
    if soak.posters_busy() {
        soak.report.fail("POSTs still unanswered 10 s after the load stopped".into());
    }
    Ok(())
}

/// Reconnects the disconnected and reads until everyone is at their user's last id (20 s).
pub fn catch_up(
    soak: &mut Soak,
    events: &mut Events,
    final_ids: &BTreeMap<u64, u64>,
) -> Result<(), String> {
    let catch_up_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = Instant::now();
        soak.on_timers(now);
        for index in 0..soak.logical.len() {
            if soak.logical[index].conn.is_none() && soak.logical[index].reconnect_at.is_none() {
                soak.logical[index].reconnect_at = Some(now);
            }
        }
        let behind = soak
            .logical
            .iter()
            .filter(|l| {
                !soak.stats.uncertain_users.contains_key(&l.user)
                    && l.last_id != Some(final_ids[&l.user])
            })
            .count();
        if behind == 0 || now >= catch_up_deadline {
            return Ok(());
        }
        soak.poll_once(events, Duration::from_millis(10))?;
    }
}

/// One heartbeat period more, so that every stream shows its heartbeats still come; returns
/// how many streams stayed silent longer than a period and two seconds.
pub fn settle(soak: &mut Soak, events: &mut Events) -> Result<usize, String> {
    let args = soak.args;
    let settle_end = Instant::now() + Duration::from_secs(args.heartbeat_secs + 1);
    while Instant::now() < settle_end {
        soak.poll_once(events, Duration::from_millis(10))?;
    }
    let now = Instant::now();
    let heartbeat_limit = Duration::from_secs(args.heartbeat_secs) + Duration::from_secs(2);
    let mut silent_streams = 0;
    for (_, conn) in soak.conns.iter() {
        if let Kind::Stream { logical, .. } = conn.kind {
            let since = conn.last_heartbeat.unwrap_or(conn.opened);
            if now.saturating_duration_since(since) > heartbeat_limit {
                silent_streams += 1;
                let l = &mut soak.logical[logical];
                if l.errors.len() < 5 {
                    l.errors.push(format!(
                        "no heartbeat for {:?} at the end",
                        now.saturating_duration_since(since)
                    ));
                }
            }
        }
    }
    Ok(silent_streams)
}

/// Polls `/metrics` until the server holds no connection but the one asking; returns the last
/// count seen.
pub fn wait_until_no_connections(addr: SocketAddr, admin: &str, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    let mut open = None;
    while Instant::now() < deadline {
        let body = blocking_request(addr, "GET", "/metrics", admin, "").map(|(_, b)| b);
        open = metric(&body.unwrap_or_default(), "periode_sse_connections_open");
        if open.is_some_and(|n| n <= 1) {
            // The descriptors of the connections just reaped are closed by now.
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    open
}

/// Every user's latest notification id, asked 16 users at a time.
pub fn last_notification_ids(
    addr: SocketAddr,
    tokens: &BTreeMap<u64, String>,
) -> Result<BTreeMap<u64, u64>, String> {
    let users: Vec<(u64, &String)> = tokens.iter().map(|(u, t)| (*u, t)).collect();
    let mut ids = BTreeMap::new();
    for batch in users.chunks(16) {
        let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(user, token)| {
                    scope.spawn(move || last_notification_id(addr, token).map(|id| (*user, id)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".to_string())))
                .collect()
        });
        for result in results {
            let (user, id) = result?;
            ids.insert(user, id);
        }
    }
    Ok(ids)
}

/// The id of `token`'s user's latest notification: resume from 0 and read what comes.
pub fn last_notification_id(addr: SocketAddr, token: &str) -> Result<u64, String> {
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let raw = format!(
        "GET {STREAM_PATH} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n\
         Last-Event-ID: 0\r\n\r\n"
    );
    sock.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    // Read until the replay has stopped arriving (200 ms of quiet after `connected`).
    while Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if http::find(&got, b"event: connected").is_some() => break,
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("resume stream answered {:?}", &text[..text.len().min(60)]));
    }
    Ok(text.lines().filter_map(|l| l.strip_prefix("id: ")?.parse().ok()).max().unwrap_or(0))
}
