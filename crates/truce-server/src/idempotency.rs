//! `Idempotency-Key` at the edge (SPEC §9, draft-ietf-httpapi-idempotency-key-header).
//!
//! For an unsafe request carrying the header, its admission step:
//! 1. reads the key (a structured-field string, `"..."`, or the bare text; 1–255
//!    visible ASCII characters) and scopes it to the principal;
//! 2. fingerprints the request: method, target (path and query), `Content-Type`
//!    and body;
//! 3. refuses a repeat while the first is in flight on this node (409
//!    idempotency-in-flight, `Retry-After: 1`);
//! 4. looks for the key's record: the same request gets the stored answer again
//!    with `Idempotent-Replayed: true`, another request 422 idempotency-key-reused;
//! 5. otherwise hands the handler a [`Ticket`], which it attaches to its command:
//!    the engine keeps the rendered answer in the same commit as the write.
//!
//! The stored answer is the handler's response (status, its headers, body) before
//! the request envelope adds this request's own headers (`X-Request-Id`, the
//! RateLimit fields). Refusals that commit nothing (bad input, 404, 503) keep
//! nothing: the retry runs again, which is safe as nothing happened.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use truce_engine::{
    EngineError, Fingerprint, Idempotent, KeyCheck, Principal, Replay, SideTable,
    idempotency_scope, replay_of,
};

use crate::context::RequestContext;
use crate::error::ApiError;
use crate::state::AppState;

/// `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed: true` marks an answer given again.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest key accepted (SPEC §9).
const MAX_KEY_CHARS: usize = 255;

/// A keyed request, handed to its handler to attach to the command it sends.
#[derive(Debug, Clone)]
pub struct Ticket {
    scope: Vec<u8>,
    fingerprint: Fingerprint,
    keep: Duration,
}

impl Ticket {
    /// The engine's view of this request: its answer is `render` of the
    /// outcome, or the problem of a (recorded) refusal, rendered as this
    /// request's handler renders it.
    pub fn attach<T: 'static>(
        &self,
        render: impl Fn(&T) -> Response + Send + Sync + 'static,
    ) -> Idempotent<T> {
        let context = RequestContext::current();
        let answer = move |result: &Result<T, EngineError>| {
            let respond = || match result {
                Ok(outcome) => render(outcome),
                Err(refusal) => ApiError::Engine(refusal.clone()).into_response(),
            };
            let response = match &context {
                Some(context) => context.clone().enter(respond),
                None => respond(),
            };
            encode_answer(response)
        };
        Idempotent {
            scope: self.scope.clone(),
            fingerprint: self.fingerprint,
            keep: self.keep,
            answer: Arc::new(answer),
        }
    }
}

/// The request's [`Ticket`], when it carried an `Idempotency-Key`.
pub struct Keyed(pub Option<Ticket>);

impl Keyed {
    /// [`Ticket::attach`], if keyed.
    pub fn attach<T: 'static>(
        &self,
        render: impl Fn(&T) -> Response + Send + Sync + 'static,
    ) -> Option<Idempotent<T>> {
        self.0.as_ref().map(|ticket| ticket.attach(render))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Keyed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Self(parts.extensions.get::<Ticket>().cloned()))
    }
}

/// The keys of requests being handled on this node.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashSet<Vec<u8>>>);

/// A key marked in flight until dropped (also when the client goes away).
struct InFlightGuard<'a> {
    set: &'a InFlight,
    scope: Vec<u8>,
}

impl InFlight {
    fn enter(&self, scope: &[u8]) -> Option<InFlightGuard<'_>> {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(scope.to_vec()).then(|| InFlightGuard {
            set: self,
            scope: scope.to_vec(),
        })
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut set = self.set.0.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.scope);
    }
}

/// The admission step for keys: replays, refusals and tickets for keyed unsafe
/// requests, then `next` for everything else.
pub(crate) async fn check_key<Next, Rest>(
    state: &AppState,
    request: Request,
    next: Next,
) -> Response
where
    Next: FnOnce(Request) -> Rest,
    Rest: Future<Output = Response>,
{
    if request.method().is_safe() {
        return next(request).await;
    }
    let Some(value) = request.headers().get(IDEMPOTENCY_KEY) else {
        return next(request).await;
    };
    let key = match parse_key(value) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous);
    let scope = idempotency_scope(&principal, &key);
    let limit = crate::extract::body_limit(state, request.uri().path());
    let (mut parts, body) = request.into_parts();
    let body = match crate::extract::read_body(&parts.headers, body, state, limit).await {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let fingerprint = Fingerprint::of(&[
        parts.method.as_str().as_bytes(),
        target.as_bytes(),
        content_type,
        &body,
    ]);
    let Some(_in_flight) = state.in_flight.enter(&scope) else {
        return ApiError::Engine(EngineError::IdempotencyInFlight).into_response();
    };
    match state
        .store
        .side_record(SideTable::Idempotency, &scope)
        .await
    {
        Err(error) => return ApiError::Engine(error).into_response(),
        Ok(Some(stored)) => match replay_of(&stored, &fingerprint) {
            Some(Replay::Same(answer)) => {
                if let Some(check) = parts.extensions.get::<KeyCheck>() {
                    if let Err(refusal) = crate::auth::confirm(state, check).await {
                        return refusal;
                    }
                    let mut replayed = replay(&answer);
                    replayed.extensions_mut().insert(crate::auth::KeyChecked);
                    return replayed;
                }
                return replay(&answer);
            }
            Some(Replay::Reused) => {
                return ApiError::Engine(EngineError::IdempotencyKeyReused).into_response();
            }
            None => tracing::warn!("an unreadable idempotency record was ignored"),
        },
        Ok(None) => {}
    }
    parts.extensions.insert(Ticket {
        scope,
        fingerprint,
        keep: state.config.idempotency_keep,
    });
    next(Request::from_parts(parts, Body::from(body))).await
}

/// The key a client sent: a structured-field string (`"abc"`, the draft's form)
/// or, for clients that send it bare, the header's text.
fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let text = value.to_str().map_err(|_| malformed_key())?.trim();
    let key = match text.strip_prefix('"') {
        Some(quoted) => {
            let inner = quoted.strip_suffix('"').ok_or_else(malformed_key)?;
            let mut key = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(escaped @ ('"' | '\\')) => key.push(escaped),
                        _ => return Err(malformed_key()),
                    },
                    '"' => return Err(malformed_key()),
                    c => key.push(c),
                }
            }
            key
        }
        None => text.to_owned(),
    };
    let visible = key.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || !visible {
        return Err(malformed_key());
    }
    Ok(key)
}

fn malformed_key() -> ApiError {
    ApiError::Malformed(
        "Idempotency-Key must be 1 to 255 visible ASCII characters, as a quoted string (Idempotency-Key: \"8e03978e-40d5\")".into(),
    )
}

/// The stored form of an answer: status, header count, each header as
/// length-prefixed name and value, then the body. `None` for a body that is
/// not already complete (streams are never kept).
fn encode_answer(response: Response) -> Option<Bytes> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .now_or_never()?
        .ok()?;
    let mut out = BytesMut::with_capacity(64 + body.len());
    out.put_u16(parts.status.as_u16());
    out.put_u16(u16::try_from(parts.headers.len()).ok()?);
    for (name, value) in &parts.headers {
        out.put_u16(u16::try_from(name.as_str().len()).ok()?);
        out.put_slice(name.as_str().as_bytes());
        out.put_u16(u16::try_from(value.len()).ok()?);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(&body);
    Some(out.freeze())
}

/// A stored answer given again, marked as a replay.
fn replay(stored: &[u8]) -> Response {
    match decode_answer(stored) {
        Some(mut response) => {
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            response
        }
        None => ApiError::Engine(EngineError::Internal(
            "an idempotency record's answer is unreadable".into(),
        ))
        .into_response(),
    }
}

fn decode_answer(mut stored: &[u8]) -> Option<Response> {
    fn take<'a>(buf: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        (buf.len() >= len).then(|| {
            let (head, rest) = buf.split_at(len);
            *buf = rest;
            head
        })
    }
    if stored.len() < 4 {
        return None;
    }
    let status = StatusCode::from_u16(stored.get_u16()).ok()?;
    let count = stored.get_u16();
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    for _ in 0..count {
        let len = usize::from(u16::from_be_bytes(take(&mut stored, 2)?.try_into().ok()?));
        let name = HeaderName::from_bytes(take(&mut stored, len)?).ok()?;
        let len = usize::from(u16::from_be_bytes(take(&mut stored, 2)?.try_into().ok()?));
        let value = HeaderValue::from_bytes(take(&mut stored, len)?).ok()?;
        response.headers_mut().append(name, value);
    }
    *response.body_mut() = Body::from(Bytes::copy_from_slice(stored));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_strings_or_bare_text() {
        let parse = |v: &'static str| parse_key(&HeaderValue::from_static(v)).ok();
        assert_eq!(parse("\"abc-1\"").as_deref(), Some("abc-1"));
        assert_eq!(parse("\"a\\\"b\"").as_deref(), Some("a\"b"));
        assert_eq!(parse("01HZX").as_deref(), Some("01HZX"));
        assert_eq!(parse("\"\""), None);
        assert_eq!(parse("\"abc"), None);
        assert_eq!(parse("\"a\"b\""), None);
        let long = format!("\"{}\"", "k".repeat(256));
        assert!(
            parse_key(&HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static("")))
                .is_err()
        );
    }

    #[test]
    fn an_answer_round_trips() {
        let mut response = (StatusCode::CREATED, "{\"a\":1}").into_response();
        response
            .headers_mut()
            .insert("etag", HeaderValue::from_static("\"x\""));
        let stored = encode_answer(response).unwrap_or_default();
        let back = decode_answer(&stored).map(|r| (r.status(), r.headers().clone()));
        let (status, headers) = back.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            headers.get("etag").map(HeaderValue::as_bytes),
            Some(&b"\"x\""[..])
        );
    }
}
