//! Counters the loop bumps and `/metrics` renders in Prometheus text format (0.0.4).
//!
//! Plain integers on the one loop thread: no atomics, no locks, no I/O. Gauges that the
//! server already knows (open connections, streams, users) are passed in at render time
//! rather than kept twice.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Why a connection ended; each is a label of `periode_sse_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseReason {
    /// The client closed or reset the connection.
    ClientGone,
    WriteError,
    SlowConsumer,
    /// The token's `exp` (plus leeway) passed.
    Expired,
    Deactivated,
    Shutdown,
    /// A request too slow, or a connection idle too long.
    Timeout,
    /// The answer said `Connection: close` (an error, HTTP/1.0, or the client asked).
    Finished,
    /// Refused at accept: `--max-conns` reached.
    Refused,
    /// A bug: serving the connection panicked, and the guard closed it.
    Internal,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client_gone",
            CloseReason::WriteError => "write_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Expired => "expired",
            CloseReason::Deactivated => "deactivated",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Timeout => "timeout",
            CloseReason::Finished => "finished",
            CloseReason::Refused => "refused",
            CloseReason::Internal => "internal_error",
        }
    }
}

/// Upper bounds of the commit batch size histogram (the last bucket is +Inf).
const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, u64::MAX];
/// Upper bounds of the commit latency histogram, in microseconds (the last bucket is +Inf):
/// an fsync on a good disk is well under a millisecond, on an SD card tens of them.
const LATENCY_BUCKETS_US: [u64; 12] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    u64::MAX,
];

#[derive(Default)]
pub struct Metrics {
    pub connections_accepted: u64,
    pub streams_started: u64,
    pub events_connected: u64,
    pub events_notification: u64,
    pub events_heartbeat: u64,
    pub bytes_written: u64,
    pub transactions_recorded: u64,
    pub commit_batches: u64,
    pub commit_batch_writes: u64,
    pub commit_failures: u64,
    /// Batches PostgreSQL aborted as a deadlock or serialization failure and the store ran
    /// again (`writes::apply_pg`), as of the last committed batch.
    pub commit_retries: u64,
    pub largest_commit_batch: u64,
    pub accept_errors: u64,
    /// Commit batch sizes: counts per bucket of `BATCH_BUCKETS` (cumulative at render time).
    batch_buckets: [u64; BATCH_BUCKETS.len()],
    /// Commit latencies: counts per bucket of `LATENCY_BUCKETS_US`, and their sum.
    latency_buckets: [u64; LATENCY_BUCKETS_US.len()],
    latency_sum_us: u64,
    disconnects: BTreeMap<CloseReason, u64>,
    requests: BTreeMap<(&'static str, u16), u64>,
}

/// Values owned elsewhere, read when `/metrics` is rendered.
pub struct Gauges {
    pub connections_open: usize,
    pub streams_open: usize,
    pub users_with_streams: usize,
    pub max_conns: usize,
    /// The store can be written and (cluster mode) the other nodes' notifications are heard.
    pub store_up: bool,
    /// Figures of the process and its files, read by the server at render time; `None`
    /// when they cannot be read (no `/proc`, a file gone).
    pub process: Process,
}

#[derive(Default, Clone, Copy)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub start_time_secs: Option<f64>,
    pub db_bytes: Option<u64>,
    pub wal_bytes: Option<u64>,
}

impl Metrics {
    pub fn count_disconnect(&mut self, reason: CloseReason) {
        *self.disconnects.entry(reason).or_default() += 1;
    }

    pub fn count_request(&mut self, route: &'static str, status: u16) {
        *self.requests.entry((route, status)).or_default() += 1;
    }

    pub fn count_commit(&mut self, writes: usize) {
        self.commit_batches += 1;
        self.commit_batch_writes += writes as u64;
        self.largest_commit_batch = self.largest_commit_batch.max(writes as u64);
        if let Some(i) = BATCH_BUCKETS.iter().position(|&le| writes as u64 <= le) {
            self.batch_buckets[i] += 1;
        }
    }

    /// One batch's commit, from the first write applied to the commit's return.
    pub fn count_commit_latency(&mut self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&le| us <= le) {
            self.latency_buckets[i] += 1;
        }
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(6144);
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
        };
        gauge(
            "periode_sse_connections_open",
            "Open TCP connections, streams included.",
            g.connections_open as u64,
        );
        gauge("periode_sse_streams_open", "Open event streams.", g.streams_open as u64);
        gauge(
            "periode_sse_users_with_streams",
            "Users with at least one open stream.",
            g.users_with_streams as u64,
        );
        gauge("periode_sse_max_connections", "The --max-conns in force.", g.max_conns as u64);
        gauge(
            "periode_sse_store_up",
            "1 while the database can be written and (cluster mode) its change feed is heard.",
            u64::from(g.store_up),
        );
        gauge(
            "periode_sse_largest_commit_batch",
            "Most writes ever made durable by one commit.",
            self.largest_commit_batch,
        );
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n");
        };
        counter(
            "periode_sse_connections_accepted_total",
            "Connections accepted.",
            self.connections_accepted,
        );
        counter(
            "periode_sse_streams_started_total",
            "Event streams started.",
            self.streams_started,
        );
        counter("periode_sse_bytes_written_total", "Bytes written to sockets.", self.bytes_written);
        counter(
            "periode_sse_transactions_recorded_total",
            "Transactions committed.",
            self.transactions_recorded,
        );
        counter(
            "periode_sse_commit_batches_total",
            "Durable commits (one per batch of writes).",
            self.commit_batches,
        );
        counter(
            "periode_sse_commit_batch_writes_total",
            "Writes made durable, summed over batches.",
            self.commit_batch_writes,
        );
        counter(
            "periode_sse_commit_failures_total",
            "Batches whose commit failed (answered 500).",
            self.commit_failures,
        );
        counter(
            "periode_sse_commit_retries_total",
            "Batches aborted by PostgreSQL as a deadlock or serialization failure and run again.",
            self.commit_retries,
        );
        counter(
            "periode_sse_accept_errors_total",
            "accept() failures, out of descriptors included.",
            self.accept_errors,
        );

        out.push_str("# HELP periode_sse_commit_batch_size Writes made durable by one commit.\n");
        out.push_str("# TYPE periode_sse_commit_batch_size histogram\n");
        let mut cumulative = 0;
        for (le, count) in BATCH_BUCKETS.iter().zip(self.batch_buckets) {
            cumulative += count;
            let le = if *le == u64::MAX { "+Inf".to_string() } else { le.to_string() };
            let _ =
                writeln!(out, "periode_sse_commit_batch_size_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "periode_sse_commit_batch_size_sum {}", self.commit_batch_writes);
        let _ = writeln!(out, "periode_sse_commit_batch_size_count {}", self.commit_batches);
        out.push_str(
            "# HELP periode_sse_commit_duration_seconds Time one batch took to become durable.\n",
        );
        out.push_str("# TYPE periode_sse_commit_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (le, count) in LATENCY_BUCKETS_US.iter().zip(self.latency_buckets) {
            cumulative += count;
            let le = if *le == u64::MAX { "+Inf".to_string() } else { seconds(*le) };
            let _ = writeln!(
                out,
                "periode_sse_commit_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "periode_sse_commit_duration_seconds_sum {}",
            seconds(self.latency_sum_us)
        );
        let _ = writeln!(out, "periode_sse_commit_duration_seconds_count {cumulative}");
        render_process(&mut out, &g.process);
        out.push_str(
            "# HELP periode_sse_events_sent_total Events written to streams, by event name.\n",
        );
        out.push_str("# TYPE periode_sse_events_sent_total counter\n");
        for (name, value) in [
            ("connected", self.events_connected),
            ("notification", self.events_notification),
            ("heartbeat", self.events_heartbeat),
        ] {
            let _ = writeln!(out, "periode_sse_events_sent_total{{event=\"{name}\"}} {value}");
        }
        out.push_str("# HELP periode_sse_disconnects_total Connections ended, by reason.\n");
        out.push_str("# TYPE periode_sse_disconnects_total counter\n");
        for reason in [
            CloseReason::ClientGone,
            CloseReason::WriteError,
            CloseReason::SlowConsumer,
            CloseReason::Expired,
            CloseReason::Deactivated,
            CloseReason::Shutdown,
            CloseReason::Timeout,
            CloseReason::Finished,
            CloseReason::Refused,
            CloseReason::Internal,
        ] {
            let value = self.disconnects.get(&reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "periode_sse_disconnects_total{{reason=\"{}\"}} {value}",
                reason.label()
            );
        }
        out.push_str(
            "# HELP periode_sse_http_requests_total Requests answered, by route and status.\n",
        );
        out.push_str("# TYPE periode_sse_http_requests_total counter\n");
        for ((route, status), value) in &self.requests {
            let _ = writeln!(
                out,
                "periode_sse_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {value}"
            );
        }
        out
    }
}

/// Microseconds as decimal seconds, exactly (`0.0005`, `1`, `12.000001`).
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The process figures, under the names Prometheus client libraries use for them, plus the
/// build and the database files' sizes. A figure that could not be read is left out.
fn render_process(out: &mut String, p: &Process) {
    let mut gauge = |name: &str, help: &str, labels: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ =
                write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {value}\n");
        }
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "",
        p.resident_bytes.map(|v| v.to_string()),
    );
    gauge("process_open_fds", "Open file descriptors.", "", p.open_fds.map(|v| v.to_string()));
    gauge(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        "",
        p.start_time_secs.map(|v| format!("{v:.3}")),
    );
    gauge(
        "periode_sse_build_info",
        "The running build (always 1).",
        concat!("{version=\"", env!("CARGO_PKG_VERSION"), "\"}"),
        Some("1".to_string()),
    );
    if p.db_bytes.is_some() || p.wal_bytes.is_some() {
        out.push_str("# HELP periode_sse_database_size_bytes Size of the SQLite files on disk.\n");
        out.push_str("# TYPE periode_sse_database_size_bytes gauge\n");
        for (file, bytes) in [("main", p.db_bytes), ("wal", p.wal_bytes)] {
            if let Some(bytes) = bytes {
                let _ = writeln!(out, "periode_sse_database_size_bytes{{file=\"{file}\"}} {bytes}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let mut m = Metrics::default();
        m.count_request("stream", 200);
        m.count_request("stream", 200);
        m.count_request("status", 404);
        m.count_disconnect(CloseReason::SlowConsumer);
        m.count_commit(3);
        m.count_commit(5);
        m.events_heartbeat = 7;
        m.commit_retries = 2;
        m.count_commit_latency(std::time::Duration::from_micros(700));
        m.count_commit_latency(std::time::Duration::from_micros(2_000_000));
        let text = m.render(&Gauges {
            connections_open: 4,
            streams_open: 2,
            users_with_streams: 1,
            max_conns: 100,
            store_up: true,
            process: Process {
                resident_bytes: Some(4096),
                open_fds: Some(9),
                start_time_secs: Some(1.5),
                db_bytes: Some(8192),
                wal_bytes: None,
            },
        });
        for line in [
            "periode_sse_http_requests_total{route=\"stream\",status=\"200\"} 2",
            "periode_sse_http_requests_total{route=\"status\",status=\"404\"} 1",
            "periode_sse_disconnects_total{reason=\"slow_consumer\"} 1",
            "periode_sse_disconnects_total{reason=\"expired\"} 0",
            "periode_sse_commit_batches_total 2",
            "periode_sse_commit_retries_total 2",
            "periode_sse_commit_batch_writes_total 8",
            "periode_sse_largest_commit_batch 5",
            "periode_sse_events_sent_total{event=\"heartbeat\"} 7",
            "periode_sse_commit_batch_size_bucket{le=\"2\"} 0",
            "periode_sse_commit_batch_size_bucket{le=\"4\"} 1",
            "periode_sse_commit_batch_size_bucket{le=\"8\"} 2",
            "periode_sse_commit_batch_size_bucket{le=\"+Inf\"} 2",
            "periode_sse_commit_batch_size_sum 8",
            "periode_sse_commit_batch_size_count 2",
            "periode_sse_streams_open 2",
            "periode_sse_connections_open 4",
            "periode_sse_commit_duration_seconds_bucket{le=\"0.0005\"} 0",
            "periode_sse_commit_duration_seconds_bucket{le=\"0.001\"} 1",
            "periode_sse_commit_duration_seconds_bucket{le=\"1\"} 1",
            "periode_sse_commit_duration_seconds_bucket{le=\"+Inf\"} 2",
            "periode_sse_commit_duration_seconds_sum 2.0007",
            "periode_sse_commit_duration_seconds_count 2",
            "process_resident_memory_bytes 4096",
            "process_open_fds 9",
            "process_start_time_seconds 1.500",
            "periode_sse_database_size_bytes{file=\"main\"} 8192",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    /// Every sample belongs to a family announced by HELP and TYPE lines before it, as
    /// promtool checks.
    #[test]
    fn every_sample_has_help_and_type() {
        let text = Metrics::default().render(&Gauges {
            connections_open: 0,
            streams_open: 0,
            users_with_streams: 0,
            max_conns: 1,
            store_up: false,
            process: Process::default(),
        });
        let (mut helped, mut typed) = (Vec::new(), Vec::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap_or("").to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap_or("").to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.iter().any(|t| t == f)))
                    .unwrap_or(name);
                assert!(typed.iter().any(|t| t == family), "no TYPE for {line:?}");
                assert!(helped.iter().any(|t| t == family), "no HELP for {line:?}");
            }
        }
        assert_eq!(helped.len(), typed.len());
    }
}
