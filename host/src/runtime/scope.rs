//! The control-plane imports of the strategy world (`instances`, and the capabilities
//! `clones`, `traffic` and `metrics`), scoped to one rollout.
//!
//! The embedder supplies a [`StrategyHost`] (the daemon's is its control-plane client).
//! For each strategy call the runtime wraps it in a [`ScopedControlPlane`] that lets the
//! strategy touch only the rollout's members and the clones it created during this
//! rollout, answers mutating calls with a simulated success in dry-run, and records
//! every call ([`ImportCall`]) so the caller can audit them. It also keeps the time the
//! strategy spent blocked in the [`StrategyHost`], which the call's time budget leaves
//! out: that wait is bounded by the host's own request timeouts, not by the plugin's
//! budget (see `PluginRuntime`'s `call`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use super::bindings::instances::{
    Error as CpError, Health, InstanceInfo, InstanceStatus, RuntimeStatus,
};
pub use super::bindings::metrics::Counters;
pub use super::bindings::traffic::BackendWeight;
use super::bindings::{clones, instances, metrics, traffic};
use super::host::HostState;

/// The control plane as a strategy sees it, implemented by the embedder.
///
/// Calls are synchronous: plugin calls run on a blocking thread, so an implementation
/// over an async client blocks on its runtime handle. Time spent in these calls does not
/// count against the strategy's time budget, so an implementation must bound each call
/// itself (a request timeout). The calls that need control-plane extensions (clones,
/// traffic weights, metrics) default to `unavailable`, so a control plane without them
/// still runs the strategies that do not need them.
pub trait StrategyHost: Send + Sync {
    /// Describe an instance.
    fn get_instance(&self, id: &str) -> Result<InstanceInfo, CpError>;
    /// What the control plane last heard about an instance at runtime.
    fn get_runtime_status(&self, id: &str) -> Result<RuntimeStatus, CpError>;
    /// The instance's desired configuration, JSON text.
    fn get_desired_configuration(&self, id: &str) -> Result<String, CpError>;
    /// Start an instance, with `configuration` or its stored desired configuration.
    fn start(&self, id: &str, configuration: Option<&str>) -> Result<(), CpError>;
    /// Stop an instance.
    fn stop(&self, id: &str) -> Result<(), CpError>;
    /// Restart an instance.
    fn restart(&self, id: &str) -> Result<(), CpError>;
    /// Ask an instance whether it is healthy.
    fn probe_health(&self, id: &str) -> Result<Health, CpError>;
    /// Create a sibling of `id` running `configuration`; returns the new id.
    fn clone_instance(&self, id: &str, configuration: &str) -> Result<String, CpError> {
        let _ = (id, configuration);
        Err(CpError::Unavailable(
            "this control plane does not support clones".into(),
        ))
    }
    /// Delete a clone (only ever called for clones of the rollout).
    fn delete_clone(&self, id: &str) -> Result<(), CpError> {
        let _ = id;
        Err(CpError::Unavailable(
            "this control plane does not support deleting clones".into(),
        ))
    }
    /// Split an endpoint's requests across instances by weight.
    fn set_traffic_weights(
        &self,
        endpoint: &str,
        weights: &[BackendWeight],
    ) -> Result<(), CpError> {
        let _ = (endpoint, weights);
        Err(CpError::Unavailable(
            "this control plane does not support traffic endpoints".into(),
        ))
    }
    /// Called before every mutating call is sent (not in dry-run), with the import's
    /// name, its target and the configuration it carries: the place to record the intent
    /// durably, so that a crash between the call and the record of its outcome leaves the
    /// call visible as in doubt. An error refuses the call (it is not sent; the strategy
    /// sees the error). The default records nothing.
    /// Returns a token for [`StrategyHost::settle`].
    fn intend(
        &self,
        call: &str,
        target: &str,
        configuration: Option<&str>,
    ) -> Result<Option<i64>, CpError> {
        let _ = (call, target, configuration);
        Ok(None)
    }
    /// Called as soon as the mutating call `intend` returned `token` for has ended, with
    /// its outcome: the place to record it at once, ahead of the step's audit. The
    /// default records nothing.
    fn settle(&self, token: i64, outcome: &CallOutcome) {
        let _ = (token, outcome);
    }
    /// An instance's request and error counters.
    fn get_counters(&self, id: &str) -> Result<Counters, CpError> {
        let _ = id;
        Err(CpError::Unavailable(
            "this control plane does not report instance metrics".into(),
        ))
    }
    /// Evaluate the query policy names `name` for instance `id`; `None` when it yields
    /// no value.
    fn query(&self, name: &str, id: &str) -> Result<Option<f64>, CpError> {
        let _ = id;
        Err(CpError::NotFound(format!(
            "no metric query named `{name}` is defined for this host"
        )))
    }
}

/// The instances a rollout may act on. Persist it with the rollout state so the scope
/// survives a restart of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutScope {
    /// The instance being reconciled; for a group rollout, the member that keys it.
    pub instance_id: String,
    /// The other members of a group rollout (empty for a rollout of one instance).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub members: BTreeSet<String>,
    /// Clones the strategy created during this rollout.
    #[serde(default)]
    pub clones: BTreeSet<String>,
}

impl RolloutScope {
    /// The scope of a new rollout of `instance_id`.
    pub fn new(instance_id: impl Into<String>) -> Self {
        RolloutScope {
            instance_id: instance_id.into(),
            members: BTreeSet::new(),
            clones: BTreeSet::new(),
        }
    }

    /// The scope of a new group rollout keyed by `instance_id`, over it and `members`.
    pub fn group(
        instance_id: impl Into<String>,
        members: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut scope = RolloutScope::new(instance_id);
        scope.members = members
            .into_iter()
            .filter(|m| *m != scope.instance_id)
            .collect();
        scope
    }

    /// Whether `id` is a member of the rollout (not a clone).
    pub fn is_member(&self, id: &str) -> bool {
        id == self.instance_id || self.members.contains(id)
    }

    /// Whether `id` is in scope.
    pub fn allows(&self, id: &str) -> bool {
        self.is_member(id) || self.clones.contains(id)
    }

    /// The members, for messages: `a`, or `a, b and 2 more`.
    fn describe_members(&self) -> String {
        match self.members.len() {
            0 => format!("instance {}", self.instance_id),
            n => format!(
                "instance {} and the {n} other members of its group",
                self.instance_id
            ),
        }
    }
}

/// How one control-plane import call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum CallOutcome {
    /// The control plane did it.
    Ok,
    /// Dry-run: recorded, not sent; the plugin was told it succeeded.
    Simulated,
    /// Out of scope: not sent; the plugin got `denied`.
    Denied(String),
    /// Sent, and the control plane answered with an error.
    Failed(String),
}

/// One control-plane call a strategy made, for the audit log and dry-run plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCall {
    /// The import's WIT name, for example `stop`.
    pub call: String,
    /// The instance (or endpoint) it named.
    pub target: String,
    /// Whether it mutates the control plane.
    pub mutating: bool,
    /// How it ended.
    pub outcome: CallOutcome,
    /// The configuration the call carried: for `start` with a configuration and for
    /// `clone-instance`, parsed (a configuration that is not JSON is kept as a JSON
    /// string of its text); `None` for every other call. Set whatever the outcome, also
    /// when simulated. Not serialised: an audit entry records a digest of it, not the
    /// document.
    #[serde(skip)]
    pub configuration: Option<serde_json::Value>,
    /// The weights a `set-traffic-weights` call carried (audited with it); `None` for
    /// every other call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<Weight>>,
    /// The id of the intent journalled for it (a mutating call that was sent), which its
    /// audit entry names so that the intent is never audited twice.
    #[serde(skip)]
    pub intent: Option<i64>,
}

/// One backend's weight as a `set-traffic-weights` call set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Weight {
    /// The instance serving this share.
    pub instance_id: String,
    /// Its relative weight.
    pub weight: u32,
}

/// How a clone that dry-run pretended to make is named (`dry-run-clone-<instance>-<n>`).
pub const DRY_RUN_CLONE_PREFIX: &str = "dry-run-clone-";

/// The JSON a configuration argument holds, or its text when it is not JSON.
fn parse_configuration(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// A [`StrategyHost`] seen through one rollout's scope.
pub struct ScopedControlPlane {
    host: Arc<dyn StrategyHost>,
    pub(super) scope: RolloutScope,
    dry_run: bool,
    pub(super) calls: Vec<ImportCall>,
    /// Time spent inside `host` so far in this call (the strategy's budget leaves it out).
    pub(super) blocked: Duration,
}

impl std::fmt::Debug for ScopedControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedControlPlane")
            .field("scope", &self.scope)
            .field("dry_run", &self.dry_run)
            .field("calls", &self.calls)
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

impl ScopedControlPlane {
    pub(super) fn new(host: Arc<dyn StrategyHost>, scope: RolloutScope, dry_run: bool) -> Self {
        ScopedControlPlane {
            host,
            scope,
            dry_run,
            calls: Vec::new(),
            blocked: Duration::ZERO,
        }
    }

    fn record(&mut self, call: &str, target: &str, mutating: bool, outcome: CallOutcome) {
        self.record_with(call, target, mutating, outcome, None);
    }

    fn record_with(
        &mut self,
        call: &str,
        target: &str,
        mutating: bool,
        outcome: CallOutcome,
        configuration: Option<&str>,
    ) {
        self.calls.push(ImportCall {
            call: call.to_owned(),
            target: target.to_owned(),
            mutating,
            outcome,
            configuration: configuration.map(parse_configuration),
            weights: None,
            intent: None,
        });
    }

    /// Run `f` on the host, adding the time it takes to [`blocked`](Self::blocked).
    fn on_host<T>(&mut self, f: impl FnOnce(&dyn StrategyHost) -> T) -> T {
        let entered = Instant::now();
        let result = f(self.host.as_ref());
        self.blocked += entered.elapsed();
        result
    }

    fn check_scope(&mut self, call: &str, target: &str, mutating: bool) -> Result<(), CpError> {
        self.check_scope_with(call, target, mutating, None)
    }

    fn check_scope_with(
        &mut self,
        call: &str,
        target: &str,
        mutating: bool,
        configuration: Option<&str>,
    ) -> Result<(), CpError> {
        if self.scope.allows(target) {
            return Ok(());
        }
        let why = format!(
            "`{call}` on instance {target} denied: this rollout may act only on {} and the clones it created",
            self.scope.describe_members()
        );
        tracing::warn!(call, target, instance = %self.scope.instance_id, "strategy call out of scope denied");
        self.record_with(
            call,
            target,
            mutating,
            CallOutcome::Denied(why.clone()),
            configuration,
        );
        Err(CpError::Denied(why))
    }

    fn read<T>(
        &mut self,
        call: &str,
        target: &str,
        f: impl FnOnce(&dyn StrategyHost) -> Result<T, CpError>,
    ) -> Result<T, CpError> {
        self.check_scope(call, target, false)?;
        let result = self.on_host(f);
        let outcome = match &result {
            Ok(_) => CallOutcome::Ok,
            Err(e) => CallOutcome::Failed(describe(e)),
        };
        self.record(call, target, false, outcome);
        result
    }

    /// A mutating call; `configuration` is the configuration it carries, recorded with it.
    fn mutate<T>(
        &mut self,
        call: &str,
        target: &str,
        configuration: Option<&str>,
        simulated: impl FnOnce(&mut Self) -> T,
        f: impl FnOnce(&dyn StrategyHost) -> Result<T, CpError>,
    ) -> Result<T, CpError> {
        self.check_scope_with(call, target, true, configuration)?;
        if self.dry_run {
            self.record_with(call, target, true, CallOutcome::Simulated, configuration);
            return Ok(simulated(self));
        }
        let token = match self.on_host(|h| h.intend(call, target, configuration)) {
            Ok(token) => token,
            Err(e) => {
                self.record_with(
                    call,
                    target,
                    true,
                    CallOutcome::Failed(format!("not sent: {}", describe(&e))),
                    configuration,
                );
                return Err(e);
            }
        };
        let result = self.on_host(f);
        let outcome = match &result {
            Ok(_) => CallOutcome::Ok,
            Err(e) => CallOutcome::Failed(describe(e)),
        };
        if let Some(token) = token {
            self.on_host(|h| h.settle(token, &outcome));
        }
        self.record_with(call, target, true, outcome, configuration);
        if let Some(last) = self.calls.last_mut() {
            last.intent = token;
        }
        result
    }
}

fn describe(e: &CpError) -> String {
    match e {
        CpError::NotFound(m) => format!("not found: {m}"),
        CpError::Denied(m) => format!("denied: {m}"),
        CpError::Unavailable(m) => format!("unavailable: {m}"),
        CpError::Invalid(m) => format!("invalid: {m}"),
        CpError::Other(m) => m.clone(),
    }
}

impl HostState {
    fn scoped(&mut self, call: &str) -> Result<&mut ScopedControlPlane, CpError> {
        self.control_plane.as_mut().ok_or_else(|| {
            CpError::Denied(format!(
                "`{call}` denied: control-plane calls are available only during a strategy's step or abort"
            ))
        })
    }
}

impl instances::Host for HostState {
    fn get_instance(&mut self, id: String) -> Result<InstanceInfo, CpError> {
        self.scoped("get-instance")?
            .read("get-instance", &id, |h| h.get_instance(&id))
    }

    fn get_runtime_status(&mut self, id: String) -> Result<RuntimeStatus, CpError> {
        self.scoped("get-runtime-status")?
            .read("get-runtime-status", &id, |h| h.get_runtime_status(&id))
    }

    fn get_desired_configuration(&mut self, id: String) -> Result<String, CpError> {
        self.scoped("get-desired-configuration")?
            .read("get-desired-configuration", &id, |h| {
                h.get_desired_configuration(&id)
            })
    }

    fn start(&mut self, id: String, configuration: Option<String>) -> Result<(), CpError> {
        self.scoped("start")?.mutate(
            "start",
            &id,
            configuration.as_deref(),
            |_| (),
            |h| h.start(&id, configuration.as_deref()),
        )
    }

    fn stop(&mut self, id: String) -> Result<(), CpError> {
        self.scoped("stop")?
            .mutate("stop", &id, None, |_| (), |h| h.stop(&id))
    }

    fn restart(&mut self, id: String) -> Result<(), CpError> {
        self.scoped("restart")?
            .mutate("restart", &id, None, |_| (), |h| h.restart(&id))
    }

    fn probe_health(&mut self, id: String) -> Result<Health, CpError> {
        let cp = self.scoped("probe-health")?;
        if cp.dry_run && id.starts_with(DRY_RUN_CLONE_PREFIX) {
            // A clone that dry-run only pretended to make answers as a healthy one would,
            // so a plan goes on past the wait for it.
            cp.record("probe-health", &id, false, CallOutcome::Simulated);
            return Ok(Health {
                healthy: true,
                detail: "simulated clone (dry-run)".into(),
            });
        }
        cp.read("probe-health", &id, |h| h.probe_health(&id))
    }
}

impl clones::Host for HostState {
    fn clone_instance(&mut self, id: String, configuration: String) -> Result<String, CpError> {
        let cp = self.scoped("clone-instance")?;
        let new_id = cp.mutate(
            "clone-instance",
            &id,
            Some(&configuration),
            |cp| {
                format!(
                    "{DRY_RUN_CLONE_PREFIX}{}-{}",
                    cp.scope.instance_id,
                    cp.scope.clones.len() + 1
                )
            },
            |h| h.clone_instance(&id, &configuration),
        )?;
        cp.scope.clones.insert(new_id.clone());
        Ok(new_id)
    }

    fn delete_clone(&mut self, id: String) -> Result<(), CpError> {
        let cp = self.scoped("delete-clone")?;
        if !cp.scope.clones.contains(&id) {
            let why = format!(
                "`delete-clone` on instance {id} denied: only clones created by this rollout can be deleted"
            );
            cp.record("delete-clone", &id, true, CallOutcome::Denied(why.clone()));
            return Err(CpError::Denied(why));
        }
        cp.mutate("delete-clone", &id, None, |_| (), |h| h.delete_clone(&id))?;
        cp.scope.clones.remove(&id);
        Ok(())
    }
}

impl traffic::Host for HostState {
    fn set_traffic_weights(
        &mut self,
        endpoint: String,
        weights: Vec<BackendWeight>,
    ) -> Result<(), CpError> {
        let cp = self.scoped("set-traffic-weights")?;
        let target = format!("endpoint {endpoint}");
        let sent: Vec<Weight> = weights
            .iter()
            .map(|w| Weight {
                instance_id: w.instance_id.clone(),
                weight: w.weight,
            })
            .collect();
        let record = |cp: &mut ScopedControlPlane, outcome: CallOutcome| {
            cp.record("set-traffic-weights", &target, true, outcome);
            if let Some(last) = cp.calls.last_mut() {
                last.weights = Some(sent.clone());
            }
        };
        // An instance's traffic address is the endpoint named after it: a rollout may
        // steer only its own instance's endpoint, and only to its instance and clones.
        if !cp.scope.is_member(&endpoint) {
            let why = format!(
                "`set-traffic-weights` on endpoint {endpoint} denied: this rollout may set weights only on the endpoints of its members, named by their instance ids (here `{}`)",
                cp.scope.instance_id
            );
            tracing::warn!(endpoint, instance = %cp.scope.instance_id, "strategy set weights on another endpoint; denied");
            record(cp, CallOutcome::Denied(why.clone()));
            return Err(CpError::Denied(why));
        }
        // An endpoint's traffic may go to its own instance and to clones, never to
        // another member of a group.
        let allowed = |id: &str| id == endpoint || cp.scope.clones.contains(id);
        if let Some(w) = weights.iter().find(|w| !allowed(&w.instance_id)) {
            let why = format!(
                "`set-traffic-weights` naming instance {} denied: this rollout may send the traffic of endpoint {endpoint} only to instance {endpoint} and the clones it created",
                w.instance_id
            );
            tracing::warn!(target = %w.instance_id, instance = %cp.scope.instance_id, "strategy weights name an instance out of scope; denied");
            record(cp, CallOutcome::Denied(why.clone()));
            return Err(CpError::Denied(why));
        }
        if cp.dry_run {
            record(cp, CallOutcome::Simulated);
            return Ok(());
        }
        // Journalled like every other mutating call (see `mutate`): not sent unless its
        // intent is recorded.
        let token = match cp.on_host(|h| h.intend("set-traffic-weights", &target, None)) {
            Ok(token) => token,
            Err(e) => {
                record(
                    cp,
                    CallOutcome::Failed(format!("not sent: {}", describe(&e))),
                );
                return Err(e);
            }
        };
        let result = cp.on_host(|h| h.set_traffic_weights(&endpoint, &weights));
        let outcome = match &result {
            Ok(()) => CallOutcome::Ok,
            Err(e) => CallOutcome::Failed(describe(e)),
        };
        if let Some(token) = token {
            cp.on_host(|h| h.settle(token, &outcome));
        }
        record(cp, outcome);
        if let Some(last) = cp.calls.last_mut() {
            last.intent = token;
        }
        result
    }
}

impl metrics::Host for HostState {
    fn get_counters(&mut self, id: String) -> Result<Counters, CpError> {
        let cp = self.scoped("get-counters")?;
        if cp.dry_run && id.starts_with(DRY_RUN_CLONE_PREFIX) {
            // A simulated clone serves 1,000 requests between two readings, none failed:
            // the plan shows an analysis that passes.
            let reads = cp
                .calls
                .iter()
                .filter(|c| c.call == "get-counters" && c.target == id)
                .count() as u64;
            cp.record("get-counters", &id, false, CallOutcome::Simulated);
            return Ok(Counters {
                requests: 1_000 * reads,
                errors: 0,
            });
        }
        cp.read("get-counters", &id, |h| h.get_counters(&id))
    }

    fn query(&mut self, name: String, id: String) -> Result<Option<f64>, CpError> {
        let cp = self.scoped("query")?;
        let target = format!("{id} ({name})");
        if !cp.scope.allows(&id) {
            return cp.check_scope("query", &id, false).map(|()| None);
        }
        if cp.dry_run && id.starts_with(DRY_RUN_CLONE_PREFIX) {
            // A simulated clone has no figures: the plan shows an analysis that waits.
            cp.record("query", &target, false, CallOutcome::Simulated);
            return Ok(None);
        }
        let result = cp.on_host(|h| h.query(&name, &id));
        let outcome = match &result {
            Ok(_) => CallOutcome::Ok,
            Err(e) => CallOutcome::Failed(describe(e)),
        };
        cp.record("query", &target, false, outcome);
        result
    }
}

#[cfg(test)]
mod tests {
    //! The scope of a group rollout, through the import implementations a strategy
    //! calls, over a recording [`StrategyHost`].
    use std::sync::Mutex;

    use super::*;

    /// Records what reaches the control plane; every call succeeds.
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn note(&self, what: String) {
            self.sent.lock().unwrap().push(what);
        }
        fn sent(&self) -> Vec<String> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl StrategyHost for Recorder {
        fn get_instance(&self, id: &str) -> Result<InstanceInfo, CpError> {
            self.note(format!("get-instance {id}"));
            Err(CpError::NotFound(id.into()))
        }
        fn get_runtime_status(&self, id: &str) -> Result<RuntimeStatus, CpError> {
            Err(CpError::NotFound(id.into()))
        }
        fn get_desired_configuration(&self, id: &str) -> Result<String, CpError> {
            self.note(format!("get-desired-configuration {id}"));
            Ok("{}".into())
        }
        fn start(&self, id: &str, _: Option<&str>) -> Result<(), CpError> {
            self.note(format!("start {id}"));
            Ok(())
        }
        fn stop(&self, id: &str) -> Result<(), CpError> {
            self.note(format!("stop {id}"));
            Ok(())
        }
        fn restart(&self, id: &str) -> Result<(), CpError> {
            self.note(format!("restart {id}"));
            Ok(())
        }
        fn probe_health(&self, id: &str) -> Result<Health, CpError> {
            self.note(format!("probe-health {id}"));
            Ok(Health {
                healthy: true,
                detail: String::new(),
            })
        }
        fn clone_instance(&self, id: &str, _: &str) -> Result<String, CpError> {
            self.note(format!("clone-instance {id}"));
            Ok(format!("{id}-clone"))
        }
        fn delete_clone(&self, id: &str) -> Result<(), CpError> {
            self.note(format!("delete-clone {id}"));
            Ok(())
        }
        fn set_traffic_weights(&self, endpoint: &str, _: &[BackendWeight]) -> Result<(), CpError> {
            self.note(format!("set-traffic-weights {endpoint}"));
            Ok(())
        }
    }

    /// A strategy call's host state for a group rollout over m1 (its key), m2 and m3.
    fn group_call(recorder: &Arc<Recorder>) -> HostState {
        let mut state = HostState::new("rolling@0.2.0".into(), "m1", 64 << 20);
        let scope = RolloutScope::group("m1", ["m1", "m2", "m3"].map(String::from));
        state.control_plane = Some(ScopedControlPlane::new(
            recorder.clone() as Arc<dyn StrategyHost>,
            scope,
            false,
        ));
        state
    }

    fn denied(result: Result<impl std::fmt::Debug, CpError>) -> String {
        match result {
            Err(CpError::Denied(why)) => why,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn weight(id: &str, weight: u32) -> BackendWeight {
        BackendWeight {
            instance_id: id.into(),
            weight,
        }
    }

    #[test]
    fn a_group_rollout_acts_on_its_members_and_its_clones_and_nothing_else() {
        let recorder = Arc::new(Recorder::default());
        let mut state = group_call(&recorder);
        // Every member, not only the one that keys the rollout.
        instances::Host::stop(&mut state, "m2".into()).unwrap();
        instances::Host::start(&mut state, "m3".into(), None).unwrap();
        instances::Host::get_desired_configuration(&mut state, "m3".into()).unwrap();
        // An instance outside the group: denied, never sent, recorded as denied.
        let why = denied(instances::Host::stop(&mut state, "other".into()));
        assert!(
            why.contains("other") && why.contains("the 2 other members of its group"),
            "{why}"
        );
        denied(instances::Host::get_desired_configuration(
            &mut state,
            "other".into(),
        ));
        denied(clones::Host::clone_instance(
            &mut state,
            "other".into(),
            "{}".into(),
        ));
        // A clone of a member joins the scope until it is deleted.
        let clone = clones::Host::clone_instance(&mut state, "m2".into(), "{}".into()).unwrap();
        instances::Host::probe_health(&mut state, clone.clone()).unwrap();
        clones::Host::delete_clone(&mut state, clone.clone()).unwrap();
        denied(instances::Host::probe_health(&mut state, clone.clone()));
        // A member is no clone: it cannot be deleted.
        denied(clones::Host::delete_clone(&mut state, "m3".into()));
        assert_eq!(
            recorder.sent(),
            [
                "stop m2",
                "start m3",
                "get-desired-configuration m3",
                "clone-instance m2",
                "probe-health m2-clone",
                "delete-clone m2-clone",
            ]
        );
        let calls = &state.control_plane.as_ref().unwrap().calls;
        let denials: Vec<&str> = calls
            .iter()
            .filter(|c| matches!(c.outcome, CallOutcome::Denied(_)))
            .map(|c| c.target.as_str())
            .collect();
        assert_eq!(denials, ["other", "other", "other", "m2-clone", "m3"]);
    }

    #[test]
    fn a_group_rollout_steers_each_members_endpoint_only_to_it_and_its_clones() {
        let recorder = Arc::new(Recorder::default());
        let mut state = group_call(&recorder);
        let clone = clones::Host::clone_instance(&mut state, "m2".into(), "{}".into()).unwrap();
        traffic::Host::set_traffic_weights(
            &mut state,
            "m2".into(),
            vec![weight("m2", 50), weight(&clone, 50)],
        )
        .unwrap();
        // Another member's traffic may not be sent to m2, nor m2's to m3.
        let why = denied(traffic::Host::set_traffic_weights(
            &mut state,
            "m2".into(),
            vec![weight("m2", 50), weight("m3", 50)],
        ));
        assert!(why.contains("naming instance m3"), "{why}");
        // An endpoint outside the group.
        denied(traffic::Host::set_traffic_weights(
            &mut state,
            "other".into(),
            vec![weight("other", 100)],
        ));
        assert_eq!(
            recorder.sent(),
            ["clone-instance m2", "set-traffic-weights m2"]
        );
    }
}
