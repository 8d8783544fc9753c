//! Rate limits (SPEC §9): per principal and class, reads (`GET`, `HEAD`) and
//! writes (every other method), each a GCRA quota (`governor`) from
//! `--rate-reads` / `--rate-writes`, none by default; and per resource, the
//! writes each document of a collection takes when its settings say
//! `limits.writes_per_resource` (read at most once a second per collection).
//!
//! A limited class answers with the IETF RateLimit header fields
//! (draft-ietf-httpapi-ratelimit-headers) on every answer, so clients can slow
//! down before they are refused: `RateLimit-Policy: "writes";q=100;w=1` (the
//! quota: `q` requests per `w` seconds) and `RateLimit: "writes";r=R;t=T`,
//! where `r` is what is left of the quota and `t` the seconds until the whole
//! quota is back (rounded up). A request over the quota is refused with 429
//! `rate-limited` before anything else is looked at (SPEC §8's order), with
//! `Retry-After` and `t` both the seconds until a request may pass.
//!
//! Limits are kept in this node's memory: with N nodes behind a load balancer
//! a principal gets up to N times the quota (docs/DEPLOYMENT.md). Health,
//! readiness, the OpenAPI document and the problem pages are never limited.
//! The principal is the API key's name (`anonymous` on a server without keys).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use truce_engine::{CollectionName, Rate, SideTable, StoredSettings};

use crate::error::ApiError;
use crate::state::AppState;

/// One class's limiter, keyed by principal.
struct ClassLimit {
    name: &'static str,
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<String, StateInformationMiddleware>,
}

impl ClassLimit {
    fn new(name: &'static str, rate: Rate) -> Self {
        let period = rate.per / rate.count.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(rate.count))
            .allow_burst(rate.count);
        Self {
            name,
            rate,
            limiter: DefaultKeyedRateLimiter::keyed(quota).with_middleware(),
        }
    }

    /// The `RateLimit-Policy` value.
    fn policy(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.rate.count,
            self.rate.per.as_secs()
        )
    }

    /// Takes one request of `principal` from the quota: `Ok` with the
    /// `RateLimit` value, or `Err` with the seconds until one may pass.
    fn take(&self, principal: &str) -> Result<String, u64> {
        match self.limiter.check_key(&principal.to_owned()) {
            Ok(snapshot) => {
                let left = snapshot.remaining_burst_capacity();
                let used = self.rate.count.get().saturating_sub(left);
                let period = self.rate.per / self.rate.count.get();
                let back = (period * used).as_secs_f64().ceil() as u64;
                Ok(format!("\"{}\";r={left};t={back}", self.name))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err((wait.as_secs_f64().ceil() as u64).max(1))
            }
        }
    }
}

/// The server's rate limits: per principal and class (a class without a
/// quota is not limited), and per resource where a collection sets
/// `limits.writes_per_resource`.
pub(crate) struct RateLimits {
    reads: Option<ClassLimit>,
    writes: Option<ClassLimit>,
    /// Each limited collection's limiter (keyed by id) with its quota.
    resources: Mutex<HashMap<String, Arc<ClassLimit>>>,
    /// Each collection's per-resource quota as last read, and when.
    quotas: Mutex<HashMap<String, (Instant, Option<Rate>)>>,
}

/// How long a collection's per-resource quota is used before it is read
/// again (a change made through another node takes at most this long; one
/// made through this node applies at once).
const QUOTA_FRESH_FOR: Duration = Duration::from_secs(1);

impl RateLimits {
    /// Limits from the settings.
    pub(crate) fn new(reads: Option<Rate>, writes: Option<Rate>) -> Self {
        Self {
            reads: reads.map(|rate| ClassLimit::new("reads", rate)),
            writes: writes.map(|rate| ClassLimit::new("writes", rate)),
            resources: Mutex::default(),
            quotas: Mutex::default(),
        }
    }

    /// Forgets principals and resources whose quota is whole again, and
    /// quotas read long ago (bounds memory).
    pub(crate) fn forget_idle(&self) {
        for class in [&self.reads, &self.writes].into_iter().flatten() {
            class.limiter.retain_recent();
        }
        for limiter in lock(&self.resources).values() {
            limiter.limiter.retain_recent();
        }
        lock(&self.quotas).retain(|_, (read, _)| read.elapsed() < QUOTA_FRESH_FOR);
    }

    fn class(&self, method: &Method) -> Option<&ClassLimit> {
        if method == Method::GET || method == Method::HEAD {
            self.reads.as_ref()
        } else {
            self.writes.as_ref()
        }
    }

    /// The per-resource limiter of `collection`, if it sets one (read from the
    /// store at most once per [`QUOTA_FRESH_FOR`]; a store that cannot be read
    /// limits nothing, and the write then meets the same failure).
    async fn resource_limiter(
        &self,
        state: &AppState,
        collection: &str,
    ) -> Option<Arc<ClassLimit>> {
        let known = lock(&self.quotas)
            .get(collection)
            .filter(|(read, _)| read.elapsed() < QUOTA_FRESH_FOR)
            .map(|(_, rate)| *rate);
        let rate = match known {
            Some(rate) => rate,
            None => {
                let name = CollectionName::parse(collection).ok()?;
                let stored = state
                    .store
                    .side_record(SideTable::Collections, collection.as_bytes())
                    .await
                    .ok()?;
                let rate = StoredSettings::read(&name, stored.as_deref())
                    .ok()?
                    .settings
                    .limits
                    .writes_per_resource;
                lock(&self.quotas).insert(collection.to_owned(), (Instant::now(), rate));
                rate
            }
        }?;
        let mut limiters = lock(&self.resources);
        let limiter = limiters
            .entry(collection.to_owned())
            .or_insert_with(|| Arc::new(ClassLimit::new("resource", rate)));
        if limiter.rate != rate {
            *limiter = Arc::new(ClassLimit::new("resource", rate));
        }
        Some(Arc::clone(limiter))
    }

    /// Reads `collection`'s quota again at its next write (its settings
    /// changed through this node).
    fn forget_quota(&self, collection: &str) {
        lock(&self.quotas).remove(collection);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Paths never limited: what operators and load balancers poll.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json") || path.starts_with("/problems/")
}

/// The document a write of `path` writes (`/v1/{c}/{id}` and its `revert`).
fn written_resource(path: &str) -> Option<(&str, &str)> {
    let mut segments = path.strip_prefix("/v1/")?.split('/');
    let (collection, id) = (segments.next()?, segments.next()?);
    let rest: Vec<&str> = segments.collect();
    let document = rest.is_empty() || rest == ["revert"];
    (document && !collection.starts_with('_') && !id.is_empty()).then_some((collection, id))
}

/// The collection whose settings a request replaces, if it does.
fn configured_collection<'p>(method: &Method, path: &'p str) -> Option<&'p str> {
    (method == Method::PUT)
        .then(|| path.strip_prefix("/v1/_collections/"))
        .flatten()
}

/// The admission step for rates: refuses a request over its class's quota, or a write over
/// its resource's, with 429 before anything else is looked at, and adds the
/// RateLimit header fields of every limit that applied to the answer.
pub(crate) async fn limit<Next, Rest>(state: &AppState, request: Request, next: Next) -> Response
where
    Next: FnOnce(Request) -> Rest,
    Rest: Future<Output = Response>,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if method == Method::OPTIONS || exempt(&path) {
        return next(request).await;
    }
    let mut applied: Vec<(String, String)> = Vec::new();
    let principal = request
        .extensions()
        .get::<truce_engine::Principal>()
        .cloned()
        .unwrap_or_else(truce_engine::Principal::anonymous);
    let class = state.rates.class(&method);
    let resource = match written_resource(&path) {
        Some((collection, id)) if method != Method::GET && method != Method::HEAD => state
            .rates
            .resource_limiter(state, collection)
            .await
            .map(|limiter| (limiter, id.to_owned())),
        _ => None,
    };
    let mut checks: Vec<(&ClassLimit, &str)> = Vec::new();
    if let Some(class) = class {
        checks.push((class, principal.as_str()));
    }
    if let Some((limiter, id)) = &resource {
        checks.push((limiter.as_ref(), id.as_str()));
    }
    for (limit, key) in checks {
        match limit.take(key) {
            Ok(left) => applied.push((limit.policy(), left)),
            Err(wait) => {
                metrics::counter!("truce_rate_limited_total", "class" => limit.name).increment(1);
                applied.push((limit.policy(), format!("\"{}\";r=0;t={wait}", limit.name)));
                let refused = ApiError::RateLimited {
                    class: limit.name,
                    rate: limit.rate,
                    retry_after: wait,
                };
                return with_headers(refused.into_response(), &applied);
            }
        }
    }
    let changed = configured_collection(&method, &path).map(str::to_owned);
    let response = next(request).await;
    if let Some(collection) = changed {
        state.rates.forget_quota(&collection);
    }
    with_headers(response, &applied)
}

/// Adds `RateLimit-Policy` and `RateLimit` listing every limit applied.
fn with_headers(mut response: Response, applied: &[(String, String)]) -> Response {
    if applied.is_empty() {
        return response;
    }
    let join = |pick: fn(&(String, String)) -> &String| {
        applied
            .iter()
            .map(pick)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-policy", join(|(policy, _)| policy)),
        ("ratelimit", join(|(_, left)| left)),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}
