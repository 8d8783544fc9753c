//! Webhook subscriptions (SPEC §7): create, read, replace and delete them, and
//! read each one's delivery log. The secret is write-only: it is never served.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use truce_engine::{
    EngineError, SideCommit, SideTable, Subscription, Timestamp, subscription_prefix,
    subscription_removal,
};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiQuery, JsonBody};
use crate::openapi::{Invalid, Malformed, NotFound, Unavailable};
use crate::paging::{decode_cursor, encode_cursor, page_by_id, page_limit};
use crate::state::AppState;

/// Checks a subscription id's syntax (ids are made as ULIDs).
fn check_sid(sid: &str) -> Result<(), ApiError> {
    truce_engine::check_conflict_id(sid).map_err(|_| {
        ApiError::Malformed(format!(
            "{sid:?} is not a subscription id (letters and digits)"
        ))
    })
}

fn not_found(sid: &str) -> EngineError {
    EngineError::NotFound {
        detail: format!("there is no subscription {sid}"),
        tombstone: None,
    }
}

/// A not-found from a commit that required subscription `sid`, in its words.
fn gone_as_not_found(error: EngineError, sid: &str) -> EngineError {
    match error {
        EngineError::NotFound { .. } => not_found(sid),
        other => other,
    }
}

/// The stored subscription `sid`, or 404.
async fn load(state: &AppState, sid: &str) -> Result<Subscription, ApiError> {
    check_sid(sid)?;
    let stored = state
        .store
        .side_record(SideTable::Subscriptions, sid.as_bytes())
        .await?
        .ok_or_else(|| not_found(sid))?;
    Subscription::read(&stored)
        .ok_or_else(|| EngineError::Internal(format!("subscription {sid} unreadable")).into())
}

/// Subscribes a URL to conflict events: `{url, events?, collection?, id?,
/// secret}`. Each matching event is posted once it commits (at least once, with
/// retries), signed with the secret.
#[utoipa::path(
    post,
    operation_id = "create_subscription",
    path = "/v1/_subscriptions",
    tag = "subscriptions",
    request_body(content = Object, content_type = "application/json",
        description = "`{url: http(s) URL, events?: [conflict.detected | conflict.resolved | conflict.dismissed] (default all), collection?, id?, secret}`"),
    responses(
        (status = 201, description = "The subscription (without its secret); `Location` names it", body = Object,
            headers(("Location" = String))),
        Malformed, Invalid, Unavailable,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let sid = state.ids.next_id().as_str().to_owned();
    let subscription = Subscription::parse(sid.clone(), &body, Timestamp::now())?;
    state
        .store
        .commit_side(SideCommit::new(vec![subscription.record()?]))
        .await?;
    let mut response = (StatusCode::CREATED, Json(subscription.view())).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/_subscriptions/{sid}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/_subscriptions` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The `next` cursor of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Every subscription, oldest first (without secrets).
#[utoipa::path(
    get,
    operation_id = "list_subscriptions",
    path = "/v1/_subscriptions",
    tag = "subscriptions",
    params(PageParams),
    responses(
        (status = 200, description = "A page of subscriptions: `{items, next}`", body = Object),
        Malformed, Unavailable,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = state
        .store
        .side_records(
            SideTable::Subscriptions,
            after.as_deref().map(str::as_bytes),
            limit + 1,
        )
        .await?;
    let more = page.len() > limit;
    let items: Vec<Value> = page
        .iter()
        .take(limit)
        .filter_map(|(_, stored)| Subscription::read(stored).map(|s| s.view()))
        .collect();
    Ok(Json(page_by_id(items, more)))
}

/// One subscription (without its secret).
#[utoipa::path(
    get,
    operation_id = "read_subscription",
    path = "/v1/_subscriptions/{sid}",
    tag = "subscriptions",
    params(("sid" = String, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "The subscription", body = Object),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(load(&state, &sid).await?.view()))
}

/// Replaces a subscription's URL, events, filters and secret (the same body as
/// creating one); deliveries already waiting go to the new URL.
#[utoipa::path(
    put,
    operation_id = "replace_subscription",
    path = "/v1/_subscriptions/{sid}",
    tag = "subscriptions",
    params(("sid" = String, Path, description = "The subscription's id")),
    request_body(content = Object, content_type = "application/json", description = "As for creating one"),
    responses(
        (status = 200, description = "The subscription", body = Object),
        Malformed, NotFound, Invalid, Unavailable,
    )
)]
pub async fn replace(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let current = load(&state, &sid).await?;
    let mut subscription = Subscription::parse(sid.clone(), &body, Timestamp::now())?;
    subscription.created_at_ms = current.created_at_ms;
    // Only while it still exists: a delete since `load` stays a delete.
    let commit = SideCommit::new(vec![subscription.record()?])
        .while_present(SideTable::Subscriptions, sid.as_bytes());
    state
        .store
        .commit_side(commit)
        .await
        .map_err(|e| gone_as_not_found(e, &sid))?;
    Ok(Json(subscription.view()))
}

/// The records of `table` whose key starts with `sid` and a 0 byte, after
/// `after` (from the first without it), at most `limit`.
async fn keys_of(
    state: &AppState,
    table: SideTable,
    sid: &str,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, bytes::Bytes)>, ApiError> {
    let prefix = subscription_prefix(sid);
    let mut found = Vec::new();
    let mut after = after.unwrap_or_else(|| prefix.clone());
    while found.len() < limit {
        let want = (limit - found.len()).min(1000);
        let page = state.store.side_records(table, Some(&after), want).await?;
        let full = page.len() == want;
        for (key, value) in page {
            if !key.starts_with(&prefix) {
                return Ok(found);
            }
            after.clone_from(&key);
            found.push((key, value));
        }
        if !full {
            break;
        }
    }
    Ok(found)
}

/// Deletes a subscription, the deliveries still waiting for it, and its log.
#[utoipa::path(
    delete,
    operation_id = "delete_subscription",
    path = "/v1/_subscriptions/{sid}",
    tag = "subscriptions",
    params(("sid" = String, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Deleted"),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    load(&state, &sid).await?;
    let keys = async |table| -> Result<Vec<Vec<u8>>, ApiError> {
        let found = keys_of(&state, table, &sid, None, usize::MAX).await?;
        Ok(found.into_iter().map(|(key, _)| key).collect())
    };
    let writes = subscription_removal(
        &sid,
        keys(SideTable::Outbox).await?,
        keys(SideTable::Deliveries).await?,
    );
    let commit = SideCommit::new(writes).while_present(SideTable::Subscriptions, sid.as_bytes());
    state
        .store
        .commit_side(commit)
        .await
        .map_err(|e| gone_as_not_found(e, &sid))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A subscription's delivery log, oldest first: every attempt with its outcome
/// (`delivered`, `failed`, `gave_up`), status or error, and the next attempt;
/// `pending` counts the deliveries still waiting.
#[utoipa::path(
    get,
    operation_id = "subscription_deliveries",
    path = "/v1/_subscriptions/{sid}/deliveries",
    tag = "subscriptions",
    params(("sid" = String, Path, description = "The subscription's id"), PageParams),
    responses(
        (status = 200, description = "`{items, next, pending}`", body = Object),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn deliveries(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Value>, ApiError> {
    load(&state, &sid).await?;
    let limit = page_limit(params.limit)?;
    // The cursor is the hex of the last key of the page before.
    let after = match params.cursor.as_deref().map(decode_cursor).transpose()? {
        Some(cursor) => Some(
            from_hex(&cursor)
                .ok_or_else(|| ApiError::Malformed("cursor is not one this server made".into()))?,
        ),
        None => None,
    };
    let mut entries = keys_of(&state, SideTable::Deliveries, &sid, after, limit + 1).await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = more
        .then(|| entries.last().map(|(key, _)| encode_cursor(&to_hex(key))))
        .flatten();
    let items: Vec<Value> = entries
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice(v).ok())
        .collect();
    let pending = keys_of(&state, SideTable::Outbox, &sid, None, usize::MAX)
        .await?
        .len();
    Ok(Json(
        json!({"items": items, "next": next, "pending": pending}),
    ))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
