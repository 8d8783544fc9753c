//! Page sizes and opaque cursors for every list the API answers.
//!
//! A cursor is the position to continue from, base64url-encoded so clients treat it
//! as opaque and pass it back unchanged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ApiError;

/// Page size when the client names none.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page a client may ask for.
pub const MAX_LIMIT: usize = 1000;

/// Checks `?limit=`.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::Malformed(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// Encodes a position as a cursor.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

/// A page of JSON items keyed by their `id` (conflict records, subscriptions):
/// `{items, next}`, where `next` (when `more` follows) is the cursor after the
/// last item's id.
pub fn page_by_id(items: Vec<serde_json::Value>, more: bool) -> serde_json::Value {
    let next = more
        .then(|| {
            items
                .last()
                .and_then(|item| item["id"].as_str())
                .map(encode_cursor)
        })
        .flatten();
    serde_json::json!({"items": items, "next": next})
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::Malformed(format!("invalid cursor {cursor:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor("abc.1~x")).unwrap(), "abc.1~x");
        assert!(decode_cursor("!!!").is_err());
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(1001)).is_err());
        assert_eq!(page_limit(None).unwrap(), DEFAULT_LIMIT);
    }
}
