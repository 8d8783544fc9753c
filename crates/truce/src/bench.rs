//! `truce bench`: durable conditional-write throughput against a running server.
//!
//! Each client owns a few documents and replaces them in turn with `If-Match`, so
//! every request is a real compare-and-swap that should succeed. The run reports
//! accepted writes per second, latency percentiles, refused or failed requests, and
//! the mean commit batch size the server's sequencer achieved (read from `/metrics`
//! before and after), for each number of concurrent clients.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};

/// Options of `truce bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to measure.
    #[arg(long, env = "TRUCE_URL", default_value = "http://127.0.0.1:8409")]
    pub url: String,
    /// Concurrent clients, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub connections: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Documents each client owns and updates in turn.
    #[arg(long, default_value_t = 4)]
    pub docs: usize,
    /// Approximate size of each document in bytes.
    #[arg(long, default_value_t = 256)]
    pub body_size: usize,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The result of one run.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    connections: usize,
    seconds: f64,
    writes: u64,
    writes_per_second: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    mean_batch: Option<f64>,
}

/// Runs the benchmark for each connection count.
pub async fn run(args: BenchArgs) -> ExitCode {
    if !is_loopback_url(&args.url) {
        eprintln!(
            "truce bench: only loopback targets are allowed (got {})",
            args.url
        );
        return ExitCode::from(2);
    }
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("truce bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let run_id = ulid_like();
    if !args.json {
        println!(
            "{:>11} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>10}",
            "connections",
            "writes/s",
            "writes",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "mean batch"
        );
    }
    for &connections in &args.connections {
        match run_once(&client, &args, connections, &run_id).await {
            Ok(report) => print_report(&report, args.json),
            Err(error) => {
                eprintln!("truce bench: run with {connections} connections failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn print_report(report: &RunReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        println!(
            "{:>11} {:>10.0} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>10}",
            report.connections,
            report.writes_per_second,
            report.writes,
            report.p50_ms,
            report.p99_ms,
            report.p999_ms,
            report.errors,
            report
                .mean_batch
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
        );
    }
}

async fn run_once(
    client: &reqwest::Client,
    args: &BenchArgs,
    connections: usize,
    run_id: &str,
) -> Result<RunReport, String> {
    let padding = "x".repeat(args.body_size.saturating_sub(40));
    let base = args.url.trim_end_matches('/').to_owned();
    // Create every document first, so the timed part is only conditional updates.
    let mut owned = Vec::with_capacity(connections);
    for c in 0..connections {
        let mut docs = Vec::with_capacity(args.docs);
        for d in 0..args.docs.max(1) {
            let url = format!("{base}/v1/bench/{run_id}-{connections}-{c}-{d}");
            let response = client
                .put(&url)
                .header(CONTENT_TYPE, "application/json")
                .header(IF_NONE_MATCH, "*")
                .body(format!("{{\"n\":0,\"pad\":\"{padding}\"}}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if response.status() != StatusCode::CREATED {
                return Err(format!("creating {url} answered {}", response.status()));
            }
            let etag = etag_of(&response)?;
            docs.push((url, etag));
        }
        owned.push(docs);
    }
    let before = batch_totals(client, &base).await;
    let started = Instant::now();
    let deadline = started + args.duration;
    let padding = Arc::new(padding);
    let mut tasks = Vec::with_capacity(connections);
    for docs in owned {
        let client = client.clone();
        let padding = Arc::clone(&padding);
        tasks.push(tokio::spawn(async move {
            let mut docs = docs;
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let (mut writes, mut errors, mut n) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let slot = (n as usize) % docs.len();
                n += 1;
                let (url, etag) = &mut docs[slot];
                let sent = Instant::now();
                let result = client
                    .put(url.as_str())
                    .header(CONTENT_TYPE, "application/json")
                    .header(IF_MATCH, etag.as_str())
                    .body(format!("{{\"n\":{n},\"pad\":\"{padding}\"}}"))
                    .send()
                    .await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                match result {
                    Ok(response) if response.status() == StatusCode::OK => {
                        *etag = etag_of(&response)?;
                        writes += 1;
                        let _ = histogram.record(micros.max(1));
                    }
                    Ok(_) | Err(_) => errors += 1,
                }
            }
            Ok::<_, String>((writes, errors, histogram))
        }));
    }
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let (mut writes, mut errors) = (0, 0);
    for task in tasks {
        let (w, e, h) = task.await.map_err(|e| e.to_string())??;
        writes += w;
        errors += e;
        histogram.add(&h).map_err(|e| e.to_string())?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = batch_totals(client, &base).await;
    let mean_batch = match (before, after) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
        _ => None,
    };
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(RunReport {
        connections,
        seconds,
        writes,
        writes_per_second: writes as f64 / seconds,
        errors,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        mean_batch,
    })
}

fn etag_of(response: &reqwest::Response) -> Result<String, String> {
    response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "response without ETag".to_owned())
}

/// `(sum, count)` of the server's commit batch-size histogram.
async fn batch_totals(client: &reqwest::Client, base: &str) -> Option<(f64, f64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        value("truce_commit_batch_size_sum")?,
        value("truce_commit_batch_size_count")?,
    ))
}

/// A short unique run id, so repeated runs never collide on document ids.
fn ulid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("r{nanos:x}")
}

/// Only loopback targets: benchmarks must never send load off the machine.
fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else { return false };
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]") || host.starts_with("127.")
}
