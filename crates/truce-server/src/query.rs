//! Query parameters are checked against the OpenAPI document, on every route.
//!
//! A misspelt precondition (`?ifversion=1` for `?if_version=1`) that is silently
//! ignored turns a guarded write into an unguarded one. So every request's query
//! keys are checked against the parameters its operation declares in the OpenAPI
//! document (the one place they are listed, generated from the handlers' parameter
//! types): anything else is a 400 naming the parameter and the accepted ones. Each
//! value is checked against the declared type too (integer, boolean, one of a list),
//! so a bad value is refused in our words before any handler parses it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Query, Request};
use axum::http::Method;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{OpenApi, RefOr, Schema};

use crate::error::ApiError;

/// What a query parameter's value must be, from its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueRule {
    /// A non-negative integer.
    Count,
    /// `true` or `false`.
    Flag,
    /// One of these words.
    OneOf(Vec<String>),
    /// Any text (checked by the handler, if at all).
    Text,
}

impl ValueRule {
    fn of(schema: Option<&RefOr<Schema>>) -> Self {
        let json = schema
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default();
        if let Some(words) = json.get("enum").and_then(|e| e.as_array()) {
            return Self::OneOf(
                words
                    .iter()
                    .filter_map(|w| w.as_str().map(str::to_owned))
                    .collect(),
            );
        }
        match json.get("type").and_then(|t| t.as_str()) {
            Some("integer") => Self::Count,
            Some("boolean") => Self::Flag,
            _ => Self::Text,
        }
    }

    /// Why `value` does not fit, if it does not.
    fn refusal(&self, value: &str) -> Option<String> {
        match self {
            Self::Count if value.parse::<u64>().is_err() => {
                Some("must be a non-negative integer".into())
            }
            Self::Flag if value != "true" && value != "false" => {
                Some("must be true or false".into())
            }
            Self::OneOf(words) if !words.iter().any(|w| w == value) => {
                Some(format!("must be one of: {}", words.join(", ")))
            }
            _ => None,
        }
    }
}

/// The query parameters each route and method accepts, with their value rules.
#[derive(Debug, Default)]
pub struct QueryRules(HashMap<(String, Method), BTreeMap<String, ValueRule>>);

impl QueryRules {
    /// Reads the accepted parameters of every operation in `api`.
    pub fn from_openapi(api: &OpenApi) -> Arc<Self> {
        let mut rules = HashMap::new();
        for (path, item) in &api.paths.paths {
            let shared = query_names(item.parameters.as_deref());
            let operations = [
                (Method::GET, &item.get),
                (Method::HEAD, &item.head),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    let mut names = shared.clone();
                    names.extend(operation_names(operation));
                    rules.insert((path.clone(), method), names);
                }
            }
        }
        Arc::new(Self(rules))
    }

    /// Why `pairs` are not acceptable for this route and method, if they are not.
    fn refusal(
        &self,
        route: &str,
        method: &Method,
        pairs: &[(String, String)],
    ) -> Option<ApiError> {
        // HEAD is answered by GET's handler unless declared on its own.
        let accepted = self
            .0
            .get(&(route.to_owned(), method.clone()))
            .or_else(|| {
                (method == Method::HEAD)
                    .then(|| self.0.get(&(route.to_owned(), Method::GET)))
                    .flatten()
            })?;
        for (key, value) in pairs {
            let Some(rule) = accepted.get(key) else {
                let list = if accepted.is_empty() {
                    "this endpoint takes no query parameters".to_owned()
                } else {
                    let names: Vec<&str> = accepted.keys().map(String::as_str).collect();
                    format!("this endpoint accepts: {}", names.join(", "))
                };
                return Some(ApiError::Malformed(format!(
                    "unknown query parameter {key:?}; {list}"
                )));
            };
            if let Some(why) = rule.refusal(value) {
                return Some(ApiError::Malformed(format!(
                    "query parameter {key:?} {why}, not {value:?}"
                )));
            }
        }
        None
    }
}

fn operation_names(operation: &Operation) -> BTreeMap<String, ValueRule> {
    query_names(operation.parameters.as_deref())
}

fn query_names(
    parameters: Option<&[RefOr<utoipa::openapi::path::Parameter>]>,
) -> BTreeMap<String, ValueRule> {
    parameters
        .unwrap_or_default()
        .iter()
        .filter_map(|p| match p {
            RefOr::T(p) if p.parameter_in == ParameterIn::Query => {
                Some((p.name.clone(), ValueRule::of(p.schema.as_ref())))
            }
            _ => None,
        })
        .collect()
}

/// The rules of the API this process serves, read once from its OpenAPI document.
static RULES: OnceLock<Arc<QueryRules>> = OnceLock::new();

/// Installs the rules (the document is the same for every server in the process).
pub fn install(api: &OpenApi) {
    RULES.get_or_init(|| QueryRules::from_openapi(api));
}

/// Why the request's query is not acceptable for its route, if it is not. Called
/// by the request envelope after routing (a request without a query costs one
/// check); routers without installed rules (tests' own) check nothing.
pub fn refusal(request: &Request) -> Option<ApiError> {
    let query = request.uri().query().filter(|q| !q.is_empty())?;
    let rules = RULES.get()?;
    let route = request.extensions().get::<MatchedPath>()?;
    let pairs = match Query::<Vec<(String, String)>>::try_from_uri(request.uri()) {
        Ok(Query(pairs)) => pairs,
        Err(_) => {
            return Some(ApiError::Malformed(format!(
                "the query string {query:?} is not valid"
            )));
        }
    };
    rules.refusal(route.as_str(), request.method(), &pairs)
}
