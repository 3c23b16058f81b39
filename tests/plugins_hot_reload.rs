//! The watched plugin directory: new and changed files validated and served without a
//! restart, bad files rejected while the previous version keeps serving, rollouts in
//! flight keeping the exact plugin they started with. Against a running daemon, the
//! real reference control plane with stub processes and the real components; the first
//! tests drive [`PluginDir`] directly with the real runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint::registry::{EntryState, PluginDir, PluginRegistry, SETTLE_DELAY};
use setpoint::runtime::{PluginRuntime, RuntimeConfig, World as Kind};
use setpoint::store::{AuditFilter, AuditKind, ConditionType};
use setpoint_tests::world::{World, converged, eventually};
use setpoint_tests::{fixture, install_atomically, plugin, setpoint_bin, with_custom_section};

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig::default()).expect("runtime")
}

fn state_of(registry: &PluginRegistry, file: &Path) -> Vec<EntryState> {
    registry
        .entries()
        .iter()
        .filter(|e| e.file == file)
        .map(|e| e.state.clone())
        .collect()
}

fn digest_of(path: &Path) -> String {
    setpoint_tests::digest(&std::fs::read(path).unwrap())
}

#[test]
fn a_file_still_being_written_is_not_loaded_until_it_settles() {
    let runtime = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("field-diff-v2")).unwrap();
    let file = tmp.path().join("field-diff-v2.wasm");
    let mut dir = PluginDir::new(tmp.path());

    // The first half, as a slow copy leaves it.
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let report = dir.scan(&runtime);
    assert!(report.pending && !report.changed, "{report:?}");
    assert!(dir.registry().entries().is_empty());

    // More arrives before it settled: still pending, never judged half-written.
    std::thread::sleep(SETTLE_DELAY / 2);
    std::fs::write(&file, &bytes).unwrap();
    let report = dir.scan(&runtime);
    assert!(report.pending && !report.changed, "{report:?}");
    assert!(dir.registry().entries().is_empty());

    std::thread::sleep(SETTLE_DELAY + Duration::from_millis(50));
    let report = dir.scan(&runtime);
    assert!(report.changed && !report.pending, "{report:?}");
    let registry = dir.registry();
    assert_eq!(state_of(&registry, &file), [EntryState::Active]);
    assert!(
        registry
            .entries()
            .iter()
            .all(|e| !matches!(e.state, EntryState::Rejected(_)))
    );
    // Nothing changes when nothing changed.
    assert_eq!(dir.scan(&runtime), Default::default());
}

#[test]
fn a_duplicate_name_and_version_with_other_content_is_rejected_naming_both_files() {
    let runtime = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("a-field-diff.wasm");
    std::fs::copy(plugin("field-diff"), &original).unwrap();
    let registry = PluginRegistry::load_dir(&runtime, tmp.path());
    assert_eq!(state_of(&registry, &original), [EntryState::Active]);

    // Another build of field-diff 0.1.0, sorted *before* the incumbent: the incumbent
    // still wins, because it was accepted first.
    let mut dir = PluginDir::new(tmp.path());
    dir.load(&runtime);
    let rebuilt = tmp.path().join("0-field-diff-rebuilt.wasm");
    let bytes = with_custom_section(&std::fs::read(plugin("field-diff")).unwrap(), b"rebuild");
    std::fs::write(&rebuilt, bytes).unwrap();
    dir.load(&runtime);
    let registry = dir.registry();
    assert_eq!(state_of(&registry, &original), [EntryState::Active]);
    let [EntryState::Rejected(reason)] = &state_of(&registry, &rebuilt)[..] else {
        panic!("{:#?}", registry.entries());
    };
    assert!(
        reason.contains("duplicates comparator field-diff@0.1.0")
            && reason.contains("0-field-diff-rebuilt.wasm")
            && reason.contains("a-field-diff.wasm"),
        "{reason}"
    );
    let serving = registry
        .resolve(Kind::Comparator, "field-diff", None)
        .unwrap();
    assert_eq!(serving.digest(), digest_of(&original));
}

#[test]
fn a_byte_identical_copy_is_a_duplicate_not_a_second_active_entry() {
    let runtime = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("field-diff.wasm");
    std::fs::copy(plugin("field-diff"), &original).unwrap();
    let mut dir = PluginDir::new(tmp.path());
    dir.load(&runtime);

    // The same bytes under another name, sorted before the original: the original,
    // there first, keeps serving.
    let copy = tmp.path().join("a-copy.wasm");
    std::fs::copy(&original, &copy).unwrap();
    dir.load(&runtime);
    let registry = dir.registry();
    assert_eq!(state_of(&registry, &original), [EntryState::Active]);
    // As `/v1/plugins` and `plugins list --json` show it.
    let listed: Vec<Value> = registry
        .entries()
        .iter()
        .filter(|e| e.file == copy)
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["state"], "duplicate", "{listed:#?}");
    let reason = listed[0]["reason"].as_str().unwrap_or_default();
    let digest = digest_of(&original);
    assert!(
        reason.contains("same component as field-diff.wasm")
            && reason.contains(&digest[..12])
            && reason.contains("remove one"),
        "{reason}"
    );
    let serving = registry
        .resolve(Kind::Comparator, "field-diff", None)
        .unwrap();
    assert_eq!(serving.origin(), original.display().to_string());
    let duplicates = registry
        .counts()
        .iter()
        .find(|(s, _)| *s == "duplicate")
        .unwrap()
        .1;
    assert_eq!(duplicates, 1);

    // The original removed: the copy takes over.
    std::fs::remove_file(&original).unwrap();
    dir.load(&runtime);
    let registry = dir.registry();
    assert_eq!(state_of(&registry, &copy), [EntryState::Active]);
    assert_eq!(registry.entries().len(), 1, "{:#?}", registry.entries());
    assert_eq!(
        registry
            .resolve(Kind::Comparator, "field-diff", None)
            .unwrap()
            .digest(),
        digest
    );
}

#[test]
fn versions_can_be_pinned_and_the_newest_is_taken_otherwise() {
    let runtime = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("field-diff.wasm");
    let v2 = tmp.path().join("field-diff-0.2.0.wasm");
    std::fs::copy(plugin("field-diff"), &v1).unwrap();
    std::fs::copy(fixture("field-diff-v2"), &v2).unwrap();
    let registry = PluginRegistry::load_dir(&runtime, tmp.path());
    assert_eq!(state_of(&registry, &v1), [EntryState::Superseded]);
    assert_eq!(state_of(&registry, &v2), [EntryState::Active]);

    let pick = |requirement: Option<&str>| {
        let requirement = requirement.map(|r| r.parse().unwrap());
        registry
            .resolve(Kind::Comparator, "field-diff", requirement.as_ref())
            .unwrap()
            .metadata()
            .version
            .to_string()
    };
    assert_eq!(pick(None), "0.2.0");
    assert_eq!(pick(Some("=0.1.0")), "0.1.0");
    assert_eq!(pick(Some("<0.2")), "0.1.0");
    assert_eq!(pick(Some("0.2")), "0.2.0");
    let error = registry
        .resolve(Kind::Comparator, "field-diff", Some(&"^1".parse().unwrap()))
        .unwrap_err();
    assert!(
        error.to_string().contains("loaded: 0.1.0, 0.2.0"),
        "{error}"
    );
}

#[test]
fn a_comparator_whose_smoke_call_traps_or_loops_is_rejected_quickly() {
    let runtime = runtime();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["trap", "loop-forever", "wrong-world"] {
        std::fs::copy(fixture(name), tmp.path().join(format!("{name}.wasm"))).unwrap();
    }
    let started = Instant::now();
    let registry = PluginRegistry::load_dir(&runtime, tmp.path());
    // The loop is stopped by the smoke call's short budget, not the 5 s call budget.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let reason = |name: &str| match &state_of(&registry, &tmp.path().join(format!("{name}.wasm")))[..]
    {
        [EntryState::Rejected(reason)] => reason.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let trap = reason("trap");
    assert!(
        trap.contains("failed its smoke call") && trap.contains("compare trapped"),
        "{trap}"
    );
    let looped = reason("loop-forever");
    assert!(
        looped.contains("failed its smoke call") && looped.contains("time budget"),
        "{looped}"
    );
    let foreign = reason("wrong-world");
    assert!(foreign.contains("not a setpoint plugin"), "{foreign}");
    assert_eq!(registry.counts()[3], ("rejected", 3));
}

// ---- with a running daemon -----------------------------------------------------------

async fn plugins_json(world: &World) -> Vec<Value> {
    reqwest::get(format!("http://{}/v1/plugins", world.daemon().admin_addr()))
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

async fn metrics(world: &World) -> String {
    reqwest::get(format!("http://{}/metrics", world.daemon().admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn digest_serving(world: &World, kind: Kind, name: &str) -> Option<String> {
    world
        .daemon()
        .controller()
        .plugins()
        .resolve(kind, name, None)
        .ok()
        .map(|p| p.digest().to_owned())
}

fn rollout_digest(world: &World, id: &str) -> Option<String> {
    world
        .daemon()
        .controller()
        .store()
        .load_rollout(id)
        .unwrap()
        .map(|r| r.plugin_digest)
}

/// The digests of the strategies the instance's rollouts were decided with, oldest first.
fn decided_digests(world: &World, id: &str) -> Vec<String> {
    world
        .daemon()
        .controller()
        .store()
        .audit(&AuditFilter {
            instance_id: Some(id.to_owned()),
            ..AuditFilter::default()
        })
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.kind == AuditKind::Decision && r.entry.message.starts_with("roll out"))
        .filter_map(|r| r.entry.details["digest"].as_str().map(str::to_owned))
        .collect()
}

fn log_level(level: &str) -> Value {
    json!([{ "op": "replace", "path": "/logLevel", "value": level }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_comparator_version_is_used_by_the_next_reconcile_within_two_seconds() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    let v2 = fixture("field-diff-v2");
    let v2_digest = digest_of(&v2);

    // A plain copy, not a rename: the watcher must wait for it to settle by itself.
    let dropped = Instant::now();
    std::fs::copy(&v2, world.plugin_dir().join("field-diff-0.2.0.wasm")).unwrap();
    eventually(
        Duration::from_secs(2),
        "field-diff@0.2.0 to serve",
        async || {
            digest_serving(&world, Kind::Comparator, "field-diff").as_deref()
                == Some(v2_digest.as_str())
        },
    )
    .await;
    let picked_up = dropped.elapsed();

    world.patch(&id, log_level("debug")).await;
    eventually(
        Duration::from_secs(5),
        "the drift judged by field-diff 0.2.0",
        async || {
            world.audit(&id).iter().any(|(k, m)| {
                *k == AuditKind::Observation && m.contains("[field-diff 0.2.0] /logLevel")
            })
        },
    )
    .await;
    converged(&world, &[&id]).await;
    assert!(picked_up < Duration::from_secs(2), "took {picked_up:?}");

    let listed = plugins_json(&world).await;
    let state = |version: &str| {
        listed
            .iter()
            .find(|e| e["name"] == "field-diff" && e["version"] == version)
            .map(|e| e["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state("0.2.0").as_deref(), Some("active"), "{listed:#?}");
    assert_eq!(state("0.1.0").as_deref(), Some("superseded"), "{listed:#?}");
    let text = metrics(&world).await;
    assert!(
        text.contains("setpoint_plugins{state=\"superseded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("setpoint_plugins{state=\"active\"} 3"),
        "{text}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_file_and_a_wrong_world_component_are_rejected_while_the_old_version_serves() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    let serving = digest_serving(&world, Kind::Comparator, "field-diff").unwrap();

    // The serving file is overwritten with a truncated copy, and a foreign component
    // arrives.
    let good = std::fs::read(plugin("field-diff")).unwrap();
    let field_diff = world.plugin_dir().join("field-diff.wasm");
    install_atomically(&field_diff, &good[..good.len() / 3]);
    std::fs::copy(
        fixture("wrong-world"),
        world.plugin_dir().join("other.wasm"),
    )
    .unwrap();

    eventually(Duration::from_secs(3), "both files rejected", async || {
        let listed = plugins_json(&world).await;
        listed.iter().filter(|e| e["state"] == "rejected").count() == 2
    })
    .await;
    let listed = plugins_json(&world).await;
    let rejected = |file: &str| {
        listed
            .iter()
            .find(|e| e["state"] == "rejected" && e["file"].as_str().unwrap().ends_with(file))
            .and_then(|e| e["reason"].as_str())
            .unwrap_or_else(|| panic!("{file} not rejected: {listed:#?}"))
            .to_owned()
    };
    assert!(
        rejected("field-diff.wasm").contains("not a valid WebAssembly component"),
        "{listed:#?}"
    );
    assert!(
        rejected("other.wasm").contains("not a setpoint plugin"),
        "{listed:#?}"
    );
    // The old field-diff still serves, from memory, listed as active beside the rejection.
    assert!(
        listed.iter().any(|e| e["name"] == "field-diff"
            && e["state"] == "active"
            && e["digest"] == serving.as_str()),
        "{listed:#?}"
    );
    assert_eq!(
        digest_serving(&world, Kind::Comparator, "field-diff").as_deref(),
        Some(serving.as_str())
    );
    let text = metrics(&world).await;
    assert!(
        text.contains("setpoint_plugins{state=\"rejected\"} 2"),
        "{text}"
    );

    world.patch(&id, log_level("warn")).await;
    eventually(
        Duration::from_secs(10),
        "the change reconciled by the old comparator",
        async || {
            world
                .stub_config(&id)
                .await
                .is_some_and(|c| c["logLevel"] == "warn")
                && world.synced(&id)
        },
    )
    .await;
    assert!(
        world
            .audit(&id)
            .iter()
            .any(|(k, m)| *k == AuditKind::Observation && m.contains(": /logLevel")),
        "{:#?}",
        world.audit(&id)
    );

    // A good file again replaces the rejection.
    install_atomically(&field_diff, &good);
    eventually(
        Duration::from_secs(3),
        "the rejection cleared",
        async || {
            plugins_json(&world)
                .await
                .iter()
                .filter(|e| e["state"] == "rejected")
                .count()
                == 1
        },
    )
    .await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapping_or_looping_comparator_dropped_in_is_rejected_and_never_selected() {
    let mut world = World::new(&[]).await;
    world
        .start_daemon(
            "30s",
            r#"
[[policy.rules]]
name = "broken"
match = { labels = { compare = "broken" } }
comparator = "fixture-trap"
"#,
        )
        .await;
    for name in ["trap", "loop-forever"] {
        install_atomically(
            &world.plugin_dir().join(format!("{name}.wasm")),
            &std::fs::read(fixture(name)).unwrap(),
        );
    }
    eventually(Duration::from_secs(5), "both rejected", async || {
        plugins_json(&world)
            .await
            .iter()
            .filter(|e| {
                e["state"] == "rejected"
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("failed its smoke call"))
            })
            .count()
            == 2
    })
    .await;
    let id = world.create("broken", json!({ "compare": "broken" })).await;
    converged(&world, &[&id]).await;
    world.patch(&id, log_level("debug")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Policy names a comparator that was never offered: the instance is not touched.
    assert_eq!(world.stub_config(&id).await.unwrap()["logLevel"], "info");
    assert!(
        world
            .daemon()
            .controller()
            .plugins()
            .resolve(Kind::Comparator, "fixture-trap", None)
            .is_err()
    );
    world.stop_daemon().await;
}

/// A rule whose rollouts wait `health_poll_ms` between steps, so a test can act while
/// one is in flight.
fn slow_restart(health_poll_ms: u64) -> String {
    format!(
        r#"
[[policy.rules]]
name = "slow"
match = {{ labels = {{ speed = "slow" }} }}
strategy = "restart"
strategy_params = {{ health_poll_ms = {health_poll_ms} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strategy_replaced_mid_rollout_finishes_on_the_old_digest_and_the_next_uses_the_new() {
    let mut world = World::new(&[]).await;
    // The rebuild below is compiled while the rollout waits, and compiling `restart`
    // with inlining takes seconds on a loaded CI machine (2 s was missed there).
    world.start_daemon("30s", &slow_restart(12_000)).await;
    let id = world.create("slow", json!({ "speed": "slow" })).await;
    converged(&world, &[&id]).await;
    let restart = world.plugin_dir().join("restart.wasm");
    let old = digest_of(&restart);

    world.patch(&id, log_level("debug")).await;
    eventually(Duration::from_secs(5), "the rollout to start", async || {
        rollout_digest(&world, &id).is_some()
    })
    .await;
    assert_eq!(rollout_digest(&world, &id).as_deref(), Some(old.as_str()));

    // A rebuild of restart 0.1.0 (other bytes, same name and version) replaces the file.
    let rebuilt = with_custom_section(&std::fs::read(&restart).unwrap(), b"rebuild");
    install_atomically(&restart, &rebuilt);
    let new = digest_of(&restart);
    assert_ne!(old, new);
    eventually(
        Duration::from_secs(10),
        "the rebuild to serve",
        async || digest_serving(&world, Kind::Strategy, "restart").as_deref() == Some(new.as_str()),
    )
    .await;
    assert_eq!(
        rollout_digest(&world, &id).as_deref(),
        Some(old.as_str()),
        "the rollout must still be in flight for this test to mean anything"
    );
    let listed = plugins_json(&world).await;
    assert!(
        listed
            .iter()
            .any(|e| e["digest"] == old.as_str() && e["state"] == "retiring"),
        "{listed:#?}"
    );

    eventually(
        Duration::from_secs(30),
        "the rollout to finish",
        async || world.synced(&id),
    )
    .await;
    assert_eq!(world.stub_config(&id).await.unwrap()["logLevel"], "debug");
    let (degraded, _, message) = world
        .condition(&id, ConditionType::Degraded)
        .unwrap_or_default();
    assert!(!degraded, "{message}");
    eventually(
        Duration::from_secs(3),
        "the old build to be released",
        async || !world.daemon().controller().plugins().has_retiring(),
    )
    .await;

    world.patch(&id, log_level("warn")).await;
    eventually(
        Duration::from_secs(5),
        "the next rollout to start",
        async || rollout_digest(&world, &id).is_some(),
    )
    .await;
    assert_eq!(rollout_digest(&world, &id).as_deref(), Some(new.as_str()));
    let decided = decided_digests(&world, &id);
    assert_eq!(decided[decided.len() - 2..], [old.clone(), new.clone()]);
    converged(&world, &[&id]).await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_strategy_stops_new_selections_without_disturbing_a_rollout_in_flight() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", &slow_restart(4_000)).await;
    let slow = world.create("slow", json!({ "speed": "slow" })).await;
    let other = world.create("other", json!({})).await;
    converged(&world, &[&slow, &other]).await;
    let restart = world.plugin_dir().join("restart.wasm");
    let digest = digest_of(&restart);

    world.patch(&slow, log_level("debug")).await;
    eventually(Duration::from_secs(5), "the rollout to start", async || {
        rollout_digest(&world, &slow).is_some()
    })
    .await;
    std::fs::remove_file(&restart).unwrap();
    eventually(
        Duration::from_secs(2),
        "restart to be withdrawn",
        async || digest_serving(&world, Kind::Strategy, "restart").is_none(),
    )
    .await;
    assert!(rollout_digest(&world, &slow).is_some(), "still in flight");
    let listed = plugins_json(&world).await;
    assert!(
        listed
            .iter()
            .any(|e| e["digest"] == digest.as_str() && e["state"] == "retiring"),
        "{listed:#?}"
    );

    // A new change elsewhere finds no strategy to start a rollout with.
    let before = decided_digests(&world, &other).len();
    world.patch(&other, log_level("warn")).await;

    eventually(
        Duration::from_secs(20),
        "the rollout in flight to finish",
        async || world.synced(&slow),
    )
    .await;
    assert_eq!(world.stub_config(&slow).await.unwrap()["logLevel"], "debug");
    eventually(
        Duration::from_secs(3),
        "the removed strategy to be released",
        async || !world.daemon().controller().plugins().has_retiring(),
    )
    .await;
    assert_eq!(decided_digests(&world, &other).len(), before);
    assert!(rollout_digest(&world, &other).is_none());
    assert_eq!(world.stub_config(&other).await.unwrap()["logLevel"], "info");
    let text = metrics(&world).await;
    assert!(
        text.contains("setpoint_plugins{state=\"retiring\"} 0"),
        "{text}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_dropped_next_to_a_plugin_is_listed_as_duplicate_and_the_original_serves() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let id = world.create("orders", json!({})).await;
    converged(&world, &[&id]).await;
    let original = world.plugin_dir().join("field-diff.wasm");
    let copy = world.plugin_dir().join("field-diff-copy.wasm");
    let digest = digest_of(&original);
    install_atomically(&copy, &std::fs::read(&original).unwrap());

    let entry_of = |listed: &[Value], file: &Path| {
        listed
            .iter()
            .find(|e| e["file"] == file.display().to_string())
            .cloned()
    };
    eventually(
        Duration::from_secs(5),
        "the copy to be listed",
        async || entry_of(&plugins_json(&world).await, &copy).is_some(),
    )
    .await;
    let listed = plugins_json(&world).await;
    let entry = entry_of(&listed, &copy).unwrap();
    assert_eq!(entry["state"], "duplicate", "{listed:#?}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("same component as field-diff.wasm")
            && reason.contains(&digest[..12])
            && reason.contains("remove one"),
        "{reason}"
    );
    assert_eq!(entry_of(&listed, &original).unwrap()["state"], "active");
    let serving = world
        .daemon()
        .controller()
        .plugins()
        .resolve(Kind::Comparator, "field-diff", None)
        .unwrap();
    assert_eq!(serving.origin(), original.display().to_string());
    let text = metrics(&world).await;
    assert!(
        text.contains("setpoint_plugins{state=\"duplicate\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("setpoint_plugins{state=\"active\"} 3"),
        "{text}"
    );

    // `plugins list` shows it, with the reason.
    let endpoint = format!("http://{}", world.daemon().admin_addr());
    let (code, out) = setpoint(&["plugins", "list", "--endpoint", &endpoint]);
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .position(|l| l.ends_with("field-diff-copy.wasm"))
        .unwrap_or_else(|| panic!("no copy in {out}"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[line].contains("duplicate"), "{out}");
    assert!(
        lines
            .get(line + 1)
            .is_some_and(|l| l.contains("same component as field-diff.wasm")),
        "{out}"
    );

    // The original keeps serving: a change still converges.
    world.patch(&id, log_level("debug")).await;
    converged(&world, &[&id]).await;
    assert!(world.serves(&id, "debug").await);
    world.stop_daemon().await;
}

/// Run the `setpoint` binary; its exit code and standard output.
fn setpoint(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(setpoint_bin())
        .args(args)
        .env_remove("SETPOINT_ENDPOINT")
        .output()
        .expect("run setpoint");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        format!("{stdout}{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_install_validates_then_places_the_file_for_the_running_daemon() {
    let mut world = World::new(&[]).await;
    world.start_daemon("30s", "").await;
    let dir = world.plugin_dir();
    let dir_arg = dir.display().to_string();
    let endpoint = format!("http://{}", world.daemon().admin_addr());

    let v2 = fixture("field-diff-v2").display().to_string();
    let (code, out) = setpoint(&["plugins", "install", &v2, "--dir", &dir_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("installed comparator field-diff@0.2.0"),
        "{out}"
    );
    let installed = dir.join("field-diff-0.2.0.wasm");
    assert_eq!(digest_of(&installed), digest_of(Path::new(&v2)));
    let v2_digest = digest_of(&installed);
    eventually(
        Duration::from_secs(2),
        "the daemon to serve it",
        async || {
            digest_serving(&world, Kind::Comparator, "field-diff").as_deref()
                == Some(v2_digest.as_str())
        },
    )
    .await;

    // A comparator that traps is refused and nothing is written.
    let trap = fixture("trap").display().to_string();
    let (code, out) = setpoint(&["plugins", "install", &trap, "--dir", &dir_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rejected, not installed") && out.contains("smoke call"),
        "{out}"
    );
    // So is another build of a name and version the directory already has.
    let rebuilt = world.dir.path().join("field-diff-rebuilt.wasm");
    std::fs::write(
        &rebuilt,
        with_custom_section(&std::fs::read(plugin("field-diff")).unwrap(), b"x"),
    )
    .unwrap();
    let (code, out) = setpoint(&[
        "plugins",
        "install",
        &rebuilt.display().to_string(),
        "--dir",
        &dir_arg,
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("field-diff.wasm already provides comparator field-diff@0.1.0"),
        "{out}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "drasi-summary.wasm",
            "field-diff-0.2.0.wasm",
            "field-diff.wasm",
            "restart.wasm"
        ]
    );

    // `plugins list` asks the daemon.
    let (code, out) = setpoint(&["plugins", "list", "--endpoint", &endpoint]);
    assert_eq!(code, 0, "{out}");
    let line = |version: &str| {
        out.lines()
            .find(|l| l.starts_with("field-diff") && l.contains(version))
            .unwrap_or_else(|| panic!("no field-diff {version} in {out}"))
            .to_owned()
    };
    assert!(line("0.2.0").contains("active"), "{out}");
    assert!(line("0.1.0").contains("superseded"), "{out}");
    let (code, out) = setpoint(&["plugins", "list", "--json", "--endpoint", &endpoint]);
    assert_eq!(code, 0, "{out}");
    let listed: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed.len(), 4, "{listed:#?}");
    world.stop_daemon().await;
}
