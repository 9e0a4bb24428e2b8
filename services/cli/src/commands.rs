//! One module per top-level command.

pub(crate) mod apikey;
pub(crate) mod client;
pub(crate) mod corpus;
pub(crate) mod credential;
pub(crate) mod mailbox;
pub(crate) mod parse;
pub(crate) mod secret_input;
pub(crate) mod serve;
pub(crate) mod source;
