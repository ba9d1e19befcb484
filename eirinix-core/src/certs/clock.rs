//! Wall clocks: renewal is decided by the wall clock (the system one, or a manual one in tests).

use super::*;
#[cfg(any(test, feature = "internals"))]
use std::sync::{Mutex, PoisonError};

/// Source of wall-clock time; injectable so renewal decisions are testable.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> OffsetDateTime;
}

/// The real wall clock (UTC).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests of time-dependent behaviour.
#[cfg(any(test, feature = "internals"))]
#[derive(Debug)]
pub struct ManualClock {
    pub(super) now: Mutex<OffsetDateTime>,
}

#[cfg(any(test, feature = "internals"))]
impl ManualClock {
    /// A clock stopped at `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        Self { now: Mutex::new(t) }
    }

    /// Moves the clock to `t` (backwards too).
    pub fn set(&self, t: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// Moves the clock forward by `by` (saturating at the largest representable instant).
    pub fn advance(&self, by: StdDuration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = add_saturating(*now, by);
    }
}

#[cfg(any(test, feature = "internals"))]
impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}
