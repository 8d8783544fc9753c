//! A TCP proxy the tests control, between a truce node and its database: it
//! can cut the node off (a partition) and lose the database's answer to a
//! COMMIT, which no real database can be made to do on cue.
//!
//! A partition holds bytes in both directions instead of dropping connections,
//! as a network that loses packets does: TCP on both ends keeps waiting, nothing
//! is refused, and what was held is delivered once the partition heals (as
//! retransmission would). New connections are accepted but not passed on until
//! then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to `127.0.0.1:{upstream}`; stops when dropped.
pub struct Proxy {
    /// The port to connect to instead of the database's.
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: u16,
    /// `true` while the partition holds all traffic.
    cut: watch::Sender<bool>,
    /// Armed: the next COMMIT a client sends is passed on, and the database's
    /// answer to it is swallowed.
    lose_commit_answer: AtomicBool,
    /// Whether to cut the network right after swallowing that answer.
    cut_after_losing: AtomicBool,
    /// COMMIT answers swallowed so far.
    lost: AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared {
            upstream,
            cut: watch::channel(false).0,
            lose_commit_answer: AtomicBool::new(false),
            cut_after_losing: AtomicBool::new(false),
            lost: AtomicUsize::new(0),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, Arc::clone(&accepting)));
            }
        });
        Self {
            port,
            shared,
            accept,
        }
    }

    /// A connection URL to database `name` through the proxy.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?connect_timeout=5",
            self.port
        )
    }

    /// Holds all traffic until [`Proxy::heal`].
    pub fn partition(&self) {
        self.shared.cut.send_replace(true);
    }

    /// Passes traffic again, held bytes first.
    pub fn heal(&self) {
        self.shared.cut.send_replace(false);
    }

    /// Swallows the database's answer to the next COMMIT (the COMMIT itself
    /// reaches the database) and closes that connection; with `then_cut`, the
    /// network is cut at that moment too.
    pub fn lose_next_commit_answer(&self, then_cut: bool) {
        self.shared
            .cut_after_losing
            .store(then_cut, Ordering::SeqCst);
        self.shared.lose_commit_answer.store(true, Ordering::SeqCst);
    }

    /// How many COMMIT answers were swallowed.
    pub fn lost_commit_answers(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits while the network is cut.
async fn while_cut(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !cut).await;
}

/// One client connection, relayed to the database in both directions.
async fn relay(client: TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.cut.subscribe();
    while_cut(&mut cut).await;
    let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set by the client side when it passed on a COMMIT whose answer is lost.
    let swallow = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (shared, swallow, mut cut) = (Arc::clone(&shared), Arc::clone(&swallow), cut.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let Ok(n) = client_read.read(&mut buffer).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                while_cut(&mut cut).await;
                let chunk = &buffer[..n];
                if is_commit(chunk) && shared.lose_commit_answer.swap(false, Ordering::SeqCst) {
                    swallow.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = server_read.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        if swallow.load(Ordering::SeqCst) {
            // The database answered the COMMIT: drop the answer and the
            // connection, so the node never hears it.
            shared.lost.fetch_add(1, Ordering::SeqCst);
            if shared.cut_after_losing.load(Ordering::SeqCst) {
                shared.cut.send_replace(true);
            }
            break;
        }
        while_cut(&mut cut).await;
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// Whether a chunk from the client holds a simple-protocol `COMMIT` query (the
/// writer ends its transactions that way).
fn is_commit(chunk: &[u8]) -> bool {
    chunk.windows(7).any(|w| w == b"COMMIT\0")
}
