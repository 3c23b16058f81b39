//! Shared helpers for the end-to-end tests: where the built plugin components are, and
//! DRaaS-shaped configurations to feed them.
//!
//! The components are built by `./scripts/build-plugins` (the README's test command runs
//! it first) into `target/plugins/`; set `SETPOINT_PLUGIN_DIR` to look elsewhere.

use std::path::PathBuf;

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
