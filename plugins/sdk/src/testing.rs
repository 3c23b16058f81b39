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
//!
//! [`Driver`] plays the host: it calls a strategy's `step` (or `abort`) again and again,
//! feeding back the state each call returns and advancing `elapsed` by the delay each
//! requeue asked for.
//!
//! For strategies that clone and move traffic the fake keeps the world they act on: clones
//! (created `Created`, labelled [`CLONE_OF_LABEL`], gone after `delete_clone`), each
//! endpoint's current weights ([`FakeControlPlane::weights`]), and every time traffic was
//! sent to an instance that was not running or had last probed unhealthy
//! ([`FakeControlPlane::traffic_violations`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::marker::PhantomData;
use std::time::Duration;

use serde_json::Value;

use crate::control_plane::{
    BackendWeight, ControlPlane, ControlPlaneError, Counters, Health, InstanceInfo, InstanceStatus,
    RuntimeStatus,
};
use crate::log::Level;
use crate::{Progress, Promote, Rollout, RolloutStatus, Strategy};

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

/// The label a clone carries, naming the instance it was cloned from (as the reference
/// control plane sets it).
pub const CLONE_OF_LABEL: &str = "setpoint.io/clone-of";

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
    /// `ControlPlane::clone_instance` (capability `clones`).
    CloneInstance,
    /// `ControlPlane::delete_clone` (capability `clones`).
    DeleteClone,
    /// `ControlPlane::set_traffic_weights` (capability `traffic`).
    SetTrafficWeights,
    /// [`ControlPlane::probe_health`].
    ProbeHealth,
    /// `ControlPlane::get_counters` (capability `metrics`).
    GetCounters,
    /// `ControlPlane::query` (capability `metrics`).
    Query,
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
    /// `get_counters(instance_id)`.
    GetCounters {
        /// The instance named.
        instance_id: String,
    },
    /// `query(name, instance_id)`.
    Query {
        /// The query named.
        name: String,
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
            Self::GetCounters { .. } => Operation::GetCounters,
            Self::Query { .. } => Operation::Query,
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
/// `get_runtime_status` reports; `probe_health` answers healthy, except for an instance
/// the fake knows as `Created`, `Stopped` or `Failed` (unhealthy); `get_counters` answers
/// zeros; `query` answers [`ControlPlaneError::NotFound`] for a query not scripted with
/// [`FakeControlPlane::with_query`]; `get_instance` and `get_desired_configuration` answer
/// [`ControlPlaneError::NotFound`] for instances not added with
/// [`FakeControlPlane::with_instance`] / [`FakeControlPlane::with_desired_configuration`];
/// clones get the identifiers `<instance>-clone-<n>`, start out `Created` and carry the
/// label [`CLONE_OF_LABEL`]. Once deleted, every call naming a clone answers
/// [`ControlPlaneError::NotFound`] (a scripted failure still comes first).
///
/// Scope: by default every instance may be named. [`FakeControlPlane::for_rollout`] (or
/// [`FakeControlPlane::with_scope`]) scopes the fake as the host scopes a rollout: calls
/// may name its members and the clones created since; any other instance is answered
/// [`ControlPlaneError::Denied`] and listed in [`FakeControlPlane::denied`].
///
/// The methods of the capabilities `clones`, `traffic` and `metrics` exist with the SDK
/// features of the same names, as on [`ControlPlane`].
#[derive(Debug, Default)]
pub struct FakeControlPlane {
    calls: Vec<Call>,
    instances: BTreeMap<String, InstanceInfo>,
    statuses: BTreeMap<String, InstanceStatus>,
    desired: BTreeMap<String, Value>,
    health: BTreeMap<String, VecDeque<Health>>,
    counters: BTreeMap<String, VecDeque<Counters>>,
    queries: BTreeMap<(String, String), VecDeque<Option<f64>>>,
    scope: Option<BTreeSet<String>>,
    denied: Vec<String>,
    failures: BTreeMap<Operation, VecDeque<ControlPlaneError>>,
    clones: u32,
    live_clones: Vec<String>,
    deleted: BTreeSet<String>,
    last_health: BTreeMap<String, bool>,
    weights: BTreeMap<String, Vec<BackendWeight>>,
    violations: Vec<String>,
}

impl FakeControlPlane {
    /// A control plane that knows no instances and answers every call successfully.
    pub fn new() -> Self {
        Self::default()
    }

    /// A control plane scoped to `rollout` as the host scopes it (see the type's
    /// documentation), that knows each member as a `Running` `Process` instance whose
    /// stored desired configuration is the member's `desired`.
    pub fn for_rollout(rollout: &Rollout) -> Self {
        let mut cp =
            Self::new().with_scope(rollout.members().iter().map(|m| m.instance_id.clone()));
        for member in rollout.members() {
            cp = cp
                .with_instance(InstanceInfo {
                    id: member.instance_id.clone(),
                    name: member.instance_id.clone(),
                    status: InstanceStatus::Running,
                    platform: "Process".to_owned(),
                    labels: Vec::new(),
                })
                .with_desired_configuration(member.instance_id.clone(), member.desired.clone());
        }
        cp
    }

    /// Allow calls to name only `instance_ids` and the clones created from now on (as
    /// the host scopes a rollout to its members); any other instance is
    /// [`ControlPlaneError::Denied`].
    #[must_use]
    pub fn with_scope(mut self, instance_ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scope = Some(instance_ids.into_iter().map(Into::into).collect());
        self
    }

    /// Every call denied for naming an instance outside the scope, described.
    pub fn denied(&self) -> &[String] {
        &self.denied
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

    /// Answer successive `get_counters(instance_id)` calls with `counters`, in order; the
    /// last answer repeats.
    #[must_use]
    pub fn with_counters(
        mut self,
        instance_id: impl Into<String>,
        counters: impl IntoIterator<Item = Counters>,
    ) -> Self {
        self.counters
            .insert(instance_id.into(), counters.into_iter().collect());
        self
    }

    /// Answer successive `query(name, instance_id)` calls with `values`, in order (`None`:
    /// the query yields no value); the last answer repeats. A query not scripted answers
    /// [`ControlPlaneError::NotFound`], as the host does for a name policy does not
    /// define; script other failures with [`FakeControlPlane::fail_next`]
    /// ([`Operation::Query`]).
    #[must_use]
    pub fn with_query(
        mut self,
        name: impl Into<String>,
        instance_id: impl Into<String>,
        values: impl IntoIterator<Item = Option<f64>>,
    ) -> Self {
        self.queries.insert(
            (name.into(), instance_id.into()),
            values.into_iter().collect(),
        );
        self
    }

    /// From now on answer `probe_health(instance_id)` with `healthy` (replaces the script).
    pub fn set_health(&mut self, instance_id: impl Into<String>, healthy: bool) -> &mut Self {
        let script = Self::new().with_health(instance_id, [healthy]).health;
        self.health.extend(script);
        self
    }

    /// From now on answer `get_counters(instance_id)` with `counters` (replaces the
    /// script).
    pub fn set_counters(
        &mut self,
        instance_id: impl Into<String>,
        counters: Counters,
    ) -> &mut Self {
        self.counters
            .insert(instance_id.into(), VecDeque::from([counters]));
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

    /// The clones created and not deleted yet, in the order they were created.
    pub fn clones(&self) -> &[String] {
        &self.live_clones
    }

    /// How many clones were created in all (deleted or not).
    pub fn clones_created(&self) -> u32 {
        self.clones
    }

    /// The weights last set on `endpoint`; `None` if none were.
    pub fn weights(&self, endpoint: &str) -> Option<&[BackendWeight]> {
        self.weights.get(endpoint).map(Vec::as_slice)
    }

    /// Every time a `set_traffic_weights` call gave a weight above 0 to an instance that
    /// was deleted, known as not `Running`, or whose last health probe answered
    /// unhealthy, described. Empty when traffic only ever went where it should.
    pub fn traffic_violations(&self) -> &[String] {
        &self.violations
    }

    fn record(&mut self, call: Call) -> Result<(), ControlPlaneError> {
        let operation = call.operation();
        let named: Vec<String> = match &call {
            Call::SetTrafficWeights { endpoint, weights } => std::iter::once(endpoint.clone())
                .chain(weights.iter().map(|w| w.instance_id.clone()))
                .collect(),
            Call::GetInstance { instance_id }
            | Call::GetRuntimeStatus { instance_id }
            | Call::GetDesiredConfiguration { instance_id }
            | Call::Start { instance_id, .. }
            | Call::Stop { instance_id }
            | Call::Restart { instance_id }
            | Call::CloneInstance { instance_id, .. }
            | Call::DeleteClone { instance_id }
            | Call::ProbeHealth { instance_id }
            | Call::GetCounters { instance_id }
            | Call::Query { instance_id, .. } => vec![instance_id.clone()],
        };
        let outside = self
            .scope
            .as_ref()
            .and_then(|scope| named.iter().find(|id| !scope.contains(*id)).cloned());
        let target = match &call {
            Call::SetTrafficWeights { .. } => None,
            Call::GetInstance { instance_id }
            | Call::GetRuntimeStatus { instance_id }
            | Call::GetDesiredConfiguration { instance_id }
            | Call::Start { instance_id, .. }
            | Call::Stop { instance_id }
            | Call::Restart { instance_id }
            | Call::CloneInstance { instance_id, .. }
            | Call::DeleteClone { instance_id }
            | Call::ProbeHealth { instance_id }
            | Call::GetCounters { instance_id }
            | Call::Query { instance_id, .. } => Some(instance_id.clone()),
        };
        self.calls.push(call);
        if let Some(id) = outside {
            self.denied.push(format!(
                "call {}: {operation:?} names {id}, outside this rollout",
                self.calls.len()
            ));
            return Err(ControlPlaneError::Denied(format!(
                "instance {id} is outside this rollout"
            )));
        }
        if let Some(error) = self
            .failures
            .get_mut(&operation)
            .and_then(VecDeque::pop_front)
        {
            return Err(error);
        }
        match target {
            Some(id) if self.deleted.contains(&id) => {
                Err(ControlPlaneError::NotFound(format!("instance {id}")))
            }
            _ => Ok(()),
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

    #[cfg(feature = "clones")]
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
        let source = self.instances.get(instance_id);
        let info = InstanceInfo {
            id: clone.clone(),
            name: source.map_or_else(|| clone.clone(), |s| format!("{}-clone", s.name)),
            status: InstanceStatus::Created,
            platform: source.map_or_else(|| "Process".to_owned(), |s| s.platform.clone()),
            labels: vec![(CLONE_OF_LABEL.to_owned(), instance_id.to_owned())],
        };
        self.instances.insert(clone.clone(), info);
        self.statuses.insert(clone.clone(), InstanceStatus::Created);
        self.desired.insert(clone.clone(), configuration.clone());
        self.live_clones.push(clone.clone());
        if let Some(scope) = &mut self.scope {
            scope.insert(clone.clone());
        }
        Ok(clone)
    }

    #[cfg(feature = "clones")]
    fn delete_clone(&mut self, instance_id: &str) -> Result<(), ControlPlaneError> {
        self.record(Call::DeleteClone {
            instance_id: instance_id.to_owned(),
        })?;
        self.statuses.remove(instance_id);
        self.desired.remove(instance_id);
        self.instances.remove(instance_id);
        self.live_clones.retain(|c| c != instance_id);
        self.deleted.insert(instance_id.to_owned());
        Ok(())
    }

    #[cfg(feature = "traffic")]
    fn set_traffic_weights(
        &mut self,
        endpoint: &str,
        weights: &[BackendWeight],
    ) -> Result<(), ControlPlaneError> {
        self.record(Call::SetTrafficWeights {
            endpoint: endpoint.to_owned(),
            weights: weights.to_vec(),
        })?;
        for backend in weights.iter().filter(|w| w.weight > 0) {
            let id = &backend.instance_id;
            let why = if self.deleted.contains(id) {
                Some("deleted".to_owned())
            } else if let Some(status) = self
                .statuses
                .get(id)
                .filter(|s| **s != InstanceStatus::Running)
            {
                Some(format!("{status}"))
            } else if self.last_health.get(id) == Some(&false) {
                Some("unhealthy at its last probe".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                self.violations.push(format!(
                    "call {}: weight {} to {id} on endpoint {endpoint}, which is {why}",
                    self.calls.len(),
                    backend.weight
                ));
            }
        }
        self.weights.insert(endpoint.to_owned(), weights.to_vec());
        Ok(())
    }

    fn probe_health(&mut self, instance_id: &str) -> Result<Health, ControlPlaneError> {
        self.record(Call::ProbeHealth {
            instance_id: instance_id.to_owned(),
        })?;
        let health = next_answer(self.health.get_mut(instance_id)).unwrap_or_else(|| {
            match self.statuses.get(instance_id) {
                Some(
                    status @ (InstanceStatus::Created
                    | InstanceStatus::Stopped
                    | InstanceStatus::Failed),
                ) => Health {
                    healthy: false,
                    detail: format!("fake probe: unhealthy (unscripted, {status})"),
                },
                _ => Health {
                    healthy: true,
                    detail: "fake probe: healthy (unscripted)".to_owned(),
                },
            }
        });
        self.last_health
            .insert(instance_id.to_owned(), health.healthy);
        Ok(health)
    }

    #[cfg(feature = "metrics")]
    fn get_counters(&mut self, instance_id: &str) -> Result<Counters, ControlPlaneError> {
        self.record(Call::GetCounters {
            instance_id: instance_id.to_owned(),
        })?;
        Ok(next_answer(self.counters.get_mut(instance_id)).unwrap_or_default())
    }

    #[cfg(feature = "metrics")]
    fn query(&mut self, name: &str, instance_id: &str) -> Result<Option<f64>, ControlPlaneError> {
        self.record(Call::Query {
            name: name.to_owned(),
            instance_id: instance_id.to_owned(),
        })?;
        next_answer(
            self.queries
                .get_mut(&(name.to_owned(), instance_id.to_owned())),
        )
        .ok_or_else(|| ControlPlaneError::NotFound(format!("no query named {name}")))
    }
}

/// Plays the host for strategy `S`: calls `step` or `abort` with the state the previous
/// call returned.
///
/// Time: [`Driver::step`] comes when the previous call's requeue asked (`elapsed`
/// advances by its delay; an approval advances nothing); [`Driver::promote`] and the
/// first [`Driver::abort`] come at once, as an operator's command does; an `abort` after
/// an abort's requeue waits for its delay. [`Driver::wait`] adds time before the next
/// call.
///
/// ```
/// use setpoint_plugin::testing::{Driver, FakeControlPlane};
/// use setpoint_plugin::{ControlPlane, Metadata, Progress, Rollout, Strategy};
/// use setpoint_plugin::serde_json::json;
/// use std::time::Duration;
///
/// struct TwoSteps;
/// impl Strategy for TwoSteps {
///     fn metadata() -> Metadata { Metadata::strategy("two-steps", "0.1.0", "") }
///     fn step(r: &Rollout, _: &mut dyn ControlPlane) -> Progress {
///         match r.raw_state { None => Progress::requeue(Duration::from_secs(1), &1, "wait"), Some(_) => Progress::done("ok") }
///     }
///     fn abort(_: &Rollout, _: &mut dyn ControlPlane) -> Progress { Progress::done("nothing") }
/// }
///
/// let mut driver = Driver::<TwoSteps>::new(Rollout::new("db", json!({})), FakeControlPlane::new());
/// assert!(matches!(driver.step(), Progress::Requeue { .. }));
/// assert_eq!(driver.step(), Progress::done("ok"));
/// assert_eq!(driver.elapsed_ms(), 1000);
/// ```
#[derive(Debug)]
pub struct Driver<S> {
    /// The control plane the strategy acts on.
    pub cp: FakeControlPlane,
    /// The rollout of the last call (of the first, before any): params, desired and
    /// actual configurations can be changed between calls.
    pub rollout: Rollout,
    last_input: Option<Rollout>,
    last: Option<Progress>,
    last_was_abort: bool,
    extra: Duration,
    calls: u32,
    strategy: PhantomData<fn() -> S>,
}

impl<S: Strategy> Driver<S> {
    /// A rollout about to take its first step against `cp`.
    pub fn new(rollout: Rollout, cp: FakeControlPlane) -> Self {
        Self {
            cp,
            rollout,
            last_input: None,
            last: None,
            last_was_abort: false,
            extra: Duration::ZERO,
            calls: 0,
            strategy: PhantomData,
        }
    }

    /// Call `step` with the state of the previous call, once its requeue delay passed.
    ///
    /// # Panics
    ///
    /// When the previous call ended the rollout (done or failed).
    pub fn step(&mut self) -> Progress {
        let input = self.next_input(true);
        self.call(input, S::step, false)
    }

    /// Call `step` at once with `$promote` set to `promote`, for this one call (as the
    /// host delivers `setpoint promote`).
    ///
    /// # Panics
    ///
    /// When the previous call ended the rollout.
    pub fn promote(&mut self, promote: Promote) -> Progress {
        let input = self.next_input(false).with_promote(Some(promote));
        self.call(input, S::step, false)
    }

    /// Call `abort` with the state of the previous call: at once after a `step`, after
    /// the requeue delay after an `abort`.
    ///
    /// # Panics
    ///
    /// When the previous call ended the rollout.
    pub fn abort(&mut self) -> Progress {
        let input = self.next_input(self.last_was_abort);
        self.call(input, S::abort, true)
    }

    /// Call `step` again with exactly the input of the previous call, as a host does
    /// after it was killed before it saved what that call returned.
    ///
    /// # Panics
    ///
    /// Before the first call.
    pub fn replay(&mut self) -> Progress {
        let input = self
            .last_input
            .clone()
            .expect("replay needs a previous call");
        let abort = self.last_was_abort;
        self.call(input, if abort { S::abort } else { S::step }, abort)
    }

    /// Call `abort` again after the previous `abort` failed, as the host retries an undo
    /// that failed and may be retried: the failed call's input (its state), `time`
    /// later, with `$undo = "again"` for this one call.
    ///
    /// # Panics
    ///
    /// Before the first call, or when the previous call was not an `abort`.
    pub fn retry_abort(&mut self, time: Duration) -> Progress {
        assert!(self.last_was_abort, "retry_abort follows a failed abort");
        let mut input = self
            .last_input
            .clone()
            .expect("retry_abort needs a previous call");
        input.step += 1;
        input.elapsed += time;
        if let Value::Object(params) = &mut input.params {
            params.insert(
                crate::rollout::UNDO_PARAM.into(),
                Value::String("again".into()),
            );
        }
        let progress = self.call(input, S::abort, true);
        if let Value::Object(params) = &mut self.rollout.params {
            params.remove(crate::rollout::UNDO_PARAM);
        }
        progress
    }

    /// Let `time` pass before the next call (on top of any requeue delay).
    pub fn wait(&mut self, time: Duration) {
        self.extra += time;
    }

    /// `elapsed` of the last call, in milliseconds.
    pub fn elapsed_ms(&self) -> u64 {
        self.rollout.elapsed_ms()
    }

    /// How many calls were made.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// What the last call returned.
    pub fn last(&self) -> Option<&Progress> {
        self.last.as_ref()
    }

    /// The state the last call returned, parsed; `None` if it ended the rollout.
    pub fn state(&self) -> Option<Value> {
        self.last
            .as_ref()?
            .state()
            .map(|text| serde_json::from_str(text).expect("the state is JSON"))
    }

    /// The `status` object of the state the last call returned.
    pub fn status(&self) -> Option<RolloutStatus> {
        serde_json::from_value(self.state()?.get("status")?.clone()).ok()
    }

    fn next_input(&mut self, after_requeue: bool) -> Rollout {
        let mut input = self.rollout.clone();
        let Some(last) = &self.last else {
            input.elapsed += std::mem::take(&mut self.extra);
            return input;
        };
        assert!(
            !last.is_terminal(),
            "the rollout ended with {last:?}; there is no next call"
        );
        input.raw_state = last.state().map(str::to_owned);
        input.step += 1;
        if after_requeue && let Progress::Requeue { after, .. } = last {
            input.elapsed += *after;
        }
        input.elapsed += std::mem::take(&mut self.extra);
        input
    }

    fn call(
        &mut self,
        input: Rollout,
        f: fn(&Rollout, &mut dyn ControlPlane) -> Progress,
        abort: bool,
    ) -> Progress {
        let progress = f(&input, &mut self.cp);
        self.calls += 1;
        self.rollout = input.clone().with_promote(None);
        self.last_input = Some(input);
        self.last = Some(progress.clone());
        self.last_was_abort = abort;
        progress
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
    fn clones_are_labelled_created_and_gone_once_deleted() {
        let mut cp = FakeControlPlane::new();
        let clone = cp.clone_instance("a", &json!({})).unwrap();
        assert_eq!(cp.status(&clone), Some(InstanceStatus::Created));
        assert!(!cp.probe_health(&clone).unwrap().healthy);
        let info = cp.get_instance(&clone).unwrap();
        assert_eq!(info.labels, [(CLONE_OF_LABEL.to_owned(), "a".to_owned())]);
        assert_eq!(cp.clones(), std::slice::from_ref(&clone));
        cp.delete_clone(&clone).unwrap();
        assert!(cp.clones().is_empty());
        assert_eq!(cp.clones_created(), 1);
        assert!(matches!(
            cp.delete_clone(&clone),
            Err(ControlPlaneError::NotFound(_))
        ));
        assert!(matches!(
            cp.probe_health(&clone),
            Err(ControlPlaneError::NotFound(_))
        ));
    }

    #[test]
    fn weights_are_kept_and_traffic_to_a_bad_backend_is_reported() {
        let mut cp = FakeControlPlane::new().with_health("b", [false]);
        let both = [BackendWeight::new("a", 90), BackendWeight::new("b", 10)];
        cp.set_traffic_weights("a", &both).unwrap();
        assert!(cp.traffic_violations().is_empty(), "b was never probed");
        assert!(!cp.probe_health("b").unwrap().healthy);
        cp.stop("a").unwrap();
        cp.set_traffic_weights("a", &both).unwrap();
        assert_eq!(cp.weights("a"), Some(&both[..]));
        assert_eq!(
            cp.traffic_violations(),
            [
                "call 4: weight 90 to a on endpoint a, which is Stopped",
                "call 4: weight 10 to b on endpoint a, which is unhealthy at its last probe"
            ]
        );
        cp.set_health("b", true);
        cp.set_counters(
            "b",
            Counters {
                requests: 3,
                errors: 1,
            },
        );
        assert!(cp.probe_health("b").unwrap().healthy);
        assert_eq!(cp.get_counters("b").unwrap().requests, 3);
    }

    #[test]
    fn a_fake_for_a_group_knows_its_members_and_denies_other_instances() {
        let rollout = Rollout::for_group(
            "app=orders",
            [
                crate::Member::new("b", json!({"v": 2})),
                crate::Member::new("a", json!({"v": 2})),
            ],
        );
        let mut cp = FakeControlPlane::for_rollout(&rollout);
        assert_eq!(cp.get_desired_configuration("a").unwrap(), json!({"v": 2}));
        assert_eq!(
            cp.get_instance("b").unwrap().status,
            InstanceStatus::Running
        );
        cp.stop("b").unwrap();
        assert!(matches!(cp.stop("c"), Err(ControlPlaneError::Denied(_))));
        let clone = cp.clone_instance("a", &json!({"v": 2})).unwrap();
        cp.set_traffic_weights(
            "a",
            &[BackendWeight::new("a", 50), BackendWeight::new(&clone, 50)],
        )
        .unwrap();
        assert!(matches!(
            cp.set_traffic_weights("a", &[BackendWeight::new("c", 1)]),
            Err(ControlPlaneError::Denied(_))
        ));
        assert_eq!(cp.denied().len(), 2, "{:?}", cp.denied());
        assert!(cp.denied()[0].contains("names c"), "{:?}", cp.denied());
        // Unscoped, the fake lets every instance be named.
        assert!(FakeControlPlane::new().stop("c").is_ok());
    }

    #[test]
    fn queries_answer_from_their_script_and_unknown_names_are_not_found() {
        let mut cp = FakeControlPlane::new().with_query("error-rate", "a", [None, Some(0.5)]);
        assert_eq!(cp.query("error-rate", "a"), Ok(None));
        assert_eq!(cp.query("error-rate", "a"), Ok(Some(0.5)));
        assert_eq!(cp.query("error-rate", "a"), Ok(Some(0.5)));
        assert!(matches!(
            cp.query("latency", "a"),
            Err(ControlPlaneError::NotFound(_))
        ));
        cp.fail_next(
            Operation::Query,
            ControlPlaneError::Invalid("two series".into()),
        );
        assert!(matches!(
            cp.query("error-rate", "a"),
            Err(ControlPlaneError::Invalid(_))
        ));
        assert_eq!(
            cp.calls().last(),
            Some(&Call::Query {
                name: "error-rate".into(),
                instance_id: "a".into()
            })
        );
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
