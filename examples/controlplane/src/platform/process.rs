//! The Process platform: each running instance is a `drasi-stub` OS process that reads
//! the instance's YAML configuration from the runtime directory and listens on the
//! instance's port.
//!
//! [`ProcessPlatform::start`] writes `{id}.yaml`, spawns the process (output to
//! `{id}.log`, pid in `{id}.pid`) and waits until it answers `GET /config`.
//! [`ProcessPlatform::stop`] sends SIGTERM and SIGKILL after a timeout. Every process is
//! watched: an exit nobody asked for is sent as an [`ExitEvent`] to the control plane,
//! which records `Error`. Processes found alive after a control-plane restart are
//! re-attached with [`ProcessPlatform::adopt`] and watched by polling their pid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::model::{Labels, configuration_host, configuration_port};

/// How often a re-attached process (not our child, so not `wait`able) is checked.
const ADOPTED_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often start-up readiness is probed.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one HTTP probe of a stub (health, config, metrics).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many lines of a stub's log a start-up error quotes.
const LOG_TAIL_LINES: usize = 5;

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The configuration has no usable `port`.
    #[error("the configuration has no valid `port`")]
    NoPort,
    /// The port is already taken by another process.
    #[error("port {port} on {host} is already in use")]
    PortInUse {
        /// The configured host.
        host: String,
        /// The configured port.
        port: u16,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML configuration could not be written.
    #[error("cannot write the configuration file {path}")]
    WriteConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The stub binary could not be run.
    #[error("cannot run the instance binary {bin} (set --stub-bin / SETPOINT_CP_STUB_BIN)")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it answered.
    #[error("the process exited during start-up ({status}); last log lines: {log_tail}")]
    ExitedDuringStartup {
        /// How it exited.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The process did not answer in time and was killed.
    #[error(
        "the process did not answer on {address} within {timeout:?} and was killed; last log lines: {log_tail}"
    )]
    NotReady {
        /// Where it was probed.
        address: String,
        /// The start-up timeout.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
    },
}

/// Settings of the Process platform.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// The `drasi-stub` executable.
    pub stub_bin: PathBuf,
    /// Where `{id}.yaml`, `{id}.log` and `{id}.pid` live.
    pub runtime_dir: PathBuf,
    /// How long a start waits for the process to answer.
    pub start_timeout: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Its exit code, if it exited normally.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// `false` for a re-attached process, whose exit status cannot be known.
    pub known: bool,
}

impl ExitInfo {
    /// A description such as `exit code 3` or `killed by signal 9 (SIGKILL)`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal, self.known) {
            (Some(code), _, _) => format!("exit code {code}"),
            (None, Some(signal), _) => {
                format!("killed by signal {signal} ({})", signal_name(signal))
            }
            (None, None, false) => "exit status unknown (process was re-attached)".to_owned(),
            (None, None, true) => "exit status unknown".to_owned(),
        }
    }

    /// Status-change metadata: `exitCode` (the code, or 128 + signal as a shell reports
    /// it, or `unknown`), `signal` when killed by one, and `exitStatus` (the description).
    pub fn metadata(&self) -> Labels {
        let mut labels = Labels::new();
        let code = match (self.code, self.signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => (128 + signal).to_string(),
            _ => "unknown".to_owned(),
        };
        labels.insert("exitCode".into(), code);
        if let Some(signal) = self.signal {
            labels.insert("signal".into(), signal.to_string());
        }
        labels.insert("exitStatus".into(), self.describe());
        labels
    }

    fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            code: status.code(),
            signal: status.signal(),
            known: true,
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("unknown", |s| s.as_str())
}

/// A process exit that nobody asked for.
#[derive(Debug, Clone)]
pub struct ExitEvent {
    /// The instance.
    pub instance_id: String,
    /// The run (see [`crate::store::Runtime::generation`]).
    pub generation: u64,
    /// The process id.
    pub pid: u32,
    /// How it ended.
    pub exit: ExitInfo,
}

/// A started process.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Its pid.
    pub pid: u32,
    /// Where it listens.
    pub host: String,
    /// Where it listens.
    pub port: u16,
    /// Its YAML configuration.
    pub config_path: PathBuf,
    /// Its output.
    pub log_path: PathBuf,
}

#[derive(Debug)]
struct Tracked {
    pid: u32,
    generation: u64,
    expected: Arc<AtomicBool>,
    exited: watch::Receiver<Option<ExitInfo>>,
}

/// Runs, stops, watches and probes `drasi-stub` processes.
#[derive(Debug)]
pub struct ProcessPlatform {
    settings: ProcessSettings,
    tracked: Arc<Mutex<HashMap<String, Tracked>>>,
    exits: mpsc::UnboundedSender<ExitEvent>,
    http: reqwest::Client,
}

impl ProcessPlatform {
    /// A platform that reports unexpected exits on `exits`.
    pub fn new(settings: ProcessSettings, exits: mpsc::UnboundedSender<ExitEvent>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            settings,
            tracked: Arc::default(),
            exits,
            http,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ProcessSettings {
        &self.settings
    }

    /// `{runtime_dir}/{id}.yaml`.
    pub fn config_path(&self, id: &str) -> PathBuf {
        self.settings.runtime_dir.join(format!("{id}.yaml"))
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.settings.runtime_dir.join(format!("{id}.log"))
    }

    fn pid_path(&self, id: &str) -> PathBuf {
        self.settings.runtime_dir.join(format!("{id}.pid"))
    }

    /// Whether a process for `id` is being watched.
    pub fn is_tracked(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The ids of every watched process.
    pub fn tracked_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Writes the YAML configuration, starts the process and waits until it answers.
    /// On failure nothing is left behind: no process, no configuration file.
    pub async fn start(
        &self,
        id: &str,
        generation: u64,
        config: &Value,
    ) -> Result<Launched, PlatformError> {
        let port = configuration_port(config).ok_or(PlatformError::NoPort)?;
        let host = configuration_host(config);
        // Fail fast and clearly when the port is taken (the stub would exit with the same
        // complaint, but later and in its log).
        std::net::TcpListener::bind((host.as_str(), port)).map_err(|source| {
            PlatformError::PortInUse {
                host: host.clone(),
                port,
                source,
            }
        })?;

        let config_path = self.config_path(id);
        write_atomically(&config_path, &to_drasi_yaml(id, config)).map_err(|source| {
            PlatformError::WriteConfig {
                path: config_path.clone(),
                source,
            }
        })?;
        let log_path = self.log_path(id);
        let spawned = self.spawn(id, generation, &config_path, &log_path);
        let (pid, mut exited, expected) = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                let _ = std::fs::remove_file(&config_path);
                return Err(error);
            }
        };

        let address = format!("{}:{port}", probe_host(&host));
        let deadline = tokio::time::Instant::now() + self.settings.start_timeout;
        loop {
            if let Some(exit) = exited.borrow().clone() {
                self.forget(id, pid);
                let _ = std::fs::remove_file(&config_path);
                return Err(PlatformError::ExitedDuringStartup {
                    status: exit.describe(),
                    log_tail: log_tail(&log_path),
                });
            }
            if let Ok(running) = self.fetch_json(&address, "/config").await
                && running.get("id").and_then(Value::as_str) == Some(id)
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                expected.store(true, Ordering::SeqCst);
                signal(pid, Signal::SIGKILL);
                wait_exit(&mut exited, Duration::from_secs(2)).await;
                self.forget(id, pid);
                let _ = std::fs::remove_file(&config_path);
                return Err(PlatformError::NotReady {
                    address,
                    timeout: self.settings.start_timeout,
                    log_tail: log_tail(&log_path),
                });
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        let _ = std::fs::write(self.pid_path(id), pid.to_string());
        Ok(Launched {
            pid,
            host,
            port,
            config_path,
            log_path,
        })
    }

    #[allow(clippy::type_complexity)]
    fn spawn(
        &self,
        id: &str,
        generation: u64,
        config_path: &Path,
        log_path: &Path,
    ) -> Result<(u32, watch::Receiver<Option<ExitInfo>>, Arc<AtomicBool>), PlatformError> {
        let spawn_error = |source| PlatformError::Spawn {
            bin: self.settings.stub_bin.clone(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(spawn_error)?;
        let log_err = log.try_clone().map_err(spawn_error)?;
        let mut child = tokio::process::Command::new(&self.settings.stub_bin)
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a Ctrl-C in the control plane's terminal reaches only the
            // control plane, which then stops its processes in order.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child.id().unwrap_or_default();
        let (exit_tx, exit_rx) = watch::channel(None);
        let expected = Arc::new(AtomicBool::new(false));
        self.lock().insert(
            id.to_owned(),
            Tracked {
                pid,
                generation,
                expected: expected.clone(),
                exited: exit_rx.clone(),
            },
        );
        let tracked = self.tracked.clone();
        let exits = self.exits.clone();
        let id = id.to_owned();
        let flag = expected.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => ExitInfo::from_status(status),
                Err(_) => ExitInfo {
                    code: None,
                    signal: None,
                    known: false,
                },
            };
            exit_tx.send_replace(Some(exit.clone()));
            report_exit(&tracked, &exits, &flag, id, generation, pid, exit);
        });
        Ok((pid, exit_rx, expected))
    }

    /// Re-attaches a process found alive after a restart and watches it by polling.
    pub fn adopt(&self, id: &str, generation: u64, pid: u32) {
        let (exit_tx, exit_rx) = watch::channel(None);
        let expected = Arc::new(AtomicBool::new(false));
        self.lock().insert(
            id.to_owned(),
            Tracked {
                pid,
                generation,
                expected: expected.clone(),
                exited: exit_rx,
            },
        );
        let tracked = self.tracked.clone();
        let exits = self.exits.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            while pid_alive(pid) {
                tokio::time::sleep(ADOPTED_POLL_INTERVAL).await;
            }
            let exit = ExitInfo {
                code: None,
                signal: None,
                known: false,
            };
            exit_tx.send_replace(Some(exit.clone()));
            report_exit(&tracked, &exits, &expected, id, generation, pid, exit);
        });
    }

    /// Stops the process of `id`: SIGTERM, then SIGKILL after the stop timeout. Returns
    /// how it ended, or `None` when no process was running.
    pub async fn stop(&self, id: &str) -> Option<ExitInfo> {
        let tracked = self.lock().remove(id)?;
        tracked.expected.store(true, Ordering::SeqCst);
        let mut exited = tracked.exited.clone();
        signal(tracked.pid, Signal::SIGTERM);
        let exit = match wait_exit(&mut exited, self.settings.stop_timeout).await {
            Some(exit) => Some(exit),
            None => {
                signal(tracked.pid, Signal::SIGKILL);
                wait_exit(&mut exited, Duration::from_secs(5)).await
            }
        };
        let _ = std::fs::remove_file(self.pid_path(id));
        let _ = std::fs::remove_file(self.config_path(id));
        exit
    }

    /// Kills every watched process at once (SIGKILL), without waiting: the last resort
    /// when the control plane is dropped without [`crate::RunningControlPlane::shutdown`].
    pub fn kill_all_now(&self) {
        for tracked in self.lock().drain().map(|(_, t)| t) {
            tracked.expected.store(true, Ordering::SeqCst);
            signal(tracked.pid, Signal::SIGKILL);
        }
    }

    /// Removes an instance's runtime files.
    pub fn remove_files(&self, id: &str) {
        for path in [self.config_path(id), self.log_path(id), self.pid_path(id)] {
            let _ = std::fs::remove_file(path);
        }
    }

    /// `GET http://{host}:{port}{path}` on a stub, as JSON.
    pub async fn probe(&self, host: &str, port: u16, path: &str) -> Result<(u16, Value), String> {
        let url = format!("http://{}:{port}{path}", probe_host(host));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    async fn fetch_json(&self, address: &str, path: &str) -> Result<Value, String> {
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
        let port = port.parse().unwrap_or(0);
        match self.probe(host, port, path).await? {
            (200, body) => Ok(body),
            (status, _) => Err(format!("status {status}")),
        }
    }

    /// The HTTP client used for probes (shared with the endpoint proxy).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn forget(&self, id: &str, pid: u32) {
        let mut tracked = self.lock();
        if tracked.get(id).is_some_and(|t| t.pid == pid) {
            tracked.remove(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets an exited process and, unless its exit was asked for, reports it.
fn report_exit(
    tracked: &Mutex<HashMap<String, Tracked>>,
    exits: &mpsc::UnboundedSender<ExitEvent>,
    expected: &AtomicBool,
    instance_id: String,
    generation: u64,
    pid: u32,
    exit: ExitInfo,
) {
    if expected.load(Ordering::SeqCst) {
        return;
    }
    {
        let mut tracked = tracked.lock().unwrap_or_else(|e| e.into_inner());
        if tracked
            .get(&instance_id)
            .is_some_and(|t| t.pid == pid && t.generation == generation)
        {
            tracked.remove(&instance_id);
        }
    }
    let _ = exits.send(ExitEvent {
        instance_id,
        generation,
        pid,
        exit,
    });
}

/// Waits up to `timeout` for the exit to be reported.
async fn wait_exit(
    exited: &mut watch::Receiver<Option<ExitInfo>>,
    timeout: Duration,
) -> Option<ExitInfo> {
    match tokio::time::timeout(timeout, exited.wait_for(|e| e.is_some())).await {
        Ok(Ok(exit)) => exit.clone(),
        _ => None,
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // A zombie still answers kill(pid, 0); /proc tells the truth on Linux.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X'));
    }
    kill(Pid::from_raw(raw), None).is_ok()
}

/// Where to reach a process that listens on `host`: loopback for a wildcard address.
pub fn probe_host(host: &str) -> String {
    match host {
        "" | "0.0.0.0" | "::" | "[::]" | "*" => "127.0.0.1".to_owned(),
        other if other.contains(':') && !other.starts_with('[') => format!("[{other}]"),
        other => other.to_owned(),
    }
}

/// The DRaaS drasi-server YAML for an instance: `id` first, then the configuration, with
/// each query's text under `query` (the YAML format's name).
pub fn to_drasi_yaml(id: &str, config: &Value) -> String {
    let mut out = Map::new();
    out.insert("id".into(), Value::String(id.to_owned()));
    if let Some(map) = config.as_object() {
        for (key, value) in map {
            if key != "id" {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(Value::Array(queries)) = out.get_mut("queries") {
        for query in queries.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(text) = query.remove("queryText") {
                query.insert("query".into(), text);
            }
        }
    }
    // The DRaaS file's order: identity and binding first, the pipeline last.
    const HEAD: [&str; 4] = ["id", "host", "port", "logLevel"];
    const TAIL: [&str; 3] = ["sources", "queries", "reactions"];
    let middle = out
        .keys()
        .filter(|k| !HEAD.contains(&k.as_str()) && !TAIL.contains(&k.as_str()))
        .cloned()
        .collect::<Vec<_>>();
    let mut yaml = format!("# Written by setpoint-controlplane for instance {id}; do not edit.\n");
    for key in HEAD
        .iter()
        .map(|k| k.to_string())
        .chain(middle)
        .chain(TAIL.iter().map(|k| k.to_string()))
    {
        if let Some(value) = out.get(&key) {
            let mut one = Map::new();
            one.insert(key, value.clone());
            yaml.push_str(&serde_norway::to_string(&Value::Object(one)).unwrap_or_default());
        }
    }
    yaml
}

fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
    if tail.is_empty() {
        "(none)".to_owned()
    } else {
        tail
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_puts_the_id_first_and_query_text_under_query() {
        let yaml = to_drasi_yaml(
            "abc",
            &json!({"host": "127.0.0.1", "port": 9000, "logLevel": "info",
                    "queries": [{"id": "q", "queryText": "MATCH (n) RETURN n"}]}),
        );
        let parsed: Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(parsed["id"], "abc");
        assert_eq!(parsed["port"], 9000);
        assert_eq!(parsed["queries"][0]["query"], "MATCH (n) RETURN n");
        assert!(parsed["queries"][0].get("queryText").is_none());
        let first_key = yaml.lines().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(first_key, "id: abc");
    }

    #[test]
    fn exit_metadata_reports_a_signal_as_128_plus_signal() {
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
            known: true,
        };
        let m = killed.metadata();
        assert_eq!(m["exitCode"], "137");
        assert_eq!(m["signal"], "9");
        assert!(m["exitStatus"].contains("SIGKILL"));
        let exited = ExitInfo {
            code: Some(3),
            signal: None,
            known: true,
        };
        assert_eq!(exited.metadata()["exitCode"], "3");
    }

    #[test]
    fn wildcard_hosts_are_probed_on_loopback() {
        assert_eq!(probe_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(probe_host("localhost"), "localhost");
        assert_eq!(probe_host("::1"), "[::1]");
    }

    #[test]
    fn our_own_pid_is_alive_and_a_huge_one_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
        assert!(!pid_alive(0));
    }
}
