//! No filter lets a library's wire-level logging (tokens, passwords, mail) into the log.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One test per process: it installs the global subscriber, as `init` does, so `log`
/// records (async-imap's) come in through the same bridge.
#[test]
fn rust_log_trace_does_not_log_what_async_imap_sends() -> anyhow::Result<()> {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::registry()
        .with(EnvFilter::try_new("async_imap=trace,trace")?)
        .with(threatmail_telemetry::wire_cap())
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        )
        .try_init()?;
    log::trace!(target: "async_imap::imap_stream", "encode: input: AUTHENTICATE dXNlcj1zZWNyZXQ=");
    log::debug!(target: "async_imap::imap_stream", "a debug line of the library");
    tracing::trace!(target: "threatmail_fetcher::sync", "our own trace line");
    let text = String::from_utf8(
        captured
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone(),
    )?;
    assert!(!text.contains("dXNlcj1zZWNyZXQ="), "{text}");
    assert!(text.contains("a debug line of the library"), "{text}");
    assert!(text.contains("our own trace line"), "{text}");
    Ok(())
}
