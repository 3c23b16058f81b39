//! Shared test helpers: find (or build) the `drasi-stub` binary, run a control plane on
//! loopback with its own database and port range, talk to it over real HTTP, and poll
//! with a deadline instead of sleeping.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use setpoint_controlplane::{ControlPlaneConfig, RunningControlPlane, serve};

/// The `drasi-stub` executable. `DRASI_STUB_BIN` wins; otherwise it is built with the
/// same cargo (honouring `CARGO_TARGET_DIR`) and located from cargo's own report, so
/// `cargo test -p setpoint-controlplane` works on a fresh clone.
pub fn stub_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("DRASI_STUB_BIN") {
            return PathBuf::from(path);
        }
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .args(["build", "-p", "drasi-stub", "--message-format=json"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        // Build into the target directory this test was built in (`<target>/<profile>/deps/
        // <test>`), however it was chosen (CARGO_TARGET_DIR, --target-dir, relative or not).
        let exe = std::env::current_exe().expect("the test executable's path");
        let deps = exe.parent().filter(|d| d.ends_with("deps"));
        if let Some(target) = deps.and_then(|d| d.parent()).and_then(|p| p.parent()) {
            cargo.arg("--target-dir").arg(target);
        }
        let output = cargo
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running cargo to build drasi-stub");
        assert!(output.status.success(), "cargo build -p drasi-stub failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "drasi-stub")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no drasi-stub executable")
    })
    .clone()
}

/// A port range no other test in this run uses (tests run in parallel). The base moves
/// with the process id so concurrent test binaries rarely overlap either.
pub fn port_range() -> std::ops::RangeInclusive<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst) % 25;
    let base = 21000 + (std::process::id() % 10) as u16 * 1000 + n * 40;
    base..=base + 39
}

/// Polls `check` every 20 ms until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    setpoint_controlplane::platform::process::pid_alive(pid)
}

/// An HTTP client for a control plane at `base`.
#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Creates an instance and returns its JSON (asserting 201).
    pub async fn create(&self, body: Value) -> Value {
        let (status, instance) = self.post("/api/server/instances", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "create failed: {instance}");
        instance
    }

    /// Starts an instance and returns its JSON (asserting 200).
    pub async fn start(&self, id: &str) -> Value {
        let (status, instance) = self
            .post(&format!("/api/server/instances/{id}/start"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "start failed: {instance}");
        instance
    }

    /// The instance's runtime info.
    pub async fn runtime(&self, id: &str) -> Value {
        let (status, info) = self.get(&format!("/api/status/{id}/status")).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info
    }

    /// The pid of the instance's process.
    pub async fn pid(&self, id: &str) -> u32 {
        let info = self.runtime(id).await;
        info["processId"]
            .as_str()
            .unwrap_or_else(|| panic!("no processId in {info}"))
            .parse()
            .unwrap()
    }

    /// The instance's desired configuration.
    pub async fn configuration(&self, id: &str) -> Value {
        let (status, config) = self
            .get(&format!("/api/configuration/instances/{id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{config}");
        config
    }

    /// Every change after `after` (cursor form).
    pub async fn changes_after(&self, after: u64) -> Value {
        let (status, page) = self
            .get(&format!("/api/status/recent-changes?after={after}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }
}

/// A control plane served in this process on loopback, with its own temporary
/// database, runtime directory and port range.
#[derive(Debug)]
pub struct TestCp {
    pub running: Option<RunningControlPlane>,
    pub client: Client,
    pub dir: tempfile::TempDir,
    /// The ports it hands to Process instances.
    pub port_range: std::ops::RangeInclusive<u16>,
}

impl TestCp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ControlPlaneConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Self::config(dir.path());
        adjust(&mut config);
        let port_range = config.port_range.clone();
        let running = serve(config).await.expect("serve");
        let client = Client::new(running.base_url());
        Self {
            running: Some(running),
            client,
            dir,
            port_range,
        }
    }

    pub fn config(dir: &std::path::Path) -> ControlPlaneConfig {
        ControlPlaneConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            stub_bin: Some(stub_bin()),
            port_range: port_range(),
            ..ControlPlaneConfig::in_dir(dir)
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl std::ops::Deref for TestCp {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The live `drasi-stub` processes started from configuration files under `dir` (every
/// process a control plane runs gets `--config <runtime dir>/<id>.yaml`), found by
/// reading `/proc/*/cmdline`; so a test sees the processes that really exist, not the ones
/// the control plane knows of.
pub fn stub_pids_in(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.windows(2)
                    .any(|w| w[0] == "--config" && w[1].starts_with(&dir))
            })
        })
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort_unstable();
    pids
}
