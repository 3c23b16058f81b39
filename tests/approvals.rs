//! Approvals where a strategy asks for them (`approval = "before-promote"`), end to end:
//! the `fixture-approval-gate` strategy asks before it changes anything when the host
//! tells it the rule wants that (`$approval`), and the host pauses there, releases
//! exactly the revision approved, and keeps an abort at that pause across a restart;
//! under other rules the strategy does not ask and nothing pauses. Real control plane on
//! loopback, real stub processes, real components, a real SQLite file.

use std::time::Duration;

use serde_json::{Value, json};
use setpoint::controller::config_digest;
use setpoint::store::{AuditKind, ConditionType, RolloutPhase};
use setpoint_tests::world::{World, converged, eventually, set_level};

/// Instances labelled `env = prod` roll out with the fixture, pausing where it asks.
const PROMOTE_GATED: &str = r#"
[[policy.rules]]
name = "promote-gated"
match = { labels = { env = "prod" } }
strategy = "fixture-approval-gate"
approval = "before-promote"
"#;

/// The same strategy under a rule that wants no approvals.
const NO_APPROVAL: &str = r#"
[[policy.rules]]
name = "auto"
match = { labels = { env = "prod" } }
strategy = "fixture-approval-gate"
approval = "none"
"#;

/// What the fixture asks (its `APPROVAL_MESSAGE`).
const ASKS: &str = "promote the new configuration?";

/// How long a test watches that nothing moves.
const STILL: Duration = Duration::from_millis(1500);

/// The revision whose approval is requested and not yet given, if any.
async fn pending(world: &World, id: &str) -> Option<String> {
    let v = world.admin_instance(id).await;
    if !v["approval"]["approved_at"].is_null() {
        return None;
    }
    v["approval"]["digest"].as_str().map(str::to_owned)
}

/// Wait until a revision other than `not` waits for approval, paused by the strategy:
/// the rollout record is in phase `AwaitingApproval`. Returns the revision.
async fn paused_for_approval(world: &World, id: &str, not: Option<&str>) -> String {
    eventually(
        Duration::from_secs(15),
        "the rollout to pause for approval",
        async || {
            pending(world, id).await.is_some_and(|d| Some(&*d) != not)
                && rollout_phase(world, id) == Some(RolloutPhase::AwaitingApproval)
        },
    )
    .await;
    pending(world, id).await.unwrap()
}

fn rollout_phase(world: &World, id: &str) -> Option<RolloutPhase> {
    world
        .daemon()
        .controller()
        .store()
        .load_rollout(id)
        .unwrap()
        .map(|r| r.phase)
}

/// The digest of the instance's desired configuration as the control plane has it now.
async fn desired_digest(world: &World, id: &str) -> String {
    config_digest(
        &world
            .get(&format!("/api/configuration/instances/{id}"))
            .await,
    )
}

async fn approve(world: &World, id: &str, digest: &str) -> (u16, Value) {
    world
        .admin(
            true,
            &format!("/v1/instances/{id}/approve"),
            json!({ "digest": digest }),
        )
        .await
}

/// Create an instance under the gated rule and bring it up: its first start pauses at
/// the strategy's request too, and is approved.
async fn created_and_running(world: &World) -> (String, String) {
    let id = world.create("orders", json!({ "env": "prod" })).await;
    let first = paused_for_approval(world, &id, None).await;
    assert_eq!(world.status(&id).await, "Created", "nothing started yet");
    let (code, body) = approve(world, &id, &first).await;
    assert_eq!(code, 200, "{body}");
    converged(world, &[&id]).await;
    assert!(world.serves(&id, "info").await);
    (id, first)
}

/// Bring an instance up, change it, and abort (as alice) at the pause its rollout makes
/// for approval. Returns the instance and the revision aborted.
async fn aborted_at_the_pause(world: &World) -> (String, String) {
    let (id, first) = created_and_running(world).await;
    world.patch(&id, set_level("debug")).await;
    let revision = paused_for_approval(world, &id, Some(&first)).await;
    let (code, body) = world
        .admin(
            true,
            &format!("/v1/instances/{id}/abort"),
            json!({ "by": "alice" }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["digest"], revision.as_str(), "{body}");
    (id, revision)
}

fn count(audit: &[(AuditKind, String)], kind: AuditKind, text: &str) -> usize {
    audit
        .iter()
        .filter(|(k, m)| *k == kind && m.contains(text))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn before_promote_pauses_at_the_strategys_request_and_only_there() {
    let mut world = World::new(&["approval-gate"]).await;
    world.start_daemon("1s", PROMOTE_GATED).await;
    let (id, first) = created_and_running(&world).await;

    world.patch(&id, set_level("debug")).await;
    let revision = paused_for_approval(&world, &id, Some(&first)).await;
    assert_eq!(
        revision,
        desired_digest(&world, &id).await,
        "the approval names the desired revision"
    );
    let (status, reason, message) = world
        .condition(&id, ConditionType::AwaitingApproval)
        .unwrap();
    assert!(status, "{reason}: {message}");
    assert_eq!(reason, "ApprovalRequested");
    assert!(message.contains(&revision[..12]), "{message}");
    assert!(message.contains(ASKS), "{message}");
    // A pause inside a started rollout, where the strategy asked: not the before-apply
    // gate (which holds a change before any rollout exists).
    let record = world
        .daemon()
        .controller()
        .store()
        .load_rollout(&id)
        .unwrap()
        .expect("a rollout in progress");
    assert_eq!(record.strategy, "fixture-approval-gate");
    assert!(record.step >= 1, "the strategy was stepped: {record:?}");

    // Nothing moves while it waits, through several resyncs.
    tokio::time::sleep(STILL).await;
    assert!(world.serves(&id, "info").await, "nothing was released");
    assert_eq!(pending(&world, &id).await.as_deref(), Some(&*revision));
    assert_eq!(
        world
            .daemon()
            .controller()
            .store()
            .load_rollout(&id)
            .unwrap()
            .map(|r| (r.phase, r.step)),
        Some((RolloutPhase::AwaitingApproval, record.step)),
        "the paused rollout is not stepped"
    );
    assert_eq!(
        world.admin_instance(&id).await["lastDecision"]["decision"]["decision"],
        "await_approval_to_promote"
    );

    // Approving by the digest's first 12 characters releases exactly this revision.
    let (code, body) = approve(&world, &id, &revision[..12]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["digest"], revision.as_str(), "{body}");
    eventually(
        Duration::from_secs(20),
        "the approved revision to run, synced",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;
    let (status, reason, _) = world
        .condition(&id, ConditionType::AwaitingApproval)
        .unwrap();
    assert!(!status, "AwaitingApproval is cleared ({reason})");
    assert!(pending(&world, &id).await.is_none());

    // It paused once per revision (the first start and the patch), only where the
    // strategy asked, and each approval was used once.
    let audit = world.audit(&id);
    assert_eq!(
        count(&audit, AuditKind::Decision, "awaiting approval:"),
        2,
        "{audit:#?}"
    );
    assert_eq!(
        count(&audit, AuditKind::Approval, "used: the rollout continues"),
        2,
        "{audit:#?}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_before_promote_the_strategy_is_told_so_and_nothing_pauses() {
    let mut world = World::new(&["approval-gate"]).await;
    world.start_daemon("1s", NO_APPROVAL).await;
    let id = world.create("orders", json!({ "env": "prod" })).await;
    converged(&world, &[&id]).await;

    world.patch(&id, set_level("debug")).await;
    eventually(
        Duration::from_secs(20),
        "the change to run without an approval",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;

    let audit = world.audit(&id);
    assert_eq!(
        count(&audit, AuditKind::Decision, "awaiting approval:"),
        0,
        "{audit:#?}"
    );
    assert_eq!(count(&audit, AuditKind::Approval, ""), 0, "{audit:#?}");
    assert!(world.admin_instance(&id).await["approval"].is_null());
    assert!(
        world
            .condition(&id, ConditionType::AwaitingApproval)
            .is_none_or(|c| !c.0)
    );
    // The strategy's own steps ran: it restarted the instance with the desired
    // configuration after the request passed.
    let applied = world
        .daemon()
        .controller()
        .store()
        .last_applied(&id)
        .unwrap()
        .unwrap();
    assert_eq!(applied.config["logLevel"], "debug");
    assert_eq!(applied.strategy, "fixture-approval-gate@0.1.0");
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approving_a_superseded_revision_at_the_promote_pause_does_nothing() {
    let mut world = World::new(&["approval-gate"]).await;
    world.start_daemon("1s", PROMOTE_GATED).await;
    let (id, first) = created_and_running(&world).await;

    world.patch(&id, set_level("debug")).await;
    let revision_a = paused_for_approval(&world, &id, Some(&first)).await;
    world.patch(&id, set_level("warn")).await;
    let revision_b = paused_for_approval(&world, &id, Some(&revision_a)).await;
    assert_ne!(revision_a, revision_b);
    assert_eq!(revision_b, desired_digest(&world, &id).await);
    let audit = world.audit(&id);
    assert!(
        audit.iter().any(|(k, m)| *k == AuditKind::Observation
            && m.contains("desired configuration changed during the rollout")
            && m.contains(&revision_a[..12])
            && m.contains("decided afresh")),
        "{audit:#?}"
    );
    let message = world
        .condition(&id, ConditionType::AwaitingApproval)
        .unwrap()
        .2;
    assert!(message.contains(&revision_b[..12]), "{message}");

    // Approving A, by full digest or by prefix, is refused and releases nothing.
    for given in [&revision_a[..], &revision_a[..12]] {
        let (code, body) = approve(&world, &id, given).await;
        assert_eq!(code, 409, "{given}: {body}");
    }
    tokio::time::sleep(STILL).await;
    assert!(world.serves(&id, "info").await, "nothing was released");
    assert_eq!(
        pending(&world, &id).await.as_deref(),
        Some(&*revision_b),
        "B still waits, unapproved"
    );
    assert_eq!(
        rollout_phase(&world, &id),
        Some(RolloutPhase::AwaitingApproval)
    );

    let (code, body) = approve(&world, &id, &revision_b).await;
    assert_eq!(code, 200, "{body}");
    eventually(
        Duration::from_secs(20),
        "revision B to run, synced",
        async || world.serves(&id, "warn").await && world.synced(&id),
    )
    .await;
    let applied = world
        .daemon()
        .controller()
        .store()
        .last_applied(&id)
        .unwrap()
        .unwrap();
    assert_eq!(applied.digest, revision_b, "B is what was applied");
    let history = world.daemon().controller().store().history(&id).unwrap();
    assert!(
        history.iter().all(|a| a.digest != revision_a),
        "A was never applied: {history:#?}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_at_the_promote_pause_gives_the_revision_up_and_survives_a_restart() {
    let mut world = World::new(&["approval-gate"]).await;
    world.start_daemon("1s", PROMOTE_GATED).await;
    let (id, revision) = aborted_at_the_pause(&world).await;

    let given_up = async |world: &World| {
        world
            .condition(&id, ConditionType::Synced)
            .is_some_and(|c| !c.0 && c.1 == "GivenUp" && c.2.contains(&revision[..12]))
            && world
                .condition(&id, ConditionType::AwaitingApproval)
                .is_some_and(|c| !c.0)
            && rollout_phase(world, &id).is_none()
    };
    eventually(
        Duration::from_secs(10),
        "the revision given up",
        async || given_up(&world).await,
    )
    .await;
    assert!(world.serves(&id, "info").await);
    let v = world.admin_instance(&id).await;
    assert_eq!(v["givenUp"]["digest"], revision.as_str(), "{v}");
    assert!(
        v["givenUp"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("alice") && r.contains("nothing was changed")),
        "the strategy's abort ran and had nothing to undo: {v}"
    );
    assert!(v["approval"].is_null(), "{v}");
    assert!(v["abortRequested"].is_null(), "{v}");
    // The strategy's abort touched nothing: no control-plane call after the request.
    let audit = world.audit(&id);
    let requested = audit
        .iter()
        .position(|(_, m)| m.contains("abort requested by alice"))
        .expect("the abort request is audited");
    assert!(
        audit[requested..]
            .iter()
            .all(|(k, _)| *k != AuditKind::Action),
        "{audit:#?}"
    );

    // Across a restart and several resyncs it stays given up.
    world.stop_daemon().await;
    world.start_daemon("1s", PROMOTE_GATED).await;
    tokio::time::sleep(STILL).await;
    eventually(
        Duration::from_secs(10),
        "a decision after the restart",
        async || world.daemon().controller().last_decision(&id).is_some(),
    )
    .await;
    assert!(given_up(&world).await);
    assert!(
        world
            .daemon()
            .controller()
            .store()
            .load_rollout(&id)
            .unwrap()
            .is_none()
    );
    assert!(world.serves(&id, "info").await);
    assert!(pending(&world, &id).await.is_none());
    assert_eq!(
        world.admin_instance(&id).await["lastDecision"]["decision"]["decision"],
        "given_up"
    );

    // Retry: the same revision is rolled out again and pauses at the strategy's request.
    let (code, body) = world
        .admin(true, &format!("/v1/instances/{id}/retry"), Value::Null)
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["retried"], true, "{body}");
    let again = paused_for_approval(&world, &id, None).await;
    assert_eq!(again, revision);
    assert!(
        world
            .condition(&id, ConditionType::AwaitingApproval)
            .is_some_and(|c| c.0 && c.1 == "ApprovalRequested")
    );
    assert!(world.serves(&id, "info").await);
    let (code, body) = approve(&world, &id, &again).await;
    assert_eq!(code, 200, "{body}");
    eventually(
        Duration::from_secs(20),
        "the retried revision to run",
        async || world.serves(&id, "debug").await && world.synced(&id),
    )
    .await;
    world.stop_daemon().await;
}

/// The gated rule, with the fixture's abort leaving the undo to an operator.
const LEFT_TO_AN_OPERATOR: &str = r#"
[[policy.rules]]
name = "promote-gated"
match = { labels = { env = "prod" } }
strategy = "fixture-approval-gate"
approval = "before-promote"
strategy_params = { leave_to_operator = "orders: restore the old logLevel by hand" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abort_answered_with_await_approval_ends_at_once_and_records_what_is_left() {
    let mut world = World::new(&["approval-gate"]).await;
    world.start_daemon("1s", LEFT_TO_AN_OPERATOR).await;
    let (id, revision) = aborted_at_the_pause(&world).await;

    // An undo never waits for an operator: the abort ends as if done, the revision is
    // given up, and nothing waits for an approval.
    eventually(
        Duration::from_secs(10),
        "the abort to end without waiting",
        async || {
            rollout_phase(&world, &id).is_none()
                && world
                    .condition(&id, ConditionType::Synced)
                    .is_some_and(|c| !c.0 && c.1 == "GivenUp")
        },
    )
    .await;
    assert!(pending(&world, &id).await.is_none());
    assert!(
        world
            .condition(&id, ConditionType::AwaitingApproval)
            .is_some_and(|c| !c.0)
    );
    let v = world.admin_instance(&id).await;
    assert_eq!(v["givenUp"]["digest"], revision.as_str(), "{v}");
    assert!(v["abortRequested"].is_null(), "{v}");
    // What is left for an operator is on record, in the audit and the given-up reason.
    let left = "orders: restore the old logLevel by hand";
    assert!(
        v["givenUp"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(left)),
        "{v}"
    );
    let audit = world.audit(&id);
    assert_eq!(count(&audit, AuditKind::Outcome, left), 1, "{audit:#?}");
    // The strategy changed nothing, and an approval now releases nothing.
    assert!(world.serves(&id, "info").await);
    let (code, _) = approve(&world, &id, &revision).await;
    assert_ne!(code, 200, "no approval is pending after the abort");
    tokio::time::sleep(STILL).await;
    assert!(world.serves(&id, "info").await);
    assert!(rollout_phase(&world, &id).is_none());
    world.stop_daemon().await;
}
