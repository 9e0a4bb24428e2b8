//! The threatmail token-broker service.
