//! Readiness as named checks, as controller-runtime's `healthz` checkers: each component that
//! owns a condition (certificates, the self handshake, each webhook configuration, the client
//! CA, shutdown, or an extension's own dependency) registers a [`Check`] and marks it; `/readyz`
//! answers 200 when every check passes, else 503 naming the failing ones.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The readiness checks of one server; ready when all pass (and when there are none).
#[derive(Debug, Default)]
pub struct Health {
    checks: Mutex<Vec<Arc<Check>>>,
}

/// One named readiness condition, set by the component that registered it.
#[derive(Debug)]
pub struct Check {
    name: String,
    failing: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Check {
    /// The name `/readyz` reports it under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nothing of this check stands in the way of readiness.
    pub fn pass(&self) {
        *lock(&self.failing) = None;
    }

    /// Not ready, for `why`.
    pub fn fail(&self, why: impl Into<String>) {
        *lock(&self.failing) = Some(why.into());
    }

    /// [`Check::pass`] when `ok`, else [`Check::fail`] with `why_not`.
    pub fn set(&self, ok: bool, why_not: &str) {
        if ok { self.pass() } else { self.fail(why_not) }
    }

    /// Why the check fails now, if it does.
    pub fn failing(&self) -> Option<String> {
        lock(&self.failing).clone()
    }
}

impl Health {
    /// No checks yet: ready until a component registers one that fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register the check `name`, failing with `why` until its owner passes it (conditions that
    /// must be shown before traffic is welcome: a loaded certificate, an applied configuration).
    pub fn check(&self, name: impl Into<String>, why: impl Into<String>) -> Arc<Check> {
        self.add(name.into(), Some(why.into()))
    }

    /// Register the check `name`, passing until its owner fails it (shutdown, a dependency
    /// that may break later).
    pub fn passing(&self, name: impl Into<String>) -> Arc<Check> {
        self.add(name.into(), None)
    }

    fn add(&self, name: String, failing: Option<String>) -> Arc<Check> {
        let check = Arc::new(Check {
            name,
            failing: Mutex::new(failing),
        });
        lock(&self.checks).push(check.clone());
        check
    }

    /// `Ok` when ready, else the failing checks as `name: why`, joined by `; `.
    pub fn readiness(&self) -> Result<(), String> {
        let why: Vec<String> = lock(&self.checks)
            .iter()
            .filter_map(|c| c.failing().map(|why| format!("{}: {why}", c.name)))
            .collect();
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_registered_check_passes() {
        let health = Health::new();
        assert_eq!(health.readiness(), Ok(()), "no checks: ready");
        let cert = health.check("certificate", "no serving certificate loaded");
        let stopping = health.passing("shutdown");
        assert_eq!(
            health.readiness(),
            Err("certificate: no serving certificate loaded".into())
        );
        cert.pass();
        assert_eq!(health.readiness(), Ok(()));
        stopping.fail("shutting down");
        cert.set(false, "expired");
        assert_eq!(
            health.readiness(),
            Err("certificate: expired; shutdown: shutting down".into()),
            "every failing check, by name, in the order registered"
        );
        assert_eq!(stopping.name(), "shutdown");
        assert_eq!(stopping.failing().as_deref(), Some("shutting down"));
    }
}
