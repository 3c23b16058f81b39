//! Large components: a valid component of just under 32 MiB of compiled-Rust code (a
//! fixture comparator whose code is copied until it is that large: the hardest kind of
//! large component for the compiler, see `with_code_grown_to`), loaded by the real
//! `setpoint` binary.
//!
//! - `plugins check` of it peaks under 1 GiB of RSS;
//! - dropped into a running daemon's plugin directory, it is compiled by the daemon's
//!   compile child (`setpoint plugins compile`, one at a time, one compiler thread for a
//!   large component) while another instance's change is reconciled, well before the
//!   compile ends; neither the daemon nor the child peaks at 1 GiB;
//! - already in the directory when the daemon starts, it is compiled after the daemon is
//!   ready: other instances converge meanwhile, and an instance whose rule needs it
//!   waits as `PluginLoading` (not degraded) until it serves.
//!
//! The hot-reload test's component is 8 MiB in a debug build (`cargo test`, as CI runs
//! it): 32 MiB takes minutes of CPU on the child's one compiler thread, more in a debug
//! build. `SETPOINT_LARGE_PLUGIN_MIB` sets the size of both tests' component (the
//! figures in `BENCHMARKS.md` are of 32 MiB with `SETPOINT_BIN` a release build).
//!
//! Peaks are each process's `VmHWM` (`/proc/<pid>/status`), sampled every few
//! milliseconds while it runs, and the compile child's own report of it in the daemon's
//! log. Figures are printed (`--nocapture`) for `BENCHMARKS.md`.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use setpoint_tests::process::Setpoint;
use setpoint_tests::world::{World, set_level, within};
use setpoint_tests::{fixture, install_atomically, setpoint_bin, with_code_grown_to};

const MIB: usize = 1024 * 1024;
const GIB_KIB: u64 = 1024 * 1024;

/// The two tests compile the same large component; on a 2-core machine they would
/// only slow each other down, so they take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A comparator (`field-diff` 0.2.0) of just under `default_mib` MiB, or of just under
/// `SETPOINT_LARGE_PLUGIN_MIB` MiB (at least 5: larger than `LARGE_COMPONENT_BYTES`).
fn large_component(default_mib: usize) -> Vec<u8> {
    let mib: usize = std::env::var("SETPOINT_LARGE_PLUGIN_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_mib)
        .max(5);
    let base = std::fs::read(fixture("field-diff-v2")).expect("field-diff-v2 fixture");
    let bytes = with_code_grown_to(&base, mib * MIB - 256 * 1024);
    assert!(
        bytes.len() > (mib - 2) * MIB && bytes.len() < mib * MIB,
        "{} bytes",
        bytes.len()
    );
    bytes
}

/// `VmHWM` of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The daemon's compile child, once it runs: within 30 s of `since`.
async fn compile_child(daemon: &Setpoint, since: Instant) -> u32 {
    loop {
        if let Some(&pid) = children_running(daemon.pid(), "plugins compile").first() {
            return pid;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "no compile child within 30 s\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The children of `pid` whose command line contains `needle`.
fn children_running(pid: u32, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // Field 4, after the parenthesised command name.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            parent == Some(pid)
                && String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
        })
        .collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn plugins_check_of_a_32_mib_component_peaks_under_a_gib() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("large.wasm");
    let bytes = large_component(32);
    std::fs::write(&file, &bytes).unwrap();

    let started = Instant::now();
    let mut child = Command::new(setpoint_bin())
        .args(["plugins", "check"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpoint plugins check starts");
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "plugins check failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("field-diff"), "{stdout}");
    eprintln!(
        "plugins check of a {:.1} MiB component: {took:.1?}, peak RSS {:.0} MiB",
        bytes.len() as f64 / MIB as f64,
        mib(peak)
    );
    assert!(peak > 0, "no RSS sample of the check");
    assert!(
        peak < GIB_KIB,
        "plugins check peaked at {:.0} MiB",
        mib(peak)
    );
}

// The guard only makes the two tests take turns; the other one never awaits, so holding
// it across this test's awaits cannot deadlock.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_plugin_compiles_in_a_child_while_another_instance_is_reconciled() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let world = World::new(&[]).await;
    let daemon = Setpoint::start(&world, "").await;
    let id = world.create("orders", serde_json::json!({})).await;
    let in_sync = async |level: &str| {
        let status = daemon.instance(&id).await;
        world.serves(&id, level).await
            && status["rollout"].is_null()
            && status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type_"] == "Synced" && c["status"] == true)
    };
    assert!(
        within(Duration::from_secs(60), async || in_sync("info").await).await,
        "the instance did not converge at creation\n{}",
        daemon.log_text()
    );

    // The large plugin is dropped in; the daemon starts its compile child. 32 MiB
    // compiles for minutes on the child's one thread, longer in a debug build (`cargo
    // test`, CI), where it is 8 MiB: large all the same (no inlining, one thread).
    let bytes = large_component(if cfg!(debug_assertions) { 8 } else { 32 });
    let dropped = Instant::now();
    install_atomically(&world.plugin_dir().join("large.wasm"), &bytes);
    let compile_child = compile_child(&daemon, dropped).await;
    let compile_started = dropped.elapsed();

    // While it compiles, another change is made and reconciled.
    let changed = Instant::now();
    world.patch(&id, set_level("debug")).await;
    let mut child_peak = 0;
    let mut reconciled = None;
    let mut compiled = None;
    let until = Instant::now() + Duration::from_secs(600);
    while compiled.is_none() || reconciled.is_none() {
        assert!(
            Instant::now() < until,
            "not reconciled ({reconciled:?}) or not compiled ({compiled:?}) within 600 s\n{}",
            daemon.log_text()
        );
        if let Some(kib) = peak_rss_kib(compile_child) {
            child_peak = child_peak.max(kib);
        } else if compiled.is_none() {
            compiled = Some(dropped.elapsed());
        }
        if reconciled.is_none() && in_sync("debug").await {
            reconciled = Some((changed.elapsed(), compiled.is_none()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (reconcile_took, during_compile) = reconciled.unwrap();
    let compiled = compiled.unwrap();

    // Then the daemon loads it from the cache and serves it.
    let active = within(Duration::from_secs(120), async || {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("plugin active") && l.contains("large.wasm"))
    })
    .await;
    let log = daemon.log_text();
    assert!(active, "the large plugin never became active\n{log}");
    let daemon_peak = peak_rss_kib(daemon.pid()).expect("the daemon's VmHWM");
    let reported: Option<u64> = log
        .lines()
        .filter(|l| l.contains("compiled by a child process") && l.contains("large.wasm"))
        .find_map(|l| {
            let (_, rest) = l.split_once("child_peak_rss_kib=")?;
            rest.split_whitespace().next()?.parse().ok()
        });
    eprintln!(
        "large component ({:.1} MiB): compile child started {compile_started:.1?} after the drop, \
         exited {compiled:.1?} after it, peak RSS {:.0} MiB sampled, {:?} MiB reported; \
         daemon peak RSS {:.0} MiB; the other instance's change reconciled in \
         {reconcile_took:.2?} (compile still running then: {during_compile})",
        bytes.len() as f64 / MIB as f64,
        mib(child_peak),
        reported.map(mib),
        mib(daemon_peak),
    );
    assert!(
        during_compile,
        "the change was reconciled only after the compile ended ({reconcile_took:?}; compile {compiled:?})"
    );
    assert!(
        reconcile_took < Duration::from_secs(10),
        "the change took {reconcile_took:?} to reconcile during the compile"
    );
    assert!(
        daemon_peak < GIB_KIB,
        "daemon peaked at {:.0} MiB",
        mib(daemon_peak)
    );
    assert!(
        child_peak.max(reported.unwrap_or(0)) < GIB_KIB,
        "compile child peaked at {:.0} MiB",
        mib(child_peak.max(reported.unwrap_or(0)))
    );
}

/// The instance's condition of `kind` (`Synced`, `Degraded`): its status and reason.
fn condition(instance: &serde_json::Value, kind: &str) -> Option<(bool, String)> {
    instance["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type_"] == kind)
        .map(|c| {
            (
                c["status"] == true,
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

// See the test above for the guard.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_plugin_present_at_start_compiles_after_the_daemon_is_ready() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let world = World::new(&[]).await;
    // The large component is `field-diff` 0.2.0; the rule for `app=large` pins it, the
    // others take the `field-diff` 0.1.0 the directory also holds.
    let config = r#"
[[policy.rules]]
name = "large"
match = { labels = { app = "large" } }
comparator = "field-diff@=0.2.0"
"#;
    // Two running instances, then a change to each while no daemon runs, so the next
    // daemon must judge drift (a comparator call) for both.
    let daemon = Setpoint::start(&world, "").await;
    let other = world.create("orders", serde_json::json!({})).await;
    let big = world
        .create("big", serde_json::json!({ "app": "large" }))
        .await;
    assert!(
        within(Duration::from_secs(60), async || {
            world.serves(&other, "info").await && world.serves(&big, "info").await
        })
        .await,
        "the instances did not start\n{}",
        daemon.log_text()
    );
    daemon.kill();
    world.patch(&other, set_level("debug")).await;
    world.patch(&big, set_level("debug")).await;
    let bytes = large_component(if cfg!(debug_assertions) { 8 } else { 32 });
    install_atomically(&world.plugin_dir().join("large.wasm"), &bytes);

    let started = Instant::now();
    let daemon = Setpoint::start(&world, config).await;
    let ready_after = started.elapsed();
    let active = |log: &str| {
        log.lines()
            .any(|l| l.contains("plugin active") && l.contains("large.wasm"))
    };
    assert!(
        !active(&daemon.log_text()),
        "the daemon was ready only once the large plugin was loaded ({ready_after:?})\n{}",
        daemon.log_text()
    );
    let compile_child = compile_child(&daemon, started).await;
    let compiling = || std::path::Path::new(&format!("/proc/{compile_child}")).exists();

    // While it compiles: the instance under the default rule converges, and the one
    // that needs the large plugin waits for it, not degraded.
    let mut other_synced = None;
    let mut big_waiting = None;
    let until = Instant::now() + Duration::from_secs(600);
    while compiling() && (other_synced.is_none() || big_waiting.is_none()) {
        assert!(Instant::now() < until, "still compiling after 600 s");
        if other_synced.is_none()
            && world.serves(&other, "debug").await
            && condition(&daemon.instance(&other).await, "Synced").is_some_and(|(s, _)| s)
        {
            other_synced = Some(started.elapsed());
        }
        let status = daemon.instance(&big).await;
        if big_waiting.is_none()
            && condition(&status, "Synced") == Some((false, "PluginLoading".to_owned()))
        {
            assert_ne!(
                condition(&status, "Degraded").map(|(s, _)| s),
                Some(true),
                "an instance waiting for a plugin that is loading is not degraded: {status:#}"
            );
            big_waiting = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = daemon.log_text();
    assert!(
        other_synced.is_some(),
        "the other instance did not converge while the large plugin compiled\n{log}"
    );
    let big_waiting = big_waiting.unwrap_or_else(|| {
        panic!("the instance needing the large plugin was never seen waiting for it\n{log}")
    });
    let message = big_waiting["conditions"].to_string();
    assert!(
        message.contains("large.wasm"),
        "the condition names the file still loading: {message}"
    );

    // Then it serves, and the instance that needed it converges.
    let converged = within(Duration::from_secs(120), async || {
        active(&daemon.log_text())
            && world.serves(&big, "debug").await
            && condition(&daemon.instance(&big).await, "Synced").is_some_and(|(s, _)| s)
    })
    .await;
    assert!(
        converged,
        "the large plugin never served the instance that needs it: {:#}\n{}",
        daemon.instance(&big).await,
        daemon.log_text()
    );
    eprintln!(
        "large component ({:.1} MiB) present at start: ready after {ready_after:.1?}, \
         the other instance synced {:.1?} after the start, while it compiled",
        bytes.len() as f64 / MIB as f64,
        other_synced.unwrap(),
    );
}
