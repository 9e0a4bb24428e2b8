//! The scheduler against the real local stack (Redis, Dovecot, the Entra stand-in) and the
//! real token broker, all in-process (one test binary, so it links once).

mod actions;
mod auth;
mod faults;
mod harness;
mod live;
mod sync;
