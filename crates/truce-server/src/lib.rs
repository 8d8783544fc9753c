//! The HTTP layer of truce.
//!
//! Requests are parsed into engine commands by extractors, handlers call the
//! [`Store`](truce_engine::Store), and answers are rendered from engine outcomes and
//! errors. No rule lives here: status codes come from the engine's problem table and
//! every decision about a resource is the engine's.

mod admission;
mod auth;
mod bare_answers;
mod config;
mod context;
mod cors;
mod error;
mod extract;
mod idempotency;
mod metrics;
mod openapi;
mod openapi_finish;
mod paging;
mod problem;
mod query;
mod rate;
mod render;
mod routes;
mod serve;
mod sessions;
mod state;
mod streams;
mod webhooks;
mod wire;

pub use config::ServerConfig;
pub use cors::check_origins as check_cors_origins;
pub use metrics::install as install_metrics;
pub use routes::with_envelope;
pub use serve::{RunningServer, serve};
