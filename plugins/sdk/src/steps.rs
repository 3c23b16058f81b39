//! A canary's list of steps, as policy writes it in `strategy_params`:
//!
//! ```toml
//! strategy_params = { steps = [
//!     { weight = 10 },
//!     { pause = "30s" },
//!     { analysis = { interval = "10s", max_error_rate = 0.05 } },
//!     { weight = 50 },
//!     { pause = "approval" },
//! ] }
//! ```
//!
//! Each step is an object with exactly one key:
//!
//! - `{"weight": w}`, `w` an integer from 0 to 100: send `w` % of the endpoint's requests
//!   to the clone and the rest to the original;
//! - `{"pause": d}`: wait `d` (a duration, see [`crate::duration`]), or `{"pause": "approval"}`:
//!   wait for an operator's approval;
//! - `{"analysis": {...}}`: measure the clone's error rate ([`AnalysisSpec`]).
//!
//! ```
//! use setpoint_plugin::serde_json::json;
//! use setpoint_plugin::steps::{CanaryStep, CanarySteps, Pause};
//! use std::time::Duration;
//!
//! let steps = CanarySteps::from_param("steps", &json!([{"weight": 10}, {"pause": "30s"}, {"pause": "approval"}])).unwrap();
//! assert_eq!(steps.0, [CanaryStep::Weight(10), CanaryStep::Pause(Pause::For(Duration::from_secs(30))), CanaryStep::Pause(Pause::Approval)]);
//! let error = CanarySteps::from_param("steps", &json!([{"weight": 10}, {"weight": 120}])).unwrap_err();
//! assert!(error.to_string().contains("`steps[1].weight`"), "{error}");
//! ```

use std::time::Duration;

use serde_json::Value;

use crate::analysis::AnalysisSpec;
use crate::{PluginError, duration};

/// A wait in a canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    /// Wait this long.
    For(Duration),
    /// Wait for an operator's approval (`setpoint approve` or `setpoint promote`).
    Approval,
}

/// One step of a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryStep {
    /// Send this percentage (0 to 100) of the endpoint's requests to the clone.
    Weight(u32),
    /// Wait.
    Pause(Pause),
    /// Measure the clone's error rate.
    Analysis(AnalysisSpec),
}

impl CanaryStep {
    /// The step for people: `weight 10 %`, `pause 30s`, `pause for approval`,
    /// `analysis: error rate <= 0.05 ...`.
    pub fn describe(&self) -> String {
        match self {
            Self::Weight(w) => format!("weight {w} %"),
            Self::Pause(Pause::For(d)) => format!("pause {}", duration::format(*d)),
            Self::Pause(Pause::Approval) => "pause for approval".to_owned(),
            Self::Analysis(spec) => spec.describe(),
        }
    }
}

/// A canary's steps, in order; never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySteps(pub Vec<CanaryStep>);

impl CanarySteps {
    /// Parse parameter `name`: a non-empty list of steps. Errors are
    /// [`PluginError::InvalidParams`] naming the element (`steps[2].pause`).
    pub fn from_param(name: &str, value: &Value) -> Result<Self, PluginError> {
        let shape = "a non-empty list of steps: {\"weight\": 0..100}, {\"pause\": \"<duration>\" | \"approval\"} or {\"analysis\": {\"interval\": \"<duration>\", \"max_error_rate\": 0.0..1.0, ...}}";
        let Value::Array(items) = value else {
            return Err(PluginError::invalid_params(format!(
                "parameter `{name}` must be {shape}, got {value}"
            )));
        };
        if items.is_empty() {
            return Err(PluginError::invalid_params(format!(
                "parameter `{name}` must be {shape}, got an empty list"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_step(&format!("{name}[{i}]"), item))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// How many steps there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a parsed list; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_step(name: &str, item: &Value) -> Result<CanaryStep, PluginError> {
    let one_key = || {
        PluginError::invalid_params(format!(
            "parameter `{name}` must be an object with exactly one of the keys `weight`, `pause`, `analysis`, got {item}"
        ))
    };
    let Value::Object(map) = item else {
        return Err(one_key());
    };
    let mut entries = map.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(one_key());
    };
    let path = format!("{name}.{key}");
    match key.as_str() {
        "weight" => value
            .as_u64()
            .filter(|w| *w <= 100)
            .and_then(|w| u32::try_from(w).ok())
            .map(CanaryStep::Weight)
            .ok_or_else(|| {
                PluginError::invalid_params(format!(
                    "parameter `{path}` must be an integer from 0 to 100, got {value}"
                ))
            }),
        "pause" => match value {
            Value::String(text) if text == "approval" => Ok(CanaryStep::Pause(Pause::Approval)),
            _ => duration::from_param(&path, value)
                .map(|d| CanaryStep::Pause(Pause::For(d)))
                .map_err(|e| match e {
                    PluginError::InvalidParams(m) => {
                        PluginError::InvalidParams(format!("{m} (or \"approval\")"))
                    }
                    other => other,
                }),
        },
        "analysis" => AnalysisSpec::from_param(&path, value).map(CanaryStep::Analysis),
        _ => Err(one_key()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_every_kind_of_step() {
        let steps = CanarySteps::from_param(
            "steps",
            &json!([
                {"weight": 0}, {"weight": 100}, {"pause": 1500}, {"pause": "1m"},
                {"pause": "approval"},
                {"analysis": {"interval": "10s", "max_error_rate": 0.05}}
            ]),
        )
        .unwrap();
        assert_eq!(steps.len(), 6);
        assert_eq!(
            steps.0[2],
            CanaryStep::Pause(Pause::For(Duration::from_millis(1500)))
        );
        assert_eq!(steps.0[3].describe(), "pause 1m");
        assert!(matches!(&steps.0[5], CanaryStep::Analysis(spec) if spec.max_error_rate == 0.05));
    }

    #[test]
    fn errors_name_the_step() {
        for (value, named) in [
            (json!(null), "`steps`"),
            (json!({"weight": 10}), "`steps`"),
            (json!([]), "empty list"),
            (json!([{"weight": 10}, 5]), "`steps[1]`"),
            (json!([{"weight": 10, "pause": "1s"}]), "`steps[0]`"),
            (json!([{}]), "`steps[0]`"),
            (json!([{"wait": "1s"}]), "`steps[0]`"),
            (json!([{"weight": 101}]), "`steps[0].weight`"),
            (json!([{"weight": -1}]), "`steps[0].weight`"),
            (json!([{"weight": "10%"}]), "`steps[0].weight`"),
            (json!([{"pause": "forever"}]), "`steps[0].pause`"),
            (
                json!([{"weight": 5}, {"analysis": {"interval": "1s"}}]),
                "`steps[1].analysis.max_error_rate`",
            ),
        ] {
            let Err(PluginError::InvalidParams(message)) = CanarySteps::from_param("steps", &value)
            else {
                panic!("{value} should be refused");
            };
            assert!(message.contains(named), "{value}: {message}");
        }
    }
}
