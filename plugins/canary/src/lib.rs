//! `canary`: a strategy that starts a clone of the instance with the desired
//! configuration, shifts the instance's traffic to it in steps with pauses and
//! error-rate analysis, then promotes (the instance itself converges to the desired
//! configuration and the clone is deleted) or rolls back.
//!
//! Start reading at [`Canary::step`]; the sequence, the failure handling and the undo
//! are the shared engine's (`setpoint-progressive`, see its crate docs), and the
//! user-facing description is `docs/strategies.md`.
//!
//! Parameters (a JSON object; unknown keys are refused except the host's `$` keys):
//!
//! | Key | Default | Meaning |
//! |---|---|---|
//! | `steps` | required | Non-empty list of `{"weight": 0..=100}`, `{"pause": "<duration>"}`, `{"pause": "approval"}`, `{"analysis": {...}}` ([`setpoint_plugin::steps`], [`setpoint_plugin::analysis`]). |
//! | `auto_promote` | `true` | `false`: ask for approval after the last step, before full promotion. |
//! | `health_poll_ms` | 500 | How often to probe health while waiting (at least 1). |
//! | `health_deadline_ms` | 30000 | How long the clone, and then the instance, may take to become healthy. |
//! | `drain` | `"1s"` | Wait after moving traffic away from an instance before stopping or deleting it. |
//!
//! A failed analysis ends the rollout inside the same step: weights 100 % to the
//! instance, clone deleted, `failed` (not retryable) with the figures in the reason.

use setpoint_plugin::serde_json::Value;
use setpoint_plugin::steps::CanarySteps;
use setpoint_plugin::{ControlPlane, Metadata, PluginError, Progress, Rollout, Strategy};
use setpoint_progressive::{Plan, Timing};

/// The `canary` strategy.
#[derive(Debug)]
pub struct Canary;

setpoint_plugin::strategy!(Canary);

/// The strategy's name, in metadata and in the status object.
pub const NAME: &str = "canary";

/// The parameters `canary` accepts (besides the host's `$` keys).
pub const PARAMS: [&str; 5] = [
    "steps",
    "auto_promote",
    "health_poll_ms",
    "health_deadline_ms",
    "drain",
];

/// The engine's plan from the rollout's params.
fn plan(rollout: &Rollout) -> Result<Plan, PluginError> {
    rollout.check_params(NAME, &PARAMS)?;
    let steps = match rollout.param::<Value>("steps")? {
        Some(value) => CanarySteps::from_param("steps", &value)?,
        None => {
            return Err(PluginError::invalid_params(
                "parameter `steps` is required: a non-empty list like [{\"weight\": 10}, {\"pause\": \"30s\"}, {\"analysis\": {\"interval\": \"10s\", \"max_error_rate\": 0.05}}, {\"weight\": 50}]",
            ));
        }
    };
    Ok(Plan {
        strategy: NAME,
        before_phase: "canary",
        steps: steps.0,
        numbered_steps: true,
        auto_promote: setpoint_progressive::auto_promote(rollout)?,
        timing: Timing::parse(rollout)?,
        scale_down_delay: std::time::Duration::ZERO,
    })
}

impl Strategy for Canary {
    fn metadata() -> Metadata {
        Metadata::strategy(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "Clone with the desired configuration, shift traffic in steps with pauses and error-rate analysis, then promote or roll back",
        )
    }

    fn step(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        match plan(rollout) {
            Ok(plan) => setpoint_progressive::step(&plan, rollout, cp),
            Err(error) => error.into(),
        }
    }

    fn abort(rollout: &Rollout, cp: &mut dyn ControlPlane) -> Progress {
        // Undo even when the params no longer parse: the timings fall back to defaults.
        let plan = plan(rollout).unwrap_or_else(|_| {
            Plan::fallback(NAME, "canary", Timing::parse(rollout).unwrap_or_default())
        });
        setpoint_progressive::abort(&plan, rollout, cp)
    }
}

#[cfg(test)]
mod tests;
