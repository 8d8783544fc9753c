//! How a node learns of every node's commits: `LISTEN truce` as a wake-up, and a
//! catch-up read of the commit row (the newest revision, event position and lock counter) on
//! every wake-up, after every reconnect, and once a second regardless. A lost
//! notification therefore delays a stream by at most a second and loses nothing:
//! readers page the change feed and the event log from the last position they
//! saw, and those are gap-free.
//!
//! Lock waiters are woken by group (`truce_engine::LockGroups`): a commit that
//! changed locks says which groups and the lock counter it moved to in its
//! notification (`revision events lock-groups lock-counter`), and those groups
//! are woken as it arrives. The counter tells when one was missed: if the
//! commit row's counter is past every notification seen in order (a lost
//! notification, or commits made while this node was disconnected), every
//! group is woken, so no waiter sleeps through the change it waits for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use truce_engine::{LockGroups, LockSignals};

use crate::sql::unsigned;

/// The longest a commit of another node can go unseen when its notification is lost.
const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// Follows the commit row for as long as the task lives (it is aborted when the
/// store closes). `lock_counter` is the row's lock counter when the node opened
/// the store: lock changes after it are told through `lock_waits`.
pub(crate) async fn follow(
    config: tokio_postgres::Config,
    revisions: watch::Sender<u64>,
    events: watch::Sender<u64>,
    lock_counter: u64,
    lock_waits: Arc<LockSignals>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut seen = LockCounters::new(lock_counter);
    loop {
        // Bounded: a database cut off by a partition never answers the handshake.
        let connected = tokio::time::timeout(CATCH_UP_EVERY * 5, config.connect(NoTls)).await;
        match connected {
            Ok(Ok((client, mut connection))) => {
                backoff = Duration::from_millis(100);
                let (wake, mut woken) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(note)) => {
                                let _ = wake.send(lock_change(note.payload()));
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                if client.batch_execute("LISTEN truce").await.is_ok() {
                    while let Some(counter) = catch_up(&client, &revisions, &events).await {
                        if seen.missed_any(counter) {
                            lock_waits.signal(LockGroups::ALL);
                        }
                        tokio::select! {
                            woke = woken.recv() => match woke {
                                None => break,
                                Some(Some((groups, counter))) => {
                                    lock_waits.signal(groups);
                                    seen.saw(counter);
                                }
                                Some(None) => {}
                            },
                            () = tokio::time::sleep(CATCH_UP_EVERY) => {}
                        }
                    }
                }
                driver.abort();
            }
            Ok(Err(error)) => tracing::debug!(%error, "change listener cannot connect yet"),
            Err(_) => tracing::debug!("change listener: the database did not answer in time"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reads the commit row and moves the watches forward; returns its lock
/// counter, or `None` when the connection is gone.
async fn catch_up(
    client: &Client,
    revisions: &watch::Sender<u64>,
    events: &watch::Sender<u64>,
) -> Option<u64> {
    let read = client.query_one("SELECT revision, events, locks FROM truce_commit", &[]);
    match tokio::time::timeout(CATCH_UP_EVERY * 5, read).await {
        Ok(Ok(row)) => {
            let (revision, event): (i64, i64) = (row.get(0), row.get(1));
            let counter = unsigned(row.get::<_, i64>(2));
            raise(revisions, unsigned(revision));
            raise(events, unsigned(event));
            Some(counter)
        }
        _ => None,
    }
}

/// The lock groups and lock counter a notification names, when it is from a
/// commit that changed locks.
fn lock_change(payload: &str) -> Option<(LockGroups, u64)> {
    let mut fields = payload.split(' ').skip(2);
    let groups = LockGroups::from_bits(fields.next()?.parse().ok()?);
    let counter = fields.next()?.parse().ok()?;
    (!groups.is_empty()).then_some((groups, counter))
}

/// Which lock counters this node has seen a notification for: every one up to
/// `through`, and some after it.
struct LockCounters {
    through: u64,
    ahead: BTreeSet<u64>,
}

impl LockCounters {
    /// Counting from `through`, the counter when the node opened the store.
    fn new(through: u64) -> Self {
        Self {
            through,
            ahead: BTreeSet::new(),
        }
    }

    /// A notification for the commit that moved the counter to `counter`.
    fn saw(&mut self, counter: u64) {
        if counter > self.through {
            self.ahead.insert(counter);
        }
        while self.ahead.remove(&(self.through + 1)) {
            self.through += 1;
        }
    }

    /// Whether the commit row's counter, `counter`, is past what notifications
    /// told (so some lock change was not heard of); counts it as heard from now.
    fn missed_any(&mut self, counter: u64) -> bool {
        if counter <= self.through {
            return false;
        }
        self.through = counter;
        self.ahead.retain(|c| *c > counter);
        true
    }
}

fn raise(watch: &watch::Sender<u64>, to: u64) {
    watch.send_if_modified(|seen| {
        if to > *seen {
            *seen = to;
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_name_lock_groups_only_when_locks_changed() {
        assert_eq!(
            lock_change("12 3 5 40"),
            Some((LockGroups::from_bits(5), 40))
        );
        assert_eq!(lock_change("12 3 0 40"), None);
        // A node that says nothing of locks (an older one): the counter decides.
        assert_eq!(lock_change("12 3"), None);
        assert_eq!(lock_change("garbage"), None);
    }

    #[test]
    fn a_counter_past_the_notifications_seen_in_order_is_a_miss() {
        let mut seen = LockCounters::new(10);
        assert!(!seen.missed_any(10));
        seen.saw(12);
        // 11 not heard of yet: the row at 12 is a miss (11 may be lost).
        assert!(seen.missed_any(12));
        seen.saw(11);
        assert!(!seen.missed_any(12));
        seen.saw(13);
        seen.saw(14);
        assert!(!seen.missed_any(14));
        // Heard out of order, all heard: no miss.
        seen.saw(16);
        seen.saw(15);
        assert!(!seen.missed_any(16));
        // A notification from before the last catch-up changes nothing.
        seen.saw(3);
        assert!(!seen.missed_any(16));
        assert!(seen.missed_any(17));
    }
}
