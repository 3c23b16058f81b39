//! `setpoint plugins new`, as a plugin author uses it: the real binary writes a crate into
//! a temporary directory, the crate's own `cargo test` passes natively, the project's
//! build path (`scripts/build-plugin-crate`) turns it into a component and
//! `setpoint plugins check` accepts it (contract 0.2.0); the comparator built in the shape
//! `cargo component build` makes (wasm32-wasip1 + the WASI preview1 reactor adapter)
//! loads and `plugins run` reports the drifts of its test documents. Bad names, a
//! non-empty directory and `--lang js` fail with a clear error.
//!
//! Cost: the generated crates share `target/plugins-new-test/` (native and wasm), so the
//! SDK's dependencies and std for wasm are compiled once per checkout: about 3 minutes
//! cold on 2 cores with Debian's toolchain (std from source for wasm32-unknown-unknown
//! and wasm32-wasip1), well under a minute warm.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use setpoint_tests::{setpoint_bin, workspace_root};

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn assert_ok(self, what: &str) -> Self {
        assert!(
            self.ok,
            "{what} failed ({:?}):\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

fn setpoint(args: &[&str]) -> Run {
    Run::from(
        Command::new(setpoint_bin())
            .args(args)
            .env("SETPOINT_LOG", "warn")
            .output()
            .expect("run setpoint"),
    )
}

/// Where the generated crates' builds go, shared between tests and runs: the wasm builds
/// in it, the native ones (`cargo test`) in its `native/`.
fn shared_target() -> PathBuf {
    workspace_root().join("target/plugins-new-test")
}

/// `setpoint plugins new NAME --kind KIND --dir DIR`, which must succeed.
fn new_crate(name: &str, kind: &str, dir: &Path) {
    let run = setpoint(&[
        "plugins",
        "new",
        name,
        "--kind",
        kind,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .assert_ok("setpoint plugins new");
    assert!(
        run.stdout
            .contains(&format!("created rust {kind} plugin {name}")),
        "{}",
        run.stdout
    );
    for file in [
        "Cargo.toml",
        "README.md",
        ".gitignore",
        "src/lib.rs",
        "testdata/desired.json",
        "testdata/actual.json",
    ] {
        assert!(dir.join(file).is_file(), "no {file} in {}", dir.display());
    }
}

/// The generated crate's own `cargo test`, natively.
fn cargo_test(dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let run = Run::from(
        Command::new(cargo)
            .arg("test")
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", shared_target().join("native"))
            .output()
            .expect("run cargo test"),
    )
    .assert_ok("cargo test of the generated crate");
    assert!(run.stdout.contains("test result: ok."), "{}", run.stdout);
}

/// `scripts/build-plugin-crate DIR [--target TARGET] --out OUT`; returns OUT.
fn build_component(dir: &Path, target: Option<&str>, out: &Path) -> PathBuf {
    let mut cmd = Command::new(workspace_root().join("scripts/build-plugin-crate"));
    cmd.arg(dir)
        .arg("--target-dir")
        .arg(shared_target())
        .arg("--out")
        .arg(out);
    if let Some(target) = target {
        cmd.args(["--target", target]);
    }
    Run::from(cmd.output().expect("run scripts/build-plugin-crate"))
        .assert_ok("scripts/build-plugin-crate");
    assert!(out.is_file(), "no component at {}", out.display());
    out.to_path_buf()
}

/// `setpoint plugins check FILE` succeeds and names the world and contract version.
fn check(file: &Path, name: &str, world: &str) -> String {
    let run = setpoint(&["plugins", "check", file.to_str().unwrap()]).assert_ok("plugins check");
    let out = run.stdout;
    assert!(out.contains(": ok"), "{out}");
    assert!(out.contains(&format!("name:        {name}")), "{out}");
    assert!(
        out.contains(&format!("(setpoint:plugin/{world})")),
        "not the {world} world:\n{out}"
    );
    assert!(
        out.contains("contract:    setpoint:plugin@0.2.0"),
        "not contract 0.2.0:\n{out}"
    );
    out
}

fn run_plugin(file: &Path, dir: &Path) -> String {
    let data = dir.join("testdata");
    setpoint(&[
        "plugins",
        "run",
        file.to_str().unwrap(),
        "--desired",
        data.join("desired.json").to_str().unwrap(),
        "--actual",
        data.join("actual.json").to_str().unwrap(),
    ])
    .assert_ok("plugins run")
    .stdout
}

/// The drifts between the templates' testdata files, as `plugins run` prints them.
fn assert_template_drifts(out: &str) {
    let line = |path: &str| {
        out.lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("no drift at {path}:\n{out}"))
    };
    assert!(line("/port").contains("changed"), "{out}");
    assert!(line("/port").contains("8080 -> 8081"), "{out}");
    assert!(line("/tls").contains("added"), "{out}");
    assert!(line("/debug").contains("removed"), "{out}");
    assert!(!out.contains("/host"), "{out}");
    assert!(!out.contains("/logLevel"), "{out}");
}

#[test]
fn a_new_comparator_tests_builds_both_ways_loads_and_reports_drift() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pn-comparator");
    new_crate("pn-comparator", "comparator", &dir);
    cargo_test(&dir);

    // The project's build path: wasm32-unknown-unknown, no WASI.
    let wasm = build_component(&dir, None, &tmp.path().join("pn-comparator.wasm"));
    let out = check(&wasm, "pn-comparator", "comparator");
    assert!(!out.contains("wasi:"), "imports WASI:\n{out}");
    assert_template_drifts(&run_plugin(&wasm, &dir));

    // What `cargo component build --release` makes: wasm32-wasip1 + the reactor adapter.
    let wasip1 = build_component(
        &dir,
        Some("wasip1"),
        &tmp.path().join("pn-comparator-wasip1.wasm"),
    );
    let out = check(&wasip1, "pn-comparator", "comparator");
    assert!(
        out.contains("wasi:        imported; the host links it with no capabilities"),
        "{out}"
    );
    let out = run_plugin(&wasip1, &dir);
    assert!(out.contains("comparator pn-comparator@0.1.0"), "{out}");
    assert_template_drifts(&out);
}

#[test]
fn a_new_strategy_tests_builds_loads_and_plans_a_rollout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pn-strategy");
    new_crate("pn-strategy", "strategy", &dir);
    cargo_test(&dir);

    let wasm = build_component(&dir, None, &tmp.path().join("pn-strategy.wasm"));
    let out = check(&wasm, "pn-strategy", "strategy");
    assert!(out.contains("needs:       instances only"), "{out}");
    let out = run_plugin(&wasm, &dir);
    assert!(out.contains("strategy pn-strategy@0.1.0"), "{out}");
    let outcome = out.lines().last().unwrap_or_default();
    assert!(outcome.starts_with("outcome: done:"), "{out}");
}

#[test]
fn bad_names_are_refused_and_say_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["Port_Check", "9lives", "a--b", "fn", "x-"] {
        let dir = tmp.path().join("x");
        let run = setpoint(&[
            "plugins",
            "new",
            name,
            "--kind",
            "comparator",
            "--dir",
            dir.to_str().unwrap(),
        ]);
        assert!(!run.ok, "{name} accepted: {}", run.stdout);
        assert!(
            run.stderr
                .contains(&format!("invalid plugin name {name:?}")),
            "{name}: {}",
            run.stderr
        );
        assert!(!dir.exists(), "{name}: a directory was created");
    }
}

#[test]
fn a_non_empty_directory_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("notes.txt");
    std::fs::write(&keep, "mine").unwrap();
    let run = setpoint(&[
        "plugins",
        "new",
        "port-check",
        "--kind",
        "strategy",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr.contains("already exists and is not empty"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--dir"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn js_is_not_available_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("js");
    let run = setpoint(&[
        "plugins",
        "new",
        "js-check",
        "--kind",
        "comparator",
        "--lang",
        "js",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("--lang js is not available yet"),
        "{}",
        run.stderr
    );
    assert!(!dir.exists());
}
