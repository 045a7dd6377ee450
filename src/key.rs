//! Connection keys: a slab index together with the generation of the connection holding it.
//!
//! slab reuses an index as soon as its entry is removed, so an index alone cannot tell a
//! connection from the one that took its place. Poll tokens and the work queued for a
//! connection (parked requests, writes in the store's hands, the reap's lists) carry a
//! `ConnKey`; the loop checks the generation against the slab before acting on any of them,
//! so an event left behind by a reused index is skipped silently. The timer wheel and the
//! registry keep bare indices: their entries are removed in the reap, with the connection.
//! Pure values: no I/O.

/// What the timer wheel can be keyed by: an index into flat vectors, plus
/// whatever the key carries beside it (a generation, or nothing for a bare `usize`).
pub trait SlabKey: Copy + PartialEq + std::fmt::Debug {
    fn index(self) -> usize;
    fn generation(self) -> u32;
    /// The key with this index and generation (`usize` ignores the generation).
    fn from_parts(index: usize, generation: u32) -> Self;
}

impl SlabKey for usize {
    fn index(self) -> usize {
        self
    }

    fn generation(self) -> u32 {
        0
    }

    fn from_parts(index: usize, _generation: u32) -> usize {
        index
    }
}

/// A connection: its slab index and its generation (never 0 for a live connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    index: u32,
    generation: u32,
}

impl ConnKey {
    /// Slab indices past `u32::MAX` cannot occur: `--max-conns` is bounded by the open-files
    /// limit, itself capped far below that.
    pub fn new(index: usize, generation: u32) -> ConnKey {
        ConnKey { index: index as u32, generation }
    }

    /// The mio token of this connection: generation in the high half, index in the low.
    pub fn token(self) -> mio::Token {
        mio::Token(((self.generation as usize) << 32) | self.index as usize)
    }

    pub fn of_token(token: mio::Token) -> ConnKey {
        ConnKey { index: (token.0 & 0xFFFF_FFFF) as u32, generation: (token.0 >> 32) as u32 }
    }
}

impl SlabKey for ConnKey {
    fn index(self) -> usize {
        self.index as usize
    }

    fn generation(self) -> u32 {
        self.generation
    }

    fn from_parts(index: usize, generation: u32) -> ConnKey {
        ConnKey::new(index, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_clear_of_the_fixed_ones() {
        for (index, generation) in [(0, 1), (7, 9), (0xFFFF_FFFE, 0xFFFF_FFFF), (123_456, 1)] {
            let key = ConnKey::new(index, generation);
            assert_eq!(ConnKey::of_token(key.token()), key);
            assert_eq!((key.index(), key.generation()), (index, generation));
        }
    }
}
