//! One module per top-level command.

pub(crate) mod corpus;
pub(crate) mod mailbox;
pub(crate) mod parse;
pub(crate) mod serve;
