//! What an operator does, as real processes: `setpoint run` with flags and no config
//! file, the admin API with and without its token, the operator commands against the
//! running daemon, SIGTERM, a malformed setting, and the demo.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint_controlplane::{ControlPlaneConfig, serve};
use setpoint_tests::world::eventually;
use setpoint_tests::{build_bin, free_port, plugin_dir, port_range, stub_bin};

fn setpoint_bin() -> std::path::PathBuf {
    build_bin("setpoint", "setpoint")
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(setpoint_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run setpoint");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_daemon_with_flags_and_drives_it_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let cp = serve(ControlPlaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        stub_bin: Some(stub_bin()),
        port_range: port_range(),
        ..ControlPlaneConfig::in_dir(&dir.path().join("cp"))
    })
    .await
    .expect("control plane");
    let cp_url = format!("http://{}", cp.local_addr());
    let admin = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://{admin}");
    let plugins = plugin_dir();
    let db = dir.path().join("state.db");

    // No config file: flags and one environment variable only.
    let daemon = Daemon(
        Command::new(setpoint_bin())
            .args(["run", "--control-plane", &cp_url, "--admin", &admin])
            .arg("--plugins")
            .arg(&plugins)
            .arg("--db")
            .arg(&db)
            .env("SETPOINT_ADMIN_TOKEN", "s3cret")
            .env("SETPOINT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("setpoint run"),
    );
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "readyz", async || {
        http.get(format!("{endpoint}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let created: Value = http
        .post(format!("{cp_url}/api/server/instances"))
        .json(&json!({ "name": "api-1", "serverConfiguration": { "logLevel": "info" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(20),
        "the instance to converge",
        async || {
            let v: Value = match http
                .get(format!("{endpoint}/v1/instances/{id}"))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            v["rollout"].is_null()
                && v["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type_"] == "Synced" && c["status"] == true)
                })
        },
    )
    .await;

    // Mutating routes: refused without the token or with a wrong one, accepted with it.
    let reconcile = format!("{endpoint}/v1/instances/{id}/reconcile");
    assert_eq!(http.post(&reconcile).send().await.unwrap().status(), 401);
    let wrong = http
        .post(&reconcile)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = http
        .post(&reconcile)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);

    // Operator commands against the running daemon.
    let env = [("SETPOINT_ENDPOINT", endpoint.as_str())];
    let (ok, out, err) = run_cli(&["status"], &env);
    assert!(ok, "{err}");
    assert!(out.contains(&id) && out.contains("api-1"), "{out}");
    let (ok, out, err) = run_cli(&["explain", &id], &env);
    assert!(ok, "{err}");
    assert!(out.contains("default"), "{out}");
    let (ok, out, err) = run_cli(&["audit", &id], &env);
    assert!(ok, "{err}");
    assert!(out.contains("called start"), "{out}");

    // A change shown by `diff` as a plan, not sent.
    http.patch(format!("{cp_url}/api/configuration/instances/{id}"))
        .json(&json!([{ "op": "replace", "path": "/logLevel", "value": "debug" }]))
        .send()
        .await
        .unwrap();
    let (ok, out, err) = run_cli(&["diff", &id], &env);
    assert!(ok, "{err}");
    assert!(out.contains("/logLevel"), "{out}");
    let (ok, _, err) = run_cli(&["reconcile", &id], &env);
    assert!(!ok, "reconcile without a token must fail");
    assert!(err.contains("401"), "{err}");

    let metrics = http
        .get(format!("{endpoint}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "setpoint_reconciles_total",
        "setpoint_reconcile_duration_seconds_bucket",
        "setpoint_queue_depth",
        "setpoint_drift_detected_total",
        "setpoint_plugin_call_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let openapi: Value = http
        .get(format!("{endpoint}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/instances/{id}/reconcile"]["post"].is_object());

    // SIGTERM: a clean exit 0 within the shutdown bound.
    let mut daemon = daemon;
    let pid = daemon.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let until = Instant::now() + Duration::from_secs(35);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "the daemon did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    cp.shutdown().await;
}

#[test]
fn a_malformed_setting_stops_start_up_naming_the_key() {
    let (ok, _, err) = run_cli(
        &["run", "--admin", "127.0.0.1:0"],
        &[("SETPOINT_CONTROLLER_RESYNC_INTERVAL", "abc")],
    );
    assert!(!ok);
    assert!(err.contains("SETPOINT_CONTROLLER_RESYNC_INTERVAL"), "{err}");
    assert!(err.contains("abc"), "{err}");

    let (ok, _, err) = run_cli(&["run", "--admin", "not-an-address"], &[]);
    assert!(!ok);
    assert!(err.contains("--admin"), "{err}");
}

#[test]
fn the_demo_converges_a_change_and_leaves_no_process_behind() {
    // The demo finds the control plane and the stub next to its own executable.
    build_bin("setpoint-controlplane", "setpoint-controlplane");
    build_bin("drasi-stub", "drasi-stub");
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(setpoint_bin())
        .args(["demo", "--exit-when-done", "--timeout", "60s"])
        .arg("--plugins")
        .arg(plugin_dir())
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .expect("setpoint demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all three instances converged"), "{stdout}");
    assert!(
        stdout.contains("now serves logLevel=debug with 2 queries"),
        "{stdout}"
    );
    assert!(stdout.contains("instance is drifted"), "{stdout}");
    // Every stub the demo's control plane started is gone.
    let runtime = state.path().join("runtime");
    for entry in std::fs::read_dir(&runtime).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pid") {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let alive = std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
            assert!(!alive, "stub {} still runs", pid.trim());
        }
    }
}
