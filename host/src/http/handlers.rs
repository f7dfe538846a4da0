//! The request/response endpoints: entities, snapshot, plugins, health, readiness and
//! metrics. (The change stream is in `sse`.)

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value, json};
use synchronizer_plugin_api::Entity;

use super::AppState;
use super::error::ApiError;
use super::query::Params;
use crate::metrics::Format;
use crate::output;

/// Entities per chunk of a streamed JSON array (one read-thread hand-off each).
const ARRAY_CHUNK: usize = 4096;
/// How long each plugin gets for its own health report (`/v1/plugins?health=true`).
const PLUGIN_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The parsed query, or a 400 naming what is wrong.
pub(super) fn params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    flags: &[&str],
) -> Result<Params, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Params::parse(pairs, flags)
}

/// `GET /v1/entities?types=a,b`: the current view.
pub(super) async fn entities(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = params(query, &[])?;
    // Copying and sorting a large view is work for a read thread, not an async worker
    // (which also answers `/healthz` and runs the schedules), and not at the writer's
    // priority (see `read_pool`).
    let sync = state.sync.clone();
    let entities = state
        .reads
        .run(move || sync.current(&params.types))
        .await
        .map_err(|e| ApiError::Internal(format!("reading the view failed: {e}")))?;
    Ok(json_array(&state, entities))
}

/// The header of a `POST /v1/snapshot` answer that lists, comma-separated, the types
/// some instance could report only in part.
pub const INCOMPLETE_HEADER: &str = "synchronizer-incomplete";

/// `POST /v1/snapshot?types=a,b`: a fresh get-all (shared with any collection in flight).
pub(super) async fn snapshot(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = params(query, &[])?;
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    match state.sync.get_all_report(&params.types).await {
        Ok(report) if report.incomplete.is_empty() => Ok(json_array(&state, report.entities)),
        Ok(report) => {
            // Partial data is still data: the body is what came, and a header names the
            // types that may be missing entities.
            let mut types: Vec<&str> = report
                .incomplete
                .iter()
                .map(|i| i.entity_type.as_str())
                .collect();
            types.sort_unstable();
            types.dedup();
            for i in &report.incomplete {
                tracing::warn!(instance = %i.instance, entity_type = %i.entity_type, reason = %i.reason, "snapshot request answered with an incomplete type");
            }
            let types = types.join(",");
            let mut response = json_array(&state, report.entities);
            if let Ok(value) = axum::http::HeaderValue::from_str(&types) {
                response.headers_mut().insert(INCOMPLETE_HEADER, value);
            }
            Ok(response)
        }
        Err(e) => {
            let e = ApiError::from(e);
            tracing::warn!(
                error = %e,
                instance = e.instance().unwrap_or(""),
                types = %params.types.join(","),
                "snapshot request failed"
            );
            Err(e)
        }
    }
}

/// Entities as a JSON array of [`output::entity_to_json`] objects, streamed in chunks
/// so that a large view is never held twice in memory as text.
fn json_array(state: &AppState, entities: Vec<Arc<Entity>>) -> Response {
    let entities = Arc::new(entities);
    let state = state.clone();
    let chunks = entities.len().div_ceil(ARRAY_CHUNK).max(1);
    // Each chunk is encoded on a read thread: a million entities are seconds of JSON,
    // which must not hold an async worker nor take the writer's CPU.
    let stream = futures::stream::iter(0..=chunks).then(move |i| {
        let entities = entities.clone();
        let state = state.clone();
        async move {
            let encode = move || {
                let mut out = String::new();
                if i == chunks {
                    out.push(']');
                } else {
                    out.push(if i == 0 { '[' } else { ',' });
                    let from = i * ARRAY_CHUNK;
                    let to = (from + ARRAY_CHUNK).min(entities.len());
                    for (n, e) in entities[from..to].iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        out.push_str(&output::entity_to_json(e));
                    }
                }
                Bytes::from(out)
            };
            state
                .reads
                .run(encode)
                .await
                .map_err(|e| std::io::Error::other(format!("encoding failed: {e}")))
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /v1/plugins[?health=true]`: every instance, the instances that did not start,
/// and the entities the host holds per type.
pub(super) async fn plugins(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = params(query, &["health"])?;
    let mut instances: Vec<Value> = state
        .sync
        .status()
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    if params.flag("health") {
        let reports = state.sync.plugin_health(PLUGIN_HEALTH_TIMEOUT).await;
        for report in reports {
            if let Some(inst) = instances
                .iter_mut()
                .find(|i| i.get("name").and_then(Value::as_str) == Some(report.instance.as_str()))
            {
                inst["plugin_health"] = json!(report.health);
            }
        }
    }
    let failed: Vec<Value> = state
        .sync
        .failures()
        .iter()
        .map(|f| json!({ "error": f.to_string() }))
        .collect();
    let entities: serde_json::Map<String, Value> = state
        .sync
        .hub()
        .counts()
        .into_iter()
        .map(|(t, n)| (t, json!(n)))
        .collect();
    Ok(axum::Json(json!({
        "instances": instances,
        "failed": failed,
        "entities": entities,
    }))
    .into_response())
}

/// `GET /healthz`: the process is alive and serving.
pub(super) async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 once every enabled collector finished its first snapshot and every
/// bus reported itself healthy once (see [`crate::Synchronizer::waiting_for`]); 503 with
/// the instances it waits for before.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let waiting = state.sync.waiting_for();
    if state.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "stopping": true, "waiting_for": waiting })),
        )
            .into_response()
    } else if waiting.is_empty() {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "waiting_for": waiting })),
        )
            .into_response()
    }
}

/// `GET /metrics`: every metric, in OpenMetrics text when the `Accept` header names it,
/// in the classic Prometheus text format otherwise.
pub(super) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let text = state.sync.metrics_text_as(format);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        text,
    )
        .into_response()
}

/// Any other path: 404 with a JSON error.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}
