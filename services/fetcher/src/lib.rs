//! The threatmail fetcher service.
