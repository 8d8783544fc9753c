//! `truce bench load`: fills a truce server with documents `doc-0` … `doc-{N-1}`,
//! each written `versions` times, as fast as the server takes them (many
//! connections, create-only then conditional writes), so scale runs can start from a
//! known state: every document at version `versions`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use super::conn::Connection;
use super::protocol::{Outcome, Protocol};
use super::workload::document;
use super::{BenchError, progress_bar, resolve_loopback};

/// Options of `truce bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Server to fill.
    #[arg(long, env = "TRUCE_URL", default_value = "http://127.0.0.1:8409")]
    pub url: String,
    /// Collection to fill.
    #[arg(long, default_value = "load")]
    pub collection: String,
    /// Number of documents.
    #[arg(long, default_value_t = 10_000)]
    pub docs: usize,
    /// Versions written per document (1: created only).
    #[arg(long, default_value_t = 1)]
    pub versions: u64,
    /// Approximate size of each document in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

/// Runs the loader.
pub async fn run(args: LoadArgs) -> ExitCode {
    match load(&args).await {
        Ok((writes, elapsed)) => {
            eprintln!(
                "loaded {} documents x {} versions: {writes} writes in {:.1} s ({:.0} writes/s)",
                args.docs,
                args.versions,
                elapsed.as_secs_f64(),
                writes as f64 / elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("truce bench load: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn load(args: &LoadArgs) -> Result<(u64, Duration), BenchError> {
    let addr = resolve_loopback(&args.url)?;
    let protocol = Protocol::Truce {
        collection: args.collection.clone(),
    };
    let total = args.docs as u64 * args.versions.max(1);
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(total, "writes");
    let started = Instant::now();
    let connections = args.connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (protocol, done, bar) = (protocol.clone(), Arc::clone(&done), bar.clone());
        let (docs, versions, size) = (args.docs, args.versions.max(1), args.body_size);
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut i = c;
            while i < docs {
                let id = format!("doc-{i}");
                let mut token = match protocol.create(&mut conn, &id, document(1, size)).await? {
                    Outcome::Done(token) => token,
                    Outcome::Refused => {
                        return Err(BenchError::Setup(format!("{id} already exists")));
                    }
                    Outcome::Failed(why) => return Err(BenchError::Setup(why)),
                };
                for version in 2..=versions {
                    token = match protocol
                        .update(&mut conn, &id, document(version, size), &token)
                        .await?
                    {
                        Outcome::Done(token) => token,
                        Outcome::Refused => {
                            return Err(BenchError::Setup(format!(
                                "{id} changed under the loader"
                            )));
                        }
                        Outcome::Failed(why) => return Err(BenchError::Setup(why)),
                    };
                }
                done.fetch_add(versions, Ordering::Relaxed);
                bar.inc(versions);
                i += connections;
            }
            Ok::<_, BenchError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| BenchError::Setup(format!("loader task failed: {e}")))??;
    }
    bar.finish_and_clear();
    Ok((done.load(Ordering::Relaxed), started.elapsed()))
}
