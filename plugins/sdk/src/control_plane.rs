//! The control-plane calls a strategy may make (the contract's `instances` import and the
//! optional capabilities `clones`, `traffic` and `metrics`).
//!
//! [`ControlPlane`] mirrors the WIT interfaces with configurations as
//! [`serde_json::Value`]s. The methods of a capability exist only with the SDK's cargo
//! feature of the same name (`clones`, `traffic`, `metrics`; additive, none by default):
//! a strategy's component imports a capability only when it is built with the feature,
//! and the host refuses at load time a strategy that needs a capability its control
//! plane lacks. A strategy declares what it needs in its `Cargo.toml`, for example
//! `setpoint-plugin = { workspace = true, features = ["clones", "traffic"] }`; calling a
//! method of a capability not declared is a compile error (no such method).
//!
//! Why features and not "whatever the strategy calls": the strategy gets a
//! `&mut dyn ControlPlane`, and a trait object's vtable references every method of the
//! trait, so every import would stay alive in every strategy. On wasm32 the strategy export hands a strategy the
//! implementation over the real imports ([`HostControlPlane`]); tests use
//! [`FakeControlPlane`](crate::testing::FakeControlPlane).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a control-plane call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPlaneError {
    /// The instance (or endpoint, or named query) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The call is outside this rollout's scope (another instance, or an operation the
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

/// Lifecycle state of an instance (the contract's neutral `instance-status`: the host
/// maps its control plane's states onto these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Stopped on request.
    Stopped,
    /// Failed (for example its process exited).
    Failed,
    /// Running, but its desired configuration changed since it was started.
    Outdated,
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "Created",
            Self::Running => "Running",
            Self::Stopped => "Stopped",
            Self::Failed => "Failed",
            Self::Outdated => "Outdated",
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
    /// Where it runs, in the control plane's words (for example `Process`).
    pub platform: String,
    /// The key/value labels the control plane attaches to it.
    pub labels: Vec<(String, String)>,
}

/// What the control plane last heard about an instance at runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeStatus {
    /// Its lifecycle state.
    pub status: InstanceStatus,
    /// Whatever else the control plane reports about it (a JSON object).
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

/// Request counters of an instance since it started (the `metrics` capability's
/// `counters`).
///
/// Serialised as `{"requests": n, "errors": n}`, so strategies can keep a reading in
/// their state (see [`crate::analysis`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
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

/// Control-plane calls a strategy may make. The host scopes every call to the rollout's
/// members and the clones this rollout created; anything else is
/// [`ControlPlaneError::Denied`]. In dry-run the mutating calls are recorded and answered
/// with a simulated success.
///
/// The methods marked "capability" exist only with the SDK's cargo feature of that name
/// (`clones`, `traffic`, `metrics`; additive, none by default). A strategy's component
/// imports a capability's interface only when built with its feature, and the host
/// refuses at load time a strategy that needs a capability its control plane lacks:
/// declare what the strategy uses, for example
/// `setpoint-plugin = { workspace = true, features = ["clones", "traffic"] }`.
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

    /// Ask an instance whether it is healthy now. A control plane that cannot probe
    /// answers [`ControlPlaneError::Unavailable`]; judge by `get_runtime_status` then.
    fn probe_health(&mut self, instance_id: &str) -> Result<Health, ControlPlaneError>;

    /// Capability `clones`: create a sibling of `instance_id` that runs `configuration`;
    /// returns the new instance's identifier, which is in this rollout's scope from then
    /// on.
    #[cfg(feature = "clones")]
    fn clone_instance(
        &mut self,
        instance_id: &str,
        configuration: &Value,
    ) -> Result<String, ControlPlaneError>;

    /// Capability `clones`: delete a clone this rollout created.
    #[cfg(feature = "clones")]
    fn delete_clone(&mut self, instance_id: &str) -> Result<(), ControlPlaneError>;

    /// Capability `traffic`: split the requests of `endpoint` (a member's own traffic
    /// address, named by its instance id) across instances by weight.
    #[cfg(feature = "traffic")]
    fn set_traffic_weights(
        &mut self,
        endpoint: &str,
        weights: &[BackendWeight],
    ) -> Result<(), ControlPlaneError>;

    /// Capability `metrics`: an instance's request and error counters.
    #[cfg(feature = "metrics")]
    fn get_counters(&mut self, instance_id: &str) -> Result<Counters, ControlPlaneError>;

    /// Capability `metrics`: evaluate the query policy names `name` for `instance_id`;
    /// `Ok(None)` when it yields no value (for example no requests yet),
    /// [`ControlPlaneError::NotFound`] when policy defines no query of that name,
    /// [`ControlPlaneError::Invalid`] when it yields more than one value.
    #[cfg(feature = "metrics")]
    fn query(&mut self, name: &str, instance_id: &str) -> Result<Option<f64>, ControlPlaneError>;
}

#[cfg(target_arch = "wasm32")]
pub use host::HostControlPlane;

#[cfg(target_arch = "wasm32")]
mod host {
    use serde_json::Value;

    use super::{
        ControlPlane, ControlPlaneError, Health, InstanceInfo, InstanceStatus, RuntimeStatus,
    };
    use crate::__bindings::setpoint::plugin::instances as wire;

    /// [`ControlPlane`] over the component's real imports: `instances`, and `clones`,
    /// `traffic` and `metrics` with the features of those names.
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
            wire::InstanceStatus::Failed => InstanceStatus::Failed,
            wire::InstanceStatus::Outdated => InstanceStatus::Outdated,
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
                platform: info.platform,
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

        fn probe_health(&mut self, instance_id: &str) -> Result<Health, ControlPlaneError> {
            let health = wire::probe_health(instance_id).map_err(error)?;
            Ok(Health {
                healthy: health.healthy,
                detail: health.detail,
            })
        }

        #[cfg(feature = "clones")]
        fn clone_instance(
            &mut self,
            instance_id: &str,
            configuration: &Value,
        ) -> Result<String, ControlPlaneError> {
            use crate::__bindings::setpoint::plugin::clones;
            clones::clone_instance(instance_id, &configuration.to_string()).map_err(error)
        }

        #[cfg(feature = "clones")]
        fn delete_clone(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
            use crate::__bindings::setpoint::plugin::clones;
            clones::delete_clone(instance_id).map_err(error)
        }

        #[cfg(feature = "traffic")]
        fn set_traffic_weights(
            &mut self,
            endpoint: &str,
            weights: &[super::BackendWeight],
        ) -> Result<(), ControlPlaneError> {
            use crate::__bindings::setpoint::plugin::traffic;
            let weights: Vec<traffic::BackendWeight> = weights
                .iter()
                .map(|w| traffic::BackendWeight {
                    instance_id: w.instance_id.clone(),
                    weight: w.weight,
                })
                .collect();
            traffic::set_traffic_weights(endpoint, &weights).map_err(error)
        }

        #[cfg(feature = "metrics")]
        fn get_counters(
            &mut self,
            instance_id: &str,
        ) -> Result<super::Counters, ControlPlaneError> {
            use crate::__bindings::setpoint::plugin::metrics;
            let counters = metrics::get_counters(instance_id).map_err(error)?;
            Ok(super::Counters {
                requests: counters.requests,
                errors: counters.errors,
            })
        }

        #[cfg(feature = "metrics")]
        fn query(
            &mut self,
            name: &str,
            instance_id: &str,
        ) -> Result<Option<f64>, ControlPlaneError> {
            use crate::__bindings::setpoint::plugin::metrics;
            metrics::query(name, instance_id).map_err(error)
        }
    }
}
