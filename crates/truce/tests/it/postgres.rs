//! The PostgreSQL backend (SPEC §13): two nodes on one throw-away database,
//! spoken to over HTTP like any client would.

use std::sync::Arc;

use reqwest::Client;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use truce_postgres::{PostgresConfig, PostgresStore};
use truce_server::{RunningServer, ServerConfig};

use crate::common::{client, etag, fetch_json, next_event, problem, sse_events};
use crate::pg_cluster::{as_superuser, database_of, fresh_database};

/// How long a stream may take to show a commit of the other node.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A node serving `url`.
pub(crate) async fn node(url: &str) -> (String, RunningServer) {
    node_with(PostgresConfig::new(url)).await
}

/// A node with these settings.
pub(crate) async fn node_with(config: PostgresConfig) -> (String, RunningServer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    truce_server::install_metrics();
    let store = PostgresStore::open(config)
        .await
        .expect("open the PostgreSQL store");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        compaction_interval: None,
        ..ServerConfig::default()
    };
    let running = truce_server::serve(listener, Arc::new(store), config).expect("serve");
    (format!("http://{}", running.local_addr()), running)
}

pub(crate) async fn put(
    client: &Client,
    url: String,
    body: Value,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    request.send().await.expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_database() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();

    // Written on A, read on B: the same version and ETag.
    let created = put(
        &client,
        format!("{a}/v1/notes/n1"),
        json!({"text": "hi"}),
        None,
    )
    .await;
    assert_eq!(created.status(), 201);
    let tag = etag(&created);
    let read = client.get(format!("{b}/v1/notes/n1")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(etag(&read), tag);
    assert_eq!(read.json::<Value>().await.unwrap(), json!({"text": "hi"}));

    // A conditional write on B moves it; the old tag on A is then stale: 412, and
    // the conflict record it left is readable on B.
    let updated = put(
        &client,
        format!("{b}/v1/notes/n1"),
        json!({"text": "b"}),
        Some(&tag),
    )
    .await;
    assert_eq!(updated.status(), 200);
    let stale = put(
        &client,
        format!("{a}/v1/notes/n1"),
        json!({"text": "a"}),
        Some(&tag),
    )
    .await;
    assert_eq!(stale.status(), 412);
    let problem: Value = stale.json().await.unwrap();
    let cid = problem["conflict_id"]
        .as_str()
        .expect("a conflict id")
        .to_owned();
    let record: Value = fetch_json(&client, format!("{b}/v1/_conflicts/{cid}")).await;
    assert_eq!(record["status"], "open", "{record}");
    assert_eq!(
        record["attempted"]["body"],
        json!({"text": "a"}),
        "{record}"
    );

    // The change feed is the same gap-free sequence on both nodes.
    let feed = |base: String| {
        let client = client.clone();
        async move {
            let page: Value = fetch_json(&client, format!("{base}/v1/_changes?since=0")).await;
            page
        }
    };
    let (on_a, on_b) = (feed(a.clone()).await, feed(b.clone()).await);
    assert_eq!(on_a, on_b);
    let revisions: Vec<u64> = on_a["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["revision"].as_u64().expect("revision"))
        .collect();
    assert_eq!(revisions, vec![1, 2], "{on_a}");
}

/// Increments from 16 clients alternating between two nodes, each a read and a
/// conditional write retried on 412: the counter ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_across_nodes() {
    const CLIENTS: usize = 16;
    const EACH: usize = 10;
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let created = put(&client, format!("{a}/v1/counters/c"), json!({"n": 0}), None).await;
    assert_eq!(created.status(), 201);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let base = if i % 2 == 0 { a.clone() } else { b.clone() };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..EACH {
                loop {
                    let read = client
                        .get(format!("{base}/v1/counters/c"))
                        .send()
                        .await
                        .unwrap();
                    let tag = etag(&read);
                    let n = read.json::<Value>().await.unwrap()["n"].as_u64().unwrap();
                    let write = put(
                        &client,
                        format!("{base}/v1/counters/c"),
                        json!({"n": n + 1}),
                        Some(&tag),
                    )
                    .await;
                    match write.status().as_u16() {
                        200 => break,
                        412 => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    let last: Value = fetch_json(&client, format!("{b}/v1/counters/c")).await;
    assert_eq!(last["n"], (CLIENTS * EACH) as u64);
    assert!(refused > 0, "16 clients on one document never collided");
}

/// The database refusing the node's connections (its sessions ended, new ones
/// refused): writes and /readyz answer 503 `database-unreachable` with
/// Retry-After, in bounded time and never 500; once it accepts connections again
/// the node carries on by itself, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_503_until_it_is_back() {
    let url = fresh_database();
    let name = database_of(&url).to_owned();
    let (a, _a) = node(&url).await;
    let client = client();
    let before = put(&client, format!("{a}/v1/notes/kept"), json!({"v": 1}), None).await;
    assert_eq!(before.status(), 201);

    as_superuser(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    as_superuser(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let started = std::time::Instant::now();
    let refused = put(
        &client,
        format!("{a}/v1/notes/during"),
        json!({"v": 2}),
        None,
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "no bounded answer"
    );
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["reason"], "database-unreachable", "{problem}");
    let ready = client.get(format!("{a}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    as_superuser(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    // The node reconnects on its own: a client retrying (bounded) gets through.
    let mut status = 0;
    for _ in 0..50 {
        let retried = put(
            &client,
            format!("{a}/v1/notes/after"),
            json!({"v": 3}),
            None,
        )
        .await;
        status = retried.status().as_u16();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "only 503s while the database comes back");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 201);
    let kept = client
        .get(format!("{a}/v1/notes/kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200);
    assert_eq!(kept.json::<Value>().await.unwrap(), json!({"v": 1}));
    let during = client
        .get(format!("{a}/v1/notes/during"))
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 404, "a refused write was applied");
}

/// Streams on one node see the other node's commits: the change feed in
/// revision order, and the conflict stream with the refusals made there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_one_node_see_the_other_nodes_commits() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let open = |path: String| {
        client
            .get(path)
            .header("accept", "text/event-stream")
            .send()
    };
    let mut changes = sse_events(open(format!("{a}/v1/_changes?since=0")).await.unwrap());
    let mut conflicts = sse_events(open(format!("{a}/v1/_conflicts/stream")).await.unwrap());

    for n in 1..=3u64 {
        let created = put(&client, format!("{b}/v1/s/d{n}"), json!({"n": n}), None).await;
        assert_eq!(created.status(), 201);
    }
    for n in 1..=3u64 {
        let change = next_event(&mut changes, WAIT).await;
        assert_eq!(change.event, "change");
        assert_eq!(change.id.as_deref(), Some(n.to_string().as_str()));
    }
    let stale = put(
        &client,
        format!("{b}/v1/s/d1"),
        json!({"n": 0}),
        Some("\"1-0\""),
    )
    .await;
    assert_eq!(stale.status(), 412);
    let cid = stale.json::<Value>().await.unwrap()["conflict_id"]
        .as_str()
        .expect("conflict id")
        .to_owned();
    let detected = next_event(&mut conflicts, WAIT).await;
    assert_eq!(detected.event, "conflict.detected");
    let event: Value = serde_json::from_str(&detected.data).unwrap();
    assert_eq!(event["conflict_id"], cid.as_str(), "{event}");
}

/// Webhook deliveries with two nodes on one database: each event is posted once,
/// by whichever node claimed its outbox row, and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_is_made_by_one_node() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const EVENTS: usize = 6;
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let posts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&posts);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let subscribed: Value = client
        .post(format!("{a}/v1/_subscriptions"))
        .header("content-type", "application/json")
        .body(json!({"url": hook, "secret": "k"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = subscribed["id"]
        .as_str()
        .expect("subscription id")
        .to_owned();
    // Refusals on both nodes: one event each.
    for n in 0..EVENTS {
        let base = if n % 2 == 0 { &a } else { &b };
        let stale = put(
            &client,
            format!("{base}/v1/w/d{n}"),
            json!({}),
            Some("\"9-0\""),
        )
        .await;
        assert_eq!(stale.status(), 412);
    }
    let log = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let log: Value =
                fetch_json(&client, format!("{b}/v1/_subscriptions/{sid}/deliveries")).await;
            let items = log["items"].as_array().map_or(0, Vec::len);
            if items >= EVENTS && log["pending"] == 0 {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every event delivered in time");
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), EVENTS, "one attempt per event: {log}");
    assert!(items.iter().all(|i| i["outcome"] == "delivered"), "{log}");
    assert_eq!(posts.load(Ordering::SeqCst), EVENTS);
}

/// One operation on the register of [`reads_and_conditional_writes_across_nodes_are_linearizable`],
/// with when it was sent and when its answer had arrived.
#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    started: std::time::Instant,
    ended: std::time::Instant,
}

#[derive(Debug, Clone)]
enum OpKind {
    /// A read that saw `seq` with this ETag.
    Read { seq: u64, etag: String },
    /// A write conditional on the ETag of `seq - 1`, accepted as `seq`.
    Write { seq: u64, etag: String },
    /// A write conditional on the ETag of `based_on`, refused with 412 while
    /// the current ETag was `current`.
    Refused { based_on: u64, current: String },
}

/// Checks a history of a single document whose body counts accepted writes
/// (`seq`): each accepted conditional write made a distinct `seq` (no lost
/// update), every read and refusal names a state some write made, a refusal's
/// state is not the one it was conditional on, and the order the states imply
/// agrees with real time: an operation that ended before another began never
/// sees a later state. A write takes effect at (`seq`, 0), a read or refusal
/// at (`seq`, 1); with one `seq` per write these orderings are all that a
/// linearization must satisfy. Returns what is wrong.
fn linearizability_violation(history: &[Op], initial_etag: &str) -> Option<String> {
    let mut made = std::collections::HashMap::from([(initial_etag.to_owned(), 0u64)]);
    let mut by_seq = std::collections::HashMap::from([(0u64, initial_etag.to_owned())]);
    for op in history {
        if let OpKind::Write { seq, etag } = &op.kind {
            if by_seq.insert(*seq, etag.clone()).is_some() {
                return Some(format!("two writes were accepted as {seq}: a lost update"));
            }
            made.insert(etag.clone(), *seq);
        }
    }
    let mut keyed = Vec::with_capacity(history.len());
    for op in history {
        let key = match &op.kind {
            OpKind::Write { seq, .. } => (*seq, 0),
            OpKind::Read { seq, etag } => {
                if by_seq.get(seq) != Some(etag) {
                    return Some(format!("a read saw {seq} with ETag {etag} no write made"));
                }
                (*seq, 1)
            }
            OpKind::Refused { based_on, current } => {
                let Some(seq) = made.get(current) else {
                    return Some(format!("a refusal named ETag {current} no write made"));
                };
                if seq == based_on {
                    return Some(format!("a write conditional on {seq} was refused at {seq}"));
                }
                (*seq, 1)
            }
        };
        keyed.push((key, op));
    }
    for (a_key, a) in &keyed {
        for (b_key, b) in &keyed {
            if a.ended < b.started && a_key > b_key {
                return Some(format!(
                    "{a:?} ended before {b:?} began, yet saw a later state"
                ));
            }
        }
    }
    None
}

/// The checker itself finds what it is there to find.
#[test]
fn the_linearizability_check_catches_a_stale_read() {
    let t = std::time::Instant::now();
    let at = |ms: u64| t + std::time::Duration::from_millis(ms);
    let write = Op {
        kind: OpKind::Write {
            seq: 1,
            etag: "\"1\"".into(),
        },
        started: at(0),
        ended: at(10),
    };
    let stale = Op {
        kind: OpKind::Read {
            seq: 0,
            etag: "\"0\"".into(),
        },
        started: at(20),
        ended: at(30),
    };
    let concurrent = Op {
        started: at(5),
        ..stale.clone()
    };
    assert!(linearizability_violation(&[write.clone(), concurrent], "\"0\"").is_none());
    assert!(linearizability_violation(&[write.clone(), stale], "\"0\"").is_some());
    let lost = Op {
        kind: OpKind::Write {
            seq: 1,
            etag: "\"1b\"".into(),
        },
        started: at(0),
        ended: at(10),
    };
    assert!(linearizability_violation(&[write, lost], "\"0\"").is_some());
}

/// Reads and conditional writes of one document from 8 clients, each switching
/// node at every step, are linearizable (checked by
/// [`linearizability_violation`] on what the clients saw: bodies, ETags,
/// status codes and times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_conditional_writes_across_nodes_are_linearizable() {
    const CLIENTS: usize = 8;
    const STEPS: usize = 40;
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let created = put(&client, format!("{a}/v1/reg/r"), json!({"seq": 0}), None).await;
    assert_eq!(created.status(), 201);
    let initial = etag(&created);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, nodes) = (client.clone(), [a.clone(), b.clone()]);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for step in 0..STEPS {
                let base = &nodes[(c + step) % 2];
                let started = std::time::Instant::now();
                let read = client.get(format!("{base}/v1/reg/r")).send().await.unwrap();
                assert_eq!(read.status(), 200);
                let tag = etag(&read);
                let seq = read.json::<Value>().await.unwrap()["seq"]
                    .as_u64()
                    .expect("seq");
                seen.push(Op {
                    kind: OpKind::Read {
                        seq,
                        etag: tag.clone(),
                    },
                    started,
                    ended: std::time::Instant::now(),
                });
                if (c + step) % 3 == 0 {
                    continue;
                }
                let base = &nodes[(c + step + 1) % 2];
                let started = std::time::Instant::now();
                let body = json!({"seq": seq + 1, "by": c});
                let write = put(&client, format!("{base}/v1/reg/r"), body, Some(&tag)).await;
                let kind = match write.status().as_u16() {
                    200 => OpKind::Write {
                        seq: seq + 1,
                        etag: etag(&write),
                    },
                    412 => OpKind::Refused {
                        based_on: seq,
                        current: etag(&write),
                    },
                    other => panic!("unexpected {other}"),
                };
                let _ = write.bytes().await;
                seen.push(Op {
                    kind,
                    started,
                    ended: std::time::Instant::now(),
                });
            }
            seen
        }));
    }
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.unwrap());
    }
    let writes = history
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Write { .. }))
        .count();
    let refusals = history
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Refused { .. }))
        .count();
    assert!(
        writes > 0 && refusals > 0,
        "{writes} writes, {refusals} refusals"
    );
    if let Some(violation) = linearizability_violation(&history, &initial) {
        panic!("not linearizable: {violation}");
    }
}

/// Writes of one document queued behind a batch that waits for the commit row
/// (held by another session meanwhile) are planned together in the next batch,
/// one transaction: each sees the one before it (the batch sends its writes
/// together, so this is read-your-writes through what it has not sent yet):
/// every merge patch lands, versions are consecutive, the change feed has one
/// entry per version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_one_batch_see_each_other() {
    const PATCHES: usize = 24;
    let url = fresh_database();
    let (a, _a) = node(&url).await;
    let client = client();
    let created = put(
        &client,
        format!("{a}/v1/notes/n"),
        json!({"first": 0}),
        None,
    )
    .await;
    assert_eq!(created.status(), 201);
    let holder = crate::pg_cluster::hold_commit_row(database_of(&url), 1.5);
    let mut patches = Vec::new();
    for i in 0..PATCHES {
        let (client, a) = (client.clone(), a.clone());
        patches.push(tokio::spawn(async move {
            let path = format!("{a}/v1/notes/n");
            let request = if i % 5 == 4 {
                // A JSON Patch whose test sees the earlier members of the batch.
                client
                    .patch(path)
                    .header("content-type", "application/json-patch+json")
                    .body(
                        json!([{"op": "test", "path": "/first", "value": 0},
                                 {"op": "add", "path": format!("/f{i}"), "value": i}])
                        .to_string(),
                    )
            } else {
                client
                    .patch(path)
                    .header("content-type", "application/merge-patch+json")
                    .body(json!({ format!("f{i}"): i }).to_string())
            };
            request.send().await.unwrap().status().as_u16()
        }));
    }
    for patch in patches {
        assert_eq!(patch.await.unwrap(), 200);
    }
    holder.wait();
    let doc: Value = fetch_json(&client, format!("{a}/v1/notes/n")).await;
    for i in 0..PATCHES {
        assert_eq!(doc[format!("f{i}")], i, "patch {i} lost: {doc}");
    }
    let feed: Value = fetch_json(&client, format!("{a}/v1/_changes?since=0")).await;
    let versions: Vec<u64> = feed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["version"].as_u64().expect("version"))
        .collect();
    assert_eq!(
        versions,
        (1..=PATCHES as u64 + 1).collect::<Vec<_>>(),
        "{feed}"
    );
}

/// Two resolutions of one conflict record (taking theirs: no new version, so
/// only the record's state can refuse the second) planned in the same batch,
/// queued behind a batch that waits for the commit row: the first closes it,
/// the second sees it closed (409 state-conflict), even though the batch sent
/// the first one's writes to the database in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_resolved_twice_in_one_batch_is_closed_once() {
    let url = fresh_database();
    let (a, _a) = node(&url).await;
    let client = client();
    let created = put(&client, format!("{a}/v1/notes/n"), json!({"v": 1}), None).await;
    let stale = etag(&created);
    let moved = put(
        &client,
        format!("{a}/v1/notes/n"),
        json!({"v": 2}),
        Some(&stale),
    )
    .await;
    assert_eq!(moved.status(), 200);
    let refused = put(
        &client,
        format!("{a}/v1/notes/n"),
        json!({"v": 3}),
        Some(&stale),
    )
    .await;
    assert_eq!(refused.status(), 412);
    let cid = refused.json::<Value>().await.unwrap()["conflict_id"]
        .as_str()
        .expect("a conflict id")
        .to_owned();

    let holder = crate::pg_cluster::hold_commit_row(database_of(&url), 1.5);
    // A first batch that waits for the row, so both resolutions queue for the next.
    let first = tokio::spawn({
        let (client, url) = (client.clone(), format!("{a}/v1/notes/other"));
        async move { put(&client, url, json!({}), None).await.status() }
    });
    let holder = tokio::task::spawn_blocking(move || {
        holder.wait_for_a_writer();
        holder
    })
    .await
    .unwrap();
    let resolutions: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{a}/v1/_conflicts/{cid}/resolve"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(json!({"take": "theirs"}).to_string())
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for resolution in resolutions {
        answers.push(resolution.await.unwrap());
    }
    holder.wait();
    assert_eq!(first.await.unwrap(), 201);
    answers.sort_by_key(reqwest::Response::status);
    let mut answers = answers.into_iter();
    let closed = answers.next().expect("two answers");
    assert_eq!(closed.status(), 200);
    problem(answers.next().expect("two answers"), 409, "state-conflict").await;
    let record = fetch_json(&client, format!("{a}/v1/_conflicts/{cid}")).await;
    assert_eq!(record["status"], "resolved", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_nodes() {
    use crate::idempotency::{answer, count_documents, duplicates_until_answered, send_json};
    use reqwest::Method;
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();

    // Duplicates split over both nodes, each retried until answered: one ran,
    // every other got its answer replayed, one order exists.
    let urls = [format!("{a}/v1/orders"), format!("{b}/v1/orders")];
    let (fresh, locations) = duplicates_until_answered(&client, &urls, 16).await;
    assert_eq!(fresh, 1, "exactly one request ran");
    assert_eq!(locations.len(), 1, "{locations:?}");
    assert_eq!(count_documents(&client, &urls[1]).await, 1);

    // A retry on the other node replays; another request under the key is 422.
    let body = json!({"v": 1});
    let (doc_a, doc_b) = (format!("{a}/v1/notes/n1"), format!("{b}/v1/notes/n1"));
    let on_a = send_json(&client, Method::PUT, &doc_a, "\"k\"", &body);
    let first = answer(on_a.await).await;
    assert_eq!(first.status, 201);
    let on_b = send_json(&client, Method::PUT, &doc_b, "\"k\"", &body);
    let again = answer(on_b.await).await;
    assert!(again.replayed);
    assert_eq!((again.headers, again.body), (first.headers, first.body));
    let other = json!({"v": 2});
    let reused = send_json(&client, Method::PUT, &doc_b, "\"k\"", &other);
    problem(reused.await, 422, "idempotency-key-reused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shared_and_revoked_at_once_on_every_node() {
    use crate::auth::make_key;
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let admin = make_key(&client, &a, None, "root", &["admin"]).await;
    let writer = make_key(&client, &a, Some(&admin), "carol", &["write"]).await;

    // Made on A, accepted on B (which verifies and remembers it), recorded as `by`.
    let written = client
        .put(format!("{b}/v1/notes/n1"))
        .bearer_auth(&writer)
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    let history = client
        .get(format!("{a}/v1/notes/n1/versions"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    let history: Value = history.json().await.unwrap();
    assert_eq!(history["items"][0]["by"], "carol");
    // Keys exist now: B refuses requests without one.
    let anonymous = client.get(format!("{b}/v1/notes/n1")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Revoked on A: B refuses it on the very next request.
    let id = crate::auth::key_id(&client, &b, &admin, "carol").await;
    let revoked = client
        .delete(format!("{a}/v1/_keys/{id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let refused = client
        .get(format!("{b}/v1/notes/n1"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A write too, although B admits writes with the key it remembers: the
    // commit reads the key again, in the write's transaction.
    let refused = client
        .put(format!("{b}/v1/notes/n1"))
        .bearer_auth(&writer)
        .json(&json!({"v": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let kept = client
        .get(format!("{a}/v1/notes/n1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(kept.json::<Value>().await.unwrap(), json!({"v": 1}));

    // No key's secret is anywhere in the database.
    let dumped = crate::pg_cluster::dump(database_of(&url));
    assert!(
        dumped.windows(8).any(|w| w == b"truce_si"),
        "the dump has the tables"
    );
    for key in [&admin, &writer] {
        let secret = crate::auth::secret_of(key).as_bytes();
        assert!(
            !dumped.windows(secret.len()).any(|w| w == secret),
            "a secret is stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_acknowledged_before_a_node_is_killed_replays_on_its_restart() {
    use crate::common::ServerProcess;
    use crate::idempotency::{answer, count_documents, send_json};
    use reqwest::Method;
    let url = fresh_database();
    let client = client();
    let node = ServerProcess::start_on_database(&url).await;
    node.ready(&client).await;
    let orders = format!("{}/v1/orders", node.base);
    let body = json!({"n": 1});
    let first = answer(send_json(&client, Method::POST, &orders, "\"kill\"", &body).await).await;
    assert_eq!(first.status, 201);
    node.kill().await;

    let node = ServerProcess::start_on_database(&url).await;
    node.ready(&client).await;
    let orders = format!("{}/v1/orders", node.base);
    let again = answer(send_json(&client, Method::POST, &orders, "\"kill\"", &body).await).await;
    assert!(again.replayed, "the retry after the kill replays");
    assert_eq!((again.headers, again.body), (first.headers, first.body));
    assert_eq!(count_documents(&client, &orders).await, 1);
    node.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_key_is_made_on_the_database_with_no_node_running() {
    let url = fresh_database();
    let made = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args([
            "keys", "create", "--name", "ops", "--role", "admin", "--json",
        ])
        .args(["--database-url", &url])
        .output()
        .await
        .expect("run truce keys create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: Value = serde_json::from_slice(&made.stdout).expect("JSON");
    let admin = made["key"].as_str().expect("the key");
    let (a, _a) = node(&url).await;
    let client = client();
    let anonymous = client.get(format!("{a}/v1/_keys")).send().await.unwrap();
    assert_eq!(
        anonymous.status(),
        401,
        "the key exists: no anonymous access"
    );
    let listed = client
        .get(format!("{a}/v1/_keys"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["items"][0]["name"], "ops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_split_over_two_nodes_keep_the_bank_whole() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    crate::txn::bank(&client(), &[a, b], 16, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_transfers_split_over_two_nodes_keep_the_bank_whole() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    crate::txn_interactive::interactive_bank(&client, &[a.clone(), b.clone()], 16, 6).await;
    // A transaction lives on the node that began it: the other node says so.
    let (txn, _) = crate::txn_interactive::begin(&client, &a).await;
    let elsewhere = crate::txn_interactive::get_in(&client, &b, &txn, "/v1/ibank/a0").await;
    let body = problem(elsewhere, 409, "transaction-conflict").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("node that began it"),
        "{body}"
    );
}
