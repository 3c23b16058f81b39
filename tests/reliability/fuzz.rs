//! The host's fuzz targets (`setpoint_tests::fuzz`: settings, feed, admin) run as an
//! ordinary test: every input of the checked-in corpus (`fuzz/corpus/<target>/`) and of
//! the regression inputs (`fuzz/regressions/<target>/`), then seeded random inputs made
//! by mutating them (byte flips, insertions, splices: a poor man's fuzzer without
//! coverage guidance), so every found regression is replayed by every `cargo test`. The
//! coverage-guided runs of the same functions are `scripts/fuzz` (`fuzz/README.md`).
//!
//! Random inputs per target: `SETPOINT_FUZZ_INPUTS`, by default 2 000 (admin: 400,
//! each builds a store and a controller), ten times as many under `scripts/reliability`. A panic is a failure, and names the input (printed as hex) to add to
//! `fuzz/regressions/<target>/` once fixed.

use std::path::Path;
use std::time::Instant;

use setpoint_tests::figures::{self, Figures};
use setpoint_tests::fuzz::TARGETS;

/// xorshift64*: seeded, so a failure is reproduced by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes for text formats: JSON and TOML punctuation, NUL (the targets'
/// separator), digits, quotes, and high bytes.
const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"=",
    b"\n",
    b"\0",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"[[",
    b"]]",
    b"#",
    b"'''",
    b"\xff",
    b"\xc3\x28",
    b"9999-12-31T23:59:59Z",
    b"+262143-01-01T00:00:00Z",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&corpus[rng.below(corpus.len())]);
    for _ in 0..=rng.below(8) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                let n = rng.below(out.len() - i).min(16);
                out.drain(i..i + n);
            }
            2 => {
                let i = rng.below(out.len() + 1);
                let word = DICT[rng.below(DICT.len())];
                out.splice(i..i, word.iter().copied());
            }
            3 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let i = rng.below(out.len() + 1);
                    out.splice(i..i, other[from..].iter().copied().take(64));
                }
            }
            4 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            _ => {
                // Repeat a slice: deep nesting and long strings.
                if !out.is_empty() {
                    let i = rng.below(out.len());
                    let n = (out.len() - i).min(8);
                    let piece = out[i..i + n].to_vec();
                    for _ in 0..rng.below(64) {
                        out.splice(i..i, piece.iter().copied());
                    }
                }
            }
        }
    }
}

fn inputs_in(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn host_fuzz_targets_hold_over_corpus_and_random_inputs() {
    let root = setpoint_tests::workspace_root().join("fuzz");
    let configured: Option<usize> = std::env::var("SETPOINT_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok());
    // Panics are caught per input, so one finding names its input.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        let started = Instant::now();
        let mut corpus = inputs_in(&root.join("corpus").join(name));
        corpus.extend(inputs_in(&root.join("regressions").join(name)));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ has no inputs");
        let seeds = corpus.len();
        // The admin target builds a store and a controller per input (about 15 ms in a
        // debug build): fewer of them in CI.
        let per_target = if *name == "admin" { 400 } else { 2_000 };
        let random = configured.unwrap_or(if figures::long_run() {
            10 * per_target
        } else {
            per_target
        });
        let mut rng = Rng(0x5e7_901e7 ^ name.len() as u64);
        let mut input = Vec::new();
        let mut executed = 0;
        let mut found = 0;
        for i in 0..seeds + random {
            if i < seeds {
                input.clone_from(&corpus[i]);
            } else {
                mutate(&mut rng, &corpus, &mut input);
            }
            executed += 1;
            if let Err(panic) = std::panic::catch_unwind(|| check(&input)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                found += 1;
                if failures.len() < 5 {
                    failures.push(format!("{name}: input {} panicked: {why}", hex(&input)));
                }
            }
        }
        let took = started.elapsed();
        let mut f = Figures::new(&format!("fuzz_{name}_replay"));
        f.load = format!("the host's {name} target, in process");
        f.bad_inputs = format!("{executed} inputs ({seeds} corpus, {random} mutated)");
        f.trials = "1 seeded run".to_owned();
        f.faults = "none: malformed input only".to_owned();
        f.lost = if found == 0 {
            "nothing".to_owned()
        } else {
            format!("{found} panics")
        };
        f.notes = format!(
            "no coverage guidance (CI replay); {:.1} s, {:.0} inputs/s",
            took.as_secs_f64(),
            executed as f64 / took.as_secs_f64()
        );
        figures::record(&f);
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
