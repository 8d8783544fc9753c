//! Cross-origin requests from browsers (CORS), off unless origins are named.
//!
//! With `--cors-origin` a page served from one of those origins may call the
//! API: preflights are answered with the methods and request headers truce
//! reads (the conditional headers, `Prefer`, `Truce-Resolves`, `Last-Event-ID`,
//! `Authorization`, ...), and answers expose the headers a client needs to act
//! on (`ETag`, `Location`, the `Truce-*` headers, `Retry-After`, ...). No
//! credentials mode: truce's keys travel in `Authorization`, never in cookies.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a browser may send.
const REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "idempotency-key",
    "last-event-id",
    "lock-token",
    "prefer",
    "truce-resolves",
    "truce-txn",
    "x-request-id",
];

/// Response headers a page may read.
const EXPOSED_HEADERS: &[&str] = &[
    "etag",
    "last-modified",
    "location",
    "retry-after",
    "x-request-id",
    "truce-version",
    "truce-revision",
    "truce-outcome",
    "truce-merged-from",
    "truce-conflict-id",
    "accept-patch",
    "allow",
];

/// The layer for `origins`, or `None` when CORS is off. An origin that is not
/// a valid header value is an error naming it.
pub(crate) fn layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin.trim_end_matches('/'))
                    .map_err(|_| format!("{origin:?} is not an origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let names = |list: &'static [&'static str]| {
        list.iter()
            .map(|name| HeaderName::from_static(name))
            .collect::<Vec<_>>()
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::PATCH,
                Method::POST,
                Method::DELETE,
            ])
            .allow_headers(names(REQUEST_HEADERS))
            .expose_headers(names(EXPOSED_HEADERS))
            .max_age(Duration::from_secs(600)),
    ))
}

/// Whether every one of `origins` can be used (for checking settings before
/// serving).
pub fn check_origins(origins: &[String]) -> Result<(), String> {
    layer(origins).map(|_| ())
}
