//! Writing commands: `put`, `patch`, `delete` and `revert`.

use clap::Args;
use serde_json::json;
use truce_client::{Outcome, WriteRequest, Written};

use super::{CliError, ClientArgs, Styles, read_json_input, resource};

/// Preconditions shared by the writing commands.
#[derive(Debug, Clone, Args)]
pub struct WriteConditions {
    /// Apply only if the resource is still at this ETag.
    #[arg(long, value_name = "ETAG")]
    pub if_match: Option<String>,
    /// Apply only if the resource is at this version (0: must not exist).
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    /// Write under a lock: the token `truce lock` printed.
    #[arg(long, value_name = "TOKEN")]
    pub lock_token: Option<String>,
}

impl WriteConditions {
    /// Adds the conditions to `request`; a malformed `--if-match` is a usage error
    /// (an entity-tag is quoted: `'"3-1a2b3c4d"'`, or `*`).
    fn apply<'a>(&self, mut request: WriteRequest<'a>) -> Result<WriteRequest<'a>, CliError> {
        if let Some(etag) = &self.if_match {
            truce_engine::TagCondition::parse([etag.as_str()]).map_err(|e| {
                CliError::Usage(format!(
                    "--if-match {etag:?}: {e} (an ETag is quoted, e.g. --if-match '\"3-1a2b3c4d\"', or *)"
                ))
            })?;
            request = request.if_match(etag);
        }
        if let Some(version) = self.if_version {
            request = request.if_version(version);
        }
        if let Some(token) = &self.lock_token {
            request = request.lock_token(token);
        }
        Ok(request)
    }
}

/// `truce put collection/id FILE|-`: create or replace a document.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// A file holding the JSON document, or `-` for standard input.
    pub file: String,
    /// Create only: fail if the resource exists (If-None-Match: *).
    #[arg(long)]
    pub create: bool,
    #[command(flatten)]
    pub conditions: WriteConditions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `put`.
pub async fn put(args: PutArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let doc = read_json_input(&args.file)?;
    let client = args.client.client()?;
    let mut request =
        args.conditions
            .apply(client.put(key.collection.as_str(), key.id.as_str(), &doc))?;
    if args.create {
        request = request.if_none_match_any();
    }
    let written = request.send().await?;
    print_written(&args.resource, &written, args.client.json);
    Ok(())
}

/// `truce patch collection/id FILE|-`: apply a merge patch (or a JSON Patch).
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// A file holding the patch, or `-` for standard input.
    pub file: String,
    /// The patch is an RFC 6902 JSON Patch (default: an RFC 7396 merge patch).
    #[arg(long)]
    pub json_patch: bool,
    #[command(flatten)]
    pub conditions: WriteConditions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `patch`.
pub async fn patch(args: PatchArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let patch = read_json_input(&args.file)?;
    let client = args.client.client()?;
    let (collection, id) = (key.collection.as_str(), key.id.as_str());
    let request = if args.json_patch {
        client.json_patch(collection, id, &patch)
    } else {
        client.merge_patch(collection, id, &patch)
    };
    let written = args.conditions.apply(request)?.send().await?;
    print_written(&args.resource, &written, args.client.json);
    Ok(())
}

/// `truce delete collection/id`: delete a document (a tombstone version).
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The resource, as collection/id.
    pub resource: String,
    #[command(flatten)]
    pub conditions: WriteConditions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `delete`.
pub async fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let request = client.delete(key.collection.as_str(), key.id.as_str());
    let written = args.conditions.apply(request)?.send().await?;
    print_written(&args.resource, &written, args.client.json);
    Ok(())
}

/// `truce revert collection/id --to N`: a new version with version N's content.
#[derive(Debug, Args)]
pub struct RevertArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// The version to restore.
    #[arg(long)]
    pub to: u64,
    #[command(flatten)]
    pub conditions: WriteConditions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `revert`.
pub async fn revert(args: RevertArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let request = client.revert(key.collection.as_str(), key.id.as_str(), args.to);
    let written = args.conditions.apply(request)?.send().await?;
    print_written(&args.resource, &written, args.client.json);
    Ok(())
}

/// Prints what a write did.
pub(crate) fn print_written(resource: &str, written: &Written, json: bool) {
    let outcome = outcome_name(written.outcome);
    if json {
        let line = json!({
            "outcome": outcome, "etag": written.etag,
            "version": written.version, "revision": written.revision,
        });
        println!("{line}");
        return;
    }
    let style = if written.outcome.changed() {
        Styles::GOOD
    } else {
        Styles::NOTE
    };
    anstream::println!(
        "{style}{outcome}{style:#} {resource}: version {}, ETag {}",
        written.version,
        written.etag
    );
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Created => "created",
        Outcome::Updated => "updated",
        Outcome::Unchanged => "unchanged",
        Outcome::Deleted => "deleted",
    }
}
