//! The Rust client's batch transactions against a real server.

use serde_json::{Value, json};
use truce_client::{Client, ProblemKind};

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_built_sent_and_its_failure_named() {
    let server = TestServer::start().await;
    let client = Client::new(&server.base).expect("client");
    let alice = client
        .put("accounts", "alice", &json!({"balance": 100}))
        .send()
        .await
        .expect("alice");
    let applied = client
        .txn()
        .put("accounts", "alice", &json!({"balance": 70}))
        .if_match(&alice.etag)
        .create("accounts", "bob", &json!({"balance": 30}))
        .check("accounts", "carol")
        .if_version(0)
        .send()
        .await
        .expect("applied");
    let outcomes: Vec<&str> = applied.results.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["updated", "created", "checked"]);
    assert_eq!(applied.results[0].version, 2);

    // The same ETag again is stale now: the transaction fails at op 0.
    let error = client
        .txn()
        .merge_patch("accounts", "bob", &json!({"balance": 31}))
        .put("accounts", "alice", &json!({"balance": 0}))
        .if_match(&alice.etag)
        .send()
        .await
        .expect_err("stale");
    assert_eq!(error.kind(), Some(ProblemKind::TransactionConflict));
    let failed = error
        .problem()
        .and_then(|p| p.failed_op())
        .expect("the failed op");
    assert_eq!(
        (failed.index, failed.op.as_str(), failed.reason.as_str()),
        (1, "put", "precondition-failed")
    );
    let bob = client.get::<Value>("accounts", "bob").await.expect("bob");
    assert_eq!(
        bob.value["balance"], 30,
        "nothing of the failed transaction applied"
    );
    let misuse = client.txn().if_match("\"1-x\"").send().await;
    assert!(matches!(misuse, Err(truce_client::Error::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_reruns_on_conflict_so_no_increment_is_lost() {
    let server = TestServer::start().await;
    let client = Client::new(&server.base).expect("client");
    client
        .put("counters", "c", &json!({"n": 0}))
        .send()
        .await
        .expect("counter");
    // Twelve contenders on one document: each attempt only one of them wins, so
    // a client may lose many times in a row on a loaded machine. The budget is
    // generous because what is under test is that no increment is lost, not how
    // soon a given client gets its turn (the strict client below tests giving up).
    let contender = Client::builder(&server.base)
        .retry(truce_client::RetryPolicy {
            max_attempts: 40,
            max_delay: std::time::Duration::from_millis(200),
            ..truce_client::RetryPolicy::default()
        })
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = contender.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                client
                    .transact(|tx| async move {
                        let counter = tx.get::<Value>("counters", "c").await?;
                        let n = counter.value["n"].as_u64().unwrap_or(0);
                        tx.put("counters", "c", &json!({"n": n + 1})).await?;
                        Ok(())
                    })
                    .await
                    .expect("transact");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let counter = client.get::<Value>("counters", "c").await.expect("read");
    assert_eq!(counter.value["n"], 36);

    // A failure that is not a conflict is returned at once (and rolled back).
    let missing = client
        .transact(|tx| async move {
            tx.put("counters", "side", &json!({})).await?;
            tx.get::<Value>("counters", "absent").await?;
            Ok(())
        })
        .await
        .expect_err("absent");
    assert_eq!(missing.kind(), Some(ProblemKind::NotFound));
    assert!(client.get::<Value>("counters", "side").await.is_err());

    // With one attempt allowed, a conflict gives up with a typed error.
    let strict = Client::builder(&server.base)
        .retry(truce_client::RetryPolicy {
            max_attempts: 1,
            ..truce_client::RetryPolicy::default()
        })
        .build()
        .expect("client");
    let other = client.clone();
    let gave_up = strict
        .transact(|tx| {
            let other = other.clone();
            async move {
                let counter = tx.get::<Value>("counters", "c").await?;
                // Someone else writes what was read, before the commit.
                other.put("counters", "c", &json!({"n": 0})).send().await?;
                tx.put("counters", "c", &counter.value).await?;
                Ok(())
            }
        })
        .await
        .expect_err("conflict");
    assert!(
        matches!(gave_up, truce_client::Error::GaveUp { attempts: 1, .. }),
        "{gave_up}"
    );
    assert_eq!(gave_up.kind(), Some(ProblemKind::TransactionConflict));
}
