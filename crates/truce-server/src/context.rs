//! The per-request envelope every request passes through: request id, panic
//! containment, the access log line and request metrics.
//!
//! The request id comes from the client's `X-Request-Id` (if it is sane) or is made
//! here, is echoed on the response, and is put in a task-local [`RequestContext`] so
//! problem bodies and log lines can carry it, and the request's path, without every
//! handler passing them along. A panic anywhere in a handler is caught here and becomes a 500 problem
//! that carries only the request id; the connection and the server live on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use crate::error::ApiError;

/// Header carrying the request id in both directions.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest client-supplied request id that is accepted as is.
const MAX_REQUEST_ID: usize = 128;

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// Who the current request is, for problem bodies and logs.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id (echoed in `X-Request-Id`).
    pub id: Arc<str>,
    /// The request path, used as the problem's `instance`.
    pub path: Arc<str>,
}

impl RequestContext {
    /// The context of the request being handled on this task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` as this request (on another thread, say), so what it renders
    /// names the request as a handler would.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

/// Middleware: request id, panic containment, access log and metrics.
pub async fn request_envelope(request: Request, next: Next) -> Response {
    enveloped(request, move |request| next.run(request)).await
}

/// The envelope around `rest`, the remaining layers and the handler: the
/// router's own layer above, or one that also runs the admission checks.
pub(crate) async fn enveloped<Rest, Handled>(request: Request, rest: Rest) -> Response
where
    Rest: FnOnce(Request) -> Handled,
    Handled: Future<Output = Response>,
{
    let started = Instant::now();
    let id: Arc<str> = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map_or_else(|| Arc::from(ulid::Ulid::generate().to_string()), Arc::from);
    let method = request.method().clone();
    let path: Arc<str> = Arc::from(request.uri().path());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let context = RequestContext {
        id: Arc::clone(&id),
        path: Arc::clone(&path),
    };
    let handled = CURRENT
        .scope(
            context.clone(),
            AssertUnwindSafe(async move {
                // Query parameters the route does not declare never reach a handler.
                match crate::query::refusal(&request) {
                    Some(refusal) => refusal.into_response(),
                    None => rest(request).await,
                }
            })
            .catch_unwind(),
        )
        .await;
    let mut response = CURRENT.sync_scope(context, || match handled {
        Ok(response) => normalize(response),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".into());
            tracing::error!(request_id = %id, panic = %message, "handler panicked");
            metrics::counter!("truce_handler_panics_total").increment(1);
            ApiError::Panic.into_response()
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    tracing::info!(
        request_id = %id,
        method = %method,
        path = %path,
        status,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    crate::metrics::record_request(&route, method_label(&method), status, elapsed);
    response
}

/// Turns the router's own bare answers (405 without a body) into problems, keeping
/// the `Allow` header.
fn normalize(response: Response) -> Response {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(CONTENT_TYPE)
    {
        let allow = response.headers().get(axum::http::header::ALLOW).cloned();
        let mut problem = ApiError::MethodNotAllowed.into_response();
        if let Some(allow) = allow {
            problem
                .headers_mut()
                .insert(axum::http::header::ALLOW, allow);
        }
        return problem;
    }
    response
}

/// The method as a static label (metrics keep their labels for the process's life).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Visible ASCII, bounded length: safe to log and echo.
fn is_sane_request_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.bytes().all(|b| b.is_ascii_graphic())
}
