//! Conflict records: what a write refused for the resource's state leaves behind,
//! so the losing client's work is kept (SPEC §7).
//!
//! The rules refuse; this module turns such a refusal into a record (the attempted
//! request, the version it was based on, the current version, who and when) and a
//! [`SideWrite`] that the backend commits in the same step as the refusal, before
//! the refusal is answered: the `conflict_id` a client is given always exists, also
//! after a crash right after the answer. The refusal itself becomes
//! [`EngineError::Recorded`], which renders as the original problem plus
//! `conflict_id`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{PolicyApplied, WriteAction, WriteCommand, WriteOutcome};
use crate::error::{CurrentState, EngineError};
use crate::events::RecordFacts;
use crate::name::ResourceKey;
use crate::rules::{SideTable, SideWrite};
use crate::time::Timestamp;

/// The longest conflict id accepted (ids are made as 26-character ULIDs).
pub const MAX_CONFLICT_ID: usize = 64;

/// The syntax of a conflict id, for documents that describe it.
pub const CONFLICT_ID_PATTERN: &str = "^[A-Za-z0-9]{1,64}$";

/// Checks that `cid` can be a conflict id (letters and digits, at most
/// [`MAX_CONFLICT_ID`]), so a typo is refused as malformed rather than looked up.
pub fn check_conflict_id(cid: &str) -> Result<(), EngineError> {
    if cid.is_empty()
        || cid.len() > MAX_CONFLICT_ID
        || !cid.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(EngineError::Malformed(format!(
            "{cid:?} is not a conflict id (letters and digits, at most {MAX_CONFLICT_ID})"
        )));
    }
    Ok(())
}

/// A conflict record as stored and served (SPEC §7 fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictRecord {
    /// The record's id (time-ordered).
    pub id: String,
    /// The problem slug of the refusal.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `open` until resolved or dismissed.
    pub status: &'static str,
    /// The resource written.
    pub resource: ResourceRef,
    /// The version the write was based on (from `If-Match` or `?if_version`), when
    /// it named one.
    pub base_version: Option<u64>,
    /// The resource's version when the write was refused (absent: no live version).
    pub current_version: Option<u64>,
    /// The request that was refused, so its change can still be applied later.
    pub attempted: Attempted,
    /// Who sent it.
    pub by: String,
    /// The request id, when the request had one.
    pub request_id: Option<String>,
    /// When it was refused.
    pub detected_at: Timestamp,
    /// For automatic outcomes: when the policy resolved it (at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
    /// For automatic outcomes: `merged` or `overwritten`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<&'static str>,
    /// For automatic outcomes: the version the write made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_version: Option<u64>,
    /// For a failed transaction op: which op of how many, and why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TxnNote>,
}

impl ConflictRecord {
    /// The record ready to commit, with the facts its event is made of.
    fn into_new(self) -> Result<NewRecord, EngineError> {
        let value = serde_json::to_vec(&self)
            .map_err(|e| EngineError::Internal(format!("conflict record not encodable: {e}")))?;
        let facts = RecordFacts {
            kind: self.kind.to_owned(),
            status: self.status.to_owned(),
            resolution: self.resolution.map(str::to_owned),
            base_version: self.base_version,
            current_version: self.current_version,
            closed_by: None,
            request_id: self.request_id,
            resolved_at: self.resolved_at.map(Timestamp::rfc3339),
            dismissed_at: None,
            detected_at: Some(self.detected_at.rfc3339()),
            by: Some(self.by),
            resource: self.resource,
            id: self.id,
        };
        Ok(NewRecord {
            side: SideWrite {
                table: SideTable::Conflicts,
                key: facts.id.clone().into_bytes(),
                value: Some(value.into()),
            },
            facts,
        })
    }
}

/// A new conflict record: the side write that stores it, and the facts its
/// event, log line and metric are made from (the same as reading them back from
/// the stored record, without the parse on the writer thread).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The record, to commit with the refusal or outcome.
    pub side: SideWrite,
    /// What its event says.
    pub facts: RecordFacts,
}

/// The transaction a refused op was part of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TxnNote {
    /// The op's index.
    pub failed_op: usize,
    /// How many ops the transaction had.
    pub ops: usize,
    /// The problem slug the op alone would have got.
    pub reason: &'static str,
}

/// A resource named in a record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
}

/// The refused request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempted {
    /// `PUT`, `PATCH`, `DELETE` or `POST` (create, revert).
    pub method: &'static str,
    /// The document a `PUT` or create sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The patch a `PATCH` sent (a merge patch object or a JSON Patch array).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
    /// `merge-patch` or `json-patch`, for a `PATCH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The version a revert asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_to: Option<u64>,
}

/// The current state a refusal reports, if it is one that creates a record.
fn recorded_state(error: &EngineError) -> Option<Option<&CurrentState>> {
    match error {
        EngineError::PreconditionFailed { current, .. }
        | EngineError::VersionConflict { current, .. } => Some(current.as_ref()),
        EngineError::PatchTestFailed { current, .. }
        | EngineError::PatchConflict { current, .. }
        | EngineError::MergeConflict { current, .. } => Some(Some(current)),
        EngineError::Unmergeable { source, .. } => recorded_state(source),
        EngineError::Locked { .. } => Some(None),
        _ => None,
    }
}

/// What the command asked for, as a record keeps it.
fn attempted(action: &WriteAction) -> Attempted {
    let mut attempted = Attempted {
        method: "PUT",
        body: None,
        patch: None,
        patch_type: None,
        revert_to: None,
    };
    match action {
        WriteAction::Put(doc) => attempted.body = Some(doc.value().clone()),
        WriteAction::Create(doc) => {
            attempted.method = "POST";
            attempted.body = Some(doc.value().clone());
        }
        WriteAction::MergePatch(patch) => {
            attempted.method = "PATCH";
            attempted.patch = Some(patch.clone());
            attempted.patch_type = Some("merge-patch");
        }
        WriteAction::JsonPatch(patch) => {
            attempted.method = "PATCH";
            attempted.patch = Some(patch.to_value());
            attempted.patch_type = Some("json-patch");
        }
        WriteAction::Delete => attempted.method = "DELETE",
        WriteAction::Revert { to } => {
            attempted.method = "POST";
            attempted.revert_to = Some(*to);
        }
    }
    attempted
}

/// For a refusal that SPEC §7 records (409 and 412 about the resource's state):
/// the refusal to answer (carrying the record's id) and the record to commit with
/// it. Other errors are not recorded: `None`.
pub fn record_refusal(
    command: &WriteCommand,
    error: EngineError,
    new_id: impl FnOnce() -> String,
    now: Timestamp,
) -> Result<(EngineError, NewRecord), EngineError> {
    let Some(current) = recorded_state(&error) else {
        return Err(error);
    };
    let id = new_id();
    let key: &ResourceKey = &command.key;
    let record = ConflictRecord {
        id: id.clone(),
        kind: error.kind().slug(),
        status: "open",
        resource: ResourceRef {
            collection: key.collection.as_str().to_owned(),
            id: key.id.as_str().to_owned(),
        },
        base_version: command.if_version.or_else(|| {
            command
                .preconditions
                .if_match
                .as_ref()
                .and_then(crate::policy::tag_version)
        }),
        current_version: current.map(|c| c.version),
        attempted: attempted(&command.action),
        by: command.by.as_str().to_owned(),
        request_id: command.request_id.clone(),
        detected_at: now,
        resolved_at: None,
        resolution: None,
        resolved_version: None,
        transaction: None,
    };
    Ok((
        EngineError::Recorded {
            source: Box::new(error),
            conflict_id: id,
        },
        record.into_new()?,
    ))
}

/// The record of a stale write that the collection's conflict policy accepted
/// (SPEC §7 "automatic outcomes"): type `merged` (status `auto_merged`) or
/// `overwritten` (status `overwritten`), with the base it named, the version it
/// was applied over and the version it made; closed from the start. Returns the
/// record's id and the side write.
pub fn record_policy(
    command: &WriteCommand,
    outcome: &WriteOutcome,
    applied: &PolicyApplied,
    new_id: impl FnOnce() -> String,
    now: Timestamp,
) -> Result<(String, NewRecord), EngineError> {
    let (kind, status, base, over) = match *applied {
        PolicyApplied::Merged { base, over } => ("merged", "auto_merged", base, over),
        PolicyApplied::Overwritten { base, over } => ("overwritten", "overwritten", base, over),
    };
    let id = new_id();
    let key = &command.key;
    let record = ConflictRecord {
        id: id.clone(),
        kind,
        status,
        resource: ResourceRef {
            collection: key.collection.as_str().to_owned(),
            id: key.id.as_str().to_owned(),
        },
        base_version: Some(base),
        current_version: Some(over),
        attempted: attempted(&command.action),
        by: command.by.as_str().to_owned(),
        request_id: command.request_id.clone(),
        detected_at: now,
        resolved_at: Some(now),
        resolution: Some(kind),
        resolved_version: Some(outcome.version.number),
        transaction: None,
    };
    Ok((id, record.into_new()?))
}

/// How a retry that named a record with `Truce-Resolves` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// It was applied (or found its content already there) at this version.
    Landed {
        /// The resource's version after the retry.
        version: u64,
    },
    /// It was refused again: the newer record keeps the attempt.
    RefusedAgain {
        /// The newer record.
        by: String,
    },
}

/// The record `stored` after a retry named it with `Truce-Resolves`: resolved
/// (`retried` when the retry landed, `superseded` with `superseded_by` when it was
/// refused again and left a newer record, so a read-modify-write loop leaves no
/// open record behind), if it is open and of the resource the retry wrote;
/// otherwise `None` (the header names nothing this write can close, and is
/// ignored).
pub fn resolve_by_retry(
    stored: &[u8],
    key: &ResourceKey,
    retry: Retry,
    now: Timestamp,
) -> Option<SideWrite> {
    let mut record: Value = serde_json::from_slice(stored).ok()?;
    let same_resource = record["resource"]["collection"] == key.collection.as_str()
        && record["resource"]["id"] == key.id.as_str();
    if record["status"] != "open" || !same_resource {
        return None;
    }
    let id = record["id"].as_str()?.to_owned();
    let fields = record.as_object_mut()?;
    fields.insert("status".into(), Value::from("resolved"));
    fields.insert("resolved_at".into(), serde_json::to_value(now).ok()?);
    match retry {
        Retry::Landed { version } => {
            fields.insert("resolution".into(), Value::from("retried"));
            fields.insert("resolved_version".into(), Value::from(version));
        }
        Retry::RefusedAgain { by } => {
            fields.insert("resolution".into(), Value::from("superseded"));
            fields.insert("superseded_by".into(), Value::from(by));
        }
    }
    Some(SideWrite {
        table: SideTable::Conflicts,
        key: id.into_bytes(),
        value: Some(serde_json::to_vec(&record).ok()?.into()),
    })
}

/// Which records a listing shows (SPEC §7 filters); every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictFilter {
    /// `open`, `resolved`, `dismissed`, `auto_merged` or `overwritten`.
    pub status: Option<String>,
    /// The resource's collection.
    pub collection: Option<String>,
    /// The resource's id.
    pub id: Option<String>,
    /// The record's type (a problem slug, `merged` or `overwritten`).
    pub kind: Option<String>,
}

impl ConflictFilter {
    /// Whether the stored record (as JSON) passes the filter.
    pub fn matches(&self, record: &Value) -> bool {
        let is = |value: &Value, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|w| value.as_str() == Some(w))
        };
        is(&record["status"], &self.status)
            && is(&record["resource"]["collection"], &self.collection)
            && is(&record["resource"]["id"], &self.id)
            && is(&record["type"], &self.kind)
    }
}

/// What a refused write would have made of `base` (the version it was based on):
/// SPEC §7's `ours`. `None` when it cannot be said (no base for a patch, a patch
/// that does not apply to it, a revert), or for a deletion.
pub fn ours(record: &Value, base: Option<&Value>) -> Option<Value> {
    let attempted = &record["attempted"];
    match attempted["method"].as_str()? {
        "PUT" | "POST" if attempted.get("body").is_some() => Some(attempted["body"].clone()),
        "PATCH" => {
            let base = base?;
            let patch = &attempted["patch"];
            match attempted["patch_type"].as_str()? {
                "merge-patch" => Some(crate::patch::apply_merge_patch(base, patch)),
                _ => crate::patch::JsonPatch::parse(patch.to_string().as_bytes())
                    .ok()?
                    .apply(base)
                    .ok(),
            }
        }
        _ => None,
    }
}

/// What conflict retention needs of a stored record: `live` says whether a
/// resource is live (an open record of a live resource is kept until its age runs
/// out). `None` for a value that is not a readable record.
pub fn record_summary(
    key: &[u8],
    stored: &[u8],
    live: &mut dyn FnMut(&ResourceKey) -> bool,
) -> Option<crate::retention::RecordSummary> {
    let record: Value = serde_json::from_slice(stored).ok()?;
    let collection = record["resource"]["collection"].as_str()?.to_owned();
    let detected_at = Timestamp::parse_rfc3339(record["detected_at"].as_str()?)?;
    let protected = record["status"] == "open"
        && ResourceKey::parse(&collection, record["resource"]["id"].as_str()?)
            .is_ok_and(|resource| live(&resource));
    Some(crate::retention::RecordSummary {
        key: key.to_vec(),
        collection,
        detected_at,
        protected,
    })
}

/// The answer for a conflict id that names no record.
pub fn record_not_found(cid: &str) -> EngineError {
    EngineError::NotFound {
        detail: format!("there is no conflict record {cid}"),
        tombstone: None,
    }
}

/// A stored record, read: its JSON and the resource it is about.
pub fn parse_record(cid: &str, stored: &[u8]) -> Result<(Value, ResourceKey), EngineError> {
    let record: Value = serde_json::from_slice(stored)
        .map_err(|e| EngineError::Internal(format!("conflict record {cid} unreadable: {e}")))?;
    let key = ResourceKey::parse(
        record["resource"]["collection"]
            .as_str()
            .unwrap_or_default(),
        record["resource"]["id"].as_str().unwrap_or_default(),
    )
    .map_err(|e| EngineError::Internal(format!("conflict record {cid} names no resource: {e}")))?;
    Ok((record, key))
}

/// A record as SPEC §7 serves one: with `base` (the version it was based on, if
/// retention still has it), `ours` (what the refused write would have made of
/// it), `theirs` (the current document) and `paths` (where ours and theirs
/// differ).
pub fn with_sides(mut record: Value, base: Option<Value>, theirs: Option<Value>) -> Value {
    let ours = ours(&record, base.as_ref());
    let paths = match (&ours, &theirs) {
        (Some(ours), Some(theirs)) => differing_paths(ours, theirs),
        _ => Vec::new(),
    };
    if let Some(fields) = record.as_object_mut() {
        fields.insert("base".into(), base.unwrap_or(Value::Null));
        fields.insert("ours".into(), ours.unwrap_or(Value::Null));
        fields.insert("theirs".into(), theirs.unwrap_or(Value::Null));
        fields.insert("paths".into(), Value::from(paths));
    }
    record
}

/// The JSON paths (pointers) at which `ours` and `theirs` differ.
pub fn differing_paths(ours: &Value, theirs: &Value) -> Vec<String> {
    crate::merge::changes(theirs, ours)
        .iter()
        .map(|change| crate::merge::pointer(&change.path))
        .collect()
}

/// For a failed transaction op: the transaction's refusal (409
/// `transaction-conflict` naming the op) and, when the op's own refusal is one
/// SPEC §7 records, the record to commit with it (type `transaction-conflict`,
/// the op's attempt, and which op of the transaction failed and why).
pub fn record_txn_refusal(
    op: &crate::txn::TxnOp,
    failed_op: usize,
    ops: usize,
    command: &crate::txn::TxnCommand,
    error: EngineError,
    new_id: impl FnOnce() -> String,
    now: Timestamp,
) -> Result<(EngineError, Option<NewRecord>), EngineError> {
    let key = op.key().clone();
    let refusal = |error: EngineError, conflict_id| EngineError::TransactionConflict {
        failed_op,
        op: op.name(),
        resource: key.clone(),
        reason: Box::new(error),
        conflict_id,
    };
    let Some(current) = recorded_state(&error) else {
        return Ok((refusal(error, None), None));
    };
    let (attempted, base_version) = match op {
        crate::txn::TxnOp::Write(command) => (
            attempted(&command.action),
            command.if_version.or_else(|| {
                command
                    .preconditions
                    .if_match
                    .as_ref()
                    .and_then(crate::policy::tag_version)
            }),
        ),
        crate::txn::TxnOp::Check(check) => (
            Attempted {
                method: "CHECK",
                body: None,
                patch: None,
                patch_type: None,
                revert_to: None,
            },
            check
                .if_version
                .or_else(|| check.if_match.as_ref().and_then(crate::policy::tag_version)),
        ),
    };
    let id = new_id();
    let record = ConflictRecord {
        id: id.clone(),
        kind: crate::problem::ProblemKind::TransactionConflict.slug(),
        status: "open",
        resource: ResourceRef {
            collection: key.collection.as_str().to_owned(),
            id: key.id.as_str().to_owned(),
        },
        base_version,
        current_version: current.map(|c| c.version),
        attempted,
        by: command.by.as_str().to_owned(),
        request_id: command.request_id.clone(),
        detected_at: now,
        resolved_at: None,
        resolution: None,
        resolved_version: None,
        transaction: Some(TxnNote {
            failed_op,
            ops,
            reason: error.kind().slug(),
        }),
    };
    let record = record.into_new()?;
    Ok((refusal(error, Some(id)), Some(record)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Principal;
    use crate::document::{Document, DocumentLimits};
    use crate::etag::{ETag, TagCondition};
    use crate::precondition::{FailedCondition, Preconditions};
    use serde_json::json;

    #[test]
    fn a_stale_put_is_recorded_with_its_base_and_body() {
        let key = ResourceKey::parse("notes", "a").unwrap();
        let stale = ETag::derive(&key, 3, 9, Timestamp::from_millis(1));
        let preconditions = Preconditions {
            if_match: Some(TagCondition::parse([stale.to_header().as_str()]).unwrap()),
            ..Preconditions::default()
        };
        let command = WriteCommand {
            key: key.clone(),
            action: WriteAction::Put(
                Document::parse(br#"{"n":4}"#, DocumentLimits::default()).unwrap(),
            ),
            preconditions,
            if_version: None,
            by: Principal::anonymous(),
            request_id: Some("req-1".into()),
            resolves: None,
            idempotency: None,
            lock_token: None,
            key_check: None,
        };
        let refusal = EngineError::PreconditionFailed {
            condition: FailedCondition::IfMatch,
            current: Some(CurrentState {
                resource: key.clone(),
                version: 5,
                etag: ETag::derive(&key, 5, 11, Timestamp::from_millis(2)),
            }),
            current_matches_request: false,
        };
        let (answer, record) = record_refusal(
            &command,
            refusal,
            || "01CONFLICT".into(),
            Timestamp::from_millis(3),
        )
        .unwrap();
        let side = record.side;
        // The facts handed to the writer are the ones the stored record holds.
        assert_eq!(
            Some(record.facts),
            RecordFacts::read(side.value.as_ref().unwrap())
        );
        let problem = answer.problem();
        assert_eq!(problem.kind.slug(), "precondition-failed");
        assert_eq!(problem.fields["conflict_id"], "01CONFLICT");
        assert_eq!(problem.fields["current_version"], 5);
        assert_eq!(side.key, b"01CONFLICT");
        let stored: Value = serde_json::from_slice(side.value.as_ref().unwrap()).unwrap();
        assert_eq!(stored["type"], "precondition-failed");
        assert_eq!(stored["status"], "open");
        assert_eq!(stored["base_version"], 3);
        assert_eq!(stored["current_version"], 5);
        assert_eq!(
            stored["attempted"],
            json!({"method": "PUT", "body": {"n": 4}})
        );
        assert_eq!(stored["request_id"], "req-1");
        assert_eq!(
            stored["resource"],
            json!({"collection": "notes", "id": "a"})
        );
    }

    #[test]
    fn the_facts_of_an_automatic_outcome_are_those_of_its_stored_record() {
        let record = ConflictRecord {
            id: "01MERGED".into(),
            kind: "merged",
            status: "auto_merged",
            resource: ResourceRef {
                collection: "notes".into(),
                id: "a \"quoted\" id".into(),
            },
            base_version: Some(2),
            current_version: Some(4),
            attempted: attempted(&WriteAction::Delete),
            by: "alice".into(),
            request_id: None,
            detected_at: Timestamp::from_millis(5),
            resolved_at: Some(Timestamp::from_millis(6)),
            resolution: Some("merged"),
            resolved_version: Some(5),
            transaction: Some(TxnNote {
                failed_op: 1,
                ops: 2,
                reason: "precondition-failed",
            }),
        };
        let new = record.into_new().unwrap();
        let stored = new.side.value.as_ref().unwrap();
        assert_eq!(Some(new.facts.clone()), RecordFacts::read(stored));
        let written = new.facts.written(9).unwrap();
        assert_eq!(written.labels.2, "auto_merged");
        let event: Value = serde_json::from_slice(written.event.value.as_ref().unwrap()).unwrap();
        assert_eq!(event["at"], json!(Timestamp::from_millis(6)));
        assert_eq!(event["base_version"], 2);
    }

    #[test]
    fn other_errors_are_not_recorded() {
        let command = WriteCommand {
            key: ResourceKey::parse("notes", "a").unwrap(),
            action: WriteAction::Delete,
            preconditions: Preconditions::default(),
            if_version: None,
            by: Principal::anonymous(),
            request_id: None,
            resolves: None,
            idempotency: None,
            lock_token: None,
            key_check: None,
        };
        let missing = EngineError::NotFound {
            detail: "gone".into(),
            tombstone: None,
        };
        assert!(
            record_refusal(&command, missing, || "x".into(), Timestamp::from_millis(0)).is_err()
        );
    }
}
