//! The controller: one reconcile of one instance — observe, judge, decide, act, record.
//!
//! Start at [`Controller::reconcile`]. It is level-triggered and idempotent: whatever
//! triggered it (resync, change feed, manual request, requeue), it
//!
//! 1. **observes** the instance, its desired configuration and what it *runs* (the
//!    control plane's running configuration where it offers one, the host's applied
//!    record only where it does not: [`ActualSource`]), plus the host's records of it
//!    (rollout, given-up revision, abort request, approval) — [`Controller::observe`];
//! 2. **judges** it: [`decide::classify`], and the comparator chosen by policy when the
//!    configurations differ;
//! 3. **decides** with the pure [`decide::decide`], the same function `setpoint diff`
//!    ([`Controller::plan`]) prints;
//! 4. **acts** on the decision (`rollout.rs`: start, step, supersede, abort a rollout)
//!    and **records** conditions, audit entries and metrics (`records.rs`).
//!
//! A strategy that must wait returns "requeue after"; its state is persisted first, so a
//! rollout resumes after a restart. A rollout is bound to the desired revision (digest)
//! it started for; nothing is recorded as applied that a strategy did not send, and an
//! instance is `Synced` only when what it runs equals its desired configuration.

mod bridge;
pub mod decide;
mod group;
mod records;
mod rollout;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

pub use bridge::Bridge;
pub use decide::{ActualSource, Classification, Decision};
pub use group::{GROUP_KEY_PREFIX, group_key, parse_group_key};
pub use rollout::{APPROVAL_PARAM, describe_status};

use crate::client::{self, ControlPlane};
use crate::metrics::Metrics;
use crate::policy::{InstanceFacts, Policy, Selection};
use crate::queue::Action;
use crate::reachability::Reachability;
use crate::registry::{PluginRegistry, ResolveError};
use crate::runtime::{
    CallError, Drift, DriftKind, ImportCall, Plugin, PluginRuntime, RolloutScope, Weight, World,
};
use crate::store::{
    AbortRequest, AppliedConfig, ApprovalRecord, AuditKind, ConditionType, GivenUp, PromoteRequest,
    RolloutRecord, Store,
};

/// The label the reference control plane puts on a clone, naming the instance it was
/// cloned from. A clone belongs to its owner's rollout and is never reconciled alone.
pub const CLONE_OF_LABEL: &str = "setpoint.io/clone-of";

/// Why a reconcile failed. The work queue's error policy backs the instance off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A control-plane call failed.
    #[error("control plane call failed")]
    ControlPlane(#[source] client::Error),
    /// The durable store failed.
    #[error("state store failed")]
    Store(#[source] crate::store::Error),
    /// A plugin call trapped, timed out, ran out of memory or returned an error.
    #[error(transparent)]
    Plugin(Box<CallError>),
    /// Policy names a plugin that is not loaded.
    #[error("policy rule `{rule}` cannot be applied")]
    Resolve {
        /// The rule.
        rule: String,
        /// Why.
        #[source]
        source: ResolveError,
    },
    /// The strategy reported a retryable failure.
    #[error("strategy {plugin} failed on instance {instance}: {reason}")]
    StrategyFailed {
        /// `name@version`.
        plugin: String,
        /// The instance.
        instance: String,
        /// The strategy's reason.
        reason: String,
    },
    /// The rollout's pinned plugin version is no longer loaded.
    #[error(
        "rollout of instance {instance} started with {plugin} (digest {digest}), which is no longer loaded"
    )]
    PinnedPluginGone {
        /// The instance.
        instance: String,
        /// `name@version`.
        plugin: String,
        /// The digest it started with.
        digest: String,
    },
    /// A blocking plugin call could not be joined (the runtime is shutting down).
    #[error("plugin call was cancelled")]
    Cancelled,
}

impl From<client::Error> for Error {
    fn from(e: client::Error) -> Self {
        Error::ControlPlane(e)
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        Error::Store(e)
    }
}

/// Result of controller operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a reconcile ended, for `setpoint_reconciles_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The instance runs its desired configuration.
    Synced,
    /// A rollout is under way.
    Progressing,
    /// Waiting for an operator's approval.
    AwaitingApproval,
    /// Drift reported, no action (policy or classification).
    Reported,
    /// Nothing done now (window closed, strategy replaced mid-reconcile).
    Skipped,
    /// Given up, failed for good, or aborted.
    Degraded,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Synced => "synced",
            Outcome::Progressing => "progressing",
            Outcome::AwaitingApproval => "awaiting_approval",
            Outcome::Reported => "reported",
            Outcome::Skipped => "skipped",
            Outcome::Degraded => "degraded",
        }
    }
}

/// Controller settings (the `[controller]` section and the global dry-run switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSettings {
    /// Bring instances in `Error` back (default true).
    pub reconcile_error_instances: bool,
    /// Reconcile instances in `Stopped` (default false: leave them alone).
    pub reconcile_stopped_instances: bool,
    /// Dry-run everything, whatever policy says (default false).
    pub dry_run: bool,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            reconcile_error_instances: true,
            reconcile_stopped_instances: false,
            dry_run: false,
        }
    }
}

/// What `setpoint diff` shows: the decision the next reconcile would take, the drifts,
/// and the control-plane calls the strategy would make, executed against simulated
/// imports and not sent.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The instance.
    pub instance_id: String,
    /// The policy rule that applies.
    pub rule: String,
    /// `name@version` of the comparator (or why it cannot be used).
    pub comparator: String,
    /// `name@version` of the strategy (or why it cannot be used).
    pub strategy: String,
    /// How the instance relates to its desired state.
    pub classification: Classification,
    /// Where the actual configuration comes from.
    pub actual_source: ActualSource,
    /// Digest of the desired configuration (the revision).
    pub desired_digest: String,
    /// What the next reconcile decides.
    pub decision: Decision,
    /// What the comparator found.
    pub drifts: Vec<DriftView>,
    /// What the strategy would do, in order (mutating calls simulated, reads real;
    /// a clone dry-run pretended to make answers healthy, with error-free traffic), with
    /// the waits it asks for (`wait`) and its pauses for approval (`await-approval`) as
    /// entries of their own: a canary's whole plan, step by step.
    pub calls: Vec<ImportCall>,
    /// How the simulated rollout ended.
    pub outcome: String,
}

/// A drift as the admin API and audit show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftView {
    /// JSON pointer.
    pub path: String,
    /// `added`, `removed`, `changed`.
    pub kind: String,
    /// Desired value, JSON.
    pub desired: Option<String>,
    /// Actual value, JSON.
    pub actual: Option<String>,
    /// Sentence.
    pub message: String,
}

impl From<&Drift> for DriftView {
    fn from(d: &Drift) -> Self {
        DriftView {
            path: d.path.clone(),
            kind: match d.kind {
                DriftKind::Added => "added",
                DriftKind::Removed => "removed",
                DriftKind::Changed => "changed",
            }
            .into(),
            desired: d.desired.clone(),
            actual: d.actual.clone(),
            message: d.message.clone(),
        }
    }
}

impl DriftView {
    /// Back to the contract's record.
    pub fn to_drift(&self) -> Drift {
        Drift {
            path: self.path.clone(),
            kind: match self.kind.as_str() {
                "added" => DriftKind::Added,
                "removed" => DriftKind::Removed,
                _ => DriftKind::Changed,
            },
            desired: self.desired.clone(),
            actual: self.actual.clone(),
            message: self.message.clone(),
        }
    }
}

/// What the host persists with a rollout besides the plugin's own state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    /// The plugin's opaque state from its last step.
    plugin_state: Option<String>,
    /// Instances the rollout may act on.
    scope: RolloutScope,
    /// Digest of the desired configuration the rollout is applying: its revision.
    desired_digest: String,
    /// What the strategy is given as desired: the desired configuration with ignored
    /// paths kept as they ran when the rollout started.
    #[serde(default)]
    desired: Option<Value>,
    /// Drifts the rollout was started for.
    drifts: Vec<DriftView>,
    /// What the instance ran when the rollout started: given to the strategy as
    /// `actual` when the instance runs nothing at a later step (a step stopped it and the
    /// daemon died before it could save what it remembered), so an abort can restore it.
    #[serde(default)]
    previous: Option<Value>,
    /// Unix milliseconds before which the strategy asked not to be stepped again: a
    /// change-feed event during a requeue delay does not step the rollout early.
    #[serde(default)]
    not_before_ms: Option<u64>,
    /// The promote request (its time, Unix milliseconds) handed to the strategy and saved
    /// with the state it returned: a request is delivered once, even across a crash.
    #[serde(default)]
    promote_delivered_ms: Option<u64>,
    /// The weights the rollout last set on its instance's endpoint.
    #[serde(default)]
    weights: Option<Vec<Weight>>,
    /// When the rollout last made progress (Unix milliseconds), for the progress
    /// deadline.
    #[serde(default)]
    progress_at_ms: Option<u64>,
    /// What that progress was: the strategy's reported status (analysis figures
    /// included: a new measurement is progress), or its message when it reports none.
    #[serde(default)]
    progress_key: Option<String>,
    /// The undo failed and may be retried: the next `abort` call carries
    /// `$undo = "again"`.
    #[serde(default)]
    undo_again: bool,
}

impl Envelope {
    fn read(record: &RolloutRecord) -> Envelope {
        serde_json::from_value(record.state.clone()).unwrap_or_else(|_| Envelope {
            plugin_state: None,
            scope: RolloutScope::new(record.instance_id.clone()),
            desired_digest: String::new(),
            desired: None,
            drifts: Vec::new(),
            previous: None,
            not_before_ms: None,
            promote_delivered_ms: None,
            weights: None,
            progress_at_ms: None,
            progress_key: None,
            undo_again: false,
        })
    }

    /// The status object the strategy reports in its state (`{"status": {...}}`), if any.
    fn status(&self) -> Option<Value> {
        let state: Value = serde_json::from_str(self.plugin_state.as_deref()?).ok()?;
        match state.get("status") {
            Some(status @ Value::Object(_)) => Some(status.clone()),
            _ => None,
        }
    }
}

/// The last decision taken for an instance, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct LastDecision {
    /// The decision.
    pub decision: Decision,
    /// The revision it was taken for.
    pub desired_digest: String,
    /// When.
    pub at: SystemTime,
}

/// Where the controller reads the time: its decisions (a strategy's requeue delay, the
/// progress deadline, maintenance windows), the times it hands a strategy (`elapsed`)
/// and the times it records (rollout start, condition transitions). The daemon uses
/// [`SystemClock`]; a simulation hands [`Controller::with_clock`] a virtual one so that
/// a run depends on its seed, not on how fast the machine is. The store's own
/// bookkeeping times (audit entries, approvals) stay wall-clock.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The wall clock: [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The reconcile logic with everything it needs. Cheap to share in an `Arc`.
pub struct Controller {
    cp: Arc<dyn ControlPlane>,
    clock: Arc<dyn Clock>,
    runtime: Arc<PluginRuntime>,
    plugins: RwLock<Arc<PluginRegistry>>,
    store: Arc<Store>,
    policy: Arc<Policy>,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    /// Held while a rollout record is first saved and while a new registry is swapped
    /// in, so a swap sees every rollout that started on a plugin it is about to drop.
    pins: Mutex<()>,
    /// Instances (and what they ran) as the last full listing saw them, each used once by
    /// the next reconcile of that instance instead of two reads.
    snapshots: Mutex<Snapshots>,
    /// The last decision per instance (`GET /v1/instances/{id}`).
    decisions: Mutex<HashMap<String, LastDecision>>,
    /// One lock per group key: a group is reconciled by one member at a time.
    group_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether the control plane answers, as the daemon's resync and change feed see it.
    reachability: Arc<Reachability>,
}

/// Listing snapshots and the newest change seen per instance (see
/// [`Controller::prime`]).
#[derive(Debug, Default)]
struct Snapshots {
    instances: HashMap<String, Snapshot>,
    changed_at: HashMap<String, client::Timestamp>,
    /// When this host last sent a mutating call about an instance (its own clock): a
    /// listing requested before that may show the instance as it was before the call.
    own_changes: HashMap<String, Instant>,
}

#[derive(Debug)]
struct Snapshot {
    instance: client::Instance,
    /// What it ran when listed, when the listing came with the bulk running
    /// configurations (`Some(None)`: it ran nothing).
    running: Option<Option<Value>>,
}

fn modified_at(instance: &client::Instance) -> client::Timestamp {
    instance.last_modified_at.unwrap_or(instance.created_at)
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Digest of a configuration: SHA-256 of its canonical JSON text (serde_json sorts no
/// keys, so the control plane's key order counts; it is stable for one control plane).
pub fn config_digest(config: &Value) -> String {
    hex::encode(sha2::Sha256::digest(config.to_string().as_bytes()))
}

/// Everything one reconcile knows before it judges.
#[derive(Debug)]
struct Observation {
    instance: client::Instance,
    selection: Selection,
    desired: Option<Value>,
    desired_digest: String,
    actual: Option<Value>,
    actual_digest: Option<String>,
    source: ActualSource,
    applied: Option<AppliedConfig>,
    rollout: Option<(RolloutRecord, Envelope)>,
    abort: Option<AbortRequest>,
    given_up: Option<GivenUp>,
    approval: Option<ApprovalRecord>,
    /// An operator's pending promotion.
    promote: Option<PromoteRequest>,
    stopped_by_host: bool,
    /// Whether this host's last lifecycle call on the instance was a stop, or one whose
    /// outcome it does not know (failed, or in flight at a crash): its own doing either
    /// way, so the instance is the host's to manage even with nothing recorded as applied.
    host_touched: bool,
    /// The instance's conditions when observed.
    conditions: Vec<crate::store::Condition>,
}

/// An [`Observation`] judged: its classification and the comparator's drifts.
#[derive(Debug)]
struct Judged {
    classification: Classification,
    drifts: Vec<Drift>,
    destructive: Vec<String>,
}

impl Controller {
    /// Assemble a controller.
    pub fn new(
        cp: Arc<dyn ControlPlane>,
        runtime: Arc<PluginRuntime>,
        plugins: Arc<PluginRegistry>,
        store: Arc<Store>,
        policy: Arc<Policy>,
        settings: ControllerSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Controller {
            cp,
            clock: Arc::new(SystemClock),
            runtime,
            plugins: RwLock::new(plugins),
            store,
            policy,
            settings,
            metrics,
            pins: Mutex::new(()),
            snapshots: Mutex::new(Snapshots::default()),
            decisions: Mutex::new(HashMap::new()),
            group_locks: Mutex::new(HashMap::new()),
            reachability: Arc::default(),
        }
    }

    /// Read the time from `clock` instead of the wall clock ([`SystemClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The time by the controller's [`Clock`].
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Whether the control plane answers: the daemon's resync and change feed report
    /// to it, and a reconcile failing only because of a known outage logs quietly.
    pub fn reachability(&self) -> &Arc<Reachability> {
        &self.reachability
    }

    /// The control plane it speaks to.
    pub fn control_plane(&self) -> &Arc<dyn ControlPlane> {
        &self.cp
    }

    /// The durable store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The plugins policy chooses from now.
    pub fn plugins(&self) -> Arc<PluginRegistry> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The plugin runtime.
    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// The last decision taken for `id` by this process, if any.
    pub fn last_decision(&self, id: &str) -> Option<LastDecision> {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Offer a new set of plugins to policy (hot reload) and return it. Rollouts in
    /// flight keep their digest: a plugin of the current set that the new one lacks stays
    /// reachable, as `retiring`, while a rollout record references it; retiring plugins
    /// no rollout references any more are dropped. Fails (and changes nothing) when the
    /// store cannot say which rollouts are in flight.
    pub fn set_plugins(&self, mut plugins: PluginRegistry) -> Result<Arc<PluginRegistry>> {
        let _pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let in_use: HashSet<String> = self
            .store
            .rollouts()?
            .into_iter()
            .map(|r| r.plugin_digest)
            .collect();
        plugins.retain_in_use(&self.plugins(), &in_use);
        let plugins = Arc::new(plugins);
        *self.plugins.write().unwrap_or_else(|e| e.into_inner()) = plugins.clone();
        Ok(plugins)
    }

    /// Policy facts of an instance.
    pub fn facts(instance: &client::Instance) -> InstanceFacts {
        InstanceFacts {
            id: instance.id.clone(),
            name: instance.name.clone(),
            platform: instance.platform_type.as_str().to_owned(),
            labels: instance.metadata.clone(),
        }
    }

    /// Keep a full listing's instances for their next reconcile and return their ids.
    /// `running`, when the control plane serves running configurations in bulk, is what
    /// each instance ran at the listing (absent: nothing). An instance the change feed
    /// has reported a newer change for than the listing shows is not kept: its reconcile
    /// reads it afresh; nor is one this host sent a mutating call about since
    /// `requested` (when the listing was asked for): the change feed may not have
    /// reported that call's effect yet, and the listing may predate it.
    pub fn prime(
        &self,
        instances: Vec<client::Instance>,
        mut running: Option<HashMap<String, Value>>,
        requested: Instant,
    ) -> Vec<String> {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::with_capacity(instances.len());
        for instance in instances {
            ids.push(instance.id.clone());
            let stale = snapshots
                .changed_at
                .get(&instance.id)
                .is_some_and(|at| *at > modified_at(&instance))
                || snapshots
                    .own_changes
                    .get(&instance.id)
                    .is_some_and(|at| *at >= requested);
            if !stale {
                let ran = running.as_mut().map(|r| r.remove(&instance.id));
                snapshots.instances.insert(
                    instance.id.clone(),
                    Snapshot {
                        instance,
                        running: ran,
                    },
                );
            }
        }
        ids
    }

    /// The change feed reported a change of `id` at `at`: a listing snapshot older than
    /// that is dropped.
    pub fn note_change(&self, id: &str, at: client::Timestamp) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let newest = snapshots.changed_at.entry(id.to_owned()).or_insert(at);
        if *newest < at {
            *newest = at;
        }
        if snapshots
            .instances
            .get(id)
            .is_some_and(|s| modified_at(&s.instance) < at)
        {
            snapshots.instances.remove(id);
        }
    }

    /// This host sent a mutating call about `id` (its outcome known or not): a listing
    /// snapshot of it, taken or in flight, may predate the call and is not used.
    pub(crate) fn note_own_change(&self, id: &str) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        snapshots.instances.remove(id);
        snapshots.own_changes.insert(id.to_owned(), Instant::now());
    }

    fn take_snapshot(&self, id: &str) -> Option<Snapshot> {
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instances
            .remove(id)
    }

    /// Reconcile one instance and say when to look at it again.
    pub async fn reconcile(&self, id: String) -> Result<Action> {
        let started = Instant::now();
        let result = self.reconcile_inner(&id).await;
        let outcome = match &result {
            Ok((_, outcome)) => outcome.as_str(),
            Err(_) => "error",
        };
        self.metrics
            .reconciled(outcome, started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            // During a known outage every reconcile fails the same way; the outage is
            // logged once (crate::reachability) and each instance's conditions say it.
            let outage = matches!(
                error,
                Error::ControlPlane(
                    client::Error::Unreachable { .. } | client::Error::Timeout { .. }
                )
            ) && self.reachability.is_down();
            if outage {
                tracing::debug!(instance.id = %id, error = %crate::error_chain(error), "reconcile failed: the control plane is unreachable");
            } else {
                tracing::warn!(instance.id = %id, error = %crate::error_chain(error), "reconcile failed");
            }
            if let Err(e) = self.failed_condition(&id, error) {
                tracing::warn!(instance.id = %id, error = %crate::error_chain(&e), "could not record the failure's condition");
            }
        }
        result.map(|(action, _)| action)
    }

    async fn reconcile_inner(&self, id: &str) -> Result<(Action, Outcome)> {
        if parse_group_key(id).is_some() {
            return self.reconcile_group(id).await;
        }
        let Some(mut observation) = self.observe(id, true).await? else {
            return self.orphaned(id);
        };
        if let Some(owner) = observation.instance.metadata.get(CLONE_OF_LABEL).cloned() {
            return self.clone_seen(&observation.instance, &owner).await;
        }
        if let Some(group) = observation
            .selection
            .group_of(&observation.instance.metadata)
            && observation.rollout.is_none()
        {
            return self.reconcile_member(&observation, &group).await;
        }
        // A superseded rollout ends here and the instance is decided again, once.
        let mut superseded = false;
        for _ in 0..2 {
            let judged = self.judge(&observation, superseded).await?;
            let decision = self.decision(&observation, &judged);
            self.remember(id, &decision, &observation.desired_digest);
            match decision {
                Decision::Supersede { from } => {
                    if self.supersede(&observation, &from).await? {
                        // Its strategy undoes it first (an abort that gives nothing up).
                        observation.abort = self.store.abort_request(id)?;
                        continue;
                    }
                    superseded = true;
                    observation.rollout = None;
                    observation.abort = None;
                    observation.promote = None;
                    observation.approval = self.store.open_approval(id)?;
                }
                decision => return self.act(&observation, judged, decision).await,
            }
        }
        unreachable!("a superseded rollout is cleared before deciding again")
    }

    /// Read everything a decision needs. `None`: the control plane does not know the
    /// instance. `use_snapshot`: a resync's listing may stand in for the reads.
    async fn observe(&self, id: &str, use_snapshot: bool) -> Result<Option<Observation>> {
        let snapshot = if use_snapshot {
            self.take_snapshot(id)
        } else {
            None
        };
        let (instance, listed_running) = match snapshot {
            Some(s) => (s.instance, s.running),
            None => match self.cp.get_instance(id).await {
                Ok(instance) => (instance, None),
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        let selection = self.policy.select(&Self::facts(&instance));
        let desired = match self.cp.desired_configuration(id).await {
            Ok(desired) => Some(desired),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let records = self.store.instance_records(id)?;
        let applied = records.applied;
        let (actual, source) = match listed_running {
            Some(running) => (running, ActualSource::ControlPlane),
            None if self.cp.capabilities().await?.running_configuration => {
                match self.cp.running_configuration(id).await {
                    Ok(running) => (running, ActualSource::ControlPlane),
                    Err(e) if e.is_not_found() => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
            None => (
                applied.as_ref().map(|a| a.config.clone()),
                ActualSource::AppliedRecord,
            ),
        };
        let rollout = records.rollout.map(|r| {
            let envelope = Envelope::read(&r);
            (r, envelope)
        });
        Ok(Some(Observation {
            desired_digest: desired.as_ref().map(config_digest).unwrap_or_default(),
            actual_digest: actual.as_ref().map(config_digest),
            abort: records.abort,
            given_up: records.given_up,
            approval: records.approval,
            promote: records.promote,
            stopped_by_host: instance.status == client::InstanceStatus::Stopped
                && records.host_stopped,
            host_touched: records.host_stopped,
            conditions: records.conditions,
            instance,
            selection,
            desired,
            actual,
            source,
            applied,
            rollout,
        }))
    }

    /// Classify the observation, running the comparator when the configurations differ
    /// (not while a rollout is in progress: the rollout's revision decides then).
    /// `superseded`: this reconcile just ended a rollout of the instance, which may have
    /// left it `Stopped` (a step stopped it and the daemon died before its start): that
    /// stop was this host's, so the instance is not left alone as a stopped one is.
    async fn judge(&self, o: &Observation, superseded: bool) -> Result<Judged> {
        let observed = decide::Observed {
            status: o.instance.status,
            desired_digest: o.desired.as_ref().map(|_| o.desired_digest.as_str()),
            actual_digest: o.actual_digest.as_deref(),
            managed: o.applied.is_some() || o.rollout.is_some() || o.host_touched,
            stopped_by_host: o.stopped_by_host,
        };
        let mut settings = self.settings.clone();
        settings.reconcile_stopped_instances |= superseded;
        let classification = match decide::classify(&observed, &settings) {
            decide::Assessment::Known(c) => (c, Vec::new()),
            decide::Assessment::Compare if o.rollout.is_some() => {
                (Classification::Drifted, Vec::new())
            }
            decide::Assessment::Compare => {
                let (Some(desired), Some(actual)) = (&o.desired, &o.actual) else {
                    unreachable!("compare is asked only with both configurations");
                };
                let drifts = self
                    .compare(&o.selection, &o.instance.id, desired, actual)
                    .await?;
                (decide::judged(drifts.len(), observed.managed), drifts)
            }
        };
        let destructive = match (&o.desired, &o.actual) {
            (Some(desired), Some(actual))
                if o.selection.gates.skip_destructive
                    && classification.0 == Classification::Drifted =>
            {
                let ignored = decide::ignored_paths(&o.selection.comparator_params);
                decide::destructive_paths(
                    &decide::apply_ignored(desired, Some(actual), &ignored),
                    actual,
                )
            }
            _ => Vec::new(),
        };
        Ok(Judged {
            classification: classification.0,
            drifts: classification.1,
            destructive,
        })
    }

    /// The pure decision for a judged observation.
    fn decision(&self, o: &Observation, judged: &Judged) -> Decision {
        let now = self.now();
        let window_opens_in = o
            .selection
            .gates
            .window
            .as_ref()
            .filter(|w| !w.is_open(now))
            .map(|w| w.until_open(now));
        decide::decide(&decide::Facts {
            classification: judged.classification,
            desired_digest: &o.desired_digest,
            rollout: o.rollout.as_ref().map(|(r, e)| decide::RolloutFacts {
                digest: &e.desired_digest,
                phase: r.phase,
                not_before_ms: e.not_before_ms,
                promote: o.promote.as_ref().is_some_and(|p| {
                    p.digest == e.desired_digest && e.promote_delivered_ms != Some(p.at_ms)
                }),
            }),
            abort: o.abort.as_ref(),
            given_up: o.given_up.as_ref(),
            approval: o.approval.as_ref(),
            gates: &o.selection.gates,
            destructive: &judged.destructive,
            global_dry_run: self.settings.dry_run,
            window_opens_in,
            now_ms: decide::unix_ms(now),
        })
    }

    fn remember(&self, id: &str, decision: &Decision, digest: &str) {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.to_owned(),
                LastDecision {
                    decision: decision.clone(),
                    desired_digest: digest.to_owned(),
                    at: self.now(),
                },
            );
    }

    /// Mark a rollout (or an approval gate) for abort; the next reconcile runs the
    /// strategy's `abort`. Returns what was aborted, `None` when nothing was in progress.
    /// Durable: the request is a row of its own that no step overwrites, and it survives
    /// a restart of the daemon.
    pub fn request_abort(&self, id: &str, by: &str) -> Result<Option<String>> {
        if let Some(record) = self.store.load_rollout(id)? {
            let envelope = Envelope::read(&record);
            if self.store.request_abort(id, &envelope.desired_digest, by)? {
                self.audit(
                    id,
                    AuditKind::Decision,
                    format!(
                        "abort requested by {by} for the rollout of revision {}",
                        crate::store::short_digest(&envelope.desired_digest)
                    ),
                    serde_json::json!({ "digest": envelope.desired_digest, "by": by }),
                )?;
                return Ok(Some(envelope.desired_digest));
            }
        }
        if let Some(approval) = self.store.open_approval(id)? {
            // Waiting at the before-apply gate: nothing was sent; give the revision up.
            let reason = format!("aborted by {by} before it was applied");
            self.store.give_up(id, &approval.digest, &reason)?;
            self.store.withdraw_approvals(id)?;
            self.audit(
                id,
                AuditKind::Outcome,
                format!(
                    "revision {} {reason}",
                    crate::store::short_digest(&approval.digest)
                ),
                serde_json::json!({ "digest": approval.digest, "by": by }),
            )?;
            let message = format!(
                "revision {} was {reason}; run `setpoint retry {id}` to try it again",
                crate::store::short_digest(&approval.digest)
            );
            self.conditions(
                id,
                &[
                    (ConditionType::AwaitingApproval, false, "Aborted", ""),
                    (ConditionType::Synced, false, "GivenUp", &message),
                ],
            )?;
            return Ok(Some(approval.digest));
        }
        Ok(None)
    }

    /// Promote the rollout of `id` (`setpoint promote`): end the pause or analysis it
    /// waits in (`full`: skip every remaining step). Durable like an abort request and
    /// handed to the strategy once, as the `$promote` parameter of its next step. A
    /// rollout waiting for approval is approved (its revision only); `full` also skips
    /// what follows. Returns the revision promoted, `None` when no rollout is in progress
    /// (or it is being aborted).
    pub fn promote(&self, id: &str, full: bool, by: &str) -> Result<Option<String>> {
        let Some(record) = self.store.load_rollout(id)? else {
            return Ok(None);
        };
        if self.store.abort_request(id)?.is_some() {
            // An abort wins; promoting what is being undone would do nothing.
            return Ok(None);
        }
        let envelope = Envelope::read(&record);
        let digest = envelope.desired_digest;
        let waiting = record.phase == crate::store::RolloutPhase::AwaitingApproval;
        if waiting {
            self.store.approve(id, Some(&digest), by)?;
        }
        if (full || !waiting) && !self.store.request_promote(id, &digest, full, by)? {
            return Ok(None);
        }
        self.audit(
            id,
            AuditKind::Approval,
            format!(
                "promotion{} of revision {} requested by {by}{}",
                if full { " (full)" } else { "" },
                crate::store::short_digest(&digest),
                if waiting {
                    "; the approval it waited for is given"
                } else {
                    ""
                }
            ),
            serde_json::json!({ "digest": digest, "full": full, "by": by }),
        )?;
        Ok(Some(digest))
    }

    /// Where the rollout of `id` stands, for `setpoint status` and a dashboard: its
    /// strategy, revision, phase and step count, the status its strategy reports (step n
    /// of N, analysis figures, what it waits for), the weights it last set on the
    /// instance's endpoint, a pending promotion and the progress deadline.
    pub fn rollout_progress(&self, id: &str) -> Result<Option<Value>> {
        let Some(record) = self.store.load_rollout(id)? else {
            return Ok(None);
        };
        let envelope = Envelope::read(&record);
        let status = envelope.status();
        let facts = self
            .store
            .instance_records(id)
            .map(|r| (r.promote, r.abort))?;
        Ok(Some(serde_json::json!({
            "strategy": format!("{}@{}", record.strategy, record.plugin_version),
            "revision": envelope.desired_digest,
            "phase": record.phase,
            "steps": record.step,
            "startedAt": chrono::DateTime::<chrono::Utc>::from(record.started_at).to_rfc3339(),
            "status": status,
            "summary": status.as_ref().map(rollout::describe_status),
            "endpoint": envelope.weights.as_ref().map(|_| id),
            "weights": envelope.weights,
            "clones": envelope.scope.clones,
            "nextStepAt": envelope.not_before_ms,
            "lastProgressAt": envelope.progress_at_ms,
            "promote": facts.0.map(|p| serde_json::json!({"full": p.full, "by": p.requested_by})),
            "aborting": facts.1.map(|a| serde_json::json!({"by": a.requested_by, "givesUp": a.give_up})),
        })))
    }

    /// Forget a given-up revision (failed for good or aborted) so the next reconcile
    /// tries it again. Returns whether one was given up.
    pub fn retry(&self, id: &str, by: &str) -> Result<bool> {
        let Some(given_up) = self.store.given_up(id)? else {
            return Ok(false);
        };
        self.store.clear_given_up(id)?;
        self.audit(
            id,
            AuditKind::Decision,
            format!(
                "retry of revision {} requested by {by}",
                crate::store::short_digest(&given_up.digest)
            ),
            serde_json::json!({ "digest": given_up.digest, "by": by }),
        )?;
        Ok(true)
    }

    /// Roll `id` back to a kept configuration: `to` is a digest (or its first
    /// characters) from `setpoint history`, by default the configuration applied before
    /// the last one. Makes it the desired configuration in the control plane, so the
    /// instance's strategy rolls it out like any change (and a later resync does not
    /// roll forward again). Returns the digest rolled back to.
    pub async fn rollback(&self, id: &str, to: Option<&str>, by: &str) -> Result<String> {
        let history = self.store.history(id)?;
        let target = match to {
            Some(prefix) => history
                .iter()
                .find(|a| !prefix.is_empty() && a.digest.starts_with(prefix)),
            None => history.get(1),
        };
        let Some(target) = target else {
            return Err(Error::ControlPlane(client::Error::NotFound {
                call: format!(
                    "rollback of {id}: no kept configuration {}; `setpoint history {id}` lists them",
                    to.map(|t| format!("matching `{t}`"))
                        .unwrap_or_else(|| "before the last applied one".into())
                ),
                body: String::new(),
            }));
        };
        self.cp
            .set_desired_configuration(id, &target.config)
            .await?;
        self.audit(
            id,
            AuditKind::Decision,
            format!(
                "rollback to revision {} requested by {by}: it is the desired configuration again",
                crate::store::short_digest(&target.digest)
            ),
            serde_json::json!({ "digest": target.digest, "by": by }),
        )?;
        Ok(target.digest.clone())
    }

    /// The plan for one instance (`setpoint diff`): the decision the next reconcile would
    /// take, from the same observation and the same [`decide::decide`], and the calls its
    /// strategy would make. Nothing is persisted and no mutating call is sent.
    pub async fn plan(&self, id: &str) -> Result<Plan> {
        let Some(o) = self.observe(id, false).await? else {
            return Err(Error::ControlPlane(client::Error::NotFound {
                call: format!("plan of {id}"),
                body: "the control plane does not know this instance".into(),
            }));
        };
        let label = |kind| match self.resolve(&o.selection, kind) {
            Ok(p) => p.label(),
            Err(e) => format!("unavailable: {}", crate::error_chain(&e)),
        };
        let comparator = label(World::Comparator);
        let strategy = label(World::Strategy);
        let judged = self.judge(&o, false).await?;
        let decision = self.decision(&o, &judged);
        let (calls, outcome) = match &decision {
            Decision::StartRollout | Decision::DryRun | Decision::AwaitApprovalBeforeApply => {
                match self.resolve(&o.selection, World::Strategy) {
                    Ok(strategy) => {
                        let desired = self.apply_document(&o);
                        self.simulate(id, &strategy, &o, &desired, &judged.drifts)
                            .await?
                    }
                    Err(e) => (
                        Vec::new(),
                        format!("cannot simulate: {}", crate::error_chain(&e)),
                    ),
                }
            }
            Decision::StepRollout { .. } | Decision::NotYet { .. } => {
                let step = o.rollout.as_ref().map(|(r, _)| r.step).unwrap_or(0);
                (
                    Vec::new(),
                    format!("rollout in progress after {step} step(s)"),
                )
            }
            other => (Vec::new(), format!("no rollout: {}", other.name())),
        };
        Ok(Plan {
            instance_id: id.to_owned(),
            rule: o.selection.rule_name.clone(),
            comparator,
            strategy,
            classification: judged.classification,
            actual_source: o.source,
            desired_digest: o.desired_digest.clone(),
            decision,
            // While a rollout runs, the drifts it was started for.
            drifts: match (&o.rollout, judged.drifts.is_empty()) {
                (Some((_, envelope)), true) => envelope.drifts.clone(),
                _ => judged.drifts.iter().map(DriftView::from).collect(),
            },
            calls,
            outcome,
        })
    }

    /// What a strategy is given as desired: the desired configuration with the paths the
    /// selection ignores kept as the instance runs them.
    fn apply_document(&self, o: &Observation) -> Value {
        let desired = o.desired.clone().unwrap_or(Value::Null);
        let ignored = decide::ignored_paths(&o.selection.comparator_params);
        if ignored.is_empty() {
            return desired;
        }
        decide::apply_ignored(&desired, o.actual.as_ref(), &ignored)
    }

    async fn compare(
        &self,
        selection: &Selection,
        id: &str,
        desired: &Value,
        actual: &Value,
    ) -> Result<Vec<Drift>> {
        let comparator = self.resolve(selection, World::Comparator)?;
        let runtime = self.runtime.clone();
        let (id_owned, desired, actual) = (id.to_owned(), desired.to_string(), actual.to_string());
        let params = Value::Object(selection.comparator_params.clone()).to_string();
        let label = comparator.label();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            runtime.compare(&comparator, &id_owned, &desired, &actual, &params)
        })
        .await
        .map_err(|_| Error::Cancelled)?;
        self.metrics.plugin_call(
            &label,
            "compare",
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(|e| records::failure_reason(e)),
        );
        result.map_err(Error::Plugin)
    }

    fn resolve(&self, selection: &Selection, kind: World) -> Result<Arc<Plugin>> {
        let reference = match kind {
            World::Comparator => &selection.comparator,
            World::Strategy => &selection.strategy,
        };
        self.plugins()
            .resolve(kind, &reference.name, reference.version.as_ref())
            .map_err(|source| Error::Resolve {
                rule: selection.rule_name.clone(),
                source,
            })
    }
}
