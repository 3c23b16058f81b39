//! A control-plane outage as an operator's logs show it: a real `setpoint run` process,
//! the real reference control plane stopped for a while and started again. The outage
//! is logged once when it starts and once when it ends (not once per retry and per
//! instance), and everything converges within two resync intervals of the control
//! plane's return.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint_tests::process::Setpoint;
use setpoint_tests::world::{World, set_level, within};

/// Short, so the test stays short: the outage spans several intervals.
const RESYNC: Duration = Duration::from_secs(3);
/// Long enough for the old behaviour (a listing every 2 s, 4 lines each, plus the
/// change feed's and each failed reconcile's own lines) to show.
const OUTAGE: Duration = Duration::from_secs(14);

fn in_sync(status: &Value) -> bool {
    status["rollout"].is_null()
        && status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type_"] == "Synced" && c["status"] == true && c["reason"] == "InSync")
        })
}

/// The log lines after the first `skip`.
fn lines_after(daemon: &Setpoint, skip: usize) -> Vec<String> {
    daemon
        .log_text()
        .lines()
        .skip(skip)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_logged_when_it_starts_and_ends_and_everything_converges_after_it() {
    let mut world = World::new(&[]).await;
    let ids = [
        world.create("outage-a", json!({})).await,
        world.create("outage-b", json!({})).await,
    ];
    let resync = format!("{}s", RESYNC.as_secs());
    let daemon = Setpoint::start_with_env(
        &world,
        &world.cp_url(),
        "",
        &[
            ("SETPOINT_CONTROLLER_RESYNC_INTERVAL", &resync),
            // The reference control plane stops its processes when it shuts down and
            // reports them Stopped when it is back: the daemon starts them again.
            ("SETPOINT_CONTROLLER_RECONCILE_STOPPED_INSTANCES", "true"),
        ],
    )
    .await;
    for id in &ids {
        assert!(
            within(Duration::from_secs(30), async || in_sync(
                &daemon.instance(id).await
            ))
            .await,
            "{id} did not converge before the outage"
        );
    }

    // The outage.
    let before = daemon.log_text().lines().count();
    world.stop_control_plane().await;
    tokio::time::sleep(OUTAGE).await;
    let during = lines_after(&daemon, before);
    let shown = during.join("\n");
    assert!(
        during
            .iter()
            .any(|l| l.contains("WARN") && l.contains("unreachable")),
        "no WARN saying the control plane is unreachable:\n{shown}"
    );
    // One line when it started; a reminder every few minutes at most (none in 14 s).
    assert!(
        during.len() <= 2,
        "{} log lines over a {OUTAGE:?} outage (at most 2 expected):\n{shown}",
        during.len()
    );

    // It comes back; a change made right after is rolled out, and every instance is in
    // sync again, within two resync intervals.
    let before = daemon.log_text().lines().count();
    world.start_control_plane().await;
    let back = Instant::now();
    world.patch(&ids[0], set_level("debug")).await;
    let mut converged = true;
    for id in &ids {
        let level = if *id == ids[0] { "debug" } else { "info" };
        converged &= within(2 * RESYNC - back.elapsed().min(2 * RESYNC), async || {
            world.serves(id, level).await && in_sync(&daemon.instance(id).await)
        })
        .await;
    }
    let after = lines_after(&daemon, before);
    if !converged {
        let mut views = String::new();
        for id in &ids {
            let view = daemon.instance(id).await;
            views.push_str(&format!(
                "{id}: cp status {}, stub serves {:?}, conditions {}, rollout {}\n",
                world.status(id).await,
                world.stub_config(id).await.map(|c| c["logLevel"].clone()),
                view["conditions"],
                view["rollout"]
            ));
        }
        panic!(
            "not converged within {:?} of the control plane's return ({:?} since):\n{views}log since:\n{}",
            2 * RESYNC,
            back.elapsed(),
            after.join("\n")
        );
    }
    let recovered: Vec<&String> = after
        .iter()
        .filter(|l| l.contains("INFO") && l.contains("reachable again"))
        .collect();
    assert_eq!(
        recovered.len(),
        1,
        "one INFO line saying the control plane is back; log since:\n{}",
        after.join("\n")
    );
    assert!(
        recovered[0].contains("down_for"),
        "it says how long the control plane was down: {}",
        recovered[0]
    );
    assert!(
        !after
            .iter()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "no warnings once it is back:\n{}",
        after.join("\n")
    );
}
