//! Which streams each user has open: user → the slab keys of their streams.
//!
//! Fan-out needs every stream of one user in O(1); closing a stream must remove it in O(1)
//! whatever the user's count. Each user's keys sit in a small vector, and each key remembers
//! its index there (in a flat vector indexed by key), so removal is a swap-remove. Entries are
//! removed only by the server's reap, before their connection's slab key can be reused; the
//! server's keys also carry the connection's generation, so even a stale entry would name a
//! connection that no longer exists rather than another one.
//! No I/O here: the server writes, the registry only answers "who".

use crate::domain::UserId;
use crate::key::SlabKey;
use std::collections::HashMap;

const ABSENT: u32 = u32::MAX;

pub struct Registry<K: SlabKey = usize> {
    by_user: HashMap<UserId, Vec<K>>,
    /// For each slab index: its position in its user's vector, or ABSENT.
    index_of: Vec<u32>,
    total: usize,
}

impl<K: SlabKey> Default for Registry<K> {
    fn default() -> Registry<K> {
        Registry { by_user: HashMap::new(), index_of: Vec::new(), total: 0 }
    }
}

impl<K: SlabKey> Registry<K> {
    pub fn new() -> Registry<K> {
        Registry::default()
    }

    /// Records that `key` is a stream of `user`; returns the user's count afterwards.
    pub fn add(&mut self, user: UserId, key: K) -> usize {
        let at = key.index();
        if self.index_of.len() <= at {
            self.index_of.resize(at + 1, ABSENT);
        }
        debug_assert_eq!(self.index_of[at], ABSENT, "key {key:?} registered twice");
        let keys = self.by_user.entry(user).or_default();
        self.index_of[at] = keys.len() as u32;
        keys.push(key);
        self.total += 1;
        keys.len()
    }

    /// Forgets `key`; returns the user's count afterwards. Unknown keys are ignored.
    pub fn remove(&mut self, user: UserId, key: K) -> usize {
        let Some(&index) = self.index_of.get(key.index()) else {
            return self.count(user);
        };
        if index == ABSENT {
            return self.count(user);
        }
        let Some(keys) = self.by_user.get_mut(&user) else {
            return 0;
        };
        let index = index as usize;
        if keys.get(index) != Some(&key) {
            return keys.len(); // registered under another user (or generation): not ours
        }
        keys.swap_remove(index);
        if let Some(&moved) = keys.get(index) {
            self.index_of[moved.index()] = index as u32;
        }
        self.index_of[key.index()] = ABSENT;
        self.total -= 1;
        let left = keys.len();
        if left == 0 {
            self.by_user.remove(&user);
        }
        left
    }

    pub fn streams_of(&self, user: UserId) -> &[K] {
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
        let mut r = Registry::<usize>::new();
        let (a, b) = (UserId(13), UserId(14));
        assert_eq!(r.add(a, 0), 1);
        assert_eq!(r.add(a, 5), 2);
        assert_eq!(r.add(b, 2), 1);
        assert_eq!(r.add(a, 9), 3);
        assert_eq!((r.count(a), r.count(b), r.total(), r.users()), (3, 1, 4, 2));
        assert_eq!(r.remove(a, 0), 2);
        let mut left: Vec<usize> = r.streams_of(a).to_vec();
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
        let mut r = Registry::<usize>::new();
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
        let mut r = Registry::<usize>::new();
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
    fn an_entry_of_an_earlier_generation_is_not_removed_by_a_later_one() {
        use crate::key::ConnKey;
        let mut r = Registry::<ConnKey>::new();
        let old = ConnKey::new(3, 1);
        r.add(UserId(1), old);
        assert_eq!(r.remove(UserId(1), ConnKey::new(3, 2)), 1);
        assert_eq!(r.streams_of(UserId(1)), &[old]);
        assert_eq!(r.remove(UserId(1), old), 0);
    }
}
