//! Rendering problems as `application/problem+json` (RFC 9457), and the human page
//! served for each problem type at `/problems/{slug}`.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use truce_engine::{Problem, ProblemKind};

use crate::context::RequestContext;
use crate::error::ApiError;

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The RFC 9457 body of a problem: the table's `type`, `title` and `status`, the
/// detail, the request's `instance` and `request_id` when there is a request, and
/// the extension members. Responses and SSE `error` events both use it.
pub fn problem_body(problem: &Problem, context: Option<&RequestContext>) -> Value {
    serde_json::to_value(ProblemJson { problem, context }).unwrap_or(Value::Null)
}

/// A problem as its JSON body, serialised straight from the problem (every
/// refusal is rendered, so no intermediate map is built). The standard members
/// come first; an extension member never repeats one of them.
struct ProblemJson<'a> {
    problem: &'a Problem,
    context: Option<&'a RequestContext>,
}

/// The members [`ProblemJson`] writes itself.
const STANDARD_MEMBERS: [&str; 6] = [
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "request_id",
];

impl Serialize for ProblemJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let info = self.problem.kind.info();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", &ProblemType(info.slug))?;
        map.serialize_entry("title", info.title)?;
        map.serialize_entry("status", &info.status)?;
        map.serialize_entry("detail", &self.problem.detail)?;
        if let Some(context) = self.context {
            map.serialize_entry("instance", &*context.path)?;
            map.serialize_entry("request_id", &*context.id)?;
        }
        for (name, value) in &self.problem.fields {
            if !STANDARD_MEMBERS.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// A problem's `type`: the path of its page, `/problems/{slug}`.
struct ProblemType(&'static str);

impl Serialize for ProblemType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("/problems/{}", self.0))
    }
}

/// Renders a problem for the current request.
pub fn problem_response(problem: Problem) -> Response {
    let info = problem.kind.info();
    let context = RequestContext::current();
    // A refusal that left a conflict record was logged by the writer with the
    // record (rule, versions, request id); the others are logged here.
    if matches!(info.status, 409 | 412 | 423) && !problem.fields.contains_key("conflict_id") {
        tracing::info!(
            request_id = context.as_ref().map_or("", |c| &*c.id),
            slug = info.slug,
            detail = %problem.detail,
            state = %serde_json::Value::Object(problem.fields.clone()),
            "write refused"
        );
    }
    let status = StatusCode::from_u16(info.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&ProblemJson {
        problem: &problem,
        context: context.as_ref(),
    })
    .unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(etag) = &problem.etag
        && let Ok(value) = HeaderValue::from_str(&etag.to_header())
    {
        headers.insert(ETAG, value);
    }
    if let Some(seconds) = problem.retry_after_secs {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A human page explaining one problem type.
#[utoipa::path(
    get,
    path = "/problems/{slug}",
    tag = "system",
    params(("slug" = String, Path, description = "A problem slug, e.g. `precondition-failed`")),
    responses(
        (status = 200, description = "An HTML page explaining the problem type", content_type = "text/html", body = String),
        crate::openapi::NotFound,
    )
)]
pub async fn problem_page(Path(slug): Path<String>) -> Result<Html<String>, ApiError> {
    let kind = ProblemKind::from_slug(&slug)
        .ok_or_else(|| ApiError::NoRoute(format!("/problems/{slug}")))?;
    let info = kind.info();
    let others: String = ProblemKind::ALL
        .iter()
        .map(|k| {
            let i = k.info();
            format!(
                "<li><a href=\"/problems/{0}\">{0}</a> ({1})</li>",
                i.slug, i.status
            )
        })
        .collect();
    Ok(Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} — truce</title></head><body>\
         <h1>{title}</h1><p><strong>HTTP {status}</strong>, <code>type: /problems/{slug}</code></p>\
         <p>{explanation}</p><h2>All problem types</h2><ul>{others}</ul></body></html>",
        title = info.title,
        status = info.status,
        slug = info.slug,
        explanation = escape_html(info.explanation),
    )))
}

/// Escapes text for HTML (the explanations contain backticks and quotes only, but a
/// page must never depend on that).
fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_has_the_standard_members_first_and_never_twice() {
        let problem = Problem::new(ProblemKind::PreconditionFailed, "If-Match is false")
            .with("current_version", json!(5))
            .with("status", json!(200));
        let body = serde_json::to_string(&ProblemJson {
            problem: &problem,
            context: None,
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"type":"/problems/precondition-failed","title":"Precondition failed","status":412,"detail":"If-Match is false","current_version":5}"#
        );
        assert_eq!(
            problem_body(&problem, None),
            serde_json::from_str::<Value>(&body).unwrap()
        );
    }
}
