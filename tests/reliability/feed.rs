//! Suite item 3: duplicated, reordered and dropped change-feed events. The same scripted
//! desired changes run twice against a fresh world each time, the daemon reaching the
//! control plane through the fault proxy: once with the feed's answers as they are, once
//! with the proxy rewriting them (events duplicated, dropped, or held back and delivered
//! after newer ones).
//! Both runs must end in the same state with the same mutations, by the control plane's
//! own record (its change feed, read directly); a dropped event is healed by the
//! periodic resync, which is kept short.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use setpoint_tests::fault_proxy::{self, Fault, FaultProxy, FeedFaults};
use setpoint_tests::figures::{self, Figures};
use setpoint_tests::world::{Lifecycle, World, bounded, set_level, within};

/// Short: a dropped event waits for the next resync.
const RESYNC: &str = "2s";
const LEVELS: [&str; 3] = ["debug", "warn", "info"];

/// What one run ended with.
#[derive(Debug)]
struct Run {
    /// Per instance (by name): the level its process serves at the end.
    served: BTreeMap<String, String>,
    /// Per instance (by name): starts and stops per revision, from the control plane.
    lifecycle: BTreeMap<String, Vec<Lifecycle>>,
    /// Events duplicated, dropped; answers carrying events held back from an earlier one.
    duplicated: usize,
    dropped: usize,
    reordered: usize,
    took: Duration,
}

async fn run(instances: usize, rounds: usize, faults: Option<FeedFaults>, seed: u64) -> Run {
    let started = Instant::now();
    let mut world = World::new(&[]).await;
    let proxy = FaultProxy::start(&world.cp_url(), seed).await;
    let mut ids = Vec::new();
    for i in 0..instances {
        ids.push(world.create(&format!("feed-{i}"), json!({})).await);
    }
    world.start_daemon_at(&proxy.url(), RESYNC, "").await;
    if let Some(faults) = faults {
        proxy.set_feed_faults(faults);
    }
    let mut level = "info";
    for round in 0..=rounds {
        if round > 0 {
            level = LEVELS[(round - 1) % LEVELS.len()];
            for id in &ids {
                world.patch(id, set_level(level)).await;
            }
        }
        for id in &ids {
            let ok = within(Duration::from_secs(30), async || {
                world.synced(id) && world.serves(id, level).await
            })
            .await;
            assert!(
                ok,
                "round {round}: {id} did not converge on logLevel={level} within 30 s \
                 (seed {seed}); audit: {:#?}",
                world.audit(id)
            );
        }
    }
    // Settle: a late duplicate or reordered event must not move anything either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_enabled(false);

    let names: BTreeMap<String, String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("feed-{i}")))
        .collect();
    let mut served = BTreeMap::new();
    for (id, name) in &names {
        let level = world
            .stub_config(id)
            .await
            .map(|c| c["logLevel"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        served.insert(name.clone(), level);
    }
    let lifecycle = world
        .lifecycle()
        .await
        .into_iter()
        .filter_map(|(id, revisions)| Some((names.get(&id)?.clone(), revisions)))
        .collect();
    let (mut duplicated, mut dropped, mut reordered) = (0, 0, 0);
    for entry in proxy.log() {
        if let Some(Fault::Feed {
            duplicated: d,
            dropped: x,
            reordered: r,
        }) = entry.fault
        {
            duplicated += d;
            dropped += x;
            reordered += usize::from(r);
        }
    }
    world.stop_daemon().await;
    Run {
        served,
        lifecycle,
        duplicated,
        dropped,
        reordered,
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_reordered_and_dropped_feed_events_change_nothing() {
    let (instances, rounds) = if figures::long_run() { (6, 8) } else { (3, 3) };
    bounded(
        Duration::from_secs(if figures::long_run() { 900 } else { 150 }),
        async {
            let seed = fault_proxy::seed();
            let clean = run(instances, rounds, None, seed).await;
            let faults = FeedFaults {
                duplicate: 0.3,
                reorder: 0.5,
                drop: 0.3,
            };
            let faulted = run(instances, rounds, Some(faults.clone()), seed).await;
            eprintln!("in order: {clean:?}\nwith feed faults: {faulted:?}");

            assert_eq!(
                clean.served, faulted.served,
                "the same final state (seed {seed})"
            );
            assert_eq!(
                clean.lifecycle, faulted.lifecycle,
                "the same mutations per instance and revision, by the control plane's record \
                 (seed {seed})"
            );
            for (name, revisions) in &clean.lifecycle {
                assert!(
                    revisions.iter().all(|r| r.starts == 1 && r.stops <= 1),
                    "{name}: one start per revision: {revisions:?}"
                );
            }
            assert!(
                faulted.dropped > 0 && faulted.duplicated > 0 && faulted.reordered > 0,
                "the proxy dropped, duplicated and reordered events: {faulted:?}"
            );
            let mutations = |r: &Run| -> usize {
                r.lifecycle
                    .values()
                    .flatten()
                    .map(|l| l.starts + l.stops)
                    .sum()
            };

            figures::record(&Figures {
                load: format!(
                    "{instances} stub instances, {rounds} desired changes each, run twice \
                     (in order, then with feed faults)"
                ),
                faults: format!(
                    "feed answers rewritten: each event dropped with p = {}, else duplicated \
                     with p = {}, else held back with p = {} and delivered after newer \
                     events: {} dropped, {} duplicated, {} answers with late events",
                    faults.drop,
                    faults.duplicate,
                    faults.reorder,
                    faulted.dropped,
                    faulted.duplicated,
                    faulted.reordered
                ),
                trials: format!("1 pair of runs, seed {seed}"),
                notes: format!(
                    "same final state and the same {} starts and stops (control plane's feed) \
                     in both runs; dropped events healed by the {RESYNC} resync; {:.0} s and \
                     {:.0} s",
                    mutations(&faulted),
                    clean.took.as_secs_f64(),
                    faulted.took.as_secs_f64()
                ),
                ..Figures::new("feed")
            });
        },
    )
    .await;
}
