//! Batch transactions (SPEC §5): several ops across collections, checked and
//! applied in one step of the write path and one commit, or not at all.
//!
//! Each op is judged exactly as the same request alone would be (its
//! preconditions, its lock, its collection's settings), with one exception: a
//! collection's conflict policy does not apply inside a transaction. An op whose
//! `if_match` or `if_version` is stale fails the transaction instead of being
//! merged or overwritten, because a transaction's ops are meant to hold
//! together, and a merged op would no longer be what the client checked. The
//! first op that fails decides the answer: 409 `transaction-conflict` naming it
//! (`failed_op`), the problem it got (`reason`) and the resource's current
//! version; nothing of the transaction is applied, and one conflict record
//! (type `transaction-conflict`) keeps the failed op and the transaction it was
//! part of. Every write of a transaction that lands shares one revision.

use serde_json::{Map, Value};

use crate::command::{Principal, WriteAction, WriteCommand, WriteOutcome, WriteStatus};
use crate::document::{Document, DocumentLimits};
use crate::error::StorageError;
use crate::error::{CurrentState, EngineError};
use crate::etag::TagCondition;
use crate::idempotency::Idempotent;
use crate::locks::check_lock_token;
use crate::name::ResourceKey;
use crate::patch::JsonPatch;
use crate::precondition::{FailedCondition, Preconditions};
use crate::record::Version;
use crate::store::StateView;

/// Most ops one transaction may hold.
pub const MAX_TXN_OPS: usize = 1_000;
/// Largest transaction body, in bytes.
pub const MAX_TXN_BYTES: usize = 8 * 1024 * 1024;

/// One op of a transaction.
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Checks preconditions only, writing nothing.
    Check(TxnCheck),
    /// A write, as the same request alone would make it.
    Write(Box<WriteCommand>),
}

/// A `check` op: the resource's state must satisfy these.
#[derive(Debug, Clone)]
pub struct TxnCheck {
    /// The resource.
    pub key: ResourceKey,
    /// Its current ETag must match (strong comparison).
    pub if_match: Option<TagCondition>,
    /// Its current version must be this (0: must not exist).
    pub if_version: Option<u64>,
    /// The lease the check is made under, if the resource is locked.
    pub lock_token: Option<String>,
}

impl TxnOp {
    /// The resource the op is about.
    pub fn key(&self) -> &ResourceKey {
        match self {
            Self::Check(check) => &check.key,
            Self::Write(command) => &command.key,
        }
    }

    /// The op's `Lock-Token`.
    pub fn lock_token(&self) -> Option<&str> {
        match self {
            Self::Check(check) => check.lock_token.as_deref(),
            Self::Write(command) => command.lock_token.as_deref(),
        }
    }

    /// The op's name, as the request gave it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Check(_) => "check",
            Self::Write(command) => match command.action {
                WriteAction::Put(_) if command.preconditions.if_none_match.is_some() => "create",
                WriteAction::Put(_) | WriteAction::Create(_) => "put",
                WriteAction::MergePatch(_) | WriteAction::JsonPatch(_) => "patch",
                WriteAction::Delete => "delete",
                WriteAction::Revert { .. } => "revert",
            },
        }
    }
}

/// A transaction, parsed and validated for syntax.
#[derive(Debug, Clone)]
pub struct TxnCommand {
    /// The ops, in order.
    pub ops: Vec<TxnOp>,
    /// Who asks.
    pub by: Principal,
    /// The request id, kept in the conflict record a refusal creates.
    pub request_id: Option<String>,
    /// `Idempotency-Key`: the answer is kept with the transaction (SPEC §9).
    pub idempotency: Option<Idempotent<TxnOutcome>>,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The revision its writes share (the current one when it wrote nothing).
    pub revision: u64,
    /// One result per op, in order.
    pub results: Vec<TxnResult>,
}

/// What one op did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// The resource.
    pub key: ResourceKey,
    /// `checked`, `created`, `updated`, `unchanged` or `deleted`.
    pub outcome: &'static str,
    /// The resource's version after the transaction (0: it never existed).
    pub version: u64,
    /// Its ETag then (none for a resource that never existed).
    pub etag: Option<String>,
}

impl TxnResult {
    /// The result of a write op.
    pub fn written(outcome: &WriteOutcome) -> Self {
        let status = match outcome.status {
            WriteStatus::Created => "created",
            WriteStatus::Updated => "updated",
            WriteStatus::Unchanged => "unchanged",
            WriteStatus::Deleted => "deleted",
        };
        Self {
            key: outcome.key.clone(),
            outcome: status,
            version: outcome.version.number,
            etag: Some(outcome.version.etag(&outcome.key).to_string()),
        }
    }
}

/// The commit of an interactive transaction (SPEC §5): what its snapshot read
/// and the writes it buffered. It commits only if nothing it read or wrote,
/// and nothing in the ranges it listed, changed after its snapshot: then the
/// transaction is equivalent to running alone at the commit (serializable).
#[derive(Debug, Clone)]
pub struct SnapshotCommit {
    /// The snapshot revision the transaction read.
    pub snapshot: u64,
    /// Every resource it read or wrote.
    pub reads: Vec<ResourceKey>,
    /// Every `(collection, id prefix)` range it listed.
    pub ranges: Vec<(crate::name::CollectionName, String)>,
    /// Its buffered writes, in the order made, as ops without preconditions
    /// (the snapshot check stands for them).
    pub writes: TxnCommand,
}

/// One resource as an interactive transaction sees it (its buffered write, or
/// its version at the snapshot), so that a write inside the transaction is
/// judged by the same rules as one outside it.
struct SessionView<'a> {
    key: &'a ResourceKey,
    head: Option<&'a Version>,
}

impl StateView for SessionView<'_> {
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
        Ok(self.head.filter(|_| key == self.key).cloned())
    }

    fn walk_back(
        &self,
        _key: &ResourceKey,
        _below: u64,
        _visit: &mut dyn FnMut(Version) -> bool,
    ) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Plans a write made inside an interactive transaction on top of `visible`
/// (what the transaction sees of the resource): 404 for a patch of a missing
/// document, its preconditions against `visible`, the patch applied, the
/// document checked. The outcome's version is the transaction's own (its ETag
/// is valid inside the transaction only); the write is applied at commit.
/// Collection policies do not apply inside a transaction; `require_preconditions`
/// is met at commit, where every buffered write names the version it was based on.
pub fn plan_buffered(
    visible: Option<&Version>,
    command: &WriteCommand,
    snapshot: u64,
    now: crate::time::Timestamp,
    limits: DocumentLimits,
) -> Result<WriteOutcome, EngineError> {
    if matches!(
        command.action,
        WriteAction::Revert { .. } | WriteAction::Create(_)
    ) {
        return Err(EngineError::Malformed(
            "inside an interactive transaction, write documents with PUT, PATCH or DELETE".into(),
        ));
    }
    let view = SessionView {
        key: &command.key,
        head: visible,
    };
    let retention = crate::retention::Retention::default();
    let ctx = crate::rules::WriteContext {
        revision: snapshot.saturating_add(1),
        now,
        limits,
        retention: &retention,
        settings: crate::collection::CollectionSettings::default(),
        locked: None,
    };
    Ok(crate::rules::plan_write(&view, command, &ctx)?.outcome)
}

/// Judges a `check` op against the resource's current state: `Ok` with its
/// result, or the refusal the same conditions on a write would get.
pub fn check_op(
    view: &dyn StateView,
    check: &TxnCheck,
    locked: Option<&EngineError>,
) -> Result<TxnResult, EngineError> {
    let head = view.head(&check.key)?;
    let live = head.as_ref().filter(|v| !v.is_tombstone());
    let current = live.map(|v| CurrentState {
        resource: check.key.clone(),
        version: v.number,
        etag: v.etag(&check.key),
    });
    if let Some(condition) = &check.if_match
        && !current
            .as_ref()
            .is_some_and(|c| condition.matches_strong(&c.etag))
    {
        return Err(EngineError::PreconditionFailed {
            condition: FailedCondition::IfMatch,
            current,
            current_matches_request: false,
        });
    }
    let version = live.map_or(0, |v| v.number);
    if let Some(expected) = check.if_version
        && expected != version
    {
        return Err(EngineError::VersionConflict { expected, current });
    }
    if let Some(refusal) = locked {
        return Err(refusal.clone());
    }
    Ok(TxnResult {
        key: check.key.clone(),
        outcome: "checked",
        version,
        etag: current.map(|c| c.etag.to_string()),
    })
}

/// Parses a transaction body: `{"ops": [...]}`. Structural mistakes (not JSON,
/// unknown or ill-typed members, two ops on one resource) are 400; a
/// transaction that is empty or has more than [`MAX_TXN_OPS`] ops, or a
/// document that is not a valid one, is 422.
pub fn parse_txn(body: &[u8], limits: DocumentLimits) -> Result<Vec<TxnOp>, EngineError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| EngineError::Malformed(crate::json_errors::describe("the body", &e, 64)))?;
    let Value::Object(mut top) = value else {
        return Err(EngineError::Malformed(
            "a transaction is a JSON object {\"ops\": [...]}".into(),
        ));
    };
    let ops = match top.remove("ops") {
        Some(Value::Array(ops)) => ops,
        Some(_) => {
            return Err(EngineError::Malformed(
                "/ops must be an array of ops".into(),
            ));
        }
        None => return Err(EngineError::Malformed("the body has no /ops".into())),
    };
    if let Some(name) = top.keys().next() {
        return Err(EngineError::Malformed(format!(
            "/{name} is not a member of a transaction (only ops)"
        )));
    }
    if ops.is_empty() {
        return Err(EngineError::invalid(
            "/ops",
            "a transaction needs at least one op",
        ));
    }
    if ops.len() > MAX_TXN_OPS {
        return Err(EngineError::invalid(
            "/ops",
            format!(
                "a transaction holds at most {MAX_TXN_OPS} ops, not {}",
                ops.len()
            ),
        ));
    }
    let mut parsed: Vec<TxnOp> = Vec::with_capacity(ops.len());
    let mut seen = std::collections::HashMap::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let op = parse_op(index, op, limits)?;
        if let Some(first) = seen.insert(op.key().clone(), index) {
            return Err(EngineError::Malformed(format!(
                "ops {first} and {index} are both about {}: a transaction may touch a resource once (the second would be judged against the state before the first, which is never what it meant)",
                op.key()
            )));
        }
        parsed.push(op);
    }
    Ok(parsed)
}

/// Parses op `index`.
fn parse_op(index: usize, op: Value, limits: DocumentLimits) -> Result<TxnOp, EngineError> {
    let at = |member: &str| format!("/ops/{index}/{member}");
    let malformed =
        |member: &str, what: &str| EngineError::Malformed(format!("{}: {what}", at(member)));
    let Value::Object(mut fields) = op else {
        return Err(EngineError::Malformed(format!(
            "/ops/{index} must be an object"
        )));
    };
    let take_str =
        |fields: &mut Map<String, Value>, name: &str| -> Result<Option<String>, EngineError> {
            match fields.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text)),
                Some(_) => Err(malformed(name, "must be a string")),
            }
        };
    let kind = take_str(&mut fields, "op")?.ok_or_else(|| malformed("op", "missing"))?;
    let collection =
        take_str(&mut fields, "collection")?.ok_or_else(|| malformed("collection", "missing"))?;
    let id = take_str(&mut fields, "id")?.ok_or_else(|| malformed("id", "missing"))?;
    let key = ResourceKey::parse(&collection, &id)
        .map_err(|e| EngineError::Malformed(format!("/ops/{index}: {e}")))?;
    let if_match = match take_str(&mut fields, "if_match")? {
        Some(text) => Some(TagCondition::parse([text.as_str()]).map_err(|e| {
            malformed(
                "if_match",
                &format!("{e} (an ETag is quoted: \"3-1a2b3c4d\")"),
            )
        })?),
        None => None,
    };
    let if_version = match fields.remove("if_version") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .ok_or_else(|| malformed("if_version", "must be a whole number, 0 or more"))?,
        ),
    };
    let lock_token = take_str(&mut fields, "lock_token")?;
    if let Some(token) = &lock_token {
        check_lock_token(token).map_err(|_| {
            malformed(
                "lock_token",
                "must be the token a lock was granted with (32 hexadecimal digits)",
            )
        })?;
    }
    let doc = fields.remove("doc");
    let merge_patch = fields.remove("merge_patch");
    let json_patch = fields.remove("json_patch");
    if let Some(name) = fields.keys().next() {
        return Err(malformed(name, "is not a member of an op"));
    }
    let no = |present: bool, member: &str| -> Result<(), EngineError> {
        if present {
            Err(malformed(member, &format!("a {kind} op takes no {member}")))
        } else {
            Ok(())
        }
    };
    let document = |doc: Option<Value>| -> Result<Document, EngineError> {
        let doc =
            doc.ok_or_else(|| malformed("doc", &format!("a {kind} op needs the document")))?;
        let bytes = serde_json::to_vec(&doc)
            .map_err(|e| EngineError::Internal(format!("a parsed document: {e}")))?;
        Document::parse(&bytes, limits).map_err(|error| match error {
            EngineError::Invalid { errors } => EngineError::Invalid {
                errors: errors
                    .into_iter()
                    .map(|(pointer, message)| (format!("{}{pointer}", at("doc")), message))
                    .collect(),
            },
            EngineError::Malformed(detail) => {
                EngineError::Malformed(format!("{}: {detail}", at("doc")))
            }
            other => other,
        })
    };
    let mut preconditions = Preconditions {
        if_match,
        ..Preconditions::default()
    };
    let action = match kind.as_str() {
        "check" => {
            no(doc.is_some(), "doc")?;
            no(merge_patch.is_some(), "merge_patch")?;
            no(json_patch.is_some(), "json_patch")?;
            return Ok(TxnOp::Check(TxnCheck {
                key,
                if_match: preconditions.if_match,
                if_version,
                lock_token,
            }));
        }
        "create" | "put" => {
            no(merge_patch.is_some(), "merge_patch")?;
            no(json_patch.is_some(), "json_patch")?;
            if kind == "create" {
                if preconditions.if_match.is_some() || if_version.is_some() {
                    return Err(malformed(
                        "if_match",
                        "a create op needs the resource to be absent: it takes neither if_match nor if_version",
                    ));
                }
                preconditions.if_none_match = Some(TagCondition::Any);
            }
            WriteAction::Put(document(doc)?)
        }
        "patch" => {
            no(doc.is_some(), "doc")?;
            match (merge_patch, json_patch) {
                (Some(patch), None) => {
                    if !patch.is_object() {
                        return Err(malformed("merge_patch", "must be a JSON object (RFC 7396)"));
                    }
                    WriteAction::MergePatch(patch)
                }
                (None, Some(patch)) => {
                    let bytes = serde_json::to_vec(&patch)
                        .map_err(|e| EngineError::Internal(format!("a parsed patch: {e}")))?;
                    let parsed = JsonPatch::parse(&bytes).map_err(|error| match error {
                        EngineError::Malformed(detail) => malformed("json_patch", &detail),
                        other => other,
                    })?;
                    WriteAction::JsonPatch(parsed)
                }
                _ => {
                    return Err(malformed(
                        "merge_patch",
                        "a patch op needs exactly one of merge_patch and json_patch",
                    ));
                }
            }
        }
        "delete" => {
            no(doc.is_some(), "doc")?;
            no(merge_patch.is_some(), "merge_patch")?;
            no(json_patch.is_some(), "json_patch")?;
            WriteAction::Delete
        }
        other => {
            return Err(malformed(
                "op",
                &format!("{other:?} is not an op (check, create, put, patch, delete)"),
            ));
        }
    };
    Ok(TxnOp::Write(Box::new(WriteCommand {
        key,
        action,
        preconditions,
        if_version,
        by: Principal::anonymous(),
        request_id: None,
        resolves: None,
        idempotency: None,
        lock_token,
        key_check: None,
    })))
}

/// Gives every op the transaction's principal and request id.
pub fn sign_ops(ops: &mut [TxnOp], by: &Principal, request_id: Option<&str>) {
    for op in ops {
        if let TxnOp::Write(command) = op {
            command.by = by.clone();
            command.request_id = request_id.map(str::to_owned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: serde_json::Value) -> Result<Vec<TxnOp>, EngineError> {
        parse_txn(body.to_string().as_bytes(), DocumentLimits::default())
    }

    fn malformed(body: serde_json::Value) -> String {
        match parse(body) {
            Err(EngineError::Malformed(detail)) => detail,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn every_kind_of_op_is_read_with_its_conditions() {
        let ops = parse(serde_json::json!({"ops": [
            {"op": "check", "collection": "a", "id": "1", "if_version": 0},
            {"op": "create", "collection": "a", "id": "2", "doc": {"x": 1}},
            {"op": "put", "collection": "a", "id": "3", "doc": {}, "if_match": "\"2-ab\""},
            {"op": "patch", "collection": "b", "id": "1", "merge_patch": {"x": null}},
            {"op": "patch", "collection": "b", "id": "2", "json_patch": [{"op": "remove", "path": "/x"}]},
            {"op": "delete", "collection": "b", "id": "3", "lock_token": "0123456789abcdef0123456789abcdef"},
        ]}))
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = ops.iter().map(TxnOp::name).collect();
        assert_eq!(
            names,
            ["check", "create", "put", "patch", "patch", "delete"]
        );
        assert!(
            matches!(&ops[1], TxnOp::Write(w) if w.preconditions.if_none_match == Some(TagCondition::Any))
        );
        assert_eq!(
            ops[5].lock_token(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn a_resource_is_touched_once_and_ops_take_only_their_members() {
        let twice = malformed(serde_json::json!({"ops": [
            {"op": "put", "collection": "a", "id": "1", "doc": {}},
            {"op": "check", "collection": "a", "id": "1"},
        ]}));
        assert!(twice.contains("ops 0 and 1"), "{twice}");
        let both = malformed(serde_json::json!({"ops": [
            {"op": "patch", "collection": "a", "id": "1", "merge_patch": {}, "json_patch": []},
        ]}));
        assert!(both.contains("exactly one"), "{both}");
        let create = malformed(serde_json::json!({"ops": [
            {"op": "create", "collection": "a", "id": "1", "doc": {}, "if_version": 3},
        ]}));
        assert!(create.contains("/ops/0/if_match"), "{create}");
        let extra = malformed(serde_json::json!({"ops": [], "atomic": true}));
        assert!(extra.contains("/atomic"), "{extra}");
        assert!(malformed(serde_json::json!({"ops": [{"op": "delete", "collection": "a", "id": "1", "doc": {}}]})).contains("/ops/0/doc"));
    }

    #[test]
    fn the_number_of_ops_is_bounded() {
        assert!(matches!(
            parse(serde_json::json!({"ops": []})),
            Err(EngineError::Invalid { .. })
        ));
        let ops: Vec<serde_json::Value> = (0..=MAX_TXN_OPS)
            .map(|i| serde_json::json!({"op": "check", "collection": "a", "id": format!("d{i}")}))
            .collect();
        match parse(serde_json::json!({ "ops": ops })) {
            Err(EngineError::Invalid { errors }) => assert_eq!(errors[0].0, "/ops"),
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        /// A check holds exactly when each condition it names holds against the
        /// current version: `if_version` equal to it (0: absent), `if_match`
        /// the current ETag of a live document.
        #[test]
        fn a_check_holds_exactly_when_its_conditions_do(
            versions in 0u64..4,
            if_version in proptest::option::of(0u64..5),
            tag_of in proptest::option::of(1u64..5),
        ) {
            let view = crate::test_view::MemoryView::default();
            let mut etags = Vec::new();
            for n in 0..versions {
                let written = view
                    .run(crate::test_view::put(serde_json::json!({"n": n})))
                    .unwrap_or_else(|e| panic!("{e}"));
                etags.push(written.version.etag(&written.key));
            }
            let if_match = tag_of.map(|n| {
                let tag = etags
                    .get(usize::try_from(n).unwrap_or(0) - 1)
                    .map_or_else(|| format!("\"{n}-00000000\""), |e| e.to_header());
                TagCondition::parse([tag.as_str()]).unwrap_or_else(|e| panic!("{e}"))
            });
            let check = TxnCheck {
                key: crate::test_view::key(),
                if_match,
                if_version,
                lock_token: None,
            };
            let holds = if_version.is_none_or(|v| v == versions)
                && tag_of.is_none_or(|n| versions > 0 && n == versions);
            let result = check_op(&view, &check, None);
            proptest::prop_assert_eq!(result.is_ok(), holds, "{:?}", result);
            if let Ok(result) = result {
                proptest::prop_assert_eq!(result.version, versions);
            }
        }
    }
}
