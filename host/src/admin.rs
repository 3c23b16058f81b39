//! The admin HTTP API (axum) on its own address: health and readiness, Prometheus
//! `/metrics`, instance status and conditions, audit, explain, dry-run plans, plugins,
//! and the mutating routes (reconcile, approve, abort) behind a bearer token.
//!
//! Start at [`router`]. Routes live under `/v1/`; [`OPENAPI`] documents them and a test
//! checks that every route is in it. Without a configured token the mutating routes
//! answer 403: they are disabled, never open.
//!
//! Every error is JSON `{"error": "..."}` that says what was wrong and what to do, axum's
//! own answers (unknown route, 405, 413, 415, a bad body or query) included: see
//! [`json_errors`]. An instance id or group name is checked cheaply ([`MAX_ID_BYTES`],
//! its characters) and then against the control plane and this host's records before
//! anything is queued for it, so work for an unknown instance is refused with 404 rather
//! than dropped. Bodies are limited to [`MAX_BODY_BYTES`], URIs to [`MAX_URI_BYTES`], and
//! every answer carries headers that keep a browser from sniffing, framing or caching it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::controller::Controller;
use crate::queue::WorkQueue;
use crate::store::AuditFilter;

/// The OpenAPI document of this API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("admin_openapi.json");

/// The longest instance id or group name the API takes, in bytes. Ids are UUIDs from
/// the reference control plane; other control planes' ids are short strings too.
pub const MAX_ID_BYTES: usize = 256;

/// The largest request body, in bytes: the API's bodies are small JSON objects such as
/// `{"by": "alice"}`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest request URI (path and query), in bytes; a longer one is answered 414.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// The characters an instance id may have, as the error messages say it.
const ID_CHARSET: &str = "[A-Za-z0-9._:-]";

/// The characters a group name (`key=value[,key=value]`) may have.
const GROUP_CHARSET: &str = "[A-Za-z0-9._:=,/-]";

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The controller (store, policy, plugins, control plane).
    pub controller: Arc<Controller>,
    /// The work queue, for manual reconciles.
    pub queue: WorkQueue,
    /// The bearer token of the mutating routes; `None` disables them.
    pub token: Option<String>,
    /// Set once the first full resync has been queued.
    pub ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/instances", get(list_instances))
        .route("/v1/instances/{id}", get(get_instance))
        .route("/v1/instances/{id}/explain", get(explain))
        .route("/v1/instances/{id}/diff", get(diff))
        .route("/v1/instances/{id}/reconcile", post(reconcile))
        .route("/v1/instances/{id}/approve", post(approve))
        .route("/v1/instances/{id}/abort", post(abort))
        .route("/v1/instances/{id}/promote", post(promote))
        .route("/v1/instances/{id}/retry", post(retry))
        .route("/v1/instances/{id}/rollback", post(rollback))
        .route("/v1/instances/{id}/history", get(history))
        .route("/v1/groups/{name}", get(get_group))
        .route("/v1/groups/{name}/approve", post(approve_group))
        .route("/v1/groups/{name}/abort", post(abort_group))
        .route("/v1/audit", get(audit))
        .route("/v1/plugins", get(plugins))
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(limit_uri))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Answers 414 to a URI longer than [`MAX_URI_BYTES`] before anything reads it.
async fn limit_uri(request: Request, next: Next) -> Response {
    let len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return ApiError(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request URI is {len} bytes, more than the limit of {MAX_URI_BYTES} bytes; instance ids and group names are at most {MAX_ID_BYTES} bytes (GET /v1/openapi.json lists the routes)"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Headers on every answer, for browsers (a dashboard may come): no content sniffing, no
/// framing, no caching of API answers, and a content security policy that loads nothing.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Makes every error answer JSON `{"error": "..."}`: axum's own answers (a 405 with an
/// empty body, a 413, 415 or 400 rejection as text) are rewritten with a message that
/// says what to do. Answers that are JSON already pass unchanged.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri_path = request.uri().path().to_owned();
    let path = shorten(&uri_path);
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    const BODY_HINT: &str = "send a JSON object such as {\"by\": \"alice\"} (fields: by, digest, to, full) with Content-Type: application/json, or no body";
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            // axum sets `Allow` only outside this layer: the OpenAPI document knows.
            let allowed = documented_methods(uri_path.as_str()).join(", ");
            if let Ok(value) = HeaderValue::from_str(&allowed) {
                parts.headers.insert(header::ALLOW, value);
            }
            format!(
                "method {method} is not allowed on {path}; allowed: {allowed} (GET /v1/openapi.json lists the routes)"
            )
        }
        // Handlers answer their 404s in JSON: this one is axum's, for a path no route has.
        StatusCode::NOT_FOUND => format!(
            "no route {method} {path}: the admin API's routes are listed in GET /v1/openapi.json"
        ),
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than the admin API's limit of {} KiB ({MAX_BODY_BYTES} bytes); {BODY_HINT}",
            MAX_BODY_BYTES / 1024
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            format!("{method} {path}: the body is not JSON ({text}); {BODY_HINT}")
        }
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY if method == "POST" => {
            format!("{method} {path}: {text}; {BODY_HINT}")
        }
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

/// The methods [`OPENAPI`] documents for `path` (a concrete path such as
/// `/v1/instances/abc/reconcile`), upper case.
fn documented_methods(path: &str) -> Vec<String> {
    static DOC: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| serde_json::from_str(OPENAPI).unwrap_or_default());
    let segments: Vec<&str> = path.split('/').collect();
    let Some(paths) = DOC["paths"].as_object() else {
        return Vec::new();
    };
    paths
        .iter()
        .filter(|(template, _)| {
            let template: Vec<&str> = template.split('/').collect();
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .flat_map(|(_, operations)| operations.as_object().into_iter().flat_map(|o| o.keys()))
        .filter(|m| m.as_str() != "parameters")
        .map(|m| m.to_uppercase())
        .collect()
}

/// `text` quoted for a message, its start only when it is long (an 8 KB id).
fn shorten(text: &str) -> String {
    const KEEP: usize = 48;
    if text.chars().count() <= KEEP * 2 {
        return format!("{text:?}");
    }
    let start: String = text.chars().take(KEEP).collect();
    format!("{start:?}... ({} bytes)", text.len())
}

/// Whether `id` can be an instance id at all: 1 to [`MAX_ID_BYTES`] bytes of
/// [`ID_CHARSET`], not only dots (`.`, `..` would walk a control plane's URL paths).
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && !id.bytes().all(|b| b == b'.')
}

const LIST_HINT: &str = "`setpoint status` (GET /v1/instances) lists the instances";

/// The 404 of an instance the control plane does not know and this host has no records of.
fn unknown_instance(id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no instance {} is known to the control plane or recorded by this host; {LIST_HINT}",
            shorten(id)
        ),
    )
}

/// Refuse an id no instance can have (see [`plausible_id`]), before any lookup.
fn check_id(id: &str) -> Result<(), ApiError> {
    if plausible_id(id) {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no instance can have the id {}: an instance id is 1 to {MAX_ID_BYTES} bytes of {ID_CHARSET}, not only dots; {LIST_HINT}",
            shorten(id)
        ),
    ))
}

/// Whether this host has records of `id` that a reconcile or an operator acts on: an
/// applied configuration, a rollout, a given-up revision, an abort, a promotion, an
/// approval or a host stop (an instance deleted from the control plane still has them).
fn recorded(state: &AdminState, id: &str) -> Result<bool, ApiError> {
    let r = state
        .controller
        .store()
        .instance_records(id)
        .map_err(internal)?;
    Ok(r.applied.is_some()
        || r.rollout.is_some()
        || r.given_up.is_some()
        || r.abort.is_some()
        || r.promote.is_some()
        || r.approval.is_some()
        || r.host_stopped)
}

/// Refuse with 404 an id that is not plausible, or that neither the control plane nor
/// this host's records know. When the control plane cannot be asked, an instance this
/// host has records of goes on (aborts and approvals work from the records); another
/// answers 502 with the control plane's error.
async fn check_known(state: &AdminState, id: &str) -> Result<(), ApiError> {
    check_id(id)?;
    match state.controller.control_plane().get_instance(id).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            if recorded(state, id)? {
                Ok(())
            } else {
                Err(unknown_instance(id))
            }
        }
        Err(e) => {
            if recorded(state, id)? {
                Ok(())
            } else {
                Err(ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cannot tell whether instance {} exists: {}",
                        shorten(id),
                        crate::error_chain(&e)
                    ),
                ))
            }
        }
    }
}

/// Refuse with 404 a group name no group can have: 1 to [`MAX_ID_BYTES`] bytes of
/// [`GROUP_CHARSET`].
fn check_group_name(name: &str) -> Result<(), ApiError> {
    let plausible = !name.is_empty()
        && name.len() <= MAX_ID_BYTES
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'=' | b',' | b'/' | b'-')
        });
    if plausible {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no group can have the name {}: a group name is 1 to {MAX_ID_BYTES} bytes of {GROUP_CHARSET}, the label values a rule's group_by keys take written key=value[,key=value], for example app=orders",
            shorten(name)
        ),
    ))
}

fn unknown_group(name: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no group named {}: a group is the label values a rule's group_by keys take, written key=value[,key=value], for example app=orders; `setpoint status` shows each instance's labels",
            shorten(name)
        ),
    )
}

/// Refuse with 404 a group name that is not plausible or that names no group: none has
/// a rollout or an approval on record and no rule groups instances under it.
async fn check_group(state: &AdminState, name: &str) -> Result<(), ApiError> {
    check_group_name(name)?;
    let store = state.controller.store();
    for key in state.controller.group_keys_named(name) {
        if store.load_rollout(&key).map_err(internal)?.is_some()
            || store.open_approval(&key).map_err(internal)?.is_some()
        {
            return Ok(());
        }
    }
    let groups = state
        .controller
        .groups_named(name)
        .await
        .map_err(internal)?;
    if groups.is_empty() {
        return Err(unknown_group(name));
    }
    Ok(())
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn internal(e: impl std::error::Error + 'static) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e))
}

fn from_controller(e: crate::controller::Error) -> ApiError {
    if let crate::controller::Error::ControlPlane(c) = &e
        && c.is_not_found()
    {
        return ApiError(StatusCode::NOT_FOUND, crate::error_chain(&e));
    }
    ApiError(StatusCode::BAD_GATEWAY, crate::error_chain(&e))
}

fn from_client(e: crate::client::Error) -> ApiError {
    if e.is_not_found() {
        return ApiError(StatusCode::NOT_FOUND, crate::error_chain(&e));
    }
    ApiError(StatusCode::BAD_GATEWAY, crate::error_chain(&e))
}

/// Check the bearer token of a mutating request.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "mutating admin routes are disabled: set admin.token in the config file (or SETPOINT_ADMIN_TOKEN) and send it as `Authorization: Bearer <token>`".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong admin token".into(),
        )),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this route needs `Authorization: Bearer <admin token>`".into(),
        )),
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ or
/// on whether their lengths do: both are hashed (SHA-256) and the fixed-size digests are
/// compared without an early exit. Returning early on a length difference told a caller
/// the token's length; comparing bytes with `==` would tell how long a prefix matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        // Ready (the admin API serves, the daemon's records are readable) but degraded
        // while the control plane does not answer: still 200, so an orchestrator does
        // not restart a daemon that cannot help it, and the body says why nothing moves.
        match state.controller.reachability().degraded() {
            Some(why) => (StatusCode::OK, format!("ready, {why}\n")).into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        }
    } else {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the first resync is not done yet; ask again shortly".into(),
        )
        .into_response()
    }
}

/// `/metrics` in the format the scraper negotiates: OpenMetrics text 1.0.0 when its
/// `Accept` header asks for it (as Prometheus does), the Prometheus text format 0.0.4
/// otherwise.
async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    use crate::metrics::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, wants_openmetrics};
    let metrics = state.controller.metrics();
    metrics.queue_depth.set(state.queue.len() as i64);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_openmetrics(accept) {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            metrics.encode_prometheus(),
        )
            .into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_instances(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let instances = state
        .controller
        .control_plane()
        .list_instances()
        .await
        .map_err(from_client)?;
    let store = state.controller.store().clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        instances
            .into_iter()
            .map(|i| {
                let conditions = store.conditions(&i.id).map_err(internal)?;
                let rollout = store.load_rollout(&i.id).map_err(internal)?;
                Ok(json!({
                    "id": i.id,
                    "name": i.name,
                    "status": i.status.as_str(),
                    "platformType": i.platform_type.as_str(),
                    "conditions": conditions,
                    "rollout": rollout.map(|r| json!({
                        "strategy": format!("{}@{}", r.strategy, r.plugin_version),
                        "step": r.step,
                        "phase": r.phase,
                    })),
                }))
            })
            .collect()
    })
    .await
    .map_err(internal)??;
    Ok(Json(Value::Array(rows)))
}

async fn fetch_instance(state: &AdminState, id: &str) -> Result<crate::client::Instance, ApiError> {
    check_id(id)?;
    match state.controller.control_plane().get_instance(id).await {
        Err(e) if e.is_not_found() => Err(unknown_instance(id)),
        other => other.map_err(from_client),
    }
}

async fn get_instance(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let instance = fetch_instance(&state, &id).await?;
    let store = state.controller.store();
    let conditions = store.conditions(&id).map_err(internal)?;
    let rollout = store.load_rollout(&id).map_err(internal)?;
    let applied = store.last_applied(&id).map_err(internal)?;
    let backups = store.backups(&id).map_err(internal)?;
    let given_up = store.given_up(&id).map_err(internal)?;
    let abort = store.abort_request(&id).map_err(internal)?;
    let approval = store.open_approval(&id).map_err(internal)?;
    Ok(Json(json!({
        "instance": instance,
        "conditions": conditions,
        "rollout": rollout,
        "lastApplied": applied,
        "backups": backups.len(),
        "givenUp": given_up,
        "abortRequested": abort,
        "approval": approval,
        "progress": state.controller.rollout_progress(&id).map_err(internal)?,
        "lastDecision": state.controller.last_decision(&id),
    })))
}

/// Every group of that name (`app=orders`), one per rule that groups instances: its
/// members, whether each is converged, and the group rollout in flight with the status
/// its strategy reports.
async fn get_group(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_group_name(&name)?;
    let groups = state
        .controller
        .groups_named(&name)
        .await
        .map_err(internal)?;
    if groups.is_empty() {
        return Err(unknown_group(&name));
    }
    Ok(Json(json!({ "groups": groups })))
}

/// Let a group rollout that waits for an operator (paused after a failed health gate,
/// or asking before it goes on) go on.
async fn approve_group(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_group(&state, &name).await?;
    let by = operator(&body);
    let store = state.controller.store();
    let mut approved = Vec::new();
    for key in state.controller.group_keys_named(&name) {
        if store.open_approval(&key).map_err(internal)?.is_some() {
            store
                .approve(&key, None, &by)
                .map_err(|e| ApiError(StatusCode::CONFLICT, crate::error_chain(&e)))?;
            state.queue.enqueue(key.clone());
            approved.push(key);
        }
    }
    if approved.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("no rollout of a group named {name:?} waits for approval"),
        ));
    }
    Ok((StatusCode::OK, Json(json!({ "approved": approved }))).into_response())
}

/// Abort a group's rollout: its strategy undoes what it did (the `rolling` strategy
/// restarts the updated members with what they ran before) and the change is given up
/// until a member's desired configuration changes again.
async fn abort_group(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_group(&state, &name).await?;
    let by = operator(&body);
    let mut aborting = Vec::new();
    for key in state.controller.group_keys_named(&name) {
        if state
            .controller
            .request_group_abort(&key, &by)
            .map_err(from_controller)?
        {
            state.queue.enqueue(key.clone());
            aborting.push(key);
        }
    }
    if aborting.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("no group named {name:?} has a rollout in progress to abort"),
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "aborting": aborting }))).into_response())
}

async fn explain(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let instance = fetch_instance(&state, &id).await?;
    let facts = Controller::facts(&instance);
    let explanation = state.controller.policy().explain(&facts);
    let source = if state
        .controller
        .control_plane()
        .capabilities()
        .await
        .is_ok_and(|c| c.running_configuration)
    {
        crate::controller::ActualSource::ControlPlane
    } else {
        crate::controller::ActualSource::AppliedRecord
    };
    Ok(Json(json!({
        "instance": id,
        "rule": explanation.selection.rule_name,
        "actualSource": source,
        "text": format!("{explanation}\nactual state from {}", source.describe()),
    })))
}

async fn diff(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // No lookup of its own: the plan reads the instance, and a control plane that does
    // not know it answers not found (one round trip less before the plan is taken).
    check_id(&id)?;
    let plan = state.controller.plan(&id).await.map_err(|e| match &e {
        crate::controller::Error::ControlPlane(c) if c.is_not_found() => unknown_instance(&id),
        _ => from_controller(e),
    })?;
    Ok(Json(serde_json::to_value(plan).map_err(internal)?))
}

async fn reconcile(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_known(&state, &id).await?;
    state.queue.enqueue(id.clone());
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": id }))).into_response())
}

/// Who an operator request is from (`by`, default `admin-api`), and its other fields.
#[derive(Debug, Deserialize, Default)]
struct OperatorBody {
    by: Option<String>,
    /// The revision (desired digest, or its first characters) an approval releases.
    digest: Option<String>,
    /// The revision a rollback goes to.
    to: Option<String>,
    /// A promotion skips every remaining step.
    full: Option<bool>,
}

fn operator(body: &Option<Json<OperatorBody>>) -> String {
    body.as_ref()
        .and_then(|Json(b)| b.by.clone())
        .unwrap_or_else(|| "admin-api".into())
}

async fn approve(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_known(&state, &id).await?;
    let by = operator(&body);
    let store = state.controller.store();
    // A digest prefix (as `setpoint status` shows it) names the pending revision only if
    // it is a prefix of it; the store then checks the full digest.
    let digest = match body.as_ref().and_then(|Json(b)| b.digest.clone()) {
        None => None,
        Some(given) => {
            let pending = store.open_approval(&id).map_err(internal)?;
            Some(match pending {
                Some(p) if !given.is_empty() && p.digest.starts_with(&given) => p.digest,
                _ => given,
            })
        }
    };
    let record = store
        .approve(&id, digest.as_deref(), &by)
        .map_err(|e| ApiError(StatusCode::CONFLICT, crate::error_chain(&e)))?;
    state.queue.enqueue(id);
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(record).map_err(internal)?),
    )
        .into_response())
}

async fn abort(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_known(&state, &id).await?;
    let by = operator(&body);
    let Some(digest) = state
        .controller
        .request_abort(&id, &by)
        .map_err(from_controller)?
    else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "instance {id} has no rollout in progress and no change waiting for approval to abort"
            ),
        ));
    };
    state.queue.enqueue(id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "aborting": id, "digest": digest })),
    )
        .into_response())
}

async fn promote(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_known(&state, &id).await?;
    let by = operator(&body);
    let full = body.as_ref().and_then(|Json(b)| b.full).unwrap_or(false);
    let Some(digest) = state
        .controller
        .promote(&id, full, &by)
        .map_err(from_controller)?
    else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "instance {id} has no rollout in progress to promote (or it is being aborted); `setpoint status {id}` shows where it stands"
            ),
        ));
    };
    state.queue.enqueue(id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "promoting": id, "digest": digest, "full": full })),
    )
        .into_response())
}

async fn retry(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_known(&state, &id).await?;
    let by = operator(&body);
    let retried = state.controller.retry(&id, &by).map_err(from_controller)?;
    state.queue.enqueue(id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "queued": id, "retried": retried })),
    )
        .into_response())
}

async fn history(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    let history = state.controller.store().history(&id).map_err(internal)?;
    if history.is_empty() {
        // Nothing applied yet, or no such instance: only the latter is a 404.
        check_known(&state, &id).await?;
    }
    Ok(Json(serde_json::to_value(history).map_err(internal)?))
}

async fn rollback(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    check_known(&state, &id).await?;
    let by = operator(&body);
    let to = body.as_ref().and_then(|Json(b)| b.to.clone());
    let digest = state
        .controller
        .rollback(&id, to.as_deref(), &by)
        .await
        .map_err(from_controller)?;
    state.queue.enqueue(id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "rollingBack": id, "digest": digest })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    instance: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AdminState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "bad query parameters: {}; GET /v1/audit takes instance=<instance id>, after=<audit record id, a whole number>, limit=<a whole number>",
                e.body_text()
            ),
        )
    })?;
    let mut filter = AuditFilter {
        instance_id: q.instance,
        after_id: q.after,
        ..AuditFilter::default()
    };
    if let Some(limit) = q.limit {
        filter.limit = limit.min(filter.limit);
    }
    let records = state.controller.store().audit(&filter).map_err(internal)?;
    Ok(Json(serde_json::to_value(records).map_err(internal)?))
}

async fn plugins(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let registry = state.controller.plugins();
    Ok(Json(
        serde_json::to_value(registry.entries()).map_err(internal)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use async_trait::async_trait;

    use crate::client::{
        self, ChangeBatch, ControlPlane, Instance, InstanceStatus, PlatformType, RuntimeInfo,
        StatusChange, Timestamp,
    };

    /// A control plane that knows one instance, `KNOWN`.
    #[derive(Debug)]
    struct OneInstance;

    const KNOWN: &str = "3f2c9b1e-0a4d-4e7f-9c1b-2d5e8f0a1b2c";
    const TOKEN: &str = "t0ken";

    fn not_found(id: &str) -> client::Error {
        client::Error::NotFound {
            call: format!("GET /instances/{id}"),
            body: String::new(),
        }
    }

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

    /// The admin API on a loopback port, with its queue.
    struct Served {
        base: String,
        queue: WorkQueue,
        http: reqwest::Client,
    }

    async fn serve() -> Served {
        let controller = Arc::new(Controller::new(
            Arc::new(OneInstance),
            Arc::new(crate::runtime::PluginRuntime::new(Default::default()).unwrap()),
            Arc::new(crate::registry::PluginRegistry::default()),
            Arc::new(crate::store::Store::open_in_memory().unwrap()),
            Arc::new(crate::policy::Policy::from_rules(Vec::new()).unwrap()),
            crate::controller::ControllerSettings::default(),
            Arc::new(crate::metrics::Metrics::new()),
        ));
        let queue =
            WorkQueue::new(crate::config::ControllerSettings::default().queue_settings()).unwrap();
        let app = router(AdminState {
            controller,
            queue: queue.clone(),
            token: Some(TOKEN.to_owned()),
            ready: Arc::new(AtomicBool::new(true)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Served {
            base,
            queue,
            http: reqwest::Client::new(),
        }
    }

    impl Served {
        async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
            let response = request.send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.unwrap();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, headers, body)
        }

        async fn post(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
            self.send(
                self.http
                    .post(format!("{}{path}", self.base))
                    .bearer_auth(TOKEN),
            )
            .await
        }

        async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
            self.send(self.http.get(format!("{}{path}", self.base)))
                .await
        }
    }

    /// A JSON error answer: `{"error": "..."}` with a JSON content type; its message.
    fn json_error(status: StatusCode, headers: &HeaderMap, body: &Value) -> String {
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{status}: {body}"
        );
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{status}: no error string in {body}"))
            .to_owned()
    }

    const MUTATIONS: [&str; 6] = [
        "reconcile",
        "approve",
        "abort",
        "promote",
        "retry",
        "rollback",
    ];

    #[tokio::test]
    async fn unknown_or_absurd_instance_ids_are_404_json_and_nothing_is_queued() {
        let api = serve().await;
        let huge = "a".repeat(8 * 1024);
        for route in MUTATIONS {
            for (id, named) in [
                ("no-such-instance", "no-such-instance"),
                ("..%2F..%2Fetc", "../../etc"),
                (huge.as_str(), "aaaaaaaaaaaaaaaa"),
            ] {
                let (status, headers, body) =
                    api.post(&format!("/v1/instances/{id}/{route}")).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{route} {named}: {body}");
                let error = json_error(status, &headers, &body);
                assert!(error.contains(named), "{error}");
                assert!(error.contains("setpoint status"), "{error}");
                assert!(error.len() < 1024, "a huge id is shortened: {error}");
            }
        }
        let (_, _, body) = api.post("/v1/instances/..%2F..%2Fetc/reconcile").await;
        assert!(
            body["error"].as_str().unwrap().contains("[A-Za-z0-9._:-]"),
            "{body}"
        );
        assert_eq!(api.queue.len(), 0, "nothing queued for unknown instances");
        let (status, _, body) = api.post(&format!("/v1/instances/{KNOWN}/reconcile")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(api.queue.len(), 1);
    }

    #[tokio::test]
    async fn reads_of_unknown_instances_are_404_json() {
        let api = serve().await;
        for route in ["", "/explain", "/diff", "/history"] {
            for id in ["no-such-instance", "..%2F..%2Fetc"] {
                let (status, headers, body) = api.get(&format!("/v1/instances/{id}{route}")).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{route} {id}: {body}");
                let error = json_error(status, &headers, &body);
                assert!(error.contains("setpoint status"), "{error}");
            }
        }
        let (status, _, body) = api.get(&format!("/v1/instances/{KNOWN}/history")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[tokio::test]
    async fn unknown_or_absurd_groups_are_404_json() {
        let api = serve().await;
        let huge = "a".repeat(8 * 1024);
        for name in ["app=nothing", "..%2F..%2Fetc%00", huge.as_str()] {
            for (status, headers, body) in [
                api.get(&format!("/v1/groups/{name}")).await,
                api.post(&format!("/v1/groups/{name}/approve")).await,
                api.post(&format!("/v1/groups/{name}/abort")).await,
            ] {
                assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
                let error = json_error(status, &headers, &body);
                assert!(error.len() < 1024, "a huge name is shortened: {error}");
            }
        }
    }

    #[tokio::test]
    async fn every_error_is_json_and_says_what_to_do() {
        let api = serve().await;
        let url = |path: &str| format!("{}{path}", api.base);
        let checks: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
            (
                api.http.get(url("/v1/nothing-here")),
                StatusCode::NOT_FOUND,
                "/v1/openapi.json",
            ),
            (
                api.http
                    .get(url(&format!("/v1/instances/{KNOWN}/reconcile"))),
                StatusCode::METHOD_NOT_ALLOWED,
                "POST",
            ),
            (
                api.http.get(url(&format!("/v1/{}", "x".repeat(20 * 1024)))),
                StatusCode::URI_TOO_LONG,
                "bytes",
            ),
            (
                api.http
                    .post(url(&format!("/v1/instances/{KNOWN}/approve")))
                    .bearer_auth(TOKEN)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(format!("{{\"by\": \"{}\"}}", "x".repeat(100 * 1024))),
                StatusCode::PAYLOAD_TOO_LARGE,
                "KiB",
            ),
            (
                api.http
                    .post(url(&format!("/v1/instances/{KNOWN}/approve")))
                    .bearer_auth(TOKEN)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body("by=me"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "application/json",
            ),
            (
                api.http
                    .post(url(&format!("/v1/instances/{KNOWN}/approve")))
                    .bearer_auth(TOKEN)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body("{not json"),
                StatusCode::BAD_REQUEST,
                "JSON",
            ),
            (
                api.http.get(url("/v1/audit?limit=lots")),
                StatusCode::BAD_REQUEST,
                "limit",
            ),
        ];
        for (request, expected, hint) in checks {
            let (status, headers, body) = api.send(request).await;
            assert_eq!(status, expected, "{body}");
            let error = json_error(status, &headers, &body);
            assert!(
                error.contains(hint),
                "{expected}: {error:?} should mention {hint:?}"
            );
        }
    }

    #[tokio::test]
    async fn every_answer_carries_the_security_headers() {
        let api = serve().await;
        for path in [
            "/healthz",
            "/v1/instances",
            "/v1/openapi.json",
            "/v1/nothing-here",
        ] {
            let (status, headers, _) = api.get(path).await;
            for (name, value) in [
                ("x-content-type-options", "nosniff"),
                ("cache-control", "no-store"),
                ("x-frame-options", "DENY"),
                (
                    "content-security-policy",
                    "default-src 'none'; frame-ancestors 'none'",
                ),
            ] {
                assert_eq!(
                    headers.get(name).and_then(|v| v.to_str().ok()),
                    Some(value),
                    "{path} ({status}): {name}"
                );
            }
        }
    }

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, method) in [
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/v1/openapi.json", "get"),
            ("/v1/instances", "get"),
            ("/v1/instances/{id}", "get"),
            ("/v1/instances/{id}/explain", "get"),
            ("/v1/instances/{id}/diff", "get"),
            ("/v1/instances/{id}/reconcile", "post"),
            ("/v1/instances/{id}/approve", "post"),
            ("/v1/instances/{id}/abort", "post"),
            ("/v1/instances/{id}/promote", "post"),
            ("/v1/instances/{id}/retry", "post"),
            ("/v1/instances/{id}/rollback", "post"),
            ("/v1/instances/{id}/history", "get"),
            ("/v1/groups/{name}", "get"),
            ("/v1/groups/{name}/approve", "post"),
            ("/v1/groups/{name}/abort", "post"),
            ("/v1/audit", "get"),
            ("/v1/plugins", "get"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }
}
