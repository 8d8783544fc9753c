//! Entity tags: how truce makes them and how it compares the ones clients send.
//!
//! Every version of every resource has one strong ETag, `"{version}-{tag}"`, where the
//! tag is derived from the resource's address, its version, the revision and the
//! instant of the commit. Version numbers never repeat for a resource (they continue
//! after a delete), so an ETag is never reused for the same resource; the hashed part
//! keeps it opaque and distinct across resources and stores.
//!
//! Parsing follows RFC 9110 §8.8.3 and §13.1: `*`, or a comma-separated list of
//! entity-tags, each optionally weak (`W/"..."`). Comparison is strong for `If-Match`
//! and weak for `If-None-Match` (RFC 9110 §8.8.3.2).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::name::{CollectionName, ResourceKey};
use crate::time::Timestamp;

/// The strong ETag of one version of one resource (the opaque tag, without quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// Derives the ETag of `version` of `key`, committed at `revision` and `at`.
    pub fn derive(key: &ResourceKey, version: u64, revision: u64, at: Timestamp) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(key.collection.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(key.id.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(version.to_be_bytes());
        hasher.update(revision.to_be_bytes());
        hasher.update(at.millis().to_be_bytes());
        Self::from_digest(version, hasher)
    }

    /// Derives the ETag of version `version` of a collection's settings, changed at
    /// `at`. Hashed under its own domain, so it never equals a document's.
    pub fn derive_settings(collection: &CollectionName, version: u64, at: Timestamp) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"settings\0");
        hasher.update(collection.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(version.to_be_bytes());
        hasher.update(at.millis().to_be_bytes());
        Self::from_digest(version, hasher)
    }

    /// `"{version}-{first 4 bytes of the digest, in hex}"`.
    fn from_digest(version: u64, hasher: Sha256) -> Self {
        let digest = hasher.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut tag = version.to_string();
        tag.push('-');
        for byte in &digest[..4] {
            tag.push(char::from(HEX[usize::from(byte >> 4)]));
            tag.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(tag)
    }

    /// The opaque tag, without quotes.
    pub fn opaque(&self) -> &str {
        &self.0
    }

    /// The header form: the tag in double quotes.
    pub fn to_header(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// One entity-tag as sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    /// Whether it carried the `W/` prefix.
    pub weak: bool,
    /// The opaque tag, without quotes.
    pub opaque: String,
}

impl EntityTag {
    /// RFC 9110 strong comparison: both strong and the same characters.
    pub fn strong_eq(&self, etag: &ETag) -> bool {
        !self.weak && self.opaque == etag.opaque()
    }

    /// RFC 9110 weak comparison: the same characters, weakness ignored.
    pub fn weak_eq(&self, etag: &ETag) -> bool {
        self.opaque == etag.opaque()
    }
}

/// The value of an `If-Match` or `If-None-Match` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagCondition {
    /// `*`: any current representation.
    Any,
    /// A non-empty list of entity-tags.
    Tags(Vec<EntityTag>),
}

/// A malformed `If-Match` or `If-None-Match` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EtagSyntaxError(String);

impl TagCondition {
    /// Parses one or more field lines of the same field into one condition.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self, EtagSyntaxError> {
        let mut tags = Vec::new();
        let mut any = false;
        for line in lines {
            parse_line(line, &mut tags, &mut any)?;
        }
        match (any, tags.is_empty()) {
            (true, true) => Ok(Self::Any),
            (true, false) => Err(EtagSyntaxError(
                "\"*\" cannot be combined with entity-tags".into(),
            )),
            (false, true) => Err(EtagSyntaxError(
                "expected \"*\" or at least one entity-tag".into(),
            )),
            (false, false) => Ok(Self::Tags(tags)),
        }
    }

    /// `If-Match` semantics: strong comparison against the current ETag.
    pub fn matches_strong(&self, current: &ETag) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|t| t.strong_eq(current)),
        }
    }

    /// `If-None-Match` semantics: weak comparison against the current ETag.
    pub fn matches_weak(&self, current: &ETag) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|t| t.weak_eq(current)),
        }
    }
}

/// Parses `*` or `#entity-tag` from one field line, appending to `tags`.
fn parse_line(
    line: &str,
    tags: &mut Vec<EntityTag>,
    any: &mut bool,
) -> Result<(), EtagSyntaxError> {
    let bytes = line.as_bytes();
    let mut pos = 0;
    let skip_ows = |pos: &mut usize| {
        while *pos < bytes.len() && (bytes[*pos] == b' ' || bytes[*pos] == b'\t') {
            *pos += 1;
        }
    };
    loop {
        skip_ows(&mut pos);
        if pos == bytes.len() {
            return Ok(());
        }
        match bytes[pos] {
            b',' => {
                // Empty list elements are allowed (RFC 9110 §5.6.1.2).
                pos += 1;
                continue;
            }
            b'*' => {
                *any = true;
                pos += 1;
            }
            _ => {
                let weak = bytes[pos..].starts_with(b"W/");
                if weak {
                    pos += 2;
                }
                if bytes.get(pos) != Some(&b'"') {
                    return Err(EtagSyntaxError(format!(
                        "expected a quoted entity-tag at byte {pos} of {line:?}"
                    )));
                }
                pos += 1;
                let start = pos;
                while pos < bytes.len() && is_etagc(bytes[pos]) {
                    pos += 1;
                }
                if bytes.get(pos) != Some(&b'"') {
                    return Err(EtagSyntaxError(format!(
                        "unterminated or invalid entity-tag in {line:?}"
                    )));
                }
                let opaque = String::from_utf8_lossy(&bytes[start..pos]).into_owned();
                pos += 1;
                tags.push(EntityTag { weak, opaque });
            }
        }
        skip_ows(&mut pos);
        match bytes.get(pos) {
            None => return Ok(()),
            Some(b',') => pos += 1,
            Some(_) => {
                return Err(EtagSyntaxError(format!(
                    "expected ',' between entity-tags in {line:?}"
                )));
            }
        }
    }
}

/// `etagc = %x21 / %x23-7E / obs-text`.
fn is_etagc(byte: u8) -> bool {
    byte == 0x21 || (0x23..=0x7e).contains(&byte) || byte >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> EntityTag {
        EntityTag {
            weak: false,
            opaque: s.into(),
        }
    }

    #[test]
    fn parses_star_lists_and_weak_tags() {
        assert_eq!(TagCondition::parse(["*"]), Ok(TagCondition::Any));
        assert_eq!(
            TagCondition::parse([r#""a", W/"b" ,,"c,d""#]),
            Ok(TagCondition::Tags(vec![
                tag("a"),
                EntityTag {
                    weak: true,
                    opaque: "b".into()
                },
                tag("c,d"),
            ]))
        );
        assert_eq!(
            TagCondition::parse([r#""a""#, r#""b""#]),
            Ok(TagCondition::Tags(vec![tag("a"), tag("b")]))
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            ",",
            "a",
            r#""a"#,
            r#""a" "b""#,
            r#"*, "a""#,
            r#"w/"a""#,
            "\"a\"b\"",
        ] {
            assert!(TagCondition::parse([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn strong_and_weak_comparison() {
        let current = ETag("3-abc".into());
        let weak = TagCondition::parse([r#"W/"3-abc""#]).unwrap();
        let strong = TagCondition::parse([r#""3-abc""#]).unwrap();
        assert!(!weak.matches_strong(&current));
        assert!(weak.matches_weak(&current));
        assert!(strong.matches_strong(&current));
        assert!(strong.matches_weak(&current));
        assert!(TagCondition::Any.matches_strong(&current));
    }

    #[test]
    fn etags_differ_per_resource_version_and_commit() {
        let a = ResourceKey::parse("c", "a").unwrap();
        let b = ResourceKey::parse("c", "b").unwrap();
        let at = Timestamp::from_millis(1);
        let first = ETag::derive(&a, 1, 1, at);
        assert_eq!(first, ETag::derive(&a, 1, 1, at));
        assert_ne!(first, ETag::derive(&b, 1, 1, at));
        assert_ne!(first, ETag::derive(&a, 2, 1, at));
        assert_ne!(first, ETag::derive(&a, 1, 2, at));
        assert!(first.to_header().starts_with("\"1-"));
    }
}
