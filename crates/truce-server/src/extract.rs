//! Extractors: turning the parts of a request into checked values, or into the
//! precise problem for what is wrong with them.
//!
//! Paths become validated names, conditional headers become engine
//! [`Preconditions`], bodies are read under the size limit and the body timeout and
//! checked for their media type before the engine parses them. Every rejection is an
//! [`ApiError`], so malformed input always gets a problem answer.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use truce_engine::{
    CollectionName, Document, JsonPatch, KeyCheck, Preconditions, Principal, ResourceKey,
    TagCondition, Timestamp, WriteAction, describe_json_error,
};

use crate::error::ApiError;
use crate::state::AppState;

/// `{collection}` of the path, validated.
pub struct CollectionPath(pub CollectionName);

/// `{collection}/{id}` of the path, validated.
pub struct ResourcePath(pub ResourceKey);

/// `{collection}/{id}/versions/{n}` of the path, validated.
pub struct VersionPath {
    /// The resource.
    pub key: ResourceKey,
    /// The version number.
    pub number: u64,
}

/// Extracts the path parameters as `T` (a string or a tuple of strings).
async fn path_params<T>(parts: &mut Parts) -> Result<T, ApiError>
where
    T: DeserializeOwned + Send,
{
    Path::<T>::from_request_parts(parts, &())
        .await
        .map(|Path(params)| params)
        .map_err(|_| {
            ApiError::Malformed("the path is not valid (check its percent-encoding)".into())
        })
}

impl<S: Send + Sync> FromRequestParts<S> for CollectionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let collection: String = path_params(parts).await?;
        Ok(Self(CollectionName::parse(&collection)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ResourcePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let (collection, id): (String, String) = path_params(parts).await?;
        Ok(Self(ResourceKey::parse(&collection, &id)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VersionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let (collection, id, raw): (String, String, String) = path_params(parts).await?;
        let key = ResourceKey::parse(&collection, &id)?;
        let number = raw.parse().map_err(|_| {
            ApiError::Malformed(format!("version {raw:?} is not a non-negative integer"))
        })?;
        Ok(Self { key, number })
    }
}

/// Query parameters, with a problem answer for malformed ones.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Names and value types were checked against the OpenAPI document already
        // (see `crate::query`); what remains is a value the type cannot hold.
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| Self(value))
            .map_err(|_| ApiError::Malformed("a query parameter has a value out of range".into()))
    }
}

/// `Truce-Resolves: {cid}` (SPEC §7): the conflict record a write retries.
pub struct Resolves(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Resolves {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HeaderName::from_static("truce-resolves")) else {
            return Ok(Self(None));
        };
        let id = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
        truce_engine::check_conflict_id(&id).map_err(|e| {
            ApiError::Malformed(format!("Truce-Resolves must name a conflict record: {e}"))
        })?;
        Ok(Self(Some(id)))
    }
}

/// `Lock-Token` (SPEC §4): the lease a request acts under.
pub struct LockToken(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LockToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HeaderName::from_static("lock-token")) else {
            return Ok(Self(None));
        };
        let token = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
        truce_engine::check_lock_token(&token)?;
        Ok(Self(Some(token)))
    }
}

/// `Truce-Txn` (SPEC §5): the interactive transaction a request belongs to.
pub struct TxnId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for TxnId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HeaderName::from_static("truce-txn")) else {
            return Ok(Self(None));
        };
        let id = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
        crate::routes::sessions::check_txn_id(&id)?;
        Ok(Self(Some(id)))
    }
}

/// The RFC 9110 conditional headers of the request.
pub struct Conditions(pub Preconditions);

impl<S: Send + Sync> FromRequestParts<S> for Conditions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        Ok(Self(Preconditions {
            if_match: tag_condition(headers, "if-match")?,
            if_none_match: tag_condition(headers, "if-none-match")?,
            if_unmodified_since: http_date(headers, "if-unmodified-since"),
            if_modified_since: http_date(headers, "if-modified-since"),
        }))
    }
}

/// Parses every line of an `If-Match` / `If-None-Match` field; bad syntax is a 400.
fn tag_condition(
    headers: &HeaderMap,
    name: &'static str,
) -> Result<Option<TagCondition>, ApiError> {
    let lines: Vec<String> = headers
        .get_all(HeaderName::from_static(name))
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if lines.is_empty() {
        return Ok(None);
    }
    TagCondition::parse(lines.iter().map(String::as_str))
        .map(Some)
        .map_err(|e| ApiError::Malformed(format!("invalid {name} header: {e}")))
}

/// An HTTP-date in whole seconds. RFC 9110 §13.1.3 and §13.1.4: an invalid date is
/// ignored, not an error.
fn http_date(headers: &HeaderMap, name: &'static str) -> Option<u64> {
    let value = headers.get(HeaderName::from_static(name))?.to_str().ok()?;
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    Some(Timestamp::from_system_time(time).secs())
}

/// `Prefer: return=minimal` (RFC 7240).
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefer {
    /// The client asked for headers only.
    pub minimal: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Prefer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let minimal = parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|pref| pref.split(';').next())
            .filter_map(|pref| pref.split_once('='))
            .any(|(name, value)| {
                name.trim().eq_ignore_ascii_case("return")
                    && value
                        .trim()
                        .trim_matches('"')
                        .eq_ignore_ascii_case("minimal")
            });
        Ok(Self { minimal })
    }
}

/// The media type of the body, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    Some(essence)
}

/// Who sends the request (the key's name; `anonymous` without keys), as the
/// authentication middleware found it.
pub struct By(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for By {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned();
        Ok(Self(principal.unwrap_or_else(Principal::anonymous)))
    }
}

/// What a document write reads from its head besides the target: its
/// preconditions, `Truce-Resolves`, `Prefer`, its idempotency ticket and who
/// sends it.
pub struct WriteHeaders {
    /// Who sends it.
    pub by: Principal,
    /// RFC 9110 conditional headers.
    pub preconditions: Preconditions,
    /// `Truce-Resolves`.
    pub resolves: Option<String>,
    /// `Prefer: return=minimal`.
    pub prefer: Prefer,
    /// The `Idempotency-Key` ticket, if keyed.
    pub keyed: crate::idempotency::Keyed,
    /// `Lock-Token`.
    pub lock_token: Option<String>,
    /// `Truce-Txn`: the write is buffered in this interactive transaction.
    pub txn: Option<String>,
    /// What the caller's key must still be when the write commits, when the
    /// admission checks left that to the commit.
    pub key_check: Option<KeyCheck>,
}

impl<S: Send + Sync> FromRequestParts<S> for WriteHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Conditions(preconditions) = Conditions::from_request_parts(parts, state).await?;
        let Resolves(resolves) = Resolves::from_request_parts(parts, state).await?;
        let By(by) = By::from_request_parts(parts, state).await?;
        Ok(Self {
            by,
            preconditions,
            resolves,
            prefer: Prefer::from_request_parts(parts, state).await?,
            keyed: crate::idempotency::Keyed::from_request_parts(parts, state).await?,
            lock_token: LockToken::from_request_parts(parts, state).await?.0,
            txn: TxnId::from_request_parts(parts, state).await?.0,
            key_check: parts.extensions.get::<KeyCheck>().cloned(),
        })
    }
}

/// Reads the body within the size limit and the body timeout.
pub(crate) async fn read_request_body(
    request: Request,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    let limit = body_limit(state, request.uri().path());
    let (parts, body) = request.into_parts();
    read_body(&parts.headers, body, state, limit).await
}

/// The largest body a request to `path` may send: a transaction's
/// ([`truce_engine::MAX_TXN_BYTES`]) for `/v1/_txn`, the server's
/// `--max-body-bytes` for everything else.
pub(crate) fn body_limit(state: &AppState, path: &str) -> usize {
    if path == "/v1/_txn" {
        truce_engine::MAX_TXN_BYTES
    } else {
        state.config.limits.max_body_bytes
    }
}

/// Reads a body of at most `limit` bytes within the body timeout.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    state: &AppState,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(coding) = headers.get(CONTENT_ENCODING)
        && !coding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::UnsupportedMediaType {
            detail: "content codings are not accepted; send the body uncompressed".into(),
            accept_patch: false,
        });
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match tokio::time::timeout(state.config.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::BodyTimeout(state.config.body_timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let too_large = error
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if too_large {
                Err(ApiError::PayloadTooLarge { limit })
            } else {
                Err(ApiError::Malformed(
                    "the request body could not be read".into(),
                ))
            }
        }
    }
}

/// Refuses a body whose media type is not `application/json`.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers).as_deref() {
        Some("application/json") => Ok(()),
        Some(other) => Err(ApiError::UnsupportedMediaType {
            detail: format!("expected Content-Type: application/json, got {other}"),
            accept_patch: false,
        }),
        None => Err(ApiError::UnsupportedMediaType {
            detail: "send the body with Content-Type: application/json".into(),
            accept_patch: false,
        }),
    }
}

/// A document body (`PUT`, `POST`): `application/json`, a JSON object within limits.
pub struct DocumentBody(pub Document);

impl FromRequest<AppState> for DocumentBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        let bytes = read_request_body(request, state).await?;
        Ok(Self(Document::parse(&bytes, state.config.limits)?))
    }
}

/// A `PATCH` body: a merge patch or a JSON Patch, by media type.
pub struct PatchBody(pub WriteAction);

impl FromRequest<AppState> for PatchBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let media = media_type(request.headers());
        let is_merge = match media.as_deref() {
            Some("application/merge-patch+json") => true,
            Some("application/json-patch+json") => false,
            other => {
                return Err(ApiError::UnsupportedMediaType {
                    detail: format!(
                        "PATCH accepts application/merge-patch+json or application/json-patch+json, got {}",
                        other.unwrap_or("no Content-Type")
                    ),
                    accept_patch: true,
                });
            }
        };
        let bytes = read_request_body(request, state).await?;
        if is_merge {
            let patch: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::Malformed(describe_json_error(
                    "the body",
                    &e,
                    state.config.limits.max_depth,
                ))
            })?;
            Ok(Self(WriteAction::MergePatch(patch)))
        } else {
            Ok(Self(WriteAction::JsonPatch(JsonPatch::parse(&bytes)?)))
        }
    }
}

/// A small JSON request body (`application/json`) of a known shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        let bytes = read_request_body(request, state).await?;
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            ApiError::Malformed(describe_json_error(
                "the body",
                &e,
                state.config.limits.max_depth,
            ))
        })
    }
}
