//! Write commands: what the HTTP layer asks the engine to do, and what came of it.

use serde_json::Value;

use crate::document::Document;
use crate::idempotency::Idempotent;
use crate::name::ResourceKey;
use crate::patch::JsonPatch;
use crate::precondition::Preconditions;
use crate::record::Version;

/// Who is making a request; recorded as `by` on every version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    /// The principal of requests made without an API key.
    pub fn anonymous() -> Self {
        Self("anonymous".into())
    }

    /// The principal of an API key: its name.
    pub fn named(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name as recorded in history.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The change a write asks for.
#[derive(Debug, Clone)]
pub enum WriteAction {
    /// `PUT`: create or replace with this document.
    Put(Document),
    /// `POST` to a collection: create with a server-made id that must not exist yet.
    Create(Document),
    /// `PATCH` with `application/merge-patch+json` (RFC 7396).
    MergePatch(Value),
    /// `PATCH` with `application/json-patch+json` (RFC 6902).
    JsonPatch(JsonPatch),
    /// `DELETE`: write a tombstone.
    Delete,
    /// `POST .../revert`: a new version with the content of version `to`.
    Revert {
        /// The version whose content to restore.
        to: u64,
    },
}

impl WriteAction {
    /// Whether the action needs a live resource to act on (so a missing one is 404
    /// before any precondition is looked at, RFC 9110 §13.2.1).
    pub(crate) fn needs_live_resource(&self) -> bool {
        matches!(
            self,
            Self::MergePatch(_) | Self::JsonPatch(_) | Self::Delete
        )
    }
}

/// One write, fully parsed and validated for syntax.
#[derive(Debug, Clone)]
pub struct WriteCommand {
    /// The resource written.
    pub key: ResourceKey,
    /// What to do to it.
    pub action: WriteAction,
    /// RFC 9110 conditional headers.
    pub preconditions: Preconditions,
    /// `?if_version=N` (`0`: must not exist).
    pub if_version: Option<u64>,
    /// Who asks.
    pub by: Principal,
    /// The request id, kept in the conflict record a refusal creates.
    pub request_id: Option<String>,
    /// `Truce-Resolves`: the conflict record this write retries; if the write
    /// succeeds, the record is marked resolved in the same commit.
    pub resolves: Option<String>,
    /// `Idempotency-Key`: the answer is kept with the write (SPEC §9).
    pub idempotency: Option<Idempotent<WriteOutcome>>,
    /// `Lock-Token`: the lease this write is made under (SPEC §4).
    pub lock_token: Option<String>,
    /// What the request's API key must still be when the write commits (`None`:
    /// checked when the request arrived, or a write of the server's own).
    pub key_check: Option<crate::keys::KeyCheck>,
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// A new resource (or the first version after a delete): 201.
    Created,
    /// A new version of a live resource: 200.
    Updated,
    /// The result equals the current content: no new version, 200 with the current
    /// ETag.
    Unchanged,
    /// A tombstone was written: 200.
    Deleted,
}

impl WriteStatus {
    /// The name clients see in the `Truce-Outcome` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        }
    }
}

/// The answer to a write: the resource's head after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The resource written.
    pub key: ResourceKey,
    /// How the write ended.
    pub status: WriteStatus,
    /// The head version after the write (the unchanged head for `Unchanged`).
    pub version: Version,
    /// Set when a stale write was accepted by the collection's conflict policy.
    pub policy: Option<PolicyApplied>,
    /// The record of that automatic outcome (set by the backend, which makes ids).
    pub conflict_id: Option<String>,
}

/// How a collection's conflict policy accepted a write based on an old version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyApplied {
    /// `merge`: the write's changes to `base` were applied to version `over`.
    Merged {
        /// The version the write was based on.
        base: u64,
        /// The version it was merged into.
        over: u64,
    },
    /// `last_write_wins`: the write replaced version `over` (kept in history).
    Overwritten {
        /// The version the write was based on.
        base: u64,
        /// The version it overwrote.
        over: u64,
    },
}
