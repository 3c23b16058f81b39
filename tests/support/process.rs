//! The daemon as an operator runs it: a `setpoint run` process against a test's world
//! (its control plane, plugin directory and database file), which a test can SIGKILL and
//! start again on the same database. Shared by the crash tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::world::World;
use crate::{free_port, setpoint_bin};

/// The admin token the process is started with.
pub const TOKEN: &str = "crash-token";

/// One `setpoint run` process. Dropped: SIGKILLed and reaped, so no daemon outlives its
/// test; when the test is failing, the tail of its log is printed.
#[derive(Debug)]
pub struct Setpoint {
    child: Child,
    admin: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Setpoint {
    /// Start the daemon binary against the world's control plane, plugin directory and
    /// database (`setpoint.db` in the world's directory, the same file every time), with
    /// `config` as its configuration file, and wait until it is ready.
    pub async fn start(world: &World, config: &str) -> Setpoint {
        Setpoint::start_via(world, &world.cp_url(), config).await
    }

    /// [`Setpoint::start`], reaching the control plane at `cp_url` (e.g. a relay).
    pub async fn start_via(world: &World, cp_url: &str, config: &str) -> Setpoint {
        Setpoint::start_with_env(world, cp_url, config, &[]).await
    }

    /// [`Setpoint::start_via`] with extra environment variables (which win over the
    /// defaults set here, e.g. `SETPOINT_CONTROLLER_RESYNC_INTERVAL`).
    pub async fn start_with_env(
        world: &World,
        cp_url: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Setpoint {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, Ordering::SeqCst);
        let dir = world.dir.path();
        let config_file = dir.join("setpoint.toml");
        std::fs::write(&config_file, config).unwrap();
        let log = dir.join(format!("daemon-{run}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let admin_addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(setpoint_bin())
            .args(["run", "--control-plane", cp_url, "--admin", &admin_addr])
            .arg("--config")
            .arg(&config_file)
            .arg("--plugins")
            .arg(world.plugin_dir())
            .arg("--db")
            .arg(dir.join("setpoint.db"))
            .env("SETPOINT_ADMIN_TOKEN", TOKEN)
            .env("SETPOINT_CONTROLLER_RESYNC_INTERVAL", "1s")
            .env("SETPOINT_CONTROLLER_BACKOFF_BASE", "100ms")
            .env("SETPOINT_CONTROLLER_BACKOFF_CAP", "1s")
            .env("SETPOINT_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("setpoint run starts");
        let mut daemon = Setpoint {
            child,
            admin: format!("http://{admin_addr}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!(
                    "setpoint run exited before it was ready ({status}):\n{}",
                    tail(&daemon.log)
                );
            }
            let ready = daemon
                .http
                .get(format!("{}/readyz", daemon.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return daemon;
            }
            assert!(
                Instant::now() < until,
                "setpoint run not ready within 60 s:\n{}",
                tail(&daemon.log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process logged so far (standard output and error), ANSI colour
    /// codes removed.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no checkpoint, whatever it was doing.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL setpoint run");
        self.child.wait().expect("reap setpoint run");
    }

    /// SIGTERM, then wait up to `limit` for the process to exit: its exit status and how
    /// long it took, or `None` when it was still running at `limit` (it is then
    /// SIGKILLed, so nothing outlives the test).
    pub async fn terminate(
        mut self,
        limit: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for setpoint run") {
                return Some((status, sent.elapsed()));
            }
            if sent.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET /v1/instances/{id}`; `Value::Null` when it does not answer.
    pub async fn instance(&self, id: &str) -> Value {
        self.get(&format!("/v1/instances/{id}")).await
    }

    /// `GET {path}` on the admin API as text: the status and the body; `(0, "")` when it
    /// does not answer.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        match self.http.get(format!("{}{path}", self.admin)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// `GET {path}` on the admin API; `Value::Null` when it does not answer with success.
    pub async fn get(&self, path: &str) -> Value {
        match self.http.get(format!("{}{path}", self.admin)).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// `POST {path}` on the admin API with the token: the status and the JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin API answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The instance's audit records (`GET /v1/audit`), oldest first; empty when the
    /// daemon does not answer.
    pub async fn audit(&self, id: &str) -> Vec<Value> {
        match self
            .http
            .get(format!("{}/v1/audit?instance={id}&limit=1000", self.admin))
            .send()
            .await
        {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The last 40 audit records of `id`, one line each, for failure messages.
    /// What a failed check shows about instance `id` that should run `level`: what its
    /// stub serves, its endpoint's weights, the control plane's clones, the daemon's view
    /// of it and the tail of its audit.
    pub async fn explain(&self, world: &World, id: &str, level: &str) -> String {
        let v = self.instance(id).await;
        format!(
            "{id}: desired {level}, stub serves {:?}, endpoint {:?}, clones {:?}\nadmin view: {:#}\naudit:\n{}",
            world.stub_config(id).await.map(|c| c["logLevel"].clone()),
            crate::traffic::endpoint_weights(&world.http, &world.cp_url(), id).await,
            crate::lifecycle::clones(world).await,
            serde_json::json!({
                "status": v["instance"]["status"],
                "conditions": v["conditions"],
                "rollout": v["rollout"],
                "givenUp": v["givenUp"],
                "lastDecision": v["lastDecision"],
            }),
            self.audit_tail(id).await
        )
    }

    pub async fn audit_tail(&self, id: &str) -> String {
        let records = self.audit(id).await;
        records[records.len().saturating_sub(40)..]
            .iter()
            .map(|r| {
                let e = if r["entry"].is_object() {
                    &r["entry"]
                } else {
                    r
                };
                format!("  {}: {}", e["kind"], e["message"])
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Setpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (last lines) ---\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `text` without ANSI escape sequences (`ESC [ … letter`), as a terminal shows it.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
