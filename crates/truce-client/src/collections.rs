//! Collection settings (SPEC §8): reading them, and replacing them guarded by
//! their ETag.

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, ETAG, HeaderValue};
use serde_json::Value;

use crate::client::{Client, problem_of};
use crate::error::Error;

/// A collection's settings, with the validators a guarded change sends back.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSettings {
    /// The settings document: `conflict_policy`, `require_preconditions`,
    /// `history`, every key present.
    pub settings: Value,
    /// Their ETag, for `If-Match` on the next change.
    pub etag: String,
    /// Their version (0: never configured).
    pub version: u64,
}

/// Reads a settings answer.
async fn read_settings(response: reqwest::Response) -> Result<CollectionSettings, Error> {
    if !response.status().is_success() {
        return Err(Error::Api(Box::new(problem_of(response).await)));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let etag = header(ETAG.as_str())
        .ok_or_else(|| Error::Decode("the settings answer has no ETag".into()))?;
    let version = header("truce-version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Decode("the settings answer has no Truce-Version".into()))?;
    let settings = response
        .json()
        .await
        .map_err(|e| Error::Decode(e.to_string()))?;
    Ok(CollectionSettings {
        settings,
        etag,
        version,
    })
}

impl Client {
    /// A collection's settings (its defaults, at version 0, if never configured).
    pub async fn collection_settings(&self, collection: &str) -> Result<CollectionSettings, Error> {
        let path = format!("/v1/_collections/{collection}");
        read_settings(
            self.execute(|| self.request(Method::GET, &path), true)
                .await?,
        )
        .await
    }

    /// Replaces a collection's settings (keys left out take their defaults);
    /// `if_match` (the ETag read with them) refuses the change with 412 if someone
    /// changed them since.
    pub async fn set_collection_settings(
        &self,
        collection: &str,
        settings: &Value,
        if_match: Option<&str>,
    ) -> Result<CollectionSettings, Error> {
        let path = format!("/v1/_collections/{collection}");
        let body = settings.to_string();
        let if_match = if_match
            .map(|tag| {
                HeaderValue::from_str(tag)
                    .map_err(|_| Error::Invalid(format!("{tag:?} is not a valid ETag")))
            })
            .transpose()?;
        let key = crate::client::new_idempotency_key();
        let response = self
            .execute(
                || {
                    let request = self
                        .request(Method::PUT, &path)
                        .header(crate::client::IDEMPOTENCY_KEY, key.clone())
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone());
                    match &if_match {
                        Some(tag) => request.header("if-match", tag.clone()),
                        None => request,
                    }
                },
                // Keyed: a retry of a change that landed is replayed.
                true,
            )
            .await?;
        read_settings(response).await
    }
}
