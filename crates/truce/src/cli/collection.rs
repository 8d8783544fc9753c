//! `truce collection get|set C`: a collection's settings (SPEC §8).
//!
//! `set` is a read-modify-write like any other: it reads the settings and their
//! ETag, applies the file and the flags given, and writes them back with
//! `If-Match`, so a concurrent change is refused (exit 3) instead of overwritten.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, ClientArgs, Styles, read_json_input};

/// `truce collection ...`.
#[derive(Debug, Args)]
pub struct CollectionArgs {
    #[command(subcommand)]
    pub action: CollectionAction,
}

/// What to do with a collection's settings.
#[derive(Debug, Subcommand)]
pub enum CollectionAction {
    /// Print a collection's settings (every key; version 0 if never configured).
    Get {
        /// The collection.
        collection: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a collection's settings: from a JSON file (or `-`), then the flags.
    Set(SetArgs),
}

/// `truce collection set C [FILE] [--policy ...] [--writes-per-resource RATE]`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The collection.
    pub collection: String,
    /// A settings document replacing the current one (keys left out take their
    /// defaults); without it, the flags change the current settings.
    pub file: Option<String>,
    /// `reject`, `merge` or `last_write_wins`.
    #[arg(long)]
    pub policy: Option<String>,
    /// Require If-Match, If-None-Match: * or ?if_version on every write.
    #[arg(long)]
    pub require_preconditions: Option<bool>,
    /// Keep at most this many versions per resource.
    #[arg(long)]
    pub max_versions: Option<u64>,
    /// Remove past versions older than this (e.g. 30d).
    #[arg(long)]
    pub max_age: Option<String>,
    /// Writes each document may take, from all clients (e.g. 20/s, 600/min).
    #[arg(long)]
    pub writes_per_resource: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl CollectionArgs {
    /// The client settings of whichever action runs.
    pub fn client(&self) -> &ClientArgs {
        match &self.action {
            CollectionAction::Get { client, .. } => client,
            CollectionAction::Set(args) => &args.client,
        }
    }
}

/// Runs `collection`.
pub async fn collection(args: CollectionArgs) -> Result<(), CliError> {
    match args.action {
        CollectionAction::Get { collection, client } => {
            let settings = client.client()?.collection_settings(&collection).await?;
            print(&client, &collection, &settings);
            Ok(())
        }
        CollectionAction::Set(args) => set(args).await,
    }
}

async fn set(args: SetArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let current = client.collection_settings(&args.collection).await?;
    let mut settings = match &args.file {
        Some(source) => read_json_input(source)?,
        None => current.settings.clone(),
    };
    let Some(fields) = settings.as_object_mut() else {
        return Err(CliError::Usage("the settings must be a JSON object".into()));
    };
    if let Some(policy) = &args.policy {
        fields.insert("conflict_policy".into(), json!(policy));
    }
    if let Some(required) = args.require_preconditions {
        fields.insert("require_preconditions".into(), json!(required));
    }
    if args.max_versions.is_some() || args.max_age.is_some() {
        let history = fields.entry("history").or_insert_with(|| json!({}));
        if let Some(history) = history.as_object_mut() {
            if let Some(max) = args.max_versions {
                history.insert("max_versions".into(), json!(max));
            }
            if let Some(age) = &args.max_age {
                history.insert("max_age".into(), json!(age));
            }
        }
    }
    if let Some(rate) = &args.writes_per_resource {
        let limits = fields.entry("limits").or_insert_with(|| json!({}));
        if let Some(limits) = limits.as_object_mut() {
            limits.insert("writes_per_resource".into(), json!(rate));
        }
    }
    let written = client
        .set_collection_settings(&args.collection, &settings, Some(&current.etag))
        .await?;
    print(&args.client, &args.collection, &written);
    Ok(())
}

fn print(client: &ClientArgs, collection: &str, settings: &truce_client::CollectionSettings) {
    if client.json {
        println!("{}", settings.settings);
        return;
    }
    let (header, dim) = (Styles::HEADER, Styles::DIM);
    anstream::println!(
        "{header}{collection}{header:#}  {dim}version {}, ETag {}{dim:#}",
        settings.version,
        settings.etag
    );
    let text = serde_json::to_string_pretty(&settings.settings).unwrap_or_default();
    println!("{text}");
}
