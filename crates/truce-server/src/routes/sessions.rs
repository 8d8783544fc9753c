//! Interactive transactions (SPEC §5): `POST /v1/_txn/begin`, reads and writes
//! with `Truce-Txn`, `POST /v1/_txn/{txn}/commit` and `.../rollback`.
//!
//! Reads see the transaction's snapshot (the newest version at or below its
//! revision) with its own buffered writes on top; writes are judged by the
//! write rules against what the transaction sees and buffered; the commit
//! sends everything to the write path in one job (see `crate::sessions`).

use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;
use serde_json::json;
use truce_engine::{
    CollectionName, DocId, ListQuery, Preconditions, Principal, ResourceKey, SnapshotCommit,
    Timestamp, TxnCommand, TxnOp, WriteAction, WriteCommand, WriteStatus, plan_buffered,
};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::By;
use crate::idempotency::Keyed;
use crate::openapi::{Malformed, Unavailable};
use crate::paging::{decode_cursor, encode_cursor};
use crate::sessions::Buffered;
use crate::state::AppState;
use crate::wire::{Envelope, EnvelopePage, ProblemBody};

/// `Truce-Txn`.
const TRUCE_TXN: HeaderName = HeaderName::from_static("truce-txn");

/// The answer to `begin`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Begun {
    /// The transaction's id, for `Truce-Txn`.
    txn: String,
    /// The revision its reads see.
    snapshot_revision: u64,
    /// When it expires unless used again (RFC 3339).
    expires_at: String,
}

/// Begins an interactive transaction at the current revision.
#[utoipa::path(
    post,
    operation_id = "begin_transaction",
    path = "/v1/_txn/begin",
    tag = "transactions",
    responses(
        (status = 201, description = "Begun: send `Truce-Txn: {txn}` with its reads and writes, to this node", body = Begun),
        Unavailable,
    )
)]
pub async fn begin(State(state): State<AppState>, By(by): By) -> Result<Response, ApiError> {
    let snapshot = head_revision(&state).await?;
    let (txn, expires_at) = state.sessions.begin(snapshot, by)?;
    let mut response = (
        StatusCode::CREATED,
        Json(Begun {
            txn: txn.clone(),
            snapshot_revision: snapshot,
            expires_at: expires_at.rfc3339(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&txn) {
        response.headers_mut().insert(TRUCE_TXN, value);
    }
    Ok(response)
}

/// The store's newest committed revision, whichever node committed it (this
/// node's signal may not have heard of another node's last commit yet, and a
/// snapshot must include everything committed before the transaction began).
async fn head_revision(state: &AppState) -> Result<u64, ApiError> {
    let mut since = *state.store.revisions().borrow();
    loop {
        let page = state
            .store
            .changes(&truce_engine::ChangeQuery {
                since,
                collection: None,
                key: None,
                limit: 1000,
                include_docs: false,
            })
            .await?;
        if page.changes.is_empty() || page.last_revision <= since {
            return Ok(page.last_revision.max(since));
        }
        since = page.last_revision;
    }
}

/// Commits transaction `txn`: if nothing it read, wrote or listed changed after
/// its snapshot, its writes are applied in one commit at one revision.
#[utoipa::path(
    post,
    operation_id = "commit_transaction",
    path = "/v1/_txn/{txn}/commit",
    tag = "transactions",
    params(("txn" = String, Path, description = "The transaction's id")),
    responses(
        (status = 200, description = "Committed: the revision and one result per write", body = crate::routes::txn::TxnAnswer),
        (status = 409, description = "`transaction-conflict`: `reason: changed-since-snapshot` with the `resources` and listed `ranges` that changed (nothing applied; the transaction ended), or `reason: expired` (it expired, ended or lives on another node), or a write that failed at commit (`failed_op`)",
            content_type = "application/problem+json", body = ProblemBody),
        Malformed, Unavailable,
    )
)]
pub async fn commit(
    State(state): State<AppState>,
    Path(txn): Path<String>,
    By(by): By,
    keyed: Keyed,
) -> Result<Response, ApiError> {
    check_txn_id(&txn)?;
    let session = state.sessions.end(&txn, &by)?;
    let request_id = crate::context::RequestContext::current().map(|c| c.id.to_string());
    let mut reads: Vec<ResourceKey> = session.reads.iter().cloned().collect();
    let mut ops = Vec::with_capacity(session.writes.len());
    for (key, buffered) in session.writes {
        let action = match buffered.content.and_then(|version| version.body) {
            Some(body) => WriteAction::Put(truce_engine::Document::from_stored(body)?),
            // Deleted in the transaction: only a resource that existed needs a tombstone.
            None if buffered.base > 0 => WriteAction::Delete,
            None => {
                reads.push(key);
                continue;
            }
        };
        reads.push(key.clone());
        ops.push(TxnOp::Write(Box::new(WriteCommand {
            key,
            action,
            preconditions: Preconditions::default(),
            if_version: Some(buffered.base),
            by: by.clone(),
            request_id: request_id.clone(),
            resolves: None,
            idempotency: None,
            lock_token: buffered.lock_token,
            key_check: None,
        })));
    }
    reads.sort();
    reads.dedup();
    let outcome = state
        .store
        .commit_snapshot(SnapshotCommit {
            snapshot: session.snapshot,
            reads,
            ranges: session.ranges,
            writes: TxnCommand {
                ops,
                by,
                request_id,
                idempotency: keyed.attach(crate::routes::txn::answer),
            },
        })
        .await?;
    Ok(crate::routes::txn::answer(&outcome))
}

/// Rolls transaction `txn` back: its buffered writes are dropped.
#[utoipa::path(
    post,
    operation_id = "rollback_transaction",
    path = "/v1/_txn/{txn}/rollback",
    tag = "transactions",
    params(("txn" = String, Path, description = "The transaction's id")),
    responses(
        (status = 204, description = "Rolled back"),
        (status = 409, description = "`transaction-conflict` (`reason: expired`): it expired, ended or lives on another node",
            content_type = "application/problem+json", body = ProblemBody),
        Malformed,
    )
)]
pub async fn rollback(
    State(state): State<AppState>,
    Path(txn): Path<String>,
    By(by): By,
) -> Result<StatusCode, ApiError> {
    check_txn_id(&txn)?;
    state.sessions.end(&txn, &by)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What transaction `txn` sees of `key`: its buffered write, else the
/// snapshot's version (`None`: absent).
async fn visible(
    state: &AppState,
    txn: &str,
    by: &Principal,
    key: &ResourceKey,
) -> Result<(u64, Option<truce_engine::Version>, u64), ApiError> {
    let (snapshot, buffered) = state.sessions.with(txn, by, |session| {
        session.reads.insert(key.clone());
        let buffered = session.writes.get(key).map(|b| (b.base, b.content.clone()));
        (session.snapshot, buffered)
    })?;
    if let Some((base, content)) = buffered {
        return Ok((snapshot, content, base));
    }
    let version = truce_engine::version_at_snapshot(&*state.store, key, snapshot).await?;
    let base = version.as_ref().map_or(0, |v| v.number);
    Ok((snapshot, version, base))
}

/// `GET /v1/{c}/{id}` with `Truce-Txn`.
pub(crate) async fn read_in(
    state: &AppState,
    txn: &str,
    by: &Principal,
    key: &ResourceKey,
    preconditions: &Preconditions,
) -> Result<Response, ApiError> {
    let (_, version, _) = visible(state, txn, by, key).await?;
    let version = truce_engine::require_live(key, version)?;
    let mut response = super::documents::conditional_read(key, &version, preconditions)?;
    if let Ok(value) = HeaderValue::from_str(txn) {
        response.headers_mut().insert(TRUCE_TXN, value);
    }
    Ok(response)
}

/// `PUT`, `PATCH` or `DELETE /v1/{c}/{id}` with `Truce-Txn`: judged against
/// what the transaction sees and buffered; answered 202 with what the
/// transaction now sees (its `ETag` is the transaction's own).
pub(crate) async fn write_in(
    state: &AppState,
    txn: &str,
    command: WriteCommand,
) -> Result<Response, ApiError> {
    let (snapshot, version, base) = visible(state, txn, &command.by, &command.key).await?;
    let outcome = plan_buffered(
        version.as_ref(),
        &command,
        snapshot,
        Timestamp::now(),
        state.config.limits,
    )?;
    let key = command.key.clone();
    if outcome.status != WriteStatus::Unchanged {
        let content = (!outcome.version.is_tombstone()).then(|| outcome.version.clone());
        state.sessions.with(txn, &command.by, |session| {
            session.writes.insert(
                key.clone(),
                Buffered {
                    base,
                    content,
                    lock_token: command.lock_token.clone(),
                },
            );
        })?;
    }
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "txn": txn,
            "buffered": {
                "collection": key.collection.as_str(),
                "id": key.id.as_str(),
                "outcome": outcome.status.as_str(),
                "version": outcome.version.number,
            },
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(txn) {
        headers.insert(TRUCE_TXN, value);
    }
    if !outcome.version.is_tombstone()
        && let Ok(value) = HeaderValue::from_str(&outcome.version.etag(&key).to_header())
    {
        headers.insert(axum::http::header::ETAG, value);
    }
    Ok(response)
}

/// `GET /v1/{c}` with `Truce-Txn`: the page as of the snapshot, with the
/// transaction's writes on top. The listed range (the collection and prefix,
/// whatever the page) is remembered: a change in it after the snapshot fails
/// the commit (phantoms).
pub(crate) async fn list_in(
    state: &AppState,
    txn: &str,
    by: &Principal,
    collection: &CollectionName,
    query: ListQuery,
) -> Result<EnvelopePage, ApiError> {
    let prefix = query.prefix.clone().unwrap_or_default();
    let (snapshot, buffered) = state.sessions.with(txn, by, |session| {
        session.ranges.push((collection.clone(), prefix.clone()));
        let buffered: Vec<(ResourceKey, Option<truce_engine::Version>)> = session
            .writes
            .iter()
            .map(|(key, b)| (key.clone(), b.content.clone()))
            .collect();
        (session.snapshot, buffered)
    })?;
    let page =
        truce_engine::list_at_snapshot(&*state.store, collection, &query, snapshot, &buffered)
            .await?;
    Ok(EnvelopePage {
        next: page.next.map(|id| encode_cursor(id.as_str())),
        items: page
            .items
            .into_iter()
            .map(|(id, version)| Envelope::new(collection, id, &version))
            .collect(),
    })
}

/// Refuses `Truce-Txn` where a transaction has no meaning yet.
pub(crate) fn not_in_a_transaction(what: &str) -> ApiError {
    ApiError::Malformed(format!(
        "{what} cannot be part of an interactive transaction (Truce-Txn): read with GET and write with PUT, PATCH or DELETE"
    ))
}

/// Decodes a list cursor (shared with the plain listing).
pub(crate) fn cursor_id(cursor: Option<&str>) -> Result<Option<DocId>, ApiError> {
    cursor
        .map(|c| decode_cursor(c).and_then(|id| Ok(DocId::parse(&id)?)))
        .transpose()
}

/// A transaction id's syntax, in `Truce-Txn` and in paths (a typo is 400, not
/// an unknown transaction).
pub(crate) fn check_txn_id(txn: &str) -> Result<(), ApiError> {
    if txn.is_empty() || txn.len() > 64 || !txn.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::Malformed(format!(
            "{txn:?} is not a transaction id (letters and digits, as POST /v1/_txn/begin answered)"
        )));
    }
    Ok(())
}
