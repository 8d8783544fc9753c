//! `truce lock` and `truce unlock` (SPEC §4): take a lease and print its token
//! and fence, show who holds one, release or break one.
//!
//! The command ends once the lock is granted: nothing renews the lease, which
//! runs out after `--ttl` unless released first. Writes made under it carry the
//! token (`truce put ... --lock-token T`).

use std::time::Duration;

use clap::Args;
use truce_client::LockInfo;

use super::{CliError, ClientArgs, Styles, resource};
use crate::config::parse_duration;

/// `truce lock collection/id`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// The lease length (1s to 1h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Wait this long in the queue if someone holds it (default: fail at once, exit 3).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Free text shown to others while you hold it.
    #[arg(long, default_value = "")]
    pub owner: String,
    /// Only show who holds it (never the token).
    #[arg(long, conflicts_with_all = ["ttl", "wait", "owner"])]
    pub show: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `truce unlock collection/id`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The resource, as collection/id.
    pub resource: String,
    /// The token the lock was granted with.
    #[arg(long, required_unless_present = "force")]
    pub token: Option<String>,
    /// Break the lock whoever holds it (the admin role).
    #[arg(long, conflicts_with = "token")]
    pub force: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `lock`.
pub async fn lock(args: LockArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let (collection, id) = (key.collection.as_str(), key.id.as_str());
    if args.show {
        let holder = client.lock_holder(collection, id).await?;
        print_holder(&args.resource, holder.as_ref(), args.client.json);
        return Ok(());
    }
    let (token, info) = client
        .lock(collection, id)
        .ttl(args.ttl)
        .wait(args.wait)
        .owner(args.owner)
        .grant()
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_value(&info).unwrap_or_default());
        return Ok(());
    }
    let (good, dim) = (Styles::GOOD, Styles::DIM);
    anstream::println!(
        "{good}locked{good:#} {} until {} (fence {})",
        args.resource,
        info.expires_at,
        info.fence
    );
    anstream::println!("token {token}");
    anstream::println!(
        "{dim}write with --lock-token {token}; release with truce unlock {} --token {token}{dim:#}",
        args.resource
    );
    Ok(())
}

/// Prints the holder of a lock, or that it is free.
fn print_holder(name: &str, holder: Option<&LockInfo>, json: bool) {
    if json {
        println!("{}", serde_json::to_value(holder).unwrap_or_default());
        return;
    }
    match holder {
        None => println!("{name} is not locked"),
        Some(info) => {
            let header = Styles::HEADER;
            anstream::println!("{header}{name}{header:#} is locked");
            println!("  fence       {}", info.fence);
            println!("  by          {}", info.by);
            if !info.owner.is_empty() {
                println!("  owner       {}", info.owner);
            }
            println!("  since       {}", info.acquired_at);
            println!("  expires at  {}", info.expires_at);
            println!("  waiting     {}", info.waiting);
        }
    }
}

/// Runs `unlock`.
pub async fn unlock(args: UnlockArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let client = args.client.client()?;
    let (collection, id) = (key.collection.as_str(), key.id.as_str());
    match (&args.token, args.force) {
        (_, true) => client.break_lock(collection, id).await?,
        (Some(token), false) => client.unlock(collection, id, token).await?,
        (None, false) => {
            return Err(CliError::Usage(
                "name the lock's --token, or --force to break it (admin)".into(),
            ));
        }
    }
    if args.client.json {
        println!(
            "{}",
            serde_json::json!({"released": args.resource, "broken": args.force})
        );
    } else {
        let what = if args.force { "broken" } else { "released" };
        println!("{what} the lock on {}", args.resource);
    }
    Ok(())
}
