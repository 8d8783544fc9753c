//! `/v1/{collection}` and `/v1/{collection}/{id}`: list, create, read, replace,
//! patch and delete documents (SPEC §1, §2).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use truce_engine::{
    CurrentState, EngineError, Evaluation, ListQuery, ResourceKey, Safety, Validators, Version,
    WriteAction, WriteCommand, require_live, require_live_version,
};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{
    ApiQuery, By, CollectionPath, Conditions, DocumentBody, PatchBody, Prefer, ResourcePath, TxnId,
    WriteHeaders,
};
use crate::idempotency::Keyed;
use crate::openapi::{
    BodyProblems, Compacted, Conflict, Invalid, Malformed, NotFound, PreconditionFailed,
    PreconditionRequired, Unavailable,
};
use crate::paging::{encode_cursor, page_limit};
use crate::render::{document_response, not_modified, write_response};
use crate::state::AppState;
use crate::wire::{Envelope, EnvelopePage, TombstoneBody};

/// `GET /v1/{collection}` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Only ids starting with this.
    prefix: Option<String>,
}

/// `GET /v1/{collection}/{id}` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Read this past version instead of the current one.
    version: Option<u64>,
}

/// Parameters of every write.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// Body-level optimistic locking: the version the write expects to replace (`0`:
    /// the resource must not exist). Mismatch: 409 version-conflict.
    pub if_version: Option<u64>,
}

/// Lists the live documents of a collection, in id order.
#[utoipa::path(
    get,
    path = "/v1/{collection}",
    tag = "documents",
    params(("collection" = String, Path, description = "Collection name"), ListParams),
    responses(
        (status = 200, description = "A page of envelopes", body = EnvelopePage),
        Malformed, Unavailable,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    CollectionPath(collection): CollectionPath,
    ApiQuery(params): ApiQuery<ListParams>,
    TxnId(txn): TxnId,
    By(by): By,
) -> Result<Json<EnvelopePage>, ApiError> {
    let query = ListQuery {
        prefix: params.prefix,
        after: super::sessions::cursor_id(params.cursor.as_deref())?,
        limit: page_limit(params.limit)?,
    };
    if let Some(txn) = txn {
        let page = super::sessions::list_in(&state, &txn, &by, &collection, query).await?;
        return Ok(Json(page));
    }
    let page = state.store.list(&collection, &query).await?;
    Ok(Json(EnvelopePage {
        next: page.next.map(|id| encode_cursor(id.as_str())),
        items: page
            .items
            .into_iter()
            .map(|(id, version)| Envelope::new(&collection, id, &version))
            .collect(),
    }))
}

/// Creates a document with a server-made, time-ordered id.
#[utoipa::path(
    post,
    path = "/v1/{collection}",
    tag = "documents",
    params(("collection" = String, Path, description = "Collection name")),
    request_body(content = Object, content_type = "application/json", description = "The document: a JSON object"),
    responses(
        (status = 201, description = "Created; `Location` names the new resource", body = Object,
            headers(("Location" = String), ("ETag" = String), ("Truce-Version" = u64), ("Truce-Revision" = u64))),
        Malformed, BodyProblems, Unavailable,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    CollectionPath(collection): CollectionPath,
    headers: WriteHeaders,
    DocumentBody(doc): DocumentBody,
) -> Result<Response, ApiError> {
    if headers.txn.is_some() {
        return Err(super::sessions::not_in_a_transaction(
            "POST /v1/{collection} (a server-made id)",
        ));
    }
    let key = ResourceKey {
        collection,
        id: state.ids.next_id(),
    };
    let command = WriteCommand {
        key,
        action: WriteAction::Create(doc),
        preconditions: headers.preconditions,
        if_version: None,
        by: headers.by,
        request_id: crate::context::RequestContext::current().map(|c| c.id.to_string()),
        resolves: None,
        idempotency: None,
        lock_token: None,
        key_check: headers.key_check.clone(),
    };
    run_write(&state, command, headers.prefer, headers.keyed).await
}

/// Reads the current document (or a past version with `?version=`).
#[utoipa::path(
    method(get, head),
    path = "/v1/{collection}/{id}",
    tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path), ReadParams),
    responses(
        (status = 200, description = "The document exactly as stored", body = Object,
            headers(("ETag" = String), ("Last-Modified" = String), ("Truce-Version" = u64),
                    ("Truce-Revision" = u64), ("Cache-Control" = String))),
        (status = 304, description = "If-None-Match or If-Modified-Since: not modified"),
        Malformed, NotFound, Compacted, PreconditionFailed, Unavailable,
    )
)]
pub async fn read(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<ReadParams>,
    Conditions(preconditions): Conditions,
    TxnId(txn): TxnId,
    By(by): By,
) -> Result<Response, ApiError> {
    if let Some(txn) = txn {
        if params.version.is_some() {
            return Err(super::sessions::not_in_a_transaction("?version="));
        }
        return super::sessions::read_in(&state, &txn, &by, &key, &preconditions).await;
    }
    let version = match params.version {
        Some(number) => {
            require_live_version(&key, number, state.store.version(&key, number).await?)?
        }
        None => require_live(&key, state.store.head(&key).await?)?,
    };
    conditional_read(&key, &version, &preconditions)
}

/// Answers a read of `version` under the request's preconditions.
pub(crate) fn conditional_read(
    key: &ResourceKey,
    version: &Version,
    preconditions: &truce_engine::Preconditions,
) -> Result<Response, ApiError> {
    let etag = version.etag(key);
    let validators = Validators {
        etag: &etag,
        last_modified_secs: version.at.secs(),
    };
    match preconditions.evaluate(Safety::Safe, Some(validators)) {
        Evaluation::Proceed => Ok(document_response(StatusCode::OK, key, version)),
        Evaluation::NotModified => Ok(not_modified(key, version)),
        Evaluation::Failed(condition) => Err(EngineError::PreconditionFailed {
            condition,
            current: Some(CurrentState {
                resource: key.clone(),
                version: version.number,
                etag,
            }),
            current_matches_request: false,
        }
        .into()),
    }
}

/// Creates (201) or replaces (200) a document.
#[utoipa::path(
    put,
    path = "/v1/{collection}/{id}",
    tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path), WriteParams),
    request_body(content = Object, content_type = "application/json", description = "The document: a JSON object"),
    responses(
        (status = 200, description = "Replaced, or unchanged (equal content makes no new version)", body = Object,
            headers(("ETag" = String), ("Truce-Version" = u64), ("Truce-Revision" = u64))),
        (status = 201, description = "Created", body = Object, headers(("Location" = String), ("ETag" = String))),
        (status = 204, description = "`Prefer: return=minimal`"),
        Malformed, Conflict, PreconditionFailed, BodyProblems, PreconditionRequired, Unavailable,
    )
)]
pub async fn put(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: WriteHeaders,
    DocumentBody(doc): DocumentBody,
) -> Result<Response, ApiError> {
    let command = write_command(key, WriteAction::Put(doc), params, &headers);
    if let Some(txn) = &headers.txn {
        return super::sessions::write_in(&state, txn, command).await;
    }
    run_write(&state, command, headers.prefer, headers.keyed).await
}

/// Applies a merge patch (RFC 7396) or a JSON Patch (RFC 6902).
#[utoipa::path(
    patch,
    path = "/v1/{collection}/{id}",
    tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path), WriteParams),
    request_body(content(
        (Object = "application/merge-patch+json"),
        (Vec<Object> = "application/json-patch+json"),
    ), description = "A merge patch or a JSON Patch"),
    responses(
        (status = 200, description = "Patched (or unchanged)", body = Object,
            headers(("ETag" = String), ("Truce-Version" = u64), ("Truce-Revision" = u64))),
        (status = 204, description = "`Prefer: return=minimal`"),
        Malformed, NotFound, Conflict, PreconditionFailed, BodyProblems, Invalid,
        PreconditionRequired, Unavailable,
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: WriteHeaders,
    PatchBody(action): PatchBody,
) -> Result<Response, ApiError> {
    let command = write_command(key, action, params, &headers);
    if let Some(txn) = &headers.txn {
        return super::sessions::write_in(&state, txn, command).await;
    }
    run_write(&state, command, headers.prefer, headers.keyed).await
}

/// Deletes a document: writes a tombstone version.
#[utoipa::path(
    delete,
    path = "/v1/{collection}/{id}",
    tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path), WriteParams),
    responses(
        (status = 200, description = "Deleted: the tombstone", body = TombstoneBody,
            headers(("ETag" = String), ("Truce-Version" = u64), ("Truce-Revision" = u64))),
        (status = 204, description = "`Prefer: return=minimal`"),
        Malformed, NotFound, Conflict, PreconditionFailed, PreconditionRequired, Unavailable,
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: WriteHeaders,
) -> Result<Response, ApiError> {
    let command = write_command(key, WriteAction::Delete, params, &headers);
    if let Some(txn) = &headers.txn {
        return super::sessions::write_in(&state, txn, command).await;
    }
    run_write(&state, command, headers.prefer, headers.keyed).await
}

/// A write command from its parsed parts.
pub(crate) fn write_command(
    key: ResourceKey,
    action: WriteAction,
    params: WriteParams,
    headers: &WriteHeaders,
) -> WriteCommand {
    WriteCommand {
        key,
        action,
        preconditions: headers.preconditions.clone(),
        if_version: params.if_version,
        by: headers.by.clone(),
        request_id: crate::context::RequestContext::current().map(|c| c.id.to_string()),
        resolves: headers.resolves.clone(),
        lock_token: headers.lock_token.clone(),
        idempotency: None,
        key_check: headers.key_check.clone(),
    }
}

/// Sends a write through the store and renders its outcome.
/// Under an `Idempotency-Key` the answer is kept with the write.
pub(crate) async fn run_write(
    state: &AppState,
    mut command: WriteCommand,
    prefer: Prefer,
    keyed: Keyed,
) -> Result<Response, ApiError> {
    command.idempotency = keyed.attach(move |outcome| write_response(outcome, prefer));
    let mut response = match state.store.write(command).await {
        Ok(outcome) => write_response(&outcome, prefer),
        Err(EngineError::KeyRefused(refusal)) => crate::auth::refused(state, refusal),
        Err(error) => ApiError::from(error).into_response(),
    };
    // The batch checked the caller's key before anything else.
    response.extensions_mut().insert(crate::auth::KeyChecked);
    Ok(response)
}
