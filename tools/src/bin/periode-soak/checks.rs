//! What is checked once the load has stopped: every client saw every notification of its user
//! in order; stalled streams of hot users were cut; the server came back to its idle footprint.

use super::*;

#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub lines: Vec<String>,
}

impl Report {
    pub fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    pub fn note(&mut self, message: String) {
        self.lines.push(message);
    }

    pub fn print(&self) {
        for line in &self.lines {
            println!("soak: {line}");
        }
        for (i, failure) in self.failures.iter().enumerate() {
            if i == 40 {
                println!("soak: FAIL … and {} more", self.failures.len() - 40);
                break;
            }
            println!("soak: FAIL {failure}");
        }
    }
}

/// The figures of the load: clients, transactions, refusals, notifications, heartbeats.
pub fn report_load(report: &mut Report, soak: &Soak, stalled: usize, silent_streams: usize) {
    let (args, stats) = (soak.args, &soak.stats);
    let total_created: u64 = stats.posts_created.values().sum();
    report.note(format!(
        "load: {} s, {} well-behaved clients ({} connects), {} stalled, {} churned, {} garbage \
         ({} answered as expected)",
        args.seconds,
        soak.logical.len(),
        stats.streams_opened,
        stalled,
        stats.churned,
        stats.garbage_sent,
        stats.garbage_answered
    ));
    report.note(format!(
        "transactions: {} sent, {} created (201), {} users uncertain; {} idle keep-alive \
         posters closed by the server",
        stats.posts_sent,
        total_created,
        stats.uncertain_users.len(),
        stats.idle_posters_closed
    ));
    if !stats.stream_refusals.is_empty() {
        report.note(format!("stream refusals by status: {:?}", stats.stream_refusals));
    }
    let notifications: u64 = soak.logical.iter().map(|l| l.received).sum();
    report.note(format!(
        "notifications received by well-behaved clients: {notifications}; worst heartbeat gap \
         {:?} (user {}); streams silent at the end: {silent_streams}",
        stats.worst_heartbeat_gap, stats.worst_gap_user
    ));
}

/// Every well-behaved client saw every notification of its user, in order, none twice.
pub fn check_clients(report: &mut Report, soak: &Soak, final_ids: &BTreeMap<u64, u64>) {
    let stats = &soak.stats;
    let mut clients_with_errors = 0;
    for (i, l) in soak.logical.iter().enumerate() {
        let want = final_ids[&l.user];
        let mut problems = l.errors.clone();
        if !stats.uncertain_users.contains_key(&l.user) && l.last_id != Some(want) {
            problems.push(format!("ended at id {:?}, the user's last is {want}", l.last_id));
        }
        if !problems.is_empty() {
            clients_with_errors += 1;
            report.fail(format!(
                "client {i} (user {}, {} connects, {} closed by the server): {}",
                l.user,
                l.connects,
                l.unexpected_closes,
                problems.join("; ")
            ));
        }
    }
    report.note(format!(
        "well-behaved clients with every notification in order, none twice, none missing: {} of {}",
        soak.logical.len() - clients_with_errors,
        soak.logical.len()
    ));
}

/// Stalled streams: were those of the hot users cut as slow consumers?
pub fn check_stalled(report: &mut Report, soak: &Soak, stalled: &mut [Stalled]) {
    let (args, stats) = (soak.args, &soak.stats);
    let stalled_hot = stalled.iter().filter(|(_, hot, _)| *hot).count();
    let mut hot_cut = 0;
    let mut other_cut = 0;
    for (_, hot, sock) in stalled.iter_mut() {
        if was_closed(sock) {
            if *hot {
                hot_cut += 1;
            } else {
                other_cut += 1;
            }
        }
    }
    let hot_bytes = stats
        .posts_created
        .iter()
        .filter(|(u, _)| **u <= args.hot_users)
        .map(|(_, n)| n * NOTIFICATION_BYTES)
        .min()
        .unwrap_or(0);
    let metrics = blocking_request(args.addr, "GET", "/metrics", &soak.admin_token, "")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let slow = metric(&metrics, "periode_sse_disconnects_total{reason=\"slow_consumer\"}");
    report.note(format!(
        "stalled streams cut: {hot_cut} of {stalled_hot} on hot users (each pushed ~{} KiB), \
         {other_cut} others; server counted {slow:?} slow consumers",
        hot_bytes / 1024
    ));
    if hot_bytes > 2 * SLOW_CONSUMER_BYTES && hot_cut < stalled_hot {
        report.fail(format!(
            "{} stalled streams of hot users were sent ~{} KiB and are still open",
            stalled_hot - hot_cut,
            hot_bytes / 1024
        ));
    }
}

/// Once every client has left: no connection, descriptors and RSS back near idle, still up.
pub fn check_back_to_idle(
    report: &mut Report,
    soak: &Soak,
    idle: Option<(usize, u64)>,
    rss_peak: u64,
) {
    let args = soak.args;
    let open_conns =
        wait_until_no_connections(args.addr, &soak.admin_token, Duration::from_secs(15));
    if open_conns.is_none_or(|n| n > 1) {
        report.fail(format!("connections still open 15 s after every client left: {open_conns:?}"));
    }
    if let (Some(pid), Some((idle_fds, idle_rss))) = (args.pid, idle) {
        std::thread::sleep(Duration::from_millis(500));
        let fds = procfs::fd_count(pid).unwrap_or(0);
        let rss = rss_kib(pid).unwrap_or(0);
        report.note(format!(
            "server after the load: {fds} descriptors (idle {idle_fds}), RSS {} MiB (idle {} MiB, \
             peak {} MiB)",
            rss / 1024,
            idle_rss / 1024,
            rss_peak / 1024
        ));
        if fds > idle_fds + 2 {
            report.fail(format!("descriptor leak: {fds} open after the load, {idle_fds} idle"));
        }
        // The allocator may keep some of the peak; a leak keeps growing with the load.
        let allowed = idle_rss + (24 * 1024).max(rss_peak.saturating_sub(idle_rss) / 2);
        if rss > allowed {
            report.fail(format!(
                "RSS not back near idle: {} MiB after, {} MiB idle, {} MiB peak",
                rss / 1024,
                idle_rss / 1024,
                rss_peak / 1024
            ));
        }
    }
    match blocking_request(args.addr, "GET", HEALTH_PATH, &soak.user_tokens[&1], "") {
        Ok((200, _)) => report.note("server still up: /health 200".into()),
        Ok((status, body)) => report.fail(format!("/health after the soak: {status} {body}")),
        Err(e) => report.fail(format!("the server is down after the soak: {e}")),
    }
}
