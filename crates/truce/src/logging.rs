//! Log output: text or JSON lines on stdout, filtered by `RUST_LOG` (default `info`).
//!
//! Lines are formatted on the thread that logs them and written by a dedicated
//! writer thread, so a request never waits for stdout. The writer blocks rather
//! than drops lines when it falls behind; the returned guard flushes what is left
//! when the process ends normally.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; keep the guard alive until exit.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("truce-log")
        // Buffered: the writer thread flushes whenever it has drained its queue, so
        // under load many lines go out in one write.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    guard
}
