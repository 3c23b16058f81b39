//! Reliability suite, item 4: the daemon is SIGKILLed at random moments while a fleet
//! changes under it. A real `setpoint run` process, the reference control plane on
//! loopback with real stub processes, two instances under `restart` and two under
//! `canary` (clones, weights); each trial makes desired changes to some instances,
//! kills the daemon after a delay drawn from a seeded generator (the seed is printed;
//! `SETPOINT_SIGKILL_SEED` replays it), sometimes changes one more instance while it is
//! down, and starts it again on the same database.
//!
//! At the end every instance runs its latest desired configuration (its stub serves
//! it), no clone is left, and the audit and the control plane agree on every mutation:
//! each start, stop, restart, clone and delete the control plane carried out (its
//! lifecycle call log) was audited as done, failed or in doubt (intent journal), and
//! each call audited as done is one the control plane carried out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use setpoint_tests::figures::{Figures, long_run, record};
use setpoint_tests::lifecycle::{
    Rng, audited_calls, clones, compare, label, recorded_calls, settings_with_cache, settled,
};
use setpoint_tests::process::Setpoint;
use setpoint_tests::setpoint_bin;
use setpoint_tests::traffic::{install_plugins, set_endpoint};
use setpoint_tests::world::{World, set_level, within};

const POLICY: &str = r#"
[[policy.rules]]
name = "canary"
match = { labels = { delivery = "canary" } }
strategy = "canary"
strategy_params = { drain = "300ms", health_poll_ms = 100, steps = [
  { weight = 50 }, { pause = "500ms" },
] }

[[policy.rules]]
name = "restart"
match = {}
strategy = "restart"
strategy_params = { health_poll_ms = 100 }
"#;

const LEVELS: [&str; 5] = ["debug", "info", "warn", "error", "trace"];

/// Trials, in both modes: a trial is about 2 s.
const TRIALS: usize = 50;
/// The kill lands uniformly within this many milliseconds after a trial's changes.
const MAX_KILL_DELAY_MS: u64 = 2500;

/// A level other than `current`.
fn pick_level(rng: &mut Rng, current: &str) -> &'static str {
    loop {
        let level = LEVELS[rng.below(LEVELS.len() as u64) as usize];
        if level != current {
            return level;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_of_a_changing_fleet_loses_nothing() {
    tokio::task::spawn_blocking(setpoint_bin)
        .await
        .expect("building the setpoint binary");
    let limit = Duration::from_secs(if long_run() { 600 } else { 240 });
    tokio::time::timeout(limit, run())
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

async fn run() {
    let started = Instant::now();
    let (mut rng, seed) = Rng::from_env("SETPOINT_SIGKILL_SEED");
    let world = World::new(&[]).await;
    install_plugins(&world, &["canary"]);
    let config = settings_with_cache(POLICY);
    let mut daemon = Setpoint::start(&world, &config).await;

    // (id, under canary)
    let mut fleet: Vec<(String, bool)> = Vec::new();
    for (name, canary) in [
        ("orders", false),
        ("billing", false),
        ("search", true),
        ("sensors", true),
    ] {
        fleet.push((world.create(name, json!({})).await, canary));
    }
    for (id, canary) in &fleet {
        let up = within(Duration::from_secs(30), async || {
            settled(&world, &daemon, id, "info", false).await
        })
        .await;
        assert!(
            up,
            "{id} did not come up\n{}",
            daemon.explain(&world, id, "info").await
        );
        if *canary {
            label(&world, id, "delivery", "canary").await;
            set_endpoint(&world.http, &world.cp_url(), id, &[(id, 100)]).await;
        }
    }
    let ids: Vec<String> = fleet.iter().map(|(id, _)| id.clone()).collect();
    let mut desired: BTreeMap<String, &str> = ids.iter().map(|id| (id.clone(), "info")).collect();

    let mut changes = 0usize;
    let mut changes_while_down = 0usize;
    let mut delays = Vec::new();
    for trial in 0..TRIALS {
        // Desired changes: each instance with probability 1/2, at least one.
        let first = rng.below(ids.len() as u64) as usize;
        for (i, id) in ids.iter().enumerate() {
            if i == first || rng.chance(0.5) {
                let level = pick_level(&mut rng, desired[id]);
                world.patch(id, set_level(level)).await;
                desired.insert(id.clone(), level);
                changes += 1;
            }
        }
        let delay = rng.below(MAX_KILL_DELAY_MS + 1);
        delays.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        daemon.kill();
        // The world moves on while the daemon is down, now and then.
        if rng.chance(0.25) {
            let id = &ids[rng.below(ids.len() as u64) as usize];
            let level = pick_level(&mut rng, desired[id]);
            world.patch(id, set_level(level)).await;
            desired.insert(id.clone(), level);
            changes += 1;
            changes_while_down += 1;
        }
        eprintln!(
            "trial {trial}: killed {delay} ms after the changes; desired now {:?}",
            desired.values().collect::<Vec<_>>()
        );
        daemon = Setpoint::start(&world, &config).await;
    }

    // Every instance converges on its latest desired configuration.
    let last_start = Instant::now();
    for (id, canary) in &fleet {
        let level = desired[id];
        let ok = within(Duration::from_secs(60), async || {
            settled(&world, &daemon, id, level, *canary).await
        })
        .await;
        assert!(
            ok,
            "seed {seed}: {id} did not converge on {level} after the last restart\n{}",
            daemon.explain(&world, id, level).await
        );
    }
    let converged_after = last_start.elapsed();
    let no_clones = within(Duration::from_secs(20), async || {
        clones(&world).await.is_empty()
    })
    .await;
    assert!(
        no_clones,
        "seed {seed}: clones left: {:?}",
        clones(&world).await
    );
    // Settled, so nothing is in flight: a last kill leaves nothing in the journal.
    daemon.kill();
    let db = world.dir.path().join("setpoint.db");
    let pending = setpoint::store::Store::open(&db)
        .expect("the database opens")
        .intents()
        .expect("the journal reads");
    assert!(
        pending.is_empty(),
        "seed {seed}: calls in flight after convergence: {pending:?}"
    );

    // The audit and the control plane agree on every mutation.
    let recorded = recorded_calls(&world).await;
    let audited = audited_calls(&db);
    let agreement = compare(&recorded, &audited);
    let total = agreement.total();
    let mut table = String::new();
    for ((operation, target), t) in &agreement.by_call {
        table += &format!("  {operation} {target}: {t:?}\n");
    }
    eprintln!("calls by operation and instance:\n{table}");
    assert!(
        agreement.problems.is_empty(),
        "seed {seed}: the audit and the control plane disagree:\n{}\n\ncalls:\n{table}\naudited:\n{}",
        agreement.problems.join("\n"),
        audited
            .iter()
            .map(|c| format!(
                "  {:?} {} {}: {}",
                c.audited, c.operation, c.target, c.message
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        total.recorded_ok > 0 && total.audited_ok > 0,
        "nothing was compared: {total:?}"
    );
    let operations: BTreeMap<String, usize> = recorded.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.operation.clone()).or_default() += 1;
        m
    });
    let mean_delay = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
    record(&Figures {
        load: format!(
            "4 instances (2 restart, 2 canary with a clone and weights), {changes} desired changes ({changes_while_down} while the daemon was down)"
        ),
        faults: format!(
            "SIGKILL of the daemon process {TRIALS} times, each 0–{MAX_KILL_DELAY_MS} ms (uniform, mean {mean_delay:.0} ms) after a trial's changes"
        ),
        trials: format!("{TRIALS} trials (seed {seed})"),
        notes: format!(
            "control plane carried out {} lifecycle calls ({} refused) {}; audit: {} ok, {} failed, {} in doubt, none missing, none extra; converged {:.1} s after the last restart; run {:.0} s",
            total.recorded_ok + total.recorded_failed,
            total.recorded_failed,
            json!(operations),
            total.audited_ok,
            total.audited_failed,
            total.in_doubt,
            converged_after.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
        ..Figures::new("sigkill_trials")
    });
}
