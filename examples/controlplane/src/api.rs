//! The HTTP API: the DRaaS routes (`/api/server`, `/api/configuration`, `/api/status`)
//! and this control plane's extensions (`/api/extensions/...`), mapped onto
//! [`ControlPlane`] methods.
//!
//! Start at [`router`]. Bodies are parsed here so that a malformed body or a wrong type
//! is a 400 naming the field; every error is JSON `{"error": "..."}` (see [`ApiError`]).
//! In `enum_as_int` mode the enum fields of every model object are written as integers;
//! in seed-only mode ([`ApiOptions::seed_api_only`]) only the seed's routes are served.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::model::{Instance, InstanceStatus, Labels, StatusChange, encode_enums};
use crate::platform::process::probe_host;
use crate::service::{
    CloneInstance, ControlPlane, CreateInstance, EndpointSpec, Error, StatusUpdate, error_chain,
};

/// The longest long poll (`wait=`) a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The seed's default window for `recent-changes` without `since=`.
const DEFAULT_SINCE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Response header naming the backend instance a proxied request went to.
pub const BACKEND_HEADER: &str = "x-setpoint-backend";
/// The largest request body the API reads (axum's default, made explicit so that the
/// 413 can say it); a larger one is refused with 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Api {
    cp: ControlPlane,
    enum_as_int: bool,
    /// Serve the DRaaS seed's routes and answer shapes only (see [`ApiOptions`]).
    seed_only: bool,
}

/// How the API is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiOptions {
    /// Write the enum fields of model objects as integers, like the .NET original.
    pub enum_as_int: bool,
    /// Serve only the DRaaS seed's routes, with the seed's answer shapes: no
    /// `/api/extensions/...`, no metadata routes, no `PUT` or `DELETE` of a
    /// configuration, no `/healthz`; `recent-changes` is timestamp-based only (`after=` is
    /// a 400, `wait=` is ignored) and its changes carry no `sequence`; `start`, `stop` and
    /// `restart` answer the seed's message string; a status update answers 202 with no
    /// body.
    pub seed_api_only: bool,
}

/// The router for every route, with `cp` as state.
pub fn router(cp: ControlPlane, enum_as_int: bool) -> Router {
    router_with(
        cp,
        ApiOptions {
            enum_as_int,
            seed_api_only: false,
        },
    )
}

/// The router for the routes `options` selects, with `cp` as state.
pub fn router_with(cp: ControlPlane, options: ApiOptions) -> Router {
    let seed_only = options.seed_api_only;
    let api = Api {
        cp,
        enum_as_int: options.enum_as_int,
        seed_only,
    };
    let mut configuration = get(get_configuration).patch(patch_configuration);
    if !seed_only {
        configuration = configuration
            .put(put_configuration)
            .delete(delete_configuration);
    }
    // The DRaaS seed's routes, served in both modes.
    let mut router = Router::new()
        // DRaaS: instances and their lifecycle.
        .route(
            "/api/server/instances",
            get(list_instances).post(create_instance),
        )
        .route(
            "/api/server/instances/{id}",
            get(get_instance).delete(delete_instance),
        )
        .route("/api/server/instances/{id}/start", post(start_instance))
        .route("/api/server/instances/{id}/stop", post(stop_instance))
        .route("/api/server/instances/{id}/restart", post(restart_instance))
        // DRaaS: desired configuration (PUT and DELETE are extensions).
        .route("/api/configuration/instances/{id}", configuration)
        // DRaaS: status and the change feed.
        .route("/api/status/updates", post(post_status_update))
        .route("/api/status/recent-changes", get(recent_changes))
        .route("/api/status/{id}/status", get(get_status));
    if !seed_only {
        router = router
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/api/server/instances/{id}/metadata",
                get(get_metadata).put(put_metadata),
            )
            // Extensions.
            .route("/api/extensions/info", get(info))
            .route("/api/extensions/lifecycle-calls", get(lifecycle_calls))
            .route("/api/extensions/instances/{id}/clone", post(clone_instance))
            .route(
                "/api/extensions/instances/{id}/health",
                get(instance_health),
            )
            .route(
                "/api/extensions/instances/{id}/metrics",
                get(instance_metrics),
            )
            .route(
                "/api/extensions/instances/{id}/running-configuration",
                get(running_configuration),
            )
            .route(
                "/api/extensions/running-configurations",
                get(running_configurations),
            )
            .route(
                "/api/extensions/prometheus/targets",
                get(prometheus_targets),
            )
            .route("/api/extensions/endpoints", get(list_endpoints))
            .route(
                "/api/extensions/endpoints/{name}",
                put(put_endpoint).get(get_endpoint).delete(delete_endpoint),
            )
            .route("/api/extensions/endpoints/{name}/proxy", any(proxy_root))
            .route("/api/extensions/endpoints/{name}/proxy/", any(proxy_root))
            .route("/api/extensions/endpoints/{name}/proxy/{*path}", any(proxy));
    }
    let router: Router = router
        .fallback(
            |State(api): State<Api>, method: Method, uri: Uri| async move {
                api.cp.note_refused(format!("{method} {uri}"));
                ApiError(Error::BadRequest(String::new())).with_status(
                    StatusCode::NOT_FOUND,
                    format!("no route for {method} {}", uri.path()),
                )
            },
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api);
    // Around the whole router, not each route (`Router::layer` wraps each route's
    // handlers, inside the method router that adds a 405's `Allow` header).
    Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn(json_errors))
}

/// Makes every error answer of the API JSON `{"error": "..."}`: axum's own answers (a
/// 405 with an empty body, a 413 or another rejection as text) are rewritten with a
/// message that says what to do (the allowed methods, the body limit). Answers that are
/// JSON already pass unchanged, and so do proxied answers (they carry
/// [`BACKEND_HEADER`]): those are the backend's, returned as is.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error())
        || is_json
        || response.headers().contains_key(BACKEND_HEADER)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            format!("method {method} is not allowed on {path}; allowed: {allowed}")
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than the limit of {} MiB ({MAX_BODY_BYTES} bytes); \
             send a smaller body (e.g. change a large configuration with a JSON Patch of \
             the parts that change, or split it across instances)",
            MAX_BODY_BYTES / (1024 * 1024)
        ),
        _ if text.is_empty() => format!(
            "{method} {path}: {}",
            status.canonical_reason().unwrap_or("request failed")
        ),
        _ => format!("{method} {path}: {text}"),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
}

// ----- errors ------------------------------------------------------------------------

/// An [`Error`] as an HTTP answer: the status its variant maps to and a JSON body
/// `{"error": "<message and causes>"}`; a patch failure adds `operation`, `op`, `path`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match &self.0 {
            Error::InstanceNotFound(_)
            | Error::EndpointNotFound(_)
            | Error::ConfigurationNotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Patch(failure) if failure.malformed => StatusCode::BAD_REQUEST,
            Error::Patch(_) | Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NoFreePort(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::StartFailed { .. } | Error::Store(_) | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn with_status(self, status: StatusCode, message: String) -> Response {
        (status, axum::Json(json!({ "error": message }))).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "error": error_chain(&self.0) });
        if let Error::Patch(failure) = &self.0 {
            body["operation"] = json!(failure.index);
            body["op"] = json!(failure.op);
            body["path"] = json!(failure.path);
        }
        if status.is_server_error() {
            tracing::warn!(error = %body["error"], %status, "request failed");
        }
        (status, axum::Json(body)).into_response()
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

/// Parses a JSON body; a syntax error or a wrong type is a 400 naming the field.
fn parse_body<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest(format!(
            "a JSON request body is required ({what})"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Error::BadRequest(format!("malformed JSON in the request body: {inner}"))
        } else if path == "." {
            Error::BadRequest(format!("invalid {what}: {inner}"))
        } else {
            Error::BadRequest(format!("invalid field `{path}` in the {what}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Error::BadRequest(format!("malformed JSON in the request body: {e}")))?;
    Ok(value)
}

impl Api {
    /// One model object (instance, runtime info, status change) as JSON.
    fn model<T: Serialize>(&self, value: &T) -> Value {
        let mut value = serde_json::to_value(value).unwrap_or(Value::Null);
        if self.enum_as_int {
            encode_enums(&mut value);
        }
        value
    }

    fn models<T: Serialize>(&self, values: &[T]) -> Value {
        Value::Array(values.iter().map(|v| self.model(v)).collect())
    }

    fn ok(&self, status: StatusCode, value: Value) -> Response {
        (status, axum::Json(value)).into_response()
    }

    /// The answer of a lifecycle call: the instance, or in seed-only mode the seed's
    /// message string (ASP.NET's `Ok(string)`, written as `text/plain`).
    fn lifecycle(&self, instance: &Instance, done: &str) -> Response {
        if self.seed_only {
            let message = format!("Instance '{}' {done} successfully", instance.id);
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                message,
            )
                .into_response();
        }
        self.ok(StatusCode::OK, self.model(instance))
    }

    /// Feed changes as JSON; the seed's changes have no sequence number.
    fn changes(&self, changes: &[StatusChange]) -> Value {
        let mut value = self.models(changes);
        if self.seed_only
            && let Value::Array(items) = &mut value
        {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                item.remove("sequence");
            }
        }
        value
    }
}

// ----- instances ---------------------------------------------------------------------

async fn list_instances(State(api): State<Api>) -> Response {
    let instances = api.cp.list();
    if api.enum_as_int {
        api.ok(StatusCode::OK, api.models(&instances))
    } else {
        // Serialise straight from the structs: 10k instances stay well under a second.
        axum::Json(instances).into_response()
    }
}

async fn create_instance(State(api): State<Api>, body: Bytes) -> ApiResult {
    let request: CreateInstance = parse_body(&body, "create request")?;
    let instance = api.cp.create(request)?;
    let location = format!("/api/server/instances/{}", instance.id);
    let mut response = api.ok(StatusCode::CREATED, api.model(&instance));
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn get_instance(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, api.model(&api.cp.get(&id)?)))
}

async fn delete_instance(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    api.cp.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_instance(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let configuration: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_body(&body, "configuration")?)
    };
    let instance = api.cp.start(&id, configuration).await?;
    Ok(api.lifecycle(&instance, "started"))
}

async fn stop_instance(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let instance = api.cp.stop(&id).await?;
    Ok(api.lifecycle(&instance, "stopped"))
}

async fn restart_instance(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let instance = api.cp.restart(&id).await?;
    Ok(api.lifecycle(&instance, "restarted"))
}

async fn get_metadata(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, json!(api.cp.get(&id)?.metadata)))
}

async fn put_metadata(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let labels: Labels = parse_body(&body, "metadata (an object of string values)")?;
    Ok(api.ok(
        StatusCode::OK,
        api.model(&api.cp.set_metadata(&id, labels)?),
    ))
}

// ----- configuration -----------------------------------------------------------------

async fn get_configuration(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, api.cp.configuration(&id)?))
}

async fn patch_configuration(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    // Look the instance up first, so an unknown instance is a 404 whatever the body.
    api.cp.get(&id)?;
    let document: Value = parse_body(&body, "JSON Patch document")?;
    Ok(api.ok(StatusCode::OK, api.cp.patch_configuration(&id, &document)?))
}

async fn put_configuration(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    api.cp.get(&id)?;
    let configuration: Value = parse_body(&body, "configuration")?;
    Ok(api.ok(
        StatusCode::OK,
        api.cp.put_configuration(&id, configuration)?,
    ))
}

/// `DELETE /api/configuration/instances/{id}`: 204; the instance has no desired
/// configuration until a PUT gives it one (what runs keeps running).
async fn delete_configuration(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    api.cp.delete_configuration(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- status ------------------------------------------------------------------------

async fn post_status_update(State(api): State<Api>, body: Bytes) -> ApiResult {
    let update: StatusUpdate = parse_body(&body, "status update")?;
    let change = api.cp.publish_status(update)?;
    if api.seed_only {
        // The seed answers `Accepted()`: no body, and it has no sequence to report.
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    Ok(api.ok(
        StatusCode::ACCEPTED,
        json!({ "accepted": true, "sequence": change.map(|c| c.sequence) }),
    ))
}

async fn get_status(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, api.model(&api.cp.runtime_info(&id)?)))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    // An unencoded `+00:00` offset arrives as ` 00:00` (a `+` in a query string is a space).
    let repaired;
    let text = match text.rsplit_once(' ') {
        Some((date, offset)) if date.contains('T') && offset.contains(':') => {
            repaired = format!("{date}+{offset}");
            repaired.as_str()
        }
        _ => text,
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    // .NET clients often send a timestamp without an offset: read it as UTC.
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .map(|t| t.and_utc())
}

/// `GET /api/status/recent-changes`: `since=` (timestamp, default 5 minutes ago) answers
/// the seed's plain array; `after=SEQ` answers a [`crate::feed::FeedPage`]. Both take
/// `statusFilter=` and `wait=SECONDS` (long poll until a matching change arrives). In
/// seed-only mode only the seed's form is served: `after=` is a 400 and `wait=` is
/// ignored, as the seed ignores parameters it does not know.
async fn recent_changes(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    if api.seed_only && params.contains_key("after") {
        api.cp.note_refused(format!(
            "GET /api/status/recent-changes?after={}",
            params["after"]
        ));
        return Err(Error::BadRequest(
            "after: the seed API has no sequence feed (this control plane runs with --seed-api-only); use since=TIMESTAMP".into(),
        )
        .into());
    }
    let filter = match params.get("statusFilter").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(InstanceStatus::parse(text).ok_or_else(|| {
            Error::BadRequest(format!(
                "statusFilter: unknown status `{text}`, expected one of Created, Running, Stopped, Error, ConfigurationChanged (or 0-4)"
            ))
        })?),
    };
    let wait = match params.get("wait").filter(|_| !api.seed_only) {
        None => Duration::ZERO,
        Some(text) => {
            let seconds: f64 = text
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    Error::BadRequest(format!("wait: expected a number of seconds, not `{text}`"))
                })?;
            Duration::from_secs_f64(seconds).min(MAX_WAIT)
        }
    };
    let after = match params.get("after") {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            Error::BadRequest(format!("after: expected a sequence number, not `{text}`"))
        })?),
    };
    let since = match params.get("since").filter(|s| !s.is_empty()) {
        None => Utc::now() - DEFAULT_SINCE_WINDOW,
        Some(text) => parse_time(text).ok_or_else(|| {
            Error::BadRequest(format!(
                "since: expected an ISO 8601 timestamp such as 2025-01-31T12:00:00Z, not `{text}`"
            ))
        })?,
    };

    let feed = api.cp.feed();
    let mut changed = feed.subscribe();
    let mut shutting_down = api.cp.shutting_down();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        changed.borrow_and_update();
        let last_chance = tokio::time::Instant::now() >= deadline || *shutting_down.borrow();
        let answer = match after {
            Some(after) => {
                let page = feed.after(after, filter);
                (last_chance || page.truncated || !page.changes.is_empty()).then(|| {
                    let changes = api.models(&page.changes);
                    let mut value = serde_json::to_value(&page).unwrap_or(Value::Null);
                    value["changes"] = changes;
                    value
                })
            }
            None => {
                let changes = feed.since(since, filter);
                (last_chance || !changes.is_empty()).then(|| api.changes(&changes))
            }
        };
        if let Some(answer) = answer {
            return Ok(api.ok(StatusCode::OK, answer));
        }
        tokio::select! {
            result = changed.changed() => if result.is_err() { continue },
            () = tokio::time::sleep_until(deadline) => {}
            _ = shutting_down.changed() => {}
        }
    }
}

// ----- extensions --------------------------------------------------------------------

async fn info(State(api): State<Api>) -> Response {
    api.ok(
        StatusCode::OK,
        json!({
            "name": "setpoint-controlplane",
            "version": env!("CARGO_PKG_VERSION"),
            "enumAsInt": api.enum_as_int,
            "feedCapacity": api.cp.feed().capacity(),
            "latestSequence": api.cp.feed().latest_sequence(),
            "platforms": ["Process", "Simulated"],
            "extensions": ["sequenceFeed", "longPoll", "metadata", "clone", "health",
                           "metrics", "runningConfiguration", "runningConfigurations",
                           "endpoints", "deleteConfiguration", "prometheusTargets",
                           "lifecycleCalls"],
        }),
    )
}

/// `GET /api/extensions/lifecycle-calls[?after=SEQ]`: the lifecycle calls (start, stop,
/// restart, clone, delete) this control plane carried out or refused since it started,
/// in the order they ended: `{"calls": [{"sequence", "operation", "instanceId",
/// "cloneId"?, "ok", "error"?, "at"}]}`. A client compares it with its own record.
async fn lifecycle_calls(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let after = match params.get("after") {
        None => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| Error::BadRequest(format!("after: `{text}` is not a sequence number")))?,
    };
    Ok(api.ok(
        StatusCode::OK,
        json!({ "calls": api.cp.lifecycle_calls(after) }),
    ))
}

async fn clone_instance(State(api): State<Api>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    api.cp.get(&id)?;
    let request: CloneInstance = if body.iter().all(u8::is_ascii_whitespace) {
        CloneInstance::default()
    } else {
        parse_body(&body, "clone request")?
    };
    let instance = api.cp.clone_instance(&id, request)?;
    Ok(api.ok(StatusCode::CREATED, api.model(&instance)))
}

async fn instance_health(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, json!(api.cp.health(&id).await?)))
}

async fn instance_metrics(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, api.cp.metrics(&id).await?))
}

async fn running_configuration(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let configuration = api.cp.running_configuration(&id)?;
    Ok(api.ok(
        StatusCode::OK,
        json!({ "running": configuration.is_some(), "configuration": configuration }),
    ))
}

/// `GET /api/extensions/running-configurations`: `{"configurations": {id: configuration}}`
/// for every instance that runs, read in one pass.
async fn running_configurations(State(api): State<Api>) -> Response {
    api.ok(
        StatusCode::OK,
        json!({ "configurations": api.cp.running_configurations() }),
    )
}

/// `GET /api/extensions/prometheus/targets`: Prometheus's HTTP service discovery
/// (`http_sd_configs`), a JSON list of `{"targets": ["host:port"], "labels": {...}}`,
/// one per instance running a process. Always plain JSON (never `enumAsInt`-shaped).
async fn prometheus_targets(State(api): State<Api>) -> Response {
    (StatusCode::OK, axum::Json(api.cp.scrape_targets())).into_response()
}

async fn list_endpoints(State(api): State<Api>) -> Response {
    api.ok(StatusCode::OK, json!(api.cp.endpoints()))
}

async fn put_endpoint(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let spec: EndpointSpec = parse_body(&body, "endpoint")?;
    Ok(api.ok(StatusCode::OK, json!(api.cp.put_endpoint(&name, spec)?)))
}

async fn get_endpoint(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    Ok(api.ok(StatusCode::OK, json!(api.cp.endpoint(&name)?)))
}

async fn delete_endpoint(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    api.cp.delete_endpoint(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn proxy_root(
    State(api): State<Api>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    forward(api, name, String::new(), method, uri, headers, body).await
}

async fn proxy(
    State(api): State<Api>,
    Path((name, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    forward(api, name, path, method, uri, headers, body).await
}

/// Headers that describe one hop and are not forwarded.
const HOP_HEADERS: [&str; 8] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-length",
];

/// Forwards one request to the backend [`ControlPlane::pick_backend`] chooses.
async fn forward(
    api: Api,
    name: String,
    path: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let target = api.cp.pick_backend(&name)?;
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!(
        "http://{}:{}/{path}{query}",
        probe_host(&target.host),
        target.port
    );
    let mut request = api
        .cp
        .process_platform()
        .http()
        .request(method, &url)
        .body(body);
    for (key, value) in &headers {
        if !HOP_HEADERS.contains(&key.as_str()) {
            request = request.header(key, value);
        }
    }
    let response = request.send().await.map_err(|e| {
        Error::Upstream(format!(
            "backend instance '{}' at {url}: {}",
            target.instance_id,
            error_chain(&e)
        ))
    })?;
    let status = response.status();
    let mut out_headers = HeaderMap::new();
    for (key, value) in response.headers() {
        if !HOP_HEADERS.contains(&key.as_str()) {
            out_headers.insert(key.clone(), value.clone());
        }
    }
    let bytes = response.bytes().await.map_err(|e| {
        Error::Upstream(format!(
            "backend instance '{}': reading the answer: {}",
            target.instance_id,
            error_chain(&e)
        ))
    })?;
    if let Ok(value) = HeaderValue::from_str(&target.instance_id) {
        out_headers.insert(HeaderName::from_static(BACKEND_HEADER), value);
    }
    Ok((status, out_headers, bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_without_an_offset_are_read_as_utc() {
        let a = parse_time("2025-01-31T12:00:00Z").unwrap();
        let b = parse_time("2025-01-31T12:00:00").unwrap();
        let c = parse_time("2025-01-31T12:00:00.5").unwrap();
        assert_eq!(a, b);
        assert!(c > b);
        assert!(parse_time("yesterday").is_none());
        assert_eq!(parse_time("2025-01-31T12:00:00 00:00").unwrap(), a);
        assert_eq!(parse_time("2025-01-31T13:00:00+01:00").unwrap(), a);
    }

    #[test]
    fn a_wrong_type_is_reported_with_the_field_path() {
        let body = Bytes::from_static(br#"{"name": 5}"#);
        let err = parse_body::<CreateInstance>(&body, "create request").unwrap_err();
        assert!(err.to_string().contains("`name`"), "{err}");
        let body = Bytes::from_static(br#"{"name": "a", "platformType": "Docker"}"#);
        let err = parse_body::<CreateInstance>(&body, "create request").unwrap_err();
        assert!(err.to_string().contains("`platformType`"), "{err}");
        let body = Bytes::from_static(br#"{"name": "#);
        let err = parse_body::<CreateInstance>(&body, "create request").unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
    }
}
