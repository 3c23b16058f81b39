//! Test doubles for plugin unit tests that run natively.
//!
//! [`FakeControlPlane`] answers a strategy's calls from a script and records every call,
//! so a test can drive `step` after `step` and assert what the strategy did:
//!
//! ```
//! use setpoint_plugin::testing::{Call, FakeControlPlane};
//! use setpoint_plugin::ControlPlane;
//!
//! let mut cp = FakeControlPlane::new().with_health("db", [false, true]);
//! assert!(!cp.probe_health("db").unwrap().healthy);
//! assert!(cp.probe_health("db").unwrap().healthy);
//! assert!(cp.probe_health("db").unwrap().healthy); // the last answer repeats
//! cp.stop("db").unwrap();
//! assert_eq!(cp.mutations(), [&Call::Stop { instance_id: "db".into() }]);
//! ```

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use crate::control_plane::{
    BackendWeight, ControlPlane, ControlPlaneError, Health, InstanceInfo, InstanceMetrics,
    InstanceStatus, RuntimeStatus,
};
use crate::log::Level;

/// The log lines this thread wrote since the last call (native builds only; on wasm32
/// lines go to the host and this is always empty).
pub fn take_logs() -> Vec<(Level, String)> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::log::sink::take()
    }
    #[cfg(target_arch = "wasm32")]
    {
        Vec::new()
    }
}

/// One control-plane operation, for scripting failures with
/// [`FakeControlPlane::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// [`ControlPlane::get_instance`].
    GetInstance,
    /// [`ControlPlane::get_runtime_status`].
    GetRuntimeStatus,
    /// [`ControlPlane::get_desired_configuration`].
    GetDesiredConfiguration,
    /// [`ControlPlane::start`].
    Start,
    /// [`ControlPlane::stop`].
    Stop,
    /// [`ControlPlane::restart`].
    Restart,
    /// [`ControlPlane::clone_instance`].
    CloneInstance,
    /// [`ControlPlane::delete_clone`].
    DeleteClone,
    /// [`ControlPlane::set_traffic_weights`].
    SetTrafficWeights,
    /// [`ControlPlane::probe_health`].
    ProbeHealth,
    /// [`ControlPlane::get_metrics`].
    GetMetrics,
}

/// A call a strategy made, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `get_instance(instance_id)`.
    GetInstance {
        /// The instance named.
        instance_id: String,
    },
    /// `get_runtime_status(instance_id)`.
    GetRuntimeStatus {
        /// The instance named.
        instance_id: String,
    },
    /// `get_desired_configuration(instance_id)`.
    GetDesiredConfiguration {
        /// The instance named.
        instance_id: String,
    },
    /// `start(instance_id, configuration)`.
    Start {
        /// The instance named.
        instance_id: String,
        /// The configuration passed, if any.
        configuration: Option<Value>,
    },
    /// `stop(instance_id)`.
    Stop {
        /// The instance named.
        instance_id: String,
    },
    /// `restart(instance_id)`.
    Restart {
        /// The instance named.
        instance_id: String,
    },
    /// `clone_instance(instance_id, configuration)`.
    CloneInstance {
        /// The instance cloned.
        instance_id: String,
        /// The clone's configuration.
        configuration: Value,
    },
    /// `delete_clone(instance_id)`.
    DeleteClone {
        /// The clone named.
        instance_id: String,
    },
    /// `set_traffic_weights(endpoint, weights)`.
    SetTrafficWeights {
        /// The endpoint named.
        endpoint: String,
        /// The weights passed.
        weights: Vec<BackendWeight>,
    },
    /// `probe_health(instance_id)`.
    ProbeHealth {
        /// The instance named.
        instance_id: String,
    },
    /// `get_metrics(instance_id)`.
    GetMetrics {
        /// The instance named.
        instance_id: String,
    },
}

impl Call {
    /// The operation this call is.
    pub fn operation(&self) -> Operation {
        match self {
            Self::GetInstance { .. } => Operation::GetInstance,
            Self::GetRuntimeStatus { .. } => Operation::GetRuntimeStatus,
            Self::GetDesiredConfiguration { .. } => Operation::GetDesiredConfiguration,
            Self::Start { .. } => Operation::Start,
            Self::Stop { .. } => Operation::Stop,
            Self::Restart { .. } => Operation::Restart,
            Self::CloneInstance { .. } => Operation::CloneInstance,
            Self::DeleteClone { .. } => Operation::DeleteClone,
            Self::SetTrafficWeights { .. } => Operation::SetTrafficWeights,
            Self::ProbeHealth { .. } => Operation::ProbeHealth,
            Self::GetMetrics { .. } => Operation::GetMetrics,
        }
    }

    /// Whether the call changes something (what dry-run would only simulate).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Self::Start { .. }
                | Self::Stop { .. }
                | Self::Restart { .. }
                | Self::CloneInstance { .. }
                | Self::DeleteClone { .. }
                | Self::SetTrafficWeights { .. }
        )
    }
}

/// A scriptable in-memory [`ControlPlane`] that records every call.
///
/// Unscripted behaviour: lifecycle calls succeed and update the status that
/// `get_runtime_status` reports; `probe_health` answers healthy; `get_metrics` answers
/// zeros; `get_instance` and `get_desired_configuration` answer
/// [`ControlPlaneError::NotFound`] for instances not added with
/// [`FakeControlPlane::with_instance`] / [`FakeControlPlane::with_desired_configuration`];
/// clones get the identifiers `<instance>-clone-<n>`.
#[derive(Debug, Default)]
pub struct FakeControlPlane {
    calls: Vec<Call>,
    instances: BTreeMap<String, InstanceInfo>,
    statuses: BTreeMap<String, InstanceStatus>,
    desired: BTreeMap<String, Value>,
    health: BTreeMap<String, VecDeque<Health>>,
    metrics: BTreeMap<String, VecDeque<InstanceMetrics>>,
    failures: BTreeMap<Operation, VecDeque<ControlPlaneError>>,
    clones: u32,
}

impl FakeControlPlane {
    /// A control plane that knows no instances and answers every call successfully.
    pub fn new() -> Self {
        Self::default()
    }

    /// Know `info` (for `get_instance`) and its status.
    #[must_use]
    pub fn with_instance(mut self, info: InstanceInfo) -> Self {
        self.statuses.insert(info.id.clone(), info.status);
        self.instances.insert(info.id.clone(), info);
        self
    }

    /// Answer `get_desired_configuration(instance_id)` with `configuration`.
    #[must_use]
    pub fn with_desired_configuration(
        mut self,
        instance_id: impl Into<String>,
        configuration: Value,
    ) -> Self {
        self.desired.insert(instance_id.into(), configuration);
        self
    }

    /// Answer successive `probe_health(instance_id)` calls with `healthy`, in order; the
    /// last answer repeats.
    #[must_use]
    pub fn with_health(
        mut self,
        instance_id: impl Into<String>,
        healthy: impl IntoIterator<Item = bool>,
    ) -> Self {
        let answers = healthy
            .into_iter()
            .map(|healthy| Health {
                healthy,
                detail: format!(
                    "fake probe: {}",
                    if healthy { "healthy" } else { "unhealthy" }
                ),
            })
            .collect();
        self.health.insert(instance_id.into(), answers);
        self
    }

    /// Answer successive `get_metrics(instance_id)` calls with `metrics`, in order; the
    /// last answer repeats.
    #[must_use]
    pub fn with_metrics(
        mut self,
        instance_id: impl Into<String>,
        metrics: impl IntoIterator<Item = InstanceMetrics>,
    ) -> Self {
        self.metrics
            .insert(instance_id.into(), metrics.into_iter().collect());
        self
    }

    /// Make the next call of `operation` fail with `error` (queued: calling this twice
    /// fails the next two calls).
    pub fn fail_next(&mut self, operation: Operation, error: ControlPlaneError) -> &mut Self {
        self.failures.entry(operation).or_default().push_back(error);
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// The calls so far that change something, in order.
    pub fn mutations(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.is_mutation()).collect()
    }

    /// Take the calls so far, leaving the record empty.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    /// The status the fake believes `instance_id` has.
    pub fn status(&self, instance_id: &str) -> Option<InstanceStatus> {
        self.statuses.get(instance_id).copied()
    }

    fn record(&mut self, call: Call) -> Result<(), ControlPlaneError> {
        let operation = call.operation();
        self.calls.push(call);
        match self
            .failures
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The next scripted answer; the last one repeats.
fn next_answer<T: Clone>(answers: Option<&mut VecDeque<T>>) -> Option<T> {
    let answers = answers?;
    if answers.len() > 1 {
        answers.pop_front()
    } else {
        answers.front().cloned()
    }
}

impl ControlPlane for FakeControlPlane {
    fn get_instance(&mut self, instance_id: &str) -> Result<InstanceInfo, ControlPlaneError> {
        self.record(Call::GetInstance {
            instance_id: instance_id.to_owned(),
        })?;
        let mut info = self
            .instances
            .get(instance_id)
            .cloned()
            .ok_or_else(|| ControlPlaneError::NotFound(format!("instance {instance_id}")))?;
        if let Some(status) = self.statuses.get(instance_id) {
            info.status = *status;
        }
        Ok(info)
    }

    fn get_runtime_status(
        &mut self,
        instance_id: &str,
    ) -> Result<RuntimeStatus, ControlPlaneError> {
        self.record(Call::GetRuntimeStatus {
            instance_id: instance_id.to_owned(),
        })?;
        let status = self
            .statuses
            .get(instance_id)
            .copied()
            .ok_or_else(|| ControlPlaneError::NotFound(format!("instance {instance_id}")))?;
        Ok(RuntimeStatus {
            status,
            details: Value::Object(serde_json::Map::new()),
        })
    }

    fn get_desired_configuration(&mut self, instance_id: &str) -> Result<Value, ControlPlaneError> {
        self.record(Call::GetDesiredConfiguration {
            instance_id: instance_id.to_owned(),
        })?;
        self.desired
            .get(instance_id)
            .cloned()
            .ok_or_else(|| ControlPlaneError::NotFound(format!("instance {instance_id}")))
    }

    fn start(
        &mut self,
        instance_id: &str,
        configuration: Option<&Value>,
    ) -> Result<(), ControlPlaneError> {
        self.record(Call::Start {
            instance_id: instance_id.to_owned(),
            configuration: configuration.cloned(),
        })?;
        self.statuses
            .insert(instance_id.to_owned(), InstanceStatus::Running);
        Ok(())
    }

    fn stop(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
        self.record(Call::Stop {
            instance_id: instance_id.to_owned(),
        })?;
        self.statuses
            .insert(instance_id.to_owned(), InstanceStatus::Stopped);
        Ok(())
    }

    fn restart(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
        self.record(Call::Restart {
            instance_id: instance_id.to_owned(),
        })?;
        self.statuses
            .insert(instance_id.to_owned(), InstanceStatus::Running);
        Ok(())
    }

    fn clone_instance(
        &mut self,
        instance_id: &str,
        configuration: &Value,
    ) -> Result<String, ControlPlaneError> {
        self.record(Call::CloneInstance {
            instance_id: instance_id.to_owned(),
            configuration: configuration.clone(),
        })?;
        self.clones += 1;
        let clone = format!("{instance_id}-clone-{}", self.clones);
        self.statuses.insert(clone.clone(), InstanceStatus::Running);
        self.desired.insert(clone.clone(), configuration.clone());
        Ok(clone)
    }

    fn delete_clone(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
        self.record(Call::DeleteClone {
            instance_id: instance_id.to_owned(),
        })?;
        self.statuses.remove(instance_id);
        self.desired.remove(instance_id);
        Ok(())
    }

    fn set_traffic_weights(
        &mut self,
        endpoint: &str,
        weights: &[BackendWeight],
    ) -> Result<(), ControlPlaneError> {
        self.record(Call::SetTrafficWeights {
            endpoint: endpoint.to_owned(),
            weights: weights.to_vec(),
        })
    }

    fn probe_health(&mut self, instance_id: &str) -> Result<Health, ControlPlaneError> {
        self.record(Call::ProbeHealth {
            instance_id: instance_id.to_owned(),
        })?;
        Ok(
            next_answer(self.health.get_mut(instance_id)).unwrap_or_else(|| Health {
                healthy: true,
                detail: "fake probe: healthy (unscripted)".to_owned(),
            }),
        )
    }

    fn get_metrics(&mut self, instance_id: &str) -> Result<InstanceMetrics, ControlPlaneError> {
        self.record(Call::GetMetrics {
            instance_id: instance_id.to_owned(),
        })?;
        Ok(next_answer(self.metrics.get_mut(instance_id)).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scripted_failure_hits_the_next_call_only_and_is_recorded() {
        let mut cp = FakeControlPlane::new();
        cp.fail_next(Operation::Start, ControlPlaneError::Invalid("bad".into()));
        assert_eq!(
            cp.start("a", Some(&json!({}))),
            Err(ControlPlaneError::Invalid("bad".into()))
        );
        assert_eq!(cp.start("a", None), Ok(()));
        assert_eq!(cp.calls().len(), 2);
        assert_eq!(cp.status("a"), Some(InstanceStatus::Running));
    }

    #[test]
    fn clones_get_fresh_ids_and_their_configuration() {
        let mut cp = FakeControlPlane::new();
        let clone = cp.clone_instance("a", &json!({"port": 1})).unwrap();
        assert_eq!(clone, "a-clone-1");
        assert_eq!(
            cp.get_desired_configuration(&clone).unwrap(),
            json!({"port": 1})
        );
        cp.delete_clone(&clone).unwrap();
        assert!(matches!(
            cp.get_desired_configuration(&clone),
            Err(ControlPlaneError::NotFound(_))
        ));
    }

    #[test]
    fn log_lines_are_captured_per_thread() {
        crate::log::info("hello");
        crate::log::error("oops");
        assert_eq!(
            take_logs(),
            [
                (Level::Info, "hello".to_owned()),
                (Level::Error, "oops".to_owned())
            ]
        );
        assert!(take_logs().is_empty());
    }
}
