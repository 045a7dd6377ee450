//! A log line that may repeat once per request, let through at most once per interval.
//!
//! During a database outage every request that needs the store fails the same way; logging
//! each one would write thousands of identical lines a second to an edge box's disk and bury
//! the line that says what went wrong. A `Throttle` lets the first line of an interval through
//! and counts the rest, so the next line it lets through can say how many were held back.
//! Time is passed in, so the logic is tested without a clock; atomics, so a `static` serves
//! every thread without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Throttle {
    every_ms: u64,
    /// The instant (ms, caller's clock) from which the next line may go.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub const fn new(every_ms: u64) -> Throttle {
        Throttle { every_ms, next_ms: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// `Some(n)`: write the line now, and say that `n` like it were held back since the last.
    /// `None`: hold it back (it is counted).
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let then = now_ms.saturating_add(self.every_ms);
        // Of two threads due at once, one writes the line and the other is counted.
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, then, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn one_line_an_interval_and_the_count_of_the_rest() {
        let t = Throttle::new(1000);
        assert_eq!(t.admit(0), Some(0));
        assert_eq!(t.admit(0), None);
        assert_eq!(t.admit(500), None);
        assert_eq!(t.admit(999), None);
        assert_eq!(t.admit(1000), Some(3));
        assert_eq!(t.admit(1500), None);
        assert_eq!(t.admit(5000), Some(1));
        assert_eq!(t.admit(5001), None);
    }

    #[test]
    fn a_clock_at_its_end_does_not_overflow() {
        let t = Throttle::new(1000);
        assert_eq!(t.admit(u64::MAX - 10), Some(0));
        assert_eq!(t.admit(u64::MAX - 5), None);
    }
}
