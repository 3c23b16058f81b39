//! `drasi-stub`: a tiny stand-in for drasi-server, used by the reference control plane's
//! Process platform and by tests.
//!
//! It reads a DRaaS YAML configuration (`--config PATH`), listens on the configured
//! `host:port`, and serves:
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /health` | `200 {"status":"healthy","id":…}`, or `503` when told to be unhealthy |
//! | `GET /config` | the configuration it runs, as JSON (query text under `queryText`) |
//! | `GET /metrics` | `{"requests": n, "errors": n}` counted over the traffic routes; the Prometheus text below when the `Accept` header asks for text (as Prometheus's scraper does) and not for JSON |
//! | `GET /metrics/prometheus` | the same counters in the OpenMetrics text format (`drasi_stub_requests_total`, `drasi_stub_errors_total`, labelled `instance_id`) |
//! | `ANY /`, `ANY /query`, `ANY /query/{*rest}` | the counted "traffic" route |
//! | `POST /shutdown` | exits with code 0 (so does SIGTERM or Ctrl-C) |
//!
//! Test behaviour is set in the configuration under the `stub` key:
//!
//! ```yaml
//! stub:
//!   unhealthy: true    # /health answers 503
//!   readyAfterMs: 500  # /health answers 503 for this long after start (a slow start)
//!   listenAfterMs: 300 # wait this long before listening at all (a slow process start)
//!   failRate: 0.3      # this fraction of traffic requests answers 500 (deterministic:
//!                      # request n fails when floor(n*rate) > floor((n-1)*rate))
//!   exitAfterMs: 500   # exit by itself after this long ...
//!   exitCode: 3        # ... with this exit code (default 1)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

/// Exit code when the configuration cannot be read or the port cannot be bound.
const EXIT_STARTUP_FAILURE: i32 = 2;

/// Test behaviour read from the configuration's `stub` key.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StubSettings {
    unhealthy: bool,
    ready_after_ms: Option<u64>,
    listen_after_ms: Option<u64>,
    fail_rate: f64,
    exit_after_ms: Option<u64>,
    exit_code: Option<i32>,
}

#[derive(Debug)]
struct Stub {
    id: String,
    config: Value,
    settings: StubSettings,
    requests: AtomicU64,
    errors: AtomicU64,
    shutdown: tokio::sync::Notify,
    started: std::time::Instant,
    exported: Exported,
}

/// The label of the exported counters: the instance the stub runs as.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance_id: String,
}

/// The counters as Prometheus scrapes them, the same counts as `requests`/`errors`.
#[derive(Debug)]
struct Exported {
    registry: Registry,
    requests: Counter,
    errors: Counter,
}

impl Exported {
    fn new(id: &str) -> Exported {
        let mut registry = Registry::default();
        let requests = Family::<InstanceLabel, Counter>::default();
        let errors = Family::<InstanceLabel, Counter>::default();
        registry.register(
            "drasi_stub_requests",
            "Requests served on the traffic routes",
            requests.clone(),
        );
        registry.register(
            "drasi_stub_errors",
            "Traffic requests answered with an (injected) failure",
            errors.clone(),
        );
        // Created now, so both series exist at 0 before the first request (a rate over
        // them is 0/0, "no value", rather than no series at all).
        let label = InstanceLabel {
            instance_id: id.to_owned(),
        };
        Exported {
            requests: requests.get_or_create(&label).clone(),
            errors: errors.get_or_create(&label).clone(),
            registry,
        }
    }
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drasi-stub: cannot start the async runtime: {error}");
            std::process::exit(EXIT_STARTUP_FAILURE);
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("drasi-stub: {error:#}");
            std::process::exit(EXIT_STARTUP_FAILURE);
        }
    }
}

fn config_path() -> Result<String> {
    let mut args = std::env::args().skip(1);
    let arg = args
        .next()
        .context("missing --config PATH (usage: drasi-stub --config PATH)")?;
    match arg.as_str() {
        "--config" => args.next().context("--config needs a path"),
        "-h" | "--help" => {
            println!("usage: drasi-stub --config PATH   (a DRaaS drasi-server YAML file)");
            std::process::exit(0);
        }
        other => match other.strip_prefix("--config=") {
            Some(path) => Ok(path.to_owned()),
            None => bail!("unknown argument `{other}` (usage: drasi-stub --config PATH)"),
        },
    }
}

/// Reads the YAML file and returns it as JSON, with each query's text under `queryText`
/// (the DRaaS JSON model's name; the YAML format calls it `query`).
fn load_config(path: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut config: Value =
        serde_norway::from_str(&text).with_context(|| format!("parsing YAML in {path}"))?;
    if !config.is_object() {
        bail!("{path}: the configuration must be a YAML mapping");
    }
    if let Some(queries) = config.get_mut("queries").and_then(Value::as_array_mut) {
        for query in queries.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(text) = query.remove("query") {
                query.entry("queryText").or_insert(text);
            }
        }
    }
    Ok(config)
}

async fn run() -> Result<i32> {
    let path = config_path()?;
    let config = load_config(&path)?;
    let settings: StubSettings = match config.get("stub") {
        Some(value) => serde_json::from_value(value.clone()).context("reading the `stub` key")?,
        None => StubSettings::default(),
    };
    let id = config
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("unnamed")
        .to_owned();
    let host = config
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1")
        .to_owned();
    let port = config
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .context("the configuration needs a numeric `port`")?;
    if let Some(ms) = settings.listen_after_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    eprintln!(
        "drasi-stub {id}: listening on {addr} (pid {})",
        std::process::id()
    );

    let stub = Arc::new(Stub {
        exported: Exported::new(&id),
        id,
        config,
        settings: settings.clone(),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        shutdown: tokio::sync::Notify::new(),
        started: std::time::Instant::now(),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/config", get(config_route))
        .route("/metrics", get(metrics))
        .route("/metrics/prometheus", get(prometheus_metrics))
        .route("/shutdown", post(shutdown))
        .route("/", any(traffic))
        .route("/query", any(traffic))
        .route("/query/{*rest}", any(traffic))
        .with_state(stub.clone());

    let exit_code = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let stop = {
        let stub = stub.clone();
        let exit_code = exit_code.clone();
        async move {
            let self_exit = async {
                match settings.exit_after_ms {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            };
            let mut sigterm =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = sigterm.recv() => eprintln!("drasi-stub: SIGTERM, exiting"),
                _ = tokio::signal::ctrl_c() => eprintln!("drasi-stub: interrupted, exiting"),
                () = stub.shutdown.notified() => eprintln!("drasi-stub: shutdown requested, exiting"),
                () = self_exit => {
                    let code = settings.exit_code.unwrap_or(1);
                    eprintln!("drasi-stub: exitAfterMs elapsed, exiting with {code}");
                    exit_code.store(code, Ordering::SeqCst);
                }
            }
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("serving HTTP")?;
    Ok(exit_code.load(Ordering::SeqCst))
}

async fn health(State(stub): State<Arc<Stub>>) -> (StatusCode, Json<Value>) {
    let warming = stub
        .settings
        .ready_after_ms
        .is_some_and(|ms| stub.started.elapsed() < Duration::from_millis(ms));
    if warming {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "starting", "id": stub.id, "detail": "stub.readyAfterMs has not passed yet"}),
            ),
        );
    }
    if stub.settings.unhealthy {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "id": stub.id, "detail": "stub.unhealthy is set"})),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({"status": "healthy", "id": stub.id})),
        )
    }
}

async fn config_route(State(stub): State<Arc<Stub>>) -> Json<Value> {
    Json(stub.config.clone())
}

async fn metrics(State(stub): State<Arc<Stub>>, headers: HeaderMap) -> Response {
    if wants_text(&headers) {
        return prometheus_metrics(State(stub)).await;
    }
    Json(json!({
        "requests": stub.requests.load(Ordering::SeqCst),
        "errors": stub.errors.load(Ordering::SeqCst),
    }))
    .into_response()
}

/// Whether `Accept` asks for a text exposition format and not for JSON: Prometheus sends
/// `application/openmetrics-text;…,text/plain;version=0.0.4;…,*/*;…`; the reference
/// control plane sends no `Accept` and reads JSON.
fn wants_text(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    !accept.contains("application/json")
        && (accept.contains("application/openmetrics-text") || accept.contains("text/plain"))
}

async fn prometheus_metrics(State(stub): State<Arc<Stub>>) -> Response {
    let mut text = String::new();
    if let Err(error) =
        prometheus_client::encoding::text::encode(&mut text, &stub.exported.registry)
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {error}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn shutdown(State(stub): State<Arc<Stub>>) -> StatusCode {
    stub.shutdown.notify_one();
    StatusCode::ACCEPTED
}

/// Whether request number `n` (1-based) fails at `rate`: exactly `rate` of every run of
/// requests fails, spread evenly, so canary tests are deterministic.
fn should_fail(n: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let rate = rate.min(1.0);
    (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor()
}

async fn traffic(State(stub): State<Arc<Stub>>) -> (StatusCode, Json<Value>) {
    let n = stub.requests.fetch_add(1, Ordering::SeqCst) + 1;
    stub.exported.requests.inc();
    if should_fail(n, stub.settings.fail_rate) {
        stub.errors.fetch_add(1, Ordering::SeqCst);
        stub.exported.errors.inc();
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"id": stub.id, "request": n, "error": "injected failure (stub.failRate)"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"id": stub.id, "request": n, "ok": true})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rate_fails_exactly_that_fraction_of_requests() {
        let failures = (1..=100).filter(|&n| should_fail(n, 0.3)).count();
        assert_eq!(failures, 30);
        assert!(!(1..=50).any(|n| should_fail(n, 0.0)));
        assert!((1..=50).all(|n| should_fail(n, 1.0)));
    }

    #[test]
    fn the_counters_are_exported_as_text_with_the_instance_id() {
        let exported = Exported::new("orders-1");
        exported.requests.inc();
        exported.requests.inc();
        exported.errors.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &exported.registry).unwrap();
        assert!(
            text.contains("drasi_stub_requests_total{instance_id=\"orders-1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("drasi_stub_errors_total{instance_id=\"orders-1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE drasi_stub_requests counter"),
            "{text}"
        );
    }

    #[test]
    fn text_is_served_to_prometheus_and_json_to_everyone_else() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            h
        };
        assert!(wants_text(&accept(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(wants_text(&accept("text/plain")));
        assert!(!wants_text(&HeaderMap::new()));
        assert!(!wants_text(&accept("application/json")));
        assert!(!wants_text(&accept("*/*")));
    }

    #[test]
    fn yaml_query_text_is_reported_as_query_text() {
        let dir = std::env::temp_dir().join(format!("drasi-stub-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(
            &path,
            "id: a\nport: 1\nqueries:\n  - id: q\n    query: |\n      MATCH (n) RETURN n\n",
        )
        .unwrap();
        let config = load_config(path.to_str().unwrap()).unwrap();
        assert_eq!(config["queries"][0]["queryText"], "MATCH (n) RETURN n\n");
        assert!(config["queries"][0].get("query").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_shared_example_configuration_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../controlplane/tests/data/drasi-server-config-example.yaml"
        );
        let config = load_config(path).unwrap();
        assert_eq!(config["port"], 8080);
        assert_eq!(config["queries"].as_array().unwrap().len(), 2);
        assert!(config["queries"][1]["queryText"].is_string());
    }
}
