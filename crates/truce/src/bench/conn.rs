//! One keep-alive HTTP/1.1 connection, driven directly with hyper's connection API:
//! exactly one TCP connection per benchmark client, and as little client work per
//! request as possible, so the numbers measure the server.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::BenchError;

/// An answer, fully read.
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `Authorization: Bearer <key>` for every request of this run, when the
/// server has API keys (`truce bench --key`).
static AUTHORIZATION_VALUE: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();

/// Sends `key` as a bearer token on every request from now on.
pub fn use_key(key: &str) -> Result<(), BenchError> {
    let value = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| BenchError::Setup("--key is not a valid header value".into()))?;
    let _ = AUTHORIZATION_VALUE.set(value);
    Ok(())
}

/// A client connection to one server.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Connection {
    /// Connects and performs the HTTP/1.1 handshake.
    pub async fn open(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let host = HeaderValue::from_str(&addr.to_string())
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Self { sender, host })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Reply, BenchError> {
        self.sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(value) = AUTHORIZATION_VALUE.get() {
            request = request.header(hyper::header::AUTHORIZATION, value.clone());
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
