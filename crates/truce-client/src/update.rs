//! Read-modify-write without lost updates.
//!
//! [`Client::update`] reads a document, lets the caller change it, and writes it back
//! with `If-Match`. When another writer got there first (412 or 409), it reads
//! again and re-applies the change (sending `Truce-Resolves` with the conflict
//! record the refusal left, so the retry that lands closes it), waiting a random time up to an exponentially
//! growing limit between attempts (full jitter), so competing clients spread out
//! instead of colliding again. It gives up after the policy's attempts with
//! [`Error::GaveUp`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use truce_engine::ProblemKind;

use crate::client::{Client, full_jitter};
use crate::error::Error;
use crate::types::Versioned;

impl Client {
    /// Applies `change` to the current version of a document and writes it back on
    /// the condition that nobody changed it meanwhile, retrying until it lands.
    /// Returns the document as written (or as it was, if `change` changed nothing).
    pub async fn update<T, F>(
        &self,
        collection: &str,
        id: &str,
        mut change: F,
    ) -> Result<Versioned<T>, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T),
    {
        let policy = self.retry_policy();
        let mut delays = policy.schedule();
        let mut attempt = 0;
        // The conflict record the last refusal left, closed by the retry that lands.
        let mut refused: Option<String> = None;
        loop {
            attempt += 1;
            let current = self.get::<T>(collection, id).await?;
            let mut doc = current.value;
            change(&mut doc);
            let mut write = self.put(collection, id, &doc).if_match(&current.etag);
            if let Some(cid) = &refused {
                write = write.resolves(cid);
            }
            let failure = match write.send().await {
                Ok(written) => {
                    return Ok(Versioned {
                        value: doc,
                        etag: written.etag,
                        version: written.version,
                        revision: written.revision,
                    });
                }
                Err(error) if lost_race(&error) => {
                    refused = error
                        .problem()
                        .and_then(|p| p.body.get("conflict_id"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .or(refused);
                    error
                }
                Err(error) => return Err(error),
            };
            if attempt >= policy.max_attempts {
                return Err(Error::GaveUp {
                    attempts: attempt,
                    last: Box::new(failure),
                });
            }
            tokio::time::sleep(full_jitter(delays.next().unwrap_or_default())).await;
        }
    }
}

/// Whether a write lost against another writer and is worth retrying.
fn lost_race(error: &Error) -> bool {
    matches!(
        error.kind(),
        Some(ProblemKind::PreconditionFailed | ProblemKind::VersionConflict)
    )
}
