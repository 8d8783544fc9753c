//! Tests of the sequencer: checkpoints forced by the active layer's size, a panic
//! while planning one write of a batch, and side records' durability.

use redb::{ReadableDatabase, ReadableTableMetadata};
use truce_engine::ResourceKey;

use super::*;
use crate::tables::HEADS;
use truce_engine::WriteContext;

/// With a long interval, the active layer's size alone brings a checkpoint: the
/// durable file comes to hold the heads once `checkpoint_heads` are waiting.
#[tokio::test]
async fn a_full_layer_brings_a_checkpoint() {
    use truce_engine::{Document, DocumentLimits, Preconditions, Principal, Store, WriteAction};

    use crate::embedded::{DATABASE_FILE, EmbeddedStore};

    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.checkpoint_interval = std::time::Duration::from_secs(3600);
    config.checkpoint_heads = 4;
    let store = EmbeddedStore::open(config).unwrap();
    for n in 0..12 {
        let key = ResourceKey::parse("things", &format!("t{n}")).unwrap();
        let doc = Document::parse(b"{}", DocumentLimits::default()).unwrap();
        store
            .write(WriteCommand {
                key,
                action: WriteAction::Put(doc),
                preconditions: Preconditions::default(),
                if_version: None,
                by: Principal::anonymous(),
                request_id: None,
                resolves: None,
                idempotency: None,
                lock_token: None,
                key_check: None,
            })
            .await
            .unwrap();
    }
    // What a crash would leave of the file: its last durable commit. The
    // checkpoints run in the background, so look until they are done (a copy
    // taken in the middle of one may not open, or show the one before).
    let mut durable_heads = 0;
    for _ in 0..500 {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join(DATABASE_FILE),
            copy.path().join(DATABASE_FILE),
        )
        .unwrap();
        if let Ok(db) = Database::open(copy.path().join(DATABASE_FILE)) {
            let txn = db.begin_read().unwrap();
            durable_heads = txn.open_table(HEADS).map_or(0, |t| t.len().unwrap());
        }
        if durable_heads >= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    store.close().await;
    // At least two layers of 4 heads were checkpointed without the interval
    // (none at all without the limit; the last writes may still wait in a layer).
    assert!(
        (8..=12).contains(&durable_heads),
        "{durable_heads} heads durable"
    );
}

/// Holds the planning of the `gate` write until the test opens it.
static GATE: std::sync::Mutex<(bool, bool)> = std::sync::Mutex::new((false, false));
static GATE_MOVED: std::sync::Condvar = std::sync::Condvar::new();

/// The engine's rules, except that `boom` panics and `gate` waits for the test.
fn test_planner(
    view: &dyn truce_engine::StateView,
    command: &WriteCommand,
    ctx: &WriteContext<'_>,
) -> Result<truce_engine::Planned, EngineError> {
    match command.key.id.as_str() {
        "boom" => panic!("a bug in the rules"),
        "gate" => {
            let mut gate = GATE.lock().unwrap();
            gate.0 = true; // planning has started
            GATE_MOVED.notify_all();
            while !gate.1 {
                gate = GATE_MOVED.wait(gate).unwrap();
            }
        }
        _ => {}
    }
    truce_engine::plan_write(view, command, ctx)
}

/// A panic while planning one write of a batch fails that write only: the
/// others of the same batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_planning_fails_only_that_write() {
    use std::sync::Arc;
    use truce_engine::{Document, DocumentLimits, Preconditions, Principal, Store, WriteAction};

    use crate::embedded::EmbeddedStore;

    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.planner = test_planner;
    let store = Arc::new(EmbeddedStore::open(config).unwrap());
    let write = |id: &'static str| {
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
                    key_check: None,
                })
                .await
        })
    };
    // The first batch is held in planning while the next three queue up.
    let gate = write("gate");
    tokio::task::spawn_blocking(|| {
        let mut state = GATE.lock().unwrap();
        while !state.0 {
            state = GATE_MOVED.wait(state).unwrap();
        }
    })
    .await
    .unwrap();
    let batch = [write("a"), write("boom"), write("b")];
    for spins in 0.. {
        if store.queued() >= 3 {
            break;
        }
        assert!(spins < 10_000_000, "the three writes never queued");
        tokio::task::yield_now().await;
    }
    {
        let mut state = GATE.lock().unwrap();
        state.1 = true;
        GATE_MOVED.notify_all();
    }
    assert!(gate.await.unwrap().is_ok());
    let [a, boom, b] = batch;
    assert!(matches!(boom.await.unwrap(), Err(EngineError::Internal(_))));
    for (id, task) in [("a", a), ("b", b)] {
        let outcome = task.await.unwrap().unwrap();
        assert_eq!(outcome.version.number, 1, "{id}");
        let key = ResourceKey::parse("things", id).unwrap();
        assert!(store.head(&key).await.unwrap().is_some(), "{id}");
    }
    let boom = ResourceKey::parse("things", "boom").unwrap();
    assert!(store.head(&boom).await.unwrap().is_none());
    store.close().await;
}

/// The engine's rules, plus a side record named by the document: `{"side":
/// key, "value": text}` writes it, `"value": null` removes it; with
/// If-Unmodified-Since `t` the value is `t{t}` instead. A write that changes
/// nothing still carries it (a side record alone).
fn side_planner(
    view: &dyn truce_engine::StateView,
    command: &WriteCommand,
    ctx: &WriteContext<'_>,
) -> Result<truce_engine::Planned, EngineError> {
    use truce_engine::{Effect, SideTable, SideWrite, WriteAction};
    let mut planned = truce_engine::plan_write(view, command, ctx)?;
    if let WriteAction::Put(doc) = &command.action {
        let doc: serde_json::Value = serde_json::from_slice(doc.bytes()).unwrap();
        let side = SideWrite {
            table: SideTable::Conflicts,
            key: doc["side"].as_str().unwrap().as_bytes().to_vec(),
            value: doc["value"].as_str().map(|v| {
                let v = match command.preconditions.if_unmodified_since {
                    Some(t) => format!("t{t}"),
                    None => v.to_owned(),
                };
                bytes::Bytes::from(v)
            }),
        };
        planned
            .effect
            .get_or_insert_with(Effect::default)
            .side
            .push(side);
    }
    Ok(planned)
}

/// Side records commit with their write, survive a crash and a power loss, and
/// a batch of side records alone moves no revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_records_are_durable_and_move_no_revision() {
    use truce_engine::{
        Document, DocumentLimits, Preconditions, Principal, SideTable, Store, WriteAction,
    };

    use crate::embedded::EmbeddedStore;
    use crate::faults::{Faults, PowerLoss};

    async fn read(store: &EmbeddedStore, key: &str) -> Option<bytes::Bytes> {
        store
            .side_record(SideTable::Conflicts, key.as_bytes())
            .await
            .unwrap()
    }
    for power_loss in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let mut config = EmbeddedConfig::new(dir.path());
        config.planner = side_planner;
        config.checkpoint_interval = std::time::Duration::from_secs(3600);
        config.faults = Some(faults.clone());
        let store = EmbeddedStore::open(config).unwrap();
        let put = |body: serde_json::Value| WriteCommand {
            key: ResourceKey::parse("things", "a").unwrap(),
            action: WriteAction::Put(
                Document::parse(body.to_string().as_bytes(), DocumentLimits::default()).unwrap(),
            ),
            preconditions: Preconditions::default(),
            if_version: None,
            by: Principal::anonymous(),
            request_id: None,
            resolves: None,
            idempotency: None,
            lock_token: None,
            key_check: None,
        };
        let first = store
            .write(put(serde_json::json!({"side": "k1", "value": "v1"})))
            .await
            .unwrap();
        assert_eq!(first.version.revision, 1);
        let second = store
            .write(put(serde_json::json!({"side": "k2", "value": "v2"})))
            .await
            .unwrap();
        assert_eq!(second.version.revision, 2);
        // The same content again: no version, only a new state of k2.
        let mut side_only = put(serde_json::json!({"side": "k2", "value": "v2"}));
        side_only.preconditions.if_unmodified_since = Some(4_102_444_800);
        let unchanged = store.write(side_only).await.unwrap();
        assert_eq!(
            unchanged.version.revision, 2,
            "a side record alone moved the revision"
        );
        let gone = store
            .write(put(serde_json::json!({"side": "k1", "value": null})))
            .await
            .unwrap();
        assert_eq!(gone.version.revision, 3);
        assert_eq!(read(&store, "k1").await, None);
        assert_eq!(
            read(&store, "k2").await.as_deref(),
            Some(&b"t4102444800"[..])
        );
        // Only the log holds them durably: crash (or lose power) and reopen.
        if power_loss {
            faults.power_loss(PowerLoss::DropUnsynced).unwrap();
        } else {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
        }
        store.close().await;
        let path = if power_loss { dir.path() } else { copy.path() };
        let reopened = EmbeddedStore::open(EmbeddedConfig::new(path)).unwrap();
        assert_eq!(reopened.open_report().revision, 3);
        assert_eq!(read(&reopened, "k1").await, None);
        assert_eq!(
            read(&reopened, "k2").await.as_deref(),
            Some(&b"t4102444800"[..])
        );
        reopened.close().await;
    }
}
