//! The plugin contract's versions, served side by side: a component built against
//! `setpoint:plugin@0.1.0` (today's `restart.wasm`, kept as `tests/fixtures/`) loads and
//! converges instances under policy next to 0.2.0 components, and a 0.2.0 strategy that
//! needs a capability the control plane lacks is refused when it loads, with the reason.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use setpoint::runtime::{
    Contract, Member, Phase, PluginRuntime, Rollout, RolloutScope, RuntimeConfig,
};
use setpoint::store::AuditKind;
use setpoint_tests::world::{World, converged, eventually};
use setpoint_tests::{Quiet, plugin, workspace_root};

/// The restart strategy as it was built before contract 0.2.0.
fn restart_0_1() -> std::path::PathBuf {
    workspace_root().join("tests/fixtures/restart-0.1.0.wasm")
}

/// The daemon's plugin list entry for the file `name`.
async fn plugin_entry(world: &World, file: &str) -> Value {
    let (status, list) = world.admin(false, "/v1/plugins", Value::Null).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("a list")
        .iter()
        .find(|e| e["file"].as_str().is_some_and(|f| f.ends_with(file)))
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {file} in {list:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strategy_built_against_contract_0_1_0_converges_instances_next_to_0_2_0_plugins() {
    let mut world = World::new(&[]).await;
    std::fs::copy(restart_0_1(), world.plugin_dir().join("restart.wasm")).unwrap();
    // Chosen by a policy rule of its own, with the 0.2.0 comparator beside it.
    let policy = r#"
[[policy.rules]]
name = "legacy"
match = { labels = { tier = "legacy" } }
comparator = "field-diff"
strategy = "restart"
"#;
    world.start_daemon("30s", policy).await;

    let restart = plugin_entry(&world, "restart.wasm").await;
    assert_eq!(restart["state"], "active", "{restart:#}");
    assert_eq!(restart["contract"], "0.1.0", "{restart:#}");
    let field_diff = plugin_entry(&world, "field-diff.wasm").await;
    assert_eq!(field_diff["contract"], "0.2.0", "{field_diff:#}");

    let id = world.create("orders", json!({ "tier": "legacy" })).await;
    converged(&world, &[&id]).await;
    world
        .patch(
            &id,
            json!([{ "op": "replace", "path": "/logLevel", "value": "debug" }]),
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the 0.1.0 restart strategy to roll the change out",
        async || world.serves(&id, "debug").await,
    )
    .await;
    converged(&world, &[&id]).await;
    let audit = world.audit(&id);
    assert!(
        audit.iter().any(|(k, m)| *k == AuditKind::Action
            && m.starts_with("restart@")
            && m.contains("called start")),
        "the 0.1.0 strategy's calls are audited as any strategy's: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|(k, m)| *k == AuditKind::Outcome && m.contains("done: restarted")),
        "{audit:#?}"
    );
    let (_, explained) = world
        .admin(false, &format!("/v1/instances/{id}/explain"), Value::Null)
        .await;
    assert_eq!(
        explained["rule"], "legacy",
        "the rule chose it: {explained:#}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strategy_needing_capabilities_the_control_plane_lacks_is_refused_at_load_with_the_reason()
 {
    let mut world = World::new(&[]).await;
    for name in ["canary", "blue-green", "rolling", "rolling-surge"] {
        std::fs::copy(
            plugin(name),
            world.plugin_dir().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    // Declared as the DRaaS seed API: no clones, no traffic endpoints, no metrics.
    world
        .start_daemon("30s", "[control_plane]\napi = \"seed\"\n")
        .await;
    for file in ["canary.wasm", "blue-green.wasm", "rolling-surge.wasm"] {
        let entry = plugin_entry(&world, file).await;
        assert_eq!(entry["state"], "rejected", "{entry:#}");
        let reason = entry["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("needs the control-plane capabilities")
                && reason.contains("clones")
                && reason.contains("traffic")
                && reason.contains("does not offer"),
            "{reason}"
        );
    }
    // What needs no capability still serves, and converges instances: `rolling`
    // updates in place, so it serves where `rolling-surge` cannot.
    let rolling = plugin_entry(&world, "rolling.wasm").await;
    assert_eq!(rolling["state"], "active", "{rolling:#}");
    assert_eq!(rolling.get("capabilities"), None, "{rolling:#}");
    let restart = plugin_entry(&world, "restart.wasm").await;
    assert_eq!(restart["state"], "active", "{restart:#}");
    assert_eq!(restart["contract"], "0.2.0", "{restart:#}");
    assert_eq!(restart.get("capabilities"), None, "{restart:#}");
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    world.stop_daemon().await;

    // The same files under the reference control plane, which offers all three: served.
    world.start_daemon("30s", "").await;
    for file in ["canary.wasm", "blue-green.wasm", "rolling-surge.wasm"] {
        let entry = plugin_entry(&world, file).await;
        assert_eq!(entry["state"], "active", "{entry:#}");
        assert_eq!(entry["contract"], "0.2.0", "{entry:#}");
    }
    let canary = plugin_entry(&world, "canary.wasm").await;
    assert_eq!(
        canary["capabilities"],
        json!(["clones", "traffic", "metrics"]),
        "{canary:#}"
    );
    world.stop_daemon().await;
}

fn member(id: &str) -> Member {
    Member {
        instance_id: id.into(),
        desired: json!({ "port": 2 }).to_string(),
        actual: Some(json!({ "port": 1 }).to_string()),
        drifts: vec![],
    }
}

#[test]
fn a_0_1_0_strategy_steps_one_instance_and_is_never_handed_a_group() {
    let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
    let old = runtime
        .load_file(&restart_0_1())
        .expect("the 0.1.0 build loads");
    assert_eq!(old.contract(), Contract::V0_1);
    assert!(!old.metadata().group_rollouts);
    let current = runtime
        .load_file(&plugin("restart"))
        .expect("restart loads");
    assert_eq!(current.contract(), Contract::V0_2);

    let rollout = |members| Rollout {
        group: None,
        members,
        params: json!({ "health_poll_ms": 10 }).to_string(),
        state: None,
        step: 0,
        elapsed_ms: 0,
    };
    let one = runtime.step(
        &old,
        &rollout(vec![member("a")]),
        Arc::new(Quiet),
        RolloutScope::new("a"),
        false,
    );
    one.progress.expect("a one-instance step runs");
    let calls: Vec<&str> = one.calls.iter().map(|c| c.call.as_str()).collect();
    assert_eq!(calls[..2], ["stop", "start"], "{calls:?}");

    let group = runtime.step(
        &old,
        &rollout(vec![member("a"), member("b")]),
        Arc::new(Quiet),
        RolloutScope::group("a", ["b".to_owned()]),
        false,
    );
    let error = group.progress.expect_err("a group is refused");
    assert_eq!(error.phase, Phase::Step);
    assert!(error.to_string().contains("group"), "{error}");
    assert!(
        group.calls.is_empty(),
        "nothing was called: {:?}",
        group.calls
    );
}
