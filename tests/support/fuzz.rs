//! The properties the host's fuzz targets check, one function per target, each taking
//! the fuzzer's bytes: settings (TOML + `SETPOINT_*` + flags), the change-feed decoder
//! and the admin API's routes with arbitrary ids, queries, headers and bodies.
//!
//! Two callers: the coverage-guided targets in `tests/fuzz_targets/` (libFuzzer; bins of
//! this crate built by `scripts/fuzz` with only the host's crates and parsers
//! instrumented, a short run of each in CI), and `tests/reliability/fuzz.rs`, which runs
//! every function over the checked-in corpus (`fuzz/corpus/<target>/`), the regressions
//! and seeded random inputs as an ordinary test.
//!
//! The property of every target: no panic; a refusal is an error value naming what was
//! wrong; and (admin) a refused request changes nothing in the store.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use setpoint::client::{
    self, ChangeBatch, ControlPlane, Instance, InstanceStatus, PlatformType, RuntimeInfo,
    StatusChange, Timestamp,
};
use setpoint::config::{Overrides, Settings};
use setpoint::store::{AuditFilter, Store};

/// A target's check: one input, panics on a finding.
pub type Check = fn(&[u8]);

/// The fuzz targets of the host, by name: `(name, function)`.
pub const TARGETS: &[(&str, Check)] = &[("settings", settings), ("feed", feed), ("admin", admin)];

/// `<TOML text> NUL <lines>`: each line `NAME=VALUE` is an environment variable
/// (prefixed with `SETPOINT_` unless it is already), or `--key=value` a flag.
pub fn settings(data: &[u8]) {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (file, rest) = data.split_at(split);
    let text = String::from_utf8_lossy(file);
    let rest = String::from_utf8_lossy(rest.get(1..).unwrap_or_default());
    let mut env = Vec::new();
    let mut overrides = Overrides::new();
    for line in rest.lines() {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        if let Some(key) = name.strip_prefix("--") {
            overrides = overrides.set(key, value);
        } else if name.starts_with(setpoint::config::ENV_PREFIX) {
            env.push((name.to_owned(), value.to_owned()));
        } else {
            env.push((
                format!("{}{name}", setpoint::config::ENV_PREFIX),
                value.to_owned(),
            ));
        }
    }
    let path = Path::new("fuzz.toml");
    match Settings::load_text(Some((path, &text)), env, &overrides) {
        Ok(settings) => {
            settings.validate().expect("loaded settings validate again");
            let _ = settings.policy().expect("loaded settings have a policy");
            let _ = format!("{settings:?}");
        }
        Err(error) => {
            let message = setpoint::error_chain(&error);
            assert!(!message.is_empty());
        }
    }
}

/// One answer body of the change feed, decoded as the sequence feed's page and as the
/// timestamp feed's list, as the daemon's feed task does.
pub fn feed(data: &[u8]) {
    match client::decode_feed_page("GET /status/recent-changes?after=0", data) {
        Ok(batch) => {
            let _ = batch.next_cursor();
            for change in &batch.changes {
                let _ = change.status.as_str();
                let _ = change.timestamp.timestamp_millis();
            }
        }
        Err(error) => assert!(!setpoint::error_chain(&error).is_empty()),
    }
    match client::decode_changes_since("GET /status/recent-changes?since=", data) {
        Ok(changes) => {
            let _ = changes.iter().map(|c| c.timestamp).max();
        }
        Err(error) => assert!(!setpoint::error_chain(&error).is_empty()),
    }
}

// ----- admin API -----

const KNOWN: &str = "11111111-2222-3333-4444-555555555555";
const TOKEN: &str = "fuzz-token";

/// A control plane of one instance, in memory.
struct OneInstance;

fn instance() -> Instance {
    Instance {
        id: KNOWN.to_owned(),
        name: "orders".to_owned(),
        description: String::new(),
        platform_type: PlatformType::Process,
        created_at: Timestamp::default(),
        last_modified_at: None,
        status: InstanceStatus::Running,
        metadata: Default::default(),
    }
}

fn not_found(id: &str) -> client::Error {
    client::Error::NotFound {
        call: format!("GET /instances/{id}"),
        body: String::new(),
    }
}

#[async_trait]
impl ControlPlane for OneInstance {
    async fn list_instances(&self) -> client::Result<Vec<Instance>> {
        Ok(vec![instance()])
    }
    async fn get_instance(&self, id: &str) -> client::Result<Instance> {
        if id == KNOWN {
            Ok(instance())
        } else {
            Err(not_found(id))
        }
    }
    async fn desired_configuration(&self, id: &str) -> client::Result<Value> {
        if id == KNOWN {
            Ok(json!({"port": 8080}))
        } else {
            Err(not_found(id))
        }
    }
    async fn runtime_status(&self, id: &str) -> client::Result<RuntimeInfo> {
        Err(not_found(id))
    }
    async fn start(&self, _: &str, _: Option<&Value>) -> client::Result<()> {
        Ok(())
    }
    async fn stop(&self, _: &str) -> client::Result<()> {
        Ok(())
    }
    async fn restart(&self, _: &str) -> client::Result<()> {
        Ok(())
    }
    async fn changes_after(&self, _: Option<u64>, _: Duration) -> client::Result<ChangeBatch> {
        Err(client::Error::FeedUnsupported {
            call: "changes_after".into(),
            reason: "in memory".into(),
        })
    }
    async fn changes_since(&self, _: Timestamp) -> client::Result<Vec<StatusChange>> {
        Ok(Vec::new())
    }
}

struct Shared {
    rt: tokio::runtime::Runtime,
    plugins: Arc<setpoint::runtime::PluginRuntime>,
}

static SHARED: LazyLock<Shared> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let plugins = rt.block_on(async {
        Arc::new(setpoint::runtime::PluginRuntime::new(Default::default()).expect("runtime"))
    });
    Shared { rt, plugins }
});

/// Routes with `{}` where the fuzzed id, group name or query goes.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/instances/{}"),
    ("GET", "/v1/instances/{}/explain"),
    ("GET", "/v1/instances/{}/diff"),
    ("GET", "/v1/instances/{}/history"),
    ("POST", "/v1/instances/{}/reconcile"),
    ("POST", "/v1/instances/{}/approve"),
    ("POST", "/v1/instances/{}/abort"),
    ("POST", "/v1/instances/{}/promote"),
    ("POST", "/v1/instances/{}/retry"),
    ("POST", "/v1/instances/{}/rollback"),
    ("GET", "/v1/groups/{}"),
    ("POST", "/v1/groups/{}/approve"),
    ("POST", "/v1/groups/{}/abort"),
    ("GET", "/v1/audit?{}"),
    ("GET", "/v1/instances"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/plugins"),
];

/// Everything the store holds that a request could change, as text.
fn snapshot(store: &Store) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        store.audit(&AuditFilter::default()),
        store.instance_records(KNOWN),
        store.pending_approvals(),
        store.history(KNOWN),
        store.rollouts()
    )
}

/// Percent-encodes all but unreserved characters (and, in a query, `&` and `=`), so the
/// URI is valid and the route sees the fuzzed text itself.
fn encode(bytes: &[u8], query: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        let keep =
            b.is_ascii_alphanumeric() || b"-._~:".contains(&b) || (query && b"&=".contains(&b));
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `<route> <flags> <id or query> NUL <body>`. Flags: bit 0 the right token, bit 1 a
/// wrong one, bit 2 `Content-Type: application/json`, bit 3 `text/plain`, bit 4 the
/// known instance's id instead of the fuzzed text, bit 5 the other method.
pub fn admin(data: &[u8]) {
    use tower::ServiceExt;

    let [route, flags, rest @ ..] = data else {
        return;
    };
    let (method, template) = ROUTES[usize::from(*route) % ROUTES.len()];
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (id, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default().to_vec();
    let query = template.contains('?');
    let id = if flags & 16 != 0 {
        KNOWN.to_owned()
    } else {
        encode(id, query)
    };
    let uri = template.replace("{}", &id);
    let method = match (method, flags & 32 != 0) {
        ("GET", true) => "POST",
        ("POST", true) => "GET",
        (m, _) => m,
    };
    let mut request = axum::http::Request::builder().method(method).uri(&uri);
    if flags & 1 != 0 {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    if flags & 2 != 0 {
        request = request.header("authorization", "Bearer not-the-token");
    }
    if flags & 4 != 0 {
        request = request.header("content-type", "application/json");
    }
    if flags & 8 != 0 {
        request = request.header("content-type", "text/plain");
    }
    let Ok(request) = request.body(axum::body::Body::from(body)) else {
        // Not an HTTP request hyper would hand the router.
        return;
    };

    let shared = &*SHARED;
    shared.rt.block_on(async {
        let store = Arc::new(Store::open_in_memory().expect("in-memory store"));
        // Something to approve, to roll back to and to abort.
        store
            .record_applied(KNOWN, &json!({"port": 8000}), "sha256:old", "restart@1")
            .expect("seed");
        store
            .record_applied(KNOWN, &json!({"port": 8080}), "sha256:new", "restart@1")
            .expect("seed");
        store
            .request_approval(KNOWN, "sha256:new", "policy asks")
            .expect("seed");
        let controller = Arc::new(setpoint::controller::Controller::new(
            Arc::new(OneInstance),
            shared.plugins.clone(),
            Arc::new(setpoint::registry::PluginRegistry::default()),
            store.clone(),
            Arc::new(setpoint::policy::Policy::from_rules(Vec::new()).expect("policy")),
            setpoint::controller::ControllerSettings::default(),
            Arc::new(setpoint::metrics::Metrics::new()),
        ));
        let queue = setpoint::queue::WorkQueue::new(
            setpoint::config::ControllerSettings::default().queue_settings(),
        )
        .expect("queue");
        let app = setpoint::admin::router(setpoint::admin::AdminState {
            controller,
            queue,
            token: Some(TOKEN.to_owned()),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        });
        let before = snapshot(&store);
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        assert_ne!(
            status,
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status.is_client_error() || status.is_server_error() {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {uri} answered {status} with a body that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                answer.get("error").is_some_and(Value::is_string),
                "{method} {uri} answered {status} without an error message: {answer}"
            );
        }
        if !status.is_success() || method == "GET" {
            assert_eq!(
                snapshot(&store),
                before,
                "{method} {uri} answered {status} but changed the store"
            );
        }
    });
}
