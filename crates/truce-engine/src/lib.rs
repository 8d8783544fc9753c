//! The rules of truce, with no HTTP and no storage engine in sight.
//!
//! Everything that decides *what happens* to a resource lives here: which names are
//! valid, how ETags are made and compared, how RFC 9110 preconditions are evaluated,
//! how a write turns the current version into the next one (or is refused), how two
//! concurrent edits merge, how long history is kept, and which problem slug every
//! refusal maps to. The HTTP layer parses
//! requests into [`WriteCommand`]s and renders [`WriteOutcome`]s and [`EngineError`]s;
//! storage backends implement [`Store`] and run [`plan_write`] inside their own
//! transactions, so each rule exists exactly once.

mod batch;
mod change;
mod collection;
mod command;
mod compaction;
mod conflict;
mod document;
mod error;
mod etag;
mod events;
mod idempotency;
mod ids;
mod json_errors;
mod keys;
mod lock_signals;
mod locks;
mod merge;
mod name;
mod patch;
mod policy;
mod precondition;
mod problem;
mod rate;
mod read;
mod record;
mod resolution;
mod retention;
mod rules;
mod snapshot_reads;
mod store;
#[cfg(test)]
mod test_view;
mod time;
mod txn;
mod webhook;

pub use batch::{Batch, BatchNotes, BatchRules, BatchTables, Planner};
pub use change::{Change, ChangePage, ChangeQuery};
pub use collection::{
    CollectionSettings, ConflictPolicy, HistorySettings, SettingsCommand, SettingsOutcome,
    StoredSettings, WriteLimits, plan_settings,
};
pub use command::{PolicyApplied, Principal, WriteAction, WriteCommand, WriteOutcome, WriteStatus};
pub use compaction::{
    CompactionPlan, CompactionSource, MAX_REMOVALS_PER_PASS, Position, StoredHead, StoredVersion,
    plan_compaction,
};
pub use conflict::{
    Attempted, CONFLICT_ID_PATTERN, ConflictFilter, ConflictRecord, NewRecord, ResourceRef, Retry,
    check_conflict_id, parse_record as parse_conflict_record,
    record_not_found as conflict_not_found, record_policy, record_refusal, record_summary,
    resolve_by_retry, with_sides as conflict_with_sides,
};
pub use document::{Document, DocumentLimits};
pub use error::{CurrentState, EngineError, Problem, StorageError};
pub use etag::{ETag, EntityTag, EtagSyntaxError, TagCondition};
pub use events::{
    CONFLICT_EVENTS, ConflictEvent, EVENTS_WATERMARK_KEY, EventLine, RecordFacts, RecordWritten,
    decode_watermark, encode_watermark, event_at, event_matches, event_position,
};
pub use idempotency::{
    AnswerFn, Fingerprint, Idempotent, Replay, StoredAnswer, idempotency_scope, read_expiry_key,
    replay_of,
};
pub use ids::IdGenerator;
pub use json_errors::describe as describe_json_error;
pub use keys::{
    ApiKey, KEY_HASH_ROUNDS, KEY_NAME_RULE, KeyCheck, KeyRefusal, NewKey, Role, key_removal,
    new_key, read_key, record_digest, roles_grant, split_token, verify_key,
};
pub use lock_signals::{LOCK_GROUPS, LockGroups, LockSignals};
pub use locks::{
    LOCK_EVENTS, LockAction, LockEvent, LockJob, LockOutcome, LockState, LockView, MAX_TTL_MS,
    MAX_WAIT_MS, MAX_WAITERS, MIN_TTL_MS, check_lock_token, check_ttl, check_wait, lock_key,
    next_lock_expiry, waiters_prefix,
};
pub use merge::{
    FieldChange, FieldPath, MergeOutcome, Overlap, pointer as json_pointer, three_way,
};
pub use name::{CollectionName, DocId, NameError, ResourceKey};
pub use patch::{JsonPatch, diff_versions};
pub use precondition::{Evaluation, FailedCondition, Preconditions, Safety, Validators};
pub use problem::{ProblemInfo, ProblemKind};
pub use rate::Rate;
pub use read::{
    ReadContext, VersionLookup, history_page, lookup_at_revision, lookup_version, require_live,
    require_live_version,
};
pub use record::{HistoryEntry, HistoryPage, ListPage, ListQuery, Op, Version};
pub use resolution::{
    PlannedResolution, ResolutionAction, ResolutionCommand, ResolutionOutcome, Take,
    plan_resolution,
};
pub use retention::{CompactionReport, ConflictRetention, RecordSummary, Retention};
pub use rules::{
    Effect, Planned, SideCommit, SideTable, SideWrite, VersionWrite, WriteContext, plan_write,
    prefix_end,
};
pub use snapshot_reads::{list_at_snapshot, snapshot_version, version_at_snapshot};
pub use store::{StateView, Store};
pub use time::Timestamp;
pub use txn::{
    MAX_TXN_BYTES, MAX_TXN_OPS, SnapshotCommit, TxnCheck, TxnCommand, TxnOp, TxnOutcome, TxnResult,
    parse_txn, plan_buffered, sign_ops,
};
pub use webhook::{
    Attempt, Delivery, Lease, RetryRule, Subscription, after_attempt, claim as claim_delivery,
    log_key, log_key_at, next_look_ms, outbox_key, outbox_rows, read_delivery, sign,
    subscription_prefix, subscription_removal,
};
