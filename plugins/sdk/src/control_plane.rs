//! The control-plane calls a strategy may make (the contract's `control-plane` imports).
//!
//! [`ControlPlane`] mirrors the WIT interface with configurations as
//! [`serde_json::Value`]s. On wasm32 the strategy export hands a strategy the
//! implementation over the real imports ([`HostControlPlane`]); tests use
//! [`FakeControlPlane`](crate::testing::FakeControlPlane).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a control-plane call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPlaneError {
    /// The instance (or endpoint) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The call is outside this strategy's scope (another instance, or an operation the
    /// host does not allow).
    #[error("denied: {0}")]
    Denied(String),
    /// The control plane could not be reached or does not offer this call.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The control plane rejected the arguments (for example an invalid configuration).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

/// Lifecycle state of an instance as the control plane reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Stopped on request.
    Stopped,
    /// Failed (for example its process exited).
    Error,
    /// Its desired configuration changed since it was started.
    ConfigurationChanged,
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "Created",
            Self::Running => "Running",
            Self::Stopped => "Stopped",
            Self::Error => "Error",
            Self::ConfigurationChanged => "ConfigurationChanged",
        })
    }
}

/// An instance as the control plane describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance's identifier.
    pub id: String,
    /// The instance's human name.
    pub name: String,
    /// Its lifecycle state.
    pub status: InstanceStatus,
    /// The platform it runs on, for example `Process`.
    pub platform_type: String,
    /// Its labels (DRaaS `metadata`).
    pub labels: Vec<(String, String)>,
}

/// What the control plane last heard about an instance at runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeStatus {
    /// Its lifecycle state.
    pub status: InstanceStatus,
    /// Extra details the control plane holds (a JSON object).
    pub details: Value,
}

/// The result of a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the instance answered its health check successfully.
    pub healthy: bool,
    /// What the probe saw, for the audit log.
    pub detail: String,
}

/// Request counters of an instance since it started.
///
/// Serialised as `{"requests": n, "errors": n}`, so strategies can keep a reading in
/// their state (see [`crate::analysis`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMetrics {
    /// Requests served.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// One backend of a traffic endpoint and its share of requests.
///
/// Serialised as `{"instance_id": "...", "weight": n}`, as in
/// [`RolloutStatus::weights`](crate::RolloutStatus::weights).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendWeight {
    /// The instance that serves this share.
    pub instance_id: String,
    /// Relative weight; the weights of an endpoint need not sum to 100.
    pub weight: u32,
}

impl BackendWeight {
    /// `weight` for `instance_id`.
    pub fn new(instance_id: impl Into<String>, weight: u32) -> Self {
        Self {
            instance_id: instance_id.into(),
            weight,
        }
    }
}

/// Control-plane calls a strategy may make. The host scopes every call to the instance
/// being reconciled and the clones created during this rollout; anything else is
/// [`ControlPlaneError::Denied`]. In dry-run the mutating calls are recorded and answered
/// with a simulated success.
pub trait ControlPlane {
    /// Describe an instance.
    fn get_instance(&mut self, instance_id: &str) -> Result<InstanceInfo, ControlPlaneError>;

    /// What the control plane last heard about an instance at runtime.
    fn get_runtime_status(&mut self, instance_id: &str)
    -> Result<RuntimeStatus, ControlPlaneError>;

    /// The instance's desired configuration.
    fn get_desired_configuration(&mut self, instance_id: &str) -> Result<Value, ControlPlaneError>;

    /// Start an instance with `configuration`, or with its stored desired configuration
    /// when `None`.
    fn start(
        &mut self,
        instance_id: &str,
        configuration: Option<&Value>,
    ) -> Result<(), ControlPlaneError>;

    /// Stop an instance.
    fn stop(&mut self, instance_id: &str) -> Result<(), ControlPlaneError>;

    /// Restart an instance with the configuration it has.
    fn restart(&mut self, instance_id: &str) -> Result<(), ControlPlaneError>;

    /// Create a sibling of `instance_id` that runs `configuration`; returns the new
    /// instance's identifier, which is in this rollout's scope from then on.
    fn clone_instance(
        &mut self,
        instance_id: &str,
        configuration: &Value,
    ) -> Result<String, ControlPlaneError>;

    /// Delete a clone this rollout created.
    fn delete_clone(&mut self, instance_id: &str) -> Result<(), ControlPlaneError>;

    /// Split the requests of `endpoint` across instances by weight.
    fn set_traffic_weights(
        &mut self,
        endpoint: &str,
        weights: &[BackendWeight],
    ) -> Result<(), ControlPlaneError>;

    /// Ask an instance whether it is healthy.
    fn probe_health(&mut self, instance_id: &str) -> Result<Health, ControlPlaneError>;

    /// Read an instance's request and error counters.
    fn get_metrics(&mut self, instance_id: &str) -> Result<InstanceMetrics, ControlPlaneError>;
}

#[cfg(all(
    target_arch = "wasm32",
    feature = "strategy",
    not(feature = "comparator")
))]
pub use host::HostControlPlane;

#[cfg(all(
    target_arch = "wasm32",
    feature = "strategy",
    not(feature = "comparator")
))]
mod host {
    use serde_json::Value;

    use super::{
        BackendWeight, ControlPlane, ControlPlaneError, Health, InstanceInfo, InstanceMetrics,
        InstanceStatus, RuntimeStatus,
    };
    use crate::__bindings::setpoint::plugin::control_plane as wire;

    /// [`ControlPlane`] over the component's real `control-plane` imports.
    #[derive(Debug, Default)]
    pub struct HostControlPlane;

    fn error(e: wire::Error) -> ControlPlaneError {
        match e {
            wire::Error::NotFound(m) => ControlPlaneError::NotFound(m),
            wire::Error::Denied(m) => ControlPlaneError::Denied(m),
            wire::Error::Unavailable(m) => ControlPlaneError::Unavailable(m),
            wire::Error::Invalid(m) => ControlPlaneError::Invalid(m),
            wire::Error::Other(m) => ControlPlaneError::Other(m),
        }
    }

    fn status(s: wire::InstanceStatus) -> InstanceStatus {
        match s {
            wire::InstanceStatus::Created => InstanceStatus::Created,
            wire::InstanceStatus::Running => InstanceStatus::Running,
            wire::InstanceStatus::Stopped => InstanceStatus::Stopped,
            wire::InstanceStatus::Error => InstanceStatus::Error,
            wire::InstanceStatus::ConfigurationChanged => InstanceStatus::ConfigurationChanged,
        }
    }

    fn parse(what: &str, text: &str) -> Result<Value, ControlPlaneError> {
        serde_json::from_str(text).map_err(|e| {
            ControlPlaneError::Other(format!("the host sent {what} that is not JSON: {e}"))
        })
    }

    impl ControlPlane for HostControlPlane {
        fn get_instance(&mut self, instance_id: &str) -> Result<InstanceInfo, ControlPlaneError> {
            let info = wire::get_instance(instance_id).map_err(error)?;
            Ok(InstanceInfo {
                id: info.id,
                name: info.name,
                status: status(info.status),
                platform_type: info.platform_type,
                labels: info.labels,
            })
        }

        fn get_runtime_status(
            &mut self,
            instance_id: &str,
        ) -> Result<RuntimeStatus, ControlPlaneError> {
            let runtime = wire::get_runtime_status(instance_id).map_err(error)?;
            Ok(RuntimeStatus {
                status: status(runtime.status),
                details: parse("runtime details", &runtime.details)?,
            })
        }

        fn get_desired_configuration(
            &mut self,
            instance_id: &str,
        ) -> Result<Value, ControlPlaneError> {
            let text = wire::get_desired_configuration(instance_id).map_err(error)?;
            parse("a desired configuration", &text)
        }

        fn start(
            &mut self,
            instance_id: &str,
            configuration: Option<&Value>,
        ) -> Result<(), ControlPlaneError> {
            let text = configuration.map(Value::to_string);
            wire::start(instance_id, text.as_deref()).map_err(error)
        }

        fn stop(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
            wire::stop(instance_id).map_err(error)
        }

        fn restart(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
            wire::restart(instance_id).map_err(error)
        }

        fn clone_instance(
            &mut self,
            instance_id: &str,
            configuration: &Value,
        ) -> Result<String, ControlPlaneError> {
            wire::clone_instance(instance_id, &configuration.to_string()).map_err(error)
        }

        fn delete_clone(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
            wire::delete_clone(instance_id).map_err(error)
        }

        fn set_traffic_weights(
            &mut self,
            endpoint: &str,
            weights: &[BackendWeight],
        ) -> Result<(), ControlPlaneError> {
            let weights: Vec<wire::BackendWeight> = weights
                .iter()
                .map(|w| wire::BackendWeight {
                    instance_id: w.instance_id.clone(),
                    weight: w.weight,
                })
                .collect();
            wire::set_traffic_weights(endpoint, &weights).map_err(error)
        }

        fn probe_health(&mut self, instance_id: &str) -> Result<Health, ControlPlaneError> {
            let health = wire::probe_health(instance_id).map_err(error)?;
            Ok(Health {
                healthy: health.healthy,
                detail: health.detail,
            })
        }

        fn get_metrics(&mut self, instance_id: &str) -> Result<InstanceMetrics, ControlPlaneError> {
            let metrics = wire::get_metrics(instance_id).map_err(error)?;
            Ok(InstanceMetrics {
                requests: metrics.requests,
                errors: metrics.errors,
            })
        }
    }
}
