//! The client commands of the `truce` binary: `get`, `put`, `patch`, `delete`,
//! `history`, `diff`, `revert`, `watch`, `edit`, `lock`, `unlock` and `txn`.
//!
//! They speak the HTTP API through `truce-client`. Output is readable (tables,
//! colours) on a terminal and plain when piped; `--json` prints machine-readable
//! JSON. Exit codes: 0 ok, 1 error, 2 usage, 3 conflict (409, 412, 423, 428), 4 not
//! found (404, 410).

pub mod collection;
pub mod conflicts;
pub mod edit;
pub mod keys;
pub mod lock;
pub mod read;
pub mod txn;
pub mod write;

use std::process::ExitCode;

use anstyle::{AnsiColor, Style};
use clap::Args;
use truce_client::{Client, Error as ClientError};
use truce_engine::ResourceKey;

pub use collection::CollectionArgs;
pub use conflicts::{ConflictsArgs, ResolveArgs};
pub use edit::EditArgs;
pub use keys::KeysArgs;
pub use lock::{LockArgs, UnlockArgs};
pub use read::{DiffArgs, GetArgs, HistoryArgs, WatchArgs};
pub use txn::TxnArgs;
pub use write::{DeleteArgs, PatchArgs, PutArgs, RevertArgs};

/// How to reach the server, and how to print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server.
    #[arg(long, env = "TRUCE_URL", default_value = truce_client::DEFAULT_URL)]
    pub url: String,
    /// API key (sent as a bearer token).
    #[arg(long, env = "TRUCE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print JSON for scripts instead of readable text.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// A client for these settings.
    pub fn client(&self) -> Result<Client, CliError> {
        let mut builder = Client::builder(&self.url);
        if let Some(key) = &self.key {
            builder = builder.key(key);
        }
        builder.build().map_err(|error| match error {
            // A malformed --url is a usage error, like any other bad flag.
            ClientError::Invalid(message) => CliError::Usage(format!("--url: {message}")),
            other => CliError::Client(other),
        })
    }
}

/// Why a command failed, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The server refused or could not be reached.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// A local file or the editor failed (exit 1).
    #[error("{0}")]
    Local(String),
    /// An edit collided with a concurrent change (exit 3); already reported.
    #[error("the edit overlaps a concurrent change")]
    EditConflict,
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::EditConflict => 3,
            Self::Client(error) if error.is_conflict() => 3,
            Self::Client(error) if error.is_not_found() => 4,
            Self::Client(_) | Self::Local(_) => 1,
        }
    }
}

/// Runs a command and turns its result into an exit code, printing failures:
/// readably on stderr, and with `--json` also as JSON on stdout (the problem body
/// the server sent, or `{"error", "exit_code"}`) so scripts can read it.
pub fn finish(result: Result<(), CliError>, settings: &ClientArgs) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            report(&error, &settings.url);
            if settings.json {
                let body = match &error {
                    CliError::Client(client_error) => client_error
                        .problem()
                        .map(|p| serde_json::Value::Object(p.body.clone())),
                    _ => None,
                };
                let body = body.unwrap_or_else(|| {
                    serde_json::json!({"error": error_text(&error, &settings.url), "exit_code": code})
                });
                println!("{body}");
            }
            ExitCode::from(code)
        }
    }
}

/// The one-line description of a failure that has no problem body.
fn error_text(error: &CliError, url: &str) -> String {
    match error {
        CliError::Client(client_error) if client_error.is_unreachable() => unreachable(url),
        other => other.to_string(),
    }
}

/// What to say when nothing answers at `url`.
fn unreachable(url: &str) -> String {
    format!(
        "cannot reach a truce server at {url}; start one with `truce serve`, or point --url (or TRUCE_URL) at a running one"
    )
}

/// A resource named `collection/id` on the command line.
pub fn resource(spec: &str) -> Result<ResourceKey, CliError> {
    let (collection, id) = spec
        .split_once('/')
        .ok_or_else(|| CliError::Usage(format!("{spec:?}: name a resource as collection/id")))?;
    ResourceKey::parse(collection, id).map_err(|e| CliError::Usage(e.to_string()))
}

/// Styles for readable output (anstream drops them when not on a terminal).
pub(crate) struct Styles;

impl Styles {
    pub const HEADER: Style = Style::new().bold();
    pub const GOOD: Style = AnsiColor::Green.on_default();
    pub const BAD: Style = AnsiColor::Red.on_default().bold();
    pub const NOTE: Style = AnsiColor::Yellow.on_default();
    pub const DIM: Style = Style::new().dimmed();
}

/// Prints a failure readably on stderr: what conflicted, the current version, and
/// what to do next.
fn report(error: &CliError, url: &str) {
    let bad = Styles::BAD;
    match error {
        CliError::EditConflict => {}
        CliError::Client(client_error) if client_error.is_unreachable() => {
            anstream::eprintln!("{bad}truce:{bad:#} {}", unreachable(url));
        }
        CliError::Client(client_error) => match client_error.problem() {
            Some(problem) => {
                anstream::eprintln!("{bad}truce: {}{bad:#}", problem.title.to_lowercase());
                if !problem.detail.is_empty() {
                    anstream::eprintln!("  {}", problem.detail);
                }
                if let Some(resource) = problem.body.get("resource") {
                    let collection = resource["collection"].as_str().unwrap_or_default();
                    let id = resource["id"].as_str().unwrap_or_default();
                    if let (Some(version), Some(etag)) =
                        (problem.current_version, &problem.current_etag)
                    {
                        let note = Styles::NOTE;
                        anstream::eprintln!(
                            "  current: {collection}/{id} is at version {version}, ETag {etag}"
                        );
                        anstream::eprintln!(
                            "  {note}next:{note:#} read it again (truce get {collection}/{id}), re-apply your change, and retry with --if-match '{etag}' (or use truce edit)"
                        );
                    }
                }
                if let Some(failed) = problem.failed_op() {
                    anstream::eprintln!(
                        "  failed op: {} ({}), {}; nothing of the transaction was applied",
                        failed.index,
                        failed.op,
                        failed.reason
                    );
                }
                if let Some(holder) = problem.body.get("holder").filter(|h| h.is_object()) {
                    let owner = holder["owner"].as_str().unwrap_or_default();
                    anstream::eprintln!(
                        "  held by {}{} (fence {}) until {}",
                        holder["by"].as_str().unwrap_or_default(),
                        if owner.is_empty() {
                            String::new()
                        } else {
                            format!(", {owner:?}")
                        },
                        holder["fence"],
                        holder["expires_at"].as_str().unwrap_or_default(),
                    );
                }
                if !problem.slug.is_empty() {
                    let dim = Styles::DIM;
                    anstream::eprintln!("  {dim}see /problems/{}{dim:#}", problem.slug);
                }
            }
            None => anstream::eprintln!("{bad}truce:{bad:#} {client_error}"),
        },
        other => anstream::eprintln!("{bad}truce:{bad:#} {other}"),
    }
}

/// Reads a JSON document from a file, or from standard input for `-`.
pub(crate) fn read_json_input(source: &str) -> Result<serde_json::Value, CliError> {
    let text = if source == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Local(format!("cannot read standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| CliError::Local(format!("cannot read {source}: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{}: not valid JSON: {e}",
            if source == "-" {
                "standard input"
            } else {
                source
            }
        ))
    })
}

/// Pretty JSON, two spaces, as `get` and `edit` show documents.
pub(crate) fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}
