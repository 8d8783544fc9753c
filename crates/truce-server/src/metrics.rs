//! The process-wide Prometheus recorder.
//!
//! `metrics` has one global recorder per process; it is installed on first use so
//! several servers in one process (as in tests) share it.
//!
//! Histogram samples are buffered until folded into their buckets. A scrape of
//! `/metrics` folds them, but nobody has to scrape, so a background thread does it
//! every few seconds; without it the buffers grew by every request's sample for as
//! long as the process ran.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Batch-size buckets.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the recorder if no recorder is installed yet. Call it before opening
/// a store, so the store's own metrics reach it from the start.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("truce_commit_batch_size".into()), BATCH)
            });
        match builder.and_then(|b| b.install_recorder()) {
            Ok(handle) => {
                spawn_upkeep(handle.clone());
                export_zeros();
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed");
                None
            }
        }
    });
}

/// Counters that only move when something goes wrong, exported at 0 from the start
/// so an alert on "went up" works before the first failure (and a scrape shows
/// they exist).
const FAILURE_COUNTERS: &[&str] = &[
    "truce_commit_failures_total",
    "truce_write_queue_full_total",
    "truce_handler_panics_total",
];

/// Registers the failure counters at 0. (The store sets its own gauge,
/// `truce_store_writable`, when it opens: install the recorder before that.)
fn export_zeros() {
    for name in FAILURE_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for reason in truce_engine::StorageError::FAULT_REASONS {
        metrics::counter!("truce_storage_faults_total", "reason" => reason).increment(0);
    }
    for class in ["reads", "writes"] {
        metrics::counter!("truce_rate_limited_total", "class" => class).increment(0);
    }
}

/// How often buffered histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the thread that folds histogram samples for the life of the process.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("truce-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = started {
        tracing::warn!(%error, "metrics upkeep thread not started; only scrapes fold histograms");
    }
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    install();
    HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// One route's request metrics on one thread: `(method, status, requests,
/// seconds)`, a handful of entries scanned in order.
type RouteHandles = Vec<(&'static str, u16, Counter, Histogram)>;

thread_local! {
    /// The request metrics' handles this thread has used, by route. Registering
    /// a labelled metric builds its key (label strings, a hash, a registry
    /// lookup) on every call; a handle is the metric itself. Routes, methods and
    /// statuses are few, so this stays small.
    static REQUEST_HANDLES: RefCell<HashMap<String, RouteHandles>> = RefCell::new(HashMap::new());
}

/// Counts one answered request and records its latency
/// (`truce_http_requests_total` by route, method and status;
/// `truce_http_request_seconds` by route and method).
pub fn record_request(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let installed = HANDLE.get().is_some_and(Option::is_some);
    if !installed {
        // Not cached: a handle taken before the recorder exists records nowhere.
        let (requests, seconds) = request_handles(route, method, status);
        requests.increment(1);
        seconds.record(elapsed.as_secs_f64());
        return;
    }
    REQUEST_HANDLES.with_borrow_mut(|by_route| {
        let handles = match by_route.get_mut(route) {
            Some(handles) => handles,
            None => by_route.entry(route.to_owned()).or_default(),
        };
        let found = handles
            .iter()
            .position(|(m, s, _, _)| *m == method && *s == status);
        let index = found.unwrap_or_else(|| {
            let (requests, seconds) = request_handles(route, method, status);
            handles.push((method, status, requests, seconds));
            handles.len() - 1
        });
        if let Some((_, _, requests, seconds)) = handles.get(index) {
            requests.increment(1);
            seconds.record(elapsed.as_secs_f64());
        }
    });
}

/// The request metrics' handles for one route, method and status.
fn request_handles(route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
    let requests = metrics::counter!(
        "truce_http_requests_total",
        "route" => route.to_owned(),
        "method" => method,
        "status" => status.to_string()
    );
    let seconds = metrics::histogram!(
        "truce_http_request_seconds",
        "route" => route.to_owned(),
        "method" => method
    );
    (requests, seconds)
}
