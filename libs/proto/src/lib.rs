//! The gRPC APIs of threatmail's services, generated from `proto/threatmail/v1`.
//!
//! This is the only crate that runs code generation; every service and the CLI use these
//! types, so the wire format is defined once.

#![allow(unreachable_pub, missing_docs, clippy::all)]

/// `threatmail.v1`: registry, token broker, fetcher and mailbox APIs.
pub mod v1 {
    tonic::include_proto!("threatmail.v1");
}

/// The [`v1::Problem`] a failed call's status carries in its details (services put one
/// there: reason, message, field and upstream code such as `AADSTS7000215`), if any.
pub fn problem_of(status: &tonic::Status) -> Option<v1::Problem> {
    use prost::Message as _;
    v1::Problem::decode(status.details())
        .ok()
        .filter(|p| !p.reason.is_empty())
}
