//! Batch transactions (SPEC §5), as a plain HTTP client sees them: all or
//! nothing whichever op fails, one revision for all the writes, the failed op
//! named with its reason and kept as a conflict record, locks, limits, and a
//! bank whose total never moves under concurrent transfers.

use reqwest::{Client, Response};
use serde_json::{Value, json};

use crate::common::{TestServer, header, problem};

/// `POST {base}/v1/_txn` with these ops.
pub(crate) async fn txn(client: &Client, base: &str, ops: Value) -> Response {
    client
        .post(format!("{base}/v1/_txn"))
        .json(&json!({ "ops": ops }))
        .send()
        .await
        .expect("txn")
}

/// The version of every document of `ids` in `collection` (0: absent).
async fn versions(server: &TestServer, collection: &str, ids: &[String]) -> Vec<u64> {
    let mut found = Vec::new();
    for id in ids {
        let response = server.get(&format!("/v1/{collection}/{id}"), &[]).await;
        found.push(match response.status().as_u16() {
            200 => header(&response, "truce-version").parse().expect("version"),
            _ => 0,
        });
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_applies_every_op_at_one_revision() {
    let server = TestServer::start().await;
    let client = &server.client;
    server.create("/v1/stock/apples", &json!({"n": 10})).await;
    let pears = server.create("/v1/stock/pears", &json!({"n": 5})).await;
    let applied = txn(
        client,
        &server.base,
        json!([
            {"op": "check", "collection": "stock", "id": "pears", "if_match": pears},
            {"op": "patch", "collection": "stock", "id": "apples", "merge_patch": {"n": 9}},
            {"op": "create", "collection": "orders", "id": "o1", "doc": {"apples": 1}},
            {"op": "put", "collection": "audit", "id": "a1", "doc": {"what": "order o1"}, "if_version": 0},
            {"op": "delete", "collection": "stock", "id": "gone-soon"},
        ]),
    )
    .await;
    // The delete of a resource that does not exist fails the transaction.
    let body = problem(applied, 409, "transaction-conflict").await;
    assert_eq!(
        (body["failed_op"].as_u64(), &body["reason"]),
        (Some(4), &json!("not-found"))
    );
    assert_eq!(body["op"], "delete");
    assert_eq!(
        versions(&server, "orders", &["o1".into()]).await,
        [0],
        "nothing of a failed transaction is applied"
    );

    let before: Value = server.get_json("/v1/_changes?since=0").await;
    let applied = txn(
        client,
        &server.base,
        json!([
            {"op": "check", "collection": "stock", "id": "pears", "if_match": pears},
            {"op": "patch", "collection": "stock", "id": "apples", "merge_patch": {"n": 9}},
            {"op": "create", "collection": "orders", "id": "o1", "doc": {"apples": 1}},
            {"op": "put", "collection": "audit", "id": "a1", "doc": {"what": "order o1"}, "if_version": 0},
            {"op": "check", "collection": "stock", "id": "never", "if_version": 0},
        ]),
    )
    .await;
    assert_eq!(applied.status(), 200);
    let body: Value = applied.json().await.expect("answer");
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        outcomes,
        ["checked", "updated", "created", "created", "checked"]
    );
    assert_eq!(body["results"][0]["etag"], pears.as_str());
    assert_eq!(body["results"][4]["version"], 0);
    let revision = body["revision"].as_u64().expect("revision");
    assert_eq!(
        revision,
        before["last_revision"].as_u64().expect("last") + 1
    );
    // The change feed shows the three writes together, at that one revision.
    let after: Value = server
        .get_json(&format!("/v1/_changes?since={}", revision - 1))
        .await;
    let changes = after["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c["revision"] == revision), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_op_in_any_position_applies_nothing_and_is_recorded() {
    let server = TestServer::start().await;
    let client = &server.client;
    let ids: Vec<String> = (0..5).map(|i| format!("d{i}")).collect();
    for id in &ids {
        server
            .create(&format!("/v1/docs/{id}"), &json!({"v": 1}))
            .await;
    }
    for failing in 0..ids.len() {
        let ops: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                // Every document is at version 1; the failing op says 7.
                let version = if i == failing { 7 } else { 1 };
                json!({"op": "put", "collection": "docs", "id": id, "doc": {"v": 2}, "if_version": version})
            })
            .collect();
        let refused = txn(client, &server.base, Value::Array(ops)).await;
        let body = problem(refused, 409, "transaction-conflict").await;
        assert_eq!(body["failed_op"].as_u64(), Some(failing as u64), "{body}");
        assert_eq!(body["reason"], "version-conflict");
        assert_eq!(body["current_version"], 1);
        assert_eq!(body["resource"]["id"], ids[failing].as_str());
        let cid = body["conflict_id"].as_str().expect("a record");
        let record = server.get_json(&format!("/v1/_conflicts/{cid}")).await;
        assert_eq!(record["type"], "transaction-conflict");
        assert_eq!(
            record["transaction"]["failed_op"].as_u64(),
            Some(failing as u64)
        );
        assert_eq!(record["transaction"]["reason"], "version-conflict");
        assert_eq!(record["attempted"]["body"], json!({"v": 2}));
        assert_eq!(versions(&server, "docs", &ids).await, [1, 1, 1, 1, 1]);
    }
    // A stale If-Match fails the transaction even under a merge policy.
    let settings = client
        .put(server.url("/v1/_collections/docs"))
        .json(&json!({"conflict_policy": "merge"}))
        .send()
        .await
        .expect("settings");
    assert_eq!(settings.status(), 200);
    let stale = txn(
        client,
        &server.base,
        json!([{"op": "patch", "collection": "docs", "id": "d0", "if_match": "\"0-stale\"", "merge_patch": {"w": 1}}]),
    )
    .await;
    let body = problem(stale, 409, "transaction-conflict").await;
    assert_eq!(body["reason"], "precondition-failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactions_get_their_problems() {
    let server = TestServer::start().await;
    let client = &server.client;
    let base = &server.base;
    let op = |i: usize| json!({"op": "put", "collection": "many", "id": format!("m{i}"), "doc": {"i": i}});
    let too_many: Vec<Value> = (0..1001).map(op).collect();
    let body = problem(
        txn(client, base, Value::Array(too_many)).await,
        422,
        "validation-failed",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap_or("").contains("1000") || body.to_string().contains("1000"),
        "{body}"
    );
    problem(txn(client, base, json!([])).await, 422, "validation-failed").await;
    let twice = json!([op(1), {"op": "delete", "collection": "many", "id": "m1"}]);
    let body = problem(txn(client, base, twice).await, 400, "malformed-request").await;
    assert!(
        body["detail"].as_str().unwrap_or("").contains("once"),
        "{body}"
    );
    for bad in [
        json!([{"op": "upsert", "collection": "c", "id": "x"}]),
        json!([{"op": "put", "collection": "c", "id": "x"}]),
        json!([{"op": "put", "collection": "c", "id": "x", "doc": {}, "extra": 1}]),
        json!([{"op": "patch", "collection": "c", "id": "x", "doc": {}}]),
        json!([{"op": "check", "collection": "c", "id": "x", "if_match": "no-quotes"}]),
        json!([{"op": "check", "collection": "c", "id": "x", "lock_token": "nope"}]),
        json!([{"op": "check", "collection": "_bad", "id": "x"}]),
    ] {
        problem(txn(client, base, bad).await, 400, "malformed-request").await;
    }
    let not_object = txn(
        client,
        base,
        json!([{"op": "put", "collection": "c", "id": "x", "doc": [1]}]),
    )
    .await;
    let body = problem(not_object, 400, "malformed-request").await;
    assert!(
        body["detail"].as_str().unwrap_or("").contains("/ops/0/doc"),
        "{body}"
    );
    // The body may be larger than a document's limit (1 MiB) up to 8 MiB.
    let big: Vec<Value> = (0..300)
        .map(|i| json!({"op": "put", "collection": "big", "id": format!("b{i}"), "doc": {"pad": "x".repeat(8_000)}}))
        .collect();
    let accepted = txn(client, base, Value::Array(big)).await;
    assert_eq!(accepted.status(), 200);
    // Beyond 8 MiB: refused from the declared length, before the body is read
    // (sent by hand: a client still writing 8 MiB would see the connection
    // close under it instead of the answer).
    let over = truce_engine::MAX_TXN_BYTES + 1;
    let head = format!(
        "POST /v1/_txn HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {over}\r\n\r\n"
    );
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(&format!("\"limit\":{}", truce_engine::MAX_TXN_BYTES)),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_resource_needs_its_token_in_the_op() {
    let server = TestServer::start().await;
    let client = &server.client;
    server.create("/v1/jobs/j", &json!({"n": 0})).await;
    let (token, _) = crate::locks::token_of(
        crate::locks::acquire(client, &server.url("/v1/jobs/j"), json!({})).await,
    )
    .await;
    let ops = |token: Option<&str>| {
        let mut op = json!({"op": "put", "collection": "jobs", "id": "j", "doc": {"n": 1}});
        if let Some(token) = token {
            op["lock_token"] = json!(token);
        }
        json!([{"op": "put", "collection": "jobs", "id": "other", "doc": {}}, op])
    };
    let body = problem(
        txn(client, &server.base, ops(None)).await,
        409,
        "transaction-conflict",
    )
    .await;
    assert_eq!(
        (body["failed_op"].as_u64(), &body["reason"]),
        (Some(1), &json!("locked"))
    );
    assert!(body["holder"]["fence"].is_u64(), "{body}");
    assert_eq!(
        txn(client, &server.base, ops(Some(&token))).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_transaction_is_applied_once() {
    let server = TestServer::start().await;
    let send = || {
        server
            .client
            .post(server.url("/v1/_txn"))
            .header("idempotency-key", "\"t-1\"")
            .json(&json!({"ops": [{"op": "create", "collection": "once", "id": "x", "doc": {}}]}))
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.expect("body");
    let again = send().await.expect("again");
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(again.json::<Value>().await.expect("body"), first);
}

/// Opens `n` accounts of 100 in `collection` (ids `a0`, `a1`, ...).
pub(crate) async fn open_accounts(client: &Client, base: &str, collection: &str, n: usize) {
    for i in 0..n {
        let created = client
            .put(format!("{base}/v1/{collection}/a{i}"))
            .json(&json!({"balance": 100}))
            .send()
            .await
            .expect("open");
        assert_eq!(created.status(), 201);
    }
}

/// Checks that the `n` accounts of `collection` still hold 100 each on
/// average and none is negative.
pub(crate) async fn assert_whole(client: &Client, base: &str, collection: &str, n: usize) {
    let mut total = 0;
    for i in 0..n {
        let account: Value = client
            .get(format!("{base}/v1/{collection}/a{i}"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("account");
        // Balances are unsigned: a negative one would not even parse.
        total += account["balance"].as_u64().expect("a balance of 0 or more");
    }
    assert_eq!(total, 100 * n as u64, "money was made or lost");
}

/// 50 accounts of 100; `clients` tasks each make `each` transfers of a random
/// amount between two random accounts, as one transaction with `if_match` on
/// both, retried on a conflict and skipped when the payer cannot afford it.
/// `bases` are the nodes the clients take in turn.
pub(crate) async fn bank(client: &Client, bases: &[String], clients: usize, each: usize) {
    const ACCOUNTS: usize = 50;
    open_accounts(client, &bases[0], "bank", ACCOUNTS).await;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base) = (client.clone(), bases[c % bases.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            for _ in 0..each {
                let from = rng.usize(..ACCOUNTS);
                let to = (from + 1 + rng.usize(..ACCOUNTS - 1)) % ACCOUNTS;
                let amount = rng.u64(1..=30);
                for _attempt in 0..200 {
                    let read = |id: usize| {
                        let (client, base) = (client.clone(), base.clone());
                        async move {
                            let response = client
                                .get(format!("{base}/v1/bank/a{id}"))
                                .send()
                                .await
                                .expect("read");
                            let etag = header(&response, "etag");
                            let body: Value = response.json().await.expect("account");
                            (etag, body["balance"].as_u64().expect("balance"))
                        }
                    };
                    let ((from_tag, from_balance), (to_tag, to_balance)) =
                        (read(from).await, read(to).await);
                    if from_balance < amount {
                        break;
                    }
                    let ops = json!([
                        {"op": "put", "collection": "bank", "id": format!("a{from}"), "if_match": from_tag, "doc": {"balance": from_balance - amount}},
                        {"op": "put", "collection": "bank", "id": format!("a{to}"), "if_match": to_tag, "doc": {"balance": to_balance + amount}},
                    ]);
                    match txn(&client, &base, ops).await.status().as_u16() {
                        200 => break,
                        409 => continue,
                        other => panic!("a transfer answered {other}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    assert_whole(client, &bases[0], "bank", ACCOUNTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_bank_whole() {
    let server = TestServer::start().await;
    bank(&server.client, std::slice::from_ref(&server.base), 16, 15).await;
}

/// The documents of transaction `tag` that exist (each creates `OPS` of them).
async fn present(client: &Client, base: &str, tag: &str) -> usize {
    let page: Value =
        crate::common::fetch_json(client, format!("{base}/v1/atomic?prefix={tag}-&limit=1000"))
            .await;
    page["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_cut_by_kill_9_is_all_there_or_not_at_all() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const OPS: usize = 20;
    const WRITERS: usize = 4;
    let (_tmp, data) = crate::common::data_dir();
    let client = crate::common::client();
    // Every transaction ever sent, and whether it was acknowledged.
    let sent = Arc::new(tokio::sync::Mutex::new(Vec::<(String, bool)>::new()));
    // The first run never checkpoints: its transactions live only in the
    // write-ahead log when the process dies.
    for (cycle, args) in [["--checkpoint-interval", "1h"].as_slice(), &[]]
        .iter()
        .enumerate()
    {
        let server = crate::common::ServerProcess::start(&data, args).await;
        server.ready(&client).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, base) = (client.clone(), server.base.clone());
            let (stop, acked, sent) = (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&sent));
            writers.push(tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let tag = format!("c{cycle}w{w}s{seq}");
                    let ops: Vec<Value> = (0..OPS)
                        .map(|i| json!({"op": "create", "collection": "atomic", "id": format!("{tag}-{i}"), "doc": {"pad": "x".repeat(4_000)}}))
                        .collect();
                    let index = {
                        let mut sent = sent.lock().await;
                        sent.push((tag.clone(), false));
                        sent.len() - 1
                    };
                    let Ok(answer) = client
                        .post(format!("{base}/v1/_txn"))
                        .json(&json!({ "ops": ops }))
                        .send()
                        .await
                    else {
                        return;
                    };
                    if answer.status() == 200 {
                        sent.lock().await[index].1 = true;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for _ in 0..2000 {
            if acked.load(Ordering::Relaxed) >= 40 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(acked.load(Ordering::Relaxed) >= 40, "load did not start");
        server.kill().await;
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer");
        }
    }
    let server = crate::common::ServerProcess::start(&data, &[]).await;
    server.ready(&client).await;
    let (mut whole, mut absent) = (0, 0);
    for (tag, acknowledged) in sent.lock().await.iter() {
        match present(&client, &server.base, tag).await {
            OPS => whole += 1,
            0 if !acknowledged => absent += 1,
            n => panic!("transaction {tag} (acknowledged: {acknowledged}) left {n} of {OPS}"),
        }
    }
    assert!(whole >= 80, "{whole} whole, {absent} absent");
    server.kill().await;
}
