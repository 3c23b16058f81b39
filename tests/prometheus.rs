//! Named metric queries end to end, with a real Prometheus: the reference control plane
//! runs two real stub processes (one failing half of its requests), real traffic goes
//! through its endpoint proxy, Prometheus scrapes the stubs' `/metrics` every second,
//! and the daemon's own `StrategyHost` (`Bridge` over the control-plane client, with
//! policy's queries from a settings file) answers `metrics.query`:
//!
//! - `error-rate` is `none` before any traffic, then ≈0 for the healthy instance and
//!   ≈0.5 for the failing one;
//! - a label value with `"` and `\` is escaped into the PromQL string (the query finds
//!   the series Prometheus labelled with exactly that value), and one that tries to
//!   break out of the string (`"} or vector(42) or x{a="`) stays a string;
//! - an unknown name is `not-found`, a query yielding two series is `invalid`, a
//!   PromQL syntax error is `invalid` with Prometheus's message, and an unreachable
//!   Prometheus is `unavailable`.
//!
//! Needs Debian's `prometheus` package (see `tests/support/prometheus.rs`: skipped
//! loudly without it unless `CI` is set).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use setpoint::client::{ClientConfig, ControlPlane, DraasClient};
use setpoint::config::{Overrides, Settings};
use setpoint::controller::Bridge;
use setpoint::runtime::scope::{CpError, StrategyHost};
use setpoint_controlplane::{ControlPlaneConfig, RunningControlPlane, serve};
use setpoint_tests::prometheus::{Prometheus, Target};
use setpoint_tests::traffic::{Load, LoadSpec, set_endpoint};
use setpoint_tests::world::create_instance;
use setpoint_tests::{free_port, port_range, stub_bin};

/// A label value that must stay inside its PromQL string: a quote and a backslash.
const TRICKY: &str = r#"team "a" \ b"#;
/// A label value that would add `or vector(42)` to an unescaped query.
const INJECTION: &str = r#"x"} or vector(42) or up{job=""#;

/// The daemon's settings: Prometheus and the named queries, as an operator writes them.
fn settings_file(prometheus: &str) -> String {
    format!(
        r#"
[metrics.prometheus]
url = "{prometheus}"
timeout = "2s"

[metrics.queries]
error-rate = 'sum(rate(drasi_stub_errors_total{{instance_id="{{{{instance.id}}}}"}}[10s])) / sum(rate(drasi_stub_requests_total{{instance_id="{{{{instance.id}}}}"}}[10s]))'
by-note = 'sum(drasi_stub_requests_total{{note="{{{{instance.labels.note}}}}", instance_id="{{{{ instance.id }}}}"}})'
two-series = 'drasi_stub_requests_total'
broken = 'sum(rate(drasi_stub_requests_total{{instance_id="{{{{instance.id}}}}"}}[10s]) by'
"#
    )
}

/// The daemon's code path: settings loaded from a file, policy's queries handed to the
/// `Bridge` the controller gives strategies.
fn bridge(dir: &std::path::Path, cp_url: &str, prometheus: &str) -> Arc<Bridge> {
    let file = dir.join("setpoint.toml");
    std::fs::write(&file, settings_file(prometheus)).unwrap();
    let settings = Settings::load(
        Some(&file),
        Vec::<(String, String)>::new(),
        &Overrides::new().set("control_plane.url", cp_url),
    )
    .unwrap_or_else(|e| panic!("settings load: {}", setpoint::error_chain(&e)));
    let policy = settings.policy().expect("policy");
    let cp = DraasClient::new(ClientConfig::new(cp_url)).expect("client");
    Arc::new(
        Bridge::new(Arc::new(cp), tokio::runtime::Handle::current())
            .with_metric_queries(policy.metric_queries().clone()),
    )
}

/// `Bridge::query` on a blocking thread, as the plugin runtime calls it.
async fn query(bridge: &Arc<Bridge>, name: &str, id: &str) -> Result<Option<f64>, CpError> {
    let (bridge, name, id) = (bridge.clone(), name.to_owned(), id.to_owned());
    tokio::task::spawn_blocking(move || bridge.query(&name, &id))
        .await
        .expect("query does not panic")
}

/// Poll `check` until it holds or `limit` passes; the last value for the message.
async fn until<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut read: impl AsyncFnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let value = read().await;
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create(
    http: &reqwest::Client,
    cp_url: &str,
    name: &str,
    fail_rate: f64,
    note: &str,
) -> String {
    create_instance(
        http,
        cp_url,
        name,
        json!({ "note": note }),
        json!({ "stub": { "failRate": fail_rate } }),
    )
    .await
}

async fn port(http: &reqwest::Client, cp_url: &str, id: &str) -> u16 {
    let config: Value = http
        .get(format!("{cp_url}/api/configuration/instances/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    u16::try_from(config["port"].as_u64().expect("a port")).unwrap()
}

async fn start_control_plane(dir: &std::path::Path) -> RunningControlPlane {
    let config = ControlPlaneConfig {
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        stub_bin: Some(stub_bin()),
        port_range: port_range(),
        ..ControlPlaneConfig::in_dir(&dir.join("cp"))
    };
    serve(config).await.expect("control plane starts")
}

fn close(value: Option<f64>, expected: f64, tolerance: f64) -> bool {
    value.is_some_and(|v| (v - expected).abs() <= tolerance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn named_prometheus_queries_answer_a_strategy_through_the_daemons_bridge() {
    tokio::task::spawn_blocking(stub_bin)
        .await
        .expect("building the stub");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), scenario())
        .await
        .unwrap_or_else(|_| panic!("test did not finish within 120 s"));
    eprintln!(
        "prometheus e2e: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn scenario() {
    if setpoint_tests::prometheus::require().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cp = start_control_plane(dir.path()).await;
    let cp_url = format!("http://{}", cp.local_addr());
    let http = reqwest::Client::new();
    let client = DraasClient::new(ClientConfig::new(cp_url.clone())).unwrap();

    let healthy = create(&http, &cp_url, "healthy", 0.0, TRICKY).await;
    let failing = create(&http, &cp_url, "failing", 0.5, INJECTION).await;
    let mut targets = Vec::new();
    for (id, note) in [(&healthy, TRICKY), (&failing, INJECTION)] {
        client.start(id, None).await.expect("instance starts");
        let port = port(&http, &cp_url, id).await;
        let address = format!("127.0.0.1:{port}");
        until(
            Duration::from_secs(20),
            &format!("{id}'s stub to serve /health"),
            async || {
                http.get(format!("http://{address}/health"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
            |up| *up,
        )
        .await;
        set_endpoint(&http, &cp_url, id, &[(id, 100)]).await;
        targets.push(Target {
            address,
            labels: vec![("note".to_owned(), note.to_owned())],
        });
    }

    let Some(prometheus) = Prometheus::start(&targets).await else {
        return;
    };
    let addresses: Vec<&str> = targets.iter().map(|t| t.address.as_str()).collect();
    prometheus
        .scraped(Duration::from_secs(20), &addresses, 3)
        .await;
    let bridge = bridge(dir.path(), &cp_url, &prometheus.url);

    // No traffic yet: 0/0 in the window is no value.
    for id in [&healthy, &failing] {
        let before = query(&bridge, "error-rate", id).await;
        assert!(matches!(before, Ok(None)), "{id}: {before:?}");
    }

    // Policy's other answers, which need no traffic.
    let unknown = query(&bridge, "latency", &healthy).await;
    assert!(
        matches!(&unknown, Err(CpError::NotFound(e)) if e.contains("error-rate")),
        "{unknown:?}"
    );
    let two = query(&bridge, "two-series", &healthy).await;
    assert!(
        matches!(&two, Err(CpError::Invalid(e)) if e.contains("yields 2 series; aggregate")),
        "{two:?}"
    );
    let broken = query(&bridge, "broken", &healthy).await;
    assert!(
        matches!(&broken, Err(CpError::Invalid(e)) if e.contains("bad_data") && e.contains("parse error")),
        "{broken:?}"
    );
    let no_instance = query(&bridge, "error-rate", "no-such-instance").await;
    assert!(
        matches!(&no_instance, Err(CpError::NotFound(_))),
        "{no_instance:?}"
    );
    let down = self::bridge(
        dir.path(),
        &cp_url,
        &format!("http://127.0.0.1:{}", free_port()),
    );
    let unavailable = query(&down, "error-rate", &healthy).await;
    assert!(
        matches!(&unavailable, Err(CpError::Unavailable(e)) if e.contains("cannot reach Prometheus")),
        "{unavailable:?}"
    );

    // Traffic to both through their endpoints.
    let spec = LoadSpec {
        concurrency: 2,
        rate: 40.0,
        ..LoadSpec::default()
    };
    let loads = [
        Load::start(&cp_url, &healthy, spec.clone()),
        Load::start(&cp_url, &failing, spec),
    ];

    let healthy_rate = until(
        Duration::from_secs(30),
        "the healthy instance's error rate to read ≈0",
        async || query(&bridge, "error-rate", &healthy).await,
        |r| matches!(r, Ok(v) if close(*v, 0.0, 0.02)),
    )
    .await;
    let failing_rate = until(
        Duration::from_secs(30),
        "the failing instance's error rate to read ≈0.5",
        async || query(&bridge, "error-rate", &failing).await,
        |r| matches!(r, Ok(v) if close(*v, 0.5, 0.1)),
    )
    .await;
    eprintln!("error-rate: healthy {healthy_rate:?}, failing {failing_rate:?}");

    // The tricky label is one string: the query finds exactly the series Prometheus
    // labelled with it, and counts the healthy instance's requests.
    let by_note = until(
        Duration::from_secs(10),
        "the query by a label with a quote and a backslash to find its series",
        async || query(&bridge, "by-note", &healthy).await,
        |r| matches!(r, Ok(Some(v)) if *v > 0.0),
    )
    .await;
    eprintln!("by-note (healthy, {TRICKY:?}): {by_note:?}");
    // The injection attempt is one string too: it matches its own series, never
    // `vector(42)`.
    let injected = query(&bridge, "by-note", &failing).await;
    assert!(
        matches!(injected, Ok(Some(v)) if v > 0.0 && v != 42.0),
        "{injected:?}"
    );

    for load in loads {
        let totals = load.stop().await;
        assert!(totals.sent > 0, "{totals}");
    }
    cp.shutdown().await;
}
