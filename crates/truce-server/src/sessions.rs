//! Interactive transactions' state on this node (SPEC §5).
//!
//! A transaction lives on the node that began it: its snapshot revision, what
//! it read (resources, and the ranges its lists covered) and its buffered
//! writes are kept in memory here, and only its commit goes through the write
//! path, where the store checks that nothing it read changed after the snapshot
//! and applies its writes in one commit. Reads inside a transaction therefore
//! cost no commit. The price: every request of a transaction must reach the
//! node that began it (its id names the node; another node answers 409
//! `transaction-conflict` saying so), and a node that restarts loses its open
//! transactions (they answer as expired). An idle transaction expires after
//! `--txn-idle`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use truce_engine::{CollectionName, EngineError, Principal, ResourceKey, Timestamp, Version};

/// Most open transactions one node keeps; more are refused with 503.
const MAX_SESSIONS: usize = 10_000;

/// What a transaction wrote to one resource, as it will be applied at commit.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// The resource's version number at the snapshot (0: absent), which the
    /// commit names as the write's `if_version`.
    pub base: u64,
    /// What the transaction now sees: the new version, or `None` when it
    /// deleted the resource.
    pub content: Option<Version>,
    /// The lease the write was made under.
    pub lock_token: Option<String>,
}

/// One open transaction.
#[derive(Debug, Clone)]
pub struct Session {
    /// The revision its reads see.
    pub snapshot: u64,
    /// Who began it: only they may use it.
    pub by: Principal,
    /// When it expires unless used.
    deadline: Instant,
    /// Every resource it read or wrote.
    pub reads: BTreeSet<ResourceKey>,
    /// Every `(collection, id prefix)` range it listed.
    pub ranges: Vec<(CollectionName, String)>,
    /// Its writes, one per resource (the last one wins).
    pub writes: BTreeMap<ResourceKey, Buffered>,
}

/// The open transactions of this node.
#[derive(Debug)]
pub struct Sessions {
    /// This node's part of every transaction id it makes.
    node: String,
    idle: Duration,
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// An empty registry whose transactions expire after `idle` unused.
    pub fn new(idle: Duration) -> Self {
        // 32 random bits: nodes of one store tell their transactions apart.
        let random = ulid::Ulid::generate().random();
        Self {
            node: format!("{:08x}", random & 0xffff_ffff),
            idle,
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Begins a transaction at `snapshot`: its id and when it expires unused.
    pub fn begin(&self, snapshot: u64, by: Principal) -> Result<(String, Timestamp), EngineError> {
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, session| session.deadline > now);
        if open.len() >= MAX_SESSIONS {
            // Answered 503 with Retry-After, like a full write queue.
            return Err(EngineError::Storage(truce_engine::StorageError::Overloaded));
        }
        let id = format!("{}{}", self.node, ulid::Ulid::generate());
        open.insert(
            id.clone(),
            Session {
                snapshot,
                by,
                deadline: now + self.idle,
                reads: BTreeSet::new(),
                ranges: Vec::new(),
                writes: BTreeMap::new(),
            },
        );
        Ok((id, self.expires_at()))
    }

    /// When a transaction used now expires.
    pub fn expires_at(&self) -> Timestamp {
        let idle = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        Timestamp::from_millis(Timestamp::now().millis().saturating_add(idle))
    }

    /// Runs `change` on transaction `id` of `by` (and counts the use against
    /// its idle time); 409 when it expired, ended, is another principal's or
    /// lives on another node.
    pub fn with<T>(
        &self,
        id: &str,
        by: &Principal,
        change: impl FnOnce(&mut Session) -> T,
    ) -> Result<T, EngineError> {
        let now = Instant::now();
        let mut open = self.lock();
        match open.get_mut(id) {
            Some(session) if session.deadline > now && session.by == *by => {
                session.deadline = now + self.idle;
                Ok(change(session))
            }
            Some(session) if session.deadline <= now => {
                open.remove(id);
                Err(self.gone(id))
            }
            _ => Err(self.gone(id)),
        }
    }

    /// Ends transaction `id` of `by`, handing back its state.
    pub fn end(&self, id: &str, by: &Principal) -> Result<Session, EngineError> {
        let now = Instant::now();
        let mut open = self.lock();
        match open.remove(id) {
            Some(session) if session.deadline > now && session.by == *by => Ok(session),
            Some(session) if session.by != *by => {
                // Not theirs: it stays for its owner.
                open.insert(id.to_owned(), session);
                Err(self.gone(id))
            }
            _ => Err(self.gone(id)),
        }
    }

    /// The answer for a transaction that cannot be used here.
    fn gone(&self, id: &str) -> EngineError {
        let detail = if id.len() > 8 && !id.starts_with(&self.node) {
            format!(
                "transaction {id} was not begun on this node: a transaction lives on the node that began it, so send all its requests there"
            )
        } else {
            format!(
                "transaction {id} expired (idle longer than {} s), ended (committed or rolled back), or never existed",
                self.idle.as_secs()
            )
        };
        EngineError::TransactionGone { detail }
    }
}
