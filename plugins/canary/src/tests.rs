//! `canary` driven step after step against the fake control plane.

// The driver keeps every call's progress (`Driver::last`, `Driver::status`); the calls
// that only move the rollout along do not bind it.
#![allow(unused_must_use)]

use std::time::Duration;

use setpoint_plugin::serde_json::{Value, json};
use setpoint_plugin::testing::{Call, Driver, FakeControlPlane, Operation};
use setpoint_plugin::{
    Approval, BackendWeight, ControlPlaneError, Counters, InstanceInfo, InstanceStatus, Progress,
    Promote, Rollout, Verdict,
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

/// The instance, running; the clone serves 100 requests without an error between any
/// two readings of its counters.
fn control_plane() -> FakeControlPlane {
    FakeControlPlane::new()
        .with_instance(InstanceInfo {
            id: ID.into(),
            name: "drasi".into(),
            status: InstanceStatus::Running,
            platform: "Process".into(),
            labels: Vec::new(),
        })
        .with_counters(CLONE, (0..100).map(|i| m(i * 100, 0)))
}

fn rollout(params: Value) -> Rollout {
    Rollout::new(ID, desired())
        .with_actual(previous())
        .with_params(params)
        .with_approval(Some(Approval::None))
}

fn driver(params: Value) -> Driver<Canary> {
    Driver::new(rollout(params), control_plane())
}

fn m(requests: u64, errors: u64) -> Counters {
    Counters { requests, errors }
}

/// Step (approving whatever is asked) until the rollout ends.
fn run_to_end(d: &mut Driver<Canary>) -> Progress {
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
fn abort_to_end(d: &mut Driver<Canary>) -> Progress {
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
    let config = |c: &Option<Value>| match c {
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
            } => format!(
                "clone {instance_id}{}",
                config(&Some(configuration.clone()))
            ),
            Call::Start {
                instance_id,
                configuration,
            } => format!("start {instance_id}{}", config(configuration)),
            Call::Stop { instance_id } => format!("stop {instance_id}"),
            Call::Restart { instance_id } => format!("restart {instance_id}"),
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

fn steps_params() -> Value {
    json!({"steps": [
        {"weight": 20},
        {"pause": "10s"},
        {"analysis": {"interval": "5s", "max_error_rate": 0.05}},
        {"weight": 50},
    ]})
}

#[test]
fn happy_path_walks_the_steps_promotes_and_converges_the_instance() {
    let mut d = driver(steps_params());
    d.cp = control_plane().with_counters(CLONE, [m(0, 0), m(100, 1)]);

    // 1: endpoint to the instance, clone created, and the call ends to save its id.
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if after.is_zero()),
        "{p:?}"
    );
    let state = d.state().unwrap();
    assert_eq!(state["clone"], CLONE);
    assert_eq!(state["previous"], previous());
    // 2: the clone is started.
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    // 3: healthy: weight 20, then the 10 s pause.
    let p = d.step();
    let Progress::Requeue { after, message, .. } = &p else {
        panic!("{p:?}")
    };
    assert_eq!(*after, Duration::from_secs(10));
    assert_eq!(message, "pause 10s at step 2 of 4 (10s left)");
    assert_eq!(
        d.state().unwrap()["status"],
        json!({
            "strategy": "canary", "phase": "canary", "step": 2, "steps": 4,
            "weights": [{"instance_id": ID, "weight": 80}, {"instance_id": CLONE, "weight": 20}],
            "clone": CLONE, "paused": true, "waiting_for": "pause 10s at step 2 of 4 (10s left)"
        })
    );
    // 4: the pause is over; the analysis reads its baseline.
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(5)),
        "{p:?}"
    );
    let status = d.status().unwrap();
    assert_eq!((status.step, status.paused), (Some(3), false));
    assert_eq!(status.analysis.unwrap().measurements, 0);
    // 5: 1 error in 100 requests passes; weight 50; promotion: all traffic to the
    // clone, then the drain.
    let p = d.step();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(1)),
        "{p:?}"
    );
    assert_eq!(d.status().unwrap().phase, "promoting");
    // 6: the instance restarts with the desired configuration.
    d.step();
    assert_eq!(d.status().unwrap().phase, "converging");
    // 7: healthy: traffic back; 8: the clone is deleted.
    d.step();
    assert_eq!(d.status().unwrap().phase, "scaling-down");
    let p = d.step();
    let Progress::Done(message) = &p else {
        panic!("{p:?}")
    };
    assert!(message.contains(CLONE), "{message}");

    assert_eq!(
        mutations(&d.cp),
        [
            "weights drasi-1: drasi-1 100",
            "clone drasi-1 with the desired configuration",
            "start drasi-1-clone-1",
            "weights drasi-1: drasi-1 80, drasi-1-clone-1 20",
            "weights drasi-1: drasi-1 50, drasi-1-clone-1 50",
            "weights drasi-1: drasi-1-clone-1 100",
            "stop drasi-1",
            "start drasi-1 with the desired configuration",
            "weights drasi-1: drasi-1 100",
            "delete drasi-1-clone-1",
        ]
    );
    assert_clean(&d.cp);
    assert_eq!(d.calls(), 8);
    assert_eq!(d.elapsed_ms(), 10_000 + 5_000 + 1_000 + 500 + 1_000 + 500);
}

#[test]
fn weight_0_and_100_steps_send_one_backend() {
    let mut d = driver(json!({"steps": [{"weight": 0}, {"weight": 100}, {"pause": "1s"}]}));
    d.step();
    d.step();
    d.step();
    let weights: Vec<String> = mutations(&d.cp)
        .into_iter()
        .filter(|m| m.starts_with("weights"))
        .collect();
    assert_eq!(
        weights,
        [
            "weights drasi-1: drasi-1 100",
            "weights drasi-1: drasi-1 100",
            "weights drasi-1: drasi-1-clone-1 100"
        ]
    );
}

#[test]
fn approval_pause_holds_until_the_host_steps_again() {
    let mut d = driver(json!({"steps": [{"weight": 10}, {"pause": "approval"}, {"weight": 60}]}));
    d.step();
    d.step();
    let p = d.step();
    let Progress::AwaitApproval { message, .. } = &p else {
        panic!("{p:?}")
    };
    assert!(message.contains("past step 2 of 3"), "{message}");
    let status = d.status().unwrap();
    assert!(status.paused);
    assert_eq!(status.step, Some(2));
    assert!(status.waiting_for.unwrap().starts_with("approval: "));
    // Approved: the host steps again with the same state.
    let before = d.cp.mutations().len();
    d.step();
    assert_eq!(
        mutations(&d.cp)[before],
        "weights drasi-1: drasi-1 40, drasi-1-clone-1 60"
    );
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn final_promotion_asks_only_when_params_or_policy_say_so() {
    for (auto_promote, approval, asks) in [
        (true, Approval::None, false),
        (true, Approval::BeforeApply, false),
        (true, Approval::BeforePromote, true),
        (false, Approval::None, true),
    ] {
        let mut d = Driver::<Canary>::new(
            rollout(json!({"steps": [{"weight": 30}], "auto_promote": auto_promote}))
                .with_approval(Some(approval)),
            control_plane(),
        );
        d.step();
        d.step();
        let p = d.step();
        if asks {
            let Progress::AwaitApproval { message, .. } = &p else {
                panic!("{auto_promote} {approval:?}: {p:?}")
            };
            assert!(message.starts_with("promote the desired configuration of drasi-1"));
            assert_eq!(
                d.cp.weights(ID).unwrap(),
                [BackendWeight::new(ID, 70), BackendWeight::new(CLONE, 30)],
                "nothing promoted before the approval"
            );
            let status = d.status().unwrap();
            assert!(status.paused);
            assert_eq!(status.step, None);
            d.step();
        }
        assert_eq!(
            d.cp.weights(ID).unwrap(),
            [BackendWeight::new(CLONE, 100)],
            "{auto_promote} {approval:?}"
        );
        assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
        assert_clean(&d.cp);
    }
}

#[test]
fn promote_step_ends_only_the_current_wait() {
    let mut d = driver(json!({"steps": [
        {"weight": 10},
        {"pause": "1h"},
        {"analysis": {"interval": "1m", "max_error_rate": 0.05}},
        {"weight": 50},
        {"pause": "1h"},
    ]}));
    d.step();
    d.step();
    d.step();
    assert_eq!(d.status().unwrap().step, Some(2));
    // Ends the pause; the analysis starts (and is not skipped).
    let p = d.promote(Promote::Step);
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(60)),
        "{p:?}"
    );
    assert_eq!(d.status().unwrap().step, Some(3));
    // Ends the analysis; weight 50; the next pause holds.
    d.wait(Duration::from_secs(5));
    let p = d.promote(Promote::Step);
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(3600)),
        "{p:?}"
    );
    assert_eq!(d.status().unwrap().step, Some(5));
    assert_eq!(
        d.cp.weights(ID).unwrap(),
        [BackendWeight::new(ID, 50), BackendWeight::new(CLONE, 50)]
    );
    // Ends the last pause: promotion.
    d.promote(Promote::Step);
    assert_eq!(d.status().unwrap().phase, "promoting");
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(CLONE, 100)]);
    // A promote during promotion changes nothing.
    let before = d.cp.mutations().len();
    let p = d.promote(Promote::Full);
    assert!(matches!(p, Progress::Requeue { .. }), "{p:?}");
    assert_eq!(d.cp.mutations().len(), before, "the drain is not cut short");
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn promote_full_skips_steps_analysis_and_the_gate() {
    let params = json!({"auto_promote": false, "steps": [
        {"weight": 10},
        {"pause": "1h"},
        {"analysis": {"interval": "1m", "max_error_rate": 0.05}},
        {"pause": "approval"},
    ]});
    let mut d = Driver::<Canary>::new(
        rollout(params).with_approval(Some(Approval::BeforePromote)),
        control_plane(),
    );
    d.step();
    d.step();
    d.step();
    let p = d.promote(Promote::Full);
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(1)),
        "{p:?}"
    );
    assert_eq!(d.status().unwrap().phase, "promoting");
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(CLONE, 100)]);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn promote_full_before_the_clone_is_healthy_promotes_once_it_is() {
    let mut d = driver(json!({"steps": [{"weight": 10}, {"pause": "1h"}]}));
    d.cp = control_plane().with_health(CLONE, [false, true]);
    d.step();
    d.step();
    // Not healthy yet: nothing is promoted.
    let p = d.promote(Promote::Full);
    assert!(matches!(p, Progress::Requeue { .. }), "{p:?}");
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(ID, 100)]);
    // Healthy: straight to all traffic on the clone, no weight 10, no pause.
    d.step();
    assert_eq!(d.status().unwrap().phase, "promoting");
    assert_eq!(
        mutations(&d.cp)
            .iter()
            .filter(|m| m.starts_with("weights"))
            .collect::<Vec<_>>(),
        [
            "weights drasi-1: drasi-1 100",
            "weights drasi-1: drasi-1-clone-1 100"
        ]
    );
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn failed_analysis_rolls_back_in_the_same_step_naming_the_figures() {
    let mut d = driver(json!({"steps": [
        {"weight": 20},
        {"analysis": {"interval": "10s", "max_error_rate": 0.05}},
        {"weight": 100},
    ]}));
    d.cp = control_plane().with_counters(CLONE, [m(0, 0), m(300, 93)]);
    d.step();
    d.step();
    d.step(); // weight 20, baseline
    let p = d.step();
    assert_eq!(
        p,
        Progress::failed(
            "analysis failed: clone error rate 0.31 (93 of 300 requests) > max 0.05 over 10s, 1 of 1 consecutive failures",
            false
        )
    );
    assert_eq!(
        mutations(&d.cp)[4..],
        [
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned()
        ]
    );
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
fn an_analysis_by_named_query_rolls_back_on_its_value_and_asks_nothing_before_its_interval() {
    let params = json!({"steps": [
        {"weight": 20},
        {"analysis": {"interval": "10s", "query": "error-rate", "max": 0.1}},
        {"weight": 100},
    ]});
    let mut d = driver(params.clone());
    d.cp = control_plane().with_query("error-rate", CLONE, [Some(0.31)]);
    d.step();
    d.step();
    d.step(); // weight 20, the interval starts
    assert!(
        !d.cp.calls().iter().any(|c| matches!(c, Call::Query { .. })),
        "the query is asked before its first interval is over: {:?}",
        d.cp.calls()
    );
    let figures = d.status().unwrap().analysis.unwrap();
    assert_eq!(
        (figures.query.as_deref(), figures.max, figures.requests),
        (Some("error-rate"), Some(0.1), None)
    );
    let p = d.step();
    assert_eq!(
        p,
        Progress::failed(
            "analysis failed: clone's `error-rate` 0.31 > max 0.1 over 10s, 1 of 1 consecutive failures",
            false
        )
    );
    assert!(
        !d.cp
            .calls()
            .iter()
            .any(|c| matches!(c, Call::GetCounters { .. })),
        "the counters are read although the analysis names a query"
    );
    assert_eq!(
        mutations(&d.cp)[4..],
        [
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned()
        ]
    );
    assert_clean(&d.cp);

    // Within the bound it passes and the canary goes on.
    let mut d = driver(params.clone());
    d.cp = control_plane().with_query("error-rate", CLONE, [Some(0.02)]);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);

    // A query policy does not define fails the analysis at once, saying so.
    let mut d = driver(params);
    let p = run_to_end(&mut d);
    let Progress::Failed { reason, .. } = &p else {
        panic!("{p:?}")
    };
    assert!(
        reason.contains("query `error-rate`") && reason.contains("[metrics.queries]"),
        "{reason}"
    );
    assert_clean(&d.cp);
}

#[test]
fn a_passed_analysis_stays_in_the_status_until_the_next_one() {
    let mut d = driver(json!({"steps": [
        {"weight": 20},
        {"analysis": {"interval": "5s", "max_error_rate": 0.05}},
        {"pause": "10s"},
        {"analysis": {"interval": "5s", "max_error_rate": 0.05}},
    ]}));
    d.step();
    d.step();
    d.step(); // weight 20, baseline
    let figures = d.status().unwrap().analysis.unwrap();
    assert_eq!((figures.measurements, figures.verdict), (0, None));
    d.step(); // passes: on to the pause
    let status = d.status().unwrap();
    assert_eq!((status.step, status.paused), (Some(3), true));
    let figures = status.analysis.unwrap();
    assert_eq!(
        (figures.verdict, figures.requests, figures.errors),
        (Some(Verdict::Pass), Some(100), Some(0))
    );
    d.step(); // the next analysis reads its baseline
    let figures = d.status().unwrap().analysis.unwrap();
    assert_eq!((figures.measurements, figures.verdict), (0, None));
    d.step(); // passes: promotion
    assert_eq!(d.status().unwrap().analysis, None);
}

#[test]
fn consecutive_failures_below_the_limit_keep_measuring() {
    let mut d = driver(json!({"steps": [
        {"weight": 20},
        {"analysis": {"interval": "10s", "max_error_rate": 0.05, "failure_limit": 2, "measurements": 2}},
    ]}));
    d.cp = control_plane().with_counters(
        CLONE,
        [m(0, 0), m(100, 10), m(200, 10), m(300, 20), m(400, 30)],
    );
    d.step();
    d.step();
    d.step();
    d.step(); // fail 1 of 2
    let figures = d.status().unwrap().analysis.unwrap();
    assert_eq!(
        (figures.consecutive_failures, figures.verdict),
        (1, Some(Verdict::Fail))
    );
    d.step(); // pass 1 of 2
    d.step(); // fail 1 of 2
    let p = d.step(); // fail 2 of 2
    let Progress::Failed { reason, retryable } = &p else {
        panic!("{p:?}")
    };
    assert!(!retryable);
    assert_eq!(
        reason,
        "analysis failed: clone error rate 0.1 (10 of 100 requests) > max 0.05 over 10s, 2 of 2 consecutive failures"
    );
    assert_clean(&d.cp);
}

#[test]
fn inconclusive_intervals_keep_measuring_then_end_the_analysis() {
    let mut d = driver(json!({"steps": [
        {"weight": 10},
        {"analysis": {"interval": "10s", "max_error_rate": 0.05, "min_requests": 50}},
    ]}));
    d.cp = control_plane().with_counters(CLONE, [m(0, 0), m(10, 0), m(20, 5), m(30, 5)]);
    d.step();
    d.step();
    d.step();
    for n in 1..=2 {
        let p = d.step();
        assert!(
            matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(10)),
            "{p:?}"
        );
        let figures = d.status().unwrap().analysis.unwrap();
        assert_eq!(figures.verdict, Some(Verdict::Inconclusive));
        assert_eq!((figures.inconclusive, figures.requests), (n, Some(10)));
        assert!(!d.status().unwrap().paused);
    }
    let p = d.step();
    assert_eq!(
        p,
        Progress::failed(
            "analysis inconclusive: 3 of 3 allowed inconclusive intervals (inconclusive_limit), the last: clone served 10 request(s) over 10s, fewer than min_requests 50",
            false
        )
    );
    assert_clean(&d.cp);
}

#[test]
fn an_inconclusive_interval_then_enough_traffic_passes() {
    let mut d = driver(json!({"steps": [
        {"weight": 10},
        {"analysis": {"interval": "10s", "max_error_rate": 0.05, "min_requests": 50}},
    ]}));
    d.cp = control_plane().with_counters(CLONE, [m(0, 0), m(10, 0), m(110, 1)]);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn compare_with_original_reads_both_and_judges_the_difference() {
    let mut d = driver(json!({"steps": [
        {"weight": 50},
        {"analysis": {"interval": "10s", "max_error_rate": 0.05, "compare_with_original": true}},
    ]}));
    // Both fail at about 20 %: the clone is no worse than the original.
    d.cp = control_plane()
        .with_counters(CLONE, [m(0, 0), m(100, 22)])
        .with_counters(ID, [m(1000, 0), m(1100, 20)]);
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);

    let mut d = driver(json!({"steps": [
        {"weight": 50},
        {"analysis": {"interval": "10s", "max_error_rate": 0.05, "compare_with_original": true}},
    ]}));
    d.cp = control_plane()
        .with_counters(CLONE, [m(0, 0), m(100, 30)])
        .with_counters(ID, [m(1000, 0), m(1100, 20)]);
    let p = run_to_end(&mut d);
    assert_eq!(
        p,
        Progress::failed(
            "analysis failed: clone error rate 0.3 (30 of 100 requests) > original 0.2 (20 of 100 requests) + max 0.05 over 10s, 1 of 1 consecutive failures",
            false
        )
    );
}

#[test]
fn a_clone_that_never_becomes_healthy_fails_retryably_and_is_deleted() {
    let mut d = driver(json!({"steps": [{"weight": 10}], "health_deadline_ms": 1000}));
    d.cp = control_plane().with_health(CLONE, [false]);
    let p = run_to_end(&mut d);
    let Progress::Failed { reason, retryable } = &p else {
        panic!("{p:?}")
    };
    assert!(retryable);
    assert!(
        reason.starts_with(
            "clone drasi-1-clone-1 did not become healthy within health_deadline_ms = 1000 ms"
        ),
        "{reason}"
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
fn an_instance_unhealthy_with_the_desired_configuration_is_rolled_back() {
    let mut d = driver(json!({"steps": [{"weight": 10}], "health_deadline_ms": 2000}));
    let p = d.step();
    assert!(matches!(p, Progress::Requeue { .. }));
    d.step();
    d.step(); // weight 10, promotion begins
    d.step(); // restart with desired
    assert_eq!(d.status().unwrap().phase, "converging");
    d.cp.set_health(ID, false);
    let mut p = d.step();
    while !p.is_terminal() {
        if mutations(&d.cp)
            .last()
            .is_some_and(|m| m.ends_with("with the previous configuration"))
        {
            d.cp.set_health(ID, true);
        }
        p = d.step();
    }
    let Progress::Failed { reason, retryable } = &p else {
        panic!("{p:?}")
    };
    assert!(!retryable);
    assert!(
        reason.starts_with(
            "drasi-1 did not become healthy with the desired configuration within health_deadline_ms = 2000 ms"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("rolled back: drasi-1 runs its previous configuration"),
        "{reason}"
    );
    assert_eq!(
        mutations(&d.cp)[7..],
        [
            "stop drasi-1".to_owned(),
            "start drasi-1 with the previous configuration".to_owned(),
            "weights drasi-1: drasi-1 100".to_owned(),
            "delete drasi-1-clone-1".to_owned(),
        ],
        "traffic was all on the clone already, so the instance restarts at once and the clone is drained"
    );
    assert_clean(&d.cp);
}

fn every_phase_params() -> Value {
    json!({"auto_promote": false, "steps": [
        {"weight": 20},
        {"pause": "10s"},
        {"analysis": {"interval": "5s", "max_error_rate": 0.05}},
        {"pause": "approval"},
        {"weight": 50},
    ]})
}

/// How many calls the happy path of `every_phase_params` takes.
fn happy_calls() -> u32 {
    let mut d = driver(every_phase_params());
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
    d.calls()
}

#[test]
fn abort_from_every_phase_leaves_the_instance_on_its_previous_configuration() {
    let total = happy_calls();
    let mut phases = std::collections::BTreeSet::new();
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
            "canary",
            "canary (approval)",
            "converging",
            "promoting",
            "scaling-down"
        ],
        "every phase was aborted from"
    );
}

#[test]
fn abort_after_the_instance_restarted_moves_traffic_to_the_clone_first() {
    let mut d = driver(json!({"steps": [{"weight": 10}]}));
    for _ in 0..5 {
        d.step();
    }
    // Traffic is back on the instance, which runs the desired configuration.
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
fn abort_takes_several_calls_and_measures_the_drain() {
    let mut d = driver(json!({"steps": [{"weight": 40}, {"pause": "1h"}], "drain": "3s"}));
    d.step();
    d.step();
    d.step();
    let p = d.abort();
    assert!(
        matches!(&p, Progress::Requeue { after, .. } if *after == Duration::from_secs(3)),
        "{p:?}"
    );
    assert_eq!(d.status().unwrap().phase, "aborting");
    assert_eq!(d.cp.weights(ID).unwrap(), [BackendWeight::new(ID, 100)]);
    assert_eq!(d.cp.clones(), [CLONE.to_owned()], "drained before deleted");
    assert!(matches!(d.abort(), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn replaying_any_step_after_a_crash_creates_no_second_clone() {
    let total = happy_calls();
    // Call 1 creates the clone; a replay of it cannot know (the host's leak sweep deletes
    // the unrecorded one). Every later call is replayed.
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
fn replaying_the_clone_start_does_not_start_it_twice() {
    let mut d = driver(steps_params());
    d.step();
    d.step();
    d.replay();
    let starts =
        d.cp.mutations()
            .into_iter()
            .filter(|c| matches!(c, Call::Start { .. }))
            .count();
    assert_eq!(starts, 1, "the clone already runs");
}

#[test]
fn a_clone_without_a_reported_status_is_started_and_one_that_is_gone_fails_retryably() {
    // Dry-run: the host pretends to make the clone; the control plane does not know it.
    let mut d = driver(json!({"steps": [{"weight": 20}]}));
    d.step();
    d.cp.fail_next(
        Operation::GetRuntimeStatus,
        ControlPlaneError::NotFound("no such instance".into()),
    );
    assert!(matches!(d.step(), Progress::Requeue { .. }));
    assert_eq!(d.cp.status(CLONE), Some(InstanceStatus::Running));

    let mut d = driver(json!({"steps": [{"weight": 20}]}));
    d.step();
    d.cp.fail_next(
        Operation::Start,
        ControlPlaneError::NotFound("no such instance".into()),
    );
    let p = d.step();
    assert_eq!(
        p,
        Progress::failed(
            "clone drasi-1-clone-1 disappeared before it was started",
            true
        )
    );
    assert_clean(&d.cp);
}

#[test]
fn a_transient_control_plane_error_is_retried() {
    let mut d = driver(json!({"steps": [{"weight": 20}, {"pause": "1s"}]}));
    d.step();
    d.step();
    d.cp.fail_next(
        Operation::SetTrafficWeights,
        ControlPlaneError::Unavailable("control plane restarting".into()),
    );
    let p = d.step();
    let Progress::Requeue { message, .. } = &p else {
        panic!("{p:?}")
    };
    assert!(
        message.starts_with("retrying after: setting the weights"),
        "{message}"
    );
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn a_refused_call_before_promotion_cleans_up_and_fails_for_good() {
    let mut d = driver(json!({"steps": [{"weight": 20}]}));
    d.step();
    d.step();
    d.cp.fail_next(
        Operation::SetTrafficWeights,
        ControlPlaneError::Denied("endpoint not in scope".into()),
    );
    let p = d.step();
    let Progress::Failed { reason, retryable } = &p else {
        panic!("{p:?}")
    };
    assert!(!retryable);
    assert!(reason.contains("denied: endpoint not in scope"), "{reason}");
    assert_clean(&d.cp);
}

#[test]
fn invalid_params_fail_without_retry_naming_the_param_and_touch_nothing() {
    for (params, name) in [
        (json!({}), "`steps`"),
        (json!({"steps": []}), "`steps`"),
        (json!({"steps": [{"weight": 120}]}), "`steps[0].weight`"),
        (json!({"steps": [{"pause": "soon"}]}), "`steps[0].pause`"),
        (
            json!({"steps": [{"analysis": {"interval": "1s", "max_error_rate": 2}}]}),
            "`steps[0].analysis.max_error_rate`",
        ),
        (
            json!({"steps": [{"weight": 1}], "drain": "fast"}),
            "`drain`",
        ),
        (
            json!({"steps": [{"weight": 1}], "auto_promote": "yes"}),
            "`auto_promote`",
        ),
        (
            json!({"steps": [{"weight": 1}], "health_poll_ms": 0}),
            "`health_poll_ms`",
        ),
        (
            json!({"steps": [{"weight": 1}], "scale_down_delay": "1s"}),
            "`scale_down_delay`",
        ),
    ] {
        let mut d = driver(params.clone());
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
    let mut d = driver(json!({
        "steps": [{"weight": 5}], "$approval": "none", "$something_new": [1, 2]
    }));
    assert!(matches!(run_to_end(&mut d), Progress::Done(_)));
    assert_clean(&d.cp);
}

#[test]
fn abort_before_the_first_step_has_nothing_to_undo() {
    let mut d = driver(steps_params());
    assert!(matches!(d.abort(), Progress::Done(m) if m.starts_with("nothing to undo")));
    assert!(d.cp.calls().is_empty());
}
