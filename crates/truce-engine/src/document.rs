//! Documents: JSON objects within the configured limits, kept as compact JSON.
//!
//! A document is parsed once when it arrives (so bad JSON never reaches storage),
//! checked (an object, nesting within the limit) and serialised compactly. Member order
//! is kept as sent. Equality is JSON equality (member order does not matter), which is
//! what the no-op rule ("a write whose result equals the current content creates no new
//! version") compares.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::error::EngineError;

/// Size and shape limits for documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Deepest nesting: the document object itself is depth 1.
    pub max_depth: usize,
}

impl DocumentLimits {
    /// serde_json refuses to parse deeper than this, whatever the configuration.
    pub const PARSER_DEPTH_CEILING: usize = 127;
}

impl Default for DocumentLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// A valid document: its parsed value and its compact serialisation.
///
/// Both parts are shared, so a clone (the sequencer takes one for every put of a
/// request's document) copies two pointers, not the parsed tree.
#[derive(Debug, Clone)]
pub struct Document {
    value: Arc<Value>,
    bytes: Bytes,
}

impl Document {
    /// Parses a request body that must be a JSON object within `limits`.
    pub fn parse(body: &[u8], limits: DocumentLimits) -> Result<Self, EngineError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            EngineError::Malformed(crate::json_errors::describe(
                "the body",
                &e,
                limits.max_depth,
            ))
        })?;
        if !value.is_object() {
            return Err(EngineError::Malformed(format!(
                "a document must be a JSON object, not {}",
                json_type(&value)
            )));
        }
        check_depth(&value, limits.max_depth).map_err(EngineError::Malformed)?;
        Ok(Self::from_checked_value(value))
    }

    /// Checks the result of a patch or merge: it must still be an object within the
    /// depth limit. Refusals are 422 (the request was well-formed; its result is not).
    pub fn from_result(value: Value, limits: DocumentLimits) -> Result<Self, EngineError> {
        if !value.is_object() {
            return Err(EngineError::invalid(
                "",
                format!(
                    "the result must be a JSON object, not {}",
                    json_type(&value)
                ),
            ));
        }
        check_depth(&value, limits.max_depth).map_err(|m| EngineError::invalid("", m))?;
        Ok(Self::from_checked_value(value))
    }

    /// Reads a stored body back (trusted: it was checked when written).
    pub fn from_stored(bytes: Bytes) -> Result<Self, EngineError> {
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Storage(crate::StorageError::Corrupt(format!(
                "stored document is not JSON: {e}"
            )))
        })?;
        Ok(Self {
            value: Arc::new(value),
            bytes,
        })
    }

    fn from_checked_value(value: Value) -> Self {
        let mut bytes = Vec::with_capacity(256);
        write_compact(&value, &mut bytes);
        Self {
            value: Arc::new(value),
            bytes: Bytes::from(bytes),
        }
    }

    /// The parsed value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The parsed value, taken (copied only if another clone still holds it).
    pub fn into_value(self) -> Value {
        Arc::unwrap_or_clone(self.value)
    }

    /// The compact JSON bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// JSON equality with a stored body. Equal values serialise to the same bytes up
    /// to the order of object members, so their serialisations have the same length
    /// and the same multiset of bytes: when either differs, the answer needs no parse.
    /// (This runs in the sequencer, on every write of an existing resource.)
    pub fn same_content_as(&self, stored: &Bytes) -> bool {
        if self.bytes == *stored {
            return true;
        }
        if self.bytes.len() != stored.len() || byte_counts(&self.bytes) != byte_counts(stored) {
            return false;
        }
        serde_json::from_slice::<Value>(stored).is_ok_and(|v| v == *self.value)
    }
}

/// How often each byte value occurs.
fn byte_counts(bytes: &[u8]) -> [u32; 256] {
    let mut counts = [0u32; 256];
    for byte in bytes {
        counts[usize::from(*byte)] += 1;
    }
    counts
}

/// Refuses values nested deeper than `max_depth` (the outer object is depth 1).
fn check_depth(value: &Value, max_depth: usize) -> Result<(), String> {
    fn depth(value: &Value) -> usize {
        match value {
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let found = depth(value);
    if found > max_depth {
        Err(format!(
            "document nests {found} levels deep; the limit is {max_depth}"
        ))
    } else {
        Ok(())
    }
}

/// The JSON type's name, for messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes `value` as compact JSON, byte for byte what `serde_json::to_vec`
/// writes (tested), but a string that needs no escape is copied whole:
/// serde_json looks up every byte of every string in its escape table, which
/// was the larger part of taking in a document. Recursion is bounded by the
/// depth check every document passes first.
fn write_compact(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_with_serde(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_compact(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (name, member)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(name, out);
                out.push(b':');
                write_compact(member, out);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string: as it is when no byte needs an escape (JSON escapes only
/// `"`, `\` and control characters), else as serde_json escapes it.
fn write_string(text: &str, out: &mut Vec<u8>) {
    // No early exit, so the compiler can compare many bytes at a time.
    let needs_escape = text.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        write_with_serde(text, out);
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Numbers and escaped strings, written by serde_json itself.
fn write_with_serde<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing a number or a string into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        let mut s = String::new();
        for _ in 1..depth {
            s.push_str("{\"a\":");
        }
        s.push_str("{}");
        for _ in 1..depth {
            s.push('}');
        }
        s
    }

    #[test]
    fn accepts_objects_within_depth() {
        let limits = DocumentLimits::default();
        let doc = Document::parse(br#"{ "b": 1, "a": [1, {"x": null}] }"#, limits).unwrap();
        assert_eq!(doc.bytes().as_ref(), br#"{"b":1,"a":[1,{"x":null}]}"#);
        assert!(Document::parse(nested(64).as_bytes(), limits).is_ok());
        assert!(Document::parse(nested(65).as_bytes(), limits).is_err());
        assert!(Document::parse(nested(1000).as_bytes(), limits).is_err());
    }

    #[test]
    fn refuses_non_objects_and_bad_json() {
        let limits = DocumentLimits::default();
        for bad in [
            &b"[]"[..],
            b"1",
            b"\"s\"",
            b"null",
            b"{",
            b"",
            b"{\"a\":1}x",
        ] {
            assert!(matches!(
                Document::parse(bad, limits),
                Err(EngineError::Malformed(_))
            ));
        }
    }

    #[test]
    fn equality_ignores_member_order() {
        let limits = DocumentLimits::default();
        let a = Document::parse(br#"{"a":1,"b":2}"#, limits).unwrap();
        let b = Document::parse(br#"{"b":2,"a":1}"#, limits).unwrap();
        let c = Document::parse(br#"{"b":2,"a":3}"#, limits).unwrap();
        // Same bytes in another order, yet different values.
        let d = Document::parse(br#"{"a":2,"b":1}"#, limits).unwrap();
        assert!(a.same_content_as(b.bytes()));
        assert!(!a.same_content_as(c.bytes()));
        assert!(!a.same_content_as(d.bytes()));
        let nested = Document::parse(br#"{"x":{"p":1,"q":[1,2]},"y":null}"#, limits).unwrap();
        let reordered = Document::parse(br#"{"y":null,"x":{"q":[1,2],"p":1}}"#, limits).unwrap();
        let arrays_differ =
            Document::parse(br#"{"y":null,"x":{"q":[2,1],"p":1}}"#, limits).unwrap();
        assert!(nested.same_content_as(reordered.bytes()));
        assert!(!nested.same_content_as(arrays_differ.bytes()));
    }

    /// Any JSON: every kind of number, strings with escapes, control characters,
    /// non-ASCII and `/`, nested arrays and objects (member order as generated).
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[a-z\\\\\"/\\x00-\\x1f\\x7f é€😀]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn compact_json_is_byte_for_byte_serde_json(value in any_json()) {
            let mut ours = Vec::new();
            write_compact(&value, &mut ours);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&value).unwrap());
        }
    }

    #[test]
    fn strings_that_need_escapes_are_escaped() {
        let value = serde_json::json!({"a\"b": "line\nbreak \\ and \u{1} / é"});
        let mut ours = Vec::new();
        write_compact(&value, &mut ours);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            r#"{"a\"b":"line\nbreak \\ and \u0001 / é"}"#
        );
    }
}
