//! `/v1/{collection}/{id}/lock` (SPEC §4): acquire (waiting in the queue if
//! asked), renew, release, break and show a resource's lock.
//!
//! A request that waits holds a place in the store's queue; it wakes on every
//! change the store reports (any node's) to a lock of its lock's group
//! (`truce_engine::LockGroups`) and reads whether the lock was handed to it, until its wait runs out; then it leaves the queue through the
//! write path (which answers with the lock if it was handed over meanwhile). A
//! client that goes away leaves the queue the same way.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use truce_engine::{
    EngineError, LockAction, LockJob, LockOutcome, LockState, LockView, MAX_WAITERS, Principal,
    ResourceKey, Role, SideTable, Timestamp, check_wait, lock_key, waiters_prefix,
};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiQuery, By, LockToken, ResourcePath};
use crate::idempotency::Keyed;
use crate::openapi::{Invalid, Locked, Malformed, NotFound, Unavailable};
use crate::state::AppState;
use crate::wire::ProblemBody;

/// `Lock-Token`.
pub const LOCK_TOKEN: HeaderName = HeaderName::from_static("lock-token");

/// The body of `POST .../lock`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Lease length in ms, 1 000 to 3 600 000 (default 30 000).
    ttl_ms: Option<u64>,
    /// How long to wait in the queue if it is held, 0 to 300 000 ms (default 0:
    /// refused at once with 423).
    wait_ms: Option<u64>,
    /// Free text shown to others (who holds it, for what).
    owner: Option<String>,
}

/// The body of `PUT .../lock`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The new lease length from now (default: the lease's own).
    ttl_ms: Option<u64>,
}

/// `DELETE .../lock` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReleaseParams {
    /// Break the lock whoever holds it (the admin role).
    force: Option<bool>,
}

/// Default lease.
const DEFAULT_TTL_MS: u64 = 30_000;

/// A lock answer: the view, and the token as `Lock-Token` when it is the caller's.
fn lock_response(status: StatusCode, view: &LockView) -> Response {
    let mut response = (status, Json(view.to_json())).into_response();
    if let Some(token) = &view.token
        && let Ok(value) = HeaderValue::from_str(token)
    {
        response.headers_mut().insert(LOCK_TOKEN, value);
    }
    response
}

/// The body, which may be empty (all defaults).
fn body_or_default<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Malformed(truce_engine::describe_json_error("the body", &e, 64)))
}

/// Takes the lock: 201 with `{token, fence, owner, expires_at, ...}` and
/// `Lock-Token`; held by another: 423 at once, or after waiting `wait_ms` in
/// the queue (full: 503).
#[utoipa::path(
    post,
    operation_id = "acquire_lock",
    path = "/v1/{collection}/{id}/lock",
    tag = "locks",
    params(("collection" = String, Path), ("id" = String, Path)),
    request_body(content = AcquireRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Granted: the lock with its `token` and `fence`", body = Object,
            headers(("Lock-Token" = String))),
        Locked, Malformed, Invalid,
        (status = 503, description = "`unavailable`: the lock's queue is full (`reason: lock-queue-full`), or storage is unavailable; see `Retry-After`",
            content_type = "application/problem+json", body = ProblemBody),
    )
)]
pub async fn acquire(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    By(by): By,
    keyed: Keyed,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: AcquireRequest = body_or_default(&body)?;
    let ttl_ms = request.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    let wait_ms = request.wait_ms.unwrap_or(0);
    check_wait(wait_ms)?;
    let owner = request.owner.unwrap_or_default();
    if owner.len() > 256 {
        return Err(EngineError::invalid("/owner", "owner is at most 256 bytes").into());
    }
    let waiter = (wait_ms > 0).then(|| ulid::Ulid::generate().to_string());
    let deadline = Timestamp::from_millis(Timestamp::now().millis() + wait_ms);
    let action = LockAction::Acquire {
        ttl_ms,
        owner,
        waiting: waiter.clone().map(|id| (id, deadline)),
    };
    let mut changes = state.store.lock_waits(&key);
    changes.borrow_and_update();
    let outcome = run(&state, &key, &by, action, &keyed).await?;
    let (LockOutcome::Queued(_), Some(waiter)) = (&outcome, waiter) else {
        return Ok(answer(&outcome));
    };
    let queued_at = std::time::Instant::now();
    let mut place = Place {
        state: state.clone(),
        key: key.clone(),
        by: by.clone(),
        waiter: Some(waiter.clone()),
    };
    let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        if let Some(view) = handed_to(&state, &key, &waiter).await? {
            metrics::histogram!("truce_lock_queue_seconds")
                .record(queued_at.elapsed().as_secs_f64());
            // From the commit that handed the lock over to its waiter hearing of it.
            let handoff = Timestamp::now()
                .millis()
                .saturating_sub(view.acquired_at.millis());
            metrics::histogram!("truce_lock_handoff_seconds").record(handoff as f64 / 1000.0);
            if keyed.0.is_none() {
                place.waiter = None;
                return Ok(lock_response(StatusCode::CREATED, &view));
            }
            // A keyed request keeps its grant as its answer: claiming it
            // through the write path (as a waiter leaving) does that.
            break;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                metrics::counter!("truce_lock_waiter_wakeups_total").increment(1);
            }
            () = tokio::time::sleep_until(until) => break,
            () = state.shutdown.cancelled() => break,
        }
    }
    place.waiter = None;
    match run(&state, &key, &by, LockAction::Leave { waiter }, &keyed).await? {
        outcome @ LockOutcome::Granted(_) => Ok(answer(&outcome)),
        _ => Err(refused_now(&state, &key).await),
    }
}

/// The 423 for a waiter whose wait ran out, naming the holder now.
async fn refused_now(state: &AppState, key: &ResourceKey) -> ApiError {
    let current = read_state(state, key).await;
    let detail = "the lock was not free before wait_ms ran out";
    match current {
        Ok(current) => current.locked(detail).into(),
        Err(error) => error,
    }
}

/// A waiter's place in the queue, left through the write path if the request
/// ends before it was handed the lock (time-out, or the client went away).
struct Place {
    state: AppState,
    key: ResourceKey,
    by: Principal,
    waiter: Option<String>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            let (state, key, by) = (self.state.clone(), self.key.clone(), self.by.clone());
            tokio::spawn(async move {
                // Handed over meanwhile: the lock is released again, for the next.
                let unkeyed = Keyed(None);
                if let Ok(LockOutcome::Granted(view)) =
                    run(&state, &key, &by, LockAction::Leave { waiter }, &unkeyed).await
                    && let Some(token) = view.token
                {
                    let release = LockAction::Release { token };
                    let _ = run(&state, &key, &by, release, &unkeyed).await;
                }
            });
        }
    }
}

/// The lock, if it was handed to `waiter`. Every waiter looks each time a lock
/// of its group changes (its own, or one that shares its wake-up), so the look
/// reads the lock record alone; the queue (for the
/// answer's `waiting`) is read only once the lock is there.
async fn handed_to(
    state: &AppState,
    key: &ResourceKey,
    waiter: &str,
) -> Result<Option<LockView>, ApiError> {
    let stored = state
        .store
        .side_record(SideTable::Locks, &lock_key(key))
        .await?;
    let record = LockState::load(key, stored.as_deref(), &[], Timestamp::now())?;
    if record.granted_to(waiter).is_none() {
        return Ok(None);
    }
    Ok(read_state(state, key).await?.granted_to(waiter))
}

/// `key`'s lock as last committed.
async fn read_state(state: &AppState, key: &ResourceKey) -> Result<LockState, ApiError> {
    let lock_key = lock_key(key);
    let stored = state.store.side_record(SideTable::Locks, &lock_key).await?;
    let waiters = state
        .store
        .side_records(
            SideTable::LockWaiters,
            Some(&waiters_prefix(&lock_key)),
            MAX_WAITERS + 1,
        )
        .await?;
    Ok(LockState::load(
        key,
        stored.as_deref(),
        &waiters,
        Timestamp::now(),
    )?)
}

/// Runs one lock action through the store, keeping its answer for the
/// request's `Idempotency-Key` if it has one.
async fn run(
    state: &AppState,
    key: &ResourceKey,
    by: &Principal,
    action: LockAction,
    keyed: &Keyed,
) -> Result<LockOutcome, ApiError> {
    let job = LockJob::On {
        key: key.clone(),
        action,
        by: by.clone(),
        idempotency: keyed.attach(answer).map(Box::new),
    };
    Ok(state.store.lock(job).await?)
}

/// The answer to a lock action that ran: the grant (201), the renewal (200),
/// the release or break (204).
fn answer(outcome: &LockOutcome) -> Response {
    match outcome {
        LockOutcome::Granted(view) => lock_response(StatusCode::CREATED, view),
        LockOutcome::Renewed(view) => lock_response(StatusCode::OK, view),
        LockOutcome::Released | LockOutcome::Broken(_) => StatusCode::NO_CONTENT.into_response(),
        other => ApiError::from(EngineError::Internal(format!(
            "a lock action answered {other:?}"
        )))
        .into_response(),
    }
}

/// Extends the lease held with `Lock-Token` (from now, by `ttl_ms` or the
/// lease's own length).
#[utoipa::path(
    put,
    operation_id = "renew_lock",
    path = "/v1/{collection}/{id}/lock",
    tag = "locks",
    params(("collection" = String, Path), ("id" = String, Path)),
    request_body(content = RenewRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Renewed", body = Object, headers(("Lock-Token" = String))),
        Locked, Malformed, Invalid, Unavailable,
    )
)]
pub async fn renew(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    By(by): By,
    LockToken(token): LockToken,
    keyed: Keyed,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: RenewRequest = body_or_default(&body)?;
    let token =
        token.ok_or_else(|| ApiError::Malformed("renewing needs the Lock-Token header".into()))?;
    let action = LockAction::Renew {
        token,
        ttl_ms: request.ttl_ms,
    };
    Ok(answer(&run(&state, &key, &by, action, &keyed).await?))
}

/// Releases the lock held with `Lock-Token`; with `?force=true` (admin) breaks
/// it whoever holds it. The first waiter gets it in the same commit.
#[utoipa::path(
    delete,
    operation_id = "release_lock",
    path = "/v1/{collection}/{id}/lock",
    tag = "locks",
    params(("collection" = String, Path), ("id" = String, Path), ReleaseParams),
    responses(
        (status = 204, description = "Released (or broken)"),
        Locked, Malformed, NotFound, Unavailable,
        (status = 403, description = "`forbidden`: the key lacks the `write` role, or (`force=true`) the `admin` role; `required_role` names it",
            content_type = "application/problem+json", body = ProblemBody),
    )
)]
pub async fn release(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
    By(by): By,
    LockToken(token): LockToken,
    ApiQuery(params): ApiQuery<ReleaseParams>,
    caller: Option<axum::Extension<Caller>>,
    keyed: Keyed,
) -> Result<Response, ApiError> {
    let action = if params.force.unwrap_or(false) {
        // Breaking someone else's lock needs more than the route's role.
        let roles = caller.map(|c| c.0.roles.to_vec()).unwrap_or_default();
        if !truce_engine::roles_grant(&roles, Role::Admin) {
            return Err(ApiError::Forbidden {
                needed: Role::Admin,
                held: roles,
            });
        }
        LockAction::Break
    } else {
        let token = token.ok_or_else(|| {
            ApiError::Malformed(
                "releasing needs the Lock-Token header (or ?force=true, admin)".into(),
            )
        })?;
        LockAction::Release { token }
    };
    Ok(answer(&run(&state, &key, &by, action, &keyed).await?))
}

/// Shows who holds the lock (never the token).
#[utoipa::path(
    get,
    operation_id = "show_lock",
    path = "/v1/{collection}/{id}/lock",
    tag = "locks",
    params(("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "The live lock: `fence`, `owner`, `by`, `expires_at`, `waiting`", body = Object),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn show(
    State(state): State<AppState>,
    ResourcePath(key): ResourcePath,
) -> Result<Response, ApiError> {
    match read_state(&state, &key).await?.holder_view() {
        Some(view) => Ok(lock_response(StatusCode::OK, &view)),
        None => Err(EngineError::NotFound {
            detail: format!("{key} is not locked"),
            tombstone: None,
        }
        .into()),
    }
}

/// Expires leases on time: sleeps until the next lease runs out (or a lock
/// changes, on any node), then asks the write path to expire what is due, which
/// hands each lock to its next waiter. Every node runs one; an expiry pass that
/// finds nothing due changes nothing.
pub async fn keeper(state: AppState) {
    let mut changes = state.store.lock_changes();
    loop {
        let next = match state
            .store
            .side_records(SideTable::LockExpiries, None, 1)
            .await
        {
            Ok(first) => truce_engine::next_lock_expiry(first.first().map(|(k, _)| k.as_slice())),
            Err(error) => {
                tracing::debug!(%error, "the lock keeper cannot read the expiries yet");
                Some(Timestamp::from_millis(Timestamp::now().millis() + 1_000))
            }
        };
        let now = Timestamp::now().millis();
        if let Some(at) = next
            && at.millis() <= now
        {
            match state.store.lock(LockJob::ExpireDue).await {
                Ok(LockOutcome::Expired(0)) | Err(_) => {
                    // Due by this clock but not yet by the store's (another
                    // node's database clock), or the store refused: look again soon.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        () = state.shutdown.cancelled() => return,
                    }
                }
                Ok(_) => {}
            }
            continue;
        }
        let sleep = next.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis(at.millis().saturating_sub(now))
        });
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(sleep) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}
