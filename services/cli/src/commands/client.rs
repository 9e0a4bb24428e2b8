//! What the commands that call a service share: the API key (a file, `TM_API_KEY_FILE` or
//! `TM_API_KEY`), a channel whose connection failure says how to start the service, a
//! failed RPC as one line a person can act on, and stdout closed under us (`… | head`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use serde_json::{Value, json};
use threatmail_auth::CredentialInterceptor;
use threatmail_proto::v1 as pb;
use tonic::transport::Channel;

/// A registry client presenting an API key.
pub(crate) type RegistryClient = threatmail_proto::v1::registry_client::RegistryClient<
    tonic::service::interceptor::InterceptedService<Channel, CredentialInterceptor>,
>;

/// Where the registry is and which API key to present, for `source` and `apikey`. The
/// variables do not start with `THREATMAIL_`, which services read as their own settings.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RegistryArgs {
    /// The registry service.
    #[arg(
        long = "registry",
        value_name = "URL",
        env = "TM_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) url: String,
    /// A file holding the API key (else the key itself from TM_API_KEY).
    #[arg(long, value_name = "FILE", env = "TM_API_KEY_FILE", global = true)]
    pub(crate) api_key_file: Option<PathBuf>,
    /// One JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl RegistryArgs {
    /// A client of the registry with the API key; `role` is what the command needs.
    pub(crate) async fn connect(&self, role: &str) -> anyhow::Result<RegistryClient> {
        let inline = std::env::var("TM_API_KEY").ok();
        let key = api_key(self.api_key_file.as_deref(), inline.as_deref(), role)?;
        let interceptor = bearer(&key)?;
        let channel = channel(
            &self.url,
            "registry",
            "start it (`threatmail serve --target registry`, or `all`) or point --registry / \
             TM_REGISTRY_URL at it",
        )
        .await?;
        Ok(
            threatmail_proto::v1::registry_client::RegistryClient::with_interceptor(
                channel,
                interceptor,
            ),
        )
    }
}

/// The metadata key carrying a refusal's reason.
const REASON_METADATA: &str = "threatmail-reason";

/// The API key: from `file` when given, else `inline` (`TM_API_KEY`). `role` names the role
/// the command needs, for the message when there is none.
pub(crate) fn api_key(
    file: Option<&Path>,
    inline: Option<&str>,
    role: &str,
) -> anyhow::Result<String> {
    let key = match (file, inline) {
        (Some(path), _) => read_key_file(path)?,
        (None, Some(key)) => key.trim().to_owned(),
        (None, None) => anyhow::bail!(
            "an API key is needed: --api-key-file FILE, TM_API_KEY_FILE or TM_API_KEY (an admin \
             makes one with the {role} role: `threatmail apikey create`)"
        ),
    };
    if key.is_empty() {
        anyhow::bail!("the API key is empty: put the key (tmk1.…) in the file or variable");
    }
    Ok(key)
}

/// The key in the file at `path`: one line. A "path" that is a key itself is refused
/// without being printed; a file others may read is used, with a warning.
fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let name = path.to_string_lossy();
    if !path.exists() && (name.starts_with("tmk1.") || name.starts_with("tms1.")) {
        return Err(super::secret_input::UsageError(
            "--api-key-file takes the path of a file holding the key, and this is a key itself: \
             treat it as exposed (other users see arguments in the process list), revoke it, \
             and put the new one in a file",
        )
        .into());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the API key file {}", path.display()))?;
    let key = text.trim();
    anyhow::ensure!(
        key.lines().count() <= 1,
        "the API key file {} holds more than one line: put only the key (tmk1.…) in it",
        path.display()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            eprintln!(
                "warning: the API key file {} can be read by other users: chmod 600 it",
                path.display()
            );
        }
    }
    Ok(key.to_owned())
}

/// The interceptor presenting `key`.
pub(crate) fn bearer(key: &str) -> anyhow::Result<CredentialInterceptor> {
    CredentialInterceptor::bearer(key)
        .map_err(|_| anyhow::anyhow!("the API key is not printable ASCII: check the key file"))
}

/// A connected channel to `url`; `service` and `start` (how to start it) go into the error.
pub(crate) async fn channel(url: &str, service: &str, start: &str) -> anyhow::Result<Channel> {
    if let Some(problem) = threatmail_core::config::grpc_url_problem(url) {
        anyhow::bail!("the {service}'s address {problem}");
    }
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url:?} is not a URL such as http://127.0.0.1:50051"))?;
    endpoint
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .connect()
        .await
        .map_err(|error| {
            // The innermost cause says it best ("Connection refused (os error 111)").
            let mut cause: &dyn std::error::Error = &error;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            anyhow::anyhow!("cannot reach the {service} at {url} ({cause}): {start}")
        })
}

/// A refused or failed RPC.
#[derive(Debug)]
pub(crate) struct RpcError {
    /// The RPC, e.g. `CreateSource`.
    pub(crate) rpc: String,
    /// Its gRPC code.
    pub(crate) code: tonic::Code,
    /// The `threatmail-reason`, or "".
    pub(crate) reason: String,
    /// The service's message.
    pub(crate) message: String,
    /// Each invalid field, when the service listed them.
    pub(crate) problems: Vec<pb::Problem>,
    /// What to do, for codes whose fix is the same whatever the RPC.
    pub(crate) hint: Option<&'static str>,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused ({:?}", self.rpc, self.code)?;
        if !self.reason.is_empty() {
            write!(f, ", {}", self.reason)?;
        }
        write!(f, "): ")?;
        let said = if self.problems.is_empty() {
            self.message.trim_end_matches('.').to_owned()
        } else {
            let each: Vec<String> = self.problems.iter().map(problem_line).collect();
            each.join("; ")
        };
        match (said.is_empty(), self.hint) {
            (_, None) => write!(f, "{said}"),
            (true, Some(hint)) => write!(f, "{hint}"),
            (false, Some(hint)) => write!(f, "{said}; {hint}"),
        }
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// As JSON, for `--json`.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "rpc": self.rpc,
            "code": format!("{:?}", self.code),
            "reason": self.reason,
            "message": self.message,
            "problems": self.problems.iter().map(problem_json).collect::<Vec<_>>(),
            "hint": self.hint,
        })
    }
}

/// `field: message [reason, upstream]`.
pub(crate) fn problem_line(p: &pb::Problem) -> String {
    let mut line = if p.field.is_empty() {
        p.message.clone()
    } else {
        format!("{}: {}", p.field, p.message)
    };
    let mut tags: Vec<&str> = [p.reason.as_str(), p.upstream_code.as_str()]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect();
    tags.dedup();
    if !tags.is_empty() {
        line.push_str(&format!(" [{}]", tags.join(", ")));
    }
    line
}

/// A problem as JSON.
pub(crate) fn problem_json(p: &pb::Problem) -> Value {
    json!({
        "reason": p.reason,
        "message": p.message,
        "field": p.field,
        "upstream_code": p.upstream_code,
    })
}

/// A failed RPC of `service` (started as `start` says) as an error naming what to fix.
pub(crate) fn rpc_error(rpc: &str, status: tonic::Status) -> anyhow::Error {
    let reason = status
        .metadata()
        .get(REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let problems = if status.code() == tonic::Code::InvalidArgument {
        pb::ValidationProblems::decode(status.details())
            .map(|d| d.problems)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let hint = match status.code() {
        tonic::Code::Unauthenticated => Some(
            "give a valid, unrevoked API key with --api-key-file, TM_API_KEY_FILE or TM_API_KEY",
        ),
        tonic::Code::PermissionDenied => {
            Some("use an API key with the role this needs (an admin can make one)")
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Some(
            "check that the service and what it uses (Redis, the broker, a fetcher) are running",
        ),
        // tonic answers so, with no message, for a service it does not serve.
        tonic::Code::Unimplemented => Some(
            "the address answers but does not serve this call: check that TM_REGISTRY_URL \
             points at the registry and TM_MAILBOX_URL at the mailbox service, not at another \
             threatmail service",
        ),
        _ => None,
    };
    RpcError {
        rpc: rpc.to_owned(),
        code: status.code(),
        reason,
        message: status.message().to_owned(),
        problems,
        hint,
    }
    .into()
}

/// Whether `error` is stdout closed under us (`… | head`), which is not a failure.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let kind = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                // serde_json's writers wrap the I/O error.
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// A current-thread runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// `error` as the JSON document `--json` prints on stdout.
pub(crate) fn error_json(error: &anyhow::Error) -> Value {
    let rpc = error.chain().find_map(|c| c.downcast_ref::<RpcError>());
    json!({
        "ok": false,
        "error": threatmail_core::error::chain(error.as_ref()),
        "rpc": rpc.map(RpcError::to_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tonic's answer for a call the address does not serve has no message: the error
    /// says what is likely wrong instead of ending in an empty message.
    #[test]
    fn a_call_the_service_does_not_serve_says_which_url_to_check() {
        let error = rpc_error("ListMessages", tonic::Status::unimplemented(""));
        let text = error.to_string();
        assert!(
            text.starts_with("ListMessages refused (Unimplemented): the address answers"),
            "{text}"
        );
        assert!(text.contains("TM_MAILBOX_URL"), "{text}");
    }

    #[test]
    fn a_problem_line_names_the_reason_and_entras_code_once_each() {
        let problem = |reason: &str, upstream: &str| pb::Problem {
            reason: reason.into(),
            message: "Entra ID rejected the client secret".into(),
            field: "secret_key".into(),
            upstream_code: upstream.into(),
        };
        assert_eq!(
            problem_line(&problem("entra.secret_wrong", "AADSTS7000215")),
            "secret_key: Entra ID rejected the client secret [entra.secret_wrong, AADSTS7000215]"
        );
        // An older fetcher wrote the reason as its upstream code too.
        assert_eq!(
            problem_line(&problem("entra.secret_wrong", "entra.secret_wrong")),
            "secret_key: Entra ID rejected the client secret [entra.secret_wrong]"
        );
    }

    #[test]
    fn a_refusal_lists_every_problem_on_one_line() {
        let details = pb::ValidationProblems {
            problems: vec![
                pb::Problem {
                    reason: "validation.required".into(),
                    message: "enter the name".into(),
                    field: "name".into(),
                    upstream_code: String::new(),
                },
                pb::Problem {
                    reason: "validation.invalid".into(),
                    message: "a GUID or a domain".into(),
                    field: "tenant_id".into(),
                    upstream_code: String::new(),
                },
            ],
        };
        let mut status = tonic::Status::with_details(
            tonic::Code::InvalidArgument,
            "the source has 2 problem(s)",
            details.encode_to_vec().into(),
        );
        status.metadata_mut().insert(
            REASON_METADATA,
            "registry.invalid_source".parse().expect("ascii"),
        );
        let text = format!("{:#}", rpc_error("CreateSource", status));
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("registry.invalid_source"), "{text}");
        assert!(text.contains("name: enter the name"), "{text}");
        assert!(text.contains("tenant_id: a GUID or a domain"), "{text}");
    }

    #[test]
    fn an_unknown_key_says_where_keys_come_from() {
        let text =
            rpc_error("ListSources", tonic::Status::unauthenticated("unknown key")).to_string();
        assert!(text.contains("TM_API_KEY"), "{text}");
    }
}
