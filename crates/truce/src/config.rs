//! `truce serve` settings: flags, environment variables and the config file.
//!
//! Every setting has a flag (`--max-batch`), an environment variable
//! (`TRUCE_MAX_BATCH`) and a config-file key (`max_batch`). A flag beats the
//! environment (clap reads both), which beats the file, which beats the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use truce_engine::{DocumentLimits, Retention};
use truce_postgres::PostgresConfig;
use truce_server::ServerConfig;
use truce_store::EmbeddedConfig;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A duration written like `30s`, `5m` or `7d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 30s, 5m, 7d)"))
}

/// `HOST:PORT` with an IP address or a host name (`localhost:8409`). A name is
/// resolved once, at start; when it resolves to several addresses (`localhost` to
/// 127.0.0.1 and ::1), an IPv4 one is preferred.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let addresses: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT with a host that resolves ({e})"))?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Flags of `truce serve`; each also reads `TRUCE_<NAME>`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on (an IP or a host name, with a port); port 0 picks a
    /// free port.
    #[arg(long, env = "TRUCE_LISTEN", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Data directory of the embedded store.
    #[arg(long, env = "TRUCE_DATA")]
    pub data: Option<PathBuf>,
    /// PostgreSQL connection string: serve from this database instead of a data
    /// directory (several nodes may share it).
    #[arg(long, env = "TRUCE_DATABASE_URL", conflicts_with = "data")]
    pub database_url: Option<String>,
    /// Config file (TOML) with any of these settings.
    #[arg(long, env = "TRUCE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "TRUCE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest request body in bytes (default 1 MiB).
    #[arg(long, env = "TRUCE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Deepest document nesting (default 64, at most 127).
    #[arg(long, env = "TRUCE_MAX_DEPTH")]
    pub max_depth: Option<usize>,
    /// Keep at most this many versions per resource (default: all).
    #[arg(long, env = "TRUCE_HISTORY_MAX_VERSIONS")]
    pub history_max_versions: Option<u64>,
    /// Remove past versions older than this, e.g. 30d (default: never).
    #[arg(long, env = "TRUCE_HISTORY_MAX_AGE", value_parser = parse_duration)]
    pub history_max_age: Option<Duration>,
    /// Remove change-feed entries older than this, e.g. 7d (default: never).
    #[arg(long, env = "TRUCE_CHANGES_MAX_AGE", value_parser = parse_duration)]
    pub changes_max_age: Option<Duration>,
    /// Remove conflict records (and their events) detected longer ago than this
    /// (default 7d).
    #[arg(long, env = "TRUCE_CONFLICTS_MAX_AGE", value_parser = parse_duration)]
    pub conflicts_max_age: Option<Duration>,
    /// Keep at most this many conflict records per collection, oldest removed first;
    /// an open record of a live resource stays until its age runs out (default 10000).
    #[arg(long, env = "TRUCE_CONFLICTS_MAX_PER_COLLECTION")]
    pub conflicts_max_per_collection: Option<u64>,
    /// Stop retrying a failing webhook delivery this long after its first attempt
    /// (default 24h).
    #[arg(long, env = "TRUCE_WEBHOOK_RETRY_FOR", value_parser = parse_duration)]
    pub webhook_retry_for: Option<Duration>,
    /// How often age-based retention runs (default 60s).
    #[arg(long, env = "TRUCE_COMPACTION_INTERVAL", value_parser = parse_duration)]
    pub compaction_interval: Option<Duration>,
    /// Most writes committed with one fsync (default 256; 1 disables group commit).
    #[arg(long, env = "TRUCE_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Longest time between checkpoints, durable commits of the store file; in
    /// between, writes are made durable in the write-ahead log (default 250ms; 0s makes
    /// every commit a checkpoint).
    #[arg(long, env = "TRUCE_CHECKPOINT_INTERVAL", value_parser = parse_duration)]
    pub checkpoint_interval: Option<Duration>,
    /// Writes that may queue for the sequencer before new ones get 503 (default 8192).
    #[arg(long, env = "TRUCE_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Page cache of the embedded store in MiB (default 128); the OS page cache
    /// serves what does not fit.
    #[arg(long, env = "TRUCE_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Disk space kept in the data directory for recovering from a full disk, in
    /// MiB (default 64; 0: none).
    #[arg(long, env = "TRUCE_RESERVE_MB")]
    pub reserve_mb: Option<u64>,
    /// Longest wait for a request head, and idle keep-alive time (default 30s).
    #[arg(long, env = "TRUCE_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Longest wait for a request body (default 30s).
    #[arg(long, env = "TRUCE_BODY_TIMEOUT", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Interval of SSE heartbeats (default 15s).
    #[arg(long, env = "TRUCE_SSE_KEEPALIVE", value_parser = parse_duration)]
    pub sse_keepalive: Option<Duration>,
    /// Longest graceful shutdown waits for in-flight requests (default 30s).
    #[arg(long, env = "TRUCE_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Reads (GET, HEAD) each principal may make, e.g. `100/s`, `6000/min`,
    /// `10/h` (default: not limited); more get 429.
    #[arg(long, env = "TRUCE_RATE_READS")]
    pub rate_reads: Option<String>,
    /// Writes (every other method) each principal may make, as for
    /// `--rate-reads` (default: not limited).
    #[arg(long, env = "TRUCE_RATE_WRITES")]
    pub rate_writes: Option<String>,
    /// An origin whose pages may call the API from a browser (CORS), e.g.
    /// `https://app.example`; repeat or separate with commas; `*` for any.
    /// Default: none (no CORS headers).
    #[arg(
        long = "cors-origin",
        env = "TRUCE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// How long an `Idempotency-Key`'s answer is kept for replays (default 24h).
    #[arg(long, env = "TRUCE_IDEMPOTENCY_KEEP", value_parser = parse_duration)]
    pub idempotency_keep: Option<Duration>,
    /// How long an interactive transaction may sit idle before it expires (default 30s).
    #[arg(long, env = "TRUCE_TXN_IDLE", value_parser = parse_duration)]
    pub txn_idle: Option<Duration>,
    /// Most SSE streams and long polls open at once; more get 503 (default 1024).
    #[arg(long, env = "TRUCE_MAX_STREAMS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: Option<u32>,
    /// Most SSE streams and long polls one principal (API key name) holds open;
    /// more get 503 (default 256).
    #[arg(long, env = "TRUCE_MAX_STREAMS_PER_PRINCIPAL", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_principal: Option<u32>,
}

/// The config file: the same settings, keys in snake_case, durations as strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    database_url: Option<String>,
    log_format: Option<LogFormat>,
    max_body_bytes: Option<usize>,
    max_depth: Option<usize>,
    history_max_versions: Option<u64>,
    history_max_age: Option<String>,
    changes_max_age: Option<String>,
    conflicts_max_age: Option<String>,
    conflicts_max_per_collection: Option<u64>,
    webhook_retry_for: Option<String>,
    compaction_interval: Option<String>,
    max_batch: Option<usize>,
    checkpoint_interval: Option<String>,
    queue_capacity: Option<usize>,
    cache_mb: Option<usize>,
    reserve_mb: Option<u64>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    sse_keepalive: Option<String>,
    shutdown_grace: Option<String>,
    max_streams: Option<u32>,
    max_streams_per_principal: Option<u32>,
    cors_origins: Option<Vec<String>>,
    rate_reads: Option<String>,
    rate_writes: Option<String>,
    idempotency_keep: Option<String>,
    txn_idle: Option<String>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP settings.
    pub server: ServerConfig,
    /// Store settings (the embedded store's).
    pub store: EmbeddedConfig,
    /// The PostgreSQL backend's settings, when a database URL is set: it is
    /// served instead of the data directory.
    pub database: Option<PostgresConfig>,
    /// Log format.
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// Resolves flags, environment and config file into settings.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let duration = |flag: Option<Duration>, key: &Option<String>, name: &str| match (flag, key)
        {
            (Some(d), _) => Ok(Some(d)),
            (None, Some(text)) => parse_duration(text)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}"))),
            (None, None) => Ok(None),
        };
        let defaults = ServerConfig::default();
        let limits = DocumentLimits {
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DocumentLimits::default().max_body_bytes),
            max_depth: self
                .max_depth
                .or(file.max_depth)
                .unwrap_or(DocumentLimits::default().max_depth),
        };
        if limits.max_depth == 0 || limits.max_depth > DocumentLimits::PARSER_DEPTH_CEILING {
            return Err(ConfigError::Invalid(format!(
                "max_depth must be between 1 and {}",
                DocumentLimits::PARSER_DEPTH_CEILING
            )));
        }
        if limits.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be positive".into(),
            ));
        }
        let retention = Retention {
            max_versions: self.history_max_versions.or(file.history_max_versions),
            max_age: duration(
                self.history_max_age,
                &file.history_max_age,
                "history_max_age",
            )?,
            changes_max_age: duration(
                self.changes_max_age,
                &file.changes_max_age,
                "changes_max_age",
            )?,
        };
        if retention.max_versions == Some(0) {
            return Err(ConfigError::Invalid(
                "history_max_versions must be at least 1 (the current version is always kept)"
                    .into(),
            ));
        }
        let server = ServerConfig {
            listen: match (self.listen, &file.listen) {
                (Some(listen), _) => listen,
                (None, Some(text)) => {
                    parse_listen(text).map_err(|e| ConfigError::Invalid(format!("listen: {e}")))?
                }
                (None, None) => defaults.listen,
            },
            limits,
            header_timeout: duration(self.header_timeout, &file.header_timeout, "header_timeout")?
                .unwrap_or(defaults.header_timeout),
            body_timeout: duration(self.body_timeout, &file.body_timeout, "body_timeout")?
                .unwrap_or(defaults.body_timeout),
            sse_keepalive: duration(self.sse_keepalive, &file.sse_keepalive, "sse_keepalive")?
                .unwrap_or(defaults.sse_keepalive),
            longpoll_max: defaults.longpoll_max,
            rate_reads: rate(self.rate_reads.as_ref(), &file.rate_reads, "rate_reads")?,
            rate_writes: rate(self.rate_writes.as_ref(), &file.rate_writes, "rate_writes")?,
            cors_origins: {
                let origins = if self.cors_origins.is_empty() {
                    file.cors_origins.clone().unwrap_or_default()
                } else {
                    self.cors_origins.clone()
                };
                truce_server::check_cors_origins(&origins)
                    .map_err(|why| ConfigError::Invalid(format!("cors_origins: {why}")))?;
                origins
            },
            max_streams: match self.max_streams.or(file.max_streams) {
                Some(0) => {
                    return Err(ConfigError::Invalid(
                        "max_streams must be at least 1".into(),
                    ));
                }
                Some(most) => most as usize,
                None => defaults.max_streams,
            },
            max_streams_per_principal: match self
                .max_streams_per_principal
                .or(file.max_streams_per_principal)
            {
                Some(0) => {
                    return Err(ConfigError::Invalid(
                        "max_streams_per_principal must be at least 1".into(),
                    ));
                }
                Some(most) => most as usize,
                None => defaults.max_streams_per_principal,
            },
            shutdown_grace: duration(self.shutdown_grace, &file.shutdown_grace, "shutdown_grace")?
                .unwrap_or(defaults.shutdown_grace),
            compaction_interval: Some(
                duration(
                    self.compaction_interval,
                    &file.compaction_interval,
                    "compaction_interval",
                )?
                .unwrap_or(Duration::from_secs(60)),
            ),
            webhook_retry: truce_engine::RetryRule {
                retry_for: duration(
                    self.webhook_retry_for,
                    &file.webhook_retry_for,
                    "webhook_retry_for",
                )?
                .unwrap_or(defaults.webhook_retry.retry_for),
                ..defaults.webhook_retry
            },
            webhook_timeout: defaults.webhook_timeout,
            idempotency_keep: match duration(
                self.idempotency_keep,
                &file.idempotency_keep,
                "idempotency_keep",
            )? {
                Some(keep) if keep.is_zero() => {
                    return Err(ConfigError::Invalid(
                        "idempotency_keep must be positive".into(),
                    ));
                }
                Some(keep) => keep,
                None => defaults.idempotency_keep,
            },
            txn_idle: match duration(self.txn_idle, &file.txn_idle, "txn_idle")? {
                Some(idle) if idle.is_zero() => {
                    return Err(ConfigError::Invalid("txn_idle must be positive".into()));
                }
                Some(idle) => idle,
                None => defaults.txn_idle,
            },
        };
        let data_given = self.data.is_some() || file.data.is_some();
        let data = self
            .data
            .clone()
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from("./truce-data"));
        let mut store = EmbeddedConfig::new(data);
        store.limits = limits;
        store.retention = retention;
        if let Some(age) = duration(
            self.conflicts_max_age,
            &file.conflicts_max_age,
            "conflicts_max_age",
        )? {
            store.conflict_retention.max_age = age;
        }
        if let Some(cap) = self
            .conflicts_max_per_collection
            .or(file.conflicts_max_per_collection)
        {
            store.conflict_retention.max_per_collection = cap;
        }
        store.max_batch = self
            .max_batch
            .or(file.max_batch)
            .unwrap_or(store.max_batch)
            .max(1);
        store.queue_capacity = self
            .queue_capacity
            .or(file.queue_capacity)
            .unwrap_or(store.queue_capacity)
            .max(1);
        if let Some(interval) = duration(
            self.checkpoint_interval,
            &file.checkpoint_interval,
            "checkpoint_interval",
        )? {
            store.checkpoint_interval = interval;
        }
        if let Some(mb) = self.cache_mb.or(file.cache_mb) {
            store.cache_bytes = mb.saturating_mul(1024 * 1024);
        }
        store.reserve_bytes = self
            .reserve_mb
            .or(file.reserve_mb)
            .unwrap_or(64)
            .saturating_mul(1024 * 1024);
        let database_url = self.database_url.clone().or(file.database_url);
        if database_url.is_some() && data_given {
            return Err(ConfigError::Invalid(
                "give a data directory or a database URL, not both".into(),
            ));
        }
        let database = database_url.map(|url| {
            let mut database = PostgresConfig::new(url);
            database.limits = store.limits;
            database.retention = store.retention;
            database.conflict_retention = store.conflict_retention;
            database.max_batch = store.max_batch;
            database.queue_capacity = store.queue_capacity;
            database
        });
        Ok(Settings {
            server,
            store,
            database,
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A rate setting from the flag or else the file.
fn rate(
    flag: Option<&String>,
    file: &Option<String>,
    name: &str,
) -> Result<Option<truce_engine::Rate>, ConfigError> {
    flag.or(file.as_ref())
        .map(|text| {
            text.parse()
                .map_err(|why| ConfigError::Invalid(format!("{name}: {why}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_host_names_that_resolve() {
        let address = parse_listen("localhost:8409").unwrap();
        assert!(address.ip().is_loopback(), "{address}");
        assert_eq!(address.port(), 8409);
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("localhost").is_err(), "no port");
        assert!(parse_listen("no-such-host.invalid:80").is_err());
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truce.toml");
        std::fs::write(
            &path,
            "max_batch = 8\nhistory_max_age = \"30d\"\nlisten = \"127.0.0.1:9000\"\n\
             checkpoint_interval = \"2s\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            max_batch: Some(4),
            ..ServeArgs::default()
        };
        let settings = args.resolve().unwrap();
        assert_eq!(settings.store.max_batch, 4);
        assert_eq!(
            settings.store.retention.max_age,
            Some(Duration::from_secs(30 * 86400))
        );
        assert_eq!(settings.server.listen.port(), 9000);
        assert_eq!(settings.server.limits.max_depth, 64);
        assert_eq!(settings.store.checkpoint_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_files_and_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truce.toml");
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        assert!(matches!(args.resolve(), Err(ConfigError::Parse { .. })));
        std::fs::write(&path, "history_max_age = \"soon\"\n").unwrap();
        assert!(matches!(args.resolve(), Err(ConfigError::Invalid(_))));
        let depth = ServeArgs {
            max_depth: Some(500),
            ..ServeArgs::default()
        };
        assert!(matches!(depth.resolve(), Err(ConfigError::Invalid(_))));
        let origin = ServeArgs {
            cors_origins: vec!["https://app.example\n".into()],
            ..ServeArgs::default()
        };
        assert!(matches!(origin.resolve(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn stream_caps_and_origins_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truce.toml");
        std::fs::write(
            &path,
            "max_streams = 7\ncors_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        let from_file = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(from_file.server.max_streams, 7);
        assert_eq!(from_file.server.cors_origins, vec!["https://a.example"]);
        let from_flags = ServeArgs {
            config: Some(path),
            max_streams: Some(3),
            cors_origins: vec!["*".into()],
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(from_flags.server.max_streams, 3);
        assert_eq!(from_flags.server.cors_origins, vec!["*"]);
        assert_eq!(
            ServeArgs::default().resolve().unwrap().server.max_streams,
            1024
        );
    }

    #[test]
    fn rates_are_a_count_per_second_minute_or_hour() {
        let args = ServeArgs {
            rate_reads: Some("100/s".into()),
            rate_writes: Some("6000/min".into()),
            ..ServeArgs::default()
        };
        let server = args.resolve().unwrap().server;
        assert_eq!(
            server.rate_reads.map(|r| r.to_string()).as_deref(),
            Some("100/s")
        );
        assert_eq!(
            server.rate_writes.map(|r| r.to_string()).as_deref(),
            Some("6000/min")
        );
        assert_eq!(
            ServeArgs::default().resolve().unwrap().server.rate_reads,
            None
        );
        for bad in ["100", "0/s", "10/day", "ten/s", "-1/s"] {
            let args = ServeArgs {
                rate_writes: Some(bad.into()),
                ..ServeArgs::default()
            };
            assert!(
                matches!(args.resolve(), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
