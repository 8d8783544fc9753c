//! The on-disk encoding of keys and records in the embedded store.
//!
//! Keys are chosen so that redb's byte order is the order truce reads in:
//!
//! | table     | key                                   | value            |
//! |-----------|---------------------------------------|------------------|
//! | `heads`   | `collection 0x00 id`                  | version record   |
//! | `history` | `collection 0x00 id 0x00 version(BE)` | version record   |
//! | `changes` | `(revision, index within revision)`   | change record    |
//! | `meta`    | name                                  | u64              |
//!
//! Names never contain `0x00`, so a collection's heads are the range
//! `[collection 0x00, collection 0x01)` and a resource's history the range
//! `[head key 0x00, head key 0x01)`, whatever other ids share a prefix.
//!
//! A version record is a fixed header followed by the principal and the compact JSON
//! body: `format(1) number(8) revision(8) at_ms(8) op(1) flags(1) by_len(2) by body`.
//! A change record is `format(1) version(8) at_ms(8) op(1) collection_len(1)
//! collection id`. Integers are big-endian. Decoding checks every length and answers
//! `Corrupt` instead of panicking.

use bytes::Bytes;
use truce_engine::{CollectionName, DocId, Op, ResourceKey, StorageError, Timestamp, Version};

/// Version of the record layout, first byte of every record.
const FORMAT: u8 = 1;
/// `flags` bit: the record carries a body (not a tombstone).
const HAS_BODY: u8 = 1;
/// Size of the fixed header of a version record.
const VERSION_HEADER: usize = 1 + 8 + 8 + 8 + 1 + 1 + 2;
/// Size of the fixed header of a change record.
const CHANGE_HEADER: usize = 1 + 8 + 8 + 1 + 1;

/// `collection 0x00 id`.
pub(crate) fn head_key(key: &ResourceKey) -> Vec<u8> {
    let c = key.collection.as_str().as_bytes();
    let id = key.id.as_str().as_bytes();
    let mut out = Vec::with_capacity(c.len() + 1 + id.len() + 9);
    out.extend_from_slice(c);
    out.push(0);
    out.extend_from_slice(id);
    out
}

/// `collection 0x00 id 0x00 version`.
pub(crate) fn history_key(key: &ResourceKey, version: u64) -> Vec<u8> {
    let mut out = head_key(key);
    out.push(0);
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// The half-open range of `history` keys of one resource.
pub(crate) fn history_range(key: &ResourceKey) -> (Vec<u8>, Vec<u8>) {
    let mut start = head_key(key);
    let mut end = start.clone();
    start.push(0);
    end.push(1);
    (start, end)
}

/// The half-open range of `heads` keys of one collection whose id starts with `prefix`.
pub(crate) fn collection_range(collection: &CollectionName, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = collection.as_str().as_bytes().to_vec();
    start.push(0);
    start.extend_from_slice(prefix.as_bytes());
    let end = if prefix.is_empty() {
        let mut end = collection.as_str().as_bytes().to_vec();
        end.push(1);
        end
    } else {
        // Ids are ASCII below 0x7f, so appending 0xff bounds every id with the prefix.
        let mut end = start.clone();
        end.push(0xff);
        end
    };
    (start, end)
}

/// Splits a `heads` key back into its resource key.
pub(crate) fn decode_head_key(bytes: &[u8]) -> Result<ResourceKey, StorageError> {
    let split = bytes
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("head key without separator"))?;
    let collection = std::str::from_utf8(&bytes[..split]).map_err(|_| corrupt("collection"))?;
    let id = std::str::from_utf8(&bytes[split + 1..]).map_err(|_| corrupt("id"))?;
    ResourceKey::parse(collection, id).map_err(|e| corrupt(&e.to_string()))
}

/// The version number at the end of a `history` key.
pub(crate) fn decode_history_version(bytes: &[u8]) -> Result<u64, StorageError> {
    let tail = bytes
        .len()
        .checked_sub(8)
        .ok_or_else(|| corrupt("short history key"))?;
    read_u64(bytes, tail)
}

/// Encodes a version record.
pub(crate) fn encode_version(version: &Version) -> Vec<u8> {
    let by = version.by.as_bytes();
    let by = &by[..by.len().min(usize::from(u16::MAX))];
    let body = version.body.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(VERSION_HEADER + by.len() + body.len());
    out.push(FORMAT);
    out.extend_from_slice(&version.number.to_be_bytes());
    out.extend_from_slice(&version.revision.to_be_bytes());
    out.extend_from_slice(&version.at.millis().to_be_bytes());
    out.push(version.op.code());
    out.push(if version.body.is_some() { HAS_BODY } else { 0 });
    // The length fits: it was clamped to u16::MAX above.
    out.extend_from_slice(&(by.len() as u16).to_be_bytes());
    out.extend_from_slice(by);
    out.extend_from_slice(body);
    out
}

/// The commit instant of a version record, without decoding its body.
pub(crate) fn version_at(bytes: &[u8]) -> Result<Timestamp, StorageError> {
    if bytes.first() != Some(&FORMAT) {
        return Err(corrupt("version record header"));
    }
    Ok(Timestamp::from_millis(read_u64(bytes, 17)?))
}

/// Decodes a version record.
pub(crate) fn decode_version(bytes: &[u8]) -> Result<Version, StorageError> {
    if bytes.len() < VERSION_HEADER || bytes[0] != FORMAT {
        return Err(corrupt("version record header"));
    }
    let number = read_u64(bytes, 1)?;
    let revision = read_u64(bytes, 9)?;
    let at = Timestamp::from_millis(read_u64(bytes, 17)?);
    let op = Op::from_code(bytes[25]).ok_or_else(|| corrupt("unknown op code"))?;
    let has_body = bytes[26] & HAS_BODY != 0;
    let by_len = usize::from(u16::from_be_bytes([bytes[27], bytes[28]]));
    let by_end = VERSION_HEADER + by_len;
    let by = bytes
        .get(VERSION_HEADER..by_end)
        .ok_or_else(|| corrupt("version record principal"))?;
    let by = String::from_utf8(by.to_vec()).map_err(|_| corrupt("principal is not UTF-8"))?;
    let body = has_body.then(|| Bytes::copy_from_slice(&bytes[by_end..]));
    Ok(Version {
        number,
        revision,
        at,
        op,
        by,
        body,
    })
}

/// A change-feed record, without the revision (that is its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeRecord {
    pub key: ResourceKey,
    pub version: u64,
    pub at: Timestamp,
    pub op: Op,
}

/// Encodes a change record.
pub(crate) fn encode_change(change: &ChangeRecord) -> Vec<u8> {
    let c = change.key.collection.as_str().as_bytes();
    let id = change.key.id.as_str().as_bytes();
    let mut out = Vec::with_capacity(CHANGE_HEADER + c.len() + id.len());
    out.push(FORMAT);
    out.extend_from_slice(&change.version.to_be_bytes());
    out.extend_from_slice(&change.at.millis().to_be_bytes());
    out.push(change.op.code());
    // Collection names are at most 63 bytes.
    out.push(c.len() as u8);
    out.extend_from_slice(c);
    out.extend_from_slice(id);
    out
}

/// Decodes a change record.
pub(crate) fn decode_change(bytes: &[u8]) -> Result<ChangeRecord, StorageError> {
    if bytes.len() < CHANGE_HEADER || bytes[0] != FORMAT {
        return Err(corrupt("change record header"));
    }
    let version = read_u64(bytes, 1)?;
    let at = Timestamp::from_millis(read_u64(bytes, 9)?);
    let op = Op::from_code(bytes[17]).ok_or_else(|| corrupt("unknown op code"))?;
    let c_len = usize::from(bytes[18]);
    let c_end = CHANGE_HEADER + c_len;
    let collection = bytes
        .get(CHANGE_HEADER..c_end)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| corrupt("change collection"))?;
    let id = std::str::from_utf8(&bytes[c_end..]).map_err(|_| corrupt("change id"))?;
    let key = ResourceKey {
        collection: CollectionName::parse(collection).map_err(|e| corrupt(&e.to_string()))?,
        id: DocId::parse(id).map_err(|e| corrupt(&e.to_string()))?,
    };
    Ok(ChangeRecord {
        key,
        version,
        at,
        op,
    })
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64, StorageError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("truncated integer"))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> ResourceKey {
        ResourceKey::parse("users", "a.b").unwrap()
    }

    proptest! {
        #[test]
        fn version_records_round_trip(
            number in any::<u64>(), revision in any::<u64>(), at in any::<u64>(),
            op in 0u8..7, by in "[a-z]{0,20}", body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        ) {
            let version = Version {
                number, revision, at: Timestamp::from_millis(at), op: Op::from_code(op).unwrap(),
                by, body: body.map(Bytes::from),
            };
            prop_assert_eq!(decode_version(&encode_version(&version)).unwrap(), version);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_version(&bytes);
            let _ = decode_change(&bytes);
            let _ = decode_head_key(&bytes);
            let _ = decode_history_version(&bytes);
        }
    }

    #[test]
    fn change_records_round_trip() {
        let change = ChangeRecord {
            key: key(),
            version: 7,
            at: Timestamp::from_millis(99),
            op: Op::Delete,
        };
        assert_eq!(decode_change(&encode_change(&change)).unwrap(), change);
    }

    #[test]
    fn history_ranges_do_not_leak_into_longer_ids() {
        let a = ResourceKey::parse("c", "a").unwrap();
        let ab = ResourceKey::parse("c", "a.b").unwrap();
        let (start, end) = history_range(&a);
        let own = history_key(&a, 5);
        let other = history_key(&ab, 5);
        assert!(start <= own && own < end);
        assert!(!(start <= other && other < end));
        assert_eq!(decode_history_version(&own).unwrap(), 5);
        assert_eq!(decode_head_key(&head_key(&ab)).unwrap(), ab);
    }

    #[test]
    fn collection_ranges_select_by_prefix() {
        let c = CollectionName::parse("c").unwrap();
        let (start, end) = collection_range(&c, "ab");
        let inside = head_key(&ResourceKey::parse("c", "abz").unwrap());
        let outside = head_key(&ResourceKey::parse("c", "ac").unwrap());
        let other_collection = head_key(&ResourceKey::parse("cc", "ab").unwrap());
        assert!(start <= inside && inside < end);
        assert!(!(start <= outside && outside < end));
        assert!(!(start <= other_collection && other_collection < end));
    }
}
