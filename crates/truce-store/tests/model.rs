//! Random interleavings of conditional writes against the real embedded store,
//! compared step by step with a plain in-memory model of the contract (SPEC §1, §2,
//! §6, retention).
//!
//! Steps come in groups; the steps of a group touch different resources and are
//! sent at once, so they share group-commit batches of the real sequencer. Each
//! answer is compared with the model (status, version, body), and the revisions a
//! group's writes got must be exactly the next ones (in any order). Then every
//! version, head, history page, listing and the whole change feed are compared,
//! ETags and revisions included, with and without count retention and compaction.
//! Then a crash: the data directory is copied while the store is still open (what a
//! `kill -9` leaves: the files as the operating system holds them, nothing of the
//! process's memory), and the copy must hold every acknowledged version.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use truce_engine::{
    ChangeQuery, CollectionName, Document, DocumentLimits, ETag, EngineError, JsonPatch, ListQuery,
    Preconditions, Principal, ResourceKey, Retention, SideTable, Store, TagCondition,
    VersionLookup, WriteAction, WriteCommand, WriteStatus,
};
use truce_store::{EmbeddedConfig, EmbeddedStore};

const IDS: [&str; 3] = ["a", "b", "c"];
/// With retention on: versions kept per resource.
const KEEP: u64 = 3;

#[derive(Debug, Clone)]
enum Condition {
    None,
    IfMatchCurrent,
    /// If-Match with the ETag of the version this many steps before the head.
    IfMatchStale(u64),
    /// If-Match with a list: a stale ETag, then the current one.
    IfMatchList,
    /// If-Match with the current ETag made weak: never matches (strong comparison).
    IfMatchWeak,
    IfMatchAny,
    IfNoneMatchAny,
    /// If-None-Match with the current ETag made weak: matches (weak comparison).
    IfNoneMatchWeak,
    /// If-Unmodified-Since long ago (false for a live resource) or far ahead (true).
    IfUnmodifiedSince {
        past: bool,
    },
    IfVersionCurrent,
    IfVersion(u64),
}

#[derive(Debug, Clone)]
enum Action {
    Put(i64),
    MergePatch(&'static str, Option<i64>),
    /// JSON Patch: optionally `test` that `/z` is this, then `add` `value` at `field`.
    JsonPatch {
        test: Option<i64>,
        field: &'static str,
        value: i64,
    },
    Delete,
    Revert(u64),
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        id: usize,
        action: Action,
        condition: Condition,
    },
    /// `POST` to the collection: a new resource with a server-made id.
    Create(i64),
    /// A compaction pass (alone in its group).
    Compact,
}

fn write_step() -> impl Strategy<Value = Step> {
    let action = prop_oneof![
        3 => (0i64..3).prop_map(Action::Put),
        2 => (
            prop_oneof![Just("x"), Just("y")],
            proptest::option::of(0i64..3)
        )
            .prop_map(|(f, v)| Action::MergePatch(f, v)),
        2 => (
            proptest::option::of(0i64..2),
            prop_oneof![Just("x"), Just("y")],
            0i64..3
        )
            .prop_map(|(test, field, value)| Action::JsonPatch { test, field, value }),
        1 => Just(Action::Delete),
        1 => (0u64..7).prop_map(Action::Revert),
    ];
    let condition = prop_oneof![
        4 => Just(Condition::None),
        2 => Just(Condition::IfMatchCurrent),
        2 => (1u64..3).prop_map(Condition::IfMatchStale),
        1 => Just(Condition::IfMatchList),
        1 => Just(Condition::IfMatchWeak),
        1 => Just(Condition::IfMatchAny),
        1 => Just(Condition::IfNoneMatchAny),
        1 => Just(Condition::IfNoneMatchWeak),
        1 => any::<bool>().prop_map(|past| Condition::IfUnmodifiedSince { past }),
        1 => Just(Condition::IfVersionCurrent),
        1 => (0u64..4).prop_map(Condition::IfVersion),
    ];
    (0..IDS.len(), action, condition).prop_map(|(id, action, condition)| Step::Write {
        id,
        action,
        condition,
    })
}

/// A group of steps sent together: writes to distinct resources and creates, or
/// one compaction.
fn group() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![8 => write_step(), 1 => (0i64..3).prop_map(Step::Create)];
    prop_oneof![
        12 => proptest::collection::vec(step, 1..4).prop_map(|steps| {
            let mut seen = HashSet::new();
            steps
                .into_iter()
                .filter(|s| match s {
                    Step::Write { id, .. } => seen.insert(*id),
                    _ => true,
                })
                .collect()
        }),
        1 => Just(vec![Step::Compact]),
    ]
}

/// What the contract says a step answers.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Ok {
        status: WriteStatus,
        version: u64,
        body: Option<Value>,
    },
    NotFound,
    PreconditionFailed,
    VersionConflict,
    PatchTestFailed,
    Compacted,
}

/// One resource in the model: every version's content (`None` = tombstone), and
/// what the store said of each (revision, ETag) when it was written.
#[derive(Debug, Default, Clone)]
struct ModelResource {
    versions: Vec<Option<Value>>,
    written: Vec<(u64, ETag)>,
}

impl ModelResource {
    fn head(&self) -> u64 {
        self.versions.len() as u64
    }
    fn live(&self) -> Option<&Value> {
        self.versions.last().and_then(Option::as_ref)
    }
    /// Whether retention still serves version `n` (the head always).
    fn retained(&self, n: u64, retention: bool) -> bool {
        !retention || n >= self.head() || n > self.head().saturating_sub(KEEP)
    }
}

/// The whole store in the model: resources by id, and the change feed.
#[derive(Debug, Default)]
struct Model {
    resources: BTreeMap<String, ModelResource>,
    /// `(revision, id, version)` in commit order.
    feed: Vec<(u64, String, u64)>,
    revision: u64,
    retention: bool,
    /// `(conflict id, resource id, slug)` of every recorded refusal.
    conflicts: Vec<(String, String, &'static str)>,
}

fn document(value: i64) -> Value {
    json!({"x": value, "y": 0, "z": 0})
}

/// The content `action` leaves when applied to `resource`, or why it cannot.
fn next_content(
    resource: &ModelResource,
    action: &Action,
    retention: bool,
) -> Result<Option<Value>, Expected> {
    match action {
        Action::Put(v) => Ok(Some(document(*v))),
        Action::MergePatch(field, value) => {
            let mut doc = resource.live().cloned().ok_or(Expected::NotFound)?;
            let map = doc.as_object_mut().ok_or(Expected::NotFound)?;
            match value {
                Some(v) => map.insert((*field).to_owned(), json!(v)),
                None => map.remove(*field),
            };
            Ok(Some(doc))
        }
        Action::JsonPatch { test, field, value } => {
            let mut doc = resource.live().cloned().ok_or(Expected::NotFound)?;
            if test.is_some_and(|t| doc["z"] != json!(t)) {
                return Err(Expected::PatchTestFailed);
            }
            doc[*field] = json!(value);
            Ok(Some(doc))
        }
        Action::Delete => Ok(None),
        Action::Revert(to) => {
            if *to == 0 || *to > resource.head() {
                return Err(Expected::NotFound);
            }
            if !resource.retained(*to, retention) {
                return Err(Expected::Compacted);
            }
            Ok(resource.versions[(*to - 1) as usize].clone())
        }
    }
}

/// SPEC §1/§2 in the plainest terms. Applies an accepted write to `resource`.
fn model_step(
    resource: &mut ModelResource,
    action: &Action,
    condition: &Condition,
    retention: bool,
) -> Expected {
    let head = resource.head();
    let live = resource.live().cloned();
    let needs_live = matches!(
        action,
        Action::MergePatch(..) | Action::JsonPatch { .. } | Action::Delete
    );
    if (needs_live && live.is_none()) || (matches!(action, Action::Revert(_)) && head == 0) {
        return Expected::NotFound;
    }
    let if_match = match condition {
        // Only the current ETag of a live resource matches, strongly.
        Condition::IfMatchCurrent | Condition::IfMatchList | Condition::IfMatchAny => {
            Some(live.is_some())
        }
        Condition::IfMatchStale(_) | Condition::IfMatchWeak => Some(false),
        _ => None,
    };
    if if_match == Some(false) {
        return Expected::PreconditionFailed;
    }
    // If-Unmodified-Since: ignored without a current representation.
    if matches!(condition, Condition::IfUnmodifiedSince { past: true }) && live.is_some() {
        return Expected::PreconditionFailed;
    }
    if matches!(
        condition,
        Condition::IfNoneMatchAny | Condition::IfNoneMatchWeak
    ) && live.is_some()
    {
        return Expected::PreconditionFailed;
    }
    let current_version = if live.is_some() { head } else { 0 };
    match condition {
        Condition::IfVersion(v) if *v != current_version => return Expected::VersionConflict,
        _ => {}
    }
    let next = match next_content(resource, action, retention) {
        Ok(next) => next,
        Err(expected) => return expected,
    };
    let same = match (&next, &live) {
        (Some(n), Some(l)) => n == l,
        (None, None) => head > 0,
        _ => false,
    };
    if same {
        return Expected::Ok {
            status: WriteStatus::Unchanged,
            version: head,
            body: live,
        };
    }
    let status = match (&next, &live) {
        (None, _) => WriteStatus::Deleted,
        (Some(_), None) => WriteStatus::Created,
        (Some(_), Some(_)) => WriteStatus::Updated,
    };
    resource.versions.push(next.clone());
    Expected::Ok {
        status,
        version: resource.head(),
        body: next,
    }
}

fn key(id: &str) -> ResourceKey {
    ResourceKey::parse("things", id).unwrap()
}

fn parse_doc(value: &Value) -> Document {
    Document::parse(value.to_string().as_bytes(), DocumentLimits::default()).unwrap()
}

fn tags(list: &[String]) -> TagCondition {
    TagCondition::parse(list.iter().map(String::as_str)).unwrap()
}

fn command(
    id: &str,
    action: &Action,
    condition: &Condition,
    resource: &ModelResource,
) -> WriteCommand {
    let action = match action {
        Action::Put(v) => WriteAction::Put(parse_doc(&document(*v))),
        Action::MergePatch(field, value) => {
            WriteAction::MergePatch(json!({ *field: value.map_or(Value::Null, |v| json!(v)) }))
        }
        Action::JsonPatch { test, field, value } => {
            let mut ops = Vec::new();
            if let Some(t) = test {
                ops.push(json!({"op": "test", "path": "/z", "value": t}));
            }
            ops.push(json!({"op": "add", "path": format!("/{field}"), "value": value}));
            WriteAction::JsonPatch(
                JsonPatch::parse(Value::Array(ops).to_string().as_bytes()).unwrap(),
            )
        }
        Action::Delete => WriteAction::Delete,
        Action::Revert(to) => WriteAction::Revert { to: *to },
    };
    let head = resource.head();
    // A deleted resource has no current ETag: its tombstone's must not match.
    let tag = |version: u64| {
        resource
            .written
            .get((version as usize).wrapping_sub(1))
            .map_or_else(|| "\"0-none\"".to_owned(), |(_, etag)| etag.to_header())
    };
    let mut preconditions = Preconditions::default();
    let mut if_version = None;
    match condition {
        Condition::None => {}
        Condition::IfMatchCurrent => preconditions.if_match = Some(tags(&[tag(head)])),
        Condition::IfMatchStale(back) => {
            preconditions.if_match = Some(tags(&[tag(head.saturating_sub(*back))]));
        }
        Condition::IfMatchList => {
            let stale = tag(head.saturating_sub(1));
            preconditions.if_match = Some(tags(&[format!("{stale}, {}", tag(head))]));
        }
        Condition::IfMatchWeak => {
            preconditions.if_match = Some(tags(&[format!("W/{}", tag(head))]))
        }
        Condition::IfMatchAny => preconditions.if_match = Some(TagCondition::Any),
        Condition::IfNoneMatchAny => preconditions.if_none_match = Some(TagCondition::Any),
        Condition::IfNoneMatchWeak => {
            preconditions.if_none_match = Some(tags(&[format!("W/{}", tag(head))]));
        }
        Condition::IfUnmodifiedSince { past } => {
            // 2000-01-01 or 2100-01-01.
            preconditions.if_unmodified_since =
                Some(if *past { 946_684_800 } else { 4_102_444_800 });
        }
        Condition::IfVersionCurrent => {
            if_version = Some(if resource.live().is_some() { head } else { 0 });
        }
        Condition::IfVersion(v) => if_version = Some(*v),
    }
    WriteCommand {
        key: key(id),
        action,
        preconditions,
        if_version,
        by: Principal::anonymous(),
        request_id: None,
        resolves: None,
        idempotency: None,
        lock_token: None,
        key_check: None,
    }
}

/// What a step answered, and the conflict record its refusal created, if any.
fn observed(
    result: &Result<truce_engine::WriteOutcome, EngineError>,
) -> (Expected, Option<String>) {
    match result {
        Err(EngineError::Recorded {
            source,
            conflict_id,
        }) => (
            observed(&Err((**source).clone())).0,
            Some(conflict_id.clone()),
        ),
        other => (observed_plain(other), None),
    }
}

fn observed_plain(result: &Result<truce_engine::WriteOutcome, EngineError>) -> Expected {
    match result {
        Ok(outcome) => Expected::Ok {
            status: outcome.status,
            version: outcome.version.number,
            body: outcome
                .version
                .body
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap()),
        },
        Err(EngineError::NotFound { .. }) => Expected::NotFound,
        Err(EngineError::PreconditionFailed { .. }) => Expected::PreconditionFailed,
        Err(EngineError::VersionConflict { .. }) => Expected::VersionConflict,
        Err(EngineError::PatchTestFailed { .. }) => Expected::PatchTestFailed,
        Err(EngineError::HistoryCompacted { .. }) => Expected::Compacted,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Runs one group against the store and the model; returns a mismatch, if any.
async fn run_group(
    store: &Arc<EmbeddedStore>,
    model: &mut Model,
    group: &[Step],
) -> Result<(), String> {
    if let [Step::Compact] = group {
        store
            .compact()
            .await
            .map_err(|e| format!("compaction failed: {e:?}"))?;
        return Ok(());
    }
    let mut tasks = Vec::new();
    let mut expectations = Vec::new();
    for step in group {
        let (id, expected, command) = match step {
            Step::Write {
                id,
                action,
                condition,
            } => {
                let id = IDS[*id].to_owned();
                let resource = model.resources.entry(id.clone()).or_default();
                let command = command(&id, action, condition, resource);
                (
                    id,
                    model_step(resource, action, condition, model.retention),
                    command,
                )
            }
            Step::Create(v) => {
                let id = format!("n{}", model.resources.len());
                let resource = model.resources.entry(id.clone()).or_default();
                resource.versions.push(Some(document(*v)));
                let expected = Expected::Ok {
                    status: WriteStatus::Created,
                    version: 1,
                    body: Some(document(*v)),
                };
                let command = WriteCommand {
                    key: key(&id),
                    action: WriteAction::Create(parse_doc(&document(*v))),
                    preconditions: Preconditions::default(),
                    if_version: None,
                    by: Principal::anonymous(),
                    request_id: None,
                    resolves: None,
                    idempotency: None,
                    lock_token: None,
                    key_check: None,
                };
                (id, expected, command)
            }
            Step::Compact => return Err("a compaction inside a group".into()),
        };
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move { store.write(command).await }));
        expectations.push((id, expected));
    }
    let mut revisions = Vec::new();
    for (task, (id, expected)) in tasks.into_iter().zip(expectations) {
        let result = task.await.map_err(|e| e.to_string())?;
        let (got, conflict_id) = observed(&result);
        if got != expected {
            return Err(format!("{id}: got {got:?}, the model says {expected:?}"));
        }
        // Every refusal for the resource's state leaves exactly one record.
        let slug = match got {
            Expected::PreconditionFailed => Some("precondition-failed"),
            Expected::VersionConflict => Some("version-conflict"),
            Expected::PatchTestFailed => Some("patch-test-failed"),
            _ => None,
        };
        match (slug, conflict_id) {
            (Some(slug), Some(cid)) => model.conflicts.push((cid, id.clone(), slug)),
            (None, None) => {}
            (slug, cid) => return Err(format!("{id}: refusal {slug:?} with record {cid:?}")),
        }
        if let Ok(outcome) = result
            && matches!(
                outcome.status,
                WriteStatus::Created | WriteStatus::Updated | WriteStatus::Deleted
            )
        {
            let etag = outcome.version.etag(&outcome.key);
            revisions.push(outcome.version.revision);
            model
                .feed
                .push((outcome.version.revision, id.clone(), outcome.version.number));
            if let Some(resource) = model.resources.get_mut(&id) {
                resource.written.push((outcome.version.revision, etag));
            }
        }
    }
    // The group's writes got exactly the next revisions, one each.
    revisions.sort_unstable();
    let next: Vec<u64> = (model.revision + 1..=model.revision + revisions.len() as u64).collect();
    if revisions != next {
        return Err(format!("revisions {revisions:?}, expected {next:?}"));
    }
    model.revision += revisions.len() as u64;
    model.feed.sort_unstable();
    Ok(())
}

/// Every version the model has is readable (or, past retention, compacted), with
/// its content, revision and ETag; history pages, the listing and the change feed
/// agree with the model; ETags are unique.
async fn check_store(store: &EmbeddedStore, model: &Model) {
    let collection = CollectionName::parse("things").unwrap();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let query = ListQuery {
            prefix: None,
            after: after.take(),
            limit: 1,
        };
        let page = store.list(&collection, &query).await.unwrap();
        listed.extend(
            page.items
                .into_iter()
                .map(|(id, v)| (id.as_str().to_owned(), v.number)),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let live: Vec<(String, u64)> = model
        .resources
        .iter()
        .filter(|(_, r)| r.live().is_some())
        .map(|(id, r)| (id.clone(), r.head()))
        .collect();
    assert_eq!(listed, live, "listing");

    let mut etags = HashSet::new();
    for (id, resource) in &model.resources {
        let key = key(id);
        for (n, content) in resource.versions.iter().enumerate() {
            let number = n as u64 + 1;
            let (revision, etag) = &resource.written[n];
            assert!(etags.insert(etag.to_header()), "ETag {etag} reused");
            match store.version(&key, number).await.unwrap() {
                VersionLookup::Found(version) => {
                    assert!(
                        resource.retained(number, model.retention),
                        "{id} v{number} should be compacted"
                    );
                    let body = version
                        .body
                        .as_ref()
                        .map(|b| serde_json::from_slice::<Value>(b).unwrap());
                    assert_eq!(&body, content, "version {number} of {id}");
                    assert_eq!(version.revision, *revision, "revision of {id} v{number}");
                    assert_eq!(&version.etag(&key), etag, "ETag of {id} v{number}");
                }
                VersionLookup::Compacted { oldest } => {
                    assert!(
                        !resource.retained(number, model.retention),
                        "{id} v{number} lost"
                    );
                    assert!(oldest > number && resource.retained(oldest, model.retention));
                }
                VersionLookup::Missing => panic!("version {number} of {id} missing"),
            }
        }
        let head = store.head(&key).await.unwrap().map(|v| v.number);
        let expected = (resource.head() > 0).then_some(resource.head());
        assert_eq!(head, expected, "head of {id}");
        if resource.head() == 0 {
            continue;
        }
        // History, newest first, in pages of two: exactly the retained versions.
        let mut history = Vec::new();
        let mut before = None;
        loop {
            let page = store.history(&key, before, 2).await.unwrap();
            history.extend(
                page.items
                    .iter()
                    .map(|e| (e.version, e.revision, e.etag.clone())),
            );
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let expected: Vec<(u64, u64, ETag)> = (1..=resource.head())
            .rev()
            .filter(|n| resource.retained(*n, model.retention))
            .map(|n| {
                let (revision, etag) = &resource.written[(n - 1) as usize];
                (n, *revision, etag.clone())
            })
            .collect();
        assert_eq!(history, expected, "history of {id}");
    }

    // The change feed: every accepted write once, in revision order, in pages.
    let mut feed = Vec::new();
    let mut since = 0;
    loop {
        let page = store
            .changes(&ChangeQuery {
                since,
                collection: None,
                key: None,
                limit: 2,
                include_docs: false,
            })
            .await
            .unwrap();
        if page.changes.is_empty() {
            break;
        }
        for change in &page.changes {
            let resource = &model.resources[change.key.id.as_str()];
            let (_, etag) = &resource.written[(change.version - 1) as usize];
            assert_eq!(
                &change.etag(),
                etag,
                "feed ETag at revision {}",
                change.revision
            );
            feed.push((
                change.revision,
                change.key.id.as_str().to_owned(),
                change.version,
            ));
        }
        since = page.last_revision;
    }
    assert_eq!(feed, model.feed, "change feed");

    // Every refusal's record is there, of its resource and kind; ids are unique.
    let ids: HashSet<&String> = model.conflicts.iter().map(|(cid, _, _)| cid).collect();
    assert_eq!(ids.len(), model.conflicts.len(), "conflict ids reused");
    for (cid, id, slug) in &model.conflicts {
        let record = store
            .side_record(SideTable::Conflicts, cid.as_bytes())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("conflict record {cid} of {id} missing"));
        let record: Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(record["type"], *slug, "{cid}");
        assert_eq!(record["resource"]["id"], id.as_str(), "{cid}");
        assert_eq!(record["status"], "open", "{cid}");
    }
}

/// Copies the store's files as they are now, as a crash would leave them. The
/// store is idle (no write since the last answer), but a background checkpoint
/// may still be committing: the copy may then take redb's header before the
/// commit and its pages after. That is still a state a crash can leave: the
/// header names the last durable commit, whose pages a commit in progress never
/// overwrites (copy-on-write), and the log files are not started over until a
/// later batch freezes the next layer, so they still hold the frames the
/// header's epoch needs.
fn crash_copy(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Checkpoint settings: every commit durable; only the write-ahead log; and a
/// checkpoint every other batch, so the log restarts over stale frames.
fn checkpoints(config: &mut EmbeddedConfig, mode: usize) {
    match mode {
        0 => config.checkpoint_interval = Duration::ZERO,
        1 => config.checkpoint_interval = Duration::from_secs(3600),
        _ => {
            config.checkpoint_interval = Duration::from_secs(3600);
            config.checkpoint_bytes = 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(
        groups in proptest::collection::vec(group(), 1..30),
        mode in 0..3usize,
        retention in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut config = EmbeddedConfig::new(dir.path());
            checkpoints(&mut config, mode);
            if retention {
                config.retention = Retention { max_versions: Some(KEEP), ..Retention::default() };
            }
            let store = Arc::new(EmbeddedStore::open(config.clone()).unwrap());
            let mut model = Model { retention, ..Model::default() };
            for (i, group) in groups.iter().enumerate() {
                if let Err(mismatch) = run_group(&store, &mut model, group).await {
                    return Err(TestCaseError::fail(format!("group {i} {group:?}: {mismatch}")));
                }
            }
            check_store(&store, &model).await;
            crash_copy(dir.path(), crashed.path());
            store.close().await;
            drop(store);
            // Reopened after the crash, and after a clean close.
            for path in [crashed.path(), dir.path()] {
                config.data_dir = path.to_path_buf();
                let reopened = EmbeddedStore::open(config.clone()).unwrap();
                check_store(&reopened, &model).await;
                reopened.close().await;
            }
            Ok(())
        })?;
    }
}
