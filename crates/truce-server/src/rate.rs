//! Rate limits per principal and class (SPEC §9): reads (`GET`, `HEAD`) and
//! writes (every other method), each a GCRA quota (`governor`) from
//! `--rate-reads` / `--rate-writes`, none by default.
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
//! Until API keys exist every request is the same principal, `anonymous`.

use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;
use crate::state::AppState;

/// A quota as written in settings: `100/s`, `6000/min`, `10/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per window (and the burst).
    pub count: NonZeroU32,
    /// The window.
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = || format!("{text:?} is not a rate: write a count per s, min or h, e.g. 100/s");
        let (count, unit) = text.trim().split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let count = NonZeroU32::new(count).ok_or_else(wrong)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(wrong()),
        };
        Ok(Self { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

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

/// The server's rate limits (a class without a quota is not limited).
pub(crate) struct RateLimits {
    reads: Option<ClassLimit>,
    writes: Option<ClassLimit>,
}

impl RateLimits {
    /// Limits from the settings.
    pub(crate) fn new(reads: Option<Rate>, writes: Option<Rate>) -> Self {
        Self {
            reads: reads.map(|rate| ClassLimit::new("reads", rate)),
            writes: writes.map(|rate| ClassLimit::new("writes", rate)),
        }
    }

    /// Forgets principals whose quota is whole again (bounds memory).
    pub(crate) fn forget_idle(&self) {
        for class in [&self.reads, &self.writes].into_iter().flatten() {
            class.limiter.retain_recent();
        }
    }

    fn class(&self, method: &Method) -> Option<&ClassLimit> {
        if method == Method::GET || method == Method::HEAD {
            self.reads.as_ref()
        } else {
            self.writes.as_ref()
        }
    }
}

/// Paths never limited: what operators and load balancers poll.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json") || path.starts_with("/problems/")
}

/// The middleware: refuses a request over its class's quota with 429, and
/// adds the RateLimit header fields to every answer of a limited class.
pub(crate) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(class) = state.rates.class(request.method()) else {
        return next.run(request).await;
    };
    if request.method() == Method::OPTIONS || exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let policy = class.policy();
    let principal = truce_engine::Principal::anonymous();
    let (mut response, limit) = match class.take(principal.as_str()) {
        Ok(limit) => (next.run(request).await, limit),
        Err(wait) => {
            metrics::counter!("truce_rate_limited_total", "class" => class.name).increment(1);
            let refused = ApiError::RateLimited {
                class: class.name,
                rate: class.rate,
                retry_after: wait,
            };
            (
                refused.into_response(),
                format!("\"{}\";r=0;t={wait}", class.name),
            )
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", limit)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}
