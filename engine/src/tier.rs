//! Speed tiers (the seed's table): the bandwidth estimate picks chunk size and parallelism.
//!
//! | estimate        | tier      | chunk  | streams |
//! |-----------------|-----------|--------|---------|
//! | < 3 Mbit/s      | slow      | 1 MiB  | 4       |
//! | 3 – 30 Mbit/s   | normal    | 4 MiB  | 8       |
//! | 30 – 200 Mbit/s | fast      | 16 MiB | 12      |
//! | > 200 Mbit/s    | ultrafast | 32 MiB | 12      |

const MIB: u64 = 1 << 20;
const MBIT: f64 = 1e6 / 8.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Slow,
    Normal,
    Fast,
    Ultrafast,
}

impl Tier {
    /// The tier for an estimate in bytes per second.
    pub fn for_rate(bytes_per_sec: f64) -> Tier {
        let mbit = bytes_per_sec / MBIT;
        if mbit < 3.0 {
            Tier::Slow
        } else if mbit < 30.0 {
            Tier::Normal
        } else if mbit <= 200.0 {
            Tier::Fast
        } else {
            Tier::Ultrafast
        }
    }

    pub fn chunk_size(self) -> u64 {
        match self {
            Tier::Slow => MIB,
            Tier::Normal => 4 * MIB,
            Tier::Fast => 16 * MIB,
            Tier::Ultrafast => 32 * MIB,
        }
    }

    pub fn streams(self) -> usize {
        match self {
            Tier::Slow => 4,
            Tier::Normal => 8,
            Tier::Fast | Tier::Ultrafast => 12,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Slow => "slow",
            Tier::Normal => "normal",
            Tier::Fast => "fast",
            Tier::Ultrafast => "ultrafast",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_at_the_seeds_thresholds() {
        let t = |mbit: f64| Tier::for_rate(mbit * MBIT);
        assert_eq!(t(0.5), Tier::Slow);
        assert_eq!(t(2.99), Tier::Slow);
        assert_eq!(t(3.0), Tier::Normal);
        assert_eq!(t(29.9), Tier::Normal);
        assert_eq!(t(30.0), Tier::Fast);
        assert_eq!(t(200.0), Tier::Fast);
        assert_eq!(t(200.1), Tier::Ultrafast);
        assert_eq!(
            [Tier::Slow, Tier::Normal, Tier::Fast, Tier::Ultrafast]
                .map(|t| (t.chunk_size() / MIB, t.streams())),
            [(1, 4), (4, 8), (16, 12), (32, 12)]
        );
    }
}
