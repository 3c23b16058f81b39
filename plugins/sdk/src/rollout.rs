//! A strategy's unit of work ([`Rollout`]) and its answer ([`Progress`]).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Drift, PluginError};

/// One unit of work for a strategy, parsed from the contract's `rollout` record.
///
/// Tests build one with [`Rollout::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The instance being reconciled; the control plane acts on it and on the clones
    /// created during this rollout only.
    pub instance_id: String,
    /// The desired configuration.
    pub desired: Value,
    /// The configuration the instance runs now as far as the host knows; `None` when it
    /// has never run one the host knows of.
    pub actual: Option<Value>,
    /// The drifts the comparator found between `desired` and `actual`.
    pub drifts: Vec<Drift>,
    /// The parameters policy gives this strategy for this instance (a JSON object).
    pub params: Value,
    /// The state the strategy returned at its previous step, as it wrote it; `None` at the
    /// first step. Read it typed with [`Rollout::state`].
    pub raw_state: Option<String>,
    /// How many times `step` has been called before for this rollout (0 at the first).
    pub step: u32,
    /// Time since the first step of this rollout, by the host's clock (plugins have no
    /// clock of their own).
    pub elapsed: Duration,
}

impl Rollout {
    /// The first step of a rollout of `desired` to `instance_id`, with no params.
    pub fn new(instance_id: impl Into<String>, desired: Value) -> Self {
        Self {
            instance_id: instance_id.into(),
            desired,
            actual: None,
            drifts: Vec::new(),
            params: Value::Object(serde_json::Map::new()),
            raw_state: None,
            step: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// With `actual` as the running configuration.
    #[must_use]
    pub fn with_actual(mut self, actual: Value) -> Self {
        self.actual = Some(actual);
        self
    }

    /// With `params` as the policy's parameters.
    #[must_use]
    pub fn with_params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// With `drifts` as the comparator's findings.
    #[must_use]
    pub fn with_drifts(mut self, drifts: Vec<Drift>) -> Self {
        self.drifts = drifts;
        self
    }

    /// With `state` as written by a previous step (see [`Progress::state`]).
    #[must_use]
    pub fn with_raw_state(mut self, state: Option<impl Into<String>>) -> Self {
        self.raw_state = state.map(Into::into);
        self
    }

    /// At step number `step`, `elapsed` after the first step.
    #[must_use]
    pub fn at_step(mut self, step: u32, elapsed: Duration) -> Self {
        self.step = step;
        self.elapsed = elapsed;
        self
    }

    /// The state of the previous step as `T`; `Ok(None)` at the first step.
    ///
    /// State that does not parse as `T` is [`PluginError::InvalidInput`].
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, PluginError> {
        self.raw_state
            .as_deref()
            .map(|text| {
                serde_json::from_str(text).map_err(|e| {
                    PluginError::InvalidInput(format!(
                        "the rollout state is not what this strategy writes: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// The parameter `name` as `T`, or `default` when policy does not set it (or sets it
    /// to `null`).
    ///
    /// A value that is not a `T` is [`PluginError::InvalidParams`] naming the parameter.
    pub fn param_or<T: DeserializeOwned>(&self, name: &str, default: T) -> Result<T, PluginError> {
        Ok(self.param(name)?.unwrap_or(default))
    }

    /// The parameter `name` as `T`; `Ok(None)` when policy does not set it.
    ///
    /// Params that are not an object, or a value that is not a `T`, are
    /// [`PluginError::InvalidParams`] naming the parameter.
    pub fn param<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, PluginError> {
        let Value::Object(params) = &self.params else {
            return Err(PluginError::InvalidParams(format!(
                "params must be a JSON object, got {}",
                self.params
            )));
        };
        match params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value).map(Some).map_err(|e| {
                PluginError::InvalidParams(format!("parameter `{name}` = {value}: {e}"))
            }),
        }
    }
}

/// What a strategy's `step` or `abort` reports (the contract's `progress`).
#[must_use = "the host acts on the progress a strategy returns"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The rollout is complete; the text summarises what was done.
    Done(String),
    /// Not finished: call `step` again after `after` with `state`.
    Requeue {
        /// How long the host waits before the next step (millisecond resolution).
        after: Duration,
        /// The state for the next step, as JSON text.
        state: String,
        /// What the rollout is waiting for.
        message: String,
    },
    /// Not finished: call `step` again once an operator approves.
    AwaitApproval {
        /// The state for the step after approval, as JSON text.
        state: String,
        /// What the operator is asked to approve.
        message: String,
    },
    /// The rollout failed.
    Failed {
        /// Why, for an operator.
        reason: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
}

impl Progress {
    /// The rollout is complete.
    pub fn done(message: impl Into<String>) -> Self {
        Self::Done(message.into())
    }

    /// Call `step` again after `after` with `state` (serialised as JSON).
    ///
    /// State that cannot be serialised (a map with non-string keys) turns into a
    /// non-retryable [`Progress::Failed`] saying so.
    pub fn requeue<S: Serialize + ?Sized>(
        after: Duration,
        state: &S,
        message: impl Into<String>,
    ) -> Self {
        match serde_json::to_string(state) {
            Ok(state) => Self::Requeue {
                after,
                state,
                message: message.into(),
            },
            Err(e) => unserialisable_state(&e),
        }
    }

    /// Wait for an operator's approval, then call `step` with `state` (serialised as
    /// JSON; see [`Progress::requeue`] for serialisation failures).
    pub fn await_approval<S: Serialize + ?Sized>(state: &S, message: impl Into<String>) -> Self {
        match serde_json::to_string(state) {
            Ok(state) => Self::AwaitApproval {
                state,
                message: message.into(),
            },
            Err(e) => unserialisable_state(&e),
        }
    }

    /// The rollout failed; `retryable` says whether trying again later may succeed.
    pub fn failed(reason: impl Into<String>, retryable: bool) -> Self {
        Self::Failed {
            reason: reason.into(),
            retryable,
        }
    }

    /// The state to hand to the next step, if this progress continues the rollout.
    pub fn state(&self) -> Option<&str> {
        match self {
            Self::Requeue { state, .. } | Self::AwaitApproval { state, .. } => Some(state),
            Self::Done(_) | Self::Failed { .. } => None,
        }
    }

    /// Whether the rollout is finished, successfully or not.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Failed { .. })
    }
}

impl From<PluginError> for Progress {
    /// A domain error ends the rollout: invalid params or input are not retryable (the
    /// same inputs fail the same way), anything else is.
    fn from(error: PluginError) -> Self {
        let retryable = matches!(error, PluginError::Other(_));
        Self::failed(error.to_string(), retryable)
    }
}

fn unserialisable_state(error: &serde_json::Error) -> Progress {
    Progress::failed(
        format!("the strategy's state cannot be serialised as JSON: {error}"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        phase: u8,
    }

    #[test]
    fn state_round_trips_through_requeue() {
        let progress = Progress::requeue(Duration::from_secs(1), &State { phase: 2 }, "waiting");
        let rollout = Rollout::new("i", json!({})).with_raw_state(progress.state());
        assert_eq!(rollout.state::<State>().unwrap(), Some(State { phase: 2 }));
        assert_eq!(Rollout::new("i", json!({})).state::<State>().unwrap(), None);
    }

    #[test]
    fn foreign_state_is_invalid_input() {
        let rollout = Rollout::new("i", json!({})).with_raw_state(Some(r#""not the state""#));
        assert!(matches!(
            rollout.state::<State>(),
            Err(PluginError::InvalidInput(_))
        ));
    }

    #[test]
    fn params_are_typed_and_errors_name_the_parameter() {
        let rollout = Rollout::new("i", json!({})).with_params(json!({"a": 5, "b": "x"}));
        assert_eq!(rollout.param_or::<u64>("a", 1).unwrap(), 5);
        assert_eq!(rollout.param_or::<u64>("missing", 1).unwrap(), 1);
        let Err(PluginError::InvalidParams(message)) = rollout.param::<u64>("b") else {
            panic!("expected invalid params");
        };
        assert!(message.contains("`b`"), "{message}");
    }

    #[test]
    fn unserialisable_state_fails_the_rollout() {
        let mut bad = BTreeMap::new();
        bad.insert(vec![1u8], 1);
        let progress = Progress::requeue(Duration::ZERO, &bad, "x");
        assert!(matches!(
            progress,
            Progress::Failed {
                retryable: false,
                ..
            }
        ));
    }
}
