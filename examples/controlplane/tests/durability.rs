//! Durability across a control-plane restart, with the real binary: instances, desired
//! configurations, labels, port allocations and the feed survive a `kill -9` of the
//! control plane; a process still alive is re-attached, one that died meanwhile becomes
//! `Error`; SIGTERM stops the re-attached processes.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Client, alive, eventually, port_range, stub_bin};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The control-plane binary running as a child process. Dropping it kills it and every
/// pid registered with it, so a failing test leaves nothing behind.
struct CpProcess {
    child: tokio::process::Child,
    client: Client,
    cleanup: Vec<u32>,
}

impl CpProcess {
    async fn spawn(dir: &Path, range: &std::ops::RangeInclusive<u16>) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("controlplane.log"))
            .unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_setpoint-controlplane"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--db")
            .arg(dir.join("cp.db"))
            .env("SETPOINT_CP_RUNTIME_DIR", dir.join("runtime"))
            .env("SETPOINT_CP_STUB_BIN", stub_bin())
            .env(
                "SETPOINT_CP_PORT_RANGE",
                format!("{}-{}", range.start(), range.end()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning setpoint-controlplane");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the control plane did not print its address in time")
            .unwrap()
            .expect("the control plane exited before printing its address");
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Self {
            child,
            client: Client::new(base),
            cleanup: Vec::new(),
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("still running") as i32;
        kill(Pid::from_raw(pid), signal).unwrap();
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the control plane did not exit in time")
            .unwrap()
    }
}

impl Drop for CpProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for pid in &self.cleanup {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

async fn id_of(client: &Client, body: Value) -> String {
    client.create(body).await["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn state_survives_a_control_plane_crash_and_processes_are_reattached_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let range = port_range();

    // ---- first life -------------------------------------------------------------------
    let mut first = CpProcess::spawn(dir.path(), &range).await;
    let cp = first.client.clone();
    let a = id_of(&cp, json!({"name": "a", "metadata": {"team": "blue"}})).await;
    let b = id_of(&cp, json!({"name": "b"})).await;
    let s = id_of(&cp, json!({"name": "s", "platformType": "Simulated"})).await;
    for id in [&a, &b, &s] {
        cp.start(id).await;
    }
    let (status, _) = cp
        .patch(
            &format!("/api/configuration/instances/{a}"),
            &json!([{"op": "replace", "path": "/logLevel", "value": "debug"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (pa, pb) = (cp.pid(&a).await, cp.pid(&b).await);
    first.cleanup.extend([pa, pb]);
    let port_b = cp.configuration(&b).await["port"].clone();
    let latest_before = cp.changes_after(0).await["latestSequence"]
        .as_u64()
        .unwrap();

    // The control plane crashes; its processes live on. One of them dies meanwhile.
    first.signal(Signal::SIGKILL);
    first.wait().await;
    assert!(
        alive(pa) && alive(pb),
        "instance processes outlive a crashed control plane"
    );
    kill(Pid::from_raw(pb as i32), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(5), "b's process to die", || async {
        (!alive(pb)).then_some(())
    })
    .await;

    // ---- second life ------------------------------------------------------------------
    let mut second = CpProcess::spawn(dir.path(), &range).await;
    second.cleanup.push(pa);
    let cp = second.client.clone();

    let (_, list) = cp.get("/api/server/instances").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "s"]);
    let (_, instance_a) = cp.get(&format!("/api/server/instances/{a}")).await;
    assert_eq!(instance_a["metadata"], json!({"team": "blue"}));
    assert_eq!(cp.configuration(&a).await["logLevel"], "debug");

    // a is alive: re-attached with its status, pid and health.
    assert_eq!(instance_a["status"], "ConfigurationChanged");
    assert_eq!(cp.pid(&a).await, pa);
    assert_eq!(
        cp.runtime(&a).await["runtimeMetadata"]["reattached"],
        "true"
    );
    let (_, health) = cp
        .get(&format!("/api/extensions/instances/{a}/health"))
        .await;
    assert_eq!(health["healthy"], true, "{health}");

    // b is gone: Error, recorded in the feed after everything from the first life.
    let page = cp.changes_after(latest_before).await;
    assert_eq!(page["truncated"], false, "the retained feed survives too");
    let changes = page["changes"].as_array().unwrap();
    let b_error = changes
        .iter()
        .find(|c| c["instanceId"] == b.as_str())
        .unwrap_or_else(|| panic!("no change for b in {page}"));
    assert_eq!(b_error["status"], "Error");
    assert_eq!(b_error["sequence"].as_u64().unwrap(), latest_before + 1);
    assert!(changes.iter().all(|c| c["instanceId"] != a.as_str()));
    assert_eq!(cp.runtime(&b).await["status"], "Error");
    let (_, all) = cp.get("/api/status/recent-changes?after=0").await;
    assert_eq!(
        all["changes"][0]["sequence"], 1,
        "entries of the first life are kept"
    );

    // The simulated instance is still running; b's port stays allocated to b.
    assert_eq!(cp.runtime(&s).await["status"], "Running");
    let c = id_of(&cp, json!({"name": "c"})).await;
    assert_ne!(cp.configuration(&c).await["port"], port_b);

    // SIGTERM on the control plane stops the re-attached process.
    second.signal(Signal::SIGTERM);
    let status = second.wait().await;
    assert!(status.success(), "control plane exited with {status}");
    eventually(Duration::from_secs(5), "a's process to stop", || async {
        (!alive(pa)).then_some(())
    })
    .await;

    // ---- third life: the clean stop was recorded ------------------------------------
    let third = CpProcess::spawn(dir.path(), &range).await;
    let (_, instance_a) = third
        .client
        .get(&format!("/api/server/instances/{a}"))
        .await;
    assert_eq!(instance_a["status"], "Stopped");
    let page = third.client.changes_after(0).await;
    let last = page["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["source"], "controlplane-shutdown");
    assert_eq!(last["instanceId"], a.as_str());
}

#[tokio::test]
async fn a_reattached_process_that_dies_becomes_error() {
    let dir = tempfile::tempdir().unwrap();
    let range = port_range();
    let mut first = CpProcess::spawn(dir.path(), &range).await;
    let a = id_of(&first.client, json!({"name": "a"})).await;
    first.client.start(&a).await;
    let pa = first.client.pid(&a).await;
    first.cleanup.push(pa);
    first.signal(Signal::SIGKILL);
    first.wait().await;

    let mut second = CpProcess::spawn(dir.path(), &range).await;
    second.cleanup.push(pa);
    let cp = second.client.clone();
    let latest = cp.changes_after(0).await["latestSequence"]
        .as_u64()
        .unwrap();
    assert_eq!(cp.runtime(&a).await["status"], "Running");
    kill(Pid::from_raw(pa as i32), Signal::SIGKILL).unwrap();
    let change = eventually(Duration::from_secs(2), "Error in the feed", || async {
        cp.changes_after(latest).await["changes"]
            .as_array()
            .unwrap()
            .first()
            .cloned()
    })
    .await;
    assert_eq!(change["status"], "Error");
    assert_eq!(change["metadata"]["exitCode"], "unknown");
    second.signal(Signal::SIGTERM);
    second.wait().await;
}

#[tokio::test]
async fn a_removed_desired_configuration_stays_removed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let range = port_range();
    let mut first = CpProcess::spawn(dir.path(), &range).await;
    let a = id_of(&first.client, json!({"name": "a"})).await;
    first.client.start(&a).await;
    let pa = first.client.pid(&a).await;
    first.cleanup.push(pa);
    let desired = first.client.configuration(&a).await;
    let configuration = format!("/api/configuration/instances/{a}");
    let (status, _) = first.client.delete(&configuration).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    first.signal(Signal::SIGKILL);
    first.wait().await;

    let mut second = CpProcess::spawn(dir.path(), &range).await;
    second.cleanup.push(pa);
    let cp = second.client.clone();
    let (status, body) = cp.get(&configuration).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Re-attached, running what it ran.
    assert_eq!(cp.pid(&a).await, pa);
    let (_, running) = cp
        .get(&format!(
            "/api/extensions/instances/{a}/running-configuration"
        ))
        .await;
    assert_eq!(running, json!({"running": true, "configuration": desired}));
    let (status, body) = cp.put(&configuration, &desired).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(cp.configuration(&a).await, desired);
    second.signal(Signal::SIGTERM);
    second.wait().await;
}

#[tokio::test]
async fn help_documents_every_flag_with_its_default() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_setpoint-controlplane"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "--listen",
        "[default: 127.0.0.1:5080]",
        "SETPOINT_CP_LISTEN",
        "--db",
        "SETPOINT_CP_DB",
        "--runtime-dir",
        "SETPOINT_CP_RUNTIME_DIR",
        "--stub-bin",
        "--port-range",
        "[default: 18000-18999]",
        "--feed-capacity",
        "[default: 1000]",
        "--enum-as-int [<ENUM_AS_INT>]",
        "[default: false]",
        "--seed-api-only [<SEED_API_ONLY>]",
        "SETPOINT_CP_SEED_API_ONLY",
        "--start-timeout",
        "--stop-timeout",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}
