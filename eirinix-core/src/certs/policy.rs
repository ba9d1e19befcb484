//! Validity periods and renewal points of CAs and serving certificates.

use super::*;

/// Lifetimes and renewal points of the CA and serving certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPolicy {
    /// Lifetime of a CA certificate (default 3650 days).
    pub ca_validity: StdDuration,
    /// Lifetime of a serving certificate (default 90 days; capped at the CA's expiry).
    pub serving_validity: StdDuration,
    /// Fraction of a certificate's validity window after which it is renewed (default 2/3).
    pub renew_fraction: f64,
    /// Time a staged next CA spends in the caBundle before it starts signing (default 5 min).
    pub ca_promote_delay: StdDuration,
    /// Time the previous CA stays in the caBundle after a promotion (default 24 h).
    pub previous_ca_retention: StdDuration,
    /// Base common name of generated CAs; a key fingerprint is appended (default `eirinix-ca`).
    pub ca_common_name: String,
}

impl Default for CertPolicy {
    fn default() -> Self {
        Self {
            ca_validity: StdDuration::from_secs(3650 * 24 * 3600),
            serving_validity: StdDuration::from_secs(90 * 24 * 3600),
            renew_fraction: 2.0 / 3.0,
            ca_promote_delay: StdDuration::from_secs(5 * 60),
            previous_ca_retention: StdDuration::from_secs(24 * 3600),
            ca_common_name: DEFAULT_CA_COMMON_NAME.to_owned(),
        }
    }
}

impl CertPolicy {
    /// Checks that the policy yields certificates that are not due for renewal when issued
    /// (otherwise the plan/apply loop would never settle).
    pub fn validate(&self) -> Result<(), CertError> {
        let f = self.renew_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(CertError::InvalidPolicy(format!(
                "renew_fraction must be in (0, 1], got {f}"
            )));
        }
        for (what, validity) in [
            ("ca_validity", self.ca_validity),
            ("serving_validity", self.serving_validity),
        ] {
            let v = to_time_duration(validity).ok_or_else(|| {
                CertError::InvalidPolicy(format!("{what} {validity:?} is too long"))
            })?;
            // Worst case for a fresh certificate: `not_before` is backdated by `b` and rounded
            // down by up to 1 s, so it is due at `now - b - 1s + f * (v + b + 1s)` at the
            // earliest; that must be later than `now`.
            let b = backdate(v).as_seconds_f64();
            let v = v.as_seconds_f64();
            if f * (v + b) <= b + 1.0 {
                return Err(CertError::InvalidPolicy(format!(
                    "{what} {validity:?} with renew_fraction {f} would be due for renewal as \
                     soon as issued (X.509 validity has one-second resolution)"
                )));
            }
        }
        Ok(())
    }

    /// The renew fraction, falling back to the default when it is out of range.
    pub(super) fn fraction(&self) -> f64 {
        let f = self.renew_fraction;
        if f.is_finite() && f > 0.0 && f <= 1.0 {
            f
        } else {
            2.0 / 3.0
        }
    }
}
