//! `blue-green`: a strategy that starts a clone of the instance with the desired
//! configuration beside it (the preview), optionally analyses it and asks for approval,
//! switches all of the instance's traffic to it, restarts the instance itself with the
//! desired configuration, switches the traffic back and deletes the clone after a delay.
//!
//! Start reading at [`BlueGreen::step`]; the sequence, the failure handling and the undo
//! are the shared engine's (`setpoint-progressive`, see its crate docs), and the
//! user-facing description is `docs/strategies.md`.
//!
//! Parameters (a JSON object, all optional; unknown keys are refused except the host's
//! `$` keys):
//!
//! | Key | Default | Meaning |
//! |---|---|---|
//! | `health_poll_ms` | 500 | How often to probe health while waiting (at least 1). |
//! | `health_deadline_ms` | 30000 | How long the clone, and then the instance, may take to become healthy. |
//! | `preview_analysis` | none | An analysis of the clone before the switch ([`setpoint_plugin::analysis`]). |
//! | `auto_promote` | `true` | `false`: ask for approval before the switch. |
//! | `scale_down_delay` | `"30s"` | How long the clone is kept after traffic is back on the instance. |
//! | `drain` | `"1s"` | Wait after moving traffic away from an instance before stopping or deleting it. |
//!
//! The preview serves no traffic of the endpoint: its analysis sees only requests sent
//! to the clone directly (a smoke test). Without any it is inconclusive, and after
//! `inconclusive_limit` (default 3) intervals the rollout fails and the clone is
//! deleted; set `min_requests: 0` to let a silent interval pass.

use std::time::Duration;

use setpoint_plugin::analysis::AnalysisSpec;
use setpoint_plugin::serde_json::Value;
use setpoint_plugin::steps::CanaryStep;
use setpoint_plugin::{ControlPlane, Metadata, PluginError, Progress, Rollout, Strategy};
use setpoint_progressive::{Plan, Timing};

/// The `blue-green` strategy.
#[derive(Debug)]
pub struct BlueGreen;

setpoint_plugin::strategy!(BlueGreen);

/// The strategy's name, in metadata and in the status object.
pub const NAME: &str = "blue-green";

/// How long the clone is kept after traffic is back on the instance, unless policy says
/// otherwise.
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// The parameters `blue-green` accepts (besides the host's `$` keys).
pub const PARAMS: [&str; 6] = [
    "health_poll_ms",
    "health_deadline_ms",
    "preview_analysis",
    "auto_promote",
    "scale_down_delay",
    "drain",
];

/// The engine's plan from the rollout's params.
fn plan(rollout: &Rollout) -> Result<Plan, PluginError> {
    rollout.check_params(NAME, &PARAMS)?;
    let steps = match rollout.param::<Value>("preview_analysis")? {
        Some(value) => vec![CanaryStep::Analysis(AnalysisSpec::from_param(
            "preview_analysis",
            &value,
        )?)],
        None => Vec::new(),
    };
    Ok(Plan {
        strategy: NAME,
        before_phase: "preview",
        steps,
        numbered_steps: false,
        auto_promote: setpoint_progressive::auto_promote(rollout)?,
        timing: Timing::parse(rollout)?,
        scale_down_delay: rollout
            .duration_param_or("scale_down_delay", DEFAULT_SCALE_DOWN_DELAY)?,
    })
}

impl Strategy for BlueGreen {
    fn metadata() -> Metadata {
        Metadata::strategy(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "Start a clone with the desired configuration, switch traffic to it, restart the instance with it, switch back",
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
            Plan::fallback(NAME, "preview", Timing::parse(rollout).unwrap_or_default())
        });
        setpoint_progressive::abort(&plan, rollout, cp)
    }
}

#[cfg(test)]
mod tests;
