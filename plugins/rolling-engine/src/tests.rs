use setpoint_plugin::serde_json::{Value, json};
use setpoint_plugin::testing::{Call, Driver, FakeControlPlane};
use setpoint_plugin::{Drift, Member, Progress, Rollout};

use super::*;

fn ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("m{i}")).collect()
}

fn member(id: &str) -> Member {
    Member::new(id, json!({"logLevel": "debug"}))
        .with_actual(json!({"logLevel": "info"}))
        .with_drifts(vec![Drift::changed(
            "/logLevel",
            json!("debug"),
            json!("info"),
        )])
}

fn group(n: usize, params: Value) -> Rollout {
    Rollout::for_group("app=orders", ids(n).iter().map(|id| member(id))).with_params(params)
}

/// The instances each call of the last step stopped or started, in order.
fn touched(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Stop { instance_id } | Call::Start { instance_id, .. } => {
                Some(instance_id.clone())
            }
            _ => None,
        })
        .collect()
}

fn driver(rollout: Rollout) -> Driver<Rolling> {
    let cp = FakeControlPlane::for_rollout(&rollout);
    Driver::new(rollout, cp)
}

/// What the host does once a member runs its desired configuration: it drops the
/// member's drift before the next step.
fn updated<S>(d: &mut Driver<S>, id: &str) {
    if let Some(m) = d
        .rollout
        .members_mut()
        .iter_mut()
        .find(|m| m.instance_id == id)
    {
        m.drifts.clear();
    }
}

/// Step until done, failed or an approval; the host drops a member's drift once it
/// runs its desired configuration, as it does here after every step. `breaks` turns
/// unhealthy once it is updated (its new configuration is bad).
fn run(d: &mut Driver<Rolling>, max: usize, breaks: &str) -> Progress {
    for _ in 0..max {
        let progress = d.step();
        for id in touched(&d.cp.take_calls()) {
            if id == breaks {
                d.cp.set_health(breaks, false);
            }
            updated(d, &id);
        }
        if !matches!(progress, Progress::Requeue { .. }) {
            return progress;
        }
    }
    panic!("not finished after {max} steps");
}

#[test]
fn six_members_two_at_a_time_never_more_than_two_down() {
    let mut d = driver(group(
        6,
        json!({"max_unavailable": 2, "health_gate": "0s", "health_poll": "100ms"}),
    ));
    let mut batches = Vec::new();
    for _ in 0..50 {
        let progress = d.step();
        let calls = d.cp.take_calls();
        let mut batch: Vec<String> = touched(&calls);
        batch.dedup();
        if !batch.is_empty() {
            assert!(
                batch.len() <= 4,
                "one stop and one start per member: {batch:?}"
            );
            batches.push(batch.clone());
        }
        for id in &batch {
            d.rollout
                .members_mut()
                .iter_mut()
                .find(|m| &m.instance_id == id)
                .unwrap()
                .drifts
                .clear();
        }
        if let Progress::Done(message) = &progress {
            assert!(message.contains("6 members in 3 batches"), "{message}");
            break;
        }
        assert!(matches!(progress, Progress::Requeue { .. }), "{progress:?}");
    }
    let members: Vec<Vec<String>> = batches
        .iter()
        .map(|b| {
            let mut m = b.clone();
            m.sort();
            m.dedup();
            m
        })
        .collect();
    assert_eq!(
        members,
        vec![vec!["m1", "m2"], vec!["m3", "m4"], vec!["m5", "m6"]]
    );
}

#[test]
fn a_percentage_of_the_group_sizes_the_batches() {
    let parse = |rollout: &Rollout| Params::parse(rollout, "rolling-surge", true).unwrap();
    let rollout = group(8, json!({"max_unavailable": "25%"}));
    assert_eq!(parse(&rollout).batch, 2);
    let rollout = group(3, json!({"max_unavailable": "10%"}));
    assert_eq!(parse(&rollout).batch, 1, "at least one");
    // A surge percentage rounds up; max_unavailable 0 is allowed beside a surge.
    let rollout = group(3, json!({"max_unavailable": 0, "max_surge": "10%"}));
    let params = parse(&rollout);
    assert_eq!((params.batch, params.surge, params.per_batch()), (0, 1, 1));
}

#[test]
fn a_third_member_that_fails_its_gate_pauses_with_the_rest_untouched() {
    let rollout = group(
        6,
        json!({"health_gate": "0s", "health_deadline": "1s", "health_poll": "200ms"}),
    );
    let cp = FakeControlPlane::for_rollout(&rollout);
    let mut d = Driver::<Rolling>::new(rollout, cp);
    let progress = run(&mut d, 40, "m3");
    let Progress::AwaitApproval { message, .. } = &progress else {
        panic!("expected a pause, got {progress:?}");
    };
    assert!(
        message.contains("m3") && message.contains("untouched: m4, m5, m6"),
        "{message}"
    );
    let status = d.state().unwrap()["status"].clone();
    assert_eq!(status["failed"], json!(["m3"]));
    assert_eq!(status["converged"], json!(["m1", "m2"]));
    assert_eq!(status["waiting"], json!(["m4", "m5", "m6"]));
    assert_eq!(status["paused"], true);
}

#[test]
fn a_third_member_that_fails_its_gate_rolls_the_first_three_back() {
    let rollout = group(
        6,
        json!({"health_gate": "0s", "health_deadline": "1s", "health_poll": "200ms", "on_failure": "rollback"}),
    );
    let cp = FakeControlPlane::for_rollout(&rollout);
    let mut d = Driver::<Rolling>::new(rollout, cp);
    let mut started_with = Vec::new();
    let mut progress;
    loop {
        progress = d.step();
        for call in d.cp.take_calls() {
            if let Call::Start {
                instance_id,
                configuration,
            } = call
            {
                let level = configuration.unwrap()["logLevel"].clone();
                // m3's new configuration is bad; its old one is fine.
                if instance_id == "m3" {
                    d.cp.set_health("m3", level == "info");
                }
                if level == "debug" && instance_id != "m3" {
                    d.rollout
                        .members_mut()
                        .iter_mut()
                        .find(|m| m.instance_id == instance_id)
                        .unwrap()
                        .drifts
                        .clear();
                }
                started_with.push((instance_id, level));
            }
        }
        if !matches!(progress, Progress::Requeue { .. }) {
            break;
        }
    }
    let Progress::Failed { reason, retryable } = &progress else {
        panic!("expected a failure, got {progress:?}");
    };
    assert!(!retryable);
    assert!(reason.contains("rolled back m3, m2, m1"), "{reason}");
    let rolled_back: Vec<_> = started_with
        .iter()
        .filter(|(_, level)| *level == "info")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(rolled_back, ["m3", "m2", "m1"]);
    assert!(
        started_with
            .iter()
            .all(|(id, _)| ["m1", "m2", "m3"].contains(&id.as_str())),
        "members 4 to 6 untouched: {started_with:?}"
    );
}

#[test]
fn a_step_replayed_after_a_crash_does_not_touch_a_member_that_no_longer_drifts() {
    let mut d = driver(group(
        3,
        json!({"health_gate": "0s", "health_poll": "100ms"}),
    ));
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    assert_eq!(touched(&d.cp.take_calls()), ["m1", "m1"]);
    // The host was killed before it saved what that step returned: it calls the first
    // step again, and m1 now runs its desired configuration (no drift).
    let mut again = group(3, json!({"health_gate": "0s", "health_poll": "100ms"}));
    again.members_mut()[0].drifts.clear();
    let mut d = driver(again);
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    assert_eq!(
        touched(&d.cp.take_calls()),
        ["m2", "m2"],
        "m1 is converged and is not restarted again"
    );
    // Within a batch too: a member of the batch already converged is skipped.
    let mut batch = group(3, json!({"max_unavailable": 2, "health_gate": "0s"}));
    batch.members_mut()[1].drifts.clear();
    batch.members_mut()[0].drifts.clear();
    let mut d = driver(batch);
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    assert_eq!(touched(&d.cp.take_calls()), ["m3", "m3"]);
}

#[test]
fn abort_restores_what_the_updated_members_ran() {
    let mut d = driver(group(
        4,
        json!({"max_unavailable": 2, "health_gate": "0s", "health_poll": "100ms"}),
    ));
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    d.cp.take_calls();
    let mut progress = d.abort();
    let mut restored = Vec::new();
    for _ in 0..20 {
        for call in d.cp.take_calls() {
            if let Call::Start {
                instance_id,
                configuration,
            } = call
            {
                restored.push((instance_id, configuration.unwrap()["logLevel"].clone()));
            }
        }
        if !matches!(progress, Progress::Requeue { .. }) {
            break;
        }
        progress = d.abort();
    }
    assert!(
        matches!(&progress, Progress::Done(m) if m.contains("rolled back")),
        "{progress:?}"
    );
    assert_eq!(
        restored,
        [
            ("m1".to_owned(), json!("info")),
            ("m2".to_owned(), json!("info"))
        ]
    );
}

#[test]
fn bad_params_fail_with_the_parameter_named() {
    for (params, needle) in [
        (json!({"max_unavailable": "lots"}), "max_unavailable"),
        (json!({"max_surge": 1}), "use strategy \"rolling-surge\""),
        (
            json!({"max_unavailable": 0}),
            "max_unavailable: 0 with max_surge 0",
        ),
        (json!({"drain": "1s"}), "drain"),
        (json!({"on_failure": "explode"}), "on_failure"),
        (json!({"health_poll": "0s"}), "health_poll"),
        (json!({"surge": 1}), "surge"),
    ] {
        let mut d = driver(group(2, params.clone()));
        let progress = d.step();
        let Progress::Failed { reason, retryable } = &progress else {
            panic!("{params}: {progress:?}");
        };
        assert!(!retryable && reason.contains(needle), "{params}: {reason}");
    }
}

#[test]
fn nothing_drifts_nothing_is_done() {
    let rollout = Rollout::for_group("app=x", [Member::new("a", json!({}))]);
    let mut d = driver(rollout);
    assert!(matches!(d.step(), Progress::Done(_)));
    assert!(d.cp.calls().is_empty());
}

#[test]
fn metadata_says_it_rolls_out_groups() {
    let meta = Rolling::metadata();
    assert_eq!(meta.name, "rolling");
    assert!(
        meta.group_rollouts,
        "the host hands groups only to a strategy that says so"
    );
}

#[test]
fn a_member_that_starts_drifting_mid_rollout_is_updated_too() {
    // m3 runs its desired configuration when the rollout starts ...
    let mut rollout = group(3, json!({"health_gate": "0s", "health_poll": "100ms"}));
    rollout.members_mut()[2].drifts.clear();
    let mut d = driver(rollout);
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    assert_eq!(touched(&d.cp.take_calls()), ["m1", "m1"]);
    d.rollout.members_mut()[0].drifts.clear();
    // ... then its desired configuration changes: the host hands it over with a drift.
    d.rollout.members_mut()[2].drifts =
        vec![Drift::changed("/logLevel", json!("warn"), json!("info"))];
    let mut updated = Vec::new();
    let progress = loop {
        let progress = d.step();
        for id in touched(&d.cp.take_calls()) {
            d.rollout
                .members_mut()
                .iter_mut()
                .find(|m| m.instance_id == id)
                .unwrap()
                .drifts
                .clear();
            updated.push(id);
        }
        if !matches!(progress, Progress::Requeue { .. }) {
            break progress;
        }
    };
    assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
    updated.dedup();
    assert_eq!(updated, ["m2", "m3"]);
}

/// Runs a group of four, two at a time, and returns how long after the first batch's
/// last start the second batch's first stop came (ms of the rollout's own time). `flap`:
/// m1 reads unhealthy at the first probe that far (ms) after that start, then healthy.
fn gap_between_batches(params: Value, flap: Option<u64>) -> u64 {
    let mut d = driver(group(4, params));
    let mut first_batch_started = None;
    let mut flapped = false;
    for _ in 0..500 {
        let progress = d.step();
        let now = d.elapsed_ms();
        let calls = d.cp.take_calls();
        if let (Some(started), Some(at)) = (first_batch_started, flap) {
            if !flapped && now - started >= at {
                d.cp.set_health("m1", false);
                flapped = true;
            } else if flapped {
                d.cp.set_health("m1", true);
            }
        }
        for call in &calls {
            match call {
                Call::Start { instance_id, .. } if instance_id == "m2" => {
                    first_batch_started = Some(now);
                }
                Call::Stop { instance_id } if instance_id == "m3" => {
                    return now - first_batch_started.expect("m3 comes after m1 and m2");
                }
                _ => {}
            }
        }
        for id in touched(&calls) {
            updated(&mut d, &id);
        }
        assert!(matches!(progress, Progress::Requeue { .. }), "{progress:?}");
    }
    panic!("the second batch never started");
}

#[test]
fn the_next_batch_waits_out_the_health_gate_then_the_pause_between() {
    let base = json!({"max_unavailable": 2, "health_poll": "100ms"});
    let with = |extra: Value| {
        let mut params = base.clone();
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        params
    };
    // Neither: the next batch follows the first healthy probe.
    let none = gap_between_batches(with(json!({"health_gate": "0s"})), None);
    assert!(none < 1_000, "no gate, no pause: {none} ms");
    // The gate: healthy for 3 s (probed every 100 ms) before the next batch.
    let gate = gap_between_batches(with(json!({"health_gate": "3s"})), None);
    assert!((3_000..3_500).contains(&gate), "a 3 s gate: {gate} ms");
    // The pause comes after the gate.
    let both = gap_between_batches(
        with(json!({"health_gate": "3s", "pause_between": "5s"})),
        None,
    );
    assert!(
        (8_000..8_500).contains(&both),
        "a 3 s gate then 5 s: {both} ms"
    );
    let pause = gap_between_batches(
        with(json!({"health_gate": "0s", "pause_between": "5s"})),
        None,
    );
    assert!((5_000..5_500).contains(&pause), "a 5 s pause: {pause} ms");
}

#[test]
fn a_member_unhealthy_during_the_gate_starts_the_gate_over() {
    let params = json!({"max_unavailable": 2, "health_poll": "100ms", "health_gate": "3s"});
    // m1 reads unhealthy once, 2 s into its 3 s gate: the gate counts again from there.
    let gap = gap_between_batches(params, Some(2_000));
    assert!(
        (5_000..5_600).contains(&gap),
        "a 3 s gate restarted after 2 s: {gap} ms"
    );
}

// ----- rolling-surge ------------------------------------------------------------------

#[cfg(feature = "surge")]
mod surge {
    use setpoint_plugin::{BackendWeight, InstanceStatus};

    use super::*;
    use crate::RollingSurge;

    fn surge_driver(rollout: Rollout) -> Driver<RollingSurge> {
        let cp = FakeControlPlane::for_rollout(&rollout);
        Driver::new(rollout, cp)
    }

    const SURGE: &str = r#"{"max_unavailable": 0, "max_surge": 1, "health_gate": "0s",
        "health_poll": "100ms", "drain": "500ms"}"#;

    fn params() -> Value {
        setpoint_plugin::serde_json::from_str(SURGE).unwrap()
    }

    /// Every member's endpoint, at every call: either absent (never moved) or 100 % to
    /// one instance that runs and is healthy; at most `surge` clones at once.
    fn step_checked(d: &mut Driver<RollingSurge>, surge: usize) -> Progress {
        let progress = d.step();
        assert!(
            d.cp.clones().len() <= surge,
            "{} clones at once: {:?}",
            d.cp.clones().len(),
            d.cp.clones()
        );
        assert!(
            d.cp.traffic_violations().is_empty(),
            "traffic sent to a stopped or unhealthy instance: {:?}",
            d.cp.traffic_violations()
        );
        for m in d.rollout.members().to_vec() {
            let id = &m.instance_id;
            let moved =
                d.cp.calls().iter().any(
                    |c| matches!(c, Call::SetTrafficWeights { endpoint, .. } if endpoint == id),
                );
            if let Some(weights) = d.cp.weights(id) {
                let to = &weights[0].instance_id;
                if to == id && moved {
                    assert_eq!(
                        d.cp.status(id),
                        Some(InstanceStatus::Running),
                        "{id}'s traffic is on {id} while it does not run"
                    );
                }
            }
        }
        // The host drops a member's drift once it runs its desired configuration.
        for id in touched(&d.cp.take_calls()) {
            updated(d, &id);
        }
        progress
    }

    #[test]
    fn each_member_is_covered_by_a_clone_while_it_is_updated_and_the_clone_goes_after() {
        let mut d = surge_driver(group(3, params()));
        let mut progress = Progress::done("");
        for _ in 0..200 {
            progress = step_checked(&mut d, 1);
            if !matches!(progress, Progress::Requeue { .. }) {
                break;
            }
        }
        assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
        assert_eq!(d.cp.clones_created(), 3, "one surge clone per member");
        assert!(d.cp.clones().is_empty(), "clones left: {:?}", d.cp.clones());
        for id in ids(3) {
            assert_eq!(
                d.cp.weights(&id),
                Some(&[BackendWeight::new(id.clone(), 100)][..]),
                "{id}'s endpoint is back on it"
            );
        }
    }

    #[test]
    fn a_member_is_stopped_only_after_its_clone_took_its_traffic_and_drained() {
        let mut d = surge_driver(group(1, params()));
        let mut calls = Vec::new();
        for _ in 0..100 {
            let progress = d.step();
            let step_calls = d.cp.take_calls();
            if !touched(&step_calls).is_empty() {
                d.rollout.members_mut()[0].drifts.clear();
            }
            calls.extend(step_calls);
            if !matches!(progress, Progress::Requeue { .. }) {
                break;
            }
        }
        let order: Vec<String> = calls
            .iter()
            .filter(|c| c.is_mutation())
            .map(|c| match c {
                Call::CloneInstance { instance_id, .. } => format!("clone {instance_id}"),
                Call::Start { instance_id, .. } => format!("start {instance_id}"),
                Call::Stop { instance_id } => format!("stop {instance_id}"),
                Call::SetTrafficWeights { endpoint, weights } => {
                    format!("weights {endpoint} -> {}", weights[0].instance_id)
                }
                Call::DeleteClone { instance_id } => format!("delete {instance_id}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "clone m1",
                "start m1-clone-1",
                "weights m1 -> m1-clone-1",
                "stop m1",
                "start m1",
                "weights m1 -> m1",
                "delete m1-clone-1",
            ]
        );
    }

    #[test]
    fn a_covered_member_that_fails_is_rolled_back_behind_its_clone_then_the_rollout_pauses() {
        let mut d = surge_driver(group(
            3,
            json!({"max_unavailable": 0, "max_surge": 1, "health_gate": "300ms",
                   "health_poll": "100ms", "drain": "200ms", "health_deadline": "1s"}),
        ));
        let mut progress = Progress::done("");
        for _ in 0..200 {
            progress = d.step();
            let calls = d.cp.take_calls();
            // m2's new configuration is bad: it never comes up healthy with it.
            for c in &calls {
                if let Call::Start {
                    instance_id,
                    configuration: Some(config),
                } = c
                {
                    let bad = instance_id == "m2" && *config == json!({"logLevel": "debug"});
                    d.cp.set_health(instance_id.clone(), !bad);
                }
            }
            for id in touched(&calls) {
                updated(&mut d, &id);
            }
            assert!(
                d.cp.traffic_violations().is_empty(),
                "{:?}",
                d.cp.traffic_violations()
            );
            if !matches!(progress, Progress::Requeue { .. }) {
                break;
            }
        }
        let Progress::AwaitApproval { message, .. } = &progress else {
            panic!("{progress:?}");
        };
        assert!(
            message.contains("m2") && message.contains("rolled back m2"),
            "{message}"
        );
        assert!(d.cp.clones().is_empty(), "clones left: {:?}", d.cp.clones());
        assert_eq!(
            d.cp.weights("m2"),
            Some(&[BackendWeight::new("m2", 100)][..])
        );
        assert!(
            d.cp.calls().is_empty(),
            "the pause called the control plane: {:?}",
            d.cp.calls()
        );
        // m3 was never touched.
        assert!(d.cp.weights("m3").is_none());
    }

    #[test]
    fn abort_during_a_surge_returns_the_traffic_and_deletes_the_clone() {
        let mut d = surge_driver(group(2, params()));
        // Step until m1's traffic is on its clone.
        for _ in 0..20 {
            let _ = d.step();
            if d.cp
                .weights("m1")
                .is_some_and(|w| w[0].instance_id.ends_with("clone-1"))
            {
                break;
            }
        }
        assert_eq!(d.cp.clones().len(), 1);
        let mut progress = d.abort();
        for _ in 0..50 {
            if !matches!(progress, Progress::Requeue { .. }) {
                break;
            }
            progress = d.abort();
        }
        assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
        assert!(d.cp.clones().is_empty(), "clones left: {:?}", d.cp.clones());
        assert_eq!(
            d.cp.weights("m1"),
            Some(&[BackendWeight::new("m1", 100)][..])
        );
        assert_eq!(d.cp.status("m1"), Some(InstanceStatus::Running));
        assert!(
            d.cp.traffic_violations().is_empty(),
            "{:?}",
            d.cp.traffic_violations()
        );
    }

    #[test]
    fn rolling_surge_says_who_it_is() {
        assert_eq!(RollingSurge::metadata().name, "rolling-surge");
        assert!(RollingSurge::metadata().group_rollouts);
    }
}
