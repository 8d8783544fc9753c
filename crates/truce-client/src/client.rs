//! The client: connection settings, sending with retries, reads and write builders.
//!
//! Every write carries an `Idempotency-Key`, the same across its retries, so a
//! write retried after a lost answer is never applied twice: the server replays
//! the first answer (SPEC §9). A request answered 429 or 503 is retried after
//! `Retry-After`, and so is a write answered 409 idempotency-in-flight (its
//! first attempt is still running; the retry gets its answer). One that could
//! not be connected is retried with exponential back-off and full jitter. One
//! that failed after it may have reached the server (reset, time-out) is retried
//! when it is a read or a keyed write (replayed if it landed); other unsafe
//! requests return the transport error and the caller decides.
//!
//! The RateLimit header fields pace the client: once an answer says a class's
//! quota is used up (`r=0`), the next request of that class (reads: `GET`,
//! `HEAD`; writes: the rest) waits the `t` seconds it names instead of being
//! refused.

use std::sync::Once;

use backon::BackoffBuilder;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Problem};
use crate::types::{
    ChangesOptions, ChangesPage, Envelope, HistoryEntry, ListOptions, Outcome, Page, Versioned,
    Written,
};

/// The default server address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8409";

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts of one request (or of one `update` loop).
    pub max_attempts: u32,
    /// First back-off delay.
    pub base_delay: Duration,
    /// Largest back-off delay.
    pub max_delay: Duration,
    /// Longest `Retry-After` the client is willing to wait.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The exponential schedule (without jitter) of retry delays.
    pub(crate) fn schedule(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }
}

/// `Idempotency-Key`.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A fresh idempotency key for one request (and all its retries): a ULID as a
/// structured-field string, as the Idempotency-Key draft writes it.
pub(crate) fn new_idempotency_key() -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", ulid::Ulid::generate()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Full jitter: a uniformly random wait between zero and `delay`.
pub(crate) fn full_jitter(delay: Duration) -> Duration {
    delay.mul_f64(fastrand::f64())
}

/// A truce client; cheap to clone (connections are pooled and shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For requests the server may hold open silently (a lock's wait): no
    /// read time-out, a whole-request one per request instead.
    patient: reqwest::Client,
    timeout: Duration,
    base: String,
    key: Option<String>,
    retry: RetryPolicy,
    pace: std::sync::Arc<Pace>,
}

/// When each rate-limit class may send again, as the server's `RateLimit`
/// fields last said.
#[derive(Debug, Default)]
struct Pace(std::sync::Mutex<[Option<tokio::time::Instant>; 2]>);

impl Pace {
    /// The slot of the class a request of `method` counts against.
    fn class(method: &Method) -> usize {
        usize::from(!(method == Method::GET || method == Method::HEAD))
    }

    /// Waits until requests of `class` may be sent.
    async fn wait(&self, class: usize) {
        let until = self.0.lock().map(|slots| slots[class]).unwrap_or(None);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Notes what an answer's `RateLimit` field says of `class`.
    fn note(&self, class: usize, headers: &HeaderMap) {
        let name = ["\"reads\"", "\"writes\""][class];
        let Some(field) = headers.get("ratelimit").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let exhausted_for = field.split(',').find_map(|item| {
            let mut params = item.trim().split(';');
            if params.next()? != name {
                return None;
            }
            let (mut left, mut reset) = (None, None);
            for param in params {
                match param.trim().split_once('=') {
                    Some(("r", value)) => left = value.parse::<u64>().ok(),
                    Some(("t", value)) => reset = value.parse::<u64>().ok(),
                    _ => {}
                }
            }
            (left == Some(0)).then_some(reset?)
        });
        if let Ok(mut slots) = self.0.lock() {
            slots[class] = exhausted_for
                .filter(|secs| *secs > 0)
                .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
        }
    }
}

/// Settings for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    key: Option<String>,
    retry: RetryPolicy,
    timeout: Duration,
}

impl ClientBuilder {
    /// The API key, sent as `Authorization: Bearer`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Retry settings.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Time-out of one request (streams excepted).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, Error> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .build()
            .map_err(Error::Transport)?;
        let patient = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .build()
            .map_err(Error::Transport)?;
        let base = self.base.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| Error::Invalid(format!("{base:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(Error::Invalid(format!(
                "{base:?}: the URL must be http:// or https:// with a host, e.g. {DEFAULT_URL}"
            )));
        }
        Ok(Client {
            http,
            patient,
            timeout: self.timeout,
            base,
            key: self.key,
            retry: self.retry,
            pace: std::sync::Arc::default(),
        })
    }
}

/// rustls needs one process-wide crypto provider; ring is the one compiled in.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Preconditions of a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Conditions {
    if_match: Option<String>,
    if_none_match_any: bool,
    if_version: Option<u64>,
    /// `Truce-Resolves`: the conflict record this write retries.
    resolves: Option<String>,
    /// `Lock-Token`: the lease this write is made under.
    lock_token: Option<String>,
}

impl Client {
    /// A client for `base_url` with default settings.
    pub fn new(base_url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// Settings for a client of `base_url`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.into(),
            key: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The retry settings.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.key {
            Some(key) => builder.header(AUTHORIZATION, format!("Bearer {key}")),
            None => builder,
        }
    }

    /// A request the server may hold open for up to `held` before it answers
    /// (a lock's wait), allowed that long plus the client's time-out.
    pub(crate) fn patient_request(
        &self,
        method: Method,
        path: &str,
        held: Duration,
    ) -> RequestBuilder {
        let builder = self
            .patient
            .request(method, self.url(path))
            .timeout(held + self.timeout);
        match &self.key {
            Some(key) => builder.header(AUTHORIZATION, format!("Bearer {key}")),
            None => builder,
        }
    }

    /// Sends a request, retrying as the module documentation says. `build` makes a
    /// fresh copy of the request for each attempt.
    pub(crate) async fn execute(
        &self,
        build: impl Fn() -> RequestBuilder,
        replay_safe: bool,
    ) -> Result<Response, Error> {
        let mut delays = self.retry.schedule();
        let mut attempt = 1;
        let class = build()
            .build()
            .map_or(1, |request| Pace::class(request.method()));
        loop {
            self.pace.wait(class).await;
            let failure = match build().send().await {
                Ok(response) => {
                    self.pace.note(class, response.headers());
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    // Of the 409s only idempotency-in-flight carries Retry-After.
                    let in_flight = status == StatusCode::CONFLICT && retry_after.is_some();
                    if status != StatusCode::TOO_MANY_REQUESTS
                        && status != StatusCode::SERVICE_UNAVAILABLE
                        && !in_flight
                    {
                        return Ok(response);
                    }
                    let problem = problem_of(response).await;
                    let wait = retry_after
                        .filter(|w| *w <= self.retry.max_retry_after)
                        .unwrap_or_else(|| full_jitter(delays.next().unwrap_or_default()));
                    (Error::Api(Box::new(problem)), wait)
                }
                Err(error)
                    if error.is_connect()
                        || (replay_safe && (error.is_timeout() || error.is_request())) =>
                {
                    let wait = full_jitter(delays.next().unwrap_or_default());
                    (Error::Transport(error), wait)
                }
                Err(error) => return Err(Error::Transport(error)),
            };
            let (error, wait) = failure;
            if attempt >= self.retry.max_attempts {
                return Err(Error::GaveUp {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a request and decodes a 2xx JSON answer, or returns its problem.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, Error> {
        self.json_with(build, true).await
    }

    /// Like [`Client::json`]; `replay_safe` says whether a request that may have
    /// reached the server can be sent again (reads: yes; unsafe requests: no).
    pub(crate) async fn json_with<T: DeserializeOwned>(
        &self,
        build: impl Fn() -> RequestBuilder,
        replay_safe: bool,
    ) -> Result<T, Error> {
        let response = self.execute(build, replay_safe).await?;
        if !response.status().is_success() {
            return Err(Error::Api(Box::new(problem_of(response).await)));
        }
        response
            .json()
            .await
            .map_err(|e| Error::Decode(e.to_string()))
    }

    /// Reads the current version of a document.
    pub async fn get<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Versioned<T>, Error> {
        let path = resource_path(collection, id);
        read_versioned(
            self.execute(|| self.request(Method::GET, &path), true)
                .await?,
        )
        .await
    }

    /// Reads version `version` of a document.
    pub async fn get_version<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
        version: u64,
    ) -> Result<Versioned<T>, Error> {
        let path = format!("{}/versions/{version}", resource_path(collection, id));
        read_versioned(
            self.execute(|| self.request(Method::GET, &path), true)
                .await?,
        )
        .await
    }

    /// A page of a collection, in id order.
    pub async fn list(
        &self,
        collection: &str,
        options: &ListOptions,
    ) -> Result<Page<Envelope>, Error> {
        let query = query_of([
            ("prefix", options.prefix.clone()),
            ("cursor", options.cursor.clone()),
            ("limit", options.limit.map(|l| l.to_string())),
        ]);
        let path = format!("/v1/{collection}");
        self.json(|| self.request(Method::GET, &path).query(&query))
            .await
    }

    /// A page of a document's history, newest first.
    pub async fn versions(
        &self,
        collection: &str,
        id: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<HistoryEntry>, Error> {
        let path = format!("{}/versions", resource_path(collection, id));
        let query = query_of([
            ("cursor", cursor.map(str::to_owned)),
            ("limit", limit.map(|l| l.to_string())),
        ]);
        self.json(|| self.request(Method::GET, &path).query(&query))
            .await
    }

    /// The RFC 6902 JSON Patch from version `from` to version `to` (defaults: the
    /// previous and the current version).
    pub async fn diff(
        &self,
        collection: &str,
        id: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<Value, Error> {
        let path = format!("{}/diff", resource_path(collection, id));
        let query = query_of([
            ("from", from.map(|v| v.to_string())),
            ("to", to.map(|v| v.to_string())),
        ]);
        self.json(|| self.request(Method::GET, &path).query(&query))
            .await
    }

    /// One page of the change feed.
    pub async fn changes_page(&self, options: &ChangesOptions) -> Result<ChangesPage, Error> {
        let query = changes_query(options);
        self.json(|| self.request(Method::GET, "/v1/_changes").query(&query))
            .await
    }

    /// The store's latest revision: where a feed that starts "now" begins.
    pub async fn head_revision(&self) -> Result<u64, Error> {
        // Changes after the largest revision: none, but the answer says where the
        // feed is.
        let options = ChangesOptions {
            since: Some(u64::MAX),
            ..ChangesOptions::default()
        };
        Ok(self.changes_page(&options).await?.last_revision)
    }

    /// `PUT`: create or replace a document.
    pub fn put<T: Serialize + ?Sized>(
        &self,
        collection: &str,
        id: &str,
        doc: &T,
    ) -> WriteRequest<'_> {
        WriteRequest::new(self, Method::PUT, resource_path(collection, id))
            .json_body("application/json", doc)
    }

    /// `POST`: create a document with a server-made id.
    pub fn create<T: Serialize + ?Sized>(&self, collection: &str, doc: &T) -> WriteRequest<'_> {
        WriteRequest::new(self, Method::POST, format!("/v1/{collection}"))
            .json_body("application/json", doc)
    }

    /// `PATCH` with an RFC 7396 merge patch.
    pub fn merge_patch(&self, collection: &str, id: &str, patch: &Value) -> WriteRequest<'_> {
        WriteRequest::new(self, Method::PATCH, resource_path(collection, id))
            .json_body("application/merge-patch+json", patch)
    }

    /// `PATCH` with an RFC 6902 JSON Patch (an array of operations).
    pub fn json_patch(&self, collection: &str, id: &str, patch: &Value) -> WriteRequest<'_> {
        WriteRequest::new(self, Method::PATCH, resource_path(collection, id))
            .json_body("application/json-patch+json", patch)
    }

    /// `DELETE`: write a tombstone.
    pub fn delete(&self, collection: &str, id: &str) -> WriteRequest<'_> {
        WriteRequest::new(self, Method::DELETE, resource_path(collection, id))
    }

    /// Writes a new version with the content of version `to`.
    pub fn revert(&self, collection: &str, id: &str, to: u64) -> WriteRequest<'_> {
        WriteRequest::new(
            self,
            Method::POST,
            format!("{}/revert", resource_path(collection, id)),
        )
        .json_body("application/json", &serde_json::json!({ "to": to }))
    }
}

/// A write about to be sent; add preconditions, then [`WriteRequest::send`].
#[must_use = "a write does nothing until it is sent"]
#[derive(Debug)]
pub struct WriteRequest<'a> {
    client: &'a Client,
    method: Method,
    path: String,
    body: Result<Option<(&'static str, Vec<u8>)>, String>,
    conditions: Conditions,
    /// Why it must not be sent (a lock guard whose lease was lost).
    refused: Option<String>,
}

impl<'a> WriteRequest<'a> {
    fn new(client: &'a Client, method: Method, path: String) -> Self {
        Self {
            client,
            method,
            path,
            body: Ok(None),
            conditions: Conditions::default(),
            refused: None,
        }
    }

    fn json_body<T: Serialize + ?Sized>(mut self, media: &'static str, doc: &T) -> Self {
        self.body = serde_json::to_vec(doc)
            .map(|bytes| Some((media, bytes)))
            .map_err(|e| e.to_string());
        self
    }

    /// Apply only if the document is still at this ETag (`If-Match`).
    pub fn if_match(mut self, etag: &str) -> Self {
        self.conditions.if_match = Some(etag.to_owned());
        self
    }

    /// Apply only if the document does not exist (`If-None-Match: *`).
    pub fn if_none_match_any(mut self) -> Self {
        self.conditions.if_none_match_any = true;
        self
    }

    /// Apply only if the document is at this version (`?if_version`; `0`: must not
    /// exist).
    pub fn if_version(mut self, version: u64) -> Self {
        self.conditions.if_version = Some(version);
        self
    }

    /// Marks conflict record `cid` (the `conflict_id` of an earlier refusal) resolved
    /// if this write succeeds (`Truce-Resolves`).
    pub fn resolves(mut self, cid: &str) -> Self {
        self.conditions.resolves = Some(cid.to_owned());
        self
    }

    /// Makes the write under a lock (`Lock-Token`); [`crate::LockGuard`]'s
    /// writes carry it already.
    pub fn lock_token(mut self, token: &str) -> Self {
        self.conditions.lock_token = Some(token.to_owned());
        self
    }

    /// Keeps the write from being sent: `send` fails with this reason.
    pub(crate) fn refuse(mut self, reason: String) -> Self {
        self.refused = Some(reason);
        self
    }

    /// Sends the write (retrying under one idempotency key) and reads its result.
    pub async fn send(self) -> Result<Written, Error> {
        if let Some(reason) = self.refused {
            return Err(Error::LockLost {
                resource: self.path,
                reason,
            });
        }
        let body = self.body.map_err(Error::Invalid)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(IDEMPOTENCY_KEY, new_idempotency_key());
        if let Some(etag) = &self.conditions.if_match {
            let value = HeaderValue::from_str(etag)
                .map_err(|_| Error::Invalid(format!("{etag:?} is not a valid ETag")))?;
            headers.insert("if-match", value);
        }
        if self.conditions.if_none_match_any {
            headers.insert("if-none-match", HeaderValue::from_static("*"));
        }
        if let Some(cid) = &self.conditions.resolves
            && let Ok(value) = HeaderValue::from_str(cid)
        {
            headers.insert("truce-resolves", value);
        }
        if let Some(token) = &self.conditions.lock_token {
            let value = HeaderValue::from_str(token)
                .map_err(|_| Error::Invalid(format!("{token:?} is not a lock token")))?;
            headers.insert("lock-token", value);
        }
        if let Some((media, _)) = &body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(media));
        }
        let mut query = Vec::new();
        if let Some(version) = self.conditions.if_version {
            query.push(("if_version", version.to_string()));
        }
        let client = self.client;
        let response = client
            .execute(
                || {
                    let request = client
                        .request(self.method.clone(), &self.path)
                        .headers(headers.clone())
                        .query(&query);
                    match &body {
                        Some((_, bytes)) => request.body(bytes.clone()),
                        None => request,
                    }
                },
                // Keyed: a retry of a write that landed is replayed, not applied again.
                true,
            )
            .await?;
        read_written(response).await
    }
}

/// `/v1/{collection}/{id}`.
pub(crate) fn resource_path(collection: &str, id: &str) -> String {
    format!("/v1/{collection}/{id}")
}

pub(crate) fn changes_query(options: &ChangesOptions) -> Vec<(&'static str, String)> {
    query_of([
        ("since", options.since.map(|s| s.to_string())),
        ("collection", options.collection.clone()),
        (
            "include_docs",
            options.include_docs.then(|| "true".to_owned()),
        ),
    ])
}

/// The query parameters that have a value.
pub(crate) fn query_of<const N: usize>(
    pairs: [(&'static str, Option<String>); N],
) -> Vec<(&'static str, String)> {
    pairs
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect()
}

/// `Retry-After` in seconds or as an HTTP-date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The problem of a non-2xx answer.
pub(crate) async fn problem_of(response: Response) -> Problem {
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let body = response.bytes().await.unwrap_or_default();
    Problem::from_answer(status, &body, wait)
}

fn header_u64(response: &Response, name: &str) -> Result<u64, Error> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Decode(format!("answer without a valid {name} header")))
}

fn header_text(response: &Response, name: &str) -> Result<String, Error> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Error::Decode(format!("answer without a {name} header")))
}

pub(crate) async fn read_versioned<T: DeserializeOwned>(
    response: Response,
) -> Result<Versioned<T>, Error> {
    if response.status() != StatusCode::OK {
        return Err(Error::Api(Box::new(problem_of(response).await)));
    }
    let etag = header_text(&response, "etag")?;
    let version = header_u64(&response, "truce-version")?;
    let revision = header_u64(&response, "truce-revision")?;
    let value = response
        .json()
        .await
        .map_err(|e| Error::Decode(e.to_string()))?;
    Ok(Versioned {
        value,
        etag,
        version,
        revision,
    })
}

async fn read_written(response: Response) -> Result<Written, Error> {
    if !response.status().is_success() {
        return Err(Error::Api(Box::new(problem_of(response).await)));
    }
    let outcome = header_text(&response, "truce-outcome")
        .ok()
        .and_then(|o| Outcome::parse(&o))
        .ok_or_else(|| Error::Decode("write answer without Truce-Outcome".into()))?;
    let etag = header_text(&response, "etag")?;
    let version = header_u64(&response, "truce-version")?;
    let revision = header_u64(&response, "truce-revision")?;
    let bytes = response.bytes().await.map_err(Error::Transport)?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?
    };
    Ok(Written {
        outcome,
        etag,
        version,
        revision,
        body,
    })
}
