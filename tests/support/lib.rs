//! Shared helpers for the end-to-end tests: where the built plugin components are, and
//! DRaaS-shaped configurations to feed them.
//!
//! The components are built by `./scripts/build-plugins` (the README's test command runs
//! it first) into `target/plugins/`; set `SETPOINT_PLUGIN_DIR` to look elsewhere.

use std::path::PathBuf;

pub mod fault_proxy;
pub mod figures;
pub mod fuzz;
pub mod lifecycle;
pub mod process;
pub mod prometheus;
pub mod relay;
pub mod sim;
pub mod traffic;
pub mod world;

use setpoint::runtime::StrategyHost;
use setpoint::runtime::scope::{CpError, Health, InstanceInfo, RuntimeStatus};

/// A control plane for a strategy stepped by the runtime alone: every mutation succeeds,
/// every instance answers healthy, and reads find nothing.
#[derive(Debug, Clone, Copy)]
pub struct Quiet;

impl StrategyHost for Quiet {
    fn get_instance(&self, id: &str) -> Result<InstanceInfo, CpError> {
        Err(CpError::NotFound(id.into()))
    }
    fn get_runtime_status(&self, id: &str) -> Result<RuntimeStatus, CpError> {
        Err(CpError::NotFound(id.into()))
    }
    fn get_desired_configuration(&self, id: &str) -> Result<String, CpError> {
        Err(CpError::NotFound(id.into()))
    }
    fn start(&self, _: &str, _: Option<&str>) -> Result<(), CpError> {
        Ok(())
    }
    fn stop(&self, _: &str) -> Result<(), CpError> {
        Ok(())
    }
    fn restart(&self, _: &str) -> Result<(), CpError> {
        Ok(())
    }
    fn probe_health(&self, _: &str) -> Result<Health, CpError> {
        Ok(Health {
            healthy: true,
            detail: "ok".into(),
        })
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where `scripts/build-plugins` put the components.
pub fn plugin_dir() -> PathBuf {
    std::env::var_os("SETPOINT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/plugins"))
}

/// Path of a shipped plugin's component, e.g. `plugin("field-diff")`. Panics with what to
/// do when it has not been built.
pub fn plugin(name: &str) -> PathBuf {
    existing(plugin_dir().join(format!("{name}.wasm")))
}

/// Path of a test-only fixture component, e.g. `fixture("loop-forever")`.
pub fn fixture(name: &str) -> PathBuf {
    existing(plugin_dir().join("fixtures").join(format!("{name}.wasm")))
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} does not exist: run ./scripts/build-plugins first (the README's test command does)",
        path.display()
    );
    path
}

/// A DRaaS desired configuration of about 2 KB: host, port, logLevel, two sources, two
/// queries, two reactions.
pub fn drasi_config() -> serde_json::Value {
    serde_json::json!({
        "host": "0.0.0.0",
        "port": 8080,
        "logLevel": "info",
        "persistConfig": true,
        "persistIndex": false,
        "sources": [
            {
                "kind": "postgres", "id": "my-postgres", "autoStart": true,
                "host": "db.internal", "port": 5432, "database": "orders",
                "user": "drasi", "password": "${DB_PASSWORD}",
                "tables": ["orders", "customers", "line_items"],
                "slotName": "drasi_slot", "publicationName": "drasi_pub"
            },
            {
                "kind": "mock", "id": "test-source", "autoStart": true,
                "dataType": "sensor", "intervalMs": 5000
            }
        ],
        "queries": [
            {
                "id": "active-orders",
                "queryText": "MATCH (o:Order) WHERE o.status = 'active' RETURN o.id, o.customer_id, o.total",
                "sources": [{ "sourceId": "my-postgres" }]
            },
            {
                "id": "sensor-threshold",
                "queryText": "MATCH (s:Sensor) WHERE s.value > s.threshold RETURN s.id, s.value",
                "sources": [{ "sourceId": "test-source" }]
            }
        ],
        "reactions": [
            { "kind": "log", "id": "log-output", "queries": ["active-orders", "sensor-threshold"] },
            {
                "kind": "http", "id": "webhook", "queries": ["sensor-threshold"],
                "baseUrl": "https://alerts.example.com",
                "routes": { "sensor-threshold": { "added": { "url": "/alerts", "method": "POST" } } }
            }
        ]
    })
}

/// The `drasi-stub` executable the reference control plane starts. `DRASI_STUB_BIN`
/// wins; otherwise it is built with the same cargo (honouring `CARGO_TARGET_DIR`) and
/// located from cargo's own report, so the tests work on a fresh clone.
pub fn stub_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("DRASI_STUB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| build_bin("drasi-stub", "drasi-stub"))
    })
    .clone()
}

/// The `setpoint` executable, built like [`stub_bin`], for tests of its command line;
/// `SETPOINT_BIN` wins (a release build for the large-plugin tests' figures).
pub fn setpoint_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("SETPOINT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| build_bin("setpoint", "setpoint"))
    })
    .clone()
}

/// The `setpoint-controlplane` executable, built like [`stub_bin`], for tests that must
/// kill the control plane as a whole process.
pub fn controlplane_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| build_bin("setpoint-controlplane", "setpoint-controlplane"))
        .clone()
}

/// Build a binary of this workspace with the same cargo (honouring `CARGO_TARGET_DIR`)
/// and in the tests' own profile (`--release` under `cargo test --release`, so a release
/// test run builds no second, debug copy of the host), and return its path, from cargo's
/// own report.
pub fn build_bin(package: &str, name: &str) -> PathBuf {
    let profile: &[&str] = if cfg!(debug_assertions) {
        &[]
    } else {
        &["--release"]
    };
    let output = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", package, "--message-format=json"])
        .args(profile)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running cargo to build a test binary");
    assert!(output.status.success(), "cargo build -p {package} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {name} executable"))
}

/// A range of ports for one test's instances that no other test in this run uses.
pub fn port_range() -> std::ops::RangeInclusive<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst) % 40;
    let base = 31000 + (std::process::id() % 8) as u16 * 1000 + n * 25;
    base..=base + 24
}

/// A free loopback port (bound and released: for a server that must come back on the
/// same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `component` with a custom section appended: the same plugin (name, version,
/// behaviour) with other bytes, so another digest, as a rebuild of the same version is.
pub fn with_custom_section(component: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"setpoint-test-build";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Write `bytes` to `path` as an operator should: to a temporary name beside it, then
/// rename into place.
pub fn install_atomically(path: &std::path::Path, bytes: &[u8]) {
    let temp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// SHA-256 of `bytes`, hex: a plugin's digest.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `component` grown to about `target` bytes of code: its largest core module gets
/// copies of all its own function bodies appended (new functions that nobody calls; their
/// calls go to the originals, so the module stays valid). The same plugin (name, version,
/// behaviour) with as much real compiled-Rust code as asked for, for the compiler to
/// chew on: the hardest kind of large component (a large data segment or an embedded
/// script costs the compiler almost nothing).
pub fn with_code_grown_to(component: &[u8], target: usize) -> Vec<u8> {
    fn uleb(bytes: &[u8], at: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return value;
            }
        }
    }
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    // (id, content) of each section after the 8-byte preamble.
    fn sections(bytes: &[u8]) -> Vec<(u8, &[u8])> {
        let mut at = 8;
        let mut out = Vec::new();
        while at < bytes.len() {
            let id = bytes[at];
            at += 1;
            let len = uleb(bytes, &mut at);
            out.push((id, &bytes[at..at + len]));
            at += len;
        }
        out
    }
    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb128(content.len(), out);
        out.extend_from_slice(content);
    }
    // A vector section (function: type indices; code: sized bodies) repeated.
    fn repeated(content: &[u8], times: usize) -> Vec<u8> {
        let mut at = 0;
        let count = uleb(content, &mut at);
        let mut out = Vec::new();
        leb128(count * times, &mut out);
        for _ in 0..times {
            out.extend_from_slice(&content[at..]);
        }
        out
    }
    const CORE_MODULE: u8 = 1;
    const FUNCTION: u8 = 3;
    const CODE: u8 = 10;
    let outer = sections(component);
    let (largest, module) = outer
        .iter()
        .enumerate()
        .filter(|(_, (id, _))| *id == CORE_MODULE)
        .max_by_key(|(_, (_, content))| content.len())
        .map(|(i, (_, content))| (i, *content))
        .expect("a component with a core module");
    let code_len = sections(module)
        .iter()
        .find(|(id, _)| *id == CODE)
        .map(|(_, content)| content.len())
        .expect("a core module with code");
    let times = 1 + target.saturating_sub(component.len()) / code_len;
    let mut grown = module[..8].to_vec();
    for (id, content) in sections(module) {
        match id {
            FUNCTION | CODE => section(id, &repeated(content, times), &mut grown),
            _ => section(id, content, &mut grown),
        }
    }
    let mut out = component[..8].to_vec();
    for (i, (id, content)) in outer.iter().enumerate() {
        section(*id, if i == largest { &grown } else { content }, &mut out);
    }
    out
}
