//! The webhook delivery worker: posts what waits in the outbox, off the
//! sequencer's thread, and records every attempt through the store.
//!
//! The worker reads the outbox from the published state, claims the rows that are
//! due for this node through the write path ([`Store::claim_deliveries`]: with
//! several nodes on one database, one node at a time attempts a row), posts what
//! it got (at most [`PARALLEL`] at a time), and commits what each attempt leaves
//! ([`truce_engine::after_attempt`]): a delivered row is removed, a failed one
//! rescheduled, and the attempt logged. A node that crashes mid-attempt leaves
//! its claim to run out ([`LEASE_MARGIN`] past twice the delivery timeout),
//! then another node tries; the same node, restarted, takes it over at once. It wakes when a conflict event commits
//! (only events make outbox rows), when the earliest rescheduled row is due, and
//! ends with the server. Rows survive restarts, so deliveries are at least once.

use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use truce_engine::{
    Attempt, Delivery, SideCommit, SideTable, SideWrite, Store, Subscription, Timestamp,
    after_attempt, next_look_ms, read_delivery, sign,
};

use crate::state::AppState;

/// Deliveries in flight at once.
const PARALLEL: usize = 16;
/// Outbox rows read at a time.
const PAGE: usize = 512;
/// The longest the worker sleeps without looking (a safety net; it is woken).
const IDLE: Duration = Duration::from_secs(30);
/// How much longer than one delivery's time limit a claim lasts.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// This node's name in its claims on outbox rows: its host name and listening
/// address, the same after a restart, so a restarted node takes over its own
/// claims at once (a crashed node's claims wait for their lease to run out only
/// when it does not come back).
pub fn node_name(listening: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    format!("{host}/{listening}")
}

/// Runs until the server shuts down; `node` names this node in its claims.
pub async fn delivery_loop(state: AppState, node: String) {
    let mut http = DeliveryClient::new(state.config.webhook_timeout);
    let mut events = state.store.conflict_events();
    loop {
        events.mark_unchanged();
        let wait = match deliver_due(&state, &mut http, &node).await {
            Ok(next_due) => next_due.unwrap_or(IDLE).min(IDLE),
            Err(error) => {
                tracing::warn!(%error, "webhook delivery pass failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            changed = events.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The HTTP client for deliveries, made when the first delivery is due:
/// making one loads the system's root certificates, which a node that never
/// delivers need not pay for at start.
struct DeliveryClient {
    timeout: Duration,
    client: Option<reqwest::Client>,
}

impl DeliveryClient {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            client: None,
        }
    }

    /// The client, made now if it was not yet.
    fn get(&mut self) -> Option<&reqwest::Client> {
        if self.client.is_none() {
            self.client = http_client(self.timeout);
        }
        self.client.as_ref()
    }
}

/// How long to wait before trying again to make an HTTP client that could not
/// be made.
const NO_CLIENT_RETRY: Duration = Duration::from_secs(30);

/// An HTTP client for deliveries: no redirects (a receiver answers for itself),
/// a time limit per delivery.
fn http_client(timeout: Duration) -> Option<reqwest::Client> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("truce/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}

/// Posts every due row; returns how long until the next one is due.
async fn deliver_due(
    state: &AppState,
    http: &mut DeliveryClient,
    node: &str,
) -> Result<Option<Duration>, truce_engine::EngineError> {
    let now = Timestamp::now();
    let mut due = Vec::new();
    let mut next_due: Option<u64> = None;
    let mut depth = 0usize;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = state
            .store
            .side_records(SideTable::Outbox, after.as_deref(), PAGE)
            .await?;
        let full = page.len() == PAGE;
        for (key, stored) in page {
            depth += 1;
            after = Some(key);
            let Some(delivery) = read_delivery(&stored) else {
                continue;
            };
            let look = next_look_ms(&delivery, node);
            if look <= now.millis() {
                due.push(key_of(&delivery));
            } else {
                next_due = Some(next_due.map_or(look, |n| n.min(look)));
            }
        }
        if !full {
            break;
        }
    }
    metrics::gauge!("truce_outbox_depth").set(depth as f64);
    if due.is_empty() {
        return Ok(
            next_due.map(|at| Duration::from_millis(at.saturating_sub(Timestamp::now().millis())))
        );
    }
    let Some(http) = http.get() else {
        tracing::error!("no HTTP client for webhook deliveries; trying again later");
        return Ok(Some(NO_CLIENT_RETRY));
    };
    let lease = state.config.webhook_timeout.saturating_mul(2) + LEASE_MARGIN;
    let until =
        Timestamp::from_millis(now.millis() + u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
    let due = state
        .store
        .claim_deliveries(due, node.to_owned(), until)
        .await?;
    if due.is_empty() {
        // Other nodes claimed them first: look again once their claims could
        // have run out or been settled.
        return Ok(Some(Duration::from_secs(1)));
    }
    let store = Arc::clone(&state.store);
    let attempts = futures_util::stream::iter(due)
        .map(|delivery| attempt(store.as_ref(), http, state, delivery))
        .buffer_unordered(PARALLEL);
    let results: Vec<Result<(), truce_engine::EngineError>> = attempts.collect().await;
    if let Some(error) = results.into_iter().find_map(Result::err) {
        return Err(error);
    }
    // The attempts rescheduled rows: look again at once to learn when next.
    Ok(Some(Duration::ZERO))
}

/// The outbox key of a delivery.
fn key_of(delivery: &Delivery) -> Vec<u8> {
    truce_engine::outbox_key(&delivery.subscription, delivery.position)
}

/// Makes one delivery attempt and commits what it leaves.
async fn attempt(
    store: &dyn Store,
    http: &reqwest::Client,
    state: &AppState,
    delivery: Delivery,
) -> Result<(), truce_engine::EngineError> {
    let subscription = store
        .side_record(SideTable::Subscriptions, delivery.subscription.as_bytes())
        .await?
        .and_then(|stored| Subscription::read(&stored));
    let Some(subscription) = subscription else {
        // Deleted since the row was written: nothing to deliver to.
        let key = truce_engine::outbox_key(&delivery.subscription, delivery.position);
        return store
            .commit_side(SideCommit::new(vec![SideWrite {
                table: SideTable::Outbox,
                key,
                value: None,
            }]))
            .await;
    };
    let body = serde_json::to_vec(&delivery.event).unwrap_or_default();
    let t = Timestamp::now().secs();
    let mut request = http
        .post(&subscription.url)
        .header(CONTENT_TYPE, "application/json")
        .header("truce-signature", sign(&subscription.secret, t, &body))
        .body(body);
    for (name, value) in [
        ("truce-delivery-id", delivery.delivery_id.as_str()),
        (
            "truce-event",
            delivery.event["event"].as_str().unwrap_or_default(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            request = request.header(name, value);
        }
    }
    let result = match request.send().await {
        Ok(response) if response.status().is_success() => Attempt::Delivered {
            status: response.status().as_u16(),
        },
        Ok(response) => Attempt::Failed {
            status: Some(response.status().as_u16()),
            error: format!("the receiver answered {}", response.status()),
        },
        Err(error) => Attempt::Failed {
            status: None,
            error: if error.is_timeout() {
                "the receiver did not answer in time".to_owned()
            } else {
                "the receiver could not be reached".to_owned()
            },
        },
    };
    let (writes, outcome) = after_attempt(
        &delivery,
        &result,
        Timestamp::now(),
        &state.config.webhook_retry,
        fastrand::f64(),
    )?;
    // Only while the subscription exists: one deleted during the attempt took
    // its waiting rows and log with it, and they must not come back.
    let commit = SideCommit::new(writes)
        .while_present(SideTable::Subscriptions, delivery.subscription.as_bytes());
    match store.commit_side(commit).await {
        Err(truce_engine::EngineError::NotFound { .. }) => return Ok(()),
        other => other?,
    }
    metrics::counter!("truce_webhook_deliveries_total", "outcome" => outcome).increment(1);
    if outcome == "gave_up" {
        tracing::warn!(
            subscription = %delivery.subscription,
            delivery_id = %delivery.delivery_id,
            attempts = delivery.attempts + 1,
            "webhook delivery given up"
        );
    }
    Ok(())
}
