//! Storage backends for truce.
//!
//! The embedded backend keeps everything in one redb file (pure Rust, copy-on-write
//! B-trees, MVCC, crash-safe) and funnels every write through one sequencer thread
//! that commits batches of requests with one fsync (group commit). Both the engine's
//! rules and the storage trait come from `truce-engine`; this crate only knows how to
//! keep bytes on disk.

mod codec;
mod compaction;
mod embedded;
mod error;
mod faults;
mod heads;
mod health;
mod layer;
mod paced;
mod recovery;
mod reserve;
mod sequencer;
mod snapshot;
mod tables;
mod wal;
mod write_tables;

pub use embedded::{DATABASE_FILE, EmbeddedConfig, EmbeddedStore, OpenReport};
pub use error::OpenError;
pub use faults::{Fault, Faults, FileKind, IoOp, PowerLoss};
pub use wal::{WalScan, scan_wal};
