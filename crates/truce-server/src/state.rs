//! What every handler shares: the store, the settings, the id generator and the
//! shutdown signal that ends long-lived responses.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use truce_engine::{IdGenerator, Store};

use crate::config::ServerConfig;

/// Shared state of the HTTP layer; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// The server's settings.
    pub config: Arc<ServerConfig>,
    /// Makes ids for `POST /v1/{collection}`.
    pub ids: Arc<IdGenerator>,
    /// Cancelled when the server starts shutting down: streams and long polls end.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// State for a store and settings.
    pub fn new(store: Arc<dyn Store>, config: ServerConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
            ids: Arc::new(IdGenerator::new()),
            shutdown: CancellationToken::new(),
        }
    }
}
