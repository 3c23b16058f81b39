//! What a strategy tells the host about a rollout in progress: the `"status"` object of
//! its state.
//!
//! The state a strategy returns (in `requeue` and `await-approval`) is opaque to the
//! host except for one convention: when it is a JSON object with a top-level `"status"`
//! object of this shape, the host shows it (`setpoint status ID`), audits it when it
//! changes, and uses it for the rollout's progress deadline (a rollout whose status has
//! `"paused": true` is waiting on purpose and is not timed out). Keep a strategy's private
//! state in other keys of the same object:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use setpoint_plugin::{BackendWeight, RolloutStatus};
//!
//! #[derive(Serialize, Deserialize)]
//! struct State {
//!     status: RolloutStatus,
//!     clone: Option<String>,
//!     // ... whatever else the strategy needs
//! }
//!
//! let mut status = RolloutStatus::new("canary", "canary");
//! status.step = Some(2);
//! status.steps = Some(5);
//! status.weights = vec![BackendWeight::new("db", 90), BackendWeight::new("db-clone-1", 10)];
//! status.clone = Some("db-clone-1".into());
//! status.paused = true;
//! status.waiting_for = Some("pause 30s (12s left)".into());
//! let state = State { status, clone: Some("db-clone-1".into()) };
//! assert_eq!(
//!     setpoint_plugin::serde_json::to_value(&state).unwrap()["status"],
//!     setpoint_plugin::serde_json::json!({
//!         "strategy": "canary", "phase": "canary", "step": 2, "steps": 5,
//!         "weights": [{"instance_id": "db", "weight": 90}, {"instance_id": "db-clone-1", "weight": 10}],
//!         "clone": "db-clone-1", "paused": true, "waiting_for": "pause 30s (12s left)"
//!     })
//! );
//! ```
//!
//! Every key is snake_case; keys that do not apply are left out (`paused` is always
//! written). Readers must ignore keys they do not know, so strategies may add their own.

use serde::{Deserialize, Serialize};

use crate::BackendWeight;

/// The `"status"` object of a strategy's state (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The strategy's name, as in its metadata (`"canary"`).
    pub strategy: String,
    /// One short word for where the rollout is, for example `preview`, `canary`,
    /// `promoting`, `converging`, `scaling-down`, `aborting`.
    pub phase: String,
    /// The 1-based index of the step being carried out, for strategies with a list of
    /// steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// How many steps there are in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// The traffic weights last set on the instance's endpoint (the backends with a
    /// weight above 0); empty when the strategy has not set any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<BackendWeight>,
    /// The clone the rollout created and has not deleted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<String>,
    /// Whether the rollout waits on purpose: in a timed pause, a configured delay, or
    /// for an operator's approval. The host does not count such a wait against the
    /// rollout's progress deadline.
    #[serde(default)]
    pub paused: bool,
    /// What the rollout waits for, for people (`"clone db-clone-1 to become healthy"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The figures of the analysis in progress, or of the last one that ended (with its
    /// verdict) until the next one starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisFigures>,
}

impl RolloutStatus {
    /// A status of `strategy` in `phase`, with nothing else set.
    pub fn new(strategy: impl Into<String>, phase: impl Into<String>) -> Self {
        Self {
            strategy: strategy.into(),
            phase: phase.into(),
            ..Self::default()
        }
    }
}

/// The verdict on one analysis interval, or on a whole analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The error rate was within the limit.
    Pass,
    /// The error rate was above the limit.
    Fail,
    /// Too few requests (or no readable counters) to judge.
    Inconclusive,
}

impl Verdict {
    /// `pass`, `fail` or `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// The figures of an analysis for the status object: the last measured interval and
/// the counts that decide the analysis (see [`crate::analysis`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AnalysisFigures {
    /// The length of the last measured interval (before the first one ends: the
    /// configured interval), in milliseconds.
    pub interval_ms: u64,
    /// Requests the clone served in the last measured interval (absent with a query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Of which failed (absent with a query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// `errors / requests` (0 without requests; absent with a query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// The configured limit of the error rate (absent with a query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The named query the analysis judges, when it judges one instead of the counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The query's value for the clone in the last measured interval (absent before the
    /// first, and when it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The query's upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The query's lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Requests the original served in the same interval, when comparing with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_requests: Option<u64>,
    /// Of which failed, when comparing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_errors: Option<u64>,
    /// The original's error rate, when comparing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_error_rate: Option<f64>,
    /// Failed intervals in a row so far.
    pub consecutive_failures: u32,
    /// How many in a row fail the analysis.
    pub failure_limit: u32,
    /// Intervals measured so far, whatever their verdict.
    pub measurements: u32,
    /// Of which passed.
    #[serde(default)]
    pub passes: u32,
    /// How many passing intervals pass the analysis.
    #[serde(default)]
    pub passes_required: u32,
    /// Inconclusive intervals so far.
    #[serde(default)]
    pub inconclusive: u32,
    /// How many inconclusive intervals end the analysis (as failed).
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// The verdict on the last measured interval; when the analysis has ended, on the
    /// analysis. Absent until the first interval ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn leaves_out_what_does_not_apply_and_reads_back() {
        let status = RolloutStatus::new("blue-green", "preview");
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(
            value,
            json!({"strategy": "blue-green", "phase": "preview", "paused": false})
        );
        assert_eq!(
            serde_json::from_value::<RolloutStatus>(value).unwrap(),
            status
        );
    }

    #[test]
    fn analysis_figures_are_snake_case_with_a_lowercase_verdict() {
        let figures = AnalysisFigures {
            interval_ms: 10_000,
            requests: Some(300),
            errors: Some(93),
            error_rate: Some(0.31),
            max_error_rate: Some(0.05),
            consecutive_failures: 1,
            failure_limit: 1,
            measurements: 1,
            verdict: Some(Verdict::Fail),
            ..AnalysisFigures::default()
        };
        let value = serde_json::to_value(&figures).unwrap();
        assert_eq!(value["verdict"], "fail");
        assert_eq!(value["error_rate"], 0.31);
        assert!(value.get("original_error_rate").is_none());
        assert!(value.get("query").is_none() && value.get("value").is_none());
        // Unknown keys are ignored, so a newer strategy's extra figures do not break it.
        let mut extended = value.clone();
        extended["p99_ms"] = json!(12);
        assert_eq!(
            serde_json::from_value::<AnalysisFigures>(extended).unwrap(),
            figures
        );
    }
}
