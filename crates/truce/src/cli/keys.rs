//! `truce keys create|list|revoke` (SPEC §9).
//!
//! Through the server's API (`--url`, `--key` with the admin role), or, with
//! `--data DIR` or `--database-url URL`, straight on the store while the server
//! is stopped: how the first admin key is made.

use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;
use truce_engine::{SideCommit, SideTable, Store, Timestamp, key_removal, new_key, read_key};
use truce_postgres::{PostgresConfig, PostgresStore};
use truce_store::{EmbeddedConfig, EmbeddedStore};

use super::{CliError, ClientArgs};

/// `truce keys ...`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
}

/// Where the keys are: the server (through its API), or the store itself.
#[derive(Debug, Clone, Args)]
pub struct KeysTarget {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Work on this data directory directly (the server must be stopped).
    #[arg(long, conflicts_with = "database_url")]
    pub data: Option<std::path::PathBuf>,
    /// Work on this PostgreSQL database directly.
    #[arg(long, env = "TRUCE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl KeysArgs {
    /// Where the action works.
    pub fn target(&self) -> &KeysTarget {
        match &self.action {
            KeysAction::Create { target, .. }
            | KeysAction::List { target }
            | KeysAction::Revoke { target, .. } => target,
        }
    }
}

/// What to do with keys.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a key; it is printed once and never again.
    Create {
        /// Who its requests are (`by` in history).
        #[arg(long)]
        name: String,
        /// A role: read, write, resolve or admin (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[command(flatten)]
        target: KeysTarget,
    },
    /// List the keys (never their secrets).
    List {
        #[command(flatten)]
        target: KeysTarget,
    },
    /// Revoke a key by id, at once on every node.
    Revoke {
        /// The key's id (from `list`).
        id: String,
        #[command(flatten)]
        target: KeysTarget,
    },
}

/// Runs `keys`.
pub async fn keys(args: KeysArgs) -> Result<(), CliError> {
    let target = args.target().clone();
    if target.data.is_some() || target.database_url.is_some() {
        return offline(args, target).await;
    }
    let client = target.client.client()?;
    match args.action {
        KeysAction::Create { name, roles, .. } => {
            let made = client.create_key(&name, &roles).await?;
            let shown = json!({"id": made.info.id, "name": made.info.name,
                "roles": made.info.roles, "created_at": made.info.created_at, "key": made.key});
            print_created(&target.client, &shown);
        }
        KeysAction::List { .. } => {
            let keys = client.keys().await?;
            let items: Vec<serde_json::Value> = keys
                .iter()
                .map(|k| json!({"id": k.id, "name": k.name, "roles": k.roles, "created_at": k.created_at}))
                .collect();
            print_list(&target.client, &items);
        }
        KeysAction::Revoke { id, .. } => {
            client.revoke_key(&id).await?;
            print_revoked(&target.client, &id);
        }
    }
    Ok(())
}

/// The same, on the store itself.
async fn offline(args: KeysArgs, target: KeysTarget) -> Result<(), CliError> {
    let store = open(target.data.clone(), target.database_url.clone()).await?;
    let result = offline_action(&store, &args, &target.client).await;
    store.close().await;
    result
}

async fn offline_action(
    store: &Arc<dyn Store>,
    args: &KeysArgs,
    client: &ClientArgs,
) -> Result<(), CliError> {
    let local = |e: truce_engine::EngineError| CliError::Local(e.problem().detail);
    match &args.action {
        KeysAction::Create { name, roles, .. } => {
            let roles = roles
                .iter()
                .map(|r| {
                    truce_engine::Role::parse(r).ok_or_else(|| {
                        CliError::Usage(format!("--role {r}: use read, write, resolve or admin"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let made = new_key(name, &roles, Timestamp::now()).map_err(local)?;
            store
                .commit_side(SideCommit::new(vec![made.record]))
                .await
                .map_err(local)?;
            let mut shown = made.key.to_json();
            shown["key"] = json!(made.token);
            print_created(client, &shown);
        }
        KeysAction::List { .. } => {
            let records = store
                .side_records(SideTable::Keys, None, 100_000)
                .await
                .map_err(local)?;
            let mut keys: Vec<_> = records.iter().filter_map(|(_, v)| read_key(v)).collect();
            keys.sort_by_key(|k| k.created_at);
            let items: Vec<_> = keys.iter().map(truce_engine::ApiKey::to_json).collect();
            print_list(client, &items);
        }
        KeysAction::Revoke { id, .. } => {
            let commit = SideCommit::new(vec![key_removal(id)])
                .while_present(SideTable::Keys, id.as_bytes());
            store.commit_side(commit).await.map_err(|e| match e {
                truce_engine::EngineError::NotFound { .. } => {
                    CliError::Local(format!("there is no key {id}"))
                }
                other => local(other),
            })?;
            print_revoked(client, id);
        }
    }
    Ok(())
}

/// Opens the data directory or the database.
async fn open(
    data: Option<std::path::PathBuf>,
    database_url: Option<String>,
) -> Result<Arc<dyn Store>, CliError> {
    if let Some(url) = database_url {
        let store = PostgresStore::open(PostgresConfig::new(&url))
            .await
            .map_err(|e| CliError::Local(format!("cannot open the database: {e}")))?;
        return Ok(Arc::new(store));
    }
    let data = data.unwrap_or_default();
    let shown = data.display().to_string();
    let opened =
        tokio::task::spawn_blocking(move || EmbeddedStore::open(EmbeddedConfig::new(data)))
            .await
            .map_err(|e| CliError::Local(e.to_string()))?
            .map_err(|e| {
                CliError::Local(format!(
                    "cannot open the data directory {shown} (stop the server first): {e}"
                ))
            })?;
    Ok(Arc::new(opened))
}

fn print_created(client: &ClientArgs, shown: &serde_json::Value) {
    if client.json {
        println!("{shown}");
        return;
    }
    println!(
        "key {} ({}) with roles {}",
        shown["id"].as_str().unwrap_or(""),
        shown["name"].as_str().unwrap_or(""),
        shown["roles"]
    );
    println!("{}", shown["key"].as_str().unwrap_or(""));
    eprintln!("This is the only time the key is shown: store it now.");
}

fn print_list(client: &ClientArgs, items: &[serde_json::Value]) {
    if client.json {
        println!("{}", json!({ "items": items }));
        return;
    }
    for item in items {
        println!(
            "{}  {:<24} {:<28} {}",
            item["id"].as_str().unwrap_or(""),
            item["name"].as_str().unwrap_or(""),
            item["roles"],
            item["created_at"].as_str().unwrap_or("")
        );
    }
}

fn print_revoked(client: &ClientArgs, id: &str) {
    if client.json {
        println!("{}", json!({ "revoked": id }));
    } else {
        println!("revoked {id}");
    }
}
