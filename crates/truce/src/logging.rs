//! Log output: text or JSON lines on stdout, filtered by `RUST_LOG` (default `info`).
//!
//! Lines are formatted on the thread that logs them and appended to a shared buffer;
//! a writer thread empties it to stdout every [`FLUSH_INTERVAL`], or sooner when it
//! fills. Logging a line therefore costs a short lock and a copy: no system call and
//! no thread wake-up per line, which under load (one access-log line per request)
//! cost more CPU than the write itself. A logger that gets [`MAX_BUFFERED`] ahead of
//! stdout waits rather than drops lines. The returned guard writes what is left
//! when the process ends normally; a killed process loses at most the last
//! interval's lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

mod text;

/// Longest a line waits in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer thread early.
const EARLY_FLUSH: usize = 256 * 1024;
/// Buffered bytes beyond which loggers wait for the writer thread.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// Lines waiting for stdout.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// The buffer shared by loggers and the writer thread.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread: the buffer filled, or the guard closed it.
    filled: Condvar,
    /// Wakes loggers waiting for room.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands each log event a writer: into the shared buffer, or straight to stdout if
/// the writer thread could not be started.
#[derive(Clone)]
enum LogWriter {
    Buffered(Arc<Shared>),
    Direct,
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = match self {
            Self::Buffered(shared) => shared,
            Self::Direct => return std::io::stdout().write(line),
        };
        let mut pending = shared.lock();
        while pending.bytes.len() >= MAX_BUFFERED && !pending.closed {
            pending = shared
                .drained
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        pending.bytes.extend_from_slice(line);
        if pending.bytes.len() >= EARLY_FLUSH {
            shared.filled.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the writer thread; dropping it writes the remaining lines and stops it.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.filled.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: empties the buffer into `sink` until closed and empty.
fn write_out(shared: &Shared, mut sink: impl Write) {
    let mut out = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            if !pending.closed && pending.bytes.len() < EARLY_FLUSH {
                pending = shared
                    .filled
                    .wait_timeout(pending, FLUSH_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut out, &mut pending.bytes);
            shared.drained.notify_all();
            pending.closed
        };
        if !out.is_empty() {
            // Nowhere to report a failing sink; the lines are dropped.
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            out.clear();
        }
        if closed && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

/// Starts a writer thread emptying the buffer into `sink`; without a thread, the
/// writer goes straight to stdout.
fn start(sink: impl Write + Send + 'static) -> (LogWriter, LogGuard) {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("truce-log".into())
            .spawn(move || write_out(&shared, sink))
    };
    let (writer, thread) = match thread {
        Ok(thread) => (LogWriter::Buffered(Arc::clone(&shared)), Some(thread)),
        Err(error) => {
            eprintln!("truce: cannot start the log writer thread ({error}); logging unbuffered");
            (LogWriter::Direct, None)
        }
    };
    (writer, LogGuard { shared, thread })
}

/// Installs the global subscriber; keep the guard alive until exit.
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = start(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(false)
            .event_format(text::TextLine)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read after the writer thread is gone (or the
    /// subscriber that wrote into it).
    #[derive(Clone, Default)]
    pub(super) struct Collected(pub(super) Arc<Mutex<Vec<u8>>>);

    impl Write for Collected {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_by_the_time_the_guard_is_dropped() {
        let sink = Collected::default();
        let (writer, guard) = start(sink.clone());
        // Enough bytes to pass the early-flush mark many times over.
        const THREADS: usize = 4;
        const LINES: usize = 20_000;
        let loggers: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..LINES {
                        writer
                            .write_all(format!("thread {t} line {n}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for logger in loggers {
            logger.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; THREADS];
        for line in text.lines() {
            let mut words = line.split(' ').skip(1);
            let t: usize = words.next().unwrap().parse().unwrap();
            let n: usize = words.nth(1).unwrap().parse().unwrap();
            assert_eq!(n, next[t], "thread {t}: lines out of order or lost");
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
    }
}
