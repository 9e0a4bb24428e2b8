//! The gRPC APIs of threatmail's services, generated from `proto/threatmail/v1`.
//!
//! This is the only crate that runs code generation; every service and the CLI use these
//! types, so the wire format is defined once.

#![allow(unreachable_pub, missing_docs, clippy::all)]

/// `threatmail.v1`: registry, token broker, fetcher and mailbox APIs.
pub mod v1 {
    tonic::include_proto!("threatmail.v1");
}
