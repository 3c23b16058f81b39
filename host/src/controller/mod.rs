//! The controller: one reconcile of one instance — observe, compare, decide, apply,
//! record (DESIGN §1).
//!
//! Start at [`Controller::reconcile`]. It is level-triggered and idempotent: whatever
//! triggered it (resync, change feed, manual request, requeue), it reads the desired
//! configuration and what the host last applied, asks the comparator chosen by policy
//! for drifts, applies the policy's gates and lets the strategy take one step, then
//! returns an [`Action`] for the work queue. A strategy that must wait returns
//! "requeue after"; its state is persisted first, so a rollout resumes after a restart.
//! [`Controller::plan`] runs the same logic in dry-run for `setpoint diff`.

mod bridge;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;

pub use bridge::Bridge;

use crate::client::{self, ControlPlane, InstanceStatus};
use crate::metrics::{DriftLabels, Metrics};
use crate::policy::{Approval, InstanceFacts, Policy, Selection};
use crate::queue::Action;
use crate::registry::{PluginRegistry, ResolveError};
use crate::runtime::{
    CallError, CallFailure, CallOutcome, Drift, DriftKind, ImportCall, Plugin, PluginRuntime,
    Progress, Rollout, RolloutScope, World,
};
use crate::store::{
    AuditEntry, AuditKind, Condition, ConditionType, RolloutPhase, RolloutRecord, Store,
};

/// Most steps `plan` simulates before it stops (a strategy that never finishes in
/// dry-run must not hang `setpoint diff`).
const MAX_PLAN_STEPS: u32 = 20;

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

/// How an instance relates to its desired state (DESIGN §1, Ovi's diff types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// Runs what it should.
    InSync,
    /// Desired but not running (created, failed, or never applied).
    Missing,
    /// Running something other than its desired configuration.
    Drifted,
    /// Running but without a desired configuration in the control plane.
    Unwanted,
    /// Running, never touched by this host: reported only.
    Unmanaged,
    /// Recorded by this host but unknown to the control plane.
    Orphaned,
    /// Stopped on purpose and left alone (`reconcile_stopped_instances = false`).
    Stopped,
}

impl Classification {
    /// The name used in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::InSync => "in_sync",
            Classification::Missing => "missing",
            Classification::Drifted => "drifted",
            Classification::Unwanted => "unwanted",
            Classification::Unmanaged => "unmanaged",
            Classification::Orphaned => "orphaned",
            Classification::Stopped => "stopped",
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

/// What `setpoint diff` shows: the drifts, and the control-plane calls the strategy
/// would make, executed against simulated imports and not sent.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The instance.
    pub instance_id: String,
    /// The policy rule that applies.
    pub rule: String,
    /// `name@version` of the comparator.
    pub comparator: String,
    /// `name@version` of the strategy.
    pub strategy: String,
    /// How the instance relates to its desired state.
    pub classification: Classification,
    /// What the comparator found.
    pub drifts: Vec<DriftView>,
    /// What the strategy would do, in order (mutating calls simulated, reads real).
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

/// What the host persists with a rollout besides the plugin's own state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    /// The plugin's opaque state from its last step.
    plugin_state: Option<String>,
    /// Instances the rollout may act on.
    scope: RolloutScope,
    /// Digest of the desired configuration the rollout is applying.
    desired_digest: String,
    /// Drifts the rollout was started for.
    drifts: Vec<DriftView>,
    /// Unix milliseconds before which the strategy asked not to be stepped again: a
    /// change-feed event during a requeue delay does not step the rollout early.
    #[serde(default)]
    not_before_ms: Option<u64>,
}

/// The reconcile logic with everything it needs. Cheap to share in an `Arc`.
pub struct Controller {
    cp: Arc<dyn ControlPlane>,
    runtime: Arc<PluginRuntime>,
    plugins: RwLock<Arc<PluginRegistry>>,
    store: Arc<Store>,
    policy: Arc<Policy>,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    /// Desired digests whose rollout failed for good or was aborted, per instance: not
    /// retried until the desired configuration changes.
    given_up: Mutex<HashMap<String, String>>,
    /// Held while a rollout record is first saved and while a new registry is swapped
    /// in, so a swap sees every rollout that started on a plugin it is about to drop.
    pins: Mutex<()>,
    /// Instances as the last full listing saw them, each used once by the next
    /// reconcile of that instance instead of a `GET` (a resync of N instances then costs
    /// one list and N configuration reads, not 2N reads).
    snapshots: Mutex<Snapshots>,
}

/// Listing snapshots and the newest change seen per instance (see
/// [`Controller::prime`]).
#[derive(Debug, Default)]
struct Snapshots {
    instances: HashMap<String, client::Instance>,
    changed_at: HashMap<String, client::Timestamp>,
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
            runtime,
            plugins: RwLock::new(plugins),
            store,
            policy,
            settings,
            metrics,
            given_up: Mutex::new(HashMap::new()),
            pins: Mutex::new(()),
            snapshots: Mutex::new(Snapshots::default()),
        }
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
    /// An instance the change feed has reported a newer change for than the listing
    /// shows is not kept: its reconcile reads it afresh.
    pub fn prime(&self, instances: Vec<client::Instance>) -> Vec<String> {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::with_capacity(instances.len());
        for instance in instances {
            ids.push(instance.id.clone());
            let stale = snapshots
                .changed_at
                .get(&instance.id)
                .is_some_and(|at| *at > modified_at(&instance));
            if !stale {
                snapshots.instances.insert(instance.id.clone(), instance);
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
            .is_some_and(|i| modified_at(i) < at)
        {
            snapshots.instances.remove(id);
        }
    }

    fn take_snapshot(&self, id: &str) -> Option<client::Instance> {
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
            Ok((_, outcome)) => *outcome,
            Err(_) => "error",
        };
        self.metrics
            .reconciled(outcome, started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            tracing::warn!(instance.id = %id, error = %crate::error_chain(error), "reconcile failed");
        }
        result.map(|(action, _)| action)
    }

    async fn reconcile_inner(&self, id: &str) -> Result<(Action, &'static str)> {
        let instance = match self.take_snapshot(id) {
            Some(instance) => instance,
            None => match self.cp.get_instance(id).await {
                Ok(instance) => instance,
                Err(e) if e.is_not_found() => return self.orphaned(id),
                Err(e) => return Err(e.into()),
            },
        };
        let facts = Self::facts(&instance);
        let selection = self.policy.select(&facts);
        let rollout = self.store.load_rollout(id)?;

        if instance.status == InstanceStatus::Stopped
            && !self.settings.reconcile_stopped_instances
            && rollout.is_none()
        {
            self.conditions(
                id,
                &[(
                    ConditionType::Synced,
                    true,
                    "Stopped",
                    "instance is stopped; left alone (reconcile_stopped_instances = false)",
                )],
            )?;
            return Ok((Action::await_change(), "skipped"));
        }

        let desired = match self.cp.desired_configuration(id).await {
            Ok(desired) => desired,
            Err(e) if e.is_not_found() => return self.unwanted(id),
            Err(e) => return Err(e.into()),
        };
        let desired_digest = config_digest(&desired);

        if let Some(record) = rollout {
            return self
                .continue_rollout(&instance, &selection, record, &desired, &desired_digest)
                .await;
        }

        let applied = self.store.last_applied(id)?;
        let error_counts_as_missing =
            instance.status == InstanceStatus::Error && self.settings.reconcile_error_instances;
        let (classification, drifts) = match (&applied, instance.status) {
            (_, InstanceStatus::Created) => (Classification::Missing, Vec::new()),
            (_, InstanceStatus::Stopped) => (Classification::Missing, Vec::new()),
            (_, InstanceStatus::Error) if error_counts_as_missing => {
                (Classification::Missing, Vec::new())
            }
            (_, InstanceStatus::Error) => {
                self.conditions(
                    id,
                    &[(
                        ConditionType::Degraded,
                        true,
                        "InstanceError",
                        "instance is in Error; left alone (reconcile_error_instances = false)",
                    )],
                )?;
                return Ok((Action::await_change(), "skipped"));
            }
            (None, _) => return self.unmanaged(id, &instance),
            (Some(applied), _) if applied.digest == desired_digest => {
                (Classification::InSync, Vec::new())
            }
            (Some(applied), _) => {
                self.judge(&selection, id, &desired, &applied.config)
                    .await?
            }
        };

        if classification == Classification::InSync {
            self.given_up_clear(id);
            self.conditions(
                id,
                &[
                    (
                        ConditionType::Synced,
                        true,
                        "InSync",
                        "runs its desired configuration",
                    ),
                    (ConditionType::Progressing, false, "InSync", ""),
                    (ConditionType::Degraded, false, "InSync", ""),
                ],
            )?;
            return Ok((Action::await_change(), "synced"));
        }

        self.count_drift(classification);
        let views: Vec<DriftView> = drifts.iter().map(DriftView::from).collect();
        self.audit(
            id,
            AuditKind::Observation,
            format!(
                "instance is {}{}",
                classification.as_str(),
                if views.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        views
                            .iter()
                            .map(|d| d.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            ),
            serde_json::json!({
                "classification": classification,
                "status": instance.status.as_str(),
                "drifts": views,
                "desiredDigest": desired_digest,
                "rule": selection.rule_name,
            }),
        )?;

        if self.given_up_for(id, &desired_digest) {
            return Ok((Action::await_change(), "degraded"));
        }
        if let Some(action) = self.gates(id, &selection, classification, &drifts)? {
            return Ok(action);
        }

        let strategy = self.resolve(&selection, World::Strategy)?;
        let dry_run = selection.gates.dry_run || self.settings.dry_run;
        if dry_run {
            let plan = self
                .simulate(
                    &instance.id,
                    &strategy,
                    &selection,
                    &desired,
                    &applied,
                    &drifts,
                )
                .await?;
            self.audit_calls(id, &strategy, &plan.0)?;
            self.audit(
                id,
                AuditKind::Decision,
                format!(
                    "dry-run: {} would make {} control-plane call(s); nothing sent",
                    strategy.label(),
                    plan.0.len()
                ),
                serde_json::json!({ "plan": plan.0, "outcome": plan.1 }),
            )?;
            self.conditions(
                id,
                &[(
                    ConditionType::Synced,
                    false,
                    "DryRun",
                    &format!(
                        "{} ({}): dry-run recorded the plan; no action taken",
                        classification.as_str(),
                        views.len()
                    ),
                )],
            )?;
            return Ok((Action::await_change(), "reported"));
        }

        // The record is saved under the pin lock, and only while the registry still
        // offers the strategy: a registry swap then either sees this rollout (and keeps
        // its plugin) or happened before, and the strategy is chosen again.
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if !self.plugins().offers(strategy.digest()) {
            drop(pins);
            tracing::info!(instance.id = id, strategy = %strategy.label(), "strategy was replaced or removed while this reconcile ran; choosing again");
            return Ok((Action::requeue(Duration::from_millis(50)), "skipped"));
        }
        self.audit(
            id,
            AuditKind::Decision,
            format!(
                "roll out with {} (rule `{}`)",
                strategy.label(),
                selection.rule_name
            ),
            serde_json::json!({ "strategy": strategy.label(), "digest": strategy.digest() }),
        )?;
        let now = SystemTime::now();
        let envelope = Envelope {
            plugin_state: None,
            scope: RolloutScope::new(id),
            desired_digest: desired_digest.clone(),
            drifts: views,
            not_before_ms: None,
        };
        let record = RolloutRecord {
            instance_id: id.to_owned(),
            strategy: strategy.metadata().name.clone(),
            plugin_version: strategy.metadata().version.to_string(),
            plugin_digest: strategy.digest().to_owned(),
            state: serde_json::to_value(&envelope).expect("envelope serialises"),
            step: 0,
            started_at: now,
            updated_at: now,
            phase: RolloutPhase::Running,
        };
        self.store.save_rollout(&record)?;
        drop(pins);
        self.step(
            &instance,
            &selection,
            record,
            envelope,
            &desired,
            applied.map(|a| a.config),
        )
        .await
    }

    /// Resume a rollout recorded in the store.
    async fn continue_rollout(
        &self,
        instance: &client::Instance,
        selection: &Selection,
        record: RolloutRecord,
        desired: &Value,
        desired_digest: &str,
    ) -> Result<(Action, &'static str)> {
        let id = instance.id.as_str();
        let mut envelope: Envelope =
            serde_json::from_value(record.state.clone()).unwrap_or_else(|_| Envelope {
                plugin_state: None,
                scope: RolloutScope::new(id),
                desired_digest: String::new(),
                drifts: Vec::new(),
                not_before_ms: None,
            });
        let applied = self.store.last_applied(id)?.map(|a| a.config);
        match record.phase {
            RolloutPhase::Aborting => {
                return self
                    .abort_step(instance, record, envelope, desired, applied)
                    .await;
            }
            RolloutPhase::AwaitingApproval => {
                if self.store.take_approval(id)?.is_none() {
                    return Ok((Action::await_change(), "awaiting_approval"));
                }
                self.audit(
                    id,
                    AuditKind::Approval,
                    "approval received; rollout continues".into(),
                    Value::Null,
                )?;
            }
            RolloutPhase::Running => {
                let now = unix_ms(SystemTime::now());
                if let Some(not_before) = envelope.not_before_ms
                    && now < not_before
                {
                    return Ok((
                        Action::requeue(Duration::from_millis(not_before - now)),
                        "progressing",
                    ));
                }
            }
        }
        if envelope.desired_digest != desired_digest {
            // The desired configuration changed mid-rollout: the strategy carries on with
            // the new one (its state still describes what it has done so far).
            self.audit(
                id,
                AuditKind::Observation,
                "desired configuration changed during the rollout; continuing with the new one"
                    .into(),
                serde_json::json!({ "from": envelope.desired_digest, "to": desired_digest }),
            )?;
            envelope.desired_digest = desired_digest.to_owned();
        }
        let mut record = record;
        record.phase = RolloutPhase::Running;
        self.step(instance, selection, record, envelope, desired, applied)
            .await
    }

    /// Take one strategy step and act on its progress.
    async fn step(
        &self,
        instance: &client::Instance,
        selection: &Selection,
        mut record: RolloutRecord,
        mut envelope: Envelope,
        desired: &Value,
        applied: Option<Value>,
    ) -> Result<(Action, &'static str)> {
        let id = instance.id.as_str();
        let (strategy, progress) = self
            .rollout_call(&record, &mut envelope, selection, desired, applied, false)
            .await?;
        let progress = match progress {
            Ok(progress) => progress,
            Err(error) => {
                self.save_envelope(&mut record, &envelope)?;
                return Err(self.plugin_failed(id, error)?);
            }
        };
        self.after_progress(instance, &strategy, record, envelope, desired, progress)
    }

    fn after_progress(
        &self,
        instance: &client::Instance,
        strategy: &Arc<Plugin>,
        mut record: RolloutRecord,
        mut envelope: Envelope,
        desired: &Value,
        progress: Progress,
    ) -> Result<(Action, &'static str)> {
        let id = instance.id.as_str();
        match progress {
            Progress::Done(message) => {
                self.store
                    .record_applied(id, desired, &config_digest(desired))?;
                self.store.clear_rollout(id)?;
                self.given_up_clear(id);
                self.audit(
                    id,
                    AuditKind::Outcome,
                    format!("converged: {message}"),
                    serde_json::json!({ "strategy": strategy.label(), "steps": record.step + 1 }),
                )?;
                self.conditions(
                    id,
                    &[
                        (ConditionType::Synced, true, "Converged", &message),
                        (ConditionType::Progressing, false, "Converged", ""),
                        (ConditionType::Degraded, false, "Converged", ""),
                        (ConditionType::AwaitingApproval, false, "Converged", ""),
                    ],
                )?;
                Ok((Action::await_change(), "synced"))
            }
            Progress::Requeue(requeue) => {
                envelope.plugin_state = Some(requeue.state);
                envelope.not_before_ms = Some(unix_ms(SystemTime::now()) + requeue.after_ms);
                record.step += 1;
                self.save_envelope(&mut record, &envelope)?;
                self.conditions(
                    id,
                    &[
                        (
                            ConditionType::Synced,
                            false,
                            "RolloutInProgress",
                            &requeue.message,
                        ),
                        (
                            ConditionType::Progressing,
                            true,
                            "RolloutInProgress",
                            &requeue.message,
                        ),
                    ],
                )?;
                Ok((
                    Action::requeue(Duration::from_millis(requeue.after_ms)),
                    "progressing",
                ))
            }
            Progress::AwaitApproval(wait) => {
                envelope.plugin_state = Some(wait.state);
                record.step += 1;
                record.phase = RolloutPhase::AwaitingApproval;
                self.save_envelope(&mut record, &envelope)?;
                self.store.request_approval(id, &wait.message)?;
                self.audit(
                    id,
                    AuditKind::Decision,
                    format!("awaiting approval: {}", wait.message),
                    Value::Null,
                )?;
                self.conditions(
                    id,
                    &[(
                        ConditionType::AwaitingApproval,
                        true,
                        "ApprovalRequested",
                        &wait.message,
                    )],
                )?;
                Ok((Action::await_change(), "awaiting_approval"))
            }
            Progress::Failed(failure) => {
                self.store.clear_rollout(id)?;
                self.audit(
                    id,
                    AuditKind::Outcome,
                    format!("rollout failed: {}", failure.reason),
                    serde_json::json!({ "retryable": failure.retryable, "strategy": strategy.label() }),
                )?;
                self.conditions(
                    id,
                    &[
                        (
                            ConditionType::Synced,
                            false,
                            "RolloutFailed",
                            &failure.reason,
                        ),
                        (ConditionType::Progressing, false, "RolloutFailed", ""),
                        (
                            ConditionType::Degraded,
                            true,
                            "RolloutFailed",
                            &failure.reason,
                        ),
                    ],
                )?;
                if failure.retryable {
                    Err(Error::StrategyFailed {
                        plugin: strategy.label(),
                        instance: id.to_owned(),
                        reason: failure.reason,
                    })
                } else {
                    self.give_up(id, &envelope.desired_digest);
                    Ok((Action::await_change(), "degraded"))
                }
            }
        }
    }

    /// Call the rollout's pinned strategy (`step`, or `abort` when `abort`), audit the
    /// control-plane calls it made and keep its new scope in `envelope`.
    async fn rollout_call(
        &self,
        record: &RolloutRecord,
        envelope: &mut Envelope,
        selection: &Selection,
        desired: &Value,
        applied: Option<Value>,
        abort: bool,
    ) -> Result<(Arc<Plugin>, std::result::Result<Progress, Box<CallError>>)> {
        let strategy = self.pinned(record)?;
        let rollout = self.rollout_input(record, envelope, selection, desired, applied.as_ref());
        let outcome = self
            .run_strategy(
                strategy.clone(),
                rollout,
                envelope.scope.clone(),
                false,
                abort,
            )
            .await?;
        self.audit_calls(&record.instance_id, &strategy, &outcome.calls)?;
        envelope.scope = outcome.scope;
        Ok((strategy, outcome.progress))
    }

    /// Run the strategy's `abort` for a rollout an operator aborted.
    async fn abort_step(
        &self,
        instance: &client::Instance,
        mut record: RolloutRecord,
        mut envelope: Envelope,
        desired: &Value,
        applied: Option<Value>,
    ) -> Result<(Action, &'static str)> {
        let id = instance.id.as_str();
        let selection = self.policy.select(&Self::facts(instance));
        let (_, progress) = self
            .rollout_call(&record, &mut envelope, &selection, desired, applied, true)
            .await?;
        match progress {
            Err(error) => {
                self.save_envelope(&mut record, &envelope)?;
                Err(self.plugin_failed(id, error)?)
            }
            Ok(Progress::Requeue(requeue)) => {
                envelope.plugin_state = Some(requeue.state);
                record.step += 1;
                self.save_envelope(&mut record, &envelope)?;
                Ok((
                    Action::requeue(Duration::from_millis(requeue.after_ms)),
                    "progressing",
                ))
            }
            Ok(other) => {
                let message = match other {
                    Progress::Done(m) => m,
                    Progress::Failed(f) => format!("abort failed: {}", f.reason),
                    Progress::AwaitApproval(a) => a.message,
                    Progress::Requeue(_) => unreachable!("handled above"),
                };
                self.store.clear_rollout(id)?;
                self.give_up(id, &envelope.desired_digest);
                self.audit(
                    id,
                    AuditKind::Outcome,
                    format!("rollout aborted: {message}"),
                    Value::Null,
                )?;
                self.conditions(
                    id,
                    &[
                        (ConditionType::Synced, false, "Aborted", &message),
                        (ConditionType::Progressing, false, "Aborted", ""),
                        (ConditionType::AwaitingApproval, false, "Aborted", ""),
                    ],
                )?;
                Ok((Action::await_change(), "degraded"))
            }
        }
    }

    /// Mark a rollout for abort; the next reconcile runs the strategy's `abort`.
    pub fn request_abort(&self, id: &str) -> Result<bool> {
        let Some(mut record) = self.store.load_rollout(id)? else {
            return Ok(false);
        };
        record.phase = RolloutPhase::Aborting;
        record.updated_at = SystemTime::now();
        self.store.save_rollout(&record)?;
        self.audit(
            id,
            AuditKind::Decision,
            "abort requested by an operator".into(),
            Value::Null,
        )?;
        Ok(true)
    }

    /// Forget a permanent failure or an abort so the next reconcile tries again.
    pub fn retry(&self, id: &str) {
        self.given_up_clear(id);
    }

    /// The dry-run plan for one instance (`setpoint diff`): nothing is persisted and no
    /// mutating call is sent.
    pub async fn plan(&self, id: &str) -> Result<Plan> {
        let instance = self.cp.get_instance(id).await?;
        let selection = self.policy.select(&Self::facts(&instance));
        let comparator = self.resolve(&selection, World::Comparator)?;
        let strategy = self.resolve(&selection, World::Strategy)?;
        let desired = self.cp.desired_configuration(id).await?;
        let applied = self.store.last_applied(id)?;
        let (classification, drifts) = match (&applied, instance.status) {
            (_, InstanceStatus::Created | InstanceStatus::Stopped | InstanceStatus::Error) => {
                (Classification::Missing, Vec::new())
            }
            (None, _) => (Classification::Unmanaged, Vec::new()),
            (Some(applied), _) => {
                self.judge(&selection, id, &desired, &applied.config)
                    .await?
            }
        };
        let (calls, outcome) = if matches!(classification, Classification::InSync) {
            (Vec::new(), "nothing to do".to_owned())
        } else {
            self.simulate(id, &strategy, &selection, &desired, &applied, &drifts)
                .await?
        };
        Ok(Plan {
            instance_id: id.to_owned(),
            rule: selection.rule_name.clone(),
            comparator: comparator.label(),
            strategy: strategy.label(),
            classification,
            drifts: drifts.iter().map(DriftView::from).collect(),
            calls,
            outcome,
        })
    }

    /// Run a rollout in dry-run from step 0 until it finishes (or [`MAX_PLAN_STEPS`]),
    /// collecting the calls it would make.
    async fn simulate(
        &self,
        id: &str,
        strategy: &Arc<Plugin>,
        selection: &Selection,
        desired: &Value,
        applied: &Option<crate::store::AppliedConfig>,
        drifts: &[Drift],
    ) -> Result<(Vec<ImportCall>, String)> {
        let mut scope = RolloutScope::new(id);
        let mut state = None;
        let mut elapsed_ms = 0u64;
        let mut calls = Vec::new();
        for step in 0..MAX_PLAN_STEPS {
            let rollout = Rollout {
                instance_id: id.to_owned(),
                desired: desired.to_string(),
                actual: applied.as_ref().map(|a| a.config.to_string()),
                drifts: drifts.to_vec(),
                params: Value::Object(selection.strategy_params.clone()).to_string(),
                state: state.clone(),
                step,
                elapsed_ms,
            };
            let outcome = self
                .run_strategy(strategy.clone(), rollout, scope, true, false)
                .await?;
            calls.extend(outcome.calls);
            scope = outcome.scope;
            match outcome.progress {
                Err(error) => return Err(Error::Plugin(error)),
                Ok(Progress::Done(m)) => return Ok((calls, format!("done: {m}"))),
                Ok(Progress::Failed(f)) => return Ok((calls, format!("failed: {}", f.reason))),
                Ok(Progress::AwaitApproval(a)) => {
                    return Ok((calls, format!("would await approval: {}", a.message)));
                }
                Ok(Progress::Requeue(r)) => {
                    state = Some(r.state);
                    elapsed_ms += r.after_ms;
                }
            }
        }
        Ok((
            calls,
            format!("still in progress after {MAX_PLAN_STEPS} simulated steps"),
        ))
    }

    fn rollout_input(
        &self,
        record: &RolloutRecord,
        envelope: &Envelope,
        selection: &Selection,
        desired: &Value,
        applied: Option<&Value>,
    ) -> Rollout {
        let elapsed_ms = SystemTime::now()
            .duration_since(record.started_at)
            .unwrap_or_default()
            .as_millis() as u64;
        Rollout {
            instance_id: record.instance_id.clone(),
            desired: desired.to_string(),
            actual: applied.map(Value::to_string),
            drifts: envelope
                .drifts
                .iter()
                .map(|d| Drift {
                    path: d.path.clone(),
                    kind: match d.kind.as_str() {
                        "added" => DriftKind::Added,
                        "removed" => DriftKind::Removed,
                        _ => DriftKind::Changed,
                    },
                    desired: d.desired.clone(),
                    actual: d.actual.clone(),
                    message: d.message.clone(),
                })
                .collect(),
            params: Value::Object(selection.strategy_params.clone()).to_string(),
            state: envelope.plugin_state.clone(),
            step: record.step,
            elapsed_ms,
        }
    }

    fn save_envelope(&self, record: &mut RolloutRecord, envelope: &Envelope) -> Result<()> {
        record.state = serde_json::to_value(envelope).expect("envelope serialises");
        record.updated_at = SystemTime::now();
        self.store.save_rollout(record)?;
        Ok(())
    }

    async fn run_strategy(
        &self,
        strategy: Arc<Plugin>,
        rollout: Rollout,
        scope: RolloutScope,
        dry_run: bool,
        abort: bool,
    ) -> Result<crate::runtime::StepOutcome> {
        let runtime = self.runtime.clone();
        let host = Arc::new(Bridge::new(
            self.cp.clone(),
            tokio::runtime::Handle::current(),
        ));
        let label = strategy.label();
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            if abort {
                runtime.abort(&strategy, &rollout, host, scope, dry_run)
            } else {
                runtime.step(&strategy, &rollout, host, scope, dry_run)
            }
        })
        .await
        .map_err(|_| Error::Cancelled)?;
        self.metrics.plugin_call(
            &label,
            if abort { "abort" } else { "step" },
            started.elapsed().as_secs_f64(),
            outcome.progress.as_ref().err().map(|e| failure_reason(e)),
        );
        Ok(outcome)
    }

    /// Run the comparator on the applied configuration: in sync when it finds no drift.
    async fn judge(
        &self,
        selection: &Selection,
        id: &str,
        desired: &Value,
        applied: &Value,
    ) -> Result<(Classification, Vec<Drift>)> {
        let drifts = self.compare(selection, id, desired, applied).await?;
        let classification = if drifts.is_empty() {
            Classification::InSync
        } else {
            Classification::Drifted
        };
        Ok((classification, drifts))
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
            result.as_ref().err().map(|e| failure_reason(e)),
        );
        match result {
            Ok(drifts) => Ok(drifts),
            Err(error) => Err(self.plugin_failed(id, error)?),
        }
    }

    /// Record a failed plugin call on its instance only (Degraded) and turn it into the
    /// reconcile's error.
    fn plugin_failed(&self, id: &str, error: Box<CallError>) -> Result<Error> {
        let message = error.to_string();
        self.audit(
            id,
            AuditKind::Outcome,
            format!("plugin call failed: {message}"),
            serde_json::json!({ "plugin": error.plugin, "phase": error.phase, "trap": error.is_trap() }),
        )?;
        self.conditions(
            id,
            &[
                (ConditionType::Synced, false, "PluginFailed", &message),
                (ConditionType::Degraded, true, "PluginFailed", &message),
            ],
        )?;
        Ok(Error::Plugin(error))
    }

    fn pinned(&self, record: &RolloutRecord) -> Result<Arc<Plugin>> {
        self.plugins()
            .by_digest(&record.plugin_digest)
            .ok_or_else(|| Error::PinnedPluginGone {
                instance: record.instance_id.clone(),
                plugin: format!("{}@{}", record.strategy, record.plugin_version),
                digest: record.plugin_digest.clone(),
            })
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

    /// Policy gates before acting: `Some(action)` stops here.
    fn gates(
        &self,
        id: &str,
        selection: &Selection,
        classification: Classification,
        drifts: &[Drift],
    ) -> Result<Option<(Action, &'static str)>> {
        let gates = &selection.gates;
        if gates.protected {
            let message = format!(
                "protected by rule `{}`: {} reported, no action taken",
                selection.rule_name,
                classification.as_str()
            );
            self.audit(id, AuditKind::Decision, message.clone(), Value::Null)?;
            self.conditions(id, &[(ConditionType::Synced, false, "Protected", &message)])?;
            return Ok(Some((Action::await_change(), "reported")));
        }
        if gates.skip_destructive && drifts.iter().any(|d| d.kind == DriftKind::Removed) {
            let message = format!(
                "skip_destructive (rule `{}`): the change removes configuration; reported only",
                selection.rule_name
            );
            self.audit(id, AuditKind::Decision, message.clone(), Value::Null)?;
            self.conditions(
                id,
                &[(ConditionType::Synced, false, "DestructiveSkipped", &message)],
            )?;
            return Ok(Some((Action::await_change(), "reported")));
        }
        if let Some(window) = &gates.window {
            let now = SystemTime::now();
            if !window.is_open(now) {
                let wait = window.until_open(now);
                let message = format!("outside the maintenance window; next opens in {wait:?}");
                self.conditions(
                    id,
                    &[(ConditionType::Progressing, false, "OutsideWindow", &message)],
                )?;
                return Ok(Some((Action::requeue(wait), "skipped")));
            }
        }
        if gates.approval == Approval::BeforeApply && self.store.take_approval(id)?.is_none() {
            let message = format!(
                "{} needs approval before it is applied (rule `{}`): run `setpoint approve {id}`",
                classification.as_str(),
                selection.rule_name
            );
            let pending = self.store.pending_approvals()?;
            if !pending.iter().any(|p| p.instance_id == id) {
                self.store.request_approval(id, &message)?;
                self.audit(id, AuditKind::Decision, message.clone(), Value::Null)?;
            }
            self.conditions(
                id,
                &[(
                    ConditionType::AwaitingApproval,
                    true,
                    "ApprovalRequested",
                    &message,
                )],
            )?;
            return Ok(Some((Action::await_change(), "awaiting_approval")));
        }
        Ok(None)
    }

    fn count_drift(&self, classification: Classification) {
        self.metrics
            .drift_detected
            .get_or_create(&DriftLabels {
                classification: classification.as_str().to_owned(),
            })
            .inc();
    }

    fn orphaned(&self, id: &str) -> Result<(Action, &'static str)> {
        if self.store.last_applied(id)?.is_none() && self.store.load_rollout(id)?.is_none() {
            // Never managed here: nothing to report.
            return Ok((Action::await_change(), "skipped"));
        }
        self.count_drift(Classification::Orphaned);
        let message = "the control plane no longer knows this instance; the host's record is kept for an operator";
        self.audit(
            id,
            AuditKind::Observation,
            format!("instance is orphaned: {message}"),
            Value::Null,
        )?;
        self.conditions(id, &[(ConditionType::Synced, false, "Orphaned", message)])?;
        Ok((Action::await_change(), "reported"))
    }

    fn unwanted(&self, id: &str) -> Result<(Action, &'static str)> {
        let message = "the instance exists but has no desired configuration; reported only";
        self.conditions(id, &[(ConditionType::Synced, false, "Unwanted", message)])?;
        Ok((Action::await_change(), "reported"))
    }

    fn unmanaged(&self, id: &str, instance: &client::Instance) -> Result<(Action, &'static str)> {
        let message = format!(
            "instance is {} but this host never applied a configuration to it; reported only (stop it, or let setpoint start it, to manage it)",
            instance.status.as_str()
        );
        self.conditions(id, &[(ConditionType::Synced, false, "Unmanaged", &message)])?;
        Ok((Action::await_change(), "reported"))
    }

    fn audit_calls(&self, id: &str, strategy: &Plugin, calls: &[ImportCall]) -> Result<()> {
        for call in calls {
            let (kind, verb) = match &call.outcome {
                CallOutcome::Denied(_) => {
                    self.metrics.denied_calls.inc();
                    (AuditKind::Denied, "denied")
                }
                CallOutcome::Simulated => (AuditKind::Action, "simulated"),
                CallOutcome::Ok if !call.mutating => continue,
                CallOutcome::Ok => (AuditKind::Action, "ok"),
                CallOutcome::Failed(_) => (AuditKind::Action, "failed"),
            };
            self.audit(
                id,
                kind,
                format!(
                    "{} called {} on {}: {verb}",
                    strategy.label(),
                    call.call,
                    call.target
                ),
                serde_json::to_value(call).expect("call serialises"),
            )?;
        }
        Ok(())
    }

    fn audit(&self, id: &str, kind: AuditKind, message: String, details: Value) -> Result<()> {
        self.store.append_audit(&AuditEntry {
            instance_id: Some(id.to_owned()),
            kind,
            message,
            details,
        })?;
        Ok(())
    }

    /// Set conditions, writing only those that changed (a converged resync writes
    /// nothing).
    fn conditions(&self, id: &str, updates: &[(ConditionType, bool, &str, &str)]) -> Result<()> {
        let current = self.store.conditions(id)?;
        for (type_, status, reason, message) in updates {
            let same = current.iter().any(|c| {
                c.type_ == *type_
                    && c.status == *status
                    && c.reason == *reason
                    && c.message == *message
            });
            if same {
                continue;
            }
            self.store.set_condition(
                id,
                &Condition {
                    type_: *type_,
                    status: *status,
                    reason: (*reason).to_owned(),
                    message: (*message).to_owned(),
                    last_transition: SystemTime::now(),
                },
            )?;
        }
        Ok(())
    }

    fn give_up(&self, id: &str, digest: &str) {
        self.given_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), digest.to_owned());
    }

    fn given_up_for(&self, id: &str, digest: &str) -> bool {
        self.given_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|d| d == digest)
    }

    fn given_up_clear(&self, id: &str) {
        self.given_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn failure_reason(e: &CallError) -> &'static str {
    match e.failure {
        CallFailure::Timeout { .. } => "timeout",
        CallFailure::OutOfMemory { .. } => "out_of_memory",
        CallFailure::Trap { .. } => "trap",
        CallFailure::InputTooLarge { .. } => "input_too_large",
        CallFailure::Plugin(_) => "plugin_error",
    }
}
