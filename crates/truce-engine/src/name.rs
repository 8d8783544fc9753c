//! Collection names and document ids.
//!
//! Names are validated once, at the edge, and then carried as newtypes so no layer
//! below ever sees an unchecked name. Names beginning with `_` belong to the system
//! (`/v1/_changes`, ...), which is why neither pattern admits a leading underscore.

use std::fmt;

use serde::Serialize;

/// Longest collection name: `^[a-z][a-z0-9_-]{0,62}$`.
const MAX_COLLECTION_LEN: usize = 63;
/// Longest document id: `^[A-Za-z0-9][A-Za-z0-9._~-]{0,254}$`.
const MAX_ID_LEN: usize = 255;

/// Why a name was refused; the text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The collection name does not match `^[a-z][a-z0-9_-]{0,62}$`.
    #[error("collection name {0:?} must match ^[a-z][a-z0-9_-]{{0,62}}$")]
    Collection(String),
    /// The id does not match `^[A-Za-z0-9][A-Za-z0-9._~-]{0,254}$`.
    #[error("document id {0:?} must match ^[A-Za-z0-9][A-Za-z0-9._~-]{{0,254}}$")]
    Id(String),
}

/// A valid collection name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CollectionName(String);

impl CollectionName {
    /// Checks `raw` against the collection pattern.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let bytes = raw.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_COLLECTION_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::Collection(truncate_for_message(raw)))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid document id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DocId(String);

impl DocId {
    /// Checks `raw` against the id pattern.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let bytes = raw.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_ID_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::Id(truncate_for_message(raw)))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps text the caller knows to match the pattern (ids this crate makes).
    pub(crate) fn from_trusted(id: String) -> Self {
        debug_assert!(Self::parse(&id).is_ok());
        Self(id)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The address of one resource: `/v1/{collection}/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceKey {
    /// The collection the resource belongs to.
    pub collection: CollectionName,
    /// The resource's id within the collection.
    pub id: DocId,
}

impl ResourceKey {
    /// Validates both parts of a resource address.
    pub fn parse(collection: &str, id: &str) -> Result<Self, NameError> {
        Ok(Self {
            collection: CollectionName::parse(collection)?,
            id: DocId::parse(id)?,
        })
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

/// Keeps error messages short when a client sends a huge name.
fn truncate_for_message(raw: &str) -> String {
    raw.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_follow_the_pattern() {
        for good in ["a", "users", "a-b_c9", &"x".repeat(63)] {
            assert!(CollectionName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "_changes",
            "Users",
            "9a",
            "a.b",
            "a/b",
            &"x".repeat(64),
            "é",
        ] {
            assert!(CollectionName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_follow_the_pattern() {
        for good in ["a", "A1", "0", "a.b~c_d-e", &"x".repeat(255)] {
            assert!(DocId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "_x",
            ".a",
            "-a",
            "a/b",
            "a b",
            "a%20",
            &"x".repeat(256),
            "ü",
        ] {
            assert!(DocId::parse(bad).is_err(), "{bad}");
        }
    }
}
