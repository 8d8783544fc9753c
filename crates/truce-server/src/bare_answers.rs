//! Problem bodies for the answers hyper gives on its own.
//!
//! When a request head cannot be parsed (400), its target is too long (414) or
//! its header fields are too many or too large (431), hyper answers before any
//! of our code runs, with an empty body, and closes the connection. Every other
//! answer of ours is an RFC 9457 problem, so the connection's writer swaps such a
//! bare answer, recognised by its status line and `content-length: 0` without a
//! `content-type`, for the same status with a problem body from the problem
//! table. Nothing else written on the connection is touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use truce_engine::{Problem, ProblemKind};

/// A connection whose bare automatic answers get problem bodies.
pub struct ProblemIo<T> {
    inner: T,
    /// A replacement answer being written, and how much of it is out.
    pending: Option<(Bytes, usize)>,
}

impl<T> ProblemIo<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes out what is left of a replacement answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written >= bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Replaces `head` if it is a bare automatic answer: reports it written
    /// whole, and writes the replacement instead.
    fn poll_replace(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
        len: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        let replacement = with_problem_body(head)?;
        self.pending = Some((replacement, 0));
        Some(match self.poll_drain(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // Written or not yet, the caller's bytes are taken; flush drains the rest.
            _ => Poll::Ready(Ok(len)),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if let Some(replaced) = self.poll_replace(cx, buf, buf.len()) {
            return replaced;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if let Some(first) = bufs.first() {
            let total = bufs.iter().map(|b| b.len()).sum();
            if let Some(replaced) = self.poll_replace(cx, first, total) {
                return replaced;
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The problem of an automatic answer's status.
fn problem_for(status: &[u8]) -> Option<Problem> {
    Some(match status {
        b"400" => Problem::new(
            ProblemKind::MalformedRequest,
            "the request line or a header field could not be parsed as HTTP/1.1",
        ),
        b"414" => Problem::new(
            ProblemKind::UriTooLong,
            "the request target is longer than the server reads",
        ),
        b"431" => Problem::new(
            ProblemKind::HeaderFieldsTooLarge,
            "the request's header fields are too many (more than 100) or too large in all",
        ),
        _ => return None,
    })
}

/// `head` with a problem body, if it is a whole bare automatic answer.
fn with_problem_body(head: &[u8]) -> Option<Bytes> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let problem = problem_for(rest.get(..3)?)?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let lines: Vec<&[u8]> = head[..end].split(|b| *b == b'\n').collect();
    let header = |line: &[u8], name: &[u8]| {
        line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name)
    };
    let bare = lines.iter().any(|l| header(l, b"content-length: 0"))
        && !lines.iter().any(|l| header(l, b"content-type:"));
    if !bare {
        return None;
    }
    let body = serde_json::to_vec(&crate::problem::problem_body(&problem, None)).ok()?;
    let mut out = BytesMut::with_capacity(head.len() + body.len() + 128);
    for line in &lines {
        if header(line, b"content-length:") || header(line, b"connection:") {
            continue;
        }
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_slice(b"content-type: application/problem+json\r\n");
    out.put_slice(b"cache-control: no-store\r\nconnection: close\r\n");
    out.put_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(&body);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_automatic_answers_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 10:00:00 GMT\r\n\r\n";
        let replaced = with_problem_body(bare).unwrap_or_default();
        let text = String::from_utf8_lossy(&replaced);
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(
            text.contains("content-type: application/problem+json\r\n"),
            "{text}"
        );
        assert!(text.contains("date: Mon, 07 Dec 2026"), "{text}");
        assert!(text.ends_with("}"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("/problems/header-fields-too-large"));

        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert!(with_problem_body(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(with_problem_body(ok).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}";
        assert!(with_problem_body(with_body).is_none());
    }
}
