//! Following the change feed (or one resource) as a stream that survives dropped
//! connections.
//!
//! The stream reads Server-Sent Events. When the connection ends or fails, it
//! reconnects with `Last-Event-ID` set to the last revision it finished, after a
//! back-off, and drops the changes it already yielded (a revision interrupted in the
//! middle is sent again from its start), so the caller sees every change exactly
//! once, in order. A problem answer (such as 410 when the position is older than the
//! feed's retention) ends the stream with that error, and so does failing to
//! reconnect `max_attempts` times in a row (`Error::GaveUp`).

use std::collections::{HashSet, VecDeque};

use futures_util::{Stream, StreamExt};
use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};

use crate::client::{Client, changes_query, full_jitter, problem_of, resource_path};
use crate::error::{Error, Problem};
use crate::types::{Change, ChangesOptions, ConflictEvent};

/// Where a stream reads from.
#[derive(Debug, Clone)]
enum Source {
    Feed(ChangesOptions),
    Resource { path: String, since: Option<u64> },
    Conflicts { query: Vec<(&'static str, String)> },
}

/// What a stream yields: changes, or (from the conflict stream) conflict events.
#[derive(Debug, Clone)]
enum Item {
    Change(Change),
    Conflict(ConflictEvent),
}

struct Follow {
    client: Client,
    source: Source,
    /// The last revision fully received.
    last_id: Option<String>,
    /// Changes of the revision being received, to drop repeats after a reconnect.
    seen_revision: u64,
    seen_keys: HashSet<(String, String)>,
    body: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    /// Bytes received but not yet ending in a newline (a chunk may end inside a
    /// UTF-8 character).
    buffer: Vec<u8>,
    /// Why the last connection attempt failed.
    last_failure: Option<Error>,
    event: PendingEvent,
    ready: VecDeque<Result<Item, Error>>,
    failures: u32,
    done: bool,
}

#[derive(Default)]
struct PendingEvent {
    name: String,
    id: Option<String>,
    data: String,
}

impl Client {
    /// Follows the change feed: every change after `options.since` (default: from the
    /// beginning), live, resuming after dropped connections.
    pub fn changes(
        &self,
        options: ChangesOptions,
    ) -> impl Stream<Item = Result<Change, Error>> + Send + 'static {
        let last_id = options.since.map(|s| s.to_string());
        changes_only(follow(self.clone(), Source::Feed(options), last_id))
    }

    /// Follows the conflict stream (SPEC §7): every conflict event after `since`
    /// (`Some(0)`: from the first one kept; `None`: from when the stream is first
    /// polled, which is when it connects), of `collection` and `id` when given,
    /// live, resuming after dropped connections without loss or repeat.
    pub fn conflict_events(
        &self,
        collection: Option<&str>,
        id: Option<&str>,
        since: Option<u64>,
    ) -> impl Stream<Item = Result<ConflictEvent, Error>> + Send + 'static {
        let query = [("collection", collection), ("id", id)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v.to_owned())))
            .collect();
        follow(
            self.clone(),
            Source::Conflicts { query },
            since.map(|s| s.to_string()),
        )
        .filter_map(|item| {
            std::future::ready(match item {
                Ok(Item::Conflict(event)) => Some(Ok(event)),
                Ok(Item::Change(_)) => None,
                Err(error) => Some(Err(error)),
            })
        })
    }

    /// Follows one document's changes (from now, or after `since`).
    pub fn watch(
        &self,
        collection: &str,
        id: &str,
        since: Option<u64>,
    ) -> impl Stream<Item = Result<Change, Error>> + Send + 'static {
        let source = Source::Resource {
            path: format!("{}/watch", resource_path(collection, id)),
            since,
        };
        changes_only(follow(self.clone(), source, since.map(|s| s.to_string())))
    }
}

/// The changes of a followed stream (a watch's conflict events only move its
/// resume position).
fn changes_only(
    items: impl Stream<Item = Result<Item, Error>> + Send + 'static,
) -> impl Stream<Item = Result<Change, Error>> + Send + 'static {
    items.filter_map(|item| {
        std::future::ready(match item {
            Ok(Item::Change(change)) => Some(Ok(change)),
            Ok(Item::Conflict(_)) => None,
            Err(error) => Some(Err(error)),
        })
    })
}

fn follow(
    client: Client,
    source: Source,
    last_id: Option<String>,
) -> impl Stream<Item = Result<Item, Error>> + Send + 'static {
    let state = Follow::new(client, source, last_id);
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.ready.pop_front() {
                return Some((item, state));
            }
            if state.done {
                return None;
            }
            match state.body.as_mut() {
                None => state.connect().await,
                Some(body) => match body.next().await {
                    Some(Ok(chunk)) => {
                        state.failures = 0;
                        state.buffer.extend_from_slice(&chunk);
                        state.parse();
                    }
                    // The connection ended or broke: reconnect from the last id.
                    Some(Err(_)) | None => state.body = None,
                },
            }
        }
    })
}

impl Follow {
    fn new(client: Client, source: Source, last_id: Option<String>) -> Self {
        Self {
            client,
            source,
            last_id,
            seen_revision: 0,
            seen_keys: HashSet::new(),
            body: None,
            buffer: Vec::new(),
            last_failure: None,
            event: PendingEvent::default(),
            ready: VecDeque::new(),
            failures: 0,
            done: false,
        }
    }

    /// Opens the event stream, after a back-off when earlier attempts failed.
    async fn connect(&mut self) {
        let policy = self.client.retry_policy();
        if self.failures >= policy.max_attempts {
            let last = self
                .last_failure
                .take()
                .unwrap_or_else(|| Error::Decode("the stream could not be reopened".into()));
            self.ready.push_back(Err(Error::GaveUp {
                attempts: self.failures,
                last: Box::new(last),
            }));
            self.done = true;
            return;
        }
        if self.failures > 0 {
            let delay = policy
                .schedule()
                .nth(self.failures as usize - 1)
                .unwrap_or(policy.max_delay);
            tokio::time::sleep(full_jitter(delay)).await;
        }
        self.buffer.clear();
        self.event = PendingEvent::default();
        let (path, query) = match &self.source {
            Source::Feed(options) => {
                let mut options = options.clone();
                options.since = None;
                ("/v1/_changes".to_owned(), changes_query(&options))
            }
            Source::Resource { path, since } => {
                let query = match (&self.last_id, since) {
                    (None, Some(since)) => vec![("since", since.to_string())],
                    _ => Vec::new(),
                };
                (path.clone(), query)
            }
            // Without a position the server starts from now, and its opening `id:`
            // becomes the position to resume from.
            Source::Conflicts { query } => ("/v1/_conflicts/stream".to_owned(), query.clone()),
        };
        let mut request = self
            .client
            .request(Method::GET, &path)
            .header(ACCEPT, "text/event-stream")
            .query(&query);
        if let Some(id) = &self.last_id {
            request = request.header("last-event-id", id);
        }
        match request.send().await {
            Ok(response) if response.status() == StatusCode::OK => {
                self.body = Some(response.bytes_stream().boxed());
            }
            Ok(response)
                if response.status().is_server_error()
                    || response.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                self.failures += 1;
            }
            Ok(response) => {
                self.ready
                    .push_back(Err(Error::Api(Box::new(problem_of(response).await))));
                self.done = true;
            }
            Err(error) => {
                self.failures += 1;
                self.last_failure = Some(Error::Transport(error));
            }
        }
    }

    /// Turns complete lines of the buffer into events.
    fn parse(&mut self) {
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.buffer.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let line = text.trim_end_matches('\r').to_owned();
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                self.dispatch(event);
            } else if line.starts_with(':') {
                // A heartbeat.
            } else if let Some((field, value)) = line.split_once(':') {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => self.event.name = value.to_owned(),
                    "id" => self.event.id = Some(value.to_owned()),
                    "data" => {
                        if !self.event.data.is_empty() {
                            self.event.data.push('\n');
                        }
                        self.event.data.push_str(value);
                    }
                    _ => {}
                }
            }
        }
    }

    fn dispatch(&mut self, event: PendingEvent) {
        match event.name.as_str() {
            // The server opens every stream with its position (an `id:` alone).
            "" if event.data.is_empty() => {
                if let Some(id) = event.id {
                    self.last_id = Some(id);
                }
            }
            "change" => match serde_json::from_str::<Change>(&event.data) {
                Ok(change) => {
                    if self.is_new(&change) {
                        self.ready.push_back(Ok(Item::Change(change)));
                    }
                    if let Some(id) = event.id {
                        self.last_id = Some(id);
                    }
                }
                Err(error) => {
                    self.ready.push_back(Err(Error::Decode(error.to_string())));
                    self.done = true;
                }
            },
            name if name.starts_with("conflict.") => {
                if matches!(self.source, Source::Conflicts { .. }) {
                    match serde_json::from_str::<ConflictEvent>(&event.data) {
                        Ok(conflict) => self.ready.push_back(Ok(Item::Conflict(conflict))),
                        Err(error) => {
                            self.ready.push_back(Err(Error::Decode(error.to_string())));
                            self.done = true;
                        }
                    }
                }
                if let Some(id) = event.id {
                    self.last_id = Some(id);
                }
            }
            "error" => {
                let problem = Problem::from_answer(0, event.data.as_bytes(), None);
                let status = problem
                    .body
                    .get("status")
                    .and_then(serde_json::Value::as_u64);
                let problem = Problem {
                    status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
                    ..problem
                };
                self.ready.push_back(Err(Error::Api(Box::new(problem))));
                self.done = true;
            }
            _ => {}
        }
    }

    /// Whether `change` was not yielded before (a reconnect repeats the revision it
    /// interrupted).
    fn is_new(&mut self, change: &Change) -> bool {
        if change.revision < self.seen_revision {
            return false;
        }
        if change.revision > self.seen_revision {
            self.seen_revision = change.revision;
            self.seen_keys.clear();
        }
        self.seen_keys
            .insert((change.collection.clone(), change.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow_state() -> Follow {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        Follow::new(client, Source::Feed(ChangesOptions::default()), None)
    }

    #[test]
    fn events_split_anywhere_are_parsed_whole() {
        let mut state = follow_state();
        let stream = "id: 0\n\nevent: change\ndata: {\"revision\":1,\"collection\":\"c\",\"id\":\"é\",\"version\":1,\"etag\":\"\\\"1-a\\\"\",\"op\":\"create\",\"at\":\"t\"}\nid: 1\n\n: keep-alive\n\n";
        let bytes = stream.as_bytes();
        // Split inside the two-byte "é".
        let split = stream.find('é').unwrap() + 1;
        state.buffer.extend_from_slice(&bytes[..split]);
        state.parse();
        assert!(state.ready.is_empty());
        assert_eq!(state.last_id.as_deref(), Some("0"));
        state.buffer.extend_from_slice(&bytes[split..]);
        state.parse();
        let Item::Change(change) = state.ready.pop_front().unwrap().unwrap() else {
            panic!("not a change");
        };
        assert_eq!(change.id, "é");
        assert_eq!(state.last_id.as_deref(), Some("1"));
    }

    #[test]
    fn conflict_events_move_a_watch_and_are_yielded_by_the_conflict_stream() {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let event = "event: conflict.detected\nid: 4.2\ndata: {\"position\":2,\"event\":\"conflict.detected\",\"conflict_id\":\"01A\",\"href\":\"/v1/_conflicts/01A\",\"type\":\"precondition-failed\",\"status\":\"open\",\"resource\":{\"collection\":\"c\",\"id\":\"x\"}}\n\n";
        // A watch only moves its resume position past the event.
        let mut watch = Follow::new(
            client.clone(),
            Source::Resource {
                path: "/v1/c/x/watch".into(),
                since: None,
            },
            None,
        );
        watch.buffer.extend_from_slice(event.as_bytes());
        watch.parse();
        assert!(watch.ready.is_empty());
        assert_eq!(watch.last_id.as_deref(), Some("4.2"));
        // The conflict stream yields it.
        let mut stream = Follow::new(client, Source::Conflicts { query: Vec::new() }, None);
        stream
            .buffer
            .extend_from_slice(event.replace("4.2", "2").as_bytes());
        stream.parse();
        let Item::Conflict(conflict) = stream.ready.pop_front().unwrap().unwrap() else {
            panic!("not a conflict event");
        };
        assert_eq!(
            (conflict.position, conflict.conflict_id.as_str()),
            (2, "01A")
        );
        assert_eq!(stream.last_id.as_deref(), Some("2"));
    }

    #[test]
    fn a_repeated_revision_is_dropped() {
        let mut state = follow_state();
        let change = |revision: u64, id: &str| Change {
            revision,
            collection: "c".into(),
            id: id.into(),
            version: 1,
            etag: String::new(),
            op: "create".into(),
            at: String::new(),
            doc: None,
        };
        assert!(state.is_new(&change(5, "a")));
        assert!(state.is_new(&change(5, "b")));
        assert!(!state.is_new(&change(5, "a")));
        assert!(!state.is_new(&change(4, "z")));
        assert!(state.is_new(&change(6, "a")));
    }
}
