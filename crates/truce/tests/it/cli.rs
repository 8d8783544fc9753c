//! The `truce` CLI end to end: every command, every exit code, `--json` output, and
//! `edit` with a scripted editor that makes a concurrent change before saving.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::common::{TestServer, header};

/// Runs `truce ARGS` against `server`, with `stdin` fed to it.
async fn truce(server: &TestServer, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"));
    command
        .args(args)
        .env("TRUCE_URL", &server.base)
        .env_remove("VISUAL")
        .env_remove("EDITOR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn truce");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.expect("truce output")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_out(output: &Output) -> Value {
    serde_json::from_str(stdout(output).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

#[tokio::test]
async fn writes_reads_and_exit_codes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.json");
    std::fs::write(&file, r#"{"title": "milk", "n": 1}"#).unwrap();
    let file = file.to_str().unwrap();

    // put from a file, --json.
    let out = truce(&server, &["put", "notes/a", file, "--json"], "", &[]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let written = json_out(&out);
    assert_eq!(written["outcome"], "created");
    assert_eq!(written["version"], 1);
    let first_etag = written["etag"].as_str().unwrap().to_owned();

    // put from stdin, readable output.
    let out = truce(
        &server,
        &["put", "notes/a", "-"],
        r#"{"title": "milk", "n": 2}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("updated notes/a: version 2"),
        "{}",
        stdout(&out)
    );

    // get prints the document; -v adds the validators on stderr; --json an envelope.
    let out = truce(&server, &["get", "notes/a", "-v"], "", &[]).await;
    assert_eq!(code(&out), 0);
    assert_eq!(json_out(&out), json!({"title": "milk", "n": 2}));
    assert!(stderr(&out).contains("ETag: \"2-"), "{}", stderr(&out));
    let out = truce(&server, &["get", "notes/a", "--json"], "", &[]).await;
    let envelope = json_out(&out);
    assert_eq!(
        (envelope["version"].as_u64(), envelope["doc"]["n"].as_u64()),
        (Some(2), Some(2))
    );
    let current_etag = envelope["etag"].as_str().unwrap().to_owned();
    let out = truce(&server, &["get", "notes/a", "--version", "1"], "", &[]).await;
    assert_eq!(json_out(&out)["n"], 1);

    // A stale --if-match: exit 3, with the current version and what to do.
    let out = truce(
        &server,
        &["put", "notes/a", "-", "--if-match", &first_etag],
        r#"{"n": 9}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 3);
    let err = stderr(&out);
    assert!(err.contains("precondition failed"), "{err}");
    assert!(
        err.contains(&format!("notes/a is at version 2, ETag {current_etag}")),
        "{err}"
    );
    assert!(err.contains("next:"), "{err}");
    let out = truce(
        &server,
        &["put", "notes/a", "-", "--if-version", "1"],
        r#"{"n": 9}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 3);
    let out = truce(
        &server,
        &["put", "notes/a", "-", "--create"],
        r#"{"n": 9}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 3);

    // patch: merge patch, JSON Patch, and a failed test (conflict).
    let out = truce(
        &server,
        &[
            "patch",
            "notes/a",
            "-",
            "--if-match",
            &current_etag,
            "--json",
        ],
        r#"{"done": true}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_out(&out)["version"], 3);
    let out = truce(
        &server,
        &["patch", "notes/a", "-", "--json-patch"],
        r#"[{"op":"add","path":"/tags","value":["x"]}]"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = truce(
        &server,
        &["patch", "notes/a", "-", "--json-patch"],
        r#"[{"op":"test","path":"/n","value":0}]"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 3);

    // history and diff.
    let out = truce(&server, &["history", "notes/a", "--json"], "", &[]).await;
    let versions: Vec<u64> = json_out(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1]);
    let out = truce(&server, &["history", "notes/a"], "", &[]).await;
    assert!(stdout(&out).contains("VERSION"), "{}", stdout(&out));
    let out = truce(
        &server,
        &["diff", "notes/a", "--from", "1", "--to", "2", "--json"],
        "",
        &[],
    )
    .await;
    assert_eq!(
        json_out(&out),
        json!([{"op": "replace", "path": "/n", "value": 2}])
    );
    let out = truce(
        &server,
        &["diff", "notes/a", "--from", "1", "--to", "2"],
        "",
        &[],
    )
    .await;
    assert!(stdout(&out).contains("replace  /n = 2"), "{}", stdout(&out));

    // revert, then delete; a deleted resource is "not found".
    let out = truce(
        &server,
        &["revert", "notes/a", "--to", "1", "--json"],
        "",
        &[],
    )
    .await;
    assert_eq!(json_out(&out)["version"], 5);
    assert_eq!(
        server.get_json("/v1/notes/a").await,
        json!({"title": "milk", "n": 1})
    );
    let out = truce(&server, &["delete", "notes/a"], "", &[]).await;
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("deleted notes/a: version 6"));
    let out = truce(&server, &["get", "notes/a"], "", &[]).await;
    assert_eq!(code(&out), 4);
    let out = truce(&server, &["delete", "notes/a"], "", &[]).await;
    assert_eq!(code(&out), 4);
    let out = truce(&server, &["get", "notes/never"], "", &[]).await;
    assert_eq!(code(&out), 4);

    // Usage errors: exit 2.
    for args in [
        &["get", "no-slash"][..],
        &["get", "Bad/name"],
        &["get"],
        &["put", "notes/a"],
        &["frobnicate"],
    ] {
        let out = truce(&server, args, "", &[]).await;
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    let out = truce(&server, &["put", "notes/b", "-"], "not json", &[]).await;
    assert_eq!(code(&out), 2);

    // Anything else: exit 1 (nothing listens on port 1).
    let out = truce(
        &server,
        &["get", "notes/a", "--url", "http://127.0.0.1:1"],
        "",
        &[],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_as_they_come() {
    let server = TestServer::start().await;
    server.create("/v1/w/a", &json!({"n": 0})).await;
    let since = "1";
    let watching = {
        let base = server.base.clone();
        tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
                .args([
                    "watch", "w", "--since", since, "--count", "2", "--json", "--url", &base,
                ])
                .output()
                .await
                .unwrap()
        })
    };
    let one = {
        let base = server.base.clone();
        tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
                .args([
                    "watch", "w/a", "--since", since, "--count", "1", "--url", &base,
                ])
                .output()
                .await
                .unwrap()
        })
    };
    server.put("/v1/w/b", &json!({}), &[]).await;
    server.put("/v1/w/a", &json!({"n": 1}), &[]).await;
    let out = watching.await.unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["id"].as_str(), lines[0]["revision"].as_u64()),
        (Some("b"), Some(2))
    );
    assert_eq!(
        (lines[1]["id"].as_str(), lines[1]["version"].as_u64()),
        (Some("a"), Some(2))
    );
    let out = one.await.unwrap();
    assert!(stdout(&out).contains("w/a v2"), "{}", stdout(&out));
}

/// Writes an editor script into `dir` and returns its path.
fn editor(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join(format!("editor-{}.sh", fastrand_suffix()));
    std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&path, permissions).unwrap();
    path
}

/// An editor that, while the user edits, lets someone else merge-patch the same
/// document with `theirs`, then saves `mine` as the edited document.
fn racing_editor(dir: &Path, resource: &str, theirs: &str, mine: &str) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_truce");
    editor(
        dir,
        &format!(
            "echo '{theirs}' | \"{bin}\" patch {resource} - >/dev/null\ncat > \"$1\" <<'EOF'\n{mine}\nEOF"
        ),
    )
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn edit_saves_and_merges_disjoint_concurrent_changes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    server
        .create("/v1/notes/e", &json!({"title": "milk", "n": 1}))
        .await;

    // No change: nothing written.
    let out = truce(&server, &["edit", "notes/e"], "", &[("EDITOR", "true")]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("no changes"));

    // A plain edit, with the editor named by VISUAL and taking an argument.
    let plain = editor(
        dir.path(),
        r#"for file in "$@"; do :; done
cat > "$file" <<'EOF'
{"title": "oat milk", "n": 1}
EOF"#,
    );
    let visual = format!("{} --wait", plain.display());
    let out = truce(&server, &["edit", "notes/e"], "", &[("VISUAL", &visual)]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(server.get_json("/v1/notes/e").await["title"], "oat milk");

    // Someone changes another field while we edit: both changes survive.
    let concurrent = racing_editor(
        dir.path(),
        "notes/e",
        r#"{"owner": "bob"}"#,
        r#"{"title": "oat milk", "n": 2}"#,
    );
    let out = truce(
        &server,
        &["edit", "notes/e"],
        "",
        &[("EDITOR", concurrent.to_str().unwrap())],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("merged"), "{}", stderr(&out));
    assert!(stderr(&out).contains("yours:  /n"), "{}", stderr(&out));
    assert!(stderr(&out).contains("theirs: /owner"), "{}", stderr(&out));
    assert_eq!(
        server.get_json("/v1/notes/e").await,
        json!({"title": "oat milk", "n": 2, "owner": "bob"})
    );
    let versions = server.get_json("/v1/notes/e/versions?limit=1").await;
    assert_eq!(versions["items"][0]["version"], 4);
}

#[tokio::test]
async fn edit_never_loses_an_overlapping_edit() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    server
        .create("/v1/notes/o", &json!({"title": "milk", "n": 1}))
        .await;
    let overlapping = racing_editor(
        dir.path(),
        "notes/o",
        r#"{"n": 100}"#,
        r#"{"title": "milk", "n": 5}"#,
    );
    let out = truce(
        &server,
        &["edit", "notes/o"],
        "",
        &[("EDITOR", overlapping.to_str().unwrap())],
    )
    .await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("/n"), "{err}");
    assert!(err.contains("base:   1"), "{err}");
    assert!(err.contains("mine:   5"), "{err}");
    assert!(err.contains("theirs: 100"), "{err}");
    // Nothing of the edit was written.
    let read = server.get("/v1/notes/o", &[]).await;
    assert_eq!(header(&read, "truce-version"), "2");
    assert_eq!(
        read.json::<Value>().await.unwrap(),
        json!({"title": "milk", "n": 100})
    );
    // The edit is in the file the message names.
    assert_eq!(saved_edit(&err), json!({"title": "milk", "n": 5}));
}

/// The file a failed edit names on stderr.
fn saved_edit(err: &str) -> Value {
    let saved = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("your edit is saved in "))
        .unwrap_or_else(|| panic!("the file is not named: {err}"));
    let kept = serde_json::from_str(&std::fs::read_to_string(saved).unwrap()).unwrap();
    let _ = std::fs::remove_file(saved);
    kept
}

#[tokio::test]
async fn an_edit_of_a_document_deleted_meanwhile_is_kept() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    server.create("/v1/notes/gone", &json!({"n": 1})).await;
    let bin = env!("CARGO_BIN_EXE_truce");
    let deleting = editor(
        dir.path(),
        &format!("\"{bin}\" delete notes/gone >/dev/null\ncat > \"$1\" <<'EOF'\n{{\"n\": 2}}\nEOF"),
    );
    let out = truce(
        &server,
        &["edit", "notes/gone"],
        "",
        &[("EDITOR", deleting.to_str().unwrap())],
    )
    .await;
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(saved_edit(&stderr(&out)), json!({"n": 2}));
}

#[tokio::test]
async fn usage_errors_json_errors_and_an_unreachable_server() {
    let server = TestServer::start().await;
    server.create("/v1/notes/u", &json!({"n": 1})).await;
    // A malformed --if-match or --url is a usage error (exit 2), sent nowhere.
    let out = truce(
        &server,
        &["put", "notes/u", "-", "--if-match", "no-quotes"],
        "{}",
        &[],
    )
    .await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--if-match"), "{}", stderr(&out));
    for url in ["ftp://127.0.0.1:1", "http://exa mple", "127.0.0.1:8409"] {
        let out = truce(&server, &["get", "notes/u", "--url", url], "", &[]).await;
        assert_eq!(code(&out), 2, "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains("--url"), "{}", stderr(&out));
    }
    assert_eq!(server.get_json("/v1/notes/u").await, json!({"n": 1}));

    // With --json, a refusal is the problem body on stdout.
    let out = truce(&server, &["get", "notes/missing", "--json"], "", &[]).await;
    assert_eq!(code(&out), 4);
    let problem = json_out(&out);
    assert_eq!(problem["type"], "/problems/not-found");
    assert_eq!(problem["status"], 404);
    let out = truce(
        &server,
        &["put", "notes/u", "-", "--if-version", "9", "--json"],
        "{}",
        &[],
    )
    .await;
    assert_eq!(code(&out), 3);
    let problem = json_out(&out);
    assert_eq!(problem["type"], "/problems/version-conflict");
    assert_eq!(problem["current_version"], 1);
    // Other failures too, with the exit code.
    let out = truce(&server, &["put", "notes/u", "-", "--json"], "not json", &[]).await;
    assert_eq!(code(&out), 2);
    assert_eq!(json_out(&out)["exit_code"], 2);

    // Nothing listening: say how to start a server or where to point.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let out = truce(&server, &["get", "notes/u", "--url", &closed], "", &[]).await;
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("truce serve") && err.contains("TRUCE_URL"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_json_reopens_the_editor_or_aborts_when_unchanged() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    server.create("/v1/notes/j", &json!({"n": 1})).await;
    // First save is broken; the second (after seeing the error) is fixed.
    let counter = dir.path().join("count");
    let fixing = editor(
        dir.path(),
        &format!(
            r#"if [ -f "{c}" ]; then
  grep -q '^// truce: not valid JSON' "$1"
  echo '{{"n": 2}}' > "$1"
else
  touch "{c}"
  echo '{{"n": ' > "$1"
fi"#,
            c = counter.display()
        ),
    );
    let out = truce(
        &server,
        &["edit", "notes/j"],
        "",
        &[("EDITOR", fixing.to_str().unwrap())],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("opening the editor again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.get_json("/v1/notes/j").await, json!({"n": 2}));

    // Broken, and left broken: the edit is abandoned, nothing written.
    let stubborn = editor(
        dir.path(),
        r#"grep -q '^// truce' "$1" || echo '{"n": ' > "$1""#,
    );
    let out = truce(
        &server,
        &["edit", "notes/j"],
        "",
        &[("EDITOR", stubborn.to_str().unwrap())],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("edit abandoned"), "{err}");
    assert_eq!(server.get_json("/v1/notes/j").await, json!({"n": 2}));
    // The text is kept in the file the message names.
    let kept = err
        .trim()
        .rsplit_once("your text is in ")
        .map(|(_, path)| path.to_owned())
        .unwrap_or_else(|| panic!("the file is not named: {err}"));
    let text = std::fs::read_to_string(&kept).unwrap();
    let _ = std::fs::remove_file(&kept);
    assert!(text.contains(r#"{"n": "#), "{text}");
}

#[tokio::test]
async fn conflicts_are_listed_shown_and_resolved() {
    let server = TestServer::start().await;
    let base = server
        .create("/v1/notes/c", &json!({"title": "milk", "n": 1}))
        .await;
    server
        .put("/v1/notes/c", &json!({"title": "milk", "n": 5}), &[])
        .await;
    let refused = server
        .put(
            "/v1/notes/c",
            &json!({"title": "oat milk", "n": 1}),
            &[("if-match", &base)],
        )
        .await;
    assert_eq!(refused.status(), 412);
    let cid = refused.json::<Value>().await.unwrap()["conflict_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = truce(&server, &["conflicts", "--open", "--json"], "", &[]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = json_out(&out);
    assert_eq!(listed[0]["id"], cid.as_str());
    let out = truce(&server, &["conflicts"], "", &[]).await;
    assert!(stdout(&out).contains(&cid), "{}", stdout(&out));
    assert!(stdout(&out).contains("notes/c"), "{}", stdout(&out));
    // One record, three ways (`conflicts show CID`, or `conflicts CID`).
    let out = truce(&server, &["conflicts", "show", &cid], "", &[]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("theirs: 5"), "{}", stdout(&out));
    let out = truce(&server, &["conflicts", &cid], "", &[]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains("/title") && shown.contains("/n"), "{shown}");
    assert!(shown.contains("ours:   \"oat milk\""), "{shown}");
    assert!(shown.contains("theirs: 5"), "{shown}");

    let out = truce(&server, &["resolve", &cid, "--ours"], "", &[]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("resolved (ours)"), "{}", stdout(&out));
    assert_eq!(
        server.get_json("/v1/notes/c").await,
        json!({"title": "oat milk", "n": 1})
    );
    // Closed: resolving again is a conflict (exit 3); an unknown record is exit 4.
    let out = truce(&server, &["resolve", &cid, "--dismiss"], "", &[]).await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = truce(&server, &["resolve", "01NOSUCHRECORD", "--theirs"], "", &[]).await;
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let out = truce(&server, &["resolve", &cid], "", &[]).await;
    assert_eq!(code(&out), 2, "a side is required");
}

#[tokio::test]
async fn collection_settings_are_read_and_changed_guarded() {
    let server = TestServer::start().await;
    let out = truce(&server, &["collection", "get", "notes", "--json"], "", &[]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json_out(&out)["conflict_policy"], "reject");
    let out = truce(
        &server,
        &[
            "collection",
            "set",
            "notes",
            "--policy",
            "merge",
            "--max-versions",
            "10",
            "--json",
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_out(&out),
        json!({"conflict_policy": "merge", "require_preconditions": false,
               "history": {"max_versions": 10}, "limits": {}})
    );
    // A file replaces the whole document; flags apply on top.
    let out = truce(
        &server,
        &[
            "collection",
            "set",
            "notes",
            "-",
            "--require-preconditions",
            "true",
            "--json",
        ],
        r#"{"conflict_policy": "last_write_wins"}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_out(&out),
        json!({"conflict_policy": "last_write_wins", "require_preconditions": true,
               "history": {}, "limits": {}})
    );
    let out = truce(&server, &["collection", "get", "notes"], "", &[]).await;
    assert!(stdout(&out).contains("version 2"), "{}", stdout(&out));
    // The per-resource write limit has a flag too; a bad rate is refused (exit 1).
    let out = truce(
        &server,
        &[
            "collection",
            "set",
            "notes",
            "--writes-per-resource",
            "20/s",
            "--json",
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_out(&out)["limits"],
        json!({"writes_per_resource": "20/s"})
    );
    let out = truce(
        &server,
        &[
            "collection",
            "set",
            "notes",
            "--writes-per-resource",
            "fast",
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writes_per_resource"),
        "{}",
        stderr(&out)
    );
    // A key not built yet is refused by name (exit 1), nothing changed.
    let out = truce(
        &server,
        &["collection", "set", "notes", "-"],
        r#"{"schema": {}}"#,
        &[],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("schema"), "{}", stderr(&out));
}

#[tokio::test]
async fn conflicts_watch_prints_each_event() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start().await;
    let base = server.create("/v1/w/doc", &json!({"n": 1})).await;
    server.put("/v1/w/doc", &json!({"n": 2}), &[]).await;
    let refused = server
        .put("/v1/w/doc", &json!({"n": 9}), &[("if-match", &base)])
        .await;
    assert_eq!(refused.status(), 412);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args([
            "conflicts",
            "--watch",
            "--since",
            "0",
            "--collection",
            "w",
            "--json",
        ])
        .env("TRUCE_URL", &server.base)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("a watched event in time")
            .unwrap()
            .expect("the watch still running")
    };
    let line = next_line().await;
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "conflict.detected");
    assert_eq!(event["resource"], json!({"collection": "w", "id": "doc"}));
    assert_eq!(event["type"], "precondition-failed");
    // And it follows live: a dismissal arrives next.
    let cid = event["conflict_id"].as_str().unwrap().to_owned();
    server
        .client
        .post(server.url(&format!("/v1/_conflicts/{cid}/dismiss")))
        .send()
        .await
        .unwrap();
    let next: Value = serde_json::from_str(&next_line().await).unwrap();
    assert_eq!(
        (next["event"].clone(), next["conflict_id"].clone()),
        (json!("conflict.dismissed"), json!(cid))
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn lock_shows_writes_under_and_unlocks() {
    let server = TestServer::start().await;
    let run = |args: &'static [&'static str]| truce(&server, args, "", &[]);
    let put = truce(&server, &["put", "jobs/a", "-"], r#"{"n": 0}"#, &[]).await;
    assert_eq!(code(&put), 0, "{}", stderr(&put));

    let locked = run(&[
        "lock", "jobs/a", "--ttl", "1m", "--owner", "deploy", "--json",
    ])
    .await;
    assert_eq!(code(&locked), 0, "{}", stderr(&locked));
    let grant = json_out(&locked);
    let token = grant["token"].as_str().expect("token").to_owned();
    assert_eq!(
        (grant["fence"].as_u64(), &grant["owner"]),
        (Some(1), &json!("deploy"))
    );

    // Held: a second lock and an unguarded write are conflicts (exit 3), with
    // the holder named.
    let again = run(&["lock", "jobs/a"]).await;
    assert_eq!(code(&again), 3);
    assert!(stderr(&again).contains("held by"), "{}", stderr(&again));
    let unguarded = truce(&server, &["put", "jobs/a", "-"], r#"{"n": 1}"#, &[]).await;
    assert_eq!(code(&unguarded), 3);
    let args = ["put", "jobs/a", "-", "--lock-token", token.as_str()];
    let guarded = truce(&server, &args, r#"{"n": 1}"#, &[]).await;
    assert_eq!(code(&guarded), 0, "{}", stderr(&guarded));

    let shown = run(&["lock", "jobs/a", "--show", "--json"]).await;
    let shown = json_out(&shown);
    assert_eq!(
        (shown["fence"].as_u64(), shown.get("token")),
        (Some(1), None)
    );
    let plain = stdout(&run(&["lock", "jobs/a", "--show"]).await);
    assert!(
        plain.contains("deploy") && !plain.contains(&token),
        "{plain}"
    );

    let wrong = run(&[
        "unlock",
        "jobs/a",
        "--token",
        "0123456789abcdef0123456789abcdef",
    ])
    .await;
    assert_eq!(code(&wrong), 3);
    let args = ["unlock", "jobs/a", "--token", token.as_str()];
    let released = truce(&server, &args, "", &[]).await;
    assert_eq!(code(&released), 0, "{}", stderr(&released));
    assert!(stdout(&run(&["lock", "jobs/a", "--show"]).await).contains("not locked"));

    // Broken with --force; a usage error without a token or --force.
    assert_eq!(code(&run(&["lock", "jobs/a"]).await), 0);
    assert_eq!(code(&run(&["unlock", "jobs/a", "--force"]).await), 0);
    assert_eq!(code(&run(&["unlock", "jobs/a"]).await), 2);
    assert_eq!(code(&run(&["lock", "jobs/a", "--ttl", "2h"]).await), 1);
}

#[tokio::test]
async fn txn_applies_a_file_of_ops_or_names_the_failed_op() {
    let server = TestServer::start().await;
    let ops = r#"{"ops": [
        {"op": "create", "collection": "stock", "id": "s1", "doc": {"n": 1}},
        {"op": "create", "collection": "stock", "id": "s2", "doc": {"n": 2}}
    ]}"#;
    let applied = truce(&server, &["txn", "-", "--json"], ops, &[]).await;
    assert_eq!(code(&applied), 0, "{}", stderr(&applied));
    let body = json_out(&applied);
    assert_eq!(body["results"][1]["outcome"], "created");
    let plain = truce(
        &server,
        &["txn", "-"],
        r#"[{"op": "check", "collection": "stock", "id": "s1", "if_version": 1}]"#,
        &[],
    )
    .await;
    assert_eq!(code(&plain), 0, "{}", stderr(&plain));
    assert!(stdout(&plain).contains("checked"), "{}", stdout(&plain));
    // Creating s2 again fails op 1: exit 3, the op named, nothing applied.
    let again = r#"[{"op": "put", "collection": "stock", "id": "s3", "doc": {}},
                    {"op": "create", "collection": "stock", "id": "s2", "doc": {}}]"#;
    let refused = truce(&server, &["txn", "-"], again, &[]).await;
    assert_eq!(code(&refused), 3);
    assert!(
        stderr(&refused).contains("failed op: 1 (create)"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(server.get("/v1/stock/s3", &[]).await.status(), 404);
    let usage = truce(&server, &["txn", "-"], r#""ops""#, &[]).await;
    assert_eq!(code(&usage), 2);
}
