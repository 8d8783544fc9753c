//! Three-way merge of JSON documents, field by field.
//!
//! Shared by the server's `merge` conflict policy and the CLI's `truce edit`: given
//! the version both sides started from (`base`), one side's result (`ours`) and the
//! other's (`theirs`), it either produces a document holding both sides' changes or
//! lists every place where they collide. The rules (SPEC §8):
//!
//! - objects merge member by member, recursively; arrays and scalars are atomic;
//! - a path changed on both sides to the same value is not an overlap;
//! - a path removed on one side and changed on the other is an overlap;
//! - a path and one of its descendants both changed is an overlap.
//!
//! An overlap is never resolved silently: the caller gets each colliding path with
//! its base, ours and theirs values.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A location in a document: the member names from the root.
pub type FieldPath = Vec<String>;

/// One side's change at one path: the new value, or `None` when removed.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Where.
    pub path: FieldPath,
    /// The new value; `None` when the member was removed.
    pub value: Option<Value>,
}

/// A path both sides changed differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlap {
    /// The path (for a path/descendant collision, the shorter one).
    pub path: FieldPath,
    /// Its value in the base (`None`: absent).
    pub base: Option<Value>,
    /// Its value on our side.
    pub ours: Option<Value>,
    /// Its value on their side.
    pub theirs: Option<Value>,
}

/// The result of a three-way merge.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeOutcome {
    /// No overlap: `merged` holds every change of both sides.
    Clean {
        /// Their document with our changes applied.
        merged: Value,
        /// Our changes that were applied.
        ours: Vec<FieldChange>,
        /// Their changes, kept.
        theirs: Vec<FieldChange>,
    },
    /// The sides collide; nothing is merged.
    Conflict {
        /// Every colliding path.
        overlaps: Vec<Overlap>,
    },
}

/// Merges `ours` and `theirs`, both made from `base`.
pub fn three_way(base: &Value, ours: &Value, theirs: &Value) -> MergeOutcome {
    let our_changes = changes(base, ours);
    let their_changes = changes(base, theirs);
    let theirs_by_path: BTreeMap<&FieldPath, &FieldChange> =
        their_changes.iter().map(|c| (&c.path, c)).collect();

    let mut overlaps: BTreeMap<FieldPath, Overlap> = BTreeMap::new();
    for change in &our_changes {
        let path = &change.path;
        // The same path: fine only if both made the same value.
        if let Some(theirs_change) = theirs_by_path.get(path) {
            if theirs_change.value != change.value {
                overlaps.insert(path.clone(), overlap(path, base, ours, theirs));
            }
            continue;
        }
        // An ancestor changed on their side.
        for len in 0..path.len() {
            let ancestor = path[..len].to_vec();
            if theirs_by_path.contains_key(&ancestor) {
                overlaps.insert(ancestor.clone(), overlap(&ancestor, base, ours, theirs));
            }
        }
        // A descendant changed on their side.
        for (their_path, _) in theirs_by_path.range::<&FieldPath, _>(path..) {
            if !their_path.starts_with(path) {
                break;
            }
            if their_path.len() > path.len() {
                overlaps.insert(path.clone(), overlap(path, base, ours, theirs));
            }
        }
    }
    if !overlaps.is_empty() {
        return MergeOutcome::Conflict {
            overlaps: overlaps.into_values().collect(),
        };
    }
    let mut merged = theirs.clone();
    for change in &our_changes {
        apply(&mut merged, &change.path, change.value.clone());
    }
    MergeOutcome::Clean {
        merged,
        ours: our_changes,
        theirs: their_changes,
    }
}

/// The changes that turn `base` into `side`: member by member inside objects, atomic
/// for everything else.
pub fn changes(base: &Value, side: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    collect(base, side, &mut Vec::new(), &mut out);
    out
}

fn collect(base: &Value, side: &Value, path: &mut FieldPath, out: &mut Vec<FieldChange>) {
    match (base, side) {
        (Value::Object(b), Value::Object(s)) => {
            for (key, base_value) in b {
                path.push(key.clone());
                match s.get(key) {
                    Some(side_value) => collect(base_value, side_value, path, out),
                    None => out.push(FieldChange {
                        path: path.clone(),
                        value: None,
                    }),
                }
                path.pop();
            }
            for (key, side_value) in s {
                if !b.contains_key(key) {
                    path.push(key.clone());
                    out.push(FieldChange {
                        path: path.clone(),
                        value: Some(side_value.clone()),
                    });
                    path.pop();
                }
            }
        }
        _ if base != side => out.push(FieldChange {
            path: path.clone(),
            value: Some(side.clone()),
        }),
        _ => {}
    }
}

/// The value at `path`, if any.
pub fn value_at<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(doc, |value, key| value.as_object().and_then(|m| m.get(key)))
}

fn overlap(path: &[String], base: &Value, ours: &Value, theirs: &Value) -> Overlap {
    Overlap {
        path: path.to_vec(),
        base: value_at(base, path).cloned(),
        ours: value_at(ours, path).cloned(),
        theirs: value_at(theirs, path).cloned(),
    }
}

/// Sets (or removes, with `None`) the member at `path`, creating objects on the way.
fn apply(doc: &mut Value, path: &[String], value: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        if let Some(value) = value {
            *doc = value;
        }
        return;
    };
    let mut target = doc;
    for key in parents {
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        let Value::Object(map) = target else { return };
        target = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        match value {
            Some(value) => {
                map.insert(last.clone(), value);
            }
            None => {
                map.shift_remove(last);
            }
        }
    }
}

/// A path as an RFC 6901 JSON pointer, for messages and reports.
pub fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|key| format!("/{}", key.replace('~', "~0").replace('/', "~1")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn paths(overlaps: &[Overlap]) -> Vec<String> {
        overlaps.iter().map(|o| pointer(&o.path)).collect()
    }

    #[test]
    fn disjoint_changes_merge() {
        let base = json!({"title": "a", "tags": ["x"], "meta": {"owner": "ann", "n": 1}});
        let ours = json!({"title": "b", "tags": ["x"], "meta": {"owner": "ann", "n": 1}});
        let theirs = json!({"title": "a", "tags": ["x", "y"], "meta": {"owner": "bob", "n": 1}, "new": true});
        let MergeOutcome::Clean {
            merged,
            ours,
            theirs,
        } = three_way(&base, &ours, &theirs)
        else {
            panic!("expected a clean merge");
        };
        assert_eq!(
            merged,
            json!({"title": "b", "tags": ["x", "y"], "meta": {"owner": "bob", "n": 1}, "new": true})
        );
        assert_eq!(ours.len(), 1);
        assert_eq!(theirs.len(), 3);
    }

    #[test]
    fn same_change_on_both_sides_is_not_an_overlap() {
        let base = json!({"n": 1});
        let both = json!({"n": 2});
        assert!(matches!(
            three_way(&base, &both, &both),
            MergeOutcome::Clean { .. }
        ));
    }

    #[test]
    fn overlaps_are_reported_with_all_three_values() {
        let base = json!({"n": 1, "a": {"b": 1}, "gone": 1, "arr": [1]});
        let ours = json!({"n": 2, "a": {"b": 2}, "gone": 2, "arr": [1, 2]});
        let theirs = json!({"n": 3, "a": 5, "arr": [0]});
        let MergeOutcome::Conflict { overlaps } = three_way(&base, &ours, &theirs) else {
            panic!("expected a conflict");
        };
        assert_eq!(paths(&overlaps), ["/a", "/arr", "/gone", "/n"]);
        let n = overlaps.iter().find(|o| o.path == ["n"]).unwrap();
        assert_eq!(
            (n.base.clone(), n.ours.clone(), n.theirs.clone()),
            (Some(json!(1)), Some(json!(2)), Some(json!(3)))
        );
        let gone = overlaps.iter().find(|o| o.path == ["gone"]).unwrap();
        assert_eq!(gone.theirs, None);
    }

    #[test]
    fn a_path_and_its_descendant_collide() {
        let base = json!({"a": {"b": 1, "c": 1}});
        let ours = json!({"a": {"b": 2, "c": 1}});
        let theirs = json!({"b": 0});
        let MergeOutcome::Conflict { overlaps } = three_way(&base, &ours, &theirs) else {
            panic!("expected a conflict");
        };
        assert_eq!(paths(&overlaps), ["/a"]);
    }

    #[test]
    fn pointers_escape() {
        assert_eq!(pointer(&["a/b".into(), "c~d".into()]), "/a~1b/c~0d");
        assert_eq!(pointer(&[]), "");
    }

    /// SPEC §8 merge rules, stated directly: a value both sides left alone, or
    /// changed to the same thing, or only one side changed, is settled; objects
    /// all three sides still have merge member by member; anything else changed on
    /// both sides (including a removal against a change, and a value against a
    /// change inside it) is an overlap. `None` is an absent member.
    fn oracle(
        base: Option<&Value>,
        ours: Option<&Value>,
        theirs: Option<&Value>,
    ) -> Result<Option<Value>, ()> {
        if ours == theirs || theirs == base {
            return Ok(ours.cloned());
        }
        if ours == base {
            return Ok(theirs.cloned());
        }
        let (Some(Value::Object(b)), Some(Value::Object(o)), Some(Value::Object(t))) =
            (base, ours, theirs)
        else {
            return Err(());
        };
        let mut keys: Vec<&String> = b.keys().chain(o.keys()).chain(t.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut merged = serde_json::Map::new();
        for key in keys {
            if let Some(value) = oracle(b.get(key), o.get(key), t.get(key))? {
                merged.insert(key.clone(), value);
            }
        }
        Ok(Some(Value::Object(merged)))
    }

    /// Small JSON objects with nested objects.
    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(Value::from),
            (0i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
            proptest::collection::vec((0i64..3).prop_map(Value::from), 0..3).prop_map(Value::Array),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            proptest::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        proptest::collection::btree_map("[a-e]", value, 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn a_clean_merge_keeps_every_change_of_both_sides(base in doc(), ours in doc(), theirs in doc()) {
            if let MergeOutcome::Clean { merged, ours: our_changes, theirs: their_changes } = three_way(&base, &ours, &theirs) {
                for change in our_changes.iter().chain(&their_changes) {
                    prop_assert_eq!(value_at(&merged, &change.path), change.value.as_ref(), "at {}", pointer(&change.path));
                }
            }
        }

        /// The merge against the SPEC §8 rules written a second, independent way
        /// (a recursion over the three documents, not over change lists).
        #[test]
        fn the_merge_agrees_with_an_independent_oracle(base in doc(), ours in doc(), theirs in doc()) {
            match (three_way(&base, &ours, &theirs), oracle(Some(&base), Some(&ours), Some(&theirs))) {
                (MergeOutcome::Clean { merged, .. }, Ok(expected)) => {
                    prop_assert_eq!(Some(merged), expected);
                }
                (MergeOutcome::Conflict { overlaps }, Err(())) => prop_assert!(!overlaps.is_empty()),
                (got, expected) => {
                    return Err(TestCaseError::fail(format!("merge gave {got:?}, the oracle {expected:?}")));
                }
            }
        }

        #[test]
        fn merging_with_an_unchanged_side_gives_the_other(base in doc(), side in doc()) {
            let MergeOutcome::Clean { merged, .. } = three_way(&base, &side, &base) else {
                return Err(TestCaseError::fail("one unchanged side cannot collide"));
            };
            prop_assert_eq!(&merged, &side);
            let MergeOutcome::Clean { merged, .. } = three_way(&base, &base, &side) else {
                return Err(TestCaseError::fail("one unchanged side cannot collide"));
            };
            prop_assert_eq!(&merged, &side);
        }
    }
}
