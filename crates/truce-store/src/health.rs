//! Whether the store accepts writes, shared by the sequencer (which decides) and the
//! store's readiness check (which reports).
//!
//! After a failed durable step the sequencer refuses writes until a probe brings the
//! store back to a known-good state (see [`crate::recovery`]); reads go on from the
//! last published snapshot meanwhile. [`Health`] is what `/readyz` and the metrics
//! see of that; [`Outage`] is the sequencer's own record of it, with the back-off
//! between probes.

use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use truce_engine::StorageError;

/// First wait between a fault and the first probe, doubled after each failed probe.
const FIRST_PROBE: Duration = Duration::from_millis(20);
/// Longest wait between probes.
const LAST_PROBE: Duration = Duration::from_secs(2);

/// The store's write state as others see it.
#[derive(Debug, Default)]
pub(crate) struct Health(RwLock<Option<StorageError>>);

impl Health {
    /// A healthy store.
    pub fn new() -> Self {
        metrics::gauge!("truce_store_writable").set(1.0);
        Self::default()
    }

    /// Why writes are refused, if they are.
    pub fn fault(&self) -> Option<StorageError> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, fault: Option<StorageError>) {
        metrics::gauge!("truce_store_writable").set(if fault.is_some() { 0.0 } else { 1.0 });
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

/// An outage in progress, as the sequencer tracks it.
#[derive(Debug)]
pub(crate) struct Outage {
    /// What the last failure was (the answer to writes meanwhile).
    pub error: StorageError,
    /// Whether redb itself failed, so its in-memory state is unknown and it must be
    /// opened again from the file.
    pub database_suspect: bool,
    /// When it began.
    pub since: Instant,
    /// When the next probe is due.
    pub next_probe: Instant,
    backoff: Duration,
}

impl Outage {
    /// Starts an outage (or extends the one in progress) after a failure; logs the
    /// stop of writes once.
    pub fn begin(
        current: Option<Outage>,
        error: StorageError,
        database_suspect: bool,
        health: &Health,
    ) -> Outage {
        let reason = error.reason().unwrap_or("io-error");
        metrics::counter!("truce_storage_faults_total", "reason" => reason).increment(1);
        let outage = match current {
            Some(mut outage) => {
                outage.error = error;
                outage.database_suspect |= database_suspect;
                outage
            }
            None => {
                tracing::error!(%error, reason, "storage fault: writes are refused until the store recovers; reads go on");
                let now = Instant::now();
                Outage {
                    error,
                    database_suspect,
                    since: now,
                    next_probe: now + FIRST_PROBE,
                    backoff: FIRST_PROBE,
                }
            }
        };
        health.set(Some(outage.error.clone()));
        outage
    }

    /// A probe failed with `error`: wait longer before the next one.
    pub fn probe_failed(&mut self, error: StorageError, health: &Health) {
        tracing::debug!(%error, "storage probe failed");
        self.error = error;
        self.backoff = (self.backoff * 2).min(LAST_PROBE);
        self.next_probe = Instant::now() + self.backoff;
        health.set(Some(self.error.clone()));
    }

    /// The store is back: logs the resumption.
    pub fn end(self, health: &Health) {
        tracing::info!(
            down_ms = self.since.elapsed().as_millis() as u64,
            "storage recovered: writes resume"
        );
        health.set(None);
    }
}
