//! How many SSE streams and long polls a server holds open at once.
//!
//! Each open stream or long poll holds a permit of the server's stream
//! semaphore (`--max-streams`) for as long as it lives, and counts in the
//! `truce_change_waiters{kind}` gauge. When none is left the request is
//! answered 503 `too-many-streams` with `Retry-After` at once, before any
//! work: a client that opens streams in a loop cannot exhaust the server's
//! memory or its tasks. (Per-principal caps need principals, which come with
//! API keys; until then every request is the same anonymous principal and the
//! server-wide cap is the only one.)

use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;
use crate::state::AppState;

/// An open stream or long poll: its permit and its place in the gauge.
pub(crate) struct OpenStream {
    kind: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl OpenStream {
    /// Takes a permit for a stream of `kind` (`stream`, `longpoll`,
    /// `conflicts`), or refuses when the server holds its most.
    pub(crate) fn open(state: &AppState, kind: &'static str) -> Result<Self, ApiError> {
        let permit = std::sync::Arc::clone(&state.streams)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams {
                limit: state.config.max_streams,
            })?;
        metrics::gauge!("truce_change_waiters", "kind" => kind).increment(1.0);
        Ok(Self {
            kind,
            _permit: permit,
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("truce_change_waiters", "kind" => self.kind).decrement(1.0);
    }
}
