//! The lessor's clock: a monotonic seam, real (`MonotonicClock`) or stepped by hand (`SimClock`).
//!
//! Lease expiry is measured on the leader's monotonic clock only, never on wall time, so a
//! wall-clock step (NTP, an operator) neither shortens nor lengthens a TTL, and members never
//! compare clocks: the leader decides and proposes the revoke through raft.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub trait Clock: Send + Sync + 'static {
    /// A monotonic instant: never goes backwards.
    fn now(&self) -> Instant;
}

/// `Instant::now()`: CLOCK_MONOTONIC.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: unit tests step it past expiries without sleeping.
#[derive(Debug)]
pub struct SimClock {
    now: Mutex<Instant>,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock {
            now: Mutex::new(Instant::now()),
        }
    }
}

impl SimClock {
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}
