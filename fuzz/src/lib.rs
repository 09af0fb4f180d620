//! The fuzz runner of uplink's parsers.
//!
//! `cargo fuzz` needs a nightly compiler; this project builds on stable, so its fuzz
//! targets are proptest strategies run by [`fuzz`]: each target mutates a corpus of
//! valid inputs ([`mutated`], [`mutated_text`]) — flipped bits, cut and repeated spans,
//! numbers at their limits, stray quotes and brackets — and checks that the code under
//! test neither panics nor breaks its contract. A failure is shrunk to a small input and
//! reported with the seed that found it.
//!
//! The targets are the crates' `fuzz_*` tests. How long each runs:
//! - `UPLINK_FUZZ_SECS=N`: for N seconds each (the long run; see the README);
//! - else `UPLINK_FUZZ_CASES=N` cases each (default [`DEFAULT_CASES`]: the short pass the
//!   test suite runs on every build);
//! - `UPLINK_FUZZ_SEED=N` draws other inputs (default 0: a run is reproducible).

use std::fmt::Debug;
use std::time::{Duration, Instant};

pub use proptest;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per target in the test suite's short pass.
pub const DEFAULT_CASES: u64 = 1000;

/// Cases per batch; each batch draws from its own seed, so a time-bounded run keeps
/// finding new inputs instead of replaying the first batch.
const BATCH: u32 = 250;

enum Budget {
    Cases(u64),
    Time(Duration),
}

impl Budget {
    fn from_env() -> Budget {
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match number("UPLINK_FUZZ_SECS") {
            Some(secs) => Budget::Time(Duration::from_secs(secs)),
            None => Budget::Cases(number("UPLINK_FUZZ_CASES").unwrap_or(DEFAULT_CASES)),
        }
    }

    fn spent(&self, cases: u64, elapsed: Duration) -> bool {
        match self {
            Budget::Cases(n) => cases >= *n,
            Budget::Time(t) => elapsed >= *t,
        }
    }
}

/// Runs `test` on inputs drawn from `strategy` until the budget is spent; panics with
/// the (shrunk) failing input if a case fails or panics.
pub fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = Budget::from_env();
    let run_seed = std::env::var("UPLINK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let start = Instant::now();
    // Counted where the test runs, not inferred from the configuration.
    let calls = std::cell::Cell::new(0u64);
    let counted = |v: S::Value| {
        calls.set(calls.get() + 1);
        test(v)
    };
    let mut cases = 0u64;
    for batch in 0u64.. {
        if budget.spent(cases, start.elapsed()) {
            break;
        }
        let config = Config {
            cases: BATCH,
            failure_persistence: None,
            ..Config::default()
        };
        let seed = seed_for(name, run_seed, batch);
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(e) = runner.run(&strategy, counted) {
            panic!("fuzz {name} (UPLINK_FUZZ_SEED={run_seed}, batch {batch}): {e}");
        }
        cases += u64::from(BATCH);
    }
    eprintln!(
        "fuzz {name}: {} cases in {:.1} s, none failed",
        calls.get(),
        start.elapsed().as_secs_f64()
    );
}

/// A 32-byte ChaCha seed from the target's name, the run's seed and the batch.
fn seed_for(name: &str, run: u64, batch: u64) -> [u8; 32] {
    // FNV-1a over the name: stable across builds and platforms (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&h.to_le_bytes());
    seed[8..16].copy_from_slice(&run.to_le_bytes());
    seed[16..24].copy_from_slice(&batch.to_le_bytes());
    seed
}

/// Fragments that break parsers more often than random bytes do.
const TOKENS: &[&[u8]] = &[
    b"-1",
    b"0",
    b"00",
    b"4294967296",
    b"9223372036854775807",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1e309",
    b"NaN",
    b"\0",
    b"\xff\xfe",
    b"%00",
    b"%2f",
    b"..",
    b"/",
    b"//",
    b"?",
    b"&",
    b"=",
    b"\"",
    b"'",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b";",
    b" ",
    b"\r\n",
    b"\xe2\x80\xae",
];

/// One edit of an input; positions are taken modulo its length.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, Vec<u8>),
    InsertToken(usize, usize),
    Delete(usize, usize),
    Repeat(usize, usize, u8),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(a, b)| Edit::FlipBit(a, b)),
        (at, any::<u8>()).prop_map(|(a, b)| Edit::SetByte(a, b)),
        (at, proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, v)| Edit::Insert(a, v)),
        (at, 0..TOKENS.len()).prop_map(|(a, t)| Edit::InsertToken(a, t)),
        (at, 1usize..32).prop_map(|(a, n)| Edit::Delete(a, n)),
        (at, 1usize..64, 1u8..8).prop_map(|(a, n, k)| Edit::Repeat(a, n, k)),
        at.prop_map(Edit::Truncate),
    ]
}

impl Edit {
    fn apply(&self, v: &mut Vec<u8>) {
        let pos = |a: usize, len: usize| if len == 0 { 0 } else { a % (len + 1) };
        match self {
            Edit::FlipBit(a, b) if !v.is_empty() => {
                let i = a % v.len();
                v[i] ^= 1 << b;
            }
            Edit::SetByte(a, b) if !v.is_empty() => {
                let i = a % v.len();
                v[i] = *b;
            }
            Edit::Insert(a, bytes) => {
                let i = pos(*a, v.len());
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::InsertToken(a, t) => {
                let i = pos(*a, v.len());
                v.splice(i..i, TOKENS[*t].iter().copied());
            }
            Edit::Delete(a, n) if !v.is_empty() => {
                let i = a % v.len();
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Edit::Repeat(a, n, k) if !v.is_empty() => {
                let i = a % v.len();
                let end = (i + n).min(v.len());
                let span = v[i..end].to_vec();
                for _ in 0..*k {
                    v.splice(end..end, span.iter().copied());
                }
            }
            Edit::Truncate(a) => {
                let i = pos(*a, v.len());
                v.truncate(i);
            }
            _ => {}
        }
    }
}

/// A seed input with up to 8 edits (none: the seed itself, which must pass too).
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    mutated_up_to(seeds, 8)
}

/// A seed input with fewer than `edits` edits: for inputs where most edits make the
/// whole thing invalid (a path, a JSON document), so the code behind the first check
/// gets its share of the cases.
pub fn mutated_up_to(seeds: Vec<Vec<u8>>, edits: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit(), 0..edits.max(1)),
    )
        .prop_map(|(mut input, edits)| {
            for e in &edits {
                e.apply(&mut input);
            }
            input
        })
}

/// [`mutated`] for text inputs: the result is made valid UTF-8 (invalid bytes become
/// U+FFFD), as a `&str` parser would receive it.
pub fn mutated_text(seeds: &[&str]) -> impl Strategy<Value = String> {
    mutated_text_up_to(seeds, 8)
}

/// [`mutated_text`] with fewer than `edits` edits (see [`mutated_up_to`]).
pub fn mutated_text_up_to(seeds: &[&str], edits: usize) -> impl Strategy<Value = String> {
    let seeds = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    mutated_up_to(seeds, edits).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_inside_the_input_whatever_the_position() {
        let mut v = b"abc".to_vec();
        for e in [
            Edit::FlipBit(usize::MAX, 7),
            Edit::Delete(usize::MAX, 100),
            Edit::Repeat(1, 64, 2),
            Edit::Truncate(usize::MAX),
            Edit::Insert(usize::MAX, vec![1]),
        ] {
            e.apply(&mut v);
        }
        let mut empty = Vec::new();
        for e in [
            Edit::FlipBit(3, 1),
            Edit::Delete(0, 1),
            Edit::Repeat(0, 1, 1),
        ] {
            e.apply(&mut empty);
        }
        assert!(empty.is_empty());
    }

    #[test]
    fn a_failing_target_is_reported_not_passed() {
        let failed = std::panic::catch_unwind(|| {
            fuzz("always-fails", mutated_text(&["x"]), |s| {
                prop_assert!(s.len() > 1000);
                Ok(())
            })
        });
        assert!(failed.is_err());
    }
}
