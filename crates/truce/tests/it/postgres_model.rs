//! The PostgreSQL store against the embedded one, as a property: the same
//! writes, queued in the same order (so that they share batches as they come),
//! get the same answers, and leave the same history and the same change feed.
//! The embedded store is the reference here; its own model test
//! (`truce-store/tests/model.rs`) checks it against a model of the contract.
//! What this covers on PostgreSQL: the batch's read-your-writes through what it
//! has not sent yet, version numbering, no-op writes, `?if_version`, 404 before
//! preconditions, tombstones and re-creation. Besides, one scenario run on both
//! stores: a key made by a job of a batch counts for the batch's later writes.

use std::sync::Arc;

use futures_util::future::join_all;
use proptest::prelude::*;
use serde_json::{Value, json};
use truce_engine::{
    ChangeQuery, Document, DocumentLimits, EngineError, Preconditions, Principal, ResourceKey,
    Store, VersionLookup, WriteAction, WriteCommand, WriteOutcome,
};
use truce_postgres::{PostgresConfig, PostgresStore};
use truce_store::{EmbeddedConfig, EmbeddedStore};

use crate::pg_cluster::fresh_database;

/// One write of a generated sequence.
#[derive(Debug, Clone)]
enum Action {
    Put(i64),
    /// A merge patch of one member (`None` removes it).
    Patch(&'static str, Option<i64>),
    Delete,
}

#[derive(Debug, Clone)]
struct Step {
    /// Which of three documents.
    doc: usize,
    action: Action,
    if_version: Option<u64>,
}

fn step() -> impl Strategy<Value = Step> {
    let action = prop_oneof![
        (0i64..4).prop_map(Action::Put),
        (
            prop_oneof![Just("a"), Just("b")],
            proptest::option::of(0i64..3)
        )
            .prop_map(|(field, value)| Action::Patch(field, value)),
        Just(Action::Delete),
    ];
    (0usize..3, action, proptest::option::weighted(0.3, 0u64..4)).prop_map(
        |(doc, action, if_version)| Step {
            doc,
            action,
            if_version,
        },
    )
}

fn command(step: &Step) -> WriteCommand {
    let action = match &step.action {
        Action::Put(value) => WriteAction::Put(document(&json!({"a": value}))),
        Action::Patch(field, value) => {
            WriteAction::MergePatch(json!({ *field: value.map_or(Value::Null, |v| json!(v)) }))
        }
        Action::Delete => WriteAction::Delete,
    };
    WriteCommand {
        key: ResourceKey::parse("things", &format!("d{}", step.doc)).expect("key"),
        action,
        preconditions: Preconditions::default(),
        if_version: step.if_version,
        by: Principal::anonymous(),
        request_id: None,
        resolves: None,
        idempotency: None,
        lock_token: None,
        key_check: None,
    }
}

fn document(value: &Value) -> Document {
    Document::parse(value.to_string().as_bytes(), DocumentLimits::default()).expect("document")
}

/// What both backends must agree on in an answer (not ETags, which carry the
/// commit time, nor conflict ids, which are random).
fn observed(result: &Result<WriteOutcome, EngineError>) -> String {
    match result {
        Ok(outcome) => format!(
            "{:?} v{} r{} {:?} {:?}",
            outcome.status,
            outcome.version.number,
            outcome.version.revision,
            outcome.version.op,
            outcome.version.body
        ),
        Err(error) => format!("{:?}", error.kind()),
    }
}

/// Everything a store holds of the three documents and its change feed.
async fn contents(store: &dyn Store) -> Vec<String> {
    let mut seen = Vec::new();
    for doc in 0..3 {
        let key = ResourceKey::parse("things", &format!("d{doc}")).expect("key");
        let page = store.history(&key, None, 100).await;
        match page {
            Ok(page) => seen.extend(
                page.items
                    .iter()
                    .map(|v| format!("{key} v{} r{} {:?} {}", v.version, v.revision, v.op, v.size)),
            ),
            Err(error) => seen.push(format!("{key} {:?}", error.kind())),
        }
        let head = store.head(&key).await.expect("head");
        seen.push(format!("{key} head {:?}", head.map(|h| (h.number, h.body))));
    }
    let feed = store
        .changes(&ChangeQuery {
            since: 0,
            collection: None,
            key: None,
            limit: 1000,
            include_docs: true,
        })
        .await
        .expect("changes");
    seen.extend(feed.changes.iter().map(|c| {
        format!(
            "change r{} {} v{} {:?} {:?}",
            c.revision, c.key, c.version, c.op, c.body
        )
    }));
    seen.push(format!("feed through {}", feed.last_revision));
    // Every document as a transaction's snapshot at every revision reads it.
    for revision in 0..=feed.last_revision {
        for doc in 0..3 {
            let key = ResourceKey::parse("things", &format!("d{doc}")).expect("key");
            let at = match store.version_at(&key, revision).await {
                Ok(VersionLookup::Found(v)) => format!("v{} {:?}", v.number, v.body),
                Ok(other) => format!("{other:?}"),
                Err(error) => format!("{:?}", error.kind()),
            };
            seen.push(format!("{key} at r{revision}: {at}"));
        }
    }
    seen
}

/// Applies `groups` to `store`, each group's writes queued together in order.
async fn apply(store: &dyn Store, groups: &[Vec<Step>]) -> Vec<String> {
    let mut answers = Vec::new();
    for group in groups {
        let results = join_all(group.iter().map(|step| store.write(command(step)))).await;
        answers.extend(results.iter().map(observed));
    }
    answers
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn postgres_answers_and_keeps_what_the_embedded_store_does(
        groups in proptest::collection::vec(proptest::collection::vec(step(), 1..10), 1..5)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (expected, got) = runtime.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let embedded: Arc<dyn Store> =
                Arc::new(EmbeddedStore::open(EmbeddedConfig::new(dir.path())).expect("embedded"));
            let postgres: Arc<dyn Store> = Arc::new(
                PostgresStore::open(PostgresConfig::new(fresh_database()))
                    .await
                    .expect("postgres"),
            );
            let mut expected = apply(embedded.as_ref(), &groups).await;
            expected.extend(contents(embedded.as_ref()).await);
            let mut got = apply(postgres.as_ref(), &groups).await;
            got.extend(contents(postgres.as_ref()).await);
            embedded.close().await;
            postgres.close().await;
            (expected, got)
        });
        prop_assert_eq!(expected, got);
    }
}

/// Holds the planning of the `hold` write until the test opens it: `(planning
/// started, open)`.
static KEY_GATE: std::sync::Mutex<(bool, bool)> = std::sync::Mutex::new((false, false));
static KEY_GATE_MOVED: std::sync::Condvar = std::sync::Condvar::new();

/// The engine's rules, except that `hold` waits for the test.
fn key_gate_planner(
    view: &dyn truce_engine::StateView,
    command: &WriteCommand,
    ctx: &truce_engine::WriteContext<'_>,
) -> Result<truce_engine::Planned, EngineError> {
    if command.key.id.as_str() == "hold" {
        let mut gate = KEY_GATE.lock().unwrap();
        gate.0 = true;
        KEY_GATE_MOVED.notify_all();
        while !gate.1 {
            gate = KEY_GATE_MOVED.wait(gate).unwrap();
        }
    }
    truce_engine::plan_write(view, command, ctx)
}

/// A key made by one job of a batch counts for the batch's later writes, on
/// both backends: a write admitted without a key (`KeyCheck::NoKeys`) before
/// it commits, the same check after it is refused, although the batch had
/// found (on PostgreSQL: read with the commit row) that no key existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_in_a_batch_counts_for_its_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path()).with_planner(key_gate_planner))
            .unwrap(),
    );
    let queued = Arc::clone(&embedded);
    key_made_in_a_batch(embedded, move || queued.queued()).await;
    let postgres = Arc::new(
        PostgresStore::open_with_planner(PostgresConfig::new(fresh_database()), key_gate_planner)
            .await
            .expect("open the PostgreSQL store"),
    );
    let queued = Arc::clone(&postgres);
    key_made_in_a_batch(postgres, move || queued.queued()).await;
}

/// The scenario of [`a_key_made_in_a_batch_counts_for_its_later_writes`] on
/// one store, opened with [`key_gate_planner`]; `queued` says how many jobs
/// wait for its writer.
async fn key_made_in_a_batch<S: Store>(store: Arc<S>, queued: impl Fn() -> usize) {
    use truce_engine::{KeyCheck, KeyRefusal, SideCommit, SideTable, SideWrite};
    *KEY_GATE.lock().unwrap() = (false, false);
    let write = |id: &'static str, key_check: Option<KeyCheck>| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let doc = Document::parse(br#"{"n":1}"#, DocumentLimits::default()).unwrap();
            store
                .write(WriteCommand {
                    key: ResourceKey::parse("things", id).unwrap(),
                    action: WriteAction::Put(doc),
                    preconditions: Preconditions::default(),
                    if_version: None,
                    by: Principal::anonymous(),
                    request_id: None,
                    resolves: None,
                    idempotency: None,
                    lock_token: None,
                    key_check,
                })
                .await
        })
    };
    let wait_queued = async |n: usize| {
        for spins in 0.. {
            if queued() >= n {
                return;
            }
            assert!(spins < 10_000_000, "{n} jobs never queued");
            tokio::task::yield_now().await;
        }
    };
    let hold = write("hold", None);
    tokio::task::spawn_blocking(|| {
        let mut state = KEY_GATE.lock().unwrap();
        while !state.0 {
            state = KEY_GATE_MOVED.wait(state).unwrap();
        }
    })
    .await
    .unwrap();
    // Queued in this order behind the held batch, so they make the next one.
    let before = write("before", Some(KeyCheck::NoKeys));
    wait_queued(1).await;
    let made = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .commit_side(SideCommit::new(vec![SideWrite {
                    table: SideTable::Keys,
                    key: b"0123456789abcdef".to_vec(),
                    value: Some(bytes::Bytes::from_static(b"{}")),
                }]))
                .await
        })
    };
    wait_queued(2).await;
    let after = write("after", Some(KeyCheck::NoKeys));
    wait_queued(3).await;
    {
        let mut state = KEY_GATE.lock().unwrap();
        state.1 = true;
        KEY_GATE_MOVED.notify_all();
    }
    assert!(hold.await.unwrap().is_ok());
    assert_eq!(before.await.unwrap().unwrap().version.number, 1);
    made.await.unwrap().unwrap();
    assert!(matches!(
        after.await.unwrap(),
        Err(EngineError::KeyRefused(KeyRefusal::KeyNeeded))
    ));
    let after = ResourceKey::parse("things", "after").unwrap();
    assert!(store.head(&after).await.unwrap().is_none());
    store.close().await;
}
