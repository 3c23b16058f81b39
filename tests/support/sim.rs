//! A simulated control plane for the deterministic simulation
//! (`tests/reliability/simulation.rs`): instances with a desired and a running
//! configuration, a change feed, a virtual clock, and faults armed by the simulation's
//! scheduler (a call that fails, fails after it took effect, is slow, or is the last one
//! a controller makes before it crashes).
//!
//! Every controller the simulation builds gets its own [`SimHandle`], numbered by
//! generation. A crash takes an image of the store's files at the moment of the call
//! (what a SIGKILL would leave on disk) and ends the generation: whatever the dead
//! controller still sends has no effect, and whatever it still writes goes to files
//! nobody reads again. The simulated control plane logs every mutation with whether the
//! store held a rollout for its instance when it landed, so the simulation can hold the
//! controller to its scope and its audit log.
//!
//! Concurrent reconciles, as the work queue's workers run them, are interleaved by the
//! scheduler at control-plane calls: while [`SimState::gating`] names an instance, every
//! call on it first parks at a gate ([`SimState::parked`]) until the scheduler lets it
//! through. Between two gates only one reconcile runs, so a seed's interleaving, like
//! everything else, replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::Value;
use setpoint::client::{
    self, BackendWeight, Capabilities, ChangeBatch, ControlPlane, Health, Instance, InstanceStatus,
    Metrics, PlatformType, RuntimeInfo, StatusChange, Timestamp,
};
use setpoint::controller::{CLONE_OF_LABEL, Clock, config_digest};
use setpoint::store::Store;

/// Virtual time: Unix milliseconds that move only when the simulation says.
#[derive(Debug)]
pub struct SimClock {
    ms: AtomicU64,
}

/// Where virtual time starts: 2026-01-01T00:00:00Z, whatever the wall clock says.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

impl SimClock {
    pub fn new() -> Self {
        SimClock {
            ms: AtomicU64::new(EPOCH_MS),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: u64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn advance_to(&self, ms: u64) {
        self.ms.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }
}

/// Unix milliseconds as the control plane's timestamp.
pub fn timestamp(ms: u64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(ms as i64).expect("a virtual time is a timestamp")
}

/// One instance as the simulated control plane keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimInstance {
    pub status: InstanceStatus,
    pub desired: Value,
    /// What it runs: `Some` exactly while it is `Running`.
    pub running: Option<Value>,
    pub labels: BTreeMap<String, String>,
    pub modified_ms: u64,
    /// How long it takes, after a start, to answer its health probe.
    pub boot_ms: u64,
    /// When it answers its health probe (virtual Unix ms).
    pub healthy_at_ms: u64,
    /// Whether its last stop was someone else's (an operator's), not the host's.
    pub stopped_out_of_band: bool,
}

/// What the scheduler can make of one control-plane call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 503 without doing anything.
    FailBefore,
    /// Do it, then answer as if it timed out.
    FailAfter,
    /// Take this many virtual milliseconds, then answer normally.
    Delay(u64),
    /// The controller dies as it sends the call, which never arrives.
    CrashBefore,
    /// The call takes effect and the controller dies before it reads the answer.
    CrashAfter,
}

/// The label that puts an instance under the simulation's approval rule
/// (`approval = "before-apply"`): every revision started on it needs an operator's
/// approval.
pub const APPROVAL_LABEL: &str = "sim/approval";

/// A mutation that took effect.
#[derive(Debug, Clone)]
pub struct Mutation {
    /// The controller generation that sent it.
    pub generation: u64,
    /// `start`, `stop`, `restart`.
    pub call: &'static str,
    pub target: String,
    /// Whether the store held a rollout of `target` when it landed.
    pub in_rollout: bool,
    /// A start of a revision no operator approved, on an instance that needs approvals:
    /// the revision's digest.
    pub unapproved: Option<String>,
    /// The simulation step it landed in.
    pub step: u64,
}

/// Everything the simulated control plane holds, behind one lock.
#[derive(Debug)]
pub struct SimState {
    pub instances: BTreeMap<String, SimInstance>,
    /// Changes not yet delivered by the feed: `(instance, virtual ms)`, oldest first.
    pub feed: Vec<(String, u64)>,
    /// Every mutation the controller made that took effect.
    pub mutations: Vec<Mutation>,
    /// Digests of every configuration an instance was started with, by the host.
    pub started: BTreeMap<String, BTreeSet<String>>,
    /// The generation whose calls take effect.
    pub live: u64,
    /// Calls counted since the scheduler last armed a fault.
    pub calls: u64,
    /// `(n, fault)`: the n-th call from now meets `fault`.
    pub armed: Option<(u64, Fault)>,
    /// `(call, fault)`: the next call of this name meets `fault` (for scripted tests).
    pub armed_call: Option<(&'static str, Fault)>,
    /// The live generation's store, for the scope check, and the path of its files.
    pub store: Option<(Arc<Store>, PathBuf)>,
    /// Set by a crash: the image of the store's files at the moment of the crash.
    pub crash_image: Option<PathBuf>,
    /// How many images were taken (names the next one).
    pub images: u64,
    /// The step the simulation is in.
    pub step: u64,
    /// What happened, one line each, for the trace hash.
    pub trace: Vec<String>,
    /// Clones made so far (names the next one).
    pub clones_made: u64,
    /// Deleted clones and their owners.
    pub deleted_clones: BTreeMap<String, String>,
    /// Weighted endpoints (named after their instance): backends and weights.
    pub endpoints: BTreeMap<String, Vec<(String, u32)>>,
    /// Instances whose reconciles run at once: their calls park at a gate.
    pub gating: BTreeSet<String>,
    /// Calls parked at the gate, by instance; sending lets the call through.
    pub parked: BTreeMap<String, tokio::sync::oneshot::Sender<()>>,
    /// Woken when a call parks (the scheduler waits for the running reconcile to park
    /// or finish).
    pub scheduler: Option<Waker>,
}

impl SimState {
    /// The instance `id` is a clone of, if it is one (or was one: deleted clones too).
    pub fn owner(&self, id: &str) -> Option<String> {
        match self.instances.get(id) {
            Some(instance) => instance.labels.get(CLONE_OF_LABEL).cloned(),
            None => self.deleted_clones.get(id).cloned(),
        }
    }
}

/// The simulated control plane. Hand each controller a [`Sim::handle`].
#[derive(Debug)]
pub struct Sim {
    state: Mutex<SimState>,
    pub clock: Arc<SimClock>,
}

impl Sim {
    pub fn new(clock: Arc<SimClock>) -> Arc<Sim> {
        Arc::new(Sim {
            state: Mutex::new(SimState {
                instances: BTreeMap::new(),
                feed: Vec::new(),
                mutations: Vec::new(),
                started: BTreeMap::new(),
                live: 0,
                calls: 0,
                armed: None,
                armed_call: None,
                store: None,
                crash_image: None,
                images: 0,
                step: 0,
                trace: Vec::new(),
                clones_made: 0,
                deleted_clones: BTreeMap::new(),
                endpoints: BTreeMap::new(),
                gating: BTreeSet::new(),
                parked: BTreeMap::new(),
                scheduler: None,
            }),
            clock,
        })
    }

    pub fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A control plane for the live generation's controller.
    pub fn handle(self: &Arc<Self>) -> Arc<SimHandle> {
        let generation = self.state().live;
        Arc::new(SimHandle {
            sim: self.clone(),
            generation,
        })
    }

    /// A change the feed will report (and the instance's modification time).
    pub fn changed(&self, state: &mut SimState, id: &str) {
        let now = self.clock.now_ms();
        if let Some(instance) = state.instances.get_mut(id) {
            instance.modified_ms = now;
        }
        state.feed.push((id.to_owned(), now));
    }

    /// Copy the live store's files as a SIGKILL leaves them and end the generation.
    fn crash(&self, state: &mut SimState) {
        let (_, path) = state
            .store
            .as_ref()
            .expect("a crash needs the live store")
            .clone();
        state.images += 1;
        let image = path
            .parent()
            .expect("the store is in a directory")
            .join(format!("image-{}.db", state.images));
        for suffix in ["", "-wal", "-intents"] {
            let from = with_suffix(&path, suffix);
            if from.exists() {
                std::fs::copy(&from, with_suffix(&image, suffix)).expect("copy the store image");
            }
        }
        state.crash_image = Some(image);
        state.live += 1;
        state
            .trace
            .push(format!("crash -> generation {}", state.live));
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn unavailable(call: &str) -> client::Error {
    client::Error::Status {
        call: call.to_owned(),
        status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
        body: "simulated fault".into(),
        retry_after: None,
    }
}

fn timed_out(call: &str) -> client::Error {
    client::Error::Timeout {
        call: call.to_owned(),
        timeout: Duration::from_secs(10),
    }
}

fn not_found(call: &str) -> client::Error {
    client::Error::NotFound {
        call: call.to_owned(),
        body: String::new(),
    }
}

/// One controller generation's view of the simulated control plane.
#[derive(Debug)]
pub struct SimHandle {
    sim: Arc<Sim>,
    generation: u64,
}

impl SimHandle {
    /// Park a call on `target` until the scheduler lets it through, while `target`'s
    /// reconcile runs beside others; at once otherwise.
    async fn gate(&self, target: &str) {
        let through = {
            let mut state = self.sim.state();
            // A clone's calls belong to the reconcile of the instance it was made from.
            let lane = match state.owner(target) {
                Some(owner) if !state.gating.contains(target) => owner,
                _ => target.to_owned(),
            };
            if !state.gating.contains(&lane) {
                return;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let earlier = state.parked.insert(lane.clone(), tx);
            assert!(
                earlier.is_none(),
                "two calls on {lane} at once: the work queue runs one reconcile per instance"
            );
            if let Some(scheduler) = state.scheduler.take() {
                scheduler.wake();
            }
            rx
        };
        // A dropped sender (the batch ended) lets the call through as well.
        let _ = through.await;
    }

    /// Run one call: count it, meet the fault armed for it, apply `op`, log a mutation.
    fn call<T>(
        &self,
        name: &'static str,
        target: &str,
        mutating: bool,
        op: impl FnOnce(&mut SimState, u64) -> client::Result<T>,
    ) -> client::Result<T> {
        let sim = &self.sim;
        let mut state = sim.state();
        let label = format!("{name} {target}");
        if state.live != self.generation {
            state
                .trace
                .push(format!("g{} {label}: dead", self.generation));
            return Err(timed_out(&label));
        }
        state.calls += 1;
        let fault = match state.armed {
            Some((n, fault)) if n == state.calls => {
                state.armed = None;
                Some(fault)
            }
            _ => None,
        };
        let fault = match state.armed_call {
            Some((call, fault)) if call == name && self.generation == state.live => {
                state.armed_call = None;
                Some(fault)
            }
            _ => fault,
        };
        let fault = match fault {
            // A read that fails after it "took effect" is a read that failed.
            Some(Fault::FailAfter) if !mutating => Some(Fault::FailBefore),
            other => other,
        };
        match fault {
            Some(Fault::Delay(ms)) => sim.clock.advance(ms),
            Some(Fault::FailBefore) => {
                state.trace.push(format!("{label}: fault 503"));
                return Err(unavailable(&label));
            }
            Some(Fault::CrashBefore) => {
                state.trace.push(format!("{label}: crash before"));
                sim.crash(&mut state);
                return Err(timed_out(&label));
            }
            _ => {}
        }
        let now = sim.clock.now_ms();
        let result = op(&mut state, now);
        state.trace.push(format!(
            "{label} @{}: {}{}",
            now - EPOCH_MS,
            if result.is_ok() { "ok" } else { "err" },
            fault.map(|f| format!(" ({f:?})")).unwrap_or_default()
        ));
        if mutating && result.is_ok() {
            // A clone's calls (and its deletion) are in the scope of its owner's rollout.
            let owner = state
                .instances
                .get(target)
                .and_then(|i| i.labels.get(CLONE_OF_LABEL).cloned())
                .or_else(|| state.deleted_clones.get(target).cloned())
                .unwrap_or_else(|| target.to_owned());
            let rollout = state
                .store
                .as_ref()
                .and_then(|(store, _)| store.load_rollout(&owner).ok().flatten());
            let in_rollout = match (name, rollout) {
                // The host's sweep deletes a clone no rollout holds (a leak); a rollout
                // deletes only a clone it made.
                ("delete", None) => true,
                ("delete", Some(r)) => r.state["scope"]["clones"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == target)),
                (_, rollout) => rollout.is_some(),
            };
            let unapproved = state.instances.get(target).and_then(|instance| {
                let gated = instance.labels.contains_key(APPROVAL_LABEL);
                let digest = config_digest(instance.running.as_ref()?);
                let approved = state.store.as_ref().is_some_and(|(store, _)| {
                    store
                        .approvals(target)
                        .unwrap_or_default()
                        .iter()
                        .any(|a| a.is_approved() && a.digest == digest)
                });
                (gated && name != "stop" && !approved).then_some(digest)
            });
            let step = state.step;
            state.mutations.push(Mutation {
                generation: self.generation,
                call: name,
                target: target.to_owned(),
                in_rollout,
                unapproved,
                step,
            });
            sim.changed(&mut state, target);
        }
        match fault {
            Some(Fault::FailAfter) => Err(timed_out(&label)),
            Some(Fault::CrashAfter) => {
                sim.crash(&mut state);
                Err(timed_out(&label))
            }
            _ => result,
        }
    }

    fn instance(state: &SimState, id: &str, call: &str) -> client::Result<SimInstance> {
        state
            .instances
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(call))
    }
}

/// The client's view of a simulated instance.
pub fn client_instance(id: &str, instance: &SimInstance) -> Instance {
    Instance {
        id: id.to_owned(),
        name: id.to_owned(),
        description: String::new(),
        platform_type: PlatformType::Simulated,
        created_at: timestamp(EPOCH_MS),
        last_modified_at: Some(timestamp(instance.modified_ms)),
        status: instance.status,
        metadata: instance.labels.clone(),
    }
}

#[async_trait]
impl ControlPlane for SimHandle {
    async fn list_instances(&self) -> client::Result<Vec<Instance>> {
        self.call("list", "*", false, |state, _| {
            Ok(state
                .instances
                .iter()
                .map(|(id, i)| client_instance(id, i))
                .collect())
        })
    }

    async fn get_instance(&self, id: &str) -> client::Result<Instance> {
        self.gate(id).await;
        self.call("get", id, false, |state, _| {
            Ok(client_instance(id, &Self::instance(state, id, "get")?))
        })
    }

    async fn desired_configuration(&self, id: &str) -> client::Result<Value> {
        self.gate(id).await;
        self.call("desired", id, false, |state, _| {
            Ok(Self::instance(state, id, "desired")?.desired)
        })
    }

    async fn runtime_status(&self, id: &str) -> client::Result<RuntimeInfo> {
        self.gate(id).await;
        self.call("status", id, false, |state, _| {
            let instance = Self::instance(state, id, "status")?;
            Ok(RuntimeInfo {
                instance_id: id.to_owned(),
                status: instance.status,
                started_at: None,
                stopped_at: None,
                error_message: None,
                runtime_metadata: Value::Object(Default::default()),
            })
        })
    }

    async fn start(&self, id: &str, configuration: Option<&Value>) -> client::Result<()> {
        self.gate(id).await;
        self.call("start", id, true, |state, now| {
            let instance = state
                .instances
                .get_mut(id)
                .ok_or_else(|| not_found("start"))?;
            let config = configuration.cloned().unwrap_or(instance.desired.clone());
            let digest = config_digest(&config);
            instance.status = InstanceStatus::Running;
            instance.running = Some(config);
            instance.healthy_at_ms = now + instance.boot_ms;
            state
                .started
                .entry(id.to_owned())
                .or_default()
                .insert(digest);
            Ok(())
        })
    }

    async fn stop(&self, id: &str) -> client::Result<()> {
        self.gate(id).await;
        self.call("stop", id, true, |state, _| {
            let instance = state
                .instances
                .get_mut(id)
                .ok_or_else(|| not_found("stop"))?;
            instance.status = InstanceStatus::Stopped;
            instance.running = None;
            instance.stopped_out_of_band = false;
            Ok(())
        })
    }

    async fn restart(&self, id: &str) -> client::Result<()> {
        self.gate(id).await;
        self.call("restart", id, true, |state, now| {
            let instance = state
                .instances
                .get_mut(id)
                .ok_or_else(|| not_found("restart"))?;
            let config = instance.desired.clone();
            let digest = config_digest(&config);
            instance.status = InstanceStatus::Running;
            instance.running = Some(config);
            instance.healthy_at_ms = now + instance.boot_ms;
            state
                .started
                .entry(id.to_owned())
                .or_default()
                .insert(digest);
            Ok(())
        })
    }

    async fn clone_instance(&self, id: &str, request: &Value) -> client::Result<Instance> {
        self.gate(id).await;
        // Named before the call, so that the mutation is logged under the clone.
        let name = {
            let mut state = self.sim.state();
            state.clones_made += 1;
            format!("{id}-clone-{}", state.clones_made)
        };
        let made = self.call("clone", id, true, |state, now| {
            let source = Self::instance(state, id, "clone")?;
            let configuration = request
                .get("configuration")
                .cloned()
                .unwrap_or(source.desired.clone());
            let clone = SimInstance {
                status: InstanceStatus::Created,
                desired: configuration,
                running: None,
                labels: [(CLONE_OF_LABEL.to_owned(), id.to_owned())].into(),
                modified_ms: now,
                boot_ms: source.boot_ms,
                healthy_at_ms: now,
                stopped_out_of_band: false,
            };
            state.instances.insert(name.clone(), clone.clone());
            // The feed reports the new instance too.
            state.feed.push((name.clone(), now));
            Ok(client_instance(&name, &clone))
        });
        if made.is_err() {
            // A call that failed before it took effect made nothing.
            let mut state = self.sim.state();
            if !state.instances.contains_key(&name) {
                state.trace.push(format!("clone {name}: not made"));
            }
        }
        made
    }

    async fn delete_clone(&self, id: &str) -> client::Result<()> {
        self.gate(id).await;
        self.call("delete", id, true, |state, _| {
            let instance = state.instances.get(id).ok_or_else(|| not_found("delete"))?;
            let owner = instance
                .labels
                .get(CLONE_OF_LABEL)
                .cloned()
                .ok_or_else(|| client::Error::Status {
                    call: format!("delete {id}"),
                    status: reqwest::StatusCode::FORBIDDEN,
                    body: "not a clone: the host deletes nothing else".into(),
                    retry_after: None,
                })?;
            state.instances.remove(id);
            state.deleted_clones.insert(id.to_owned(), owner);
            for backends in state.endpoints.values_mut() {
                backends.retain(|(b, _)| b != id);
            }
            Ok(())
        })
    }

    async fn set_traffic_weights(
        &self,
        endpoint: &str,
        backends: &[BackendWeight],
    ) -> client::Result<()> {
        self.gate(endpoint).await;
        self.call("weights", endpoint, true, |state, _| {
            if let Some(b) = backends
                .iter()
                .find(|b| !state.instances.contains_key(&b.instance_id))
            {
                return Err(client::Error::Status {
                    call: format!("weights {endpoint}"),
                    status: reqwest::StatusCode::BAD_REQUEST,
                    body: format!("no instance {}", b.instance_id),
                    retry_after: None,
                });
            }
            state.endpoints.insert(
                endpoint.to_owned(),
                backends
                    .iter()
                    .map(|b| (b.instance_id.clone(), b.weight))
                    .collect(),
            );
            Ok(())
        })
    }

    async fn metrics(&self, id: &str) -> client::Result<Metrics> {
        self.gate(id).await;
        self.call("metrics", id, false, |state, _| {
            Self::instance(state, id, "metrics")?;
            Ok(Metrics {
                requests: 1_000,
                errors: 0,
            })
        })
    }

    async fn changes_after(&self, _: Option<u64>, _: Duration) -> client::Result<ChangeBatch> {
        // The simulation delivers the feed itself (in any order, twice, late).
        Err(client::Error::FeedUnsupported {
            call: "changes_after".into(),
            reason: "the simulation delivers changes".into(),
        })
    }

    async fn changes_since(&self, _: Timestamp) -> client::Result<Vec<StatusChange>> {
        Ok(Vec::new())
    }

    async fn probe_health(&self, id: &str) -> client::Result<Health> {
        self.gate(id).await;
        self.call("health", id, false, |state, now| {
            let instance = Self::instance(state, id, "health")?;
            let healthy =
                instance.status == InstanceStatus::Running && now >= instance.healthy_at_ms;
            Ok(Health {
                healthy,
                detail: (!healthy).then(|| format!("{:?}", instance.status)),
            })
        })
    }

    async fn running_configuration(&self, id: &str) -> client::Result<Option<Value>> {
        self.gate(id).await;
        self.call("running", id, false, |state, _| {
            Ok(Self::instance(state, id, "running")?.running)
        })
    }

    async fn running_configurations(
        &self,
    ) -> client::Result<std::collections::HashMap<String, Value>> {
        self.call("running-all", "*", false, |state, _| {
            Ok(state
                .instances
                .iter()
                .filter_map(|(id, i)| Some((id.clone(), i.running.clone()?)))
                .collect())
        })
    }

    async fn capabilities(&self) -> client::Result<Capabilities> {
        // Not counted as a call: it is a constant the client caches.
        Ok(Capabilities {
            health: true,
            running_configuration: true,
            clone_instance: true,
            delete_clone: true,
            traffic_weights: true,
            metrics: true,
            ..Capabilities::default()
        })
    }
}
