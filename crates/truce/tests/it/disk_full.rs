//! SPEC §10 on a real full disk: the `truce` binary with its data dir on a small
//! tmpfs, writers until it is full, then space freed. Writes are refused with 503
//! `disk-full` while reads go on, `/readyz` says why and one log line says writes
//! stopped; once space is freed, writes resume without a restart (and a log line
//! says so), and every acknowledged write is there, also after a restart.
//!
//! Needs root (to mount a tmpfs), as the machines and CI that run this suite are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{ServerProcess, client, fetch_json, log_line, problem};

/// A tmpfs mounted for the test's lifetime, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status();
        match status {
            Ok(status) if status.success() => {}
            other => panic!(
                "this test mounts a small tmpfs and needs root with `mount` (util-linux) \
                 available; run the suite as root (as CI does). mount said: {other:?}"
            ),
        }
        Self { _dir: dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_recovers_once_space_is_freed() {
    let disk = SmallDisk::mount("40m");
    let data = disk.path().join("data");
    let filler = disk.path().join("filler");
    // Room that can be given back later.
    std::fs::write(&filler, vec![1u8; 16 * 1024 * 1024]).expect("filler");
    let client = client();
    // A small page cache, so reads during the outage need the file, and a small
    // recovery reserve, to fit the small disk.
    let mut server = ServerProcess::start(&data, &["--cache-mb", "4", "--reserve-mb", "8"]).await;
    server.ready(&client).await;
    let base = server.base.clone();
    let put = |path: String, body: Value| {
        client
            .put(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };

    let padding = "x".repeat(60 * 1024);
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut refusal = None;
    for n in 0..2_000u64 {
        let path = format!("/v1/fill/doc-{}", n % 50);
        let response = put(path.clone(), json!({"n": n, "padding": padding}))
            .await
            .unwrap();
        match response.status().as_u16() {
            200 | 201 => acknowledged.push((path, n)),
            503 => {
                refusal = Some(response);
                break;
            }
            other => panic!("write {n} answered {other}"),
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    assert!(refusal.headers().contains_key("retry-after"));
    let body = problem(refusal, 503, "unavailable").await;
    assert_eq!(body["reason"], "disk-full", "{body}");
    assert!(!acknowledged.is_empty());
    log_line(&mut server, "writes are refused until the store recovers").await;

    // Readiness tells; writes stay refused; every document reads as acknowledged
    // (once the store has reopened on the room its reserve gave back).
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    let body = problem(ready, 503, "unavailable").await;
    assert_eq!(body["reason"], "disk-full");
    let again = put("/v1/fill/more".into(), json!({"n": -1})).await.unwrap();
    assert_eq!(again.status(), 503);
    let mut last = BTreeMap::new();
    for (path, n) in &acknowledged {
        last.insert(path.clone(), *n);
    }
    let mut served = false;
    for _ in 0..200 {
        if all_read(&client, &server.base, &last).await {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(served, "reads were not served during the outage");
    expect_values(&client, &server.base, &last).await;
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "writes resumed on a full disk");

    // Free space: writes resume by themselves.
    std::fs::remove_file(&filler).expect("free space");
    server.ready(&client).await;
    log_line(&mut server, "storage recovered: writes resume").await;
    let written = put("/v1/fill/after".into(), json!({"n": "after"}))
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    // Every acknowledged write is there, also after a restart: the last value of
    // each document.
    last.insert("/v1/fill/after".into(), u64::MAX);
    expect_values(&client, &server.base, &last).await;
    server.kill().await;
    let server = ServerProcess::start(&data, &[]).await;
    server.ready(&client).await;
    expect_values(&client, &server.base, &last).await;
    server.kill().await;
}

/// Whether every document answers 200 (reads during an outage may fail until the
/// store has reopened).
async fn all_read(client: &reqwest::Client, base: &str, last: &BTreeMap<String, u64>) -> bool {
    for path in last.keys() {
        match client.get(format!("{base}{path}")).send().await {
            Ok(response) if response.status() == 200 => {}
            _ => return false,
        }
    }
    true
}

/// Each document holds the last value acknowledged for it (`u64::MAX`: "after").
async fn expect_values(client: &reqwest::Client, base: &str, last: &BTreeMap<String, u64>) {
    for (path, n) in last {
        let doc: Value = fetch_json(client, format!("{base}{path}")).await;
        if *n == u64::MAX {
            assert_eq!(doc["n"], "after");
        } else {
            assert_eq!(doc["n"], *n, "{path}");
        }
    }
}
