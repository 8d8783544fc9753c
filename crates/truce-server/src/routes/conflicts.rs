//! Conflict records (SPEC §7): pages of records under filters, and one record with
//! the three sides of the conflict.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::Value;
use truce_engine::{
    ConflictFilter, Document, EngineError, Principal, ResolutionAction, ResolutionCommand,
    SideTable, Take, VersionLookup, check_conflict_id, conflict_not_found, conflict_with_sides,
    parse_conflict_record,
};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::{ApiQuery, Conditions, JsonBody};
use crate::extract::{By, LockToken};
use crate::idempotency::Keyed;
use crate::openapi::{Conflict, Malformed, NotFound, PreconditionFailed, Unavailable};
use crate::paging::{decode_cursor, page_by_id, page_limit};
use crate::render::put_version_headers;
use crate::state::AppState;

/// A record's `status`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    /// Not resolved yet.
    Open,
    /// Resolved (by a retry, or by taking a side).
    Resolved,
    /// Dismissed without a change.
    Dismissed,
    /// Merged by the collection's merge policy.
    AutoMerged,
    /// Overwritten by the collection's last-write-wins policy.
    Overwritten,
}

impl ConflictStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
            Self::Dismissed => "dismissed",
            Self::AutoMerged => "auto_merged",
            Self::Overwritten => "overwritten",
        }
    }
}

/// `GET /v1/_conflicts` parameters: every given filter must match.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConflictListParams {
    /// Only records in this state.
    #[param(inline)]
    status: Option<ConflictStatus>,
    /// Only records of resources in this collection.
    collection: Option<String>,
    /// Only records of resources with this id.
    id: Option<String>,
    /// Only records of this type (the refusal's problem slug).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// The `next` cursor of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// How many records are read from the store at a time while filtering.
const SCAN: usize = 256;

/// Conflict records, oldest first (ids sort by time), under the filters.
#[utoipa::path(
    get,
    path = "/v1/_conflicts",
    tag = "conflicts",
    params(ConflictListParams),
    responses(
        (status = 200, description = "A page of records: `{items, next}`", body = Object),
        Malformed, Unavailable,
    )
)]
pub async fn conflicts(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ConflictListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(params.limit)?;
    let filter = ConflictFilter {
        status: params.status.map(|s| s.as_str().to_owned()),
        collection: params.collection,
        id: params.id,
        kind: params.kind,
    };
    let mut after = match &params.cursor {
        Some(cursor) => Some(decode_cursor(cursor)?.into_bytes()),
        None => None,
    };
    let mut items = Vec::new();
    let mut more = false;
    'scan: loop {
        let batch = state
            .store
            .side_records(SideTable::Conflicts, after.as_deref(), SCAN)
            .await?;
        let done = batch.len() < SCAN;
        for (key, stored) in batch {
            after = Some(key);
            let record: Value = serde_json::from_slice(&stored)
                .map_err(|e| EngineError::Internal(format!("unreadable conflict record: {e}")))?;
            if !filter.matches(&record) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break 'scan;
            }
            items.push(record);
        }
        if done {
            break;
        }
    }
    Ok(Json(page_by_id(items, more)))
}

/// One conflict record, with `base` (the version the refused write was based on),
/// `ours` (what the refused write would have made of it), `theirs` (the current
/// document) and `paths` (where ours and theirs differ).
#[utoipa::path(
    get,
    path = "/v1/_conflicts/{cid}",
    tag = "conflicts",
    params(("cid" = String, Path, description = "The conflict record's id (`conflict_id` of the refusal)")),
    responses(
        (status = 200, description = "The record, with base, ours, theirs and the differing paths", body = Object),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn conflict(
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_conflict_id(&cid)?;
    let stored = state
        .store
        .side_record(SideTable::Conflicts, cid.as_bytes())
        .await?
        .ok_or_else(|| conflict_not_found(&cid))?;
    let (record, key) = parse_conflict_record(&cid, &stored)?;
    let body = |version: &truce_engine::Version| -> Option<Value> {
        serde_json::from_slice(version.body.as_ref()?).ok()
    };
    let base = match record["base_version"].as_u64() {
        Some(n) => match state.store.version(&key, n).await? {
            VersionLookup::Found(version) => body(&version),
            _ => None,
        },
        None => None,
    };
    let theirs = state.store.head(&key).await?.as_ref().and_then(body);
    Ok(Json(conflict_with_sides(record, base, theirs)))
}

/// Which side a resolution takes.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TakeSide {
    /// Keep the current document.
    Theirs,
    /// Apply the refused write's change to the version it was based on.
    Ours,
    /// Write the supplied `doc`.
    Doc,
}

/// The body of `POST /v1/_conflicts/{cid}/resolve`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Which side to take.
    take: TakeSide,
    /// With `take: doc`: the document to write (a JSON object).
    #[schema(value_type = Option<Object>)]
    doc: Option<Value>,
}

/// Closes record `cid` through the store; answers the closed record, with the
/// version headers when a version was written.
async fn close(
    state: &AppState,
    cid: String,
    action: ResolutionAction,
    preconditions: truce_engine::Preconditions,
    (keyed, by, lock_token): (Keyed, Principal, Option<String>),
) -> Result<Response, ApiError> {
    let outcome = state
        .store
        .resolve(ResolutionCommand {
            cid,
            action,
            preconditions,
            by,
            idempotency: keyed.attach(closed_response),
            lock_token,
        })
        .await?;
    Ok(closed_response(&outcome))
}

/// The closed record, with the version headers when a version was written.
fn closed_response(outcome: &truce_engine::ResolutionOutcome) -> Response {
    let mut response = Json(&outcome.record).into_response();
    if let Some(write) = &outcome.write {
        put_version_headers(response.headers_mut(), &write.key, &write.version);
    }
    response
}

/// Resolves a record by taking a side. Conflict-protected: refused (409) if the
/// resource moved past the record's `current_version`, unless `If-Match` names
/// the current ETag. Taking `ours` or a `doc` writes a version (op `resolve`).
#[utoipa::path(
    post,
    path = "/v1/_conflicts/{cid}/resolve",
    tag = "conflicts",
    params(("cid" = String, Path, description = "The conflict record's id")),
    request_body(content = ResolveRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The record, resolved; with ETag, Truce-Version and Truce-Revision when a version was written", body = Object),
        Malformed, NotFound, Conflict, PreconditionFailed, Unavailable,
    )
)]
pub async fn resolve(
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Conditions(preconditions): Conditions,
    (keyed, By(by), LockToken(lock_token)): (Keyed, By, LockToken),
    JsonBody(request): JsonBody<ResolveRequest>,
) -> Result<Response, ApiError> {
    check_conflict_id(&cid)?;
    let take = match (request.take, request.doc) {
        (TakeSide::Theirs, None) => Take::Theirs,
        (TakeSide::Ours, None) => Take::Ours,
        (TakeSide::Doc, Some(doc)) => Take::Doc(Document::parse(
            doc.to_string().as_bytes(),
            state.config.limits,
        )?),
        (TakeSide::Doc, None) => {
            return Err(ApiError::Malformed(
                "take: doc needs the document to write in \"doc\"".into(),
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::Malformed(
                "\"doc\" goes only with take: doc".into(),
            ));
        }
    };
    close(
        &state,
        cid,
        ResolutionAction::Resolve(take),
        preconditions,
        (keyed, by, lock_token),
    )
    .await
}

/// Dismisses a record: closed without a change.
#[utoipa::path(
    post,
    path = "/v1/_conflicts/{cid}/dismiss",
    tag = "conflicts",
    params(("cid" = String, Path, description = "The conflict record's id")),
    responses(
        (status = 200, description = "The record, dismissed", body = Object),
        Malformed, NotFound, Conflict, Unavailable,
    )
)]
pub async fn dismiss(
    State(state): State<AppState>,
    Path(cid): Path<String>,
    keyed: Keyed,
    By(by): By,
) -> Result<Response, ApiError> {
    check_conflict_id(&cid)?;
    close(
        &state,
        cid,
        ResolutionAction::Dismiss,
        truce_engine::Preconditions::default(),
        (keyed, by, None),
    )
    .await
}
