//! The loop when the world moves under it: the desired configuration changes mid-rollout,
//! instances change behind the daemon's back, operators abort and approve while steps
//! run, the daemon restarts, the control plane goes away. Real control plane on loopback,
//! real stub processes, the real plugins, a real SQLite file.

use std::time::Duration;

use serde_json::{Value, json};
use setpoint::store::{AuditKind, ConditionType};
use setpoint_tests::world::{World, converged, eventually, set_level};

/// `restart` waits long enough between health probes for a test to act mid-rollout.
const SLOW_HEALTH: &str = r#"
[[policy.rules]]
name = "slow"
match = {}
strategy_params = { health_poll_ms = 700 }
"#;

fn rollout_step(world: &World, id: &str) -> Option<u32> {
    world
        .daemon()
        .controller()
        .store()
        .load_rollout(id)
        .unwrap()
        .map(|r| r.step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_during_the_health_wait_is_rolled_out_not_recorded_as_applied() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", SLOW_HEALTH).await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;

    world.patch(&id, set_level("debug")).await;
    eventually(
        Duration::from_secs(10),
        "the restart to wait for health",
        async || rollout_step(&world, &id).is_some_and(|s| s >= 1),
    )
    .await;
    world.patch(&id, set_level("warn")).await;

    eventually(
        Duration::from_secs(20),
        "the stub to serve the last desired configuration, synced",
        async || world.serves(&id, "warn").await && world.synced(&id),
    )
    .await;
    let audit = world.audit(&id);
    assert!(
        audit.iter().any(
            |(_, m)| m.contains("desired configuration changed during the rollout")
                && m.contains("decided afresh")
        ),
        "{audit:#?}"
    );
    // What is recorded as applied is what runs.
    let applied = world
        .daemon()
        .controller()
        .store()
        .last_applied(&id)
        .unwrap()
        .unwrap();
    assert_eq!(applied.config["logLevel"], "warn");
    assert_eq!(applied.strategy, "restart@0.1.0");
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_patches_100ms_apart_end_with_the_last_one_running_20_times() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    for round in 0..20 {
        let last = if round % 2 == 0 { "warn" } else { "error" };
        world.patch(&id, set_level("debug")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        world.patch(&id, set_level(last)).await;
        eventually(
            Duration::from_secs(20),
            &format!("round {round}: the stub to serve {last}, synced"),
            async || world.serves(&id, last).await && world.synced(&id),
        )
        .await;
    }
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_out_of_band_start_with_another_configuration_is_repaired_within_one_resync() {
    let mut world = World::new(&[]).await;
    world.start_daemon("1s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    let mut other = world
        .get(&format!("/api/configuration/instances/{id}"))
        .await;
    other["logLevel"] = json!("error");
    // Behind the daemon's back: the control plane restarts it with another configuration.
    assert_eq!(
        world
            .cp_post(&format!("/api/server/instances/{id}/start"), Some(other))
            .await,
        200
    );
    eventually(
        Duration::from_secs(8),
        "the daemon to put the desired configuration back",
        async || world.serves(&id, "info").await && world.synced(&id),
    )
    .await;
    let audit = world.audit(&id);
    assert!(
        audit.iter().any(|(k, m)| *k == AuditKind::Observation
            && m.contains("drifted")
            && m.contains("logLevel")),
        "{audit:#?}"
    );
    let (_, status) = world
        .admin(false, &format!("/v1/instances/{id}"), Value::Null)
        .await;
    let synced = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type_"] == "Synced")
        .unwrap()
        .clone();
    assert!(
        synced["message"]
            .as_str()
            .unwrap()
            .contains("control plane's running configuration"),
        "{synced}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abort_mid_rollout_survives_a_restart_and_the_revision_stays_given_up() {
    let mut world = World::new(&[]).await;
    world.start_daemon("1s", SLOW_HEALTH).await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;

    world.patch(&id, set_level("debug")).await;
    eventually(
        Duration::from_secs(10),
        "the rollout to be under way",
        async || rollout_step(&world, &id).is_some_and(|s| s >= 1),
    )
    .await;
    assert_eq!(
        world
            .condition(&id, ConditionType::Progressing)
            .map(|c| c.0),
        Some(true)
    );
    let (code, body) = world
        .admin(
            true,
            &format!("/v1/instances/{id}/abort"),
            json!({ "by": "alice" }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    // The daemon goes away right after the request, and comes back.
    world.stop_daemon().await;
    world.start_daemon("1s", SLOW_HEALTH).await;

    eventually(
        Duration::from_secs(20),
        "the abort to restore the previous configuration",
        async || {
            world.serves(&id, "info").await
                && rollout_step(&world, &id).is_none()
                && world
                    .condition(&id, ConditionType::Synced)
                    .is_some_and(|c| c.1 == "GivenUp")
        },
    )
    .await;
    // Several resyncs later, and after another restart, the aborted revision is not
    // rolled out again.
    world.stop_daemon().await;
    world.start_daemon("300ms", SLOW_HEALTH).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(world.serves(&id, "info").await);
    assert!(rollout_step(&world, &id).is_none());
    let given_up = world.daemon().controller().store().given_up(&id).unwrap();
    assert!(given_up.is_some_and(|g| g.reason.contains("alice")));

    // `setpoint retry` brings it back.
    let (code, _) = world
        .admin(true, &format!("/v1/instances/{id}/retry"), Value::Null)
        .await;
    assert_eq!(code, 202);
    eventually(
        Duration::from_secs(20),
        "the retried revision",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;
    world.stop_daemon().await;
}

const APPROVE_BEFORE_APPLY: &str = r#"
[[policy.rules]]
name = "gated"
match = { labels = { env = "prod" } }
approval = "before-apply"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approving_a_stale_revision_does_nothing_and_abort_works_at_the_gate() {
    let mut world = World::new(&[]).await;
    world.start_daemon("1s", APPROVE_BEFORE_APPLY).await;
    let id = world.create("orders", json!({ "env": "prod" })).await;
    // A created instance is missing: even its first start waits for approval.
    eventually(
        Duration::from_secs(10),
        "the first approval request",
        async || {
            world
                .condition(&id, ConditionType::AwaitingApproval)
                .is_some_and(|c| c.0)
        },
    )
    .await;
    let (code, _) = world
        .admin(true, &format!("/v1/instances/{id}/approve"), json!({}))
        .await;
    assert_eq!(code, 200);
    converged(&world, &[&id]).await;
    assert_eq!(
        world
            .condition(&id, ConditionType::AwaitingApproval)
            .map(|c| c.0),
        Some(false),
        "AwaitingApproval is cleared once the approved revision runs"
    );

    world.patch(&id, set_level("debug")).await;
    let pending = async || {
        let (_, v) = world
            .admin(false, &format!("/v1/instances/{id}"), Value::Null)
            .await;
        v["approval"]["digest"].as_str().map(str::to_owned)
    };
    eventually(
        Duration::from_secs(10),
        "approval of revision A requested",
        async || pending().await.is_some(),
    )
    .await;
    let revision_a = pending().await.unwrap();
    let message = world
        .condition(&id, ConditionType::AwaitingApproval)
        .unwrap()
        .2;
    assert!(message.contains(&revision_a[..12]), "{message}");

    world.patch(&id, set_level("warn")).await;
    eventually(
        Duration::from_secs(10),
        "approval of revision B requested",
        async || pending().await.is_some_and(|d| d != revision_a),
    )
    .await;
    let (code, body) = world
        .admin(
            true,
            &format!("/v1/instances/{id}/approve"),
            json!({ "digest": revision_a }),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(world.serves(&id, "info").await, "nothing was released");

    // Abort at the gate: revision B is given up, nothing is sent.
    let (code, body) = world
        .admin(true, &format!("/v1/instances/{id}/abort"), Value::Null)
        .await;
    assert_eq!(code, 202, "{body}");
    eventually(Duration::from_secs(5), "revision B given up", async || {
        world
            .condition(&id, ConditionType::Synced)
            .is_some_and(|c| c.1 == "GivenUp")
            && world
                .condition(&id, ConditionType::AwaitingApproval)
                .is_some_and(|c| !c.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(world.serves(&id, "info").await);
    assert!(
        pending().await.is_none(),
        "no new request for a given-up revision"
    );

    // A new revision asks again; approving it by digest releases exactly it.
    world.patch(&id, set_level("error")).await;
    eventually(
        Duration::from_secs(10),
        "approval of revision C requested",
        async || pending().await.is_some(),
    )
    .await;
    let revision_c = pending().await.unwrap();
    let (code, _) = world
        .admin(
            true,
            &format!("/v1/instances/{id}/approve"),
            json!({ "digest": &revision_c[..12] }),
        )
        .await;
    assert_eq!(code, 200);
    eventually(Duration::from_secs(20), "revision C to run", async || {
        world.serves(&id, "error").await && world.synced(&id)
    })
    .await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_unmanaged_instances_and_leaked_clones_are_found() {
    let mut world = World::new(&[]).await;
    // Unmanaged: started by someone else with a configuration other than its desired one,
    // before the daemon ever saw it.
    let unmanaged = world.create("legacy", json!({})).await;
    let mut other = world
        .get(&format!("/api/configuration/instances/{unmanaged}"))
        .await;
    other["logLevel"] = json!("error");
    assert_eq!(
        world
            .cp_post(
                &format!("/api/server/instances/{unmanaged}/start"),
                Some(other)
            )
            .await,
        200
    );
    world.start_daemon("500ms", "").await;
    let managed = world.create("orders", json!({})).await;
    converged(&world, &[&managed]).await;
    eventually(
        Duration::from_secs(10),
        "the unmanaged instance reported",
        async || {
            world
                .condition(&unmanaged, ConditionType::Synced)
                .is_some_and(|c| !c.0 && c.1 == "Unmanaged")
        },
    )
    .await;
    assert!(world.serves(&unmanaged, "error").await, "left alone");
    assert!(
        world
            .metric("setpoint_drift_detected_total{classification=\"unmanaged\"}")
            .await
            >= 1.0
    );

    // A clone no rollout owns is deleted.
    let clone: Value = world
        .http
        .post(format!(
            "{}/api/extensions/instances/{managed}/clone",
            world.cp_url()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let clone_id = clone["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(10),
        "the leaked clone deleted",
        async || {
            world
                .get(&format!("/api/server/instances/{clone_id}"))
                .await["id"]
                .is_null()
        },
    )
    .await;
    // The sweep deletes the clone, then audits it: wait for the entry too.
    eventually(
        Duration::from_secs(5),
        "the leaked clone audited",
        async || {
            world
                .audit(&managed)
                .iter()
                .any(|(_, m)| m.contains("leaked clone") && m.contains(&clone_id))
        },
    )
    .await;

    // Orphaned: deleted while the daemon was down.
    world.stop_daemon().await;
    let deleted = world
        .http
        .delete(format!("{}/api/server/instances/{managed}", world.cp_url()))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    world.start_daemon("500ms", "").await;
    eventually(Duration::from_secs(10), "the orphan reported", async || {
        world
            .condition(&managed, ConditionType::Synced)
            .is_some_and(|c| !c.0 && c.1 == "Orphaned")
    })
    .await;
    assert!(
        world
            .metric("setpoint_drift_detected_total{classification=\"orphaned\"}")
            .await
            >= 1.0
    );
    let audit = world.audit(&managed);
    assert!(
        audit
            .iter()
            .any(|(k, m)| *k == AuditKind::Observation && m.contains("orphaned")),
        "{audit:#?}"
    );
    world.stop_daemon().await;
}

/// Ask the daemon to reconcile `id` now and wait until it has decided again.
async fn reconcile_now(world: &World, id: &str) {
    let last = || world.daemon().controller().last_decision(id).map(|d| d.at);
    let before = last();
    let (code, body) = world
        .admin(true, &format!("/v1/instances/{id}/reconcile"), Value::Null)
        .await;
    assert_eq!(code, 202, "{body}");
    eventually(Duration::from_secs(10), "the reconcile", async || {
        last() > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_instance_without_a_desired_configuration_is_unwanted_and_left_alone() {
    let mut world = World::new(&[]).await;
    world.start_daemon("300ms", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    // Read while the desired configuration still names them.
    let port = world.port(&id).await;
    let pid = world.get(&format!("/api/status/{id}/status")).await["processId"].clone();
    assert!(pid.is_string(), "{pid}");
    let running = format!("/api/extensions/instances/{id}/running-configuration");
    let before = world.get(&running).await;
    assert_eq!(before["running"], true, "{before}");
    // The stub's own port: `World::stub_config` finds it through the desired configuration.
    let stub_config = async || {
        let response = world
            .http
            .get(format!("http://127.0.0.1:{port}/config"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        response.json::<Value>().await.ok()
    };
    let actions = |world: &World| {
        world
            .audit(&id)
            .into_iter()
            .filter(|(k, _)| *k == AuditKind::Action)
            .count()
    };
    let actions_before = actions(&world);

    // Someone removes the desired configuration; the instance keeps running.
    let configuration = format!("{}/api/configuration/instances/{id}", world.cp_url());
    let removed = world.http.delete(&configuration).send().await.unwrap();
    assert_eq!(removed.status(), 204);
    eventually(
        Duration::from_secs(10),
        "the instance reported unwanted",
        async || {
            world
                .condition(&id, ConditionType::Synced)
                .is_some_and(|c| !c.0 && c.1 == "Unwanted")
        },
    )
    .await;
    let synced = world.condition(&id, ConditionType::Synced).unwrap();
    assert!(
        synced.2.contains("has no desired configuration"),
        "{synced:?}"
    );
    // Several reconciles later (two asked for, several resyncs): counted and audited once.
    reconcile_now(&world, &id).await;
    reconcile_now(&world, &id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        world
            .metric("setpoint_drift_detected_total{classification=\"unwanted\"}")
            .await,
        1.0
    );
    let audit = world.audit(&id);
    let unwanted: Vec<_> = audit
        .iter()
        .filter(|(k, m)| *k == AuditKind::Observation && m.contains("instance is unwanted"))
        .collect();
    assert_eq!(unwanted.len(), 1, "{audit:#?}");
    // Left alone: no call made, same process, same running configuration, still serving.
    assert_eq!(actions(&world), actions_before, "{audit:#?}");
    assert_eq!(world.get(&running).await, before);
    assert_eq!(
        world.get(&format!("/api/status/{id}/status")).await["processId"],
        pid
    );
    let served = stub_config().await.expect("the stub still serves");
    assert_eq!(served["logLevel"], "info", "{served}");
    assert_eq!(world.status(&id).await, "ConfigurationChanged");
    assert_eq!(
        world
            .condition(&id, ConditionType::Synced)
            .map(|c| c.1)
            .as_deref(),
        Some("Unwanted")
    );

    // A desired configuration again (PUT): it converges as any change does.
    let mut restored = before["configuration"].clone();
    restored["logLevel"] = json!("debug");
    let put = world
        .http
        .put(&configuration)
        .json(&restored)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    eventually(
        Duration::from_secs(20),
        "the restored configuration to run, synced",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;
    assert_eq!(world.status(&id).await, "Running");
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditions_say_when_a_plugin_is_missing_or_the_control_plane_is_unreachable() {
    let mut world = World::new(&[]).await;
    world
        .start_daemon(
            "500ms",
            r#"
[[policy.rules]]
name = "typo"
match = { labels = { tier = "gold" } }
strategy = "restrat"
"#,
        )
        .await;
    let broken = world.create("gold", json!({ "tier": "gold" })).await;
    let fine = world.create("plain", json!({})).await;
    converged(&world, &[&fine]).await;
    eventually(Duration::from_secs(10), "PluginMissing", async || {
        world
            .condition(&broken, ConditionType::Degraded)
            .is_some_and(|c| c.0 && c.1 == "PluginMissing")
            && world
                .condition(&broken, ConditionType::Synced)
                .is_some_and(|c| !c.0)
    })
    .await;

    world.stop_control_plane().await;
    eventually(
        Duration::from_secs(15),
        "ControlPlaneUnreachable",
        async || {
            world
                .condition(&fine, ConditionType::Synced)
                .is_some_and(|c| !c.0 && c.1 == "ControlPlaneUnreachable")
        },
    )
    .await;
    world.start_control_plane().await;
    eventually(Duration::from_secs(20), "in sync again", async || {
        world.synced(&fine)
    })
    .await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ignored_paths_keep_their_running_value_and_skip_destructive_sees_shrinking_lists() {
    let mut world = World::new(&[]).await;
    world
        .start_daemon(
            "1s",
            r#"
[[policy.rules]]
name = "ignore-level"
match = { labels = { app = "ignore" } }
comparator_params = { ignore = ["/logLevel"] }

[[policy.rules]]
name = "careful"
match = { labels = { app = "careful" } }
comparator = "drasi-summary"
skip_destructive = true
"#,
        )
        .await;
    let ignoring = world.create("ignoring", json!({ "app": "ignore" })).await;
    let careful = world.create("careful", json!({ "app": "careful" })).await;
    converged(&world, &[&ignoring, &careful]).await;

    // logLevel is ignored: a change that also adds a reaction rolls out the reaction and
    // leaves logLevel as it runs.
    world
        .patch(
            &ignoring,
            json!([
                { "op": "replace", "path": "/logLevel", "value": "debug" },
                { "op": "add", "path": "/reactions/-", "value": { "kind": "log", "id": "r2", "queries": ["q1"] } }
            ]),
        )
        .await;
    eventually(
        Duration::from_secs(20),
        "the reaction rolled out",
        async || {
            world
                .stub_config(&ignoring)
                .await
                .is_some_and(|c| c["reactions"].as_array().is_some_and(|r| r.len() == 2))
                && world.synced(&ignoring)
        },
    )
    .await;
    assert!(
        world.serves(&ignoring, "info").await,
        "ignored logLevel was overwritten"
    );

    // A source removed and another added: drasi-summary counts the same number (no
    // drift of kind `removed`), the host still sees what would disappear.
    world
        .patch(
            &careful,
            json!([
                { "op": "replace", "path": "/sources/0/id", "value": "s9" },
                { "op": "replace", "path": "/logLevel", "value": "debug" }
            ]),
        )
        .await;
    eventually(Duration::from_secs(10), "DestructiveSkipped", async || {
        world
            .condition(&careful, ConditionType::Synced)
            .is_some_and(|c| c.1 == "DestructiveSkipped" && c.2.contains("/sources/0"))
    })
    .await;
    assert!(world.serves(&careful, "info").await);
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diff_and_the_next_reconcile_decide_the_same() {
    let mut world = World::new(&[]).await;
    world
        .start_daemon(
            "1h",
            r#"
[[policy.rules]]
name = "blessed"
match = { labels = { tier = "gold" } }
protected = true

[[policy.rules]]
name = "gated"
match = { labels = { env = "prod" } }
approval = "before-apply"

[[policy.rules]]
name = "plan-only"
match = { labels = { mode = "dry" } }
dry_run = true
"#,
        )
        .await;
    let plain = world.create("plain", json!({})).await;
    converged(&world, &[&plain]).await;
    let gold = world.create("gold", json!({ "tier": "gold" })).await;
    let prod = world.create("prod", json!({ "env": "prod" })).await;
    let dry = world.create("dry", json!({ "mode": "dry" })).await;
    let stopped = world.create("stopped", json!({})).await;
    converged(&world, &[&stopped]).await;
    assert_eq!(
        world
            .cp_post(&format!("/api/server/instances/{stopped}/stop"), None)
            .await,
        200
    );

    for (id, expected) in [
        (&plain, "in_sync"),
        (&gold, "protected"),
        (&prod, "await_approval_before_apply"),
        (&dry, "dry_run"),
        (&stopped, "report"),
    ] {
        // Let the feed-triggered reconciles settle, then ask both.
        eventually(Duration::from_secs(10), "a first decision", async || {
            world.daemon().controller().last_decision(id).is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, plan) = world
            .admin(false, &format!("/v1/instances/{id}/diff"), Value::Null)
            .await;
        assert_eq!(code, 200, "{plan}");
        let before = world.daemon().controller().last_decision(id).unwrap().at;
        world
            .admin(true, &format!("/v1/instances/{id}/reconcile"), Value::Null)
            .await;
        eventually(Duration::from_secs(10), "the reconcile", async || {
            world
                .daemon()
                .controller()
                .last_decision(id)
                .is_some_and(|d| d.at > before)
        })
        .await;
        let decided = world.daemon().controller().last_decision(id).unwrap();
        let decided = serde_json::to_value(&decided.decision).unwrap();
        assert_eq!(plan["decision"], decided, "{id}");
        assert_eq!(plan["decision"]["decision"], expected, "{plan}");
    }
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn against_the_seed_api_alone_instances_converge_and_actual_state_comes_from_the_record() {
    let mut world = World::new(&[]).await;
    world.stop_control_plane().await;
    world
        .start_control_plane_with(|c| {
            c.seed_api_only = true;
            c.enum_as_int = true;
        })
        .await;
    world
        .start_daemon("1s", "[control_plane]\napi = \"seed\"\n")
        .await;
    let id = world.create("orders", json!({})).await;
    eventually(Duration::from_secs(30), "the first start", async || {
        world.synced(&id) && world.stub_config(&id).await.is_some()
    })
    .await;
    world.patch(&id, set_level("debug")).await;
    eventually(
        Duration::from_secs(20),
        "the change through the timestamp feed or the resync",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;
    let (_, plan) = world
        .admin(false, &format!("/v1/instances/{id}/diff"), Value::Null)
        .await;
    assert_eq!(plan["actual_source"], "applied_record", "{plan}");
    assert_eq!(plan["decision"]["decision"], "in_sync", "{plan}");
    let synced = world.condition(&id, ConditionType::Synced).unwrap();
    assert!(synced.2.contains("applied record"), "{synced:?}");
    // Declared as the seed API, the daemon never asked for anything the seed lacks.
    let refused = world.cp.as_ref().unwrap().control_plane().refused();
    assert!(refused.is_empty(), "{refused:?}");
    // The seed API has no extensions: none of them answers (and that is noted).
    assert!(
        world
            .get("/api/extensions/running-configurations")
            .await
            .get("configurations")
            .is_none()
    );
    assert_eq!(
        world.cp.as_ref().unwrap().control_plane().refused(),
        ["GET /api/extensions/running-configurations"]
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_lists_applied_revisions_and_rollback_rolls_out_a_kept_one() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    world.patch(&id, set_level("debug")).await;
    eventually(Duration::from_secs(20), "debug to run", async || {
        world.serves(&id, "debug").await && world.synced(&id)
    })
    .await;
    let (code, history) = world
        .admin(false, &format!("/v1/instances/{id}/history"), Value::Null)
        .await;
    assert_eq!(code, 200);
    let history = history.as_array().unwrap().clone();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["config"]["logLevel"], "debug");
    assert_eq!(history[1]["config"]["logLevel"], "info");
    assert_eq!(history[0]["strategy"], "restart@0.1.0");

    // Back to the revision before the last, through the strategy.
    let (code, body) = world
        .admin(true, &format!("/v1/instances/{id}/rollback"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["digest"], history[1]["digest"]);
    eventually(Duration::from_secs(20), "info to run again", async || {
        world.serves(&id, "info").await && world.synced(&id)
    })
    .await;
    let desired = world
        .get(&format!("/api/configuration/instances/{id}"))
        .await;
    assert_eq!(
        desired["logLevel"], "info",
        "the rollback is the desired state now"
    );
    let (code, body) = world
        .admin(
            true,
            &format!("/v1/instances/{id}/rollback"),
            json!({ "to": "ffffffffffff" }),
        )
        .await;
    assert_eq!(code, 404, "{body}");
    world.stop_daemon().await;
}
