//! Patches and diffs: RFC 7396 merge patch, RFC 6902 JSON Patch, and the diff between
//! two versions expressed as a JSON Patch. The `json-patch` crate does the work; this
//! module only fixes how its results and failures map onto truce's rules.

use serde_json::Value;

use crate::error::EngineError;

/// A parsed RFC 6902 JSON Patch.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPatch(json_patch::Patch);

/// Why a JSON Patch could not be applied to the current document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatchFailure {
    /// Index of the failed operation.
    pub operation: usize,
    /// Its target path.
    pub path: String,
    /// True when a `test` operation failed (a different problem from a bad path).
    pub test_failed: bool,
    /// What went wrong.
    pub reason: String,
}

impl JsonPatch {
    /// Parses a JSON Patch document (a JSON array of operations), saying which
    /// operation is wrong and how.
    pub fn parse(body: &[u8]) -> Result<Self, EngineError> {
        let malformed = |detail: String| EngineError::Malformed(detail);
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            malformed(crate::json_errors::describe(
                "the body",
                &e,
                crate::DocumentLimits::PARSER_DEPTH_CEILING,
            ))
        })?;
        let Value::Array(operations) = value else {
            return Err(malformed(
                "a JSON Patch must be an array of operations (RFC 6902)".into(),
            ));
        };
        let mut parsed = Vec::with_capacity(operations.len());
        for (index, operation) in operations.into_iter().enumerate() {
            let op = operation
                .get("op")
                .and_then(Value::as_str)
                .map(str::to_owned);
            match op.as_deref() {
                Some("add" | "remove" | "replace" | "move" | "copy" | "test") => {}
                Some(other) => {
                    return Err(malformed(format!(
                        "JSON Patch operation {index}: \"{other}\" is not an operation (add, remove, replace, move, copy or test)"
                    )));
                }
                None => {
                    return Err(malformed(format!(
                        "JSON Patch operation {index} needs an \"op\" member naming the operation"
                    )));
                }
            }
            let operation = serde_json::from_value(operation).map_err(|e| {
                let why = crate::json_errors::shape(&e.to_string())
                    .unwrap_or_else(|| "it does not have the members RFC 6902 requires".into());
                malformed(format!(
                    "JSON Patch operation {index} ({}): {why}",
                    op.unwrap_or_default()
                ))
            })?;
            parsed.push(operation);
        }
        Ok(Self(json_patch::Patch(parsed)))
    }

    /// The patch as JSON (an array of operations).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }

    /// Applies the patch to a copy of `doc`; all operations or none.
    pub(crate) fn apply(&self, doc: &Value) -> Result<Value, PatchFailure> {
        let mut result = doc.clone();
        json_patch::patch(&mut result, &self.0).map_err(|e| PatchFailure {
            operation: e.operation,
            path: e.path.to_string(),
            test_failed: matches!(e.kind, json_patch::PatchErrorKind::TestFailed),
            reason: e.kind.to_string(),
        })?;
        Ok(result)
    }
}

/// Applies an RFC 7396 merge patch to a copy of `doc`.
pub(crate) fn apply_merge_patch(doc: &Value, patch: &Value) -> Value {
    let mut result = doc.clone();
    json_patch::merge(&mut result, patch);
    result
}

/// The RFC 6902 JSON Patch that turns `from` into `to`, as a JSON array.
pub fn diff_versions(from: &Value, to: &Value) -> Value {
    serde_json::to_value(json_patch::diff(from, to)).unwrap_or(Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_applies_atomically() {
        let doc = json!({"a": 1, "b": [1, 2]});
        let patch = JsonPatch::parse(
            br#"[{"op":"replace","path":"/a","value":2},{"op":"test","path":"/b/0","value":9}]"#,
        )
        .unwrap();
        let failure = patch.apply(&doc).unwrap_err();
        assert_eq!(failure.operation, 1);
        assert!(failure.test_failed);
        let missing = JsonPatch::parse(br#"[{"op":"remove","path":"/zzz"}]"#).unwrap();
        let failure = missing.apply(&doc).unwrap_err();
        assert!(!failure.test_failed);
        assert_eq!(failure.path, "/zzz");
    }

    #[test]
    fn malformed_patches_are_refused() {
        for bad in [
            &b"{}"[..],
            b"[{\"op\":\"explode\",\"path\":\"/a\"}]",
            b"nope",
        ] {
            assert!(matches!(
                JsonPatch::parse(bad),
                Err(EngineError::Malformed(_))
            ));
        }
    }

    #[test]
    fn diff_round_trips() {
        let a = json!({"a": 1, "b": {"c": [1, 2]}});
        let b = json!({"a": 2, "b": {"c": [1]}, "d": true});
        let patch = diff_versions(&a, &b);
        let parsed = JsonPatch::parse(patch.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.apply(&a).unwrap(), b);
    }

    #[test]
    fn merge_patch_removes_with_null() {
        let doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let merged = apply_merge_patch(&doc, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(merged, json!({"b": {"c": 5, "d": 3}}));
    }
}
