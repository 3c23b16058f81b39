//! The daemon end to end: the real reference control plane on loopback with real stub
//! processes, the real plugins built from `plugins/`, a real SQLite file, and the daemon
//! itself, as an operator runs them.

use std::time::{Duration, Instant};

use serde_json::json;
use setpoint::store::{AuditKind, ConditionType};
use setpoint_tests::world::{World, converged, eventually};
use setpoint_tests::{controlplane_bin, stub_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_is_reconciled_within_a_second_through_the_change_feed() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    assert_eq!(world.stub_config(&id).await.unwrap()["logLevel"], "info");

    let patched = Instant::now();
    world
        .patch(
            &id,
            json!([{ "op": "replace", "path": "/logLevel", "value": "debug" }]),
        )
        .await;
    eventually(
        Duration::from_secs(1),
        "the stub to serve the new configuration",
        async || {
            world
                .stub_config(&id)
                .await
                .is_some_and(|c| c["logLevel"] == "debug")
        },
    )
    .await;
    let took = patched.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    converged(&world, &[&id]).await;
    let audit = world.audit(&id);
    assert!(
        audit.iter().any(|(k, m)| *k == AuditKind::Observation
            && m.contains("drifted")
            && m.contains("logLevel")),
        "{audit:#?}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stub_killed_with_sigkill_is_brought_back() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("sensors", json!({})).await;
    converged(&world, &[&id]).await;
    let pid = world.get(&format!("/api/status/{id}/status")).await["processId"]
        .as_str()
        .expect("a running instance has a process id")
        .to_owned();

    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    eventually(
        Duration::from_secs(20),
        "a new stub process serving",
        async || {
            let now = world.get(&format!("/api/status/{id}/status")).await;
            now["processId"].as_str().is_some_and(|p| p != pid)
                && world.status(&id).await == "Running"
                && world.stub_config(&id).await.is_some()
        },
    )
    .await;
    let audit = world.audit(&id);
    assert!(
        audit.iter().any(|(_, m)| m.contains("missing")),
        "{audit:#?}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_daemon_takes_no_action_on_converged_instances() {
    let mut world = World::new(&[]).await;
    world.start_daemon("200ms", "").await;
    let a = world.create("a", json!({})).await;
    let b = world.create("b", json!({})).await;
    converged(&world, &[&a, &b]).await;
    world.stop_daemon().await;
    let sequence = world.latest_sequence().await;

    world.start_daemon("200ms", "").await;
    // Several resyncs pass over both instances.
    let metrics_url = format!("http://{}/metrics", world.daemon().admin_addr());
    eventually(Duration::from_secs(10), "three resyncs", async || {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("setpoint_reconciles_total{outcome=\"synced\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .is_some_and(|n| n >= 6.0)
    })
    .await;

    assert_eq!(
        world.latest_sequence().await,
        sequence,
        "the control plane saw a change"
    );
    for id in [&a, &b] {
        let actions = world
            .audit(id)
            .into_iter()
            .filter(|(k, m)| *k == AuditKind::Action && !m.contains("probe"))
            .count();
        assert_eq!(actions, 2, "only the first start's stop+start for {id}");
    }
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_records_the_plan_and_takes_no_action() {
    let mut world = World::new(&[]).await;
    world
        .start_daemon(
            "30s",
            r#"
[[policy.rules]]
name = "plan-only"
match = { labels = { mode = "plan" } }
dry_run = true
"#,
        )
        .await;
    let id = world.create("planned", json!({ "mode": "plan" })).await;

    eventually(
        Duration::from_secs(10),
        "the dry-run decision",
        async || {
            world
                .audit(&id)
                .iter()
                .any(|(k, m)| *k == AuditKind::Decision && m.starts_with("dry-run"))
        },
    )
    .await;
    let audit = world.audit(&id);
    let plan: Vec<&String> = audit
        .iter()
        .filter(|(k, _)| *k == AuditKind::Action)
        .map(|(_, m)| m)
        .collect();
    assert!(plan.iter().all(|m| m.ends_with("simulated")), "{plan:?}");
    assert!(plan.iter().any(|m| m.contains("called start")), "{plan:?}");
    assert_eq!(
        world.status(&id).await,
        "Created",
        "dry-run must not start it"
    );
    let (status, reason, _) = world.condition(&id, ConditionType::Synced).unwrap();
    assert!(!status);
    assert_eq!(reason, "DryRun");
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_protected_instance_is_only_reported() {
    let mut world = World::new(&[]).await;
    world
        .start_daemon(
            "30s",
            r#"
[[policy.rules]]
name = "blessed"
match = { labels = { tier = "gold" } }
protected = true
"#,
        )
        .await;
    let gold = world.create("gold", json!({ "tier": "gold" })).await;
    let plain = world.create("plain", json!({})).await;

    converged(&world, &[&plain]).await;
    eventually(
        Duration::from_secs(10),
        "the protected report",
        async || {
            world
                .condition(&gold, ConditionType::Synced)
                .is_some_and(|(s, r, _)| !s && r == "Protected")
        },
    )
    .await;
    assert_eq!(world.status(&gold).await, "Created");
    assert!(
        !world
            .audit(&gold)
            .iter()
            .any(|(k, _)| *k == AuditKind::Action),
        "a protected instance must see no action"
    );
    world.stop_daemon().await;
}

/// The control plane as its own OS process, so a test can kill it outright.
struct ControlPlaneProcess(std::process::Child);

impl ControlPlaneProcess {
    fn start(world: &World) -> ControlPlaneProcess {
        let dir = world.dir.path().join("cp-process");
        let child = std::process::Command::new(controlplane_bin())
            .arg("--listen")
            .arg(world.cp_addr.to_string())
            .arg("--db")
            .arg(dir.join("cp.db"))
            .arg("--runtime-dir")
            .arg(dir.join("runtime"))
            .arg("--stub-bin")
            .arg(stub_bin())
            .arg("--port-range")
            .arg(format!("{}-{}", world.ports.start(), world.ports.end()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start setpoint-controlplane");
        ControlPlaneProcess(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        // A clean stop, so it stops its stub processes too.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_rides_out_a_ten_second_control_plane_outage() {
    let mut world = World::new(&[]).await;
    world.stop_control_plane().await; // this test runs the control plane as a process
    let mut cp = ControlPlaneProcess::start(&world);
    eventually(
        Duration::from_secs(10),
        "the control plane to listen",
        async || {
            reqwest::get(format!("{}/api/server/instances", world.cp_url()))
                .await
                .is_ok()
        },
    )
    .await;
    world.start_daemon("1s", "").await;
    let id = world.create("steady", json!({})).await;
    converged(&world, &[&id]).await;
    let pid = world.get(&format!("/api/status/{id}/status")).await["processId"]
        .as_str()
        .unwrap()
        .to_owned();
    let health = format!("http://{}/healthz", world.daemon().admin_addr());

    // The control plane dies; while it is away the instance's process dies too.
    cp.kill();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(10) {
        let ok = reqwest::get(&health).await.map(|r| r.status().is_success());
        assert!(
            matches!(ok, Ok(true)),
            "daemon must stay up during the outage"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _cp = ControlPlaneProcess::start(&world);

    // The control plane finds the process gone (Error); the daemon brings it back.
    eventually(
        Duration::from_secs(30),
        "convergence after the outage",
        async || {
            let now = world.get(&format!("/api/status/{id}/status")).await;
            now["processId"].as_str().is_some_and(|p| p != pid)
                && world.status(&id).await == "Running"
                && world.stub_config(&id).await.is_some()
                && world.synced(&id)
        },
    )
    .await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapping_comparator_degrades_only_its_instance() {
    let mut world = World::new(&["trap-on-change"]).await;
    world
        .start_daemon(
            "30s",
            r#"
[[policy.rules]]
name = "broken-comparator"
match = { labels = { compare = "trap" } }
comparator = "fixture-trap-on-change"
"#,
        )
        .await;
    let bad = world.create("bad", json!({ "compare": "trap" })).await;
    let good = world.create("good", json!({})).await;
    converged(&world, &[&bad, &good]).await;

    let change = json!([{ "op": "replace", "path": "/logLevel", "value": "warn" }]);
    world.patch(&bad, change.clone()).await;
    world.patch(&good, change).await;

    eventually(
        Duration::from_secs(10),
        "good to converge on the change",
        async || {
            world
                .stub_config(&good)
                .await
                .is_some_and(|c| c["logLevel"] == "warn")
                && world.synced(&good)
        },
    )
    .await;
    eventually(Duration::from_secs(10), "bad to be Degraded", async || {
        world
            .condition(&bad, ConditionType::Degraded)
            .is_some_and(|(s, r, _)| s && r == "PluginFailed")
    })
    .await;
    let (_, _, message) = world.condition(&bad, ConditionType::Degraded).unwrap();
    assert!(
        message.contains("fixture-trap-on-change@") && message.contains("compare trapped"),
        "{message}"
    );
    assert_eq!(world.stub_config(&bad).await.unwrap()["logLevel"], "info");
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strategy_stopping_another_instance_or_steering_its_endpoint_is_denied_and_audited() {
    let mut world = World::new(&["escape"]).await;
    let victim = world.create("victim", json!({})).await;
    // The victim's traffic address: the endpoint named after it.
    let put = world
        .http
        .put(format!(
            "{}/api/extensions/endpoints/{victim}",
            world.cp_url()
        ))
        .json(&json!({ "backends": [{ "instanceId": victim, "weight": 100 }] }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{put:?}");
    world
        .start_daemon(
            "30s",
            &format!(
                r#"
[[policy.rules]]
name = "escapee"
match = {{ labels = {{ role = "escapee" }} }}
strategy = "fixture-escape"
strategy_params = {{ target = "{victim}" }}
"#
            ),
        )
        .await;
    converged(&world, &[&victim]).await;
    let escapee = world.create("escapee", json!({ "role": "escapee" })).await;

    eventually(
        Duration::from_secs(15),
        "the escapee's rollout to finish",
        async || world.synced(&escapee),
    )
    .await;
    let audit = world.audit(&escapee);
    let denied: Vec<&String> = audit
        .iter()
        .filter(|(k, _)| *k == AuditKind::Denied)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(denied.len(), 2, "{audit:#?}");
    assert!(
        denied[0].contains("stop") && denied[0].contains(&victim),
        "{denied:?}"
    );
    assert!(
        denied[1].contains("set-traffic-weights")
            && denied[1].contains(&format!("endpoint {victim}")),
        "{denied:?}"
    );
    let endpoint = world
        .get(&format!("/api/extensions/endpoints/{victim}"))
        .await;
    assert_eq!(
        endpoint["backends"],
        json!([{ "instanceId": victim, "weight": 100 }]),
        "the victim's endpoint must be left as it was"
    );
    assert_eq!(
        world.status(&victim).await,
        "Running",
        "the victim must not be stopped"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", world.daemon().admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("setpoint_denied_control_plane_calls_total 2"),
        "{metrics}"
    );
    world.stop_daemon().await;
}
