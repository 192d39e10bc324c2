//! A tiny seeded PRNG (SplitMix64) for fault injection and seeded simulations: the
//! same seed gives the same sequence on every machine, so a failing run can be replayed.

/// SplitMix64 (Steele, Lea, Flood 2014): one `u64` of state, passes BigCrush, and any
/// seed (zero included) is a good one, which is all a test needs.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (clamped to `0..=1`). Draws one number whatever
    /// `p` is, so changing a probability does not shift the rest of the sequence.
    pub fn chance(&mut self, p: f64) -> bool {
        let x = self.next_f64();
        x < p.clamp(0.0, 1.0)
    }

    /// Uniform in `[-1, 1)`.
    pub fn symmetric(&mut self) -> f64 {
        self.next_f64() * 2.0 - 1.0
    }

    /// A new generator whose sequence does not overlap this one's in practice (for
    /// giving each direction or each simulated node its own stream from one seed).
    pub fn fork(&mut self) -> SplitMix64 {
        SplitMix64::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let mut r = SplitMix64::new(42);
        assert_eq!(a, (0..8).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut other = SplitMix64::new(43);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn known_vector() {
        // First output for seed 0 from the reference implementation.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn floats_stay_in_range_and_chance_tracks_p() {
        let mut r = SplitMix64::new(7);
        let mut hits = 0;
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            let s = r.symmetric();
            assert!((-1.0..1.0).contains(&s));
            if r.chance(0.25) {
                hits += 1;
            }
        }
        assert!((2200..2800).contains(&hits), "{hits}");
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }
}
