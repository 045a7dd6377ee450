//! The log sink: simple_logger's line format, written to stderr once per loop turn.
//!
//! SPEC §6 wants one line per lifecycle event, so a connect burst logs as many lines as it has
//! connects. simple_logger formats each line into a fresh `String` and hands it to an
//! unbuffered stderr in two `write` calls (line, then newline): two system calls per connect,
//! about a tenth of a connect's CPU. Here the lines of one loop turn go out in one `write` at
//! the end of the turn (`Batch`), and lines outside a turn (start-up, shutdown, the `token`
//! command) go out at once. The bytes are the same as simple_logger's with UTC timestamps:
//! `2026-11-28T09:47:49.691Z INFO  [periode_sse::server::streams] SSE client connected …`.
//!
//! Which lines are kept is a `Filter`: `RUST_LOG`'s usual syntax (`info`,
//! `periode_sse=debug`, `warn,periode_sse::server=trace`), parsed strictly, so that a typo is
//! an error at start-up rather than a silent `info`.

use log::{LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Held lines are written out once they pass this size even mid-turn: a turn that logs
/// thousands of lines should not build a megabyte first.
const FLUSH_AT: usize = 32 * 1024;

/// Which log lines are kept: a default level, and levels for targets (module paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub default: LevelFilter,
    /// `(target, level)`: a target matches itself and the modules below it (`a` matches
    /// `a::b`, not `ab`); the longest matching target wins.
    pub targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    pub fn level(default: LevelFilter) -> Filter {
        Filter { default, targets: Vec::new() }
    }

    /// Parses `LEVEL`, `TARGET=LEVEL`, or a comma-separated list of them (the last word for a
    /// target wins). Levels: off, error, warn, info, debug, trace, any case.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut filter = Filter::level(LevelFilter::Info);
        let level = |word: &str| -> Result<LevelFilter, String> {
            word.trim().parse().map_err(|_| {
                format!(
                    "{:?} is not a log level (off, error, warn, info, debug, trace)",
                    word.trim()
                )
            })
        };
        if text.split(',').all(|p| p.trim().is_empty()) {
            return Err("the log filter is empty; use e.g. info or info,periode_sse=debug".into());
        }
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None => filter.default = level(part)?,
                Some((target, word)) => {
                    let target = target.trim();
                    let is_path = !target.is_empty()
                        && target.split("::").all(|seg| {
                            !seg.is_empty()
                                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        });
                    if !is_path {
                        return Err(format!(
                            "{target:?} is not a module path like periode_sse or periode_sse::server"
                        ));
                    }
                    let level = level(word)?;
                    filter.targets.retain(|(t, _)| t != target);
                    filter.targets.push((target.to_string(), level));
                }
            }
        }
        Ok(filter)
    }

    /// The most verbose level any line may have: what `log` checks before formatting.
    pub fn max(&self) -> LevelFilter {
        self.targets.iter().map(|(_, l)| *l).fold(self.default, Ord::max)
    }

    pub fn allows(&self, target: &str, level: log::Level) -> bool {
        let matching = self
            .targets
            .iter()
            .filter(|(t, _)| {
                target
                    .strip_prefix(t.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .max_by_key(|(t, _)| t.len());
        level <= matching.map_or(self.default, |(_, l)| *l)
    }
}

struct Sink {
    held: Mutex<String>,
    batching: AtomicBool,
    /// Set once by `init`, before any line is logged.
    filter: std::sync::OnceLock<Filter>,
}

static SINK: Sink = Sink {
    held: Mutex::new(String::new()),
    batching: AtomicBool::new(false),
    filter: std::sync::OnceLock::new(),
};

/// Installs the sink for the whole process. Fails only if a logger is already installed.
pub fn init(filter: Filter) -> Result<(), log::SetLoggerError> {
    log::set_max_level(filter.max());
    let _ = SINK.filter.set(filter);
    log::set_logger(&SINK)?;
    Ok(())
}

/// While a `Batch` lives, lines are held; dropping it writes them out in one call. The event
/// loop holds one per turn, so a turn's lines leave before it sleeps again.
pub struct Batch(());

pub fn batch() -> Batch {
    SINK.batching.store(true, Ordering::Relaxed);
    Batch(())
}

impl Drop for Batch {
    fn drop(&mut self) {
        SINK.batching.store(false, Ordering::Relaxed);
        SINK.flush();
    }
}

/// Appends one line in simple_logger's format (UTC timestamps, level padded to five).
pub fn format_line(out: &mut String, epoch_ms: i64, record: &Record<'_>) {
    crate::time::write_rfc3339_ms(out, epoch_ms);
    let target = if record.target().is_empty() {
        record.module_path().unwrap_or_default()
    } else {
        record.target()
    };
    let _ = writeln!(out, " {:<5} [{}] {}", record.level().as_str(), target, record.args());
}

impl Log for Sink {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        match self.filter.get() {
            Some(filter) => filter.allows(metadata.target(), metadata.level()),
            None => metadata.level() <= log::max_level(),
        }
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // A poisoned lock only means a panic while formatting; the text is still usable.
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        format_line(&mut held, epoch_ms, record);
        if !self.batching.load(Ordering::Relaxed) || held.len() >= FLUSH_AT {
            write_out(&mut held);
        }
    }

    fn flush(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        write_out(&mut held);
    }
}

/// One `write` for everything held. A failing stderr loses log lines, never the server.
fn write_out(held: &mut String) {
    if held.is_empty() {
        return;
    }
    let _ = std::io::stderr().lock().write_all(held.as_bytes());
    held.clear();
    if held.capacity() > 4 * FLUSH_AT {
        held.shrink_to(FLUSH_AT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: log::Level, target: &str, text: &str) -> String {
        let mut out = String::new();
        format_line(
            &mut out,
            1_795_859_269_691,
            &Record::builder().level(level).target(target).args(format_args!("{text}")).build(),
        );
        out
    }

    /// The bytes operators already grep for: simple_logger's layout, UTC, milliseconds.
    #[test]
    fn lines_look_like_simple_loggers() {
        assert_eq!(
            line(log::Level::Info, "periode_sse::server::streams", "SSE client connected for user 13 (2 open)"),
            "2026-11-28T09:47:49.691Z INFO  [periode_sse::server::streams] SSE client connected for user 13 (2 open)\n"
        );
        assert_eq!(
            line(log::Level::Warn, "periode_sse", "x"),
            "2026-11-28T09:47:49.691Z WARN  [periode_sse] x\n"
        );
        assert_eq!(line(log::Level::Error, "a", "y"), "2026-11-28T09:47:49.691Z ERROR [a] y\n");
    }

    #[test]
    fn filters_parse_like_rust_log() {
        use LevelFilter::*;
        type Case<'a> = (&'a str, LevelFilter, &'a [(&'a str, LevelFilter)]);
        let ok: &[Case<'_>] = &[
            ("info", Info, &[]),
            (" DEBUG ", Debug, &[]),
            ("periode_sse=debug", Info, &[("periode_sse", Debug)]),
            ("info,periode_sse=debug", Info, &[("periode_sse", Debug)]),
            ("warn, periode_sse::server=trace,", Warn, &[("periode_sse::server", Trace)]),
            ("a=info,a=off", Info, &[("a", Off)]),
            ("off", Off, &[]),
        ];
        for (text, default, targets) in ok {
            let want = Filter {
                default: *default,
                targets: targets.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
            };
            assert_eq!(Filter::parse(text).as_ref(), Ok(&want), "{text}");
        }
        for bad in [
            "",
            " , ",
            "loud",
            "periode_sse",
            "periode_sse=loud",
            "=debug",
            "a b=info",
            "x::=info",
            "a/b=info",
            "info,garbage",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_longest_matching_target_decides() {
        let f = Filter::parse("warn,periode_sse=debug,periode_sse::server=error").unwrap();
        assert_eq!(f.max(), LevelFilter::Debug);
        assert!(f.allows("periode_sse", log::Level::Debug));
        assert!(f.allows("periode_sse::store", log::Level::Debug));
        assert!(!f.allows("periode_sse::server::streams", log::Level::Warn));
        assert!(f.allows("periode_sse::server", log::Level::Error));
        assert!(!f.allows("periode_sse_x", log::Level::Info));
        assert!(f.allows("mio", log::Level::Warn) && !f.allows("mio", log::Level::Info));
    }
}
