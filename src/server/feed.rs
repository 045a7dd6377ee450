//! Cluster mode's change feed, the loop's side: what other nodes committed, heard through the
//! PostgreSQL listener (`pg::listen`), and the gap tracker that decides what to push.
//!
//! Every notification pushed to a stream goes through `offer`: the node's own batch's after
//! commit, and every one the listener hears (our own come back as echoes and are dropped as
//! duplicates). A skipped id asks for a catch-up from the notifications table (run on the
//! store thread). Without the `postgres` feature `Feed` has no value at all, so `Ctx::feed`
//! is always `None` and every notification is simply pushed.
//!
//! Nothing here touches a socket or the database: the loop (`mod.rs`) drains the receiver on
//! the feed's token and carries out what each message means.
//!
//! A batch that comes back brings its users' views, which fill the loop's cache instead of
//! a reload; but an event of another node heard while the batch was in flight may be of a
//! commit after the batch's, so those users are forgotten instead (`batch_left`,
//! `heard_other`, `batch_back`). The node's own events (sent by its store's server process)
//! change nothing the batch did not already say: they forget nothing, but their
//! notifications still go through the tracker like every other.

use crate::domain::UserId;
#[cfg(feature = "postgres")]
use std::collections::HashSet;

/// What to do with one live notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(super) enum Offer {
    /// Push it to the user's streams on this node.
    Push,
    /// Already pushed, a catch-up will bring it, or nobody here streams the user: drop it.
    Drop,
    /// An id was skipped: drop this one and read every kept notification after `after`.
    CatchUp { after: u64 },
}

#[cfg(feature = "postgres")]
pub(super) struct Feed {
    listener: Option<crate::pg::Listener>,
    pub(super) heard: std::sync::mpsc::Receiver<crate::pg::Heard>,
    tracker: crate::pg::Tracker,
    /// The listener is connected and listening.
    pub(super) up: bool,
    /// The server process of this node's store connection (its NOTIFYs are our echoes).
    own_pid: Option<i32>,
    /// Since the batch in flight left: the users other nodes' events were heard of, and
    /// whether the feed lost track of everything (down, catch-up, too many to hold).
    others: HashSet<UserId>,
    lost: bool,
}

/// Past this many users heard of during one batch, all of the batch's views are dropped.
#[cfg(feature = "postgres")]
const MAX_HEARD_PER_BATCH: usize = 65_536;

/// What the feed heard while a batch was in flight.
#[cfg(feature = "postgres")]
pub(super) struct SinceSent {
    /// Nothing the batch says can be kept (the feed went down or asked for a catch-up).
    pub(super) lost: bool,
    /// Users another node changed meanwhile: their views from the batch are not kept.
    pub(super) users: HashSet<UserId>,
}

#[cfg(feature = "postgres")]
impl Feed {
    pub(super) fn spawn(
        uri: crate::pg::PgUri,
        waker: std::sync::Arc<mio::Waker>,
    ) -> std::io::Result<Feed> {
        let (listener, heard) = crate::pg::Listener::spawn_with_waker(uri, waker)?;
        Ok(Feed {
            listener: Some(listener),
            heard,
            tracker: crate::pg::Tracker::new(),
            up: false,
            own_pid: None,
            others: HashSet::new(),
            lost: false,
        })
    }

    /// Writes leave for the store while none are in flight (`idle`): what is heard from now
    /// on may postdate their commit. Writes queued while others are still out start nothing:
    /// what was heard since the oldest of them left counts for them too (more forgetting,
    /// never a stale view kept), since the store thread may take several turns' writes into
    /// one batch.
    pub(super) fn batch_left(&mut self, idle: bool) {
        if idle {
            self.others.clear();
            self.lost = false;
        }
    }

    /// Whether an event was sent by this node's own store connection.
    pub(super) fn is_own(&self, from: i32) -> bool {
        self.own_pid == Some(from)
    }

    /// Another node changed `user`.
    pub(super) fn heard_other(&mut self, user: UserId) {
        if self.others.len() >= MAX_HEARD_PER_BATCH {
            self.lost = true;
            self.others.clear();
        } else if !self.lost {
            self.others.insert(user);
        }
    }

    /// The feed went down or asked for a catch-up: nothing cached holds.
    pub(super) fn lost_track(&mut self) {
        self.lost = true;
        self.others.clear();
    }

    /// The batch is back, written through the store connection `pid` (`None`: not known,
    /// or the batch failed and the connection may be another one next time): what was heard
    /// while it was out. Until a batch says which process writes for this node, its echoes
    /// count as another node's (a reload, nothing worse), so that a pid the server gave
    /// another node's new connection is never taken for ours. With writes still out
    /// (`more_in_flight`) what was heard stays for them.
    pub(super) fn batch_back(&mut self, pid: Option<i32>, more_in_flight: bool) -> SinceSent {
        self.own_pid = pid;
        let lost = self.lost || !self.up;
        if more_in_flight {
            return SinceSent { lost, users: self.others.clone() };
        }
        self.lost = false;
        SinceSent { lost, users: std::mem::take(&mut self.others) }
    }

    /// A user's first stream opened here, having been sent everything up to `last`.
    pub(super) fn track(&mut self, user: UserId, last: u64) {
        self.tracker.track(user, last);
    }

    pub(super) fn untrack(&mut self, user: UserId) {
        self.tracker.untrack(user);
    }

    /// The last id pushed to `user`'s streams here, if any stream of theirs is open.
    pub(super) fn mark(&self, user: UserId) -> Option<u64> {
        self.tracker.last(user)
    }

    pub(super) fn offer(&mut self, user: UserId, id: u64) -> Offer {
        use crate::pg::Verdict;
        match self.tracker.offer_live(user, id) {
            Verdict::Deliver => Offer::Push,
            Verdict::Duplicate | Verdict::Wait | Verdict::Untracked => Offer::Drop,
            Verdict::CatchUp { after } => Offer::CatchUp { after },
        }
    }

    /// A row of a catch-up: pushed unless already pushed.
    pub(super) fn offer_caught_up(&mut self, user: UserId, id: u64) -> bool {
        matches!(self.tracker.offer_caught_up(user, id), crate::pg::Verdict::Deliver)
    }

    /// `Some(after)`: run the catch-up once more.
    pub(super) fn finish_catch_up(&mut self, user: UserId) -> Option<u64> {
        self.tracker.finish_catch_up(user)
    }

    pub(super) fn catch_up_all(&mut self) -> Vec<(UserId, u64)> {
        self.tracker.catch_up_all()
    }

    pub(super) fn stop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.stop();
        }
    }
}

/// Without the `postgres` feature there is no feed: this type has no value.
#[cfg(not(feature = "postgres"))]
pub(super) enum Feed {}

#[cfg(not(feature = "postgres"))]
impl Feed {
    pub(super) fn track(&mut self, _user: UserId, _last: u64) {
        match *self {}
    }

    pub(super) fn untrack(&mut self, _user: UserId) {
        match *self {}
    }

    pub(super) fn mark(&self, _user: UserId) -> Option<u64> {
        match *self {}
    }

    pub(super) fn offer(&mut self, _user: UserId, _id: u64) -> Offer {
        match *self {}
    }
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    fn feed() -> Feed {
        let (_, heard) = std::sync::mpsc::sync_channel(1);
        Feed {
            listener: None,
            heard,
            tracker: crate::pg::Tracker::new(),
            up: true,
            own_pid: None,
            others: HashSet::new(),
            lost: false,
        }
    }

    #[test]
    fn a_batch_keeps_the_views_of_users_no_other_node_changed_meanwhile() {
        let mut feed = feed();
        // Heard before the batch left: the batch read after it, under the lock.
        feed.heard_other(UserId(1));
        feed.batch_left(true);
        feed.heard_other(UserId(2));
        let since = feed.batch_back(Some(42), false);
        assert!(!since.lost);
        assert_eq!(since.users, HashSet::from([UserId(2)]));
        // Our own store's events are known by its pid from then on; others' are not ours.
        assert!(feed.is_own(42) && !feed.is_own(43));
        // A failed batch reports no pid: nothing counts as ours until the next one is back.
        feed.batch_left(true);
        assert!(feed.batch_back(None, false).users.is_empty());
        assert!(!feed.is_own(42));
    }

    #[test]
    fn a_lost_feed_keeps_nothing_of_the_batch_in_flight() {
        let mut feed = feed();
        feed.batch_left(true);
        feed.lost_track();
        feed.heard_other(UserId(3));
        assert!(feed.batch_back(Some(1), false).lost);
        // The next batch starts clean, unless the feed is down.
        feed.batch_left(true);
        assert!(!feed.batch_back(Some(1), false).lost);
        feed.up = false;
        feed.batch_left(true);
        assert!(feed.batch_back(Some(1), false).lost);
    }

    #[test]
    fn writes_queued_behind_a_batch_count_what_was_heard_since_the_first_left() {
        let mut feed = feed();
        feed.batch_left(true);
        feed.heard_other(UserId(5));
        // More writes queued while the first are out: nothing is reset.
        feed.batch_left(false);
        feed.heard_other(UserId(6));
        let first = feed.batch_back(Some(7), true);
        assert_eq!(first.users, HashSet::from([UserId(5), UserId(6)]));
        // The last writes back: they too drop both, and the next batch starts clean.
        let last = feed.batch_back(Some(7), false);
        assert_eq!(last.users, HashSet::from([UserId(5), UserId(6)]));
        feed.batch_left(true);
        assert!(feed.batch_back(Some(7), false).users.is_empty());
    }
}
