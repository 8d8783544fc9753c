//! The workloads: what each benchmark client does in its loop.
//!
//! - `create`: `PUT` with `If-None-Match: *` on fresh ids;
//! - `update`: conditional replaces of the client's own documents, tracking their
//!   tokens, so every write is a compare-and-swap that should succeed;
//! - `hot`: every client does read-modify-write increments of one document and
//!   retries when refused; goodput is accepted increments, and the final value must
//!   equal their number;
//! - `read`: `GET`; `read-304`: `GET` with `If-None-Match` (the 304 path);
//! - `mixed`: 90% reads, 10% updates of the client's own documents.
//!
//! Set-up (creating the documents a workload needs) is not timed. Every client has
//! its own connection; all start together and stop at the same deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Barrier;

use super::BenchError;
use super::conn::Connection;
use super::protocol::{Outcome, Protocol, Token};

/// A kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Create-only writes of fresh documents.
    Create,
    /// Conditional replaces of each client's own documents.
    Update,
    /// Read-modify-write increments of one shared document, with retries.
    Hot,
    /// Reads.
    Read,
    /// Conditional reads answered 304 Not Modified.
    #[value(name = "read-304")]
    #[serde(rename = "read-304")]
    ReadUnchanged,
    /// 90% reads, 10% updates.
    Mixed,
    /// Conditional replaces with a stale token: every one refused (truce: 412 with
    /// a conflict record; etcd: a failed txn). Throughput counts refusals.
    Stale,
    /// truce only: stale replaces with a change disjoint from the one made since,
    /// in a collection with the merge policy (`{collection}-merge`): every one
    /// merged, once per document (give `--docs` enough for the run).
    Merge,
    /// Uncontended locks: each client takes and releases a lock of its own; an
    /// operation is the pair (truce: POST + DELETE `.../lock`; etcd: lock +
    /// unlock under a lease granted once per client).
    Lock,
    /// Every client contends for one lock, waiting in its queue, and releases it
    /// at once: an operation is a grant, and its latency the hand-off (from the
    /// holder sending its release to the next waiter receiving the grant).
    #[value(name = "lock-handoff")]
    #[serde(rename = "lock-handoff")]
    LockHandoff,
    /// Transactions of 10 conditional replaces, each client on its own 10
    /// documents (truce: `POST /v1/_txn`; etcd: a txn of 10 compares and 10
    /// puts); an operation is a transaction.
    Txn,
    /// truce only: interactive transactions (begin, read, write, commit), each
    /// client on its own documents (no contention); an operation is a commit.
    #[value(name = "itxn")]
    #[serde(rename = "itxn")]
    InteractiveOwn,
    /// truce only: interactive transactions on one shared document (high
    /// contention); a commit that found the document changed is refused and
    /// the client runs the next one.
    #[value(name = "itxn-hot")]
    #[serde(rename = "itxn-hot")]
    InteractiveHot,
}

/// Documents written earlier by `truce bench load` (ids `doc-{first}` …
/// `doc-{first + count - 1}`), all at `version`.
#[derive(Debug, Clone, Copy)]
pub struct Preloaded {
    /// The index of the first.
    pub first: usize,
    /// How many.
    pub count: usize,
    /// The version every one of them is at.
    pub version: u64,
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to do.
    pub workload: Workload,
    /// Concurrent clients, one connection each.
    pub connections: usize,
    /// Length of the timed part.
    pub duration: Duration,
    /// Documents each client owns (when not preloaded).
    pub docs: usize,
    /// Approximate document size in bytes.
    pub body_size: usize,
    /// Prefix of every id the run makes, so runs never collide.
    pub run_id: String,
    /// Run on preloaded documents instead of creating some.
    pub preloaded: Option<Preloaded>,
    /// Check the hot document's final value (not for the stateless ceiling).
    pub verify: bool,
}

/// What a run measured.
#[derive(Debug)]
pub struct Measured {
    /// Operations that did what they were asked.
    pub ok: u64,
    /// Conditional writes that lost (hot: refused increments).
    pub refused: u64,
    /// Failed operations (wrong status, transport errors).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Latency of every operation, in microseconds.
    pub latency: Histogram<u64>,
    /// The timed part's length.
    pub seconds: f64,
    /// `hot` only: the id of the shared document and its final value.
    pub hot: Option<(String, Option<u64>)>,
}

/// Per-client counters.
struct Tally {
    ok: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Self, BenchError> {
        Ok(Self {
            ok: 0,
            refused: 0,
            errors: 0,
            first_error: None,
            latency: histogram()?,
        })
    }

    fn record<T>(&mut self, started: Instant, outcome: &Outcome<T>) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency.record(micros.max(1));
        match outcome {
            Outcome::Done(_) => self.ok += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Failed(why) => self.fail(why.clone()),
        }
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }
}

/// A latency histogram from 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| BenchError::Setup(e.to_string()))
}

/// A document of about `size` bytes: `{"n": n, "pad": "xxx…"}`.
pub fn document(n: u64, size: usize) -> Bytes {
    let pad = size.saturating_sub(24);
    Bytes::from(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(pad)))
}

/// The `n` of a document made by [`document`].
fn counter_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("n")?
        .as_u64()
}

/// One client: its connection, its documents and their tokens.
struct Client {
    index: usize,
    /// The server this client talks to (clients take the servers in turn).
    addr: SocketAddr,
    conn: Connection,
    docs: Vec<(String, Option<Token>)>,
    rng: fastrand::Rng,
    /// What locking needs (etcd: the client's lease).
    session: Option<String>,
    /// When a holder of the contended lock last sent its release.
    released: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// A workload ready to run: connections open, documents created.
pub struct Prepared {
    addrs: Vec<SocketAddr>,
    protocol: Protocol,
    plan: Plan,
    hot_id: String,
    clients: Vec<Client>,
}

/// Opens the connections and creates what the workload needs (not timed).
pub async fn prepare(
    addrs: &[SocketAddr],
    protocol: &Protocol,
    plan: &Plan,
) -> Result<Prepared, BenchError> {
    let Some(&addr) = addrs.first() else {
        return Err(BenchError::Setup("no server to measure".into()));
    };
    if plan.workload == Workload::ReadUnchanged && !protocol.has_unchanged_read() {
        return Err(BenchError::Unsupported(
            "read-304 needs HTTP conditional reads, which this target lacks".into(),
        ));
    }
    if plan.workload == Workload::Merge && !protocol.has_unchanged_read() {
        return Err(BenchError::Unsupported(
            "merge needs truce's merge conflict policy".into(),
        ));
    }
    if matches!(plan.workload, Workload::Stale | Workload::Merge) && plan.preloaded.is_some() {
        return Err(BenchError::Unsupported(
            "stale and merge make their own documents; run them without --preloaded".into(),
        ));
    }
    let merge_protocol;
    let protocol = match (plan.workload, protocol) {
        (Workload::Merge, Protocol::Truce { collection }) => {
            let collection = format!("{collection}-merge");
            let mut conn = Connection::open(addr).await?;
            let settings = Bytes::from_static(br#"{"conflict_policy":"merge"}"#);
            let path = format!("/v1/_collections/{collection}");
            let reply = conn
                .send(
                    hyper::Method::PUT,
                    &path,
                    &[(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    )],
                    settings,
                )
                .await?;
            if !reply.status.is_success() {
                return Err(BenchError::Setup(format!(
                    "setting the merge policy answered {}",
                    reply.status
                )));
            }
            merge_protocol = Protocol::Truce { collection };
            &merge_protocol
        }
        _ => protocol,
    };
    let hot_id = format!("{}-hot", plan.run_id);
    let released = Arc::default();
    let mut clients = Vec::with_capacity(plan.connections);
    for index in 0..plan.connections.max(1) {
        let addr = addrs[index % addrs.len()];
        let mut client = Client {
            index,
            addr,
            conn: Connection::open(addr).await?,
            docs: Vec::new(),
            rng: fastrand::Rng::with_seed(index as u64),
            session: None,
            released: Arc::clone(&released),
        };
        set_up(&mut client, protocol, plan, &hot_id).await?;
        clients.push(client);
    }
    // Clients set up one after another; a long set-up (many documents) leaves the
    // first connections idle past the server's keep-alive limit, so every client
    // starts the timed part on a fresh connection.
    for client in &mut clients {
        client.conn = Connection::open(client.addr).await?;
    }
    Ok(Prepared {
        addrs: addrs.to_vec(),
        protocol: protocol.clone(),
        plan: plan.clone(),
        hot_id,
        clients,
    })
}

/// Runs the timed part. `ops` counts completed operations live (for a progress
/// display).
pub async fn measure(prepared: Prepared, ops: Arc<AtomicU64>) -> Result<Measured, BenchError> {
    let Prepared {
        addrs,
        protocol,
        plan,
        hot_id,
        clients,
    } = prepared;
    let start = Arc::new(Barrier::new(clients.len() + 1));
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        let (protocol, plan, start, ops) = (
            protocol.clone(),
            plan.clone(),
            Arc::clone(&start),
            Arc::clone(&ops),
        );
        // Each client task owns its connection from here on.
        let hot_id = hot_id.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            drive(client, &protocol, &plan, &hot_id, &ops).await
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut measured = Measured {
        ok: 0,
        refused: 0,
        errors: 0,
        first_error: None,
        latency: histogram()?,
        seconds: 0.0,
        hot: None,
    };
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| BenchError::Setup(format!("client task failed: {e}")))??;
        measured.ok += tally.ok;
        measured.refused += tally.refused;
        measured.errors += tally.errors;
        if measured.first_error.is_none() {
            measured.first_error = tally.first_error;
        }
        measured
            .latency
            .add(&tally.latency)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    measured.seconds = started.elapsed().as_secs_f64();
    if plan.workload == Workload::Hot {
        let final_value = if plan.verify {
            let mut conn = Connection::open(addrs[0]).await?;
            match protocol.read(&mut conn, &hot_id).await? {
                Outcome::Done((_, body)) => counter_of(&body),
                _ => None,
            }
        } else {
            None
        };
        measured.hot = Some((hot_id, final_value));
    }
    Ok(measured)
}

/// Creates what the workload needs before the clock starts.
async fn set_up(
    client: &mut Client,
    protocol: &Protocol,
    plan: &Plan,
    hot_id: &str,
) -> Result<(), BenchError> {
    match plan.workload {
        Workload::Create => Ok(()),
        Workload::Lock | Workload::LockHandoff => {
            client.session = protocol.lock_session(&mut client.conn).await?;
            Ok(())
        }
        Workload::Txn => {
            for d in 0..super::txn_ops::TXN_OPS {
                let id = format!("{}-{}-t{d}", plan.run_id, client.index);
                let outcome = protocol
                    .create(&mut client.conn, &id, document(0, plan.body_size))
                    .await?;
                let token = require_done(outcome, &id)?;
                client.docs.push((id, Some(token)));
            }
            Ok(())
        }
        Workload::InteractiveHot => {
            if !protocol.has_unchanged_read() {
                return Err(BenchError::Unsupported(
                    "interactive transactions are truce's".into(),
                ));
            }
            if client.index == 0 {
                let outcome = protocol
                    .create(&mut client.conn, hot_id, document(0, plan.body_size))
                    .await?;
                require_done(outcome, hot_id)?;
            }
            Ok(())
        }
        Workload::Hot => {
            if client.index == 0 {
                let outcome = protocol
                    .create(&mut client.conn, hot_id, document(0, plan.body_size))
                    .await?;
                require_done(outcome, hot_id)?;
            }
            Ok(())
        }
        Workload::Stale | Workload::Merge => {
            // Each document at version 2, the client keeping version 1's token.
            for d in 0..plan.docs.max(1) {
                let id = format!("{}-{}-{d}", plan.run_id, client.index);
                let outcome = protocol
                    .create(&mut client.conn, &id, document(0, plan.body_size))
                    .await?;
                let first = require_done(outcome, &id)?;
                let outcome = protocol
                    .update(&mut client.conn, &id, document(1, plan.body_size), &first)
                    .await?;
                require_done(outcome, &id)?;
                client.docs.push((id, Some(first)));
            }
            Ok(())
        }
        Workload::Update
        | Workload::Read
        | Workload::ReadUnchanged
        | Workload::Mixed
        | Workload::InteractiveOwn => {
            if plan.workload == Workload::InteractiveOwn && !protocol.has_unchanged_read() {
                return Err(BenchError::Unsupported(
                    "interactive transactions are truce's".into(),
                ));
            }
            if let Some(preloaded) = plan.preloaded {
                let mut i = preloaded.first + client.index;
                while i < preloaded.first + preloaded.count {
                    client
                        .docs
                        .push((format!("doc-{i}"), Some(Token::Version(preloaded.version))));
                    i += plan.connections.max(1);
                }
                if plan.workload == Workload::ReadUnchanged {
                    // A 304 needs the ETag: read each document once.
                    for (id, token) in &mut client.docs {
                        let outcome = protocol.read(&mut client.conn, id).await?;
                        *token = Some(require_done(outcome, id)?.0);
                    }
                }
            } else {
                for d in 0..plan.docs.max(1) {
                    let id = format!("{}-{}-{d}", plan.run_id, client.index);
                    let outcome = protocol
                        .create(&mut client.conn, &id, document(0, plan.body_size))
                        .await?;
                    let token = require_done(outcome, &id)?;
                    client.docs.push((id, Some(token)));
                }
            }
            if client.docs.is_empty() {
                return Err(BenchError::Setup(
                    "more connections than preloaded documents".into(),
                ));
            }
            Ok(())
        }
    }
}

fn require_done<T>(outcome: Outcome<T>, id: &str) -> Result<T, BenchError> {
    match outcome {
        Outcome::Done(value) => Ok(value),
        Outcome::Refused => Err(BenchError::Setup(format!("setting up {id} was refused"))),
        Outcome::Failed(why) => Err(BenchError::Setup(format!("setting up {id}: {why}"))),
    }
}

/// One client's timed loop.
async fn drive(
    mut client: Client,
    protocol: &Protocol,
    plan: &Plan,
    hot_id: &str,
    ops: &AtomicU64,
) -> Result<Tally, BenchError> {
    let mut tally = Tally::new()?;
    let deadline = Instant::now() + plan.duration;
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        seq += 1;
        let started = Instant::now();
        let result = step(
            &mut client,
            protocol,
            plan,
            hot_id,
            seq,
            started,
            &mut tally,
        )
        .await;
        if let Err(error) = result {
            // The connection is gone: count it, reconnect, go on.
            tally.fail(error.to_string());
            match Connection::open(client.addr).await {
                Ok(conn) => client.conn = conn,
                Err(_) => return Ok(tally),
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(tally)
}

/// One operation of the workload.
async fn step(
    client: &mut Client,
    protocol: &Protocol,
    plan: &Plan,
    hot_id: &str,
    seq: u64,
    started: Instant,
    tally: &mut Tally,
) -> Result<(), BenchError> {
    let body = || document(seq, plan.body_size);
    match plan.workload {
        Workload::Create => {
            let id = format!("{}-{}-n{seq}", plan.run_id, client.index);
            let outcome = protocol.create(&mut client.conn, &id, body()).await?;
            tally.record(started, &outcome);
        }
        Workload::Update => update_own(client, protocol, body(), seq, started, tally).await?,
        Workload::Read => {
            let id = pick_read(client, plan);
            let outcome = protocol.read(&mut client.conn, &id).await?;
            tally.record(started, &outcome);
        }
        Workload::ReadUnchanged => {
            let slot = client.rng.usize(..client.docs.len());
            let (id, token) = &client.docs[slot];
            let Some(token) = token.clone() else {
                return Err(BenchError::Setup("document without a token".into()));
            };
            let outcome = protocol
                .read_unchanged(&mut client.conn, id, &token)
                .await?;
            tally.record(started, &outcome);
        }
        Workload::Mixed => {
            if client.rng.u8(..10) == 0 {
                update_own(client, protocol, body(), seq, started, tally).await?;
            } else {
                let id = pick_read(client, plan);
                let outcome = protocol.read(&mut client.conn, &id).await?;
                tally.record(started, &outcome);
            }
        }
        Workload::Stale => {
            let slot = (seq as usize) % client.docs.len();
            let (id, token) = &client.docs[slot];
            let Some(stale) = token.clone() else {
                return Err(BenchError::Setup("document without a token".into()));
            };
            let outcome = protocol
                .update(&mut client.conn, id, body(), &stale)
                .await?;
            // Here a refusal is the expected answer.
            let outcome = match outcome {
                Outcome::Refused => Outcome::Done(()),
                Outcome::Done(_) => Outcome::Failed("a stale write was accepted".into()),
                Outcome::Failed(why) => Outcome::Failed(why),
            };
            tally.record(started, &outcome);
        }
        Workload::Merge => {
            // Each document once: base version 1 changed `n`; this adds `c`.
            let slot = (seq as usize - 1) % client.docs.len();
            let (id, token) = &client.docs[slot];
            let Some(stale) = token.clone() else {
                return Err(BenchError::Setup("document without a token".into()));
            };
            let mut ours: serde_json::Value =
                serde_json::from_slice(&document(0, plan.body_size)).unwrap_or_default();
            ours["c"] = serde_json::Value::from(seq);
            let ours = Bytes::from(ours.to_string());
            let outcome = protocol.update(&mut client.conn, id, ours, &stale).await?;
            tally.record(started, &outcome);
        }
        Workload::Lock => {
            let id = format!("{}-lock-{}", plan.run_id, client.index);
            let session = client.session.as_deref();
            let outcome = match protocol.lock(&mut client.conn, &id, session, false).await? {
                Outcome::Done(held) => protocol.unlock(&mut client.conn, &id, &held).await?,
                Outcome::Refused => Outcome::Failed("an uncontended lock was held".into()),
                Outcome::Failed(why) => Outcome::Failed(why),
            };
            tally.record(started, &outcome);
        }
        Workload::LockHandoff => handoff(client, protocol, plan, started, tally).await?,
        Workload::InteractiveOwn => {
            let slot = (seq as usize) % client.docs.len();
            let id = client.docs[slot].0.clone();
            let outcome = protocol
                .interactive_update(&mut client.conn, &id, &body())
                .await?;
            tally.record(started, &outcome);
        }
        Workload::InteractiveHot => {
            let outcome = protocol
                .interactive_update(&mut client.conn, hot_id, &body())
                .await?;
            tally.record(started, &outcome);
        }
        Workload::Txn => {
            let outcome = protocol
                .txn_update(&mut client.conn, &client.docs, &body())
                .await?;
            tally.record(started, &outcome);
            match outcome {
                Outcome::Done(tokens) => {
                    for ((_, token), next) in client.docs.iter_mut().zip(tokens) {
                        *token = Some(next);
                    }
                }
                Outcome::Refused | Outcome::Failed(_) => {
                    // Learn the tokens again (someone else wrote, or a failure).
                    for (id, token) in &mut client.docs {
                        if let Outcome::Done((next, _)) =
                            protocol.read(&mut client.conn, id).await?
                        {
                            *token = Some(next);
                        }
                    }
                }
            }
        }
        Workload::Hot => {
            let outcome = match protocol.read(&mut client.conn, hot_id).await? {
                Outcome::Done((token, current)) => match counter_of(&current) {
                    Some(n) => {
                        let next = document(n + 1, plan.body_size);
                        protocol
                            .update(&mut client.conn, hot_id, next, &token)
                            .await?
                    }
                    None => Outcome::Failed("hot document without a counter".into()),
                },
                Outcome::Refused => Outcome::Refused,
                Outcome::Failed(why) => Outcome::Failed(why),
            };
            tally.record(started, &outcome);
        }
    }
    Ok(())
}

/// One grant of the contended lock, and its release at once. A grant that
/// followed a release made after it was asked for is a hand-off: its latency
/// is from that release being sent to the grant arriving.
async fn handoff(
    client: &mut Client,
    protocol: &Protocol,
    plan: &Plan,
    asked: Instant,
    tally: &mut Tally,
) -> Result<(), BenchError> {
    let id = format!("{}-handoff", plan.run_id);
    let session = client.session.as_deref();
    let held = match protocol.lock(&mut client.conn, &id, session, true).await? {
        Outcome::Done(held) => held,
        Outcome::Refused => {
            tally.fail("a waiting lock was refused".into());
            return Ok(());
        }
        Outcome::Failed(why) => {
            tally.fail(why);
            return Ok(());
        }
    };
    let granted = Instant::now();
    let last = client
        .released
        .lock()
        .map_err(|_| BenchError::Setup("a client panicked".into()))?
        .replace(Instant::now());
    if let Some(release) = last
        && release > asked
    {
        let micros = u64::try_from(granted.duration_since(release).as_micros()).unwrap_or(u64::MAX);
        let _ = tally.latency.record(micros.max(1));
    }
    tally.ok += 1;
    if let Outcome::Failed(why) = protocol.unlock(&mut client.conn, &id, &held).await? {
        tally.fail(why);
    }
    Ok(())
}

/// A document to read: any preloaded one, or one of the client's own.
fn pick_read(client: &mut Client, plan: &Plan) -> String {
    match plan.preloaded {
        Some(preloaded) => format!(
            "doc-{}",
            preloaded.first + client.rng.usize(..preloaded.count.max(1))
        ),
        None => {
            let slot = client.rng.usize(..client.docs.len());
            client.docs[slot].0.clone()
        }
    }
}

/// A conditional replace of the next of the client's own documents.
async fn update_own(
    client: &mut Client,
    protocol: &Protocol,
    body: Bytes,
    seq: u64,
    started: Instant,
    tally: &mut Tally,
) -> Result<(), BenchError> {
    let slot = (seq as usize) % client.docs.len();
    let (id, token) = &client.docs[slot];
    let id = id.clone();
    let Some(current) = token.clone() else {
        return Err(BenchError::Setup("document without a token".into()));
    };
    let outcome = protocol
        .update(&mut client.conn, &id, body, &current)
        .await?;
    tally.record(started, &outcome);
    match outcome {
        Outcome::Done(next) => client.docs[slot].1 = Some(next),
        Outcome::Refused => {
            // Someone else wrote it (a concurrent benchmark?): learn the new token.
            if let Outcome::Done((token, _)) = protocol.read(&mut client.conn, &id).await? {
                client.docs[slot].1 = Some(token);
            }
        }
        Outcome::Failed(_) => {}
    }
    Ok(())
}
