//! Per-test controls of the Entra stand-in: token lifetime, answer delay, injected faults
//! (429, 5xx, dropped connections) and request counters.
//!
//! [`EntraControls`] is cheap to clone and shared with the running server, so a test can
//! change behaviour between two requests of the code under test. Faults are queued and each
//! one is used up by one token-endpoint request, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The default token lifetime (`expires_in`), as in Microsoft's example response.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// The body of an injected 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleBody {
    /// An Entra JSON error body (`temporarily_unavailable`, AADSTS50196).
    Json,
    /// The plain text `Too Many Requests`, as MSAL.NET reports seeing from the token
    /// endpoint (AzureAD/microsoft-authentication-library-for-dotnet#2855).
    PlainText,
}

/// One injected fault, used up by one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: <retry_after_secs>`.
    Throttle {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u32,
        /// JSON or plain text.
        body: ThrottleBody,
    },
    /// A 5xx answer (503 → `temporarily_unavailable`, others → `server_error`).
    ServerError {
        /// The HTTP status, 500–599.
        status: u16,
        /// `Retry-After` in seconds, if any.
        retry_after_secs: Option<u32>,
    },
    /// Read the request, then close the connection without answering.
    DropConnection,
}

#[derive(Debug)]
struct State {
    token_lifetime: Duration,
    delay: Duration,
    faults: VecDeque<Fault>,
    counts: HashMap<(String, String), u64>,
    total: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            delay: Duration::ZERO,
            faults: VecDeque::new(),
            counts: HashMap::new(),
            total: 0,
        }
    }
}

/// A cloneable handle on the stand-in's behaviour and counters.
#[derive(Debug, Clone, Default)]
pub struct EntraControls {
    state: Arc<Mutex<State>>,
}

impl EntraControls {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lifetime of tokens issued from now on (`expires_in`, `exp` − issue time).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().token_lifetime = lifetime;
    }

    /// The current token lifetime.
    pub fn token_lifetime(&self) -> Duration {
        self.lock().token_lifetime
    }

    /// Waits this long before every answer (including faults).
    pub fn set_response_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// The current answer delay.
    pub fn response_delay(&self) -> Duration {
        self.lock().delay
    }

    /// Queues a fault for the next request after those already queued.
    pub fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// The next `n` requests get HTTP 429 with `Retry-After: retry_after_secs` and an
    /// Entra JSON error body.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u32) {
        self.push_n(
            n,
            Fault::Throttle {
                retry_after_secs,
                body: ThrottleBody::Json,
            },
        );
    }

    /// The next `n` requests get a 5xx `status`, with `Retry-After` if given.
    pub fn fail_next(&self, n: usize, status: u16, retry_after_secs: Option<u32>) {
        self.push_n(
            n,
            Fault::ServerError {
                status,
                retry_after_secs,
            },
        );
    }

    /// The next `n` requests are read and their connections closed without an answer.
    pub fn drop_next(&self, n: usize) {
        self.push_n(n, Fault::DropConnection);
    }

    fn push_n(&self, n: usize, fault: Fault) {
        self.lock().faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Forgets queued faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// How many faults are still queued.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Token-endpoint requests seen for this tenant (as written in the URL) and client id
    /// (as sent), both compared case-insensitively; every request counts, faulted or not.
    pub fn request_count(&self, tenant: &str, client_id: &str) -> u64 {
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        self.lock().counts.get(&key).copied().unwrap_or(0)
    }

    /// All token-endpoint requests seen.
    pub fn total_requests(&self) -> u64 {
        self.lock().total
    }

    /// Sets all counters to zero.
    pub fn reset_counts(&self) {
        let mut state = self.lock();
        state.counts.clear();
        state.total = 0;
    }

    /// Counts one request and takes the next fault, with the delay to apply.
    pub(crate) fn on_request(&self, tenant: &str, client_id: &str) -> (Duration, Option<Fault>) {
        let mut state = self.lock();
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        *state.counts.entry(key).or_insert(0) += 1;
        state.total += 1;
        let fault = state.faults.pop_front();
        (state.delay, fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_used_up_in_order_and_requests_counted() {
        let controls = EntraControls::default();
        controls.throttle_next(2, 7);
        controls.drop_next(1);
        let clone = controls.clone();
        let take = || clone.on_request("T", "C").1;
        assert!(matches!(
            take(),
            Some(Fault::Throttle {
                retry_after_secs: 7,
                ..
            })
        ));
        assert!(matches!(take(), Some(Fault::Throttle { .. })));
        assert_eq!(take(), Some(Fault::DropConnection));
        assert_eq!(take(), None);
        assert_eq!(controls.request_count("t", "c"), 4);
        assert_eq!(controls.request_count("t", "other"), 0);
        assert_eq!(controls.total_requests(), 4);
        controls.reset_counts();
        assert_eq!(controls.total_requests(), 0);
        assert_eq!(controls.token_lifetime(), DEFAULT_TOKEN_LIFETIME);
    }
}
