//! The one table of problem kinds: HTTP status, slug, title and a human explanation.
//!
//! Every client-facing error in truce maps to exactly one row here. The server renders
//! `application/problem+json` with `type: /problems/{slug}` and serves the explanation
//! as a page at that path; the client crate maps slugs back to typed errors. Handlers
//! never pick a status code by hand.

/// A kind of problem a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// Bad JSON, bad header syntax, bad name, nesting too deep.
    MalformedRequest,
    /// No API key, or a key that is not known.
    Unauthenticated,
    /// The key's roles do not allow this request.
    Forbidden,
    /// No such resource, version or route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The client was too slow sending its request.
    RequestTimeout,
    /// `?if_version` did not match the current version.
    VersionConflict,
    /// A three-way merge found overlapping edits.
    MergeConflict,
    /// A state-machine transition that is not allowed.
    StateConflict,
    /// A unique field's value is taken by another resource.
    UniqueConflict,
    /// A field fixed at creation was changed.
    ImmutableField,
    /// A JSON Patch `test` operation failed.
    PatchTestFailed,
    /// A JSON Patch operation does not fit the current document (missing path, ...).
    PatchConflict,
    /// A transaction's validation failed.
    TransactionConflict,
    /// A request with the same idempotency key is still being processed.
    IdempotencyInFlight,
    /// The version or revision asked for is older than what history keeps.
    HistoryCompacted,
    /// An RFC 9110 precondition was false.
    PreconditionFailed,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The request target is longer than the server reads.
    UriTooLong,
    /// The request's header fields are too large or too many.
    HeaderFieldsTooLarge,
    /// The body's media type is not accepted here.
    UnsupportedMediaType,
    /// The document is well-formed but not acceptable (schema, shape).
    ValidationFailed,
    /// The idempotency key was used before for a different request.
    IdempotencyKeyReused,
    /// The resource is locked by someone else, or the caller's lease is gone.
    Locked,
    /// The collection requires a precondition and none was sent.
    PreconditionRequired,
    /// Too many requests.
    RateLimited,
    /// A bug or an unexpected failure inside truce.
    Internal,
    /// Overloaded or storage unavailable; try again later.
    Unavailable,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemInfo {
    /// The HTTP status code.
    pub status: u16,
    /// The slug: `type` is `/problems/{slug}`.
    pub slug: &'static str,
    /// A short, fixed title.
    pub title: &'static str,
    /// What it means and what the client should do, for the problem's page.
    pub explanation: &'static str,
}

impl ProblemKind {
    /// Every kind, in the order of the table.
    pub const ALL: [ProblemKind; 28] = [
        Self::MalformedRequest,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::VersionConflict,
        Self::MergeConflict,
        Self::StateConflict,
        Self::UniqueConflict,
        Self::ImmutableField,
        Self::PatchTestFailed,
        Self::PatchConflict,
        Self::TransactionConflict,
        Self::IdempotencyInFlight,
        Self::HistoryCompacted,
        Self::PreconditionFailed,
        Self::PayloadTooLarge,
        Self::UriTooLong,
        Self::HeaderFieldsTooLarge,
        Self::UnsupportedMediaType,
        Self::ValidationFailed,
        Self::IdempotencyKeyReused,
        Self::Locked,
        Self::PreconditionRequired,
        Self::RateLimited,
        Self::Internal,
        Self::Unavailable,
    ];

    /// The row of the table for this kind.
    pub const fn info(self) -> ProblemInfo {
        let (status, slug, title, explanation) = match self {
            Self::MalformedRequest => (
                400,
                "malformed-request",
                "Malformed request",
                "The request could not be understood: the body is not valid JSON or not a JSON object, \
                 a header has invalid syntax, a collection name or id does not match its pattern, or the \
                 document nests deeper than the limit. Fix the request; repeating it unchanged will fail again.",
            ),
            Self::Unauthenticated => (
                401,
                "unauthenticated",
                "Authentication required",
                "No API key was sent, or the key is not known. Send `Authorization: Bearer <key>`.",
            ),
            Self::Forbidden => (
                403,
                "forbidden",
                "Forbidden",
                "The API key is valid but its roles do not allow this request.",
            ),
            Self::NotFound => (
                404,
                "not-found",
                "Not found",
                "There is no such resource, version or route. For a deleted resource the body carries \
                 `deleted_at` and the tombstone's `version`; a `PUT` re-creates it and numbering continues.",
            ),
            Self::MethodNotAllowed => (
                405,
                "method-not-allowed",
                "Method not allowed",
                "The path exists but does not accept this method; the `Allow` header lists those it does.",
            ),
            Self::RequestTimeout => (
                408,
                "request-timeout",
                "Request timeout",
                "The client did not send its request body in time. Nothing was written.",
            ),
            Self::VersionConflict => (
                409,
                "version-conflict",
                "Version conflict",
                "`?if_version` named a version that is not the current one (`0` means the resource must \
                 not exist). The body carries `expected_version`, `current_version` and `current_etag`: \
                 read the current version, re-apply your change and retry.",
            ),
            Self::MergeConflict => (
                409,
                "merge-conflict",
                "Merge conflict",
                "A three-way merge found edits to the same paths on both sides. `paths` lists each with \
                 its base, ours and theirs values; resolve them and write again.",
            ),
            Self::StateConflict => (
                409,
                "state-conflict",
                "State transition not allowed",
                "The write would move the state field along a transition the collection does not allow; \
                 `from`, `to` and `allowed` say which.",
            ),
            Self::UniqueConflict => (
                409,
                "unique-conflict",
                "Unique value taken",
                "Another resource already holds this value of a unique field; `field` and `holder` say which.",
            ),
            Self::ImmutableField => (
                409,
                "immutable-field",
                "Immutable field changed",
                "The write changes a field that is fixed at creation; `field` names it.",
            ),
            Self::PatchTestFailed => (
                409,
                "patch-test-failed",
                "JSON Patch test failed",
                "A `test` operation of the JSON Patch did not hold against the current document, so \
                 nothing was applied. `operation` is the index of the failed operation and `path` its target.",
            ),
            Self::PatchConflict => (
                409,
                "patch-conflict",
                "Patch does not fit the document",
                "A JSON Patch operation refers to a location that the current document does not have \
                 (RFC 5789 §2.2, conflicting state). Nothing was applied; `operation` and `path` say which \
                 operation failed.",
            ),
            Self::TransactionConflict => (
                409,
                "transaction-conflict",
                "Transaction conflict",
                "The transaction's validation failed and nothing was applied; `failed_op` or `resources` \
                 say why.",
            ),
            Self::IdempotencyInFlight => (
                409,
                "idempotency-in-flight",
                "Request with this key still in flight",
                "A request with the same Idempotency-Key is still being processed. Retry after `Retry-After`.",
            ),
            Self::HistoryCompacted => (
                410,
                "history-compacted",
                "History compacted",
                "The version or revision asked for is older than the retention keeps. `oldest` is the \
                 oldest one still available.",
            ),
            Self::PreconditionFailed => (
                412,
                "precondition-failed",
                "Precondition failed",
                "A conditional header (If-Match, If-Unmodified-Since, If-None-Match) was false, so the \
                 write was not applied. The body and the `ETag` header carry the current version: read it, \
                 re-apply your change and retry with the new ETag.",
            ),
            Self::PayloadTooLarge => (
                413,
                "payload-too-large",
                "Payload too large",
                "The body is larger than the configured limit (1 MiB by default).",
            ),
            Self::UriTooLong => (
                414,
                "uri-too-long",
                "Request target too long",
                "The request's path and query are longer than the server reads (about 64 KiB). Shorten \
                 them: send long selections in a body instead.",
            ),
            Self::HeaderFieldsTooLarge => (
                431,
                "header-fields-too-large",
                "Request header fields too large",
                "The request's header fields are too many (more than 100) or too large (about 400 KiB \
                 in all). The connection is closed after this answer. Send fewer or smaller headers.",
            ),
            Self::UnsupportedMediaType => (
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "The body's Content-Type is not accepted here. Documents are `application/json`; PATCH \
                 accepts the types listed in `Accept-Patch`.",
            ),
            Self::ValidationFailed => (
                422,
                "validation-failed",
                "Validation failed",
                "The document is well-formed JSON but not acceptable: `errors` lists each problem with a \
                 JSON pointer and a message.",
            ),
            Self::IdempotencyKeyReused => (
                422,
                "idempotency-key-reused",
                "Idempotency key reused",
                "The Idempotency-Key was already used for a different request. Use a fresh key.",
            ),
            Self::Locked => (
                423,
                "locked",
                "Locked",
                "The resource is locked by another holder, or this request's lock expired or was broken. \
                 `holder` and `expires_at` describe the lock; retry after `Retry-After`.",
            ),
            Self::PreconditionRequired => (
                428,
                "precondition-required",
                "Precondition required",
                "This collection requires every write to carry If-Match, If-None-Match: * or ?if_version, \
                 so that no write can silently overwrite another.",
            ),
            Self::RateLimited => (
                429,
                "rate-limited",
                "Rate limited",
                "Too many requests. Wait for `Retry-After` seconds; the RateLimit headers show the budget.",
            ),
            Self::Internal => (
                500,
                "internal-error",
                "Internal error",
                "Something failed inside truce. Nothing about the failure is shown here; the `request_id` \
                 lets an operator find it in the logs.",
            ),
            Self::Unavailable => (
                503,
                "unavailable",
                "Service unavailable",
                "truce is overloaded or its storage is unavailable. Nothing was written; retry after \
                 `Retry-After`.",
            ),
        };
        ProblemInfo {
            status,
            slug,
            title,
            explanation,
        }
    }

    /// Finds the kind for a slug (the client maps answers back with this).
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.info().slug == slug)
    }

    /// The slug: `type` is `/problems/{slug}`.
    pub const fn slug(self) -> &'static str {
        self.info().slug
    }

    /// The HTTP status code.
    pub const fn status(self) -> u16 {
        self.info().status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn slugs_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for kind in ProblemKind::ALL {
            assert!(seen.insert(kind.slug()), "duplicate slug {}", kind.slug());
            assert_eq!(ProblemKind::from_slug(kind.slug()), Some(kind));
        }
        assert_eq!(ProblemKind::from_slug("nope"), None);
    }

    /// The table of SPEC §3, copied by hand (not derived from the code), plus the
    /// slugs truce adds for what HTTP itself can get wrong. Every row must be in
    /// the code's table with this status, and the code's table must hold nothing
    /// else.
    #[test]
    fn the_table_is_the_contracts() {
        const SPEC: &[(&str, u16)] = &[
            ("malformed-request", 400),
            ("unauthenticated", 401),
            ("forbidden", 403),
            ("not-found", 404),
            ("version-conflict", 409),
            ("merge-conflict", 409),
            ("state-conflict", 409),
            ("unique-conflict", 409),
            ("immutable-field", 409),
            ("patch-test-failed", 409),
            ("transaction-conflict", 409),
            ("idempotency-in-flight", 409),
            ("history-compacted", 410),
            ("precondition-failed", 412),
            ("payload-too-large", 413),
            ("unsupported-media-type", 415),
            ("validation-failed", 422),
            ("idempotency-key-reused", 422),
            ("locked", 423),
            ("precondition-required", 428),
            ("rate-limited", 429),
            ("unavailable", 503),
        ];
        /// Not in the contract's table; documented in docs/HTTP.md.
        const ADDED: &[(&str, u16)] = &[
            ("method-not-allowed", 405),
            ("request-timeout", 408),
            ("patch-conflict", 409),
            ("uri-too-long", 414),
            ("header-fields-too-large", 431),
            ("internal-error", 500),
        ];
        let expected: HashSet<(&str, u16)> = SPEC.iter().chain(ADDED).copied().collect();
        let actual: HashSet<(&str, u16)> = ProblemKind::ALL
            .iter()
            .map(|k| (k.slug(), k.status()))
            .collect();
        assert_eq!(actual, expected);
    }
}
