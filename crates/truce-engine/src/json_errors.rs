//! Why a body is not the JSON it should be, in truce's own words.
//!
//! serde's messages name Rust types and enum variants ("unknown variant `x`,
//! expected ...", "invalid type: string, expected u64", "recursion limit
//! exceeded"). A client should read what is wrong with its request, so every
//! parse failure that reaches a problem detail goes through [`describe`].

use serde_json::error::Category;

/// A sentence saying why `what` (e.g. "the body") could not be read; `max_depth` is
/// the nesting limit to name when the parser gave up on depth.
pub fn describe(what: &str, error: &serde_json::Error, max_depth: usize) -> String {
    let at = format!("line {}, column {}", error.line(), error.column());
    let text = error.to_string();
    if text.contains("recursion limit exceeded") {
        return format!("{what} nests deeper than the limit of {max_depth} levels");
    }
    match error.classify() {
        Category::Eof => format!("{what} is not valid JSON: it ends before the JSON does ({at})"),
        Category::Syntax => format!("{what} is not valid JSON: unexpected input at {at}"),
        Category::Io => format!("{what} could not be read"),
        Category::Data => match shape(&text) {
            Some(problem) => format!("{what}: {problem}"),
            None => format!("{what} does not have the expected shape ({at})"),
        },
    }
}

/// Rewords serde's data errors (wrong members, wrong types, unknown names).
pub(crate) fn shape(text: &str) -> Option<String> {
    // serde quotes names in backticks and lists what it expected after "expected".
    let name = |rest: &str| rest.split('`').next().map(str::to_owned);
    let expected = || {
        text.split_once("expected ").map(|(_, list)| {
            list.split(" at line")
                .next()
                .unwrap_or(list)
                .replace('`', "\"")
        })
    };
    let with_expected = |what: String| match expected() {
        Some(list) => format!("{what} (expected {list})"),
        None => what,
    };
    if let Some(rest) = text.strip_prefix("unknown field `") {
        return Some(with_expected(format!("unknown member \"{}\"", name(rest)?)));
    }
    if let Some(rest) = text.strip_prefix("unknown variant `") {
        return Some(with_expected(format!(
            "\"{}\" is not accepted",
            name(rest)?
        )));
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        return Some(format!("the member \"{}\" is missing", name(rest)?));
    }
    let rest = text
        .strip_prefix("invalid type: ")
        .or_else(|| text.strip_prefix("invalid value: "))?;
    let (got, wanted) = rest.split_once(", expected ")?;
    let wanted = wanted.split(" at line").next().unwrap_or(wanted);
    Some(format!(
        "found {} where {} is expected",
        got.replace('`', "\""),
        plain_type(wanted)
    ))
}

/// A Rust type name as a reader of JSON would say it.
fn plain_type(name: &str) -> String {
    match name {
        "u64" | "u32" | "usize" | "u16" | "u8" => "a non-negative integer".into(),
        "i64" | "i32" | "isize" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        other => other.replace('`', "\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        describe(
            "the body",
            &serde_json::from_str::<T>(json).unwrap_err(),
            64,
        )
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Revert {
        to: u64,
    }

    #[test]
    fn messages_name_json_not_rust() {
        for (got, expected) in [
            (
                error_of::<Revert>(r#"{"to":1,"x":2}"#),
                "unknown member \"x\" (expected \"to\")",
            ),
            (error_of::<Revert>("{}"), "the member \"to\" is missing"),
            (
                error_of::<Revert>(r#"{"to":"one"}"#),
                "where a non-negative integer is expected",
            ),
            (
                error_of::<Revert>(r#"{"to":-1}"#),
                "where a non-negative integer is expected",
            ),
            (
                error_of::<serde_json::Value>("{\"n\": "),
                "ends before the JSON does",
            ),
            (
                error_of::<serde_json::Value>("{x}"),
                "unexpected input at line 1, column 2",
            ),
            (
                error_of::<serde_json::Value>(&"[".repeat(200)),
                "nests deeper than the limit of 64 levels",
            ),
        ] {
            assert!(got.contains(expected), "{got:?} lacks {expected:?}");
            assert!(!got.contains('`'), "{got:?}");
        }
    }
}
