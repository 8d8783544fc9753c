//! API keys (SPEC §9): make one, list them, revoke one (the admin role).

use reqwest::Method;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::json;

use crate::client::{Client, problem_of};
use crate::error::Error;

/// A key as the server lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    /// Its id (for revoking it).
    pub id: String,
    /// Who its requests are.
    pub name: String,
    /// What it may do.
    pub roles: Vec<String>,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// A key just made: the key itself is shown here only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NewKey {
    /// Its listed part.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The key, to send as `Authorization: Bearer`.
    pub key: String,
}

#[derive(Deserialize)]
struct KeyList {
    items: Vec<KeyInfo>,
}

impl Client {
    /// Makes a key named `name` with `roles`. Not retried after a lost answer:
    /// the key exists only in that answer (revoke the unknown one and make another).
    pub async fn create_key(&self, name: &str, roles: &[String]) -> Result<NewKey, Error> {
        let body = json!({"name": name, "roles": roles}).to_string();
        self.json_with(
            || {
                self.request(Method::POST, "/v1/_keys")
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            false,
        )
        .await
    }

    /// Every key, oldest first.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>, Error> {
        let list: KeyList = self.json(|| self.request(Method::GET, "/v1/_keys")).await?;
        Ok(list.items)
    }

    /// Revokes key `id`; every node refuses it from then on.
    pub async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        let path = format!("/v1/_keys/{id}");
        let response = self
            .execute(|| self.request(Method::DELETE, &path), false)
            .await?;
        match response.status() {
            StatusCode::NO_CONTENT => Ok(()),
            _ => Err(Error::Api(Box::new(problem_of(response).await))),
        }
    }
}
