//! The checks every request passes before its handler, in SPEC §8's order:
//! who is asking and whether they may (401/403, [`crate::auth`]), then the
//! rate limits (429, [`crate::rate`]), then `Idempotency-Key` (a replayed
//! answer or a refused reuse, [`crate::idempotency`]).
//!
//! The three run as one middleware, each handing the request on to the next as
//! a plain closure: one layer instead of three, because every layer of the
//! router boxes the request's future and clones the service beneath it, which
//! every request paid three times over.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// Authenticates, rate-limits and checks the idempotency key of one request,
/// then runs the rest of the router; the first check that refuses answers.
pub(crate) async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let state = &state;
    crate::auth::authenticate(state, request, move |request| {
        crate::rate::limit(state, request, move |request| {
            crate::idempotency::middleware(state, request, move |request| next.run(request))
        })
    })
    .await
}
