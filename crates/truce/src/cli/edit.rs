//! `truce edit collection/id`: edit a document in `$VISUAL` / `$EDITOR` without ever
//! losing anyone's change.
//!
//! The document is opened pretty-printed. On save it is written with `If-Match` of
//! the version that was opened. If someone changed it meanwhile, the edit is merged
//! three ways (base = what was opened, mine = the edit, theirs = the current
//! version) with the engine's field-level rules, the same the server's merge policy
//! uses: disjoint changes are written (with `If-Match` of theirs, merging again if it
//! moves once more) and reported; overlapping ones are never lost: nothing is
//! written, the edit stays in its file, each overlapping path is printed with its
//! base, mine and theirs values, and the command exits 3.
//!
//! If the edited text is not valid JSON, the editor opens again with the error on a
//! `//` line at the top (such lines are ignored); if the text is still the same
//! invalid JSON after that, the edit is abandoned (and kept in its file).

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;
use truce_client::{Client, Error as ClientError, Versioned};
use truce_engine::{MergeOutcome, ProblemKind, three_way};

use super::write::print_written;
use super::{CliError, ClientArgs, Styles, pretty, resource};

/// How many times a merged edit is retried when the document keeps moving.
const MERGE_ATTEMPTS: u32 = 5;

/// `truce edit collection/id`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The resource, as collection/id.
    pub resource: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `edit`.
pub async fn edit(args: EditArgs) -> Result<(), CliError> {
    let key = resource(&args.resource)?;
    let (collection, id) = (key.collection.as_str(), key.id.as_str());
    let client = args.client.client()?;
    let base = client.get::<Value>(collection, id).await?;
    let file = edit_file(collection, id);
    let opened = pretty(&base.value) + "\n";
    write_file(&file, &opened)?;
    let Some(mine) = edit_until_valid(&file, &opened)? else {
        let _ = std::fs::remove_file(&file);
        anstream::println!("{}no changes{:#}", Styles::DIM, Styles::DIM);
        return Ok(());
    };
    let result = save(
        &client,
        collection,
        id,
        &base,
        &mine,
        &file,
        args.client.json,
    )
    .await;
    if result.is_ok() {
        let _ = std::fs::remove_file(&file);
    }
    result
}

/// A temporary file for the edit, named after the resource.
fn edit_file(collection: &str, id: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    std::env::temp_dir().join(format!("truce-edit-{collection}-{id}-{stamp}.json"))
}

fn write_file(path: &Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text)
        .map_err(|e| CliError::Local(format!("cannot write {}: {e}", path.display())))
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Local(format!("cannot read {}: {e}", path.display())))
}

/// Runs the editor until the file holds valid JSON. `None`: nothing was changed.
fn edit_until_valid(file: &Path, opened: &str) -> Result<Option<Value>, CliError> {
    let mut shown = opened.to_owned();
    loop {
        run_editor(file)?;
        let text = read_file(file)?;
        let content = strip_comment_lines(&text);
        if content.trim() == opened.trim() {
            return Ok(None);
        }
        match serde_json::from_str::<Value>(&content) {
            Ok(value) if value.is_object() => return Ok(Some(value)),
            outcome => {
                let message = match outcome {
                    Ok(_) => "a document must be a JSON object".to_owned(),
                    Err(e) => format!("not valid JSON: {e}"),
                };
                if strip_comment_lines(&shown).trim() == content.trim() {
                    return Err(CliError::Local(format!(
                        "edit abandoned: the document is still invalid ({message}); your text is in {}",
                        file.display()
                    )));
                }
                anstream::eprintln!(
                    "{}truce:{:#} {message}; opening the editor again",
                    Styles::BAD,
                    Styles::BAD
                );
                shown = format!("// truce: {message} (this line is ignored)\n{content}");
                write_file(file, &shown)?;
            }
        }
    }
}

/// Drops the `// ...` lines at the top of the file (error notes from an earlier try).
fn strip_comment_lines(text: &str) -> String {
    let mut lines = text.lines().peekable();
    while lines
        .peek()
        .is_some_and(|l| l.trim_start().starts_with("//"))
    {
        lines.next();
    }
    lines.collect::<Vec<_>>().join("\n")
}

/// Runs `$VISUAL`, else `$EDITOR`, else `vi`, through the shell like git does, so
/// editors given with arguments (`code --wait`) work.
fn run_editor(file: &Path) -> Result<(), CliError> {
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|e| !e.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".to_owned());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(&editor)
        .arg(file)
        .status()
        .map_err(|e| CliError::Local(format!("cannot run the editor {editor:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Local(format!(
            "the editor {editor:?} failed ({status}); your text is in {}",
            file.display()
        )))
    }
}

/// Writes the edit, merging with concurrent changes when there are any.
async fn save(
    client: &Client,
    collection: &str,
    id: &str,
    base: &Versioned<Value>,
    mine: &Value,
    file: &Path,
    json: bool,
) -> Result<(), CliError> {
    let spec = format!("{collection}/{id}");
    match client
        .put(collection, id, mine)
        .if_match(&base.etag)
        .send()
        .await
    {
        Ok(written) => {
            print_written(&spec, &written, json);
            return Ok(());
        }
        Err(error) if moved(&error) => {}
        Err(error) => return Err(keep_edit(error.into(), mine, file)),
    }
    for _ in 0..MERGE_ATTEMPTS {
        // Deleted (404) or unreachable meanwhile: the edit is kept all the same.
        let theirs = match client.get::<Value>(collection, id).await {
            Ok(theirs) => theirs,
            Err(error) => return Err(keep_edit(error.into(), mine, file)),
        };
        match three_way(&base.value, mine, &theirs.value) {
            MergeOutcome::Conflict { overlaps } => {
                write_file(file, &(pretty(mine) + "\n")).map_err(|e| {
                    CliError::Local(format!(
                        "{e}; your edit could not be kept: {}",
                        pretty(mine)
                    ))
                })?;
                let bad = Styles::BAD;
                anstream::eprintln!(
                    "{bad}truce: {spec} changed while you edited it, and the changes overlap; nothing was written{bad:#}"
                );
                anstream::eprintln!("  your edit is saved in {}", file.display());
                for overlap in overlaps {
                    let show = |v: &Option<Value>| {
                        v.as_ref().map_or("(absent)".to_owned(), Value::to_string)
                    };
                    anstream::eprintln!("  {}", truce_engine::json_pointer(&overlap.path));
                    anstream::eprintln!("    base:   {}", show(&overlap.base));
                    anstream::eprintln!("    mine:   {}", show(&overlap.ours));
                    anstream::eprintln!("    theirs: {}", show(&overlap.theirs));
                }
                anstream::eprintln!(
                    "  next: resolve these in your file and write it with: truce put {spec} {} --if-match '{}'",
                    file.display(),
                    theirs.etag
                );
                return Err(CliError::EditConflict);
            }
            MergeOutcome::Clean {
                merged,
                ours,
                theirs: their_changes,
            } => {
                match client
                    .put(collection, id, &merged)
                    .if_match(&theirs.etag)
                    .send()
                    .await
                {
                    Ok(written) => {
                        let note = Styles::NOTE;
                        anstream::eprintln!(
                            "{note}{spec} changed while you edited it (version {} -> {}); the changes did not overlap and were merged{note:#}",
                            base.version,
                            theirs.version
                        );
                        let paths = |changes: &[truce_engine::FieldChange]| {
                            changes
                                .iter()
                                .map(|c| truce_engine::json_pointer(&c.path))
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        anstream::eprintln!("  yours:  {}", paths(&ours));
                        anstream::eprintln!("  theirs: {}", paths(&their_changes));
                        print_written(&spec, &written, json);
                        return Ok(());
                    }
                    Err(error) if moved(&error) => continue,
                    Err(error) => return Err(keep_edit(error.into(), mine, file)),
                }
            }
        }
    }
    Err(keep_edit(
        CliError::Local(format!("{spec} kept changing; gave up merging")),
        mine,
        file,
    ))
}

/// Whether a write was refused because the document moved.
fn moved(error: &ClientError) -> bool {
    matches!(
        error.kind(),
        Some(ProblemKind::PreconditionFailed | ProblemKind::VersionConflict)
    )
}

/// Saves the edit to its file before reporting a failure, so it is never lost; if
/// even that fails, the edit is printed.
fn keep_edit(error: CliError, mine: &Value, file: &Path) -> CliError {
    match write_file(file, &(pretty(mine) + "\n")) {
        Ok(()) => anstream::eprintln!("  your edit is saved in {}", file.display()),
        Err(_) => anstream::eprintln!(
            "truce: your edit could not be saved; here it is:\n{}",
            pretty(mine)
        ),
    }
    error
}
