//! One module per top-level command.

pub(crate) mod parse;
pub(crate) mod corpus;
