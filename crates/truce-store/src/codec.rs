//! The on-disk encoding of keys and records in the embedded store.
//!
//! Storage is a log plus an index of heads:
//!
//! | table   | key                               | value                                  |
//! |---------|-----------------------------------|----------------------------------------|
//! | `log`   | `(revision, index in revision)`   | one version: resource, number, op, time, principal, back-pointer, body |
//! | `heads` | `collection 0x00 id`              | the resource's newest version as of the last checkpoint: number, log position, op, time, tombstone |
//! | `meta`  | name                              | u64 counters                           |
//!
//! Every committed version is appended to `log` at its revision, so a write appends
//! sequentially instead of touching a page per resource; the log is also the change
//! feed. Each log record points back to the previous version of the same resource,
//! so a resource's history is a chain from its head. Names never contain `0x00`, so
//! a collection's heads are the range `[collection 0x00, collection 0x01)`.
//!
//! Layouts (integers big-endian):
//! - head: `format(1) number(8) revision(8) index(4) at_ms(8) op(1) flags(1)`
//! - log: `format(1) number(8) at_ms(8) op(1) flags(1) prev_revision(8) prev_index(4)
//!   collection_len(1) collection id_len(1) id by_len(2) by body`
//!
//! Decoding checks every length and answers `Corrupt` instead of panicking.

use bytes::Bytes;
use truce_engine::{CollectionName, DocId, Op, ResourceKey, StorageError, Timestamp};

/// Version of the record layouts, first byte of every record.
const FORMAT: u8 = 2;
/// Head flag: the newest version is a tombstone.
const TOMBSTONE: u8 = 1;
/// Log flag: the record carries a document body.
const HAS_BODY: u8 = 1;
/// Log flag: the record has a previous version.
const HAS_PREV: u8 = 2;
/// Log flag: retention removed the body (the change stays in the feed).
const STRIPPED: u8 = 4;
/// Size of a head record.
const HEAD_LEN: usize = 1 + 8 + 8 + 4 + 8 + 1 + 1;
/// Size of the fixed part of a log record.
const LOG_HEADER: usize = 1 + 8 + 8 + 1 + 1 + 8 + 4;

/// A position in the log: `(revision, index within the revision)`.
pub(crate) type LogPosition = (u64, u32);

/// `collection 0x00 id`.
pub(crate) fn head_key(key: &ResourceKey) -> Vec<u8> {
    let c = key.collection.as_str().as_bytes();
    let id = key.id.as_str().as_bytes();
    let mut out = Vec::with_capacity(c.len() + 1 + id.len());
    out.extend_from_slice(c);
    out.push(0);
    out.extend_from_slice(id);
    out
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

/// The index entry of a resource's newest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadRecord {
    pub number: u64,
    pub position: LogPosition,
    pub at: Timestamp,
    pub op: Op,
    pub tombstone: bool,
}

impl HeadRecord {
    /// The head of the version `record`, stored at `position`: a version without a
    /// body is a tombstone. (Only past versions are stripped, never a head.)
    pub fn of(position: LogPosition, record: &LogRecord) -> Self {
        Self {
            number: record.number,
            position,
            at: record.at,
            op: record.op,
            tombstone: record.body.is_none(),
        }
    }
}

/// Encodes a head record.
pub(crate) fn encode_head(head: &HeadRecord) -> [u8; HEAD_LEN] {
    let mut out = [0u8; HEAD_LEN];
    out[0] = FORMAT;
    out[1..9].copy_from_slice(&head.number.to_be_bytes());
    out[9..17].copy_from_slice(&head.position.0.to_be_bytes());
    out[17..21].copy_from_slice(&head.position.1.to_be_bytes());
    out[21..29].copy_from_slice(&head.at.millis().to_be_bytes());
    out[29] = head.op.code();
    out[30] = if head.tombstone { TOMBSTONE } else { 0 };
    out
}

/// Decodes a head record.
pub(crate) fn decode_head(bytes: &[u8]) -> Result<HeadRecord, StorageError> {
    if bytes.len() != HEAD_LEN || bytes[0] != FORMAT {
        return Err(corrupt("head record"));
    }
    Ok(HeadRecord {
        number: read_u64(bytes, 1)?,
        position: (read_u64(bytes, 9)?, read_u32(bytes, 17)?),
        at: Timestamp::from_millis(read_u64(bytes, 21)?),
        op: Op::from_code(bytes[29]).ok_or_else(|| corrupt("unknown op code"))?,
        tombstone: bytes[30] & TOMBSTONE != 0,
    })
}

/// One version as stored in the log (its revision is the log key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRecord {
    pub key: ResourceKey,
    pub number: u64,
    pub at: Timestamp,
    pub op: Op,
    pub by: String,
    /// The previous version of the same resource.
    pub prev: Option<LogPosition>,
    /// The document; `None` for a tombstone or a stripped record.
    pub body: Option<Bytes>,
    /// Retention removed the body; the record stays for the change feed.
    pub stripped: bool,
}

/// Encodes a log record.
pub(crate) fn encode_log(record: &LogRecord) -> Vec<u8> {
    let c = record.key.collection.as_str().as_bytes();
    let id = record.key.id.as_str().as_bytes();
    let by = record.by.as_bytes();
    let by = &by[..by.len().min(usize::from(u16::MAX))];
    let body = record.body.as_deref().unwrap_or_default();
    let mut out =
        Vec::with_capacity(LOG_HEADER + 2 + c.len() + id.len() + 2 + by.len() + body.len());
    out.push(FORMAT);
    out.extend_from_slice(&record.number.to_be_bytes());
    out.extend_from_slice(&record.at.millis().to_be_bytes());
    out.push(record.op.code());
    let mut flags = 0;
    if record.body.is_some() {
        flags |= HAS_BODY;
    }
    if record.prev.is_some() {
        flags |= HAS_PREV;
    }
    if record.stripped {
        flags |= STRIPPED;
    }
    out.push(flags);
    let (prev_revision, prev_index) = record.prev.unwrap_or((0, 0));
    out.extend_from_slice(&prev_revision.to_be_bytes());
    out.extend_from_slice(&prev_index.to_be_bytes());
    // Collection names are at most 63 bytes and ids at most 255.
    out.push(c.len() as u8);
    out.extend_from_slice(c);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    // The length fits: it was clamped to u16::MAX above.
    out.extend_from_slice(&(by.len() as u16).to_be_bytes());
    out.extend_from_slice(by);
    out.extend_from_slice(body);
    out
}

/// Decodes a log record, copying the body only when `with_body`.
pub(crate) fn decode_log(bytes: &[u8], with_body: bool) -> Result<LogRecord, StorageError> {
    if bytes.len() < LOG_HEADER || bytes[0] != FORMAT {
        return Err(corrupt("log record header"));
    }
    let number = read_u64(bytes, 1)?;
    let at = Timestamp::from_millis(read_u64(bytes, 9)?);
    let op = Op::from_code(bytes[17]).ok_or_else(|| corrupt("unknown op code"))?;
    let flags = bytes[18];
    let prev = (flags & HAS_PREV != 0).then_some((read_u64(bytes, 19)?, read_u32(bytes, 27)?));
    let mut pos = LOG_HEADER;
    let collection = read_text(bytes, &mut pos, 1)?;
    let id = read_text(bytes, &mut pos, 1)?;
    let by = read_text(bytes, &mut pos, 2)?.to_owned();
    let key = ResourceKey {
        collection: CollectionName::parse(collection).map_err(|e| corrupt(&e.to_string()))?,
        id: DocId::parse(id).map_err(|e| corrupt(&e.to_string()))?,
    };
    let body = (with_body && flags & HAS_BODY != 0).then(|| Bytes::copy_from_slice(&bytes[pos..]));
    Ok(LogRecord {
        key,
        number,
        at,
        op,
        by,
        prev,
        body,
        stripped: flags & STRIPPED != 0,
    })
}

/// Reads a length-prefixed UTF-8 field and advances `pos`.
fn read_text<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    len_bytes: usize,
) -> Result<&'a str, StorageError> {
    let len_field = bytes
        .get(*pos..*pos + len_bytes)
        .ok_or_else(|| corrupt("truncated length"))?;
    let len = len_field
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let start = *pos + len_bytes;
    let text = bytes
        .get(start..start + len)
        .ok_or_else(|| corrupt("truncated field"))?;
    *pos = start + len;
    std::str::from_utf8(text).map_err(|_| corrupt("field is not UTF-8"))
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64, StorageError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("truncated integer"))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, StorageError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("truncated integer"))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn log_records_round_trip(
            number in any::<u64>(), at in any::<u64>(), op in 0u8..7, by in "[a-z]{0,20}",
            id in "[A-Za-z0-9][A-Za-z0-9._~-]{0,40}",
            prev in proptest::option::of((any::<u64>(), any::<u32>())),
            body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            stripped in any::<bool>(),
        ) {
            let record = LogRecord {
                key: ResourceKey::parse("users", &id).unwrap(),
                number, at: Timestamp::from_millis(at), op: Op::from_code(op).unwrap(), by,
                prev, body: body.map(Bytes::from), stripped,
            };
            let encoded = encode_log(&record);
            prop_assert_eq!(decode_log(&encoded, true).unwrap(), record.clone());
            let light = decode_log(&encoded, false).unwrap();
            prop_assert_eq!(light.body, None);
            prop_assert_eq!(light.number, record.number);
        }

        #[test]
        fn head_records_round_trip(
            number in any::<u64>(), revision in any::<u64>(), index in any::<u32>(),
            at in any::<u64>(), op in 0u8..7, tombstone in any::<bool>(),
        ) {
            let head = HeadRecord {
                number, position: (revision, index), at: Timestamp::from_millis(at),
                op: Op::from_code(op).unwrap(), tombstone,
            };
            prop_assert_eq!(decode_head(&encode_head(&head)).unwrap(), head);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_log(&bytes, true);
            let _ = decode_head(&bytes);
            let _ = decode_head_key(&bytes);
        }
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
        let ab = ResourceKey::parse("c", "a.b").unwrap();
        assert_eq!(decode_head_key(&head_key(&ab)).unwrap(), ab);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Fixed examples of the on-disk formats: a change of layout, byte order or
    /// field order shows up here (and needs a format version and a migration),
    /// where round-trip tests would pass.
    #[test]
    fn on_disk_bytes_are_fixed() {
        let record = LogRecord {
            key: ResourceKey::parse("notes", "todo").unwrap(),
            number: 3,
            at: Timestamp::from_millis(1_700_000_000_123),
            op: Op::Patch,
            by: "ann".into(),
            prev: Some((41, 2)),
            body: Some(Bytes::from_static(br#"{"n":1}"#)),
            stripped: false,
        };
        const LOG: &str = "0200000000000000030000018bcfe5687b0203000000000000002900000002056e6f74657304746f646f0003616e6e7b226e223a317d";
        assert_eq!(hex(&encode_log(&record)), LOG);
        let head = HeadRecord::of((42, 0), &record);
        const HEAD: &str = "020000000000000003000000000000002a000000000000018bcfe5687b0200";
        assert_eq!(hex(&encode_head(&head)), HEAD);
        const KEY: &str = "6e6f74657300746f646f";
        assert_eq!(hex(&head_key(&record.key)), KEY);
        let unhex = |text: &str| -> Vec<u8> {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
                .collect()
        };
        assert_eq!(decode_log(&unhex(LOG), true).unwrap(), record);
        assert_eq!(decode_head(&unhex(HEAD)).unwrap(), head);
        assert_eq!(decode_head_key(&unhex(KEY)).unwrap(), record.key);
    }
}
