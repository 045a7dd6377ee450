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

use crate::domain::UserId;

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
}

#[cfg(feature = "postgres")]
impl Feed {
    pub(super) fn spawn(
        uri: crate::pg::PgUri,
        waker: std::sync::Arc<mio::Waker>,
    ) -> std::io::Result<Feed> {
        let (listener, heard) = crate::pg::Listener::spawn_with_waker(uri, waker)?;
        Ok(Feed { listener: Some(listener), heard, tracker: crate::pg::Tracker::new(), up: false })
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
