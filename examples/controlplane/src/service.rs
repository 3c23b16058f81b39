//! The control plane itself: every DRaaS operation (create, start, stop, patch the
//! configuration, publish a status, …) as a method of [`ControlPlane`], independent of
//! HTTP.
//!
//! State lives in memory (one [`State`] behind a mutex) and is written through to the
//! [`Store`] before the in-memory copy changes, so a failed write changes nothing. Every
//! status transition goes through [`ControlPlane::commit`], which stores the instance
//! and its feed entry in one transaction and then publishes the entry on the [`Feed`].
//! Lifecycle operations on one instance are serialised by a per-instance async lock;
//! process exits are handled under the same lock ([`ControlPlane::handle_exit`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::feed::Feed;
use crate::model::{
    Instance, InstanceStatus, Labels, PlatformType, RuntimeInfo, StatusChange, configuration_port,
    default_configuration, fill_missing, normalize_configuration,
};
use crate::patch::{Patch, PatchFailure};
use crate::platform::process::probe_host;
use crate::platform::{ExitEvent, PlatformError, ProcessPlatform, simulated};
use crate::store::{InstanceRecord, Runtime, Store, StoreError, Write};

/// The label a clone carries, naming the instance it was cloned from.
pub const CLONE_OF_LABEL: &str = "setpoint.io/clone-of";
/// The port a Simulated instance gets when its configuration names none (the seed's
/// default). Simulated instances do not take ports from the range.
const SIMULATED_DEFAULT_PORT: u16 = 8080;
/// `source` of the changes the control plane records itself.
const SOURCE_CONTROL_PLANE: &str = "controlplane";
/// `source` of the changes recorded by the process monitor.
const SOURCE_MONITOR: &str = "process-monitor";
/// How long a shutdown waits for lifecycle operations in flight before it stops the
/// processes (a start is bounded by the start timeout, a stop by the stop timeout).
const SHUTDOWN_IN_FLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A failed control-plane operation. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such instance (404).
    #[error("instance '{0}' not found")]
    InstanceNotFound(String),
    /// No such endpoint (404).
    #[error("endpoint '{0}' not found")]
    EndpointNotFound(String),
    /// The instance exists but its desired configuration was removed (404).
    #[error("instance '{0}' has no desired configuration")]
    ConfigurationNotFound(String),
    /// The request is malformed or has a wrong type (400).
    #[error("{0}")]
    BadRequest(String),
    /// A JSON Patch was malformed (400) or could not be applied (422).
    #[error(transparent)]
    Patch(#[from] PatchFailure),
    /// The request is well-formed but cannot be applied (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Every port of the range is allocated or in use (503).
    #[error("no free port in {}-{}: delete instances or widen --port-range", .0.start(), .0.end())]
    NoFreePort(RangeInclusive<u16>),
    /// Starting the instance failed; it is now in `Error` (500).
    #[error("instance '{id}' failed to start")]
    StartFailed {
        /// The instance.
        id: String,
        /// Why.
        #[source]
        source: PlatformError,
    },
    /// An instance did not answer a probe or a proxied request (502).
    #[error("{0}")]
    Upstream(String),
    /// Nothing can serve the request right now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The database failed (500).
    #[error("storing the change failed")]
    Store(#[from] StoreError),
    /// An operation's task ended without an answer (it panicked) (500).
    #[error("{0}")]
    Internal(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings the control plane needs at run time.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ports handed to Process instances.
    pub port_range: RangeInclusive<u16>,
}

/// `POST /api/server/instances`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInstance {
    /// Required, non-empty.
    pub name: String,
    /// Optional free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Initial configuration (the seed's `{host, port, logLevel}`; sources, queries and
    /// reactions are accepted too). Missing keys get defaults; a missing port is allocated.
    #[serde(default)]
    pub server_configuration: Option<Value>,
    /// `Process` (default) or `Simulated`.
    #[serde(default)]
    pub platform_type: Option<PlatformType>,
    /// Labels.
    #[serde(default)]
    pub metadata: Option<Labels>,
}

/// `POST /api/status/updates`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    /// The instance.
    pub instance_id: String,
    /// Its new status (string or integer).
    pub status: InstanceStatus,
    /// Who reports it; required.
    pub source: String,
    /// Details, merged into the runtime metadata.
    #[serde(default)]
    pub metadata: Option<Labels>,
}

/// `POST /api/extensions/instances/{id}/clone`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneInstance {
    /// Name of the clone (default `{name}-clone-{n}`).
    #[serde(default)]
    pub name: Option<String>,
    /// Its configuration (default: the source's desired configuration); missing keys are
    /// filled from the source's. On the Process platform the port is always a new one.
    #[serde(default)]
    pub configuration: Option<Value>,
    /// Extra labels.
    #[serde(default)]
    pub metadata: Option<Labels>,
}

/// `GET /api/extensions/instances/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Whether the instance answered its health check.
    pub healthy: bool,
    /// What it said, or why it could not be asked.
    pub detail: String,
}

/// One backend of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The instance serving it.
    pub instance_id: String,
    /// Its share of requests relative to the others (0 = none).
    pub weight: u32,
}

/// `PUT /api/extensions/endpoints/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// The backends and their weights.
    pub backends: Vec<Backend>,
}

/// An endpoint as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// The backends and their weights.
    pub backends: Vec<Backend>,
    /// The proxy route that splits requests across the backends.
    pub proxy_path: String,
}

/// Where a proxied request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTarget {
    /// The chosen instance.
    pub instance_id: String,
    /// Where it listens.
    pub host: String,
    /// Where it listens.
    pub port: u16,
}

#[derive(Debug, Default)]
struct EndpointState {
    spec: EndpointSpec,
    /// Smooth weighted round robin (nginx's): each pick adds every live backend's weight
    /// to its counter, takes the largest and subtracts the total from it. Over any run of
    /// `total` picks every backend gets exactly its share, interleaved.
    current: HashMap<String, i64>,
}

#[derive(Debug, Default)]
struct State {
    instances: HashMap<String, InstanceRecord>,
    ports: BTreeMap<u16, String>,
    next_order: u64,
    endpoints: BTreeMap<String, EndpointState>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    state: Mutex<State>,
    store: Mutex<Store>,
    feed: Feed,
    process: ProcessPlatform,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Lifecycle operations running in their own task ([`ControlPlane::detached`]);
    /// shutdown waits for them so none starts a process after it.
    in_flight: watch::Sender<usize>,
    shutting_down: watch::Sender<bool>,
    /// Requests this control plane could not serve as asked: no such route, or (in
    /// seed-only mode) a parameter the seed API lacks. Tests read it to prove a client
    /// stayed within an API.
    refused: Mutex<Vec<String>>,
    /// Lifecycle calls carried out, in the order they ended ([`ControlPlane::lifecycle_calls`]).
    calls: Mutex<CallLog>,
}

/// How many lifecycle calls [`ControlPlane::lifecycle_calls`] keeps (the oldest go first).
pub const LIFECYCLE_CALLS_KEPT: usize = 100_000;

#[derive(Debug, Default)]
struct CallLog {
    next: u64,
    calls: std::collections::VecDeque<LifecycleCall>,
}

/// One lifecycle call (start, stop, restart, clone, delete) this control plane received
/// and carried out, or refused, as it ended: what a client's own record of its calls can
/// be compared with. Kept in memory only (a restart of the control plane forgets them).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleCall {
    /// Increases by one per call, in the order calls ended.
    pub sequence: u64,
    /// `start`, `stop`, `restart`, `clone` or `delete`.
    pub operation: String,
    /// The instance the call named (for `clone`, the instance cloned).
    pub instance_id: String,
    /// For a `clone` that succeeded: the new instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clone_id: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended.
    pub at: chrono::DateTime<Utc>,
}

/// A status transition to record with [`ControlPlane::commit`].
struct Transition {
    status: InstanceStatus,
    source: String,
    metadata: Labels,
    /// Set as the error message (and cleared by any non-`Error` transition).
    error: Option<String>,
}

impl Transition {
    fn new(status: InstanceStatus, source: &str) -> Self {
        Self {
            status,
            source: source.to_owned(),
            metadata: Labels::new(),
            error: None,
        }
    }

    fn with(mut self, metadata: Labels) -> Self {
        self.metadata.extend(metadata);
        self
    }
}

/// The reference DRaaS control plane. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Loads the state from `store` and makes a control plane around it. Call
    /// [`ControlPlane::recover`] next.
    pub fn new(
        settings: Settings,
        store: Store,
        feed_capacity: usize,
        process: ProcessPlatform,
    ) -> Result<Self> {
        let loaded = store.load()?;
        let mut state = State {
            next_order: loaded.instances.last().map_or(0, |r| r.order) + 1,
            ports: loaded.ports,
            ..State::default()
        };
        for record in loaded.instances {
            state.instances.insert(record.instance.id.clone(), record);
        }
        for (name, endpoint) in loaded.endpoints {
            if let Ok(spec) = serde_json::from_value(endpoint) {
                state.endpoints.insert(
                    name,
                    EndpointState {
                        spec,
                        current: HashMap::new(),
                    },
                );
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(state),
                store: Mutex::new(store),
                feed: Feed::new(feed_capacity, loaded.feed, loaded.latest_sequence),
                process,
                op_locks: Mutex::default(),
                in_flight: watch::channel(0).0,
                shutting_down: watch::channel(false).0,
                refused: Mutex::new(Vec::new()),
                calls: Mutex::default(),
            }),
        })
    }

    /// The change feed.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// The Process platform.
    pub fn process_platform(&self) -> &ProcessPlatform {
        &self.inner.process
    }

    /// Becomes `true` when the control plane shuts down (long polls end early).
    pub fn shutting_down(&self) -> watch::Receiver<bool> {
        self.inner.shutting_down.subscribe()
    }

    // ----- instances -------------------------------------------------------------------

    /// Creates an instance: allocates a port (Process), stores the initial configuration
    /// and records `Created`.
    pub fn create(&self, request: CreateInstance) -> Result<Instance> {
        if request.name.trim().is_empty() {
            return Err(Error::BadRequest("`name` must not be empty".into()));
        }
        let platform = request.platform_type.unwrap_or_default();
        let mut config = match request.server_configuration {
            None | Some(Value::Null) => json!({}),
            Some(config) => normalize_configuration(config)
                .map_err(|e| Error::BadRequest(format!("serverConfiguration: {e}")))?,
        };
        let labels = request.metadata.unwrap_or_default();
        self.insert_new(
            request.name,
            request.description.unwrap_or_default(),
            platform,
            &mut config,
            labels,
        )
    }

    fn insert_new(
        &self,
        name: String,
        description: String,
        platform: PlatformType,
        config: &mut Value,
        labels: Labels,
    ) -> Result<Instance> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut state = self.state();
        let explicit_port = configuration_port(config);
        let claimed = match platform {
            PlatformType::Process => {
                let port = match explicit_port {
                    Some(port) => {
                        if let Some(user) = Self::port_user(&state, port, None) {
                            return Err(Error::Conflict(self.port_taken(port, user)));
                        }
                        port
                    }
                    None => self.free_port(&state)?,
                };
                Some(port)
            }
            PlatformType::Simulated => None,
        };
        let port = claimed.or(explicit_port).unwrap_or(SIMULATED_DEFAULT_PORT);
        if let Some(map) = config.as_object_mut() {
            map.insert("port".into(), json!(port));
        }
        fill_missing(config, &default_configuration(port));
        let now = Utc::now();
        let record = InstanceRecord {
            order: state.next_order,
            instance: Instance {
                id: id.clone(),
                name,
                description,
                platform_type: platform,
                created_at: now,
                last_modified_at: None,
                status: InstanceStatus::Created,
                metadata: labels,
            },
            desired: Some(config.clone()),
            runtime: Runtime::default(),
        };
        let mut writes = Vec::new();
        if let Some(port) = claimed {
            writes.push(Write::ClaimPort(port, &id));
        }
        let (record, _) = self.commit_locked(
            &mut state,
            record,
            Some(Transition::new(
                InstanceStatus::Created,
                SOURCE_CONTROL_PLANE,
            )),
            writes,
        )?;
        state.next_order += 1;
        if let Some(port) = claimed {
            state.ports.insert(port, id);
        }
        Ok(record.instance)
    }

    /// The lowest port of the range that no instance uses ([`ControlPlane::port_user`])
    /// and nothing listens on.
    fn free_port(&self, state: &State) -> Result<u16> {
        let range = self.inner.settings.port_range.clone();
        let mut used: std::collections::HashSet<u16> = state.ports.keys().copied().collect();
        for record in state.instances.values() {
            used.extend(ports_used_by(record));
        }
        range
            .clone()
            .filter(|port| !used.contains(port))
            .find(|port| std::net::TcpListener::bind(("0.0.0.0", *port)).is_ok())
            .ok_or(Error::NoFreePort(range))
    }

    /// The instance other than `except` that uses `port`: it was allocated to it, its
    /// desired configuration names it, or its process listens on it. Simulated instances
    /// use no port.
    fn port_user<'a>(
        state: &'a State,
        port: u16,
        except: Option<&str>,
    ) -> Option<&'a InstanceRecord> {
        let other = |id: &str| Some(id) != except;
        if let Some(record) = state
            .ports
            .get(&port)
            .filter(|owner| other(owner))
            .and_then(|owner| state.instances.get(owner))
        {
            return Some(record);
        }
        state
            .instances
            .values()
            .filter(|r| other(&r.instance.id))
            .find(|r| ports_used_by(r).contains(&port))
    }

    /// `port: P is already used by instance 'ID' (NAME); choose a free port in A..=B`.
    fn port_taken(&self, port: u16, user: &InstanceRecord) -> String {
        let range = &self.inner.settings.port_range;
        format!(
            "port: {port} is already used by instance '{}' ({}); choose a free port in {}..={}",
            user.instance.id,
            user.instance.name,
            range.start(),
            range.end()
        )
    }

    /// Checks the port of a new desired configuration of a Process instance, so that a
    /// write is refused (422) rather than the next start failing: the port is required
    /// and no other instance may use it. Returns it.
    fn check_desired_port(
        &self,
        state: &State,
        record: &InstanceRecord,
        config: &Value,
    ) -> Result<u16> {
        let range = &self.inner.settings.port_range;
        let Some(port) = configuration_port(config) else {
            let current = record
                .desired
                .as_ref()
                .and_then(configuration_port)
                .or_else(|| {
                    state
                        .ports
                        .iter()
                        .find(|(_, owner)| **owner == record.instance.id)
                        .map(|(port, _)| *port)
                });
            let keep = current
                .map(|p| format!("keep its port {p} or "))
                .unwrap_or_default();
            return Err(Error::Unprocessable(format!(
                "port: required for a Process instance; {keep}choose a free port in {}..={}",
                range.start(),
                range.end()
            )));
        };
        if let Some(user) = Self::port_user(state, port, Some(&record.instance.id)) {
            return Err(Error::Unprocessable(self.port_taken(port, user)));
        }
        Ok(port)
    }

    /// Every instance, in creation order.
    pub fn list(&self) -> Vec<Instance> {
        let state = self.state();
        let mut records: Vec<&InstanceRecord> = state.instances.values().collect();
        records.sort_unstable_by_key(|r| r.order);
        records.into_iter().map(|r| r.instance.clone()).collect()
    }

    /// One instance.
    pub fn get(&self, id: &str) -> Result<Instance> {
        Ok(self.record(id)?.instance)
    }

    /// Deletes an instance, stopping its process first, and releases its port. The feed
    /// gets a `Stopped` change with metadata `deleted=true`. Runs to the end even if the
    /// caller stops waiting (see [`ControlPlane::detached`]).
    pub async fn delete(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.detached(move |cp| async move {
            let result = cp.delete_now(&id).await;
            cp.log_call("delete", &id, None, &result);
            result
        })
        .await
    }

    async fn delete_now(&self, id: &str) -> Result<()> {
        let lock = self.op_lock(id);
        let _guard = lock.lock().await;
        let record = self.record(id)?;
        let exit = self.inner.process.stop(id).await;
        let mut state = self.state();
        let Some(current) = state.instances.get(id).cloned() else {
            return Err(Error::InstanceNotFound(id.to_owned()));
        };
        let mut metadata = Labels::from([("deleted".to_owned(), "true".to_owned())]);
        if let Some(exit) = exit {
            metadata.extend(exit.metadata());
        }
        let change = self.new_change(
            &current,
            &Transition::new(InstanceStatus::Stopped, SOURCE_CONTROL_PLANE).with(metadata),
            Utc::now(),
        );
        self.store()
            .apply(&[Write::Delete(id), Write::Change(&change, self.retain())])?;
        state.instances.remove(id);
        state.ports.retain(|_, owner| owner != id);
        // Published before the state lock goes: the next change's sequence number is
        // read from the feed under that lock (see `commit_locked`).
        self.inner.feed.push(change);
        drop(state);
        if record.instance.platform_type == PlatformType::Process {
            self.inner.process.remove_files(id);
        }
        self.inner
            .op_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    /// Replaces an instance's labels.
    pub fn set_metadata(&self, id: &str, labels: Labels) -> Result<Instance> {
        let mut state = self.state();
        let mut record = Self::lookup(&state, id)?;
        record.instance.metadata = labels;
        record.instance.last_modified_at = Some(Utc::now());
        let (record, _) = self.commit_locked(&mut state, record, None, Vec::new())?;
        Ok(record.instance)
    }

    // ----- lifecycle -------------------------------------------------------------------

    /// Starts an instance with `configuration` (normalised; missing keys filled from the
    /// desired configuration) or, without one, its desired configuration (a 409 when it
    /// has none). A running instance is stopped first. On failure the instance is `Error`
    /// and the error says why. Runs to the end even if the caller stops waiting (see
    /// [`ControlPlane::detached`]).
    pub async fn start(&self, id: &str, configuration: Option<Value>) -> Result<Instance> {
        let id = id.to_owned();
        self.detached(move |cp| async move {
            let result = cp.start_now(&id, configuration).await;
            cp.log_call("start", &id, None, &result);
            result
        })
        .await
    }

    async fn start_now(&self, id: &str, configuration: Option<Value>) -> Result<Instance> {
        let lock = self.op_lock(id);
        let _guard = lock.lock().await;
        self.start_locked(id, configuration).await
    }

    async fn start_locked(&self, id: &str, configuration: Option<Value>) -> Result<Instance> {
        let record = self.record(id)?;
        let config = match configuration {
            None | Some(Value::Null) => desired_or_conflict(&record, "start it with")?,
            Some(config) => {
                let mut config = normalize_configuration(config)
                    .map_err(|e| Error::BadRequest(format!("configuration: {e}")))?;
                if let Some(desired) = &record.desired {
                    fill_missing(&mut config, desired);
                }
                config
            }
        };
        match record.instance.platform_type {
            PlatformType::Simulated => {
                let transition = Transition::new(InstanceStatus::Running, SOURCE_CONTROL_PLANE)
                    .with(Labels::from([("platformType".into(), "Simulated".into())]));
                let (record, _) = self.commit_runtime(id, Some(transition), |runtime| {
                    runtime.running_configuration = Some(config);
                    runtime.generation += 1;
                })?;
                Ok(record.instance)
            }
            PlatformType::Process => {
                if self.inner.process.is_tracked(id) {
                    self.stop_locked(id).await?;
                }
                let record = self.record(id)?;
                let generation = record.runtime.generation + 1;
                match self.inner.process.start(id, generation, &config).await {
                    Ok(launched) => {
                        let metadata = Labels::from([
                            ("platformType".into(), "Process".into()),
                            ("pid".into(), launched.pid.to_string()),
                            ("host".into(), launched.host.clone()),
                            ("port".into(), launched.port.to_string()),
                            (
                                "configFilePath".into(),
                                launched.config_path.display().to_string(),
                            ),
                            (
                                "logFilePath".into(),
                                launched.log_path.display().to_string(),
                            ),
                        ]);
                        let transition =
                            Transition::new(InstanceStatus::Running, SOURCE_CONTROL_PLANE)
                                .with(metadata);
                        let (record, _) = self.commit_runtime(id, Some(transition), |runtime| {
                            runtime.running_configuration = Some(config);
                            runtime.generation = generation;
                            runtime.pid = Some(launched.pid);
                            runtime.host = Some(launched.host);
                            runtime.port = Some(launched.port);
                        })?;
                        Ok(record.instance)
                    }
                    Err(error) => {
                        let mut transition =
                            Transition::new(InstanceStatus::Error, SOURCE_CONTROL_PLANE)
                                .with(Labels::from([("reason".into(), "start failed".into())]));
                        transition.error = Some(error_chain(&error));
                        self.commit_runtime(id, Some(transition), |runtime| {
                            runtime.generation = generation;
                            runtime.pid = None;
                            runtime.running_configuration = None;
                        })?;
                        Err(Error::StartFailed {
                            id: id.to_owned(),
                            source: error,
                        })
                    }
                }
            }
        }
    }

    /// Stops an instance (SIGTERM, then SIGKILL after the stop timeout) and records
    /// `Stopped`. Stopping a stopped instance changes nothing. Runs to the end even if the
    /// caller stops waiting (see [`ControlPlane::detached`]).
    pub async fn stop(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.detached(move |cp| async move {
            let result = cp.stop_now(&id).await;
            cp.log_call("stop", &id, None, &result);
            result
        })
        .await
    }

    async fn stop_now(&self, id: &str) -> Result<Instance> {
        let lock = self.op_lock(id);
        let _guard = lock.lock().await;
        self.stop_locked(id).await
    }

    async fn stop_locked(&self, id: &str) -> Result<Instance> {
        self.record(id)?;
        let exit = self.inner.process.stop(id).await;
        let record = self.record(id)?;
        let was_running = exit.is_some() || record.runtime.running_configuration.is_some();
        if !was_running && record.instance.status == InstanceStatus::Stopped {
            return Ok(record.instance);
        }
        let transition = Transition::new(InstanceStatus::Stopped, SOURCE_CONTROL_PLANE)
            .with(exit.map(|e| e.metadata()).unwrap_or_default());
        let (record, _) = self.commit_runtime(id, Some(transition), |runtime| {
            runtime.pid = None;
            runtime.running_configuration = None;
        })?;
        Ok(record.instance)
    }

    /// Stops (if running) and starts with the desired configuration. Without one it is a
    /// 409 and the instance is not stopped. Runs to the end even if the caller stops
    /// waiting (see [`ControlPlane::detached`]).
    pub async fn restart(&self, id: &str) -> Result<Instance> {
        let id = id.to_owned();
        self.detached(move |cp| async move {
            let result = cp.restart_now(&id).await;
            cp.log_call("restart", &id, None, &result);
            result
        })
        .await
    }

    async fn restart_now(&self, id: &str) -> Result<Instance> {
        let lock = self.op_lock(id);
        let _guard = lock.lock().await;
        let record = self.record(id)?;
        desired_or_conflict(&record, "restart it with")?;
        if record.runtime.running_configuration.is_some() || self.inner.process.is_tracked(id) {
            self.stop_locked(id).await?;
        }
        self.start_locked(id, None).await
    }

    // ----- configuration ---------------------------------------------------------------

    /// The desired configuration; [`Error::ConfigurationNotFound`] once it was removed.
    pub fn configuration(&self, id: &str) -> Result<Value> {
        self.record(id)?
            .desired
            .ok_or_else(|| Error::ConfigurationNotFound(id.to_owned()))
    }

    /// Applies an RFC 6902 patch to the desired configuration atomically and records
    /// `ConfigurationChanged`. Returns the new configuration. A removed configuration
    /// cannot be patched (409): `PUT` one.
    pub fn patch_configuration(&self, id: &str, document: &Value) -> Result<Value> {
        let patch = Patch::parse(document)?;
        let mut state = self.state();
        let record = Self::lookup(&state, id)?;
        let patched = patch.apply(&desired_or_conflict(&record, "patch (PUT one instead)")?)?;
        let patched = normalize_configuration(patched).map_err(|e| {
            Error::Unprocessable(format!("the patched configuration is invalid: {e}"))
        })?;
        let metadata = Labels::from([("patchOperations".into(), patch.len().to_string())]);
        self.replace_desired(&mut state, record, patched, metadata)
    }

    /// Replaces the desired configuration and records `ConfigurationChanged`.
    pub fn put_configuration(&self, id: &str, configuration: Value) -> Result<Value> {
        let configuration = normalize_configuration(configuration)
            .map_err(|e| Error::BadRequest(format!("configuration: {e}")))?;
        let mut state = self.state();
        let record = Self::lookup(&state, id)?;
        self.replace_desired(&mut state, record, configuration, Labels::new())
    }

    /// Removes the desired configuration and records `ConfigurationChanged` (metadata
    /// `desiredConfiguration=removed`). What runs keeps running; the port stays the
    /// instance's. A second removal is [`Error::ConfigurationNotFound`].
    pub fn delete_configuration(&self, id: &str) -> Result<()> {
        let mut state = self.state();
        let mut record = Self::lookup(&state, id)?;
        if record.desired.take().is_none() {
            return Err(Error::ConfigurationNotFound(id.to_owned()));
        }
        let transition =
            Transition::new(InstanceStatus::ConfigurationChanged, SOURCE_CONTROL_PLANE).with(
                Labels::from([("desiredConfiguration".into(), "removed".into())]),
            );
        self.commit_locked(&mut state, record, Some(transition), Vec::new())?;
        Ok(())
    }

    /// Replaces the desired configuration and records `ConfigurationChanged`. For a
    /// Process instance the port is checked first ([`ControlPlane::check_desired_port`];
    /// a refusal stores and publishes nothing) and the instance then holds its new port
    /// (and the one its process still runs on), releasing any other.
    fn replace_desired(
        &self,
        state: &mut State,
        mut record: InstanceRecord,
        configuration: Value,
        metadata: Labels,
    ) -> Result<Value> {
        let id = record.instance.id.clone();
        let mut claim = None;
        let mut release = Vec::new();
        if record.instance.platform_type == PlatformType::Process {
            let port = self.check_desired_port(state, &record, &configuration)?;
            if state.ports.get(&port) != Some(&id) {
                claim = Some(port);
            }
            let running = record.runtime.pid.and(record.runtime.port);
            release = state
                .ports
                .iter()
                .filter(|(p, owner)| **owner == id && **p != port && Some(**p) != running)
                .map(|(p, _)| *p)
                .collect();
        }
        let mut writes: Vec<Write<'_>> = release
            .iter()
            .map(|p| Write::ReleasePort(*p, &id))
            .collect();
        if let Some(port) = claim {
            writes.push(Write::ClaimPort(port, &id));
        }
        record.desired = Some(configuration.clone());
        let transition =
            Transition::new(InstanceStatus::ConfigurationChanged, SOURCE_CONTROL_PLANE)
                .with(metadata);
        self.commit_locked(state, record, Some(transition), writes)?;
        for port in release {
            state.ports.remove(&port);
        }
        if let Some(port) = claim {
            state.ports.insert(port, id);
        }
        Ok(configuration)
    }

    // ----- status ----------------------------------------------------------------------

    /// Records a status pushed by a daemon. As in the seed, a status equal to the current
    /// one adds no feed entry (its metadata is still merged). Returns the entry, if any.
    pub fn publish_status(&self, update: StatusUpdate) -> Result<Option<StatusChange>> {
        if update.instance_id.trim().is_empty() || update.source.trim().is_empty() {
            return Err(Error::BadRequest(
                "`instanceId` and `source` are required".into(),
            ));
        }
        let mut state = self.state();
        let mut record = Self::lookup(&state, &update.instance_id)?;
        let metadata = update.metadata.unwrap_or_default();
        if record.instance.status == update.status {
            let mut info = runtime_info(&record);
            info.runtime_metadata.extend(metadata);
            record.runtime.info = Some(info);
            self.commit_locked(&mut state, record, None, Vec::new())?;
            return Ok(None);
        }
        let transition = Transition::new(update.status, &update.source).with(metadata);
        let (_, change) = self.commit_locked(&mut state, record, Some(transition), Vec::new())?;
        Ok(change)
    }

    /// Last known runtime information.
    pub fn runtime_info(&self, id: &str) -> Result<RuntimeInfo> {
        Ok(runtime_info(&self.record(id)?))
    }

    /// Notes a request that could not be served as asked (see [`ControlPlane::refused`]).
    pub fn note_refused(&self, request: String) {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
    }

    /// Requests refused so far, as `METHOD /path?query`: routes this control plane does
    /// not serve, and seed-only parameters it does not take.
    pub fn refused(&self) -> Vec<String> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a lifecycle call as it ends (see [`LifecycleCall`]).
    fn log_call<T>(&self, operation: &str, id: &str, clone_id: Option<String>, result: &Result<T>) {
        let mut log = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        log.next += 1;
        let call = LifecycleCall {
            sequence: log.next,
            operation: operation.to_owned(),
            instance_id: id.to_owned(),
            clone_id,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|e| error_chain(e)),
            at: Utc::now(),
        };
        if log.calls.len() >= LIFECYCLE_CALLS_KEPT {
            log.calls.pop_front();
        }
        log.calls.push_back(call);
    }

    /// The lifecycle calls carried out or refused since this control plane started, oldest
    /// first (at most [`LIFECYCLE_CALLS_KEPT`]), with a sequence number greater than
    /// `after`.
    pub fn lifecycle_calls(&self, after: u64) -> Vec<LifecycleCall> {
        let log = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        log.calls
            .iter()
            .filter(|c| c.sequence > after)
            .cloned()
            .collect()
    }

    /// The configuration the instance was last started with, while it runs.
    pub fn running_configuration(&self, id: &str) -> Result<Option<Value>> {
        Ok(self.record(id)?.runtime.running_configuration)
    }

    /// The configuration each running instance was last started with, by instance id;
    /// instances that do not run are left out. One pass over the state under one lock
    /// (no per-instance lookup), so the answer is a consistent snapshot.
    pub fn running_configurations(&self) -> BTreeMap<String, Value> {
        self.state()
            .instances
            .iter()
            .filter_map(|(id, record)| {
                let configuration = record.runtime.running_configuration.as_ref()?;
                Some((id.clone(), configuration.clone()))
            })
            .collect()
    }

    // ----- extensions ------------------------------------------------------------------

    /// Where Prometheus finds every instance that runs a process, in the format of its
    /// HTTP service discovery (`http_sd_configs`): one target group per instance,
    /// `host:port` labelled `instance_name` (the stub labels its own series with
    /// `instance_id`). Clones are listed as soon as they run, so a canary's clone is
    /// scraped without the operator touching Prometheus's configuration.
    pub fn scrape_targets(&self) -> Vec<Value> {
        self.state()
            .instances
            .values()
            .filter(|r| r.instance.platform_type == PlatformType::Process)
            .filter_map(|record| {
                let runtime = &record.runtime;
                runtime.pid?;
                let host = probe_host(runtime.host.as_deref()?);
                Some(json!({
                    "targets": [format!("{host}:{}", runtime.port?)],
                    "labels": { "instance_name": record.instance.name },
                }))
            })
            .collect()
    }

    /// Creates a sibling of `id` on the same platform with a new port, labelled
    /// [`CLONE_OF_LABEL`].
    pub fn clone_instance(&self, id: &str, request: CloneInstance) -> Result<Instance> {
        let result = self.clone_now(id, request);
        let clone_id = result.as_ref().ok().map(|i| i.id.clone());
        self.log_call("clone", id, clone_id, &result);
        result
    }

    fn clone_now(&self, id: &str, request: CloneInstance) -> Result<Instance> {
        let source = self.record(id)?;
        let mut config = match request.configuration {
            None | Some(Value::Null) => desired_or_conflict(&source, "clone from")?,
            Some(config) => {
                let mut config = normalize_configuration(config)
                    .map_err(|e| Error::BadRequest(format!("configuration: {e}")))?;
                if let Some(desired) = &source.desired {
                    fill_missing(&mut config, desired);
                }
                config
            }
        };
        if source.instance.platform_type == PlatformType::Process
            && let Some(map) = config.as_object_mut()
        {
            map.remove("port");
        }
        let mut labels = request.metadata.unwrap_or_default();
        labels.insert(CLONE_OF_LABEL.into(), id.to_owned());
        let name = request.name.unwrap_or_else(|| {
            format!(
                "{}-clone-{}",
                source.instance.name,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        self.insert_new(
            name,
            format!("clone of {id}"),
            source.instance.platform_type,
            &mut config,
            labels,
        )
    }

    /// Probes the instance: `GET /health` on its process, or its recorded status
    /// (Simulated).
    pub async fn health(&self, id: &str) -> Result<Health> {
        let record = self.record(id)?;
        if record.instance.platform_type == PlatformType::Simulated {
            let (healthy, detail) = simulated::health(record.instance.status);
            return Ok(Health { healthy, detail });
        }
        let (Some(host), Some(port), Some(_)) = (
            record.runtime.host.as_deref(),
            record.runtime.port,
            record.runtime.pid,
        ) else {
            return Ok(Health {
                healthy: false,
                detail: format!(
                    "instance is not running (status {})",
                    record.instance.status
                ),
            });
        };
        Ok(
            match self.inner.process.probe(host, port, "/health").await {
                Ok((status, body)) => Health {
                    healthy: status == 200,
                    detail: format!("GET /health answered {status}: {body}"),
                },
                Err(error) => Health {
                    healthy: false,
                    detail: error,
                },
            },
        )
    }

    /// The instance's request and error counters (`{requests, errors}`), read from its
    /// process. Simulated instances serve no traffic and report zeros.
    pub async fn metrics(&self, id: &str) -> Result<Value> {
        let record = self.record(id)?;
        if record.instance.platform_type == PlatformType::Simulated {
            return Ok(json!({"requests": 0, "errors": 0}));
        }
        let (Some(host), Some(port), Some(_)) = (
            record.runtime.host.as_deref(),
            record.runtime.port,
            record.runtime.pid,
        ) else {
            return Err(Error::Conflict(format!(
                "instance '{id}' is not running (status {}), so it has no metrics",
                record.instance.status
            )));
        };
        match self.inner.process.probe(host, port, "/metrics").await {
            Ok((200, body)) => Ok(json!({
                "requests": body.get("requests").cloned().unwrap_or(json!(0)),
                "errors": body.get("errors").cloned().unwrap_or(json!(0)),
            })),
            Ok((status, body)) => Err(Error::Upstream(format!(
                "instance '{id}' answered GET /metrics with {status}: {body}"
            ))),
            Err(error) => Err(Error::Upstream(error)),
        }
    }

    /// Creates or replaces an endpoint. Every backend must name an existing instance.
    pub fn put_endpoint(&self, name: &str, spec: EndpointSpec) -> Result<Endpoint> {
        let mut state = self.state();
        for (i, backend) in spec.backends.iter().enumerate() {
            if !state.instances.contains_key(&backend.instance_id) {
                return Err(Error::Unprocessable(format!(
                    "backends[{i}].instanceId: instance '{}' not found",
                    backend.instance_id
                )));
            }
        }
        let value = serde_json::to_value(&spec).map_err(StoreError::from)?;
        self.store().apply(&[Write::Endpoint(name, Some(&value))])?;
        let entry = state.endpoints.entry(name.to_owned()).or_default();
        entry.spec = spec;
        entry.current.clear();
        Ok(endpoint_view(name, &entry.spec))
    }

    /// One endpoint.
    pub fn endpoint(&self, name: &str) -> Result<Endpoint> {
        let state = self.state();
        let entry = state
            .endpoints
            .get(name)
            .ok_or_else(|| Error::EndpointNotFound(name.to_owned()))?;
        Ok(endpoint_view(name, &entry.spec))
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let state = self.state();
        state
            .endpoints
            .iter()
            .map(|(name, e)| endpoint_view(name, &e.spec))
            .collect()
    }

    /// Deletes an endpoint.
    pub fn delete_endpoint(&self, name: &str) -> Result<()> {
        let mut state = self.state();
        if !state.endpoints.contains_key(name) {
            return Err(Error::EndpointNotFound(name.to_owned()));
        }
        self.store().apply(&[Write::Endpoint(name, None)])?;
        state.endpoints.remove(name);
        Ok(())
    }

    /// Picks the backend for the next request by weight among the backends whose
    /// instance runs a process (smooth weighted round robin: exact shares, interleaved).
    pub fn pick_backend(&self, name: &str) -> Result<ProxyTarget> {
        let mut guard = self.state();
        let state = &mut *guard;
        let endpoint = state
            .endpoints
            .get_mut(name)
            .ok_or_else(|| Error::EndpointNotFound(name.to_owned()))?;
        let live: Vec<(&Backend, String, u16)> = endpoint
            .spec
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .filter_map(|b| {
                let runtime = &state.instances.get(&b.instance_id)?.runtime;
                runtime.pid?;
                Some((b, runtime.host.clone()?, runtime.port?))
            })
            .collect();
        let total: i64 = live.iter().map(|(b, _, _)| i64::from(b.weight)).sum();
        let mut best: Option<(i64, usize)> = None;
        for (i, (backend, _, _)) in live.iter().enumerate() {
            let counter = endpoint
                .current
                .entry(backend.instance_id.clone())
                .or_insert(0);
            *counter += i64::from(backend.weight);
            if best.is_none_or(|(value, _)| *counter > value) {
                best = Some((*counter, i));
            }
        }
        let Some((_, chosen)) = best else {
            return Err(Error::Unavailable(format!(
                "endpoint '{name}' has no running backend with a weight above 0"
            )));
        };
        let (backend, host, port) = &live[chosen];
        if let Some(counter) = endpoint.current.get_mut(&backend.instance_id) {
            *counter -= total;
        }
        Ok(ProxyTarget {
            instance_id: backend.instance_id.clone(),
            host: host.clone(),
            port: *port,
        })
    }

    // ----- start-up, monitoring, shutdown ----------------------------------------------

    /// After a restart: re-attaches processes that are still alive (pid alive and the
    /// process on the recorded port reports this instance's id) and records `Error` for
    /// those that are gone.
    pub async fn recover(&self) -> Result<()> {
        let candidates: Vec<InstanceRecord> = {
            let state = self.state();
            state
                .instances
                .values()
                .filter(|r| r.instance.platform_type == PlatformType::Process)
                .filter(|r| r.runtime.pid.is_some())
                .cloned()
                .collect()
        };
        for record in candidates {
            let id = record.instance.id.clone();
            let (Some(pid), Some(host), Some(port)) = (
                record.runtime.pid,
                record.runtime.host.clone(),
                record.runtime.port,
            ) else {
                continue;
            };
            let answers_as_itself = crate::platform::process::pid_alive(pid)
                && matches!(
                    self.inner.process.probe(&host, port, "/config").await,
                    Ok((200, body)) if body.get("id").and_then(Value::as_str) == Some(id.as_str())
                );
            if answers_as_itself {
                tracing::info!(instance.id = %id, pid, "re-attached a running process");
                self.inner
                    .process
                    .adopt(&id, record.runtime.generation, pid);
                let mut info = runtime_info(&record);
                info.runtime_metadata
                    .insert("reattached".into(), "true".into());
                self.commit_runtime(&id, None, |runtime| runtime.info = Some(info))?;
            } else {
                tracing::warn!(instance.id = %id, pid, "process is gone after restart");
                let mut transition =
                    Transition::new(InstanceStatus::Error, SOURCE_MONITOR).with(Labels::from([
                        (
                            "reason".into(),
                            "process not found after control-plane restart".into(),
                        ),
                        ("pid".into(), pid.to_string()),
                        ("exitCode".into(), "unknown".into()),
                    ]));
                transition.error = Some(format!(
                    "process {pid} was gone when the control plane restarted"
                ));
                self.commit_runtime(&id, Some(transition), |runtime| {
                    runtime.pid = None;
                    runtime.running_configuration = None;
                })?;
            }
        }
        Ok(())
    }

    /// Records `Error` for a process that exited by itself (with its exit code in the
    /// metadata), unless the instance has moved on to another run meanwhile.
    pub async fn handle_exit(&self, event: ExitEvent) {
        let lock = self.op_lock(&event.instance_id);
        let _guard = lock.lock().await;
        let Ok(record) = self.record(&event.instance_id) else {
            return;
        };
        if record.runtime.generation != event.generation || record.runtime.pid != Some(event.pid) {
            return;
        }
        tracing::warn!(instance.id = %event.instance_id, pid = event.pid,
                       exit = %event.exit.describe(), "process exited unexpectedly");
        let mut metadata = event.exit.metadata();
        metadata.insert("reason".into(), "process exited unexpectedly".into());
        metadata.insert("pid".into(), event.pid.to_string());
        let mut transition = Transition::new(InstanceStatus::Error, SOURCE_MONITOR).with(metadata);
        transition.error = Some(format!(
            "process {} exited unexpectedly: {}",
            event.pid,
            event.exit.describe()
        ));
        let stopped = |runtime: &mut Runtime| {
            runtime.pid = None;
            runtime.running_configuration = None;
        };
        if let Err(error) = self.commit_runtime(&event.instance_id, Some(transition), stopped) {
            tracing::error!(%error, instance.id = %event.instance_id, "recording an exit failed");
        }
    }

    /// Ends long polls; the API should stop taking requests next.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.send_replace(true);
    }

    /// Stops every process (recording `Stopped`, source `controlplane-shutdown`) and ends
    /// long polls.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        // Let lifecycle operations whose callers went away finish first: one that is
        // starting a process would otherwise start it after the processes were stopped.
        let mut in_flight = self.inner.in_flight.subscribe();
        let settled =
            tokio::time::timeout(SHUTDOWN_IN_FLIGHT_TIMEOUT, in_flight.wait_for(|n| *n == 0)).await;
        if settled.is_err() {
            tracing::warn!(
                "lifecycle operations still running at shutdown; stopping processes anyway"
            );
        }
        let mut tasks = tokio::task::JoinSet::new();
        for id in self.inner.process.tracked_ids() {
            let cp = self.clone();
            tasks.spawn(async move {
                let lock = cp.op_lock(&id);
                let _guard = lock.lock().await;
                let exit = cp.inner.process.stop(&id).await;
                let transition = Transition::new(InstanceStatus::Stopped, "controlplane-shutdown")
                    .with(exit.map(|e| e.metadata()).unwrap_or_default());
                let stopped = |runtime: &mut Runtime| {
                    runtime.pid = None;
                    runtime.running_configuration = None;
                };
                match cp.commit_runtime(&id, Some(transition), stopped) {
                    Ok(_) | Err(Error::InstanceNotFound(_)) => {}
                    Err(error) => {
                        tracing::error!(%error, instance.id = %id, "recording a stop failed");
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Kills every process immediately (used when dropped without a shutdown).
    pub fn kill_all_now(&self) {
        self.inner.shutting_down.send_replace(true);
        self.inner.process.kill_all_now();
    }

    // ----- internals -------------------------------------------------------------------

    /// Runs a lifecycle operation in its own task and waits for its answer. A caller that
    /// stops waiting (an HTTP client that hangs up drops its handler, and with it this
    /// future) does not stop the operation: it still runs to the end and records what it
    /// did, so the recorded state never depends on the caller. Otherwise a start dropped
    /// between spawning the process and recording it would leave a process running that
    /// the record calls `Stopped` or `Created`.
    async fn detached<T, F, Fut>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(ControlPlane) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let in_flight = InFlight::enter(self.clone());
        let task = work(self.clone());
        tokio::spawn(async move {
            let _in_flight = in_flight;
            task.await
        })
        .await
        .map_err(|e| Error::Internal(format!("the operation ended without an answer: {e}")))?
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retain(&self) -> u64 {
        self.inner.feed.capacity() as u64
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .op_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn lookup(state: &State, id: &str) -> Result<InstanceRecord> {
        state
            .instances
            .get(id)
            .cloned()
            .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))
    }

    fn record(&self, id: &str) -> Result<InstanceRecord> {
        Self::lookup(&self.state(), id)
    }

    /// Applies `update` to the instance's runtime record as it is now and commits it with
    /// `transition`, all under the state lock: a change stored meanwhile (a PATCH while a
    /// process started, say) is kept, never overwritten by a copy read before an await.
    fn commit_runtime(
        &self,
        id: &str,
        transition: Option<Transition>,
        update: impl FnOnce(&mut Runtime),
    ) -> Result<(InstanceRecord, Option<StatusChange>)> {
        let mut state = self.state();
        let mut record = Self::lookup(&state, id)?;
        update(&mut record.runtime);
        self.commit_locked(&mut state, record, transition, Vec::new())
    }

    /// Applies `transition` to `record`, stores it (with `extra` writes and the feed
    /// entry) in one transaction, then updates memory and publishes the entry.
    fn commit_locked(
        &self,
        state: &mut State,
        mut record: InstanceRecord,
        transition: Option<Transition>,
        extra: Vec<Write<'_>>,
    ) -> Result<(InstanceRecord, Option<StatusChange>)> {
        let now = Utc::now();
        let change = transition.map(|t| {
            let change = self.new_change(&record, &t, now);
            let mut info = runtime_info(&record);
            info.status = t.status;
            info.runtime_metadata.extend(t.metadata.clone());
            match t.status {
                InstanceStatus::Running => {
                    info.started_at = Some(now);
                    info.stopped_at = None;
                    info.error_message = None;
                    info.process_id = record.runtime.pid.map(|p| p.to_string());
                    for stale in ["exitCode", "signal", "exitStatus", "reason", "deleted"] {
                        if !t.metadata.contains_key(stale) {
                            info.runtime_metadata.remove(stale);
                        }
                    }
                }
                InstanceStatus::Stopped | InstanceStatus::Error => {
                    if info.stopped_at.is_none() || info.started_at >= info.stopped_at {
                        info.stopped_at = Some(now);
                    }
                    info.process_id = None;
                    info.error_message = t.error.clone();
                }
                InstanceStatus::Created | InstanceStatus::ConfigurationChanged => {}
            }
            record.runtime.info = Some(info);
            record.instance.status = t.status;
            record.instance.last_modified_at = Some(now);
            change
        });
        let mut writes: Vec<Write<'_>> = Vec::with_capacity(extra.len() + 2);
        writes.extend(extra);
        writes.push(Write::Upsert(&record));
        if let Some(change) = &change {
            writes.push(Write::Change(change, self.retain()));
        }
        self.store().apply(&writes)?;
        drop(writes);
        state
            .instances
            .insert(record.instance.id.clone(), record.clone());
        if let Some(change) = &change {
            self.inner.feed.push(change.clone());
        }
        Ok((record, change))
    }

    /// The change made at `now`, the instance's new `lastModifiedAt`: a listing that shows
    /// the change's effect carries its timestamp, so a follower can tell it saw it.
    fn new_change(
        &self,
        record: &InstanceRecord,
        t: &Transition,
        now: chrono::DateTime<Utc>,
    ) -> StatusChange {
        StatusChange {
            sequence: self.inner.feed.next_sequence(),
            instance_id: record.instance.id.clone(),
            status: t.status,
            previous_status: (t.status != InstanceStatus::Created)
                .then_some(record.instance.status),
            source: t.source.clone(),
            timestamp: now,
            metadata: t.metadata.clone(),
        }
    }
}

/// The ports a record uses besides its allocations: a Process instance's desired port
/// and the port its process listens on. Simulated instances use none.
fn ports_used_by(record: &InstanceRecord) -> Vec<u16> {
    if record.instance.platform_type != PlatformType::Process {
        return Vec::new();
    }
    let desired = record.desired.as_ref().and_then(configuration_port);
    let running = record.runtime.pid.and(record.runtime.port);
    desired.into_iter().chain(running).collect()
}

/// Counts a lifecycle operation in flight for as long as it lives.
struct InFlight(ControlPlane);

impl InFlight {
    fn enter(cp: ControlPlane) -> Self {
        cp.inner.in_flight.send_modify(|n| *n += 1);
        Self(cp)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.send_modify(|n| *n -= 1);
    }
}

fn runtime_info(record: &InstanceRecord) -> RuntimeInfo {
    let mut info = record.runtime.info.clone().unwrap_or_else(|| RuntimeInfo {
        instance_id: record.instance.id.clone(),
        status: record.instance.status,
        started_at: None,
        stopped_at: None,
        process_id: None,
        runtime_metadata: Labels::from([(
            "platformType".into(),
            record.instance.platform_type.to_string(),
        )]),
        error_message: None,
    });
    info.status = record.instance.status;
    info
}

/// The record's desired configuration, or a 409 saying it has none to `what` with.
fn desired_or_conflict(record: &InstanceRecord, what: &str) -> Result<Value> {
    record.desired.clone().ok_or_else(|| {
        Error::Conflict(format!(
            "instance '{}' has no desired configuration to {what}",
            record.instance.id
        ))
    })
}

fn endpoint_view(name: &str, spec: &EndpointSpec) -> Endpoint {
    Endpoint {
        name: name.to_owned(),
        backends: spec.backends.clone(),
        proxy_path: format!("/api/extensions/endpoints/{name}/proxy/"),
    }
}

/// `error: cause: cause…` on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
