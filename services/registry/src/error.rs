//! The registry's errors and their one mapping to gRPC statuses.
//!
//! Every refusal carries a stable reason in the `threatmail-reason` metadata; validation
//! problems also travel in the status details as `ValidationProblems`, so a client can show
//! each one by its field. No message holds a secret.

use prost::Message as _;
use threatmail_proto::v1 as pb;
use threatmail_source::SourceId;
use threatmail_source::store::StoreError;

/// The metadata key carrying the reason of a failed RPC.
pub const REASON_METADATA: &str = "threatmail-reason";

/// Errors of the registry's RPCs.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Fields are missing or wrong; every problem is listed.
    #[error("the source has {} problem(s): {}", .problems.len(), summary(.problems))]
    Invalid {
        /// Each problem, by field.
        problems: Vec<pb::Problem>,
    },
    /// A request argument other than the source's fields is wrong.
    #[error("{field}: {problem}")]
    BadArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// No such source.
    #[error("source {source_id} does not exist")]
    NotFound {
        /// The id asked for.
        source_id: String,
    },
    /// No such API key.
    #[error("API key {id} does not exist")]
    ApiKeyNotFound {
        /// The id asked for.
        id: String,
    },
    /// Revoking it would leave no admin key.
    #[error(
        "API key {id} is the last admin key: make another admin key first \
         (`threatmail apikey create --role admin`), then revoke this one"
    )]
    LastAdminKey {
        /// The id asked for.
        id: String,
    },
    /// Another source has the name.
    #[error("the name {name:?} is already used by source {holder}: choose another name")]
    NameTaken {
        /// The name.
        name: String,
        /// The source holding it.
        holder: String,
    },
    /// The source changed since the caller read it.
    #[error(
        "source {source_id} changed since you read it (you read version {expected}, it is now {current}): read it again and retry"
    )]
    Conflict {
        /// The source.
        source_id: SourceId,
        /// The version the caller read.
        expected: u64,
        /// The version stored now.
        current: u64,
    },
    /// Redis failed.
    #[error("failed to reach redis: {0}")]
    Redis(String),
    /// A stored record does not parse.
    #[error("failed to read the stored source {source_id}: {problem}")]
    Corrupt {
        /// The source.
        source_id: SourceId,
        /// What is wrong.
        problem: String,
    },
    /// A stored secret does not open (e.g. its master key id is not configured).
    #[error("failed to open the stored secret of source {source_id}: {problem}")]
    SecretUnreadable {
        /// The source.
        source_id: SourceId,
        /// Why, without the secret.
        problem: String,
    },
    /// Sealing a secret failed.
    #[error("failed to seal the secret of source {source_id}")]
    Seal {
        /// The source.
        source_id: SourceId,
    },
    /// The registry was not given its own service credential.
    #[error(
        "the registry has no service credential to call the {service} with: set auth.credential_file (THREATMAIL_AUTH__CREDENTIAL_FILE)"
    )]
    NoServiceCredential {
        /// `token broker` or `fetcher`.
        service: &'static str,
    },
    /// The broker or the fetcher failed in a way that is not about the source.
    #[error("the {service} failed: {message}")]
    Upstream {
        /// `token broker` or `fetcher`.
        service: &'static str,
        /// The code it answered with (Unavailable when it could not be reached).
        code: tonic::Code,
        /// Its reason, when it gave one.
        reason: String,
        /// Its message.
        message: String,
    },
    /// The source's login or folder listing failed; the message is the diagnosis.
    #[error("{message}")]
    Login {
        /// The fetcher's code.
        code: tonic::Code,
        /// The fetcher's or broker's reason.
        reason: String,
        /// The diagnosis, with the checklist when there is one.
        message: String,
    },
    /// The caller may not do this (beyond what the auth layer checks).
    #[error("{0}")]
    Denied(String),
    /// The API key store failed.
    #[error("failed to manage API keys: {0}")]
    ApiKeys(String),
}

fn summary(problems: &[pb::Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.field.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.field, p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result alias of the registry.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// The gRPC code and the machine-readable reason.
    pub fn code_and_reason(&self) -> (tonic::Code, String) {
        use tonic::Code;
        let (code, reason) = match self {
            RegistryError::Invalid { .. } => (Code::InvalidArgument, "registry.invalid_source"),
            RegistryError::BadArgument { .. } => (Code::InvalidArgument, "registry.bad_argument"),
            RegistryError::NotFound { .. } => (Code::NotFound, "registry.source_not_found"),
            RegistryError::ApiKeyNotFound { .. } => (Code::NotFound, "registry.api_key_not_found"),
            RegistryError::LastAdminKey { .. } => {
                (Code::FailedPrecondition, "registry.last_admin_key")
            }
            RegistryError::NameTaken { .. } => (Code::AlreadyExists, "registry.name_taken"),
            RegistryError::Conflict { .. } => (Code::Aborted, "registry.version_conflict"),
            RegistryError::Redis(_) => (Code::Unavailable, "registry.redis_unavailable"),
            RegistryError::Corrupt { .. } => (Code::Internal, "registry.source_corrupt"),
            RegistryError::SecretUnreadable { .. } => {
                (Code::FailedPrecondition, "registry.secret_unreadable")
            }
            RegistryError::Seal { .. } => (Code::Internal, "registry.seal_failed"),
            RegistryError::NoServiceCredential { .. } => {
                (Code::FailedPrecondition, "registry.no_service_credential")
            }
            RegistryError::Upstream {
                code,
                reason,
                service,
                ..
            } => {
                let fallback = if *service == "fetcher" {
                    "registry.fetcher_failed"
                } else {
                    "registry.broker_failed"
                };
                let reason = if reason.is_empty() {
                    fallback.to_owned()
                } else {
                    reason.clone()
                };
                return (*code, reason);
            }
            // A refused source login is the source's setup, not the caller's credential.
            RegistryError::Login { code, reason, .. } => {
                let code = match code {
                    Code::Unauthenticated | Code::PermissionDenied => Code::FailedPrecondition,
                    other => *other,
                };
                return (code, reason.clone());
            }
            RegistryError::Denied(_) => (Code::PermissionDenied, "auth.permission_denied"),
            RegistryError::ApiKeys(_) => (Code::Unavailable, "registry.api_keys_unavailable"),
        };
        (code, reason.to_owned())
    }

    /// The status a caller gets.
    pub fn to_status(&self) -> tonic::Status {
        let (code, reason) = self.code_and_reason();
        let message = self.to_string();
        let mut status = match self {
            RegistryError::Invalid { problems } => {
                let details = pb::ValidationProblems {
                    problems: problems.clone(),
                }
                .encode_to_vec();
                tonic::Status::with_details(code, message, details.into())
            }
            _ => tonic::Status::new(code, message),
        };
        if let Ok(value) = reason.parse() {
            status.metadata_mut().insert(REASON_METADATA, value);
        }
        status
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(error: RegistryError) -> Self {
        error.to_status()
    }
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Redis { source, .. }
            | StoreError::RedisNames(source)
            | StoreError::RedisFleet(source) => RegistryError::Redis(source.to_string()),
            StoreError::Corrupt { source_id, problem } => {
                RegistryError::Corrupt { source_id, problem }
            }
            StoreError::AlreadyExists { source_id } => RegistryError::NameTaken {
                name: String::new(),
                holder: source_id.to_string(),
            },
            StoreError::NameTaken { name, holder, .. } => RegistryError::NameTaken { name, holder },
            StoreError::NotFound { source_id } => RegistryError::NotFound {
                source_id: source_id.to_string(),
            },
            StoreError::VersionConflict {
                source_id,
                expected,
                current,
            } => RegistryError::Conflict {
                source_id,
                expected,
                current,
            },
        }
    }
}

/// The `threatmail-reason` of a status, or "".
pub fn reason_of(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_reason() {
        use tonic::Code;
        let id = SourceId::parse("s").unwrap();
        let table: Vec<(RegistryError, Code, &str)> = vec![
            (
                RegistryError::Invalid { problems: vec![] },
                Code::InvalidArgument,
                "registry.invalid_source",
            ),
            (
                RegistryError::NotFound {
                    source_id: "s".into(),
                },
                Code::NotFound,
                "registry.source_not_found",
            ),
            (
                RegistryError::NameTaken {
                    name: "n".into(),
                    holder: "h".into(),
                },
                Code::AlreadyExists,
                "registry.name_taken",
            ),
            (
                RegistryError::Conflict {
                    source_id: id.clone(),
                    expected: 1,
                    current: 2,
                },
                Code::Aborted,
                "registry.version_conflict",
            ),
            (
                RegistryError::Redis("down".into()),
                Code::Unavailable,
                "registry.redis_unavailable",
            ),
            (
                RegistryError::Upstream {
                    service: "fetcher",
                    code: Code::Unavailable,
                    reason: String::new(),
                    message: "down".into(),
                },
                Code::Unavailable,
                "registry.fetcher_failed",
            ),
            (
                RegistryError::Login {
                    code: Code::Unauthenticated,
                    reason: "imap.authenticate_failed".into(),
                    message: "m".into(),
                },
                Code::FailedPrecondition,
                "imap.authenticate_failed",
            ),
        ];
        for (error, code, reason) in table {
            let status = error.to_status();
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(reason_of(&status), reason, "{error}");
        }
    }

    #[test]
    fn validation_problems_travel_in_the_details() {
        let problem = pb::Problem {
            reason: "validation.required".into(),
            message: "enter the name".into(),
            field: "name".into(),
            upstream_code: String::new(),
        };
        let status = RegistryError::Invalid {
            problems: vec![problem.clone()],
        }
        .to_status();
        let details = pb::ValidationProblems::decode(status.details()).unwrap();
        assert_eq!(details.problems, vec![problem]);
        assert!(status.message().contains("name: enter the name"));
    }

    #[test]
    fn a_conflict_says_to_read_again_and_retry() {
        let status = RegistryError::Conflict {
            source_id: SourceId::parse("s").unwrap(),
            expected: 3,
            current: 4,
        }
        .to_status();
        assert!(status.message().contains("changed since you read it"));
        assert!(status.message().contains("retry"));
    }
}
