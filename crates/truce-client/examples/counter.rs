//! Counts to ten with several concurrent writers, without losing an increment, while
//! following the counter's changes.
//!
//! Start a server (`cargo run --release -- serve`), then:
//! `cargo run -p truce-client --example counter [URL]`

use futures_util::StreamExt;
use serde_json::{Value, json};
use truce_client::Client;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), truce_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| truce_client::DEFAULT_URL.to_owned());
    let client = Client::new(url)?;
    let start = client
        .put("examples", "counter", &json!({"n": 0}))
        .send()
        .await?;
    println!("counter at version {}", start.version);

    // Follow the counter from the version just written.
    let mut changes = Box::pin(client.watch("examples", "counter", Some(start.revision)));

    // Five writers, two increments each, all racing on the same document.
    let mut writers = Vec::new();
    for _ in 0..5 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..2 {
                client
                    .update("examples", "counter", |doc: &mut Value| {
                        doc["n"] = json!(doc["n"].as_u64().unwrap_or(0) + 1);
                    })
                    .await?;
            }
            Ok::<_, truce_client::Error>(())
        }));
    }
    for writer in writers {
        writer
            .await
            .map_err(|e| truce_client::Error::Invalid(e.to_string()))??;
    }

    for _ in 0..10 {
        if let Some(change) = changes.next().await {
            let change = change?;
            println!(
                "revision {}: version {} ({})",
                change.revision, change.version, change.op
            );
        }
    }
    let counter = client.get::<Value>("examples", "counter").await?;
    println!(
        "final value {} at version {}",
        counter.value["n"], counter.version
    );
    Ok(())
}
