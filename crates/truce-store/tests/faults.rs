//! Storage faults through the fault seam (SPEC §10): a full disk and I/O errors at
//! each durable step, and power cuts at chosen points.
//!
//! Each scenario writes distinct values, keeping what was acknowledged and what was
//! refused, then checks that every acknowledged write is there and nothing refused
//! is: after the store recovered by itself (no restart), and again after a
//! restart on the same files. Power cuts go through [`Faults::power_loss`], which
//! undoes everything not synced, so these tests fail if an fsync the store relies
//! on is removed (checked by hand once: without the frame's `sync_data` in
//! `Wal::append`, `a_power_cut_keeps_every_acknowledged_write` loses acknowledged
//! writes; without redb's durable commit at a checkpoint, the checkpoint cut does).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use truce_engine::{
    Document, DocumentLimits, EngineError, Preconditions, Principal, ResourceKey, Store,
    VersionLookup, WriteAction, WriteCommand,
};
use truce_store::{EmbeddedConfig, EmbeddedStore, Fault, Faults, FileKind, IoOp, PowerLoss};

const IDS: [&str; 4] = ["a", "b", "c", "d"];

/// Every write tried, and what came of it.
#[derive(Default)]
struct Ledger {
    next_value: u64,
    /// `(id, value, version)` of each acknowledged write, in order.
    acknowledged: Vec<(&'static str, u64, u64)>,
    /// `(id, value, reason)` of each refused write.
    refused: Vec<(&'static str, u64, Option<&'static str>)>,
}

fn key(id: &str) -> ResourceKey {
    ResourceKey::parse("things", id).unwrap()
}

fn put(id: &str, value: u64) -> WriteCommand {
    let body = json!({ "value": value }).to_string();
    WriteCommand {
        key: key(id),
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
    }
}

impl Ledger {
    /// Writes `count` new values round the ids, recording each outcome. Any
    /// failure but a storage one is a test failure.
    async fn write(&mut self, store: &EmbeddedStore, count: usize) {
        for i in 0..count {
            let id = IDS[i % IDS.len()];
            self.next_value += 1;
            let value = self.next_value;
            match store.write(put(id, value)).await {
                Ok(outcome) => self.acknowledged.push((id, value, outcome.version.number)),
                Err(EngineError::Storage(error)) => self.refused.push((id, value, error.reason())),
                Err(other) => panic!("write {value} failed with {other:?}"),
            }
        }
    }

    /// Like [`Ledger::write`], several writers at once, so faults hit batches of
    /// more than one write.
    async fn write_concurrently(&mut self, store: &std::sync::Arc<EmbeddedStore>, rounds: usize) {
        for _ in 0..rounds {
            let mut tasks = Vec::new();
            for id in IDS {
                self.next_value += 1;
                let value = self.next_value;
                let store = std::sync::Arc::clone(store);
                tasks.push(tokio::spawn(async move {
                    (id, value, store.write(put(id, value)).await)
                }));
            }
            for task in tasks {
                match task.await.unwrap() {
                    (id, value, Ok(outcome)) => {
                        self.acknowledged.push((id, value, outcome.version.number));
                    }
                    (id, value, Err(EngineError::Storage(error))) => {
                        self.refused.push((id, value, error.reason()));
                    }
                    (_, value, Err(other)) => panic!("write {value} failed with {other:?}"),
                }
            }
        }
    }

    fn reasons(&self) -> Vec<Option<&'static str>> {
        self.refused.iter().map(|(_, _, r)| *r).collect()
    }

    /// Every acknowledged write is readable as the version it was given, each
    /// resource's head is its last acknowledged write, and no version anywhere
    /// holds a refused value.
    async fn check(&self, store: &EmbeddedStore) {
        let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
        for &(id, value, version) in &self.acknowledged {
            assert_eq!(
                value_of(store, id, version).await,
                Some(value),
                "{id} v{version}"
            );
            last.insert(id, (value, version));
        }
        let mut present = Vec::new();
        for id in IDS {
            let head = store.head(&key(id)).await.unwrap();
            let expected = last.get(id).map(|(_, version)| *version);
            assert_eq!(head.as_ref().map(|v| v.number), expected, "head of {id}");
            for version in 1..=expected.unwrap_or(0) {
                present.extend(value_of(store, id, version).await);
            }
        }
        for (id, value, _) in &self.refused {
            assert!(
                !present.contains(value),
                "refused write {value} of {id} is present"
            );
        }
    }
}

async fn value_of(store: &EmbeddedStore, id: &str, version: u64) -> Option<u64> {
    match store.version(&key(id), version).await.unwrap() {
        VersionLookup::Found(found) => {
            let body: Value = serde_json::from_slice(found.body.as_ref()?).unwrap();
            body["value"].as_u64()
        }
        _ => None,
    }
}

/// Waits (bounded) until the store says it takes writes again.
async fn until_ready(store: &EmbeddedStore) {
    for _ in 0..500 {
        if store.check_ready().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store did not recover: {:?}", store.check_ready().await);
}

fn open(
    dir: &std::path::Path,
    faults: Option<&Faults>,
    tune: impl Fn(&mut EmbeddedConfig),
) -> EmbeddedStore {
    let mut config = EmbeddedConfig::new(dir);
    config.faults = faults.cloned();
    tune(&mut config);
    EmbeddedStore::open(config).unwrap()
}

/// Reopens the files without the seam, as a restart would, and checks again.
async fn check_after_restart(dir: &std::path::Path, ledger: &Ledger) {
    let store = open(dir, None, |_| {});
    ledger.check(&store).await;
    store.close().await;
}

/// A fault armed by `arm` after a warm-up, with writes running into it; then the
/// fault clears, the store resumes by itself, and everything is checked.
async fn fault_then_recover(
    tune: impl Fn(&mut EmbeddedConfig) + Copy,
    arm: impl Fn(&Faults),
    expected_reason: &'static str,
) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = std::sync::Arc::new(open(dir.path(), Some(&faults), tune));
    let mut ledger = Ledger::default();
    ledger.write(&store, 12).await;
    assert!(ledger.refused.is_empty(), "warm-up refused writes");

    arm(&faults);
    ledger.write_concurrently(&store, 6).await;
    assert!(
        ledger.reasons().contains(&Some(expected_reason)),
        "expected a {expected_reason} refusal, got {:?}",
        ledger.reasons()
    );
    // Reads go on from the last published snapshot.
    for id in IDS {
        assert!(
            store.head(&key(id)).await.unwrap().is_some(),
            "read of {id}"
        );
    }

    faults.heal();
    until_ready(&store).await;
    let before = ledger.acknowledged.len();
    ledger.write(&store, 8).await;
    assert_eq!(
        ledger.acknowledged.len(),
        before + 8,
        "writes did not resume"
    );
    ledger.check(&store).await;
    store.close().await;
    drop(store);
    check_after_restart(dir.path(), &ledger).await;
}

/// Checkpoints only when something forces one.
fn log_only(config: &mut EmbeddedConfig) {
    config.checkpoint_interval = Duration::from_secs(3600);
}

/// A checkpoint (durable redb commit) with every batch.
fn every_commit_durable(config: &mut EmbeddedConfig) {
    config.checkpoint_interval = Duration::ZERO;
}

/// A checkpoint at every other batch (any log at all brings one).
fn frequent_checkpoints(config: &mut EmbeddedConfig) {
    config.checkpoint_interval = Duration::from_secs(3600);
    config.checkpoint_bytes = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_while_appending_a_frame() {
    // The warm-up grew the log already: the next log write is a frame.
    fault_then_recover(
        log_only,
        |f| f.fail_always(FileKind::Log, IoOp::Write, Fault::NoSpace),
        "disk-full",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_write_of_a_frame() {
    fault_then_recover(
        log_only,
        |f| f.fail(FileKind::Log, IoOp::Write, 2, Fault::ShortWrite),
        "disk-full",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_while_growing_the_log() {
    // A log that must grow at every frame: each append writes zeros first.
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    // The first log write of a new store grows the file.
    faults.fail(FileKind::Log, IoOp::Write, 1, Fault::NoSpace);
    let store = open(dir.path(), Some(&faults), log_only);
    let mut ledger = Ledger::default();
    ledger.write(&store, 1).await;
    assert_eq!(ledger.reasons(), vec![Some("disk-full")]);
    until_ready(&store).await;
    ledger.write(&store, 10).await;
    assert_eq!(ledger.acknowledged.len(), 10);
    ledger.check(&store).await;
    store.close().await;
    check_after_restart(dir.path(), &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_error_on_the_frame_fsync() {
    fault_then_recover(
        log_only,
        |f| f.fail(FileKind::Log, IoOp::Sync, 1, Fault::Io),
        "io-error",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_a_checkpoint() {
    fault_then_recover(
        frequent_checkpoints,
        |f| f.fail_always(FileKind::Database, IoOp::Write, Fault::NoSpace),
        "disk-full",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_error_on_each_checkpoint_fsync() {
    // redb syncs twice per durable commit; fail the first, then the second, of
    // later commits: the second leaves a commit on disk that was refused.
    for nth in [1, 2, 3] {
        fault_then_recover(
            every_commit_durable,
            move |f| f.fail(FileKind::Database, IoOp::Sync, nth, Fault::Io),
            "io-error",
        )
        .await;
    }
}

/// A frame whose fsync failed is in the file (the page cache kept it, as a crash
/// of the process alone would): recovery must not replay it after a restart,
/// although its revision continues the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_frame_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(dir.path(), Some(&faults), log_only);
    let mut ledger = Ledger::default();
    ledger.write(&store, 5).await;
    faults.fail(FileKind::Log, IoOp::Sync, 1, Fault::Io);
    ledger.write(&store, 1).await;
    assert_eq!(ledger.reasons(), vec![Some("io-error")]);
    until_ready(&store).await;
    store.close().await;
    check_after_restart(dir.path(), &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_tells_while_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = open(dir.path(), Some(&faults), log_only);
    let mut ledger = Ledger::default();
    ledger.write(&store, 4).await;
    assert!(store.check_ready().await.is_ok());
    faults.fail_always(FileKind::Log, IoOp::Sync, Fault::Io);
    ledger.write(&store, 1).await;
    match store.check_ready().await {
        Err(EngineError::Storage(error)) => assert_eq!(error.reason(), Some("io-error")),
        other => panic!("ready during an outage: {other:?}"),
    }
    // Writes meanwhile are refused at once, with the same reason.
    ledger.write(&store, 3).await;
    assert_eq!(ledger.refused.len(), 4);
    assert!(ledger.reasons().iter().all(|r| *r == Some("io-error")));
    faults.heal();
    until_ready(&store).await;
    ledger.write(&store, 2).await;
    assert_eq!(ledger.acknowledged.len(), 6);
    ledger.check(&store).await;
    store.close().await;
}

/// A checkpoint on a full disk: the store gives back its reserve to reopen, serves
/// reads again while writes stay refused, and resumes writes only once the reserve
/// can be written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_spends_the_reserve_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let reserve = dir.path().join("truce.reserve");
    let faults = Faults::new();
    let store = std::sync::Arc::new(open(dir.path(), Some(&faults), |config| {
        frequent_checkpoints(config);
        config.reserve_bytes = 1024 * 1024;
    }));
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1024 * 1024);
    let mut ledger = Ledger::default();
    ledger.write(&store, 6).await;
    faults.fail_always(FileKind::Database, IoOp::Write, Fault::NoSpace);
    faults.fail_always(FileKind::Reserve, IoOp::Write, Fault::NoSpace);
    ledger.write_concurrently(&store, 3).await;
    assert!(ledger.reasons().contains(&Some("disk-full")));
    // The probe gives the reserve back; the database can be reopened once its
    // writes succeed, but the reserve cannot be made again yet.
    for _ in 0..500 {
        if !reserve.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!reserve.exists(), "the reserve was not given back");
    faults.heal_one(FileKind::Database, IoOp::Write);
    let reopens = faults.calls(FileKind::Reserve, IoOp::Write);
    for _ in 0..500 {
        if faults.calls(FileKind::Reserve, IoOp::Write) > reopens {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ledger.check(&store).await;
    match store.check_ready().await {
        Err(EngineError::Storage(error)) => assert_eq!(error.reason(), Some("disk-full")),
        other => panic!("ready without a reserve: {other:?}"),
    }
    let refused = ledger.refused.len();
    ledger.write(&store, 1).await;
    assert_eq!(
        ledger.refused.len(),
        refused + 1,
        "a write went through without room"
    );
    // Room again: the reserve is made, and writes resume.
    faults.heal();
    until_ready(&store).await;
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1024 * 1024);
    ledger.write(&store, 4).await;
    assert_eq!(ledger.refused.len(), refused + 1);
    ledger.check(&store).await;
    store.close().await;
    check_after_restart(dir.path(), &ledger).await;
}

/// The one fail-stop: if, when the store reopens after a fault, acknowledged
/// writes are missing (here the log that held them was wiped behind its back,
/// as a disk that loses synced data would), it stays down rather than build on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_missing_acknowledged_writes_stays_down() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    // No checkpoint until 4 heads wait: the first three writes are durable in
    // the log only.
    let store = open(dir.path(), Some(&faults), |config| {
        log_only(config);
        config.checkpoint_heads = 4;
    });
    let mut ledger = Ledger::default();
    ledger.write(&store, 3).await;
    assert!(ledger.refused.is_empty());
    for name in ["truce.wal", "truce-2.wal"] {
        let wal = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(name))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&wal, &[0u8; 4096], 0).unwrap();
        wal.sync_all().unwrap();
    }
    // The write of a fourth resource brings a checkpoint, whose first page
    // write fails: redb must be reopened, and reopened it lacks every write.
    faults.fail(FileKind::Database, IoOp::Write, 1, Fault::Io);
    ledger.write(&store, 4).await;
    for _ in 0..200 {
        if !ledger.refused.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        ledger.write(&store, 1).await;
    }
    assert_eq!(ledger.reasons().first(), Some(&Some("io-error")));
    let acknowledged = ledger.acknowledged.len();
    // Probes find the store behind the acknowledged revision and refuse to go on.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ledger.write(&store, 1).await;
    }
    assert_eq!(
        ledger.acknowledged.len(),
        acknowledged,
        "a write was accepted on a store that lost data"
    );
    assert!(store.check_ready().await.is_err());
    store.close().await;
}

/// A power cut at a chosen call: the store is gone (everything after fails), and a
/// restart on what the disk kept must hold every acknowledged write.
async fn power_cut(
    tune: impl Fn(&mut EmbeddedConfig) + Copy,
    file: FileKind,
    op: IoOp,
    nth: u64,
    loss: PowerLoss,
) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = std::sync::Arc::new(open(dir.path(), Some(&faults), tune));
    let mut ledger = Ledger::default();
    ledger.write_concurrently(&store, 3).await;
    faults.fail(file, op, nth, Fault::PowerCut(loss));
    ledger.write_concurrently(&store, 12).await;
    assert!(faults.is_dead(), "the power cut was never reached");
    assert!(!ledger.refused.is_empty());
    store.close().await;
    check_after_restart(dir.path(), &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_acknowledged_write() {
    for loss in [PowerLoss::DropUnsynced, PowerLoss::TearNewest] {
        // In the middle of a batch: at a frame's write, at its fsync.
        power_cut(log_only, FileKind::Log, IoOp::Write, 3, loss).await;
        power_cut(log_only, FileKind::Log, IoOp::Sync, 3, loss).await;
        // In the middle of a checkpoint: at redb's page writes and its fsyncs.
        power_cut(
            frequent_checkpoints,
            FileKind::Database,
            IoOp::Write,
            2,
            loss,
        )
        .await;
        power_cut(
            frequent_checkpoints,
            FileKind::Database,
            IoOp::Sync,
            1,
            loss,
        )
        .await;
        power_cut(
            frequent_checkpoints,
            FileKind::Database,
            IoOp::Sync,
            2,
            loss,
        )
        .await;
    }
}

/// A power loss with the store idle, after acknowledged writes that only the log
/// holds durably: the redb file loses everything since its last checkpoint, and
/// the log brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_after_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let store = std::sync::Arc::new(open(dir.path(), Some(&faults), log_only));
    let mut ledger = Ledger::default();
    ledger.write_concurrently(&store, 10).await;
    assert!(ledger.refused.is_empty());
    faults.power_loss(PowerLoss::TearNewest).unwrap();
    store.close().await;
    check_after_restart(dir.path(), &ledger).await;
}
