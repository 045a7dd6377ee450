//! A small deterministic generator (xorshift64*): the one copy the server (spreading
//! reconnect delays), the tools (soak traffic) and the tests (fuzz-like inputs that reproduce)
//! share. Plenty for spreading and for test inputs, never for secrets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// xorshift64*. A seed of 0 would stay 0 forever, so `new` replaces it with 1.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator that repeats its sequence for the same seed, so a failing case reproduces.
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 1 } else { seed })
    }

    /// A generator seeded from `/dev/urandom`, or from the clock when that cannot be read
    /// (only spreads depend on it, so the clock is good enough).
    pub fn from_entropy() -> Rng {
        use std::io::Read;
        let mut bytes = [0u8; 8];
        let from_os =
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
        let seed = u64::from_le_bytes(bytes);
        if from_os && seed != 0 {
            Rng(seed)
        } else {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64);
            Rng(nanos.unwrap_or(1) | 1)
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`; 0 when `n` is 0 (an empty range has nothing better to give).
    pub fn below(&mut self, n: u64) -> u64 {
        let x = self.next_u64();
        if n == 0 {
            0
        } else {
            x % n
        }
    }

    /// A duration from `from` ms up to (not including) `to` ms; `from` ms when `to <= from`.
    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to.saturating_sub(from).max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_stays_in_range_and_zero_is_safe() {
        let mut rng = Rng::new(7);
        for _ in 0..1000 {
            assert!(rng.below(10) < 10);
        }
        assert_eq!(rng.below(0), 0);
        assert!(rng.millis(5, 5) == Duration::from_millis(5));
    }

    #[test]
    fn a_zero_seed_still_moves() {
        let mut rng = Rng::new(0);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }
}
