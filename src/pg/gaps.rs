//! Gap detection: which notifications a node may push to its streams, and when it must catch
//! up from the notifications table instead.
//!
//! Pure: ids in, verdicts out. A user's ids go up by exactly one per notification, cluster
//! wide, so a node that has pushed id `k` of a user must push `k + 1` next. NOTIFY is lost
//! while the listener is disconnected, and a node's own commits may overtake another node's
//! NOTIFY, so a live id that is not `k + 1` means "something is missing": the node asks the
//! store for every kept notification after `k` and feeds the rows back here, in order.
//!
//! Only users with open streams on this node are tracked (nobody else needs pushing). At
//! most one catch-up per user is in flight; a gap seen while one is in flight marks it
//! `again`, because that catch-up's query may have run before the missing row committed.
//!
//! How the loop uses it: `track` when a user's first stream opens (with the last id that
//! opening sent or replayed), `untrack` when their last stream closes; every live
//! notification (its own batch's after commit, and everything the listener hears) goes
//! through `offer_live`; a `CatchUp { after }` verdict sends a catch-up query, whose rows go
//! through `offer_caught_up`, then `finish_catch_up`; a listener reconnect calls
//! `catch_up_all`.

use crate::domain::UserId;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next id: push it to the user's streams.
    Deliver,
    /// Already pushed (the listener's echo of our own commit, or a replayed row): drop it.
    Duplicate,
    /// Ids are missing before this one: drop it and catch up with every id after `after`.
    CatchUp { after: u64 },
    /// Ids are missing and a catch-up is already in flight; it will be run once more.
    Wait,
    /// Nobody on this node streams this user.
    Untracked,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    last: u64,
    in_flight: bool,
    again: bool,
}

#[derive(Debug, Default)]
pub struct Tracker {
    users: HashMap<UserId, Seen>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Starts tracking `user` at `last` (what their opening stream was sent). A user already
    /// tracked keeps the higher of the two: ids a stream's opening read from the store are
    /// pushed live later and must then count as duplicates, not as a gap.
    pub fn track(&mut self, user: UserId, last: u64) {
        let seen = self.users.entry(user).or_insert(Seen { last, in_flight: false, again: false });
        seen.last = seen.last.max(last);
    }

    pub fn untrack(&mut self, user: UserId) {
        self.users.remove(&user);
    }

    pub fn last(&self, user: UserId) -> Option<u64> {
        self.users.get(&user).map(|s| s.last)
    }

    pub fn offer_live(&mut self, user: UserId, id: u64) -> Verdict {
        let Some(seen) = self.users.get_mut(&user) else { return Verdict::Untracked };
        if id <= seen.last {
            Verdict::Duplicate
        } else if id == seen.last + 1 && !seen.in_flight {
            seen.last = id;
            Verdict::Deliver
        } else if seen.in_flight {
            // Even the next id waits: delivering it now would overtake the rows the catch-up
            // is about to deliver, if they were pushed out of order.
            seen.again = true;
            Verdict::Wait
        } else {
            seen.in_flight = true;
            Verdict::CatchUp { after: seen.last }
        }
    }

    /// A row of a catch-up query (the table is the truth: an id beyond `last + 1` means the
    /// rows between were dropped from the kept window, and is delivered).
    pub fn offer_caught_up(&mut self, user: UserId, id: u64) -> Verdict {
        let Some(seen) = self.users.get_mut(&user) else { return Verdict::Untracked };
        if id <= seen.last {
            return Verdict::Duplicate;
        }
        seen.last = id;
        Verdict::Deliver
    }

    /// The catch-up's rows are all offered. `Some(after)`: run another one (a gap was seen
    /// meanwhile).
    pub fn finish_catch_up(&mut self, user: UserId) -> Option<u64> {
        let seen = self.users.get_mut(&user)?;
        if seen.again {
            seen.again = false;
            return Some(seen.last);
        }
        seen.in_flight = false;
        None
    }

    /// After the listener reconnects (NOTIFY was lost meanwhile): every tracked user needs a
    /// catch-up. Returns those to start now, with their `after`; users already catching up
    /// run once more when theirs finishes.
    pub fn catch_up_all(&mut self) -> Vec<(UserId, u64)> {
        let mut start = Vec::new();
        for (user, seen) in &mut self.users {
            if seen.in_flight {
                seen.again = true;
            } else {
                seen.in_flight = true;
                start.push((*user, seen.last));
            }
        }
        start.sort_unstable();
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: UserId = UserId(13);

    #[test]
    fn contiguous_ids_are_delivered_once() {
        let mut t = Tracker::new();
        assert_eq!(t.offer_live(U, 1), Verdict::Untracked);
        t.track(U, 4);
        assert_eq!(t.offer_live(U, 5), Verdict::Deliver);
        assert_eq!(t.offer_live(U, 6), Verdict::Deliver);
        assert_eq!(t.offer_live(U, 6), Verdict::Duplicate);
        assert_eq!(t.offer_live(U, 3), Verdict::Duplicate);
        assert_eq!(t.last(U), Some(6));
        t.untrack(U);
        assert_eq!(t.offer_live(U, 7), Verdict::Untracked);
    }

    #[test]
    fn a_skipped_id_catches_up_and_the_rows_fill_the_gap() {
        let mut t = Tracker::new();
        t.track(U, 5);
        assert_eq!(t.offer_live(U, 7), Verdict::CatchUp { after: 5 });
        // Meanwhile the late NOTIFY of 6 arrives: it must not overtake the catch-up.
        assert_eq!(t.offer_live(U, 6), Verdict::Wait);
        assert_eq!(t.offer_caught_up(U, 6), Verdict::Deliver);
        assert_eq!(t.offer_caught_up(U, 7), Verdict::Deliver);
        // `Wait` was answered, so one more catch-up runs; it finds nothing new.
        assert_eq!(t.finish_catch_up(U), Some(7));
        assert_eq!(t.finish_catch_up(U), None);
        assert_eq!(t.offer_live(U, 7), Verdict::Duplicate);
        assert_eq!(t.offer_live(U, 8), Verdict::Deliver);
    }

    #[test]
    fn a_clean_catch_up_ends_at_once() {
        let mut t = Tracker::new();
        t.track(U, 0);
        assert_eq!(t.offer_live(U, 3), Verdict::CatchUp { after: 0 });
        for id in 1..=3 {
            assert_eq!(t.offer_caught_up(U, id), Verdict::Deliver);
        }
        assert_eq!(t.finish_catch_up(U), None);
        assert_eq!(t.offer_live(U, 4), Verdict::Deliver);
    }

    #[test]
    fn rows_beyond_the_kept_window_are_accepted() {
        let mut t = Tracker::new();
        t.track(U, 2);
        assert_eq!(t.offer_live(U, 2000), Verdict::CatchUp { after: 2 });
        assert_eq!(t.offer_caught_up(U, 1001), Verdict::Deliver);
        assert_eq!(t.offer_caught_up(U, 1001), Verdict::Duplicate);
        assert_eq!(t.finish_catch_up(U), None);
        assert_eq!(t.last(U), Some(1001));
    }

    #[test]
    fn a_reconnect_catches_up_everyone_once() {
        let mut t = Tracker::new();
        t.track(UserId(1), 10);
        t.track(UserId(2), 0);
        t.track(UserId(3), 7);
        assert_eq!(t.offer_live(UserId(3), 9), Verdict::CatchUp { after: 7 });
        assert_eq!(t.catch_up_all(), vec![(UserId(1), 10), (UserId(2), 0)]);
        // User 3's catch-up in flight runs once more after it ends.
        assert_eq!(t.finish_catch_up(UserId(3)), Some(7));
        assert_eq!(t.finish_catch_up(UserId(3)), None);
        assert_eq!(t.finish_catch_up(UserId(1)), None);
        assert_eq!(t.finish_catch_up(UserId(9)), None);
    }

    #[test]
    fn a_second_stream_never_moves_the_mark_back() {
        let mut t = Tracker::new();
        t.track(U, 8);
        t.track(U, 6);
        assert_eq!(t.last(U), Some(8));
        t.track(U, 9);
        assert_eq!(t.offer_live(U, 9), Verdict::Duplicate);
    }
}
