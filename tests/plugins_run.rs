//! `setpoint plugins run`, as a plugin author runs it: the real binary on the shipped
//! components (a comparator's drifts, as text and JSON; a canary's and a restart's
//! dry-run plan against the simulated control plane) and on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use setpoint_tests::{fixture, plugin, setpoint_bin};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(args: &[&Path]) -> Run {
    let out = Command::new(setpoint_bin())
        .args(["plugins", "run"])
        .args(args)
        .env("SETPOINT_LOG", "warn")
        .output()
        .expect("run setpoint plugins run");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn doc(dir: &Path, name: &str, v: Value) -> PathBuf {
    write(dir, name, &v.to_string())
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

#[test]
fn a_comparator_prints_its_drifts_or_no_drift_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let desired = doc(
        dir.path(),
        "d.json",
        json!({"port": 8081, "logLevel": "info"}),
    );
    let actual = doc(
        dir.path(),
        "a.json",
        json!({"port": 8080, "logLevel": "info"}),
    );
    let wasm = plugin("field-diff");

    let r = run(&[&wasm, p("--desired"), &desired, p("--actual"), &actual]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("comparator field-diff@"), "{}", r.stdout);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("/port"))
        .unwrap_or_else(|| panic!("no drift at /port: {}", r.stdout));
    assert!(line.contains("changed"), "{line}");
    assert!(line.contains("8080 -> 8081"), "{line}");
    assert!(!r.stdout.contains("logLevel"), "{}", r.stdout);

    let r = run(&[&wasm, p("--desired"), &desired, p("--actual"), &desired]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no drift"), "{}", r.stdout);

    let r = run(&[
        &wasm,
        p("--desired"),
        &desired,
        p("--actual"),
        &actual,
        p("--json"),
    ]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let drifts: Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    assert_eq!(
        drifts,
        json!([{
            "path": "/port",
            "kind": "changed",
            "desired": "8081",
            "actual": "8080",
            "message": "/port: 8080 -> 8081"
        }])
    );
}

#[test]
fn a_canary_prints_its_dry_run_plan_and_ends_done() {
    let dir = tempfile::tempdir().unwrap();
    let desired = doc(dir.path(), "d.json", json!({"port": 8081}));
    let actual = doc(dir.path(), "a.json", json!({"port": 8080}));
    let params = doc(
        dir.path(),
        "p.json",
        json!({"steps": [{"weight": 20}, {"pause": "1s"}, {"weight": 100}]}),
    );
    let wasm = plugin("canary");
    let args: [&Path; 7] = [
        &wasm,
        p("--desired"),
        &desired,
        p("--actual"),
        &actual,
        p("--params"),
        &params,
    ];

    let r = run(&args);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(out.contains("strategy canary@"), "{out}");
    assert!(out.contains("instance-1"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |what: &dyn Fn(&str) -> bool, name: &str| {
        lines
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("no {name} in the plan:\n{out}"))
    };
    let clone = at(&|l| l.contains("clone-instance instance-1"), "clone");
    let weights = at(
        &|l| {
            l.contains("set-traffic-weights endpoint instance-1:")
                && l.contains("instance-1=80")
                && l.contains("dry-run-clone-instance-1-1=20")
        },
        "80/20 weights",
    );
    let pause = at(&|l| l.contains("wait 1s: pause"), "1s pause");
    let delete = at(
        &|l| l.contains("delete-clone dry-run-clone-instance-1-1"),
        "delete-clone",
    );
    assert!(
        clone < weights && weights < pause && pause < delete,
        "{out}"
    );
    let outcome = lines.last().unwrap();
    assert!(outcome.starts_with("outcome: done:"), "{out}");

    // --json: the same plan, as data.
    let mut json_args = args.to_vec();
    json_args.push(p("--json"));
    let r = run(&json_args);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    assert_eq!(report["result"], "done", "{report:#}");
    let calls = report["calls"].as_array().unwrap();
    assert!(
        calls.iter().any(|c| c["call"] == "set-traffic-weights"
            && c["weights"]
                == json!([
                    {"instanceId": "instance-1", "weight": 80},
                    {"instanceId": "dry-run-clone-instance-1-1", "weight": 20}
                ])),
        "{report:#}"
    );
    assert!(
        calls
            .iter()
            .filter(|c| c["mutating"] == true)
            .all(|c| c["outcome"]["outcome"] == "simulated"),
        "dry-run sends nothing: {report:#}"
    );
}

#[test]
fn a_restart_stops_starts_and_waits_for_health() {
    let dir = tempfile::tempdir().unwrap();
    let desired = doc(dir.path(), "d.json", json!({"port": 8081}));
    let actual = doc(dir.path(), "a.json", json!({"port": 8080}));
    let r = run(&[
        &plugin("restart"),
        p("--desired"),
        &desired,
        p("--actual"),
        &actual,
        p("--instance-id"),
        p("web-7"),
    ]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(out.contains("strategy restart@"), "{out}");
    let stop = out.find("stop web-7").expect(out);
    let start = out.find("start web-7").expect(out);
    let probe = out.find("probe-health web-7").expect(out);
    assert!(stop < start && start < probe, "{out}");
    assert!(
        out.lines().last().unwrap().starts_with("outcome: done:"),
        "{out}"
    );
}

#[test]
fn a_call_out_of_the_rollouts_scope_is_shown_denied() {
    let dir = tempfile::tempdir().unwrap();
    let desired = doc(dir.path(), "d.json", json!({"port": 8081}));
    let actual = doc(dir.path(), "a.json", json!({"port": 8080}));
    let params = doc(dir.path(), "p.json", json!({"target": "other-9"}));
    let r = run(&[
        &fixture("escape"),
        p("--desired"),
        &desired,
        p("--actual"),
        &actual,
        p("--params"),
        &params,
    ]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let stop = r
        .stdout
        .lines()
        .find(|l| l.contains("stop other-9"))
        .unwrap_or_else(|| panic!("no stop of other-9: {}", r.stdout));
    assert!(stop.contains("DENIED"), "{stop}");
}

#[test]
fn bad_input_is_refused_with_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = doc(dir.path(), "good.json", json!({"port": 8080}));
    let broken = write(dir.path(), "broken.json", "{\"port\": ");
    let list = doc(dir.path(), "list.json", json!([1, 2]));
    let junk = write(dir.path(), "junk.wasm", "#!/bin/sh\necho hi\n");
    let missing = dir.path().join("missing.wasm");
    let wasm = plugin("field-diff");

    let r = run(&[&missing, p("--desired"), &good, p("--actual"), &good]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains("cannot read plugin file"), "{}", r.stderr);
    assert!(r.stderr.contains("missing.wasm"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    let r = run(&[&wasm, p("--desired"), &broken, p("--actual"), &good]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("the --desired file") && r.stderr.contains("broken.json"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("is not JSON"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    let r = run(&[
        &wasm,
        p("--desired"),
        &good,
        p("--actual"),
        &dir.path().join("nowhere.json"),
    ]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("cannot read the --actual file") && r.stderr.contains("nowhere.json"),
        "{}",
        r.stderr
    );

    let r = run(&[
        &wasm,
        p("--desired"),
        &good,
        p("--actual"),
        &good,
        p("--params"),
        &list,
    ]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("list.json") && r.stderr.contains("must hold a JSON object"),
        "{}",
        r.stderr
    );

    let r = run(&[&junk, p("--desired"), &good, p("--actual"), &good]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("junk.wasm is not a WebAssembly file"),
        "{}",
        r.stderr
    );
}
