//! Throughput of the embedded store alone (no HTTP): N tasks doing conditional
//! replaces of their own documents (`update`) or creating fresh ones (`create`)
//! through the sequencer.
//!
//! `cargo run --release -p truce-store --example sequencer_bench -- [tasks] [seconds] [max_batch] [update|create] [writes per task]`
//!
//! With a number of writes per task the run stops after those instead of after
//! `seconds`: a fixed amount of work, for instruction counts under
//! `valgrind --tool=callgrind`, which are repeatable where timings are not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use truce_engine::{
    Document, DocumentLimits, Preconditions, Principal, ResourceKey, Store, TagCondition,
    WriteAction, WriteCommand,
};
use truce_store::{EmbeddedConfig, EmbeddedStore};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tasks: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let max_batch: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(256);
    let create = args.get(4).is_some_and(|a| a == "create");
    let per_task: Option<u64> = args.get(5).and_then(|a| a.parse().ok());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EmbeddedConfig::new(dir.path());
    config.max_batch = max_batch;
    let store = Arc::new(EmbeddedStore::open(config).expect("open"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let done = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            handles.push(tokio::spawn(async move {
                let mut key = ResourceKey::parse("bench", &format!("doc-{t}")).expect("key");
                let pad = "x".repeat(200);
                let mut etag: Option<String> = None;
                let mut n = 0u64;
                while per_task.map_or(Instant::now() < deadline, |limit| n < limit) {
                    n += 1;
                    if create {
                        key = ResourceKey::parse("bench", &format!("doc-{t}-{n}")).expect("key");
                    }
                    let body = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
                    let doc =
                        Document::parse(body.as_bytes(), DocumentLimits::default()).expect("doc");
                    let mut preconditions = Preconditions::default();
                    if create {
                        preconditions.if_none_match = Some(TagCondition::Any);
                    } else if let Some(tag) = &etag {
                        preconditions.if_match =
                            Some(TagCondition::parse([tag.as_str()]).expect("tag"));
                    }
                    let command = WriteCommand {
                        key: key.clone(),
                        action: WriteAction::Put(doc),
                        preconditions,
                        if_version: None,
                        by: Principal::anonymous(),
                        request_id: None,
                        resolves: None,
                        idempotency: None,
                        lock_token: None,
                        key_check: None,
                    };
                    let outcome = store.write(command).await.expect("write");
                    etag = Some(outcome.version.etag(&key).to_header());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for handle in handles {
            handle.await.expect("task");
        }
    });
    let total = done.load(Ordering::Relaxed);
    println!(
        "tasks={tasks} max_batch={max_batch} writes={total} writes/s={:.0}",
        total as f64 / seconds as f64
    );
}
