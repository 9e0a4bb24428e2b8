//! The local Exchange/Entra test stack: everything the tests and the demo need, on loopback,
//! with no internet.
//!
//! - [`ca`]: a test CA; every TLS server here presents one of its certificates and every
//!   client trusts it explicitly.
//! - [`redis`]: `redis-server` (Debian) in a temp dir, no persistence.
//! - [`dovecot`]: Dovecot (Debian) in a temp dir, run as an unprivileged user, validating
//!   XOAUTH2 tokens the way Exchange Online does.
//! - [`entra`]: an HTTPS stand-in for the Entra ID v2.0 token endpoint.
//! - [`tenant`]: the administrator's Microsoft-side setup as data, applied to both.
//! - [`stack`]: all of the above in one handle, the fixture applied and its mailboxes seeded.
//! - [`imap`]: a small TLS + XOAUTH2 client for the kit's own checks and the demo.
//! - [`exchange_proxy`]: a TLS proxy in front of Dovecot that speaks like Exchange Online
//!   and injects its failures (throttling, token expiry, "not connected", drops).
//!
//! Every server is stopped when its handle is dropped.

pub mod ca;
pub mod dovecot;
pub mod entra;
pub mod exchange_proxy;
pub mod grpc;
pub mod imap;
pub mod jwt;
pub mod net;
pub mod redis;
pub mod stack;
pub mod tenant;
