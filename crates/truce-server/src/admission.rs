//! The checks every request passes before its handler, in SPEC §8's order:
//! who is asking and whether they may (401/403, [`crate::auth`]), then the
//! rate limits (429, [`crate::rate`]), then `Idempotency-Key` (a replayed
//! answer or a refused reuse, [`crate::idempotency`]).
//!
//! The three run as one middleware, each handing the request on to the next as
//! a plain closure: one layer instead of three, because every layer of the
//! router boxes the request's future and clones the service beneath it, which
//! every request paid three times over. Without CORS (the default) the request
//! envelope joins them in that one layer; with CORS, its layer sits between
//! the envelope and these checks, so that their refusals carry the CORS
//! headers too.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// Authenticates, rate-limits and checks the idempotency key of one request,
/// then runs the rest of the router; the first check that refuses answers.
pub(crate) async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    admitted(&state, request, next).await
}

/// The request envelope and the admission checks as one layer, for a router
/// with nothing between them (no CORS layer).
pub(crate) async fn envelope_and_admit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let state = &state;
    crate::context::enveloped(request, move |request| admitted(state, request, next)).await
}

/// The three checks in order, each a closure around the next, the router's
/// remaining layers last.
async fn admitted(state: &AppState, request: Request, next: Next) -> Response {
    crate::auth::authenticate(state, request, move |request| {
        crate::rate::limit(state, request, move |request| {
            crate::idempotency::check_key(state, request, move |request| next.run(request))
        })
    })
    .await
}
