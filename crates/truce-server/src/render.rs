//! Rendering versions and write outcomes: the body and the validator headers
//! (`ETag`, `Last-Modified`, `Truce-Version`, `Truce-Revision`, `Cache-Control`).

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use truce_engine::{PolicyApplied, ResourceKey, Version, WriteOutcome, WriteStatus};

use crate::extract::Prefer;
use crate::wire::TombstoneBody;

/// `Truce-Version`: the version number of the representation.
pub const TRUCE_VERSION: HeaderName = HeaderName::from_static("truce-version");
/// `Truce-Revision`: the store revision at which that version was committed.
pub const TRUCE_REVISION: HeaderName = HeaderName::from_static("truce-revision");
/// `Truce-Outcome`: what a write did (`created`, `updated`, `unchanged`, `deleted`),
/// so a client can tell a new version from a write that changed nothing.
pub const TRUCE_OUTCOME: HeaderName = HeaderName::from_static("truce-outcome");

/// `Truce-Merged-From`: the version a stale write merged under the `merge` policy
/// was based on (SPEC §8).
pub const TRUCE_MERGED_FROM: HeaderName = HeaderName::from_static("truce-merged-from");

/// `Truce-Conflict-Id`: the record a conflict policy's automatic outcome left
/// (`auto_merged` or `overwritten`), so a client can look it up.
pub const TRUCE_CONFLICT_ID: HeaderName = HeaderName::from_static("truce-conflict-id");
/// `Preference-Applied` (RFC 7240).
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// Puts the validator and version headers of one version into an answer's
/// headers, so an answer is built in one map rather than merged from two.
pub fn put_version_headers(headers: &mut HeaderMap, key: &ResourceKey, version: &Version) {
    if let Ok(etag) = owned_value(version.etag(key).to_header()) {
        headers.insert(ETAG, etag);
    }
    if let Ok(date) = owned_value(httpdate::fmt_http_date(version.at.to_system_time())) {
        headers.insert(LAST_MODIFIED, date);
    }
    headers.insert(TRUCE_VERSION, HeaderValue::from(version.number));
    headers.insert(TRUCE_REVISION, HeaderValue::from(version.revision));
    // Caches must revalidate with the ETag, so they never serve a stale state.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// A header value that takes a freshly made string as it is (no copy).
fn owned_value(text: String) -> Result<HeaderValue, axum::http::header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text))
}

/// An answer with room for the headers a version's answer carries (the
/// version headers, the write's own, and those the envelope and hyper add),
/// so the map is sized once.
fn answer(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().reserve(ANSWER_HEADERS);
    response
}

/// Headers of a write's answer: 5 version headers, `Content-Type`,
/// `Truce-Outcome`, `Location` or `Truce-Merged-From`, `Truce-Conflict-Id`, and
/// the envelope's `X-Request-Id`.
const ANSWER_HEADERS: usize = 12;

/// A live version's document with its headers.
pub fn document_response(status: StatusCode, key: &ResourceKey, version: &Version) -> Response {
    let mut response = match &version.body {
        Some(body) => {
            let mut response = answer(status, Body::from(body.clone()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        None => {
            let mut response = Json(tombstone(key, version)).into_response();
            *response.status_mut() = status;
            response
        }
    };
    put_version_headers(response.headers_mut(), key, version);
    response
}

/// 304 Not Modified, with the headers a 200 would carry (RFC 9110 §15.4.5).
pub fn not_modified(key: &ResourceKey, version: &Version) -> Response {
    let mut response = answer(StatusCode::NOT_MODIFIED, Body::empty());
    put_version_headers(response.headers_mut(), key, version);
    response
}

/// The answer to an accepted write (or a no-op).
pub fn write_response(outcome: &WriteOutcome, prefer: Prefer) -> Response {
    let key = &outcome.key;
    let version = &outcome.version;
    let status = match outcome.status {
        WriteStatus::Created => StatusCode::CREATED,
        WriteStatus::Updated | WriteStatus::Unchanged | WriteStatus::Deleted => StatusCode::OK,
    };
    let mut response = if prefer.minimal {
        // A creation keeps its 201 (with Location) so the client still learns it
        // created the resource; everything else is 204.
        let minimal_status = if status == StatusCode::CREATED {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        let mut response = answer(minimal_status, Body::empty());
        put_version_headers(response.headers_mut(), key, version);
        response.headers_mut().insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("return=minimal"),
        );
        response
    } else {
        document_response(status, key, version)
    };
    response.headers_mut().insert(
        TRUCE_OUTCOME,
        HeaderValue::from_static(outcome.status.as_str()),
    );
    if let Some(PolicyApplied::Merged { base, .. }) = &outcome.policy {
        response
            .headers_mut()
            .insert(TRUCE_MERGED_FROM, HeaderValue::from(*base));
    }
    if let Some(cid) = &outcome.conflict_id
        && let Ok(value) = HeaderValue::from_str(cid)
    {
        response.headers_mut().insert(TRUCE_CONFLICT_ID, value);
    }
    if status == StatusCode::CREATED
        && let Ok(location) = owned_value(format!("/v1/{}/{}", key.collection, key.id))
    {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// The body describing a tombstone version.
pub fn tombstone(key: &ResourceKey, version: &Version) -> TombstoneBody {
    TombstoneBody {
        deleted: true,
        id: key.id.as_str().to_owned(),
        version: version.number,
        etag: version.etag(key).to_header(),
        revision: version.revision,
        deleted_at: version.at.rfc3339(),
    }
}
