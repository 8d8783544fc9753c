//! The PostgreSQL backend under faults (SPEC §10, §13): the database restarted
//! mid-load, a node killed mid-load, a node cut off from the database, and a
//! COMMIT whose answer is lost. Judged as a client would: status codes, bodies,
//! and whether every acknowledged write is there afterwards.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use truce_postgres::PostgresConfig;
use truce_server::RunningServer;

use crate::common::{client, etag, fetch_json, problem};
use crate::pg_cluster::{as_superuser_on, cluster, database_of, fresh_database};
use crate::postgres::{node, node_with, put};
use crate::tcp_proxy::Proxy;

/// The longest any request may take, whatever the fault: the node's deadline
/// (5 s, queueing included), a quarter more for settling a lost COMMIT answer
/// that failed at the last moment, and some slack.
const NO_HANG: Duration = Duration::from_secs(10);

/// Bounds every wait for something a fault should bring about.
const WAIT: Duration = Duration::from_secs(60);

/// What the writers of one node saw.
#[derive(Default)]
struct Tally {
    acknowledged: Mutex<Vec<String>>,
    refused: AtomicUsize,
}

impl Tally {
    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().expect("tally").len()
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// A writer creating fresh documents on `base` until `stop` (at most 20 000):
/// each 201 is remembered, each 503 counted; anything else, or an answer
/// slower than [`NO_HANG`], fails the test.
fn spawn_writer(
    client: &Client,
    base: &str,
    name: &str,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    let (client, base, name) = (client.clone(), base.to_owned(), name.to_owned());
    let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
    tokio::spawn(async move {
        for n in 0..20_000 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let path = format!("/v1/load/{name}-{n}");
            let started = Instant::now();
            let answer = put(&client, format!("{base}{path}"), json!({"n": n}), None).await;
            assert!(
                started.elapsed() < NO_HANG,
                "{base} hung for {:?}",
                started.elapsed()
            );
            match answer.status().as_u16() {
                201 => tally.acknowledged.lock().expect("tally").push(path),
                503 => {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!(
                    "{other} from {base}: {}",
                    answer.text().await.unwrap_or_default()
                ),
            }
        }
    })
}

/// A node on `url`'s database whose connections pass through a proxy the
/// test controls; `deadline` replaces the node's default.
async fn behind_proxy(url: &str, deadline: Option<Duration>) -> (Proxy, String, RunningServer) {
    let proxy = Proxy::start(cluster().port).await;
    let mut config = PostgresConfig::new(proxy.url(database_of(url)));
    if let Some(deadline) = deadline {
        config.deadline = deadline;
    }
    let (base, running) = node_with(config).await;
    (proxy, base, running)
}

/// Polls `done` (bounded by [`WAIT`]).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries a create on `base` until it is acknowledged, allowing only 503s
/// before (bounded).
async fn writes_again(client: &Client, base: &str, path: &str) {
    let started = Instant::now();
    loop {
        let answer = put(client, format!("{base}{path}"), json!({}), None).await;
        match answer.status().as_u16() {
            201 => return,
            503 => assert!(started.elapsed() < WAIT, "{base} never wrote again"),
            other => panic!("{other} from {base} while it recovers"),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// Every acknowledged path reads 200 on `base`.
async fn all_present(client: &Client, base: &str, tally: &Tally) {
    let paths = tally.acknowledged.lock().expect("tally").clone();
    assert!(!paths.is_empty(), "nothing was acknowledged");
    for path in paths {
        let read = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(read.status(), 200, "{path} was acknowledged and is gone");
    }
}

/// PostgreSQL stopped and started again under a steady stream of creates from
/// two nodes: while it is down every write is answered 503 (never 500, never a
/// hang), both nodes carry on by themselves once it is back, and every create
/// that was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_load_loses_nothing_acknowledged() {
    let cluster = Arc::new(crate::pg_cluster::PrivateCluster::start());
    let url = cluster.url();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let base = if w % 2 == 0 { &a } else { &b };
            spawn_writer(&client, base, &format!("w{w}"), &stop, &tally)
        })
        .collect();
    wait_until("writes before the restart", || tally.acknowledged() >= 50).await;
    let down = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || down.down())
        .await
        .unwrap();
    wait_until("a 503 while the database is down", || tally.refused() > 0).await;
    let up = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || up.up()).await.unwrap();
    // Back: both nodes write again by themselves.
    writes_again(&client, &a, "/v1/load/after-a").await;
    writes_again(&client, &b, "/v1/load/after-b").await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    all_present(&client, &a, &tally).await;
}

/// A node killed (SIGKILL) in the middle of a stream of writes: everything it
/// acknowledged is in the database, and another node serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing_acknowledged() {
    let url = fresh_database();
    let mut victim = crate::common::ServerProcess::start_on_database(&url).await;
    let client = client();
    victim.ready(&client).await;
    let tally = Arc::new(Tally::default());
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, base, tally) = (client.clone(), victim.base.clone(), Arc::clone(&tally));
        writers.push(tokio::spawn(async move {
            for n in 0..100_000 {
                let path = format!("/v1/kill/w{w}-{n}");
                let sent = client
                    .put(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(json!({"n": n}).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(answer) if answer.status() == 201 => {
                        tally.acknowledged.lock().expect("tally").push(path);
                    }
                    Ok(answer) => panic!("{} before the kill", answer.status()),
                    // The node is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    wait_until("writes before the kill", || tally.acknowledged() >= 200).await;
    victim.child.start_kill().expect("SIGKILL");
    let _ = victim.child.wait().await;
    for writer in writers {
        writer.await.unwrap();
    }
    let (other, _other) = node(&url).await;
    all_present(&client, &other, &tally).await;
}

/// One node cut off from the database (a partition, through a proxy the test
/// controls) while both nodes take writes: the cut-off node answers only 503
/// and says so on /readyz, the other carries on without a single refusal, and
/// once the partition heals the cut-off node writes again by itself and serves
/// what the other wrote meanwhile, streams included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_answers_503_and_catches_up() {
    let url = fresh_database();
    let (proxy, a, _a) = behind_proxy(&url, None).await;
    let (b, _b) = node(&url).await;
    let client = client();
    let stop = Arc::new(AtomicBool::new(false));
    let (on_a, on_b) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut writers = Vec::new();
    for w in 0..2 {
        writers.push(spawn_writer(&client, &a, &format!("a{w}"), &stop, &on_a));
        writers.push(spawn_writer(&client, &b, &format!("b{w}"), &stop, &on_b));
    }
    wait_until("writes on both nodes", || {
        on_a.acknowledged() >= 20 && on_b.acknowledged() >= 20
    })
    .await;

    proxy.partition();
    wait_until("a 503 from the cut-off node", || on_a.refused() > 0).await;
    let ready = client.get(format!("{a}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "the cut-off node says it is ready");
    let a_during = on_a.acknowledged();
    let b_during = on_b.acknowledged();
    wait_until("the other node carrying on", || {
        on_b.acknowledged() >= b_during + 50
    })
    .await;
    let during = put(
        &client,
        format!("{b}/v1/notes/during"),
        json!({"v": 1}),
        None,
    )
    .await;
    assert_eq!(during.status(), 201);
    assert_eq!(
        on_a.acknowledged(),
        a_during,
        "the cut-off node acknowledged a write"
    );

    proxy.heal();
    writes_again(&client, &a, "/v1/notes/after").await;
    let read = client
        .get(format!("{a}/v1/notes/during"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.status(),
        200,
        "the healed node misses a write of the other"
    );
    // Its streams follow the other node's commits again.
    let head: Value = fetch_json(&client, format!("{a}/v1/_changes?since=0&collection=wake")).await;
    let head = head["last_revision"].as_u64().expect("last_revision");
    let poll = tokio::spawn({
        let client = client.clone();
        let url =
            format!("{a}/v1/_changes?since={head}&feed=longpoll&timeout_ms=20000&collection=wake");
        async move { fetch_json(&client, url).await }
    });
    let woke = put(&client, format!("{b}/v1/wake/w"), json!({}), None).await;
    assert_eq!(woke.status(), 201);
    let page = poll.await.unwrap();
    assert_eq!(page["changes"][0]["id"], "w", "{page}");

    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        on_b.refused(),
        0,
        "the node that kept its database refused writes"
    );
    all_present(&client, &a, &on_a).await;
    all_present(&client, &a, &on_b).await;
}

/// The database commits a batch but its answer never reaches the node (the
/// proxy swallows it and closes the connection): the node asks the database
/// whether the transaction committed and answers the write as the success it
/// was, once: one new version, not two, and no 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_answer_is_settled_by_asking_the_database() {
    let url = fresh_database();
    let (proxy, a, _a) = behind_proxy(&url, None).await;
    let client = client();
    let created = put(&client, format!("{a}/v1/notes/n"), json!({"v": 1}), None).await;
    assert_eq!(created.status(), 201);
    let tag = etag(&created);

    proxy.lose_next_commit_answer(false);
    let updated = put(
        &client,
        format!("{a}/v1/notes/n"),
        json!({"v": 2}),
        Some(&tag),
    )
    .await;
    assert_eq!(proxy.lost_commit_answers(), 1, "no COMMIT answer was lost");
    assert_eq!(updated.status(), 200, "{}", updated.text().await.unwrap());

    let read = client.get(format!("{a}/v1/notes/n")).send().await.unwrap();
    assert_eq!(read.json::<Value>().await.unwrap(), json!({"v": 2}));
    let history: Value = fetch_json(&client, format!("{a}/v1/notes/n/versions")).await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
}

/// The answer to a COMMIT is lost and the database then cannot be reached at
/// all: within its deadlines the node answers 503 `commit-unknown` (not a
/// success it cannot vouch for, not a hang). The write did reach the database,
/// so after the partition heals it is there, and retrying it with the same
/// If-Match is refused with 412 saying the content already matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_nobody_can_confirm_is_503_commit_unknown() {
    let url = fresh_database();
    let (proxy, a, _a) = behind_proxy(&url, Some(Duration::from_secs(2))).await;
    let client = client();
    let created = put(&client, format!("{a}/v1/notes/n"), json!({"v": 1}), None).await;
    assert_eq!(created.status(), 201);
    let tag = etag(&created);

    proxy.lose_next_commit_answer(true);
    let started = Instant::now();
    let unknown = put(
        &client,
        format!("{a}/v1/notes/n"),
        json!({"v": 2}),
        Some(&tag),
    )
    .await;
    assert!(started.elapsed() < NO_HANG, "took {:?}", started.elapsed());
    assert!(unknown.headers().contains_key("retry-after"));
    let body = problem(unknown, 503, "unavailable").await;
    assert_eq!(body["reason"], "commit-unknown", "{body}");

    proxy.heal();
    let started = Instant::now();
    let read = loop {
        let read = client.get(format!("{a}/v1/notes/n")).send().await.unwrap();
        if read.status() == 200 {
            break read;
        }
        assert_eq!(read.status(), 503);
        assert!(started.elapsed() < WAIT, "the node never read again");
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(read.json::<Value>().await.unwrap(), json!({"v": 2}));
    let retried = put(
        &client,
        format!("{a}/v1/notes/n"),
        json!({"v": 2}),
        Some(&tag),
    )
    .await;
    let body = problem(retried, 412, "precondition-failed").await;
    assert_eq!(body["current_matches_request"], true, "{body}");
}

/// A statement the database refuses in the middle of a batch (here a trigger
/// raising on one id, as a broken constraint or a full disk would): the write
/// is answered 503, nothing of its batch is applied (the node sends a batch's
/// writes without waiting for each answer, so this is what proves a refusal is
/// never missed), no revision is used up, and the node goes on writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_database_refuses_fails_its_whole_batch() {
    let url = fresh_database();
    let (a, _a) = node(&url).await;
    let client = client();
    let first = put(&client, format!("{a}/v1/notes/first"), json!({}), None).await;
    assert_eq!(first.status(), 201);
    as_superuser_on(
        database_of(&url),
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON truce_versions \
         FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    );
    let refused = put(&client, format!("{a}/v1/notes/poison"), json!({}), None).await;
    let body = problem(refused, 503, "unavailable").await;
    assert_eq!(body["reason"], "io-error", "{body}");
    let read = client
        .get(format!("{a}/v1/notes/poison"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404, "a refused write was applied");
    let next = put(&client, format!("{a}/v1/notes/next"), json!({}), None).await;
    assert_eq!(next.status(), 201);
    let feed: Value = fetch_json(&client, format!("{a}/v1/_changes?since=0")).await;
    let seen: Vec<(u64, &str)> = feed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["revision"].as_u64().unwrap_or(0),
                c["id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(seen, vec![(1, "first"), (2, "next")], "{feed}");
}
