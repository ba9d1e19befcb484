//! Readiness: named conditions, each set by the component that owns it (certificates, the
//! self handshake, registration, shutdown, the client CA check); `/readyz` reports them.

use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness conditions, each set by the component that owns it.
#[derive(Debug)]
pub struct Health {
    cert_loaded: AtomicBool,
    handshake_ok: AtomicBool,
    configuration_ok: AtomicBool,
    validating_configuration_ok: AtomicBool,
    shutting_down: AtomicBool,
    client_ca_problem: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// Fresh state; `registering` says whether the configuration must be confirmed before ready.
    pub fn new(registering: bool) -> Self {
        Self {
            cert_loaded: AtomicBool::new(false),
            handshake_ok: AtomicBool::new(false),
            configuration_ok: AtomicBool::new(!registering),
            validating_configuration_ok: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            client_ca_problem: std::sync::Mutex::new(None),
        }
    }

    /// A serving certificate is loaded.
    pub fn set_cert_loaded(&self, v: bool) {
        self.cert_loaded.store(v, Ordering::Relaxed);
    }

    /// The last TLS handshake to ourselves succeeded.
    pub fn set_handshake_ok(&self, v: bool) {
        self.handshake_ok.store(v, Ordering::Relaxed);
    }

    /// The registered configuration carries our current CA.
    pub fn set_configuration_ok(&self, v: bool) {
        self.configuration_ok.store(v, Ordering::Relaxed);
    }

    /// The registered ValidatingWebhookConfiguration carries our current CA (when there are
    /// validators; true otherwise).
    pub fn set_validating_configuration_ok(&self, v: bool) {
        self.validating_configuration_ok.store(v, Ordering::Relaxed);
    }

    /// Why the client CA cannot verify the apiserver's client certificate now, if it cannot.
    pub fn set_client_ca_problem(&self, problem: Option<String>) {
        *self
            .client_ca_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Shutdown started: report not ready so load balancers drain us.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else the reasons it is not.
    pub fn readiness(&self) -> Result<(), String> {
        let mut why = Vec::new();
        if !self.cert_loaded.load(Ordering::Relaxed) {
            why.push("no serving certificate loaded");
        }
        if !self.handshake_ok.load(Ordering::Relaxed) {
            why.push("TLS handshake to self not confirmed");
        }
        if !self.configuration_ok.load(Ordering::Relaxed) {
            why.push("webhook configuration does not carry the current CA");
        }
        if !self.validating_configuration_ok.load(Ordering::Relaxed) {
            why.push("validating webhook configuration does not carry the current CA");
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            why.push("shutting down");
        }
        let client_ca = self
            .client_ca_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut why: Vec<String> = why.into_iter().map(str::to_owned).collect();
        why.extend(client_ca);
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}
