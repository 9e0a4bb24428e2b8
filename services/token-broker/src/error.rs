//! The broker's errors and their one mapping to gRPC.
//!
//! A failed RPC carries: the status code; the message, one line naming what to recheck;
//! the `threatmail-reason` metadata (e.g. `entra.secret_wrong`); the same as a
//! `threatmail.v1.Problem` encoded in the status details (reason, message, field, upstream
//! code such as `AADSTS7000215`), which a client reads with `threatmail_proto::problem_of`; and `retry-after` (seconds) when asking again
//! sooner is pointless. Nothing in it is secret.

use prost::Message as _;
use threatmail_proto::v1::Problem;
use threatmail_source::SourceId;

use crate::clock::UnixMs;
use crate::entra::EntraError;

/// The metadata key of the machine-readable reason.
pub const REASON_METADATA: &str = "threatmail-reason";
/// The metadata key of the seconds to wait before asking again.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// Why the broker could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {problem}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// No source with this id.
    #[error("source {source_id} does not exist")]
    SourceNotFound {
        /// The source.
        source_id: String,
    },
    /// The source logs in with a password, not Entra.
    #[error(
        "source {source_id} does not use Microsoft OAuth 2.0 (auth type ms-oauth2); it has no token"
    )]
    NotOAuth {
        /// The source.
        source_id: SourceId,
    },
    /// The source has no client secret.
    #[error(
        "source {source_id} has no client secret: enter the client secret's value (setup step 3)"
    )]
    NoSecret {
        /// The source.
        source_id: SourceId,
    },
    /// The source is disabled.
    #[error("source {source_id} is disabled; enable it to fetch its mail")]
    SourceDisabled {
        /// The source.
        source_id: SourceId,
    },
    /// The stored secret does not open (a master key missing from this broker's keyring).
    #[error(
        "failed to open the client secret of source {source_id}: {problem}; give the broker the same master key(s) as the registry"
    )]
    SecretUnreadable {
        /// The source.
        source_id: SourceId,
        /// Why, without key material.
        problem: String,
    },
    /// The stored record is unreadable.
    #[error("failed to read source {source_id} from redis: {problem}")]
    SourceCorrupt {
        /// The source.
        source_id: SourceId,
        /// Why.
        problem: String,
    },
    /// Entra refused or failed.
    #[error("{error}")]
    Entra {
        /// The typed error.
        error: Box<EntraError>,
        /// No new request to Entra before this (Unix ms), when known.
        retry_at: Option<UnixMs>,
        /// Now, when the error was made, to turn `retry_at` into seconds.
        now: UnixMs,
    },
    /// Redis failed.
    #[error("failed to reach redis; the broker retries when asked again")]
    Redis,
    /// Another broker's refresh took longer than its lock allows.
    #[error("another broker's token refresh did not finish in time; ask again")]
    Busy,
    /// The broker is stopping.
    #[error("the broker is stopping; ask another replica")]
    Stopping,
}

impl BrokerError {
    /// The gRPC status code.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            BrokerError::InvalidArgument { .. } => Code::InvalidArgument,
            BrokerError::SourceNotFound { .. } => Code::NotFound,
            BrokerError::NotOAuth { .. }
            | BrokerError::NoSecret { .. }
            | BrokerError::SourceDisabled { .. }
            | BrokerError::SecretUnreadable { .. } => Code::FailedPrecondition,
            BrokerError::SourceCorrupt { .. } => Code::Internal,
            BrokerError::Entra { error, .. } => error.grpc_code(),
            BrokerError::Redis | BrokerError::Busy | BrokerError::Stopping => Code::Unavailable,
        }
    }

    /// The problem as the API reports it.
    pub fn problem(&self) -> Problem {
        let (reason, field, upstream_code) = match self {
            BrokerError::InvalidArgument { field, .. } => {
                ("request.invalid_argument", *field, String::new())
            }
            BrokerError::SourceNotFound { .. } => ("source.not_found", "source_id", String::new()),
            BrokerError::NotOAuth { .. } => ("source.not_oauth", "auth_type", String::new()),
            BrokerError::NoSecret { .. } => ("source.no_secret", "secret_key", String::new()),
            BrokerError::SourceDisabled { .. } => ("source.disabled", "enabled", String::new()),
            BrokerError::SecretUnreadable { .. } => {
                ("source.secret_unreadable", "master_key", String::new())
            }
            BrokerError::SourceCorrupt { .. } => ("source.corrupt", "", String::new()),
            BrokerError::Entra { error, .. } => {
                (error.reason(), error.field(), error.upstream_code())
            }
            BrokerError::Redis => ("broker.redis_unavailable", "", String::new()),
            BrokerError::Busy => ("broker.busy", "", String::new()),
            BrokerError::Stopping => ("broker.stopping", "", String::new()),
        };
        Problem {
            reason: reason.to_owned(),
            message: match self {
                BrokerError::Entra { error, .. } => error.diagnosis(),
                other => other.to_string(),
            },
            field: field.to_owned(),
            upstream_code,
        }
    }

    /// Seconds until asking again makes sense, when known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            BrokerError::Entra {
                retry_at: Some(at),
                now,
                ..
            } if at > now => {
                let ms = u64::try_from(at - now).unwrap_or(0);
                Some(ms.div_ceil(1000).max(1))
            }
            BrokerError::Busy | BrokerError::Redis => Some(1),
            _ => None,
        }
    }

    /// The status a caller gets.
    pub fn to_status(&self) -> tonic::Status {
        let problem = self.problem();
        let mut status = tonic::Status::with_details(
            self.code(),
            problem.message.clone(),
            problem.encode_to_vec().into(),
        );
        if let Ok(value) = problem.reason.parse() {
            status.metadata_mut().insert(REASON_METADATA, value);
        }
        if let Some(secs) = self.retry_after_secs()
            && let Ok(value) = secs.to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
        }
        status
    }
}
