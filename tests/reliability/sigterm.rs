//! Reliability suite, item 5: SIGTERM while rollouts are in flight. A real `setpoint run`
//! process, the reference control plane on loopback with real stub processes, and a
//! fleet under three strategies: `restart` (stop, start, health waits), `canary` (clone,
//! weights, pauses, promotion, clone deleted) and `blue-green` (clone, switch, drain,
//! scale-down). Each round changes every instance, then SIGTERMs the daemon at a
//! different moment of the rollouts.
//!
//! Each time: the daemon exits 0 within its grace period (`controller.shutdown_grace`);
//! nothing is half-done (no call left in the intent journal to be reported in doubt,
//! every rollout left is saved with its step, every clone on the control plane belongs to
//! a saved rollout, every endpoint sends its traffic only to instances that run); and
//! after a restart every rollout completes: every instance runs its desired
//! configuration, no clone is left, every endpoint is 100 % on its instance.

use std::time::{Duration, Instant};

use serde_json::json;
use setpoint::store::Store;
use setpoint_tests::figures::{Figures, long_run, record};
use setpoint_tests::lifecycle::{clones, label, settings_with_cache, settled};
use setpoint_tests::process::Setpoint;
use setpoint_tests::setpoint_bin;
use setpoint_tests::traffic::{endpoint_weights, install_plugins, set_endpoint};
use setpoint_tests::world::{World, set_level, within};

/// The daemon's grace period for in-flight reconciles at shutdown.
const GRACE: Duration = Duration::from_secs(10);

const POLICY: &str = r#"
[controller]
shutdown_grace = "10s"

[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "300ms", health_poll_ms = 100, steps = [
  { weight = 20 }, { pause = "500ms" },
  { weight = 50 }, { pause = "500ms" },
] }

[[policy.rules]]
name = "blue-green"
match = { labels = { delivery = "blue-green" } }
strategy = "blue-green"
strategy_params = { drain = "500ms", scale_down_delay = "500ms", health_poll_ms = 100 }

[[policy.rules]]
name = "restart"
match = {}
strategy = "restart"
strategy_params = { health_poll_ms = 200 }
"#;

/// The fleet: (name, rule label, or none for `restart`).
const FLEET: [(&str, Option<&str>); 5] = [
    ("orders", None),
    ("billing", None),
    ("search", Some("canary")),
    ("sensors", Some("canary")),
    ("alerts", Some("blue-green")),
];

/// When SIGTERM lands, in milliseconds after the round's changes: before the first
/// step, during the first steps (stop/start, clone, first weights), in the pauses and
/// health waits, around promotion and the drains.
const MOMENTS_MS: [u64; 7] = [0, 100, 300, 700, 1200, 1800, 2600];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_rollouts_checkpoints_and_every_rollout_completes_after_restart() {
    tokio::task::spawn_blocking(setpoint_bin)
        .await
        .expect("building the setpoint binary");
    let limit = Duration::from_secs(if long_run() { 600 } else { 180 });
    tokio::time::timeout(limit, run())
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

async fn run() {
    let started = Instant::now();
    let world = World::new(&[]).await;
    install_plugins(&world, &["canary", "blue-green"]);
    let config = settings_with_cache(POLICY);
    let mut daemon = Setpoint::start(&world, &config).await;

    // (id, published at an endpoint)
    let mut fleet: Vec<(String, bool)> = Vec::new();
    for (name, rule) in FLEET {
        fleet.push((world.create(name, json!({})).await, rule.is_some()));
    }
    for ((id, _), (_, rule)) in fleet.iter().zip(FLEET) {
        let up = within(Duration::from_secs(30), async || {
            settled(&world, &daemon, id, "info", false).await
        })
        .await;
        assert!(
            up,
            "{id} did not come up\n{}",
            daemon.explain(&world, id, "info").await
        );
        if let Some(rule) = rule {
            label(&world, id, "delivery", rule).await;
            set_endpoint(&world.http, &world.cp_url(), id, &[(id, 100)]).await;
        }
    }

    let levels = ["debug", "warn", "error", "trace"];
    let rounds = if long_run() { 3 } else { 1 };
    let db = world.dir.path().join("setpoint.db");
    let mut exits = Vec::new();
    let mut in_flight_at_term = 0usize;
    let mut saved_rollouts = 0usize;
    let mut clones_kept = 0usize;
    let mut round = 0usize;
    for _ in 0..rounds {
        for moment in MOMENTS_MS {
            let level = levels[round % levels.len()];
            round += 1;
            let what = format!("round {round} (SIGTERM {moment} ms after the changes to {level})");
            for (id, _) in &fleet {
                world.patch(id, set_level(level)).await;
            }
            tokio::time::sleep(Duration::from_millis(moment)).await;
            let mut rolling = 0;
            for (id, _) in &fleet {
                if !daemon.instance(id).await["rollout"].is_null() {
                    rolling += 1;
                }
            }
            in_flight_at_term += rolling;

            // Exits 0 within its grace period.
            let exited = daemon.terminate(GRACE + Duration::from_secs(5)).await;
            let Some((status, took)) = exited else {
                panic!("{what}: the daemon did not exit within {GRACE:?} + 5 s of SIGTERM");
            };
            assert!(status.success(), "{what}: the daemon exited with {status}");
            assert!(
                took < GRACE,
                "{what}: the daemon took {took:?} to exit, more than its grace period {GRACE:?}"
            );
            exits.push(took);

            // Nothing half-done.
            {
                let store = Store::open(&db).expect("the database opens");
                let pending = store.intents().expect("the journal reads");
                assert!(
                    pending.is_empty(),
                    "{what}: calls left in the intent journal, to be reported in doubt: {pending:?}"
                );
                let mut states = Vec::new();
                for (id, _) in &fleet {
                    if let Some(r) = store.load_rollout(id).expect("rollout record reads") {
                        saved_rollouts += 1;
                        eprintln!("{what}: {id} saved at step {} ({:?})", r.step, r.phase);
                        states.push((id.clone(), r.state.to_string()));
                    }
                }
                for (clone, owner) in clones(&world).await {
                    clones_kept += 1;
                    let owned = states
                        .iter()
                        .any(|(id, state)| *id == owner && state.contains(&clone));
                    assert!(
                        owned,
                        "{what}: clone {clone} of {owner} is on the control plane but no saved rollout holds it"
                    );
                }
                for (id, published) in &fleet {
                    if !published {
                        continue;
                    }
                    let weights = endpoint_weights(&world.http, &world.cp_url(), id)
                        .await
                        .unwrap_or_default();
                    assert!(
                        !weights.is_empty(),
                        "{what}: endpoint {id} sends its traffic nowhere"
                    );
                    for (backend, weight) in &weights {
                        // Running, or running while its desired configuration changed.
                        let status = world.status(backend).await;
                        assert!(
                            status == "Running" || status == "ConfigurationChanged",
                            "{what}: endpoint {id} sends {weight} to {backend}, which does not run (status {status}; {weights:?})"
                        );
                    }
                }
            }

            // After a restart every rollout completes.
            daemon = Setpoint::start(&world, &config).await;
            for (id, published) in &fleet {
                let ok = within(Duration::from_secs(30), async || {
                    settled(&world, &daemon, id, level, *published).await
                })
                .await;
                assert!(
                    ok,
                    "{what}: {id} did not complete its rollout after the restart\n{}",
                    daemon.explain(&world, id, level).await
                );
            }
            let none = within(Duration::from_secs(10), async || {
                clones(&world).await.is_empty()
            })
            .await;
            assert!(none, "{what}: clones left: {:?}", clones(&world).await);
            for (id, _) in &fleet {
                let doubts = daemon
                    .audit(id)
                    .await
                    .iter()
                    .filter(|r| {
                        r["message"]
                            .as_str()
                            .or(r["entry"]["message"].as_str())
                            .is_some_and(|m| m.starts_with("in doubt:"))
                    })
                    .count();
                assert_eq!(doubts, 0, "{what}: {}", daemon.audit_tail(id).await);
            }
        }
    }
    let slowest = exits.iter().max().copied().unwrap_or_default();
    record(&Figures {
        load: "5 instances (2 restart, 2 canary, 1 blue-green), every one changed each round"
            .to_owned(),
        faults: format!(
            "SIGTERM at {} moments of the rollouts ({} rounds: {:?} ms after the changes)",
            MOMENTS_MS.len(),
            round,
            MOMENTS_MS
        ),
        trials: format!("{round} SIGTERMs, {in_flight_at_term} rollouts in flight at them"),
        notes: format!(
            "exit within the {GRACE:?} grace every time (slowest {:.2} s); {saved_rollouts} rollouts saved at a step, {clones_kept} clones held by them; no call in doubt; every rollout completed after the restart; run {:.0} s",
            slowest.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
        ..Figures::new("sigterm_rollouts")
    });
}
