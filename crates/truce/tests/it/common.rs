//! Test harness: real servers on random loopback ports with temporary data dirs.
//!
//! [`TestServer`] runs the server in the test's own runtime (fast to start, and the
//! store can be configured directly); [`ServerProcess`] runs the `truce` binary, for
//! what only a process can show: the first log line, signals and crashes.
//!
//! The suite runs against either backend: the embedded store (the default), or
//! PostgreSQL when `TRUCE_TEST_BACKEND=postgres`, each [`TestServer`] then on a
//! fresh database of the test binary's throw-away cluster (see `pg_cluster.rs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use truce_server::{RunningServer, ServerConfig};
use truce_store::{EmbeddedConfig, EmbeddedStore};

/// A server running inside the test's runtime.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for it.
    pub client: Client,
    server: Option<RunningServer>,
    settings: (ServerConfig, EmbeddedConfig),
    /// The database of a server on PostgreSQL (kept across restarts).
    database: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// Which backend the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Postgres,
}

impl Backend {
    /// The backend `TRUCE_TEST_BACKEND` names (`embedded` when unset).
    pub fn current() -> Self {
        match std::env::var("TRUCE_TEST_BACKEND").as_deref() {
            Ok("postgres") => Self::Postgres,
            Ok("embedded") | Err(_) => Self::Embedded,
            Ok(other) => panic!("TRUCE_TEST_BACKEND={other}: use embedded or postgres"),
        }
    }
}

impl TestServer {
    /// A server with default settings on a fresh data dir.
    pub async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// A server whose settings `configure` may change.
    pub async fn start_with(
        configure: impl FnOnce(&mut ServerConfig, &mut EmbeddedConfig),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            compaction_interval: None,
            ..ServerConfig::default()
        };
        let mut store = EmbeddedConfig::new(dir.path());
        configure(&mut server, &mut store);
        let database =
            (Backend::current() == Backend::Postgres).then(crate::pg_cluster::fresh_database);
        let (base, running) = launch_on(server.clone(), store.clone(), database.as_deref()).await;
        Self {
            base,
            client: client(),
            server: Some(running),
            settings: (server, store),
            database,
            _dir: Some(dir),
        }
    }

    /// Stops the server (ending its streams) and starts it again on the same address
    /// and data dir.
    pub async fn restart(mut self) -> Self {
        let address = self.server.as_ref().expect("running").local_addr();
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.stopped().await;
        }
        let (mut server, store) = self.settings.clone();
        server.listen = address;
        let (base, running) = launch_on(server, store, self.database.as_deref()).await;
        self.base = base;
        self.server = Some(running);
        self
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `PUT path` with a JSON body and extra headers.
    pub async fn put(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self
            .client
            .put(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("PUT")
    }

    /// `GET path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("GET")
    }

    /// `GET path` as JSON, asserting 200.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path, &[]).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON body")
    }

    /// Creates `path` with `body`, returning its ETag.
    pub async fn create(&self, path: &str, body: &Value) -> String {
        let response = self.put(path, body, &[]).await;
        assert_eq!(response.status(), 201, "create {path}");
        etag(&response)
    }

    /// Runs `POST /v1/_compact` until `done` holds for the total of what the passes
    /// removed (retention by age needs the clock to move past the limit first).
    pub async fn compact_until(&self, done: impl Fn(&Value) -> bool) -> Value {
        let mut total = json!({"versions_removed": 0, "changes_removed": 0, "oldest_revision": 0,
                               "conflicts_removed": 0, "conflict_events_removed": 0,
                               "idempotency_removed": 0});
        for _ in 0..200 {
            let report: Value = self
                .client
                .post(self.url("/v1/_compact"))
                .send()
                .await
                .expect("compact")
                .json()
                .await
                .expect("compaction report");
            for field in [
                "versions_removed",
                "changes_removed",
                "conflicts_removed",
                "conflict_events_removed",
                "idempotency_removed",
            ] {
                total[field] =
                    json!(total[field].as_u64().unwrap_or(0) + report[field].as_u64().unwrap_or(0));
            }
            total["oldest_revision"] = report["oldest_revision"].clone();
            if done(&total) {
                return total;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("compaction never reached the expected state: {total}");
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.stopped().await;
        }
    }
}

/// Binds a random port and serves the embedded store `store` describes, or,
/// with `database`, that PostgreSQL database under the same limits, retention
/// and batching.
async fn launch_on(
    server: ServerConfig,
    store: EmbeddedConfig,
    database: Option<&str>,
) -> (String, RunningServer) {
    let listener = TcpListener::bind(server.listen).await.expect("bind");
    truce_server::install_metrics();
    let store = open_store(store, database).await;
    let running = truce_server::serve(listener, store, server).expect("serve");
    (format!("http://{}", running.local_addr()), running)
}

/// A store of the backend `TRUCE_TEST_BACKEND` names, on its own temp dir or
/// fresh database, for tests of the `Store` itself; the dir lives as long as
/// the value returned with it.
pub async fn backend_store() -> (Arc<dyn truce_engine::Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database =
        (Backend::current() == Backend::Postgres).then(crate::pg_cluster::fresh_database);
    let store = open_store(EmbeddedConfig::new(dir.path()), database.as_deref()).await;
    (store, dir)
}

/// The embedded store `store` describes, or, with `database`, that PostgreSQL
/// database under the same limits, retention and batching.
async fn open_store(store: EmbeddedConfig, database: Option<&str>) -> Arc<dyn truce_engine::Store> {
    match database {
        Some(url) => {
            let mut config = truce_postgres::PostgresConfig::new(url);
            config.limits = store.limits;
            config.retention = store.retention;
            config.conflict_retention = store.conflict_retention;
            config.max_batch = store.max_batch;
            config.queue_capacity = store.queue_capacity;
            Arc::new(
                truce_postgres::PostgresStore::open(config)
                    .await
                    .expect("open the PostgreSQL store"),
            )
        }
        None => Arc::new(EmbeddedStore::open(store).expect("open store")),
    }
}

/// A client that never uses a proxy and keeps connections.
pub fn client() -> Client {
    // reqwest is built with rustls for truce-client; TLS is never used here, but
    // reqwest wants a crypto provider installed before building a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The `ETag` header.
pub fn etag(response: &Response) -> String {
    header(response, "etag")
}

/// A header as text; panics if missing.
pub fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name} header"))
        .to_str()
        .expect("ASCII header")
        .to_owned()
}

/// A problem body, checked for the RFC 9457 members every problem has.
pub async fn problem(response: Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status(), status, "status for {slug}");
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    let request_id = header(&response, "x-request-id");
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    assert_eq!(body["status"], status);
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(
        body["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with('/'))
    );
    assert_eq!(body["request_id"], request_id);
    body
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `event:`.
    pub event: String,
    /// `id:`, if any.
    pub id: Option<String>,
    /// `data:` lines joined.
    pub data: String,
}

/// Reads SSE events (and comment lines, as events named `:`) from a response.
pub fn sse_events(response: Response) -> mpsc::UnboundedReceiver<SseEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        let mut current = SseEvent::default();
        while let Some(Ok(chunk)) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim_end_matches('\r').to_owned();
                buffer.drain(..=end);
                if line.is_empty() {
                    if !current.event.is_empty() || !current.data.is_empty() {
                        let _ = tx.send(std::mem::take(&mut current));
                    }
                } else if let Some(comment) = line.strip_prefix(':') {
                    let _ = tx.send(SseEvent {
                        event: ":".into(),
                        id: None,
                        data: comment.trim().to_owned(),
                    });
                } else if let Some((field, value)) = line.split_once(':') {
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "event" => current.event = value,
                        "id" => current.id = Some(value),
                        "data" => {
                            if !current.data.is_empty() {
                                current.data.push('\n');
                            }
                            current.data.push_str(&value);
                        }
                        _ => {}
                    }
                }
            }
        }
    });
    rx
}

/// Waits for the next non-comment event, failing the test after `wait`.
pub async fn next_event(
    events: &mut mpsc::UnboundedReceiver<SseEvent>,
    wait: Duration,
) -> SseEvent {
    loop {
        let event = tokio::time::timeout(wait, events.recv())
            .await
            .expect("an event in time")
            .expect("stream still open");
        if event.event != ":" {
            return event;
        }
    }
}

/// The `truce` binary running as a child process.
pub struct ServerProcess {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The child.
    pub child: Child,
    /// Log lines after the first.
    pub logs: mpsc::UnboundedReceiver<String>,
    /// The first line the server logged.
    pub first_line: String,
}

impl ServerProcess {
    /// Starts `truce serve --listen 127.0.0.1:0 --data DATA` plus `extra` flags.
    pub async fn start(data: &Path, extra: &[&str]) -> Self {
        let mut store = vec![std::ffi::OsString::from("--data"), data.into()];
        store.extend(extra.iter().map(std::ffi::OsString::from));
        Self::start_with_args(&store).await
    }

    /// Starts `truce serve --listen 127.0.0.1:0 --database-url URL`.
    pub async fn start_on_database(url: &str) -> Self {
        Self::start_with_args(&["--database-url".into(), url.into()]).await
    }

    async fn start_with_args(args: &[std::ffi::OsString]) -> Self {
        // Loopback unless the test names another address.
        let listen = if args.iter().any(|a| a == "--listen") {
            vec![]
        } else {
            vec!["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_truce"))
            .arg("serve")
            .args(listen)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn truce");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first_line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("first log line in time")
            .expect("read stdout")
            .expect("a first line");
        let (tx, logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let base = address_in(&first_line)
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| panic!("no address in the first log line: {first_line}"));
        Self {
            base,
            child,
            logs,
            first_line,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self, client: &Client) {
        for _ in 0..300 {
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server at {} never became ready", self.base);
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// Finds `127.0.0.1:PORT` in a log line.
/// A server bound to every interface (`0.0.0.0:PORT`) is spoken to on
/// loopback.
pub fn address_in(line: &str) -> Option<String> {
    let (start, skip) = match line.find("127.0.0.1:") {
        Some(start) => (start, "127.0.0.1:".len()),
        None => (line.find("0.0.0.0:")?, "0.0.0.0:".len()),
    };
    let rest = &line[start..];
    let end = rest
        .char_indices()
        .skip(skip)
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].replacen("0.0.0.0:", "127.0.0.1:", 1))
}

/// A fresh temporary directory that outlives the processes using it.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data");
    (dir, path)
}

/// Polls `/metrics` until it holds `line` (bounded). Use with a [`ServerProcess`]:
/// the metrics of in-process servers are shared by every test in the process.
pub async fn wait_for_metric(client: &reqwest::Client, base: &str, line: &str) {
    for _ in 0..1000 {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("metric {line:?} never appeared");
}

/// Waits for a log line containing `needle`.
pub async fn log_line(server: &mut ServerProcess, needle: &str) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = server.logs.recv().await.expect("log stream open");
            if line.contains(needle) {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
}

/// `GET url` as JSON (any status), with a plain client.
pub async fn fetch_json(client: &Client, url: String) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}
