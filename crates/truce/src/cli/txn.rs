//! `truce txn FILE|-`: one batch transaction (SPEC §5) from a file of ops.
//!
//! The file holds `{"ops": [...]}` or the ops array alone, each op as
//! `POST /v1/_txn` takes it. Prints one line per op; a failed op exits 3 and is
//! named (its index, what it was, the problem it got).

use clap::Args;
use serde_json::Value;

use super::{CliError, ClientArgs, Styles, read_json_input};

/// `truce txn FILE|-`.
#[derive(Debug, Args)]
pub struct TxnArgs {
    /// A file holding the ops, or `-` for standard input.
    pub file: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `txn`.
pub async fn txn(args: TxnArgs) -> Result<(), CliError> {
    let ops = match read_json_input(&args.file)? {
        Value::Array(ops) => ops,
        Value::Object(mut body) => match body.remove("ops") {
            Some(Value::Array(ops)) => ops,
            _ => {
                return Err(CliError::Usage(
                    "the file must hold {\"ops\": [...]} or an array of ops".into(),
                ));
            }
        },
        _ => {
            return Err(CliError::Usage(
                "the file must hold {\"ops\": [...]} or an array of ops".into(),
            ));
        }
    };
    let client = args.client.client()?;
    let applied = client.transact_ops(ops).await?;
    if args.client.json {
        println!("{}", serde_json::to_value(&applied).unwrap_or_default());
        return Ok(());
    }
    let good = Styles::GOOD;
    anstream::println!(
        "{good}applied{good:#} {} ops at revision {}",
        applied.results.len(),
        applied.revision
    );
    for (index, result) in applied.results.iter().enumerate() {
        println!(
            "  {index:>3}  {:<9} {}/{}  version {}{}",
            result.outcome,
            result.collection,
            result.id,
            result.version,
            result
                .etag
                .as_deref()
                .map(|e| format!(", ETag {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
