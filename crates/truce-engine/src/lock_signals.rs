//! Wake-ups for lock waiters, by group of locks.
//!
//! A request waiting in a lock's queue looks at the lock again each time it is
//! woken. Woken on every lock change in the store, every waiter of every lock
//! would read its lock on each change of any other. So locks fall into
//! [`LOCK_GROUPS`] groups by a hash of their key, each commit says which groups
//! it changed ([`LockGroups`], a bit set small enough to travel in a PostgreSQL
//! notification), and a waiter wakes only when a lock of its own group changed.
//! A wake-up carries no state: the waiter reads the lock as committed, so a
//! spurious one costs a read and a lost one is impossible as long as a backend
//! that cannot tell which groups changed wakes them all ([`LockGroups::ALL`]).

use tokio::sync::watch;

use crate::locks::lock_key;
use crate::name::ResourceKey;

/// How many groups locks fall into (one bit each in [`LockGroups`]).
pub const LOCK_GROUPS: usize = 64;

/// A set of lock groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockGroups(u64);

impl LockGroups {
    /// Every group: for a change whose locks are not known one by one.
    pub const ALL: Self = Self(u64::MAX);

    /// The group of `key`'s lock alone. The hash (FNV-1a over the lock's key) is
    /// fixed, so every node of a store puts a lock in the same group.
    pub fn of(key: &ResourceKey) -> Self {
        Self(1 << group_of(key))
    }

    /// Adds the groups of `other`.
    pub fn add(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// Whether no group is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as bits (bit `n`: group `n`), for sending it to other nodes.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// The set sent as [`LockGroups::bits`].
    pub fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    fn contains(self, group: usize) -> bool {
        self.0 & (1 << group) != 0
    }
}

/// `key`'s lock group: FNV-1a over the lock's key, modulo [`LOCK_GROUPS`].
fn group_of(key: &ResourceKey) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in lock_key(key) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % LOCK_GROUPS as u64) as usize
}

/// How a backend tells of lock changes (after each commit that made some, on
/// any node): one wake-up channel per lock group for the waiters, and one for
/// any change at all, for the expiry keeper. Each channel holds a count that
/// moves; only its moving means anything.
#[derive(Debug)]
pub struct LockSignals {
    any: watch::Sender<u64>,
    groups: Vec<watch::Sender<u64>>,
}

impl Default for LockSignals {
    fn default() -> Self {
        Self {
            any: watch::channel(0).0,
            groups: (0..LOCK_GROUPS).map(|_| watch::channel(0).0).collect(),
        }
    }
}

impl LockSignals {
    /// A receiver that changes whenever a lock of `key`'s group changes.
    pub fn subscribe(&self, key: &ResourceKey) -> watch::Receiver<u64> {
        self.groups[group_of(key)].subscribe()
    }

    /// A receiver that changes whenever any lock changes.
    pub fn subscribe_any(&self) -> watch::Receiver<u64> {
        self.any.subscribe()
    }

    /// Tells of a commit that changed the locks of `groups` (nothing when empty).
    pub fn signal(&self, groups: LockGroups) {
        if groups.is_empty() {
            return;
        }
        let bump = |n: &mut u64| *n = n.wrapping_add(1);
        self.any.send_modify(bump);
        for (group, sender) in self.groups.iter().enumerate() {
            if groups.contains(group) {
                sender.send_modify(bump);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> ResourceKey {
        ResourceKey::parse("jobs", id).expect("key")
    }

    /// Two keys whose locks fall into different groups.
    fn apart() -> (ResourceKey, ResourceKey) {
        let first = key("k0");
        let other = (1..200)
            .map(|n| key(&format!("k{n}")))
            .find(|k| LockGroups::of(k) != LockGroups::of(&first))
            .expect("keys spread over the groups");
        (first, other)
    }

    #[test]
    fn a_waiter_wakes_for_its_own_group_and_not_for_another() {
        let signals = LockSignals::default();
        let (mine, other) = apart();
        let mut waiting = signals.subscribe(&mine);
        let mut keeper = signals.subscribe_any();
        signals.signal(LockGroups::default());
        assert!(!keeper.has_changed().expect("open"));
        signals.signal(LockGroups::of(&other));
        assert!(!waiting.has_changed().expect("open"));
        assert!(
            keeper.has_changed().expect("open"),
            "any change wakes the keeper"
        );
        keeper.borrow_and_update();
        signals.signal(LockGroups::of(&mine));
        assert!(waiting.has_changed().expect("open"));
        waiting.borrow_and_update();
        signals.signal(LockGroups::ALL);
        assert!(waiting.has_changed().expect("open"));
    }

    #[test]
    fn groups_are_fixed_and_spread() {
        assert_eq!(LockGroups::of(&key("a")), LockGroups::of(&key("a")));
        let mut seen = LockGroups::default();
        for n in 0..1000 {
            let groups = LockGroups::of(&key(&format!("id{n}")));
            assert_eq!(groups.bits().count_ones(), 1);
            seen.add(groups);
        }
        assert_eq!(seen, LockGroups::ALL, "1000 keys reach every group");
        assert_eq!(LockGroups::from_bits(seen.bits()), seen);
        assert!(LockGroups::default().is_empty());
    }
}
