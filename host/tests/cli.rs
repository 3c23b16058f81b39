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

/// `setpoint run` with `args`, killed if still running after 30 s: (exited, stderr).
fn run_briefly(args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .arg("run")
        .args(args)
        .env_remove("SETPOINT_ADMIN_TOKEN")
        .env_remove("SETPOINT_ADMIN_ALLOW_INSECURE_REMOTE")
        .env_remove("SETPOINT_ADMIN_TLS_CERT")
        .env_remove("SETPOINT_ADMIN_TLS_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run setpoint");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > until {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn run_refuses_an_admin_address_beyond_loopback_without_token_or_tls() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let common = [
        "--control-plane",
        "http://127.0.0.1:9",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--admin",
        "0.0.0.0:0",
    ];
    let (status, stderr) = run_briefly(&common);
    let status = status.expect("setpoint run refuses to start, not serve");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("admin.listen")
            && stderr.contains("admin.token")
            && stderr.contains("admin.allow_insecure_remote"),
        "{stderr}"
    );
}

/// Kills the daemon when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_cli_talks_https_to_an_admin_api_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("admin.crt");
    let key_path = dir.path().join("admin.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let db = dir.path().join("s.db");
    let _daemon = Running(
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(["run", "--control-plane", "http://127.0.0.1:9", "--plugins"])
            .arg(dir.path())
            .arg("--db")
            .arg(&db)
            .args(["--admin", &format!("127.0.0.1:{port}")])
            .env("SETPOINT_ADMIN_TLS_CERT", &cert_path)
            .env("SETPOINT_ADMIN_TLS_KEY", &key_path)
            .env_remove("SETPOINT_ADMIN_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run setpoint"),
    );
    let https = format!("https://localhost:{port}");
    let ca = cert_path.to_str().unwrap();
    let status = |endpoint: &str, ca: Option<&str>| {
        // `plugins list` asks the daemon alone (`status` would ask the control plane).
        let mut args = vec!["plugins", "list", "--json", "--endpoint", endpoint];
        if let Some(ca) = ca {
            args.extend(["--ca-cert", ca]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args(&args)
            .env_remove("SETPOINT_ADMIN_CA_CERT")
            .env_remove("SETPOINT_ENDPOINT")
            .output()
            .expect("run setpoint plugins list");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The daemon takes a moment to listen; a real process, so real waiting.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (ok, stdout, stderr) = loop {
        let answer = status(&https, Some(ca));
        if answer.0 || std::time::Instant::now() > until {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        ok,
        "plugins list over HTTPS with --ca-cert failed: {stdout}{stderr}"
    );
    let listed: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(listed.is_array(), "{listed}");

    // Without the certificate, the error says how to trust it.
    let (ok, _, stderr) = status(&https, None);
    assert!(!ok);
    assert!(
        stderr.contains("not trusted") && stderr.contains("--ca-cert"),
        "{stderr}"
    );
    // Plain HTTP to the HTTPS port says to use https://.
    let (ok, _, stderr) = status(&format!("http://localhost:{port}"), None);
    assert!(!ok);
    assert!(stderr.contains("https://"), "{stderr}");
    // A file that is not a certificate is named.
    let (ok, _, stderr) = status(&https, Some(key_path.to_str().unwrap()));
    assert!(!ok);
    assert!(
        stderr.contains("--ca-cert") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}
