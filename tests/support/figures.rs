//! Figures the reliability suite publishes in `docs/reliability.md`.
//!
//! Each test in `tests/reliability/` ends by calling [`record`] with what it held: the
//! load, the faults injected, the bad inputs tried, the trials run and what was lost
//! (which must be nothing, or the test has already failed). When
//! `SETPOINT_FIGURES_DIR` is set, the record is written there as `<test>.json`;
//! `scripts/reliability` sets it, runs the suite and renders the table with the
//! `reliability-report` binary. Without the variable (a plain `cargo test`) nothing is
//! written.

use std::path::Path;

use serde_json::{Value, json};

/// One row of the published table.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// The test's name, also the file name: `sigkill_trials`.
    pub test: String,
    /// What ran while faults were injected: `12 instances, 40 desired changes`.
    pub load: String,
    /// What was injected, with rates: `20 % of requests: 5xx, 429 + Retry-After, resets`.
    pub faults: String,
    /// Bad inputs tried, when the test is about input: `3.1 M fuzz inputs`.
    pub bad_inputs: String,
    /// Trials or seeds run: `50 trials`.
    pub trials: String,
    /// What was lost or went wrong; `nothing` when the test passed.
    pub lost: String,
    /// Anything a reader needs to read the row: durations, peaks, counts.
    pub notes: String,
}

impl Figures {
    pub fn new(test: &str) -> Self {
        Figures {
            test: test.to_owned(),
            lost: "nothing".to_owned(),
            ..Figures::default()
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "test": self.test,
            "load": self.load,
            "faults": self.faults,
            "bad_inputs": self.bad_inputs,
            "trials": self.trials,
            "lost": self.lost,
            "notes": self.notes,
        })
    }
}

/// Writes `figures` to `$SETPOINT_FIGURES_DIR/<test>.json` when that variable is set,
/// and prints them either way (they show with `--nocapture`).
pub fn record(figures: &Figures) {
    let text = serde_json::to_string_pretty(&figures.to_json()).expect("figures serialise");
    eprintln!("figures: {text}");
    let Some(dir) = std::env::var_os("SETPOINT_FIGURES_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create SETPOINT_FIGURES_DIR");
    std::fs::write(dir.join(format!("{}.json", figures.test)), text)
        .expect("write the figures file");
}

/// Whether the suite runs its documented, longer settings (`scripts/reliability` sets
/// `SETPOINT_RELIABILITY_LONG=1`) rather than CI's short ones.
pub fn long_run() -> bool {
    std::env::var("SETPOINT_RELIABILITY_LONG").is_ok_and(|v| v == "1")
}
