//! Settings of the HTTP layer. The binary fills them from flags, environment and the
//! config file; tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

use truce_engine::{DocumentLimits, RetryRule};

/// How the server listens, what it accepts, and how long it waits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Body size and nesting limits.
    pub limits: DocumentLimits,
    /// Longest a client may take to send its request head (and longest an idle
    /// keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Longest a client may take to send its request body.
    pub body_timeout: Duration,
    /// Interval of SSE heartbeat comments.
    pub sse_keepalive: Duration,
    /// Longest `feed=longpoll` wait a client may ask for.
    pub longpoll_max: Duration,
    /// Most SSE streams and long polls open at once; more are refused (503).
    pub max_streams: usize,
    /// Most SSE streams and long polls one principal holds open; more are
    /// refused (503).
    pub max_streams_per_principal: usize,
    /// Quota of reads (`GET`, `HEAD`) per principal; `None`: not limited.
    pub rate_reads: Option<truce_engine::Rate>,
    /// Quota of writes (every other method) per principal; `None`: not limited.
    pub rate_writes: Option<truce_engine::Rate>,
    /// Origins whose pages may call the API from a browser (CORS); empty: none
    /// (no CORS headers at all). `*` allows every origin.
    pub cors_origins: Vec<String>,
    /// Longest graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How often age-based retention runs; `None` disables it.
    pub compaction_interval: Option<Duration>,
    /// How failing webhook deliveries are retried.
    pub webhook_retry: RetryRule,
    /// Longest a webhook receiver may take to answer one delivery.
    pub webhook_timeout: Duration,
    /// How long an idempotency record is kept (then compaction removes it).
    pub idempotency_keep: Duration,
    /// How long an interactive transaction may sit idle before it expires.
    pub txn_idle: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8409)),
            limits: DocumentLimits::default(),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            sse_keepalive: Duration::from_secs(15),
            longpoll_max: Duration::from_secs(300),
            max_streams: 1024,
            max_streams_per_principal: 256,
            rate_reads: None,
            rate_writes: None,
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            compaction_interval: Some(Duration::from_secs(60)),
            webhook_retry: RetryRule::default(),
            webhook_timeout: Duration::from_secs(10),
            idempotency_keep: Duration::from_secs(24 * 3600),
            txn_idle: Duration::from_secs(30),
        }
    }
}
