//! Conflict events (SPEC §7 "Notification"): one event each time a conflict
//! record is written, in commit order, for the conflict stream, the watch stream
//! and webhook deliveries.
//!
//! A record written `open` is `conflict.detected`; a record closed by a retry, by
//! taking a side, or at once by a conflict policy (`auto_merged`, `overwritten`) is
//! `conflict.resolved`; a dismissed one is `conflict.dismissed`. Events are side
//! records keyed by a position the backend assigns (1, 2, 3, ... in commit order,
//! never reused): a reader that resumes after position P misses nothing and sees
//! nothing twice. An event carries a summary of the record; the record itself is
//! at `href`.
//!
//! The same log, with the same positions, holds lock events (`lock.*`, made by
//! `locks`): the resource's watch stream carries both kinds in commit order, the
//! conflict stream and webhooks only conflict events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conflict::ResourceRef;
use crate::rules::{SideTable, SideWrite};

/// The event names, as SSE `event:` fields and webhook `events` filters.
pub const CONFLICT_EVENTS: [&str; 3] = [
    "conflict.detected",
    "conflict.resolved",
    "conflict.dismissed",
];

/// One conflict event as stored and sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictEvent {
    /// Its position in the event log.
    pub position: u64,
    /// `conflict.detected`, `conflict.resolved` or `conflict.dismissed`.
    pub event: &'static str,
    /// The record's id.
    pub conflict_id: String,
    /// Where the record is read.
    pub href: String,
    /// The record's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The record's status after the write.
    pub status: String,
    /// The resource.
    pub resource: ResourceRef,
    /// `resolution` for a resolved record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// The versions the record names.
    pub base_version: Option<u64>,
    /// The resource's version when the record was made.
    pub current_version: Option<u64>,
    /// Who made the write the event is about.
    pub by: Option<String>,
    /// When the record entered this state (RFC 3339).
    pub at: Option<String>,
}

/// Everything that follows from writing a conflict record: its event (to store
/// at `position`), the log line and the metric labels, all made from the
/// record's [`RecordFacts`]. This runs on the writer thread for every refusal.
#[derive(Debug, Clone)]
pub struct RecordWritten {
    /// The event, as a side record.
    pub event: SideWrite,
    /// Its log line.
    pub line: EventLine,
    /// `(collection, type, outcome)` for the conflict metric.
    pub labels: (String, String, String),
}

impl RecordWritten {
    /// The event as JSON, for the outbox rows of the subscriptions that want it
    /// (made only when there are subscriptions).
    pub fn event_value(&self) -> Value {
        self.event
            .value
            .as_deref()
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or(Value::Null)
    }
}

/// The fields of a conflict record that its event, log line and metric labels
/// use. The rules that make a record hand these over with it, so the writer
/// does not read back what it has just serialised; a record changed as JSON (a
/// resolution, a retry closing it) is read for them, the rest of it (the
/// attempted body above all) skipped unparsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordFacts {
    /// The record's id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Its status after this write.
    pub status: String,
    /// The resource it is about.
    #[serde(default)]
    pub resource: ResourceRef,
    /// How it was resolved, once it is.
    #[serde(default)]
    pub resolution: Option<String>,
    /// The version the write was based on.
    #[serde(default)]
    pub base_version: Option<u64>,
    /// The resource's version when the record was made.
    #[serde(default)]
    pub current_version: Option<u64>,
    /// Who sent the write.
    #[serde(default)]
    pub by: Option<String>,
    /// Who resolved or dismissed it.
    #[serde(default)]
    pub closed_by: Option<String>,
    /// The request that made the record.
    #[serde(default)]
    pub request_id: Option<String>,
    /// When it was resolved (RFC 3339).
    #[serde(default)]
    pub resolved_at: Option<String>,
    /// When it was dismissed (RFC 3339).
    #[serde(default)]
    pub dismissed_at: Option<String>,
    /// When it was made (RFC 3339).
    #[serde(default)]
    pub detected_at: Option<String>,
}

impl RecordFacts {
    /// The facts of the stored record `stored`; `None` for a value that is not a
    /// readable record.
    pub fn read(stored: &[u8]) -> Option<Self> {
        serde_json::from_slice(stored).ok()
    }

    /// What writing the record makes, with its event at `position`.
    pub fn written(self, position: u64) -> Option<RecordWritten> {
        let outcome = match (self.status.as_str(), &self.resolution) {
            ("resolved", resolution) => resolution.clone().unwrap_or_default(),
            (status, _) => status.to_owned(),
        };
        let labels = (self.resource.collection.clone(), self.kind.clone(), outcome);
        let request_id = self.request_id.clone().unwrap_or_default();
        let event = self.event(position);
        let mut line = line_of(&event);
        line.request_id = request_id;
        Some(RecordWritten {
            event: SideWrite {
                table: SideTable::ConflictEvents,
                key: position.to_be_bytes().to_vec(),
                value: Some(serde_json::to_vec(&event).ok()?.into()),
            },
            line,
            labels,
        })
    }

    /// The event of the record's state, at `position`.
    fn event(self, position: u64) -> ConflictEvent {
        let event = match self.status.as_str() {
            "open" => "conflict.detected",
            "dismissed" => "conflict.dismissed",
            _ => "conflict.resolved",
        };
        let by = match self.closed_by {
            Some(closer) if self.status != "open" => Some(closer),
            _ => self.by,
        };
        let at = self.resolved_at.or(self.dismissed_at).or(self.detected_at);
        ConflictEvent {
            position,
            event,
            href: format!("/v1/_conflicts/{}", self.id),
            conflict_id: self.id,
            kind: self.kind,
            status: self.status,
            resource: self.resource,
            resolution: self.resolution,
            base_version: self.base_version,
            current_version: self.current_version,
            by,
            at,
        }
    }
}

/// The key under which the event log keeps its watermark: the highest position
/// compaction removed (position 0 is never an event).
pub const EVENTS_WATERMARK_KEY: [u8; 8] = [0; 8];

/// What the log line of a conflict event says: which record, of which resource,
/// the rule (the record's type) and the versions it stood between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    /// The event name.
    pub event: String,
    /// The record.
    pub conflict_id: String,
    /// The resource's collection.
    pub collection: String,
    /// The resource's id.
    pub id: String,
    /// The rule: the refusal's slug, or `merged` / `overwritten`.
    pub kind: String,
    /// The record's status.
    pub status: String,
    /// The version the write was based on.
    pub base_version: Option<u64>,
    /// The version current when it was judged.
    pub current_version: Option<u64>,
    /// The request whose refusal (or policy outcome) made the record.
    pub request_id: String,
}

/// The log line of an event.
fn line_of(event: &ConflictEvent) -> EventLine {
    EventLine {
        event: event.event.to_owned(),
        conflict_id: event.conflict_id.clone(),
        collection: event.resource.collection.clone(),
        id: event.resource.id.clone(),
        kind: event.kind.clone(),
        status: event.status.clone(),
        base_version: event.base_version,
        current_version: event.current_version,
        request_id: String::new(),
    }
}

/// The stored watermark: events up to `through` were removed.
pub fn encode_watermark(through: u64) -> Vec<u8> {
    serde_json::json!({"compacted_through": through})
        .to_string()
        .into_bytes()
}

/// The position a stored watermark names (0 when unreadable).
pub fn decode_watermark(stored: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(stored)
        .ok()
        .and_then(|v| v["compacted_through"].as_u64())
        .unwrap_or(0)
}

/// When a stored event's record entered its state.
pub fn event_at(stored: &[u8]) -> Option<crate::time::Timestamp> {
    let event: Value = serde_json::from_slice(stored).ok()?;
    crate::time::Timestamp::parse_rfc3339(event["at"].as_str()?)
}

/// The position of a stored event key (8 bytes, big-endian).
pub fn event_position(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Whether a stored event is about `collection` (and `id`), when given.
pub fn event_matches(event: &Value, collection: Option<&str>, id: Option<&str>) -> bool {
    collection.is_none_or(|c| event["resource"]["collection"] == c)
        && id.is_none_or(|i| event["resource"]["id"] == i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_of(record: Value) -> Value {
        let side = RecordFacts::read(record.to_string().as_bytes())
            .unwrap()
            .written(7)
            .unwrap()
            .event;
        assert_eq!(event_position(&side.key), Some(7));
        serde_json::from_slice(side.value.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn each_state_of_a_record_names_its_event() {
        let record = json!({"id": "01A", "type": "precondition-failed", "status": "open",
            "resource": {"collection": "c", "id": "x"}, "base_version": 1,
            "current_version": 2, "by": "alice"});
        let detected = event_of(record.clone());
        assert_eq!(detected["event"], "conflict.detected");
        assert_eq!(detected["href"], "/v1/_conflicts/01A");
        assert_eq!(detected["position"], 7);
        assert!(event_matches(&detected, Some("c"), Some("x")));
        assert!(!event_matches(&detected, Some("c"), Some("y")));

        let mut resolved = record.clone();
        resolved["status"] = json!("resolved");
        resolved["resolution"] = json!("ours");
        resolved["closed_by"] = json!("bob");
        let resolved = event_of(resolved);
        assert_eq!(
            (
                resolved["event"].clone(),
                resolved["resolution"].clone(),
                resolved["by"].clone()
            ),
            (json!("conflict.resolved"), json!("ours"), json!("bob"))
        );
        let mut merged = record.clone();
        merged["status"] = json!("auto_merged");
        assert_eq!(event_of(merged)["event"], "conflict.resolved");
        let mut dismissed = record;
        dismissed["status"] = json!("dismissed");
        assert_eq!(event_of(dismissed)["event"], "conflict.dismissed");
    }
}
