//! The errors of the store.

use threatmail_source::SourceId;

use crate::blob::BlobError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or is unreachable.
    #[error("failed to {action} in redis for source {source_id}")]
    Redis {
        /// What was being done.
        action: &'static str,
        /// The source (`mailbox` for cross-source keys).
        source_id: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The caller's fencing token is not the one of the folder's current lease: its lease
    /// expired or another fetcher holds the folder now. Nothing was written.
    #[error(
        "refused the write to source {source_id} folder {folder:?}: fencing token {token} is stale (the lease holds {held})"
    )]
    StaleFence {
        /// The source.
        source_id: SourceId,
        /// The folder.
        folder: String,
        /// The token presented.
        token: u64,
        /// What the lease key holds (`none` when it expired).
        held: String,
    },
    /// Stored data does not read.
    #[error("failed to read stored {what} of source {source_id}: {problem}")]
    Corrupt {
        /// What.
        what: &'static str,
        /// The source.
        source_id: String,
        /// What is wrong.
        problem: String,
    },
    /// A request that cannot be served as given.
    #[error("invalid {field}: {problem}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The test hook stopped the operation as a crash would (see
    /// [`Store::inject_crash`](crate::Store::inject_crash)).
    #[error("injected crash at {0:?}")]
    InjectedCrash(crate::CrashPoint),
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Maps a Redis error of `action` on `source`'s keys.
pub(crate) fn redis_error(
    action: &'static str,
    source_id: &str,
) -> impl FnOnce(redis::RedisError) -> StoreError {
    let source_id = source_id.to_owned();
    move |source| StoreError::Redis {
        action,
        source_id,
        source,
    }
}
