//! Smoke tests of `truce bench`: each workload for a second against a real server,
//! checking what it reports against what the server holds.

use serde_json::{Value, json};

use crate::common::TestServer;

/// Runs `truce bench` with `args` and parses its JSON lines.
async fn bench(args: &[&str]) -> Vec<Value> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run truce bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "truce bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON report"))
        .collect()
}

/// Counts the documents of `collection` whose id starts with `prefix`.
async fn count(server: &TestServer, collection: &str, prefix: &str) -> u64 {
    let mut total = 0;
    let mut path = format!("/v1/{collection}?limit=1000&prefix={prefix}");
    loop {
        let page = server.get_json(&path).await;
        total += page["items"].as_array().unwrap().len() as u64;
        match page["next"].as_str() {
            Some(next) => {
                path = format!("/v1/{collection}?limit=1000&prefix={prefix}&cursor={next}")
            }
            None => return total,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_reports_what_the_server_holds() {
    let server = TestServer::start().await;
    let reports = bench(&[
        "--url",
        &server.base,
        "--workload",
        "create,update,hot,read,read-304,mixed",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--docs",
        "3",
    ])
    .await;
    assert_eq!(reports.len(), 6);
    for report in &reports {
        let workload = report["workload"].as_str().unwrap();
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["connections"], 4);
        let run_id = report["run_id"].as_str().unwrap();
        match workload {
            "create" => {
                // Every acknowledged create is a document on the server.
                let created = count(&server, "bench", &format!("{run_id}-")).await;
                assert_eq!(created, report["ops"].as_u64().unwrap(), "{report}");
            }
            "update" => {
                assert_eq!(report["refused"], 0, "own documents never conflict");
                // Measured from the server's metrics, which in-process servers share
                // with every other test: only its presence is checked here (see
                // `the_mean_batch_is_the_servers_own`).
                assert!(report["mean_batch"].is_number(), "{report}");
            }
            "hot" => {
                assert_eq!(report["hot_consistent"], true, "{report}");
                let doc = report["hot_doc"].as_str().unwrap();
                let stored = server.get_json(&format!("/v1/bench/{doc}")).await;
                assert_eq!(stored["n"], report["ops"], "{report}");
                // One version per accepted increment, plus the creation.
                let versions = server
                    .get_json(&format!("/v1/bench/{doc}/versions?limit=1"))
                    .await;
                assert_eq!(
                    versions["items"][0]["version"].as_u64().unwrap(),
                    report["ops"].as_u64().unwrap() + 1
                );
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writes_are_refused_with_records_and_merges_are_merged() {
    let server = TestServer::start().await;
    let reports = bench(&[
        "--url",
        &server.base,
        "--workload",
        "stale,merge",
        "--connections",
        "2",
        "--duration",
        "200ms",
        "--docs",
        "1500",
    ])
    .await;
    let [stale, merge] = reports.as_slice() else {
        panic!("two reports: {reports:?}");
    };
    assert_eq!(stale["errors"], 0, "{stale}");
    let refused = stale["ops"].as_u64().unwrap();
    assert!(refused > 0, "{stale}");
    // Every refusal left its record.
    let records = server
        .get_json("/v1/_conflicts?status=open&collection=bench&limit=1000")
        .await;
    assert!(!records["items"].as_array().unwrap().is_empty());
    // Every merge landed as a new version with its auto_merged record.
    assert_eq!(
        (merge["errors"].clone(), merge["refused"].clone()),
        (json!(0), json!(0)),
        "{merge}"
    );
    let merged = merge["ops"].as_u64().unwrap();
    assert!(merged > 0, "{merge}");
    let run_id = merge["run_id"].as_str().unwrap();
    let doc = server
        .get_json(&format!("/v1/bench-merge/{run_id}-0-0"))
        .await;
    assert_eq!(
        (doc["n"].clone(), doc["c"].is_u64()),
        (json!(1), true),
        "{doc}"
    );
    let auto = server
        .get_json("/v1/_conflicts?status=auto_merged&collection=bench-merge&limit=1000")
        .await;
    assert_eq!(
        auto["items"].as_array().unwrap().len() as u64,
        merged.min(1000),
        "{merge}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_then_run_on_preloaded_documents() {
    let server = TestServer::start().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args([
            "bench",
            "load",
            "--url",
            &server.base,
            "--docs",
            "40",
            "--versions",
            "3",
        ])
        .args(["--body-size", "300", "--connections", "8"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(count(&server, "load", "doc-").await, 40);
    let last = server.get("/v1/load/doc-39", &[]).await;
    assert_eq!(crate::common::header(&last, "truce-version"), "3");
    let reports = bench(&[
        "--url",
        &server.base,
        "--workload",
        "update,read,read-304",
        "--preloaded",
        "40",
        "--preloaded-version",
        "3",
        "--collection",
        "load",
        "--connections",
        "4",
        "--duration",
        "1s",
    ])
    .await;
    for report in &reports {
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["refused"], 0, "{report}");
        assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    }
}

#[tokio::test]
async fn the_ceiling_answers_without_storage() {
    let reports = bench(&[
        "--target",
        "ceiling",
        "--workload",
        "update,read-304,hot",
        "--connections",
        "2",
        "--duration",
        "1s",
    ])
    .await;
    assert_eq!(reports.len(), 3);
    for report in &reports {
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["hot_consistent"], Value::Null, "no state to check");
    }
}

#[tokio::test]
async fn only_loopback_targets_are_accepted() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args([
            "bench",
            "--url",
            "http://192.0.2.1:8409",
            "--duration",
            "1s",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

/// The mean batch `truce bench` reports comes from the server's commit metrics: with
/// a server of its own and 4 connections, every batch holds 1 to 4 writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mean_batch_is_the_servers_own() {
    let (_tmp, data) = crate::common::data_dir();
    let server = crate::common::ServerProcess::start(&data, &[]).await;
    server.ready(&crate::common::client()).await;
    let reports = bench(&[
        "--url",
        &server.base,
        "--workload",
        "update",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--docs",
        "3",
    ])
    .await;
    let mean = reports[0]["mean_batch"].as_f64().expect("a mean batch");
    assert!(
        (1.0..=4.0).contains(&mean),
        "mean batch {mean} with 4 connections"
    );
    server.kill().await;
}

/// With several `--url`s the clients take the servers in turn: creates land on
/// both, and together they are what the report counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_share_the_clients() {
    let (first, second) = (TestServer::start().await, TestServer::start().await);
    let urls = format!("{},{}", first.base, second.base);
    let reports = bench(&[
        "--url",
        &urls,
        "--workload",
        "create",
        "--connections",
        "4",
        "--duration",
        "1s",
    ])
    .await;
    let report = &reports[0];
    assert_eq!(report["errors"], 0, "{report}");
    let prefix = format!("{}-", report["run_id"].as_str().unwrap());
    let (on_first, on_second) = (
        count(&first, "bench", &prefix).await,
        count(&second, "bench", &prefix).await,
    );
    assert!(on_first > 0 && on_second > 0, "{on_first} and {on_second}");
    assert_eq!(on_first + on_second, report["ops"].as_u64().unwrap());
}
