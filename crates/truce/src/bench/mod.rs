//! `truce bench`: a load generator for truce, etcd and the machine's HTTP ceiling.
//!
//! The same client (one hyper HTTP/1.1 connection per simulated client, latencies in
//! HDR histograms) drives every target, so the numbers compare systems, not clients.
//! `--target truce` speaks truce's API, `--target etcd` etcd's v3 JSON gateway, and
//! `--target ceiling` an in-process server that answers truce-shaped requests without
//! storage. `truce bench load` fills a server for scale runs.
//!
//! Only loopback targets are accepted: a benchmark must never send load off the
//! machine.

mod ceiling;
mod conn;
mod load;
mod lock_ops;
mod protocol;
mod txn_ops;
mod workload;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use self::conn::Connection;
use self::protocol::Protocol;
use self::workload::{Measured, Plan, Preloaded, Workload};
pub use load::LoadArgs;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The set-up or the target is not as expected.
    #[error("{0}")]
    Setup(String),
    /// The workload does not exist for this target.
    #[error("{0}")]
    Unsupported(String),
}

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A truce server.
    Truce,
    /// An etcd server (v3 JSON gateway).
    Etcd,
    /// A storage-free HTTP server in this process.
    Ceiling,
}

/// `truce bench`: run workloads, or `load` a server.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Fill a truce server with documents `doc-0` … for scale runs.
    Load(LoadArgs),
}

/// Options of a benchmark run.
#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "truce")]
    target: Target,
    /// The server (default: truce 127.0.0.1:8409, etcd 127.0.0.1:2379); several,
    /// comma-separated, are nodes of one store: clients take them in turn.
    #[arg(long, env = "TRUCE_URL", value_delimiter = ',')]
    url: Vec<String>,
    /// Workloads to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "update")]
    workload: Vec<Workload>,
    /// Concurrent connections, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Documents each client owns (update, read, read-304, mixed).
    #[arg(long, default_value_t = 4)]
    docs: usize,
    /// Approximate size of each document in bytes.
    #[arg(long, default_value_t = 256)]
    body_size: usize,
    /// Run on the N documents `truce bench load` wrote, instead of creating some.
    #[arg(long)]
    preloaded: Option<usize>,
    /// The version every preloaded document is at (`truce bench load --versions`).
    #[arg(long, default_value_t = 1)]
    preloaded_version: u64,
    /// Use the preloaded documents from `doc-N` on (so repeated update runs can each
    /// take documents whose version is still known).
    #[arg(long, default_value_t = 0)]
    preloaded_from: usize,
    /// Collection (truce) for the documents.
    #[arg(long, default_value = "bench")]
    collection: String,
    /// API key sent with every request (a server with keys).
    #[arg(long, env = "TRUCE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
}

/// One run's result, as printed.
#[derive(Debug, Serialize)]
struct Report {
    target: Target,
    workload: Workload,
    connections: usize,
    seconds: f64,
    ops: u64,
    ops_per_second: f64,
    refused: u64,
    refused_share: f64,
    errors: u64,
    first_error: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    mean_batch: Option<f64>,
    run_id: String,
    hot_doc: Option<String>,
    hot_final: Option<u64>,
    hot_consistent: Option<bool>,
}

/// Runs `truce bench`.
pub async fn run(args: BenchArgs) -> ExitCode {
    match args.command {
        Some(BenchCommand::Load(load)) => load::run(load).await,
        None => match run_workloads(&args.run).await {
            Ok(consistent) if consistent => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "truce bench: a hot document's final value does not match its accepted increments"
                );
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("truce bench: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs every workload at every connection count; false if a hot check failed.
async fn run_workloads(args: &RunArgs) -> Result<bool, BenchError> {
    if let Some(key) = &args.key {
        conn::use_key(key)?;
    }
    let addrs = match (args.target, args.url.as_slice()) {
        (Target::Ceiling, _) => vec![ceiling::start(args.body_size).await?],
        (Target::Truce, []) => vec![resolve_loopback("http://127.0.0.1:8409")?],
        (Target::Etcd, []) => vec![resolve_loopback("http://127.0.0.1:2379")?],
        (_, urls) => urls
            .iter()
            .map(|url| resolve_loopback(url))
            .collect::<Result<_, _>>()?,
    };
    let protocol = match args.target {
        Target::Truce | Target::Ceiling => Protocol::Truce {
            collection: args.collection.clone(),
        },
        Target::Etcd => Protocol::Etcd {
            prefix: "truce-bench".into(),
        },
    };
    if args.preloaded.is_some() && args.target != Target::Truce {
        return Err(BenchError::Setup("--preloaded needs --target truce".into()));
    }
    if !args.json {
        println!(
            "{:<8} {:<9} {:>5} {:>10} {:>8} {:>8} {:>9} {:>8} {:>7} {:>6}  notes",
            "target",
            "workload",
            "conns",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "refused",
            "errors",
            "batch"
        );
    }
    let mut consistent = true;
    for &workload in &args.workload {
        for &connections in &args.connections {
            let plan = Plan {
                workload,
                connections,
                duration: args.duration,
                docs: args.docs,
                body_size: args.body_size,
                run_id: run_id(),
                preloaded: args.preloaded.map(|count| Preloaded {
                    first: args.preloaded_from,
                    count,
                    version: args.preloaded_version,
                }),
                verify: args.target != Target::Ceiling,
            };
            let lockless = args.target == Target::Ceiling
                && matches!(
                    workload,
                    Workload::Lock | Workload::LockHandoff | Workload::Txn
                );
            let prepared = if lockless {
                Err(BenchError::Unsupported(
                    "the storage-free ceiling server has no locks nor transactions".into(),
                ))
            } else {
                workload::prepare(&addrs, &protocol, &plan).await
            };
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(BenchError::Unsupported(why)) => {
                    if !args.json {
                        println!(
                            "{:<8} {:<9} {:>5} {:>10}  {why}",
                            target_name(args.target),
                            workload_name(workload),
                            connections,
                            "n/a"
                        );
                    }
                    continue;
                }
                Err(error) => return Err(error),
            };
            let batches_before = batch_totals(args.target, &addrs).await;
            let ops = Arc::new(AtomicU64::new(0));
            let bar = progress_bar(args.duration.as_millis() as u64, "ms");
            bar.set_message(format!("{workload:?} x{connections}"));
            let ticker = tokio::spawn({
                let (bar, ops) = (bar.clone(), Arc::clone(&ops));
                async move {
                    let mut interval = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        interval.tick().await;
                        bar.inc(100);
                        bar.set_message(format!("{} ops", ops.load(Ordering::Relaxed)));
                    }
                }
            });
            let result = workload::measure(prepared, ops).await;
            ticker.abort();
            bar.finish_and_clear();
            let measured = result?;
            let batches_after = batch_totals(args.target, &addrs).await;
            let report = report(args.target, &plan, measured, batches_before, batches_after);
            if report.hot_consistent == Some(false) {
                consistent = false;
            }
            print_report(&report, args.json);
        }
    }
    Ok(consistent)
}

fn report(
    target: Target,
    plan: &Plan,
    measured: Measured,
    before: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
) -> Report {
    let ms = |q: f64| measured.latency.value_at_quantile(q) as f64 / 1000.0;
    let attempts = measured.ok + measured.refused;
    let (hot_doc, hot_final) = match measured.hot {
        Some((doc, value)) => (Some(doc), value),
        None => (None, None),
    };
    let hot_consistent = match (&hot_doc, hot_final) {
        (Some(_), Some(value)) => Some(value == measured.ok),
        (Some(_), None) if plan.verify => Some(false),
        _ => None,
    };
    Report {
        target,
        workload: plan.workload,
        connections: plan.connections,
        seconds: measured.seconds,
        ops: measured.ok,
        ops_per_second: measured.ok as f64 / measured.seconds.max(f64::EPSILON),
        refused: measured.refused,
        refused_share: if attempts == 0 {
            0.0
        } else {
            measured.refused as f64 / attempts as f64
        },
        errors: measured.errors,
        first_error: measured.first_error,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        mean_batch: match (before, after) {
            (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
            _ => None,
        },
        run_id: plan.run_id.clone(),
        hot_doc,
        hot_final,
        hot_consistent,
    }
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let mut notes = Vec::new();
    if report.workload == Workload::Hot {
        notes.push(format!("{:.0}% refused", report.refused_share * 100.0));
        match report.hot_consistent {
            Some(true) => notes.push("final value exact".into()),
            Some(false) => notes.push(format!(
                "FINAL VALUE {:?} != {} accepted",
                report.hot_final, report.ops
            )),
            None => {}
        }
    }
    if let Some(error) = &report.first_error {
        notes.push(format!("first error: {error}"));
    }
    println!(
        "{:<8} {:<9} {:>5} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>8} {:>7} {:>6}  {}",
        target_name(report.target),
        workload_name(report.workload),
        report.connections,
        report.ops_per_second,
        report.p50_ms,
        report.p99_ms,
        report.p999_ms,
        report.refused,
        report.errors,
        report
            .mean_batch
            .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
        notes.join("; "),
    );
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::Truce => "truce",
        Target::Etcd => "etcd",
        Target::Ceiling => "ceiling",
    }
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::Create => "create",
        Workload::Update => "update",
        Workload::Hot => "hot",
        Workload::Read => "read",
        Workload::ReadUnchanged => "read-304",
        Workload::Mixed => "mixed",
        Workload::Stale => "stale",
        Workload::Merge => "merge",
        Workload::Lock => "lock",
        Workload::LockHandoff => "lock-handoff",
        Workload::Txn => "txn",
        Workload::InteractiveOwn => "itxn",
        Workload::InteractiveHot => "itxn-hot",
    }
}

/// `(sum, count)` of truce's commit batch-size histogram, from `/metrics`,
/// added up over the nodes.
async fn batch_totals(target: Target, addrs: &[SocketAddr]) -> Option<(f64, f64)> {
    if target != Target::Truce {
        return None;
    }
    let mut totals = (0.0, 0.0);
    for &addr in addrs {
        let (sum, count) = node_batch_totals(addr).await?;
        totals = (totals.0 + sum, totals.1 + count);
    }
    Some(totals)
}

async fn node_batch_totals(addr: SocketAddr) -> Option<(f64, f64)> {
    let mut conn = Connection::open(addr).await.ok()?;
    let reply = conn
        .send(hyper::Method::GET, "/metrics", &[], bytes::Bytes::new())
        .await
        .ok()?;
    let text = std::str::from_utf8(&reply.body).ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    // Before the first commit the histogram is not exported yet: zero.
    Some((
        value("truce_commit_batch_size_sum").unwrap_or(0.0),
        value("truce_commit_batch_size_count").unwrap_or(0.0),
    ))
}

/// A short id unique to this run, so runs never collide on document ids.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("r{:x}", nanos & 0xffff_ffff_ffff)
}

/// The address of an `http://host:port` URL, which must be on this machine.
fn resolve_loopback(url: &str) -> Result<SocketAddr, BenchError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| BenchError::Setup(format!("{url}: only http:// URLs are supported")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| BenchError::Setup(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| BenchError::Setup(format!("{url}: no address")))?;
    if !addr.ip().is_loopback() {
        return Err(BenchError::Setup(format!(
            "{url} is not a loopback address: benchmarks only send load to this machine"
        )));
    }
    Ok(addr)
}

/// A progress bar on stderr (drawn only on a terminal).
fn progress_bar(length: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{spinner}} {{msg:<24}} [{{bar:30}}] {{pos}}/{{len}} {unit}"
    )) {
        bar.set_style(style);
    }
    bar
}
