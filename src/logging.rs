//! Logging to stderr, text or JSON; RUST_LOG overrides `--log-level`.
//!
//! Lines are handed to a background writer thread through a bounded queue,
//! so a slow stderr (a full pipe, a stalled log shipper) never blocks a
//! request: when the queue is full, new lines are dropped instead of waiting.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Lines that may wait for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 64 * 1024;

/// Installs the global subscriber. Keep the guard alive until exit: dropping
/// it flushes the queued lines.
pub fn init(format: LogFormat, level: &str) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .thread_name("fulcrum-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.ok().map(|()| guard)
}
