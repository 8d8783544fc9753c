//! Resolving and dismissing conflict records (SPEC §7).
//!
//! A resolution is itself conflict-protected: it takes a side of a conflict as it
//! was recorded, so if the resource moved past the record's `current_version`
//! since, the resolution is refused (409 version-conflict) unless it carries
//! `If-Match` of the current ETag, which says "I have seen what is there now".
//! Taking `ours` or a supplied `doc` writes a new version (op `resolve`) and closes
//! the record in the same commit; taking `theirs` and dismissing only close it. A
//! closed record cannot be resolved or dismissed again (409 state-conflict).

use serde_json::Value;

use crate::command::{Principal, WriteOutcome, WriteStatus};
use crate::conflict::{ours, parse_record, record_not_found};
use crate::document::Document;
use crate::error::{CurrentState, EngineError};
use crate::name::ResourceKey;
use crate::precondition::{Evaluation, FailedCondition, Preconditions, Safety, Validators};
use crate::read::{ReadContext, VersionLookup, lookup_version};
use crate::record::{Op, Version};
use crate::rules::{Effect, SideTable, SideWrite, VersionWrite, WriteContext, next_version};
use crate::store::StateView;

/// Which side a resolution takes.
#[derive(Debug, Clone)]
pub enum Take {
    /// The current document: nothing is written but the record.
    Theirs,
    /// What the refused write would have made of the version it was based on.
    Ours,
    /// A document the resolver supplies (a manual merge).
    Doc(Document),
}

/// What to do with a record.
#[derive(Debug, Clone)]
pub enum ResolutionAction {
    /// Resolve it by taking a side.
    Resolve(Take),
    /// Close it without a change.
    Dismiss,
}

/// A resolution or dismissal, as the HTTP layer asks for it.
#[derive(Debug, Clone)]
pub struct ResolutionCommand {
    /// The record.
    pub cid: String,
    /// What to do.
    pub action: ResolutionAction,
    /// `If-Match` (of the current ETag, to resolve a resource that moved on).
    pub preconditions: Preconditions,
    /// Who resolves.
    pub by: Principal,
    /// `Idempotency-Key`: the answer is kept with the resolution (SPEC §9).
    pub idempotency: Option<crate::idempotency::Idempotent<ResolutionOutcome>>,
    /// `Lock-Token`: the lease the resolution's write is made under (SPEC §4).
    pub lock_token: Option<String>,
}

/// How a resolution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolutionOutcome {
    /// The record, closed.
    pub record: Value,
    /// The version written, when one was.
    pub write: Option<WriteOutcome>,
}

/// A planned resolution: the answer and what to commit.
#[derive(Debug, Clone)]
pub struct PlannedResolution {
    /// What to answer once the commit is durable.
    pub outcome: ResolutionOutcome,
    /// The record's new state, and the version when one is written.
    pub effect: Effect,
}

/// Plans a resolution of the record `stored` (as the backend found it, `None`
/// when there is none).
pub fn plan_resolution(
    view: &dyn StateView,
    stored: Option<&[u8]>,
    command: &ResolutionCommand,
    ctx: &WriteContext<'_>,
) -> Result<PlannedResolution, EngineError> {
    let cid = &command.cid;
    let stored = stored.ok_or_else(|| record_not_found(cid))?;
    let (mut record, key) = parse_record(cid, stored)?;
    let target = match command.action {
        ResolutionAction::Resolve(_) => "resolved",
        ResolutionAction::Dismiss => "dismissed",
    };
    let status = record["status"].as_str().unwrap_or_default().to_owned();
    if status != "open" {
        return Err(EngineError::StateConflict {
            detail: format!(
                "conflict record {cid} is {status}: only an open record can become {target}"
            ),
            from: status,
            to: target.to_owned(),
            allowed: Vec::new(),
        });
    }
    let head = view.head(&key)?;
    let mut write = None;
    let mut writes = Vec::new();
    let resolution = match &command.action {
        ResolutionAction::Dismiss => None,
        ResolutionAction::Resolve(take) => {
            check_not_moved(&key, head.as_ref(), &record, &command.preconditions)?;
            let content = match take {
                Take::Theirs => None,
                Take::Doc(doc) => Some(Some(doc.clone())),
                Take::Ours => Some(ours_content(view, &key, &record, ctx)?),
            };
            if let Some(content) = content {
                // Writing a version is a write like any other: a lock guards it.
                if let Some(refusal) = ctx.locked {
                    return Err(refusal.clone());
                }
                let live = head.as_ref().filter(|v| !v.is_tombstone());
                let unchanged = match (&content, live) {
                    (Some(doc), Some(live)) => {
                        live.body.as_ref().is_some_and(|b| doc.same_content_as(b))
                    }
                    (None, None) => true,
                    _ => false,
                };
                if !unchanged {
                    let status = match (&content, live) {
                        (None, _) => WriteStatus::Deleted,
                        (Some(_), None) => WriteStatus::Created,
                        (Some(_), Some(_)) => WriteStatus::Updated,
                    };
                    let body = content.map(|doc| doc.bytes().clone());
                    let version = next_version(head.as_ref(), ctx, Op::Resolve, &command.by, body);
                    write = Some(WriteOutcome {
                        key: key.clone(),
                        status,
                        version: version.clone(),
                        policy: None,
                        conflict_id: None,
                    });
                    writes.push(VersionWrite {
                        key: key.clone(),
                        version,
                    });
                }
            }
            Some(match take {
                Take::Theirs => "theirs",
                Take::Ours => "ours",
                Take::Doc(_) => "doc",
            })
        }
    };
    if let Some(fields) = record.as_object_mut() {
        fields.insert("status".into(), Value::from(target));
        let at = serde_json::to_value(ctx.now).unwrap_or(Value::Null);
        match resolution {
            Some(resolution) => {
                fields.insert("resolution".into(), Value::from(resolution));
                fields.insert("resolved_at".into(), at);
                let version = write
                    .as_ref()
                    .map(|w| w.version.number)
                    .or(head.as_ref().map(|h| h.number));
                fields.insert("resolved_version".into(), Value::from(version));
            }
            None => {
                fields.insert("dismissed_at".into(), at);
            }
        }
        fields.insert("closed_by".into(), Value::from(command.by.as_str()));
    }
    let value = serde_json::to_vec(&record)
        .map_err(|e| EngineError::Internal(format!("conflict record not encodable: {e}")))?;
    Ok(PlannedResolution {
        outcome: ResolutionOutcome { record, write },
        effect: Effect {
            writes,
            side: vec![SideWrite {
                table: SideTable::Conflicts,
                key: cid.clone().into_bytes(),
                value: Some(value.into()),
            }],
        },
    })
}

/// A resolution takes a side as recorded: refused if the resource has moved on
/// since, unless `If-Match` names what is there now (a false one is a 412).
fn check_not_moved(
    key: &ResourceKey,
    head: Option<&Version>,
    record: &Value,
    preconditions: &Preconditions,
) -> Result<(), EngineError> {
    let live = head.filter(|v| !v.is_tombstone());
    let current = live.map(|v| CurrentState::of(key, v));
    if preconditions.if_match.is_some() {
        let validators = live.zip(current.as_ref()).map(|(v, state)| Validators {
            etag: &state.etag,
            last_modified_secs: v.at.secs(),
        });
        return match preconditions.evaluate(Safety::Unsafe, validators) {
            Evaluation::Proceed => Ok(()),
            Evaluation::Failed(condition) => Err(EngineError::PreconditionFailed {
                condition,
                current,
                current_matches_request: false,
            }),
            Evaluation::NotModified => Err(EngineError::PreconditionFailed {
                condition: FailedCondition::IfNoneMatch,
                current,
                current_matches_request: false,
            }),
        };
    }
    let recorded = record["current_version"].as_u64().unwrap_or(0);
    let now = live.map_or(0, |v| v.number);
    if now != recorded {
        return Err(EngineError::VersionConflict {
            expected: recorded,
            current,
        });
    }
    Ok(())
}

/// The content `ours` leaves: the refused write applied to its base (`None`: a
/// deletion).
fn ours_content(
    view: &dyn StateView,
    key: &ResourceKey,
    record: &Value,
    ctx: &WriteContext<'_>,
) -> Result<Option<Document>, EngineError> {
    if record["attempted"]["method"] == "DELETE" {
        return Ok(None);
    }
    let base = match record["base_version"].as_u64() {
        Some(n) => match lookup_version(
            view,
            key,
            n,
            ReadContext {
                retention: ctx.retention,
                now: ctx.now,
            },
        )? {
            VersionLookup::Found(version) => version
                .body
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
            _ => None,
        },
        None => None,
    };
    let value = ours(record, base.as_ref()).ok_or_else(|| {
        EngineError::invalid(
            "",
            "this record's change cannot be re-applied (its base version is gone, or it was a revert or a transaction's check); take theirs or supply a doc",
        )
    })?;
    Ok(Some(Document::from_result(value, ctx.limits)?))
}
