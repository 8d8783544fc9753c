//! Reading commands: `get`, `history`, `diff` and `watch`.

use clap::Args;
use futures_util::StreamExt;
use serde_json::{Value, json};
use truce_client::{Change, ChangesOptions};

use super::{CliError, ClientArgs, Styles, pretty, resource};

/// `truce get collection/id`: print a document.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// A past version instead of the current one.
    #[arg(long)]
    pub version: Option<u64>,
    /// Also print the ETag, version and revision (on stderr).
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `get`.
pub async fn get(args: GetArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let (collection, id) = (key.collection.as_str(), key.id.as_str());
    let doc = match args.version {
        Some(version) => client.get_version::<Value>(collection, id, version).await?,
        None => client.get::<Value>(collection, id).await?,
    };
    if args.verbose {
        let dim = Styles::DIM;
        anstream::eprintln!("{dim}ETag: {}{dim:#}", doc.etag);
        anstream::eprintln!("{dim}Truce-Version: {}{dim:#}", doc.version);
        anstream::eprintln!("{dim}Truce-Revision: {}{dim:#}", doc.revision);
    }
    if args.client.json {
        let envelope = json!({
            "collection": collection, "id": id, "etag": doc.etag,
            "version": doc.version, "revision": doc.revision, "doc": doc.value,
        });
        println!("{envelope}");
    } else {
        println!("{}", pretty(&doc.value));
    }
    Ok(())
}

/// `truce history collection/id`: the versions, newest first.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// Show at most this many versions.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `history`.
pub async fn history(args: HistoryArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    while entries.len() < args.limit {
        let page = client
            .versions(
                key.collection.as_str(),
                key.id.as_str(),
                cursor.as_deref(),
                Some((args.limit - entries.len()).min(1000)),
            )
            .await?;
        entries.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if args.client.json {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({"version": e.version, "etag": e.etag, "revision": e.revision,
                       "op": e.op, "at": e.at, "by": e.by, "size": e.size})
            })
            .collect();
        println!("{}", Value::Array(list));
        return Ok(());
    }
    let header = Styles::HEADER;
    anstream::println!(
        "{header}{:>7}  {:<14}  {:>8}  {:<8}  {:<24}  {:<12}  {:>6}{header:#}",
        "VERSION",
        "ETAG",
        "REVISION",
        "OP",
        "AT",
        "BY",
        "SIZE"
    );
    for e in &entries {
        let style = if e.op == "delete" {
            Styles::NOTE
        } else {
            Styles::DIM
        };
        anstream::println!(
            "{:>7}  {:<14}  {:>8}  {style}{:<8}{style:#}  {:<24}  {:<12}  {:>6}",
            e.version,
            e.etag,
            e.revision,
            e.op,
            e.at,
            e.by,
            e.size
        );
    }
    Ok(())
}

/// `truce diff collection/id`: the JSON Patch between two versions.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// From this version (default: the one before `--to`).
    #[arg(long)]
    pub from: Option<u64>,
    /// To this version (default: the current one).
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `diff`.
pub async fn diff(args: DiffArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let patch = client
        .diff(key.collection.as_str(), key.id.as_str(), args.from, args.to)
        .await?;
    if args.client.json {
        println!("{patch}");
        return Ok(());
    }
    let ops = patch.as_array().cloned().unwrap_or_default();
    if ops.is_empty() {
        anstream::println!("{}no differences{:#}", Styles::DIM, Styles::DIM);
    }
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("?");
        let path = op["path"].as_str().unwrap_or("");
        let style = match kind {
            "add" => Styles::GOOD,
            "remove" => Styles::BAD,
            _ => Styles::NOTE,
        };
        match op.get("value") {
            Some(value) => anstream::println!("{style}{kind:<8}{style:#} {path} = {value}"),
            None => anstream::println!("{style}{kind:<8}{style:#} {path}"),
        }
    }
    Ok(())
}

/// `truce watch collection[/id]`: print changes as they are committed.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A collection, or one resource as collection/id.
    pub target: String,
    /// Start after this revision (default: now).
    #[arg(long)]
    pub since: Option<u64>,
    /// Stop after this many changes (default: follow until interrupted).
    #[arg(long)]
    pub count: Option<usize>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `watch`.
pub async fn watch(args: WatchArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let stream = if args.target.contains('/') {
        let key = resource(&args.target)?;
        client
            .watch(key.collection.as_str(), key.id.as_str(), args.since)
            .boxed()
    } else {
        truce_engine::CollectionName::parse(&args.target)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let since = match args.since {
            Some(since) => since,
            None => client.head_revision().await?,
        };
        client
            .changes(ChangesOptions {
                since: Some(since),
                collection: Some(args.target.clone()),
                include_docs: false,
            })
            .boxed()
    };
    let limit = args.count.unwrap_or(usize::MAX);
    let mut stream = stream.take(limit);
    while let Some(change) = stream.next().await {
        print_change(&change?, args.client.json);
    }
    Ok(())
}

fn print_change(change: &Change, json: bool) {
    if json {
        let line = json!({
            "revision": change.revision, "collection": change.collection, "id": change.id,
            "version": change.version, "etag": change.etag, "op": change.op, "at": change.at,
        });
        println!("{line}");
        return;
    }
    let style = match change.op.as_str() {
        "create" => Styles::GOOD,
        "delete" => Styles::BAD,
        _ => Styles::NOTE,
    };
    anstream::println!(
        "{dim}r{:<8}{dim:#} {style}{:<8}{style:#} {}/{} v{} {}",
        change.revision,
        change.op,
        change.collection,
        change.id,
        change.version,
        change.etag,
        dim = Styles::DIM,
    );
}
