//! Progressive delivery end to end: the `blue-green` and `canary` strategies (the real
//! components from `scripts/build-plugins`) roll changes out through the reference
//! control plane on loopback, with real `drasi-stub` processes, while a load generator
//! sends real HTTP requests through the instance's endpoint proxy, which really splits
//! them by the weights the strategies set. What the tests check is what a user of the
//! endpoint sees (failed requests, who served what share) and what is left behind (the
//! configuration the instance runs, the endpoint, clones, conditions, the audit).
//!
//! Every instance is created under the default rule (so it comes up with `restart`),
//! then labelled for the rule under test; its endpoint (named after it) is published
//! with 100 % to it before the change, as an operator publishing its address would.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint::store::{AuditFilter, AuditRecord, ConditionType};
use setpoint_tests::lifecycle::settled;
use setpoint_tests::process::Setpoint;
use setpoint_tests::prometheus::Prometheus;
use setpoint_tests::traffic::{
    Load, LoadSpec, Totals, Window, endpoint_weights, install_plugins, reading, set_endpoint,
};
use setpoint_tests::world::{World, converged, set_level, within};
use setpoint_tests::{setpoint_bin, workspace_root};

/// The label that puts an instance under a test's rule once it runs.
const LABEL: &str = "delivery";

/// The clone label the reference control plane puts on clones.
const CLONE_OF: &str = "setpoint.io/clone-of";

// ----- policies ---------------------------------------------------------------------------

const BLUE_GREEN: &str = r#"
[[policy.rules]]
name = "blue-green"
match = { labels = { delivery = "blue-green" } }
strategy = "blue-green"
strategy_params = { drain = "1s", scale_down_delay = "1s", health_poll_ms = 100 }
"#;

/// Blue-green with a longer drain, so an abort lands while all traffic is on the clone.
const BLUE_GREEN_SLOW_SWITCH: &str = r#"
[[policy.rules]]
name = "blue-green"
match = { labels = { delivery = "blue-green" } }
strategy = "blue-green"
strategy_params = { drain = "2s", scale_down_delay = "1s", health_poll_ms = 100 }
"#;

/// The pause steps of [`CANARY_HEALTHY`]: (step number, weight of the clone).
const HEALTHY_PAUSES: [(u64, u64); 3] = [(2, 10), (4, 50), (7, 100)];
/// How long each of those pauses lasts.
const HEALTHY_PAUSE: Duration = Duration::from_secs(3);

const CANARY_HEALTHY: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "1s", health_poll_ms = 100, steps = [
  { weight = 10 }, { pause = "3s" },
  { weight = 50 }, { pause = "3s" },
  { analysis = { interval = "1s", max_error_rate = 0.01, min_requests = 100 } },
  { weight = 100 }, { pause = "3s" },
] }
"#;

/// The analysis interval of [`CANARY_FAILING`].
const FAILING_INTERVAL: Duration = Duration::from_secs(2);

const CANARY_FAILING: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "1s", health_poll_ms = 100, steps = [
  { weight = 20 },
  { analysis = { interval = "2s", max_error_rate = 0.05, min_requests = 50 } },
  { weight = 50 }, { pause = "3s" },
  { weight = 100 },
] }
"#;

const CANARY_APPROVAL: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "1s", health_poll_ms = 100, steps = [
  { weight = 10 }, { pause = "approval" },
  { weight = 50 }, { pause = "30s" },
  { weight = 80 }, { pause = "30s" },
  { weight = 100 },
] }
"#;

const CANARY_HOLD_AT_50: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "1s", health_poll_ms = 100, steps = [
  { weight = 20 }, { pause = "1s" },
  { weight = 50 }, { pause = "30s" },
  { weight = 100 },
] }
"#;

const CANARY_HOLD_AT_25: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "500ms", health_poll_ms = 100, steps = [
  { weight = 25 }, { pause = "30s" },
  { weight = 100 },
] }
"#;

/// The crash test's canary: short enough that a kill lands in every part of it.
const CANARY_CRASH: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "300ms", health_poll_ms = 100, steps = [
  { weight = 20 }, { pause = "1s" },
  { weight = 50 }, { pause = "1s" },
  { analysis = { interval = "1s", max_error_rate = 0.05, min_requests = 0 } },
] }
"#;

// ----- helpers ----------------------------------------------------------------------------

/// Run a test body under an overall bound, so a hang fails instead of blocking the run.
/// The `setpoint` binary is built first when the test needs it (outside the bound).
async fn bounded(limit: Duration, needs_binary: bool, body: impl Future<Output = ()>) {
    if needs_binary {
        tokio::task::spawn_blocking(setpoint_bin)
            .await
            .expect("building the setpoint binary");
    }
    let started = Instant::now();
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
    eprintln!(
        "{}: passed in {:.1} s",
        std::thread::current().name().unwrap_or("test"),
        started.elapsed().as_secs_f64()
    );
}

/// A world with the progressive strategies installed and the daemon running `policy`.
async fn world_with(policy: &str) -> World {
    let mut world = World::new(&[]).await;
    install_plugins(&world, &["canary", "blue-green"]);
    world.start_daemon("1s", &settings(policy)).await;
    world
}

/// The daemon's configuration file: `policy`, and a plugin cache shared by every daemon
/// of these tests (each world has its own database, so its own cache by default, and a
/// debug build takes seconds to compile the strategies again for each).
fn settings(policy: &str) -> String {
    let cache = workspace_root().join("target/test-plugin-cache");
    format!(
        "[plugins]\ncache_dir = {:?}\n{policy}",
        cache.display().to_string()
    )
}

/// An instance brought up under the default rule, then labelled `delivery = rule` and
/// published at its endpoint with 100 % to it.
async fn published_instance(world: &World, name: &str, rule: &str) -> String {
    let id = world.create(name, json!({})).await;
    converged(world, &[&id]).await;
    label(&world.http, &world.cp_url(), &id, rule).await;
    set_endpoint(&world.http, &world.cp_url(), &id, &[(&id, 100)]).await;
    id
}

async fn label(http: &reqwest::Client, cp_url: &str, id: &str, rule: &str) {
    http.put(format!("{cp_url}/api/server/instances/{id}/metadata"))
        .json(&json!({ LABEL: rule }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// Load through the instance's endpoint, started and given a moment to reach its rate.
async fn load_on(world: &World, id: &str, spec: LoadSpec) -> Load {
    let load = Load::start(&world.cp_url(), id, spec);
    tokio::time::sleep(Duration::from_millis(300)).await;
    load
}

/// The strategy's status object while a rollout runs (`Value::Null` otherwise).
async fn status(world: &World, id: &str) -> Value {
    world.admin_instance(id).await["progress"]["status"].clone()
}

/// `(instance, weight)` pairs of a status object's `weights` (snake_case, as strategies
/// write them).
fn status_weights(status: &Value) -> Vec<(String, u64)> {
    status["weights"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some((w["instance_id"].as_str()?.to_owned(), w["weight"].as_u64()?)))
        .collect()
}

/// Every clone the control plane knows: `(clone, owner)`.
async fn clones(world: &World) -> Vec<(String, String)> {
    world
        .get("/api/server/instances")
        .await
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i["id"].as_str()?.to_owned(),
                i["metadata"][CLONE_OF].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The instance's audit records, details included, oldest first.
fn audit_records(world: &World, id: &str) -> Vec<AuditRecord> {
    world
        .daemon()
        .controller()
        .store()
        .audit(&AuditFilter {
            instance_id: Some(id.to_owned()),
            ..AuditFilter::default()
        })
        .unwrap()
}

/// The weights of every successful `set-traffic-weights` call on the instance's
/// endpoint, in order, from the audit.
fn weight_calls(world: &World, id: &str) -> Vec<Vec<(String, u64)>> {
    let ok = format!("called set-traffic-weights on endpoint {id}: ok");
    audit_records(world, id)
        .into_iter()
        .filter(|r| r.entry.message.ends_with(&ok))
        .map(|r| {
            r.entry.details["weights"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| Some((w["instanceId"].as_str()?.to_owned(), w["weight"].as_u64()?)))
                .collect()
        })
        .collect()
}

/// What a failure message needs: the admin view, the endpoint, the clones, the audit.
async fn explain(world: &World, id: &str) -> String {
    let v = world.admin_instance(id).await;
    let audit = world.audit(id);
    let tail: Vec<String> = audit[audit.len().saturating_sub(60)..]
        .iter()
        .map(|(kind, message)| format!("  {kind:?}: {message}"))
        .collect();
    format!(
        "stub serves {:?}\nendpoint {:?}\nclones {:?}\nadmin view: {:#}\naudit:\n{}",
        world.stub_config(id).await,
        endpoint_weights(&world.http, &world.cp_url(), id).await,
        clones(world).await,
        json!({
            "status": v["instance"]["status"],
            "conditions": v["conditions"],
            "rollout": json!({ "phase": v["rollout"]["phase"], "step": v["rollout"]["step"] }),
            "progress": v["progress"],
            "givenUp": v["givenUp"],
            "abortRequested": v["abortRequested"],
            "lastDecision": v["lastDecision"],
        }),
        tail.join("\n")
    )
}

/// Wait until a rollout of `id` has started and ended, `limit` in all.
async fn rollout_ends(world: &World, id: &str, limit: Duration, what: &str) {
    let started = within(Duration::from_secs(10), async || {
        world
            .daemon()
            .controller()
            .store()
            .load_rollout(id)
            .unwrap()
            .is_some()
    })
    .await;
    assert!(
        started,
        "{what}: no rollout started\n{}",
        explain(world, id).await
    );
    let ended = within(limit, async || {
        world
            .daemon()
            .controller()
            .store()
            .load_rollout(id)
            .unwrap()
            .is_none()
    })
    .await;
    assert!(
        ended,
        "{what}: the rollout did not end within {limit:?}\n{}",
        explain(world, id).await
    );
}

/// The end state every finished or undone rollout must leave: the instance runs
/// `level` (and, when `has_stub` is false, no `stub` settings), its endpoint sends 100 %
/// to it, and no clone is left.
async fn left_clean(world: &World, id: &str, level: &str, has_stub: bool, what: &str) {
    let ok = within(Duration::from_secs(10), async || {
        world
            .stub_config(id)
            .await
            .is_some_and(|c| c["logLevel"] == level && c.get("stub").is_some() == has_stub)
    })
    .await;
    assert!(
        ok,
        "{what}: the instance does not run logLevel {level} (stub settings: {has_stub})\n{}",
        explain(world, id).await
    );
    assert_eq!(
        endpoint_weights(&world.http, &world.cp_url(), id).await,
        Some(vec![(id.to_owned(), 100)]),
        "{what}: the endpoint is not 100 % on the instance\n{}",
        explain(world, id).await
    );
    let none = within(Duration::from_secs(5), async || {
        clones(world).await.is_empty()
    })
    .await;
    assert!(
        none,
        "{what}: clones left: {:?}\n{}",
        clones(world).await,
        explain(world, id).await
    );
}

/// No failed request, or a message with the failures and the instance's story.
async fn no_failures(world: &World, id: &str, totals: &Totals, what: &str) {
    assert!(totals.sent > 0, "{what}: no request was sent");
    assert_eq!(
        totals.failed,
        0,
        "{what}: requests failed: {totals}\n{}",
        explain(world, id).await
    );
}

// ----- 1. blue-green ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switches_to_the_clone_and_back_without_a_failed_request() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(BLUE_GREEN).await;
        let id = published_instance(&world, "orders", "blue-green").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        world.patch(&id, set_level("debug")).await;
        rollout_ends(&world, &id, Duration::from_secs(40), "blue-green").await;
        let synced = within(Duration::from_secs(10), async || world.synced(&id)).await;
        assert!(
            synced,
            "not Synced after the rollout\n{}",
            explain(&world, &id).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let totals = load.stop().await;
        eprintln!("blue-green: {totals}");

        no_failures(&world, &id, &totals, "blue-green").await;
        left_clean(&world, &id, "debug", false, "blue-green").await;
        // Traffic really went through the clone while the instance restarted, and the
        // endpoint was switched over and back: 100 % instance, 100 % clone, 100 % instance.
        let calls = weight_calls(&world, &id);
        let clone = calls
            .iter()
            .flatten()
            .map(|(b, _)| b.clone())
            .find(|b| *b != id)
            .unwrap_or_else(|| panic!("no weights to a clone: {calls:?}"));
        let to = |b: &str| vec![(b.to_owned(), 100)];
        let mut switches = calls.clone();
        switches.dedup();
        assert_eq!(
            switches,
            [to(&id), to(&clone), to(&id)],
            "the endpoint's weights, call by call"
        );
        assert!(
            totals.by_backend.get(&clone).is_some_and(|n| *n > 0),
            "the clone served nothing: {totals}"
        );
        assert_eq!(world.status(&id).await, "Running");
    })
    .await;
}

// ----- 2. healthy canary ------------------------------------------------------------------

/// Measure who served what while the canary holds at timed pause `step`: wait for the
/// status to show it, let requests routed before the change land, read every backend's
/// counters, wait most of the pause, read again, and check the pause still holds (so the
/// window lies inside it). Returns the status's weights and the window.
async fn measure_pause(
    world: &World,
    id: &str,
    step: u64,
    pause: Duration,
) -> (Vec<(String, u64)>, Window) {
    let mut progress = Value::Null;
    let at_step = within(Duration::from_secs(20), async || {
        progress = world.admin_instance(id).await["progress"].take();
        let s = &progress["status"];
        s["step"].as_u64() == Some(step) && s["paused"] == true
    })
    .await;
    assert!(
        at_step,
        "the canary never paused at step {step}\n{}",
        explain(world, id).await
    );
    // When the pause began: the host's record of the step that entered it (written just
    // after the step, so no earlier than the pause's start), else now.
    let since = progress["lastProgressAt"]
        .as_u64()
        .and_then(|ms| {
            let began = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            std::time::SystemTime::now().duration_since(began).ok()
        })
        .and_then(|ago| Instant::now().checked_sub(ago))
        .unwrap_or_else(Instant::now);
    let seen = &progress["status"];
    let weights = status_weights(seen);
    let clone = seen["clone"]
        .as_str()
        .expect("the status names the clone")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let ids = [id, clone.as_str()];
    let before = reading(&world.http, &world.cp_url(), &ids).await;
    tokio::time::sleep(
        (since + pause).saturating_duration_since(Instant::now() + Duration::from_millis(700)),
    )
    .await;
    let after = reading(&world.http, &world.cp_url(), &ids).await;
    let still = status(world, id).await;
    assert_eq!(
        still["step"].as_u64(),
        Some(step),
        "the pause at step {step} ended before the window did: measure a shorter window\n{}",
        explain(world, id).await
    );
    (weights, Window::between(&before, &after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_splits_traffic_by_its_weights_and_promotes() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(CANARY_HEALTHY).await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(
            &world,
            &id,
            LoadSpec {
                concurrency: 8,
                rate: 500.0,
                ..LoadSpec::default()
            },
        )
        .await;

        world.patch(&id, set_level("debug")).await;
        let mut windows = Vec::new();
        for (step, clone_weight) in HEALTHY_PAUSES {
            let (weights, window) = measure_pause(&world, &id, step, HEALTHY_PAUSE).await;
            eprintln!("canary step {step} (clone {clone_weight} %): weights {weights:?}, {window}");
            windows.push((step, clone_weight, weights, window));
        }
        rollout_ends(&world, &id, Duration::from_secs(30), "healthy canary").await;
        let synced = within(Duration::from_secs(10), async || world.synced(&id)).await;
        assert!(
            synced,
            "not Synced after the canary\n{}",
            explain(&world, &id).await
        );
        let totals = load.stop().await;
        eprintln!("healthy canary: {totals}");

        for (step, clone_weight, weights, window) in &windows {
            let clone = window
                .deltas
                .keys()
                .find(|k| **k != id)
                .expect("the window has the clone")
                .clone();
            let expected: Vec<(String, u64)> = [
                (id.clone(), 100 - clone_weight),
                (clone.clone(), *clone_weight),
            ]
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .collect();
            assert_eq!(weights, &expected, "the status's weights at step {step}");
            assert!(
                window.requests() >= 500,
                "too few requests at step {step} for a 2 % check: {window} (load: {totals})"
            );
            for (backend, weight) in [(&id, 100 - clone_weight), (&clone, *clone_weight)] {
                let share = window.share(backend);
                assert!(
                    (share - weight as f64).abs() <= 2.0,
                    "step {step}: {backend} served {share:.2} %, weight {weight} %: {window}"
                );
            }
        }
        no_failures(&world, &id, &totals, "healthy canary").await;
        left_clean(&world, &id, "debug", false, "healthy canary").await;

        // The audit reads back the canary step by step, with the analysis figures.
        let progress: Vec<AuditRecord> = audit_records(&world, &id)
            .into_iter()
            .filter(|r| r.entry.message.starts_with("rollout progress: "))
            .collect();
        let listed: Vec<&str> = progress.iter().map(|r| r.entry.message.as_str()).collect();
        assert!(
            !listed.is_empty(),
            "no `rollout progress: ...` entries in the audit\n{}",
            explain(&world, &id).await
        );
        for (step, clone_weight, _, _) in &windows {
            assert!(
                progress.iter().any(|r| {
                    let s = &r.entry.details["status"];
                    s["step"].as_u64() == Some(*step)
                        && status_weights(s)
                            .iter()
                            .any(|(b, w)| *b != id && w == clone_weight)
                }),
                "no progress entry for step {step} at {clone_weight} %: {listed:#?}"
            );
        }
        let analysed = progress.iter().find(|r| {
            let a = &r.entry.details["status"]["analysis"];
            a["verdict"] == "pass" && a["requests"].as_u64().is_some_and(|n| n >= 100)
        });
        let analysed = analysed
            .unwrap_or_else(|| panic!("no progress entry with a passed analysis: {listed:#?}"));
        assert!(
            analysed.entry.message.contains("error rate"),
            "{}",
            analysed.entry.message
        );
        let a = &analysed.entry.details["status"]["analysis"];
        assert_eq!(a["errors"], 0, "{a}");
        assert_eq!(a["max_error_rate"], 0.01, "{a}");
    })
    .await;
}

// ----- 3. failing canary ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_30_percent_is_rolled_back_within_its_analysis_interval() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(CANARY_FAILING).await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        world
            .patch(
                &id,
                json!([
                    { "op": "replace", "path": "/logLevel", "value": "debug" },
                    { "op": "add", "path": "/stub", "value": { "failRate": 0.3 } },
                ]),
            )
            .await;
        let analysing = within(Duration::from_secs(20), async || {
            status(&world, &id).await["step"].as_u64() == Some(2)
        })
        .await;
        assert!(
            analysing,
            "the canary never reached its analysis\n{}",
            explain(&world, &id).await
        );
        let since = Instant::now();
        let slack = Duration::from_millis(2500);
        let rolled_back = within(FAILING_INTERVAL + slack, async || {
            world
                .daemon()
                .controller()
                .store()
                .load_rollout(&id)
                .unwrap()
                .is_none()
        })
        .await;
        let took = since.elapsed();
        assert!(
            rolled_back,
            "not rolled back within the analysis interval ({FAILING_INTERVAL:?}) + {slack:?}\n{}",
            explain(&world, &id).await
        );
        eprintln!("failing canary: rolled back {took:?} after the analysis began");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let totals = load.stop().await;
        eprintln!("failing canary: {totals}");

        left_clean(&world, &id, "info", false, "failing canary").await;
        let (degraded, reason, message) = world
            .condition(&id, ConditionType::Degraded)
            .expect("a Degraded condition");
        assert!(degraded, "Degraded is false: {reason}: {message}");
        assert!(
            message.contains("error rate"),
            "Degraded does not name the error rate: {reason}: {message}"
        );
        let v = world.admin_instance(&id).await;
        assert!(
            v["givenUp"].is_object(),
            "the revision was not given up\n{}",
            explain(&world, &id).await
        );
        let (synced, synced_reason, _) = world.condition(&id, ConditionType::Synced).unwrap();
        assert!(
            !synced && synced_reason == "GivenUp",
            "Synced: {synced} {synced_reason}"
        );
        // Traffic never went past the first step, and every failure was the clone's.
        let calls = weight_calls(&world, &id);
        assert!(
            calls
                .iter()
                .flatten()
                .all(|(_, w)| *w == 100 || *w == 80 || *w == 20),
            "weights other than the first step's were set: {calls:?}"
        );
        assert!(totals.injected > 0, "the clone failed no request: {totals}");
        eprintln!(
            "failing canary: {} of {} failures were not the stub's injected ones",
            totals.not_injected(),
            totals.failed
        );
    })
    .await;
}

// ----- 4. approval, then full promotion -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_holds_at_its_approval_pause_and_a_full_promotion_skips_the_rest() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(CANARY_APPROVAL).await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        world.patch(&id, set_level("debug")).await;
        let waits = within(Duration::from_secs(20), async || {
            let s = status(&world, &id).await;
            s["step"].as_u64() == Some(2)
                && s["waiting_for"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("approval"))
        })
        .await;
        assert!(
            waits,
            "the canary never waited for approval\n{}",
            explain(&world, &id).await
        );

        // Nothing moves while it waits: same status, same step count, same weights.
        let held = world.admin_instance(&id).await;
        let weights = endpoint_weights(&world.http, &world.cp_url(), &id).await;
        let clone = held["progress"]["status"]["clone"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(weights, Some(vec![(id.clone(), 90), (clone.clone(), 10)]));
        assert_eq!(held["rollout"]["phase"], "awaiting-approval", "{held:#}");
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let now = world.admin_instance(&id).await;
            assert_eq!(now["progress"]["status"], held["progress"]["status"]);
            assert_eq!(now["rollout"]["step"], held["rollout"]["step"]);
            assert_eq!(
                endpoint_weights(&world.http, &world.cp_url(), &id).await,
                weights
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let revision = held["progress"]["revision"].as_str().unwrap().to_owned();
        let (code, body) = world
            .admin(
                true,
                &format!("/v1/instances/{id}/approve"),
                json!({ "digest": revision }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        // On to the timed pause at 50 %.
        let paused = within(Duration::from_secs(10), async || {
            let s = status(&world, &id).await;
            s["step"].as_u64() == Some(4) && s["paused"] == true
        })
        .await;
        assert!(
            paused,
            "not at the 30 s pause after approval\n{}",
            explain(&world, &id).await
        );
        assert_eq!(
            endpoint_weights(&world.http, &world.cp_url(), &id).await,
            Some(vec![(id.clone(), 50), (clone.clone(), 50)])
        );

        let promoted = Instant::now();
        let (code, body) = world
            .admin(
                true,
                &format!("/v1/instances/{id}/promote"),
                json!({ "full": true }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        let done = within(Duration::from_secs(15), async || {
            world
                .daemon()
                .controller()
                .store()
                .load_rollout(&id)
                .unwrap()
                .is_none()
        })
        .await;
        assert!(
            done,
            "the full promotion did not finish the rollout\n{}",
            explain(&world, &id).await
        );
        eprintln!(
            "approval canary: finished {:?} after the full promotion",
            promoted.elapsed()
        );
        let synced = within(Duration::from_secs(10), async || world.synced(&id)).await;
        assert!(
            synced,
            "not Synced after the promotion\n{}",
            explain(&world, &id).await
        );
        let totals = load.stop().await;
        eprintln!("approval canary: {totals}");

        no_failures(&world, &id, &totals, "approval canary").await;
        left_clean(&world, &id, "debug", false, "approval canary").await;
        // The remaining steps (80 %, its pause) were skipped: straight to the clone.
        let calls = weight_calls(&world, &id);
        let to = |b: &str| vec![(b.to_owned(), 100)];
        let mut expected = vec![
            to(&id),
            vec![(id.clone(), 90), (clone.clone(), 10)],
            vec![(id.clone(), 50), (clone.clone(), 50)],
            to(&clone),
            to(&id),
        ];
        let mut got = calls.clone();
        got.dedup();
        expected.dedup();
        assert_eq!(got, expected, "the endpoint's weights, call by call");
        let audit = world.audit(&id);
        assert!(
            audit.iter().any(|(_, m)| m.contains("promotion (full)")),
            "no audit of the full promotion"
        );
    })
    .await;
}

// ----- 5. aborts ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborting_a_canary_at_50_percent_restores_the_instance_without_a_failed_request() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(CANARY_HOLD_AT_50).await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        world.patch(&id, set_level("debug")).await;
        let at_50 = within(Duration::from_secs(20), async || {
            let s = status(&world, &id).await;
            s["step"].as_u64() == Some(4) && status_weights(&s).iter().all(|(_, w)| *w == 50)
        })
        .await;
        assert!(
            at_50,
            "the canary never held at 50 %\n{}",
            explain(&world, &id).await
        );
        let clone = status(&world, &id).await["clone"]
            .as_str()
            .unwrap()
            .to_owned();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (code, body) = world
            .admin(
                true,
                &format!("/v1/instances/{id}/abort"),
                json!({ "by": "alice" }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        // An abort wins: promoting what is being undone is refused.
        let (code, body) = world
            .admin(
                true,
                &format!("/v1/instances/{id}/promote"),
                json!({ "full": true }),
            )
            .await;
        assert_eq!(code, 409, "{body}");
        let ended = within(Duration::from_secs(20), async || {
            world
                .daemon()
                .controller()
                .store()
                .load_rollout(&id)
                .unwrap()
                .is_none()
        })
        .await;
        assert!(
            ended,
            "the abort did not end the rollout\n{}",
            explain(&world, &id).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let totals = load.stop().await;
        eprintln!("canary abort: {totals}");

        no_failures(&world, &id, &totals, "canary abort at 50 %").await;
        left_clean(&world, &id, "info", false, "canary abort at 50 %").await;
        assert!(
            totals.by_backend.get(&clone).is_some_and(|n| *n > 0),
            "the clone served nothing before the abort: {totals}"
        );
        let v = world.admin_instance(&id).await;
        assert!(
            v["givenUp"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("alice")),
            "the aborted revision is not given up by alice\n{}",
            explain(&world, &id).await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborting_a_blue_green_after_the_switch_restores_the_instance_without_a_failed_request() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(BLUE_GREEN_SLOW_SWITCH).await;
        let id = published_instance(&world, "orders", "blue-green").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        world.patch(&id, set_level("debug")).await;
        let mut seen = Value::Null;
        let switched = within(Duration::from_secs(20), async || {
            seen = status(&world, &id).await;
            let weights = status_weights(&seen);
            weights.len() == 1 && weights[0].0 != id && weights[0].1 == 100
        })
        .await;
        assert!(
            switched,
            "the traffic never switched to the clone\n{}",
            explain(&world, &id).await
        );
        let (code, body) = world
            .admin(
                true,
                &format!("/v1/instances/{id}/abort"),
                json!({ "by": "alice" }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        eprintln!(
            "blue-green abort: requested in phase {} ({})",
            seen["phase"], seen["waiting_for"]
        );
        let clone = seen["clone"].as_str().unwrap().to_owned();
        let ended = within(Duration::from_secs(20), async || {
            world
                .daemon()
                .controller()
                .store()
                .load_rollout(&id)
                .unwrap()
                .is_none()
        })
        .await;
        assert!(
            ended,
            "the abort did not end the rollout\n{}",
            explain(&world, &id).await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let totals = load.stop().await;
        eprintln!("blue-green abort: {totals}");

        no_failures(&world, &id, &totals, "blue-green abort after the switch").await;
        left_clean(
            &world,
            &id,
            "info",
            false,
            "blue-green abort after the switch",
        )
        .await;
        assert!(
            totals.by_backend.get(&clone).is_some_and(|n| *n > 0),
            "the clone served nothing: {totals}"
        );
        assert!(
            world.admin_instance(&id).await["givenUp"].is_object(),
            "the aborted revision is not given up\n{}",
            explain(&world, &id).await
        );
    })
    .await;
}

// ----- setpoint status ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setpoint_status_shows_the_canary_step_and_weights_and_watch_follows_it() {
    bounded(Duration::from_secs(90), true, async {
        let world = world_with(CANARY_HOLD_AT_25).await;
        let id = published_instance(&world, "orders", "canary").await;

        world.patch(&id, set_level("debug")).await;
        let held = within(Duration::from_secs(20), async || {
            status(&world, &id).await["step"].as_u64() == Some(2)
        })
        .await;
        assert!(
            held,
            "the canary never held at step 2\n{}",
            explain(&world, &id).await
        );
        let clone = status(&world, &id).await["clone"]
            .as_str()
            .unwrap()
            .to_owned();

        let out = world.cli(&["status", &id]);
        eprintln!("setpoint status {id}:\n{out}");
        for expected in [
            "canary step 2/3".to_owned(),
            format!("weights {id}=75 {clone}=25"),
            format!("traffic:  endpoint {id}: {id} 75, {clone} 25"),
            "pause 30s at step 2 of 3".to_owned(),
        ] {
            assert!(
                out.contains(&expected),
                "`setpoint status` lacks {expected:?}:\n{out}"
            );
        }

        // `setpoint status --watch` redraws while the rollout moves and returns once it
        // has ended; `setpoint promote --full` ends it.
        let watch = Command::new(setpoint_bin())
            .args(["status", &id, "--watch", "--endpoint"])
            .arg(format!("http://{}", world.daemon().admin_addr()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpoint status --watch runs");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let out = world.cli(&["promote", &id, "--full"]);
        eprintln!("setpoint promote {id} --full:\n{out}");
        rollout_ends(
            &world,
            &id,
            Duration::from_secs(15),
            "promoted from the CLI",
        )
        .await;
        let watched = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || watch.wait_with_output()),
        )
        .await
        .expect("`status --watch` returns once the rollout has ended")
        .unwrap()
        .unwrap();
        let frames = String::from_utf8_lossy(&watched.stdout).into_owned();
        assert!(watched.status.success(), "{frames}");
        let redraws = frames.matches("\x1b[2J").count();
        assert!(redraws >= 3, "{redraws} frames:\n{frames}");
        assert!(frames.contains("canary step 2/3"), "{frames}");
        let last = frames.rsplit("\x1b[2J").next().unwrap();
        assert!(
            !last.contains("rollout:") && last.contains("Synced"),
            "the last frame shows the instance after its rollout:\n{last}"
        );
        left_clean(&world, &id, "debug", false, "promoted from the CLI").await;
    })
    .await;
}

// ----- 6. SIGKILL of the daemon mid-canary ------------------------------------------------

/// What a crash test's failure message needs: the stub, the endpoint, the clones, the
/// daemon's view and audit.
async fn explain_daemon(daemon: &Setpoint, world: &World, id: &str) -> String {
    let v = daemon.instance(id).await;
    let audit = daemon.audit(id).await;
    let tail: Vec<String> = audit[audit.len().saturating_sub(40)..]
        .iter()
        .map(|r| format!("  {}: {}", r["kind"], r["message"]))
        .collect();
    format!(
        "stub serves {:?}\nendpoint {:?}\nclones {:?}\nadmin view: {:#}\naudit:\n{}",
        world.stub_config(id).await.map(|c| c["logLevel"].clone()),
        endpoint_weights(&world.http, &world.cp_url(), id).await,
        clones(world).await,
        json!({
            "conditions": v["conditions"],
            "progress": v["progress"],
            "givenUp": v["givenUp"],
            "lastDecision": v["lastDecision"],
        }),
        tail.join("\n")
    )
}

/// Where a killed daemon left each instance's rollout, read from its database while it
/// is down: `None` without a rollout, else where the strategy's state machine was
/// (`steps` with the step number, `clone-starting`, `promoting`, ...).
fn left_behind(world: &World, ids: &[String]) -> Vec<Option<String>> {
    let store = setpoint::store::Store::open(world.dir.path().join("setpoint.db"))
        .expect("the killed daemon's database opens");
    ids.iter()
        .map(|id| {
            let record = store.load_rollout(id).expect("rollout record reads")?;
            let state = record.state["plugin_state"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .unwrap_or(Value::Null);
            let at = &state["at"];
            Some(match (at["name"].as_str(), at["index"].as_u64()) {
                (None, _) => "no state yet (first step not saved)".to_owned(),
                (Some("steps"), Some(index)) => format!("step {}", index + 1),
                (Some(name), _) => name.to_owned(),
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_resumes_after_the_daemon_is_sigkilled_at_any_step() {
    bounded(Duration::from_secs(150), true, async {
        let world = World::new(&[]).await;
        install_plugins(&world, &["canary", "blue-green"]);
        let mut daemon = Setpoint::start(&world, &settings(CANARY_CRASH)).await;
        let mut ids = Vec::new();
        for name in ["orders", "billing", "search", "sensors"] {
            ids.push(world.create(name, json!({})).await);
        }
        for id in &ids {
            let up = within(Duration::from_secs(30), async || {
                settled_level(&world, &daemon, id, "info").await
            })
            .await;
            assert!(
                up,
                "{id} did not come up\n{}",
                explain_daemon(&daemon, &world, id).await
            );
        }
        let mut loads = Vec::new();
        for id in &ids {
            label(&world.http, &world.cp_url(), id, "canary").await;
            set_endpoint(&world.http, &world.cp_url(), id, &[(id, 100)]).await;
            loads.push(Load::start(
                &world.cp_url(),
                id,
                LoadSpec {
                    concurrency: 2,
                    rate: 40.0,
                    ..LoadSpec::default()
                },
            ));
        }

        // (level, ms between the instances' patches, ms from the last patch to the first
        // kill, ms the restarted daemon runs until the second kill). A canary here lasts
        // about 4.5 s; the offsets put the instances at different points of it at each kill,
        // from before the clone exists to the scale-down.
        let rounds = [
            ("debug", 150, 0, 1500),
            ("warn", 700, 50, 700),
            ("error", 300, 3300, 200),
            ("trace", 500, 1000, 1200),
            ("info", 100, 3900, 0),
            ("warn", 20, 0, 50),
            ("debug", 250, 2000, 400),
            ("info", 600, 300, 900),
        ];
        let mut trials: Vec<String> = Vec::new();
        let started = Instant::now();
        for (round, (level, stagger, first_kill, second_kill)) in rounds.into_iter().enumerate() {
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(stagger)).await;
                }
                world.patch(id, set_level(level)).await;
            }
            tokio::time::sleep(Duration::from_millis(first_kill)).await;
            for kill in 0..2 {
                daemon.kill();
                for (id, at) in ids.iter().zip(left_behind(&world, &ids)) {
                    if let Some(at) = at {
                        eprintln!("round {round} kill {kill}: {id} at {at}");
                        trials.push(at);
                    }
                }
                daemon = Setpoint::start(&world, &settings(CANARY_CRASH)).await;
                if kill == 0 {
                    tokio::time::sleep(Duration::from_millis(second_kill)).await;
                }
            }
            for id in &ids {
                let ok = within(Duration::from_secs(30), async || {
                    settled(&world, &daemon, id, level, true).await
                })
                .await;
                assert!(
                    ok,
                    "round {round}: {id} did not settle on {level} after the kills\n{}",
                    explain_daemon(&daemon, &world, id).await
                );
            }
            let none = within(Duration::from_secs(10), async || {
                clones(&world).await.is_empty()
            })
            .await;
            assert!(
                none,
                "round {round}: clones left: {:?}",
                clones(&world).await
            );
        }
        let mut totals = Vec::new();
        for load in loads {
            totals.push(load.stop().await);
        }
        let mut by_point = std::collections::BTreeMap::<String, usize>::new();
        for at in &trials {
            *by_point.entry(at.clone()).or_default() += 1;
        }
        eprintln!(
            "crash: {} trials (a rollout under way at a SIGKILL) in {:.1} s, at: {by_point:?}",
            trials.len(),
            started.elapsed().as_secs_f64()
        );
        for (id, t) in ids.iter().zip(&totals) {
            eprintln!("crash: traffic of {id}: {t}");
        }
        // Replays of the first step make clones nobody recorded; the sweep deleted them.
        let mut cloned = 0;
        let mut leaked = 0;
        for id in &ids {
            for r in daemon.audit(id).await {
                let message = r["message"].as_str().unwrap_or("");
                let clone_call = message.contains("called clone-instance on");
                cloned += usize::from(clone_call && message.ends_with(": ok"));
                leaked += usize::from(message.starts_with("leaked clone "));
            }
        }
        eprintln!(
            "crash: {} rollouts, {cloned} clones created, {leaked} deleted by the leak sweep",
            rounds.len() * ids.len()
        );
        // A repeated clone-instance never changes the outcome: every clone beyond one per
        // rollout was found and deleted by the sweep (clones whose call a kill kept out
        // of the audit only make the left side smaller).
        assert!(
            cloned <= rounds.len() * ids.len() + leaked,
            "{cloned} clones created for {} rollouts, only {leaked} swept",
            rounds.len() * ids.len()
        );
        assert!(
            trials.len() >= 20,
            "only {} trials: {by_point:?}",
            trials.len()
        );
        for (id, t) in ids.iter().zip(&totals) {
            assert_eq!(t.failed, 0, "{id}: requests failed across the kills: {t}");
        }
    })
    .await;
}

/// In sync on `level` under the default rule (before the label): no endpoint yet.
async fn settled_level(world: &World, daemon: &Setpoint, id: &str, level: &str) -> bool {
    let v = daemon.instance(id).await;
    v["rollout"].is_null()
        && v["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type_"] == "Synced" && c["status"] == true && c["reason"] == "InSync")
        })
        && world
            .stub_config(id)
            .await
            .is_some_and(|c| c["logLevel"] == level)
}

// ----- 8. the world moves under a canary ----------------------------------------------------

/// A canary with a long pause at 25 %, for a change that arrives while it holds there.
const CANARY_SUPERSEDED: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "500ms", health_poll_ms = 100, steps = [
  { weight = 25 }, { pause = "30s" },
  { weight = 100 },
] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_during_a_canary_is_undone_by_the_canary_then_rolled_out() {
    bounded(Duration::from_secs(90), false, async {
        let world = world_with(CANARY_SUPERSEDED).await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        world.patch(&id, set_level("debug")).await;
        let holding = within(Duration::from_secs(20), async || {
            status_weights(&status(&world, &id).await)
                .iter()
                .any(|(b, w)| *b != id && *w == 25)
        })
        .await;
        assert!(
            holding,
            "the canary never held at 25 %\n{}",
            explain(&world, &id).await
        );
        let first_clone = status(&world, &id).await["clone"]
            .as_str()
            .unwrap()
            .to_owned();

        // A newer revision while the first holds at 25 %: the first is undone by the
        // canary itself (traffic back to the instance before its clone goes), nothing is
        // given up, and the newer one is rolled out with a clone of its own.
        world.patch(&id, set_level("warn")).await;
        let second = within(Duration::from_secs(20), async || {
            let s = status(&world, &id).await;
            s["clone"].as_str().is_some_and(|c| c != first_clone)
                && status_weights(&s).iter().any(|(b, w)| *b != id && *w == 25)
        })
        .await;
        assert!(
            second,
            "the newer revision's canary never started\n{}",
            explain(&world, &id).await
        );
        let audit = world.audit(&id);
        assert!(
            audit
                .iter()
                .any(|(_, m)| m.contains("its strategy undoes it")),
            "no audit of the supersede\n{}",
            explain(&world, &id).await
        );
        assert!(
            audit
                .iter()
                .any(|(_, m)| m.contains("undone by its strategy")),
            "the first rollout was not undone by its strategy\n{}",
            explain(&world, &id).await
        );
        assert!(
            world.admin_instance(&id).await["givenUp"].is_null(),
            "a superseded revision is not given up"
        );
        assert!(
            !clones(&world).await.iter().any(|(c, _)| *c == first_clone),
            "the first canary's clone is left"
        );

        let (code, body) = world
            .admin(
                true,
                &format!("/v1/instances/{id}/promote"),
                json!({ "full": true }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        rollout_ends(&world, &id, Duration::from_secs(30), "superseded canary").await;
        let totals = load.stop().await;
        eprintln!("superseded canary: {totals}");
        no_failures(&world, &id, &totals, "superseded canary").await;
        left_clean(&world, &id, "warn", false, "superseded canary").await;

        // Traffic left the first clone before it was deleted: no weights call after the
        // undo names it.
        let calls = weight_calls(&world, &id);
        let last_with_first = calls
            .iter()
            .rposition(|c| c.iter().any(|(b, _)| *b == first_clone))
            .expect("the first clone got traffic");
        assert_eq!(
            calls[last_with_first + 1],
            vec![(id.clone(), 100)],
            "after the first clone's last weights, all traffic went back to the instance: {calls:?}"
        );
    })
    .await;
}

/// A canary whose clone never becomes healthy (its configuration says so) and would wait
/// a minute for it, under a rule that allows 3 s without progress.
const CANARY_STUCK: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
progress_deadline = "3s"
strategy_params = { drain = "300ms", health_poll_ms = 100, health_deadline_ms = 60000, steps = [
  { weight = 25 }, { pause = "1s" },
  { weight = 100 },
] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_stops_moving_is_aborted_at_its_progress_deadline() {
    bounded(Duration::from_secs(60), false, async {
        let world = world_with(CANARY_STUCK).await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        let started = Instant::now();
        world
            .patch(
                &id,
                json!([
                    { "op": "replace", "path": "/logLevel", "value": "debug" },
                    { "op": "add", "path": "/stub", "value": { "unhealthy": true } }
                ]),
            )
            .await;
        rollout_ends(&world, &id, Duration::from_secs(20), "stuck canary").await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(12),
            "aborted after {took:?}, expected soon after the 3 s deadline"
        );
        let (degraded, reason, message) = world.condition(&id, ConditionType::Degraded).unwrap();
        assert!(degraded, "not Degraded: {reason}: {message}");
        assert_eq!(reason, "ProgressDeadlineExceeded", "{message}");
        assert!(message.contains("no progress for 3s"), "{message}");
        assert!(
            !world.admin_instance(&id).await["givenUp"].is_null(),
            "the revision is given up"
        );
        assert!(
            world
                .audit(&id)
                .iter()
                .any(|(_, m)| m.contains("made no progress for 3s")),
            "no audit of the deadline"
        );
        let totals = load.stop().await;
        no_failures(&world, &id, &totals, "stuck canary").await;
        left_clean(&world, &id, "info", false, "stuck canary").await;
    })
    .await;
}

/// A canary held at the before-apply gate, with a pause for approval among its steps.
const CANARY_PLANNED: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
approval = "before-apply"
strategy_params = { drain = "300ms", health_poll_ms = 100, steps = [
  { weight = 10 }, { pause = "1s" },
  { pause = "approval" },
  { weight = 50 }, { pause = "1s" },
] }
"#;

/// The weights a plan's or a rollout's calls set, with the clone's id written `CLONE`.
fn with_clone_named(calls: Vec<Vec<(String, u64)>>, id: &str) -> Vec<Vec<(String, u64)>> {
    calls
        .into_iter()
        .map(|c| {
            c.into_iter()
                .map(|(b, w)| (if b == id { b } else { "CLONE".to_owned() }, w))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setpoint_diff_shows_the_whole_canary_plan_and_the_rollout_follows_it() {
    bounded(Duration::from_secs(60), false, async {
        let world = world_with(CANARY_PLANNED).await;
        let id = published_instance(&world, "orders", "canary").await;

        world.patch(&id, set_level("debug")).await;
        let gated = within(Duration::from_secs(10), async || {
            world
                .condition(&id, ConditionType::AwaitingApproval)
                .is_some_and(|c| c.0)
        })
        .await;
        assert!(gated, "the change never waited at the before-apply gate");

        let (code, plan) = world
            .admin(false, &format!("/v1/instances/{id}/diff"), Value::Null)
            .await;
        assert_eq!(code, 200, "{plan}");
        assert_eq!(
            plan["decision"]["decision"], "await_approval_before_apply",
            "{plan}"
        );
        let entries: Vec<(String, String)> = plan["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["call"].as_str().unwrap().to_owned(),
                    c["target"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(c, _)| c.as_str()).collect();
        for needed in [
            "clone-instance",
            "set-traffic-weights",
            "wait",
            "await-approval",
            "stop",
            "start",
            "delete-clone",
        ] {
            assert!(
                names.contains(&needed),
                "the plan lacks {needed}: {names:?}"
            );
        }
        assert!(
            plan["outcome"].as_str().unwrap_or("").starts_with("done"),
            "the plan runs to the end: {plan}"
        );
        let planned: Vec<Vec<(String, u64)>> = plan["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["call"] == "set-traffic-weights")
            .map(|c| {
                c["weights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| {
                        (
                            w["instanceId"].as_str().unwrap().to_owned(),
                            w["weight"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .collect();
        // Nothing was sent for the plan.
        assert!(
            weight_calls(&world, &id).is_empty(),
            "the plan sent weights"
        );
        assert!(clones(&world).await.is_empty(), "the plan made a clone");

        // Approve the change, then the canary's own pause for approval.
        for gate in ["before apply", "the canary's pause"] {
            let (code, body) = world
                .admin(true, &format!("/v1/instances/{id}/approve"), json!({}))
                .await;
            assert_eq!(code, 200, "approving {gate}: {body}");
            if gate == "before apply" {
                let paused = within(Duration::from_secs(20), async || {
                    status(&world, &id).await["waiting_for"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("approval"))
                })
                .await;
                assert!(
                    paused,
                    "the canary never paused for approval\n{}",
                    explain(&world, &id).await
                );
            }
        }
        rollout_ends(&world, &id, Duration::from_secs(30), "planned canary").await;
        left_clean(&world, &id, "debug", false, "planned canary").await;
        assert_eq!(
            with_clone_named(weight_calls(&world, &id), &id),
            with_clone_named(planned.clone(), &id),
            "the rollout set the weights the plan showed, in order"
        );
        // The audit has the plan too, written after the rollout's first step.
        let records = audit_records(&world, &id);
        let plans: Vec<&AuditRecord> = records
            .iter()
            .filter(|r| r.entry.message.starts_with("rollout plan of revision"))
            .collect();
        assert_eq!(plans.len(), 1, "one plan per rollout");
        let audited: Vec<Vec<(String, u64)>> = plans[0].entry.details["plan"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["call"] == "set-traffic-weights")
            .map(|c| {
                c["weights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| {
                        (
                            w["instanceId"].as_str().unwrap().to_owned(),
                            w["weight"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            with_clone_named(audited, &id),
            with_clone_named(planned, &id),
            "the audited plan is the one `diff` showed: {}",
            plans[0].entry.message
        );
    })
    .await;
}

// ----- 10. analysis by a PromQL query, against a real Prometheus --------------------------

/// A canary analysed by the named query `error-rate`, which Prometheus answers from what
/// it scraped of the clone (found through the control plane's service discovery).
fn canary_promql(prometheus: &str) -> String {
    format!(
        r#"
[metrics.prometheus]
url = "{prometheus}"
timeout = "2s"

[metrics.queries]
error-rate = 'sum(rate(drasi_stub_errors_total{{instance_id="{{{{instance.id}}}}"}}[4s])) / sum(rate(drasi_stub_requests_total{{instance_id="{{{{instance.id}}}}"}}[4s]))'

[[policy.rules]]
name = "canary"
match = {{ labels = {{ delivery = "canary" }} }}
strategy = "canary"
strategy_params = {{ drain = "1s", health_poll_ms = 100, steps = [
  {{ weight = 30 }},
  {{ analysis = {{ interval = "3s", query = "error-rate", max = 0.1, inconclusive_limit = 6 }} }},
  {{ weight = 100 }},
] }}
"#
    )
}

/// The number after `` `error-rate` `` in a failure reason: `clone's `error-rate` 0.31 > ...`.
fn reported_rate(message: &str) -> Option<f64> {
    let rest = message.split("`error-rate` ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_is_rolled_back_on_a_promql_error_rate_and_a_good_change_passes_it() {
    bounded(Duration::from_secs(120), false, async {
        let mut world = World::new(&[]).await;
        let targets = format!("{}/api/extensions/prometheus/targets", world.cp_url());
        let Some(prometheus) = Prometheus::start_discovering(&targets).await else {
            return;
        };
        install_plugins(&world, &["canary"]);
        world
            .start_daemon("1s", &settings(&canary_promql(&prometheus.url)))
            .await;
        let id = published_instance(&world, "orders", "canary").await;
        let load = load_on(&world, &id, LoadSpec::default()).await;

        // A change that fails 30 % of the clone's requests: Prometheus sees it, the
        // analysis judges the query's value, and the canary is rolled back.
        world
            .patch(
                &id,
                json!([
                    { "op": "replace", "path": "/logLevel", "value": "debug" },
                    { "op": "add", "path": "/stub", "value": { "failRate": 0.3 } },
                ]),
            )
            .await;
        rollout_ends(
            &world,
            &id,
            Duration::from_secs(40),
            "failing PromQL canary",
        )
        .await;
        left_clean(&world, &id, "info", false, "failing PromQL canary").await;
        let (degraded, reason, message) = world
            .condition(&id, ConditionType::Degraded)
            .expect("a Degraded condition");
        assert!(degraded, "Degraded is false: {reason}: {message}");
        let rate = reported_rate(&message).unwrap_or_else(|| {
            panic!("Degraded does not name the query's value: {reason}: {message}")
        });
        assert!(
            message.contains("> max 0.1") && (0.15..=0.5).contains(&rate),
            "the clone's error rate as Prometheus measured it should be near 0.3: {message}"
        );
        let v = world.admin_instance(&id).await;
        assert!(
            v["givenUp"].is_object(),
            "the revision was not given up\n{}",
            explain(&world, &id).await
        );
        // Prometheus really scraped the failures, from the clone it discovered (not the
        // instance). Counted, not re-derived as a rate: the clone lived a few seconds,
        // and whether two of its scrapes fall in one short rate window is timing.
        let errors = prometheus
            .query(r#"max by (instance_id) (max_over_time(drasi_stub_errors_total[5m]))"#)
            .await
            .expect("Prometheus answers");
        let failing: Vec<String> = errors["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            })
            .filter_map(|r| Some(r["metric"]["instance_id"].as_str()?.to_owned()))
            .collect();
        assert!(
            !failing.is_empty() && !failing.contains(&id),
            "Prometheus should hold failed requests of the clone only: {errors}"
        );

        // A good change passes the same analysis and is promoted.
        world
            .patch(&id, json!([{ "op": "remove", "path": "/stub" }]))
            .await;
        rollout_ends(
            &world,
            &id,
            Duration::from_secs(40),
            "healthy PromQL canary",
        )
        .await;
        left_clean(&world, &id, "debug", false, "healthy PromQL canary").await;
        // The rollout's end is recorded before the next pass verifies the instance and
        // says `Synced`, so that condition is waited for, not read once.
        let synced = within(Duration::from_secs(10), async || {
            world
                .condition(&id, ConditionType::Synced)
                .is_some_and(|(status, _, _)| status)
        })
        .await;
        assert!(
            synced,
            "the good change is not synced\n{}",
            explain(&world, &id).await
        );
        let passed = audit_records(&world, &id).iter().any(|r| {
            r.entry.message.contains("analysis") && r.entry.message.contains("`error-rate`")
        });
        let totals = load.stop().await;
        eprintln!("PromQL canary: {totals}");
        assert!(
            passed,
            "no audit entry shows the query's verdict\n{}",
            explain(&world, &id).await
        );
        world.stop_daemon().await;
    })
    .await;
}
