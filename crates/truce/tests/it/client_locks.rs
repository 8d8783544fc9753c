//! The Rust client's locks against a real server: a guard that renews its
//! lease, writes under its token and releases when dropped; waiting in the
//! queue; a lost lease surfaced, never hidden.

use std::time::Duration;

use serde_json::json;
use truce_client::{Client, Error, ProblemKind};

use crate::common::TestServer;

fn client(server: &TestServer) -> Client {
    Client::new(&server.base).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_renews_its_lease_writes_under_it_and_releases_on_drop() {
    let server = TestServer::start().await;
    let (mine, theirs) = (client(&server), client(&server));
    mine.put("jobs", "a", &json!({"n": 0}))
        .send()
        .await
        .expect("create");
    let guard = mine
        .lock("jobs", "a")
        .ttl(Duration::from_secs(1))
        .owner("nightly")
        .await
        .expect("lock");
    assert_eq!(guard.fence(), 1);
    // Held for well over its TTL: only the renewals keep it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    guard.check().expect("still held");
    let refused = theirs.lock("jobs", "a").await.expect_err("held by another");
    assert_eq!(refused.kind(), Some(ProblemKind::Locked));
    let holder = theirs
        .lock_holder("jobs", "a")
        .await
        .expect("holder")
        .expect("locked");
    assert_eq!(
        (holder.fence, holder.owner.as_str(), holder.token),
        (1, "nightly", None)
    );
    let unguarded = theirs.put("jobs", "a", &json!({"n": 9})).send().await;
    assert_eq!(
        unguarded.expect_err("no token").kind(),
        Some(ProblemKind::Locked)
    );
    let written = guard
        .put(&json!({"n": 1}))
        .send()
        .await
        .expect("guarded write");
    assert_eq!(written.version, 2);

    drop(guard);
    let next = theirs
        .lock("jobs", "a")
        .wait(Duration::from_secs(10))
        .await
        .expect("released on drop");
    assert_eq!(next.fence(), 2);
    next.release().await.expect("release");
    assert_eq!(theirs.lock_holder("jobs", "a").await.expect("holder"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_the_lock_when_the_holder_releases() {
    let server = TestServer::start().await;
    let client = client(&server);
    let holder = client.lock("jobs", "b").await.expect("lock");
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .lock("jobs", "b")
                .ttl(Duration::from_secs(5))
                .wait(Duration::from_secs(60))
                .await
        })
    };
    let mut queued = false;
    for _ in 0..500 {
        let shown = client.lock_holder("jobs", "b").await.expect("holder");
        if shown.is_some_and(|info| info.waiting == 1) {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(queued, "the waiter never queued");
    let fence = holder.fence();
    holder.release().await.expect("release");
    let handed = waiter.await.expect("task").expect("granted");
    assert_eq!(handed.fence(), fence + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_reported_and_nothing_more_is_written_under_it() {
    let server = TestServer::start().await;
    let client = client(&server);
    client
        .put("jobs", "c", &json!({"n": 0}))
        .send()
        .await
        .expect("create");
    let guard = client
        .lock("jobs", "c")
        .ttl(Duration::from_secs(3))
        .await
        .expect("lock");
    client.break_lock("jobs", "c").await.expect("break");
    // The next renewal (a third of the TTL) finds the lease gone.
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("the loss is reported");
    assert!(matches!(lost, Error::LockLost { .. }), "{lost}");
    assert!(matches!(guard.check(), Err(Error::LockLost { .. })));
    let write = guard.put(&json!({"n": 1})).send().await;
    assert!(matches!(write, Err(Error::LockLost { .. })), "{write:?}");
    let current = client
        .get::<serde_json::Value>("jobs", "c")
        .await
        .expect("read");
    assert_eq!((current.version, current.value["n"].as_u64()), (1, Some(0)));
    assert!(matches!(guard.release().await, Err(Error::LockLost { .. })));
}
