//! The route table: every endpoint, registered together with its OpenAPI
//! description so the router and the published document cannot drift apart.

use axum::Router;
use axum::http::Uri;
use axum::middleware;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::context::request_envelope;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::problem;
use crate::state::AppState;

pub mod changes;
pub mod collections;
pub mod conflict_stream;
pub mod conflicts;
pub mod documents;
pub mod history;
pub mod keys;
pub mod locks;
pub mod sessions;
pub mod subscriptions;
pub mod system;
pub mod txn;

/// Every route with its handlers, and the OpenAPI document describing them.
fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::openapi_document))
        .routes(routes!(system::metrics))
        .routes(routes!(problem::problem_page))
        .routes(routes!(changes::changes))
        .routes(routes!(system::compact))
        .routes(routes!(documents::list, documents::create))
        .routes(routes!(
            documents::read,
            documents::put,
            documents::patch,
            documents::delete
        ))
        .routes(routes!(history::versions))
        .routes(routes!(history::version))
        .routes(routes!(history::diff))
        .routes(routes!(history::revert))
        .routes(routes!(
            locks::acquire,
            locks::renew,
            locks::release,
            locks::show
        ))
        .routes(routes!(changes::watch))
        .routes(routes!(conflicts::conflicts))
        .routes(routes!(conflict_stream::stream))
        .routes(routes!(conflicts::conflict))
        .routes(routes!(conflicts::resolve))
        .routes(routes!(conflicts::dismiss))
        .routes(routes!(
            collections::get_settings,
            collections::put_settings
        ))
        .routes(routes!(subscriptions::create, subscriptions::list))
        .routes(routes!(
            subscriptions::read,
            subscriptions::replace,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::deliveries))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(txn::transact))
        .routes(routes!(sessions::begin))
        .routes(routes!(sessions::commit))
        .routes(routes!(sessions::rollback))
        .with_state(state)
        .split_for_parts();
    (router, api)
}

/// The complete application: routes, the OpenAPI document, the fallback, and the
/// request envelope (request id, panic containment, access log, metrics).
pub fn app(state: AppState) -> Router {
    let cors = crate::cors::layer(&state.config.cors_origins);
    let admission = state.clone();
    let (router, api) = api(state.clone());
    let mut document = serde_json::to_value(&api).unwrap_or_default();
    crate::openapi_finish::finish(&mut document);
    // Set once per state; a second router over the same state serves the same API.
    let _ = state.openapi_json.set(document.to_string().into());
    crate::query::install(&api);
    let router = router.fallback(no_route);
    let admission = middleware::from_fn_with_state(admission, crate::admission::admit);
    match cors {
        // Inside the envelope, so preflights are logged and counted like any
        // request; outside the admission checks, so their refusals carry CORS
        // headers a browser needs to read them.
        Ok(Some(cors)) => with_envelope(router.layer(admission).layer(cors)),
        Ok(None) => router.layer(middleware::from_fn_with_state(
            state,
            crate::admission::envelope_and_admit,
        )),
        Err(why) => {
            // `truce serve` checks the origins before it gets here.
            tracing::error!(%why, "CORS stays off");
            with_envelope(router.layer(admission))
        }
    }
}

/// Wraps any router in the request envelope. Public so tests can serve extra routes
/// (a handler that panics, say) under the same envelope as the real ones.
pub fn with_envelope(router: Router) -> Router {
    router.layer(middleware::from_fn(request_envelope))
}

/// No route matched. Under a user collection, a path with more segments than any
/// route is a document id with a `/` in it, which SPEC §1 refuses as a bad name
/// (400); anything else is 404.
async fn no_route(uri: Uri) -> ApiError {
    let path = uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["v1", collection, id, rest @ ..] = segments.as_slice()
        && !rest.is_empty()
        && !collection.starts_with('_')
        && truce_engine::CollectionName::parse(collection).is_ok()
        && !id.is_empty()
    {
        return ApiError::Malformed(format!(
            "{path:?} is not a resource: a document id cannot contain \"/\" (ids match ^[A-Za-z0-9][A-Za-z0-9._~-]{{0,254}}$), and a document's sub-resources are versions, versions/{{n}}, diff, revert and watch"
        ));
    }
    ApiError::NoRoute(path.to_owned())
}
