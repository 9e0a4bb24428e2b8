//! Domain types and helpers shared by every threatmail crate: configuration loading, and
//! (as later issues add them) sources, folders, secrets and message identities.

pub mod config;
pub mod error;
pub mod mutf7;
pub mod redact;
