//! The log sink: simple_logger's line format, written to stderr once per loop turn.
//!
//! SPEC §6 wants one line per lifecycle event, so a connect burst logs as many lines as it has
//! connects. simple_logger formats each line into a fresh `String` and hands it to an
//! unbuffered stderr in two `write` calls (line, then newline): two system calls per connect,
//! about a tenth of a connect's CPU. Here the lines of one loop turn go out in one `write` at
//! the end of the turn (`Batch`), and lines outside a turn (start-up, shutdown, the `token`
//! command) go out at once. The bytes are the same as simple_logger's with UTC timestamps:
//! `2026-11-28T09:47:49.691Z INFO  [periode_sse::server::streams] SSE client connected …`.

use log::{LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Held lines are written out once they pass this size even mid-turn: a turn that logs
/// thousands of lines should not build a megabyte first.
const FLUSH_AT: usize = 32 * 1024;

struct Sink {
    held: Mutex<String>,
    batching: AtomicBool,
}

static SINK: Sink = Sink { held: Mutex::new(String::new()), batching: AtomicBool::new(false) };

/// Installs the sink for the whole process. Fails only if a logger is already installed.
pub fn init(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    log::set_logger(&SINK)?;
    log::set_max_level(level);
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
        metadata.level() <= log::max_level()
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
}
