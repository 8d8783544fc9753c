//! The `truce` binary as a process: the first log line, JSON logs, refusing unsafe
//! binds, graceful SIGTERM, and crash safety under SIGKILL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::common::{
    ServerProcess, client, data_dir, etag, fetch_json, log_line, sse_events, wait_for_metric,
};

/// Sends SIGTERM to the child.
fn terminate(server: &ServerProcess) {
    let pid = server.child.id().expect("running child");
    // The shell's own `kill`, so no extra tool is needed.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn the_first_log_line_names_the_address() {
    let (_tmp, data) = data_dir();
    let mut server = ServerProcess::start(&data, &[]).await;
    assert!(
        server.first_line.contains("listening on http://127.0.0.1:"),
        "{}",
        server.first_line
    );
    let client = client();
    server.ready(&client).await;
    let health: Value = fetch_json(&client, format!("{}/healthz", server.base)).await;
    assert_eq!(health["status"], "ok");
    terminate(&server);
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_server_turns_transparent_huge_pages_off() {
    // The allocator's fresh huge pages are zeroed by the kernel on the thread that
    // first touches them, the sequencer's included: the write tail's main cause.
    let (_tmp, data) = data_dir();
    let server = ServerProcess::start(&data, &[]).await;
    let pid = server.child.id().expect("running child");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
    server.kill().await;
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let (_tmp, data) = data_dir();
    let mut server = ServerProcess::start(&data, &["--log-format", "json"]).await;
    let first: Value = serde_json::from_str(&server.first_line).expect("JSON first line");
    assert!(first.to_string().contains("127.0.0.1:"));
    let client = client();
    server.ready(&client).await;
    client
        .put(format!("{}/v1/logs/a", server.base))
        .header("content-type", "application/json")
        .header("x-request-id", "trace-me-42")
        .body("{}")
        .send()
        .await
        .unwrap();
    let line = log_line(&mut server, "trace-me-42").await;
    let entry: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["request_id"], "trace-me-42", "{entry}");
    assert!(entry["latency_us"].is_u64(), "{entry}");
    assert_eq!(entry["status"], 201, "{entry}");
    assert_eq!(entry["method"], "PUT");
    assert_eq!(entry["path"], "/v1/logs/a");
    // A refused write is logged with the state it conflicted with.
    client
        .put(format!("{}/v1/logs/a", server.base))
        .header("content-type", "application/json")
        .header("if-match", "\"9-nope\"")
        .header("x-request-id", "conflict-7")
        .body("{\"n\":1}")
        .send()
        .await
        .unwrap();
    // The conflict record it left is logged first (by the writer, before the
    // answer): the rule and the versions it stood between.
    let conflict = log_line(&mut server, r#""rule":"precondition-failed""#).await;
    let entry: Value = serde_json::from_str(&conflict).unwrap();
    assert_eq!(entry["event"], "conflict.detected", "{entry}");
    assert_eq!(entry["base_version"], 9, "{entry}");
    assert_eq!(entry["current_version"], 1, "{entry}");
    assert_eq!(
        (entry["collection"].clone(), entry["id"].clone()),
        (json!("logs"), json!("a"))
    );
    assert_eq!(entry["request_id"], "conflict-7", "{entry}");
    let cid = entry["conflict_id"].as_str().unwrap().to_owned();
    assert_eq!(cid.len(), 26, "{entry}");
    // A refusal that leaves no record (dismissing a dismissed record) is logged
    // with the state it conflicted with.
    for attempt in ["dismiss-1", "dismiss-2"] {
        client
            .post(format!("{}/v1/_conflicts/{cid}/dismiss", server.base))
            .header("x-request-id", attempt)
            .send()
            .await
            .unwrap();
    }
    let refused = log_line(&mut server, "write refused").await;
    let entry: Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(entry["request_id"], "dismiss-2", "{entry}");
    assert_eq!(entry["slug"], "state-conflict", "{entry}");
    assert!(
        entry["state"].as_str().unwrap().contains("dismissed"),
        "{entry}"
    );
    server.kill().await;
}

#[tokio::test]
async fn refuses_to_bind_beyond_loopback_without_keys() {
    let (_tmp, data) = data_dir();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("loopback"));
}

#[tokio::test]
async fn one_data_dir_serves_one_process() {
    let (_tmp, data) = data_dir();
    let first = ServerProcess::start(&data, &[]).await;
    first.ready(&client()).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let logs = String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("in use"), "{logs}");
    // It never announced an address it could not serve.
    assert!(!logs.contains("listening"), "{logs}");
    first.kill().await;
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_closes_streams() {
    let (_tmp, data) = data_dir();
    let mut server = ServerProcess::start(&data, &[]).await;
    let client = client();
    server.ready(&client).await;
    // A stream and a long poll are open; a write is half sent.
    let stream = client
        .get(format!("{}/v1/_changes", server.base))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut events = sse_events(stream);
    let poll = {
        let url = format!(
            "{}/v1/_changes?since=0&feed=longpoll&timeout_ms=60000",
            server.base
        );
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // The server counts waiting long polls: wait until this one is waiting.
    wait_for_metric(
        &client,
        &server.base,
        "truce_change_waiters{kind=\"longpoll\"} 1",
    )
    .await;
    // `Expect: 100-continue`: the server says "100 Continue" once the handler reads
    // the body, so the write is known to be in flight.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut upload = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = br#"{"survives": true}"#;
    let head = format!(
        "PUT /v1/drain/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(20), upload.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    upload.write_all(&body[..5]).await.unwrap();

    terminate(&server);
    log_line(&mut server, "shutting down").await;
    // The in-flight write still completes.
    upload.write_all(&body[5..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), upload.read_to_end(&mut answer))
        .await
        .expect("the write is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // The long poll answers, the stream ends, the process exits cleanly.
    let page = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap()
        .unwrap();
    assert!(page["last_revision"].is_u64());
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                None => return,
                Some(_) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the SSE stream ended");
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // The last lines were written out before the process exited.
    log_line(&mut server, "stopped").await;
    // The write is on disk.
    let restarted = ServerProcess::start(&data, &[]).await;
    restarted.ready(&client).await;
    let doc: Value = fetch_json(&client, format!("{}/v1/drain/a", restarted.base)).await;
    assert_eq!(doc, json!({"survives": true}));
    restarted.kill().await;
}

/// One acknowledged write: the document had `content` at `version`.
#[derive(Debug, Clone)]
struct Ack {
    path: String,
    version: u64,
    content: Value,
}

/// Checks that every acknowledged write is present and history and feed agree.
async fn verify(client: &reqwest::Client, base: &str, acks: &[Ack]) {
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for ack in acks {
        let entry = highest.entry(ack.path.as_str()).or_insert(0);
        *entry = (*entry).max(ack.version);
        let response = client
            .get(format!("{base}{}/versions/{}", ack.path, ack.version))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{ack:?} lost");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            ack.content,
            "{ack:?}"
        );
    }
    // Heads are at or past the highest acknowledged version.
    let mut heads: HashMap<String, u64> = HashMap::new();
    for (path, version) in &highest {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        let head: u64 = response.headers()["truce-version"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            head >= *version,
            "{path}: head {head} behind acknowledged {version}"
        );
        heads.insert(path.trim_start_matches("/v1/crash/").to_owned(), head);
    }
    // The feed: every revision once, in order; per document, versions 1..=head.
    let mut since = 0;
    let mut revisions = Vec::new();
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    loop {
        let page: Value = fetch_json(
            client,
            format!("{base}/v1/_changes?since={since}&limit=1000"),
        )
        .await;
        let changes = page["changes"].as_array().unwrap();
        if changes.is_empty() {
            break;
        }
        for change in changes {
            revisions.push(change["revision"].as_u64().unwrap());
            versions
                .entry(change["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(change["version"].as_u64().unwrap());
        }
        since = page["last_revision"].as_u64().unwrap();
    }
    let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
    assert_eq!(revisions, expected, "the feed has a gap or a duplicate");
    for (id, head) in heads {
        let seen = versions.get(&id).cloned().unwrap_or_default();
        assert_eq!(seen, (1..=head).collect::<Vec<_>>(), "feed of {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let (_tmp, data) = data_dir();
    let client = client();
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    const WRITERS: usize = 8;
    // Even cycles never checkpoint, so everything they write lives only in the
    // write-ahead log when the process dies; the next start must replay it.
    let wal_only: &[&str] = &["--checkpoint-interval", "1h"];
    for cycle in 0..3 {
        let args = if cycle % 2 == 0 { wal_only } else { &[] };
        let mut server = ServerProcess::start(&data, args).await;
        if cycle == 1 {
            log_line(&mut server, "recovered from the write-ahead log").await;
        }
        server.ready(&client).await;
        verify(&client, &server.base, &acks.lock().await).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked_this_cycle = Arc::new(AtomicU64::new(0));
        // Answers other than a 2xx or the 412 of a lost race: none may come.
        let unexpected = Arc::new(Mutex::new(Vec::<u16>::new()));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, base) = (client.clone(), server.base.clone());
            let (stop, acks, counter, unexpected) = (
                Arc::clone(&stop),
                Arc::clone(&acks),
                Arc::clone(&acked_this_cycle),
                Arc::clone(&unexpected),
            );
            writers.push(tokio::spawn(async move {
                // Each writer updates its own document with If-Match; the last four
                // also share one hot document.
                let path = if w < WRITERS / 2 {
                    format!("/v1/crash/w{w}")
                } else {
                    "/v1/crash/hot".to_owned()
                };
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(read) = client.get(format!("{base}{path}")).send().await else {
                        return;
                    };
                    if !matches!(read.status().as_u16(), 200 | 404) {
                        unexpected.lock().await.push(read.status().as_u16());
                        continue;
                    }
                    let tag = (read.status() == 200).then(|| etag(&read));
                    seq += 1;
                    let content = json!({"writer": w, "cycle": cycle, "seq": seq});
                    let mut request = client
                        .put(format!("{base}{path}"))
                        .header("content-type", "application/json")
                        .body(content.to_string());
                    request = match tag {
                        Some(tag) => request.header("if-match", tag),
                        None => request.header("if-none-match", "*"),
                    };
                    let Ok(response) = request.send().await else {
                        return;
                    };
                    if response.status().is_success() {
                        let version = response.headers()["truce-version"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        acks.lock().await.push(Ack {
                            path: path.clone(),
                            version,
                            content,
                        });
                        counter.fetch_add(1, Ordering::Relaxed);
                    } else if response.status() != 412 {
                        unexpected.lock().await.push(response.status().as_u16());
                    }
                }
            }));
        }
        // Kill once enough writes were acknowledged, while the writers keep going.
        for _ in 0..2000 {
            if acked_this_cycle.load(Ordering::Relaxed) >= 150 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            acked_this_cycle.load(Ordering::Relaxed) >= 150,
            "load did not start"
        );
        server.kill().await;
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        let unexpected = unexpected.lock().await;
        assert!(
            unexpected.is_empty(),
            "cycle {cycle}: answers other than 2xx or 412: {unexpected:?}"
        );
    }
    let mut server = ServerProcess::start(&data, &[]).await;
    log_line(&mut server, "recovered from the write-ahead log").await;
    server.ready(&client).await;
    let acks = acks.lock().await;
    assert!(acks.len() >= 450);
    verify(&client, &server.base, &acks).await;
    server.kill().await;
}
