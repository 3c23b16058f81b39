//! Abuse of the sandbox by a plugin (`plugins/fixtures/sandbox-abuse`, built by
//! `scripts/build-plugins`): every WASI preview1 capability tried, `proc_exit`, deep
//! recursion on both stacks, an answer that would come after the time budget, a sleep
//! in a host call, a million drifts, drift values that are not JSON, a strategy's 100 MiB
//! state, more calls at once than the runtime runs, and a table past the limit.
//! Each must be contained (the call fails, or is denied the capability), reported (the
//! error names the plugin, the instance and the reason) and leave the host as it was: a
//! well-behaved plugin answers right after, and the host's memory stays bounded.
//!
//! What `tests/plugin_runtime.rs` already shows is not repeated here: `loop-forever`
//! (a budget that never ends), `alloc-bomb` (the memory cap), `trap` (a panic), and
//! `wasi-comparator` (a file and a variable).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use setpoint::runtime::{
    CallError, CallFailure, Member, Plugin, PluginRuntime, Rollout, RolloutScope, RuntimeConfig,
};
use setpoint_tests::figures::{self, Figures};
use setpoint_tests::{Quiet, fixture, plugin};

const BUDGET: Duration = Duration::from_millis(500);
const INSTANCE: &str = "inst-abuse";

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig {
        call_deadline: BUDGET,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts")
}

/// Peak resident memory of this process so far, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A well-behaved plugin answers right after the abuse.
fn host_is_fine(rt: &PluginRuntime, after: &str) {
    let field_diff = rt
        .load_file(&plugin("field-diff"))
        .expect("field-diff loads");
    let drifts = rt
        .compare(&field_diff, "inst-ok", r#"{"a":1}"#, r#"{"a":2}"#, "{}")
        .unwrap_or_else(|e| panic!("after {after}: field-diff failed: {e}"));
    assert_eq!(drifts.len(), 1, "after {after}: {drifts:?}");
}

fn abuse(
    rt: &PluginRuntime,
    p: &Plugin,
    params: serde_json::Value,
) -> (Result<usize, Box<CallError>>, Duration) {
    let started = Instant::now();
    let result = rt
        .compare(p, INSTANCE, "{}", "{}", &params.to_string())
        .map(|d| d.len());
    (result, started.elapsed())
}

/// A failure without its guest backtrace, for the figures.
fn short(failure: &CallFailure) -> String {
    let text = failure.to_string();
    text.split("; guest backtrace")
        .next()
        .unwrap_or("")
        .to_owned()
}

/// The error names the plugin (`name@version`), the instance and the phase.
fn assert_reported(error: &CallError, label: &str, what: &str) {
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "comparator {label} on instance {INSTANCE}: compare"
        )),
        "{what}: the error names plugin, instance and phase: {text}"
    );
}

#[test]
fn every_abuse_of_the_sandbox_is_contained_reported_and_leaves_the_host_fine() {
    let started = Instant::now();
    let rt = runtime();
    let p = rt
        .load_file(&fixture("sandbox-abuse"))
        .expect("the fixture loads");
    let label = p.label().to_string();
    let rss_before = peak_rss_kib();
    let mut notes = Vec::new();

    // 1. Every WASI capability: denied, or (clocks, random) harmless.
    let _ = std::fs::remove_file("/tmp/setpoint-sandbox-abuse");
    let drifts = rt
        .compare(&p, INSTANCE, "{}", "{}", "{}")
        .expect("the capabilities probe runs");
    let seen: BTreeMap<String, String> = drifts
        .iter()
        .map(|d| (d.path.trim_start_matches('/').to_owned(), d.message.clone()))
        .collect();
    for denied in [
        "file-read",
        "file-read-relative",
        "file-write",
        "dir-create",
        "dir-list",
        "dir-list-relative",
        "env",
        "args",
        "wall-clock",
        "monotonic-clock",
        "tcp-connect",
        "tcp-listen",
        "udp-bind",
    ] {
        let message = seen
            .get(denied)
            .unwrap_or_else(|| panic!("{denied} was not tried: {seen:#?}"));
        assert!(
            message.contains("denied"),
            "{denied} must be denied: {message}"
        );
    }
    assert!(
        !std::path::Path::new("/tmp/setpoint-sandbox-abuse").exists(),
        "the plugin wrote a file"
    );
    notes.push(format!(
        "{} WASI capabilities tried, {} denied",
        seen.len(),
        seen.values().filter(|m| m.contains("denied")).count()
    ));
    host_is_fine(&rt, "the capabilities probe");

    // 2. proc_exit ends the call, not the host.
    let (result, _) = abuse(&rt, &p, json!({"abuse": "exit"}));
    let error = result.expect_err("proc_exit is a failed call");
    assert_reported(&error, &label, "proc_exit");
    assert!(error.is_trap(), "{error}");
    notes.push(format!("exit: {}", short(&error.failure)));
    host_is_fine(&rt, "proc_exit");

    // 3. Deep recursion, on the shadow stack (in linear memory) and on Wasmtime's.
    for how in ["recurse", "recurse-native"] {
        let (result, took) = abuse(&rt, &p, json!({"abuse": how}));
        let error = result.expect_err("unbounded recursion fails");
        assert_reported(&error, &label, how);
        assert!(
            matches!(error.failure, CallFailure::Trap { .. }),
            "{how}: a trap, not {:?}",
            error.failure
        );
        assert!(took < BUDGET * 4, "{how}: took {took:?}");
        notes.push(format!("{how}: {}", short(&error.failure)));
        host_is_fine(&rt, how);
    }

    // 4. An answer that would come after the budget is not waited for, nor taken.
    let (result, took) = abuse(&rt, &p, json!({"abuse": "spin"}));
    let error = result.expect_err("a late answer is a timeout");
    assert!(
        matches!(error.failure, CallFailure::Timeout { .. }),
        "{error}"
    );
    assert_reported(&error, &label, "spin");
    assert!(took < BUDGET * 3, "spin stopped after {took:?}");
    notes.push(format!(
        "late answer: stopped after {} ms",
        took.as_millis()
    ));
    host_is_fine(&rt, "a late answer");

    // 5. A sleep is time in a host call: the budget still bounds the call.
    let (result, took) = abuse(&rt, &p, json!({"abuse": "sleep", "ms": 3000}));
    notes.push(format!(
        "sleep 3 s: {} after {} ms",
        match &result {
            Ok(_) => "answered".to_owned(),
            Err(e) => short(&e.failure),
        },
        took.as_millis()
    ));
    assert!(
        took < BUDGET * 3,
        "a sleeping plugin held the call for {took:?}, past its budget of {BUDGET:?}: {result:?}"
    );
    host_is_fine(&rt, "a sleep");

    // 6. A million drifts: refused at the memory cap, or returned; the host's own memory
    //    stays bounded either way.
    let (result, took) = abuse(&rt, &p, json!({"abuse": "drifts", "count": 1_000_000}));
    match &result {
        Ok(n) => notes.push(format!(
            "1 M drifts: returned {n} in {} ms",
            took.as_millis()
        )),
        Err(e) => {
            assert_reported(e, &label, "a million drifts");
            notes.push(format!("1 M drifts: {}", short(&e.failure)));
        }
    }
    host_is_fine(&rt, "a million drifts");

    // 7. Drift values that are not JSON text (the SDK cannot write them; the fixture's
    //    hand-written export does): the whole answer is refused, naming the drift.
    let (result, _) = abuse(&rt, &p, json!({"abuse": "bad-json"}));
    let error = result.expect_err("drift values that are not JSON are refused");
    assert_reported(&error, &label, "bad JSON");
    assert!(
        matches!(&error.failure, CallFailure::BadOutput(why)
            if why.contains("drift 1 (path \"/truncated\")") && why.contains("not JSON text")),
        "the refusal names the drift: {error}"
    );
    notes.push(format!("drift values not JSON: {}", short(&error.failure)));
    host_is_fine(&rt, "drift values that are not JSON");

    // 8. A strategy's state: 100 MiB cannot even be built under the memory cap; 8 MiB
    //    can, and is refused as an answer (it would be stored with every step). Either
    //    way the step fails, reported, and returns no state to store.
    let bomb = rt
        .load_file(&fixture("state-bomb"))
        .expect("the state-bomb fixture loads");
    let bomb_label = bomb.label().to_string();
    for (mib, expect) in [(100, "memory cap"), (8, "state of")] {
        let rollout = Rollout {
            group: None,
            members: vec![Member {
                instance_id: INSTANCE.into(),
                desired: "{}".into(),
                actual: Some("{}".into()),
                drifts: vec![],
            }],
            params: json!({ "mib": mib }).to_string(),
            state: None,
            step: 0,
            elapsed_ms: 0,
        };
        let outcome = rt.step(
            &bomb,
            &rollout,
            Arc::new(Quiet),
            RolloutScope::new(INSTANCE),
            false,
        );
        let error = outcome.progress.expect_err("a huge state is never taken");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "strategy {bomb_label} on instance {INSTANCE}: step"
            )),
            "{mib} MiB: the error names plugin, instance and phase: {text}"
        );
        assert!(text.contains(expect), "{mib} MiB: {text}");
        assert!(outcome.calls.is_empty(), "{:?}", outcome.calls);
        notes.push(format!("{mib} MiB state: {}", short(&error.failure)));
    }
    host_is_fine(&rt, "a strategy's huge state");

    // 9. More calls at once than the runtime runs (16) or its pool holds instances
    //    for: every one ends, each with its own report, and nothing is left running.
    let rt = Arc::new(rt);
    let p = Arc::new(p);
    let calls = 40;
    let t = Instant::now();
    let threads: Vec<_> = (0..calls)
        .map(|_| {
            let (rt, p) = (rt.clone(), p.clone());
            std::thread::spawn(move || abuse(&rt, &p, json!({"abuse": "spin"})).0)
        })
        .collect();
    for thread in threads {
        let error = thread.join().expect("no panic").expect_err("a timeout");
        assert!(
            matches!(error.failure, CallFailure::Timeout { .. }),
            "{error}"
        );
    }
    let crowd = t.elapsed();
    notes.push(format!(
        "{calls} runaway calls at once: all stopped in {} ms",
        crowd.as_millis()
    ));
    host_is_fine(&rt, "a crowd of runaway calls");

    let rss_after = peak_rss_kib();
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 1024,
        "the host's peak memory grew by {growth_mib} MiB"
    );

    let mut f = Figures::new("sandbox_abuse");
    f.load = "one runtime, budget 500 ms, memory cap 64 MiB".to_owned();
    f.faults = "WASI files, dirs, env, args, clocks, random, TCP, UDP, stdio; proc_exit; recursion (shadow and native stack); a late answer; a 3 s sleep; 1 M drifts; drift values not JSON; a strategy's 100 MiB and 8 MiB state; 40 runaway calls at once".to_owned();
    f.bad_inputs = format!("{} abusive calls", seen.len() + 9 + calls);
    f.trials = "1".to_owned();
    f.notes = format!(
        "{}; peak RSS {} MiB (+{} MiB); {:.1} s",
        notes.join("; "),
        rss_after / 1024,
        growth_mib,
        started.elapsed().as_secs_f64()
    );
    figures::record(&f);
}

/// `component` with every core table's size set to `elements`: what a hostile toolchain
/// could emit (Rust cannot ask for a table of that size).
fn with_tables_of(component: &[u8], elements: u64) -> Vec<u8> {
    use wasm_encoder::reencode::{Error, Reencode, ReencodeComponent, RoundtripReencoder, utils};

    struct BigTables(u64);
    impl Reencode for BigTables {
        type Error = std::convert::Infallible;
        fn table_type(
            &mut self,
            table: wasmparser::TableType,
        ) -> Result<wasm_encoder::TableType, Error<Self::Error>> {
            let mut table = utils::table_type(&mut RoundtripReencoder, table)?;
            table.minimum = self.0;
            table.maximum = Some(self.0);
            Ok(table)
        }
    }
    impl ReencodeComponent for BigTables {}

    let mut out = wasm_encoder::Component::new();
    BigTables(elements)
        .parse_component(&mut out, wasmparser::Parser::new(0), component)
        .expect("the fixture re-encodes");
    out.finish()
}

/// A component whose table is larger than the host allows is refused when it loads,
/// with a reason, pooled or not; the runtime then loads and runs other plugins.
#[test]
fn a_plugin_whose_table_exceeds_the_limit_is_refused_at_load() {
    let original = std::fs::read(plugin("field-diff")).expect("field-diff is built");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big-table.wasm");
    std::fs::write(&file, with_tables_of(&original, 10_000_000)).unwrap();
    for pooling in [true, false] {
        let rt = PluginRuntime::new(RuntimeConfig {
            pooling,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let rss_before = peak_rss_kib();
        let error = rt
            .load_file(&file)
            .expect_err("a table of ten million elements is refused");
        let reason = setpoint::error_chain(&error);
        assert!(
            reason.contains("big-table.wasm") && reason.contains("table"),
            "pooling {pooling}: the refusal names the file and the table: {reason}"
        );
        // Ten million elements would be 80 MiB; the growth seen is field-diff's first
        // compile (no cache here), not the table.
        let growth_mib = peak_rss_kib().saturating_sub(rss_before) / 1024;
        assert!(
            growth_mib < 256,
            "pooling {pooling}: grew by {growth_mib} MiB"
        );
        host_is_fine(&rt, "a table past the limit");
    }
}
