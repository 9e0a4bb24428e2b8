//! The registry against real servers: the local stack (Redis, the Entra stand-in, Dovecot),
//! the token broker and a fetcher in-process (one test binary, so it links once).

mod folders;
mod harness;
mod permissions;
mod save_and_continue;
mod secrets;
mod sources;
