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
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in lock_key(key) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self(1 << (hash % LOCK_GROUPS as u64))
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

/// One wake-up channel per lock group, shared by a backend (which signals
/// after each commit that changed locks) and the waiters (which subscribe to
/// their lock's group).
#[derive(Debug)]
pub struct LockSignals {
    groups: Vec<watch::Sender<u64>>,
}

impl Default for LockSignals {
    fn default() -> Self {
        Self {
            groups: (0..LOCK_GROUPS).map(|_| watch::channel(0).0).collect(),
        }
    }
}

impl LockSignals {
    /// A receiver that changes whenever a lock of `key`'s group changes.
    pub fn subscribe(&self, key: &ResourceKey) -> watch::Receiver<u64> {
        let group = LockGroups::of(key).0.trailing_zeros() as usize;
        self.groups[group % LOCK_GROUPS].subscribe()
    }

    /// Wakes the waiters of `groups`.
    pub fn signal(&self, groups: LockGroups) {
        for (group, sender) in self.groups.iter().enumerate() {
            if groups.contains(group) {
                sender.send_modify(|n| *n = n.wrapping_add(1));
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
        signals.signal(LockGroups::of(&other));
        assert!(!waiting.has_changed().expect("open"));
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
