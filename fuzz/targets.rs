//! The fuzz targets' bodies, shared by the libFuzzer binaries (`fuzz/fuzz_targets/`)
//! and the workspace's corpus replay test (`crates/truce/tests/fuzz_corpus.rs`),
//! which runs every kept input on every `cargo test`. Each body must never panic
//! and checks what must hold for any input.

use bytes::Bytes;
use serde_json::Value;
use truce_engine::{
    CollectionName, CollectionSettings, DocId, Document, DocumentLimits, ETag, JsonPatch,
    MergeOutcome, Op, Preconditions, Principal, ResourceKey, Retention, Safety, StateView,
    StorageError, TagCondition, Timestamp, Validators, Version, WriteAction, WriteCommand,
    WriteContext, plan_write, three_way,
};

/// A target's body: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// Every target, by name: the fuzz binaries' names and the corpus directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("preconditions", preconditions),
    ("patch", patch),
    ("merge", merge),
    ("names", names),
    ("wal_frames", wal_frames),
];

/// Splits input at the first `0xff` bytes into up to `n` parts.
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0xff).collect()
}

/// `If-Match`, `If-None-Match` (entity-tag lists) and `If-Unmodified-Since`
/// (an HTTP-date) as a client may send them, evaluated against a current
/// version: parsing never panics, and `*` or the exact current tag always holds.
pub fn preconditions(data: &[u8]) {
    let fields = parts(data, 4);
    let text = |i: usize| {
        fields
            .get(i)
            .map(|f| String::from_utf8_lossy(f).into_owned())
    };
    let key = ResourceKey::parse("c", "d").expect("a valid key");
    let etag = ETag::derive(&key, 3, 7, Timestamp::from_millis(1_700_000_000_000));
    let parse_list =
        |text: Option<String>| text.and_then(|t| TagCondition::parse(t.split('\n')).ok());
    let conditions = Preconditions {
        if_match: parse_list(text(0)),
        if_none_match: parse_list(text(1)),
        if_unmodified_since: text(2)
            .and_then(|t| httpdate::parse_http_date(&t).ok())
            .map(|at| Timestamp::from_system_time(at).secs()),
        if_modified_since: None,
    };
    let validators = Validators {
        etag: &etag,
        last_modified_secs: 1_700_000_000,
    };
    for safety in [Safety::Safe, Safety::Unsafe] {
        let _ = conditions.evaluate(safety, Some(validators));
        let _ = conditions.evaluate(safety, None);
    }
    for holds in ["*".to_owned(), etag.to_header()] {
        let condition = TagCondition::parse([holds.as_str()]).expect("a valid list");
        assert!(condition.matches_strong(&etag), "{holds} must match");
    }
}

/// One resource at one version: the state a planned write reads.
struct OneResource {
    key: ResourceKey,
    head: Version,
}

impl StateView for OneResource {
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
        Ok((*key == self.key).then(|| self.head.clone()))
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

/// A merge patch and a JSON Patch applied by the write rules to a document:
/// never a panic, and an accepted result is a JSON object within the limits.
pub fn patch(data: &[u8]) {
    let fields = parts(data, 2);
    let limits = DocumentLimits {
        max_body_bytes: 64 * 1024,
        max_depth: 16,
    };
    let Some(Ok(doc)) = fields.first().map(|d| Document::parse(d, limits)) else {
        return;
    };
    let patch_bytes = fields.get(1).copied().unwrap_or_default();
    let key = ResourceKey::parse("c", "d").expect("a valid key");
    let view = OneResource {
        key: key.clone(),
        head: Version {
            number: 1,
            revision: 1,
            at: Timestamp::from_millis(1_000),
            op: Op::Create,
            by: "fuzz".into(),
            body: Some(doc.bytes().clone()),
        },
    };
    let mut actions = Vec::new();
    if let Ok(value) = serde_json::from_slice::<Value>(patch_bytes) {
        actions.push(WriteAction::MergePatch(value));
    }
    if let Ok(json_patch) = JsonPatch::parse(patch_bytes) {
        actions.push(WriteAction::JsonPatch(json_patch));
    }
    let retention = Retention::default();
    let ctx = WriteContext {
        revision: 2,
        now: Timestamp::from_millis(2_000),
        limits,
        retention: &retention,
        settings: CollectionSettings::default(),
        locked: None,
    };
    for action in actions {
        let command = WriteCommand {
            key: key.clone(),
            action,
            preconditions: Preconditions::default(),
            if_version: None,
            by: Principal::anonymous(),
            request_id: None,
            resolves: None,
            idempotency: None,
            lock_token: None,
            key_check: None,
        };
        if let Ok(planned) = plan_write(&view, &command, &ctx) {
            let body = planned.outcome.version.body.unwrap_or_else(Bytes::new);
            assert!(
                body.len() <= limits.max_body_bytes,
                "a result over the size limit"
            );
            let value: Value = serde_json::from_slice(&body).expect("a stored result is JSON");
            assert!(value.is_object(), "a stored result is an object");
        }
    }
}

/// The three-way merge of base, ours and theirs: never a panic, deterministic,
/// and a side that changed nothing takes the other side whole.
pub fn merge(data: &[u8]) {
    let fields = parts(data, 3);
    let parsed: Vec<Value> = fields
        .iter()
        .filter_map(|f| serde_json::from_slice(f).ok())
        .filter(|v: &Value| nesting(v) <= 32)
        .collect();
    let [base, ours, theirs] = parsed.as_slice() else {
        return;
    };
    let outcome = three_way(base, ours, theirs);
    let again = three_way(base, ours, theirs);
    assert_eq!(outcome, again, "the merge is deterministic");
    let merged = match &outcome {
        MergeOutcome::Clean { merged, .. } => Some(merged),
        MergeOutcome::Conflict { .. } => None,
    };
    if ours == base {
        assert_eq!(
            merged,
            Some(theirs),
            "we changed nothing: theirs wins whole"
        );
    }
    if theirs == base {
        assert_eq!(merged, Some(ours), "they changed nothing: ours wins whole");
    }
}

/// How deeply a value nests.
fn nesting(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// Collection names and document ids as a request path carries them: a name
/// that parses prints back as itself, and one made of a valid name's text
/// parses again the same.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for segment in text.split('/') {
        if let Ok(name) = CollectionName::parse(segment) {
            assert_eq!(name.as_str(), segment);
        }
        if let Ok(id) = DocId::parse(segment) {
            assert_eq!(id.as_str(), segment);
            assert_eq!(DocId::parse(id.as_str()).ok(), Some(id.clone()));
        }
    }
    let mut segments = text.splitn(2, '/');
    if let (Some(collection), Some(id)) = (segments.next(), segments.next()) {
        let _ = ResourceKey::parse(collection, id);
    }
}

/// The write-ahead log's reader, on whatever a file may hold: raw input, and
/// the input wrapped as a frame with a valid checksum (so the entries' parser
/// is reached, not only the checksum check). Never a panic; a valid frame's
/// entries are read back.
pub fn wal_frames(data: &[u8]) {
    let _ = truce_store::scan_wal(data);
    let epoch = 1u64;
    let mut framed = Vec::with_capacity(data.len() + 20);
    framed.extend_from_slice(b"TRW2");
    framed.extend_from_slice(&epoch.to_be_bytes());
    framed.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&epoch.to_be_bytes());
    crc.update(data);
    framed.extend_from_slice(&crc.finalize().to_be_bytes());
    framed.extend_from_slice(data);
    let scan = truce_store::scan_wal(&framed);
    assert!(scan.frames <= 1, "one frame's bytes hold at most one frame");
}
