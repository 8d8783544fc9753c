//! How a node learns of every node's commits: `LISTEN truce` as a wake-up, and a
//! catch-up read of the commit row (the newest revision, event position and lock counter) on
//! every wake-up, after every reconnect, and once a second regardless. A lost
//! notification therefore delays a stream by at most a second and loses nothing:
//! readers page the change feed and the event log from the last position they
//! saw, and those are gap-free.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::sql::unsigned;

/// The longest a commit of another node can go unseen when its notification is lost.
const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// Follows the commit row for as long as the task lives (it is aborted when the
/// store closes).
pub(crate) async fn follow(
    config: tokio_postgres::Config,
    revisions: watch::Sender<u64>,
    events: watch::Sender<u64>,
    locks: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Bounded: a database cut off by a partition never answers the handshake.
        let connected = tokio::time::timeout(CATCH_UP_EVERY * 5, config.connect(NoTls)).await;
        match connected {
            Ok(Ok((client, mut connection))) => {
                backoff = Duration::from_millis(100);
                let (wake, mut woken) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => {
                                let _ = wake.send(());
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                if client.batch_execute("LISTEN truce").await.is_ok() {
                    while catch_up(&client, &revisions, &events, &locks).await {
                        tokio::select! {
                            woke = woken.recv() => if woke.is_none() { break },
                            () = tokio::time::sleep(CATCH_UP_EVERY) => {}
                        }
                    }
                }
                driver.abort();
            }
            Ok(Err(error)) => tracing::debug!(%error, "change listener cannot connect yet"),
            Err(_) => tracing::debug!("change listener: the database did not answer in time"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reads the commit row and moves the watches forward; `false` when the
/// connection is gone.
async fn catch_up(
    client: &Client,
    revisions: &watch::Sender<u64>,
    events: &watch::Sender<u64>,
    locks: &watch::Sender<u64>,
) -> bool {
    let read = client.query_one("SELECT revision, events, locks FROM truce_commit", &[]);
    match tokio::time::timeout(CATCH_UP_EVERY * 5, read).await {
        Ok(Ok(row)) => {
            let (revision, event): (i64, i64) = (row.get(0), row.get(1));
            raise(revisions, unsigned(revision));
            raise(events, unsigned(event));
            raise(locks, unsigned(row.get::<_, i64>(2)));
            true
        }
        _ => false,
    }
}

fn raise(watch: &watch::Sender<u64>, to: u64) {
    watch.send_if_modified(|seen| {
        if to > *seen {
            *seen = to;
            true
        } else {
            false
        }
    });
}
