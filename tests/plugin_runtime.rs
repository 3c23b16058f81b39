//! The plugin runtime on real components built from `plugins/` by
//! `scripts/build-plugins`: the shipped comparators and the restart strategy, the
//! sandbox limits on misbehaving fixtures (and what a strategy's time budget leaves out:
//! time blocked in control-plane imports), and the errors for files that are not
//! plugins.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint::runtime::scope::{CpError, Health, InstanceInfo, InstanceStatus, RuntimeStatus};
use setpoint::runtime::{
    CallFailure, CallOutcome, DriftKind, Error, Member, Phase, PluginRuntime, Progress, Rollout,
    RolloutScope, RuntimeConfig, StrategyHost, World,
};
use setpoint_tests::{drasi_config, fixture, plugin};

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig {
        call_deadline: Duration::from_millis(500),
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

fn compare(
    rt: &PluginRuntime,
    name: &str,
    desired: &Value,
    actual: &Value,
    params: &Value,
) -> Vec<setpoint::runtime::Drift> {
    let p = rt.load_file(&plugin(name)).expect("plugin loads");
    rt.compare(
        &p,
        "inst-1",
        &desired.to_string(),
        &actual.to_string(),
        &params.to_string(),
    )
    .expect("compare succeeds")
}

#[test]
fn field_diff_reports_an_added_source_and_a_changed_port() {
    let rt = runtime();
    let actual = drasi_config();
    let mut desired = drasi_config();
    desired["port"] = json!(8081);
    desired["sources"].as_array_mut().unwrap().push(json!({
        "kind": "mock", "id": "extra-source", "autoStart": false, "dataType": "counter"
    }));

    let drifts = compare(&rt, "field-diff", &desired, &actual, &json!({}));

    assert_eq!(drifts.len(), 2, "{drifts:#?}");
    let port = drifts
        .iter()
        .find(|d| d.path == "/port")
        .expect("port drift");
    assert_eq!(port.kind, DriftKind::Changed);
    assert_eq!(port.desired.as_deref(), Some("8081"));
    assert_eq!(port.actual.as_deref(), Some("8080"));
    let source = drifts
        .iter()
        .find(|d| d.path.starts_with("/sources"))
        .expect("source drift");
    assert_eq!(source.kind, DriftKind::Added);
    assert!(source.desired.as_deref().unwrap().contains("extra-source"));
    assert_eq!(source.actual, None);
}

#[test]
fn field_diff_sees_no_drift_in_reordered_queries() {
    let rt = runtime();
    let actual = drasi_config();
    let mut desired = drasi_config();
    desired["queries"].as_array_mut().unwrap().reverse();
    desired["sources"].as_array_mut().unwrap().reverse();

    let drifts = compare(&rt, "field-diff", &desired, &actual, &json!({}));

    assert!(drifts.is_empty(), "{drifts:#?}");
}

#[test]
fn field_diff_ignores_the_paths_it_is_told_to() {
    let rt = runtime();
    let actual = drasi_config();
    let mut desired = drasi_config();
    desired["logLevel"] = json!("debug");
    desired["sources"][0]["host"] = json!("db2.internal");

    let all = compare(&rt, "field-diff", &desired, &actual, &json!({}));
    assert_eq!(all.len(), 2, "{all:#?}");
    let ignored = compare(
        &rt,
        "field-diff",
        &desired,
        &actual,
        &json!({ "ignore": ["/logLevel", "/sources"] }),
    );
    assert!(ignored.is_empty(), "{ignored:#?}");
}

#[test]
fn drasi_summary_reports_port_and_counts() {
    let rt = runtime();
    let actual = drasi_config();
    let mut desired = drasi_config();
    desired["port"] = json!(8081);
    desired["reactions"].as_array_mut().unwrap().pop();

    let drifts = compare(&rt, "drasi-summary", &desired, &actual, &json!({}));

    let messages: Vec<&str> = drifts.iter().map(|d| d.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("8080") && m.contains("8081")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("reactions")),
        "{messages:?}"
    );
    assert_eq!(drifts.len(), 2, "{messages:?}");
}

#[test]
fn a_guest_that_loops_forever_is_stopped_within_its_budget_and_the_host_carries_on() {
    let rt = runtime();
    let looping = rt
        .load_file(&fixture("loop-forever"))
        .expect("fixture loads");

    let started = Instant::now();
    let err = rt
        .compare(&looping, "inst-loop", "{}", "{}", "{}")
        .unwrap_err();
    let took = started.elapsed();

    assert!(matches!(err.failure, CallFailure::Timeout { .. }), "{err}");
    assert!(
        took >= Duration::from_millis(450),
        "stopped too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "not stopped within budget: {took:?}"
    );
    assert!(err.to_string().contains("time budget"), "{err}");

    // The host serves the next calls normally, on another plugin and on the same one.
    let drifts = compare(
        &rt,
        "field-diff",
        &json!({"a": 1}),
        &json!({"a": 2}),
        &json!({}),
    );
    assert_eq!(drifts.len(), 1);
    let again = rt
        .compare(&looping, "inst-loop", "{}", "{}", "{}")
        .unwrap_err();
    assert!(
        matches!(again.failure, CallFailure::Timeout { .. }),
        "{again}"
    );
}

#[test]
fn a_guest_allocating_a_gibibyte_fails_cleanly_at_the_memory_cap() {
    let rt = runtime();
    let bomb = rt.load_file(&fixture("alloc-bomb")).expect("fixture loads");

    let err = rt
        .compare(&bomb, "inst-bomb", "{}", "{}", "{}")
        .unwrap_err();

    match err.failure {
        CallFailure::OutOfMemory { limit, requested } => {
            assert_eq!(limit, setpoint::runtime::MAX_PLUGIN_MEMORY_BYTES);
            assert!(requested > limit);
        }
        ref other => panic!("expected out-of-memory, got {other:?}"),
    }
    assert!(err.to_string().contains("memory cap"), "{err}");
    // The host is fine afterwards.
    let drifts = compare(&rt, "field-diff", &json!({}), &json!({}), &json!({}));
    assert!(drifts.is_empty());
}

#[test]
fn a_trap_is_reported_naming_plugin_version_instance_and_phase() {
    let rt = runtime();
    let trap = rt.load_file(&fixture("trap")).expect("fixture loads");
    let label = trap.label();

    let err = rt.compare(&trap, "abc-123", "{}", "{}", "{}").unwrap_err();

    assert!(matches!(err.failure, CallFailure::Trap { .. }), "{err}");
    assert!(err.is_trap());
    assert_eq!(err.phase, Phase::Compare);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "comparator {label} on instance abc-123: compare trapped"
        )),
        "{text}"
    );
    // The SDK's panic hook sent the message through `panic-message` before the trap
    // (the text is the fixture's `PANIC_MESSAGE`).
    assert!(
        text.contains("plugin panicked at")
            && text.contains("fixture-trap: deliberate panic in compare"),
        "the trap should carry the panic message: {text}"
    );
}

#[test]
fn files_that_are_not_plugins_get_distinct_clear_errors() {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("setpoint-not-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let text = dir.join("readme.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    let err = rt.load_file(&text).unwrap_err();
    assert!(matches!(err, Error::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");

    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = rt.load_file(&core).unwrap_err();
    assert!(matches!(err, Error::CoreModule { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component"),
        "{err}"
    );

    let err = rt.load_file(&fixture("wrong-world")).unwrap_err();
    assert!(matches!(err, Error::NotAPlugin { .. }), "{err}");
    assert!(err.to_string().contains("drift-comparator@0.2.0"), "{err}");

    let err = rt.load_file(&fixture("future-version")).unwrap_err();
    assert!(matches!(err, Error::IncompatibleVersion { .. }), "{err}");
    assert!(err.to_string().contains("setpoint:plugin@9.0.0"), "{err}");
    assert!(
        err.to_string().contains("supports setpoint:plugin@0.1.x"),
        "{err}"
    );

    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_wasi_component_loads_and_runs_with_no_capabilities() {
    let rt = runtime();
    let wasi = rt
        .load_file(&fixture("wasi-comparator"))
        .expect("WASI component loads");
    assert!(wasi.shape().uses_wasi, "{:?}", wasi.shape().imports);
    assert_eq!(wasi.shape().world, World::Comparator);

    let drifts = rt
        .compare(&wasi, "inst-wasi", "{}", "{}", "{}")
        .expect("runs");

    // The fixture reports what it saw when it tried the filesystem and the environment.
    let report: Vec<&str> = drifts.iter().map(|d| d.message.as_str()).collect();
    let joined = report.join(" | ");
    assert!(!joined.is_empty());
    assert!(
        !joined.contains("read ok"),
        "filesystem must be denied: {joined}"
    );
    assert!(
        !joined.contains("HOME="),
        "environment must be empty: {joined}"
    );
}

/// A control plane in memory, used only by these tests: records calls, says healthy
/// once `healthy_after` probes have been made, and takes `start_takes` to answer `start`
/// (a slow control plane: the strategy's call blocks that long in the import).
struct TestControlPlane {
    calls: Mutex<Vec<String>>,
    probes: Mutex<u32>,
    healthy_after: u32,
    start_takes: Duration,
}

impl TestControlPlane {
    fn new(healthy_after: u32) -> Arc<Self> {
        Self::slow_to_start(healthy_after, Duration::ZERO)
    }
    fn slow_to_start(healthy_after: u32, start_takes: Duration) -> Arc<Self> {
        Arc::new(TestControlPlane {
            calls: Mutex::new(Vec::new()),
            probes: Mutex::new(0),
            healthy_after,
            start_takes,
        })
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl StrategyHost for TestControlPlane {
    fn get_instance(&self, id: &str) -> Result<InstanceInfo, CpError> {
        self.note(format!("get-instance {id}"));
        Ok(InstanceInfo {
            id: id.into(),
            name: id.into(),
            status: InstanceStatus::Running,
            platform: "Process".into(),
            labels: vec![],
        })
    }
    fn get_runtime_status(&self, id: &str) -> Result<RuntimeStatus, CpError> {
        self.note(format!("get-runtime-status {id}"));
        Ok(RuntimeStatus {
            status: InstanceStatus::Running,
            details: "{}".into(),
        })
    }
    fn get_desired_configuration(&self, id: &str) -> Result<String, CpError> {
        self.note(format!("get-desired-configuration {id}"));
        Ok(drasi_config().to_string())
    }
    fn start(&self, id: &str, configuration: Option<&str>) -> Result<(), CpError> {
        let port = configuration
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .map(|c| c["port"].to_string())
            .unwrap_or_else(|| "stored".into());
        // Blocks for real: a slow control plane is the point of the tests that set it.
        std::thread::sleep(self.start_takes);
        self.note(format!("start {id} port={port}"));
        Ok(())
    }
    fn stop(&self, id: &str) -> Result<(), CpError> {
        self.note(format!("stop {id}"));
        Ok(())
    }
    fn restart(&self, id: &str) -> Result<(), CpError> {
        self.note(format!("restart {id}"));
        Ok(())
    }
    fn probe_health(&self, id: &str) -> Result<Health, CpError> {
        self.note(format!("probe-health {id}"));
        let mut probes = self.probes.lock().unwrap();
        *probes += 1;
        Ok(Health {
            healthy: *probes > self.healthy_after,
            detail: format!("probe {probes}"),
        })
    }
}

fn rollout(step: u32, elapsed_ms: u64, state: Option<String>, params: Value) -> Rollout {
    let mut desired = drasi_config();
    desired["port"] = json!(8081);
    Rollout {
        group: None,
        members: vec![Member {
            instance_id: "inst-r".into(),
            desired: desired.to_string(),
            actual: Some(drasi_config().to_string()),
            drifts: vec![],
        }],
        params: params.to_string(),
        state,
        step,
        elapsed_ms,
    }
}

fn state_of(progress: &Progress) -> Option<String> {
    match progress {
        Progress::Requeue(r) => Some(r.state.clone()),
        Progress::AwaitApproval(a) => Some(a.state.clone()),
        _ => None,
    }
}

#[test]
fn restart_strategy_stops_starts_waits_for_health_then_is_done() {
    let rt = runtime();
    let restart = rt.load_file(&plugin("restart")).expect("restart loads");
    let cp = TestControlPlane::new(1);
    let scope = RolloutScope::new("inst-r");
    let params = json!({ "health_poll_ms": 100, "health_deadline_ms": 10_000 });

    let first = rt.step(
        &restart,
        &rollout(0, 0, None, params.clone()),
        cp.clone(),
        scope,
        false,
    );
    let progress = first.progress.expect("step 0 runs");
    assert!(matches!(progress, Progress::Requeue(_)), "{progress:?}");
    assert_eq!(cp.calls(), vec!["stop inst-r", "start inst-r port=8081"]);
    assert!(
        first.calls.iter().all(|c| c.outcome == CallOutcome::Ok),
        "{:?}",
        first.calls
    );

    // Not healthy yet: waits.
    let mut state = state_of(&progress);
    let mut scope = first.scope;
    let mut step = 1;
    let mut done = None;
    for elapsed in [100u64, 200, 300, 400] {
        let out = rt.step(
            &restart,
            &rollout(step, elapsed, state.clone(), params.clone()),
            cp.clone(),
            scope,
            false,
        );
        scope = out.scope;
        match out.progress.expect("step runs") {
            Progress::Requeue(r) => {
                assert!(r.after_ms <= 1_000, "{r:?}");
                state = Some(r.state);
                step += 1;
            }
            Progress::Done(message) => {
                done = Some(message);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(done.is_some(), "restart never finished: {:?}", cp.calls());
    let probes = cp
        .calls()
        .iter()
        .filter(|c| c.starts_with("probe-health"))
        .count();
    assert_eq!(
        probes,
        2,
        "one unhealthy probe, then a healthy one: {:?}",
        cp.calls()
    );
}

#[test]
fn restart_strategy_fails_once_the_health_deadline_passes() {
    let rt = runtime();
    let restart = rt.load_file(&plugin("restart")).expect("restart loads");
    let cp = TestControlPlane::new(u32::MAX);
    let params = json!({ "health_poll_ms": 100, "health_deadline_ms": 1_000 });

    let first = rt.step(
        &restart,
        &rollout(0, 0, None, params.clone()),
        cp.clone(),
        RolloutScope::new("inst-r"),
        false,
    );
    let state = state_of(&first.progress.expect("step 0"));
    let waiting = rt.step(
        &restart,
        &rollout(1, 500, state.clone(), params.clone()),
        cp.clone(),
        first.scope.clone(),
        false,
    );
    assert!(
        matches!(waiting.progress, Ok(Progress::Requeue(_))),
        "{:?}",
        waiting.progress
    );
    let late = rt.step(
        &restart,
        &rollout(2, 1_500, state, params),
        cp.clone(),
        first.scope,
        false,
    );

    match late.progress.expect("step runs") {
        Progress::Failed(failure) => {
            assert!(failure.reason.contains("health"), "{failure:?}");
            assert!(failure.retryable);
        }
        other => panic!("expected failed, got {other:?}"),
    }
}

#[test]
fn restart_strategy_in_dry_run_records_its_plan_and_sends_nothing() {
    let rt = runtime();
    let restart = rt.load_file(&plugin("restart")).expect("restart loads");
    let cp = TestControlPlane::new(0);

    let out = rt.step(
        &restart,
        &rollout(0, 0, None, json!({})),
        cp.clone(),
        RolloutScope::new("inst-r"),
        true,
    );

    assert!(out.progress.is_ok(), "{:?}", out.progress);
    assert!(cp.calls().is_empty(), "dry-run sent {:?}", cp.calls());
    let plan: Vec<(&str, &CallOutcome)> = out
        .calls
        .iter()
        .map(|c| (c.call.as_str(), &c.outcome))
        .collect();
    assert_eq!(
        plan,
        vec![
            ("stop", &CallOutcome::Simulated),
            ("start", &CallOutcome::Simulated)
        ]
    );
    // The plan says what `start` would have sent.
    assert_eq!(out.calls[0].configuration, None);
    assert_eq!(out.calls[1].configuration.as_ref(), Some(&desired()));
}

/// The desired configuration of [`rollout`]'s rollouts.
fn desired() -> Value {
    serde_json::from_str(&rollout(0, 0, None, json!({})).members[0].desired).unwrap()
}

/// The test runtime's call budget, and how long a slow control plane takes to `start`.
const BUDGET: Duration = Duration::from_millis(500);
const SLOW_START: Duration = Duration::from_millis(1_500);

#[test]
fn a_step_blocked_in_a_slow_start_past_the_budget_completes_and_reports_its_calls() {
    let rt = runtime();
    assert_eq!(rt.config().call_deadline, BUDGET);
    let restart = rt.load_file(&plugin("restart")).expect("restart loads");
    let cp = TestControlPlane::slow_to_start(0, SLOW_START);

    let started = Instant::now();
    let out = rt.step(
        &restart,
        &rollout(0, 0, None, json!({ "health_poll_ms": 100 })),
        cp.clone(),
        RolloutScope::new("inst-r"),
        false,
    );
    let took = started.elapsed();

    // `start` blocked three budgets long; the strategy's own time stayed well inside one,
    // so the step returns the strategy's answer, not a timeout.
    assert!(took >= SLOW_START, "start did not block: {took:?}");
    match &out.progress {
        Ok(Progress::Requeue(r)) => assert_eq!(r.after_ms, 100, "{r:?}"),
        other => panic!("expected the strategy's requeue, got {other:?}"),
    }
    assert_eq!(cp.calls(), vec!["stop inst-r", "start inst-r port=8081"]);
    let calls: Vec<(&str, &CallOutcome)> = out
        .calls
        .iter()
        .map(|c| (c.call.as_str(), &c.outcome))
        .collect();
    assert_eq!(
        calls,
        vec![("stop", &CallOutcome::Ok), ("start", &CallOutcome::Ok)]
    );
    assert_eq!(out.calls[1].configuration.as_ref(), Some(&desired()));
}

#[test]
fn a_strategy_that_loops_after_a_slow_start_times_out_on_its_own_time_and_reports_the_start() {
    let rt = runtime();
    let strategy = rt
        .load_file(&fixture("start-then-fail"))
        .expect("fixture loads");
    let cp = TestControlPlane::slow_to_start(0, SLOW_START);

    let started = Instant::now();
    let out = rt.step(
        &strategy,
        &rollout(0, 0, None, json!({ "then": "loop" })),
        cp.clone(),
        RolloutScope::new("inst-r"),
        false,
    );
    let took = started.elapsed();

    let err = out.progress.expect_err("a loop never answers");
    assert!(matches!(err.failure, CallFailure::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("time budget"), "{err}");
    // Stopped once its own time reached the budget: not at the budget (the import's
    // time is not its own), and not much later than the import plus the budget.
    assert!(
        took >= SLOW_START + BUDGET - Duration::from_millis(50),
        "stopped before its own time reached the budget: {took:?}"
    );
    assert!(
        took < SLOW_START + BUDGET + Duration::from_secs(1),
        "not stopped within its budget: {took:?}"
    );
    // The mutation went through before the timeout, and is reported with what it sent.
    assert_eq!(cp.calls(), vec!["start inst-r port=8081"]);
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    assert_eq!(out.calls[0].call, "start");
    assert_eq!(out.calls[0].target, "inst-r");
    assert!(out.calls[0].mutating);
    assert_eq!(out.calls[0].outcome, CallOutcome::Ok);
    assert_eq!(out.calls[0].configuration.as_ref(), Some(&desired()));
}

#[test]
fn a_strategy_that_loops_without_blocking_times_out_at_its_budget() {
    let rt = runtime();
    let strategy = rt
        .load_file(&fixture("start-then-fail"))
        .expect("fixture loads");
    let cp = TestControlPlane::new(0);

    let started = Instant::now();
    let out = rt.step(
        &strategy,
        &rollout(0, 0, None, json!({})),
        cp.clone(),
        RolloutScope::new("inst-r"),
        false,
    );
    let took = started.elapsed();

    let err = out.progress.expect_err("a loop never answers");
    assert!(matches!(err.failure, CallFailure::Timeout { .. }), "{err}");
    assert!(
        took >= BUDGET - Duration::from_millis(50),
        "stopped too early: {took:?}"
    );
    assert!(
        took < BUDGET + Duration::from_millis(1_500),
        "not stopped within budget: {took:?}"
    );
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    assert_eq!(out.calls[0].outcome, CallOutcome::Ok);
}

#[test]
fn a_strategy_that_traps_after_a_start_reports_the_start_with_its_configuration() {
    let rt = runtime();
    let strategy = rt
        .load_file(&fixture("start-then-fail"))
        .expect("fixture loads");
    let cp = TestControlPlane::new(0);

    let out = rt.step(
        &strategy,
        &rollout(0, 0, None, json!({ "then": "trap" })),
        cp.clone(),
        RolloutScope::new("inst-r"),
        false,
    );

    let err = out.progress.expect_err("the step panics");
    assert!(matches!(err.failure, CallFailure::Trap { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("fixture-start-then-fail: deliberate panic after start"),
        "{err}"
    );
    assert_eq!(cp.calls(), vec!["start inst-r port=8081"]);
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    assert_eq!(out.calls[0].outcome, CallOutcome::Ok);
    assert_eq!(out.calls[0].configuration.as_ref(), Some(&desired()));
    // The audit form of a call leaves the configuration out.
    let audit = serde_json::to_value(&out.calls[0]).unwrap();
    assert_eq!(audit["call"], "start", "{audit}");
    assert!(audit.get("configuration").is_none(), "{audit}");
}

#[test]
fn restart_strategy_abort_restarts_with_the_previous_configuration() {
    let rt = runtime();
    let restart = rt.load_file(&plugin("restart")).expect("restart loads");
    let cp = TestControlPlane::new(0);
    let first = rt.step(
        &restart,
        &rollout(0, 0, None, json!({})),
        cp.clone(),
        RolloutScope::new("inst-r"),
        false,
    );
    let state = state_of(&first.progress.expect("step 0"));

    let out = rt.abort(
        &restart,
        &rollout(1, 10, state, json!({})),
        cp.clone(),
        first.scope,
        false,
    );

    assert!(
        matches!(
            out.progress,
            Ok(Progress::Done(_)) | Ok(Progress::Requeue(_))
        ),
        "{:?}",
        out.progress
    );
    let calls = cp.calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("start inst-r port=8080"),
        "{calls:?}"
    );
}

/// A component whose compiled code the cache holds is loaded from it, without a compile
/// child: a second runtime on the same cache (a daemon's next start) starts none, and
/// says the code is compiled before it loads it.
#[cfg(unix)]
#[test]
fn a_component_the_cache_holds_is_not_handed_to_a_compile_child_again() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // A "compiler" that only counts its runs and fails, so the runtime compiles in
    // process (into the cache), as it does when a child fails.
    let runs = dir.path().join("runs");
    let compiler = dir.path().join("count-and-fail");
    std::fs::write(
        &compiler,
        format!("#!/bin/sh\necho run >> '{}'\nexit 1\n", runs.display()),
    )
    .unwrap();
    std::fs::set_permissions(&compiler, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().join("cache")),
        compiler: Some(compiler),
        ..RuntimeConfig::default()
    };
    let children = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let file = plugin("field-diff");
    let bytes = std::fs::read(&file).unwrap();
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };

    let first = PluginRuntime::new(config.clone()).unwrap();
    assert!(!first.is_compiled(&bytes, &digest), "nothing is cached yet");
    first.load_file(&file).expect("field-diff loads");
    assert_eq!(children(), 1, "the first load asks a compile child");
    assert!(first.is_compiled(&bytes, &digest));

    let next = PluginRuntime::new(config).unwrap();
    assert!(
        next.is_compiled(&bytes, &digest),
        "the next start sees it cached"
    );
    let started = Instant::now();
    next.load_file(&file)
        .expect("field-diff loads from the cache");
    assert_eq!(
        children(),
        1,
        "no compile child for code the cache holds (load took {:?})",
        started.elapsed()
    );
}
