//! Operations endpoints: liveness, readiness, the OpenAPI document, Prometheus
//! metrics and on-demand compaction (SPEC §10).

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Json, Response};
use truce_engine::{EngineError, StorageError};

use crate::error::ApiError;
use crate::openapi::Unavailable;
use crate::state::AppState;
use crate::wire::{CompactionBody, HealthBody};

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "The process is alive", body = HealthBody))
)]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
    })
}

/// Readiness: the store answers and the server is not draining.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    responses(
        (status = 200, description = "Ready to serve", body = HealthBody),
        Unavailable,
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthBody>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(EngineError::Storage(StorageError::Closed).into());
    }
    state.store.check_ready().await?;
    Ok(Json(HealthBody {
        status: "ok".into(),
    }))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi_document(State(state): State<AppState>) -> Response {
    // `app` sets the document before the router serves anything.
    let document = state.openapi_json.get().cloned().unwrap_or_default();
    let mut response = document.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics() -> Response {
    let text = crate::metrics::render();
    let mut response = text.into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Runs one compaction pass now: removes what the retention settings no longer keep.
#[utoipa::path(
    post,
    path = "/v1/_compact",
    tag = "system",
    responses(
        (status = 200, description = "What the pass removed", body = CompactionBody),
        Unavailable,
    )
)]
pub async fn compact(State(state): State<AppState>) -> Result<Json<CompactionBody>, ApiError> {
    let report = state.store.compact().await?;
    Ok(Json(CompactionBody {
        versions_removed: report.versions_removed,
        changes_removed: report.changes_removed,
        oldest_revision: report.oldest_revision,
        conflicts_removed: report.conflicts_removed,
        conflict_events_removed: report.conflict_events_removed,
        idempotency_removed: report.idempotency_removed,
    }))
}
