//! What every handler shares: the store, the settings, the id generator and the
//! shutdown signal that ends long-lived responses.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use truce_engine::{IdGenerator, Store};

use crate::config::ServerConfig;

/// Shared state of the HTTP layer; a clone is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// The server's settings.
    pub config: ServerConfig,
    /// Makes ids for `POST /v1/{collection}`.
    pub ids: IdGenerator,
    /// Cancelled when the server starts shutting down: streams and long polls end.
    pub shutdown: CancellationToken,
    /// One permit per SSE stream or long poll that may be open (`max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Rate limits per principal and class.
    pub(crate) rates: crate::rate::RateLimits,
    /// Open streams per principal (`max_streams_per_principal`).
    pub(crate) stream_counts: Arc<crate::streams::StreamCounts>,
    /// The API keys this node verified.
    pub(crate) keys: crate::auth::KeyCache,
    /// Idempotency keys of requests being handled on this node.
    pub(crate) in_flight: crate::idempotency::InFlight,
    /// The interactive transactions open on this node.
    pub(crate) sessions: crate::sessions::Sessions,
    /// The serialised OpenAPI document, made once with the router (state
    /// rather than a request extension: an extension layer costs every
    /// request a boxed future).
    pub(crate) openapi_json: std::sync::OnceLock<bytes::Bytes>,
}

impl AppState {
    /// State for a store and settings.
    pub fn new(store: Arc<dyn Store>, config: ServerConfig) -> Self {
        let streams = Arc::new(tokio::sync::Semaphore::new(config.max_streams));
        let rates = crate::rate::RateLimits::new(config.rate_reads, config.rate_writes);
        let sessions = crate::sessions::Sessions::new(config.txn_idle);
        Self(Arc::new(Shared {
            store,
            config,
            ids: IdGenerator::new(),
            shutdown: CancellationToken::new(),
            streams,
            rates,
            in_flight: crate::idempotency::InFlight::default(),
            sessions,
            keys: crate::auth::KeyCache::default(),
            stream_counts: Arc::default(),
            openapi_json: std::sync::OnceLock::new(),
        }))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
