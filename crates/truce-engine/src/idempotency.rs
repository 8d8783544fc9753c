//! Idempotency records (SPEC §9, draft-ietf-httpapi-idempotency-key-header).
//!
//! A request carrying an `Idempotency-Key` reaches the write path with an
//! [`Idempotent`]: its scope (principal and key), a fingerprint of the request,
//! and how to turn its result into the answer the client gets. When the job
//! commits something (an accepted write, a recorded refusal, a resolution, a
//! settings change), the batch stores that answer as a record in the same
//! commit, so no write is ever durable without its record and no record exists
//! for a write that was lost. A repeat finds the record: the HTTP layer replays
//! it (same request) or refuses it (422, another request). A repeat that finds
//! no record before it is queued but finds one inside its batch was racing the
//! first (another node's, or a client that gave up waiting): it is refused as
//! in flight, and its retry replays.
//!
//! Records expire: each is indexed by its expiry time ([`SideTable::IdempotencyExpiry`])
//! so compaction finds the expired ones without scanning the rest.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::command::Principal;
use crate::error::EngineError;
use crate::rules::{SideTable, SideWrite};
use crate::time::Timestamp;

/// How a job's result becomes the stored answer: the HTTP layer renders it
/// exactly as it would answer (`None`: nothing worth keeping).
pub type AnswerFn<T> = Arc<dyn Fn(&Result<T, EngineError>) -> Option<Bytes> + Send + Sync>;

/// A request made under an idempotency key, as the write path sees it.
pub struct Idempotent<T> {
    /// The record's key: the principal and the client's key.
    pub scope: Vec<u8>,
    /// What makes two requests "the same" (method, target, body).
    pub fingerprint: Fingerprint,
    /// How long the record is kept.
    pub keep: Duration,
    /// Renders the result as the answer to keep.
    pub answer: AnswerFn<T>,
}

impl<T> Clone for Idempotent<T> {
    fn clone(&self) -> Self {
        Self {
            scope: self.scope.clone(),
            fingerprint: self.fingerprint,
            keep: self.keep,
            answer: Arc::clone(&self.answer),
        }
    }
}

impl<T> fmt::Debug for Idempotent<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotent")
            .field("scope", &String::from_utf8_lossy(&self.scope))
            .field("fingerprint", &self.fingerprint)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// A SHA-256 over what identifies a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request from its parts, each length-prefixed so that
    /// no two different requests run together into the same bytes.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Self(hash.finalize().into())
    }
}

/// The record key of `key` sent by `principal`: keys are scoped per principal.
pub fn idempotency_scope(principal: &Principal, key: &str) -> Vec<u8> {
    let mut scope = Vec::with_capacity(principal.as_str().len() + 1 + key.len());
    scope.extend_from_slice(principal.as_str().as_bytes());
    scope.push(0);
    scope.extend_from_slice(key.as_bytes());
    scope
}

/// A stored record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The first request's fingerprint.
    pub fingerprint: Fingerprint,
    /// When the record may be removed.
    pub expires: Timestamp,
    /// The answer as the HTTP layer rendered it.
    pub answer: Bytes,
}

/// The record format's version byte.
const RECORD_FORMAT: u8 = 1;

impl StoredAnswer {
    /// Reads a stored record; `None` if it is not one.
    pub fn read(stored: &[u8]) -> Option<Self> {
        let (&format, rest) = stored.split_first()?;
        if format != RECORD_FORMAT || rest.len() < 40 {
            return None;
        }
        let (fingerprint, rest) = rest.split_at(32);
        let (expires, answer) = rest.split_at(8);
        Some(Self {
            fingerprint: Fingerprint(fingerprint.try_into().ok()?),
            expires: Timestamp::from_millis(u64::from_be_bytes(expires.try_into().ok()?)),
            answer: Bytes::copy_from_slice(answer),
        })
    }

    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(41 + self.answer.len());
        out.put_u8(RECORD_FORMAT);
        out.put_slice(&self.fingerprint.0);
        out.put_u64(self.expires.millis());
        out.put_slice(&self.answer);
        out.freeze()
    }
}

/// What a stored record means for a request with `fingerprint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The same request: answer with the stored answer.
    Same(Bytes),
    /// Another request under a used key: 422.
    Reused,
}

/// Compares a stored record with a request; `None` when the record is unreadable
/// (treated as absent: the request runs).
pub fn replay_of(stored: &[u8], fingerprint: &Fingerprint) -> Option<Replay> {
    let record = StoredAnswer::read(stored)?;
    Some(if record.fingerprint == *fingerprint {
        Replay::Same(record.answer)
    } else {
        Replay::Reused
    })
}

/// The refusal for a job whose key already has a record inside the batch:
/// the same request ran first (in flight when this one was checked), or
/// another request used the key.
pub fn refusal_for(stored: &[u8], fingerprint: &Fingerprint) -> EngineError {
    match replay_of(stored, fingerprint) {
        Some(Replay::Reused) => EngineError::IdempotencyKeyReused,
        _ => EngineError::IdempotencyInFlight,
    }
}

/// The side records keeping `answer` for `request` from `now` on: the record and
/// its expiry index entry.
pub fn keep_answer<T>(request: &Idempotent<T>, answer: Bytes, now: Timestamp) -> Vec<SideWrite> {
    let millis = u64::try_from(request.keep.as_millis()).unwrap_or(u64::MAX);
    let expires = Timestamp::from_millis(now.millis().saturating_add(millis));
    let record = StoredAnswer {
        fingerprint: request.fingerprint,
        expires,
        answer,
    };
    vec![
        SideWrite {
            table: SideTable::Idempotency,
            key: request.scope.clone(),
            value: Some(record.encode()),
        },
        SideWrite {
            table: SideTable::IdempotencyExpiry,
            key: expiry_key(expires, &request.scope),
            value: Some(Bytes::new()),
        },
    ]
}

/// The expiry index key: the expiry time (big-endian, so keys sort by time),
/// then the record's key.
fn expiry_key(expires: Timestamp, scope: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + scope.len());
    key.extend_from_slice(&expires.millis().to_be_bytes());
    key.extend_from_slice(scope);
    key
}

/// The expiry time and record key of an expiry index key.
pub fn read_expiry_key(key: &[u8]) -> Option<(Timestamp, &[u8])> {
    if key.len() < 8 {
        return None;
    }
    let (at, scope) = key.split_at(8);
    Some((
        Timestamp::from_millis(u64::from_be_bytes(at.try_into().ok()?)),
        scope,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(keep: Duration) -> Idempotent<()> {
        Idempotent {
            scope: idempotency_scope(&Principal::anonymous(), "k-1"),
            fingerprint: Fingerprint::of(&[b"PUT", b"/v1/a/b", b"{}"]),
            keep,
            answer: Arc::new(|_| None),
        }
    }

    #[test]
    fn a_kept_answer_replays_for_the_same_request_only() {
        let request = request(Duration::from_secs(60));
        let writes = keep_answer(
            &request,
            Bytes::from_static(b"answer"),
            Timestamp::from_millis(1_000),
        );
        let stored = writes[0].value.clone().unwrap_or_default();
        assert_eq!(
            replay_of(&stored, &request.fingerprint),
            Some(Replay::Same(Bytes::from_static(b"answer")))
        );
        let other = Fingerprint::of(&[b"PUT", b"/v1/a/b", b"{\"x\":1}"]);
        assert_eq!(replay_of(&stored, &other), Some(Replay::Reused));
        assert_eq!(
            refusal_for(&stored, &other),
            EngineError::IdempotencyKeyReused
        );
        assert_eq!(
            refusal_for(&stored, &request.fingerprint),
            EngineError::IdempotencyInFlight
        );
    }

    #[test]
    fn the_expiry_index_sorts_by_time_and_names_the_record() {
        let request = request(Duration::from_secs(60));
        let early = keep_answer(&request, Bytes::new(), Timestamp::from_millis(1_000));
        let late = keep_answer(&request, Bytes::new(), Timestamp::from_millis(2_000));
        assert!(early[1].key < late[1].key);
        let (at, scope) = read_expiry_key(&early[1].key).unwrap_or_default();
        assert_eq!(at, Timestamp::from_millis(61_000));
        assert_eq!(scope, request.scope.as_slice());
    }

    #[test]
    fn fingerprints_keep_parts_apart() {
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
    }

    #[test]
    fn scopes_differ_per_principal() {
        assert_ne!(
            idempotency_scope(&Principal::anonymous(), "k"),
            idempotency_scope(&Principal::named("alice"), "k")
        );
    }
}
