//! The ceiling: a bare HTTP server in the benchmark's own process that answers
//! truce-shaped requests without storing anything. What the same client reaches
//! against it is the most this machine can do for these requests, so
//! truce / ceiling shows how much of the machine truce leaves on the table.
//!
//! Writes answer 201 (with `If-None-Match: *`) or 200 with a fixed ETag and echo the
//! body; reads answer a fixed document, or 304 when `If-None-Match` is sent.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::BenchError;
use super::workload::document;

const TAG: &str = "\"1-ceiling\"";

/// Starts the ceiling server on a free loopback port.
pub async fn start(body_size: usize) -> Result<SocketAddr, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stored = document(0, body_size);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let stored = stored.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, stored.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(
    request: Request<Incoming>,
    stored: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let create_only = request
        .headers()
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*");
    let conditional_read = request.headers().contains_key(IF_NONE_MATCH);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, body) = match method {
        Method::GET | Method::HEAD if conditional_read => (StatusCode::NOT_MODIFIED, Bytes::new()),
        Method::GET | Method::HEAD => (StatusCode::OK, stored),
        _ if create_only => (StatusCode::CREATED, body),
        _ => (StatusCode::OK, body),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(ETAG, hyper::header::HeaderValue::from_static(TAG));
    headers.insert(
        "truce-version",
        hyper::header::HeaderValue::from_static("1"),
    );
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
