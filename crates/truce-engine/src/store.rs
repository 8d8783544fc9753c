//! The storage contract.
//!
//! [`StateView`] is what the write rules read while a backend holds its write
//! transaction open (read-your-writes within a batch). [`Store`] is what the HTTP layer
//! talks to: writes go through the backend's sequencer and come back once durable;
//! reads come from consistent snapshots and never wait for writes. The embedded redb
//! backend implements both; a networked backend implements them with one SQL
//! transaction per batch.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::change::{ChangePage, ChangeQuery};
use crate::collection::{SettingsCommand, SettingsOutcome};
use crate::command::{WriteCommand, WriteOutcome};
use crate::error::{EngineError, StorageError};
use crate::name::{CollectionName, ResourceKey};
use crate::read::VersionLookup;
use crate::record::{HistoryPage, ListPage, ListQuery, Version};
use crate::resolution::{ResolutionCommand, ResolutionOutcome};
use crate::retention::CompactionReport;
use crate::rules::{SideCommit, SideTable};

/// The state the rules read: the newest committed data (plus, inside the sequencer,
/// the earlier writes of the batch being built).
pub trait StateView {
    /// The newest version of `key` (a tombstone if deleted), if it ever existed.
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError>;

    /// Visits the past versions of `key` numbered below `below`, newest first, until
    /// `visit` returns `false` or the stored history ends (compaction may have removed
    /// older versions). Retention rules are applied by the caller, not here.
    fn walk_back(
        &self,
        key: &ResourceKey,
        below: u64,
        visit: &mut dyn FnMut(Version) -> bool,
    ) -> Result<(), StorageError>;
}

/// A storage backend, as the HTTP layer sees it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Runs one write through the sequencer; returns once it is durable (or refused).
    async fn write(&self, command: WriteCommand) -> Result<WriteOutcome, EngineError>;

    /// The newest version of `key`, tombstone included.
    async fn head(&self, key: &ResourceKey) -> Result<Option<Version>, EngineError>;

    /// One version of `key`.
    async fn version(&self, key: &ResourceKey, number: u64) -> Result<VersionLookup, EngineError>;

    /// A page of the live resources of a collection, in id order.
    async fn list(
        &self,
        collection: &CollectionName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError>;

    /// `key` as it was at `revision`: its newest version committed at or below
    /// it (see [`crate::lookup_at_revision`]), for reads in a transaction's
    /// snapshot.
    async fn version_at(
        &self,
        key: &ResourceKey,
        revision: u64,
    ) -> Result<VersionLookup, EngineError>;

    /// A page of a resource's history, newest first, starting below `before`; 404 if
    /// the resource never existed.
    async fn history(
        &self,
        key: &ResourceKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError>;

    /// A page of the change feed.
    async fn changes(&self, query: &ChangeQuery) -> Result<ChangePage, EngineError>;

    /// Side records of `table` with keys after `after` (all, without it), in key
    /// order, at most `limit`, as of the newest published state.
    async fn side_records(
        &self,
        table: SideTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, bytes::Bytes)>, EngineError>;

    /// Resolves or dismisses a conflict record through the sequencer; returns once
    /// the closed record (and any version it wrote) is durable.
    async fn resolve(&self, command: ResolutionCommand) -> Result<ResolutionOutcome, EngineError>;

    /// Commits side records the rules decided outside a write (a subscription, a
    /// delivery attempt) through the sequencer, atomically, if the record they
    /// require still exists (else not-found); returns once durable.
    async fn commit_side(&self, commit: SideCommit) -> Result<(), EngineError>;

    /// Claims the due webhook outbox rows under `keys` for `node` until `until`,
    /// through the write path, so that of several nodes exactly one attempts a
    /// row at a time; returns the deliveries this node got.
    async fn claim_deliveries(
        &self,
        keys: Vec<Vec<u8>>,
        node: String,
        until: crate::time::Timestamp,
    ) -> Result<Vec<crate::webhook::Delivery>, EngineError>;

    /// Runs a batch transaction through the sequencer: every op checked and
    /// applied in one commit at one revision, or nothing applied; returns once
    /// durable.
    async fn transact(
        &self,
        command: crate::txn::TxnCommand,
    ) -> Result<crate::txn::TxnOutcome, EngineError>;

    /// Commits an interactive transaction through the sequencer: its snapshot
    /// checked and its writes applied in one commit, or nothing; returns once
    /// durable.
    async fn commit_snapshot(
        &self,
        commit: crate::txn::SnapshotCommit,
    ) -> Result<crate::txn::TxnOutcome, EngineError>;

    /// Runs a lock job through the sequencer (acquire, renew, release, break,
    /// leave the queue, or expire what ran out); returns once durable.
    async fn lock(
        &self,
        job: crate::locks::LockJob,
    ) -> Result<crate::locks::LockOutcome, EngineError>;

    /// A counter moved after every commit that changed a lock (on any node):
    /// the expiry keeper waits on it instead of polling.
    fn lock_changes(&self) -> watch::Receiver<u64>;

    /// A receiver that changes after every commit (on any node) that changed a
    /// lock of `key`'s group ([`crate::LockGroups`]): what a waiter in `key`'s
    /// queue waits on, so other locks' changes do not wake it.
    fn lock_waits(&self, key: &ResourceKey) -> watch::Receiver<u64>;

    /// Replaces a collection's settings through the sequencer; returns once they
    /// are durable. Writes queued after it are planned under them.
    async fn configure(&self, command: SettingsCommand) -> Result<SettingsOutcome, EngineError>;

    /// One side record, as of the newest published state.
    async fn side_record(
        &self,
        table: SideTable,
        key: &[u8],
    ) -> Result<Option<bytes::Bytes>, EngineError>;

    /// The latest committed revision, updated after every commit: change-feed readers
    /// wait on it instead of polling.
    fn revisions(&self) -> watch::Receiver<u64>;

    /// The position of the newest conflict event, updated after every commit that
    /// wrote one: conflict streams wait on it instead of polling.
    fn conflict_events(&self) -> watch::Receiver<u64>;

    /// Runs one compaction pass now (age-based retention).
    async fn compact(&self) -> Result<CompactionReport, EngineError>;

    /// Whether the store can serve requests.
    async fn check_ready(&self) -> Result<(), EngineError>;

    /// Stops accepting writes, commits what is queued, and closes the store.
    async fn close(&self);
}
