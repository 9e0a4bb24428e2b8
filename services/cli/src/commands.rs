//! One module per top-level command.

/// `println!` that hands back the write error instead of panicking, so a closed pipe
/// (`threatmail … | head`) ends the command quietly (see `client::is_broken_pipe`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub(crate) mod apikey;
pub(crate) mod client;
pub(crate) mod corpus;
pub(crate) mod credential;
pub(crate) mod mailbox;
pub(crate) mod parse;
pub(crate) mod secret_input;
pub(crate) mod serve;
pub(crate) mod source;
pub(crate) mod terminal;
