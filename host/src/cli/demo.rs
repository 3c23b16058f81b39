//! `setpoint demo`: the reference control plane and the daemon with the shipped plugins,
//! three instances on the Process platform, and one configuration change followed from
//! drift to convergence, printed as it happens; then a canary under live traffic through
//! the instance's endpoint: a good change promoted step by step, and a bad one (the new
//! configuration makes the stub fail 30 % of requests) rolled back by the analysis, with
//! the weights and error rates printed as they move.
//!
//! The control plane runs as its own process (`setpoint-controlplane`, found next to this
//! executable); the daemon runs in this process. Ctrl-C stops both and every stub
//! process the control plane started.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

use super::CliError;
use crate::config::{Overrides, Settings};
use crate::daemon::Daemon;
use crate::store::{AuditFilter, AuditKind, Store};

/// Flags of `setpoint demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Plugin directory (default: `target/plugins` beside the build, as
    /// `scripts/build-plugins` leaves it).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// The `setpoint-controlplane` executable (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub control_plane_bin: Option<PathBuf>,
    /// Directory for the demo's state (default: a fresh temporary directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Exit once the change has converged instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
    /// How long to wait for each stage before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Kills the control-plane process (and so its stubs) when dropped.
struct ControlPlaneProcess {
    child: Child,
    url: String,
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        // SIGTERM lets it stop its stub processes; kill if it does not exit.
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join(name);
    candidate.is_file().then_some(candidate)
}

fn default_plugin_dir() -> PathBuf {
    // target/<profile>/setpoint → target/plugins
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|t| t.join("plugins")))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("target/plugins"))
}

fn start_control_plane(bin: &Path, dir: &Path) -> Result<ControlPlaneProcess, CliError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--db")
        .arg(dir.join("controlplane.db"))
        .arg("--runtime-dir")
        .arg(dir.join("runtime"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(stub) = sibling("drasi-stub") {
        cmd.arg("--stub-bin").arg(stub);
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start the reference control plane {}: {e}; build it with `cargo build --release -p setpoint-controlplane -p drasi-stub` or pass --control-plane-bin",
            bin.display()
        )
    })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.trim().strip_prefix("listening on ") {
                    break url.to_owned();
                }
            }
            _ => {
                let _ = child.kill();
                return Err("the reference control plane exited before it listened".into());
            }
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ControlPlaneProcess { child, url })
}

pub(super) async fn run(args: DemoArgs) -> Result<(), CliError> {
    let plugins = args.plugins.clone().unwrap_or_else(default_plugin_dir);
    if ["field-diff", "restart", "canary"]
        .iter()
        .any(|p| !plugins.join(format!("{p}.wasm")).is_file())
    {
        return Err(format!(
            "no shipped plugins in {}: run ./scripts/build-plugins first, or pass --plugins DIR",
            plugins.display()
        )
        .into());
    }
    let bin = args
        .control_plane_bin
        .clone()
        .or_else(|| sibling("setpoint-controlplane"))
        .ok_or("cannot find setpoint-controlplane next to this executable; build it with `cargo build --release -p setpoint-controlplane -p drasi-stub` or pass --control-plane-bin")?;
    let temp;
    let dir = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };

    say("starting the reference DRaaS control plane");
    let cp = start_control_plane(&bin, &dir)?;
    say(&format!("control plane at {}", cp.url));

    let policy = dir.join("demo-policy.toml");
    std::fs::write(&policy, CANARY_POLICY)?;
    let settings = Settings::load(
        Some(&policy),
        Vec::<(String, String)>::new(),
        &Overrides::new()
            .set("control_plane.url", cp.url.clone())
            .set("plugins.dir", plugins.display().to_string())
            .set("store.path", dir.join("setpoint.db").display().to_string())
            .set("admin.listen", "127.0.0.1:0"),
    )?;
    let daemon = Daemon::start(settings).await?;
    say(&format!(
        "setpoint daemon running (admin API on http://{}; plugins from {})",
        daemon.admin_addr(),
        plugins.display()
    ));
    let store = daemon.controller().store().clone();

    let controller = daemon.controller().clone();
    let result = tokio::select! {
        r = async {
            let ids = script(&cp.url, &store, args.timeout).await?;
            canary(&cp.url, &controller, &ids[1], args.timeout).await
        } => r,
        _ = super::daemon::shutdown_signal() => {
            say("interrupted");
            Ok(())
        }
    };
    if result.is_ok() && !args.exit_when_done {
        say(&format!(
            "the demo keeps running: in another terminal try `setpoint status --endpoint http://{}` (or explain, diff, audit with an instance id); Ctrl-C to stop",
            daemon.admin_addr()
        ));
        super::daemon::shutdown_signal().await;
    }
    say("stopping the daemon and the control plane");
    daemon.shutdown().await?;
    drop(cp);
    say("stopped; no process left behind");
    result
}

fn say(text: &str) {
    println!("==> {text}");
}

/// Instances labelled `delivery = canary` (the demo labels `sensors` once it runs) roll
/// changes out with the `canary` strategy: 20 % of the traffic, a pause and an analysis,
/// then 50 %, the same again, then full promotion.
const CANARY_POLICY: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "500ms", health_poll_ms = 200, steps = [
  { weight = 20 }, { pause = "2s" },
  { analysis = { interval = "2s", max_error_rate = 0.05, min_requests = 20 } },
  { weight = 50 }, { pause = "2s" },
  { analysis = { interval = "2s", max_error_rate = 0.05, min_requests = 20 } },
] }
"#;

async fn script(url: &str, store: &Store, timeout: Duration) -> Result<Vec<String>, CliError> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (name, level) in [("orders", "info"), ("sensors", "info"), ("billing", "warn")] {
        let body = json!({
            "name": name,
            "description": format!("demo instance {name}"),
            "serverConfiguration": {
                "host": "127.0.0.1",
                "logLevel": level,
                "sources": [{ "kind": "mock", "id": format!("{name}-source"), "autoStart": true, "dataType": "sensor", "intervalMs": 5000 }],
                "queries": [{ "id": format!("{name}-all"), "queryText": "MATCH (n) RETURN n", "sources": [{ "sourceId": format!("{name}-source") }] }],
                "reactions": [{ "kind": "log", "id": format!("{name}-log"), "queries": [format!("{name}-all")] }]
            },
            "metadata": { "app": "demo", "tier": name }
        });
        let created: Value = http
            .post(format!("{url}/api/server/instances"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"]
            .as_str()
            .ok_or("create answered without an id")?
            .to_owned();
        say(&format!(
            "created instance {name} ({id}), status Created: setpoint sees it as missing and brings it up"
        ));
        ids.push(id);
    }

    let mut last_audit = 0i64;
    wait_converged(store, &ids, timeout, &mut last_audit).await?;
    say("all three instances converged");

    let target = ids[0].clone();
    let patch = json!([
        { "op": "replace", "path": "/logLevel", "value": "debug" },
        { "op": "add", "path": "/queries/-", "value": {
            "id": "orders-large", "queryText": "MATCH (o:Order) WHERE o.total > 1000 RETURN o.id",
            "sources": [{ "sourceId": "orders-source" }] } }
    ]);
    say(&format!(
        "changing instance orders ({target}): logLevel -> debug, one more query (JSON Patch)"
    ));
    http.patch(format!("{url}/api/configuration/instances/{target}"))
        .json(&patch)
        .send()
        .await?
        .error_for_status()?;
    wait_converged(
        store,
        std::slice::from_ref(&target),
        timeout,
        &mut last_audit,
    )
    .await?;

    let desired: Value = http
        .get(format!("{url}/api/configuration/instances/{target}"))
        .send()
        .await?
        .json()
        .await?;
    let port = desired["port"]
        .as_u64()
        .ok_or("desired configuration has no port")?;
    let running: Value = http
        .get(format!("http://127.0.0.1:{port}/config"))
        .send()
        .await?
        .json()
        .await?;
    let queries = running["queries"].as_array().map(|q| q.len()).unwrap_or(0);
    say(&format!(
        "the stub of orders on port {port} now serves logLevel={} with {queries} queries",
        running["logLevel"].as_str().unwrap_or("?")
    ));
    if running["logLevel"] != "debug" || queries != 2 {
        return Err("the stub does not serve the new configuration".into());
    }
    say("drift detected -> strategy steps -> converged");
    Ok(ids)
}

/// Requests sent through an endpoint's proxy, and how many failed.
#[derive(Debug, Default)]
struct Traffic {
    sent: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Traffic {
    fn figures(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.sent.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// The canary part: label `sensors` for the canary rule, publish its endpoint, send it
/// traffic, then a good change (promoted step by step) and a bad one (rolled back).
async fn canary(
    url: &str,
    controller: &std::sync::Arc<crate::controller::Controller>,
    id: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let http = reqwest::Client::new();
    say(&format!(
        "labelling sensors ({id}) delivery=canary: policy now rolls its changes out with the canary strategy"
    ));
    http.put(format!("{url}/api/server/instances/{id}/metadata"))
        .json(&json!({ "app": "demo", "tier": "sensors", "delivery": "canary" }))
        .send()
        .await?
        .error_for_status()?;
    http.put(format!("{url}/api/extensions/endpoints/{id}"))
        .json(&json!({ "backends": [{ "instanceId": id, "weight": 100 }] }))
        .send()
        .await?
        .error_for_status()?;
    let traffic = std::sync::Arc::new(Traffic::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let proxy = format!("{url}/api/extensions/endpoints/{id}/proxy/query");
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, proxy, traffic, mut stopped) = (
            http.clone(),
            proxy.clone(),
            traffic.clone(),
            stopped.clone(),
        );
        load.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            while !*stopped.borrow() {
                let ok = http
                    .get(&proxy)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                traffic.sent.fetch_add(1, Relaxed);
                if !ok {
                    traffic.failed.fetch_add(1, Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stopped.changed() => {}
                }
            }
        }));
    }
    say(&format!(
        "sending traffic to its endpoint {proxy} (about 200 requests/s)"
    ));

    say("good change to sensors: logLevel -> debug");
    patch(
        &http,
        url,
        id,
        json!([{ "op": "replace", "path": "/logLevel", "value": "debug" }]),
    )
    .await?;
    follow(controller, id, &traffic, timeout).await?;
    let (sent, failed) = traffic.figures();
    say(&format!(
        "promoted: sensors runs logLevel=debug at 100 % of its endpoint; {failed} of {sent} requests failed so far"
    ));

    say(
        "bad change to sensors: the new configuration makes the stub fail 30 % of its requests (stub.failRate)",
    );
    patch(
        &http,
        url,
        id,
        json!([{ "op": "add", "path": "/stub", "value": { "failRate": 0.3 } }]),
    )
    .await?;
    follow(controller, id, &traffic, timeout).await?;
    let _ = stop.send(true);
    for task in load {
        let _ = task.await;
    }
    let (sent, failed) = traffic.figures();
    let given_up = controller
        .store()
        .given_up(id)?
        .ok_or("the bad change was not rolled back")?;
    say(&format!(
        "rolled back automatically: {}; {failed} of {sent} requests failed in all (the canary's share while it was measured)",
        given_up.reason
    ));
    Ok(())
}

async fn patch(http: &reqwest::Client, url: &str, id: &str, ops: Value) -> Result<(), CliError> {
    http.patch(format!("{url}/api/configuration/instances/{id}"))
        .json(&ops)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Print the rollout's progress (step, weights, analysis) whenever it changes, until a
/// rollout has started and ended.
async fn follow(
    controller: &crate::controller::Controller,
    id: &str,
    traffic: &Traffic,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let mut seen = false;
    let mut last = String::new();
    loop {
        match controller.rollout_progress(id)? {
            Some(progress) => {
                seen = true;
                let line = progress["summary"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{} {}", progress["strategy"], progress["phase"]));
                if line != last {
                    let (sent, failed) = traffic.figures();
                    println!("    [canary] {line}   (traffic: {sent} sent, {failed} failed)");
                    last = line;
                }
            }
            None if seen => return Ok(()),
            None => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the canary of {id} did not finish within {timeout:?}; see `setpoint audit {id}`"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Print the audit log as it grows until every instance in `ids` has converged (an
/// outcome entry "converged" after `last_audit`).
async fn wait_converged(
    store: &Store,
    ids: &[String],
    timeout: Duration,
    last_audit: &mut i64,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let mut pending: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        let entries = store.audit(&AuditFilter {
            after_id: Some(*last_audit),
            ..AuditFilter::default()
        })?;
        for e in entries {
            *last_audit = e.id;
            let who = e.entry.instance_id.as_deref().unwrap_or("-");
            let short = &who[..who.len().min(8)];
            let tag = match e.entry.kind {
                AuditKind::Observation => "observe",
                AuditKind::Decision => "decide",
                AuditKind::Action => "act",
                AuditKind::Denied => "DENIED",
                AuditKind::Outcome => "result",
                AuditKind::Approval => "approve",
            };
            println!("    [{short}] {tag:<8} {}", e.entry.message);
            if e.entry.kind == AuditKind::Outcome && e.entry.message.starts_with("converged") {
                pending.remove(who);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "instances {pending:?} did not converge within {timeout:?}; see `setpoint audit`"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
