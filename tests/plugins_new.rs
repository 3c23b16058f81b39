//! `setpoint plugins new`, as a plugin author uses it: the real binary writes a crate into
//! a temporary directory, the crate's own `cargo test` passes natively, the project's
//! build path (`scripts/build-plugin-crate`) turns it into a component and
//! `setpoint plugins check` accepts it (contract 0.2.0); the comparator built in the shape
//! `cargo component build` makes (wasm32-wasip1 + the WASI preview1 reactor adapter)
//! loads and `plugins run` reports the drifts of its test documents. Bad names, a
//! non-empty directory and `--sdk` with `--lang js` fail with a clear error.
//!
//! `--lang js`: the real binary writes a JavaScript package, `npm ci` installs its pinned
//! componentize-js from the npm registry, `npm run build` builds it, and
//! `setpoint plugins check` accepts the component (contract 0.2.0, no WASI, a strategy
//! that needs the control plane's instances only); `plugins run` reports the comparator's
//! drifts and steps the strategy to done. These tests need node and npm: without them
//! they fail when `CI` is set and are skipped, loudly, otherwise.
//!
//! Cost: the generated crates share `target/plugins-new-test/` (native and wasm), so the
//! SDK's dependencies and std for wasm are compiled once per checkout: about 3 minutes
//! cold on 2 cores with Debian's toolchain (std from source for wasm32-unknown-unknown
//! and wasm32-wasip1), well under a minute warm. A JavaScript package costs `npm ci`
//! (about 10 s from a warm npm cache, which `--prefer-offline` uses without asking the
//! registry; a cold cache downloads about 100 MB), a componentize-js build (about 40 s
//! of CPU) and a compile of its 12 MB component by each `plugins check` and
//! `plugins run` (about 15 s of CPU each).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

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

/// `node` and `npm` run, or, when they do not: `false` after a loud "SKIPPED" message when
/// `CI` is unset; a panic when it is set. Call it before setting anything else up.
fn require_node() -> bool {
    let missing: Vec<&str> = ["node", "npm"]
        .into_iter()
        .filter(|tool| {
            !Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{} not installed: `setpoint plugins new --lang js` packages need node (>= 20.19) \
         and npm (scripts/setup installs them)",
        missing.join(" and ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI is set, so this test fails instead of skipping");
    }
    eprintln!(
        "\n==================== SKIPPED ====================\n{message}.\nThis test did NOT run.\n=================================================\n"
    );
    false
}

/// `setpoint plugins new NAME --kind KIND --lang js --dir DIR`, which must succeed.
fn new_js_package(name: &str, kind: &str, dir: &Path) {
    let run = setpoint(&[
        "plugins",
        "new",
        name,
        "--kind",
        kind,
        "--lang",
        "js",
        "--dir",
        dir.to_str().unwrap(),
    ])
    .assert_ok("setpoint plugins new --lang js");
    assert!(
        run.stdout
            .contains(&format!("created js {kind} plugin {name}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("npm ci && npm run build"),
        "{}",
        run.stdout
    );
    let source = format!("src/{kind}.js");
    for file in [
        "package.json",
        "package-lock.json",
        "README.md",
        ".gitignore",
        "build.mjs",
        source.as_str(),
        "wit/world.wit",
        "testdata/desired.json",
        "testdata/actual.json",
    ] {
        assert!(dir.join(file).is_file(), "no {file} in {}", dir.display());
    }
    // The contract, verbatim from this checkout.
    assert_eq!(
        std::fs::read_to_string(dir.join("wit/deps/setpoint/setpoint.wit")).unwrap(),
        std::fs::read_to_string(workspace_root().join("wit/setpoint.wit")).unwrap()
    );
}

/// `npm ARGS` in `dir`, which must succeed; says how long it took.
fn npm(dir: &Path, args: &[&str]) {
    let started = Instant::now();
    Run::from(
        Command::new("npm")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run npm"),
    )
    .assert_ok(&format!("npm {}", args.join(" ")));
    eprintln!(
        "{}: npm {} took {:.1?}",
        dir.display(),
        args.join(" "),
        started.elapsed()
    );
}

/// `npm ci` (from the npm cache where it can: the lock file pins every package by
/// integrity hash, so a cached one is the same bytes) and `npm run build`, as the
/// package's README says; returns the component, `dist/NAME.wasm`.
fn build_js_package(dir: &Path, name: &str) -> PathBuf {
    npm(dir, &["ci", "--prefer-offline", "--no-audit", "--no-fund"]);
    npm(dir, &["run", "build"]);
    let wasm = dir.join(format!("dist/{name}.wasm"));
    assert!(wasm.is_file(), "no component at {}", wasm.display());
    wasm
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
fn a_new_strategy_tests_builds_both_ways_loads_and_plans_a_rollout() {
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

    // The cargo-component shape (wasm32-wasip1 + the reactor adapter) of the strategy:
    // it loads with WASI linked and no capabilities, and plans the same rollout.
    let wasip1 = build_component(
        &dir,
        Some("wasip1"),
        &tmp.path().join("pn-strategy-wasip1.wasm"),
    );
    let out = check(&wasip1, "pn-strategy", "strategy");
    assert!(
        out.contains("wasi:        imported; the host links it with no capabilities")
            && out.contains("needs:       instances only"),
        "{out}"
    );
    let planned = run_plugin(&wasip1, &dir);
    let outcome = planned.lines().last().unwrap_or_default();
    assert!(outcome.starts_with("outcome: done:"), "{planned}");
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
fn a_new_javascript_comparator_builds_with_componentize_js_loads_and_reports_drift() {
    if !require_node() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pn-js-comparator");
    new_js_package("pn-js-comparator", "comparator", &dir);
    let wasm = build_js_package(&dir, "pn-js-comparator");

    let out = check(&wasm, "pn-js-comparator", "comparator");
    assert!(!out.contains("wasi:"), "imports WASI:\n{out}");
    let out = run_plugin(&wasm, &dir);
    assert!(out.contains("comparator pn-js-comparator@0.1.0"), "{out}");
    assert_template_drifts(&out);
}

#[test]
fn a_new_javascript_strategy_builds_with_componentize_js_needs_instances_only_and_rolls_out() {
    if !require_node() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pn-js-strategy");
    new_js_package("pn-js-strategy", "strategy", &dir);
    let wasm = build_js_package(&dir, "pn-js-strategy");

    let out = check(&wasm, "pn-js-strategy", "strategy");
    // Not the contract's strategy world, which would import every capability.
    assert!(out.contains("needs:       instances only"), "{out}");
    assert!(!out.contains("wasi:"), "imports WASI:\n{out}");
    let out = run_plugin(&wasm, &dir);
    assert!(out.contains("strategy pn-js-strategy@0.1.0"), "{out}");
    assert!(out.contains("stop"), "never stopped the instance:\n{out}");
    assert!(out.contains("start"), "never started the instance:\n{out}");
    let outcome = out.lines().last().unwrap_or_default();
    assert!(outcome.starts_with("outcome: done:"), "{out}");
}

#[test]
fn sdk_with_lang_js_is_refused_and_says_why() {
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
        "--sdk",
        tmp.path().to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr.contains("--sdk is for --lang rust only"),
        "{}",
        run.stderr
    );
    assert!(!dir.exists());
}

#[test]
fn an_unknown_language_is_refused_with_the_ones_there_are() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("py");
    let run = setpoint(&[
        "plugins",
        "new",
        "py-check",
        "--kind",
        "comparator",
        "--lang",
        "python",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("invalid value 'python' for '--lang <LANG>'"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("[possible values: rust, js]"),
        "{}",
        run.stderr
    );
    assert!(!dir.exists());
}
