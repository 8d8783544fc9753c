//! The `truce` binary: `truce serve` runs the server; the other commands are tools
//! that speak its HTTP API.

mod bench;
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
    /// Load-test truce, etcd or the machine's HTTP ceiling; `bench load` fills a server.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        }
    })
}
