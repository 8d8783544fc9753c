//! The root of the OpenAPI document; the paths come from the handlers themselves.

use utoipa::OpenApi;

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
        (name = "system", description = "Health, metrics, the OpenAPI document and problem pages"),
    ),
    components(schemas(crate::wire::ProblemBody, crate::wire::FieldError))
)]
pub struct ApiDoc;
