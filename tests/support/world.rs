//! A test's world: the real reference control plane on loopback with real stub processes,
//! a plugin directory with the real components, a real SQLite file, and the daemon, as
//! an operator runs them. Shared by the daemon's end-to-end tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint::config::{Overrides, Settings};
use setpoint::daemon::Daemon;
use setpoint::store::{AuditFilter, AuditKind, ConditionType};
use setpoint_controlplane::{ControlPlaneConfig, RunningControlPlane, serve};

use crate::{fixture, free_port, plugin, port_range, stub_bin};

/// One test's world: a control plane, a daemon, their files.
pub struct World {
    /// The test's files: `plugins/`, `setpoint.db`, `setpoint.toml`, `cp/`.
    pub dir: tempfile::TempDir,
    /// The in-process control plane, when running.
    pub cp: Option<RunningControlPlane>,
    /// Where the control plane listens.
    pub cp_addr: std::net::SocketAddr,
    /// The daemon, when running.
    pub daemon: Option<Daemon>,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// The ports this test's instances may use.
    pub ports: std::ops::RangeInclusive<u16>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("dir", &self.dir.path())
            .field("cp_addr", &self.cp_addr)
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

impl World {
    /// A control plane, a plugin directory with the shipped plugins (plus the named
    /// fixtures), and no daemon yet.
    pub async fn new(fixtures: &[&str]) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for name in ["field-diff", "drasi-summary", "restart"] {
            std::fs::copy(plugin(name), plugins.join(format!("{name}.wasm"))).unwrap();
        }
        for name in fixtures {
            std::fs::copy(fixture(name), plugins.join(format!("fixture-{name}.wasm"))).unwrap();
        }
        let ports = port_range();
        let cp_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut world = World {
            dir,
            cp: None,
            cp_addr,
            daemon: None,
            http: reqwest::Client::new(),
            ports,
        };
        world.start_control_plane().await;
        world
    }

    pub async fn start_control_plane(&mut self) {
        self.start_control_plane_with(|_| {}).await;
    }

    /// Start the control plane with `tweak` applied to its configuration.
    pub async fn start_control_plane_with(&mut self, tweak: impl FnOnce(&mut ControlPlaneConfig)) {
        let mut config = ControlPlaneConfig {
            listen: self.cp_addr,
            stub_bin: Some(stub_bin()),
            port_range: self.ports.clone(),
            ..ControlPlaneConfig::in_dir(&self.dir.path().join("cp"))
        };
        tweak(&mut config);
        self.cp = Some(serve(config).await.expect("control plane starts"));
    }

    pub async fn stop_control_plane(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.shutdown().await;
        }
    }

    pub fn cp_url(&self) -> String {
        format!("http://{}", self.cp_addr)
    }

    /// Start the daemon with `config` (TOML) appended to the test's settings.
    pub async fn start_daemon(&mut self, resync: &str, config: &str) {
        let url = self.cp_url();
        self.start_daemon_at(&url, resync, config).await;
    }

    /// Start the daemon like [`start_daemon`](Self::start_daemon), talking to the control
    /// plane at `cp_url` (a proxy in front of it) instead of directly.
    pub async fn start_daemon_at(&mut self, cp_url: &str, resync: &str, config: &str) {
        let file = self.dir.path().join("setpoint.toml");
        std::fs::write(&file, config).unwrap();
        let settings = Settings::load(
            Some(&file),
            Vec::<(String, String)>::new(),
            &Overrides::new()
                .set("control_plane.url", cp_url)
                .set("plugins.dir", self.plugin_dir().display().to_string())
                .set(
                    "store.path",
                    self.dir.path().join("setpoint.db").display().to_string(),
                )
                .set("admin.listen", "127.0.0.1:0")
                .set("admin.token", "test-token")
                .set("controller.resync_interval", resync)
                .set("controller.backoff_base", "100ms")
                .set("controller.backoff_cap", "1s"),
        )
        .expect("settings load");
        self.daemon = Some(Daemon::start(settings).await.expect("daemon starts"));
    }

    pub async fn stop_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown().await.expect("clean shutdown");
        }
    }

    /// Run the `setpoint` CLI against the in-process daemon's admin API, with the
    /// test's token; its stdout. Panics with stdout and stderr when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(crate::setpoint_bin())
            .args(args)
            .arg("--endpoint")
            .arg(format!("http://{}", self.daemon().admin_addr()))
            .env("SETPOINT_ADMIN_TOKEN", "test-token")
            .output()
            .expect("the setpoint CLI runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "setpoint {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    pub async fn create(&self, name: &str, labels: Value) -> String {
        create_instance(&self.http, &self.cp_url(), name, labels, json!({})).await
    }

    pub async fn patch(&self, id: &str, ops: Value) {
        let response = self
            .http
            .patch(format!(
                "{}/api/configuration/instances/{id}",
                self.cp_url()
            ))
            .json(&ops)
            .send()
            .await
            .expect("PATCH reaches the control plane");
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            panic!("PATCH {id} {ops}: the control plane answered {status}: {body}");
        }
    }

    /// GET a control-plane route; `Value::Null` when it cannot be reached (a test may
    /// poll through an outage).
    pub async fn get(&self, path: &str) -> Value {
        match self
            .http
            .get(format!("{}{path}", self.cp_url()))
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Whether the instance's stub process serves `logLevel = level`.
    pub async fn serves(&self, id: &str, level: &str) -> bool {
        self.stub_config(id)
            .await
            .is_some_and(|c| c["logLevel"] == level)
    }

    /// The daemon's admin view of one instance (`GET /v1/instances/{id}`).
    pub async fn admin_instance(&self, id: &str) -> Value {
        let (code, body) = self
            .admin(false, &format!("/v1/instances/{id}"), Value::Null)
            .await;
        assert_eq!(code, 200, "{body}");
        body
    }

    pub async fn status(&self, id: &str) -> String {
        self.get(&format!("/api/server/instances/{id}")).await["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub async fn port(&self, id: &str) -> u64 {
        self.get(&format!("/api/configuration/instances/{id}"))
            .await["port"]
            .as_u64()
            .expect("configuration has a port")
    }

    /// What the instance's stub process serves as its running configuration.
    pub async fn stub_config(&self, id: &str) -> Option<Value> {
        let port = self.port(id).await;
        let response = self
            .http
            .get(format!("http://127.0.0.1:{port}/config"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    pub fn synced(&self, id: &str) -> bool {
        let store = self.daemon().controller().store();
        store.load_rollout(id).unwrap().is_none()
            && store
                .conditions(id)
                .unwrap()
                .iter()
                .any(|c| c.type_ == ConditionType::Synced && c.status)
    }

    pub fn condition(&self, id: &str, type_: ConditionType) -> Option<(bool, String, String)> {
        self.daemon()
            .controller()
            .store()
            .conditions(id)
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason, c.message))
    }

    pub fn audit(&self, id: &str) -> Vec<(AuditKind, String)> {
        self.daemon()
            .controller()
            .store()
            .audit(&AuditFilter {
                instance_id: Some(id.to_owned()),
                ..AuditFilter::default()
            })
            .unwrap()
            .into_iter()
            .map(|r| (r.entry.kind, r.entry.message))
            .collect()
    }

    /// Call the daemon's admin API with the test token: status and JSON body.
    pub async fn admin(&self, post: bool, path: &str, body: Value) -> (u16, Value) {
        let url = format!("http://{}{path}", self.daemon().admin_addr());
        let request = if post && body.is_null() {
            self.http.post(url).bearer_auth("test-token")
        } else if post {
            self.http.post(url).bearer_auth("test-token").json(&body)
        } else {
            self.http.get(url)
        };
        let response = request.send().await.expect("admin API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A control-plane POST (lifecycle calls behind the daemon's back).
    pub async fn cp_post(&self, path: &str, body: Option<Value>) -> u16 {
        let mut request = self.http.post(format!("{}{path}", self.cp_url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// The value of one sample of the daemon's metrics, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.daemon().admin_addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The control plane's own record of what happened to each instance, read from its
    /// change feed (every retained change, oldest first): per instance, one
    /// [`Lifecycle`] per revision of its desired configuration.
    pub async fn lifecycle(&self) -> std::collections::BTreeMap<String, Vec<Lifecycle>> {
        let page = self.get("/api/status/recent-changes?after=0").await;
        assert!(
            page["truncated"] == false,
            "the feed dropped changes: raise the control plane's feed_capacity"
        );
        lifecycle_from(page["changes"].as_array().expect("feed changes"))
    }

    pub async fn latest_sequence(&self) -> u64 {
        self.get("/api/status/recent-changes?after=0").await["latestSequence"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// What the control plane did to an instance while one revision of its desired
/// configuration stood: from one `ConfigurationChanged` (or the instance's creation) to
/// the next. Counted from the control plane's own feed entries (source `controlplane`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Processes started (`Running` entries).
    pub starts: usize,
    /// Processes stopped (`Stopped` entries; stopping a stopped instance records none).
    pub stops: usize,
}

/// [`Lifecycle`]s per instance from a list of feed changes, oldest first.
pub fn lifecycle_from(changes: &[Value]) -> std::collections::BTreeMap<String, Vec<Lifecycle>> {
    let mut out: std::collections::BTreeMap<String, Vec<Lifecycle>> = Default::default();
    for change in changes {
        if change["source"] != "controlplane" {
            continue;
        }
        let id = change["instanceId"].as_str().unwrap_or_default().to_owned();
        let revisions = out.entry(id).or_default();
        if revisions.is_empty() {
            revisions.push(Lifecycle::default());
        }
        match change["status"].as_str().unwrap_or_default() {
            "ConfigurationChanged" => revisions.push(Lifecycle::default()),
            "Running" => revisions.last_mut().unwrap().starts += 1,
            "Stopped" => revisions.last_mut().unwrap().stops += 1,
            _ => {}
        }
    }
    out
}

/// Create an instance on the control plane at `cp_url`: a small Drasi configuration
/// (one mock source, one query, one log reaction) with the keys of `extra` added (such
/// as `{"stub": {"failRate": 0.5}}`), labelled `labels`. Its id.
pub async fn create_instance(
    http: &reqwest::Client,
    cp_url: &str,
    name: &str,
    labels: Value,
    extra: Value,
) -> String {
    let mut configuration = json!({
        "host": "127.0.0.1", "logLevel": "info",
        "sources": [{ "kind": "mock", "id": "s1", "autoStart": true, "dataType": "sensor", "intervalMs": 5000 }],
        "queries": [{ "id": "q1", "queryText": "MATCH (n) RETURN n", "sources": [{ "sourceId": "s1" }] }],
        "reactions": [{ "kind": "log", "id": "r1", "queries": ["q1"] }]
    });
    if let (Some(config), Value::Object(extra)) = (configuration.as_object_mut(), extra) {
        config.extend(extra);
    }
    let body = json!({ "name": name, "serverConfiguration": configuration, "metadata": labels });
    let created: Value = http
        .post(format!("{cp_url}/api/server/instances"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_owned()
}

/// Poll `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `check` every 20 ms until it holds (`true`) or `limit` passes (`false`): for a
/// test that explains a failure itself ([`eventually`] panics with a fixed message).
pub async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON Patch that sets the desired `logLevel`: the change most tests make.
pub fn set_level(level: &str) -> Value {
    json!([{ "op": "replace", "path": "/logLevel", "value": level }])
}

/// Wait (up to 30 s) until every instance is synced and running.
pub async fn converged(world: &World, ids: &[&str]) {
    for id in ids {
        eventually(
            Duration::from_secs(30),
            &format!("{id} to converge"),
            async || world.synced(id) && world.status(id).await == "Running",
        )
        .await;
    }
}

/// Run a test body with an overall bound, so a hang fails instead of blocking the run.
pub async fn bounded(limit: Duration, body: impl Future<Output = ()>) {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}
