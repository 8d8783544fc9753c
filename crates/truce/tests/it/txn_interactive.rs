//! Interactive transactions (SPEC §5), as a plain HTTP client sees them:
//! snapshot reads, own writes, serializable commits (write skew and phantoms
//! refused), rollback, idle expiry, and a bank that stays whole.

use reqwest::{Client, Response};
use serde_json::{Value, json};

use crate::common::{TestServer, header, problem};

/// `POST /v1/_txn/begin`: the transaction's id and snapshot.
pub(crate) async fn begin(client: &Client, base: &str) -> (String, u64) {
    let begun = client
        .post(format!("{base}/v1/_txn/begin"))
        .send()
        .await
        .expect("begin");
    assert_eq!(begun.status(), 201);
    let body: Value = begun.json().await.expect("begun");
    (
        body["txn"].as_str().expect("txn").to_owned(),
        body["snapshot_revision"].as_u64().expect("snapshot"),
    )
}

/// A GET in the transaction.
pub(crate) async fn get_in(client: &Client, base: &str, txn: &str, path: &str) -> Response {
    client
        .get(format!("{base}{path}"))
        .header("truce-txn", txn)
        .send()
        .await
        .expect("get")
}

/// A PUT in the transaction.
pub(crate) async fn put_in(
    client: &Client,
    base: &str,
    txn: &str,
    path: &str,
    doc: Value,
) -> Response {
    client
        .put(format!("{base}{path}"))
        .header("truce-txn", txn)
        .json(&doc)
        .send()
        .await
        .expect("put")
}

/// `POST /v1/_txn/{txn}/commit`.
pub(crate) async fn commit(client: &Client, base: &str, txn: &str) -> Response {
    client
        .post(format!("{base}/v1/_txn/{txn}/commit"))
        .send()
        .await
        .expect("commit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_the_snapshot_and_the_transactions_own_writes() {
    let server = TestServer::start().await;
    let (client, base) = (&server.client, server.base.as_str());
    server.create("/v1/notes/a", &json!({"v": 1})).await;
    let (txn, _) = begin(client, base).await;
    // Someone else writes after the snapshot: the transaction still reads v1.
    server.put("/v1/notes/a", &json!({"v": 2}), &[]).await;
    server.create("/v1/notes/b", &json!({"v": 1})).await;
    let read = get_in(client, base, &txn, "/v1/notes/a").await;
    assert_eq!(read.status(), 200);
    assert_eq!(header(&read, "truce-version"), "1");
    assert_eq!(read.json::<Value>().await.expect("doc"), json!({"v": 1}));
    let head = client
        .head(format!("{base}/v1/notes/a"))
        .header("truce-txn", &txn)
        .send()
        .await
        .expect("head");
    assert_eq!(
        header(&head, "truce-version"),
        "1",
        "HEAD reads the snapshot too"
    );
    problem(
        get_in(client, base, &txn, "/v1/notes/b").await,
        404,
        "not-found",
    )
    .await;
    // Its own writes are visible to it only, and listed with the snapshot.
    let buffered = put_in(client, base, &txn, "/v1/notes/c", json!({"mine": true})).await;
    assert_eq!(buffered.status(), 202);
    let patched = client
        .patch(format!("{base}/v1/notes/c"))
        .header("truce-txn", &txn)
        .header("content-type", "application/merge-patch+json")
        .header("if-match", header(&buffered, "etag"))
        .body(r#"{"more": 1}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 202);
    let own = get_in(client, base, &txn, "/v1/notes/c").await;
    assert_eq!(
        own.json::<Value>().await.expect("doc"),
        json!({"mine": true, "more": 1})
    );
    problem(server.get("/v1/notes/c", &[]).await, 404, "not-found").await;
    let listed: Value = get_in(client, base, &txn, "/v1/notes")
        .await
        .json()
        .await
        .expect("page");
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["a", "c"], "{listed}");
    let rolled = client
        .post(format!("{base}/v1/_txn/{txn}/rollback"))
        .send()
        .await
        .expect("rollback");
    assert_eq!(rolled.status(), 204);
    problem(server.get("/v1/notes/c", &[]).await, 404, "not-found").await;
}

/// One listing page in transaction `txn`: its ids and its `next` cursor.
async fn list_in(
    client: &Client,
    base: &str,
    txn: &str,
    query: &str,
) -> (Vec<String>, Option<String>) {
    let response = get_in(client, base, txn, &format!("/v1/notes?{query}")).await;
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.expect("page");
    let ids = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    (ids, page["next"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_in_a_transaction_pages_and_filters_what_it_sees() {
    let server = TestServer::start().await;
    let (client, base) = (&server.client, server.base.as_str());
    server.create("/v1/notes/a", &json!({"v": 1})).await;
    server.create("/v1/notes/b2", &json!({"v": 1})).await;
    let (txn, _) = begin(client, base).await;
    // After the snapshot: someone else deletes `a` and creates `b1`.
    let deleted = client
        .delete(format!("{base}/v1/notes/a"))
        .send()
        .await
        .expect("delete");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    server.create("/v1/notes/b1", &json!({"v": 1})).await;
    // The transaction's own writes, in this collection and another.
    for path in ["/v1/notes/b3", "/v1/other/b4"] {
        let buffered = put_in(client, base, &txn, path, json!({"mine": true})).await;
        assert_eq!(buffered.status(), 202);
    }

    // A prefix: the snapshot's `b2` and the buffered `b3`; not `b1` (after the
    // snapshot), not `b4` (another collection), not `a` (another prefix).
    let (ids, next) = list_in(client, base, &txn, "prefix=b").await;
    assert_eq!(ids, ["b2", "b3"]);
    assert_eq!(next, None);

    // One item per page: `a` as of the snapshot, then `b2`, then `b3`.
    let mut seen = Vec::new();
    let mut query = "limit=1".to_owned();
    loop {
        let (ids, next) = list_in(client, base, &txn, &query).await;
        assert!(ids.len() <= 1, "{ids:?}");
        seen.extend(ids);
        let Some(cursor) = next else { break };
        assert!(seen.len() < 10, "paging does not end: {seen:?}");
        query = format!("limit=1&cursor={cursor}");
    }
    assert_eq!(seen, ["a", "b2", "b3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_applies_every_write_at_one_revision() {
    let server = TestServer::start().await;
    let (client, base) = (&server.client, server.base.as_str());
    server.create("/v1/acct/a", &json!({"n": 10})).await;
    server.create("/v1/acct/gone", &json!({"n": 0})).await;
    let (txn, _) = begin(client, base).await;
    let a: Value = get_in(client, base, &txn, "/v1/acct/a")
        .await
        .json()
        .await
        .expect("a");
    let n = a["n"].as_u64().expect("n");
    assert_eq!(
        put_in(client, base, &txn, "/v1/acct/a", json!({"n": n - 3}))
            .await
            .status(),
        202
    );
    assert_eq!(
        put_in(client, base, &txn, "/v1/acct/b", json!({"n": 3}))
            .await
            .status(),
        202
    );
    let deleted = client
        .delete(format!("{base}/v1/acct/gone"))
        .header("truce-txn", &txn)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 202);
    let committed = commit(client, base, &txn).await;
    assert_eq!(committed.status(), 200);
    let body: Value = committed.json().await.expect("answer");
    let revision = body["revision"].as_u64().expect("revision");
    let feed = server
        .get_json(&format!("/v1/_changes?since={}", revision - 1))
        .await;
    let changes = feed["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 3, "{feed}");
    assert!(changes.iter().all(|c| c["revision"] == revision));
    assert_eq!(server.get_json("/v1/acct/a").await["n"], 7);
    problem(server.get("/v1/acct/gone", &[]).await, 404, "not-found").await;
    // The transaction ended with its commit.
    let again = commit(client, base, &txn).await;
    let body = problem(again, 409, "transaction-conflict").await;
    assert_eq!(body["reason"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_skew_lets_exactly_one_commit() {
    let server = TestServer::start().await;
    let (client, base) = (&server.client, server.base.as_str());
    // Two doctors on call; each may go off call only if the other stays.
    server
        .create("/v1/oncall/alice", &json!({"on": true}))
        .await;
    server.create("/v1/oncall/bob", &json!({"on": true})).await;
    let (t1, _) = begin(client, base).await;
    let (t2, _) = begin(client, base).await;
    for txn in [&t1, &t2] {
        for who in ["alice", "bob"] {
            let read = get_in(client, base, txn, &format!("/v1/oncall/{who}")).await;
            assert_eq!(
                read.json::<Value>().await.expect("doc"),
                json!({"on": true})
            );
        }
    }
    put_in(client, base, &t1, "/v1/oncall/alice", json!({"on": false})).await;
    put_in(client, base, &t2, "/v1/oncall/bob", json!({"on": false})).await;
    assert_eq!(commit(client, base, &t1).await.status(), 200);
    let refused = problem(commit(client, base, &t2).await, 409, "transaction-conflict").await;
    assert_eq!(refused["reason"], "changed-since-snapshot");
    assert_eq!(
        refused["resources"],
        json!([{"collection": "oncall", "id": "alice"}])
    );
    assert_eq!(
        server.get_json("/v1/oncall/bob").await["on"],
        true,
        "nothing of t2 applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_range_that_changes_fails_the_commit() {
    let server = TestServer::start().await;
    let (client, base) = (&server.client, server.base.as_str());
    server
        .create("/v1/rooms/r1", &json!({"booked": false}))
        .await;
    let (txn, _) = begin(client, base).await;
    let page: Value = client
        .get(format!("{base}/v1/rooms?prefix=r"))
        .header("truce-txn", &txn)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("page");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    put_in(client, base, &txn, "/v1/summary/rooms", json!({"count": 1})).await;
    // A phantom: a room created in the listed range after the snapshot.
    server
        .create("/v1/rooms/r2", &json!({"booked": false}))
        .await;
    // A document outside the range changes nothing.
    server.create("/v1/other/x", &json!({})).await;
    let refused = problem(
        commit(client, base, &txn).await,
        409,
        "transaction-conflict",
    )
    .await;
    assert_eq!(
        refused["ranges"],
        json!([{"collection": "rooms", "prefix": "r"}])
    );
    problem(server.get("/v1/summary/rooms", &[]).await, 404, "not-found").await;
    // Without the phantom, the same transaction commits.
    let (txn, _) = begin(client, base).await;
    get_in(client, base, &txn, "/v1/rooms?prefix=r").await;
    put_in(client, base, &txn, "/v1/summary/rooms", json!({"count": 2})).await;
    server.create("/v1/other/y", &json!({})).await;
    assert_eq!(commit(client, base, &txn).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactions_expire_and_rollback_ends_one() {
    let server = TestServer::start_with(|config, _| {
        config.txn_idle = std::time::Duration::from_millis(300);
    })
    .await;
    let (client, base) = (&server.client, server.base.as_str());
    let (txn, _) = begin(client, base).await;
    put_in(client, base, &txn, "/v1/idle/a", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let late = problem(
        get_in(client, base, &txn, "/v1/idle/a").await,
        409,
        "transaction-conflict",
    )
    .await;
    assert_eq!(late["reason"], "expired");
    let (txn, _) = begin(client, base).await;
    put_in(client, base, &txn, "/v1/idle/b", json!({})).await;
    let rolled = client
        .post(format!("{base}/v1/_txn/{txn}/rollback"))
        .send()
        .await
        .expect("rollback");
    assert_eq!(rolled.status(), 204);
    problem(
        commit(client, base, &txn).await,
        409,
        "transaction-conflict",
    )
    .await;
    problem(server.get("/v1/idle/b", &[]).await, 404, "not-found").await;
    problem(
        get_in(client, base, "not-a-txn!", "/v1/idle/a").await,
        400,
        "malformed-request",
    )
    .await;
}

/// Transfers between 50 accounts of 100 by `clients` tasks, each transfer an
/// interactive transaction (read both, write both, commit), retried when the
/// commit finds a change; `bases` are nodes the clients take in turn.
pub(crate) async fn interactive_bank(
    client: &Client,
    bases: &[String],
    clients: usize,
    each: usize,
) {
    const ACCOUNTS: usize = 50;
    crate::txn::open_accounts(client, &bases[0], "ibank", ACCOUNTS).await;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base) = (client.clone(), bases[c % bases.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64 + 100);
            for _ in 0..each {
                let from = rng.usize(..ACCOUNTS);
                let to = (from + 1 + rng.usize(..ACCOUNTS - 1)) % ACCOUNTS;
                let amount = rng.u64(1..=30);
                for _attempt in 0..200 {
                    let (txn, _) = begin(&client, &base).await;
                    let balance = |who: usize| {
                        let (client, base, txn) = (client.clone(), base.clone(), txn.clone());
                        async move {
                            let doc: Value =
                                get_in(&client, &base, &txn, &format!("/v1/ibank/a{who}"))
                                    .await
                                    .json()
                                    .await
                                    .expect("account");
                            doc["balance"].as_u64().expect("balance")
                        }
                    };
                    let (from_balance, to_balance) = (balance(from).await, balance(to).await);
                    if from_balance < amount {
                        let _ = client
                            .post(format!("{base}/v1/_txn/{txn}/rollback"))
                            .send()
                            .await;
                        break;
                    }
                    put_in(
                        &client,
                        &base,
                        &txn,
                        &format!("/v1/ibank/a{from}"),
                        json!({"balance": from_balance - amount}),
                    )
                    .await;
                    put_in(
                        &client,
                        &base,
                        &txn,
                        &format!("/v1/ibank/a{to}"),
                        json!({"balance": to_balance + amount}),
                    )
                    .await;
                    match commit(&client, &base, &txn).await.status().as_u16() {
                        200 => break,
                        409 => continue,
                        other => panic!("a commit answered {other}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    crate::txn::assert_whole(client, &bases[0], "ibank", ACCOUNTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_interactive_transfers_keep_the_bank_whole() {
    let server = TestServer::start().await;
    interactive_bank(&server.client, std::slice::from_ref(&server.base), 16, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_retention_keeps_is_gone() {
    let server = TestServer::start().await;
    let (client, base) = (&server.client, server.base.as_str());
    let settings = client
        .put(format!("{base}/v1/_collections/short"))
        .json(&json!({"history": {"max_versions": 1}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(settings.status(), 200);
    server.create("/v1/short/a", &json!({"v": 1})).await;
    let (txn, _) = begin(client, base).await;
    // Version 1, the snapshot's, is no longer kept once version 2 exists.
    server.put("/v1/short/a", &json!({"v": 2}), &[]).await;
    let gone = get_in(client, base, &txn, "/v1/short/a").await;
    problem(gone, 410, "history-compacted").await;
}
