//! The daemon dies between a call and its record: a real `setpoint run` process is
//! SIGKILLed at different moments of a rollout (no graceful shutdown, no checkpoint) and
//! started again on the same SQLite file. Real control plane on loopback, real stub
//! processes, the real plugins; everything the tests read of the daemon goes through its
//! admin API, as an operator's would.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint_tests::process::Setpoint;
use setpoint_tests::relay::Relay;
use setpoint_tests::setpoint_bin;
use setpoint_tests::world::{World, set_level, within};

/// `restart` waits long between health probes, so a rollout spends most of its life
/// between steps and a kill can land before, during or after any of them.
const SLOW_HEALTH: &str = r#"
[[policy.rules]]
name = "slow"
match = {}
strategy_params = { health_poll_ms = 700 }
"#;

/// What a failure message needs: the instance as the admin API shows it, and its audit.
async fn explain(daemon: &Setpoint, world: &World, id: &str) -> String {
    let status = daemon.instance(id).await;
    format!(
        "desired logLevel {}, stub serves {:?}\nadmin view: {:#}\naudit:\n{}",
        desired_level(world, id).await,
        world.stub_config(id).await.map(|c| c["logLevel"].clone()),
        json!({
            "status": status["instance"]["status"],
            "conditions": status["conditions"],
            "rollout": status["rollout"],
            "givenUp": status["givenUp"],
            "abortRequested": status["abortRequested"],
            "lastDecision": status["lastDecision"],
        }),
        daemon.audit_tail(id).await
    )
}

/// When a test kills the daemon, after a change.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as the admin API shows a rollout record.
    RolloutSeen,
    /// As soon as the control plane reports the instance `Stopped`.
    InstanceStopped,
    /// The next change arrives before the restart's stop; the daemon dies after its stop
    /// was answered, before its start reached the control plane (which never gets it).
    StartNeverSent,
    /// The daemon dies with its start in flight; the start reaches the control plane
    /// after the death, so nothing of it is recorded.
    StartLandsAfterDeath,
    /// This many milliseconds after the change.
    After(u64),
}

/// What a killed daemon left: its rollout record (read from its database while it is
/// down) and the instance's status in the control plane.
async fn left_behind(world: &World, id: &str) -> String {
    let rollout = {
        let store = setpoint::store::Store::open(world.dir.path().join("setpoint.db"))
            .expect("the killed daemon's database opens");
        store.load_rollout(id).expect("rollout record reads")
    };
    let rollout = match rollout {
        None => "no rollout".to_owned(),
        Some(r) => format!(
            "rollout of logLevel {} at step {} ({:?})",
            r.state["desired"]["logLevel"], r.step, r.phase
        ),
    };
    format!("{rollout}, instance {}", world.status(id).await)
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type_"] == type_)
}

/// Synced true, as the daemon reports it (whatever the reason).
fn synced(status: &Value) -> bool {
    condition(status, "Synced").is_some_and(|c| c["status"] == true)
}

/// Synced because it was observed running its desired configuration, no rollout left.
fn in_sync(status: &Value) -> bool {
    status["rollout"].is_null()
        && condition(status, "Synced")
            .is_some_and(|c| c["status"] == true && c["reason"] == "InSync")
}

async fn desired_level(world: &World, id: &str) -> Value {
    world
        .get(&format!("/api/configuration/instances/{id}"))
        .await["logLevel"]
        .clone()
}

/// Wait until the instance runs `level`, in sync and with no rollout; fail with what the
/// daemon says otherwise.
async fn converges(world: &World, daemon: &Setpoint, id: &str, level: &str, what: &str) {
    let ok = within(Duration::from_secs(30), async || {
        world.serves(id, level).await && in_sync(&daemon.instance(id).await)
    })
    .await;
    assert!(
        ok,
        "{what}: not converged on logLevel={level} within 30 s\n{}",
        explain(daemon, world, id).await
    );
}

/// Run a test body with an overall bound, so a hang fails instead of blocking the run.
/// The `setpoint` binary is built first, outside the bound: on a fresh checkout that
/// build takes minutes, and it is not what the bound is for.
async fn bounded(limit: Duration, body: impl Future<Output = ()>) {
    tokio::task::spawn_blocking(setpoint_bin)
        .await
        .expect("building the setpoint binary");
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_rollout_resumes_and_converges_on_the_last_desired_configuration() {
    bounded(Duration::from_secs(300), async {
        let world = World::new(&[]).await;
        // The daemon reaches the control plane through a relay, so a test can hold one
        // of its calls; the test itself talks to the control plane directly.
        let relay = Relay::start(world.cp_addr).await;
        let mut daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        let id = world.create("orders", json!({})).await;
        converges(&world, &daemon, &id, "info", "creation").await;
        let stop_call = format!("POST /api/server/instances/{id}/stop ");
        let start_call = format!("POST /api/server/instances/{id}/start ");

        // (when the kill lands, the change the rollout is for, the change after it)
        let rounds = [
            (Moment::RolloutSeen, "debug", "warn"),
            (Moment::InstanceStopped, "error", "info"),
            (Moment::StartNeverSent, "warn", "trace"),
            (Moment::StartLandsAfterDeath, "debug", "error"),
            (Moment::After(0), "trace", "debug"),
            (Moment::After(30), "warn", "error"),
            (Moment::After(100), "info", "trace"),
            (Moment::After(300), "debug", "info"),
            (Moment::After(900), "error", "warn"),
        ];
        for (moment, during, last) in rounds {
            let round = format!("killed {moment:?} (rollout of {during}, then {last})");
            let wait = Duration::from_secs(10);
            let mut last_sent = false;
            let mut held_start = None;
            match moment {
                Moment::RolloutSeen => {
                    world.patch(&id, set_level(during)).await;
                    let started = within(wait, async || {
                        !daemon.instance(&id).await["rollout"].is_null()
                    })
                    .await;
                    assert!(
                        started,
                        "{round}: no rollout within 10 s\n{}",
                        explain(&daemon, &world, &id).await
                    );
                }
                Moment::InstanceStopped => {
                    world.patch(&id, set_level(during)).await;
                    // Polled without a pause: it is stopped only until the start lands.
                    let until = Instant::now() + wait;
                    while world.status(&id).await != "Stopped" {
                        assert!(
                            Instant::now() < until,
                            "{round}: the instance was never seen stopped\n{}",
                            explain(&daemon, &world, &id).await
                        );
                    }
                }
                Moment::StartNeverSent => {
                    let stop = relay.hold(stop_call.clone());
                    world.patch(&id, set_level(during)).await;
                    assert!(stop.seen(wait).await, "{round}: no stop call");
                    // The next change lands while the rollout's stop is on its way.
                    world.patch(&id, set_level(last)).await;
                    last_sent = true;
                    let start = relay.hold(start_call.clone());
                    stop.forward();
                    assert!(start.seen(wait).await, "{round}: no start call");
                    assert_eq!(world.status(&id).await, "Stopped", "{round}");
                    held_start = Some((start, false));
                }
                Moment::StartLandsAfterDeath => {
                    let start = relay.hold(start_call.clone());
                    world.patch(&id, set_level(during)).await;
                    assert!(start.seen(wait).await, "{round}: no start call");
                    held_start = Some((start, true));
                }
                Moment::After(ms) => {
                    world.patch(&id, set_level(during)).await;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            daemon.kill();
            if let Some((start, forward)) = held_start {
                if forward {
                    start.forward();
                    let landed = within(wait, async || {
                        world.status(&id).await == "Running" && world.serves(&id, during).await
                    })
                    .await;
                    assert!(
                        landed,
                        "{round}: the start sent before the kill never landed"
                    );
                } else {
                    start.drop_it();
                }
            }
            eprintln!("{round}: left behind {}", left_behind(&world, &id).await);
            if !last_sent {
                // The world moves on while the daemon is down.
                world.patch(&id, set_level(last)).await;
            }
            daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
            converges(&world, &daemon, &id, last, &round).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abort_requested_just_before_a_sigkill_is_carried_out_after_restart() {
    bounded(Duration::from_secs(180), async {
        let world = World::new(&[]).await;
        let daemon = Setpoint::start(&world, SLOW_HEALTH).await;
        let id = world.create("orders", json!({})).await;
        converges(&world, &daemon, &id, "info", "creation").await;

        world.patch(&id, set_level("debug")).await;
        // Under way: the restart has sent its stop and start and waits for health.
        let under_way = within(Duration::from_secs(10), async || {
            daemon.instance(&id).await["rollout"]["step"]
                .as_u64()
                .is_some_and(|s| s >= 1)
        })
        .await;
        assert!(
            under_way,
            "the rollout never reached its health wait\n{}",
            explain(&daemon, &world, &id).await
        );
        let (code, body) = daemon
            .post(
                &format!("/v1/instances/{id}/abort"),
                json!({ "by": "alice" }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        daemon.kill();

        let daemon = Setpoint::start(&world, SLOW_HEALTH).await;
        let aborted = within(Duration::from_secs(20), async || {
            let status = daemon.instance(&id).await;
            world.serves(&id, "info").await
                && status["rollout"].is_null()
                && status["abortRequested"].is_null()
                && condition(&status, "Synced")
                    .is_some_and(|c| c["status"] == false && c["reason"] == "GivenUp")
        })
        .await;
        assert!(
            aborted,
            "the abort was not carried out after the restart\n{}",
            explain(&daemon, &world, &id).await
        );
        let given_up = daemon.instance(&id).await["givenUp"].clone();
        assert!(
            given_up["reason"]
                .as_str()
                .is_some_and(|r| r.contains("alice")),
            "{given_up}"
        );

        // Killed again and restarted: several resyncs later, the aborted revision is
        // still given up and nothing was rolled out.
        daemon.kill();
        let daemon = Setpoint::start(&world, SLOW_HEALTH).await;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let status = daemon.instance(&id).await;
            assert!(
                status["rollout"].is_null()
                    && condition(&status, "Synced")
                        .is_some_and(|c| c["status"] == false && c["reason"] == "GivenUp"),
                "the given-up revision came back after a restart\n{}",
                explain(&daemon, &world, &id).await
            );
            assert!(
                world.serves(&id, "info").await,
                "the stub no longer serves the previous configuration\n{}",
                explain(&daemon, &world, &id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = daemon.instance(&id).await;
        assert_eq!(status["givenUp"], given_up);
        assert_eq!(desired_level(&world, &id).await, "debug");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_daemon_repeatedly_never_leaves_it_synced_on_a_configuration_it_does_not_run() {
    bounded(Duration::from_secs(300), async {
        let world = World::new(&[]).await;
        let mut daemon = Setpoint::start(&world, SLOW_HEALTH).await;
        let mut ids = Vec::new();
        for name in ["orders", "billing", "search"] {
            ids.push(world.create(name, json!({})).await);
        }
        for id in &ids {
            converges(&world, &daemon, id, "info", "creation").await;
        }

        let levels = ["debug", "warn", "error", "trace", "info"];
        // (delay before the kill, ms; patch the first instance again while down; how long
        // the restarted daemon runs before the next cycle's patches, ms)
        let cycles = [
            (0, true, 0),
            (40, false, 150),
            (150, true, 400),
            (400, false, 50),
            (800, true, 1000),
            (20, false, 0),
        ];
        for (cycle, (kill_after, patch_while_down, run_for)) in cycles.into_iter().enumerate() {
            // Not every instance changes in every cycle.
            for (i, id) in ids.iter().enumerate() {
                if (cycle + i) % 3 != 2 {
                    let level = levels[(cycle * 2 + i) % levels.len()];
                    world.patch(id, set_level(level)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(kill_after)).await;
            daemon.kill();
            for id in &ids {
                eprintln!(
                    "cycle {cycle}: {id} left behind {}",
                    left_behind(&world, id).await
                );
            }
            if patch_while_down {
                world
                    .patch(&ids[0], set_level(levels[(cycle + 3) % levels.len()]))
                    .await;
            }
            daemon = Setpoint::start(&world, SLOW_HEALTH).await;
            tokio::time::sleep(Duration::from_millis(run_for)).await;
        }

        // Settled: no rollout left on any instance, and the last decision this process
        // took for each is not one that acts (its conditions are written by then).
        let settled = within(Duration::from_secs(45), async || {
            for id in &ids {
                let status = daemon.instance(id).await;
                let acting = matches!(
                    status["lastDecision"]["decision"]["decision"].as_str(),
                    None | Some(
                        "start_rollout" | "step_rollout" | "not_yet" | "supersede" | "abort"
                    )
                );
                if !status["rollout"].is_null() || acting {
                    return false;
                }
            }
            true
        })
        .await;
        let mut report = String::new();
        for id in &ids {
            report += &format!("{id}: {}\n", explain(&daemon, &world, id).await);
        }
        assert!(settled, "the instances did not settle within 45 s\n{report}");

        // Over a few resyncs: whenever the daemon says Synced, the stub runs exactly the
        // desired logLevel.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            for id in &ids {
                if synced(&daemon.instance(id).await) {
                    let desired = desired_level(&world, id).await;
                    let running = world.stub_config(id).await.map(|c| c["logLevel"].clone());
                    assert!(
                        running.as_ref() == Some(&desired),
                        "{id} is reported Synced but its stub serves {running:?}, not {desired}\n{}",
                        explain(&daemon, &world, id).await
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // And every one of them got there.
        for id in &ids {
            let desired = desired_level(&world, id).await;
            converges(
                &world,
                &daemon,
                id,
                desired.as_str().unwrap(),
                "after the last restart",
            )
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abort_killed_between_stop_and_start_restores_the_previous_configuration() {
    bounded(Duration::from_secs(120), async {
        let world = World::new(&[]).await;
        let relay = Relay::start(world.cp_addr).await;
        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        let id = world.create("orders", json!({})).await;
        converges(&world, &daemon, &id, "info", "creation").await;

        // The restart's stop is answered; its start is held; an operator aborts; the
        // daemon dies before the step returns, so the strategy's state (the configuration
        // it ran before) is never saved, and the start never reaches the control plane.
        let start = relay.hold(format!("POST /api/server/instances/{id}/start "));
        world.patch(&id, set_level("debug")).await;
        assert!(start.seen(Duration::from_secs(10)).await, "no start call");
        let (code, body) = daemon
            .post(
                &format!("/v1/instances/{id}/abort"),
                json!({ "by": "alice" }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        daemon.kill();
        start.drop_it();
        assert_eq!(world.status(&id).await, "Stopped");

        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        let ended = within(Duration::from_secs(20), async || {
            let status = daemon.instance(&id).await;
            status["rollout"].is_null()
                && status["abortRequested"].is_null()
                && !status["givenUp"].is_null()
        })
        .await;
        assert!(
            ended,
            "the abort was not carried out after the restart\n{}",
            explain(&daemon, &world, &id).await
        );
        // The strategy's state was lost with the daemon, but the host still knows what
        // the instance ran when the rollout started: the abort restores it.
        let restored = within(Duration::from_secs(20), async || {
            world.serves(&id, "info").await
        })
        .await;
        assert!(
            restored,
            "the abort did not bring back the previous configuration\n{}",
            explain(&daemon, &world, &id).await
        );
        // And the daemon never claims Synced for an instance that does not run its
        // desired configuration, resync after resync.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let status = daemon.instance(&id).await;
            let runs_desired = world.serves(&id, "debug").await;
            assert!(
                runs_desired || !synced(&status),
                "reported Synced while the stub does not serve the desired logLevel\n{}",
                explain(&daemon, &world, &id).await
            );
            assert!(
                runs_desired
                    || condition(&status, "Synced").is_some_and(|c| c["reason"] == "GivenUp"),
                "{}",
                explain(&daemon, &world, &id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_in_flight_when_the_daemon_dies_is_audited_as_in_doubt_after_restart() {
    bounded(Duration::from_secs(180), async {
        let world = World::new(&[]).await;
        let relay = Relay::start(world.cp_addr).await;
        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        let id = world.create("orders", json!({})).await;
        converges(&world, &daemon, &id, "info", "creation").await;

        // The restart's start is held at the relay; the daemon dies with it in flight,
        // then the start reaches the control plane: a call the dead daemon never saw
        // answered.
        let start = relay.hold(format!("POST /api/server/instances/{id}/start "));
        world.patch(&id, set_level("debug")).await;
        assert!(start.seen(Duration::from_secs(10)).await, "no start call");
        daemon.kill();
        start.forward();
        let landed = within(Duration::from_secs(10), async || {
            world.status(&id).await == "Running" && world.serves(&id, "debug").await
        })
        .await;
        assert!(landed, "the start sent before the kill never landed");

        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        converges(&world, &daemon, &id, "debug", "after the restart").await;
        let audit = daemon.audit(&id).await;
        let messages: Vec<String> = audit
            .iter()
            .map(|r| {
                let e = if r["entry"].is_object() {
                    &r["entry"]
                } else {
                    r
                };
                e["message"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        // Every mutation the control plane received for this change is in the audit, in
        // order: the stop with the outcome saved as it returned, the start as in doubt,
        // then the resumed rollout's own stop and start.
        let first_doubt = messages
            .iter()
            .position(|m| m.starts_with("in doubt:"))
            .unwrap_or(messages.len());
        let change = messages[..first_doubt]
            .iter()
            .rposition(|m| m.starts_with("roll out revision"))
            .expect("a decision for the change");
        let calls: Vec<&str> = messages[change..]
            .iter()
            .filter(|m| m.contains(&format!(" on {id}")) && m.contains("called "))
            .map(|m| {
                if m.starts_with("in doubt:") {
                    if m.contains("called start") {
                        "start in doubt"
                    } else {
                        "stop in doubt"
                    }
                } else if m.contains("called stop") && m.contains("saved just before") {
                    "stop ok (saved)"
                } else if m.contains("called start") && m.contains("saved just before") {
                    "start ok (saved)"
                } else if m.ends_with(&format!("called stop on {id}: ok")) {
                    "stop ok"
                } else if m.ends_with(&format!("called start on {id}: ok")) {
                    "start ok"
                } else {
                    "other"
                }
            })
            .collect();
        assert_eq!(
            calls[..2],
            ["stop ok (saved)", "start in doubt"],
            "the calls of the killed step:\n{}",
            daemon.audit_tail(&id).await
        );
        assert!(
            calls[2..].iter().all(|c| c.ends_with(" ok")),
            "the resumed rollout's calls: {calls:?}\n{}",
            daemon.audit_tail(&id).await
        );
        // Reported once: a second restart finds nothing more in doubt.
        daemon.kill();
        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        converges(&world, &daemon, &id, "debug", "after the second restart").await;
        let again = daemon
            .audit(&id)
            .await
            .iter()
            .filter(|r| {
                let e = if r["entry"].is_object() {
                    &r["entry"]
                } else {
                    r
                };
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("in doubt:"))
            })
            .count();
        assert_eq!(again, 1, "{}", daemon.audit_tail(&id).await);
        daemon.kill();
    })
    .await;
}

/// The host's own delete of a leaked clone (not a strategy's call) is journalled too: a
/// daemon killed between the delete and its audit entry reports it at its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaked_clone_deleted_as_the_daemon_dies_is_audited_after_restart() {
    use setpoint_tests::lifecycle::{audited_calls, clones, compare, recorded_calls};
    bounded(Duration::from_secs(120), async {
        let world = World::new(&[]).await;
        let relay = Relay::start(world.cp_addr).await;
        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        let id = world.create("orders", json!({})).await;
        converges(&world, &daemon, &id, "info", "creation").await;

        // A clone no rollout owns (what a crash between a clone call and the step's save
        // leaves): the daemon deletes it, itself rather than through a strategy. That
        // delete is held at the relay; the daemon dies; then it reaches the control plane.
        let delete = relay.hold("DELETE /api/server/instances/".to_owned());
        let clone: Value = world
            .http
            .post(format!(
                "{}/api/extensions/instances/{id}/clone",
                world.cp_url()
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let clone = clone["id"].as_str().unwrap().to_owned();
        assert!(
            delete.seen(Duration::from_secs(10)).await,
            "the daemon never deleted the leaked clone {clone}"
        );
        daemon.kill();
        delete.forward();
        let gone = within(Duration::from_secs(10), async || {
            clones(&world).await.is_empty()
        })
        .await;
        assert!(gone, "the delete sent before the kill never landed");

        let daemon = Setpoint::start_via(&world, &relay.url, SLOW_HEALTH).await;
        converges(&world, &daemon, &id, "info", "after the restart").await;
        // The start-up report of calls in doubt comes before the first reconcile.
        let db = world.dir.path().join("setpoint.db");
        let reported = within(Duration::from_secs(10), async || {
            audited_calls(&db)
                .iter()
                .any(|c| c.operation == "delete" && c.target == clone.as_str())
        })
        .await;
        let audit = format!(
            "{}\n{}",
            daemon.audit_tail(&id).await,
            daemon.audit_tail(&clone).await
        );
        daemon.kill();
        assert!(reported, "the delete of {clone} was never audited\n{audit}");
        // The control plane deleted the clone: the audit says so, as done or in doubt.
        let recorded = recorded_calls(&world).await;
        assert!(
            recorded
                .iter()
                .any(|c| c.operation == "delete" && c.target == clone && c.ok),
            "{recorded:?}"
        );
        // The clone call was this test's, made behind the daemon's back: not the
        // daemon's to audit.
        let recorded: Vec<_> = recorded
            .into_iter()
            .filter(|c| c.operation != "clone")
            .collect();
        let agreement = compare(&recorded, &audited_calls(&db));
        assert!(
            agreement.problems.is_empty(),
            "the audit and the control plane disagree:\n{}\naudit:\n{audit}",
            agreement.problems.join("\n")
        );
    })
    .await;
}
