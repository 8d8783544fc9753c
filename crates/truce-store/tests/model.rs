//! Random interleavings of conditional writes against the real embedded store,
//! compared step by step with a plain in-memory model of the contract (SPEC §1, §2).
//! Then a crash: the data directory is copied while the store is still open (what a
//! `kill -9` leaves: the files as the operating system holds them, nothing of the
//! process's memory), and the copy must hold every acknowledged version.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use truce_engine::{
    CollectionName, Document, DocumentLimits, ETag, EngineError, ListQuery, Preconditions,
    Principal, ResourceKey, Store, TagCondition, WriteAction, WriteCommand, WriteStatus,
};
use truce_store::{EmbeddedConfig, EmbeddedStore};

const IDS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Condition {
    None,
    IfMatchCurrent,
    /// If-Match with the ETag of the version this many steps before the head.
    IfMatchStale(u64),
    IfMatchAny,
    IfNoneMatchAny,
    IfVersionCurrent,
    IfVersion(u64),
}

#[derive(Debug, Clone)]
enum Action {
    Put(i64),
    MergePatch(&'static str, Option<i64>),
    Delete,
    Revert(u64),
}

#[derive(Debug, Clone)]
struct Step {
    id: usize,
    action: Action,
    condition: Condition,
}

fn step() -> impl Strategy<Value = Step> {
    let action = prop_oneof![
        (0i64..3).prop_map(Action::Put),
        (
            prop_oneof![Just("x"), Just("y")],
            proptest::option::of(0i64..3)
        )
            .prop_map(|(f, v)| Action::MergePatch(f, v)),
        Just(Action::Delete),
        (0u64..6).prop_map(Action::Revert),
    ];
    let condition = prop_oneof![
        3 => Just(Condition::None),
        2 => Just(Condition::IfMatchCurrent),
        2 => (1u64..3).prop_map(Condition::IfMatchStale),
        1 => Just(Condition::IfMatchAny),
        1 => Just(Condition::IfNoneMatchAny),
        1 => Just(Condition::IfVersionCurrent),
        1 => (0u64..4).prop_map(Condition::IfVersion),
    ];
    (0..IDS.len(), action, condition).prop_map(|(id, action, condition)| Step {
        id,
        action,
        condition,
    })
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
}

/// One resource in the model: every version's content (`None` = tombstone).
#[derive(Debug, Default, Clone)]
struct ModelResource {
    versions: Vec<Option<Value>>,
}

impl ModelResource {
    fn head(&self) -> u64 {
        self.versions.len() as u64
    }
    fn live(&self) -> Option<&Value> {
        self.versions.last().and_then(Option::as_ref)
    }
}

fn document(value: i64) -> Value {
    json!({"x": value, "y": 0})
}

/// The content `action` leaves when applied to `resource`, or why it cannot.
fn next_content(resource: &ModelResource, action: &Action) -> Result<Option<Value>, Expected> {
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
        Action::Delete => Ok(None),
        Action::Revert(to) => {
            if *to == 0 || *to > resource.head() {
                return Err(Expected::NotFound);
            }
            Ok(resource.versions[(*to - 1) as usize].clone())
        }
    }
}

/// The model: SPEC §1/§2 in the plainest terms.
fn model_step(resource: &mut ModelResource, step: &Step) -> Expected {
    let head = resource.head();
    let live = resource.live().cloned();
    let needs_live = matches!(step.action, Action::MergePatch(..) | Action::Delete);
    if (needs_live && live.is_none()) || (matches!(step.action, Action::Revert(_)) && head == 0) {
        return Expected::NotFound;
    }
    let unchanged = |resource: &ModelResource, status| Expected::Ok {
        status,
        version: resource.head(),
        body: resource.live().cloned(),
    };
    let if_match = match &step.condition {
        Condition::IfMatchCurrent => Some(live.is_some()),
        // Only the current ETag matches; an older one never does.
        Condition::IfMatchStale(_) => Some(false),
        Condition::IfMatchAny => Some(live.is_some()),
        _ => None,
    };
    if if_match == Some(false) {
        // A false If-Match is a refusal, whatever the write would make.
        return Expected::PreconditionFailed;
    }
    if matches!(step.condition, Condition::IfNoneMatchAny) && live.is_some() {
        return Expected::PreconditionFailed;
    }
    let current_version = if live.is_some() { head } else { 0 };
    match step.condition {
        Condition::IfVersion(v) if v != current_version => return Expected::VersionConflict,
        _ => {}
    }
    let next = match next_content(resource, &step.action) {
        Ok(next) => next,
        Err(expected) => return expected,
    };
    let same = match (&next, &live) {
        (Some(n), Some(l)) => n == l,
        (None, None) => head > 0,
        _ => false,
    };
    if same {
        return unchanged(resource, WriteStatus::Unchanged);
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

fn command(
    step: &Step,
    resource: &ModelResource,
    etags: &HashMap<(usize, u64), ETag>,
) -> WriteCommand {
    let key = ResourceKey::parse("things", IDS[step.id]).unwrap();
    let limits = DocumentLimits::default();
    let action = match &step.action {
        Action::Put(v) => {
            WriteAction::Put(Document::parse(document(*v).to_string().as_bytes(), limits).unwrap())
        }
        Action::MergePatch(field, value) => {
            WriteAction::MergePatch(json!({ *field: value.map_or(Value::Null, |v| json!(v)) }))
        }
        Action::Delete => WriteAction::Delete,
        Action::Revert(to) => WriteAction::Revert { to: *to },
    };
    let tag = |version: u64| {
        etags
            .get(&(step.id, version))
            .map_or_else(|| "\"0-none\"".to_owned(), ETag::to_header)
    };
    let mut preconditions = Preconditions::default();
    let mut if_version = None;
    let head = resource.head();
    match &step.condition {
        Condition::None => {}
        Condition::IfMatchCurrent => {
            // A deleted resource has no current ETag: send the tombstone's, which
            // must not match.
            preconditions.if_match = Some(TagCondition::parse([tag(head).as_str()]).unwrap());
        }
        Condition::IfMatchStale(back) => {
            let stale = tag(head.saturating_sub(*back));
            preconditions.if_match = Some(TagCondition::parse([stale.as_str()]).unwrap());
        }
        Condition::IfMatchAny => preconditions.if_match = Some(TagCondition::Any),
        Condition::IfNoneMatchAny => preconditions.if_none_match = Some(TagCondition::Any),
        Condition::IfVersionCurrent => {
            if_version = Some(if resource.live().is_some() { head } else { 0 });
        }
        Condition::IfVersion(v) => if_version = Some(*v),
    }
    WriteCommand {
        key,
        action,
        preconditions,
        if_version,
        by: Principal::anonymous(),
    }
}

fn observed(result: Result<truce_engine::WriteOutcome, EngineError>) -> Expected {
    match result {
        Ok(outcome) => Expected::Ok {
            status: outcome.status,
            version: outcome.version.number,
            body: outcome
                .version
                .body
                .map(|b| serde_json::from_slice(&b).unwrap()),
        },
        Err(EngineError::NotFound { .. }) => Expected::NotFound,
        Err(EngineError::PreconditionFailed { .. }) => Expected::PreconditionFailed,
        Err(EngineError::VersionConflict { .. }) => Expected::VersionConflict,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Every version the model has is readable, with its content, and nothing more; a
/// listing pages through exactly the live resources at their heads.
async fn check_versions(store: &EmbeddedStore, model: &[ModelResource]) {
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
        .iter()
        .enumerate()
        .filter(|(_, r)| r.live().is_some())
        .map(|(id, r)| (IDS[id].to_owned(), r.head()))
        .collect();
    assert_eq!(listed, live, "listing");

    for (id, resource) in model.iter().enumerate() {
        let key = ResourceKey::parse("things", IDS[id]).unwrap();
        for (n, content) in resource.versions.iter().enumerate() {
            let lookup = store.version(&key, n as u64 + 1).await.unwrap();
            let truce_engine::VersionLookup::Found(version) = lookup else {
                panic!("version {} of {} missing", n + 1, IDS[id]);
            };
            let body = version
                .body
                .map(|b| serde_json::from_slice::<Value>(&b).unwrap());
            assert_eq!(&body, content, "version {} of {}", n + 1, IDS[id]);
        }
        let head = store.head(&key).await.unwrap().map(|v| v.number);
        let expected = (resource.head() > 0).then_some(resource.head());
        assert_eq!(head, expected, "head of {}", IDS[id]);
    }
}

/// Copies the store's files as they are now, as a crash would leave them.
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
        steps in proptest::collection::vec(step(), 1..40),
        mode in 0..3usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut config = EmbeddedConfig::new(dir.path());
            checkpoints(&mut config, mode);
            let store = EmbeddedStore::open(config.clone()).unwrap();
            let mut model: Vec<ModelResource> = vec![ModelResource::default(); IDS.len()];
            let mut etags = HashMap::new();
            for (i, step) in steps.iter().enumerate() {
                let cmd = command(step, &model[step.id], &etags);
                let expected = model_step(&mut model[step.id], step);
                let result = store.write(cmd).await;
                if let Ok(outcome) = &result {
                    etags.insert((step.id, outcome.version.number), outcome.version.etag(&outcome.key));
                }
                let got = observed(result);
                prop_assert_eq!(&got, &expected, "step {} {:?}", i, step);
            }
            check_versions(&store, &model).await;
            crash_copy(dir.path(), crashed.path());
            store.close().await;
            drop(store);
            // Reopened after the crash, and after a clean close.
            for path in [crashed.path(), dir.path()] {
                config.data_dir = path.to_path_buf();
                let reopened = EmbeddedStore::open(config.clone()).unwrap();
                check_versions(&reopened, &model).await;
                reopened.close().await;
            }
            Ok(())
        })?;
    }
}
