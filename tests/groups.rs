//! Group rollouts end to end: a policy rule groups instances by label (`group_by`), and
//! the `rolling` strategy rolls one change across the group in batches, on the real
//! reference control plane with a real stub process per member, the real plugin and
//! the daemon (in process, or as a process that is killed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use setpoint::store::ConditionType;
use setpoint_tests::plugin;
use setpoint_tests::process::Setpoint;
use setpoint_tests::traffic::{Load, LoadSpec, endpoint_weights, install_plugins, set_endpoint};
use setpoint_tests::world::{World, converged, eventually, set_level, within};

/// `rolling` over the instances labelled `app=orders`, grouped by `app`.
fn rule(params: &str) -> String {
    format!(
        r#"
[[policy.rules]]
name = "orders"
match = {{ labels = {{ app = "orders" }} }}
strategy = "rolling"
group_by = ["app"]
strategy_params = {{ health_poll = "100ms", {params} }}
"#
    )
}

/// A world with `rolling` in its plugin directory.
async fn world() -> World {
    let world = World::new(&[]).await;
    std::fs::copy(plugin("rolling"), world.plugin_dir().join("rolling.wasm")).unwrap();
    world
}

/// `n` instances of the group, ordered by id (the order the group rolls out in).
async fn members(world: &World, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            world
                .create(&format!("orders-{i}"), json!({ "app": "orders" }))
                .await,
        );
    }
    ids.sort();
    ids
}

/// Wait until the group's rollout has ended and every member is converged: a member
/// reports `Synced` as soon as it runs its desired configuration, while its group's
/// rollout may still be holding the last health gate.
async fn group_settled(world: &World, n: usize) {
    let daemon = Daemon::InProcess(world);
    settled(&daemon, n).await;
}

/// The daemon a test talks to.
enum Daemon<'a> {
    InProcess(&'a World),
    Process(&'a Setpoint),
}

impl Daemon<'_> {
    async fn group(&self) -> Value {
        match self {
            Daemon::InProcess(world) => {
                world
                    .admin(false, "/v1/groups/app=orders", Value::Null)
                    .await
                    .1
            }
            Daemon::Process(daemon) => daemon.get("/v1/groups/app=orders").await,
        }
    }
}

async fn settled(daemon: &Daemon<'_>, n: usize) {
    eventually(Duration::from_secs(60), "the group to settle", async || {
        let group = daemon.group().await;
        let g = &group["groups"][0];
        g.is_object()
            && g["rollout"].is_null()
            && g["members"]
                .as_array()
                .is_some_and(|m| m.len() == n && m.iter().all(|m| m["converged"] == true))
    })
    .await;
}

/// Wait up to `limit` until every one of `ids` serves logLevel `level` (`what` names the
/// wait in the failure message).
async fn all_serve(world: &World, ids: &[String], level: &str, limit: Duration, what: &str) {
    eventually(limit, what, async || {
        for id in ids {
            if !world.serves(id, level).await {
                return false;
            }
        }
        true
    })
    .await;
}

/// The stub process id of each member.
async fn pids(world: &World, ids: &[String]) -> BTreeMap<String, String> {
    let mut pids = BTreeMap::new();
    for id in ids {
        let status = world.get(&format!("/api/status/{id}/status")).await;
        pids.insert(
            id.clone(),
            status["processId"].as_str().unwrap_or("").to_owned(),
        );
    }
    pids
}

/// Samples every member's `/health` every 20 ms until stopped: the most members seen
/// unhealthy or unreachable at one moment.
struct Sampler {
    stop: Arc<AtomicBool>,
    worst: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(world: &World, ids: &[String]) -> Sampler {
        let mut ports = Vec::new();
        for id in ids {
            ports.push(world.port(id).await);
        }
        let (stop, worst, samples) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let task = tokio::spawn({
            let (stop, worst, samples) = (stop.clone(), worst.clone(), samples.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    // One probe per member, side by side, so a sample is one moment.
                    let probes: Vec<_> = ports
                        .iter()
                        .map(|port| {
                            let request = http.get(format!("http://127.0.0.1:{port}/health"));
                            tokio::spawn(async move {
                                request.send().await.is_ok_and(|r| r.status().is_success())
                            })
                        })
                        .collect();
                    let mut down = 0;
                    for probe in probes {
                        if !probe.await.unwrap_or(false) {
                            down += 1;
                        }
                    }
                    worst.fetch_max(down, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Sampler {
            stop,
            worst,
            samples,
            task,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.worst.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_six_rolls_out_two_at_a_time_never_more_than_two_down() {
    let mut world = world().await;
    world
        .start_daemon(
            "30s",
            &rule(r#"max_unavailable = 2, health_gate = "500ms""#),
        )
        .await;
    let ids = members(&world, 6).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    all_serve(
        &world,
        &ids,
        "info",
        Duration::from_secs(60),
        "the group's first rollout to start every member",
    )
    .await;
    converged(&world, &refs).await;
    group_settled(&world, 6).await;

    // Before the change every member reads converged (this also builds the CLI, which
    // the first call does, so the mid-rollout reads below are quick).
    let printed = world.cli(&["status", "--group", "app=orders"]);
    assert_eq!(member_states(&printed, &ids), ["converged"; 6], "{printed}");

    let sampler = Sampler::start(&world, &ids).await;
    // A change whose instances take 600 ms to become healthy after they start, so a
    // member being updated is visibly down.
    let change = json!([
        { "op": "replace", "path": "/logLevel", "value": "debug" },
        { "op": "add", "path": "/stub", "value": { "readyAfterMs": 600 } },
    ]);
    for id in &ids {
        world.patch(id, change.clone()).await;
    }
    // Mid-rollout, `setpoint status --group` shows a batch in progress and the rest
    // waiting (a batch is in progress for over a second: 600 ms to start, a 500 ms gate).
    let mut mid_rollout = String::new();
    eventually(
        Duration::from_secs(30),
        "`setpoint status --group` to show a batch in progress",
        async || {
            mid_rollout = world.cli(&["status", "--group", "app=orders"]);
            member_states(&mid_rollout, &ids).contains(&"in progress")
        },
    )
    .await;
    let states = member_states(&mid_rollout, &ids);
    assert!(
        states.iter().filter(|s| **s == "in progress").count() <= 2
            && states.contains(&"waiting")
            && states
                .iter()
                .all(|s| ["in progress", "waiting", "converged"].contains(s)),
        "{states:?} in:\n{mid_rollout}"
    );
    all_serve(
        &world,
        &ids,
        "debug",
        Duration::from_secs(60),
        "every member to serve the change",
    )
    .await;
    converged(&world, &refs).await;
    let (worst, samples) = sampler.finish().await;
    assert_eq!(
        worst, 2,
        "never more than 2 members unhealthy or stopped at a sampled moment, and 2 at times"
    );
    assert!(samples > 50, "sampled {samples} times");

    let (code, group) = world
        .admin(false, "/v1/groups/app=orders", Value::Null)
        .await;
    assert_eq!(code, 200, "{group}");
    let members = group["groups"][0]["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 6);
    assert!(members.iter().all(|m| m["converged"] == true), "{group:#}");
    let audit = world.audit("group:orders/app=orders");
    // The batches read back from the audit: the strategy's status at each change.
    let batches: std::collections::BTreeSet<&str> = audit
        .iter()
        .filter(|(_, m)| m.contains("group rollout progress"))
        .filter_map(|(_, m)| m.split("rolling step ").nth(1)?.split(',').next())
        .collect();
    assert!(
        batches.len() >= 2,
        "the audit shows the batches: {audit:#?}"
    );
    // What the README shows an operator, through the CLI.
    let printed = world.cli(&["audit", "group:orders/app=orders", "--limit", "500"]);
    assert!(
        printed.contains("group rollout progress") && printed.contains("rolling step"),
        "`setpoint audit group:orders/app=orders` does not show the batches:\n{printed}"
    );
    group_settled(&world, 6).await;
    let printed = world.cli(&["status", "--group", "app=orders"]);
    assert_eq!(
        member_states(&printed, &ids),
        ["converged"; 6],
        "after the rollout:\n{printed}"
    );
    assert!(
        printed.contains("6 of 6 members converged") && printed.contains("rollout:  none"),
        "{printed}"
    );
    world.stop_daemon().await;
}

/// The STATE column `setpoint status --group` prints for each of `ids`, in their order.
fn member_states<'a>(printed: &'a str, ids: &[String]) -> Vec<&'a str> {
    ids.iter()
        .map(|id| {
            let line = printed
                .lines()
                .find(|l| l.trim_start().starts_with(id.as_str()))
                .unwrap_or_else(|| panic!("{id} missing from:\n{printed}"));
            ["in progress", "failed", "converged", "waiting"]
                .into_iter()
                .find(|s| line.trim_end().ends_with(s))
                .unwrap_or_else(|| panic!("no state for {id} in {line:?}"))
        })
        .collect()
}

/// The change most members get, and the one that makes a member fail its health gate.
fn bad_change() -> Value {
    json!([
        { "op": "replace", "path": "/logLevel", "value": "debug" },
        { "op": "add", "path": "/stub", "value": { "unhealthy": true } },
    ])
}

/// Start a group of six under `config`, converge it, then change every member, the
/// third one badly. The daemon is stopped while the six changes are made, so it sees
/// them as one change and rolls the members out in their order (a change it sees
/// member by member is rolled out in the order it sees them, which the other tests
/// exercise).
async fn six_with_a_bad_third(
    world: &mut World,
    config: &str,
) -> (Vec<String>, BTreeMap<String, String>) {
    world.start_daemon("30s", config).await;
    let ids = members(world, 6).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    group_settled(world, 6).await;
    converged(world, &refs).await;
    let before = pids(world, &ids).await;
    world.stop_daemon().await;
    for (i, id) in ids.iter().enumerate() {
        let change = if i == 2 {
            bad_change()
        } else {
            set_level("debug")
        };
        world.patch(id, change).await;
    }
    world.start_daemon("30s", config).await;
    (ids, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_member_failing_its_health_gate_pauses_the_group_with_four_to_six_untouched() {
    let mut world = world().await;
    let config = rule(r#"health_gate = "300ms", health_deadline = "3s""#);
    let (ids, before) = six_with_a_bad_third(&mut world, &config).await;
    eventually(
        Duration::from_secs(60),
        "the group rollout to pause for an operator",
        async || {
            let (_, group) = world
                .admin(false, "/v1/groups/app=orders", Value::Null)
                .await;
            group["groups"][0]["rollout"]["phase"] == "awaiting-approval"
        },
    )
    .await;
    // Members 1 and 2 run the change; 3 was tried; 4 to 6 were never touched.
    for id in &ids[..2] {
        assert!(world.serves(id, "debug").await, "{id} was updated");
    }
    let after = pids(&world, &ids).await;
    for id in &ids[3..] {
        assert_eq!(
            before[id],
            after[id],
            "{id} untouched; the group's audit: {:#?}",
            world.audit("group:orders/app=orders")
        );
        assert!(
            world.serves(id, "info").await,
            "{id} still runs the old configuration"
        );
    }
    // And it stays paused: nothing more happens without an operator.
    assert!(
        !within(Duration::from_secs(3), async || {
            pids(&world, &ids).await[&ids[3]] != before[&ids[3]]
        })
        .await,
        "member 4 was touched while the rollout was paused"
    );
    let (_, group) = world
        .admin(false, "/v1/groups/app=orders", Value::Null)
        .await;
    let status = &group["groups"][0]["status"];
    assert_eq!(status["failed"], json!([ids[2]]), "{group:#}");
    assert_eq!(status["waiting"], json!(ids[3..]), "{group:#}");
    // What an operator on call reads: 1 and 2 converged, 3 failed, 4 to 6 waiting.
    let printed = world.cli(&["status", "--group", "app=orders"]);
    assert_eq!(
        member_states(&printed, &ids),
        [
            "converged",
            "converged",
            "failed",
            "waiting",
            "waiting",
            "waiting"
        ],
        "{printed}"
    );
    assert!(printed.contains("awaiting-approval"), "{printed}");

    // An operator aborts: the strategy restarts the updated members with what they ran.
    let (code, body) = world
        .admin(true, "/v1/groups/app=orders/abort", Value::Null)
        .await;
    assert_eq!(code, 202, "{body}");
    all_serve(
        &world,
        &ids[..3],
        "info",
        Duration::from_secs(30),
        "members 1 to 3 to run their previous configuration",
    )
    .await;
    let after = pids(&world, &ids).await;
    for id in &ids[3..] {
        assert_eq!(before[id], after[id], "{id} untouched by the abort");
    }
    eventually(
        Duration::from_secs(10),
        "the abort to be audited",
        async || {
            world
                .audit("group:orders/app=orders")
                .iter()
                .any(|(_, m)| m.contains("aborted by"))
        },
    )
    .await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_pause_goes_on_past_the_failed_member() {
    let mut world = world().await;
    let config = rule(r#"health_gate = "300ms", health_deadline = "2s""#);
    let (ids, _) = six_with_a_bad_third(&mut world, &config).await;
    eventually(Duration::from_secs(60), "the pause", async || {
        let (_, group) = world
            .admin(false, "/v1/groups/app=orders", Value::Null)
            .await;
        group["groups"][0]["rollout"]["phase"] == "awaiting-approval"
    })
    .await;
    let (code, body) = world
        .admin(true, "/v1/groups/app=orders/approve", Value::Null)
        .await;
    assert_eq!(code, 200, "{body}");
    all_serve(
        &world,
        &ids[3..],
        "debug",
        Duration::from_secs(60),
        "members 4 to 6 to run the change",
    )
    .await;
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_member_failing_its_health_gate_rolls_members_one_to_three_back() {
    let mut world = world().await;
    let config = rule(r#"health_gate = "300ms", health_deadline = "3s", on_failure = "rollback""#);
    let (ids, before) = six_with_a_bad_third(&mut world, &config).await;
    eventually(
        Duration::from_secs(60),
        "the group rollout to fail after rolling back",
        async || {
            let (_, group) = world
                .admin(false, "/v1/groups/app=orders", Value::Null)
                .await;
            group["groups"][0]["conditions"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type_"] == "Degraded" && c["status"] == true)
                })
        },
    )
    .await;
    for id in &ids[..3] {
        assert!(
            world.serves(id, "info").await,
            "{id} was rolled back to its previous configuration"
        );
    }
    // Rolled back, not left alone: since the change, members 1 to 3 were each started
    // twice (with the change, then with what they ran before).
    let lifecycle = world.lifecycle().await;
    for id in &ids[..3] {
        let since_change = lifecycle[id].last().expect("the change is in the feed");
        assert!(
            since_change.starts >= 2,
            "{id} was updated, then rolled back: {since_change:?}"
        );
    }
    let after = pids(&world, &ids).await;
    for id in &ids[3..] {
        assert_eq!(
            before[id],
            after[id],
            "{id} untouched; the group's audit: {:#?}",
            world.audit("group:orders/app=orders")
        );
    }
    let audit = world.audit("group:orders/app=orders");
    assert!(
        audit
            .iter()
            .any(|(_, m)| m.contains("failed") && m.contains("rolled back")),
        "{audit:#?}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_killed_mid_group_resumes_without_repeating_a_finished_member() {
    let world = world().await;
    let config = rule(r#"health_gate = "1s""#);
    let daemon = Setpoint::start(&world, &config).await;
    let ids = members(&world, 6).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    eventually(Duration::from_secs(60), "the first rollout", async || {
        for id in &ids {
            if !world.serves(id, "info").await {
                return false;
            }
        }
        true
    })
    .await;
    settled(&Daemon::Process(&daemon), 6).await;
    for id in &ids {
        world.patch(id, set_level("debug")).await;
    }
    // Kill it once two members run the change.
    eventually(Duration::from_secs(60), "two members updated", async || {
        let mut n = 0;
        for id in &ids {
            if world.serves(id, "debug").await {
                n += 1;
            }
        }
        n >= 2
    })
    .await;
    daemon.kill();
    // With the daemon dead nothing moves: the members that run the change now, and
    // their processes (once the control plane has recorded each one).
    let mut finished = Vec::new();
    for id in &ids {
        if world.serves(id, "debug").await {
            finished.push(id.clone());
        }
    }
    assert!(finished.len() >= 2, "{finished:?}");
    eventually(
        Duration::from_secs(10),
        "the processes recorded",
        async || {
            pids(&world, &finished)
                .await
                .values()
                .all(|p| !p.is_empty())
        },
    )
    .await;
    let before = pids(&world, &finished).await;
    let daemon = Setpoint::start(&world, &config).await;
    all_serve(
        &world,
        &ids,
        "debug",
        Duration::from_secs(60),
        "every member updated",
    )
    .await;
    let after = pids(&world, &finished).await;
    assert_eq!(
        before, after,
        "members finished before the kill were not restarted"
    );
    let _ = refs;
    daemon.kill();
}

/// `rolling-surge` over the same group: each member's traffic is served by a clone while
/// it is updated.
fn surge_rule(params: &str) -> String {
    rule(params).replace(r#"strategy = "rolling""#, r#"strategy = "rolling-surge""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_surge_rollout_with_none_unavailable_fails_no_request_and_keeps_one_clone_at_most() {
    let mut world = world().await;
    install_plugins(&world, &["rolling-surge"]);
    world
        .start_daemon(
            "30s",
            &surge_rule(
                r#"max_unavailable = 0, max_surge = 1, health_gate = "500ms", drain = "500ms""#,
            ),
        )
        .await;
    let ids = members(&world, 3).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let up = within(Duration::from_secs(40), async || {
        for id in &ids {
            if !world.serves(id, "info").await {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        up,
        "the group's first rollout did not start every member: {:#}\naudit: {:#?}",
        world
            .admin(false, "/v1/groups/app=orders", Value::Null)
            .await
            .1,
        world.audit("group:orders/app=orders")
    );
    converged(&world, &refs).await;
    group_settled(&world, 3).await;
    // Each member published at its own endpoint, with real traffic through each.
    let mut loads = Vec::new();
    for id in &ids {
        set_endpoint(&world.http, &world.cp_url(), id, &[(id, 100)]).await;
        loads.push(Load::start(
            &world.cp_url(),
            id,
            LoadSpec {
                rate: 50.0,
                concurrency: 2,
                ..LoadSpec::default()
            },
        ));
    }
    // The most clones alive at one moment, sampled every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let clone_sampler = tokio::spawn({
        let (stop, most, http, url) = (
            stop.clone(),
            most.clone(),
            world.http.clone(),
            world.cp_url(),
        );
        async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(response) = http.get(format!("{url}/api/server/instances")).send().await
                    && let Ok(list) = response.json::<Value>().await
                {
                    let clones = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|i| i["metadata"]["setpoint.io/clone-of"].is_string())
                        .count();
                    most.fetch_max(clones, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // A change whose instances take 600 ms to become healthy: without a cover, a member
    // being updated would fail its endpoint's requests.
    let change = json!([
        { "op": "replace", "path": "/logLevel", "value": "debug" },
        { "op": "add", "path": "/stub", "value": { "readyAfterMs": 600 } },
    ]);
    for id in &ids {
        world.patch(id, change.clone()).await;
    }
    all_serve(
        &world,
        &ids,
        "debug",
        Duration::from_secs(90),
        "every member to serve the change",
    )
    .await;
    converged(&world, &refs).await;
    group_settled(&world, 3).await;
    stop.store(true, Ordering::SeqCst);
    clone_sampler.await.unwrap();
    let mut failed = Vec::new();
    for (id, load) in ids.iter().zip(loads) {
        let totals = load.stop().await;
        eprintln!("surge: endpoint {id}: {totals}");
        assert!(totals.sent > 100, "{id}: too little traffic: {totals}");
        if totals.failed > 0 {
            failed.push(format!("{id}: {totals}"));
        }
    }
    assert!(
        failed.is_empty(),
        "requests failed during a surge rollout with max_unavailable = 0: {failed:#?}\naudit: {:#?}",
        world.audit("group:orders/app=orders")
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "max_surge = 1: one clone at a time, and one at times"
    );
    for id in &ids {
        assert_eq!(
            endpoint_weights(&world.http, &world.cp_url(), id).await,
            Some(vec![(id.clone(), 100)]),
            "{id}'s endpoint is back on it"
        );
    }
    let left = world.get("/api/server/instances").await;
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .all(|i| i["metadata"]["setpoint.io/clone-of"].is_null()),
        "clones left: {left:#}"
    );
    world.stop_daemon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_grouping_under_a_one_instance_strategy_says_so_and_starts_nothing() {
    let mut world = world().await;
    let config = r#"
[[policy.rules]]
name = "orders"
match = { labels = { app = "orders" } }
strategy = "restart"
group_by = ["app"]
"#;
    world.start_daemon("30s", config).await;
    let ids = members(&world, 2).await;
    let mut seen = Value::Null;
    let reported = within(Duration::from_secs(30), async || {
        seen = Daemon::InProcess(&world).group().await;
        seen["groups"][0]["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type_"] == "Degraded"
                    && c["status"] == true
                    && c["reason"] == "RolloutFailed"
                    && c["message"].as_str().is_some_and(|m| {
                        m.contains("rolls out one instance at a time") && m.contains("rolling")
                    })
            })
        })
    })
    .await;
    assert!(
        reported,
        "the group does not report that its strategy cannot take groups: {seen:#}\n{:#?}",
        world.audit(&ids[0])
    );
    // Nothing was started on the group's behalf, and nothing one member at a time either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids {
        assert_eq!(world.status(id).await, "Created", "{id}: {seen:#}");
        assert!(
            world
                .condition(id, ConditionType::Degraded)
                .is_some_and(|c| c.0 && c.2.contains("rolls out one instance at a time")),
            "{id} says why it does not converge"
        );
    }
    // Under a strategy that takes groups, the same group converges and is no longer
    // degraded.
    world.stop_daemon().await;
    world
        .start_daemon("30s", &rule("health_gate = \"0s\""))
        .await;
    group_settled(&world, 2).await;
    let group = Daemon::InProcess(&world).group().await;
    let degraded = group["groups"][0]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type_"] == "Degraded"))
        .cloned();
    assert!(
        degraded.as_ref().is_some_and(|c| c["status"] == false),
        "{group:#}"
    );
    world.stop_daemon().await;
}
