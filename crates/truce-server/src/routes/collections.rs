//! Collection settings (SPEC §8): `GET` and `PUT /v1/_collections/{c}`, versioned
//! with an ETag like a document. A collection never configured answers its
//! defaults at version 0.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::Value;
use truce_engine::{CollectionSettings, SettingsCommand, SideTable, StoredSettings};

use crate::error::ApiError;
use crate::extract::By;
use crate::extract::{CollectionPath, Conditions, JsonBody, Prefer};
use crate::idempotency::Keyed;
use crate::openapi::{Invalid, Malformed, PreconditionFailed, Unavailable};
use crate::render::{PREFERENCE_APPLIED, TRUCE_OUTCOME, TRUCE_VERSION};
use crate::state::AppState;

/// The settings document with its validators.
fn settings_response(stored: &StoredSettings) -> Response {
    let mut headers = HeaderMap::with_capacity(4);
    if let Ok(etag) = HeaderValue::from_str(&stored.etag().to_header()) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(TRUCE_VERSION, HeaderValue::from(stored.version));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, Json(stored.settings.to_value())).into_response()
}

/// A collection's settings: `conflict_policy`, `require_preconditions` and
/// `history`, every key present. `ETag` and `Truce-Version` (0: never configured)
/// are what `If-Match` on a `PUT` compares with.
#[utoipa::path(
    get,
    path = "/v1/_collections/{collection}",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name")),
    responses(
        (status = 200, description = "The settings, with `ETag` and `Truce-Version`", body = Object,
            headers(("ETag" = String), ("Truce-Version" = u64))),
        Malformed, Unavailable,
    )
)]
pub async fn get_settings(
    State(state): State<AppState>,
    CollectionPath(collection): CollectionPath,
) -> Result<Response, ApiError> {
    let stored = state
        .store
        .side_record(SideTable::Collections, collection.as_str().as_bytes())
        .await?;
    let stored = StoredSettings::read(&collection, stored.as_deref())?;
    Ok(settings_response(&stored))
}

/// Replaces a collection's settings (a key left out takes its default). Keys of
/// SPEC §8 this server does not implement yet, and unknown keys, are refused
/// with 422 naming each. Guard with `If-Match` of the current ETag (or
/// `If-None-Match: *` for "never configured"); writes queued after this one are
/// planned under the new settings.
#[utoipa::path(
    put,
    path = "/v1/_collections/{collection}",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name")),
    request_body(content = Object, content_type = "application/json",
        description = "`{conflict_policy: reject|merge|last_write_wins, require_preconditions: bool, history: {max_versions, max_age}}`"),
    responses(
        (status = 200, description = "The settings now in force; `Truce-Outcome` is `updated` or `unchanged`", body = Object,
            headers(("ETag" = String), ("Truce-Version" = u64), ("Truce-Outcome" = String), ("Preference-Applied" = String))),
        (status = 204, description = "With `Prefer: return=minimal`: the headers only",
            headers(("ETag" = String), ("Truce-Version" = u64), ("Truce-Outcome" = String), ("Preference-Applied" = String))),
        Malformed, PreconditionFailed, Invalid, Unavailable,
    )
)]
pub async fn put_settings(
    State(state): State<AppState>,
    CollectionPath(collection): CollectionPath,
    Conditions(preconditions): Conditions,
    prefer: Prefer,
    (keyed, By(by)): (Keyed, By),
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let settings = CollectionSettings::parse(&body)?;
    let outcome = state
        .store
        .configure(SettingsCommand {
            collection,
            settings,
            preconditions,
            by,
            idempotency: keyed.attach(move |outcome| configured_response(outcome, prefer)),
        })
        .await?;
    Ok(configured_response(&outcome, prefer))
}

/// The settings now in force, with `Truce-Outcome` (`updated` or `unchanged`).
fn configured_response(outcome: &truce_engine::SettingsOutcome, prefer: Prefer) -> Response {
    let mut response = settings_response(&outcome.stored);
    let word = if outcome.changed {
        "updated"
    } else {
        "unchanged"
    };
    response
        .headers_mut()
        .insert(TRUCE_OUTCOME, HeaderValue::from_static(word));
    if prefer.minimal {
        let headers = std::mem::take(response.headers_mut());
        let mut minimal = (StatusCode::NO_CONTENT, headers).into_response();
        minimal.headers_mut().remove(header::CONTENT_TYPE);
        minimal.headers_mut().insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("return=minimal"),
        );
        return minimal;
    }
    response
}
