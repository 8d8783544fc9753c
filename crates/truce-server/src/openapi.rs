//! The root of the OpenAPI document, and the problem responses handlers share.
//!
//! Paths come from the handlers' `#[utoipa::path]` attributes. The problem responses
//! below are documentation types (never built): each is one status of the problem
//! table with the `Problem` schema, so every operation lists its problems by name.

#![allow(dead_code)]

use utoipa::{IntoResponses, OpenApi};

use crate::wire::ProblemBody;

/// General information, tags and shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "truce",
        description = "A conflict-aware JSON document store over HTTP. Every write is versioned; \
            stale writes are refused with a precise problem (RFC 9457) instead of silently \
            overwriting someone else's work.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "documents", description = "Versioned JSON documents with RFC 9110 preconditions"),
        (name = "history", description = "Past versions, diffs and reverts"),
        (name = "changes", description = "The change feed and watches"),
        (name = "conflicts", description = "Conflict records: refused writes, kept"),
        (name = "subscriptions", description = "Webhook subscriptions to conflict events, and their delivery logs"),
        (name = "collections", description = "Collection settings: conflict policy, required preconditions, history"),
        (name = "locks", description = "Pessimistic locks: leases with FIFO waiting and fencing tokens"),
        (name = "transactions", description = "Atomic batches of ops across collections"),
        (name = "keys", description = "API keys and their roles (admin)"),
        (name = "system", description = "Health, metrics, the OpenAPI document and problem pages"),
    ),
    components(schemas(crate::wire::ProblemBody, crate::wire::FieldError, crate::wire::ResourceRef))
)]
pub struct ApiDoc;

/// 400 `malformed-request`.
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "`malformed-request`: bad JSON, name, header or parameter",
    content_type = "application/problem+json"
)]
pub struct Malformed(ProblemBody);

/// 404 `not-found`.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "`not-found`: no such resource or version; for a deleted resource the body adds `deleted_at` and the tombstone's `version`",
    content_type = "application/problem+json"
)]
pub struct NotFound(ProblemBody);

/// 409: a conflict with the current state.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "`version-conflict` (`?if_version` mismatch, adds `expected_version`), `patch-test-failed`, `patch-conflict`, or `merge-conflict` (under the `merge` policy: `base_version`, `paths` and `overlaps` with base/ours/theirs); carries `current_version`, `current_etag` and, when the refusal was recorded, `conflict_id`",
    content_type = "application/problem+json"
)]
pub struct Conflict(ProblemBody);

/// 410 `history-compacted`.
#[derive(IntoResponses)]
#[response(
    status = 410,
    description = "`history-compacted`: older than what retention keeps; `oldest` is the oldest still available",
    content_type = "application/problem+json"
)]
pub struct Compacted(ProblemBody);

/// 412 `precondition-failed`.
#[derive(IntoResponses)]
#[response(
    status = 412,
    description = "`precondition-failed`: If-Match, If-Unmodified-Since or If-None-Match was false; carries `current_version`, `current_etag` and the `ETag` header, and `current_matches_request: true` when the current content already equals what the request would make",
    content_type = "application/problem+json"
)]
pub struct PreconditionFailed(ProblemBody);

/// 422 `validation-failed`.
#[derive(IntoResponses)]
#[response(
    status = 422,
    description = "`validation-failed`: the result is not a JSON object within the limits; `errors` lists each problem",
    content_type = "application/problem+json"
)]
pub struct Invalid(ProblemBody);

/// 428 `precondition-required`.
#[derive(IntoResponses)]
#[response(
    status = 428,
    description = "`precondition-required`: the collection requires If-Match, If-None-Match: * or ?if_version",
    content_type = "application/problem+json"
)]
pub struct PreconditionRequired(ProblemBody);

/// 423 `locked`.
#[derive(IntoResponses)]
#[response(
    status = 423,
    description = "`locked`: the resource is locked by another holder (`holder` with its `fence`, `owner` and `by`; `expires_at` and `Retry-After` say when its lease runs out), or the request's Lock-Token no longer holds the lock (its lease ran out, was broken or released); a refused write carries `conflict_id`",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds until the holder's lease runs out"))
)]
pub struct Locked(ProblemBody);

/// 503 `unavailable`.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "`unavailable`: overloaded or storage unavailable; nothing was written; see `Retry-After`",
    content_type = "application/problem+json"
)]
pub struct Unavailable(ProblemBody);

/// The problems of reading a request body.
#[derive(IntoResponses)]
pub enum BodyProblems {
    /// 408 `request-timeout`.
    #[response(
        status = 408,
        description = "`request-timeout`: the body did not arrive in time",
        content_type = "application/problem+json"
    )]
    Timeout(ProblemBody),
    /// 413 `payload-too-large`.
    #[response(
        status = 413,
        description = "`payload-too-large`: the body is over the limit (`limit`)",
        content_type = "application/problem+json"
    )]
    TooLarge(ProblemBody),
    /// 415 `unsupported-media-type`.
    #[response(
        status = 415,
        description = "`unsupported-media-type`: wrong Content-Type or a content coding; PATCH answers with `Accept-Patch`",
        content_type = "application/problem+json",
        headers(("Accept-Patch" = String, description = "Media types PATCH accepts"))
    )]
    MediaType(ProblemBody),
}
