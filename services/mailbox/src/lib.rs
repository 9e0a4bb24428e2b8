//! The threatmail mailbox service: the read side of the Threat Mailbox (DESIGN §2, §6).
//!
//! - [`grpc`]: the Mailbox API (lists with filters and stable paging, one message, its raw
//!   bytes, STIX export, the analyst's state) behind the auth layer.
//! - [`stix`]: STIX 2.1 bundles with TLP 2.0 (and 1.0) markings and deterministic ids.
//! - [`allow`]: a source's sender allow-list, which exports honour.
//! - [`config`], [`error`]: settings, and the one error mapping to gRPC.
//!
//! The fetchers write records through `threatmail-store` in their own processes; this
//! service reads them, and drains every source's outbox on a timer so that what a crashed
//! writer left reaches the event stream. [`run`] serves it on a listener until the shutdown
//! token is cancelled; `main.rs` only loads the configuration and calls it, and tests call
//! it directly.

pub mod allow;
pub mod config;
pub mod error;
pub mod grpc;
pub mod stix;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
use threatmail_auth::{AuthLayer, Authenticator, RedisApiKeys};
use threatmail_proto::v1::mailbox_server::MailboxServer;
use threatmail_source::SourceStore;
use threatmail_store::{BlobStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

/// Largest reply (an export bundle) the server sends.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Serves the mailbox service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let services = config.auth.service_credentials()?;
    let blobs = BlobStore::from_config(&config.blobs)?;
    let conn = threatmail_runtime::connect_redis(
        &config.redis_url,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .await?;
    let store = Store::new(conn.clone(), blobs);
    let drainer = tokio::spawn(drain_outboxes(
        store.clone(),
        config.drain_interval,
        shutdown.clone(),
    ));
    let service = grpc::MailboxService::new(
        store,
        SourceStore::new(conn.clone()),
        config.export.default_tlp,
        config.export.max_messages,
    );
    let authenticator = Authenticator::new(services, Some(Arc::new(RedisApiKeys::new(conn))));
    let server = MailboxServer::new(service).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let service = AuthLayer::new(authenticator, grpc::policy()).layer(server);
    tracing::info!(listen = %config.listen, "mailbox starting");
    let served = threatmail_runtime::serve(
        threatmail_runtime::grpc_server().add_service(service),
        listener,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = drainer.await;
    served?;
    tracing::info!("mailbox stopped");
    Ok(())
}

/// Drains every source's outbox each `interval` until `shutdown`.
async fn drain_outboxes(store: Store, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    let mut outage = Outage::default();
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.drain_all().await {
            Ok(report) => {
                if let Some(failed) = outage.ended() {
                    tracing::info!(failed_ticks = failed, "outbox drain works again");
                }
                if report.emitted > 0 {
                    tracing::info!(
                        emitted = report.emitted,
                        "drained outboxes left by earlier writes"
                    );
                }
            }
            Err(error) => {
                let error = threatmail_core::error::chain(&error);
                if outage.failed(&error) {
                    tracing::warn!(%error, "outbox drain failed; retrying every tick, logged again when the error changes");
                }
            }
        }
    }
}

/// A run of failed ticks, so that an outage of Redis logs its error once (and again when
/// it changes), not every `drain_interval`.
#[derive(Debug, Default)]
struct Outage {
    error: Option<String>,
    ticks: u64,
}

impl Outage {
    /// Counts a failed tick; whether to log `error`.
    fn failed(&mut self, error: &str) -> bool {
        self.ticks += 1;
        let new = self.error.as_deref() != Some(error);
        if new {
            self.error = Some(error.to_owned());
        }
        new
    }

    /// A tick succeeded: how many failed before it, if any.
    fn ended(&mut self) -> Option<u64> {
        self.error = None;
        Some(std::mem::take(&mut self.ticks)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Outage;

    #[test]
    fn an_outage_logs_its_error_once_and_when_it_changes() {
        let mut outage = Outage::default();
        assert_eq!(outage.ended(), None, "nothing failed yet");
        let refused = "failed to drain: Connection refused (os error 111)";
        let logged: Vec<bool> = (0..5).map(|_| outage.failed(refused)).collect();
        assert_eq!(logged, [true, false, false, false, false]);
        assert!(
            outage.failed("failed to drain: timed out"),
            "a new error is logged"
        );
        assert_eq!(outage.ended(), Some(6));
        assert_eq!(outage.ended(), None);
        assert!(outage.failed(refused), "a new outage logs again");
    }
}
