//! Plugin runtime benchmarks, each pair measured side by side in one run on the same
//! inputs, printed as a ratio:
//!
//! 1. field-diff through Wasm (a fresh instance per call from `InstancePre`) vs the same
//!    Rust code called natively (`compare_wire`: parse, diff, and the drifts as the
//!    contract's records, exactly the body of the component's export);
//! 2. a call with instantiation from the pooling allocator vs on demand;
//! 3. loading a plugin by compiling it vs from the on-disk compiled cache.
//!
//! Run: `./scripts/build-plugins && cargo bench -p setpoint --bench plugins`.
//! `SETPOINT_BENCH_PAIRS=1,2` runs only the listed pairs; `SETPOINT_BENCH_PROFILE=wasm`
//! (`native`, or `empty` for a call on `{}`) runs one side of pair 1 alone for five
//! seconds, for `perf record`; `SETPOINT_BENCH_PERFMAP=1` makes the runtime write a perf
//! map so the report names the plugin's functions. `SETPOINT_BENCH_COMPARE=A.wasm,B.wasm`
//! runs only a pair of two comparator builds on the same inputs (for SDK and plugin work;
//! before trusting a small difference, check with `cmp` that rebuilding the unchanged
//! side gives a byte-identical file, so only the change differs).
//! Batches of A and B alternate so that machine noise falls on both; each figure is the
//! median over batches of the mean time per iteration in a batch.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use setpoint::runtime::{DriftKind, PluginRuntime, RuntimeConfig};

const BATCHES: usize = 31;

fn main() {
    let plugin_file = plugin_path("field-diff");
    let bytes = std::fs::read(&plugin_file).expect("read field-diff.wasm");
    let (desired, actual) = configs();
    assert!(
        desired.len() > 1500 && actual.len() > 1500,
        "inputs should be ~2 KB"
    );
    println!(
        "inputs: desired {} bytes, actual {} bytes; {} batches per figure; plugin {} ({} bytes)\n",
        desired.len(),
        actual.len(),
        BATCHES,
        plugin_file.display(),
        bytes.len()
    );

    // 1. Wasm (fresh instance per call, pooling) vs native.
    let pooled = PluginRuntime::new(RuntimeConfig {
        perf_map: std::env::var_os("SETPOINT_BENCH_PERFMAP").is_some(),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let plugin = pooled.load("field-diff.wasm", &bytes).expect("load");
    let native_drifts = field_diff::compare_wire(&desired, &actual, "{}").expect("native");
    let wasm_drifts = pooled
        .compare(&plugin, "bench", &desired, &actual, "{}")
        .expect("wasm");
    // Both sides must produce the same records, field by field.
    let native_records: Vec<_> = native_drifts
        .iter()
        .map(|d| {
            let kind = match d.kind {
                setpoint_plugin::DriftKind::Added => "added",
                setpoint_plugin::DriftKind::Removed => "removed",
                setpoint_plugin::DriftKind::Changed => "changed",
            };
            (&d.path, kind, &d.desired, &d.actual, &d.message)
        })
        .collect();
    let wasm_records: Vec<_> = wasm_drifts
        .iter()
        .map(|d| {
            let kind = match d.kind {
                DriftKind::Added => "added",
                DriftKind::Removed => "removed",
                DriftKind::Changed => "changed",
            };
            (&d.path, kind, &d.desired, &d.actual, &d.message)
        })
        .collect();
    assert_eq!(
        native_records, wasm_records,
        "native and Wasm must produce the same drifts"
    );
    assert!(!wasm_drifts.is_empty(), "the inputs should differ");
    if let Ok(side) = std::env::var("SETPOINT_BENCH_PROFILE") {
        // Run one side of pair 1 alone for a few seconds, for `perf record`.
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < Duration::from_secs(5) {
            match side.as_str() {
                "native" => drop(black_box(
                    field_diff::compare_wire(&desired, &actual, "{}").unwrap(),
                )),
                // A call with (almost) nothing to do: the per-call cost of the runtime.
                "empty" => pooled.smoke(&plugin).unwrap(),
                "wasm" => drop(black_box(
                    pooled
                        .compare(&plugin, "bench", &desired, &actual, "{}")
                        .unwrap(),
                )),
                other => panic!("SETPOINT_BENCH_PROFILE={other}: use wasm, native or empty"),
            }
            calls += 1;
        }
        println!(
            "{side}: {calls} calls, {:.1} µs/call",
            start.elapsed().as_secs_f64() * 1e6 / calls as f64
        );
        return;
    }
    if let Ok(files) = std::env::var("SETPOINT_BENCH_COMPARE") {
        // Two builds of a comparator side by side, e.g. before and after an SDK change.
        let files: Vec<&str> = files.split(',').collect();
        let [a, b] = files[..] else {
            panic!("SETPOINT_BENCH_COMPARE takes two comparator files: A.wasm,B.wasm");
        };
        let load = |file: &str| {
            let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
            pooled
                .load(file, &bytes)
                .unwrap_or_else(|e| panic!("load {file}: {e}"))
        };
        let (plugin_a, plugin_b) = (load(a), load(b));
        pair(
            &format!("compare, a fresh instance per call: A = {a} vs B = {b}"),
            "A",
            "B",
            200,
            || {
                drop(black_box(
                    pooled
                        .compare(&plugin_a, "bench", &desired, &actual, "{}")
                        .unwrap(),
                ))
            },
            || {
                drop(black_box(
                    pooled
                        .compare(&plugin_b, "bench", &desired, &actual, "{}")
                        .unwrap(),
                ))
            },
            f64::INFINITY,
        );
        return;
    }
    if wanted(1) {
        pair(
            "field-diff compare: native vs Wasm (fresh instance per call)",
            "native",
            "wasm",
            200,
            || {
                black_box(field_diff::compare_wire(&desired, &actual, "{}").unwrap());
            },
            || {
                black_box(
                    pooled
                        .compare(&plugin, "bench", &desired, &actual, "{}")
                        .unwrap(),
                );
            },
            1.5,
        );
    }

    if wanted(2) {
        // 2. Pooling vs on-demand instantiation (the whole call, fresh instance each time).
        let on_demand = PluginRuntime::new(RuntimeConfig {
            pooling: false,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let plugin_od = on_demand.load("field-diff.wasm", &bytes).expect("load");
        pair(
            "field-diff call with instantiation: pooling vs on-demand",
            "pooling",
            "on-demand",
            200,
            || {
                black_box(
                    pooled
                        .compare(&plugin, "bench", &desired, &actual, "{}")
                        .unwrap(),
                );
            },
            || {
                black_box(
                    on_demand
                        .compare(&plugin_od, "bench", &desired, &actual, "{}")
                        .unwrap(),
                );
            },
            f64::INFINITY,
        );
    }

    if wanted(3) {
        // 3. First load (compile) vs load from the on-disk cache. Neither runtime holds a
        // loaded plugin between iterations, so every load starts from the bytes.
        let cache_dir =
            std::env::temp_dir().join(format!("setpoint-bench-cache-{}", std::process::id()));
        let cached = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(cache_dir.clone()),
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        drop(
            cached
                .load("field-diff.wasm", &bytes)
                .expect("warm the cache"),
        );
        let uncached = PluginRuntime::new(RuntimeConfig::default()).expect("runtime");
        pair(
            "load field-diff (validate + compile or fetch + metadata and smoke calls): cache vs compile",
            "from cache",
            "compile",
            3,
            || {
                drop(black_box(cached.load("field-diff.wasm", &bytes).unwrap()));
            },
            || {
                drop(black_box(uncached.load("field-diff.wasm", &bytes).unwrap()));
            },
            f64::INFINITY,
        );
        std::fs::remove_dir_all(&cache_dir).ok();
    }
}

/// Measure `a` and `b` in alternating batches of `iters` and print both medians and
/// `b / a`. `target` is the ratio `b / a` must not exceed (printed as met or missed).
fn pair(
    title: &str,
    a_name: &str,
    b_name: &str,
    iters: u32,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
    target: f64,
) {
    // Warm up both.
    for _ in 0..iters.max(3) {
        a();
        b();
    }
    let mut ta = Vec::with_capacity(BATCHES);
    let mut tb = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        ta.push(batch(iters, &mut a));
        tb.push(batch(iters, &mut b));
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    let ratio = mb.as_secs_f64() / ma.as_secs_f64();
    println!("{title}");
    println!("  {a_name:<12} {:>12.1} µs/iter", ma.as_secs_f64() * 1e6);
    println!("  {b_name:<12} {:>12.1} µs/iter", mb.as_secs_f64() * 1e6);
    if target.is_finite() {
        let verdict = if ratio <= target { "met" } else { "MISSED" };
        println!("  ratio {b_name}/{a_name} = {ratio:.2}x (target <= {target}x: {verdict})\n");
    } else {
        println!("  ratio {b_name}/{a_name} = {ratio:.2}x\n");
    }
}

/// Whether pair `n` is to be run (`SETPOINT_BENCH_PAIRS`, default all).
fn wanted(n: u32) -> bool {
    std::env::var("SETPOINT_BENCH_PAIRS").map_or(true, |pairs| {
        pairs.split(',').any(|p| p.trim() == n.to_string())
    })
}

fn batch(iters: u32, f: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("SETPOINT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run ./scripts/build-plugins first",
        path.display()
    );
    path
}

/// Two ~2 KB DRaaS configurations that differ in a few places.
fn configs() -> (String, String) {
    let base = |port: u16, level: &str, extra: bool| {
        let mut sources = vec![
            serde_json::json!({"kind": "postgres", "id": "orders-db", "autoStart": true, "host": "db.internal",
                "port": 5432, "database": "orders", "user": "drasi", "password": "${DB_PASSWORD}",
                "tables": ["orders", "customers", "line_items", "shipments"], "slotName": "drasi_slot",
                "publicationName": "drasi_pub"}),
            serde_json::json!({"kind": "mock", "id": "sensors", "autoStart": true, "dataType": "sensor", "intervalMs": 5000}),
        ];
        if extra {
            sources.push(serde_json::json!({"kind": "mock", "id": "counters", "autoStart": false, "dataType": "counter", "intervalMs": 1000}));
        }
        serde_json::json!({
            "id": "bench-instance", "host": "0.0.0.0", "port": port, "logLevel": level,
            "persistConfig": true, "persistIndex": false,
            "sources": sources,
            "queries": [
                {"id": "active-orders", "queryText": "MATCH (o:Order) WHERE o.status = 'active' RETURN o.id, o.customer_id, o.total", "sources": [{"sourceId": "orders-db"}]},
                {"id": "late-shipments", "queryText": "MATCH (o:Order)-[:SHIPPED_AS]->(s:Shipment) WHERE s.eta < datetime() RETURN o.id, s.id", "sources": [{"sourceId": "orders-db"}]},
                {"id": "sensor-threshold", "queryText": "MATCH (s:Sensor) WHERE s.value > s.threshold RETURN s.id, s.value", "sources": [{"sourceId": "sensors"}]},
                {"id": "big-customers", "queryText": "MATCH (c:Customer)-[:PLACED]->(o:Order) WITH c, sum(o.total) AS spent WHERE spent > 10000 RETURN c.id, c.name, spent", "sources": [{"sourceId": "orders-db"}]},
                {"id": "stale-sensors", "queryText": "MATCH (s:Sensor) WHERE s.lastSeen < datetime() - duration('PT5M') RETURN s.id, s.lastSeen", "sources": [{"sourceId": "sensors"}]}
            ],
            "reactions": [
                {"kind": "log", "id": "log-output", "queries": ["active-orders", "sensor-threshold"]},
                {"kind": "http", "id": "webhook", "queries": ["sensor-threshold"], "baseUrl": "https://alerts.example.com",
                 "routes": {"sensor-threshold": {"added": {"url": "/alerts", "method": "POST"}}}}
            ]
        })
        .to_string()
    };
    (base(8081, "debug", true), base(8080, "info", false))
}
