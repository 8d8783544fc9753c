//! Errors of the HTTP layer, and their one mapping onto the problem table.
//!
//! [`ApiError`] adds what only HTTP can get wrong (headers, media types, body size
//! and timing, routes) to the engine's errors. Each variant names its
//! [`ProblemKind`]; the status code always comes from the table.

use std::time::Duration;

use axum::http::header::CONNECTION;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use truce_engine::{EngineError, NameError, Problem, ProblemKind};

use crate::problem::problem_response;

/// Media types `PATCH` accepts, for `Accept-Patch`.
pub const ACCEPTED_PATCH_TYPES: &str = "application/merge-patch+json, application/json-patch+json";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused or failed by the engine or the store.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Malformed header, query parameter or path.
    #[error("{0}")]
    Malformed(String),
    /// The body exceeds the size limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's media type (or content coding) is not accepted.
    #[error("{detail}")]
    UnsupportedMediaType {
        /// What was wrong.
        detail: String,
        /// Answer with `Accept-Patch` (PATCH requests).
        accept_patch: bool,
    },
    /// The client did not send its body in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// No route matches the path.
    #[error("there is no resource at {0}")]
    NoRoute(String),
    /// The route does not accept the method.
    #[error("this path does not accept the request's method")]
    MethodNotAllowed,
    /// The principal's quota of its class, or the resource's, is used up.
    #[error(
        "more than {rate} {}; retry in {retry_after} s",
        if *class == "resource" { "writes to this resource" } else { class }
    )]
    RateLimited {
        /// `reads`, `writes` (per principal) or `resource`.
        class: &'static str,
        /// The quota.
        rate: truce_engine::Rate,
        /// Seconds until a request may pass.
        retry_after: u64,
    },
    /// Every stream the server (or this principal) may hold open is open.
    #[error(
        "{} its most streams and long polls open ({limit}); {}",
        if *per_principal { "this principal holds" } else { "the server holds" },
        if *per_principal { "close one or retry shortly" } else { "retry shortly" }
    )]
    TooManyStreams {
        /// The cap that was reached.
        limit: usize,
        /// `max_streams_per_principal` (else the server's `max_streams`).
        per_principal: bool,
    },
    /// No key, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key's roles do not allow the request.
    #[error("this request needs the {needed} role; the key has {}", held.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))]
    Forbidden {
        /// The role the endpoint needs.
        needed: truce_engine::Role,
        /// The roles the key has.
        held: Vec<truce_engine::Role>,
    },
    /// A handler panicked (the panic is logged, never shown).
    #[error("a handler panicked")]
    Panic,
}

impl From<NameError> for ApiError {
    fn from(error: NameError) -> Self {
        Self::Malformed(error.to_string())
    }
}

impl ApiError {
    /// The problem to show the client.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Engine(error) => error.problem(),
            Self::Malformed(detail) => Problem::new(ProblemKind::MalformedRequest, detail.clone()),
            Self::PayloadTooLarge { limit } => {
                Problem::new(ProblemKind::PayloadTooLarge, self.to_string())
                    .with("limit", serde_json::json!(limit))
            }
            Self::UnsupportedMediaType { detail, .. } => {
                Problem::new(ProblemKind::UnsupportedMediaType, detail.clone())
            }
            Self::BodyTimeout(_) => Problem::new(ProblemKind::RequestTimeout, self.to_string()),
            Self::NoRoute(_) => Problem::new(ProblemKind::NotFound, self.to_string()),
            Self::MethodNotAllowed => Problem::new(ProblemKind::MethodNotAllowed, self.to_string()),
            Self::RateLimited { retry_after, .. } => {
                let mut problem = Problem::new(ProblemKind::RateLimited, self.to_string());
                problem.retry_after_secs = Some(*retry_after);
                problem
            }
            Self::TooManyStreams { .. } => {
                let mut problem = Problem::new(ProblemKind::Unavailable, self.to_string())
                    .with("reason", serde_json::json!("too-many-streams"));
                problem.retry_after_secs = Some(1);
                problem
            }
            Self::Unauthenticated(detail) => {
                Problem::new(ProblemKind::Unauthenticated, detail.clone())
            }
            Self::Forbidden { needed, held } => {
                Problem::new(ProblemKind::Forbidden, self.to_string())
                    .with("required_role", serde_json::json!(needed.as_str()))
                    .with("roles", serde_json::json!(held))
            }
            Self::Panic => EngineError::Internal(String::new()).problem(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Engine(error) = &self
            && error.is_server_fault()
        {
            let request_id = crate::context::RequestContext::current().map(|c| c.id);
            tracing::error!(request_id = request_id.as_deref().unwrap_or(""), error = %error, "request failed");
        }
        let mut response = problem_response(self.problem());
        let headers = response.headers_mut();
        match &self {
            Self::UnsupportedMediaType {
                accept_patch: true, ..
            } => {
                headers.insert(
                    HeaderName::from_static("accept-patch"),
                    HeaderValue::from_static(ACCEPTED_PATCH_TYPES),
                );
            }
            Self::BodyTimeout(_) | Self::PayloadTooLarge { .. } => {
                // The rest of the body may still be coming; do not reuse the connection.
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
