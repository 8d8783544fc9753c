//! `POST /v1/_txn` (SPEC §5): a batch of ops checked and applied atomically.
//!
//! The body is parsed into ops here (its syntax, the two-ops-on-one-resource
//! rule, the limits); everything about the resources' state is judged by the
//! engine in the write path (`truce_engine::txn`).

use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use serde::Serialize;
use truce_engine::{TxnCommand, TxnOutcome, parse_txn, sign_ops};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{By, read_request_body, require_json};
use crate::idempotency::Keyed;
use crate::openapi::{BodyProblems, Invalid, Malformed, Unavailable};
use crate::state::AppState;
use crate::wire::ProblemBody;

/// A transaction's body: `application/json`, at most 8 MiB.
pub struct TxnBody(pub Bytes);

impl FromRequest<AppState> for TxnBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        Ok(Self(read_request_body(request, state).await?))
    }
}

/// The answer to a transaction that was applied.
#[derive(Debug, Serialize, ToSchema)]
pub struct TxnAnswer {
    /// The revision every write of the transaction has (the current revision
    /// when it wrote nothing).
    revision: u64,
    /// One result per op, in order.
    results: Vec<OpAnswer>,
}

/// What one op did.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpAnswer {
    /// The op's collection.
    collection: String,
    /// The op's document id.
    id: String,
    /// `checked`, `created`, `updated`, `unchanged` or `deleted`.
    outcome: &'static str,
    /// The resource's version after the transaction (0: it does not exist).
    version: u64,
    /// Its ETag then (absent for a resource that never existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
}

/// The answer to an applied transaction (batch or interactive).
pub(crate) fn answer(outcome: &TxnOutcome) -> Response {
    let body = TxnAnswer {
        revision: outcome.revision,
        results: outcome
            .results
            .iter()
            .map(|result| OpAnswer {
                collection: result.key.collection.as_str().to_owned(),
                id: result.key.id.as_str().to_owned(),
                outcome: result.outcome,
                version: result.version,
                etag: result.etag.clone(),
            })
            .collect(),
    };
    Json(body).into_response()
}

/// A batch transaction: `{"ops": [...]}`, each op `check`, `create`, `put`,
/// `patch` or `delete` with its own `if_match`, `if_version` and `lock_token`.
/// All are checked and applied in one commit at one revision, or none is.
#[utoipa::path(
    post,
    operation_id = "transact",
    path = "/v1/_txn",
    tag = "transactions",
    request_body(content = Object, content_type = "application/json",
        description = "`{\"ops\": [{\"op\": \"check\"|\"create\"|\"put\"|\"patch\"|\"delete\", \"collection\", \"id\", \"if_match\"?, \"if_version\"?, \"doc\"?, \"merge_patch\"?, \"json_patch\"?, \"lock_token\"?}]}`: 1 to 1 000 ops, each resource at most once, at most 8 MiB"),
    responses(
        (status = 200, description = "Applied: the revision and one result per op", body = TxnAnswer),
        (status = 409, description = "`transaction-conflict`: op `failed_op` failed (`op`, `resource`, `reason`: the problem it alone would have got, with that problem's members such as `current_version`); nothing was applied; `conflict_id` names the record kept when the op's refusal is about the resource's state",
            content_type = "application/problem+json", body = ProblemBody),
        Malformed, Invalid, BodyProblems, Unavailable,
    )
)]
pub async fn transact(
    State(state): State<AppState>,
    By(by): By,
    keyed: Keyed,
    TxnBody(body): TxnBody,
) -> Result<Response, ApiError> {
    let mut ops = parse_txn(&body, state.config.limits)?;
    let request_id = crate::context::RequestContext::current().map(|c| c.id.to_string());
    sign_ops(&mut ops, &by, request_id.as_deref());
    let outcome = state
        .store
        .transact(TxnCommand {
            ops,
            by,
            request_id,
            idempotency: keyed.attach(answer),
        })
        .await?;
    Ok(answer(&outcome))
}
