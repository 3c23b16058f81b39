//! Daemon benchmarks against the reference control plane (its own process, Simulated
//! platform), printed with their targets:
//!
//! 1. resync of 1,000 and 10,000 converged instances: wall time from daemon start until
//!    every instance has been reconciled once, reconciles per second, peak RSS of the
//!    daemon (this process; the control plane runs in another);
//! 2. event → first strategy control-plane call latency (p50, p99) while configuration
//!    changes arrive at a sustained 200 per second, split at the decision, with how
//!    busy the machine's CPU was meanwhile and how much the hypervisor stole.
//!
//! Run: `./scripts/build-plugins && cargo bench -p setpoint-tests --bench daemon`.
//! `SETPOINT_BENCH_SIZES=1000` limits the resync sizes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use setpoint::config::{Overrides, Settings};
use setpoint::controller::config_digest;
use setpoint::daemon::Daemon;
use setpoint::store::{AuditFilter, AuditKind, Store};
use setpoint_tests::plugin;

const RESYNC_TARGET: Duration = Duration::from_secs(2);
const P99_TARGET: Duration = Duration::from_millis(20);
const EVENT_RATE: u32 = 200;
const EVENT_SECONDS: u32 = 10;

struct ControlPlane {
    child: Child,
    url: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn control_plane_bin() -> std::path::PathBuf {
    release_bin("setpoint-controlplane", "setpoint-controlplane")
}

/// The `setpoint` executable: the daemon's plugin compiler child (`plugins compile`), as
/// `setpoint run` uses its own executable for it. `SETPOINT_BENCH_COMPILE_IN_PROCESS=1`
/// leaves it out, so plugins compile in the bench process as an embedder's default.
fn compiler_bin() -> Option<std::path::PathBuf> {
    if std::env::var_os("SETPOINT_BENCH_COMPILE_IN_PROCESS").is_some() {
        return None;
    }
    Some(release_bin("setpoint", "setpoint"))
}

fn release_bin(package: &str, name: &str) -> std::path::PathBuf {
    let output = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--bin",
            name,
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(Into::into))
        .unwrap_or_else(|| panic!("{name} executable"))
}

fn start_control_plane(dir: &std::path::Path) -> ControlPlane {
    let mut child = Command::new(control_plane_bin())
        .args(["--listen", "127.0.0.1:0", "--feed-capacity", "100000"])
        .arg("--db")
        .arg(dir.join("cp.db"))
        .arg("--runtime-dir")
        .arg(dir.join("runtime"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start setpoint-controlplane");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("control plane output").unwrap();
        if let Some(url) = line.trim().strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    ControlPlane { child, url }
}

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory figure of this process's `/proc/self/status` (`VmHWM:`, `VmRSS:`), in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The memory breakdown by phase: each phase's own peak (the high-water mark is reset
/// to the current RSS between phases through `/proc/self/clear_refs`, Linux 4.0+) and
/// the RSS at its end. Printed when `SETPOINT_BENCH_PHASES=1`.
struct Phases {
    on: bool,
    overall: f64,
}

impl Phases {
    fn new() -> Self {
        let on = std::env::var_os("SETPOINT_BENCH_PHASES").is_some();
        Phases { on, overall: 0.0 }
    }

    /// End a phase: print its peak and the RSS now, then start the next one at the RSS
    /// now.
    fn mark(&mut self, what: &str) {
        let peak = peak_rss_mib();
        self.overall = self.overall.max(peak);
        if !self.on {
            return;
        }
        eprintln!(
            "  [memory] {what:<58} peak {peak:>6.1} MiB, RSS after {:>6.1} MiB",
            status_mib("VmRSS:")
        );
        // Writing 5 resets VmHWM to the current RSS.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

/// The machine's CPU counters (`/proc/stat`'s `cpu` line, in clock ticks): total, busy
/// (everything but idle and iowait) and stolen by the hypervisor.
#[derive(Clone, Copy)]
struct CpuTicks {
    total: u64,
    busy: u64,
    steal: u64,
}

impl CpuTicks {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let f: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is within user).
        let (idle, iowait, steal) = (*f.get(3)?, *f.get(4)?, *f.get(7)?);
        let total: u64 = f.iter().take(8).sum();
        Some(CpuTicks {
            total,
            busy: total - idle - iowait,
            steal,
        })
    }

    /// "busy X %, stolen Y %" of the machine's CPU time since `self`: a run on a machine
    /// that was busy elsewhere or whose host stole time shows it here.
    fn since(self) -> String {
        match CpuTicks::now() {
            Some(now) if now.total > self.total => {
                let d = (now.total - self.total) as f64;
                format!(
                    "machine CPU busy {:.0} %, stolen by the hypervisor {:.1} %",
                    (now.busy - self.busy) as f64 / d * 100.0,
                    (now.steal - self.steal) as f64 / d * 100.0
                )
            }
            _ => "machine CPU: /proc/stat unreadable".to_owned(),
        }
    }
}

/// Create `n` Simulated instances, start them through the control plane, and record
/// their configuration as applied in the daemon's store: a converged fleet.
async fn converged_fleet(
    http: &reqwest::Client,
    url: &str,
    store: &Store,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(64) {
        let mut batch = Vec::new();
        for i in chunk * 64..((chunk + 1) * 64).min(n) {
            let http = http.clone();
            let url = url.to_owned();
            batch.push(tokio::spawn(async move {
                let created: Value = http
                    .post(format!("{url}/api/server/instances"))
                    .json(&json!({
                        "name": format!("sim-{i}"),
                        "platformType": "Simulated",
                        "serverConfiguration": { "host": "127.0.0.1", "logLevel": "info",
                            "sources": [], "queries": [], "reactions": [] }
                    }))
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = created["id"].as_str().unwrap().to_owned();
                http.post(format!("{url}/api/server/instances/{id}/start"))
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap();
                let desired: Value = http
                    .get(format!("{url}/api/configuration/instances/{id}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (id, desired)
            }));
        }
        for task in batch {
            let (id, desired) = task.await.unwrap();
            store
                .record_applied(&id, &desired, &config_digest(&desired), "restart@0.1.0")
                .unwrap();
            ids.push(id);
        }
    }
    ids
}

fn settings(url: &str, dir: &std::path::Path, plugins: &std::path::Path, resync: &str) -> Settings {
    static COMPILER: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let mut settings = Settings::load(
        None,
        Vec::<(String, String)>::new(),
        &Overrides::new()
            .set("control_plane.url", url)
            .set("plugins.dir", plugins.display().to_string())
            .set("store.path", dir.join("setpoint.db").display().to_string())
            .set("admin.listen", "127.0.0.1:0")
            .set("controller.resync_interval", resync),
    )
    .expect("settings");
    settings.plugins.compiler = COMPILER.get_or_init(compiler_bin).clone();
    settings
}

fn synced(daemon: &Daemon) -> u64 {
    daemon
        .controller()
        .metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with("setpoint_reconciles_total{outcome=\"synced\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

async fn resync(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["field-diff", "restart"] {
        std::fs::copy(plugin(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let mut phases = Phases::new();
    phases.mark("before the fleet (bench process, earlier runs)");
    let cp = start_control_plane(dir.path());
    let http = reqwest::Client::new();
    let store = Store::open(dir.path().join("setpoint.db")).unwrap();
    let ids = converged_fleet(&http, &cp.url, &store, n).await;
    drop(store);
    phases.mark("making the fleet (the bench's HTTP client, its store)");

    // A first daemon records every instance's conditions; the measured one starts on the
    // same database, as a restarted daemon does, and resyncs a converged fleet.
    let first = Daemon::start(settings(&cp.url, dir.path(), &plugins, "1h"))
        .await
        .unwrap();
    phases.mark("first daemon start: compile both plugins (cache cold)");
    while synced(&first) < ids.len() as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    phases.mark("first daemon: first reconcile of every instance");
    first.shutdown().await.unwrap();
    phases.mark("first daemon shut down");

    // The clock starts when the daemon is up (plugins loaded; the first resync tick
    // fires at once) and stops when every instance has been reconciled.
    let daemon = Daemon::start(settings(&cp.url, dir.path(), &plugins, "1h"))
        .await
        .unwrap();
    phases.mark("measured daemon start: both plugins from the cache");
    let started = Instant::now();
    while synced(&daemon) < ids.len() as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    phases.mark("measured daemon: resync of every instance");
    let compares: f64 = daemon
        .controller()
        .metrics()
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("setpoint_plugin_call_duration_seconds_count")
                && l.contains("phase=\"compare\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "  (comparator calls during the resync: {})",
        compares as u64
    );
    let rate = n as f64 / took.as_secs_f64();
    let ratio = took.as_secs_f64() / RESYNC_TARGET.as_secs_f64();
    println!(
        "resync of {n:>6} converged instances: {:>7.3} s, {rate:>8.0} reconciles/s, peak RSS {:.0} MiB{}",
        took.as_secs_f64(),
        phases.overall,
        if n == 10_000 {
            format!(
                "  (target <= {:?}: {:.2}x of target, {})",
                RESYNC_TARGET,
                ratio,
                if took <= RESYNC_TARGET {
                    "met"
                } else {
                    "MISSED"
                }
            )
        } else {
            String::new()
        }
    );
    daemon.shutdown().await.unwrap();
}

async fn event_latency() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["field-diff", "restart"] {
        std::fs::copy(plugin(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let cp = start_control_plane(dir.path());
    let http = reqwest::Client::new();
    let n = (EVENT_RATE * EVENT_SECONDS) as usize;
    let store = Store::open(dir.path().join("setpoint.db")).unwrap();
    let ids = Arc::new(converged_fleet(&http, &cp.url, &store, n).await);
    drop(store);
    let daemon = Daemon::start(settings(&cp.url, dir.path(), &plugins, "1h"))
        .await
        .unwrap();
    while synced(&daemon) < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // One change per instance, at EVENT_RATE per second.
    let cpu = CpuTicks::now();
    let mut sent = Vec::with_capacity(n);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / EVENT_RATE);
    let mut tasks = Vec::with_capacity(n);
    for id in ids.iter() {
        ticker.tick().await;
        let (http, url, id) = (http.clone(), cp.url.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let at = SystemTime::now();
            http.patch(format!("{url}/api/configuration/instances/{id}"))
                .json(&json!([{ "op": "replace", "path": "/logLevel", "value": "debug" }]))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
            (id, at)
        }));
    }
    for t in tasks {
        sent.push(t.await.unwrap());
    }
    // Wait for every first call to be recorded.
    let store = daemon.controller().store().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_call = std::collections::HashMap::new();
    let mut decided = std::collections::HashMap::new();
    let mut after = None;
    while first_call.len() < n && Instant::now() < deadline {
        let page = store
            .audit(&AuditFilter {
                after_id: after,
                ..AuditFilter::default()
            })
            .unwrap();
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        for r in page {
            after = Some(r.id);
            if r.entry.kind == AuditKind::Decision
                && let Some(id) = r.entry.instance_id.clone()
            {
                decided.entry(id).or_insert(r.at);
            } else if r.entry.kind == AuditKind::Action
                && let Some(id) = r.entry.instance_id.clone()
            {
                first_call.entry(id).or_insert(r.at);
            }
        }
    }
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| first_call.get(id)?.duration_since(*at).ok())
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!(
        "event -> first strategy call at {EVENT_RATE}/s for {EVENT_SECONDS} s ({} of {n} observed): p50 {:.1} ms, p99 {:.1} ms  (target p99 <= {:?}: {:.2}x of target, {})",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        P99_TARGET,
        p99.as_secs_f64() / P99_TARGET.as_secs_f64(),
        if p99 <= P99_TARGET && latencies.len() == n {
            "met"
        } else {
            "MISSED"
        }
    );
    // Where the time goes: change → decision (feed, queue, observe, judge, decide)
    // and decision → first call (the strategy's step up to its first recorded call).
    let split = |from: &dyn Fn(&str, SystemTime) -> Option<SystemTime>,
                 to: &dyn Fn(&str) -> Option<SystemTime>| {
        let mut d: Vec<Duration> = sent
            .iter()
            .filter_map(|(id, at)| to(id)?.duration_since(from(id, *at)?).ok())
            .collect();
        d.sort();
        let q = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len().saturating_sub(1))];
        if d.is_empty() {
            (Duration::ZERO, Duration::ZERO, Duration::ZERO)
        } else {
            (q(0.50), q(0.99), d[d.len() - 1])
        }
    };
    let (a50, a99, amax) = split(&|_, at| Some(at), &|id| decided.get(id).copied());
    let (b50, b99, bmax) = split(&|id, _| decided.get(id).copied(), &|id| {
        first_call.get(id).copied()
    });
    println!(
        "  breakdown: change -> decision p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; decision -> first call p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        a50.as_secs_f64() * 1e3,
        a99.as_secs_f64() * 1e3,
        amax.as_secs_f64() * 1e3,
        b50.as_secs_f64() * 1e3,
        b99.as_secs_f64() * 1e3,
        bmax.as_secs_f64() * 1e3,
    );
    if let Some(cpu) = cpu {
        println!("  while measured: {}", cpu.since());
    }
    daemon.shutdown().await.unwrap();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sizes: Vec<usize> = std::env::var("SETPOINT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    runtime.block_on(async {
        for n in sizes {
            resync(n).await;
        }
        event_latency().await;
    });
}
