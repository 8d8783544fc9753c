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
