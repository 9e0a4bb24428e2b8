//! The mailbox service's errors and their one mapping to gRPC: a status code, a message a
//! person can act on, and the `threatmail-reason` metadata. Nothing in them is secret.

use threatmail_store::StoreError;

/// The metadata key of the machine-readable reason.
pub const REASON_METADATA: &str = "threatmail-reason";

/// Why a mailbox RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {problem}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// No such message.
    #[error("message {id} does not exist")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The record exists but its raw bytes are not in the blob store.
    #[error("the raw bytes of message {id} are not in the blob store (blob {sha256})")]
    BlobMissing {
        /// The message.
        id: String,
        /// Its blob.
        sha256: String,
    },
    /// Redis or the blob store failed.
    #[error("failed to reach the store: {0}")]
    Unavailable(String),
    /// Stored data does not read.
    #[error("stored data is unreadable: {0}")]
    Internal(String),
}

impl MailboxError {
    /// The status code.
    pub fn code(&self) -> tonic::Code {
        match self {
            MailboxError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            MailboxError::NotFound { .. } => tonic::Code::NotFound,
            MailboxError::BlobMissing { .. } | MailboxError::Internal(_) => tonic::Code::Internal,
            MailboxError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            MailboxError::InvalidArgument { .. } => "request.invalid_argument",
            MailboxError::NotFound { .. } => "mailbox.message_not_found",
            MailboxError::BlobMissing { .. } => "mailbox.blob_missing",
            MailboxError::Unavailable(_) => "mailbox.store_unavailable",
            MailboxError::Internal(_) => "mailbox.store_corrupt",
        }
    }
}

impl From<StoreError> for MailboxError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidArgument { field, problem } => {
                MailboxError::InvalidArgument { field, problem }
            }
            StoreError::Corrupt { .. } => MailboxError::Internal(error.to_string()),
            StoreError::Blob(threatmail_store::BlobError::Corrupt { .. }) => {
                MailboxError::Internal(error.to_string())
            }
            other => MailboxError::Unavailable(other.to_string()),
        }
    }
}

impl From<MailboxError> for tonic::Status {
    fn from(error: MailboxError) -> Self {
        if error.code() == tonic::Code::Unavailable || error.code() == tonic::Code::Internal {
            tracing::warn!(error = %threatmail_core::error::chain(&error), "mailbox request failed");
        }
        let mut status = tonic::Status::new(error.code(), error.to_string());
        status.metadata_mut().insert(
            REASON_METADATA,
            tonic::metadata::MetadataValue::from_static(error.reason()),
        );
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_reason() {
        let table = [
            (
                MailboxError::InvalidArgument {
                    field: "id",
                    problem: "x".into(),
                },
                tonic::Code::InvalidArgument,
                "request.invalid_argument",
            ),
            (
                MailboxError::NotFound { id: "a/b".into() },
                tonic::Code::NotFound,
                "mailbox.message_not_found",
            ),
            (
                MailboxError::Unavailable("down".into()),
                tonic::Code::Unavailable,
                "mailbox.store_unavailable",
            ),
        ];
        for (error, code, reason) in table {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(
                status
                    .metadata()
                    .get(REASON_METADATA)
                    .and_then(|v| v.to_str().ok()),
                Some(reason)
            );
        }
    }
}
