//! SPEC §10 on a real full disk: the data dir on a small tmpfs, writers until it is
//! full, then space freed. Writes are refused with 503 `disk-full` while reads go
//! on and `/readyz` says why; once space is freed, writes resume without a
//! restart, and every acknowledged write is there.
//!
//! Needs root (to mount a tmpfs), as the machines and CI that run this suite are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{TestServer, problem};

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
    let store_dir = data.clone();
    let server = TestServer::start_with(move |_, store| {
        store.data_dir = store_dir;
        store.cache_bytes = 4 * 1024 * 1024;
    })
    .await;

    let padding = "x".repeat(60 * 1024);
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut refusal = None;
    for n in 0..2_000u64 {
        let path = format!("/v1/fill/doc-{}", n % 50);
        let response = server
            .put(&path, &json!({"n": n, "padding": padding}), &[])
            .await;
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

    // Readiness tells; reads are served; writes stay refused.
    let ready = server.get("/readyz", &[]).await;
    let body = problem(ready, 503, "unavailable").await;
    assert_eq!(body["reason"], "disk-full");
    let (path, n) = acknowledged.last().expect("a write");
    assert_eq!(server.get_json(path).await["n"], *n);
    let again = server.put("/v1/fill/more", &json!({"n": -1}), &[]).await;
    assert_eq!(again.status(), 503);

    // Free space: writes resume by themselves.
    std::fs::remove_file(&filler).expect("free space");
    let mut resumed = false;
    for _ in 0..500 {
        if server.get("/readyz", &[]).await.status() == 200 {
            resumed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(resumed, "writes did not resume after space was freed");
    let written = server
        .put("/v1/fill/after", &json!({"n": "after"}), &[])
        .await;
    assert_eq!(written.status(), 201);
    acknowledged.push(("/v1/fill/after".into(), u64::MAX));

    // Every acknowledged write is there: the last value of each document.
    let mut last = BTreeMap::new();
    for (path, n) in &acknowledged {
        last.insert(path.clone(), *n);
    }
    expect_values(&server, &last).await;
    let server = server.restart().await;
    expect_values(&server, &last).await;
}

/// Each document holds the last value acknowledged for it (`u64::MAX`: "after").
async fn expect_values(server: &TestServer, last: &BTreeMap<String, u64>) {
    for (path, n) in last {
        let doc: Value = server.get_json(path).await;
        if *n == u64::MAX {
            assert_eq!(doc["n"], "after");
        } else {
            assert_eq!(doc["n"], *n, "{path}");
        }
    }
}
