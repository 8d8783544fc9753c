//! A resource's history: its versions, one version's body, the diff between two
//! versions, and reverting to an earlier one (SPEC §1).

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use truce_engine::{
    Document, ResourceKey, Version, WriteAction, diff_versions, require_live_version,
};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiQuery, Conditions, JsonBody, ResourcePath, VersionPath, WriteHeaders};
use crate::openapi::{
    BodyProblems, Compacted, Conflict, Malformed, NotFound, PreconditionFailed,
    PreconditionRequired, Unavailable,
};
use crate::paging::{decode_cursor, encode_cursor, page_limit};
use crate::routes::documents::{WriteParams, conditional_read, run_write, write_command};
use crate::state::AppState;
use crate::wire::{HistoryItem, HistoryPageBody, RevertRequest};

/// `GET .../versions` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// `GET .../diff` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffParams {
    /// The version to diff from (default: the one before `to`).
    from: Option<u64>,
    /// The version to diff to (default: the current version).
    to: Option<u64>,
}

/// The history of a resource, newest first.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}/versions",
    tag = "history",
    params(("collection" = String, Path), ("id" = String, Path), HistoryParams),
    responses(
        (status = 200, description = "A page of versions, newest first", body = HistoryPageBody),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn versions(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<HistoryPageBody>, ApiError> {
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c)?
                .parse::<u64>()
                .map_err(|_| ApiError::Malformed(format!("invalid cursor {c:?}")))
        })
        .transpose()?;
    let page = state
        .store
        .history(&key, before, page_limit(params.limit)?)
        .await?;
    Ok(Json(HistoryPageBody {
        next: page.next.map(|v| encode_cursor(&v.to_string())),
        items: page.items.into_iter().map(HistoryItem::from).collect(),
    }))
}

/// The body of one version, with its ETag.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}/versions/{n}",
    tag = "history",
    params(("collection" = String, Path), ("id" = String, Path), ("n" = u64, Path, description = "Version number")),
    responses(
        (status = 200, description = "The version's document", body = Object,
            headers(("ETag" = String), ("Last-Modified" = String), ("Truce-Version" = u64), ("Truce-Revision" = u64))),
        (status = 304, description = "Not modified"),
        Malformed, NotFound, Compacted, PreconditionFailed, Unavailable,
    )
)]
pub async fn version(
    State(state): State<AppState>,
    path: VersionPath,
    Conditions(preconditions): Conditions,
) -> Result<Response, ApiError> {
    let lookup = state.store.version(&path.key, path.number).await?;
    let version = require_live_version(&path.key, path.number, lookup)?;
    conditional_read(&path.key, &version, &preconditions)
}

/// The RFC 6902 JSON Patch that turns version `from` into version `to`.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}/diff",
    tag = "history",
    params(("collection" = String, Path), ("id" = String, Path), DiffParams),
    responses(
        (status = 200, description = "A JSON Patch", content_type = "application/json-patch+json", body = Vec<Object>),
        Malformed, NotFound, Compacted, Unavailable,
    )
)]
pub async fn diff(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<DiffParams>,
) -> Result<Response, ApiError> {
    let to = match params.to {
        Some(to) => to,
        None => state.store.head(&key).await?.map_or(0, |head| head.number),
    };
    let from = params.from.unwrap_or(to.saturating_sub(1));
    let from_value = document_at(&state, &key, from).await?;
    let to_value = document_at(&state, &key, to).await?;
    let mut response = Json(diff_versions(&from_value, &to_value)).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json-patch+json"),
    );
    Ok(response)
}

/// The parsed document of version `number`, or why there is none.
async fn document_at(
    state: &AppState,
    key: &ResourceKey,
    number: u64,
) -> Result<serde_json::Value, ApiError> {
    let lookup = state.store.version(key, number).await?;
    let version: Version = require_live_version(key, number, lookup)?;
    let body = version.body.unwrap_or_default();
    Ok(Document::from_stored(body)?.into_value())
}

/// Writes a new version whose content is version `to`'s.
#[utoipa::path(
    post,
    path = "/v1/{collection}/{id}/revert",
    tag = "history",
    params(("collection" = String, Path), ("id" = String, Path), WriteParams),
    request_body(content = RevertRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Reverted (or unchanged if the content is already version `to`'s)", body = Object,
            headers(("ETag" = String), ("Truce-Version" = u64), ("Truce-Revision" = u64))),
        (status = 201, description = "Reverted a deleted resource back to life", body = Object),
        (status = 204, description = "`Prefer: return=minimal`"),
        Malformed, NotFound, Conflict, Compacted, PreconditionFailed, BodyProblems,
        PreconditionRequired, Unavailable,
    )
)]
pub async fn revert(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: WriteHeaders,
    JsonBody(request): JsonBody<RevertRequest>,
) -> Result<Response, ApiError> {
    let action = WriteAction::Revert { to: request.to };
    let command = write_command(key, action, params, &headers);
    run_write(&state, command, headers.prefer, headers.keyed).await
}
