//! The conflict stream (`GET /v1/_conflicts/stream`, SPEC §7): Server-Sent Events
//! of conflict events as their batches commit, resumable from `Last-Event-ID`.
//!
//! Events are read from the store's event log after a position and the stream
//! waits on the store's event signal between reads, so every event is delivered
//! once and in order; the `id:` of each is its position. Without `since` or
//! `Last-Event-ID` the stream starts from now. The event log also holds lock
//! events, which only the per-resource watch takes: it uses the same cursor for
//! the resource's conflict and lock events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use truce_engine::{
    CollectionName, DocId, EVENTS_WATERMARK_KEY, EngineError, SideTable, Store, decode_watermark,
    event_matches, event_position,
};
use utoipa::IntoParams;

use super::changes::last_event_number;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::openapi::{Compacted, Malformed, Unavailable};
use crate::problem::problem_body;
use crate::state::AppState;
use crate::streams::OpenStream;

/// Events read from the store at a time.
const PAGE: usize = 256;

/// `GET /v1/_conflicts/stream` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConflictStreamParams {
    /// Only events after this position (default: from now). `Last-Event-ID`
    /// overrides it.
    since: Option<u64>,
    /// Only events about resources of this collection.
    collection: Option<String>,
    /// Only events about resources with this id.
    id: Option<String>,
}

/// Where a reader of the event log stands, and which events it wants.
pub(crate) struct ConflictCursor {
    /// The last position read (delivered or skipped by the filter).
    pub after: u64,
    collection: Option<String>,
    id: Option<String>,
    /// Lock events too (the watch stream), not only conflict events.
    with_locks: bool,
}

impl ConflictCursor {
    /// A cursor after `after`, for events matching the filters.
    pub(crate) fn new(after: u64, collection: Option<String>, id: Option<String>) -> Self {
        Self {
            after,
            collection,
            id,
            with_locks: false,
        }
    }

    /// The same cursor, taking the resource's lock events too.
    pub(crate) fn with_lock_events(self) -> Self {
        Self {
            with_locks: true,
            ..self
        }
    }

    /// Reads every event after the cursor that the filters select, and moves the
    /// cursor past everything read. A cursor behind what retention removed is a 410
    /// (events would be missing).
    pub(crate) async fn read(
        &mut self,
        store: &dyn Store,
    ) -> Result<Vec<(u64, Value)>, EngineError> {
        let watermark = store
            .side_record(SideTable::ConflictEvents, &EVENTS_WATERMARK_KEY)
            .await?
            .map_or(0, |stored| decode_watermark(&stored));
        if self.after < watermark {
            return Err(EngineError::HistoryCompacted {
                what: format!("conflict event position {}", self.after),
                oldest: watermark,
            });
        }
        let mut found = Vec::new();
        loop {
            let after = self.after.to_be_bytes();
            let page = store
                .side_records(SideTable::ConflictEvents, Some(&after), PAGE)
                .await?;
            let full = page.len() == PAGE;
            for (key, stored) in page {
                let Some(position) = event_position(&key) else {
                    continue;
                };
                self.after = position;
                let event: Value = serde_json::from_slice(&stored).map_err(|e| {
                    EngineError::Internal(format!("conflict event {position} unreadable: {e}"))
                })?;
                let wanted = self.with_locks
                    || event["event"]
                        .as_str()
                        .is_some_and(|name| name.starts_with("conflict."));
                if wanted && event_matches(&event, self.collection.as_deref(), self.id.as_deref()) {
                    found.push((position, event));
                }
            }
            if !full {
                return Ok(found);
            }
        }
    }
}

/// The `error` event that ends a stream: the problem, without instance or request
/// id (the stream outlives its request).
pub(crate) fn error_event(error: EngineError) -> Event {
    let body = problem_body(&ApiError::from(error).problem(), None);
    Event::default().event("error").data(body.to_string())
}

/// An SSE event for a stored conflict event, with `id` as its `id:` field.
pub(crate) fn sse_event(event: &Value, id: String) -> Event {
    let name = event["event"].as_str().unwrap_or("conflict");
    Event::default().event(name).id(id).data(event.to_string())
}

/// Server-Sent Events of conflict events: `conflict.detected`,
/// `conflict.resolved` and `conflict.dismissed`, each with its position as `id:`.
#[utoipa::path(
    get,
    path = "/v1/_conflicts/stream",
    tag = "conflicts",
    params(ConflictStreamParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "SSE resume point: the last position received")),
    responses(
        (status = 200, description = "A stream of conflict events; `id:` is the event's position", content_type = "text/event-stream", body = String),
        Malformed, Compacted, Unavailable,
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::extract::By(by): crate::extract::By,
    ApiQuery(params): ApiQuery<ConflictStreamParams>,
) -> Result<Response, ApiError> {
    if let Some(collection) = &params.collection {
        CollectionName::parse(collection)?;
    }
    if let Some(id) = &params.id {
        DocId::parse(id)?;
    }
    let open = OpenStream::open(&state, "conflicts", &by)?;
    let events = state.store.conflict_events();
    let now = *events.borrow();
    let start = last_event_number(&headers, "the position of a conflict event")?
        .or(params.since)
        .unwrap_or(now);
    let mut cursor = ConflictCursor::new(start, params.collection, params.id);
    let first = cursor.read(state.store.as_ref()).await?;
    let mut pending = VecDeque::new();
    // An `id:` alone first: the stream's starting position, kept by clients as
    // their last event id, so a reconnect before the first event resumes here.
    pending.push_back(Event::default().id(start.to_string()));
    pending.extend(first.iter().map(|(p, e)| sse_event(e, p.to_string())));
    let feed = ConflictFeed {
        _open: open,
        store: Arc::clone(&state.store),
        cursor,
        events,
        shutdown: state.shutdown.clone(),
        pending,
        finished: false,
    };
    let stream = futures_util::stream::unfold(feed, ConflictFeed::next_event);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.config.sse_keepalive))
        .into_response())
}

/// The state of one conflict stream.
struct ConflictFeed {
    /// Its permit (released when the stream ends).
    _open: OpenStream,
    store: Arc<dyn Store>,
    cursor: ConflictCursor,
    events: watch::Receiver<u64>,
    shutdown: CancellationToken,
    pending: VecDeque<Event>,
    finished: bool,
}

impl ConflictFeed {
    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            let after = self.cursor.after;
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.finished = true;
                    continue;
                }
                changed = self.events.wait_for(|p| *p > after) => {
                    if changed.is_err() {
                        self.finished = true;
                        continue;
                    }
                }
            }
            match self.cursor.read(self.store.as_ref()).await {
                Ok(found) => self
                    .pending
                    .extend(found.iter().map(|(p, e)| sse_event(e, p.to_string()))),
                Err(error) => {
                    self.pending.push_back(error_event(error));
                    self.finished = true;
                }
            }
        }
    }
}
