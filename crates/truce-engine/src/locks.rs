//! Pessimistic locks (SPEC §4): leases with FIFO waiting and fencing tokens.
//!
//! A resource's lock record (`SideTable::Locks`, keyed by the resource) keeps the
//! last fence granted, so fences grow strictly across every lock ever granted on
//! it, and the live holder if any: token, owner, principal, expiry. Waiters queue
//! in `SideTable::LockWaiters` under the resource and a sequence number the record
//! hands out: first come, first served, at most [`MAX_WAITERS`]. Live leases are
//! indexed by expiry time in `SideTable::LockExpiries`, so an expiry pass reads
//! only what is due.
//!
//! Every change runs through the write path with the rest of its batch, at the
//! batch's clock (the server's on the embedded store, the database's across
//! PostgreSQL nodes). A release, a break, an expiry, or the holder's waiter
//! leaving hands the lock to the first waiter still waiting, in the same commit.
//! A lease that ran out is treated as gone by every check at once, whether or not
//! an expiry pass has removed it yet.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::command::Principal;
use crate::error::EngineError;
use crate::name::ResourceKey;
use crate::rules::{SideTable, SideWrite};
use crate::time::Timestamp;

/// Shortest lease.
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest lease (renew to hold longer).
pub const MAX_TTL_MS: u64 = 3_600_000;
/// Longest a request may wait in the queue.
pub const MAX_WAIT_MS: u64 = 300_000;
/// Most waiters one resource's queue holds; more are refused with 503.
pub const MAX_WAITERS: usize = 64;

/// A resource's lock record as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The last fence granted (0: never locked).
    pub fence: u64,
    /// The next waiter's sequence number.
    next_waiter: u64,
    /// The holder, while a lease is (or was, until an expiry pass) held.
    holder: Option<Holder>,
}

/// Who holds a lock, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The secret a holder's writes carry (`Lock-Token`).
    pub token: String,
    /// This lease's fence.
    pub fence: u64,
    /// Free text the acquirer gave.
    pub owner: String,
    /// The principal that acquired it.
    pub by: String,
    /// When it was granted (ms).
    pub acquired_at: u64,
    /// When it runs out (ms).
    pub expires_at: u64,
    /// Its lease length, used again by a renewal that names none.
    pub ttl_ms: u64,
    /// The waiter it was handed to, if it was.
    pub waiter: Option<String>,
}

/// One queued acquirer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Waiter {
    id: String,
    owner: String,
    by: String,
    ttl_ms: u64,
    queued_at: u64,
    deadline: u64,
}

/// A lock as answers show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockView {
    /// The locked resource.
    pub resource: ResourceKey,
    /// The lease's fence.
    pub fence: u64,
    /// The token: only in answers to its holder (acquire, renew).
    pub token: Option<String>,
    /// The owner text.
    pub owner: String,
    /// The holder's principal.
    pub by: String,
    /// When it was granted.
    pub acquired_at: Timestamp,
    /// When it runs out.
    pub expires_at: Timestamp,
    /// Requests waiting for it.
    pub waiting: usize,
}

impl LockView {
    fn of(resource: &ResourceKey, holder: &Holder, waiting: usize, with_token: bool) -> Self {
        Self {
            resource: resource.clone(),
            fence: holder.fence,
            token: with_token.then(|| holder.token.clone()),
            owner: holder.owner.clone(),
            by: holder.by.clone(),
            acquired_at: Timestamp::from_millis(holder.acquired_at),
            expires_at: Timestamp::from_millis(holder.expires_at),
            waiting,
        }
    }

    /// The JSON body of lock answers.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "resource": {"collection": self.resource.collection, "id": self.resource.id},
            "fence": self.fence,
            "owner": self.owner,
            "by": self.by,
            "acquired_at": self.acquired_at.rfc3339(),
            "expires_at": self.expires_at.rfc3339(),
            "waiting": self.waiting,
        });
        if let Some(token) = &self.token {
            body["token"] = json!(token);
        }
        body
    }
}

/// What to do to a resource's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAction {
    /// Take it for `ttl_ms`; if held, wait in the queue as `waiting` says, or
    /// be refused (423) without it.
    Acquire {
        /// Lease length.
        ttl_ms: u64,
        /// Free text shown to others.
        owner: String,
        /// Queue as this waiter until this deadline.
        waiting: Option<(String, Timestamp)>,
    },
    /// Extend the holder's lease (to `ttl_ms` from now, or its own length).
    Renew {
        /// The holder's token.
        token: String,
        /// New lease length.
        ttl_ms: Option<u64>,
    },
    /// Give the lock up.
    Release {
        /// The holder's token.
        token: String,
    },
    /// Take it from its holder (admin).
    Break,
    /// A waiter stops waiting (time-out or gone); if the lock was handed to
    /// it meanwhile, the answer is the grant.
    Leave {
        /// The waiter.
        waiter: String,
    },
}

/// A lock change asked of the write path.
#[derive(Debug, Clone)]
pub enum LockJob {
    /// One resource's lock.
    On {
        /// The resource.
        key: ResourceKey,
        /// What to do.
        action: LockAction,
        /// Who asks.
        by: Principal,
        /// The request's `Idempotency-Key`: an answer (a grant, a renewal, a
        /// release or break) is kept in the same commit; a place in the queue
        /// or leaving it is not an answer and keeps nothing.
        idempotency: Option<Box<crate::idempotency::Idempotent<LockOutcome>>>,
    },
    /// Every lease that ran out is removed, and each lock handed on.
    ExpireDue,
}

/// How a lock job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The caller holds the lock (with its token).
    Granted(LockView),
    /// The caller waits at this place in the queue (1: next).
    Queued(usize),
    /// The lease was extended (with its token).
    Renewed(LockView),
    /// The lock was given up.
    Released,
    /// The lock was taken from this holder.
    Broken(LockView),
    /// The waiter left the queue.
    Left,
    /// This many leases ran out.
    Expired(usize),
}

/// A lock event: kept in the event log for the resource's watch stream, logged
/// and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEvent {
    /// `lock.acquired`, `lock.renewed`, `lock.released`, `lock.expired` or `lock.broken`.
    pub event: &'static str,
    /// The resource.
    pub resource: ResourceKey,
    /// The lease's fence.
    pub fence: u64,
    /// The lease's owner text.
    pub owner: String,
    /// The lease holder's principal.
    pub by: String,
    /// When the lease runs out, while it is held (acquired, renewed).
    pub expires_at: Option<Timestamp>,
    /// When it happened.
    pub at: Timestamp,
    /// For a hand-off: how long the new holder waited (ms).
    pub waited_ms: Option<u64>,
}

/// The lock events' names, as SSE `event:` fields.
pub const LOCK_EVENTS: [&str; 5] = [
    "lock.acquired",
    "lock.renewed",
    "lock.released",
    "lock.expired",
    "lock.broken",
];

impl LockEvent {
    fn of(event: &'static str, resource: &ResourceKey, holder: &Holder, now: u64) -> Self {
        let held = matches!(event, "lock.acquired" | "lock.renewed");
        Self {
            event,
            resource: resource.clone(),
            fence: holder.fence,
            owner: holder.owner.clone(),
            by: holder.by.clone(),
            expires_at: held.then(|| Timestamp::from_millis(holder.expires_at)),
            at: Timestamp::from_millis(now),
            waited_ms: None,
        }
    }

    /// The event as the event log keeps it at `position` (never the token).
    pub fn to_json(&self, position: u64) -> Value {
        let mut body = json!({
            "position": position,
            "event": self.event,
            "resource": {"collection": self.resource.collection, "id": self.resource.id},
            "fence": self.fence,
            "owner": self.owner,
            "by": self.by,
            "at": self.at.rfc3339(),
        });
        if let Some(expires_at) = self.expires_at {
            body["expires_at"] = json!(expires_at.rfc3339());
        }
        body
    }
}

/// The key of a resource's lock record.
pub fn lock_key(key: &ResourceKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.collection.as_str().len() + 1 + key.id.as_str().len());
    out.extend_from_slice(key.collection.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(key.id.as_str().as_bytes());
    out
}

/// The resource of a lock record's key.
fn resource_of(lock_key: &[u8]) -> Option<ResourceKey> {
    let text = std::str::from_utf8(lock_key).ok()?;
    let (collection, id) = text.split_once('\0')?;
    ResourceKey::parse(collection, id).ok()
}

/// The prefix of a resource's waiters' keys.
pub fn waiters_prefix(lock_key: &[u8]) -> Vec<u8> {
    let mut prefix = lock_key.to_vec();
    prefix.push(0);
    prefix
}

/// The key of a lease's expiry index entry.
fn expiry_key(expires_at: u64, lock_key: &[u8]) -> Vec<u8> {
    let mut key = expires_at.to_be_bytes().to_vec();
    key.extend_from_slice(lock_key);
    key
}

/// The resource and expiry time of an expiry index key.
pub fn read_lock_expiry(key: &[u8]) -> Option<(Timestamp, Vec<u8>)> {
    let (at, rest) = key.split_at_checked(8)?;
    Some((
        Timestamp::from_millis(u64::from_be_bytes(at.try_into().ok()?)),
        rest.to_vec(),
    ))
}

/// Whether a `Lock-Token` has a token's shape (a malformed one is 400).
pub fn check_lock_token(token: &str) -> Result<(), EngineError> {
    if token.len() == 32
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(EngineError::Malformed(
            "Lock-Token must be the token a lock was granted with (32 hexadecimal digits)".into(),
        ))
    }
}

/// A fresh token.
fn new_token() -> Result<String, EngineError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| EngineError::Internal(format!("no random bytes for a lock token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a lease length.
pub fn check_ttl(ttl_ms: u64) -> Result<(), EngineError> {
    if (MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(EngineError::invalid(
            "/ttl_ms",
            format!(
                "ttl_ms must be between {MIN_TTL_MS} and {MAX_TTL_MS} (1 s to 1 h); renew to hold longer"
            ),
        ))
    }
}

/// Checks a wait.
pub fn check_wait(wait_ms: u64) -> Result<(), EngineError> {
    if wait_ms <= MAX_WAIT_MS {
        Ok(())
    } else {
        Err(EngineError::invalid(
            "/wait_ms",
            format!("wait_ms must be between 0 and {MAX_WAIT_MS} (5 min)"),
        ))
    }
}

/// A resource's lock state inside a write transaction: its record and queue,
/// and the side writes that changes to them make.
pub struct LockState {
    key: ResourceKey,
    lock_key: Vec<u8>,
    record: LockRecord,
    /// Queued waiters in order, with their stored keys.
    waiters: Vec<(Vec<u8>, Waiter)>,
    writes: Vec<SideWrite>,
    events: Vec<LockEvent>,
    now: u64,
}

impl LockState {
    /// The state of `key`'s lock from its stored record and every stored waiter
    /// (`all_waiters`: the whole waiter table; the queue is its slice for
    /// this resource).
    pub fn load(
        key: &ResourceKey,
        stored: Option<&[u8]>,
        all_waiters: &[(Vec<u8>, Bytes)],
        now: Timestamp,
    ) -> Result<Self, EngineError> {
        let lock_key = lock_key(key);
        let record = match stored {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| EngineError::Internal(format!("lock record of {key}: {e}")))?,
            None => LockRecord::default(),
        };
        let prefix = waiters_prefix(&lock_key);
        let mut waiters = Vec::new();
        for (stored_key, value) in all_waiters {
            if stored_key.starts_with(&prefix)
                && let Ok(waiter) = serde_json::from_slice::<Waiter>(value)
            {
                waiters.push((stored_key.clone(), waiter));
            }
        }
        waiters.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            key: key.clone(),
            lock_key,
            record,
            waiters,
            writes: Vec::new(),
            events: Vec::new(),
            now: now.millis(),
        })
    }

    /// The side writes the changes made, and their events.
    pub fn finish(mut self) -> Result<(Vec<SideWrite>, Vec<LockEvent>), EngineError> {
        if !self.writes.is_empty() {
            let value = serde_json::to_vec(&self.record)
                .map_err(|e| EngineError::Internal(format!("lock record: {e}")))?;
            self.writes.push(SideWrite {
                table: SideTable::Locks,
                key: self.lock_key.clone(),
                value: Some(Bytes::from(value)),
            });
        }
        Ok((self.writes, self.events))
    }

    /// The resource whose lock this is.
    pub fn resource(&self) -> &ResourceKey {
        &self.key
    }

    /// The live holder: a lease that has not run out.
    pub fn live_holder(&self) -> Option<&Holder> {
        self.record
            .holder
            .as_ref()
            .filter(|holder| holder.expires_at > self.now)
    }

    /// Waiters still waiting.
    fn waiting(&self) -> usize {
        self.waiters
            .iter()
            .filter(|(_, w)| w.deadline > self.now)
            .count()
    }

    /// Removes a lease that ran out (its event `lock.expired`); true if one did.
    fn clear_expired(&mut self) -> bool {
        match &self.record.holder {
            Some(holder) if holder.expires_at <= self.now => {
                self.drop_holder("lock.expired");
                true
            }
            _ => false,
        }
    }

    /// Removes the holder with its expiry entry, recording `event`.
    fn drop_holder(&mut self, event: &'static str) {
        if let Some(holder) = self.record.holder.take() {
            self.writes.push(SideWrite {
                table: SideTable::LockExpiries,
                key: expiry_key(holder.expires_at, &self.lock_key),
                value: None,
            });
            self.events
                .push(LockEvent::of(event, &self.key, &holder, self.now));
        }
    }

    /// Grants the lock (fence + 1) with a fresh token.
    fn grant(
        &mut self,
        owner: String,
        by: String,
        ttl_ms: u64,
        waiter: Option<(String, u64)>,
    ) -> Result<&Holder, EngineError> {
        self.record.fence += 1;
        let holder = Holder {
            token: new_token()?,
            fence: self.record.fence,
            owner,
            by,
            acquired_at: self.now,
            expires_at: self.now.saturating_add(ttl_ms),
            ttl_ms,
            waiter: waiter.as_ref().map(|(id, _)| id.clone()),
        };
        self.writes.push(SideWrite {
            table: SideTable::LockExpiries,
            key: expiry_key(holder.expires_at, &self.lock_key),
            value: Some(Bytes::new()),
        });
        self.events.push(LockEvent {
            waited_ms: waiter.map(|(_, since)| self.now.saturating_sub(since)),
            ..LockEvent::of("lock.acquired", &self.key, &holder, self.now)
        });
        Ok(self.record.holder.insert(holder))
    }

    /// Hands a free lock to the first waiter still waiting (dropping the ones
    /// whose wait ran out on the way).
    fn hand_off(&mut self) -> Result<(), EngineError> {
        while self.live_holder().is_none() && !self.waiters.is_empty() {
            let (stored_key, waiter) = self.waiters.remove(0);
            self.writes.push(SideWrite {
                table: SideTable::LockWaiters,
                key: stored_key,
                value: None,
            });
            if waiter.deadline > self.now {
                let since = waiter.queued_at;
                self.grant(
                    waiter.owner,
                    waiter.by,
                    waiter.ttl_ms,
                    Some((waiter.id, since)),
                )?;
            }
        }
        Ok(())
    }

    /// The refusal for a request that needs the lock someone else holds (or
    /// whose own lease is gone).
    pub fn locked(&self, detail: &str) -> EngineError {
        let holder = self.live_holder();
        EngineError::Locked {
            detail: detail.to_owned(),
            holder: holder.map(|h| Box::new(LockView::of(&self.key, h, self.waiting(), false))),
            retry_after_secs: holder
                .map(|h| h.expires_at.saturating_sub(self.now).div_ceil(1000).max(1)),
        }
    }

    /// Removes a lease that ran out and hands the lock on; true if one had.
    pub fn settle(&mut self) -> Result<bool, EngineError> {
        let expired = self.clear_expired();
        if expired {
            self.hand_off()?;
        }
        Ok(expired)
    }

    /// Runs one action.
    pub fn apply(
        &mut self,
        action: &LockAction,
        by: &Principal,
    ) -> Result<LockOutcome, EngineError> {
        self.settle()?;
        match action {
            LockAction::Acquire {
                ttl_ms,
                owner,
                waiting,
            } => {
                check_ttl(*ttl_ms)?;
                if self.live_holder().is_none() {
                    self.hand_off()?;
                }
                if self.live_holder().is_none() {
                    let holder =
                        self.grant(owner.clone(), by.as_str().to_owned(), *ttl_ms, None)?;
                    let holder = holder.clone();
                    return Ok(LockOutcome::Granted(LockView::of(
                        &self.key, &holder, 0, true,
                    )));
                }
                let Some((waiter, deadline)) = waiting else {
                    return Err(self.locked("the resource is locked by another holder"));
                };
                if self.waiting() >= MAX_WAITERS {
                    return Err(EngineError::LockQueueFull { limit: MAX_WAITERS });
                }
                let seq = self.record.next_waiter;
                self.record.next_waiter += 1;
                let mut stored_key = waiters_prefix(&self.lock_key);
                stored_key.extend_from_slice(&seq.to_be_bytes());
                let entry = Waiter {
                    id: waiter.clone(),
                    owner: owner.clone(),
                    by: by.as_str().to_owned(),
                    ttl_ms: *ttl_ms,
                    queued_at: self.now,
                    deadline: deadline.millis(),
                };
                let value = serde_json::to_vec(&entry)
                    .map_err(|e| EngineError::Internal(format!("lock waiter: {e}")))?;
                self.writes.push(SideWrite {
                    table: SideTable::LockWaiters,
                    key: stored_key.clone(),
                    value: Some(Bytes::from(value)),
                });
                self.waiters.push((stored_key, entry));
                Ok(LockOutcome::Queued(self.waiting()))
            }
            LockAction::Renew { token, ttl_ms } => {
                if let Some(ttl) = ttl_ms {
                    check_ttl(*ttl)?;
                }
                let Some(holder) = self.live_holder().filter(|h| h.token == *token).cloned() else {
                    return Err(self.locked("this token does not hold the lock (its lease ran out, it was broken or released, or another holder has it)"));
                };
                let ttl = ttl_ms.unwrap_or(holder.ttl_ms);
                self.writes.push(SideWrite {
                    table: SideTable::LockExpiries,
                    key: expiry_key(holder.expires_at, &self.lock_key),
                    value: None,
                });
                let renewed = Holder {
                    expires_at: self.now.saturating_add(ttl),
                    ttl_ms: ttl,
                    ..holder
                };
                self.writes.push(SideWrite {
                    table: SideTable::LockExpiries,
                    key: expiry_key(renewed.expires_at, &self.lock_key),
                    value: Some(Bytes::new()),
                });
                self.events
                    .push(LockEvent::of("lock.renewed", &self.key, &renewed, self.now));
                let view = LockView::of(&self.key, &renewed, self.waiting(), true);
                self.record.holder = Some(renewed);
                Ok(LockOutcome::Renewed(view))
            }
            LockAction::Release { token } => {
                if self.live_holder().is_none_or(|h| h.token != *token) {
                    return Err(self.locked("this token does not hold the lock (its lease ran out, it was broken or released, or another holder has it)"));
                }
                self.drop_holder("lock.released");
                self.hand_off()?;
                Ok(LockOutcome::Released)
            }
            LockAction::Break => {
                let Some(holder) = self.live_holder().cloned() else {
                    return Err(EngineError::NotFound {
                        detail: format!("{} is not locked", self.key),
                        tombstone: None,
                    });
                };
                let view = LockView::of(&self.key, &holder, self.waiting(), false);
                self.drop_holder("lock.broken");
                self.hand_off()?;
                Ok(LockOutcome::Broken(view))
            }
            LockAction::Leave { waiter } => {
                if let Some(place) = self.waiters.iter().position(|(_, w)| w.id == *waiter) {
                    let (stored_key, _) = self.waiters.remove(place);
                    self.writes.push(SideWrite {
                        table: SideTable::LockWaiters,
                        key: stored_key,
                        value: None,
                    });
                    return Ok(LockOutcome::Left);
                }
                match self
                    .live_holder()
                    .filter(|h| h.waiter.as_deref() == Some(waiter))
                {
                    Some(holder) => {
                        let holder = holder.clone();
                        Ok(LockOutcome::Granted(LockView::of(
                            &self.key,
                            &holder,
                            self.waiting(),
                            true,
                        )))
                    }
                    None => Ok(LockOutcome::Left),
                }
            }
        }
    }

    /// The live lock as others may see it (no token).
    pub fn holder_view(&self) -> Option<LockView> {
        self.live_holder()
            .map(|holder| LockView::of(&self.key, holder, self.waiting(), false))
    }

    /// The live lock with its token, if it was handed to `waiter`.
    pub fn granted_to(&self, waiter: &str) -> Option<LockView> {
        self.live_holder()
            .filter(|holder| holder.waiter.as_deref() == Some(waiter))
            .map(|holder| LockView::of(&self.key, holder, self.waiting(), true))
    }

    /// Whether a write carrying `token` (or none) may write the resource now.
    pub fn admits(&self, token: Option<&str>) -> Result<(), EngineError> {
        match (self.live_holder(), token) {
            (Some(holder), Some(token)) if holder.token == token => Ok(()),
            (Some(_), Some(_)) => Err(self.locked(
                "this Lock-Token does not hold the lock: another holder has it now",
            )),
            (Some(_), None) => Err(self.locked(
                "the resource is locked: writes must carry the holder's Lock-Token",
            )),
            (None, Some(_)) => Err(self.locked(
                "this Lock-Token's lease is gone (it ran out, was broken or was released): a client that lost its lease cannot write",
            )),
            (None, None) => Ok(()),
        }
    }
}

/// The entries of the expiry index due by `now` (in time order), each with the
/// resource it names (`None`: an unreadable entry, to be removed).
pub fn due_locks(expiry_keys: &[Vec<u8>], now: Timestamp) -> Vec<(Vec<u8>, Option<ResourceKey>)> {
    let mut due = Vec::new();
    for key in expiry_keys {
        let Some((at, lock_key)) = read_lock_expiry(key) else {
            due.push((key.clone(), None));
            continue;
        };
        if at > now {
            break;
        }
        due.push((key.clone(), resource_of(&lock_key)));
    }
    due
}

/// The removal of an expiry index entry that no lease matches any more (so an
/// expiry pass never finds it due again).
pub fn stale_expiry(index_key: Vec<u8>) -> SideWrite {
    SideWrite {
        table: SideTable::LockExpiries,
        key: index_key,
        value: None,
    }
}

/// When the next lease runs out, from the expiry index's first key.
pub fn next_lock_expiry(first_key: Option<&[u8]>) -> Option<Timestamp> {
    first_key.and_then(read_lock_expiry).map(|(at, _)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ResourceKey {
        ResourceKey::parse("accounts", "a1").unwrap_or_else(|_| unreachable!())
    }

    /// A store of side records in memory, applying each step's writes.
    #[derive(Default)]
    struct Side(std::collections::BTreeMap<(u8, Vec<u8>), Bytes>);

    impl Side {
        fn run(
            &mut self,
            action: LockAction,
            by: &str,
            now: u64,
        ) -> Result<LockOutcome, EngineError> {
            let stored = self
                .0
                .get(&(SideTable::Locks.code(), lock_key(&key())))
                .cloned();
            let waiters: Vec<(Vec<u8>, Bytes)> = self
                .0
                .iter()
                .filter(|((t, _), _)| *t == SideTable::LockWaiters.code())
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            let mut state = LockState::load(
                &key(),
                stored.as_deref(),
                &waiters,
                Timestamp::from_millis(now),
            )?;
            let outcome = state.apply(&action, &Principal::named(by));
            let (writes, _) = state.finish()?;
            for write in writes {
                let slot = (write.table.code(), write.key);
                match write.value {
                    Some(value) => {
                        self.0.insert(slot, value);
                    }
                    None => {
                        self.0.remove(&slot);
                    }
                }
            }
            outcome
        }

        fn expiries(&self) -> usize {
            self.0
                .keys()
                .filter(|(t, _)| *t == SideTable::LockExpiries.code())
                .count()
        }
    }

    fn acquire(ttl: u64, wait: Option<(&str, u64)>) -> LockAction {
        LockAction::Acquire {
            ttl_ms: ttl,
            owner: "o".into(),
            waiting: wait.map(|(id, deadline)| (id.to_owned(), Timestamp::from_millis(deadline))),
        }
    }

    fn granted(outcome: Result<LockOutcome, EngineError>) -> LockView {
        match outcome {
            Ok(LockOutcome::Granted(view)) => view,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn a_free_lock_is_granted_and_a_held_one_refused_with_the_holder() {
        let mut side = Side::default();
        let first = granted(side.run(acquire(5_000, None), "alice", 1_000));
        assert_eq!(first.fence, 1);
        assert!(first.token.is_some());
        match side.run(acquire(5_000, None), "bob", 2_000) {
            Err(EngineError::Locked {
                holder: Some(holder),
                retry_after_secs,
                ..
            }) => {
                assert_eq!(holder.by, "alice");
                assert_eq!(retry_after_secs, Some(4));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(side.expiries(), 1);
    }

    #[test]
    fn fences_grow_across_every_grant_and_expiry_frees_the_lock() {
        let mut side = Side::default();
        let first = granted(side.run(acquire(1_000, None), "a", 0));
        // The lease ran out: the next acquirer gets it, with a higher fence.
        let second = granted(side.run(acquire(1_000, None), "b", 1_000));
        assert!(second.fence > first.fence);
        let token = second.token.clone().unwrap_or_default();
        side.run(LockAction::Release { token }, "b", 1_500)
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
        let third = granted(side.run(acquire(1_000, None), "c", 1_600));
        assert_eq!(third.fence, 3);
        assert_eq!(side.expiries(), 1, "one live lease, one index entry");
    }

    #[test]
    fn waiters_get_the_lock_in_order_when_it_is_released() {
        let mut side = Side::default();
        let holder = granted(side.run(acquire(10_000, None), "a", 0));
        assert_eq!(
            side.run(acquire(10_000, Some(("w1", 60_000))), "b", 10),
            Ok(LockOutcome::Queued(1))
        );
        assert_eq!(
            side.run(acquire(10_000, Some(("w2", 60_000))), "c", 20),
            Ok(LockOutcome::Queued(2))
        );
        let token = holder.token.unwrap_or_default();
        assert_eq!(
            side.run(LockAction::Release { token }, "a", 30),
            Ok(LockOutcome::Released)
        );
        // w1 holds it now: leaving tells it so, with its token.
        let handed = granted(side.run(
            LockAction::Leave {
                waiter: "w1".into(),
            },
            "b",
            40,
        ));
        assert_eq!((handed.by.as_str(), handed.fence), ("b", 2));
        // Expiry of w1's lease hands it to w2.
        side.run(acquire(10_000, None), "z", 10_031).err();
        let w2 = granted(side.run(
            LockAction::Leave {
                waiter: "w2".into(),
            },
            "c",
            10_040,
        ));
        assert_eq!((w2.by.as_str(), w2.fence), ("c", 3));
    }

    #[test]
    fn writes_need_the_live_token_and_a_lost_lease_never_writes() {
        let mut side = Side::default();
        let view = granted(side.run(acquire(1_000, None), "a", 0));
        let token = view.token.unwrap_or_default();
        let state = |now| {
            let stored = side
                .0
                .get(&(SideTable::Locks.code(), lock_key(&key())))
                .cloned();
            LockState::load(&key(), stored.as_deref(), &[], Timestamp::from_millis(now))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(state(10).admits(Some(&token)).is_ok());
        assert!(state(10).admits(None).is_err());
        assert!(
            state(10)
                .admits(Some("0123456789abcdef0123456789abcdef"))
                .is_err()
        );
        // Its lease ran out: the old token is refused although nobody holds it.
        assert!(matches!(
            state(1_000).admits(Some(&token)),
            Err(EngineError::Locked { holder: None, .. })
        ));
        assert!(state(1_000).admits(None).is_ok());
    }

    #[test]
    fn the_queue_is_bounded_and_leaving_it_is_clean() {
        let mut side = Side::default();
        granted(side.run(acquire(60_000, None), "a", 0));
        for n in 0..MAX_WAITERS {
            let id = format!("w{n}");
            assert!(matches!(
                side.run(acquire(1_000, Some((&id, 50_000))), "b", 1),
                Ok(LockOutcome::Queued(_))
            ));
        }
        assert_eq!(
            side.run(acquire(1_000, Some(("late", 50_000))), "b", 2),
            Err(EngineError::LockQueueFull { limit: MAX_WAITERS })
        );
        assert_eq!(
            side.run(
                LockAction::Leave {
                    waiter: "w0".into()
                },
                "b",
                3
            ),
            Ok(LockOutcome::Left)
        );
        assert!(matches!(
            side.run(acquire(1_000, Some(("late", 50_000))), "b", 4),
            Ok(LockOutcome::Queued(64))
        ));
    }

    #[test]
    fn renewing_or_releasing_with_a_wrong_token_is_refused_and_break_hands_on() {
        let mut side = Side::default();
        let view = granted(side.run(acquire(2_000, None), "a", 0));
        let wrong = "0123456789abcdef0123456789abcdef".to_owned();
        assert!(
            side.run(
                LockAction::Renew {
                    token: wrong.clone(),
                    ttl_ms: None
                },
                "b",
                10
            )
            .is_err()
        );
        assert!(
            side.run(LockAction::Release { token: wrong }, "b", 10)
                .is_err()
        );
        let token = view.token.unwrap_or_default();
        match side.run(
            LockAction::Renew {
                token,
                ttl_ms: Some(5_000),
            },
            "a",
            1_000,
        ) {
            Ok(LockOutcome::Renewed(renewed)) => assert_eq!(renewed.expires_at.millis(), 6_000),
            other => panic!("{other:?}"),
        }
        assert_eq!(side.expiries(), 1);
        side.run(acquire(1_000, Some(("w", 60_000))), "c", 1_100)
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            side.run(LockAction::Break, "admin", 1_200),
            Ok(LockOutcome::Broken(_))
        ));
        let handed = granted(side.run(LockAction::Leave { waiter: "w".into() }, "c", 1_300));
        assert_eq!(handed.fence, 2);
        assert_eq!(
            side.run(LockAction::Break, "admin", 5_000),
            Err(EngineError::NotFound {
                detail: "accounts/a1 is not locked".into(),
                tombstone: None
            })
        );
    }

    #[test]
    fn due_leases_are_read_in_time_order() {
        let a = expiry_key(100, &lock_key(&key()));
        let b = expiry_key(
            300,
            &lock_key(&ResourceKey::parse("x", "y").unwrap_or_else(|_| unreachable!())),
        );
        assert_eq!(
            due_locks(&[a.clone(), b.clone()], Timestamp::from_millis(200)),
            vec![(a.clone(), Some(key()))]
        );
        // An entry that cannot be read is due at once, to be removed.
        assert_eq!(
            due_locks(&[vec![1, 2]], Timestamp::from_millis(0)),
            vec![(vec![1, 2], None)]
        );
        assert_eq!(
            next_lock_expiry(Some(&a)),
            Some(Timestamp::from_millis(100))
        );
        assert!(check_lock_token("zz").is_err());
        assert!(
            check_ttl(999).is_err()
                && check_ttl(MAX_TTL_MS + 1).is_err()
                && check_ttl(1_000).is_ok()
        );
    }
}
