//! API keys (SPEC §9): make one (its key is shown in that answer only), list
//! them (never a secret), revoke one (at once, on every node).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use truce_engine::{
    EngineError, Role, SideCommit, SideTable, Timestamp, key_removal, new_key, read_key,
};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openapi::{Invalid, Malformed, NotFound, Unavailable};
use crate::state::AppState;

/// The body of `POST /v1/_keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Who the key's requests are: `by` in history and conflict records.
    name: String,
    /// `read`, `write`, `resolve` and/or `admin`.
    roles: Vec<String>,
}

/// Parses role names, naming each unknown one.
pub fn parse_roles(names: &[String]) -> Result<Vec<Role>, EngineError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Role::parse(name).ok_or_else(|| {
                EngineError::invalid(
                    format!("/roles/{i}"),
                    format!("{name:?} is not a role: use read, write, resolve or admin"),
                )
            })
        })
        .collect()
}

/// Makes a key. The answer holds the key itself, the only time it is shown:
/// the store keeps a salted hash of its secret.
#[utoipa::path(
    post,
    operation_id = "create_key",
    path = "/v1/_keys",
    tag = "keys",
    request_body(content = NewKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "`{id, name, roles, key, created_at}`; `key` is shown only here", body = Object,
            headers(("Location" = String))),
        Malformed, Invalid, Unavailable,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<NewKeyRequest>,
) -> Result<Response, ApiError> {
    let roles = parse_roles(&request.roles)?;
    let made = new_key(&request.name, &roles, Timestamp::now())?;
    state
        .store
        .commit_side(SideCommit::new(vec![made.record]))
        .await?;
    let mut body = made.key.to_json();
    body["key"] = json!(made.token);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/_keys/{}", made.key.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    // The key must not linger in caches along the way.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Every key, without secrets.
#[utoipa::path(
    get,
    operation_id = "list_keys",
    path = "/v1/_keys",
    tag = "keys",
    responses(
        (status = 200, description = "`{items: [{id, name, roles, created_at}]}`", body = Object),
        Unavailable,
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = state
            .store
            .side_records(SideTable::Keys, after.as_deref(), 1000)
            .await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        items.extend(page.iter().filter_map(|(_, v)| read_key(v)));
    }
    items.sort_by_key(|key| key.created_at);
    let items: Vec<Value> = items.iter().map(truce_engine::ApiKey::to_json).collect();
    Ok(Json(json!({ "items": items })))
}

/// Revokes a key: every node refuses it from the moment this answers.
#[utoipa::path(
    delete,
    operation_id = "revoke_key",
    path = "/v1/_keys/{kid}",
    tag = "keys",
    params(("kid" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        Malformed, NotFound, Unavailable,
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<StatusCode, ApiError> {
    if kid.len() != 16 || !kid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::Malformed(format!(
            "{kid:?} is not a key id (16 hexadecimal digits)"
        )));
    }
    let commit =
        SideCommit::new(vec![key_removal(&kid)]).while_present(SideTable::Keys, kid.as_bytes());
    match state.store.commit_side(commit).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(EngineError::NotFound { .. }) => Err(EngineError::NotFound {
            detail: format!("there is no key {kid}"),
            tombstone: None,
        }
        .into()),
        Err(other) => Err(other.into()),
    }
}
