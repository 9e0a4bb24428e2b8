//! Fetchers as real processes on the real local stack (Redis, Dovecot, the Entra stand-in)
//! with the token broker in-process: killed with SIGKILL at random points of a sync and
//! restarted, three sharing one source's six folders with one killed, and one paused with
//! SIGSTOP past its lease while another takes its folder (issue 7). What the fencing tokens
//! show is read from the store's commit events in each fetcher's log.

mod fleet;
mod harness;
mod kill;
mod pause;
