//! `truce conflicts` and `truce resolve`: the conflict records a server keeps of
//! every refused write (SPEC §7), and closing them.

use clap::Args;
use serde_json::Value;
use truce_client::{ConflictQuery, Resolution};

use super::{CliError, ClientArgs, Styles, read_json_input};

/// `truce conflicts [show] [CID]`: list records, follow new ones, or show one
/// three ways.
#[derive(Debug, Args)]
pub struct ConflictsArgs {
    /// `show CID` (or just `CID`): show this record (base / ours / theirs per
    /// differing path) instead of a list.
    #[arg(num_args = 0..=2, value_names = ["show", "CID"])]
    pub show: Vec<String>,
    /// Follow conflict events as they happen (detected, resolved, dismissed) until
    /// interrupted; with --collection, only that collection's.
    #[arg(long, conflicts_with_all = ["show", "status", "open"])]
    pub watch: bool,
    /// With --watch: start after this event position (0: from the first event
    /// kept) instead of from now.
    #[arg(long, requires = "watch")]
    pub since: Option<u64>,
    /// Only open records.
    #[arg(long)]
    pub open: bool,
    /// Only records in this state (open, resolved, dismissed, ...).
    #[arg(long, conflicts_with = "open")]
    pub status: Option<String>,
    /// Only records of this collection.
    #[arg(long)]
    pub collection: Option<String>,
    /// Show at most this many records.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `conflicts`.
pub async fn conflicts(args: ConflictsArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let cid = match args.show.as_slice() {
        [] => None,
        [word, cid] if word == "show" => Some(cid),
        [cid] if cid != "show" => Some(cid),
        _ => return Err(CliError::Usage("write: truce conflicts show CID".into())),
    };
    if args.watch {
        return watch(&client, &args).await;
    }
    if let Some(cid) = cid {
        let record = client.conflict(cid).await?;
        if args.client.json {
            println!("{record}");
        } else {
            show(&record);
        }
        return Ok(());
    }
    let mut query = ConflictQuery {
        status: args.status.clone().or(args.open.then(|| "open".to_owned())),
        collection: args.collection.clone(),
        ..ConflictQuery::default()
    };
    let mut records = Vec::new();
    while records.len() < args.limit {
        query.limit = Some((args.limit - records.len()).min(1000));
        let page = client.conflicts(&query).await?;
        records.extend(page.items);
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    if args.client.json {
        println!("{}", Value::Array(records));
        return Ok(());
    }
    let header = Styles::HEADER;
    anstream::println!(
        "{header}{:<26}  {:<21}  {:<9}  {:<30}  {:>4}  {:>7}{header:#}",
        "ID",
        "TYPE",
        "STATUS",
        "RESOURCE",
        "BASE",
        "CURRENT"
    );
    for r in &records {
        let text = |v: &Value| match v {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let resource = format!(
            "{}/{}",
            text(&r["resource"]["collection"]),
            text(&r["resource"]["id"])
        );
        anstream::println!(
            "{:<26}  {:<21}  {:<9}  {:<30}  {:>4}  {:>7}",
            text(&r["id"]),
            text(&r["type"]),
            text(&r["status"]),
            resource,
            text(&r["base_version"]),
            text(&r["current_version"])
        );
    }
    Ok(())
}

/// `conflicts --watch`: one line (or JSON line) per event, until interrupted or
/// the stream gives up.
async fn watch(client: &truce_client::Client, args: &ConflictsArgs) -> Result<(), CliError> {
    use futures_util::StreamExt;
    let mut events = Box::pin(client.conflict_events(args.collection.as_deref(), None, args.since));
    let (good, bad, dim) = (Styles::GOOD, Styles::BAD, Styles::DIM);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = event else {
            return Ok(());
        };
        let event = event?;
        if args.client.json {
            println!(
                "{}",
                serde_json::json!({
                    "position": event.position, "event": event.event,
                    "conflict_id": event.conflict_id, "type": event.kind,
                    "status": event.status,
                    "resource": {"collection": event.resource.collection, "id": event.resource.id},
                    "base_version": event.base_version, "current_version": event.current_version,
                })
            );
            continue;
        }
        let style = if event.event == "conflict.detected" {
            bad
        } else {
            good
        };
        let versions = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        anstream::println!(
            "{style}{:<19}{style:#} {}  {}/{}  {} ({}), base v{}, current v{}  {dim}{}{dim:#}",
            event.event,
            event.conflict_id,
            event.resource.collection,
            event.resource.id,
            event.kind,
            event.status,
            versions(event.base_version),
            versions(event.current_version),
            event.href,
        );
    }
}

/// A readable three-way view of one record.
fn show(record: &Value) {
    let (header, note, dim) = (Styles::HEADER, Styles::NOTE, Styles::DIM);
    anstream::println!(
        "{header}{} {}/{}{header:#}  {} ({}), base v{}, current v{}",
        record["id"].as_str().unwrap_or_default(),
        record["resource"]["collection"]
            .as_str()
            .unwrap_or_default(),
        record["resource"]["id"].as_str().unwrap_or_default(),
        record["type"].as_str().unwrap_or_default(),
        record["status"].as_str().unwrap_or_default(),
        record["base_version"],
        record["current_version"],
    );
    anstream::println!("{dim}attempted: {}{dim:#}", record["attempted"]);
    let paths = record["paths"].as_array().cloned().unwrap_or_default();
    if paths.is_empty() {
        anstream::println!("{note}no differing paths{note:#}");
    }
    for path in paths {
        let pointer = path.as_str().unwrap_or_default();
        let at = |side: &str| {
            record[side]
                .pointer(pointer)
                .map_or("(absent)".to_owned(), Value::to_string)
        };
        let (good, bad) = (Styles::GOOD, Styles::BAD);
        anstream::println!("  {header}{pointer}{header:#}");
        anstream::println!("    {dim}base:   {}{dim:#}", at("base"));
        anstream::println!("    {good}ours:   {}{good:#}", at("ours"));
        anstream::println!("    {bad}theirs: {}{bad:#}", at("theirs"));
    }
}

/// `truce resolve CID --theirs|--ours|--file F|--dismiss`.
#[derive(Debug, Args)]
#[group(id = "side", required = true, multiple = false)]
pub struct ResolveArgs {
    /// The record.
    pub cid: String,
    /// Keep the current document.
    #[arg(long, group = "side")]
    pub theirs: bool,
    /// Apply the refused change to the version it was based on.
    #[arg(long, group = "side")]
    pub ours: bool,
    /// Write this document (a file, or `-` for standard input).
    #[arg(long, group = "side", value_name = "FILE")]
    pub file: Option<String>,
    /// Close the record without a change.
    #[arg(long, group = "side")]
    pub dismiss: bool,
    /// The current ETag: resolve although the resource moved on since the record.
    #[arg(long, value_name = "ETAG")]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `resolve`.
pub async fn resolve(args: ResolveArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let record = if args.dismiss {
        client.dismiss(&args.cid).await?
    } else {
        let take = match &args.file {
            Some(file) => Resolution::Doc(read_json_input(file)?),
            None if args.ours => Resolution::Ours,
            None => Resolution::Theirs,
        };
        client
            .resolve(&args.cid, take, args.if_match.as_deref())
            .await?
    };
    if args.client.json {
        println!("{record}");
    } else {
        let good = Styles::GOOD;
        let how = record["resolution"]
            .as_str()
            .map_or_else(String::new, |r| format!(" ({r})"));
        let version = record["resolved_version"]
            .as_u64()
            .map_or_else(String::new, |v| format!(", resource at version {v}"));
        anstream::println!(
            "{good}{} {}{how}{version}{good:#}",
            args.cid,
            record["status"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
