//! How many SSE streams and long polls a server holds open at once.
//!
//! Each open stream or long poll holds a permit of the server's stream
//! semaphore (`--max-streams`) and one of its principal's count
//! (`--max-streams-per-principal`) for as long as it lives, and counts in the
//! `truce_change_waiters{kind}` gauge. When either is used up the request is
//! answered 503 `too-many-streams` with `Retry-After` at once, before any
//! work: a client that opens streams in a loop cannot exhaust the server's
//! memory or its tasks, nor crowd out the other principals.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::OwnedSemaphorePermit;
use truce_engine::Principal;

use crate::error::ApiError;
use crate::state::AppState;

/// An open stream or long poll: its permit and its place in the gauge.
pub(crate) struct OpenStream {
    kind: &'static str,
    _permit: OwnedSemaphorePermit,
    principal: String,
    counts: std::sync::Arc<StreamCounts>,
}

/// Open streams per principal.
#[derive(Debug, Default)]
pub(crate) struct StreamCounts(Mutex<HashMap<String, usize>>);

impl OpenStream {
    /// Takes a permit for a stream of `kind` (`stream`, `longpoll`,
    /// `conflicts`), or refuses when the server holds its most.
    pub(crate) fn open(
        state: &AppState,
        kind: &'static str,
        principal: &Principal,
    ) -> Result<Self, ApiError> {
        let permit = std::sync::Arc::clone(&state.streams)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams {
                limit: state.config.max_streams,
                per_principal: false,
            })?;
        {
            let mut counts = state
                .stream_counts
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let open = counts.entry(principal.as_str().to_owned()).or_insert(0);
            if *open >= state.config.max_streams_per_principal {
                return Err(ApiError::TooManyStreams {
                    limit: state.config.max_streams_per_principal,
                    per_principal: true,
                });
            }
            *open += 1;
        }
        metrics::gauge!("truce_change_waiters", "kind" => kind).increment(1.0);
        Ok(Self {
            kind,
            _permit: permit,
            principal: principal.as_str().to_owned(),
            counts: std::sync::Arc::clone(&state.stream_counts),
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("truce_change_waiters", "kind" => self.kind).decrement(1.0);
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = counts.get_mut(&self.principal) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}
