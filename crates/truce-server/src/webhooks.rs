//! The webhook delivery worker: posts what waits in the outbox, off the
//! sequencer's thread, and records every attempt through the store.
//!
//! The worker reads the outbox from the published state, posts every row that is
//! due (at most [`PARALLEL`] at a time), and commits what each attempt leaves
//! ([`truce_engine::after_attempt`]): a delivered row is removed, a failed one
//! rescheduled, and the attempt logged. It wakes when a conflict event commits
//! (only events make outbox rows), when the earliest rescheduled row is due, and
//! ends with the server. Rows survive restarts, so deliveries are at least once.

use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use truce_engine::{
    Attempt, Delivery, SideTable, SideWrite, Store, Subscription, Timestamp, after_attempt,
    read_delivery, sign,
};

use crate::state::AppState;

/// Deliveries in flight at once.
const PARALLEL: usize = 16;
/// Outbox rows read at a time.
const PAGE: usize = 512;
/// The longest the worker sleeps without looking (a safety net; it is woken).
const IDLE: Duration = Duration::from_secs(30);

/// Runs until the server shuts down.
pub async fn delivery_loop(state: AppState) {
    let Some(http) = http_client(state.config.webhook_timeout) else {
        tracing::error!("no HTTP client for webhook deliveries; none will be made");
        return;
    };
    let mut events = state.store.conflict_events();
    loop {
        events.mark_unchanged();
        let wait = match deliver_due(&state, &http).await {
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
    http: &reqwest::Client,
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
            if delivery.next_attempt_ms <= now.millis() {
                due.push(delivery);
            } else {
                next_due = Some(next_due.map_or(delivery.next_attempt_ms, |n| {
                    n.min(delivery.next_attempt_ms)
                }));
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
            .commit_side(vec![SideWrite {
                table: SideTable::Outbox,
                key,
                value: None,
            }])
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
    store.commit_side(writes).await?;
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
