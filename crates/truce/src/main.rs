//! The `truce` binary: `truce serve` runs the server; the other commands are tools
//! that speak its HTTP API.

mod bench;
mod cli;
mod config;
mod logging;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: requests allocate and free many small
/// buffers on several threads, which glibc's allocator handles with contention and
/// periodic consolidation (measured in `docs/PERFORMANCE.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, before any thread starts.
/// mimalloc asks for huge pages on its arenas, and the first touch of each
/// fresh 2 MiB page makes the kernel zero all of it on the touching thread: when
/// that thread is the sequencer, every write waiting for the batch waits too
/// (measured in `docs/PERFORMANCE.md`, "Tail latency"). A server that cannot
/// turn them off runs as before.
fn small_pages_only() {
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("truce: transparent huge pages stay on ({error})");
    }
}

/// truce: a conflict-aware HTTP resource server.
#[derive(Debug, Parser)]
#[command(name = "truce", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server on the embedded store.
    Serve(Box<config::ServeArgs>),
    /// Print a document (`collection/id`).
    Get(cli::GetArgs),
    /// Create or replace a document from a JSON file or `-` (stdin).
    Put(cli::PutArgs),
    /// Apply a merge patch (or `--json-patch`) from a file or `-`.
    Patch(cli::PatchArgs),
    /// Delete a document.
    Delete(cli::DeleteArgs),
    /// List a document's versions, newest first.
    History(cli::HistoryArgs),
    /// Show the JSON Patch between two versions.
    Diff(cli::DiffArgs),
    /// Write a new version with an earlier version's content.
    Revert(cli::RevertArgs),
    /// Follow the changes of a collection or of one document.
    Watch(cli::WatchArgs),
    /// Edit a document in $VISUAL / $EDITOR, merging with concurrent changes.
    Edit(cli::EditArgs),
    /// List conflict records, or show one (base / ours / theirs).
    Conflicts(cli::ConflictsArgs),
    /// Resolve a conflict record (--theirs, --ours, --file) or dismiss it.
    Resolve(cli::ResolveArgs),
    /// Read or change a collection's settings (conflict policy, preconditions, history).
    Collection(cli::CollectionArgs),
    /// Apply a batch transaction from a file of ops (all or nothing).
    Txn(cli::TxnArgs),
    /// Take a lock (print its token and fence), or `--show` who holds it.
    Lock(cli::LockArgs),
    /// Release a lock with its token, or `--force` to break it (admin).
    Unlock(cli::UnlockArgs),
    /// Make, list or revoke API keys (`--data DIR` / `--database-url` with the server stopped).
    Keys(cli::KeysArgs),
    /// Load-test truce, etcd or the machine's HTTP ceiling; `bench load` fills a server.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        small_pages_only();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("truce: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::Get(args) => {
                let settings = args.client.clone();
                cli::finish(cli::read::get(args).await, &settings)
            }
            Command::Put(args) => {
                let settings = args.client.clone();
                cli::finish(cli::write::put(args).await, &settings)
            }
            Command::Patch(args) => {
                let settings = args.client.clone();
                cli::finish(cli::write::patch(args).await, &settings)
            }
            Command::Delete(args) => {
                let settings = args.client.clone();
                cli::finish(cli::write::delete(args).await, &settings)
            }
            Command::History(args) => {
                let settings = args.client.clone();
                cli::finish(cli::read::history(args).await, &settings)
            }
            Command::Diff(args) => {
                let settings = args.client.clone();
                cli::finish(cli::read::diff(args).await, &settings)
            }
            Command::Revert(args) => {
                let settings = args.client.clone();
                cli::finish(cli::write::revert(args).await, &settings)
            }
            Command::Watch(args) => {
                let settings = args.client.clone();
                cli::finish(cli::read::watch(args).await, &settings)
            }
            Command::Edit(args) => {
                let settings = args.client.clone();
                cli::finish(cli::edit::edit(args).await, &settings)
            }
            Command::Conflicts(args) => {
                let settings = args.client.clone();
                cli::finish(cli::conflicts::conflicts(args).await, &settings)
            }
            Command::Resolve(args) => {
                let settings = args.client.clone();
                cli::finish(cli::conflicts::resolve(args).await, &settings)
            }
            Command::Txn(args) => {
                let settings = args.client.clone();
                cli::finish(cli::txn::txn(args).await, &settings)
            }
            Command::Lock(args) => {
                let settings = args.client.clone();
                cli::finish(cli::lock::lock(args).await, &settings)
            }
            Command::Unlock(args) => {
                let settings = args.client.clone();
                cli::finish(cli::lock::unlock(args).await, &settings)
            }
            Command::Keys(args) => {
                let settings = args.target().client.clone();
                cli::finish(cli::keys::keys(args).await, &settings)
            }
            Command::Collection(args) => {
                let settings = args.client().clone();
                cli::finish(cli::collection::collection(args).await, &settings)
            }
        }
    })
}
