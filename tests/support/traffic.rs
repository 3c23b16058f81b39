//! Real HTTP traffic for the progressive-delivery tests: a load generator that sends
//! requests through the reference control plane's endpoint proxy
//! (`/api/extensions/endpoints/{name}/proxy/...`, which really splits them by weight),
//! and helpers to read the instances' own request counters and turn two readings into
//! per-backend shares.
//!
//! ```ignore
//! let load = Load::start(&world.cp_url(), &id, LoadSpec::default());
//! // ... roll something out ...
//! let totals = load.stop().await;
//! assert_eq!(totals.failed, 0, "{totals}");
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::plugin;
use crate::world::World;

/// The stub's counted traffic route (`ANY /query[/…]`, see `examples/drasi-stub`).
pub const STUB_PATH: &str = "query";

/// How many failures a [`Load`] keeps the details of.
pub const FAILURES_KEPT: usize = 10;

/// Copy shipped plugin components (e.g. `canary`, `blue-green`) from
/// `scripts/build-plugins`' output into the world's plugin directory, before the daemon
/// starts. [`World::new`] copies only the default ones.
pub fn install_plugins(world: &World, names: &[&str]) {
    for name in names {
        std::fs::copy(
            plugin(name),
            world.plugin_dir().join(format!("{name}.wasm")),
        )
        .unwrap_or_else(|e| panic!("copying plugin {name}: {e}"));
    }
}

/// How a [`Load`] sends.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Concurrent senders.
    pub concurrency: usize,
    /// Requests per second in all (each sender sends `rate / concurrency`); a sender
    /// whose requests take longer than its interval sends less, never in bursts.
    pub rate: f64,
    /// The path after `/proxy/` (default: the stub's counted route).
    pub path: String,
    /// Per-request timeout; a request that takes longer counts as failed.
    pub timeout: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            concurrency: 4,
            rate: 200.0,
            path: STUB_PATH.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One failed request.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    /// The HTTP status, `None` for a transport error or a timeout.
    pub status: Option<u16>,
    /// The backend the proxy chose (its `x-setpoint-backend` header), when it said.
    pub backend: Option<String>,
    /// The answer's body (truncated) or the transport error.
    pub detail: String,
}

/// What a [`Load`] counted.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered otherwise, or not answered.
    pub failed: u64,
    /// Failures by HTTP status (`"500"`) or `"transport"`.
    pub failed_by: BTreeMap<String, u64>,
    /// Of the failures, those the stub answered on purpose (`stub.failRate`: a 500 whose
    /// body says `injected failure`).
    pub injected: u64,
    /// Answers (of any status) by the backend the proxy reported.
    pub by_backend: BTreeMap<String, u64>,
    /// The first [`FAILURES_KEPT`] failures.
    pub failures: Vec<Failure>,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl Totals {
    /// Requests per second actually sent.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Failures that were not the stub's injected ones (`stub.failRate`): proxy errors,
    /// transport errors, anything else.
    pub fn not_injected(&self) -> u64 {
        self.failed - self.injected
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent in {:.1} s ({:.0}/s), {} ok, {} failed {:?} ({} injected); answered by {:?}",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.ok,
            self.failed,
            self.failed_by,
            self.injected,
            self.by_backend
        )?;
        for failure in &self.failures {
            write!(
                f,
                "\n  at {:.3} s: {} from {}: {}",
                failure.at.as_secs_f64(),
                failure
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into()),
                failure.backend.as_deref().unwrap_or("?"),
                failure.detail
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Shared {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    injected: AtomicU64,
    failed_by: Mutex<BTreeMap<String, u64>>,
    by_backend: Mutex<BTreeMap<String, u64>>,
    failures: Mutex<Vec<Failure>>,
}

/// Requests sent at a steady rate through an endpoint's proxy until stopped.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    started: Instant,
}

impl Load {
    /// Start sending `GET {cp_url}/api/extensions/endpoints/{endpoint}/proxy/{path}`.
    pub fn start(cp_url: &str, endpoint: &str, spec: LoadSpec) -> Load {
        assert!(spec.concurrency > 0 && spec.rate > 0.0, "{spec:?}");
        let http = reqwest::Client::builder()
            .timeout(spec.timeout)
            .build()
            .expect("an HTTP client");
        let url = format!(
            "{}/api/extensions/endpoints/{endpoint}/proxy/{}",
            cp_url.trim_end_matches('/'),
            spec.path.trim_start_matches('/')
        );
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let started = Instant::now();
        let every = Duration::from_secs_f64(spec.concurrency as f64 / spec.rate);
        let tasks = (0..spec.concurrency)
            .map(|i| {
                let (http, url, shared, mut stopped) =
                    (http.clone(), url.clone(), shared.clone(), stopped.clone());
                // Spread the senders over one interval.
                let first = tokio::time::Instant::from_std(started)
                    + every.mul_f64(i as f64 / spec.concurrency as f64);
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval_at(first, every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                        if *stopped.borrow() {
                            return;
                        }
                        send(&http, &url, &shared, started).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            shared,
            started,
        }
    }

    /// What was counted so far (requests in flight are not counted yet).
    pub fn totals(&self) -> Totals {
        let s = &self.shared;
        Totals {
            sent: s.sent.load(Ordering::SeqCst),
            ok: s.ok.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            injected: s.injected.load(Ordering::SeqCst),
            failed_by: s.failed_by.lock().unwrap().clone(),
            by_backend: s.by_backend.lock().unwrap().clone(),
            failures: s.failures.lock().unwrap().clone(),
            elapsed: self.started.elapsed(),
        }
    }

    /// Stop sending, wait for the requests in flight, and return the totals.
    pub async fn stop(mut self) -> Totals {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("a load sender panicked");
        }
        self.totals()
    }
}

impl Drop for Load {
    /// A load dropped without [`Load::stop`] (a failing test) stops sending at once.
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn send(http: &reqwest::Client, url: &str, shared: &Shared, started: Instant) {
    let at = started.elapsed();
    let outcome = match http.get(url).send().await {
        Ok(response) => {
            let status = response.status();
            let backend = response
                .headers()
                .get("x-setpoint-backend")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Read the whole answer: a request counts as served only once it arrived.
            match response.bytes().await {
                Ok(_) if status.is_success() => Ok(backend),
                Ok(body) => Err(Failure {
                    at,
                    status: Some(status.as_u16()),
                    backend,
                    detail: truncate(&String::from_utf8_lossy(&body)),
                }),
                Err(e) => Err(Failure {
                    at,
                    status: Some(status.as_u16()),
                    backend,
                    detail: format!("reading the answer: {}", chain(&e)),
                }),
            }
        }
        Err(e) => Err(Failure {
            at,
            status: None,
            backend: None,
            detail: chain(&e),
        }),
    };
    shared.sent.fetch_add(1, Ordering::SeqCst);
    let backend = match &outcome {
        Ok(backend) => backend.clone(),
        Err(failure) => failure.backend.clone(),
    };
    if let Some(backend) = backend {
        *shared
            .by_backend
            .lock()
            .unwrap()
            .entry(backend)
            .or_default() += 1;
    }
    match outcome {
        Ok(_) => {
            shared.ok.fetch_add(1, Ordering::SeqCst);
        }
        Err(failure) => {
            shared.failed.fetch_add(1, Ordering::SeqCst);
            if failure.status == Some(500) && failure.detail.contains("injected failure") {
                shared.injected.fetch_add(1, Ordering::SeqCst);
            }
            let key = failure
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "transport".into());
            *shared.failed_by.lock().unwrap().entry(key).or_default() += 1;
            let mut kept = shared.failures.lock().unwrap();
            if kept.len() < FAILURES_KEPT {
                kept.push(failure);
            }
        }
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text += &format!(": {e}");
        source = e.source();
    }
    text
}

// ----- endpoints -------------------------------------------------------------------------

/// `PUT /api/extensions/endpoints/{name}` with these `(instance, weight)` backends, as an
/// operator publishing an instance's address does.
pub async fn set_endpoint(
    http: &reqwest::Client,
    cp_url: &str,
    name: &str,
    backends: &[(&str, u32)],
) {
    let backends: Vec<Value> = backends
        .iter()
        .map(|(id, weight)| json!({ "instanceId": id, "weight": weight }))
        .collect();
    http.put(format!("{cp_url}/api/extensions/endpoints/{name}"))
        .json(&json!({ "backends": backends }))
        .send()
        .await
        .expect("the control plane answers")
        .error_for_status()
        .expect("the endpoint is accepted");
}

/// The endpoint's backends with a weight above 0, as `(instance, weight)`, in the order
/// the control plane keeps them; `None` when there is no such endpoint.
pub async fn endpoint_weights(
    http: &reqwest::Client,
    cp_url: &str,
    name: &str,
) -> Option<Vec<(String, u64)>> {
    let response = http
        .get(format!("{cp_url}/api/extensions/endpoints/{name}"))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let endpoint: Value = response.json().await.ok()?;
    Some(
        endpoint["backends"]
            .as_array()?
            .iter()
            .filter_map(|b| Some((b["instanceId"].as_str()?.to_owned(), b["weight"].as_u64()?)))
            .filter(|(_, w)| *w > 0)
            .collect(),
    )
}

// ----- counters --------------------------------------------------------------------------

/// An instance's own request counters (`GET /api/extensions/instances/{id}/metrics`,
/// read from its stub process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests its traffic route served.
    pub requests: u64,
    /// Of which it failed.
    pub errors: u64,
}

/// Read one instance's counters; `None` when it has none (not running, unknown).
pub async fn counters(http: &reqwest::Client, cp_url: &str, id: &str) -> Option<Counters> {
    let response = http
        .get(format!("{cp_url}/api/extensions/instances/{id}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let v: Value = response.json().await.ok()?;
    Some(Counters {
        requests: v["requests"].as_u64()?,
        errors: v["errors"].as_u64()?,
    })
}

/// The counters of several instances, read side by side (so the readings are as close
/// in time as the control plane allows). Panics naming an instance that has none.
pub async fn reading(http: &reqwest::Client, cp_url: &str, ids: &[&str]) -> Reading {
    let handles: Vec<_> = ids
        .iter()
        .map(|id| {
            let (http, cp_url, id) = (http.clone(), cp_url.to_owned(), (*id).to_owned());
            tokio::spawn(async move {
                let c = counters(&http, &cp_url, &id).await;
                (id, c)
            })
        })
        .collect();
    let mut counters = BTreeMap::new();
    for handle in handles {
        let (id, c) = handle.await.expect("a counter reading panicked");
        let c = c.unwrap_or_else(|| panic!("instance {id} has no counters (not running?)"));
        counters.insert(id, c);
    }
    Reading {
        at: Instant::now(),
        counters,
    }
}

/// The counters of some instances at one moment.
#[derive(Debug, Clone)]
pub struct Reading {
    /// When the reading was complete.
    pub at: Instant,
    /// By instance.
    pub counters: BTreeMap<String, Counters>,
}

/// What each backend served between two [`Reading`]s.
#[derive(Debug, Clone)]
pub struct Window {
    /// How long the window lasted.
    pub length: Duration,
    /// Requests and errors in the window, by instance.
    pub deltas: BTreeMap<String, Counters>,
}

impl Window {
    /// The window from `before` to `after` (instances in both). Panics when a counter
    /// went backwards (the instance restarted in between: the window means nothing).
    pub fn between(before: &Reading, after: &Reading) -> Window {
        let deltas = before
            .counters
            .iter()
            .filter_map(|(id, b)| {
                let a = after.counters.get(id)?;
                assert!(
                    a.requests >= b.requests && a.errors >= b.errors,
                    "the counters of {id} went backwards ({b:?} -> {a:?}): it restarted"
                );
                Some((
                    id.clone(),
                    Counters {
                        requests: a.requests - b.requests,
                        errors: a.errors - b.errors,
                    },
                ))
            })
            .collect();
        Window {
            length: after.at.saturating_duration_since(before.at),
            deltas,
        }
    }

    /// Requests served by every backend in the window.
    pub fn requests(&self) -> u64 {
        self.deltas.values().map(|c| c.requests).sum()
    }

    /// The percentage of the window's requests `id` served (0 without requests).
    pub fn share(&self, id: &str) -> f64 {
        let total = self.requests();
        if total == 0 {
            return 0.0;
        }
        100.0 * self.deltas.get(id).map_or(0, |c| c.requests) as f64 / total as f64
    }

    /// Every backend's percentage.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        self.deltas
            .keys()
            .map(|id| (id.clone(), self.share(id)))
            .collect()
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.2} s:",
            self.requests(),
            self.length.as_secs_f64()
        )?;
        for (id, c) in &self.deltas {
            write!(
                f,
                " {id} {} ({:.2} %, {} errors)",
                c.requests,
                self.share(id),
                c.errors
            )?;
        }
        Ok(())
    }
}
