//! Wall clocks: renewal is decided by the wall clock (the system one, or a manual one in tests).

use super::*;

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

#[cfg(any(test, feature = "internals"))]
pub use manual::ManualClock;

/// The manual clock: only tests and the `internals` feature have it.
#[cfg(any(test, feature = "internals"))]
mod manual {
    use std::sync::{Mutex, PoisonError};

    use super::*;

    /// A clock that only moves when told to; for tests of time-dependent behaviour.
    #[derive(Debug)]
    pub struct ManualClock {
        now: Mutex<OffsetDateTime>,
    }

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

    impl Clock for ManualClock {
        fn now(&self) -> OffsetDateTime {
            *self.now.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}
