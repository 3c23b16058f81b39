//! Suite item 2: the control plane down for 60 s, as an operator's logs and probes show
//! it: a real `setpoint run` process managing real instances (stub processes), the real
//! reference control plane stopped for 60 s (in both the short and the long settings)
//! and started again. Meanwhile the daemon stays up, `/readyz` answers 200
//! `ready, degraded: ...`, and the outage is logged once when it starts (at most 2
//! lines in all: a reminder comes only every 5 minutes) and once when it ends. Desired
//! changes made while the daemon could not see the control plane (on a second copy of
//! it, on another port, over the same store) are rolled out, and everything is in sync
//! again, within two resync intervals of the control plane's return.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint_tests::figures::{self, Figures};
use setpoint_tests::process::Setpoint;
use setpoint_tests::world::{World, bounded, set_level, within};

/// Short, so that two intervals after the return stay short.
const RESYNC: Duration = Duration::from_secs(5);
/// The outage, in both settings.
const OUTAGE: Duration = Duration::from_secs(60);
/// Log lines allowed during the outage: the `WARN` when it starts, and one spare (a
/// reminder comes every 5 minutes, so none in 60 s).
const MAX_LINES: usize = 2;

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

/// `/readyz` during the outage: 200, ready but degraded.
async fn degraded(daemon: &Setpoint) -> String {
    let (code, body) = daemon.get_text("/readyz").await;
    assert_eq!(code, 200, "readyz during the outage: {code} {body}");
    assert!(
        body.starts_with("ready, degraded:"),
        "readyz during the outage says it is degraded: {body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sixty_second_outage_is_logged_twice_readiness_says_degraded_and_everything_converges_after_it()
 {
    // Building the `setpoint` binary (on a fresh checkout) is not what the bound is for.
    tokio::task::spawn_blocking(setpoint_tests::setpoint_bin)
        .await
        .unwrap();
    bounded(Duration::from_secs(170), async {
        let mut world = World::new(&[]).await;
        let ids = [
            world.create("outage-a", json!({})).await,
            world.create("outage-b", json!({})).await,
            world.create("outage-c", json!({})).await,
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
        let (code, body) = daemon.get_text("/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));

        // The outage.
        let before = daemon.log_text().lines().count();
        world.stop_control_plane().await;
        let down = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        degraded(&daemon).await;

        // Desired changes the daemon cannot see: the same control plane (same store) on
        // another port, changed, stopped again.
        let home = world.cp_addr;
        world.cp_addr = format!("127.0.0.1:{}", setpoint_tests::free_port())
            .parse()
            .unwrap();
        world.start_control_plane().await;
        world.patch(&ids[0], set_level("debug")).await;
        world.patch(&ids[1], set_level("warn")).await;
        world.stop_control_plane().await;
        world.cp_addr = home;

        tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed() + Duration::from_secs(1))).await;
        let readyz_late = degraded(&daemon).await;
        let during = lines_after(&daemon, before);
        let shown = during.join("\n");
        assert!(
            during
                .iter()
                .any(|l| l.contains("WARN") && l.contains("unreachable")),
            "no WARN saying the control plane is unreachable:\n{shown}"
        );
        assert!(
            during.len() <= MAX_LINES,
            "{} log lines over a {OUTAGE:?} outage (at most {MAX_LINES} expected):\n{shown}",
            during.len()
        );
        while down.elapsed() < OUTAGE {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // It comes back; the changes made while it was away are rolled out, and every
        // instance is in sync again, within two resync intervals.
        let before = daemon.log_text().lines().count();
        world.start_control_plane().await;
        let back = Instant::now();
        let outage = back.duration_since(down);
        let levels = ["debug", "warn", "info"];
        let mut converged = true;
        for (id, level) in ids.iter().zip(levels) {
            converged &= within(2 * RESYNC - back.elapsed().min(2 * RESYNC), async || {
                world.serves(id, level).await && in_sync(&daemon.instance(id).await)
            })
            .await;
        }
        let took = back.elapsed();
        // The outage ends, in the log and in readiness, at the first listing or feed
        // read that answers: within a resync interval, maybe after the reconciles (which
        // do not end it) converged.
        let told = within(2 * RESYNC - back.elapsed().min(2 * RESYNC), async || {
            daemon.get_text("/readyz").await == (200, "ready\n".to_owned())
                && daemon.log_text().contains("reachable again")
        })
        .await;
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
                "not converged within {:?} of the control plane's return ({took:?} since):\n{views}log since:\n{}",
                2 * RESYNC,
                after.join("\n")
            );
        }
        assert!(
            told,
            "readyz still degraded or no line saying the control plane is back {:?} after \
             its return; log since:\n{}",
            back.elapsed(),
            after.join("\n")
        );
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

        figures::record(&Figures {
            load: "3 stub instances managed; 2 desired changes made while the daemon could not see the control plane".into(),
            faults: format!("control plane down {:.0} s", outage.as_secs_f64()),
            trials: "1 outage".into(),
            notes: format!(
                "{} daemon log lines during the outage (bound {MAX_LINES}); /readyz 200 `ready, degraded` throughout ({}); all in sync {:.1} s after the return (bound 2 × {} s resync)",
                during.len(),
                readyz_late.trim(),
                took.as_secs_f64(),
                RESYNC.as_secs()
            ),
            ..Figures::new("outage")
        });
    })
    .await;
}
