//! The client's errors: a problem the server answered (typed by its slug), or a
//! failure to reach it.

use std::time::Duration;

use serde_json::{Map, Value};
use truce_engine::ProblemKind;

/// An RFC 9457 problem answered by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The problem kind, when the slug is one this client knows.
    pub kind: Option<ProblemKind>,
    /// The slug from `type` (`/problems/{slug}`).
    pub slug: String,
    /// The HTTP status.
    pub status: u16,
    /// The fixed title.
    pub title: String,
    /// What happened.
    pub detail: String,
    /// `current_version`, on conflicts.
    pub current_version: Option<u64>,
    /// `current_etag`, on conflicts.
    pub current_etag: Option<String>,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<Duration>,
    /// The whole body, for the other extension members.
    pub body: Map<String, Value>,
}

impl Problem {
    /// Builds a problem from a status and a problem+json body (or anything else).
    pub(crate) fn from_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let map = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let text = |name: &str| map.get(name).and_then(Value::as_str).map(str::to_owned);
        let slug = text("type")
            .and_then(|t| t.rsplit('/').next().map(str::to_owned))
            .unwrap_or_default();
        Self {
            kind: ProblemKind::from_slug(&slug),
            title: text("title").unwrap_or_else(|| format!("HTTP {status}")),
            detail: text("detail").unwrap_or_default(),
            current_version: map.get("current_version").and_then(Value::as_u64),
            current_etag: text("current_etag"),
            slug,
            status,
            retry_after,
            body: map,
        }
    }
}

/// A 409 `merge-conflict` (the `merge` policy found overlapping changes), read.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeConflict {
    /// The version the refused write was based on.
    pub base_version: u64,
    /// The colliding paths (JSON pointers).
    pub paths: Vec<String>,
    /// Each colliding path with its value in the base, on our side and on theirs
    /// (`None`: absent).
    pub overlaps: Vec<MergeOverlap>,
    /// The record that keeps the refused write.
    pub conflict_id: Option<String>,
}

/// One colliding path of a [`MergeConflict`].
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOverlap {
    /// The JSON pointer.
    pub path: String,
    /// Its value in the base.
    pub base: Option<Value>,
    /// Its value in the refused write.
    pub ours: Option<Value>,
    /// Its current value.
    pub theirs: Option<Value>,
}

impl Problem {
    /// The conflict record this refusal created (SPEC §7), if any.
    pub fn conflict_id(&self) -> Option<&str> {
        self.body.get("conflict_id").and_then(Value::as_str)
    }

    /// The paths and values of a `merge-conflict`; `None` for any other problem.
    pub fn merge_conflict(&self) -> Option<MergeConflict> {
        if self.kind != Some(ProblemKind::MergeConflict) {
            return None;
        }
        let value = |v: &Value| (!v.is_null()).then(|| v.clone());
        let overlaps = self
            .body
            .get("overlaps")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|o| MergeOverlap {
                        path: o["path"].as_str().unwrap_or_default().to_owned(),
                        base: value(&o["base"]),
                        ours: value(&o["ours"]),
                        theirs: value(&o["theirs"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(MergeConflict {
            base_version: self.body.get("base_version")?.as_u64()?,
            paths: self
                .body
                .get("paths")
                .and_then(Value::as_array)
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            overlaps,
            conflict_id: self.conflict_id().map(str::to_owned),
        })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{} ({})", self.title, self.status)
        } else {
            write!(f, "{}: {} ({})", self.title, self.detail, self.status)
        }
    }
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a problem.
    #[error("{0}")]
    Api(Box<Problem>),
    /// The server could not be reached or the connection failed.
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer could not be understood.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A value could not be sent (bad URL, unserialisable document).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A lock guard's lease was lost (a renewal failed or was refused): nothing
    /// more may be done under it.
    #[error("the lock on {resource} was lost: {reason}")]
    LockLost {
        /// The locked resource.
        resource: String,
        /// Why.
        reason: String,
    },
    /// A retrying operation stopped after `attempts`; `last` is the last failure.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
}

impl Error {
    /// The problem kind of an `Api` error (or of the last failure of `GaveUp`).
    pub fn kind(&self) -> Option<ProblemKind> {
        self.problem().and_then(|p| p.kind)
    }

    /// The problem, if the server answered one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Api(problem) => Some(problem),
            Self::GaveUp { last, .. } => last.problem(),
            _ => None,
        }
    }

    /// The server could not be reached at all (nothing listens there, or the name
    /// does not resolve): the request was never sent.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Transport(error) => error.is_connect(),
            Self::GaveUp { last, .. } => last.is_unreachable(),
            _ => false,
        }
    }

    /// The HTTP status of a problem answer.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// A conflict with the current state: 409, 412, 423 or 428.
    pub fn is_conflict(&self) -> bool {
        matches!(self.status(), Some(409 | 412 | 423 | 428))
    }

    /// No such resource or version (404), or a version removed by retention (410).
    pub fn is_not_found(&self) -> bool {
        matches!(self.status(), Some(404 | 410))
    }
}
