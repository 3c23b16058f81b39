//! The admin HTTP API (axum) on its own address: health and readiness, Prometheus
//! `/metrics`, instance status and conditions, audit, explain, dry-run plans, plugins,
//! and the mutating routes (reconcile, approve, abort) behind a bearer token.
//!
//! Start at [`router`]. Routes live under `/v1/`; [`OPENAPI`] documents them and a test
//! checks that every route is in it. Without a configured token the mutating routes
//! answer 403: they are disabled, never open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: first resync not done\n",
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
    state
        .controller
        .control_plane()
        .get_instance(id)
        .await
        .map_err(from_client)
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
    let groups = state
        .controller
        .groups_named(&name)
        .await
        .map_err(internal)?;
    if groups.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no group named {name:?}: a group is the label values a rule's group_by keys take, written key=value[,key=value], for example app=orders"
            ),
        ));
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
    let plan = state.controller.plan(&id).await.map_err(from_controller)?;
    Ok(Json(serde_json::to_value(plan).map_err(internal)?))
}

async fn reconcile(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
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
    let history = state.controller.store().history(&id).map_err(internal)?;
    Ok(Json(serde_json::to_value(history).map_err(internal)?))
}

async fn rollback(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<OperatorBody>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
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
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
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
    }
}
