//! The threatmail mailbox service.
