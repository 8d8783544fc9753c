//! The engine's errors and how each one becomes a problem.
//!
//! [`EngineError`] is every reason a command can be refused or fail. Each variant maps
//! to one [`ProblemKind`] and carries the extra fields the contract promises (the
//! current version and ETag on conflicts, `oldest` on compacted history, ...), so the
//! HTTP layer only renders what [`EngineError::problem`] returns. Storage failures keep
//! their message for the logs; clients only ever see the problem's fixed wording.

use serde_json::{Map, Value, json};

use crate::etag::ETag;
use crate::keys::KeyRefusal;
use crate::name::ResourceKey;
use crate::precondition::FailedCondition;
use crate::problem::ProblemKind;
use crate::time::Timestamp;

/// A failure of the storage backend. The message is for operators, never clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The disk or database refused an operation; retrying later may succeed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// The database (of a networked backend) is down, restarting or unreachable,
    /// or did not answer in time; the node reconnects by itself.
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// The answer to a COMMIT was lost and the database could not be asked, within
    /// the deadline, whether it committed: the write may or may not have been
    /// applied (a retry with `If-Match` then gets 412 if it was).
    #[error("the outcome of a commit is unknown: {0}")]
    CommitUnknown(String),
    /// The disk (or the quota) is full; writes resume once space is freed.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// Stored data could not be decoded: a bug or on-disk damage.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Too many writes are queued; the client should retry later.
    #[error("the write queue is full")]
    Overloaded,
    /// The store is shutting down or has stopped.
    #[error("the store is closed")]
    Closed,
}

impl StorageError {
    /// The reasons a storage fault (not overload, not shutdown) can have: the
    /// labels of the fault metric.
    pub const FAULT_REASONS: [&'static str; 4] = [
        "disk-full",
        "io-error",
        "database-unreachable",
        "commit-unknown",
    ];

    /// The `reason` member of the 503 problem (SPEC §3), and the label of the
    /// storage-fault metrics; `None` for failures that are not a 503.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Io(_) => Some("io-error"),
            Self::Unreachable(_) => Some("database-unreachable"),
            Self::CommitUnknown(_) => Some("commit-unknown"),
            Self::DiskFull(_) => Some("disk-full"),
            Self::Overloaded => Some("overloaded"),
            Self::Closed => Some("shutting-down"),
            Self::Corrupt(_) => None,
        }
    }
}

/// The current state of a resource, reported with every conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentState {
    /// The resource.
    pub resource: ResourceKey,
    /// The current version number.
    pub version: u64,
    /// The current ETag.
    pub etag: ETag,
}

impl CurrentState {
    /// The state `version` of `key` reports. Made only when a refusal needs it:
    /// its ETag is a hash.
    pub fn of(key: &ResourceKey, version: &crate::record::Version) -> Self {
        Self {
            resource: key.clone(),
            version: version.number,
            etag: version.etag(key),
        }
    }
}

/// Everything a command can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed (bad JSON, bad name, depth, header syntax).
    #[error("{0}")]
    Malformed(String),
    /// No such resource or version; `tombstone` is set when it was deleted.
    #[error("{detail}")]
    NotFound {
        /// What was not found.
        detail: String,
        /// `(version, deleted_at)` of the tombstone when the resource was deleted.
        tombstone: Option<(u64, Timestamp)>,
    },
    /// An RFC 9110 precondition was false.
    #[error("{} does not match the current state", condition.header())]
    PreconditionFailed {
        /// Which header failed.
        condition: FailedCondition,
        /// The current state, when the resource exists.
        current: Option<CurrentState>,
        /// The current content already equals what the write would make (someone
        /// made this state already); the write is refused all the same.
        current_matches_request: bool,
    },
    /// `?if_version` did not match.
    #[error("expected version {expected}, the current version is {}", current.as_ref().map_or(0, |c| c.version))]
    VersionConflict {
        /// The version the client expected (`0`: must not exist).
        expected: u64,
        /// The current state, when the resource exists.
        current: Option<CurrentState>,
    },
    /// A JSON Patch `test` operation failed.
    #[error("JSON Patch operation {operation} (test at {path:?}) failed")]
    PatchTestFailed {
        /// Index of the operation.
        operation: usize,
        /// Its target path.
        path: String,
        /// The current state.
        current: Box<CurrentState>,
    },
    /// A JSON Patch operation does not fit the current document.
    #[error("JSON Patch operation {operation} at {path:?} cannot be applied: {reason}")]
    PatchConflict {
        /// Index of the operation.
        operation: usize,
        /// Its target path.
        path: String,
        /// Why it cannot be applied.
        reason: String,
        /// The current state.
        current: Box<CurrentState>,
    },
    /// The result is well-formed but not acceptable.
    #[error("the document is not acceptable")]
    Invalid {
        /// `(JSON pointer, message)` for each problem.
        errors: Vec<(String, String)>,
    },
    /// The version or revision is older than retention keeps.
    #[error("{what} is older than the retained history; the oldest available is {oldest}")]
    HistoryCompacted {
        /// What was asked for, for the message.
        what: String,
        /// The oldest version or revision still available.
        oldest: u64,
    },
    /// A state transition the record (or, later, the collection's states) does not
    /// allow.
    #[error("{detail}")]
    StateConflict {
        /// What was refused.
        detail: String,
        /// The current state.
        from: String,
        /// The state asked for.
        to: String,
        /// The states allowed from `from`.
        allowed: Vec<String>,
    },
    /// Under the `merge` policy, the stale write and the current version changed
    /// the same paths.
    #[error("this write and version {} both changed {}", current.version, overlap_list(overlaps))]
    MergeConflict {
        /// The version the write was based on.
        base_version: u64,
        /// Every colliding path, with its three values.
        overlaps: Vec<crate::merge::Overlap>,
        /// The current state.
        current: Box<CurrentState>,
    },
    /// Under the `merge` policy, a stale write that cannot be merged: refused as
    /// under `reject` (`source`), with the reason.
    #[error("{source}; it was not merged: {reason}")]
    Unmergeable {
        /// The answer under `reject`.
        source: Box<EngineError>,
        /// Why no merge was possible.
        reason: String,
    },
    /// A precondition on a collection's settings was false.
    #[error("{} does not match the settings of collection {collection}", condition.header())]
    SettingsPreconditionFailed {
        /// Which header failed.
        condition: FailedCondition,
        /// The collection.
        collection: String,
        /// The settings' current version (0: never configured).
        version: u64,
        /// Their current ETag.
        etag: ETag,
    },
    /// The collection requires a precondition and the write carried none.
    #[error("this collection requires If-Match, If-None-Match: * or ?if_version on writes")]
    PreconditionRequired,
    /// A refusal that created a conflict record (SPEC §7): answered as its cause,
    /// plus `conflict_id`.
    #[error("{source}")]
    Recorded {
        /// The refusal.
        source: Box<EngineError>,
        /// The record it created.
        conflict_id: String,
    },
    /// A request with the same idempotency key committed while this one waited
    /// (its retry replays that answer).
    #[error("a request with this Idempotency-Key was being processed; retry to get its answer")]
    IdempotencyInFlight,
    /// The idempotency key was used for another request.
    #[error(
        "this Idempotency-Key was used for a different request (method, target or body); use a fresh key for a new request"
    )]
    IdempotencyKeyReused,
    /// The resource is locked by another holder, or the request's lease is gone.
    #[error("{detail}")]
    Locked {
        /// What was wrong.
        detail: String,
        /// The live holder, when there is one.
        holder: Option<Box<crate::locks::LockView>>,
        /// Seconds until the holder's lease runs out.
        retry_after_secs: Option<u64>,
    },
    /// An op of a transaction failed, so nothing of the transaction was applied.
    #[error("op {failed_op} ({op} {resource}) failed, so nothing was applied: {reason}")]
    TransactionConflict {
        /// The op's index.
        failed_op: usize,
        /// Its name (`check`, `create`, `put`, `patch`, `delete`).
        op: &'static str,
        /// Its resource.
        resource: crate::name::ResourceKey,
        /// What the op alone would have been answered.
        reason: Box<EngineError>,
        /// The record that keeps the failed op, when its refusal is one SPEC §7
        /// records.
        conflict_id: Option<String>,
    },
    /// An interactive transaction's commit found something it read or wrote
    /// changed after its snapshot: nothing was applied.
    #[error(
        "{} changed after the transaction's snapshot (revision {snapshot}); nothing was applied: run the transaction again",
        changed_list(resources, ranges)
    )]
    SnapshotStale {
        /// The snapshot revision.
        snapshot: u64,
        /// The resources read or written that changed.
        resources: Vec<crate::name::ResourceKey>,
        /// The listed ranges `(collection, prefix)` in which something changed.
        ranges: Vec<(String, String)>,
    },
    /// An interactive transaction that expired, ended, or never existed here.
    #[error("{detail}")]
    TransactionGone {
        /// Why it cannot be used.
        detail: String,
    },
    /// The API key a write was admitted with was revoked before it committed, or
    /// the first key was made while a write admitted without one was queued
    /// (checked in the batch: [`crate::KeyCheck`]).
    #[error("{0}")]
    KeyRefused(KeyRefusal),
    /// A resource's lock queue is full.
    #[error("{limit} requests already wait for this lock; retry later")]
    LockQueueFull {
        /// The queue's bound.
        limit: usize,
    },
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug: an invariant did not hold. The message is for the logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What changed under a transaction, for a message.
fn changed_list(resources: &[crate::name::ResourceKey], ranges: &[(String, String)]) -> String {
    let mut names: Vec<String> = resources.iter().map(ToString::to_string).collect();
    names.extend(
        ranges
            .iter()
            .map(|(c, p)| format!("the listed range {c}/{p}*")),
    );
    names.join(", ")
}

/// The colliding paths, for a message.
fn overlap_list(overlaps: &[crate::merge::Overlap]) -> String {
    let paths: Vec<String> = overlaps
        .iter()
        .map(|o| match crate::merge::pointer(&o.path) {
            root if root.is_empty() => "the whole document".to_owned(),
            path => path,
        })
        .collect();
    paths.join(", ")
}

/// A rendered-neutral problem: the kind, a client-safe detail, and extension fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The row of the problem table.
    pub kind: ProblemKind,
    /// A sentence for the client (never an internal message).
    pub detail: String,
    /// Extension members (`current_version`, `oldest`, ...).
    pub fields: Map<String, Value>,
    /// The current ETag, to send as the `ETag` header.
    pub etag: Option<ETag>,
    /// Seconds for `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem of `kind` with a detail and no extension fields.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            fields: Map::new(),
            etag: None,
            retry_after_secs: None,
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.fields.insert(name.to_owned(), value);
        self
    }

    /// Adds `resource`, `current_version`, `current_etag` and the `ETag` header.
    fn with_current(mut self, current: Option<&CurrentState>) -> Self {
        if let Some(current) = current {
            self.fields.insert(
                "resource".into(),
                json!({"collection": current.resource.collection, "id": current.resource.id}),
            );
            self.fields
                .insert("current_version".into(), json!(current.version));
            self.fields
                .insert("current_etag".into(), json!(current.etag.to_header()));
            self.etag = Some(current.etag.clone());
        }
        self
    }
}

impl EngineError {
    /// A 422 with one `(pointer, message)` error.
    pub fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            errors: vec![(pointer.into(), message.into())],
        }
    }

    /// The problem kind this error maps to.
    pub fn kind(&self) -> ProblemKind {
        match self {
            Self::Recorded { source, .. } | Self::Unmergeable { source, .. } => source.kind(),
            Self::MergeConflict { .. } => ProblemKind::MergeConflict,
            Self::Malformed(_) => ProblemKind::MalformedRequest,
            Self::NotFound { .. } => ProblemKind::NotFound,
            Self::PreconditionFailed { .. } | Self::SettingsPreconditionFailed { .. } => {
                ProblemKind::PreconditionFailed
            }
            Self::VersionConflict { .. } => ProblemKind::VersionConflict,
            Self::PatchTestFailed { .. } => ProblemKind::PatchTestFailed,
            Self::PatchConflict { .. } => ProblemKind::PatchConflict,
            Self::Invalid { .. } => ProblemKind::ValidationFailed,
            Self::HistoryCompacted { .. } => ProblemKind::HistoryCompacted,
            Self::PreconditionRequired => ProblemKind::PreconditionRequired,
            Self::IdempotencyInFlight => ProblemKind::IdempotencyInFlight,
            Self::Locked { .. } => ProblemKind::Locked,
            Self::LockQueueFull { .. } => ProblemKind::Unavailable,
            Self::KeyRefused(_) => ProblemKind::Unauthenticated,
            Self::IdempotencyKeyReused => ProblemKind::IdempotencyKeyReused,
            Self::StateConflict { .. } => ProblemKind::StateConflict,
            Self::TransactionConflict { .. }
            | Self::SnapshotStale { .. }
            | Self::TransactionGone { .. } => ProblemKind::TransactionConflict,
            Self::Storage(StorageError::Corrupt(_)) | Self::Internal(_) => ProblemKind::Internal,
            Self::Storage(_) => ProblemKind::Unavailable,
        }
    }

    /// Whether an operator should look at this (a bug or a storage failure).
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Internal(_))
    }

    /// The problem to show the client.
    pub fn problem(&self) -> Problem {
        let kind = self.kind();
        match self {
            Self::Recorded {
                source,
                conflict_id,
            } => source.problem().with("conflict_id", json!(conflict_id)),
            Self::SnapshotStale {
                snapshot,
                resources,
                ranges,
            } => Problem::new(kind, self.to_string())
                .with("reason", json!("changed-since-snapshot"))
                .with("snapshot_revision", json!(snapshot))
                .with(
                    "resources",
                    json!(
                        resources
                            .iter()
                            .map(|r| json!({"collection": r.collection, "id": r.id}))
                            .collect::<Vec<_>>()
                    ),
                )
                .with(
                    "ranges",
                    json!(
                        ranges
                            .iter()
                            .map(|(c, p)| json!({"collection": c, "prefix": p}))
                            .collect::<Vec<_>>()
                    ),
                ),
            Self::TransactionGone { .. } => {
                Problem::new(kind, self.to_string()).with("reason", json!("expired"))
            }
            Self::TransactionConflict {
                failed_op,
                op,
                resource,
                reason,
                conflict_id,
            } => {
                // The op's own problem members (current version, holder, ...)
                // under the transaction's.
                let own = reason.problem();
                let mut problem = Problem::new(kind, self.to_string());
                problem.fields = own.fields;
                problem.retry_after_secs = own.retry_after_secs;
                let mut problem = problem
                    .with("failed_op", json!(failed_op))
                    .with("op", json!(op))
                    .with("reason", json!(own.kind.slug()))
                    .with(
                        "resource",
                        json!({"collection": resource.collection, "id": resource.id}),
                    );
                if let Some(id) = conflict_id {
                    problem = problem.with("conflict_id", json!(id));
                }
                problem
            }
            Self::NotFound { tombstone, .. } => {
                let problem = Problem::new(kind, self.to_string());
                match tombstone {
                    Some((version, at)) => problem
                        .with("deleted_at", json!(at))
                        .with("version", json!(version)),
                    None => problem,
                }
            }
            Self::PreconditionFailed {
                condition,
                current,
                current_matches_request,
            } => {
                let detail = match current {
                    Some(c) => format!(
                        "{} is false: the resource is at version {} (ETag {}); re-read it, re-apply your change and retry",
                        condition.header(),
                        c.version,
                        c.etag
                    ),
                    None => format!(
                        "{} is false: the resource does not exist",
                        condition.header()
                    ),
                };
                if *current_matches_request {
                    Problem::new(
                        kind,
                        format!(
                            "{detail}; the current content already equals what this request would make, but it was made by another write"
                        ),
                    )
                    .with_current(current.as_ref())
                    .with("current_matches_request", json!(true))
                } else {
                    Problem::new(kind, detail).with_current(current.as_ref())
                }
            }
            Self::Unmergeable { source, reason } => {
                let mut problem = source.problem();
                problem.detail = format!("{}; it was not merged: {reason}", problem.detail);
                problem.with("merge_refused", json!(reason))
            }
            Self::MergeConflict {
                base_version,
                overlaps,
                current,
            } => {
                let paths: Vec<String> = overlaps
                    .iter()
                    .map(|o| crate::merge::pointer(&o.path))
                    .collect();
                let list: Vec<Value> = overlaps
                    .iter()
                    .map(|o| {
                        json!({"path": crate::merge::pointer(&o.path), "base": o.base,
                               "ours": o.ours, "theirs": o.theirs})
                    })
                    .collect();
                Problem::new(
                    kind,
                    format!(
                        "{self}; merge these paths by hand (or resolve the conflict record) and retry"
                    ),
                )
                .with("base_version", json!(base_version))
                .with("paths", json!(paths))
                .with("overlaps", Value::Array(list))
                .with_current(Some(current))
            }
            Self::SettingsPreconditionFailed { version, etag, .. } => {
                let mut problem = Problem::new(
                    kind,
                    format!(
                        "{self}: they are at version {version} (ETag {etag}); re-read them and retry"
                    ),
                )
                .with("current_version", json!(version))
                .with("current_etag", json!(etag.to_header()));
                problem.etag = Some(etag.clone());
                problem
            }
            Self::VersionConflict { expected, current } => Problem::new(
                kind,
                format!("{self}; re-read the resource, re-apply your change and retry"),
            )
            .with("expected_version", json!(expected))
            .with_current(current.as_ref()),
            Self::PatchTestFailed {
                operation,
                path,
                current,
            }
            | Self::PatchConflict {
                operation,
                path,
                current,
                ..
            } => Problem::new(kind, self.to_string())
                .with("operation", json!(operation))
                .with("path", json!(path))
                .with_current(Some(current)),
            Self::Invalid { errors } => {
                let list: Vec<Value> = errors
                    .iter()
                    .map(|(pointer, message)| json!({"pointer": pointer, "message": message}))
                    .collect();
                let detail = errors
                    .first()
                    .map_or_else(|| self.to_string(), |(_, m)| m.clone());
                Problem::new(kind, detail).with("errors", Value::Array(list))
            }
            Self::StateConflict {
                detail,
                from,
                to,
                allowed,
            } => Problem::new(kind, detail.clone())
                .with("from", json!(from))
                .with("to", json!(to))
                .with("allowed", json!(allowed)),
            Self::HistoryCompacted { oldest, .. } => {
                Problem::new(kind, self.to_string()).with("oldest", json!(oldest))
            }
            Self::IdempotencyKeyReused => Problem::new(kind, self.to_string()),
            Self::Locked {
                holder,
                retry_after_secs,
                ..
            } => {
                let mut problem = Problem::new(kind, self.to_string());
                if let Some(holder) = holder {
                    problem = problem
                        .with(
                            "resource",
                            json!({"collection": holder.resource.collection, "id": holder.resource.id}),
                        )
                        .with(
                            "holder",
                            json!({"owner": holder.owner, "by": holder.by, "fence": holder.fence}),
                        )
                        .with("expires_at", json!(holder.expires_at.rfc3339()));
                }
                problem.retry_after_secs = *retry_after_secs;
                problem
            }
            Self::LockQueueFull { limit } => {
                let mut problem = Problem::new(kind, self.to_string())
                    .with("reason", json!("lock-queue-full"))
                    .with("limit", json!(limit));
                problem.retry_after_secs = Some(1);
                problem
            }
            Self::IdempotencyInFlight => {
                let mut problem = Problem::new(kind, self.to_string());
                problem.retry_after_secs = Some(1);
                problem
            }
            Self::Storage(StorageError::Overloaded) => {
                let mut problem = Problem::new(kind, "too many writes are queued; retry shortly")
                    .with("reason", json!("overloaded"));
                problem.retry_after_secs = Some(1);
                problem
            }
            Self::Storage(StorageError::Corrupt(_)) | Self::Internal(_) => Problem::new(
                kind,
                "an internal error occurred; quote the request id to an operator",
            ),
            Self::Storage(error) => {
                let detail = match error {
                    StorageError::DiskFull(_) => "the disk is full; retry once space is freed",
                    StorageError::Closed => "the store is shutting down",
                    StorageError::Unreachable(_) => "the database is unreachable; retry shortly",
                    StorageError::CommitUnknown(_) => {
                        "the database lost touch before confirming the write, which may or may not \
                         have been applied; re-read the resource before retrying (a retry with \
                         If-Match gets 412 if it was applied)"
                    }
                    _ => "storage is unavailable; retry shortly",
                };
                let mut problem = Problem::new(kind, detail);
                if let Some(reason) = error.reason() {
                    problem = problem.with("reason", json!(reason));
                }
                problem.retry_after_secs = Some(1);
                problem
            }
            Self::Malformed(_) | Self::PreconditionRequired | Self::KeyRefused(_) => {
                Problem::new(kind, self.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_carry_the_current_state() {
        let resource = ResourceKey::parse("c", "i").unwrap();
        let etag = ETag::derive(&resource, 4, 9, Timestamp::from_millis(0));
        let problem = EngineError::VersionConflict {
            expected: 3,
            current: Some(CurrentState {
                resource,
                version: 4,
                etag: etag.clone(),
            }),
        }
        .problem();
        assert_eq!(problem.kind.status(), 409);
        assert_eq!(problem.fields["expected_version"], json!(3));
        assert_eq!(problem.fields["current_version"], json!(4));
        assert_eq!(problem.fields["current_etag"], json!(etag.to_header()));
        assert_eq!(
            problem.fields["resource"],
            json!({"collection": "c", "id": "i"})
        );
        assert_eq!(problem.etag, Some(etag));
    }

    #[test]
    fn internal_messages_never_reach_the_detail() {
        for error in [
            EngineError::Internal("secret path /var/x".into()),
            EngineError::Storage(StorageError::Corrupt("secret".into())),
            EngineError::Storage(StorageError::Io("secret".into())),
        ] {
            let problem = error.problem();
            assert!(!problem.detail.contains("secret"), "{problem:?}");
            assert!(problem.kind.status() >= 500);
        }
    }
}
