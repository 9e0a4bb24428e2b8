//! Storing mail exactly once (placeholder while the crate is written).
