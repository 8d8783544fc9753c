//! The change feed (`GET /v1/_changes`) and per-resource watches (SPEC §6).
//!
//! Three ways to read the same feed: a JSON page, a long poll that waits for the next
//! change, and Server-Sent Events that stream changes as they commit and resume from
//! `Last-Event-ID`. All of them read pages from the store and wait on the store's
//! revision signal between pages, so a committed change is delivered exactly once and
//! in revision order. Streams and long polls end when the server shuts down.
//!
//! SSE framing: the stream opens with an `id:` line alone (its starting revision),
//! then one `change` event per change; the `id:` field (the revision) is set on the
//! last change of each revision, so a client that resumes with `Last-Event-ID` never
//! loses the rest of a revision it saw only part of.
//!
//! A watch also carries the resource's conflict events (`conflict.detected`, ...),
//! so its ids name two positions: `{revision}.{conflict event position}`. Resuming
//! with such an id resumes both; a plain revision resumes the changes, with the
//! conflict events from now.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use truce_engine::{ChangePage, ChangeQuery, CollectionName, Store};
use utoipa::{IntoParams, ToSchema};

use super::conflict_stream::{ConflictCursor, error_event, sse_event};
use crate::error::ApiError;
use crate::extract::By;
use crate::extract::{ApiQuery, ResourcePath};
use crate::openapi::{Compacted, Malformed, Unavailable};
use crate::paging::page_limit;
use crate::state::AppState;
use crate::streams::OpenStream;
use crate::wire::{ChangeItem, ChangesBody};

/// How long a long poll waits when the client does not say.
const DEFAULT_LONGPOLL: Duration = Duration::from_secs(30);

/// `feed=` values.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FeedMode {
    /// Answer at once with what there is.
    #[default]
    Normal,
    /// Wait until there is at least one change (or `timeout_ms` passes).
    Longpoll,
}

/// `GET /v1/_changes` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Only changes after this revision (default 0: from the start). `Last-Event-ID`
    /// overrides it for SSE.
    since: Option<u64>,
    /// Only this collection.
    collection: Option<String>,
    /// Page size, 1 to 1000 (default 100); a revision is never split across pages.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Attach each version's document.
    include_docs: Option<bool>,
    /// `normal` or `longpoll`.
    #[param(inline)]
    feed: Option<FeedMode>,
    /// Longest a long poll waits, in milliseconds (default 30000).
    timeout_ms: Option<u64>,
}

/// `GET /v1/{collection}/{id}/watch` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchParams {
    /// Only changes after this revision (default: from now). `Last-Event-ID` overrides it.
    since: Option<u64>,
}

/// The change feed: a page, a long poll, or an SSE stream.
#[utoipa::path(
    get,
    path = "/v1/_changes",
    tag = "changes",
    params(ChangesParams, ("Last-Event-ID" = Option<u64>, Header, description = "SSE resume point")),
    responses(
        (status = 200, description = "A page of changes, or (with `Accept: text/event-stream`) a stream of `change` events whose `id:` is the revision",
            content(
                (ChangesBody = "application/json"),
                (String = "text/event-stream"),
            )),
        Malformed, Compacted, Unavailable,
    )
)]
pub async fn changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    By(by): By,
    ApiQuery(params): ApiQuery<ChangesParams>,
) -> Result<Response, ApiError> {
    let collection = params
        .collection
        .as_deref()
        .map(CollectionName::parse)
        .transpose()?;
    let query = ChangeQuery {
        since: last_event_id(&headers)?.or(params.since).unwrap_or(0),
        collection,
        key: None,
        limit: page_limit(params.limit)?,
        include_docs: params.include_docs.unwrap_or(false),
    };
    if wants_event_stream(&headers) {
        let open = OpenStream::open(&state, "stream", &by)?;
        return start_stream(&state, query, None, open).await;
    }
    let page = match params.feed.unwrap_or_default() {
        FeedMode::Normal => state.store.changes(&query).await?,
        FeedMode::Longpoll => {
            let wait = params
                .timeout_ms
                .map_or(DEFAULT_LONGPOLL, Duration::from_millis)
                .min(state.config.longpoll_max);
            let open = OpenStream::open(&state, "longpoll", &by)?;
            long_poll(&state, query, wait, open).await?
        }
    };
    Ok(Json(page_body(page)).into_response())
}

/// Server-Sent Events of one resource's changes.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}/watch",
    tag = "changes",
    params(("collection" = String, Path), ("id" = String, Path), WatchParams,
        ("Last-Event-ID" = Option<String>, Header, description = "SSE resume point: `REVISION.POSITION` as received (or a revision)")),
    responses(
        (status = 200, description = "A stream of `change` events for this resource, of its conflict events (`conflict.detected`, `conflict.resolved`, `conflict.dismissed`) and of its lock events (`lock.acquired`, `lock.renewed`, `lock.released`, `lock.expired`, `lock.broken`); `id:` is `REVISION.POSITION`", content_type = "text/event-stream", body = String),
        Malformed, Compacted, Unavailable,
    )
)]
pub async fn watch(
    State(state): State<AppState>,
    headers: HeaderMap,
    By(by): By,
    ResourcePath(key): ResourcePath,
    ApiQuery(params): ApiQuery<WatchParams>,
) -> Result<Response, ApiError> {
    let now = *state.store.revisions().borrow();
    let events = state.store.conflict_events();
    let events_now = *events.borrow();
    let (since, after) = match watch_position(&headers)? {
        Some((revision, position)) => (revision, position.unwrap_or(events_now)),
        None => (params.since.unwrap_or(now), events_now),
    };
    let cursor = ConflictCursor::new(
        after,
        Some(key.collection.as_str().to_owned()),
        Some(key.id.as_str().to_owned()),
    )
    .with_lock_events();
    let query = ChangeQuery {
        since,
        collection: None,
        key: Some(key),
        limit: page_limit(None)?,
        include_docs: false,
    };
    let open = OpenStream::open(&state, "stream", &by)?;
    start_stream(&state, query, Some((cursor, events)), open).await
}

/// A watch's `Last-Event-ID`: `{revision}.{conflict event position}`, or a
/// revision alone.
fn watch_position(headers: &HeaderMap) -> Result<Option<(u64, Option<u64>)>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let parsed = match text.split_once('.') {
        Some((revision, position)) => revision
            .parse()
            .ok()
            .zip(position.parse().ok())
            .map(|(r, p)| (r, Some(p))),
        None => text.parse().ok().map(|r| (r, None)),
    };
    parsed.map(Some).ok_or_else(|| {
        ApiError::Malformed(
            "Last-Event-ID of a watch must be REVISION.POSITION (or a revision)".into(),
        )
    })
}

fn page_body(page: ChangePage) -> ChangesBody {
    ChangesBody {
        last_revision: page.last_revision,
        changes: page.changes.into_iter().map(ChangeItem::from).collect(),
    }
}

/// `Last-Event-ID`, which must be a revision number.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    last_event_number(headers, "a revision number")
}

/// `Last-Event-ID` as a number (`what` says which, for the 400).
pub(crate) fn last_event_number(headers: &HeaderMap, what: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::Malformed(format!("Last-Event-ID must be {what}")))
        })
        .transpose()
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Waits until the query selects at least one change, the wait ends, or the server
/// shuts down; answers the (possibly empty) page.
async fn long_poll(
    state: &AppState,
    mut query: ChangeQuery,
    wait: Duration,
    _open: OpenStream,
) -> Result<ChangePage, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut revisions = state.store.revisions();
    loop {
        let page = state.store.changes(&query).await?;
        if !page.changes.is_empty() {
            return Ok(page);
        }
        query.since = page.last_revision;
        let since = query.since;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Ok(page),
            () = state.shutdown.cancelled() => return Ok(page),
            changed = revisions.wait_for(|r| *r > since) => {
                if changed.is_err() {
                    return Ok(page);
                }
            }
        }
    }
}

/// Starts an SSE stream of changes, and of conflict events when `conflicts` is
/// given (a watch). The first page is read before answering, so a `since` in
/// compacted history is a 410 problem rather than a stream that ends at once, and
/// every change committed after the response headers arrive is in the stream.
async fn start_stream(
    state: &AppState,
    query: ChangeQuery,
    conflicts: Option<(ConflictCursor, watch::Receiver<u64>)>,
    open: OpenStream,
) -> Result<Response, ApiError> {
    let first = state.store.changes(&query).await?;
    let start = query.since;
    let mut feed = Feed {
        _open: open,
        store: Arc::clone(&state.store),
        query,
        revisions: state.store.revisions(),
        shutdown: state.shutdown.clone(),
        pending: VecDeque::new(),
        finished: false,
        conflicts,
    };
    // An `id:` alone, before any change: the stream's starting position. Clients
    // (browsers included) keep it as their last event id, so a reconnect before the
    // first change still resumes from where the stream began.
    let opening = feed.position(start);
    feed.pending.push_back(Event::default().id(opening));
    feed.queue(first);
    feed.queue_conflicts().await;
    let stream = futures_util::stream::unfold(feed, Feed::next_event);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.config.sse_keepalive))
        .into_response())
}

/// The state of one SSE stream.
struct Feed {
    _open: OpenStream,
    store: Arc<dyn Store>,
    query: ChangeQuery,
    revisions: watch::Receiver<u64>,
    shutdown: CancellationToken,
    pending: VecDeque<Event>,
    finished: bool,
    /// For a watch: the resource's conflict events, and the signal of new ones.
    conflicts: Option<(ConflictCursor, watch::Receiver<u64>)>,
}

impl Feed {
    /// The SSE id for having delivered changes through `revision` (and, in a
    /// watch, the conflict events the cursor passed).
    fn position(&self, revision: u64) -> String {
        match &self.conflicts {
            Some((cursor, _)) => format!("{revision}.{}", cursor.after),
            None => revision.to_string(),
        }
    }

    /// Queues the conflict events after the cursor (a watch only).
    async fn queue_conflicts(&mut self) {
        let Some((cursor, _)) = self.conflicts.as_mut() else {
            return;
        };
        match cursor.read(self.store.as_ref()).await {
            Ok(found) => {
                let revision = self.query.since;
                for (position, event) in found {
                    self.pending
                        .push_back(sse_event(&event, format!("{revision}.{position}")));
                }
            }
            Err(error) => {
                self.pending.push_back(error_event(error));
                self.finished = true;
            }
        }
    }

    /// Turns a page into events and moves the stream's position past it. Pages never
    /// split a revision, so the last event of each revision is known here.
    fn queue(&mut self, page: ChangePage) {
        let revisions: Vec<u64> = page.changes.iter().map(|c| c.revision).collect();
        for (i, change) in page.changes.into_iter().enumerate() {
            let revision = change.revision;
            let ends_revision = revisions.get(i + 1) != Some(&revision);
            let Ok(json) = serde_json::to_string(&ChangeItem::from(change)) else {
                continue;
            };
            let mut event = Event::default().event("change").data(json);
            if ends_revision {
                event = event.id(self.position(revision));
            }
            self.pending.push_back(event);
        }
        self.query.since = page.last_revision;
    }

    async fn next_event(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            let since = self.query.since;
            /// What woke the stream.
            enum Woke {
                Shutdown,
                Conflicts(bool),
                Changes(bool),
            }
            let woke = {
                let conflict_signal = async {
                    match self.conflicts.as_mut() {
                        Some((cursor, events)) => {
                            let after = cursor.after;
                            events.wait_for(|p| *p > after).await.is_ok()
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = self.shutdown.cancelled() => Woke::Shutdown,
                    alive = conflict_signal => Woke::Conflicts(alive),
                    changed = self.revisions.wait_for(|r| *r > since) => Woke::Changes(changed.is_ok()),
                }
            };
            match woke {
                Woke::Shutdown | Woke::Changes(false) => {
                    self.finished = true;
                    continue;
                }
                Woke::Conflicts(alive) => {
                    self.finished = !alive;
                    self.queue_conflicts().await;
                    continue;
                }
                Woke::Changes(true) => {}
            }
            match self.store.changes(&self.query).await {
                Ok(page) => self.queue(page),
                Err(error) => {
                    self.pending.push_back(error_event(error));
                    self.finished = true;
                }
            }
        }
    }
}
