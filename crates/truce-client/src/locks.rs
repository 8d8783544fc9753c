//! Pessimistic locks (SPEC §4): a lease taken with [`Client::lock`], held by a
//! [`LockGuard`] that renews it in the background, writes under it, and gives
//! it up when dropped.
//!
//! A lease can still be lost (the process paused longer than the TTL, the
//! network failed, an admin broke it). The guard never hides that: the first
//! failed renewal marks it lost, [`LockGuard::check`] and [`LockGuard::lost`]
//! report it, and writes made through it fail at once with [`Error::LockLost`]
//! (the server would refuse them with 423 anyway: a lost lease never writes).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::client::{Client, IDEMPOTENCY_KEY, WriteRequest, new_idempotency_key, problem_of};
use crate::error::Error;

/// `Lock-Token`.
const LOCK_TOKEN: &str = "lock-token";

/// A lock as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LockInfo {
    /// The lease's fencing token: larger for every lock ever granted on the
    /// resource. Hand it to other systems so they can refuse a stale holder.
    pub fence: u64,
    /// The owner text given at acquisition.
    pub owner: String,
    /// The principal that holds it.
    pub by: String,
    /// When it was granted (RFC 3339).
    pub acquired_at: String,
    /// When the lease runs out unless renewed (RFC 3339).
    pub expires_at: String,
    /// Requests waiting for it.
    pub waiting: usize,
    /// The token: only in the holder's own answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A lock about to be requested: set its lease and wait, then `.await` it.
#[must_use = "a lock is requested only when awaited"]
#[derive(Debug)]
pub struct LockRequest<'a> {
    client: &'a Client,
    collection: String,
    id: String,
    ttl: Duration,
    wait: Duration,
    owner: String,
}

impl<'a> LockRequest<'a> {
    /// The lease length (1 s to 1 h; default 30 s). The guard renews it at a
    /// third of this.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait in the queue if someone holds it (default: not at all,
    /// a held lock is a 423 `locked` error at once).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Free text shown to others (`GET .../lock`, the 423's `holder`).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Takes the lock (waiting as asked) and starts renewing it.
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        let (client, collection, id, ttl) = (
            self.client.clone(),
            self.collection.clone(),
            self.id.clone(),
            self.ttl,
        );
        let (token, info) = self.grant().await?;
        Ok(LockGuard::start(client, collection, id, token, info, ttl))
    }

    /// Takes the lock (waiting as asked) without a guard: nothing renews or
    /// releases it, the lease runs out after its TTL unless the caller renews
    /// or releases it with its token (`truce lock` does this). Returns the token
    /// and the lock.
    pub async fn grant(self) -> Result<(String, LockInfo), Error> {
        let body = json!({
            "ttl_ms": millis(self.ttl),
            "wait_ms": millis(self.wait),
            "owner": self.owner,
        })
        .to_string();
        let path = lock_path(&self.collection, &self.id);
        let key = new_idempotency_key();
        let client = self.client;
        let response = client
            .execute(
                || {
                    client
                        .patient_request(Method::POST, &path, self.wait)
                        .header(CONTENT_TYPE, "application/json")
                        .header(IDEMPOTENCY_KEY, key.clone())
                        .body(body.clone())
                },
                // Keyed: a retry of a grant whose answer was lost gets the grant.
                true,
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(Error::Api(Box::new(problem_of(response).await)));
        }
        let info: LockInfo = response
            .json()
            .await
            .map_err(|e| Error::Decode(e.to_string()))?;
        let token = info
            .token
            .clone()
            .ok_or_else(|| Error::Decode("a granted lock without its token".into()))?;
        Ok((token, info))
    }
}

impl<'a> IntoFuture for LockRequest<'a> {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.acquire())
    }
}

/// Whether the guard still holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    /// Held, until this RFC 3339 time unless renewed.
    Held(String),
    /// Lost, and why.
    Lost(String),
}

/// A held lock. Renews its lease in the background at a third of the TTL,
/// writes to its resource with its `Lock-Token`, and releases it when dropped
/// (inside a Tokio runtime) or by [`LockGuard::release`].
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    collection: String,
    id: String,
    token: String,
    info: LockInfo,
    health: watch::Receiver<Health>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl LockGuard {
    fn start(
        client: Client,
        collection: String,
        id: String,
        token: String,
        info: LockInfo,
        ttl: Duration,
    ) -> Self {
        let (report, health) = watch::channel(Health::Held(info.expires_at.clone()));
        let renewer = tokio::spawn(renew(
            client.clone(),
            lock_path(&collection, &id),
            token.clone(),
            ttl,
            report,
        ));
        Self {
            client,
            collection,
            id,
            token,
            info,
            health,
            renewer: Some(renewer),
        }
    }

    /// The lease's fencing token (see [`LockInfo::fence`]).
    pub fn fence(&self) -> u64 {
        self.info.fence
    }

    /// The lease's `Lock-Token`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lock as granted.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// When the lease runs out unless renewed again (RFC 3339), as of the last
    /// renewal.
    pub fn expires_at(&self) -> String {
        match &*self.health.borrow() {
            Health::Held(at) => at.clone(),
            Health::Lost(_) => self.info.expires_at.clone(),
        }
    }

    /// `Ok` while the lease is held; [`Error::LockLost`] once a renewal failed.
    pub fn check(&self) -> Result<(), Error> {
        match &*self.health.borrow() {
            Health::Held(_) => Ok(()),
            Health::Lost(reason) => Err(self.lost_error(reason)),
        }
    }

    /// Resolves when the lease is lost (a renewal failed), with why: select on
    /// it next to the guarded work to stop that work in time.
    pub async fn lost(&self) -> Error {
        let mut health = self.health.clone();
        loop {
            if let Health::Lost(reason) = &*health.borrow_and_update() {
                return self.lost_error(reason);
            }
            if health.changed().await.is_err() {
                return self.lost_error("the renewal stopped");
            }
        }
    }

    fn lost_error(&self, reason: &str) -> Error {
        Error::LockLost {
            resource: format!("{}/{}", self.collection, self.id),
            reason: reason.to_owned(),
        }
    }

    /// Marks a write as made under this lease (refused locally once it is lost).
    fn guarded<'a>(&self, write: WriteRequest<'a>) -> WriteRequest<'a> {
        let write = write.lock_token(&self.token);
        match self.check() {
            Ok(()) => write,
            Err(lost) => write.refuse(lost.to_string()),
        }
    }

    /// `PUT` the locked document under the lease.
    pub fn put<T: Serialize + ?Sized>(&self, doc: &T) -> WriteRequest<'_> {
        self.guarded(self.client.put(&self.collection, &self.id, doc))
    }

    /// `PATCH` it with an RFC 7396 merge patch under the lease.
    pub fn merge_patch(&self, patch: &serde_json::Value) -> WriteRequest<'_> {
        self.guarded(self.client.merge_patch(&self.collection, &self.id, patch))
    }

    /// `PATCH` it with an RFC 6902 JSON Patch under the lease.
    pub fn json_patch(&self, patch: &serde_json::Value) -> WriteRequest<'_> {
        self.guarded(self.client.json_patch(&self.collection, &self.id, patch))
    }

    /// `DELETE` it under the lease.
    pub fn delete(&self) -> WriteRequest<'_> {
        self.guarded(self.client.delete(&self.collection, &self.id))
    }

    /// Reverts it to version `to` under the lease.
    pub fn revert(&self, to: u64) -> WriteRequest<'_> {
        self.guarded(self.client.revert(&self.collection, &self.id, to))
    }

    /// Gives the lock up now (the next waiter gets it). An error if the lease
    /// was already lost: whatever was done under it may not have been exclusive.
    pub async fn release(mut self) -> Result<(), Error> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let lost = self.check().err();
        let released = self
            .client
            .unlock(&self.collection, &self.id, &self.token)
            .await;
        match (lost, released) {
            (Some(lost), _) => Err(lost),
            (None, result) => result,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        renewer.abort();
        // Released in the background if a runtime is there to do it; else the
        // lease runs out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, collection, id, token) = (
                self.client.clone(),
                self.collection.clone(),
                self.id.clone(),
                self.token.clone(),
            );
            runtime.spawn(async move {
                let _ = client.unlock(&collection, &id, &token).await;
            });
        }
    }
}

/// Renews the lease every third of `ttl` until it fails for good; a failure
/// the server answered (423: the lease is gone) ends it at once, one of the
/// network or of an overloaded server is retried until the lease would have
/// run out.
async fn renew(
    client: Client,
    path: String,
    token: String,
    ttl: Duration,
    report: watch::Sender<Health>,
) {
    let period = ttl / 3;
    let mut held_until = tokio::time::Instant::now() + ttl;
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        let attempt = client
            .request(Method::PUT, &path)
            .header(LOCK_TOKEN, token.as_str())
            .timeout(period.max(Duration::from_millis(200)))
            .send()
            .await;
        let failure = match attempt {
            Ok(response) if response.status() == StatusCode::OK => {
                let info = response.json::<LockInfo>().await;
                held_until = tokio::time::Instant::now() + ttl;
                next = tokio::time::Instant::now() + period;
                if let Ok(info) = info {
                    report.send_replace(Health::Held(info.expires_at));
                }
                continue;
            }
            Ok(response) => {
                let status = response.status();
                let problem = problem_of(response).await;
                let transient = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                );
                if !transient {
                    report.send_replace(Health::Lost(format!(
                        "renewing the lease was refused: {problem}"
                    )));
                    return;
                }
                problem.to_string()
            }
            Err(error) => error.to_string(),
        };
        let now = tokio::time::Instant::now();
        if now + period / 4 >= held_until {
            report.send_replace(Health::Lost(format!(
                "the lease could not be renewed before it ran out: {failure}"
            )));
            return;
        }
        next = now + period / 4;
    }
}

impl Client {
    /// Starts a lock request on `collection/id`: set `.ttl(..)`, `.wait(..)`,
    /// `.owner(..)`, then `.await` it for a [`LockGuard`].
    pub fn lock(&self, collection: &str, id: &str) -> LockRequest<'_> {
        LockRequest {
            client: self,
            collection: collection.to_owned(),
            id: id.to_owned(),
            ttl: Duration::from_secs(30),
            wait: Duration::ZERO,
            owner: String::new(),
        }
    }

    /// Who holds `collection/id`'s lock; `None` when it is free.
    pub async fn lock_holder(&self, collection: &str, id: &str) -> Result<Option<LockInfo>, Error> {
        let path = lock_path(collection, id);
        let response = self
            .execute(|| self.request(Method::GET, &path), true)
            .await?;
        match response.status() {
            StatusCode::OK => response
                .json()
                .await
                .map(Some)
                .map_err(|e| Error::Decode(e.to_string())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Error::Api(Box::new(problem_of(response).await))),
        }
    }

    /// Releases a lock held with `token` (a guard does this itself; this is for
    /// a token kept elsewhere, e.g. by `truce lock`).
    pub async fn unlock(&self, collection: &str, id: &str, token: &str) -> Result<(), Error> {
        let path = lock_path(collection, id);
        let token = HeaderValue::from_str(token)
            .map_err(|_| Error::Invalid(format!("{token:?} is not a lock token")))?;
        self.no_content(|| {
            self.request(Method::DELETE, &path)
                .header(LOCK_TOKEN, token.clone())
        })
        .await
    }

    /// Breaks `collection/id`'s lock whoever holds it (the admin role); the
    /// next waiter gets it.
    pub async fn break_lock(&self, collection: &str, id: &str) -> Result<(), Error> {
        let path = format!("{}?force=true", lock_path(collection, id));
        self.no_content(|| self.request(Method::DELETE, &path))
            .await
    }

    /// Sends a keyed request that answers 204.
    async fn no_content(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<(), Error> {
        let key = new_idempotency_key();
        let response = self
            .execute(|| build().header(IDEMPOTENCY_KEY, key.clone()), true)
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Error::Api(Box::new(problem_of(response).await)))
        }
    }
}

/// `/v1/{collection}/{id}/lock`.
fn lock_path(collection: &str, id: &str) -> String {
    format!("{}/lock", crate::client::resource_path(collection, id))
}

/// A duration in whole milliseconds, for the wire.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
