//! A clean close leaves a file that redb opens at once and without repair (a repair
//! walks every page of the file: seconds at a million documents), even with writes
//! since the last checkpoint and read snapshots taken meanwhile: `close` returns only
//! once the sequencer has checkpointed and let go of the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use truce_engine::{
    Document, DocumentLimits, Preconditions, Principal, ResourceKey, Store, WriteAction,
    WriteCommand,
};
use truce_store::{DATABASE_FILE, EmbeddedConfig, EmbeddedStore};

#[tokio::test]
async fn a_closed_store_reopens_without_repair() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    // Writes stay in the overlay and the write-ahead log until the close.
    config.checkpoint_interval = Duration::from_secs(3600);
    let store = EmbeddedStore::open(config).unwrap();
    for n in 0..50 {
        let key = ResourceKey::parse("things", &format!("t{n}")).unwrap();
        let body = format!("{{\"n\":{n}}}");
        store
            .write(WriteCommand {
                key: key.clone(),
                action: WriteAction::Put(
                    Document::parse(body.as_bytes(), DocumentLimits::default()).unwrap(),
                ),
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
        // Readers hold snapshots while writes go on.
        assert!(store.head(&key).await.unwrap().is_some());
    }
    store.close().await;
    drop(store);

    let repaired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&repaired);
    let db = redb::Database::builder()
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(dir.path().join(DATABASE_FILE))
        .unwrap();
    drop(db);
    assert!(!repaired.load(Ordering::SeqCst), "the file needed a repair");

    // The close checkpointed: the database file alone, without the write-ahead
    // log, holds all 50 writes.
    for name in ["truce.wal", "truce-2.wal"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path())).unwrap();
    for n in 0..50 {
        let key = ResourceKey::parse("things", &format!("t{n}")).unwrap();
        let head = store
            .head(&key)
            .await
            .unwrap()
            .expect("written before the close");
        let body: serde_json::Value = serde_json::from_slice(head.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["n"], n);
    }
    store.close().await;
}
