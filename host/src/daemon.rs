//! The daemon: wires settings, the store, the plugin runtime and registry, the
//! control-plane client, the controller and its work queue, the triggers (periodic
//! resync, the control plane's change feed), the plugin-directory watcher and the admin
//! API; shuts them down gracefully.
//!
//! Start at [`Daemon::start`]; [`Daemon::shutdown`] stops taking work, lets in-flight
//! reconciles finish or checkpoint within `controller.shutdown_grace`, then returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminState, router};
use crate::client::{self, ClientConfig, ControlPlane, DraasClient};
use crate::config::Settings;
use crate::controller::{Controller, ControllerSettings};
use crate::metrics::Metrics;
use crate::queue::{Action, Failure, ReconcileError, WorkQueue, requeue_with_backoff};
use crate::reachability::retry_delay;
use crate::registry::{PluginDir, PluginRegistry, watch as plugin_watch};
use crate::runtime::{PluginRuntime, RuntimeConfig};
use crate::store::Store;

/// How long one long-poll of the change feed waits for a change before asking again.
/// Shorter than common proxy idle timeouts; each answer costs one small request.
pub const FEED_LONG_POLL: Duration = Duration::from_secs(25);

/// How often the daemon polls the original `since=` route when the control plane has
/// no sequence feed: often enough that a change is seen within a second.
pub const FEED_POLL_FALLBACK: Duration = Duration::from_secs(1);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state database could not be opened.
    #[error("cannot open the state database")]
    Store(#[source] crate::store::Error),
    /// The plugin runtime could not be set up.
    #[error("cannot start the plugin runtime")]
    Runtime(#[source] crate::runtime::Error),
    /// The control-plane client could not be built.
    #[error("cannot set up the control-plane client")]
    Client(#[source] client::Error),
    /// The settings' policy is invalid.
    #[error("invalid settings")]
    Settings(#[source] crate::config::Error),
    /// The work queue settings are invalid.
    #[error("invalid controller settings")]
    Queue(#[source] crate::queue::Error),
    /// The admin address could not be bound.
    #[error(
        "cannot listen on the admin address {addr}; is another setpoint running? set admin.listen (--admin) to a free address"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The admin API's TLS certificate or key could not be used.
    #[error("cannot serve the admin API over TLS")]
    AdminTls(#[source] crate::tls::Error),
}

/// How long the daemon waits at start for the control plane to say what it offers
/// before it loads plugins without checking their capabilities.
const CAPABILITIES_WAIT: Duration = Duration::from_secs(3);

/// The optional plugin capabilities the control plane offers, so a strategy that needs
/// one it lacks is refused when it loads. `None` when the control plane cannot say now
/// (unreachable at start): strategies then load, and a call it lacks answers
/// `unavailable`. `metrics` is offered when the control plane has counters or policy
/// defines named queries (`has_queries`): a strategy may analyse with either.
async fn offered_capabilities(
    cp: &dyn ControlPlane,
    has_queries: bool,
) -> Option<Vec<crate::runtime::Capability>> {
    use crate::runtime::Capability;
    match tokio::time::timeout(CAPABILITIES_WAIT, cp.capabilities()).await {
        Ok(Ok(c)) => {
            let offered = [
                (Capability::Clones, c.clone_instance && c.delete_clone),
                (Capability::Traffic, c.traffic_weights),
                (Capability::Metrics, c.metrics || has_queries),
            ];
            Some(
                offered
                    .into_iter()
                    .filter(|(_, has)| *has)
                    .map(|(c, _)| c)
                    .collect(),
            )
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot tell what the control plane offers; strategies' capabilities are checked at their first call instead of at load");
            None
        }
        Err(_) => {
            tracing::warn!(
                "the control plane did not say what it offers within {CAPABILITIES_WAIT:?}; strategies' capabilities are checked at their first call instead of at load"
            );
            None
        }
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    admin_addr: SocketAddr,
    controller: Arc<Controller>,
    queue: WorkQueue,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    runner: JoinHandle<crate::queue::Result<()>>,
    admin: JoinHandle<()>,
}

impl Daemon {
    /// Start everything from `settings`, with the control plane given by its URL.
    pub async fn start(settings: Settings) -> Result<Daemon, Error> {
        let mut config = ClientConfig::new(settings.control_plane.url.clone());
        config.base_path = settings.control_plane.base_path.clone();
        config.request_timeout = settings.control_plane.request_timeout;
        config.capabilities = match settings.control_plane.api {
            crate::config::ControlPlaneApi::Auto => None,
            crate::config::ControlPlaneApi::Seed => Some(crate::client::Capabilities::SEED),
            crate::config::ControlPlaneApi::Reference => {
                Some(crate::client::Capabilities::REFERENCE)
            }
        };
        let cp = DraasClient::new(config).map_err(Error::Client)?;
        Self::start_with(settings, Arc::new(cp)).await
    }

    /// Start everything with an embedder's control plane.
    pub async fn start_with(
        settings: Settings,
        cp: Arc<dyn ControlPlane>,
    ) -> Result<Daemon, Error> {
        // Before anything starts: an admin API beyond loopback without a token or TLS is
        // refused here too, for settings an embedder built without `Settings::load`.
        settings.admin.validate().map_err(Error::Settings)?;
        let tls = match (&settings.admin.tls_cert, &settings.admin.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::server_config(cert, key).map_err(Error::AdminTls)?)
            }
            _ => None,
        };
        let store_path = settings.store.path.clone();
        let retention = settings.store.backup_retention;
        let store = tokio::task::spawn_blocking(move || Store::open(&store_path))
            .await
            .expect("store open does not panic")
            .map_err(Error::Store)?
            .with_backup_retention(retention);
        let store = Arc::new(store);

        let policy = Arc::new(settings.policy().map_err(Error::Settings)?);
        let has_queries = !policy.metric_queries().is_empty();
        let offered_capabilities = offered_capabilities(cp.as_ref(), has_queries).await;
        let runtime_config = RuntimeConfig {
            offered_capabilities,
            call_deadline: settings.plugins.call_deadline,
            max_memory_bytes: usize::try_from(settings.plugins.max_memory_bytes)
                .unwrap_or(usize::MAX),
            cache_dir: Some(settings.plugin_cache_dir()),
            compiler: settings.plugins.compiler.clone(),
            ..RuntimeConfig::default()
        };
        let plugin_dir = settings.plugins.dir.clone();
        let (runtime, plugin_dir) = tokio::task::spawn_blocking(move || {
            let runtime = PluginRuntime::new(runtime_config)?;
            let mut dir = PluginDir::new(&plugin_dir);
            // A large component not compiled yet is left to the watcher, so it delays
            // neither the start nor other instances' reconciles.
            dir.load_at_start(&runtime);
            Ok::<_, crate::runtime::Error>((Arc::new(runtime), dir))
        })
        .await
        .expect("plugin loading does not panic")
        .map_err(Error::Runtime)?;
        let registry = plugin_dir.registry();
        plugin_watch::log_changes(&PluginRegistry::default(), &registry);
        let metrics = Arc::new(Metrics::new());
        plugin_watch::count(&metrics, &registry);

        let controller = Arc::new(Controller::new(
            cp.clone(),
            runtime.clone(),
            Arc::new(registry),
            store.clone(),
            policy,
            ControllerSettings {
                reconcile_error_instances: settings.controller.reconcile_error_instances,
                reconcile_stopped_instances: settings.controller.reconcile_stopped_instances,
                dry_run: settings.dry_run,
            },
            metrics.clone(),
        ));

        // Calls that were in flight when the daemon last stopped are audited as in doubt
        // before anything else runs.
        match controller.report_calls_in_doubt() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(calls = n, "calls in doubt from the previous run audited"),
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "could not audit the calls in doubt; they stay recorded")
            }
        }
        let queue = WorkQueue::new(settings.controller.queue_settings()).map_err(Error::Queue)?;
        let runner = {
            let queue = queue.clone();
            let controller = controller.clone();
            tokio::spawn(async move {
                queue
                    .run(
                        move |key| {
                            let controller = controller.clone();
                            async move { controller.reconcile(key).await }
                        },
                        error_policy,
                    )
                    .await
            })
        };

        let (stop, stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        // The feed finds its starting point before the first listing, so every change
        // after the listing is in the feed and nothing before it is replayed.
        let (positioned, positioned_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(resync_loop(
            cp.clone(),
            controller.clone(),
            store.clone(),
            queue.clone(),
            settings.controller.resync_interval,
            ready.clone(),
            positioned_rx,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(feed_loop(
            cp.clone(),
            controller.clone(),
            queue.clone(),
            positioned,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(plugin_watch::run(
            plugin_dir,
            runtime,
            controller.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )));
        {
            let queue = queue.clone();
            let metrics = metrics.clone();
            let mut depth = queue.depth();
            let mut stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop_rx.wait_for(|s| *s) => break,
                        changed = depth.changed() => {
                            if changed.is_err() { break; }
                            metrics.queue_depth.set(*depth.borrow() as i64);
                        }
                    }
                }
            }));
        }

        let listener = tokio::net::TcpListener::bind(settings.admin.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.admin.listen,
                source,
            })?;
        let admin_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: settings.admin.listen,
            source,
        })?;
        let app = router(AdminState {
            controller: controller.clone(),
            queue: queue.clone(),
            token: settings.admin.token.clone(),
            ready,
        });
        let mut admin_stop = stop_rx.clone();
        let stopped = async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        };
        let admin = match tls {
            None => tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                if let Err(error) = serve.await {
                    tracing::error!(%error, "admin API stopped");
                }
            }),
            Some(config) => {
                let listener =
                    crate::tls::TlsListener::new(listener, config).map_err(|source| {
                        Error::Bind {
                            addr: settings.admin.listen,
                            source,
                        }
                    })?;
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                    if let Err(error) = serve.await {
                        tracing::error!(%error, "admin API stopped");
                    }
                })
            }
        };
        let scheme = if settings.admin.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(admin = %format!("{scheme}://{admin_addr}"), control_plane = %settings.control_plane.url, "setpoint daemon started");

        Ok(Daemon {
            admin_addr,
            controller,
            queue,
            stop,
            tasks,
            runner,
            admin,
        })
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The controller (for embedders and tests).
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The work queue (for embedders and tests).
    pub fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    /// Stop taking work, let in-flight reconciles finish (within the grace period), stop
    /// the admin API.
    pub async fn shutdown(self) -> crate::queue::Result<()> {
        tracing::info!("shutting down: no new work is taken");
        let _ = self.stop.send(true);
        self.queue.shutdown();
        let result = self.runner.await.unwrap_or(Ok(()));
        for task in self.tasks {
            task.abort();
        }
        let _ = self.admin.await;
        tracing::info!("shut down");
        result
    }
}

fn error_policy(
    key: &str,
    error: &ReconcileError<crate::controller::Error>,
    failure: &Failure,
) -> Action {
    tracing::debug!(instance.id = key, error = %crate::error_chain(error), retry_in = ?failure.backoff, "reconcile will be retried");
    requeue_with_backoff(key, error, failure)
}

/// Every `interval`: list the instances and queue every one, plus those this host has a
/// rollout for (so orphans are noticed). The first listing waits until the change feed
/// has its starting point (`positioned`). A failed listing is retried with the change
/// feed's backoff ([`retry_delay`], never later than `interval`), and an outage is
/// logged once when it starts and once when it ends ([`crate::reachability`]).
#[allow(clippy::too_many_arguments)]
async fn resync_loop(
    cp: Arc<dyn ControlPlane>,
    controller: Arc<Controller>,
    store: Arc<Store>,
    queue: WorkQueue,
    interval: Duration,
    ready: Arc<AtomicBool>,
    mut positioned: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        // An error means the feed task ended without positioning: list anyway.
        _ = positioned.wait_for(|p| *p) => {}
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reachability = controller.reachability().clone();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticker.tick() => {}
        }
        // The listing and what every instance runs, fetched side by side.
        let requested = std::time::Instant::now();
        let (listing, running) = tokio::join!(cp.list_instances(), bulk_running(cp.as_ref()));
        match listing {
            Ok(instances) => {
                failures = 0;
                reachability.answered();
                let n = instances.len();
                let listed: std::collections::HashSet<String> = controller
                    .prime(instances, running, requested)
                    .into_iter()
                    .collect();
                for id in &listed {
                    queue.enqueue(id.clone());
                }
                // Instances known only from this host's records (deleted while the daemon
                // was down, or never reported by the feed) are visited too: orphans.
                if let Ok(known) = store.known_instances() {
                    for id in known.into_iter().filter(|id| !listed.contains(id)) {
                        queue.enqueue(id);
                    }
                }
                tracing::debug!(instances = n, "resync queued");
                ready.store(true, Ordering::SeqCst);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures).min(interval);
                reachability.failed("listing instances", &crate::error_chain(&error), delay);
                // The instances this host knows are queued anyway: their reconciles fail
                // and say so in their conditions, instead of claiming to be in sync.
                if let Ok(known) = store.known_instances() {
                    for id in known {
                        queue.enqueue(id);
                    }
                }
                // Retry with backoff, never later than the next regular resync.
                ticker.reset_after(delay);
            }
        }
    }
}

/// What every instance runs, in one request, when the control plane offers it; `None`
/// otherwise (each reconcile then reads what its instance runs, or the applied record).
async fn bulk_running(
    cp: &dyn ControlPlane,
) -> Option<std::collections::HashMap<String, serde_json::Value>> {
    if !cp.capabilities().await.ok()?.running_configuration {
        return None;
    }
    match cp.running_configurations().await {
        Ok(running) => Some(running),
        Err(error) => {
            tracing::debug!(error = %crate::error_chain(&error), "bulk running configurations unavailable; reading them per instance");
            None
        }
    }
}

/// Follow the control plane's change feed and queue every instance that changed. Uses
/// the sequence cursor with long-poll; resyncs everything when told the cursor fell
/// behind; falls back to polling the original `since=` route when there is no cursor.
///
/// It starts at the feed's head, read before the first resync lists (it says so on
/// `positioned`): the listing covers what came before. Without a head (the control plane
/// is unreachable at start, or does not say), the first batch holds everything retained
/// and is queued too, so a change between the listing and that batch is not missed.
async fn feed_loop(
    cp: Arc<dyn ControlPlane>,
    controller: Arc<Controller>,
    queue: WorkQueue,
    positioned: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor: Option<u64> = None;
    let mut since = chrono::Utc::now();
    // A control plane known to lack the sequence feed is polled by timestamp from the
    // start, without asking for a cursor it cannot give.
    let mut use_fallback = cp.capabilities().await.is_ok_and(|c| !c.sequence_feed);
    if !use_fallback {
        match cp.feed_head().await {
            Ok(head) => cursor = head,
            Err(client::Error::FeedUnsupported { .. }) => use_fallback = true,
            Err(error) => {
                tracing::debug!(error = %crate::error_chain(&error), "change feed head unavailable; reading the feed from its start");
            }
        }
    }
    positioned.send_replace(true);
    let reachability = controller.reachability().clone();
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let result = if use_fallback {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = cp.changes_since(since) => r.map(|changes| (changes, None, false)),
            }
        } else {
            let wait = if cursor.is_none() {
                Duration::ZERO
            } else {
                FEED_LONG_POLL
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = cp.changes_after(cursor, wait) => r.map(|b| (b.changes, b.latest_sequence, b.truncated)),
            }
        };
        match result {
            Ok((changes, latest, truncated)) => {
                failures = 0;
                reachability.answered();
                let first = cursor.is_none() && !use_fallback;
                if truncated && !first {
                    tracing::warn!(cursor = ?cursor, "change feed cursor fell behind the control plane's buffer; resyncing every instance");
                    let requested = std::time::Instant::now();
                    if let Ok(instances) = cp.list_instances().await {
                        for id in controller.prime(instances, None, requested) {
                            queue.enqueue(id);
                        }
                    }
                }
                for change in &changes {
                    tracing::debug!(instance.id = %change.instance_id, status = %change.status.as_str(), "change feed event");
                    controller.note_change(&change.instance_id, change.timestamp);
                    queue.enqueue(change.instance_id.clone());
                }
                if let Some(newest) = changes.iter().map(|c| c.timestamp).max() {
                    since = since.max(newest);
                }
                if let Some(latest) = latest {
                    cursor = Some(latest);
                }
                if use_fallback {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(FEED_POLL_FALLBACK) => {}
                    }
                }
            }
            Err(client::Error::FeedUnsupported { .. }) if !use_fallback => {
                tracing::info!(
                    "control plane has no sequence feed; polling the `since=` route instead"
                );
                use_fallback = true;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                reachability.failed("change feed", &crate::error_chain(&error), delay);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::client::{
        Capabilities, ChangeBatch, Instance, InstanceStatus, PlatformType, RuntimeInfo,
        StatusChange, Timestamp,
    };
    use crate::config::Overrides;

    /// A converged fleet whose feed retains each instance's history (created, running),
    /// each change stamped with the instance's `lastModifiedAt`. Counts the reads that a
    /// resync's listing and bulk running configurations make unnecessary.
    struct Fleet {
        instances: Vec<Instance>,
        history: Vec<StatusChange>,
        per_instance_reads: AtomicUsize,
        feed_requests: AtomicUsize,
    }

    const DESIRED: fn() -> Value = || json!({"logLevel": "info"});

    impl Fleet {
        fn new(n: usize) -> Fleet {
            let at = Timestamp::default() + chrono::Duration::seconds(60);
            let mut instances = Vec::new();
            let mut history = Vec::new();
            for i in 0..n {
                let id = format!("i{i}");
                for (k, status) in [InstanceStatus::Created, InstanceStatus::Running]
                    .into_iter()
                    .enumerate()
                {
                    history.push(StatusChange {
                        sequence: Some((2 * i + k + 1) as u64),
                        instance_id: id.clone(),
                        status,
                        previous_status: None,
                        source: "controlplane".into(),
                        timestamp: at,
                        metadata: Default::default(),
                    });
                }
                instances.push(Instance {
                    id: id.clone(),
                    name: id,
                    description: String::new(),
                    platform_type: PlatformType::Simulated,
                    created_at: at,
                    last_modified_at: Some(at),
                    status: InstanceStatus::Running,
                    metadata: Default::default(),
                });
            }
            Fleet {
                instances,
                history,
                per_instance_reads: AtomicUsize::new(0),
                feed_requests: AtomicUsize::new(0),
            }
        }
        fn read_one(&self, id: &str) -> client::Result<Instance> {
            self.per_instance_reads.fetch_add(1, Ordering::SeqCst);
            self.instances
                .iter()
                .find(|i| i.id == id)
                .cloned()
                .ok_or_else(|| client::Error::NotFound {
                    call: format!("GET {id}"),
                    body: String::new(),
                })
        }
    }

    #[async_trait]
    impl ControlPlane for Fleet {
        async fn list_instances(&self) -> client::Result<Vec<Instance>> {
            Ok(self.instances.clone())
        }
        async fn get_instance(&self, id: &str) -> client::Result<Instance> {
            self.read_one(id)
        }
        async fn desired_configuration(&self, _: &str) -> client::Result<Value> {
            Ok(DESIRED())
        }
        async fn runtime_status(&self, id: &str) -> client::Result<RuntimeInfo> {
            Err(client::Error::NotFound {
                call: format!("status {id}"),
                body: String::new(),
            })
        }
        async fn start(&self, _: &str, _: Option<&Value>) -> client::Result<()> {
            Ok(())
        }
        async fn stop(&self, _: &str) -> client::Result<()> {
            Ok(())
        }
        async fn restart(&self, _: &str) -> client::Result<()> {
            Ok(())
        }
        async fn changes_after(
            &self,
            cursor: Option<u64>,
            wait: Duration,
        ) -> client::Result<ChangeBatch> {
            self.feed_requests.fetch_add(1, Ordering::SeqCst);
            let after = cursor.unwrap_or(0);
            let changes: Vec<_> = self
                .history
                .iter()
                .filter(|c| c.sequence > Some(after))
                .cloned()
                .collect();
            if changes.is_empty() {
                tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
            }
            Ok(ChangeBatch {
                changes,
                latest_sequence: Some(self.history.len() as u64),
                oldest_sequence: Some(1),
                truncated: false,
            })
        }
        async fn changes_since(&self, _: Timestamp) -> client::Result<Vec<StatusChange>> {
            Ok(Vec::new())
        }
        async fn running_configuration(&self, id: &str) -> client::Result<Option<Value>> {
            self.read_one(id).map(|_| Some(DESIRED()))
        }
        async fn running_configurations(&self) -> client::Result<HashMap<String, Value>> {
            Ok(self
                .instances
                .iter()
                .map(|i| (i.id.clone(), DESIRED()))
                .collect())
        }
        async fn capabilities(&self) -> client::Result<Capabilities> {
            Ok(Capabilities {
                sequence_feed: true,
                running_configuration: true,
                ..Capabilities::default()
            })
        }
    }

    fn reconciles(daemon: &Daemon) -> f64 {
        daemon
            .controller()
            .metrics()
            .encode()
            .lines()
            .filter(|l| l.starts_with("setpoint_reconciles_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Settings for a daemon on a loopback port with `fleet`-less defaults and `extra`.
    fn quiet_settings(dir: &std::path::Path, extra: &[(&str, String)]) -> Settings {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let mut overrides = Overrides::new()
            .set("control_plane.url", "http://127.0.0.1:9")
            .set("plugins.dir", plugins.display().to_string())
            .set("store.path", dir.join("s.db").display().to_string())
            .set("admin.listen", "127.0.0.1:0")
            .set("controller.resync_interval", "1h");
        for (key, value) in extra {
            overrides = overrides.set(key, value.clone());
        }
        Settings::load(None, Vec::<(String, String)>::new(), &overrides).unwrap()
    }

    /// `GET path` over `stream` with HTTP/1.1; everything the server sent back (a server
    /// that closes without TLS close_notify still gives what it sent before).
    async fn get_over<S>(mut stream: S, path: &str) -> Vec<u8>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return Vec::new();
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        answer
    }

    #[tokio::test]
    async fn with_a_certificate_the_admin_api_answers_https_and_not_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.path().join("admin.crt");
        let key_path = dir.path().join("admin.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
        let settings = quiet_settings(
            dir.path(),
            &[
                ("admin.tls_cert", cert_path.display().to_string()),
                ("admin.tls_key", key_path.display().to_string()),
            ],
        );
        let daemon = Daemon::start_with(settings, Arc::new(Fleet::new(1)))
            .await
            .unwrap();
        let addr = daemon.admin_addr();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        for path in ["/healthz", "/v1/openapi.json"] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .expect("TLS handshake with the admin API");
            let answer = String::from_utf8_lossy(&get_over(tls, path).await).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{path}: {answer}");
            assert!(
                answer.contains("x-content-type-options: nosniff"),
                "{answer}"
            );
        }

        // Plain HTTP to the TLS port gets no HTTP answer: the handshake fails.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = get_over(tcp, "/healthz").await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plain HTTP answered: {}",
            String::from_utf8_lossy(&answer)
        );
        // And the API still answers over TLS after it.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&get_over(tls, "/healthz").await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        daemon.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn unusable_tls_files_or_a_remote_listen_without_token_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let settings = quiet_settings(
            dir.path(),
            &[
                (
                    "admin.tls_cert",
                    dir.path().join("empty.pem").display().to_string(),
                ),
                (
                    "admin.tls_key",
                    dir.path().join("missing.pem").display().to_string(),
                ),
            ],
        );
        let error = Daemon::start_with(settings, Arc::new(Fleet::new(1)))
            .await
            .expect_err("an empty certificate file is refused");
        let chain = crate::error_chain(&error);
        assert!(
            chain.contains("no certificate in") && chain.contains("admin.tls_cert"),
            "{chain}"
        );

        // Settings built without `Settings::load` are checked at start too.
        let mut settings = quiet_settings(dir.path(), &[]);
        settings.admin.listen = "0.0.0.0:0".parse().unwrap();
        let error = Daemon::start_with(settings, Arc::new(Fleet::new(1)))
            .await
            .expect_err("a remote listen without a token is refused");
        let chain = crate::error_chain(&error);
        assert!(chain.contains("admin.allow_insecure_remote"), "{chain}");
    }

    #[tokio::test]
    async fn a_start_up_resync_uses_its_listing_and_does_not_replay_the_feed_history() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let settings = Settings::load(
            None,
            Vec::<(String, String)>::new(),
            &Overrides::new()
                .set("control_plane.url", "http://127.0.0.1:9")
                .set("plugins.dir", plugins.display().to_string())
                .set("store.path", dir.path().join("s.db").display().to_string())
                .set("admin.listen", "127.0.0.1:0")
                .set("controller.resync_interval", "1h"),
        )
        .unwrap();
        let fleet = Arc::new(Fleet::new(40));
        let daemon = Daemon::start_with(settings, fleet.clone()).await.unwrap();
        // Every instance reconciled, and the feed past its first answer (a replayed
        // history would be queued by then) with nothing left running.
        tokio::time::timeout(Duration::from_secs(20), async {
            while reconciles(&daemon) < 40.0
                || fleet.feed_requests.load(Ordering::SeqCst) < 3
                || daemon.queue().in_flight() > 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every instance is reconciled");
        assert_eq!(reconciles(&daemon), 40.0, "each instance once");
        assert_eq!(
            fleet.per_instance_reads.load(Ordering::SeqCst),
            0,
            "the listing and the bulk running configurations stand in for per-instance reads"
        );
        daemon.shutdown().await.unwrap();
    }
}
