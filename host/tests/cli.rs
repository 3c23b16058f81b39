//! `setpoint plugins check|list` run as a real process on components built by
//! `scripts/build-plugins`.

use std::path::PathBuf;
use std::process::Command;

fn plugin_dir() -> PathBuf {
    std::env::var_os("SETPOINT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"))
}

fn built(rel: &str) -> PathBuf {
    let path = plugin_dir().join(rel);
    assert!(
        path.is_file(),
        "{} missing: run ./scripts/build-plugins first",
        path.display()
    );
    path
}

fn setpoint(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(args)
        .output()
        .expect("run setpoint");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugins_check_json_describes_a_valid_plugin() {
    let file = built("field-diff.wasm");
    let (ok, stdout, stderr) = setpoint(&["plugins", "check", "--json", file.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["name"], "field-diff");
    assert_eq!(v["kind"], "comparator");
    assert_eq!(v["world"], "setpoint:plugin/comparator");
    assert!(
        semver::Version::parse(v["version"].as_str().unwrap()).is_ok(),
        "{v}"
    );
}

#[test]
fn plugins_check_prints_a_verdict_for_a_strategy() {
    let file = built("restart.wasm");
    let (ok, stdout, _) = setpoint(&["plugins", "check", file.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("setpoint:plugin/strategy"), "{stdout}");
    assert!(stdout.contains("rollout-strategy@0.2.0"), "{stdout}");
    assert!(stdout.contains("needs:       instances only"), "{stdout}");
    assert!(stdout.contains("name:        restart"), "{stdout}");
}

#[test]
fn plugins_check_fails_on_a_bad_file_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, "not wasm").unwrap();
    let (ok, stdout, _) = setpoint(&["plugins", "check", bad.to_str().unwrap()]);
    assert!(!ok, "a bad file must exit non-zero");
    assert!(stdout.contains("rejected"), "{stdout}");
    assert!(stdout.contains("not a WebAssembly file"), "{stdout}");

    let wrong = built("fixtures/wrong-world.wasm");
    let (ok, stdout, _) = setpoint(&["plugins", "check", "--json", wrong.to_str().unwrap()]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a setpoint plugin"),
        "{v}"
    );
}

#[test]
fn plugins_list_shows_valid_and_rejected_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built("field-diff.wasm"), dir.path().join("field-diff.wasm")).unwrap();
    std::fs::copy(built("restart.wasm"), dir.path().join("restart.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm\x01\0\0\0").unwrap();

    let (ok, stdout, _) = setpoint(&["plugins", "list", "--json", dir.path().to_str().unwrap()]);
    assert!(ok, "{stdout}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_file = |f: &str| {
        rows.iter()
            .find(|r| r["file"].as_str().is_some_and(|p| p.ends_with(f)))
            .unwrap_or_else(|| panic!("{f} not listed: {rows:?}"))
            .clone()
    };
    assert_eq!(by_file("field-diff.wasm")["state"], "active");
    assert_eq!(by_file("restart.wasm")["kind"], "strategy");
    assert_eq!(by_file("broken.wasm")["state"], "rejected");
    assert!(
        by_file("broken.wasm")["reason"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module")
    );

    let (ok, table, _) = setpoint(&["plugins", "list", dir.path().to_str().unwrap()]);
    assert!(ok);
    assert!(
        table.contains("field-diff") && table.contains("rejected"),
        "{table}"
    );
}
