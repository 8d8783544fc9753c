//! Who is asking, and whether they may (SPEC §9).
//!
//! [`ACCESS`] is the one table of what every endpoint needs; the admission checks
//! enforces it and the OpenAPI document is generated from it, so no handler
//! decides on its own. A request shows a key with `Authorization: Bearer
//! truce_{id}_{secret}`. A revoked key is refused at once on every node: every
//! request reads the key's record from the store (a snapshot read on the
//! embedded store, one statement on PostgreSQL), except a document write, which
//! is admitted with the key as this node verified it before and has the record
//! read again by its commit, in the write's transaction ([`KeyCheck`]; one read
//! per batch for all its writes with that key, where a statement per request
//! was the largest cost of a write on PostgreSQL). The slow hash is checked once
//! per key and node, after which the node remembers the key it verified (in
//! memory only) for as long as its record is unchanged.
//!
//! Without any key, a server bound to loopback serves everyone as `anonymous`
//! with every role (a document write's commit checks that still no key
//! exists); a server bound elsewhere does not start without keys, and if its
//! keys are all revoked later it refuses every request until one is made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use truce_engine::{
    ApiKey, KeyCheck, KeyRefusal, Principal, Role, SideTable, record_digest, roles_grant,
    split_token, verify_key,
};

use crate::error::ApiError;
use crate::state::AppState;

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a key.
    Public,
    /// A key holding (or implying) this role.
    Needs(Role),
}

use Access::{Needs, Public};
use Role::{Admin, Read, Resolve, Write};

/// Every endpoint's access: `(method, route, access)`. `HEAD` is `GET`'s;
/// a method or path not listed needs `read` (so that only key holders learn
/// what exists). `OPTIONS` (CORS preflights, which carry no key) is public.
pub const ACCESS: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/openapi.json", Public),
    ("GET", "/problems/{slug}", Public),
    ("GET", "/metrics", Needs(Admin)),
    ("POST", "/v1/_compact", Needs(Admin)),
    ("GET", "/v1/_changes", Needs(Read)),
    ("GET", "/v1/{collection}", Needs(Read)),
    ("POST", "/v1/{collection}", Needs(Write)),
    ("GET", "/v1/{collection}/{id}", Needs(Read)),
    ("PUT", "/v1/{collection}/{id}", Needs(Write)),
    ("PATCH", "/v1/{collection}/{id}", Needs(Write)),
    ("DELETE", "/v1/{collection}/{id}", Needs(Write)),
    ("GET", "/v1/{collection}/{id}/versions", Needs(Read)),
    ("GET", "/v1/{collection}/{id}/versions/{n}", Needs(Read)),
    ("GET", "/v1/{collection}/{id}/diff", Needs(Read)),
    ("POST", "/v1/{collection}/{id}/revert", Needs(Write)),
    ("GET", "/v1/{collection}/{id}/watch", Needs(Read)),
    // Breaking a lock (`?force=true`) needs admin besides: checked by the
    // handler, the one rule that depends on a parameter.
    ("POST", "/v1/{collection}/{id}/lock", Needs(Write)),
    ("PUT", "/v1/{collection}/{id}/lock", Needs(Write)),
    ("DELETE", "/v1/{collection}/{id}/lock", Needs(Write)),
    ("GET", "/v1/{collection}/{id}/lock", Needs(Read)),
    // A transaction writes (a batch of checks alone still asks for write).
    ("POST", "/v1/_txn", Needs(Write)),
    // Interactive transactions: reads and writes inside one need what they
    // need outside it; beginning, committing and rolling back need write.
    ("POST", "/v1/_txn/begin", Needs(Write)),
    ("POST", "/v1/_txn/{txn}/commit", Needs(Write)),
    ("POST", "/v1/_txn/{txn}/rollback", Needs(Write)),
    ("GET", "/v1/_conflicts", Needs(Read)),
    ("GET", "/v1/_conflicts/stream", Needs(Read)),
    ("GET", "/v1/_conflicts/{cid}", Needs(Read)),
    ("POST", "/v1/_conflicts/{cid}/resolve", Needs(Resolve)),
    ("POST", "/v1/_conflicts/{cid}/dismiss", Needs(Resolve)),
    ("GET", "/v1/_collections/{collection}", Needs(Read)),
    ("PUT", "/v1/_collections/{collection}", Needs(Admin)),
    ("GET", "/v1/_subscriptions", Needs(Admin)),
    ("POST", "/v1/_subscriptions", Needs(Admin)),
    ("GET", "/v1/_subscriptions/{sid}", Needs(Admin)),
    ("PUT", "/v1/_subscriptions/{sid}", Needs(Admin)),
    ("DELETE", "/v1/_subscriptions/{sid}", Needs(Admin)),
    ("GET", "/v1/_subscriptions/{sid}/deliveries", Needs(Admin)),
    ("GET", "/v1/_keys", Needs(Admin)),
    ("POST", "/v1/_keys", Needs(Admin)),
    ("DELETE", "/v1/_keys/{kid}", Needs(Admin)),
];

/// The access `method` on `route` (a route template; `None`: no route) needs.
pub fn access_for(method: &Method, route: Option<&str>) -> Access {
    if method == Method::OPTIONS {
        return Public;
    }
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    route
        .and_then(|route| {
            ACCESS
                .iter()
                .find(|(m, r, _)| *m == method && *r == route)
                .map(|(_, _, access)| *access)
        })
        .unwrap_or(Needs(Read))
}

/// The keys this node verified, by a hash of the presented key and of the
/// record it was checked against (a changed record is checked again).
#[derive(Debug, Default)]
pub struct KeyCache {
    verified: Mutex<HashMap<Digest32, (Digest32, ApiKey)>>,
    /// Once any key was seen, requests without one are refused (until restart).
    keys_seen: AtomicBool,
}

/// A SHA-256 digest.
type Digest32 = [u8; 32];

/// Most keys a node remembers; past it the memory starts over.
const MAX_REMEMBERED: usize = 10_000;

/// At most this many slow hashes run at once, so keys that fail cannot take
/// every core.
static SLOW_CHECKS: Semaphore = Semaphore::const_new(2);

/// The caller of a request: who and with which roles (set by [`authenticate`]).
#[derive(Debug, Clone)]
pub struct Caller {
    /// `by` in history and conflict records; the rate limits' key.
    pub principal: Principal,
    /// What it may do.
    pub roles: Arc<[Role]>,
}

impl Caller {
    /// The caller of a server without keys.
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::anonymous(),
            roles: Arc::from(Role::ALL.as_slice()),
        }
    }
}

/// The first admission step: finds the caller and refuses what its roles do
/// not allow, then hands the request, carrying its caller, to `next`.
pub(crate) async fn authenticate<Next, Rest>(
    state: &AppState,
    mut request: Request,
    next: Next,
) -> Response
where
    Next: FnOnce(Request) -> Rest,
    Rest: Future<Output = Response>,
{
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let access = access_for(request.method(), route.as_deref());
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| bearer(value).map(str::to_owned));
    // A document write outside an interactive transaction has its key checked
    // again when it commits (`KeyCheck`), so it needs no read of the key here.
    let at_commit = checked_at_commit(request.method(), route.as_deref())
        && !request.headers().contains_key(TRUCE_TXN);
    let (caller, check) = match (access, presented) {
        (Public, _) => (Caller::anonymous(), None),
        (Needs(_), None) if at_commit && may_be_open(state) => {
            (Caller::anonymous(), Some(KeyCheck::NoKeys))
        }
        (Needs(_), None) => match open_to_anonymous(state).await {
            Ok(true) => (Caller::anonymous(), None),
            Ok(false) => return refused(state, KeyRefusal::KeyNeeded),
            Err(error) => return error.into_response(),
        },
        (Needs(_), Some(None)) => {
            return unauthenticated("the Authorization header must be Bearer <key>", true);
        }
        (Needs(_), Some(Some(token))) => {
            let found = match at_commit.then(|| remembered(state, &token)).flatten() {
                Some(found) => Ok(Some(found)),
                None => verified(state, &token).await,
            };
            match found {
                Ok(Some((key, record))) => {
                    let check = at_commit.then(|| KeyCheck::Key {
                        id: key.id.clone(),
                        record,
                    });
                    let caller = Caller {
                        principal: Principal::named(key.name),
                        roles: Arc::from(key.roles.as_slice()),
                    };
                    (caller, check)
                }
                Ok(None) => return refused(state, KeyRefusal::KeyInvalid),
                Err(error) => return error.into_response(),
            }
        }
    };
    if let Needs(role) = access
        && !roles_grant(&caller.roles, role)
    {
        // The roles are the remembered record's: a revoked key is 401, not 403.
        if let Some(check) = &check
            && let Err(refused) = confirm(state, check).await
        {
            return refused;
        }
        return ApiError::Forbidden {
            needed: role,
            held: caller.roles.to_vec(),
        }
        .into_response();
    }
    request.extensions_mut().insert(caller.principal.clone());
    request.extensions_mut().insert(caller);
    let Some(check) = check else {
        return next(request).await;
    };
    request.extensions_mut().insert(check.clone());
    let response = next(request).await;
    // A refusal that never reached the commit (429, 400, an idempotency
    // conflict) was answered before the key was checked: auth comes first
    // (SPEC §8), so the key is read before such an answer goes out.
    if response.status().is_client_error()
        && response.status() != StatusCode::UNAUTHORIZED
        && response.extensions().get::<KeyChecked>().is_none()
        && let Err(refused) = confirm(state, &check).await
    {
        return refused;
    }
    response
}

/// Marks an answer whose request's [`KeyCheck`] has been made (by its commit,
/// or before an idempotent replay).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyChecked;

/// The document writes whose key is checked in their commit (each is one job
/// of the store's batch, which runs the check in the write's transaction).
const CHECKED_AT_COMMIT: &[(&str, &str)] = &[
    ("POST", "/v1/{collection}"),
    ("PUT", "/v1/{collection}/{id}"),
    ("PATCH", "/v1/{collection}/{id}"),
    ("DELETE", "/v1/{collection}/{id}"),
    ("POST", "/v1/{collection}/{id}/revert"),
];

/// `Truce-Txn`: a write buffered in an interactive transaction is judged (and
/// answered) before any commit, so its key is read when it arrives.
const TRUCE_TXN: &str = "truce-txn";

/// Whether `method` on `route` has its key checked in the commit.
fn checked_at_commit(method: &Method, route: Option<&str>) -> bool {
    route.is_some_and(|route| {
        CHECKED_AT_COMMIT
            .iter()
            .any(|(m, r)| *m == method.as_str() && *r == route)
    })
}

/// Whether this node may still serve requests without a key (bound to
/// loopback, and no key seen yet); the store decides, at the request or at
/// its commit.
fn may_be_open(state: &AppState) -> bool {
    state.config.listen.ip().is_loopback() && !state.keys.keys_seen.load(Ordering::Relaxed)
}

/// Reads now whether `check` holds, for an answer to a document write that
/// its commit did not make (an idempotent replay, a refusal before the commit,
/// a 403 from the remembered roles): 401 if it does not.
pub(crate) async fn confirm(state: &AppState, check: &KeyCheck) -> Result<(), Response> {
    match check.holds_now(state.store.as_ref()).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused(state, check.refusal())),
        Err(error) => Err(ApiError::Engine(error).into_response()),
    }
}

/// The 401 of a key that does not hold (a key needed, or not valid); once a
/// key was needed, this node serves no request without one again.
pub(crate) fn refused(state: &AppState, refusal: KeyRefusal) -> Response {
    let presented = match refusal {
        KeyRefusal::KeyNeeded => {
            state.keys.keys_seen.store(true, Ordering::Relaxed);
            false
        }
        KeyRefusal::KeyInvalid => true,
    };
    unauthenticated(&refusal.to_string(), presented)
}

/// The key of `Authorization: Bearer <key>` (`None` inside: another scheme or
/// no key).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let (scheme, key) = text.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// Whether requests without a key are served: only on loopback, and only while
/// no key exists.
async fn open_to_anonymous(state: &AppState) -> Result<bool, ApiError> {
    if !state.config.listen.ip().is_loopback() || state.keys.keys_seen.load(Ordering::Relaxed) {
        return Ok(false);
    }
    if KeyCheck::NoKeys.holds_now(state.store.as_ref()).await? {
        return Ok(true);
    }
    state.keys.keys_seen.store(true, Ordering::Relaxed);
    Ok(false)
}

/// The key `token` names as this node verified it before, with the digest of
/// the record it was verified against, without reading the store.
fn remembered(state: &AppState, token: &str) -> Option<(ApiKey, Digest32)> {
    let presented: Digest32 = Sha256::digest(token.as_bytes()).into();
    let cache = state
        .keys
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .get(&presented)
        .map(|(record, key)| (key.clone(), *record))
}

/// The key `token` names, if it is valid now, with the digest of its record.
async fn verified(state: &AppState, token: &str) -> Result<Option<(ApiKey, Digest32)>, ApiError> {
    let Some((id, secret)) = split_token(token) else {
        return Ok(None);
    };
    let Some(stored) = state
        .store
        .side_record(SideTable::Keys, id.as_bytes())
        .await?
    else {
        return Ok(None);
    };
    state.keys.keys_seen.store(true, Ordering::Relaxed);
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let record = record_digest(&stored);
    {
        let cache = state
            .keys
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((checked, key)) = cache.get(&presented)
            && *checked == record
        {
            return Ok(Some((key.clone(), record)));
        }
    }
    let permit = SLOW_CHECKS.acquire().await.map_err(|_| {
        ApiError::Engine(truce_engine::EngineError::Internal(
            "key checks closed".into(),
        ))
    })?;
    let secret = secret.to_owned();
    let checked = tokio::task::spawn_blocking(move || verify_key(&stored, &secret))
        .await
        .map_err(|_| ApiError::Panic)?;
    drop(permit);
    let Some(key) = checked else {
        return Ok(None);
    };
    let mut cache = state
        .keys
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if cache.len() >= MAX_REMEMBERED {
        cache.clear();
    }
    cache.insert(presented, (record, key.clone()));
    Ok(Some((key, record)))
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3; `invalid_token` when a
/// key was presented).
fn unauthenticated(detail: &str, presented: bool) -> Response {
    let mut response = ApiError::Unauthenticated(detail.to_owned()).into_response();
    let challenge = if presented {
        "Bearer realm=\"truce\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"truce\""
    };
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_methods_and_paths_need_read_and_preflights_are_public() {
        assert_eq!(
            access_for(&Method::HEAD, Some("/v1/{collection}/{id}")),
            Needs(Read)
        );
        assert_eq!(access_for(&Method::POST, Some("/healthz")), Needs(Read));
        assert_eq!(access_for(&Method::GET, None), Needs(Read));
        assert_eq!(access_for(&Method::OPTIONS, Some("/v1/_keys")), Public);
        assert_eq!(
            access_for(&Method::DELETE, Some("/v1/_keys/{kid}")),
            Needs(Admin)
        );
    }

    #[test]
    fn only_bearer_keys_are_read() {
        assert_eq!(bearer(&HeaderValue::from_static("Bearer abc")), Some("abc"));
        assert_eq!(
            bearer(&HeaderValue::from_static("bearer  abc ")),
            Some("abc")
        );
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
        assert_eq!(bearer(&HeaderValue::from_static("Bearer")), None);
    }
}
