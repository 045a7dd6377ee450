//! Which streams each user has open: user → the slab indices of their streams.
//!
//! Fan-out needs every stream of one user in O(1); closing a stream must remove it in O(1)
//! whatever the user's count. Each user's indices sit in a small vector, and each index
//! remembers its position there (in a flat vector indexed by slab index), so removal is a
//! swap-remove.
//!
//! An entry is a bare slab index (4 B a stream), not a generation-carrying key (8 B): entries
//! are removed only by the server's reap, before their connection's slab index can be
//! reused, so an index here always names the stream that registered it. The server still
//! checks, before writing to a stream it found here, that the stream is that user's
//! (`streams::live_stream`): a bug that left an entry behind could then only skip a write,
//! never send one user's event to another.
//! No I/O here: the server writes, the registry only answers "who".

use crate::domain::UserId;
use std::collections::HashMap;

const ABSENT: u32 = u32::MAX;

#[derive(Default)]
pub struct Registry {
    by_user: HashMap<UserId, Vec<u32>>,
    /// For each slab index: its position in its user's vector, or ABSENT.
    position_of: Vec<u32>,
    total: usize,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Records that slab index `at` is a stream of `user`; returns the user's count
    /// afterwards. Slab indices past `u32::MAX` cannot occur: `--max-conns` is bounded by the
    /// open-files limit.
    pub fn add(&mut self, user: UserId, at: usize) -> usize {
        if self.position_of.len() <= at {
            self.position_of.resize(at + 1, ABSENT);
        }
        debug_assert_eq!(self.position_of[at], ABSENT, "index {at} registered twice");
        let keys = self.by_user.entry(user).or_default();
        self.position_of[at] = keys.len() as u32;
        keys.push(at as u32);
        self.total += 1;
        keys.len()
    }

    /// Forgets slab index `at` as a stream of `user`; returns the user's count afterwards.
    /// Unknown indices, and indices registered under another user, are ignored.
    pub fn remove(&mut self, user: UserId, at: usize) -> usize {
        let Some(&position) = self.position_of.get(at) else {
            return self.count(user);
        };
        if position == ABSENT {
            return self.count(user);
        }
        let Some(keys) = self.by_user.get_mut(&user) else {
            return 0;
        };
        let position = position as usize;
        if keys.get(position).map(|&k| k as usize) != Some(at) {
            return keys.len(); // registered under another user: not ours
        }
        keys.swap_remove(position);
        if let Some(&moved) = keys.get(position) {
            self.position_of[moved as usize] = position as u32;
        }
        self.position_of[at] = ABSENT;
        self.total -= 1;
        let left = keys.len();
        if left == 0 {
            self.by_user.remove(&user);
        }
        left
    }

    /// The slab indices of `user`'s streams, in no particular order.
    pub fn streams_of(&self, user: UserId) -> &[u32] {
        self.by_user.get(&user).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn count(&self, user: UserId) -> usize {
        self.streams_of(user).len()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn users(&self) -> usize {
        self.by_user.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_count_remove() {
        let mut r = Registry::new();
        let (a, b) = (UserId(13), UserId(14));
        assert_eq!(r.add(a, 0), 1);
        assert_eq!(r.add(a, 5), 2);
        assert_eq!(r.add(b, 2), 1);
        assert_eq!(r.add(a, 9), 3);
        assert_eq!((r.count(a), r.count(b), r.total(), r.users()), (3, 1, 4, 2));
        assert_eq!(r.remove(a, 0), 2);
        let mut left: Vec<u32> = r.streams_of(a).to_vec();
        left.sort();
        assert_eq!(left, vec![5, 9]);
        // The moved key can itself be removed afterwards: its index was updated.
        assert_eq!(r.remove(a, 9), 1);
        assert_eq!(r.streams_of(a), &[5]);
        assert_eq!(r.remove(b, 2), 0);
        assert_eq!(r.users(), 1);
        assert_eq!(r.total(), 1);
    }

    #[test]
    fn removing_unknown_or_foreign_keys_changes_nothing() {
        let mut r = Registry::new();
        r.add(UserId(1), 3);
        assert_eq!(r.remove(UserId(1), 100), 1);
        assert_eq!(r.remove(UserId(2), 3), 0);
        assert_eq!(r.total(), 1);
        assert_eq!(r.remove(UserId(1), 3), 0);
        assert_eq!(r.remove(UserId(1), 3), 0);
        assert_eq!(r.total(), 0);
    }

    #[test]
    fn many_streams_stay_consistent() {
        let mut r = Registry::new();
        for k in 0..1000 {
            r.add(UserId((k % 7) as i64), k);
        }
        for k in (0..1000).step_by(3) {
            r.remove(UserId((k % 7) as i64), k);
        }
        for u in 0..7 {
            for &k in r.streams_of(UserId(u)) {
                assert_eq!(k as i64 % 7, u);
                assert_ne!(k % 3, 0);
            }
        }
        assert_eq!(r.total(), 1000 - 334);
    }

    #[test]
    fn a_reused_index_belongs_to_its_new_user_only() {
        let mut r = Registry::new();
        r.add(UserId(1), 4);
        assert_eq!(r.remove(UserId(1), 4), 0);
        assert_eq!(r.add(UserId(2), 4), 1);
        assert_eq!(r.remove(UserId(1), 4), 0); // a late removal for the old user: ignored
        assert_eq!(r.streams_of(UserId(2)), &[4]);
        assert_eq!(r.total(), 1);
    }
}
