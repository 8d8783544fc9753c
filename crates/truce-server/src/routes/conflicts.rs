//! Conflict records (SPEC §7): one record with the three sides of the conflict.

use axum::extract::{Path, State};
use axum::response::Json;
use serde_json::Value;
use truce_engine::{
    EngineError, ResourceKey, SideTable, VersionLookup, conflict_ours, differing_paths,
};

use crate::error::ApiError;
use crate::openapi::{Malformed, NotFound, Unavailable};
use crate::state::AppState;

/// The longest conflict id accepted (ids are 26-character ULIDs).
const MAX_ID: usize = 64;

/// One conflict record, with `base` (the version the refused write was based on),
/// `ours` (what the refused write would have made of it), `theirs` (the current
/// document) and `paths` (where ours and theirs differ).
#[utoipa::path(
    get,
    path = "/v1/_conflicts/{cid}",
    tag = "conflicts",
    params(("cid" = String, Path, description = "The conflict record's id (`conflict_id` of the refusal)")),
    responses(
        (status = 200, description = "The record, with base, ours, theirs and the differing paths", body = Object),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn conflict(
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if cid.is_empty() || cid.len() > MAX_ID || !cid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::Malformed(format!(
            "{cid:?} is not a conflict id (letters and digits, at most {MAX_ID})"
        )));
    }
    let stored = state
        .store
        .side_record(SideTable::Conflicts, cid.as_bytes())
        .await?
        .ok_or_else(|| EngineError::NotFound {
            detail: format!("there is no conflict record {cid}"),
            tombstone: None,
        })?;
    let mut record: Value = serde_json::from_slice(&stored)
        .map_err(|e| EngineError::Internal(format!("conflict record {cid} unreadable: {e}")))?;
    let key = ResourceKey::parse(
        record["resource"]["collection"]
            .as_str()
            .unwrap_or_default(),
        record["resource"]["id"].as_str().unwrap_or_default(),
    )
    .map_err(|e| EngineError::Internal(format!("conflict record {cid} names no resource: {e}")))?;
    let body = |version: &truce_engine::Version| -> Option<Value> {
        serde_json::from_slice(version.body.as_ref()?).ok()
    };
    let base = match record["base_version"].as_u64() {
        Some(n) => match state.store.version(&key, n).await? {
            VersionLookup::Found(version) => body(&version),
            _ => None,
        },
        None => None,
    };
    let theirs = state.store.head(&key).await?.as_ref().and_then(body);
    let ours = conflict_ours(&record, base.as_ref());
    let paths = match (&ours, &theirs) {
        (Some(ours), Some(theirs)) => differing_paths(ours, theirs),
        _ => Vec::new(),
    };
    if let Some(fields) = record.as_object_mut() {
        fields.insert("base".into(), base.unwrap_or(Value::Null));
        fields.insert("ours".into(), ours.unwrap_or(Value::Null));
        fields.insert("theirs".into(), theirs.unwrap_or(Value::Null));
        fields.insert("paths".into(), Value::from(paths));
    }
    Ok(Json(record))
}
