//! What the kernel says about a process (the server, or the tool itself): resident memory,
//! open descriptors and CPU time, read from `/proc`. Only reads files; every reading that fails becomes `None`, never a panic, because
//! the server may exit under us.

use std::fs;

/// `VmRSS` from `/proc/PID/status`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, "VmRSS:")
}

/// `Pss` from `/proc/PID/smaps_rollup`, in bytes: resident memory with shared pages divided
/// among the processes that share them.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

/// A `kB` field of `/proc/PID/status` (`"VmRSS:"`, `"VmHWM:"`, …), in KiB as the file says.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, field).map(|bytes| bytes / 1024)
}

/// How many descriptors the process holds open.
pub fn fd_count(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count())
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.get(name.len()..)?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// CPU time of a whole process (all threads), as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// `utime` from `/proc/PID/stat`, microseconds (clock-tick resolution, usually 10 ms).
    pub user_us: u64,
    /// `stime`, microseconds.
    pub system_us: u64,
    /// Sum of the first field of every `/proc/PID/task/*/schedstat`: nanoseconds on a CPU,
    /// user and system together, at scheduler resolution.
    pub run_ns: u64,
}

impl Cpu {
    pub fn total_us(&self) -> u64 {
        self.user_us + self.system_us
    }
}

pub fn cpu(pid: u32) -> Option<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let tick_us = 1_000_000 / clock_ticks_per_sec();
    let mut run_ns = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path().join("schedstat");
            if let Ok(text) = fs::read_to_string(path) {
                run_ns +=
                    text.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    Some(Cpu { user_us: utime * tick_us, system_us: stime * tick_us, run_ns })
}

/// This process's own CPU time (the load generator's cost), microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes one rusage struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Peak RSS of this process, bytes.
pub fn self_max_rss_bytes() -> u64 {
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    usage.ru_maxrss as u64 * 1024
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The 1-minute load average, to print beside the figures (the machine is shared).
pub fn load_average() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Raises the soft open-files limit to the hard one; returns the limit in force.
pub fn raise_open_files_limit() -> u64 {
    periode_sse::server::raise_open_files_limit()
}
