//! The threatmail registry service.
