//! [`DraasClient`]: the [`ControlPlane`] over the DRaaS REST API, with reqwest.
//!
//! Every request has a timeout. Reads (`GET`) are repeated on transport errors, timeouts
//! and 429/502/503/504, after a full-jitter exponential backoff or the `Retry-After` the
//! control plane asked for; calls that change something are sent once, since repeating a
//! `start` whose answer was lost could start an instance twice.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tracing::debug;

use super::error::excerpt;
use super::{
    BackendWeight, Capabilities, ChangeBatch, ControlPlane, Error, Health, Instance, Metrics,
    Result, RuntimeInfo, StatusChange, Timestamp,
};

/// Default base path: the DRaaS controllers are mounted under `/api`.
pub const DEFAULT_BASE_PATH: &str = "/api";
/// Default timeout of one request, connect to last body byte. A control plane that takes
/// longer for a read is unhealthy; the reconcile is retried later anyway.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of times a failed read is repeated (so at most 4 attempts).
pub const DEFAULT_RETRIES: u32 = 3;
/// Default first backoff step; step `n` draws uniformly from `0..=base·2ⁿ` (full jitter).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Default ceiling of one backoff step, so three retries stay well under a reconcile's
/// timeout.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Default ceiling on an honoured `Retry-After`: a control plane asking for minutes is
/// better served by the controller's own per-key backoff than by a blocked call.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where the DRaaS resources live, relative to [`ClientConfig::base_path`]. Each route may
/// contain `/`; ids are appended as percent-encoded path segments. The defaults are the
/// routes of the DRaaS seed and of the reference control plane (`examples/controlplane`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// The instances collection (list, get, lifecycle, delete). Default
    /// `server/instances` (the DRaaS controller's route); the .NET reconciler's client
    /// called `servers/instances` instead.
    pub instances: String,
    /// Desired configurations. Default `configuration/instances`.
    pub configuration: String,
    /// Runtime status and the change feed (`{status}/{id}/status`,
    /// `{status}/recent-changes`). Default `status`.
    pub status: String,
    /// Per-instance extensions (`{id}/clone`, `{id}/health`, `{id}/metrics`,
    /// `{id}/running-configuration`). Default `extensions/instances`.
    pub extension_instances: String,
    /// Weighted endpoints (extension, `{name}`). Default `extensions/endpoints`.
    pub endpoints: String,
    /// What every running instance runs (extension). Default
    /// `extensions/running-configurations`.
    pub running_configurations: String,
    /// The extension discovery document (`{"extensions": ["sequenceFeed", …]}`), read by
    /// `capabilities()`. Default `extensions/info`.
    pub info: String,
    /// The query parameter carrying a long-poll's wait, in seconds (fractions allowed).
    /// Default `wait`.
    pub wait_param: String,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            instances: "server/instances".to_owned(),
            configuration: "configuration/instances".to_owned(),
            status: "status".to_owned(),
            extension_instances: "extensions/instances".to_owned(),
            endpoints: "extensions/endpoints".to_owned(),
            running_configurations: "extensions/running-configurations".to_owned(),
            info: "extensions/info".to_owned(),
            wait_param: "wait".to_owned(),
        }
    }
}

/// How [`DraasClient`] reaches the control plane. Start from [`ClientConfig::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Scheme, host and port, e.g. `http://127.0.0.1:5000`. (HTTPS needs a TLS feature of
    /// `reqwest`, e.g. `rustls-tls`, enabled by the embedding crate.)
    pub base_url: String,
    /// Prefix of every route, e.g. `/api` (default, [`DEFAULT_BASE_PATH`]), or `/` for a
    /// control plane mounted at the root.
    pub base_path: String,
    /// Route pieces under the base path (see [`Routes`]).
    pub routes: Routes,
    /// Timeout of one request; a long-poll gets its wait on top.
    pub request_timeout: Duration,
    /// How many times a failed read is repeated; 0 disables retries.
    pub retries: u32,
    /// First backoff step between read attempts.
    pub backoff_base: Duration,
    /// Ceiling of one backoff step.
    pub backoff_cap: Duration,
    /// Ceiling on an honoured `Retry-After`.
    pub max_retry_after: Duration,
    /// The extensions the control plane offers, if known; `None` (default) probes once
    /// (see [`DraasClient`]'s `capabilities`).
    pub capabilities: Option<Capabilities>,
}

impl ClientConfig {
    /// Defaults for a control plane at `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            base_path: DEFAULT_BASE_PATH.to_owned(),
            routes: Routes::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            capabilities: None,
        }
    }

    /// The delay before retry number `attempt + 1`: the control plane's `Retry-After` up to
    /// [`max_retry_after`](Self::max_retry_after), or else a uniform draw from
    /// `0..=min(backoff_cap, backoff_base·2^attempt)` (AWS's "full jitter", which spreads
    /// the retries of many hosts hit by the same outage).
    pub fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_retry_after);
        }
        let ceiling = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.backoff_cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// The DRaaS control plane over HTTP. Cheap to share: hold it in an `Arc`.
///
/// `capabilities()` (unless [`ClientConfig::capabilities`] declares them) asks once and
/// caches the answer: the discovery document ([`Routes::info`], the reference control
/// plane's `GET /api/extensions/info`) lists the extensions by name (`sequenceFeed`,
/// `clone`, `health`, `metrics`, `endpoints`, `runningConfiguration`); a control plane
/// without it (404) is probed for the sequence feed with `after=0` and no wait, and
/// otherwise offers what the seed API does ([`Capabilities::SEED`]). A transient failure
/// is returned and not cached.
#[derive(Debug)]
pub struct DraasClient {
    http: reqwest::Client,
    config: ClientConfig,
    /// `base_url` with `base_path` appended, as path segments.
    base: Url,
    capabilities: OnceCell<Capabilities>,
    /// Routes (URL paths) a 429 asked to leave alone, until when: nothing is sent to
    /// them before (a read waits, a mutation fails at once; see [`DraasClient::send`]).
    held: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// The media type of an RFC 6902 JSON Patch document.
const JSON_PATCH: &str = "application/json-patch+json";

/// A request with everything needed to repeat it.
struct Request<'a> {
    method: Method,
    url: Url,
    body: Option<&'a Value>,
    /// The body's media type, when not `application/json`.
    content_type: Option<&'static str>,
    timeout: Duration,
    retry: bool,
}

/// A received answer, any status.
struct Answer {
    call: String,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl DraasClient {
    /// A client for the control plane described by `config`. Fails on a base URL that is
    /// not an absolute `http(s)` URL.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let mut base = Url::parse(config.base_url.trim()).map_err(|e| Error::InvalidConfig {
            key: "base_url",
            reason: format!(
                "`{}` is not a URL ({e}); expected e.g. http://127.0.0.1:5000",
                config.base_url
            ),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::InvalidConfig {
                key: "base_url",
                reason: format!("`{}` is not an http(s) URL", config.base_url),
            });
        }
        base.set_query(None);
        base.set_fragment(None);
        push_route(&mut base, &config.base_path);
        if config.request_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                key: "request_timeout",
                reason: "must be greater than zero".to_owned(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| Error::InvalidConfig {
                key: "base_url",
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            config,
            base,
            capabilities: OnceCell::new(),
            held: std::sync::Mutex::default(),
        })
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// `base` + `route` + each of `ids` as one encoded segment.
    fn url(&self, route: &str, ids: &[&str]) -> Url {
        let mut url = self.base.clone();
        push_route(&mut url, route);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(ids);
        }
        url
    }

    fn request<'a>(&self, method: Method, url: Url) -> Request<'a> {
        let retry = method == Method::GET;
        Request {
            method,
            url,
            body: None,
            content_type: None,
            timeout: self.config.request_timeout,
            retry,
        }
    }

    /// How long `url`'s route is still held back by a 429's `Retry-After`, if it is.
    fn held_for(&self, url: &Url) -> Option<Duration> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let until = *held.get(url.path())?;
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            held.remove(url.path());
            return None;
        }
        Some(left)
    }

    /// Holds `url`'s route back for what a 429 asked (up to `max_retry_after`).
    fn hold(&self, url: &Url, asked: Duration) {
        let until = std::time::Instant::now() + asked.min(self.config.max_retry_after);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held.entry(url.path().to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Sends `req`, repeating a retryable failure of a read, and returns a successful
    /// answer or the error.
    ///
    /// A 429's `Retry-After` is honoured for the route (the URL's path) by every later
    /// request of this client, not only by this call's retries: a read waits out the rest
    /// of it; a mutation, which the caller decides whether to repeat, fails at once with
    /// a retryable 429 that says so, without reaching the control plane.
    async fn send(&self, req: Request<'_>) -> Result<Answer> {
        let mut attempt = 0;
        loop {
            let outcome = self.send_once(&req).await.and_then(check);
            match outcome {
                Err(error)
                    if req.retry && attempt < self.config.retries && error.is_retryable() =>
                {
                    let delay = self.config.retry_delay(attempt, error.retry_after());
                    // Debug: a read that succeeds on a retry is no news, and one that
                    // fails for good is reported by its caller (an outage once, by
                    // crate::reachability), not once per attempt.
                    debug!(%error, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, "retrying control-plane read");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt: transport errors and timeouts become errors, any status is an answer.
    /// Every request goes out here, so this is where a 429's `Retry-After` holds its
    /// route back (see [`DraasClient::send`]).
    async fn send_once(&self, req: &Request<'_>) -> Result<Answer> {
        if let Some(left) = self.held_for(&req.url) {
            if !req.retry {
                return Err(Error::Status {
                    call: describe(&req.method, &req.url),
                    status: StatusCode::TOO_MANY_REQUESTS,
                    body: format!(
                        "not sent: the control plane's Retry-After for this route has {} ms left",
                        left.as_millis()
                    ),
                    retry_after: Some(left),
                });
            }
            tokio::time::sleep(left).await;
        }
        let answer = self.send_unheld(req).await?;
        if answer.status == StatusCode::TOO_MANY_REQUESTS
            && let Some(asked) = answer.retry_after
        {
            self.hold(&req.url, asked);
        }
        Ok(answer)
    }

    async fn send_unheld(&self, req: &Request<'_>) -> Result<Answer> {
        let call = describe(&req.method, &req.url);
        let mut builder = self
            .http
            .request(req.method.clone(), req.url.clone())
            .timeout(req.timeout);
        if let Some(body) = req.body {
            // Set first: `json` keeps a content type that is already there.
            if let Some(content_type) = req.content_type {
                builder = builder.header(CONTENT_TYPE, content_type);
            }
            builder = builder.json(body);
        }
        let transport = |source: reqwest::Error, call: String| {
            if source.is_timeout() {
                Error::Timeout {
                    call,
                    timeout: req.timeout,
                }
            } else {
                Error::Unreachable { call, source }
            }
        };
        let response = match builder.send().await {
            Ok(response) => response,
            Err(source) => return Err(transport(source, call)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(source) => return Err(transport(source, call)),
        };
        debug!(call = %call, status = status.as_u16(), "control-plane call");
        Ok(Answer {
            call,
            status,
            retry_after,
            body,
        })
    }

    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T> {
        let answer = self.send(self.request(Method::GET, url)).await?;
        decode(&answer.call, &answer.body)
    }

    /// Sends a call that changes something (never repeated) and ignores the answer's body.
    async fn mutate(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Answer> {
        let mut req = self.request(method, url);
        req.retry = false;
        req.body = body;
        self.send(req).await
    }

    async fn probe_capabilities(&self) -> Result<Capabilities> {
        #[derive(serde::Deserialize)]
        struct Info {
            #[serde(default)]
            extensions: Vec<String>,
        }
        match self
            .get::<Info>(self.url(&self.config.routes.info, &[]))
            .await
        {
            Ok(info) => {
                let has = |name: &str| info.extensions.iter().any(|e| e.eq_ignore_ascii_case(name));
                return Ok(Capabilities {
                    sequence_feed: has("sequenceFeed"),
                    clone_instance: has("clone"),
                    delete_clone: true,
                    traffic_weights: has("endpoints"),
                    health: has("health"),
                    metrics: has("metrics"),
                    running_configuration: has("runningConfiguration"),
                });
            }
            Err(Error::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        match self.changes_after(None, Duration::ZERO).await {
            Ok(_) => Ok(Capabilities {
                sequence_feed: true,
                ..Capabilities::SEED
            }),
            Err(Error::FeedUnsupported { .. }) => Ok(Capabilities::SEED),
            Err(error) => Err(error),
        }
    }
}

#[async_trait]
impl ControlPlane for DraasClient {
    async fn list_instances(&self) -> Result<Vec<Instance>> {
        self.get(self.url(&self.config.routes.instances, &[])).await
    }

    async fn get_instance(&self, id: &str) -> Result<Instance> {
        self.get(self.url(&self.config.routes.instances, &[id]))
            .await
    }

    async fn desired_configuration(&self, id: &str) -> Result<Value> {
        self.get(self.url(&self.config.routes.configuration, &[id]))
            .await
    }

    async fn runtime_status(&self, id: &str) -> Result<RuntimeInfo> {
        self.get(self.url(&self.config.routes.status, &[id, "status"]))
            .await
    }

    async fn start(&self, id: &str, configuration: Option<&Value>) -> Result<()> {
        let url = self.url(&self.config.routes.instances, &[id, "start"]);
        self.mutate(Method::POST, url, configuration)
            .await
            .map(drop)
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let url = self.url(&self.config.routes.instances, &[id, "stop"]);
        self.mutate(Method::POST, url, None).await.map(drop)
    }

    async fn restart(&self, id: &str) -> Result<()> {
        let url = self.url(&self.config.routes.instances, &[id, "restart"]);
        self.mutate(Method::POST, url, None).await.map(drop)
    }

    async fn changes_after(&self, cursor: Option<u64>, wait: Duration) -> Result<ChangeBatch> {
        let mut url = self.url(&self.config.routes.status, &["recent-changes"]);
        url.query_pairs_mut()
            .append_pair("after", &cursor.unwrap_or(0).to_string())
            .append_pair(&self.config.routes.wait_param, &seconds(wait));
        let mut req = self.request(Method::GET, url);
        req.timeout = req.timeout.saturating_add(wait);
        let answer = match self.send(req).await {
            Ok(answer) => answer,
            Err(Error::NotFound { call, .. }) => {
                return Err(Error::FeedUnsupported {
                    call,
                    reason: "404 for `after=`".to_owned(),
                });
            }
            Err(Error::Status { call, status, .. }) if status == StatusCode::BAD_REQUEST => {
                return Err(Error::FeedUnsupported {
                    call,
                    reason: "400 for `after=`".to_owned(),
                });
            }
            Err(error) => return Err(error),
        };
        decode_feed_page(&answer.call, &answer.body)
    }

    async fn feed_head(&self) -> Result<Option<u64>> {
        // The reference control plane's discovery document carries the head of its feed;
        // reading it spares downloading every retained change.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Info {
            latest_sequence: Option<u64>,
        }
        match self
            .get::<Info>(self.url(&self.config.routes.info, &[]))
            .await
        {
            Ok(Info {
                latest_sequence: Some(head),
            }) => Ok(Some(head)),
            Ok(_) | Err(Error::NotFound { .. }) | Err(Error::Decode { .. }) => Ok(self
                .changes_after(None, Duration::ZERO)
                .await?
                .next_cursor()),
            Err(error) => Err(error),
        }
    }

    async fn changes_since(&self, since: Timestamp) -> Result<Vec<StatusChange>> {
        let mut url = self.url(&self.config.routes.status, &["recent-changes"]);
        url.query_pairs_mut().append_pair(
            "since",
            &since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let answer = self.send(self.request(Method::GET, url)).await?;
        decode_changes_since(&answer.call, &answer.body)
    }

    async fn clone_instance(&self, id: &str, request: &Value) -> Result<Instance> {
        let url = self.url(&self.config.routes.extension_instances, &[id, "clone"]);
        let answer = self.mutate(Method::POST, url, Some(request)).await?;
        decode(&answer.call, &answer.body)
    }

    async fn delete_clone(&self, id: &str) -> Result<()> {
        let url = self.url(&self.config.routes.instances, &[id]);
        self.mutate(Method::DELETE, url, None).await.map(drop)
    }

    async fn set_traffic_weights(&self, endpoint: &str, backends: &[BackendWeight]) -> Result<()> {
        let url = self.url(&self.config.routes.endpoints, &[endpoint]);
        let body = json!({ "backends": backends });
        self.mutate(Method::PUT, url, Some(&body)).await.map(drop)
    }

    async fn probe_health(&self, id: &str) -> Result<Health> {
        let url = self.url(&self.config.routes.extension_instances, &[id, "health"]);
        // A probe reports the state now, so it is not repeated; and an unhealthy instance
        // may be reported with 503 and a health body, which is an answer, not a failure.
        let mut req = self.request(Method::GET, url);
        req.retry = false;
        let answer = self.send_once(&req).await?;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE
            && let Ok(health) = serde_json::from_slice::<Health>(&answer.body)
        {
            return Ok(health);
        }
        let answer = check(answer)?;
        decode(&answer.call, &answer.body)
    }

    async fn metrics(&self, id: &str) -> Result<Metrics> {
        self.get(self.url(&self.config.routes.extension_instances, &[id, "metrics"]))
            .await
    }

    async fn running_configuration(&self, id: &str) -> Result<Option<Value>> {
        #[derive(serde::Deserialize)]
        struct Running {
            /// Absent from a control plane that only answers the configuration.
            #[serde(default = "yes")]
            running: bool,
            #[serde(default)]
            configuration: Option<Value>,
        }
        fn yes() -> bool {
            true
        }
        let url = self.url(
            &self.config.routes.extension_instances,
            &[id, "running-configuration"],
        );
        match self.get::<Running>(url).await {
            Ok(answer) => Ok(answer
                .configuration
                .filter(|c| answer.running && !c.is_null())),
            // A 404 says either "no such instance" or "no such route" (a control plane
            // without the extension, such as the seed or the reference control plane in
            // seed-only mode). The controller reads NotFound as "the instance is gone", so
            // the two must not be confused. The other extension calls do not tell them
            // apart; the 404 body cannot be trusted to (ASP.NET answers an unknown route
            // with an empty body, the reference control plane with `no route for …`, other
            // control planes with anything), so ask the seed route whether the instance
            // exists: one more read, and only on this failure path.
            Err(missing @ Error::NotFound { .. }) => {
                let exists =
                    self.request(Method::GET, self.url(&self.config.routes.instances, &[id]));
                match self.send(exists).await {
                    Ok(_) => Err(Error::Unsupported {
                        call: "running_configuration".to_owned(),
                    }),
                    Err(error) if error.is_not_found() => Err(missing),
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    async fn running_configurations(&self) -> Result<std::collections::HashMap<String, Value>> {
        #[derive(serde::Deserialize)]
        struct Bulk {
            configurations: std::collections::HashMap<String, Value>,
        }
        // No instance is named, so a 404 can only mean the route is missing.
        let bulk: Bulk = match self
            .get(self.url(&self.config.routes.running_configurations, &[]))
            .await
        {
            Ok(bulk) => bulk,
            Err(Error::NotFound { .. }) => {
                return Err(Error::Unsupported {
                    call: "running_configurations".to_owned(),
                });
            }
            Err(error) => return Err(error),
        };
        Ok(bulk
            .configurations
            .into_iter()
            .filter(|(_, configuration)| !configuration.is_null())
            .collect())
    }

    async fn set_desired_configuration(&self, id: &str, configuration: &Value) -> Result<()> {
        let url = self.url(&self.config.routes.configuration, &[id]);
        let patch = json!([{ "op": "replace", "path": "", "value": configuration }]);
        let mut req = self.request(Method::PATCH, url);
        req.retry = false;
        req.body = Some(&patch);
        req.content_type = Some(JSON_PATCH);
        self.send(req).await.map(drop)
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        if let Some(declared) = self.config.capabilities {
            return Ok(declared);
        }
        self.capabilities
            .get_or_try_init(|| self.probe_capabilities())
            .await
            .copied()
    }
}

/// Appends the non-empty `/`-separated pieces of `route` to `url`'s path.
fn push_route(url: &mut Url, route: &str) {
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(route.split('/').filter(|s| !s.is_empty()));
    }
}

/// A wait in seconds as the `wait=` parameter takes it: `30`, `0.25`.
fn seconds(wait: Duration) -> String {
    if wait.subsec_nanos() == 0 {
        wait.as_secs().to_string()
    } else {
        format!("{:.3}", wait.as_secs_f64())
    }
}

/// `GET /api/server/instances/abc?x=1`: what error messages and logs call a request.
fn describe(method: &Method, url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{method} {}?{query}", url.path()),
        None => format!("{method} {}", url.path()),
    }
}

/// A success answer, or the error its status means.
fn check(answer: Answer) -> Result<Answer> {
    if answer.status.is_success() {
        return Ok(answer);
    }
    let body = error_text(&answer.body);
    if answer.status == StatusCode::NOT_FOUND {
        return Err(Error::NotFound {
            call: answer.call,
            body,
        });
    }
    Err(Error::Status {
        call: answer.call,
        status: answer.status,
        body,
        retry_after: answer.retry_after,
    })
}

/// What an error answer says: the reference control plane's `{"error": "..."}`, or the
/// `detail`/`title` of an ASP.NET problem-details body, or else the start of the raw body.
fn error_text(body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        for key in ["error", "detail", "title"] {
            if let Some(Value::String(text)) = map.get(key) {
                return excerpt(text.as_bytes());
            }
        }
    }
    excerpt(body)
}

/// Decodes one answer of the sequence-numbered feed (`recent-changes?after=`): a page
/// object, or [`Error::FeedUnsupported`] when the control plane ignored `after=` and
/// answered a plain array. The feed fuzz target (`fuzz/`) enters here.
pub fn decode_feed_page(call: &str, body: &[u8]) -> Result<ChangeBatch> {
    let value: Value = decode(call, body)?;
    if value.is_array() {
        return Err(Error::FeedUnsupported {
            call: call.to_owned(),
            reason: "`after=` was ignored: the answer is a plain array".to_owned(),
        });
    }
    decode_value(call, value)
}

/// Decodes one answer of the timestamp feed (`recent-changes?since=`): an array of
/// changes, or a feed page whose `changes` are read.
pub fn decode_changes_since(call: &str, body: &[u8]) -> Result<Vec<StatusChange>> {
    // A control plane that answers with its feed page here too is read as well.
    match decode::<Value>(call, body)? {
        Value::Object(mut page) if page.contains_key("changes") => {
            decode_value(call, page.remove("changes").unwrap_or_default())
        }
        other => decode_value(call, other),
    }
}

fn decode_error(call: &str, error: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = error.path().to_string();
    Error::Decode {
        call: call.to_owned(),
        field: (path != ".").then_some(path),
        source: error.into_inner(),
    }
}

fn decode<T: DeserializeOwned>(call: &str, body: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| decode_error(call, e))
}

fn decode_value<T: DeserializeOwned>(call: &str, value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| decode_error(call, e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::response::IntoResponse;
    use axum::routing::{get, post, put};
    use std::collections::HashMap;

    use super::*;
    use crate::client::InstanceStatus;

    /// Serves `router` on an ephemeral loopback port; returns its base URL.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    /// A client with tiny backoffs, so retry tests take milliseconds.
    fn client(base_url: &str) -> DraasClient {
        let mut config = ClientConfig::new(base_url);
        config.backoff_base = Duration::from_millis(1);
        config.backoff_cap = Duration::from_millis(5);
        DraasClient::new(config).unwrap()
    }

    fn instance_json(status: Value, platform: Value) -> Value {
        json!({
            "id": "abc", "name": "one", "description": "d", "platformType": platform,
            "createdAt": "2024-05-01T12:00:00Z", "lastModifiedAt": null,
            "status": status, "metadata": {"team": "x"}, "unknownField": 1
        })
    }

    fn counted(counter: &Arc<AtomicUsize>) -> usize {
        counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[tokio::test]
    async fn enums_decode_from_integers_and_strings() {
        let router = Router::new()
            .route(
                "/api/server/instances",
                get(|| async { axum::Json(json!([instance_json(json!(1), json!(0))])) }),
            )
            .route(
                "/api/server/instances/abc",
                get(|| async { axum::Json(instance_json(json!("stopped"), json!("Simulated"))) }),
            );
        let cp = client(&serve(router).await);
        let list = cp.list_instances().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, InstanceStatus::Running);
        assert_eq!(list[0].platform_type, crate::client::PlatformType::Process);
        let one = cp.get_instance("abc").await.unwrap();
        assert_eq!(one.status, InstanceStatus::Stopped);
        assert_eq!(one.platform_type, crate::client::PlatformType::Simulated);
        assert_eq!(one.metadata["team"], "x");
    }

    #[tokio::test]
    async fn reads_are_retried_on_503_then_succeed() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/configuration/instances/abc",
                get(|State(hits): State<Arc<AtomicUsize>>| async move {
                    if counted(&hits) < 3 {
                        (AxumStatus::SERVICE_UNAVAILABLE, "warming up").into_response()
                    } else {
                        axum::Json(json!({"port": 8080})).into_response()
                    }
                }),
            )
            .with_state(hits.clone());
        let cp = client(&serve(router).await);
        let config = cp.desired_configuration("abc").await.unwrap();
        assert_eq!(config["port"], 8080);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_stop_after_the_configured_count_with_the_last_error() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/server/instances",
                get(|State(hits): State<Arc<AtomicUsize>>| async move {
                    counted(&hits);
                    AxumStatus::BAD_GATEWAY
                }),
            )
            .with_state(hits.clone());
        let cp = client(&serve(router).await);
        let err = cp.list_instances().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Status {
                    status: StatusCode::BAD_GATEWAY,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1 + DEFAULT_RETRIES as usize);
    }

    #[tokio::test]
    async fn retry_after_is_honoured_up_to_the_cap() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/server/instances",
                get(|State(hits): State<Arc<AtomicUsize>>| async move {
                    if counted(&hits) == 1 {
                        let mut headers = HeaderMap::new();
                        headers.insert("retry-after", "120".parse().unwrap());
                        (AxumStatus::TOO_MANY_REQUESTS, headers, "slow down").into_response()
                    } else {
                        axum::Json(json!([])).into_response()
                    }
                }),
            )
            .with_state(hits.clone());
        let mut config = ClientConfig::new(serve(router).await);
        config.backoff_base = Duration::ZERO;
        config.max_retry_after = Duration::from_millis(150);
        let cp = DraasClient::new(config).unwrap();
        let started = Instant::now();
        assert!(cp.list_instances().await.unwrap().is_empty());
        let took = started.elapsed();
        // Waited for the capped Retry-After (backoff alone would have been zero), not 120 s.
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn retry_delay_uses_retry_after_below_the_cap_and_full_jitter_otherwise() {
        let config = ClientConfig::new("http://127.0.0.1:1");
        assert_eq!(
            config.retry_delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            config.retry_delay(0, Some(Duration::from_secs(3600))),
            DEFAULT_MAX_RETRY_AFTER
        );
        for attempt in 0..10 {
            let ceiling = (DEFAULT_BACKOFF_BASE * 2u32.pow(attempt)).min(DEFAULT_BACKOFF_CAP);
            assert!(config.retry_delay(attempt, None) <= ceiling);
        }
        // Full jitter: draws spread over the range rather than sitting at the ceiling.
        let draws: Vec<_> = (0..50).map(|_| config.retry_delay(4, None)).collect();
        assert!(
            draws.iter().any(|d| *d < DEFAULT_BACKOFF_BASE * 8),
            "{draws:?}"
        );
    }

    #[tokio::test]
    async fn mutating_calls_are_not_retried() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/server/instances/abc/start",
                post(|State(hits): State<Arc<AtomicUsize>>| async move {
                    counted(&hits);
                    AxumStatus::SERVICE_UNAVAILABLE
                }),
            )
            .with_state(hits.clone());
        let cp = client(&serve(router).await);
        let err = cp
            .start("abc", Some(&json!({"port": 1})))
            .await
            .unwrap_err();
        assert!(
            err.is_retryable(),
            "the caller may retry; the client must not"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(
            err.to_string()
                .starts_with("POST /api/server/instances/abc/start: 503"),
            "{err}"
        );
    }

    /// A 429's `Retry-After` holds the route back for this client: a mutation sent again
    /// before it passed fails at once without reaching the control plane, one sent after
    /// it goes out.
    #[tokio::test]
    async fn a_mutation_answered_429_is_not_sent_again_before_its_retry_after() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/server/instances/abc/stop",
                post(|State(hits): State<Arc<AtomicUsize>>| async move {
                    if counted(&hits) == 1 {
                        let mut headers = HeaderMap::new();
                        headers.insert("retry-after", "1".parse().unwrap());
                        (AxumStatus::TOO_MANY_REQUESTS, headers, "slow down").into_response()
                    } else {
                        axum::Json(json!({})).into_response()
                    }
                }),
            )
            .with_state(hits.clone());
        let cp = client(&serve(router).await);
        let first = cp.stop("abc").await.unwrap_err();
        let answered = Instant::now();
        assert!(first.is_retryable(), "{first}");
        let held = cp.stop("abc").await.unwrap_err();
        assert!(held.is_retryable(), "{held}");
        assert!(held.to_string().contains("Retry-After"), "{held}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "held back, not sent");
        // The hold began before `answered`: it is over 1 s after it.
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(answered.elapsed())).await;
        cp.stop("abc").await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    /// A read of a held-back route waits out the rest of the `Retry-After` instead.
    #[tokio::test]
    async fn a_read_of_a_route_answered_429_waits_for_its_retry_after() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/server/instances",
                get(|State(hits): State<Arc<AtomicUsize>>| async move {
                    if counted(&hits) == 1 {
                        let mut headers = HeaderMap::new();
                        headers.insert("retry-after", "1".parse().unwrap());
                        (AxumStatus::TOO_MANY_REQUESTS, headers, "slow down").into_response()
                    } else {
                        axum::Json(json!([])).into_response()
                    }
                }),
            )
            .with_state(hits.clone());
        let mut config = ClientConfig::new(serve(router).await);
        config.retries = 0;
        let cp = DraasClient::new(config).unwrap();
        let started = Instant::now();
        cp.list_instances().await.unwrap_err();
        cp.list_instances().await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn start_sends_the_configuration_body_and_stop_sends_none() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let router = Router::new()
            .route(
                "/api/server/instances/{id}/{action}",
                post(
                    |State(seen): State<Arc<std::sync::Mutex<Vec<String>>>>,
                     axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
                     body: String| async move {
                        seen.lock().unwrap().push(format!("{id} {action} {body}"));
                        AxumStatus::ACCEPTED
                    },
                ),
            )
            .with_state(seen.clone());
        let cp = client(&serve(router).await);
        cp.start("a b", Some(&json!({"port": 1}))).await.unwrap();
        cp.stop("a b").await.unwrap();
        cp.restart("a b").await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                r#"a b start {"port":1}"#.to_owned(),
                "a b stop ".to_owned(),
                "a b restart ".to_owned()
            ]
        );
    }

    #[tokio::test]
    async fn not_found_is_distinct_and_names_the_call() {
        let router = Router::new().route(
            "/api/server/instances/{id}",
            get(|| async {
                let body = json!({"error": "Instance 'nope' not found"});
                (AxumStatus::NOT_FOUND, axum::Json(body))
            }),
        );
        let cp = client(&serve(router).await);
        let err = cp.get_instance("nope").await.unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "GET /api/server/instances/nope: 404 not found: Instance 'nope' not found"
        );
        assert_eq!(err.call(), Some("GET /api/server/instances/nope"));
    }

    #[tokio::test]
    async fn error_message_includes_status_and_body_and_500_is_not_retried() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/status/{id}/status",
                get(|State(hits): State<Arc<AtomicUsize>>| async move {
                    counted(&hits);
                    (AxumStatus::INTERNAL_SERVER_ERROR, "boom:\n  store locked")
                }),
            )
            .with_state(hits.clone());
        let cp = client(&serve(router).await);
        let err = cp.runtime_status("abc").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "GET /api/status/abc/status: 500 Internal Server Error: boom: store locked"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn base_path_and_routes_are_configurable() {
        let router = Router::new()
            .route(
                "/v2/servers/instances/abc",
                get(|| async { axum::Json(instance_json(json!(0), json!(0))) }),
            )
            .route(
                "/v2/status/abc/status",
                get(|| async { axum::Json(json!({"instanceId": "abc", "status": 1})) }),
            );
        let mut config = ClientConfig::new(format!("{}/", serve(router).await));
        config.base_path = "/v2/".to_owned();
        config.routes.instances = "servers/instances".to_owned();
        let cp = DraasClient::new(config).unwrap();
        assert_eq!(
            cp.get_instance("abc").await.unwrap().status,
            InstanceStatus::Created
        );
        assert_eq!(
            cp.runtime_status("abc").await.unwrap().status,
            InstanceStatus::Running
        );
        // The default layout is not served here.
        let default = client(&cp.config().base_url);
        assert!(
            default
                .get_instance("abc")
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    #[tokio::test]
    async fn request_timeout_fires_and_names_the_call() {
        let router = Router::new().route(
            "/api/server/instances",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                axum::Json(json!([]))
            }),
        );
        let mut config = ClientConfig::new(serve(router).await);
        config.request_timeout = Duration::from_millis(100);
        config.retries = 0;
        let cp = DraasClient::new(config).unwrap();
        let started = Instant::now();
        let err = cp.list_instances().await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "GET /api/server/instances: no answer within 100ms"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn unreachable_control_plane_names_the_call() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut config = ClientConfig::new(format!("http://{addr}"));
        config.retries = 0;
        let cp = DraasClient::new(config).unwrap();
        let err = cp.list_instances().await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "GET /api/server/instances: cannot reach the control plane"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn decode_errors_name_the_field() {
        let router = Router::new().route(
            "/api/server/instances",
            get(|| async { axum::Json(json!([instance_json(json!("Paused"), json!(0))])) }),
        );
        let cp = client(&serve(router).await);
        let err = cp.list_instances().await.unwrap_err();
        assert!(
            matches!(&err, Error::Decode { field: Some(f), .. } if f == "[0].status"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "GET /api/server/instances: cannot decode the response at `[0].status`"
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("unknown status `Paused`"), "{cause}");
    }

    fn change_json(sequence: u64, status: Value) -> Value {
        json!({"sequence": sequence, "instanceId": "abc", "status": status,
               "previousStatus": 1, "source": "controlplane",
               "timestamp": "2024-05-01T12:00:00Z"})
    }

    #[tokio::test]
    async fn sequence_feed_decodes_batches_and_truncation_and_waits_past_the_request_timeout() {
        let router = Router::new().route(
            "/api/status/recent-changes",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let after: u64 = q["after"].parse().unwrap();
                let wait: f64 = q["wait"].parse().unwrap();
                if wait > 0.0 {
                    // A long-poll that answers after longer than the request timeout.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                axum::Json(json!({
                    "latestSequence": 12, "oldestSequence": 10, "truncated": after < 9,
                    "changes": [change_json(11, json!(3)), change_json(12, json!("Running"))]
                }))
            }),
        );
        let mut config = ClientConfig::new(serve(router).await);
        config.request_timeout = Duration::from_millis(150);
        let cp = DraasClient::new(config).unwrap();
        let batch = cp.changes_after(Some(3), Duration::ZERO).await.unwrap();
        assert!(batch.truncated);
        assert_eq!(batch.oldest_sequence, Some(10));
        assert_eq!(batch.changes[0].status, InstanceStatus::Error);
        assert_eq!(
            batch.changes[0].previous_status,
            Some(InstanceStatus::Running)
        );
        assert_eq!(batch.next_cursor(), Some(12));
        let batch = cp
            .changes_after(Some(10), Duration::from_millis(500))
            .await
            .unwrap();
        assert!(!batch.truncated);
        assert_eq!(batch.latest_sequence, Some(12));
        assert_eq!(batch.changes[1].sequence, Some(12));
    }

    #[tokio::test]
    async fn feed_head_comes_from_the_discovery_document_or_else_from_the_feed() {
        let info = Router::new().route(
            "/api/extensions/info",
            get(|| async {
                axum::Json(json!({"extensions": ["sequenceFeed"], "latestSequence": 41}))
            }),
        );
        assert_eq!(
            client(&serve(info).await).feed_head().await.unwrap(),
            Some(41)
        );

        // Without a discovery document, the feed read from its start gives the cursor.
        let feed = Router::new().route(
            "/api/status/recent-changes",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                assert_eq!(q["after"], "0");
                axum::Json(json!({"latestSequence": 12, "truncated": false,
                                  "changes": [change_json(12, json!("Running"))]}))
            }),
        );
        assert_eq!(
            client(&serve(feed).await).feed_head().await.unwrap(),
            Some(12)
        );
    }

    #[tokio::test]
    async fn missing_sequence_feed_is_reported_for_fallback() {
        // The .NET seed: ignores `after=` and answers with a plain array.
        let seed = Router::new().route(
            "/api/status/recent-changes",
            get(|| async {
                axum::Json(json!([{"instanceId": "abc", "oldStatus": 1, "newStatus": 2,
                                   "source": "x", "timestamp": "2024-05-01T12:00:00"}]))
            }),
        );
        let seed = client(&serve(seed).await);
        let err = seed
            .changes_after(Some(1), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FeedUnsupported { .. }), "{err:?}");
        assert!(
            err.to_string().contains("poll changes_since instead"),
            "{err}"
        );
        assert_eq!(seed.capabilities().await.unwrap(), Capabilities::SEED);
        let since = crate::client::types::parse_timestamp("2024-05-01T00:00:00Z").unwrap();
        let changes = seed.changes_since(since).await.unwrap();
        assert_eq!(changes[0].status, InstanceStatus::Stopped);
        assert_eq!(changes[0].sequence, None);

        // No such route at all, and a control plane that rejects the parameter.
        let missing = client(&serve(Router::new()).await);
        let err = missing
            .changes_after(None, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FeedUnsupported { .. }), "{err:?}");
        let strict = Router::new().route(
            "/api/status/recent-changes",
            get(|| async { (AxumStatus::BAD_REQUEST, "unknown parameter after") }),
        );
        let strict = client(&serve(strict).await);
        let err = strict
            .changes_after(None, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FeedUnsupported { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn capabilities_are_read_from_the_discovery_document_once_and_cached() {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/api/extensions/info",
                get(|State(hits): State<Arc<AtomicUsize>>| async move {
                    counted(&hits);
                    axum::Json(json!({"name": "setpoint-controlplane", "extensions":
                        ["sequenceFeed", "longPoll", "metadata", "clone", "health",
                         "metrics", "runningConfiguration", "endpoints"]}))
                }),
            )
            .with_state(hits.clone());
        let cp = client(&serve(router).await);
        assert_eq!(cp.capabilities().await.unwrap(), Capabilities::REFERENCE);
        assert_eq!(cp.capabilities().await.unwrap(), Capabilities::REFERENCE);
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        // Without the document, the feed is probed.
        let feed_only = Router::new().route(
            "/api/status/recent-changes",
            get(|| async {
                axum::Json(json!({"latestSequence": 0, "truncated": false, "changes": []}))
            }),
        );
        let cp = client(&serve(feed_only).await);
        let caps = cp.capabilities().await.unwrap();
        assert!(
            caps.sequence_feed
                && caps.delete_clone
                && !caps.clone_instance
                && !caps.running_configuration,
            "{caps:?}"
        );

        // A document without `runningConfiguration` does not claim it.
        let older = Router::new().route(
            "/api/extensions/info",
            get(|| async { axum::Json(json!({"extensions": ["sequenceFeed", "health"]})) }),
        );
        let caps = client(&serve(older).await).capabilities().await.unwrap();
        assert!(caps.health && !caps.running_configuration, "{caps:?}");

        let mut config = ClientConfig::new("http://127.0.0.1:1");
        config.capabilities = Some(Capabilities::SEED);
        let declared = DraasClient::new(config).unwrap();
        assert_eq!(declared.capabilities().await.unwrap(), Capabilities::SEED);
    }

    #[tokio::test]
    async fn extension_calls_use_their_routes() {
        type Seen = Arc<std::sync::Mutex<Option<Value>>>;
        let seen: Seen = Arc::default();
        let router = Router::new()
            .route(
                "/api/extensions/endpoints/{name}",
                put(
                    |State(seen): State<Seen>, axum::Json(body): axum::Json<Value>| async move {
                        *seen.lock().unwrap() = Some(body);
                        AxumStatus::NO_CONTENT
                    },
                ),
            )
            .route(
                "/api/extensions/instances/{id}/health",
                get(
                    |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        if id == "sick" {
                            let body = json!({"healthy": false, "detail": "503 from /health"});
                            (AxumStatus::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
                        } else {
                            axum::Json(json!({"healthy": true})).into_response()
                        }
                    },
                ),
            )
            .route(
                "/api/extensions/instances/abc/metrics",
                get(|| async { axum::Json(json!({"requests": 10, "errors": 3})) }),
            )
            .route(
                "/api/extensions/instances/abc/clone",
                post(|axum::Json(body): axum::Json<Value>| async move {
                    let mut clone = instance_json(json!(0), json!(0));
                    clone["name"] = body["name"].clone();
                    axum::Json(clone)
                }),
            )
            .route(
                "/api/server/instances/abc",
                axum::routing::delete(|| async { AxumStatus::NO_CONTENT }),
            )
            .with_state(seen.clone());
        let cp = client(&serve(router).await);
        let weights = [
            BackendWeight {
                instance_id: "abc".into(),
                weight: 90,
            },
            BackendWeight {
                instance_id: "def".into(),
                weight: 10,
            },
        ];
        cp.set_traffic_weights("web", &weights).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().clone().unwrap(),
            json!({"backends": [{"instanceId": "abc", "weight": 90},
                                 {"instanceId": "def", "weight": 10}]})
        );
        assert!(cp.probe_health("abc").await.unwrap().healthy);
        let sick = cp.probe_health("sick").await.unwrap();
        assert!(!sick.healthy);
        assert_eq!(sick.detail.as_deref(), Some("503 from /health"));
        assert_eq!(
            cp.metrics("abc").await.unwrap(),
            Metrics {
                requests: 10,
                errors: 3
            }
        );
        let clone = cp
            .clone_instance("abc", &json!({"name": "canary"}))
            .await
            .unwrap();
        assert_eq!(clone.name, "canary");
        cp.delete_clone("abc").await.unwrap();
    }

    /// The reference control plane's answers for instances `run` (running `{"logLevel":
    /// "debug"}`) and `idle` (not running); any other id does not exist.
    fn running_configuration_routes() -> Router {
        Router::new()
            .route(
                "/api/extensions/instances/{id}/running-configuration",
                get(
                    |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        match id.as_str() {
                            "run" => axum::Json(json!({"running": true,
                                "configuration": {"logLevel": "debug"}}))
                            .into_response(),
                            "idle" => axum::Json(json!({"running": false, "configuration": null}))
                                .into_response(),
                            _ => (
                                AxumStatus::NOT_FOUND,
                                axum::Json(json!({"error": format!("instance '{id}' not found")})),
                            )
                                .into_response(),
                        }
                    },
                ),
            )
            .route(
                "/api/extensions/running-configurations",
                get(|| async {
                    axum::Json(json!({"configurations": {"run": {"logLevel": "debug"}}}))
                }),
            )
    }

    /// The seed's `GET /api/server/instances/{id}`: `run` and `idle` exist, nothing else
    /// (answered like ASP.NET's `NotFound(string)`).
    fn seed_instance_routes() -> Router {
        Router::new().route(
            "/api/server/instances/{id}",
            get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    if id == "run" || id == "idle" {
                        axum::Json(instance_json(json!(1), json!(0))).into_response()
                    } else {
                        (AxumStatus::NOT_FOUND, format!("Instance '{id}' not found"))
                            .into_response()
                    }
                },
            ),
        )
    }

    #[tokio::test]
    async fn running_configurations_are_read_one_by_one_and_in_bulk() {
        let cp = client(&serve(running_configuration_routes().merge(seed_instance_routes())).await);
        assert_eq!(
            cp.running_configuration("run").await.unwrap(),
            Some(json!({"logLevel": "debug"}))
        );
        assert_eq!(cp.running_configuration("idle").await.unwrap(), None);
        let err = cp.running_configuration("gone").await.unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "GET /api/extensions/instances/gone/running-configuration: 404 not found: instance 'gone' not found"
        );
        let all = cp.running_configurations().await.unwrap();
        assert_eq!(
            all,
            std::collections::HashMap::from([("run".to_owned(), json!({"logLevel": "debug"}))])
        );
    }

    #[tokio::test]
    async fn a_missing_running_configuration_route_is_unsupported_not_not_found() {
        // A seed: the instances exist, the extension routes do not (an empty 404, as
        // ASP.NET answers an unknown route).
        let cp = client(&serve(seed_instance_routes()).await);
        let err = cp.running_configuration("run").await.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { call } if call == "running_configuration"),
            "{err:?}"
        );
        // An instance that does not exist is still NotFound, whatever the routes.
        assert!(
            cp.running_configuration("gone")
                .await
                .unwrap_err()
                .is_not_found()
        );
        let err = cp.running_configurations().await.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { call } if call == "running_configurations"),
            "{err:?}"
        );
        // Other failures of the existence check are reported as they are.
        let down = Router::new().route(
            "/api/server/instances/{id}",
            get(|| async { (AxumStatus::INTERNAL_SERVER_ERROR, "store locked") }),
        );
        let err = client(&serve(down).await)
            .running_configuration("run")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Status { status, .. } if status.as_u16() == 500),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn set_desired_configuration_patches_the_whole_document_once() {
        type Seen = Arc<std::sync::Mutex<Vec<(String, String, Value)>>>;
        let seen: Seen = Arc::default();
        let router = Router::new()
            .route(
                "/api/configuration/instances/{id}",
                axum::routing::patch(
                    |State(seen): State<Seen>,
                     axum::extract::Path(id): axum::extract::Path<String>,
                     headers: HeaderMap,
                     body: String| async move {
                        let content_type = headers
                            .get_all("content-type")
                            .iter()
                            .map(|v| v.to_str().unwrap().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ");
                        let patch: Value = serde_json::from_str(&body).unwrap();
                        seen.lock()
                            .unwrap()
                            .push((id.clone(), content_type, patch.clone()));
                        match id.as_str() {
                            "gone" => (
                                AxumStatus::NOT_FOUND,
                                axum::Json(json!({"error": "instance 'gone' not found"})),
                            )
                                .into_response(),
                            "busy" => AxumStatus::SERVICE_UNAVAILABLE.into_response(),
                            _ => axum::Json(patch[0]["value"].clone()).into_response(),
                        }
                    },
                ),
            )
            .with_state(seen.clone());
        let cp = client(&serve(router).await);
        let configuration = json!({"host": "127.0.0.1", "port": 18000, "logLevel": "warn"});
        cp.set_desired_configuration("a b", &configuration)
            .await
            .unwrap();
        assert_eq!(
            seen.lock().unwrap()[0],
            (
                "a b".to_owned(),
                "application/json-patch+json".to_owned(),
                json!([{"op": "replace", "path": "", "value": configuration}])
            )
        );
        assert!(
            cp.set_desired_configuration("gone", &configuration)
                .await
                .unwrap_err()
                .is_not_found()
        );
        // A change is never repeated, even on a retryable status.
        let err = cp
            .set_desired_configuration("busy", &configuration)
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn bad_base_urls_fail_with_the_setting_name() {
        let err = DraasClient::new(ClientConfig::new("localhost:5000/api")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid control-plane client setting `base_url`"),
            "{err}"
        );
        let err = DraasClient::new(ClientConfig::new("not a url")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    key: "base_url",
                    ..
                }
            ),
            "{err}"
        );
    }
}
