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
//! Keys are any `SlabKey`: the server's `ConnKey` carries a generation, which the wheel keeps
//! beside the entry and hands back with it, so a fired key says which connection it was for.

use crate::key::SlabKey;
use std::marker::PhantomData;

const TICK_MS: u64 = 10;
const SLOTS: usize = 4096; // one turn: 40.96 s, longer than the default 30 s heartbeat
const WORDS: usize = SLOTS / 64;
const UNSCHEDULED: u32 = u32::MAX;
/// Bits of `Entry::at` that hold the slot (SLOTS is 2^12).
const SLOT_BITS: u32 = 12;
/// Deadlines are capped here (about 142 000 years of uptime) so the slot fits beside them.
const MAX_DEADLINE_MS: u64 = (1 << (64 - SLOT_BITS)) - 1;

/// 16 bytes, as before keys had generations: the slot shares a word with the deadline.
#[derive(Clone, Copy)]
struct Entry {
    /// The deadline (high bits) and the slot it was filed in (low `SLOT_BITS`), which is not
    /// always its deadline's (see `schedule`).
    at: u64,
    pos: u32,
    generation: u32,
}

impl Entry {
    fn deadline_ms(self) -> u64 {
        self.at >> SLOT_BITS
    }

    fn slot(self) -> usize {
        (self.at & ((1 << SLOT_BITS) - 1)) as usize
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

    /// Sets `key`'s one deadline, replacing any earlier one. A deadline in the past fires at
    /// the next `expire_due`.
    pub fn schedule(&mut self, key: K, deadline_ms: u64) {
        self.cancel(key);
        let (index, generation) = (key.index(), key.generation());
        if self.entries.len() <= index {
            self.entries.resize(index + 1, Entry { at: 0, pos: UNSCHEDULED, generation: 0 });
        }
        let deadline_ms = deadline_ms.min(MAX_DEADLINE_MS);
        // Never file into a slot that has already been passed in this turn.
        let tick = (deadline_ms / TICK_MS).max(self.done_tick + 1);
        let slot = tick as usize % SLOTS;
        self.entries[index] = Entry {
            at: (deadline_ms << SLOT_BITS) | slot as u64,
            pos: self.slots[slot].len() as u32,
            generation,
        };
        self.slots[slot].push(index as u32);
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Forgets `key`'s deadline. The generation is not compared: the index has one entry,
    /// and whoever holds the index now may clear it.
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

    pub fn deadline(&self, key: K) -> Option<u64> {
        self.entries
            .get(key.index())
            .filter(|e| e.pos != UNSCHEDULED && e.generation == key.generation())
            .map(|e| e.deadline_ms())
    }

    /// Moves every key whose deadline is at or before `now_ms` into `due` (unscheduling it).
    pub fn expire_due(&mut self, now_ms: u64, due: &mut Vec<K>) {
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
                let entry = self.entries[key];
                if entry.deadline_ms() <= now_ms {
                    self.cancel_index(key); // swap-removes: index i now holds another key
                    due.push(K::from_parts(key, entry.generation));
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
                .map(|&k| self.entries[k as usize].deadline_ms())
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
        w.schedule(1, 40_960 + 100); // slot 10, next turn
        w.schedule(2, 2_000); // slot 200, this turn
        assert_eq!(w.next_wait_ms(0), Some(2_000));
        w.cancel(2);
        assert_eq!(w.next_wait_ms(0), Some(41_060));
    }

    #[test]
    fn a_fired_key_carries_its_generation() {
        use crate::key::ConnKey;
        let mut w = TimerWheel::<ConnKey>::new(0);
        let (old, new) = (ConnKey::new(4, 1), ConnKey::new(4, 2));
        w.schedule(old, 100);
        assert_eq!(w.deadline(old), Some(100));
        assert_eq!(w.deadline(new), None, "another generation has no deadline here");
        w.schedule(new, 200); // the index's one entry now belongs to the new connection
        let mut due = Vec::new();
        w.expire_due(300, &mut due);
        assert_eq!(due, vec![new]);
    }

    #[test]
    fn absurd_deadlines_are_capped_not_wrapped() {
        let mut w = TimerWheel::new(0);
        w.schedule(1, u64::MAX);
        assert_eq!(w.deadline(1), Some(MAX_DEADLINE_MS));
        assert_eq!(expire(&mut w, 1_000_000), Vec::<usize>::new());
    }
}
