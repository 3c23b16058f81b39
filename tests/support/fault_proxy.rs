//! A fault-injecting HTTP/1.1 reverse proxy on loopback, put between the daemon and the
//! control plane: the daemon's `control_plane.url` is [`FaultProxy::url`].
//!
//! It reads each request itself (so that it can answer with nothing), forwards it with
//! its own client and writes the answer back, unless the seeded draw for that request
//! says to inject a fault instead ([`FaultRates`]): added latency, a 5xx or a 429 with
//! `Retry-After` (neither forwarded), a connection reset before or after forwarding, or
//! an answer whose body stops short of its `Content-Length` (forwarded, so the control
//! plane acted on it). Feed answers (`/api/status/recent-changes`) can be rewritten
//! instead ([`FeedFaults`]): events duplicated, dropped, or held back and delivered after
//! newer ones.
//!
//! Every request and every fault is logged ([`FaultProxy::log`]) with its time, method
//! and path. The seed is printed; `SETPOINT_FAULT_SEED=<n>` replays a run's draws (the
//! order of concurrent requests still varies).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The feed's route, whose answers [`FeedFaults`] rewrite.
pub const FEED_PATH: &str = "/api/status/recent-changes";

/// How often each fault is injected. A request is faulted with probability `rate`; the
/// kind is then drawn with the given weights.
#[derive(Debug, Clone)]
pub struct FaultRates {
    /// Share of requests faulted, 0.0..=1.0.
    pub rate: f64,
    /// Weight of added latency (the request is then forwarded normally).
    pub latency: u32,
    /// The added latency is drawn uniformly up to this.
    pub max_latency: Duration,
    /// Weight of a 500/502/503/504 answer, not forwarded.
    pub server_error: u32,
    /// Weight of a 429 with `Retry-After: retry_after_secs`, not forwarded.
    pub too_many: u32,
    /// What a 429 asks for.
    pub retry_after_secs: u64,
    /// Weight of a connection reset (half before forwarding, half after).
    pub reset: u32,
    /// Weight of a forwarded answer whose body is cut short of its `Content-Length`.
    pub truncate: u32,
    /// Whether a `POST .../start` may lose its answer after the control plane acted on
    /// it (reset after forwarding, truncated); when `false` such a draw resets the
    /// connection before forwarding instead.
    pub lose_start_answers: bool,
}

impl FaultRates {
    /// No faults.
    pub fn none() -> Self {
        FaultRates {
            rate: 0.0,
            latency: 0,
            max_latency: Duration::ZERO,
            server_error: 0,
            too_many: 0,
            retry_after_secs: 1,
            reset: 0,
            truncate: 0,
            lose_start_answers: true,
        }
    }

    /// `rate` of requests faulted, spread evenly over every kind.
    pub fn all_kinds(rate: f64) -> Self {
        FaultRates {
            rate,
            latency: 1,
            max_latency: Duration::from_millis(800),
            server_error: 1,
            too_many: 1,
            retry_after_secs: 1,
            reset: 1,
            truncate: 1,
            lose_start_answers: true,
        }
    }
}

/// How feed answers are rewritten: each event is dropped with `drop`, else duplicated
/// with `duplicate`, else held back with `reorder`: a held event is delivered at the end
/// of the next feed answer, after events newer than it (most answers carry one event, so
/// reordering within a batch alone would rarely happen). The first event that can get
/// a kind set here gets it whatever the draw, so a run injects every kind it sets at
/// least once.
#[derive(Debug, Clone, Default)]
pub struct FeedFaults {
    pub duplicate: f64,
    pub reorder: f64,
    pub drop: f64,
}

impl FeedFaults {
    fn any(&self) -> bool {
        self.duplicate > 0.0 || self.reorder > 0.0 || self.drop > 0.0
    }
}

/// A fault the proxy injected.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forwarded after this extra delay.
    Latency(Duration),
    /// Answered with this 5xx, not forwarded.
    ServerError(u16),
    /// Answered 429 with `Retry-After` of this many seconds, not forwarded.
    TooMany(u64),
    /// Connection dropped before forwarding.
    ResetBeforeForward,
    /// Forwarded; the connection dropped instead of answering.
    ResetAfterForward,
    /// Forwarded; the answer's body was cut short of its `Content-Length`.
    Truncated,
    /// A feed answer rewritten: events duplicated, dropped, and whether it carries events
    /// held back from an earlier answer (after its own, newer ones).
    Feed {
        duplicated: usize,
        dropped: usize,
        reordered: bool,
    },
}

impl Fault {
    /// Whether the control plane saw the request (it may have acted on it).
    pub fn forwarded(&self) -> bool {
        !matches!(
            self,
            Fault::ServerError(_) | Fault::TooMany(_) | Fault::ResetBeforeForward
        )
    }

    /// A short name, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Latency(_) => "latency",
            Fault::ServerError(_) => "5xx",
            Fault::TooMany(_) => "429",
            Fault::ResetBeforeForward => "reset-before",
            Fault::ResetAfterForward => "reset-after",
            Fault::Truncated => "truncated",
            Fault::Feed { .. } => "feed",
        }
    }
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it arrived (fully read).
    pub at: Instant,
    /// Which client connection it came on.
    pub connection: u64,
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Whether it reached the control plane.
    pub forwarded: bool,
    /// The control plane's status, when it answered.
    pub status: Option<u16>,
    /// What was injected, if anything.
    pub fault: Option<Fault>,
}

impl Entry {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }

    /// `METHOD path` (no query): a route for [`FaultProxy::retry_after_violations`].
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.path())
    }
}

/// SplitMix64: small, seedable, good enough for fault draws.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug)]
struct Shared {
    upstream: Mutex<String>,
    rates: Mutex<FaultRates>,
    feed: Mutex<FeedFaults>,
    /// Feed events held back, delivered after the next answer's own.
    held: Mutex<Vec<Value>>,
    /// Whether a feed event has been dropped, duplicated, held back yet.
    ever: [AtomicBool; 3],
    enabled: AtomicBool,
    rng: Mutex<Rng>,
    log: Mutex<Vec<Entry>>,
    connections: AtomicU64,
    client: reqwest::Client,
}

/// The running proxy. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The seed: `SETPOINT_FAULT_SEED` when set, else drawn from the clock.
pub fn seed() -> u64 {
    match std::env::var("SETPOINT_FAULT_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("SETPOINT_FAULT_SEED is an unsigned integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://host:port`) on a free loopback port, injecting
    /// nothing until [`set_rates`](Self::set_rates) or [`set_feed_faults`](Self::set_feed_faults).
    /// Prints its seed.
    pub async fn start(upstream: &str, seed: u64) -> FaultProxy {
        eprintln!(
            "fault proxy seed: {seed} (replay with SETPOINT_FAULT_SEED={seed}) -> {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream.trim_end_matches('/').to_owned()),
            rates: Mutex::new(FaultRates::none()),
            feed: Mutex::new(FeedFaults::default()),
            held: Mutex::new(Vec::new()),
            ever: Default::default(),
            enabled: AtomicBool::new(true),
            rng: Mutex::new(Rng(seed)),
            log: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(8)
                .build()
                .unwrap(),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let id = shared.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_connection(socket, id, shared.clone()));
                }
            }
        });
        FaultProxy {
            addr,
            seed,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn set_rates(&self, rates: FaultRates) {
        *self.shared.rates.lock().unwrap() = rates;
    }

    pub fn set_feed_faults(&self, feed: FeedFaults) {
        *self.shared.feed.lock().unwrap() = feed;
    }

    /// Stop (`false`) or resume injecting faults; the log goes on.
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Entry> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many of each fault kind were injected.
    pub fn fault_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for entry in self.shared.log.lock().unwrap().iter() {
            if let Some(fault) = &entry.fault {
                *counts.entry(fault.kind()).or_default() += 1;
            }
        }
        counts
    }

    /// For each 429 asking N s, the next request of the same route (method and path)
    /// if it came sooner than N s after it: `(route, asked, came after)`. There is one
    /// client (the daemon) behind the proxy.
    pub fn retry_after_violations(&self) -> Vec<(String, Duration, Duration)> {
        let log = self.log();
        let mut violations = Vec::new();
        for (i, entry) in log.iter().enumerate() {
            let Some(Fault::TooMany(secs)) = entry.fault else {
                continue;
            };
            let asked = Duration::from_secs(secs);
            let route = entry.route();
            if let Some(next) = log[i + 1..].iter().find(|e| e.route() == route) {
                let gap = next.at.duration_since(entry.at);
                if gap < asked {
                    violations.push((route, asked, gap));
                }
            }
        }
        violations
    }
}

enum Draw {
    Pass,
    Fault(Fault),
}

fn draw(shared: &Shared, method: &str, path: &str) -> Draw {
    match draw_any(shared) {
        Draw::Fault(Fault::ResetAfterForward | Fault::Truncated)
            if method == "POST"
                && path.ends_with("/start")
                && !shared.rates.lock().unwrap().lose_start_answers =>
        {
            Draw::Fault(Fault::ResetBeforeForward)
        }
        draw => draw,
    }
}

fn draw_any(shared: &Shared) -> Draw {
    if !shared.enabled.load(Ordering::SeqCst) {
        return Draw::Pass;
    }
    let rates = shared.rates.lock().unwrap().clone();
    let mut rng = shared.rng.lock().unwrap();
    if rates.rate <= 0.0 || rng.unit() >= rates.rate {
        return Draw::Pass;
    }
    let weights = [
        rates.latency,
        rates.server_error,
        rates.too_many,
        rates.reset,
        rates.truncate,
    ];
    let total: u32 = weights.iter().sum();
    if total == 0 {
        return Draw::Pass;
    }
    let mut pick = rng.below(u64::from(total)) as u32;
    let mut kind = 0;
    for (i, w) in weights.iter().enumerate() {
        if pick < *w {
            kind = i;
            break;
        }
        pick -= w;
    }
    Draw::Fault(match kind {
        0 => Fault::Latency(Duration::from_millis(
            rng.below(rates.max_latency.as_millis() as u64 + 1),
        )),
        1 => Fault::ServerError([500, 502, 503, 504][rng.below(4) as usize]),
        2 => Fault::TooMany(rates.retry_after_secs),
        3 if rng.below(2) == 0 => Fault::ResetBeforeForward,
        3 => Fault::ResetAfterForward,
        _ => Fault::Truncated,
    })
}

/// Rewrites a feed answer's `changes` as `faults` say; `None` when unchanged.
fn rewrite_feed(shared: &Shared, body: &[u8]) -> Option<(Vec<u8>, Fault)> {
    if !shared.enabled.load(Ordering::SeqCst) {
        return None;
    }
    let faults = shared.feed.lock().unwrap().clone();
    if !faults.any() {
        return None;
    }
    let mut page: Value = serde_json::from_slice(body).ok()?;
    let changes = page.get_mut("changes")?.as_array_mut()?;
    let mut held = shared.held.lock().unwrap();
    if changes.is_empty() && held.is_empty() {
        return None;
    }
    // Events held back from an earlier answer arrive after this one's, which are newer.
    let late = std::mem::take(&mut *held);
    let mut rng = shared.rng.lock().unwrap();
    let (mut duplicated, mut dropped) = (0, 0);
    let mut out = Vec::new();
    // Each kind set is drawn with its probability, and happens for certain the first
    // time it can: a run with a kind set always injects it at least once.
    let mut draw = |p: f64, seen: &AtomicBool| {
        let yes = p > 0.0 && (!seen.load(Ordering::SeqCst) || rng.unit() < p);
        if yes {
            seen.store(true, Ordering::SeqCst);
        }
        yes
    };
    for change in changes.drain(..) {
        if draw(faults.drop, &shared.ever[0]) {
            dropped += 1;
            continue;
        }
        if draw(faults.duplicate, &shared.ever[1]) {
            duplicated += 1;
            out.push(change.clone());
        }
        if draw(faults.reorder, &shared.ever[2]) {
            held.push(change);
            continue;
        }
        out.push(change);
    }
    let reordered = !late.is_empty();
    out.extend(late);
    drop(rng);
    let holding = !held.is_empty();
    drop(held);
    if duplicated == 0 && dropped == 0 && !reordered && !holding {
        return None;
    }
    *changes = out;
    Some((
        serde_json::to_vec(&page).unwrap(),
        Fault::Feed {
            duplicated,
            dropped,
            reordered,
        },
    ))
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one request from `socket` (`buf` keeps what was read past it); `None` at the
/// end of the connection.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")),
        "the fault proxy does not read chunked request bodies ({method} {target})"
    );
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn forward(shared: &Shared, request: &Request) -> Option<Answer> {
    let upstream = shared.upstream.lock().unwrap().clone();
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).ok()?;
    let mut builder = shared
        .client
        .request(method, format!("{upstream}{}", request.target));
    for (name, value) in &request.headers {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "accept-encoding" | "keep-alive"
        ) {
            continue;
        }
        builder = builder.header(name, value);
    }
    let response = builder.body(request.body.clone()).send().await.ok()?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            )
        })
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = response.bytes().await.ok()?.to_vec();
    Some(Answer {
        status,
        headers,
        body,
    })
}

fn head(status: u16, headers: &[(String, String)], length: usize) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    };
    let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("content-length: {length}\r\n\r\n"));
    text.into_bytes()
}

/// Drop the connection with a reset (linger 0) rather than an orderly close.
fn reset(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}

async fn serve_connection(mut socket: TcpStream, connection: u64, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut socket, &mut buf).await {
        let at = Instant::now();
        let path = request.target.split('?').next().unwrap_or_default();
        let fault = match draw(&shared, &request.method, path) {
            Draw::Pass => None,
            Draw::Fault(fault) => Some(fault),
        };
        let index = {
            let mut log = shared.log.lock().unwrap();
            log.push(Entry {
                at,
                connection,
                method: request.method.clone(),
                target: request.target.clone(),
                forwarded: fault.as_ref().is_none_or(Fault::forwarded),
                status: None,
                fault: fault.clone(),
            });
            log.len() - 1
        };
        match &fault {
            Some(Fault::ServerError(status)) => {
                let body = br#"{"error":"injected by the fault proxy"}"#;
                let headers = [("content-type".to_owned(), "application/json".to_owned())];
                let mut out = head(*status, &headers, body.len());
                out.extend_from_slice(body);
                if socket.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::TooMany(secs)) => {
                let body = br#"{"error":"slow down (fault proxy)"}"#;
                let headers = [
                    ("content-type".to_owned(), "application/json".to_owned()),
                    ("retry-after".to_owned(), secs.to_string()),
                ];
                let mut out = head(429, &headers, body.len());
                out.extend_from_slice(body);
                if socket.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::ResetBeforeForward) => return reset(socket),
            Some(Fault::Latency(delay)) => tokio::time::sleep(*delay).await,
            _ => {}
        }
        let Some(mut answer) = forward(&shared, &request).await else {
            // The control plane did not answer (it is down): so does the proxy.
            return reset(socket);
        };
        shared.log.lock().unwrap()[index].status = Some(answer.status);
        if request.target.starts_with(FEED_PATH)
            && answer.status == 200
            && let Some((body, rewritten)) = rewrite_feed(&shared, &answer.body)
        {
            answer.body = body;
            let mut log = shared.log.lock().unwrap();
            // A feed rewrite counts as the request's fault unless it had one already.
            if log[index].fault.is_none() {
                log[index].fault = Some(rewritten);
            }
        }
        match fault {
            Some(Fault::ResetAfterForward) => return reset(socket),
            Some(Fault::Truncated) if answer.body.is_empty() => return reset(socket),
            Some(Fault::Truncated) => {
                let mut out = head(answer.status, &answer.headers, answer.body.len());
                let cut = answer.body.len() / 2;
                out.extend_from_slice(&answer.body[..cut]);
                let _ = socket.write_all(&out).await;
                let _ = socket.flush().await;
                // An orderly close after too few bytes: the client sees the body end early.
                let _ = socket.shutdown().await;
                return;
            }
            _ => {}
        }
        let mut out = head(answer.status, &answer.headers, answer.body.len());
        out.extend_from_slice(&answer.body);
        if socket.write_all(&out).await.is_err() {
            return;
        }
    }
}
