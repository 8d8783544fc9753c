//! The Rust client of truce.
//!
//! Typed reads that return the value with its ETag and version; writes with
//! preconditions; [`Client::update`], a read-modify-write that can never lose an
//! update (it retries with `If-Match`, exponential back-off and full jitter);
//! change-feed and watch streams that resume by themselves; and errors typed by the
//! server's problem slugs ([`Error::kind`]).
//!
//! ```no_run
//! use serde_json::{json, Value};
//! use truce_client::Client;
//!
//! # async fn example() -> Result<(), truce_client::Error> {
//! let client = Client::new("http://127.0.0.1:8409")?;
//!
//! // Create only if absent, then read it back with its ETag.
//! client.put("notes", "todo", &json!({"title": "Buy milk", "done": false}))
//!     .if_none_match_any()
//!     .send()
//!     .await?;
//! let note = client.get::<Value>("notes", "todo").await?;
//!
//! // A conditional write: refused (412) if someone changed the note meanwhile.
//! let written = client.merge_patch("notes", "todo", &json!({"done": true}))
//!     .if_match(&note.etag)
//!     .send()
//!     .await?;
//! assert_eq!(written.version, note.version + 1);
//!
//! // Or let the client retry for you: no increment is ever lost.
//! client.put("counters", "hits", &json!({"n": 0})).send().await?;
//! let counter = client
//!     .update("counters", "hits", |doc: &mut Value| {
//!         doc["n"] = json!(doc["n"].as_u64().unwrap_or(0) + 1);
//!     })
//!     .await?;
//! println!("now {} at version {}", counter.value["n"], counter.version);
//! # Ok(())
//! # }
//! ```
//!
//! Following changes:
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use truce_client::{ChangesOptions, Client};
//!
//! # async fn example() -> Result<(), truce_client::Error> {
//! let client = Client::new("http://127.0.0.1:8409")?;
//! let mut changes = Box::pin(client.changes(ChangesOptions {
//!     collection: Some("notes".into()),
//!     ..ChangesOptions::default()
//! }));
//! while let Some(change) = changes.next().await {
//!     let change = change?;
//!     println!("{} {}/{} is now version {}", change.op, change.collection, change.id, change.version);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Failures are typed:
//!
//! ```no_run
//! use serde_json::json;
//! use truce_client::{Client, ProblemKind};
//!
//! # async fn example() -> Result<(), truce_client::Error> {
//! let client = Client::new("http://127.0.0.1:8409")?;
//! match client.put("notes", "todo", &json!({})).if_match("\"1-stale\"").send().await {
//!     Err(error) if error.kind() == Some(ProblemKind::PreconditionFailed) => {
//!         let problem = error.problem().expect("a problem answer");
//!         println!("someone else wrote version {:?}", problem.current_version);
//!     }
//!     other => { other?; }
//! }
//! # Ok(())
//! # }
//! ```

mod changes;
mod client;
mod collections;
mod conflicts;
mod error;
mod keys;
mod locks;
mod transaction;
mod txn;
mod types;
mod update;

pub use client::{Client, ClientBuilder, DEFAULT_URL, RetryPolicy, WriteRequest};
pub use collections::CollectionSettings;
pub use conflicts::{ConflictQuery, Resolution};
pub use error::{Error, MergeConflict, MergeOverlap, Problem};
pub use keys::{KeyInfo, NewKey};
pub use locks::{LockGuard, LockInfo, LockRequest};
pub use transaction::{BufferedWrite, Transaction};
pub use truce_engine::ProblemKind;
pub use txn::{FailedOp, OpResult, Txn, TxnApplied};
pub use types::{
    Change, ChangesOptions, ChangesPage, ConflictEvent, Envelope, HistoryEntry, ListOptions,
    Outcome, Page, ResourceName, Versioned, Written,
};
