//! Webhook subscriptions (SPEC §7): which conflict events go where, the durable
//! outbox they wait in, how a delivery is signed, and what an attempt leaves.
//!
//! - A subscription names an http(s) URL, the events it wants (all three by
//!   default), optionally a collection and an id, and a secret for signatures.
//! - When a conflict event is appended, one outbox row per matching subscription
//!   is written in the same commit ([`outbox_rows`]), holding a copy of the event:
//!   an event is never lost between its commit and its delivery, and a row does
//!   not depend on the event log's retention.
//! - A delivery worker posts the event and reports the attempt; [`after_attempt`]
//!   decides what to store: a delivered row is removed, a failed one is kept with
//!   its next attempt after an exponential back-off with full jitter, until
//!   `retry_for` has passed since the first attempt (then it is given up). Every
//!   attempt is appended to the subscription's delivery log.
//! - Deliveries are at least once: a crash after the receiver answered but before
//!   the row was removed sends the event again, with the same `Truce-Delivery-Id`.
//! - Signature: `Truce-Signature: t={unix seconds},v1={hex HMAC-SHA256(secret,
//!   "{t}.{raw body}")}`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::EngineError;
use crate::events::{CONFLICT_EVENTS, event_matches};
use crate::name::{CollectionName, DocId};
use crate::rules::{SideTable, SideWrite};
use crate::time::Timestamp;

/// Longest secret accepted.
const MAX_SECRET: usize = 256;
/// Longest URL accepted.
const MAX_URL: usize = 2048;

/// A subscription as stored (the secret included; it is never served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// Where deliveries are posted.
    pub url: String,
    /// The event names it wants.
    pub events: Vec<String>,
    /// Only events about this collection.
    pub collection: Option<String>,
    /// Only events about resources with this id.
    pub doc_id: Option<String>,
    /// The HMAC key of signatures.
    pub secret: String,
    /// When it was made.
    pub created_at_ms: u64,
}

impl Subscription {
    /// Parses a `POST /v1/_subscriptions` body; every problem is reported (422).
    pub fn parse(id: String, body: &Value, now: Timestamp) -> Result<Self, EngineError> {
        let Some(fields) = body.as_object() else {
            return Err(EngineError::invalid(
                "",
                "a subscription must be a JSON object",
            ));
        };
        let mut errors = Vec::new();
        for name in fields.keys() {
            if !["url", "events", "collection", "id", "secret"].contains(&name.as_str()) {
                errors.push((
                    format!("/{name}"),
                    format!(
                        "{name} is not a subscription field (url, events, collection, id, secret)"
                    ),
                ));
            }
        }
        let url = match fields.get("url").and_then(Value::as_str) {
            Some(url) if url.len() <= MAX_URL && is_http_url(url) => url.to_owned(),
            _ => {
                errors.push((
                    "/url".into(),
                    "url must be an http:// or https:// URL with a host".into(),
                ));
                String::new()
            }
        };
        let events = match fields.get("events") {
            None => CONFLICT_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
            Some(Value::Array(list)) if !list.is_empty() => {
                let names: Vec<String> = list
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|v| CONFLICT_EVENTS.contains(v))
                    .map(str::to_owned)
                    .collect();
                if names.len() != list.len() {
                    errors.push((
                        "/events".into(),
                        format!("events are among {}", CONFLICT_EVENTS.join(", ")),
                    ));
                }
                names
            }
            Some(_) => {
                errors.push((
                    "/events".into(),
                    "events must be a non-empty array of event names".into(),
                ));
                Vec::new()
            }
        };
        let text = |name: &str, errors: &mut Vec<(String, String)>| match fields.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push((format!("/{name}"), format!("{name} must be a string")));
                None
            }
        };
        let collection = text("collection", &mut errors);
        if let Some(c) = &collection
            && let Err(e) = CollectionName::parse(c)
        {
            errors.push(("/collection".into(), e.to_string()));
        }
        let doc_id = text("id", &mut errors);
        if let Some(i) = &doc_id
            && let Err(e) = DocId::parse(i)
        {
            errors.push(("/id".into(), e.to_string()));
        }
        let secret = match text("secret", &mut errors) {
            Some(secret) if !secret.is_empty() && secret.len() <= MAX_SECRET => secret,
            _ => {
                errors.push((
                    "/secret".into(),
                    format!("secret must be a string of 1 to {MAX_SECRET} bytes"),
                ));
                String::new()
            }
        };
        if !errors.is_empty() {
            return Err(EngineError::Invalid { errors });
        }
        Ok(Self {
            id,
            url,
            events,
            collection,
            doc_id,
            secret,
            created_at_ms: now.millis(),
        })
    }

    /// The record to store.
    pub fn record(&self) -> Result<SideWrite, EngineError> {
        Ok(SideWrite {
            table: SideTable::Subscriptions,
            key: self.id.clone().into_bytes(),
            value: Some(encode(self)?.into()),
        })
    }

    /// The subscription as served: everything but the secret.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "collection": self.collection,
            "doc_id": self.doc_id,
            "created_at": Timestamp::from_millis(self.created_at_ms),
            "deliveries": format!("/v1/_subscriptions/{}/deliveries", self.id),
        })
    }

    /// Reads a stored subscription.
    pub fn read(stored: &[u8]) -> Option<Self> {
        serde_json::from_slice(stored).ok()
    }

    /// Whether an event (as stored) is one this subscription wants.
    pub fn wants(&self, event: &Value) -> bool {
        event["event"]
            .as_str()
            .is_some_and(|name| self.events.iter().any(|e| e == name))
            && event_matches(event, self.collection.as_deref(), self.doc_id.as_deref())
    }
}

/// Whether `url` is an absolute http(s) URL with a host.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty()
            && !host.contains('@')
            && !url.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    serde_json::to_vec(value).map_err(|e| EngineError::Internal(format!("not encodable: {e}")))
}

/// One event waiting to be delivered to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The subscription.
    pub subscription: String,
    /// The event's position.
    pub position: u64,
    /// The same on every attempt of this event to this subscription.
    pub delivery_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was made (0: none yet).
    pub first_attempt_ms: u64,
    /// Not before this instant.
    pub next_attempt_ms: u64,
    /// The event, as posted.
    pub event: Value,
    /// The node making the attempt now, set by [`claim`] and cleared by what the
    /// attempt leaves: while it runs, no other node attempts this row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A node's claim on one outbox row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The claiming node.
    pub node: String,
    /// Until when (the node's clock): a node that crashed mid-attempt leaves the
    /// row to the others once this passes.
    pub until_ms: u64,
}

/// Claims the stored outbox row `stored` for `node` until `until`, if it is due
/// at `now` and no other node holds a live lease on it: the row written back
/// with the lease, and the delivery to attempt. Claims go through the write
/// path, so of several nodes looking at one row exactly one gets it; a lease
/// that runs out (its node crashed) lets another node try, so deliveries stay
/// at least once.
pub fn claim(
    stored: &[u8],
    node: &str,
    now: Timestamp,
    until: Timestamp,
) -> Option<(SideWrite, Delivery)> {
    let delivery = read_delivery(stored)?;
    if delivery.next_attempt_ms > now.millis() {
        return None;
    }
    if let Some(lease) = &delivery.lease
        && lease.node != node
        && lease.until_ms > now.millis()
    {
        return None;
    }
    let claimed = Delivery {
        lease: Some(Lease {
            node: node.to_owned(),
            until_ms: until.millis(),
        }),
        ..delivery
    };
    let write = SideWrite {
        table: SideTable::Outbox,
        key: outbox_key(&claimed.subscription, claimed.position),
        value: Some(encode(&claimed).ok()?.into()),
    };
    Some((write, claimed))
}

/// When a stored row is next worth a look for `node`: when it is due, or when
/// another node's lease on it runs out, whichever is later.
pub fn next_look_ms(delivery: &Delivery, node: &str) -> u64 {
    let leased = delivery
        .lease
        .as_ref()
        .filter(|l| l.node != node)
        .map_or(0, |l| l.until_ms);
    delivery.next_attempt_ms.max(leased)
}

/// The outbox key of `position` for subscription `sid`: ordered by subscription,
/// then by position.
pub fn outbox_key(sid: &str, position: u64) -> Vec<u8> {
    let mut key = subscription_prefix(sid);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The key prefix of everything kept per subscription in the outbox and the
/// delivery log: its id and a 0 byte (ids are letters and digits).
pub fn subscription_prefix(sid: &str) -> Vec<u8> {
    let mut prefix = sid.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// What deleting subscription `sid` removes: the subscription, and the given keys
/// of its waiting deliveries (`Outbox`) and of its delivery log (`Deliveries`).
pub fn subscription_removal(
    sid: &str,
    waiting: impl IntoIterator<Item = Vec<u8>>,
    logged: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<SideWrite> {
    let remove = |table, key| SideWrite {
        table,
        key,
        value: None,
    };
    std::iter::once(remove(SideTable::Subscriptions, sid.as_bytes().to_vec()))
        .chain(
            waiting
                .into_iter()
                .map(|key| remove(SideTable::Outbox, key)),
        )
        .chain(
            logged
                .into_iter()
                .map(|key| remove(SideTable::Deliveries, key)),
        )
        .collect()
}

/// The outbox rows a new event makes: one per subscription (stored, in
/// `subscriptions`) that wants it.
pub fn outbox_rows(
    subscriptions: &[Subscription],
    event: &Value,
    position: u64,
    now: Timestamp,
) -> Vec<SideWrite> {
    subscriptions
        .iter()
        .filter(|s| s.wants(event))
        .filter_map(|s| {
            let delivery = Delivery {
                subscription: s.id.clone(),
                position,
                delivery_id: format!("{}-{position}", s.id),
                attempts: 0,
                first_attempt_ms: 0,
                next_attempt_ms: now.millis(),
                event: event.clone(),
                lease: None,
            };
            Some(SideWrite {
                table: SideTable::Outbox,
                key: outbox_key(&s.id, position),
                value: Some(encode(&delivery).ok()?.into()),
            })
        })
        .collect()
}

/// Reads an outbox row.
pub fn read_delivery(stored: &[u8]) -> Option<Delivery> {
    serde_json::from_slice(stored).ok()
}

/// `Truce-Signature` for `body` signed with `secret` at `t` (Unix seconds).
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes keys of any length; this cannot happen.
        return format!("t={t}");
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// How long and how often a failing delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRule {
    /// The back-off after the first failure; it doubles after each.
    pub first_delay: Duration,
    /// The longest back-off.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub retry_for: Duration,
}

impl Default for RetryRule {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            retry_for: Duration::from_secs(24 * 3600),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status: u16,
    },
    /// It answered something else, or could not be reached.
    Failed {
        /// The status, when it answered.
        status: Option<u16>,
        /// What went wrong, for the delivery log.
        error: String,
    },
}

/// The delivery log key of an attempt: by subscription, then time, then event.
pub fn log_key(sid: &str, at: Timestamp, position: u64, attempt: u32) -> Vec<u8> {
    let mut key = subscription_prefix(sid);
    key.extend_from_slice(&at.millis().to_be_bytes());
    key.extend_from_slice(&position.to_be_bytes());
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

/// When the attempt logged under `key` (a [`log_key`]) was made.
pub fn log_key_at(key: &[u8]) -> Option<Timestamp> {
    let split = key.iter().position(|b| *b == 0)?;
    let at = key.get(split + 1..split + 9)?;
    Some(Timestamp::from_millis(u64::from_be_bytes(
        at.try_into().ok()?,
    )))
}

/// What an attempt leaves: the outbox row removed (delivered, or given up) or
/// rescheduled, and an entry in the delivery log. `jitter` in `[0, 1)` scales the
/// back-off (full jitter). Returns the writes and the outcome's name
/// (`delivered`, `failed` or `gave_up`).
pub fn after_attempt(
    delivery: &Delivery,
    attempt: &Attempt,
    now: Timestamp,
    rule: &RetryRule,
    jitter: f64,
) -> Result<(Vec<SideWrite>, &'static str), EngineError> {
    let key = outbox_key(&delivery.subscription, delivery.position);
    let attempts = delivery.attempts + 1;
    let first = if delivery.first_attempt_ms == 0 {
        now.millis()
    } else {
        delivery.first_attempt_ms
    };
    let mut writes = Vec::new();
    let (outcome, status, error, next) = match attempt {
        Attempt::Delivered { status } => ("delivered", Some(*status), None, None),
        Attempt::Failed { status, error } => {
            let elapsed = Duration::from_millis(now.millis().saturating_sub(first));
            if elapsed >= rule.retry_for {
                ("gave_up", *status, Some(error.clone()), None)
            } else {
                let exponent = attempts.saturating_sub(1).min(30);
                let ceiling = rule
                    .first_delay
                    .saturating_mul(1 << exponent)
                    .min(rule.max_delay);
                let delay = ceiling
                    .mul_f64(jitter.clamp(0.0, 1.0))
                    .max(Duration::from_millis(10));
                let next = now.millis() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                ("failed", *status, Some(error.clone()), Some(next))
            }
        }
    };
    match next {
        None => writes.push(SideWrite {
            table: SideTable::Outbox,
            key,
            value: None,
        }),
        Some(next) => {
            let again = Delivery {
                attempts,
                first_attempt_ms: first,
                next_attempt_ms: next,
                lease: None,
                ..delivery.clone()
            };
            writes.push(SideWrite {
                table: SideTable::Outbox,
                key,
                value: Some(encode(&again)?.into()),
            });
        }
    }
    let entry = json!({
        "delivery_id": delivery.delivery_id,
        "position": delivery.position,
        "event": delivery.event["event"],
        "conflict_id": delivery.event["conflict_id"],
        "attempt": attempts,
        "at": now,
        "outcome": outcome,
        "status": status,
        "error": error,
        "next_attempt_at": next.map(Timestamp::from_millis),
    });
    writes.push(SideWrite {
        table: SideTable::Deliveries,
        key: log_key(&delivery.subscription, now, delivery.position, attempts),
        value: Some(encode(&entry)?.into()),
    });
    Ok((writes, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(body: Value) -> Result<Subscription, EngineError> {
        Subscription::parse("01SUB".into(), &body, Timestamp::from_millis(1))
    }

    #[test]
    fn subscriptions_are_checked_field_by_field() {
        let ok = subscription(json!({"url": "http://127.0.0.1:9/hook", "secret": "s"})).unwrap();
        assert_eq!(ok.events.len(), 3);
        assert!(ok.view().get("secret").is_none());
        let Err(EngineError::Invalid { errors }) = subscription(json!({
            "url": "ftp://x", "events": ["conflict.exploded"], "secret": "", "collection": "a b",
            "colour": 1
        })) else {
            panic!("accepted");
        };
        let pointers: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            ["/colour", "/url", "/events", "/collection", "/secret"]
        );
        assert!(subscription(json!({"url": "https://user@host/", "secret": "s"})).is_err());
    }

    #[test]
    fn a_subscription_gets_the_events_it_wants() {
        let sub = subscription(json!({"url": "http://h/", "secret": "s",
            "events": ["conflict.detected"], "collection": "a"}))
        .unwrap();
        let event = |name: &str, collection: &str| json!({"event": name, "resource": {"collection": collection, "id": "x"}});
        let now = Timestamp::from_millis(5);
        let rows = outbox_rows(
            std::slice::from_ref(&sub),
            &event("conflict.detected", "a"),
            7,
            now,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key, outbox_key("01SUB", 7));
        let delivery = read_delivery(rows[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(delivery.delivery_id, "01SUB-7");
        assert!(
            outbox_rows(
                std::slice::from_ref(&sub),
                &event("conflict.resolved", "a"),
                8,
                now
            )
            .is_empty()
        );
        assert!(outbox_rows(&[sub], &event("conflict.detected", "b"), 9, now).is_empty());
    }

    #[test]
    fn deleting_a_subscription_removes_what_it_keeps() {
        let writes = subscription_removal("01SUB", [outbox_key("01SUB", 3)], [vec![9]]);
        let tables: Vec<(SideTable, bool)> = writes
            .iter()
            .map(|w| (w.table, w.value.is_none()))
            .collect();
        assert_eq!(
            tables,
            [
                (SideTable::Subscriptions, true),
                (SideTable::Outbox, true),
                (SideTable::Deliveries, true)
            ]
        );
        assert!(outbox_key("01SUB", 3).starts_with(&subscription_prefix("01SUB")));
        assert!(!outbox_key("01SUBX", 3).starts_with(&subscription_prefix("01SUB")));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as "{t}.{body}".
        let signature = sign("Jefe", 0, b"");
        assert!(signature.starts_with("t=0,v1="));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(signature, format!("t=0,v1={expected}"));
        // The RFC's own vector, to pin the primitive.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let rfc: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            rfc,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_worked_example_of_the_docs_holds() {
        // docs/HTTP.md, "Verifying a signature": the same secret, t and body.
        let body = br#"{"position":1,"event":"conflict.detected","conflict_id":"01KBG6Z4J3W4T1V9R6H2Y8C5QN"}"#;
        assert_eq!(
            sign("whsec-example", 1_764_700_000, body),
            "t=1764700000,v1=29592f7bb3e97bf34c72f9caf5e46049b0c93cab9c21983ad6c814220b5514e4"
        );
    }

    #[test]
    fn failed_attempts_back_off_then_give_up() {
        let rule = RetryRule {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            retry_for: Duration::from_secs(60),
        };
        let mut delivery = Delivery {
            subscription: "01SUB".into(),
            position: 3,
            delivery_id: "01SUB-3".into(),
            attempts: 0,
            first_attempt_ms: 0,
            next_attempt_ms: 0,
            event: json!({"event": "conflict.detected"}),
            lease: None,
        };
        let failed = Attempt::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
        };
        let mut now = Timestamp::from_millis(1_000_000);
        let mut delays = Vec::new();
        for _ in 0..4 {
            let (writes, outcome) =
                after_attempt(&delivery, &failed, now, &rule, 0.999_999).unwrap();
            assert_eq!(outcome, "failed");
            assert_eq!(writes[1].table, SideTable::Deliveries);
            delivery = read_delivery(writes[0].value.as_ref().unwrap()).unwrap();
            delays.push((delivery.next_attempt_ms - now.millis()) / 1000);
            now = Timestamp::from_millis(delivery.next_attempt_ms);
        }
        // 1 s, 2 s, 4 s, then capped at 4 s (just under, with the jitter near 1).
        assert_eq!(delays, [0, 1, 3, 3]);
        assert_eq!(delivery.attempts, 4);
        let late = Timestamp::from_millis(delivery.first_attempt_ms + 60_000);
        let (writes, outcome) = after_attempt(&delivery, &failed, late, &rule, 0.5).unwrap();
        assert_eq!((outcome, writes[0].value.is_none()), ("gave_up", true));
        let (writes, outcome) = after_attempt(
            &delivery,
            &Attempt::Delivered { status: 204 },
            now,
            &rule,
            0.5,
        )
        .unwrap();
        assert_eq!((outcome, writes[0].value.is_none()), ("delivered", true));
        assert_eq!(log_key_at(&writes[1].key), Some(now));
    }

    #[test]
    fn one_node_at_a_time_claims_a_due_row_until_its_lease_runs_out() {
        let row = Delivery {
            subscription: "01SUB".into(),
            position: 7,
            delivery_id: "01SUB-7".into(),
            attempts: 0,
            first_attempt_ms: 0,
            next_attempt_ms: 1_000,
            event: json!({"event": "conflict.detected"}),
            lease: None,
        };
        let stored = serde_json::to_vec(&row).unwrap();
        let at = Timestamp::from_millis;
        // Not due yet: nobody claims it.
        assert!(claim(&stored, "a", at(999), at(5_000)).is_none());
        let (write, claimed) = claim(&stored, "a", at(1_000), at(5_000)).unwrap();
        assert_eq!(write.key, outbox_key("01SUB", 7));
        assert_eq!(claimed.lease.as_ref().map(|l| l.until_ms), Some(5_000));
        let leased = write.value.unwrap();
        // Node b waits for a's lease; a may claim again (a retry of its own).
        assert!(claim(&leased, "b", at(4_999), at(9_000)).is_none());
        assert!(claim(&leased, "a", at(2_000), at(6_000)).is_some());
        let leased_row = read_delivery(&leased).unwrap();
        assert_eq!(next_look_ms(&leased_row, "b"), 5_000);
        assert_eq!(next_look_ms(&leased_row, "a"), 1_000);
        // a crashed: once the lease ran out, b takes the row over.
        let (_, taken) = claim(&leased, "b", at(5_000), at(9_000)).unwrap();
        assert_eq!(taken.lease.unwrap().node, "b");
        // What an attempt leaves clears the lease.
        let failed = Attempt::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
        };
        let (writes, _) =
            after_attempt(&claimed, &failed, at(1_500), &RetryRule::default(), 0.5).unwrap();
        let again = read_delivery(writes[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(again.lease, None);
    }
}
