//! `blue-green` driven step after step against the fake control plane.

// The driver keeps every call's progress (`Driver::last`, `Driver::status`); the calls
// that only move the rollout along do not bind it.
#![allow(unused_must_use)]

use std::collections::BTreeSet;
use std::time::Duration;

use setpoint_plugin::serde_json::{Value, json};
use setpoint_plugin::testing::{Call, Driver, FakeControlPlane};
use setpoint_plugin::{
    Approval, BackendWeight, Counters, InstanceInfo, InstanceStatus, Progress, Promote, Rollout,
    Verdict,
};

use super::*;

const ID: &str = "drasi-1";
const CLONE: &str = "drasi-1-clone-1";

fn desired() -> Value {
    json!({"port": 8081, "logLevel": "debug"})
}

fn previous() -> Value {
    json!({"port": 8081, "logLevel": "info"})
}

fn m(requests: u64, errors: u64) -> Counters {
    Counters { requests, errors }
}

/// The instance, running; the clone's counters never move (the preview gets no
/// endpoint traffic).
fn control_plane() -> FakeControlPlane {
    FakeControlPlane::new().with_instance(InstanceInfo {
        id: ID.into(),
        name: "drasi".into(),
        status: InstanceStatus::Running,
        platform: "Process".into(),
        labels: Vec::new(),
    })
}

fn rollout(params: Value) -> Rollout {
    Rollout::new(ID, desired())
        .with_actual(previous())
        .with_params(params)
        .with_approval(Some(Approval::None))
}

fn driver(params: Value) -> Driver<BlueGreen> {
    Driver::new(rollout(params), control_plane())
}

/// Step (approving whatever is asked) until the rollout ends.
fn run_to_end(d: &mut Driver<BlueGreen>) -> Progress {
    if let Some(last) = d.last()
        && last.is_terminal()
    {
        return last.clone();
    }
    for _ in 0..100 {
        let progress = d.step();
        if progress.is_terminal() {
            return progress;
        }
    }
    panic!("the rollout did not end in 100 steps: {:?}", d.last());
}

/// Abort until the abort ends.
fn abort_to_end(d: &mut Driver<BlueGreen>) -> Progress {
    for _ in 0..50 {
        let progress = d.abort();
        if progress.is_terminal() {
            return progress;
        }
    }
    panic!("the abort did not end in 50 calls: {:?}", d.last());
}

/// The mutations so far, in words.
fn mutations(cp: &FakeControlPlane) -> Vec<String> {
    let config = |c: Option<&Value>| match c {
        None => String::new(),
        Some(c) if *c == desired() => " with the desired configuration".into(),
        Some(c) if *c == previous() => " with the previous configuration".into(),
        Some(c) => format!(" with {c}"),
    };
    cp.mutations()
        .into_iter()
        .map(|call| match call {
            Call::SetTrafficWeights { endpoint, weights } => format!(
                "weights {endpoint}: {}",
                weights
                    .iter()
                    .map(|w| format!("{} {}", w.instance_id, w.weight))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Call::CloneInstance {
                instance_id,
                configuration,
            } => format!("clone {instance_id}{}", config(Some(configuration))),
            Call::Start {
                instance_id,
                configuration,
            } => format!("start {instance_id}{}", config(configuration.as_ref())),
            Call::Stop { instance_id } => format!("stop {instance_id}"),
            Call::DeleteClone { instance_id } => format!("delete {instance_id}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// What every run must leave: no clone, all traffic on the instance, which runs.
fn assert_clean(cp: &FakeControlPlane) {
    assert!(cp.clones().is_empty(), "clones left: {:?}", cp.clones());
    if let Some(weights) = cp.weights(ID) {
        assert_eq!(weights, [BackendWeight::new(ID, 100)]);
    }
    assert_eq!(cp.status(ID), Some(InstanceStatus::Running));
    assert!(
        cp.traffic_violations().is_empty(),
        "{:?}",
        cp.traffic_violations()
    );
}

const HAPPY_PATH: [&str; 8] = [
    "weights drasi-1: drasi-1 100",
    "clone drasi-1 with the desired configuration",
    "start drasi-1-clone-1",
    "weights drasi-1: drasi-1-clone-1 100",
    "stop drasi-1",
    "start drasi-1 with the desired configuration",
    "weights drasi-1: drasi-1 100",
    "delete drasi-1-clone-1",
];

#[test]
fn happy_path_switches_to_the_clone_converges_the_instance_and_switches_back() {
    let mut d = driver(json!({}));
    // 1: endpoint to the instance, clone created; the call ends to save its id.
    assert!(matches!(d.step(), Progress::Requeue { after, .. } if after.is_zero()));
    // 2: the clone starts.
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_millis(500)),
        "{p:?}"
    );
    assert_eq!(
        d.state().unwrap()["status"],
        json!({
            "strategy": "blue-green", "phase": "preview",
            "weights": [{"instance_id": ID, "weight": 100}],
            "clone": CLONE, "paused": false, "waiting_for": "clone drasi-1-clone-1 to become healthy"
        })
    );
    // 3: healthy: all traffic to the clone, then the drain.
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(1)),
        "{p:?}"
    );
    assert_eq!(d.status().unwrap().phase, "promoting");
    // 4: the instance restarts with the desired configuration.
    d.step();
    assert_eq!(d.status().unwrap().phase, "converging");
    // 5: healthy: traffic back; the clone is kept for the scale-down delay.
    let p = d.step();
    let Progress::Requeue { after, message, .. } = &p else {
        panic!("{p:?}")
    };
    assert_eq!(*after, Duration::from_secs(30));
    assert_eq!(
        message,
        "clone drasi-1-clone-1 is kept for 30s before it is deleted (30s left)"
    );
    let status = d.status().unwrap();
    assert_eq!(
        (status.phase.as_str(), status.paused),
        ("scaling-down", true)
    );
    // 6: the clone is deleted.
    assert!(matches!(d.step(), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
    assert_clean(&d.cp);
    assert_eq!(d.elapsed_ms(), 500 + 1_000 + 500 + 30_000);
}

#[test]
fn waits_for_the_clone_and_the_instance_to_be_healthy_before_sending_them_traffic() {
    let mut d = driver(json!({"health_poll_ms": 200}));
    d.cp = control_plane().with_health(CLONE, [false, false, true]);
    d.step();
    d.step();
    for _ in 0..2 {
        let p = d.step();
        assert!(
            matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_millis(200)),
            "{p:?}"
        );
        assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(ID, 100)]);
    }
    d.step(); // switch
    d.step(); // restart
    d.cp.set_health(ID, false);
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { message, .. } if message.starts_with("drasi-1 to become healthy with the desired configuration")),
        "{p:?}"
    );
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(CLONE, 100)]);
    d.cp.set_health(ID, true);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
    assert_clean(&d.cp);
}

#[test]
fn drain_and_scale_down_delay_are_durations() {
    let mut d = driver(json!({"drain": "2s", "scale_down_delay": 0}));
    d.step();
    d.step();
    assert!(matches!(d.step(), Progress::Requeue { after, .. } if after == Duration::from_secs(2)));
    d.step();
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(2)),
        "{p:?}"
    );
    assert!(!d.status().unwrap().paused, "only the drain: not a pause");
    assert!(matches!(d.step(), Progress::Done(_)));
}

#[test]
fn preview_analysis_passes_on_requests_sent_to_the_clone() {
    let mut d = driver(json!({"preview_analysis": {
        "interval": "5s", "max_error_rate": 0.1, "min_requests": 10
    }}));
    d.cp = control_plane().with_counters(CLONE, [m(0, 0), m(50, 2)]);
    d.step();
    d.step();
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(5)),
        "{p:?}"
    );
    let status = d.status().unwrap();
    assert_eq!(status.phase, "preview");
    assert_eq!(status.step, None, "blue-green has no numbered steps");
    assert!(status.analysis.is_some());
    d.step();
    assert_eq!(d.status().unwrap().phase, "promoting");
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
    assert_clean(&d.cp);
}

#[test]
fn preview_analysis_by_a_named_query_keeps_the_switch_from_a_bad_clone() {
    let params = json!({"preview_analysis": {"interval": "5s", "query": "error-rate", "max": 0.1}});
    // Good: the query's value is within max, the switch happens.
    let mut d = driver(params.clone());
    d.cp = control_plane().with_query("error-rate", CLONE, [Some(0.01)]);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
    assert!(
        !d.cp
            .calls()
            .iter()
            .any(|c| matches!(c, Call::GetCounters { .. })),
        "the counters are read although the analysis names a query"
    );
    // Bad: above max, the instance is never touched and the clone goes.
    let mut d = driver(params);
    d.cp = control_plane().with_query("error-rate", CLONE, [Some(0.4)]);
    let p = run_to_end(&mut d);
    let Progress::Failed { reason, .. } = &p else {
        panic!("{p:?}")
    };
    assert!(reason.contains("`error-rate` 0.4 > max 0.1"), "{reason}");
    assert!(
        !d.cp
            .mutations()
            .iter()
            .any(|c| matches!(c, Call::Stop { .. })),
        "the instance is never touched"
    );
    assert_clean(&d.cp);
}

#[test]
fn preview_analysis_without_requests_is_inconclusive_and_fails_after_the_limit() {
    let mut d = driver(json!({"preview_analysis": {"interval": "5s", "max_error_rate": 0.1}}));
    d.step();
    d.step();
    d.step(); // baseline
    for n in 1..=2 {
        let p = d.step();
        assert!(matches!(p, Progress::Requeue { .. }), "{p:?}");
        let figures = d.status().unwrap().analysis.unwrap();
        assert_eq!(
            (figures.inconclusive, figures.verdict),
            (n, Some(Verdict::Inconclusive))
        );
    }
    let p = d.step();
    assert_eq!(
        p,
        Progress::failed(
            "analysis inconclusive: 3 of 3 allowed inconclusive intervals (inconclusive_limit), the last: clone served 0 request(s) over 5s, fewer than min_requests 1",
            false
        )
    );
    assert_eq!(
        mutations(&d.cp),
        [
            "weights drasi-1: drasi-1 100",
            "clone drasi-1 with the desired configuration",
            "start drasi-1-clone-1",
            "delete drasi-1-clone-1",
        ]
    );
    assert_clean(&d.cp);
}

#[test]
fn preview_analysis_with_min_requests_0_passes_silence() {
    let mut d = driver(json!({"preview_analysis": {
        "interval": "5s", "max_error_rate": 0.1, "min_requests": 0
    }}));
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
}

#[test]
fn a_failing_preview_is_deleted_and_the_instance_never_touched() {
    let mut d = driver(json!({"preview_analysis": {"interval": "5s", "max_error_rate": 0.05}}));
    d.cp = control_plane().with_counters(CLONE, [m(0, 0), m(20, 10)]);
    let p = run_to_end(&mut d);
    assert_eq!(
        p,
        Progress::failed(
            "analysis failed: clone error rate 0.5 (10 of 20 requests) > max 0.05 over 5s, 1 of 1 consecutive failures",
            false
        )
    );
    assert_eq!(mutations(&d.cp).last().unwrap(), "delete drasi-1-clone-1");
    assert!(!mutations(&d.cp).iter().any(|m| m == "stop drasi-1"));
    assert_clean(&d.cp);
}

#[test]
fn the_switch_asks_only_when_params_or_policy_say_so() {
    for (auto_promote, approval, asks) in [
        (true, Approval::None, false),
        (true, Approval::BeforeApply, false),
        (true, Approval::BeforePromote, true),
        (false, Approval::None, true),
        (false, Approval::BeforePromote, true),
    ] {
        let mut d = Driver::<BlueGreen>::new(
            rollout(json!({"auto_promote": auto_promote})).with_approval(Some(approval)),
            control_plane(),
        );
        d.step();
        d.step();
        let p = d.step();
        if asks {
            let Progress::AwaitApproval { message, .. } = &p else {
                panic!("{auto_promote} {approval:?}: {p:?}")
            };
            assert_eq!(
                message,
                "promote the desired configuration of drasi-1: all traffic to clone drasi-1-clone-1, then drasi-1 restarts with it"
            );
            assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(ID, 100)]);
            let status = d.status().unwrap();
            assert!(status.paused);
            assert_eq!(status.phase, "preview");
            // Approved: the host steps again with the same state.
            d.step();
        }
        assert_eq!(
            d.cp.weights(ID).unwrap(),
            [BackendWeight::new(CLONE, 100)],
            "{auto_promote} {approval:?}"
        );
        assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
        assert_eq!(mutations(&d.cp), HAPPY_PATH);
        assert_clean(&d.cp);
    }
}

#[test]
fn promote_step_ends_the_preview_analysis_then_the_approval() {
    let mut d = driver(json!({"auto_promote": false, "preview_analysis": {
        "interval": "10m", "max_error_rate": 0.05
    }}));
    d.step();
    d.step();
    d.step(); // baseline: waits 10 minutes
    let p = d.promote(Promote::Step);
    assert!(
        matches!(p, Progress::AwaitApproval { .. }),
        "the analysis ends, the gate still asks: {p:?}"
    );
    let p = d.promote(Promote::Step);
    assert!(matches!(p, Progress::Requeue { .. }), "{p:?}");
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(CLONE, 100)]);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn promote_full_skips_the_analysis_and_the_approval() {
    let mut d = Driver::<BlueGreen>::new(
        rollout(json!({"auto_promote": false, "preview_analysis": {
            "interval": "10m", "max_error_rate": 0.05
        }}))
        .with_approval(Some(Approval::BeforePromote)),
        control_plane(),
    );
    d.step();
    d.step();
    d.step();
    let p = d.promote(Promote::Full);
    assert!(matches!(p, Progress::Requeue { .. }), "{p:?}");
    assert_eq!(d.status().unwrap().phase, "promoting");
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
    assert_clean(&d.cp);
}

fn every_phase_params() -> Value {
    json!({"auto_promote": false, "preview_analysis": {
        "interval": "5s", "max_error_rate": 0.05, "min_requests": 0
    }})
}

fn happy_calls() -> u32 {
    let mut d = driver(every_phase_params());
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
    d.calls()
}

#[test]
fn abort_from_every_phase_leaves_the_instance_on_its_previous_configuration() {
    let total = happy_calls();
    let mut phases = BTreeSet::new();
    for k in 0..total {
        let mut d = driver(every_phase_params());
        for _ in 0..k {
            d.step();
        }
        let phase = d.status().map(|s| {
            format!(
                "{}{}",
                s.phase,
                if s.waiting_for.is_some_and(|w| w.starts_with("approval")) {
                    " (approval)"
                } else {
                    ""
                }
            )
        });
        phases.insert(phase.clone().unwrap_or_default());
        let p = abort_to_end(&mut d);
        assert!(
            matches!(&p, Progress::Done(m) if m.starts_with("aborted") || m.starts_with("nothing to undo")),
            "after {k} calls ({phase:?}): {p:?}"
        );
        assert_clean(&d.cp);
        let last_start = d.cp.mutations().into_iter().rev().find_map(|c| match c {
            Call::Start {
                instance_id,
                configuration,
            } if instance_id == ID => Some(configuration.clone()),
            _ => None,
        });
        if let Some(configuration) = last_start {
            assert_eq!(
                configuration,
                Some(previous()),
                "after {k} calls ({phase:?})"
            );
        }
    }
    assert_eq!(
        phases.into_iter().collect::<Vec<_>>(),
        [
            "",
            "converging",
            "preview",
            "preview (approval)",
            "promoting",
            "scaling-down"
        ],
        "every phase was aborted from"
    );
}

#[test]
fn abort_during_the_scale_down_delay_restores_the_previous_configuration_behind_the_clone() {
    let mut d = driver(json!({}));
    for _ in 0..5 {
        d.step();
    }
    assert_eq!(d.status().unwrap().phase, "scaling-down");
    let before = d.cp.mutations().len();
    assert!(matches!(abort_to_end(&mut d), Progress::Done(_)));
    assert_eq!(
        mutations(&d.cp)[before..],
        [
            "weights drasi-1: drasi-1-clone-1 100".to_owned(),
            "stop drasi-1".to_owned(),
            "start drasi-1 with the previous configuration".to_owned(),
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned(),
        ]
    );
    assert_clean(&d.cp);
}

#[test]
fn abort_of_the_preview_only_deletes_the_clone() {
    let mut d = driver(json!({"auto_promote": false}));
    d.step();
    d.step();
    assert!(matches!(d.step(), Progress::AwaitApproval { .. }));
    let before = d.cp.mutations().len();
    assert!(
        matches!(d.abort(), Progress::Done(_)),
        "no drain: the preview had no traffic"
    );
    assert_eq!(
        mutations(&d.cp)[before..],
        [
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned()
        ]
    );
    assert_clean(&d.cp);
}

#[test]
fn abort_with_an_unhealthy_clone_restarts_the_instance_in_place() {
    let mut d = driver(json!({}));
    for _ in 0..4 {
        d.step();
    }
    assert_eq!(d.status().unwrap().phase, "converging");
    d.cp.set_health(CLONE, false);
    let before = d.cp.mutations().len();
    assert!(matches!(abort_to_end(&mut d), Progress::Done(_)));
    assert_eq!(
        mutations(&d.cp)[before..],
        [
            "stop drasi-1".to_owned(),
            "start drasi-1 with the previous configuration".to_owned(),
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned(),
        ]
    );
    assert_clean(&d.cp);
}

#[test]
fn a_failed_undo_asked_again_restarts_the_instance_and_ends_clean() {
    let mut d = driver(json!({"health_deadline_ms": 3000}));
    for _ in 0..5 {
        d.step();
    }
    assert_eq!(d.status().unwrap().phase, "scaling-down");
    // The instance does not come back with its previous configuration in time.
    d.cp.set_health(ID, false);
    let failed = abort_to_end(&mut d);
    assert!(
        matches!(
            &failed,
            Progress::Failed {
                retryable: true,
                ..
            }
        ),
        "{failed:?}"
    );
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(CLONE, 100)]);
    let before = d.cp.mutations().len();
    // Asked again with the state of the failed call, the undo starts over.
    d.cp.set_health(ID, true);
    let mut progress = d.retry_abort(Duration::from_secs(10));
    for _ in 0..50 {
        if progress.is_terminal() {
            break;
        }
        progress = d.abort();
    }
    assert!(matches!(progress, Progress::Done(_)), "{progress:?}");
    assert_eq!(
        mutations(&d.cp)[before..],
        [
            "stop drasi-1".to_owned(),
            "start drasi-1 with the previous configuration".to_owned(),
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned(),
        ]
    );
    assert_clean(&d.cp);
}

#[test]
fn replaying_any_step_after_a_crash_creates_no_second_clone() {
    let total = happy_calls();
    for k in 2..=total {
        let mut d = driver(every_phase_params());
        for _ in 0..k {
            d.step();
        }
        d.replay();
        let p = run_to_end(&mut d);
        assert!(matches!(p, Progress::Done(_)), "replay of call {k}: {p:?}");
        assert_eq!(d.cp.clones_created(), 1, "replay of call {k}");
        assert_clean(&d.cp);
    }
}

#[test]
fn replaying_an_abort_step_is_harmless() {
    let mut d = driver(json!({}));
    for _ in 0..5 {
        d.step();
    }
    let mut p = d.abort();
    while !p.is_terminal() {
        d.replay();
        p = d.abort();
    }
    assert!(matches!(p, Progress::Done(_)), "{p:?}");
    assert_clean(&d.cp);
}

#[test]
fn invalid_params_fail_without_retry_naming_the_param_and_touch_nothing() {
    for (params, name) in [
        (json!({"health_poll_ms": "fast"}), "`health_poll_ms`"),
        (json!({"health_deadline_ms": -1}), "`health_deadline_ms`"),
        (json!({"scale_down_delay": "30 s"}), "`scale_down_delay`"),
        (json!({"drain": true}), "`drain`"),
        (json!({"auto_promote": 1}), "`auto_promote`"),
        (
            json!({"preview_analysis": {"interval": "5s"}}),
            "`preview_analysis.max_error_rate`",
        ),
        (json!({"preview_analysis": "yes"}), "`preview_analysis`"),
        (json!({"steps": [{"weight": 10}]}), "`steps`"),
        (json!([1]), "JSON object"),
    ] {
        // Without `with_approval`, which would make params an object.
        let mut d = Driver::<BlueGreen>::new(
            Rollout::new(ID, desired())
                .with_actual(previous())
                .with_params(params.clone()),
            control_plane(),
        );
        let p = d.step();
        let Progress::Failed { reason, retryable } = &p else {
            panic!("{params}: {p:?}")
        };
        assert!(!retryable, "{params}");
        assert!(reason.contains(name), "{params}: {reason}");
        assert!(d.cp.calls().is_empty(), "{params}");
    }
}

#[test]
fn reserved_host_params_are_accepted() {
    let mut d = driver(json!({"$approval": "none", "$unknown_later": true, "drain": 0}));
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_eq!(mutations(&d.cp), HAPPY_PATH);
}
