//! The PostgreSQL backend of truce: several `truce serve` nodes on one database,
//! with the same contract as the embedded store (SPEC §13).
//!
//! Nodes keep no state of their own beyond caches: the database holds versions,
//! heads, side records and the commit row that orders every write. Each node runs
//! the engine's rules unchanged, over one SQL transaction per batch of writes
//! (`writer.rs`), reads with plain statements that never block writers
//! (`store.rs`), and learns of other nodes' commits by `LISTEN`/`NOTIFY` plus a
//! catch-up read (`listener.rs`). The schema is migrated at start (`schema.rs`).

mod compaction;
mod error;
mod listener;
mod pending;
mod schema;
mod sql;
mod store;
mod writer;

pub use error::PostgresError;
pub use schema::SCHEMA_VERSION;
pub use store::{Opened, PostgresConfig, PostgresStore};
