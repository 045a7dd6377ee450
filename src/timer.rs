//! A hashed timing wheel holding at most one deadline per connection.
//!
//! Each connection has a single "next thing to check" instant (idle timeout, request timeout,
//! next heartbeat or token expiry, whichever is first); the server decides what it means when
//! it fires. Keys are slab keys, so the per-key bookkeeping lives in flat vectors indexed by
//! key, and a cancel is an O(1) swap-remove: nothing stale is ever left behind for a reused key.
//! Time is passed in (milliseconds on the server's monotonic clock); the wheel never reads a
//! clock and never does I/O, so tests drive it with explicit ticks.
//!
//! Deadlines further away than one turn of the wheel sit in their slot and are skipped until
//! the turn in which they fall due.
//!
//! 8 bytes a key: a deadline is kept as its low 32 bits (every one is within `MAX_AHEAD_MS`
//! of the wheel's clock, so the rest is the clock's), and the slot is those bits' own (ticks
//! and slots are powers of two). No generation is kept: the wheel hands back indices, and
//! the server, which cancels an index's deadline whenever it frees that index (its one
//! `Slab::remove` is followed by `cancel`), names the connection holding it now.

use crate::key::SlabKey;
use std::marker::PhantomData;

/// A power of two, so that a deadline's low 32 bits say its slot (2^32 is a multiple of one
/// turn, `TICK_MS * SLOTS` = 2^15 ms).
const TICK_MS: u64 = 8;
const TICK_SHIFT: u32 = 3;
const SLOTS: usize = 4096; // one turn: 32.768 s, longer than the default 30 s heartbeat
const WORDS: usize = SLOTS / 64;
const UNSCHEDULED: u32 = u32::MAX;
/// The furthest a deadline may be from the wheel's clock (about 12.4 days); further ones are
/// brought in to this (they fire early, and the caller decides again). The server's are at
/// most a heartbeat period, 86 400 s at most, away. Kept under 2^31 so that a wrapped
/// deadline is read back unambiguously.
const MAX_AHEAD_MS: u64 = 1 << 30;

/// 8 bytes: the deadline's low 32 bits and the key's position in its slot's vector.
#[derive(Clone, Copy)]
struct Entry {
    /// The deadline (ms, low 32 bits). A deadline already passed when it was filed is kept as
    /// the start of the tick it was filed in, which fires it exactly when it would have
    /// fired (that slot is the first to be visited), and keeps the slot derivable from it.
    at: u32,
    pos: u32,
}

impl Entry {
    fn slot(self) -> usize {
        (self.at >> TICK_SHIFT) as usize % SLOTS
    }
}

pub struct TimerWheel<K: SlabKey = usize> {
    slots: Vec<Vec<u32>>,
    /// Bit per slot: set when the slot holds anything, so the next deadline is found without
    /// walking 4096 vectors.
    occupied: [u64; WORDS],
    entries: Vec<Entry>,
    /// The last tick whose slot has been expired.
    done_tick: u64,
    len: usize,
    keys: PhantomData<K>,
}

impl<K: SlabKey> TimerWheel<K> {
    pub fn new(now_ms: u64) -> TimerWheel<K> {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            entries: Vec::new(),
            done_tick: now_ms / TICK_MS,
            len: 0,
            keys: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the first tick not yet expired: every scheduled deadline is after the
    /// previous tick's start and at most `MAX_AHEAD_MS` plus a tick beyond this.
    fn base_ms(&self) -> u64 {
        self.done_tick * TICK_MS
    }

    /// An entry's whole deadline, from its low 32 bits: it lies in (base, base + 2^30 + a
    /// tick], as every entry's does (`schedule` files nothing earlier than the next tick or
    /// further than `MAX_AHEAD_MS`, and `expire_due` removes every one at or before now,
    /// after which base is at most now), so its distance above base fits in 32 bits. Exact
    /// at any uptime, across any number of wraps of the low bits.
    fn deadline_of(&self, entry: Entry) -> u64 {
        let base = self.base_ms();
        base + u64::from(entry.at.wrapping_sub(base as u32))
    }

    /// Sets `key`'s one deadline, replacing any earlier one. A deadline in the past fires at
    /// the next `expire_due`.
    pub fn schedule(&mut self, key: K, deadline_ms: u64) {
        self.cancel(key);
        let index = key.index();
        if self.entries.len() <= index {
            self.entries.resize(index + 1, Entry { at: 0, pos: UNSCHEDULED });
        }
        // Never file into a slot that has already been passed in this turn.
        let first_ms = (self.done_tick + 1) * TICK_MS;
        let deadline_ms = deadline_ms.clamp(first_ms, first_ms + MAX_AHEAD_MS);
        let entry = Entry { at: deadline_ms as u32, pos: 0 };
        let slot = entry.slot();
        self.entries[index] = Entry { pos: self.slots[slot].len() as u32, ..entry };
        self.slots[slot].push(index as u32);
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Forgets `key`'s deadline. The index has one entry, and whoever holds the index now
    /// may clear it.
    pub fn cancel(&mut self, key: K) {
        self.cancel_index(key.index());
    }

    fn cancel_index(&mut self, key: usize) {
        let Some(entry) = self.entries.get(key).copied() else {
            return;
        };
        if entry.pos == UNSCHEDULED {
            return;
        }
        let slot = entry.slot();
        let list = &mut self.slots[slot];
        let pos = entry.pos as usize;
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            self.entries[moved as usize].pos = pos as u32;
        }
        if list.is_empty() {
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
        self.entries[key].pos = UNSCHEDULED;
        self.len -= 1;
    }

    /// The deadline of whatever holds `key`'s index (a deadline already passed when filed
    /// reads as the tick it was filed in).
    pub fn deadline(&self, key: K) -> Option<u64> {
        self.entries.get(key.index()).filter(|e| e.pos != UNSCHEDULED).map(|&e| self.deadline_of(e))
    }

    /// Moves the index of every key whose deadline is at or before `now_ms` into `due`
    /// (unscheduling it). Which connection holds the index now is the caller's to say.
    pub fn expire_due(&mut self, now_ms: u64, due: &mut Vec<usize>) {
        let now_tick = now_ms / TICK_MS;
        // After a long stall every slot is visited once, which is the whole wheel.
        let first = (self.done_tick + 1).max(now_tick.saturating_sub(SLOTS as u64 - 1));
        for tick in first..=now_tick {
            let slot = tick as usize % SLOTS;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let mut i = 0;
            while i < self.slots[slot].len() {
                let key = self.slots[slot][i] as usize;
                // Read against the base before this call moves it: see `deadline_of`.
                if self.deadline_of(self.entries[key]) <= now_ms {
                    self.cancel_index(key); // swap-removes: index i now holds another key
                    due.push(key);
                } else {
                    i += 1;
                }
            }
        }
        // The current tick is not over: deadlines later in it must be found on the next call,
        // so only the ticks before it count as done. (Marking it done would leave them for a
        // whole turn of the wheel.)
        self.done_tick = self.done_tick.max(now_tick.saturating_sub(1));
    }

    /// How long the loop may sleep before something could be due; `None` when nothing is
    /// scheduled. May be early for deadlines beyond one turn (they are re-checked), never late.
    pub fn next_wait_ms(&self, now_ms: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let mut earliest = u64::MAX;
        let mut tick = self.done_tick + 1;
        let end = tick + SLOTS as u64;
        while tick < end {
            let slot = tick as usize % SLOTS;
            let word = self.occupied[slot / 64] >> (slot % 64);
            if word == 0 {
                tick += 64 - (slot % 64) as u64; // rest of this word is empty
                continue;
            }
            let skip = word.trailing_zeros() as u64;
            if skip > 0 {
                tick += skip;
                continue;
            }
            let slot_min = self.slots[slot]
                .iter()
                .map(|&k| self.deadline_of(self.entries[k as usize]))
                .min()
                .unwrap_or(u64::MAX);
            let at = slot_min.max(tick * TICK_MS);
            if slot_min < (tick + 1) * TICK_MS {
                return Some(at.saturating_sub(now_ms));
            }
            // Everything here belongs to a later turn; something nearer may follow.
            earliest = earliest.min(at);
            tick += 1;
        }
        Some(earliest.saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expire(w: &mut TimerWheel, now: u64) -> Vec<usize> {
        let mut due = Vec::new();
        w.expire_due(now, &mut due);
        due.sort();
        due
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = TimerWheel::new(0);
        w.schedule(1, 1_000);
        w.schedule(2, 30_000);
        assert_eq!(expire(&mut w, 999), Vec::<usize>::new());
        assert_eq!(expire(&mut w, 1_000), vec![1]);
        assert_eq!(expire(&mut w, 29_999), Vec::<usize>::new());
        assert_eq!(expire(&mut w, 30_005), vec![2]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn cancel_and_reschedule_leave_nothing_behind() {
        let mut w = TimerWheel::new(0);
        for k in 0..10 {
            w.schedule(k, 500);
        }
        w.cancel(3);
        w.cancel(0);
        w.schedule(9, 2_000); // moves, does not duplicate
        assert_eq!(w.len(), 8);
        assert_eq!(expire(&mut w, 600), vec![1, 2, 4, 5, 6, 7, 8]);
        assert_eq!(expire(&mut w, 2_000), vec![9]);
        // A reused key starts clean.
        w.schedule(3, 2_500);
        w.cancel(3);
        assert_eq!(expire(&mut w, 10_000), Vec::<usize>::new());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_for_their_turn() {
        let mut w = TimerWheel::new(0);
        let far = 3_600_000 + 5; // an hour: wraps the wheel many times
        w.schedule(7, far);
        let mut now = 0;
        while now < far - 10_000 {
            now += 7_000;
            assert_eq!(expire(&mut w, now), Vec::<usize>::new(), "at {now}");
        }
        assert_eq!(expire(&mut w, far), vec![7]);
    }

    #[test]
    fn a_long_stall_fires_everything_due_once() {
        let mut w = TimerWheel::new(0);
        for k in 0..100 {
            w.schedule(k, (k as u64) * 1_000);
        }
        let due = expire(&mut w, 200_000);
        assert_eq!(due, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_deadline_later_in_the_current_tick_is_not_skipped() {
        let mut w = TimerWheel::new(0);
        w.schedule(1, 1_007);
        assert_eq!(expire(&mut w, 1_003), Vec::<usize>::new());
        assert_eq!(expire(&mut w, 1_005), Vec::<usize>::new());
        assert_eq!(expire(&mut w, 1_008), vec![1]);
        // The same when the next call lands in a later tick.
        w.schedule(2, 2_004);
        assert_eq!(expire(&mut w, 2_001), Vec::<usize>::new());
        assert_eq!(expire(&mut w, 2_019), vec![2]);
    }

    #[test]
    fn a_past_deadline_fires_on_the_next_expiry() {
        let mut w = TimerWheel::new(0);
        assert_eq!(expire(&mut w, 5_000), Vec::<usize>::new());
        w.schedule(4, 1_000);
        assert_eq!(w.next_wait_ms(5_000), Some(0)); // due now: no sleep
        assert_eq!(expire(&mut w, 5_000), vec![4]);
    }

    #[test]
    fn next_wait_points_at_the_earliest_deadline() {
        let mut w = TimerWheel::new(0);
        assert_eq!(w.next_wait_ms(0), None);
        w.schedule(1, 30_000);
        w.schedule(2, 10_000);
        assert_eq!(w.next_wait_ms(0), Some(10_000));
        assert_eq!(w.next_wait_ms(4_000), Some(6_000));
        w.cancel(2);
        assert_eq!(w.next_wait_ms(0), Some(30_000));
        // A far deadline filed in an early slot must not hide a nearer one in a later slot.
        let mut w = TimerWheel::new(0);
        w.schedule(1, 32_768 + 100); // slot 12, next turn
        w.schedule(2, 2_000); // slot 200, this turn
        assert_eq!(w.next_wait_ms(0), Some(2_000));
        w.cancel(2);
        assert_eq!(w.next_wait_ms(0), Some(32_868));
    }

    #[test]
    fn an_entry_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
    }

    #[test]
    fn a_fired_key_is_its_index_whatever_its_generation() {
        use crate::key::ConnKey;
        let mut w = TimerWheel::<ConnKey>::new(0);
        let (old, new) = (ConnKey::new(4, 1), ConnKey::new(4, 2));
        w.schedule(old, 100);
        assert_eq!(w.deadline(old), Some(100));
        w.schedule(new, 200); // the index's one entry now belongs to the new connection
        assert_eq!(w.deadline(old), Some(200), "one entry per index");
        let mut due = Vec::new();
        w.expire_due(300, &mut due);
        assert_eq!(due, vec![4]);
    }

    #[test]
    fn absurd_deadlines_are_brought_in_not_wrapped() {
        let mut w = TimerWheel::new(0);
        w.schedule(1, u64::MAX);
        assert_eq!(w.deadline(1), Some(TICK_MS + MAX_AHEAD_MS));
        assert_eq!(expire(&mut w, 1_000_000), Vec::<usize>::new());
        assert_eq!(expire(&mut w, TICK_MS + MAX_AHEAD_MS), vec![1]);
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn deadlines_stay_exact_across_the_32_bit_wrap() {
        // A server up 49.7 days (2^32 ms) and more: walk heartbeats and timeouts across the
        // wrap of the kept bits, firing each exactly at its millisecond.
        let start = (1u64 << 32) - 45_000;
        let mut w = TimerWheel::new(start);
        let mut now = start;
        for round in 0..20u64 {
            let hb = now + 30_000 + round; // a heartbeat, a little off the tick grid
            let timeout = now + 5_003; // a request timeout
            w.schedule(1, hb);
            w.schedule(2, timeout);
            assert_eq!((w.deadline(1), w.deadline(2)), (Some(hb), Some(timeout)));
            assert_eq!(w.next_wait_ms(now), Some(5_003));
            assert_eq!(expire(&mut w, timeout - 1), Vec::<usize>::new());
            assert_eq!(expire(&mut w, timeout), vec![2]);
            assert_eq!(w.next_wait_ms(timeout), Some(hb - timeout));
            assert_eq!(expire(&mut w, hb - 1), Vec::<usize>::new());
            assert_eq!(expire(&mut w, hb), vec![1]);
            now = hb;
        }
        assert!(now > 1 << 32, "crossed the wrap");
    }

    #[test]
    fn a_server_up_fifty_days_with_a_day_long_heartbeat() {
        let start = 50 * DAY + 3;
        let mut w = TimerWheel::new(start);
        w.schedule(7, start + DAY);
        w.schedule(8, start + 365 * DAY); // a year away: brought in to 12 days, not wrapped
        let mut now = start;
        while now < start + DAY - 40_000 {
            now += 39_000; // the loop waking every 39 s
            assert_eq!(expire(&mut w, now), Vec::<usize>::new(), "at {now}");
            assert_eq!(w.deadline(7), Some(start + DAY));
        }
        assert_eq!(expire(&mut w, start + DAY - 1), Vec::<usize>::new());
        assert_eq!(expire(&mut w, start + DAY), vec![7]);
        let brought_in = w.deadline(8).unwrap_or(0);
        assert!(brought_in > start + 12 * DAY && brought_in <= start + 13 * DAY);
    }

    #[test]
    fn a_stall_longer_than_the_kept_bits_still_fires_everything() {
        // A process stopped for 60 days (past 2^32 ms): every deadline is read against the
        // wheel's own clock, not against now, so none is taken for a future one.
        let mut w = TimerWheel::new(1_000);
        w.schedule(1, 31_000);
        w.schedule(2, 1_000 + 12 * DAY);
        assert_eq!(expire(&mut w, 1_000 + 60 * DAY), vec![1, 2]);
        assert!(w.is_empty());
    }
}
