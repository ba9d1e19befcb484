//! Webhook TLS material: a self-signed CA and a serving certificate that are renewed from the
//! wall clock, so the webhook's certificate never silently expires.
//!
//! This module is pure certificate logic: no Kubernetes API calls and no network. The caller
//! (the server) keeps a [`CertBundle`] in one Kubernetes Secret shared by all replicas and
//! periodically runs the loop
//!
//! ```text
//! loop {
//!     match bundle.plan(&names, &policy, clock.now()) {
//!         Renewal::None => break,
//!         action => {
//!             bundle = bundle.apply(&action, &names, &policy, clock.now())?;
//!             // write bundle.to_secret_data() (optimistic concurrency);
//!             // if action.changes_ca_bundle(): patch caBundle = bundle.ca_bundle_pem()
//!         }
//!     }
//! }
//! ```
//!
//! CA rotation keeps an overlap in the webhook's `caBundle`:
//!
//! 1. at the CA's renew point a *next* CA is staged; the caBundle becomes `current + next`
//!    while the serving certificate is unchanged;
//! 2. after [`CertPolicy::ca_promote_delay`] (time for the caBundle to reach the API server)
//!    the next CA is promoted: it becomes current, the old one becomes *previous*, the serving
//!    certificate is re-issued by the new CA; the caBundle is `current + previous`, so replicas
//!    still serving the old certificate keep working;
//! 3. after [`CertPolicy::previous_ca_retention`] (or once it expires) the previous CA is dropped.
//!
//! Secret layout (type `kubernetes.io/tls`), see [`secret_keys`]: `tls.crt` holds the serving
//! *chain* (leaf first, then the signing CA) so it can be handed to a TLS stack (and to
//! [`certified_key`]) as is; `tls.key`, `ca.crt`, `ca.key`, and optionally `ca-next.crt`,
//! `ca-next.key`, `ca-next.staged-at`, `ca-previous.crt`, `ca-previous.retired-at`
//! (the two timestamps are RFC 3339).
//!
//! All keys are ECDSA P-256 (PKCS#8 PEM). X.509 validity has one-second resolution: `not_before`
//! is rounded down and `not_after` up to whole seconds; every renewal decision then uses the
//! certificate's actual window with sub-second arithmetic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

/// Names of the entries of the certificate Secret's `data` map.
pub mod secret_keys {
    /// Serving certificate chain: leaf first, then the CA that signed it (`kubernetes.io/tls`).
    pub const TLS_CRT: &str = "tls.crt";
    /// Serving private key, PKCS#8 PEM (`kubernetes.io/tls`).
    pub const TLS_KEY: &str = "tls.key";
    /// Current CA certificate (the one that signs serving certificates).
    pub const CA_CRT: &str = "ca.crt";
    /// Current CA private key.
    pub const CA_KEY: &str = "ca.key";
    /// Staged next CA certificate (present only during a CA rotation).
    pub const CA_NEXT_CRT: &str = "ca-next.crt";
    /// Staged next CA private key (present only during a CA rotation).
    pub const CA_NEXT_KEY: &str = "ca-next.key";
    /// RFC 3339 instant at which the next CA was staged (starts the promotion delay).
    pub const CA_NEXT_STAGED_AT: &str = "ca-next.staged-at";
    /// Previous CA certificate, still trusted for a while after a promotion.
    pub const CA_PREVIOUS_CRT: &str = "ca-previous.crt";
    /// RFC 3339 instant at which the previous CA was replaced (starts its retention).
    pub const CA_PREVIOUS_RETIRED_AT: &str = "ca-previous.retired-at";
}

use secret_keys::*;

/// Longest backdating of `not_before`, to tolerate clock skew between nodes.
const MAX_BACKDATE: Duration = Duration::minutes(5);
/// Upper bound of `issuance - not_before` (backdate plus rounding down to a whole second); used
/// to estimate an issuance instant from a certificate, erring late.
const MAX_BACKDATE_AND_ROUNDING: Duration = Duration::seconds(5 * 60 + 1);
/// Base common name of generated CAs.
const DEFAULT_CA_COMMON_NAME: &str = "eirinix-ca";
/// Common name of a serving certificate whose names are all unusable as a CN.
const FALLBACK_SERVING_COMMON_NAME: &str = "eirinix-webhook";
/// X.509 upper bound on the length of a common name.
const MAX_COMMON_NAME_LEN: usize = 64;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong while making, loading or converting certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The [`CertPolicy`] cannot produce usable certificates.
    #[error("invalid certificate policy: {0}")]
    InvalidPolicy(String),
    /// A serving certificate was requested for an empty [`SubjectNames`].
    #[error("no DNS name or IP address to put in the serving certificate")]
    NoSubjectNames,
    /// rcgen failed to generate a key or certificate.
    #[error("failed to generate the {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A required Secret entry is absent.
    #[error("certificate secret is missing the `{key}` entry")]
    MissingKey {
        /// The missing Secret key.
        key: String,
    },
    /// An entry (Secret key or file) is not UTF-8 text.
    #[error("`{key}` is not UTF-8 text")]
    NotUtf8 {
        /// The Secret key or file path.
        key: String,
    },
    /// An entry does not hold the expected PEM blocks.
    #[error("`{key}` does not contain valid PEM: {reason}")]
    InvalidPem {
        /// The Secret key or file path.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A PEM `CERTIFICATE` block is not a usable X.509 certificate.
    #[error("`{key}` does not contain a usable X.509 certificate: {reason}")]
    InvalidCertificate {
        /// The Secret key or file path.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key cannot be parsed (Secret keys must be PKCS#8 PEM).
    #[error("`{key}` does not contain a usable private key: {reason}")]
    InvalidKey {
        /// The Secret key or file path.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error("private key `{key}` does not match the certificate in `{cert}`")]
    KeyMismatch {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
    },
    /// A certificate used as a CA is not marked as one (basicConstraints CA:TRUE).
    #[error("`{key}` is not a CA certificate")]
    NotCa {
        /// The Secret key or file path.
        key: String,
    },
    /// The serving certificate was not signed by the CA (nor by the next or previous CA).
    #[error("the serving certificate in `{key}` is not signed by the CA in `{ca_key}`")]
    NotSignedByCa {
        /// Where the serving certificate came from.
        key: String,
        /// Where the CA came from.
        ca_key: String,
    },
    /// A timestamp entry is not RFC 3339.
    #[error("`{key}` is not an RFC 3339 timestamp: {value:?}")]
    InvalidTimestamp {
        /// The Secret key.
        key: String,
        /// The offending value (lossily decoded).
        value: String,
    },
    /// [`CertBundle::apply`] was given an action that does not fit the bundle's state.
    #[error("cannot {action}: {reason}")]
    NotApplicable {
        /// The action.
        action: Renewal,
        /// Why it does not apply.
        reason: &'static str,
    },
    /// The CA can no longer sign anything useful.
    #[error("the CA certificate expired at {not_after}; regenerate the certificates")]
    CaExpired {
        /// When the CA expired.
        not_after: OffsetDateTime,
    },
    /// A file could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rustls rejected the certificate chain or key.
    #[error("rustls rejected the certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

fn generate_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

// ---------------------------------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------------------------------

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

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

// ---------------------------------------------------------------------------------------------
// Subject names
// ---------------------------------------------------------------------------------------------

/// Names the serving certificate must cover (its subjectAltNames).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectNames {
    /// DNS names (compared case-insensitively).
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl SubjectNames {
    /// The in-cluster names of a Service: `svc`, `svc.ns`, `svc.ns.svc`,
    /// `svc.ns.svc.cluster.local`.
    pub fn for_service(service: &str, namespace: &str) -> Self {
        let mut names = Self::default();
        for name in [
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ] {
            names.push_dns(name);
        }
        names
    }

    /// The name of a host reached by URL (no port): an IP address (bracketed IPv6 allowed)
    /// becomes an IP SAN, anything else a DNS SAN.
    pub fn for_host(host: &str) -> Self {
        let host = host.trim();
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let mut names = Self::default();
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            names.push_ip(ip);
        } else {
            let dns = host.trim_end_matches('.');
            if !dns.is_empty() {
                names.push_dns(dns.to_ascii_lowercase());
            }
        }
        names
    }

    /// Union of both sets of names, without duplicates, keeping `self`'s order first.
    pub fn merge(mut self, other: SubjectNames) -> Self {
        for dns in other.dns {
            self.push_dns(dns);
        }
        for ip in other.ips {
            self.push_ip(ip);
        }
        self
    }

    /// True when there is no name at all (no certificate can be issued for it).
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }

    /// True when every name here is among the certificate's SANs (extra SANs are fine).
    pub fn covered_by(&self, cert: &ServingCert) -> bool {
        self.dns
            .iter()
            .all(|want| cert.dns.iter().any(|have| have.eq_ignore_ascii_case(want)))
            && self.ips.iter().all(|want| cert.ips.contains(want))
    }

    fn push_dns(&mut self, name: String) {
        if !self.dns.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
            self.dns.push(name);
        }
    }

    fn push_ip(&mut self, ip: IpAddr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    /// Common name for a serving certificate: the first DNS name that fits, else the first IP.
    fn common_name(&self) -> String {
        self.dns
            .iter()
            .find(|d| d.len() <= MAX_COMMON_NAME_LEN)
            .cloned()
            .or_else(|| self.ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| FALLBACK_SERVING_COMMON_NAME.to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

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
    fn fraction(&self) -> f64 {
        let f = self.renew_fraction;
        if f.is_finite() && f > 0.0 && f <= 1.0 {
            f
        } else {
            2.0 / 3.0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A self-signed CA certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Start of validity (as encoded in the certificate).
    pub not_before: OffsetDateTime,
    /// End of validity (as encoded in the certificate).
    pub not_after: OffsetDateTime,
    /// DER SubjectPublicKeyInfo of the CA; identifies which serving certificates it signed.
    pub spki_der: Vec<u8>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl CaCert {
    /// Generates a fresh self-signed CA valid for `policy.ca_validity` from `now`.
    pub fn generate(policy: &CertPolicy, now: OffsetDateTime) -> Result<Self, CertError> {
        let validity = to_time_duration(policy.ca_validity).ok_or_else(|| {
            CertError::InvalidPolicy(format!("ca_validity {:?} is too long", policy.ca_validity))
        })?;
        let (not_before, not_after) = validity_window(now, validity)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(generate_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let fingerprint: String = params
            .key_identifier(&key)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let base = match policy.ca_common_name.trim() {
            "" => DEFAULT_CA_COMMON_NAME,
            base => base,
        };
        let base = truncate_chars(
            base,
            MAX_COMMON_NAME_LEN.saturating_sub(fingerprint.len() + 1),
        );
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{base}-{fingerprint}"));
        params.distinguished_name = dn;
        let cert = params
            .self_signed(&key)
            .map_err(generate_err("CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
            spki_der: key.subject_public_key_info(),
        })
    }

    /// Instant from which the CA is due for rotation (`renew_fraction` of its window).
    pub fn renew_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        renew_point(self.not_before, self.not_after, policy.fraction())
    }

    /// An rcgen issuer for this CA, after checking that key and certificate belong together.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CertError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| CertError::InvalidKey {
            key: "CA key".into(),
            reason: e.to_string(),
        })?;
        let der = first_cert_der("CA certificate", self.cert_pem.as_bytes())?;
        let parsed = ParsedCert::parse("CA certificate", &der)?;
        if parsed.spki != key.subject_public_key_info() {
            return Err(CertError::KeyMismatch {
                cert: "CA certificate".into(),
                key: "CA key".into(),
            });
        }
        Issuer::from_ca_cert_der(&CertificateDer::from(der), key).map_err(|e| {
            CertError::InvalidCertificate {
                key: "CA certificate".into(),
                reason: e.to_string(),
            }
        })
    }

    /// Loads and cross-checks a CA from two Secret entries.
    fn from_secret(
        data: &BTreeMap<String, Vec<u8>>,
        cert_key: &str,
        key_key: &str,
    ) -> Result<Self, CertError> {
        let der = first_cert_der(cert_key, required(data, cert_key)?)?;
        let parsed = ParsedCert::parse(cert_key, &der)?;
        if !parsed.is_ca {
            return Err(CertError::NotCa {
                key: cert_key.into(),
            });
        }
        let key = parse_key_pair(key_key, required(data, key_key)?)?;
        if key.subject_public_key_info() != parsed.spki {
            return Err(CertError::KeyMismatch {
                cert: cert_key.into(),
                key: key_key.into(),
            });
        }
        Ok(Self {
            cert_pem: cert_pem_from_der(&der),
            key_pem: key.serialize_pem(),
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            spki_der: parsed.spki,
        })
    }
}

/// The webhook's serving (leaf) certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The leaf certificate only, PEM (see [`CertBundle::serving_chain_pem`] for the chain).
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Start of validity (as encoded in the certificate).
    pub not_before: OffsetDateTime,
    /// End of validity (as encoded in the certificate).
    pub not_after: OffsetDateTime,
    /// DNS subjectAltNames.
    pub dns: Vec<String>,
    /// IP subjectAltNames.
    pub ips: Vec<IpAddr>,
    /// DER SubjectPublicKeyInfo of the CA whose signature was verified on this certificate.
    pub issuer_spki_der: Vec<u8>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("dns", &self.dns)
            .field("ips", &self.ips)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Issues a serving certificate for `names`, signed by `ca`, valid for
    /// `policy.serving_validity` from `now` but never beyond the CA's own validity.
    pub fn issue(
        ca: &CaCert,
        names: &SubjectNames,
        policy: &CertPolicy,
        now: OffsetDateTime,
    ) -> Result<Self, CertError> {
        if names.is_empty() {
            return Err(CertError::NoSubjectNames);
        }
        let validity = to_time_duration(policy.serving_validity).ok_or_else(|| {
            CertError::InvalidPolicy(format!(
                "serving_validity {:?} is too long",
                policy.serving_validity
            ))
        })?;
        let (not_before, not_after) = validity_window(now, validity)?;
        let not_before = not_before.max(ca.not_before);
        let not_after = not_after.min(ca.not_after);
        if not_after <= now {
            return Err(CertError::CaExpired {
                not_after: ca.not_after,
            });
        }
        let issuer = ca.issuer()?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(generate_err("serving key"))?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.common_name());
        params.distinguished_name = dn;
        let mut sans = Vec::with_capacity(names.dns.len() + names.ips.len());
        for dns in &names.dns {
            let ia5 = dns
                .clone()
                .try_into()
                .map_err(generate_err("serving certificate DNS name"))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(names.ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(generate_err("serving certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
            dns: names.dns.clone(),
            ips: names.ips.clone(),
            issuer_spki_der: issuer.key().subject_public_key_info(),
        })
    }

    /// Instant from which the certificate is due for re-issue (`renew_fraction` of its window).
    pub fn renew_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        renew_point(self.not_before, self.not_after, policy.fraction())
    }

    /// True when the certificate carries a verified signature of `ca`.
    pub fn signed_by(&self, ca: &CaCert) -> bool {
        self.issuer_spki_der == ca.spki_der
    }
}

// ---------------------------------------------------------------------------------------------
// Renewal decisions
// ---------------------------------------------------------------------------------------------

/// Why the serving certificate must be re-issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReissueReason {
    /// Past its renew point.
    Expiring,
    /// Past its `not_after`.
    Expired,
    /// Does not cover all the required names.
    NamesChanged,
    /// Was not signed by the current CA.
    NotSignedByCurrentCa,
}

impl fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Expiring => "expiring",
            Self::Expired => "expired",
            Self::NamesChanged => "names changed",
            Self::NotSignedByCurrentCa => "not signed by the current CA",
        })
    }
}

/// One step of certificate maintenance, as decided by [`CertBundle::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Renewal {
    /// Nothing to do.
    None,
    /// Issue a new serving certificate from the current CA.
    ReissueServing(ReissueReason),
    /// Generate the next CA and add it to the caBundle (serving certificate unchanged).
    StageNextCa,
    /// Make the next CA current, keep the old one as previous, re-issue the serving certificate.
    PromoteNextCa,
    /// Remove the previous CA from the caBundle.
    DropPreviousCa,
    /// The CA expired with no usable successor: start over with a new CA and serving certificate.
    Regenerate,
}

impl Renewal {
    /// True when applying this action changes [`CertBundle::ca_bundle_pem`], so the webhook
    /// configuration's caBundle must be updated.
    pub fn changes_ca_bundle(&self) -> bool {
        matches!(
            self,
            Self::StageNextCa | Self::PromoteNextCa | Self::DropPreviousCa | Self::Regenerate
        )
    }
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("do nothing"),
            Self::ReissueServing(reason) => {
                write!(f, "re-issue the serving certificate ({reason})")
            }
            Self::StageNextCa => f.write_str("stage the next CA"),
            Self::PromoteNextCa => f.write_str("promote the next CA"),
            Self::DropPreviousCa => f.write_str("drop the previous CA"),
            Self::Regenerate => f.write_str("regenerate the CA and serving certificate"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bundle
// ---------------------------------------------------------------------------------------------

/// The whole certificate state shared by replicas (stored in one Secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    /// The CA that signs the serving certificate.
    pub ca: CaCert,
    /// The serving certificate.
    pub serving: ServingCert,
    /// A staged successor CA, already trusted in the caBundle but not yet signing.
    pub next_ca: Option<CaCert>,
    /// The CA replaced by the last promotion, still trusted for a while (PEM).
    pub previous_ca_pem: Option<String>,
    /// When `next_ca` was staged (the promotion delay counts from here).
    pub next_ca_staged_at: Option<OffsetDateTime>,
    /// When `previous_ca_pem` was replaced (the retention counts from here).
    pub previous_ca_retired_at: Option<OffsetDateTime>,
}

impl CertBundle {
    /// Generates a new CA and a serving certificate for `names` signed by it.
    pub fn generate(
        names: &SubjectNames,
        policy: &CertPolicy,
        now: OffsetDateTime,
    ) -> Result<Self, CertError> {
        policy.validate()?;
        if names.is_empty() {
            return Err(CertError::NoSubjectNames);
        }
        let ca = CaCert::generate(policy, now)?;
        let serving = ServingCert::issue(&ca, names, policy, now)?;
        Ok(Self {
            ca,
            serving,
            next_ca: None,
            previous_ca_pem: None,
            next_ca_staged_at: None,
            previous_ca_retired_at: None,
        })
    }

    /// PEM for the webhook configuration's caBundle: current CA, then the staged next CA, then
    /// the previous CA (kept until [`Renewal::DropPreviousCa`], which `plan` returns once it
    /// expires; see [`Self::ca_bundle_pem_at`] to filter expired ones).
    pub fn ca_bundle_pem(&self) -> String {
        self.ca_bundle_pem_filtered(None)
    }

    /// Like [`Self::ca_bundle_pem`], leaving out a next/previous CA that is expired at `now`.
    pub fn ca_bundle_pem_at(&self, now: OffsetDateTime) -> String {
        self.ca_bundle_pem_filtered(Some(now))
    }

    fn ca_bundle_pem_filtered(&self, now: Option<OffsetDateTime>) -> String {
        let alive = |not_after: Option<OffsetDateTime>| match (now, not_after) {
            (Some(now), Some(not_after)) => now < not_after,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let mut out = String::new();
        push_pem(&mut out, &self.ca.cert_pem);
        if let Some(next) = &self.next_ca
            && alive(Some(next.not_after))
        {
            push_pem(&mut out, &next.cert_pem);
        }
        if let Some(previous) = &self.previous_ca_pem
            && alive(self.previous_ca_not_after())
        {
            push_pem(&mut out, previous);
        }
        out
    }

    /// The serving chain for a TLS server: leaf first, then the current CA (what `tls.crt` holds).
    pub fn serving_chain_pem(&self) -> String {
        let mut out = String::new();
        push_pem(&mut out, &self.serving.cert_pem);
        push_pem(&mut out, &self.ca.cert_pem);
        out
    }

    /// rustls material for the serving chain and key (see [`certified_key`]).
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
        certified_key(&self.serving_chain_pem(), &self.serving.key_pem)
    }

    /// The next thing to do at `now` (at most one action per call; the caller loops until
    /// [`Renewal::None`]).
    pub fn plan(&self, names: &SubjectNames, policy: &CertPolicy, now: OffsetDateTime) -> Renewal {
        // 0. A dead CA cannot sign: switch to a valid successor at once, or start over.
        if now >= self.ca.not_after {
            return match &self.next_ca {
                Some(next) if next.not_before <= now && now < next.not_after => {
                    Renewal::PromoteNextCa
                }
                _ => Renewal::Regenerate,
            };
        }
        // 1. An expired serving certificate breaks every admission call.
        if now >= self.serving.not_after {
            return Renewal::ReissueServing(ReissueReason::Expired);
        }
        // 2./3. CA rotation.
        match &self.next_ca {
            None if now >= self.ca.renew_at(policy) => return Renewal::StageNextCa,
            Some(_) if now >= self.promote_at(policy) => return Renewal::PromoteNextCa,
            _ => {}
        }
        // 4. Wrong issuer or names.
        if !self.serving.signed_by(&self.ca) {
            return Renewal::ReissueServing(ReissueReason::NotSignedByCurrentCa);
        }
        if !names.covered_by(&self.serving) {
            return Renewal::ReissueServing(ReissueReason::NamesChanged);
        }
        // 5. Routine renewal (pointless while the certificate already ends with the CA).
        if self.serving_renewable() && now >= self.serving.renew_at(policy) {
            return Renewal::ReissueServing(ReissueReason::Expiring);
        }
        // 6. Retire the previous CA.
        if self.previous_ca_pem.is_some() && now >= self.drop_previous_at(policy) {
            return Renewal::DropPreviousCa;
        }
        Renewal::None
    }

    /// Performs `action` at `now`, returning the new bundle (`self` is unchanged).
    pub fn apply(
        &self,
        action: &Renewal,
        names: &SubjectNames,
        policy: &CertPolicy,
        now: OffsetDateTime,
    ) -> Result<Self, CertError> {
        policy.validate()?;
        let mut next = self.clone();
        match action {
            Renewal::None => {}
            Renewal::Regenerate => return Self::generate(names, policy, now),
            Renewal::ReissueServing(_) => {
                next.serving = ServingCert::issue(&self.ca, names, policy, now)?;
            }
            Renewal::StageNextCa => {
                next.next_ca = Some(CaCert::generate(policy, now)?);
                next.next_ca_staged_at = Some(now);
            }
            Renewal::PromoteNextCa => {
                let Some(new_ca) = self.next_ca.clone() else {
                    return Err(CertError::NotApplicable {
                        action: *action,
                        reason: "no next CA is staged",
                    });
                };
                next.serving = ServingCert::issue(&new_ca, names, policy, now)?;
                next.previous_ca_pem = Some(self.ca.cert_pem.clone());
                next.previous_ca_retired_at = Some(now);
                next.ca = new_ca;
                next.next_ca = None;
                next.next_ca_staged_at = None;
            }
            Renewal::DropPreviousCa => {
                if self.previous_ca_pem.is_none() {
                    return Err(CertError::NotApplicable {
                        action: *action,
                        reason: "there is no previous CA",
                    });
                }
                next.previous_ca_pem = None;
                next.previous_ca_retired_at = None;
            }
        }
        Ok(next)
    }

    /// Earliest instant at which `plan` may return something other than [`Renewal::None`]
    /// (assuming unchanged names); may be in the past when an action is already due.
    pub fn next_action_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        let mut at = self.ca.not_after.min(self.serving.not_after);
        at = at.min(match &self.next_ca {
            None => self.ca.renew_at(policy),
            Some(_) => self.promote_at(policy),
        });
        if !self.serving.signed_by(&self.ca) {
            at = at.min(self.serving.not_before);
        }
        if self.serving_renewable() {
            at = at.min(self.serving.renew_at(policy));
        }
        if self.previous_ca_pem.is_some() {
            at = at.min(self.drop_previous_at(policy));
        }
        at
    }

    /// The Secret `data` map (see [`secret_keys`]); `tls.crt` is the serving chain
    /// (leaf + CA).
    pub fn to_secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            data.insert(key.to_owned(), value.into_bytes());
        };
        put(TLS_CRT, self.serving_chain_pem());
        put(TLS_KEY, self.serving.key_pem.clone());
        put(CA_CRT, self.ca.cert_pem.clone());
        put(CA_KEY, self.ca.key_pem.clone());
        if let Some(next) = &self.next_ca {
            put(CA_NEXT_CRT, next.cert_pem.clone());
            put(CA_NEXT_KEY, next.key_pem.clone());
            if let Some(at) = self.next_ca_staged_at.and_then(format_timestamp) {
                put(CA_NEXT_STAGED_AT, at);
            }
        }
        if let Some(previous) = &self.previous_ca_pem {
            put(CA_PREVIOUS_CRT, previous.clone());
            if let Some(at) = self.previous_ca_retired_at.and_then(format_timestamp) {
                put(CA_PREVIOUS_RETIRED_AT, at);
            }
        }
        data
    }

    /// Parses and validates a Secret `data` map: every key must match its certificate and the
    /// serving certificate must be signed by the CA (a serving certificate signed by the next
    /// or previous CA is accepted too; `plan` then re-issues it).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CertError> {
        // Serving chain first, so a missing/garbled `tls.crt` is reported as such.
        let chain = cert_ders(TLS_CRT, required(data, TLS_CRT)?)?;
        let Some(leaf_der) = chain.into_iter().next() else {
            return Err(pem_error(TLS_CRT, "no CERTIFICATE block"));
        };
        let leaf = ParsedCert::parse(TLS_CRT, &leaf_der)?;
        if leaf.is_ca {
            return Err(CertError::InvalidCertificate {
                key: TLS_CRT.into(),
                reason: "the first certificate is a CA; expected the serving (leaf) certificate"
                    .into(),
            });
        }
        let serving_key = parse_key_pair(TLS_KEY, required(data, TLS_KEY)?)?;
        if serving_key.subject_public_key_info() != leaf.spki {
            return Err(CertError::KeyMismatch {
                cert: TLS_CRT.into(),
                key: TLS_KEY.into(),
            });
        }

        let ca = CaCert::from_secret(data, CA_CRT, CA_KEY)?;
        let next_ca = match (
            data.contains_key(CA_NEXT_CRT),
            data.contains_key(CA_NEXT_KEY),
        ) {
            (false, false) => None,
            (true, false) => return Err(missing(CA_NEXT_KEY)),
            (false, true) => return Err(missing(CA_NEXT_CRT)),
            (true, true) => Some(CaCert::from_secret(data, CA_NEXT_CRT, CA_NEXT_KEY)?),
        };
        let previous_der = match data.get(CA_PREVIOUS_CRT) {
            None => None,
            Some(bytes) => {
                let der = first_cert_der(CA_PREVIOUS_CRT, bytes)?;
                if !ParsedCert::parse(CA_PREVIOUS_CRT, &der)?.is_ca {
                    return Err(CertError::NotCa {
                        key: CA_PREVIOUS_CRT.into(),
                    });
                }
                Some(der)
            }
        };

        let ca_der = first_cert_der(CA_CRT, ca.cert_pem.as_bytes())?;
        let mut candidates = vec![(ca_der, ca.spki_der.clone())];
        if let Some(next) = &next_ca {
            let der = first_cert_der(CA_NEXT_CRT, next.cert_pem.as_bytes())?;
            candidates.push((der, next.spki_der.clone()));
        }
        if let Some(der) = &previous_der {
            let spki = ParsedCert::parse(CA_PREVIOUS_CRT, der)?.spki;
            candidates.push((der.clone(), spki));
        }
        let issuer_spki_der = candidates
            .into_iter()
            .find(|(ca_der, _)| signature_verifies(&leaf_der, ca_der))
            .map(|(_, spki)| spki)
            .ok_or_else(|| CertError::NotSignedByCa {
                key: TLS_CRT.into(),
                ca_key: CA_CRT.into(),
            })?;

        let serving = ServingCert {
            cert_pem: cert_pem_from_der(&leaf_der),
            key_pem: serving_key.serialize_pem(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            dns: leaf.dns,
            ips: leaf.ips,
            issuer_spki_der,
        };

        // Missing timestamps (hand-made Secret): fall back to conservative estimates that can
        // only delay promotion/dropping, never hasten it.
        let next_ca_staged_at =
            match &next_ca {
                None => None,
                Some(next) => Some(parse_timestamp(data, CA_NEXT_STAGED_AT)?.unwrap_or_else(
                    || add_saturating_time(next.not_before, MAX_BACKDATE_AND_ROUNDING),
                )),
            };
        let previous_ca_retired_at = match &previous_der {
            None => None,
            Some(_) => Some(
                parse_timestamp(data, CA_PREVIOUS_RETIRED_AT)?.unwrap_or_else(|| {
                    add_saturating_time(serving.not_before, MAX_BACKDATE_AND_ROUNDING)
                }),
            ),
        };

        Ok(Self {
            ca,
            serving,
            next_ca,
            previous_ca_pem: previous_der.as_deref().map(cert_pem_from_der),
            next_ca_staged_at,
            previous_ca_retired_at,
        })
    }

    /// When the staged next CA becomes due for promotion.
    fn promote_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        let staged = self.next_ca_staged_at.unwrap_or_else(|| {
            self.next_ca.as_ref().map_or(self.ca.not_before, |next| {
                add_saturating_time(next.not_before, MAX_BACKDATE_AND_ROUNDING)
            })
        });
        add_saturating(staged, policy.ca_promote_delay)
    }

    /// When the previous CA becomes due for removal (its expiry or end of retention).
    fn drop_previous_at(&self, policy: &CertPolicy) -> OffsetDateTime {
        let retired = self.previous_ca_retired_at.unwrap_or_else(|| {
            add_saturating_time(self.serving.not_before, MAX_BACKDATE_AND_ROUNDING)
        });
        let retention_end = add_saturating(retired, policy.previous_ca_retention);
        // An unreadable previous CA is useless: drop it right away.
        let expiry = self
            .previous_ca_not_after()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        retention_end.min(expiry)
    }

    fn previous_ca_not_after(&self) -> Option<OffsetDateTime> {
        let pem = self.previous_ca_pem.as_ref()?;
        let der = first_cert_der(CA_PREVIOUS_CRT, pem.as_bytes()).ok()?;
        ParsedCert::parse(CA_PREVIOUS_CRT, &der)
            .ok()
            .map(|p| p.not_after)
    }

    /// False when the serving certificate already ends when the CA does, so re-issuing it
    /// could not extend it (CA rotation will).
    fn serving_renewable(&self) -> bool {
        self.serving.not_after < self.ca.not_after
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates from files and rustls material
// ---------------------------------------------------------------------------------------------

/// Certificate, key and optional CA loaded from PEM files (e.g. mounted from cert-manager);
/// the server reloads them when they change.
#[derive(Clone, PartialEq, Eq)]
pub struct FileCerts {
    /// Certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// Private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key_pem: String,
    /// CA certificate(s) for the caBundle, if a CA file was given.
    pub ca_pem: Option<String>,
}

impl fmt::Debug for FileCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCerts")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"[elided]")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

impl FileCerts {
    /// Reads the files and checks that they are usable: the chain and key parse and belong
    /// together, and the CA file (if any) holds at least one certificate.
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Self, CertError> {
        let cert_chain_pem = read_text(cert)?;
        let key_pem = read_text(key)?;
        let ca_pem = ca.map(read_text).transpose()?;
        if let (Some(path), Some(pem)) = (ca, &ca_pem) {
            cert_ders(&path.display().to_string(), pem.as_bytes())?;
        }
        rustls_material(
            &cert.display().to_string(),
            &cert_chain_pem,
            &key.display().to_string(),
            &key_pem,
        )?;
        Ok(Self {
            cert_chain_pem,
            key_pem,
            ca_pem,
        })
    }

    /// rustls material for these files (see [`certified_key`]).
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
        certified_key(&self.cert_chain_pem, &self.key_pem)
    }

    /// Expiry of the leaf certificate (for logging and for scheduling a reload check).
    pub fn leaf_not_after(&self) -> Result<OffsetDateTime, CertError> {
        let der = first_cert_der("certificate chain", self.cert_chain_pem.as_bytes())?;
        Ok(ParsedCert::parse("certificate chain", &der)?.not_after)
    }
}

/// rustls material: the serving chain (leaf first, then the signing CA) and key, for a
/// hot-swappable resolver; uses the ring provider explicitly and checks the key matches the leaf.
pub fn certified_key(
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
    rustls_material("certificate chain", cert_chain_pem, "private key", key_pem)
}

fn rustls_material(
    cert_name: &str,
    cert_chain_pem: &str,
    key_name: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = cert_ders(cert_name, cert_chain_pem.as_bytes())?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = private_key_der(key_name, key_pem.as_bytes())?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(certified) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(CertError::KeyMismatch {
            cert: cert_name.into(),
            key: key_name.into(),
        }),
        Err(e) => Err(e.into()),
    }
}

fn private_key_der(key: &str, pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    for block in pem_blocks(key, pem_bytes)? {
        let der = block.contents().to_vec();
        match block.tag() {
            "PRIVATE KEY" => return Ok(PrivatePkcs8KeyDer::from(der).into()),
            "EC PRIVATE KEY" => return Ok(PrivateSec1KeyDer::from(der).into()),
            "RSA PRIVATE KEY" => return Ok(PrivatePkcs1KeyDer::from(der).into()),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(CertError::InvalidKey {
                    key: key.into(),
                    reason: "encrypted private keys are not supported".into(),
                });
            }
            _ => {}
        }
    }
    Err(pem_error(key, "no PRIVATE KEY block"))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What this module needs from a parsed X.509 certificate.
struct ParsedCert {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    spki: Vec<u8>,
    is_ca: bool,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl ParsedCert {
    fn parse(key: &str, der: &[u8]) -> Result<Self, CertError> {
        let invalid = |reason: String| CertError::InvalidCertificate {
            key: key.into(),
            reason,
        };
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| invalid(format!("bad subjectAltName: {e}")))?;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            spki: cert.public_key().raw.to_vec(),
            is_ca: cert.is_ca(),
            dns,
            ips,
        })
    }
}

/// True when `cert_der` carries a valid signature by the key of `issuer_der`.
fn signature_verifies(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(issuer_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn missing(key: &str) -> CertError {
    CertError::MissingKey { key: key.into() }
}

fn pem_error(key: &str, reason: impl Into<String>) -> CertError {
    CertError::InvalidPem {
        key: key.into(),
        reason: reason.into(),
    }
}

fn required<'a>(data: &'a BTreeMap<String, Vec<u8>>, key: &str) -> Result<&'a [u8], CertError> {
    data.get(key).map(Vec::as_slice).ok_or_else(|| missing(key))
}

fn utf8<'a>(key: &str, bytes: &'a [u8]) -> Result<&'a str, CertError> {
    std::str::from_utf8(bytes).map_err(|_| CertError::NotUtf8 { key: key.into() })
}

fn pem_blocks(key: &str, bytes: &[u8]) -> Result<Vec<pem::Pem>, CertError> {
    let text = utf8(key, bytes)?;
    let blocks = pem::parse_many(text).map_err(|e| pem_error(key, e.to_string()))?;
    if blocks.is_empty() {
        return Err(pem_error(key, "no PEM block found"));
    }
    Ok(blocks)
}

/// DER of every `CERTIFICATE` block (at least one).
fn cert_ders(key: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let ders: Vec<Vec<u8>> = pem_blocks(key, bytes)?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if ders.is_empty() {
        return Err(pem_error(key, "no CERTIFICATE block"));
    }
    Ok(ders)
}

fn first_cert_der(key: &str, bytes: &[u8]) -> Result<Vec<u8>, CertError> {
    cert_ders(key, bytes)?
        .into_iter()
        .next()
        .ok_or_else(|| pem_error(key, "no CERTIFICATE block"))
}

fn parse_key_pair(key: &str, bytes: &[u8]) -> Result<KeyPair, CertError> {
    let blocks = pem_blocks(key, bytes)?;
    let Some(block) = blocks.iter().find(|b| b.tag() == "PRIVATE KEY") else {
        return Err(pem_error(key, "no PKCS#8 PRIVATE KEY block"));
    };
    KeyPair::try_from(block.contents()).map_err(|e| CertError::InvalidKey {
        key: key.into(),
        reason: e.to_string(),
    })
}

fn cert_pem_from_der(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

fn push_pem(out: &mut String, pem: &str) {
    let pem = pem.trim();
    if !pem.is_empty() {
        out.push_str(pem);
        out.push('\n');
    }
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn format_timestamp(t: OffsetDateTime) -> Option<String> {
    t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

fn parse_timestamp(
    data: &BTreeMap<String, Vec<u8>>,
    key: &str,
) -> Result<Option<OffsetDateTime>, CertError> {
    let Some(bytes) = data.get(key) else {
        return Ok(None);
    };
    let invalid = || CertError::InvalidTimestamp {
        key: key.into(),
        value: String::from_utf8_lossy(bytes).into_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map(Some)
        .map_err(|_| invalid())
}

fn truncate_chars(s: &str, max: usize) -> &str {
    s.char_indices()
        .nth(max)
        .and_then(|(i, _)| s.get(..i))
        .unwrap_or(s)
}

fn to_time_duration(d: StdDuration) -> Option<Duration> {
    Duration::try_from(d).ok()
}

fn add_saturating(t: OffsetDateTime, d: StdDuration) -> OffsetDateTime {
    add_saturating_time(t, to_time_duration(d).unwrap_or(Duration::MAX))
}

/// `t + d`, saturating at the largest instant `time` can represent.
fn add_saturating_time(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    t.checked_add(d).unwrap_or_else(|| {
        time::PrimitiveDateTime::MAX
            .assume_utc()
            .to_offset(t.offset())
    })
}

/// Clock-skew allowance: `not_before` is set this far before issuance.
fn backdate(validity: Duration) -> Duration {
    MAX_BACKDATE.min(validity / 10)
}

/// `[not_before, not_after]` for a certificate issued at `now` for `validity`, backdated for
/// clock skew and widened to whole seconds (X.509 resolution), in UTC.
fn validity_window(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let out_of_range = || {
        CertError::InvalidPolicy(format!(
            "validity {validity} from {now} is outside the representable range"
        ))
    };
    if !validity.is_positive() {
        return Err(CertError::InvalidPolicy(format!(
            "validity must be positive, got {validity}"
        )));
    }
    let now = now.to_offset(UtcOffset::UTC);
    let start = now
        .checked_sub(backdate(validity))
        .ok_or_else(out_of_range)?;
    let end = now.checked_add(validity).ok_or_else(out_of_range)?;
    let floor = |t: OffsetDateTime| t.checked_sub(Duration::nanoseconds(i64::from(t.nanosecond())));
    let not_before = floor(start).ok_or_else(out_of_range)?;
    let not_after = if end.nanosecond() == 0 {
        end
    } else {
        floor(end)
            .and_then(|t| t.checked_add(Duration::SECOND))
            .ok_or_else(out_of_range)?
    };
    Ok((not_before, not_after))
}

/// `not_before + fraction * (not_after - not_before)`, to the nanosecond-ish (f64 seconds).
fn renew_point(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
) -> OffsetDateTime {
    let window = not_after - not_before;
    if !window.is_positive() {
        return not_before;
    }
    Duration::checked_seconds_f64(window.as_seconds_f64() * fraction)
        .and_then(|offset| not_before.checked_add(offset))
        .unwrap_or(not_after)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    /// 2030-03-17T17:46:40Z: a whole second, far from the real clock.
    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
    }

    fn s(n: i64) -> Duration {
        Duration::seconds(n)
    }

    fn ms(n: i64) -> Duration {
        Duration::milliseconds(n)
    }

    fn names() -> SubjectNames {
        SubjectNames::for_service("hook", "system")
    }

    /// CA 3000 s (backdate 300 s), serving 300 s (backdate 30 s), promote after 60 s,
    /// previous kept 120 s.
    fn short_policy() -> CertPolicy {
        CertPolicy {
            ca_validity: StdDuration::from_secs(3000),
            serving_validity: StdDuration::from_secs(300),
            renew_fraction: 2.0 / 3.0,
            ca_promote_delay: StdDuration::from_secs(60),
            previous_ca_retention: StdDuration::from_secs(120),
            ..CertPolicy::default()
        }
    }

    fn pem_count(pem: &str) -> usize {
        pem::parse_many(pem).unwrap().len()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        first_cert_der("test", pem.as_bytes()).unwrap()
    }

    /// Whether `leaf_pem` verifies against any certificate of `bundle_pem`.
    fn trusted_by(leaf_pem: &str, bundle_pem: &str) -> bool {
        let leaf = der_of(leaf_pem);
        cert_ders("bundle", bundle_pem.as_bytes())
            .unwrap()
            .iter()
            .any(|ca| signature_verifies(&leaf, ca))
    }

    fn with(
        data: &BTreeMap<String, Vec<u8>>,
        key: &str,
        value: &[u8],
    ) -> BTreeMap<String, Vec<u8>> {
        let mut data = data.clone();
        data.insert(key.to_owned(), value.to_vec());
        data
    }

    fn without(data: &BTreeMap<String, Vec<u8>>, key: &str) -> BTreeMap<String, Vec<u8>> {
        let mut data = data.clone();
        data.remove(key);
        data
    }

    // ---- rustls handshake harness ------------------------------------------------------------

    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// An in-memory TLS handshake: server presents `key`, client trusts `trusted_pem`.
    fn handshake(
        key: Arc<rustls::sign::CertifiedKey>,
        trusted_pem: &str,
        server_name: &str,
    ) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        let mut roots = rustls::RootCertStore::empty();
        for der in cert_ders("trusted", trusted_pem.as_bytes()).unwrap() {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server_cfg))?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    // ---- clocks ------------------------------------------------------------------------------

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Arc::new(ManualClock::new(t0()));
        let shared: Arc<dyn Clock> = clock.clone();
        assert_eq!(shared.now(), t0());
        clock.advance(StdDuration::from_millis(1500));
        assert_eq!(shared.now(), t0() + ms(1500));
        clock.set(t0() - s(10));
        assert_eq!(clock.now(), t0() - s(10));
        clock.advance(StdDuration::MAX);
        assert!(clock.now() > t0() + Duration::days(365 * 1000));

        let real = SystemClock.now();
        assert!((real - OffsetDateTime::now_utc()).abs() < s(5));
    }

    // ---- names ---------------------------------------------------------------------------------

    #[test]
    fn subject_names_for_service_host_and_merge() {
        assert_eq!(
            names().dns,
            [
                "hook",
                "hook.system",
                "hook.system.svc",
                "hook.system.svc.cluster.local"
            ]
        );
        assert!(names().ips.is_empty());

        let ip = SubjectNames::for_host("10.1.2.3");
        assert_eq!(ip.ips, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert!(ip.dns.is_empty());
        let v6 = SubjectNames::for_host("[fd00::1]");
        assert_eq!(v6.ips, ["fd00::1".parse::<IpAddr>().unwrap()]);
        let dns = SubjectNames::for_host(" Webhook.Example.com. ");
        assert_eq!(dns.dns, ["webhook.example.com"]);
        assert!(dns.ips.is_empty());
        assert!(SubjectNames::for_host("").is_empty());

        let merged = names()
            .merge(SubjectNames::for_service("HOOK", "system"))
            .merge(ip.clone())
            .merge(ip);
        assert_eq!(merged.dns.len(), 4, "case-insensitive duplicates dropped");
        assert_eq!(merged.ips.len(), 1);
    }

    // ---- generation and contents ---------------------------------------------------------------

    #[test]
    fn service_mode_certificate_contents() {
        let policy = CertPolicy::default();
        let b = CertBundle::generate(&names(), &policy, t0()).unwrap();

        // Serving leaf.
        let leaf_der = der_of(&b.serving.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let san: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(san, names().dns);
        assert_eq!(b.serving.dns, names().dns);
        assert!(b.serving.ips.is_empty());
        let cn: Vec<_> = leaf.subject().iter_common_name().collect();
        assert_eq!(cn.len(), 1);
        assert_eq!(cn[0].as_str().unwrap(), "hook");
        assert!(!leaf.is_ca());
        assert!(
            leaf.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        assert_eq!(b.serving.not_before, t0() - Duration::minutes(5));
        assert_eq!(b.serving.not_after, t0() + Duration::days(90));
        assert_eq!(leaf.validity().not_after.to_datetime(), b.serving.not_after);

        // CA.
        let ca_der = der_of(&b.ca.cert_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
        let ca_cn = ca.subject().iter_common_name().next().unwrap();
        let ca_cn = ca_cn.as_str().unwrap();
        assert!(
            ca_cn.starts_with("eirinix-ca-") && ca_cn.len() == 23,
            "{ca_cn}"
        );
        assert_eq!(b.ca.not_before, t0() - Duration::minutes(5));
        assert_eq!(b.ca.not_after, t0() + Duration::days(3650));

        // ECDSA P-256 keys.
        for key in [&b.ca.key_pem, &b.serving.key_pem] {
            let kp = KeyPair::from_pem(key).unwrap();
            assert_eq!(kp.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        }
        assert_eq!(b.ca_bundle_pem().trim(), b.ca.cert_pem.trim());
        assert!(
            !format!("{b:?}").contains("PRIVATE KEY"),
            "Debug leaks a key"
        );
    }

    #[test]
    fn url_mode_ip_san_and_custom_ca_name() {
        let policy = CertPolicy {
            ca_common_name: "my-webhook-ca".into(),
            ..CertPolicy::default()
        };
        let host = SubjectNames::for_host("10.1.2.3");
        let b = CertBundle::generate(&host, &policy, t0()).unwrap();
        let leaf_der = der_of(&b.serving.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let ips: Vec<&[u8]> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::IPAddress(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        assert_eq!(ips, [&[10u8, 1, 2, 3][..]]);
        assert_eq!(b.serving.ips, host.ips);
        let cn = leaf.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "10.1.2.3");
        let ca_der = der_of(&b.ca.cert_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let ca_cn = ca.subject().iter_common_name().next().unwrap();
        assert!(ca_cn.as_str().unwrap().starts_with("my-webhook-ca-"));
    }

    #[test]
    fn generate_rejects_bad_input() {
        assert!(matches!(
            CertBundle::generate(&SubjectNames::default(), &CertPolicy::default(), t0()),
            Err(CertError::NoSubjectNames)
        ));
        for f in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let policy = CertPolicy {
                renew_fraction: f,
                ..CertPolicy::default()
            };
            let err = CertBundle::generate(&names(), &policy, t0()).unwrap_err();
            assert!(matches!(err, CertError::InvalidPolicy(_)), "{f}: {err}");
        }
        // A 1 s certificate would be due for renewal as soon as issued.
        let policy = CertPolicy {
            serving_validity: StdDuration::from_secs(1),
            ..CertPolicy::default()
        };
        assert!(matches!(
            policy.validate(),
            Err(CertError::InvalidPolicy(_))
        ));
        let policy = CertPolicy {
            ca_validity: StdDuration::ZERO,
            ..CertPolicy::default()
        };
        assert!(matches!(
            policy.validate(),
            Err(CertError::InvalidPolicy(_))
        ));
        assert!(CertPolicy::default().validate().is_ok());
        assert!(short_policy().validate().is_ok());
    }

    #[test]
    fn chain_verifies() {
        let b = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
        let other = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
        let leaf = der_of(&b.serving.cert_pem);
        let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let ca = der_of(&b.ca.cert_pem);
        let (_, ca_x) = x509_parser::parse_x509_certificate(&ca).unwrap();
        assert!(leaf_x.verify_signature(Some(ca_x.public_key())).is_ok());
        assert!(ca_x.verify_signature(None).is_ok(), "CA is self-signed");
        assert_eq!(leaf_x.issuer(), ca_x.subject());
        assert!(!signature_verifies(&leaf, &der_of(&other.ca.cert_pem)));
        assert!(b.serving.signed_by(&b.ca));
        assert!(!b.serving.signed_by(&other.ca));
    }

    #[test]
    fn rustls_handshake_service_and_ip() {
        let now = OffsetDateTime::now_utc();
        let all = names().merge(SubjectNames::for_host("10.1.2.3"));
        let b = CertBundle::generate(&all, &CertPolicy::default(), now).unwrap();
        let key = b.certified_key().unwrap();
        assert_eq!(key.cert.len(), 2, "leaf + CA");
        assert_eq!(key.cert[0].as_ref(), der_of(&b.serving.cert_pem).as_slice());
        assert_eq!(key.cert[1].as_ref(), der_of(&b.ca.cert_pem).as_slice());

        handshake(key.clone(), &b.ca_bundle_pem(), "hook.system.svc").unwrap();
        handshake(
            key.clone(),
            &b.ca_bundle_pem(),
            "hook.system.svc.cluster.local",
        )
        .unwrap();
        handshake(key.clone(), &b.ca_bundle_pem(), "10.1.2.3").unwrap();
        assert!(handshake(key.clone(), &b.ca_bundle_pem(), "other.system.svc").is_err());
        let other = CertBundle::generate(&all, &CertPolicy::default(), now).unwrap();
        assert!(handshake(key, &other.ca_bundle_pem(), "hook.system.svc").is_err());
    }

    // ---- secret data -----------------------------------------------------------------------------

    #[test]
    fn secret_data_round_trip() {
        let p = short_policy();
        let b = CertBundle::generate(&names(), &p, t0()).unwrap();
        let data = b.to_secret_data();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ca.crt", "ca.key", "tls.crt", "tls.key"]
        );
        let tls_crt = std::str::from_utf8(&data["tls.crt"]).unwrap();
        assert_eq!(pem_count(tls_crt), 2, "tls.crt is leaf + CA");
        assert_eq!(der_of(tls_crt), der_of(&b.serving.cert_pem), "leaf first");
        assert_eq!(CertBundle::from_secret_data(&data).unwrap(), b);

        // With next and previous CA and their timestamps (sub-second instants).
        let t = t0() + ms(1234);
        let b = b.apply(&Renewal::StageNextCa, &names(), &p, t).unwrap();
        let b = b
            .apply(&Renewal::PromoteNextCa, &names(), &p, t + ms(61_500))
            .unwrap();
        let b = b
            .apply(&Renewal::StageNextCa, &names(), &p, t + ms(62_750))
            .unwrap();
        let data = b.to_secret_data();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "ca-next.crt",
                "ca-next.key",
                "ca-next.staged-at",
                "ca-previous.crt",
                "ca-previous.retired-at",
                "ca.crt",
                "ca.key",
                "tls.crt",
                "tls.key"
            ]
        );
        assert_eq!(data["ca-next.staged-at"], b"2030-03-17T17:47:43.984Z");
        let back = CertBundle::from_secret_data(&data).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.next_ca_staged_at, Some(t + ms(62_750)));
        assert_eq!(back.previous_ca_retired_at, Some(t + ms(61_500)));

        // Without the timestamps: conservative fallbacks (never earlier than the truth).
        let data = without(&without(&data, CA_NEXT_STAGED_AT), CA_PREVIOUS_RETIRED_AT);
        let back = CertBundle::from_secret_data(&data).unwrap();
        assert!(back.next_ca_staged_at.unwrap() >= b.next_ca_staged_at.unwrap());
        assert!(back.previous_ca_retired_at.unwrap() >= b.previous_ca_retired_at.unwrap());
    }

    #[test]
    fn from_secret_data_errors() {
        let p = CertPolicy::default();
        let b = CertBundle::generate(&names(), &p, t0()).unwrap();
        let other = CertBundle::generate(&names(), &p, t0()).unwrap();
        let data = b.to_secret_data();
        let other_data = other.to_secret_data();
        let err = |d: &BTreeMap<String, Vec<u8>>| CertBundle::from_secret_data(d).unwrap_err();

        for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
            let e = err(&without(&data, key));
            assert!(
                matches!(&e, CertError::MissingKey { key: k } if k == key),
                "{e}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }

        let e = err(&with(&data, "tls.crt", b"not a certificate"));
        assert!(
            matches!(&e, CertError::InvalidPem { key, .. } if key == "tls.crt"),
            "{e}"
        );
        let junk = b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let e = err(&with(&data, "tls.crt", junk));
        assert!(
            matches!(&e, CertError::InvalidCertificate { key, .. } if key == "tls.crt"),
            "{e}"
        );
        let e = err(&with(&data, "ca.crt", b"garbage"));
        assert!(
            matches!(&e, CertError::InvalidPem { key, .. } if key == "ca.crt"),
            "{e}"
        );
        let e = err(&with(&data, "ca.key", b"garbage"));
        assert!(
            matches!(&e, CertError::InvalidPem { key, .. } if key == "ca.key"),
            "{e}"
        );
        let bad_key = b"-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
        let e = err(&with(&data, "ca.key", bad_key));
        assert!(
            matches!(&e, CertError::InvalidKey { key, .. } if key == "ca.key"),
            "{e}"
        );
        let e = err(&with(&data, "tls.key", &[0xff, 0xfe, 0x00]));
        assert!(
            matches!(&e, CertError::NotUtf8 { key } if key == "tls.key"),
            "{e}"
        );

        // Keys that do not match their certificates.
        let e = err(&with(&data, "tls.key", &other_data["tls.key"]));
        assert!(
            matches!(&e, CertError::KeyMismatch { cert, key } if cert == "tls.crt" && key == "tls.key"),
            "{e}"
        );
        let e = err(&with(&data, "ca.key", &other_data["ca.key"]));
        assert!(
            matches!(&e, CertError::KeyMismatch { cert, key } if cert == "ca.crt" && key == "ca.key"),
            "{e}"
        );

        // A consistent CA that did not sign the serving certificate.
        let mixed = with(
            &with(&data, "ca.crt", &other_data["ca.crt"]),
            "ca.key",
            &other_data["ca.key"],
        );
        let e = err(&mixed);
        assert!(
            matches!(&e, CertError::NotSignedByCa { key, .. } if key == "tls.crt"),
            "{e}"
        );

        // Swapped roles.
        let e = err(&with(
            &with(&data, "ca.crt", &data["tls.crt"]),
            "ca.key",
            &data["tls.key"],
        ));
        assert!(
            matches!(&e, CertError::NotCa { key } if key == "ca.crt"),
            "{e}"
        );
        let e = err(&with(
            &with(&data, "tls.crt", &data["ca.crt"]),
            "tls.key",
            &data["ca.key"],
        ));
        assert!(
            matches!(&e, CertError::InvalidCertificate { key, .. } if key == "tls.crt"),
            "{e}"
        );

        // Half a next CA, bad timestamps.
        let e = err(&with(&data, "ca-next.crt", &other_data["ca.crt"]));
        assert!(
            matches!(&e, CertError::MissingKey { key } if key == "ca-next.key"),
            "{e}"
        );
        let staged = b
            .apply(&Renewal::StageNextCa, &names(), &p, t0() + s(1))
            .unwrap()
            .to_secret_data();
        assert!(CertBundle::from_secret_data(&staged).is_ok());
        let e = err(&with(&staged, "ca-next.staged-at", b"yesterday"));
        assert!(
            matches!(&e, CertError::InvalidTimestamp { key, .. } if key == "ca-next.staged-at"),
            "{e}"
        );
        let e = err(&with(&staged, "ca-next.key", &other_data["ca.key"]));
        assert!(
            matches!(&e, CertError::KeyMismatch { cert, .. } if cert == "ca-next.crt"),
            "{e}"
        );
    }

    // ---- plan: each rule at its instant -------------------------------------------------------------

    #[test]
    fn plan_serving_renew_and_expiry_points() {
        let p = short_policy();
        let clock = ManualClock::new(t0());
        let b = CertBundle::generate(&names(), &p, clock.now()).unwrap();
        // Window [t0-30s, t0+300s] = 330 s; 2/3 of it is 220 s after not_before.
        assert_eq!(b.serving.not_before, t0() - s(30));
        assert_eq!(b.serving.not_after, t0() + s(300));
        let renew = t0() + s(190);
        assert_eq!(b.serving.renew_at(&p), renew);
        assert_eq!(b.next_action_at(&p), renew);
        assert_eq!(b.plan(&names(), &p, clock.now()), Renewal::None);

        clock.set(renew - ms(1));
        assert_eq!(b.plan(&names(), &p, clock.now()), Renewal::None);
        clock.advance(StdDuration::from_millis(1));
        assert_eq!(
            b.plan(&names(), &p, clock.now()),
            Renewal::ReissueServing(ReissueReason::Expiring)
        );
        clock.set(t0() + s(300) - ms(1));
        assert_eq!(
            b.plan(&names(), &p, clock.now()),
            Renewal::ReissueServing(ReissueReason::Expiring)
        );
        clock.advance(StdDuration::from_millis(1));
        let action = b.plan(&names(), &p, clock.now());
        assert_eq!(action, Renewal::ReissueServing(ReissueReason::Expired));

        let b2 = b.apply(&action, &names(), &p, clock.now()).unwrap();
        assert_eq!(b2.plan(&names(), &p, clock.now()), Renewal::None);
        assert_eq!(b2.ca, b.ca, "reissue keeps the CA");
        assert_ne!(b2.serving.key_pem, b.serving.key_pem, "fresh key");
        assert_eq!(b2.serving.not_after, t0() + s(600));
        assert_eq!(b2.ca_bundle_pem(), b.ca_bundle_pem());
        assert!(!action.changes_ca_bundle());
    }

    #[test]
    fn plan_ca_rotation_points_and_bundle_contents() {
        let p = short_policy();
        let n = names();
        let clock = ManualClock::new(t0());
        let b0 = CertBundle::generate(&n, &p, clock.now()).unwrap();
        assert_eq!(pem_count(&b0.ca_bundle_pem()), 1);
        // CA window [t0-300s, t0+3000s] = 3300 s; renew 2200 s after not_before.
        let ca_renew = t0() + s(1900);
        assert_eq!(b0.ca.renew_at(&p), ca_renew);

        // Keep the serving certificate fresh so only the CA rule can fire.
        clock.set(ca_renew - s(20));
        let b1 = b0
            .apply(&b0.plan(&n, &p, clock.now()), &n, &p, clock.now())
            .unwrap();
        assert_eq!(b1.plan(&n, &p, clock.now()), Renewal::None);
        assert_eq!(b1.next_action_at(&p), ca_renew);
        assert_eq!(b1.plan(&n, &p, ca_renew - ms(1)), Renewal::None);
        clock.set(ca_renew);
        assert_eq!(b1.plan(&n, &p, clock.now()), Renewal::StageNextCa);

        // Stage: bundle = current + next; serving unchanged.
        let b2 = b1
            .apply(&Renewal::StageNextCa, &n, &p, clock.now())
            .unwrap();
        let next = b2.next_ca.clone().unwrap();
        assert_eq!(b2.serving, b1.serving);
        assert_eq!(b2.ca, b1.ca);
        assert_eq!(b2.next_ca_staged_at, Some(ca_renew));
        let bundle2 = b2.ca_bundle_pem();
        assert_eq!(pem_count(&bundle2), 2);
        let ders2 = cert_ders("b", bundle2.as_bytes()).unwrap();
        assert_eq!(ders2[0], der_of(&b1.ca.cert_pem));
        assert_eq!(ders2[1], der_of(&next.cert_pem));
        assert_eq!(b2.plan(&n, &p, clock.now()), Renewal::None);

        // Promote exactly ca_promote_delay after staging.
        let promote = ca_renew + s(60);
        assert_eq!(b2.next_action_at(&p), promote);
        assert_eq!(b2.plan(&n, &p, promote - ms(1)), Renewal::None);
        clock.set(promote);
        assert_eq!(b2.plan(&n, &p, clock.now()), Renewal::PromoteNextCa);
        let b3 = b2
            .apply(&Renewal::PromoteNextCa, &n, &p, clock.now())
            .unwrap();
        assert_eq!(b3.ca, next);
        assert!(b3.next_ca.is_none());
        assert_eq!(b3.previous_ca_pem.as_deref(), Some(b1.ca.cert_pem.as_str()));
        assert_eq!(b3.previous_ca_retired_at, Some(promote));
        assert!(b3.serving.signed_by(&next));
        assert!(trusted_by(&b3.serving.cert_pem, &next.cert_pem));
        // Overlap: clients with the staged bundle accept the new certificate, clients with the
        // new bundle still accept the old certificate.
        assert!(trusted_by(&b3.serving.cert_pem, &bundle2));
        let bundle3 = b3.ca_bundle_pem();
        assert_eq!(pem_count(&bundle3), 2);
        let ders3 = cert_ders("b", bundle3.as_bytes()).unwrap();
        assert_eq!(ders3[0], der_of(&next.cert_pem));
        assert_eq!(ders3[1], der_of(&b1.ca.cert_pem));
        assert!(trusted_by(&b2.serving.cert_pem, &bundle3));
        assert_eq!(b3.plan(&n, &p, clock.now()), Renewal::None);

        // Drop the previous CA after the retention (120 s; serving renews only after 190 s).
        let drop_at = promote + s(120);
        assert_eq!(b3.next_action_at(&p), drop_at);
        assert_eq!(b3.plan(&n, &p, drop_at - ms(1)), Renewal::None);
        clock.set(drop_at);
        assert_eq!(b3.plan(&n, &p, clock.now()), Renewal::DropPreviousCa);
        let b4 = b3
            .apply(&Renewal::DropPreviousCa, &n, &p, clock.now())
            .unwrap();
        assert_eq!(pem_count(&b4.ca_bundle_pem()), 1);
        assert_eq!(der_of(&b4.ca_bundle_pem()), der_of(&next.cert_pem));
        assert_eq!(b4.plan(&n, &p, clock.now()), Renewal::None);
        assert!(b4.previous_ca_retired_at.is_none());

        for action in [
            Renewal::StageNextCa,
            Renewal::PromoteNextCa,
            Renewal::DropPreviousCa,
        ] {
            assert!(action.changes_ca_bundle());
        }
        // Actions that do not fit the state are refused.
        assert!(matches!(
            b4.apply(&Renewal::DropPreviousCa, &n, &p, clock.now()),
            Err(CertError::NotApplicable { .. })
        ));
        assert!(matches!(
            b4.apply(&Renewal::PromoteNextCa, &n, &p, clock.now()),
            Err(CertError::NotApplicable { .. })
        ));
    }

    #[test]
    fn previous_ca_dropped_when_it_expires_before_retention_ends() {
        let p = CertPolicy {
            previous_ca_retention: StdDuration::from_secs(100_000),
            ..short_policy()
        };
        let n = names();
        let b = CertBundle::generate(&n, &p, t0()).unwrap();
        let old_ca_end = b.ca.not_after; // t0 + 3000 s
        let b = b
            .apply(&Renewal::StageNextCa, &n, &p, t0() + s(1900))
            .unwrap();
        let b = b
            .apply(&Renewal::PromoteNextCa, &n, &p, t0() + s(1960))
            .unwrap();
        // Fresh serving certificate shortly before the old CA expires.
        let b = b
            .apply(
                &Renewal::ReissueServing(ReissueReason::Expiring),
                &n,
                &p,
                old_ca_end - s(10),
            )
            .unwrap();
        assert_eq!(b.next_action_at(&p), old_ca_end);
        assert_eq!(b.plan(&n, &p, old_ca_end - ms(1)), Renewal::None);
        assert_eq!(pem_count(&b.ca_bundle_pem_at(old_ca_end - ms(1))), 2);
        assert_eq!(b.plan(&n, &p, old_ca_end), Renewal::DropPreviousCa);
        assert_eq!(pem_count(&b.ca_bundle_pem_at(old_ca_end)), 1);
        assert_eq!(pem_count(&b.ca_bundle_pem()), 2);
    }

    #[test]
    fn expired_ca_regenerates_or_promotes_at_once() {
        let p = CertPolicy {
            ca_promote_delay: StdDuration::from_secs(100_000),
            ..short_policy()
        };
        let n = names();
        let b = CertBundle::generate(&n, &p, t0()).unwrap();
        let dead = b.ca.not_after;
        // Serving certificates are never issued past the CA's expiry...
        let late = b
            .apply(
                &Renewal::ReissueServing(ReissueReason::Expired),
                &n,
                &p,
                dead - s(100),
            )
            .unwrap();
        assert_eq!(late.serving.not_after, dead);
        // ...and such a certificate is not re-issued before the CA rotates (it could not last
        // longer), which leaves the CA rules in charge.
        assert!(late.serving.renew_at(&p) < dead - s(1));
        assert_eq!(late.plan(&n, &p, dead - ms(1)), Renewal::StageNextCa);
        assert_eq!(late.plan(&n, &p, dead), Renewal::Regenerate);
        let fresh = late.apply(&Renewal::Regenerate, &n, &p, dead).unwrap();
        assert_ne!(fresh.ca, late.ca);
        assert_eq!(fresh.plan(&n, &p, dead), Renewal::None);
        assert!(Renewal::Regenerate.changes_ca_bundle());
        // A dead CA cannot sign.
        assert!(matches!(
            late.apply(
                &Renewal::ReissueServing(ReissueReason::Expired),
                &n,
                &p,
                dead
            ),
            Err(CertError::CaExpired { .. })
        ));

        // With a staged successor, the (here huge) promotion delay is cut short by the CA's death.
        let staged = late
            .apply(&Renewal::StageNextCa, &n, &p, dead - s(100))
            .unwrap();
        assert_eq!(staged.next_action_at(&p), dead);
        assert_eq!(staged.plan(&n, &p, dead - ms(1)), Renewal::None);
        assert_eq!(staged.plan(&n, &p, dead), Renewal::PromoteNextCa);
        let promoted = staged.apply(&Renewal::PromoteNextCa, &n, &p, dead).unwrap();
        assert!(promoted.serving.signed_by(staged.next_ca.as_ref().unwrap()));
        // The old CA is already dead: no point keeping it in the bundle.
        assert_eq!(promoted.plan(&n, &p, dead), Renewal::DropPreviousCa);
        let dropped = promoted
            .apply(&Renewal::DropPreviousCa, &n, &p, dead)
            .unwrap();
        assert_eq!(dropped.plan(&n, &p, dead), Renewal::None);
    }

    #[test]
    fn names_change_triggers_reissue() {
        let p = CertPolicy::default();
        let b = CertBundle::generate(&names(), &p, t0()).unwrap();
        let more = names().merge(SubjectNames::for_host("10.0.0.7"));
        assert!(!more.covered_by(&b.serving));
        let action = b.plan(&more, &p, t0());
        assert_eq!(action, Renewal::ReissueServing(ReissueReason::NamesChanged));
        let b2 = b.apply(&action, &more, &p, t0() + s(1)).unwrap();
        assert!(more.covered_by(&b2.serving));
        assert_eq!(b2.plan(&more, &p, t0() + s(1)), Renewal::None);
        // Fewer names are still covered: no churn.
        let fewer = SubjectNames::for_host("hook.system.svc");
        assert_eq!(b2.plan(&fewer, &p, t0() + s(1)), Renewal::None);
        // A different service is not.
        let renamed = SubjectNames::for_service("hook2", "system");
        assert_eq!(
            b2.plan(&renamed, &p, t0() + s(1)),
            Renewal::ReissueServing(ReissueReason::NamesChanged)
        );
    }

    #[test]
    fn serving_not_signed_by_current_ca_is_reissued() {
        let p = CertPolicy::default();
        let b = CertBundle::generate(&names(), &p, t0()).unwrap();
        let other = CertBundle::generate(&names(), &p, t0()).unwrap();
        let mixed = CertBundle {
            serving: other.serving.clone(),
            ..b.clone()
        };
        assert!(mixed.next_action_at(&p) <= t0());
        let action = mixed.plan(&names(), &p, t0());
        assert_eq!(
            action,
            Renewal::ReissueServing(ReissueReason::NotSignedByCurrentCa)
        );
        let fixed = mixed.apply(&action, &names(), &p, t0()).unwrap();
        assert!(fixed.serving.signed_by(&b.ca));
        assert!(trusted_by(&fixed.serving.cert_pem, &b.ca.cert_pem));
        assert_eq!(fixed.plan(&names(), &p, t0()), Renewal::None);

        // Loaded from a Secret: a serving cert signed by the previous CA is accepted, then
        // re-issued.
        let n = names();
        let p = short_policy();
        let s0 = CertBundle::generate(&n, &p, t0()).unwrap();
        let s1 = s0
            .apply(&Renewal::StageNextCa, &n, &p, t0() + s(1))
            .unwrap();
        let s2 = s1
            .apply(&Renewal::PromoteNextCa, &n, &p, t0() + s(61))
            .unwrap();
        let mut data = s2.to_secret_data();
        data.insert(TLS_CRT.into(), s0.serving_chain_pem().into_bytes());
        data.insert(TLS_KEY.into(), s0.serving.key_pem.clone().into_bytes());
        let loaded = CertBundle::from_secret_data(&data).unwrap();
        assert!(loaded.serving.signed_by(&s0.ca));
        assert_eq!(
            loaded.plan(&n, &p, t0() + s(62)),
            Renewal::ReissueServing(ReissueReason::NotSignedByCurrentCa)
        );
    }

    /// Runs the caller's loop for many rotations with second-scale lifetimes and fractional-second
    /// ticks; checks that the serving certificate is always valid and trusted by the published
    /// caBundle, that `next_action_at` is exact, that each loop settles, and that the state
    /// survives the Secret round trip.
    #[test]
    fn long_run_with_second_scale_lifetimes_never_expires() {
        let p = CertPolicy {
            ca_validity: StdDuration::from_secs(30),
            serving_validity: StdDuration::from_secs(3),
            renew_fraction: 2.0 / 3.0,
            ca_promote_delay: StdDuration::from_secs(2),
            previous_ca_retention: StdDuration::from_secs(5),
            ..CertPolicy::default()
        };
        let n = names();
        let clock = ManualClock::new(t0() + ms(500));
        let mut b = CertBundle::generate(&n, &p, clock.now()).unwrap();
        // Sub-second renew point: window [t0, t0+4s] (backdate 0.3 s, whole seconds).
        assert_eq!(b.serving.not_before, t0());
        assert_eq!(b.serving.not_after, t0() + s(4));
        let renew = b.serving.renew_at(&p);
        assert_eq!(renew, t0() + Duration::nanoseconds(2_666_666_667));
        assert_eq!(b.plan(&n, &p, renew - ms(1)), Renewal::None);
        assert_eq!(
            b.plan(&n, &p, renew),
            Renewal::ReissueServing(ReissueReason::Expiring)
        );

        let mut published = b.ca_bundle_pem();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _tick in 0..480 {
            clock.advance(StdDuration::from_millis(250));
            let now = clock.now();
            let mut steps = 0;
            loop {
                let action = b.plan(&n, &p, now);
                assert_eq!(
                    action != Renewal::None,
                    now >= b.next_action_at(&p),
                    "next_action_at disagrees with plan at {now}: {action:?}"
                );
                if action == Renewal::None {
                    break;
                }
                assert_ne!(action, Renewal::Regenerate, "rotation fell behind at {now}");
                *counts.entry(format!("{action:?}")).or_default() += 1;
                let old_serving = b.serving.clone();
                b = b.apply(&action, &n, &p, now).unwrap();
                // New serving certs are trusted by the bundle published before the switch...
                if b.serving != old_serving {
                    assert!(trusted_by(&b.serving.cert_pem, &published), "{action:?}");
                }
                published = b.ca_bundle_pem();
                // ...and the old one is still trusted by the new bundle (other replicas).
                assert!(trusted_by(&old_serving.cert_pem, &published), "{action:?}");
                assert!(pem_count(&published) <= 3);
                b = CertBundle::from_secret_data(&b.to_secret_data()).unwrap();
                steps += 1;
                assert!(steps <= 5, "plan/apply loop does not settle at {now}");
            }
            assert!(b.serving.not_before <= now && now < b.serving.not_after);
            assert!(b.ca.not_before <= now && now < b.ca.not_after);
            assert!(trusted_by(&b.serving.cert_pem, &published));
            assert!(b.next_action_at(&p) > now);
        }
        // 120 s with a 33 s CA window: several full rotations happened.
        assert!(counts["StageNextCa"] >= 4, "{counts:?}");
        assert!(counts["PromoteNextCa"] >= 4, "{counts:?}");
        assert!(counts["DropPreviousCa"] >= 4, "{counts:?}");
        assert!(counts["ReissueServing(Expiring)"] >= 20, "{counts:?}");
        assert!(
            !counts.contains_key("ReissueServing(Expired)"),
            "{counts:?}"
        );
    }

    // ---- rustls material and files -------------------------------------------------------------

    #[test]
    fn certified_key_checks_material() {
        let b = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
        let other = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
        let key = certified_key(&b.serving_chain_pem(), &b.serving.key_pem).unwrap();
        assert_eq!(key.cert.len(), 2);
        assert!(key.keys_match().is_ok());
        assert_eq!(
            key.end_entity_cert().unwrap().as_ref(),
            der_of(&b.serving.cert_pem)
        );

        let e = certified_key(&b.serving_chain_pem(), &other.serving.key_pem).unwrap_err();
        assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
        let e = certified_key("nope", &b.serving.key_pem).unwrap_err();
        assert!(matches!(e, CertError::InvalidPem { .. }), "{e}");
        let e = certified_key(&b.serving_chain_pem(), &b.serving.cert_pem).unwrap_err();
        assert!(matches!(e, CertError::InvalidPem { .. }), "{e}");

        // SEC1 ("EC PRIVATE KEY") keys, cert-manager's default for ECDSA, are accepted: the
        // SEC1 structure is the OCTET STRING inside the PKCS#8 wrapper.
        let pkcs8 = pem::parse(&b.serving.key_pem).unwrap();
        let (_, info) = x509_parser::der_parser::parse_der(pkcs8.contents()).unwrap();
        let fields = info.as_sequence().unwrap();
        let sec1 = fields[2].as_slice().unwrap();
        let sec1_pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1));
        let key = certified_key(&b.serving_chain_pem(), &sec1_pem).unwrap();
        assert!(key.keys_match().is_ok());
        // The same bytes under a wrong tag are rejected by rustls, not silently accepted.
        let mislabeled = pem::encode(&pem::Pem::new("EC PRIVATE KEY", pkcs8.contents()));
        let e = certified_key(&b.serving_chain_pem(), &mislabeled).unwrap_err();
        assert!(matches!(e, CertError::Rustls(_)), "{e}");
    }

    #[test]
    fn file_certs_load() {
        let dir = tempfile::tempdir().unwrap();
        let b = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
        let data = b.to_secret_data();
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(dir.path().join(key), &data[key]).unwrap();
        }
        let crt = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let ca = dir.path().join("ca.crt");

        let files = FileCerts::load(&crt, &key, Some(&ca)).unwrap();
        assert_eq!(files.cert_chain_pem, b.serving_chain_pem());
        assert_eq!(files.key_pem, b.serving.key_pem);
        assert_eq!(files.ca_pem.as_deref(), Some(b.ca.cert_pem.as_str()));
        assert_eq!(files.leaf_not_after().unwrap(), b.serving.not_after);
        let ck = files.certified_key().unwrap();
        assert_eq!(ck.cert.len(), 2);
        assert!(!format!("{files:?}").contains("PRIVATE KEY"));

        let no_ca = FileCerts::load(&crt, &key, None).unwrap();
        assert!(no_ca.ca_pem.is_none());

        let missing = dir.path().join("absent.crt");
        let e = FileCerts::load(&missing, &key, None).unwrap_err();
        assert!(
            matches!(&e, CertError::Io { path, .. } if path == &missing),
            "{e}"
        );
        assert!(e.to_string().contains("absent.crt"), "{e}");

        let other = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, &other.serving.key_pem).unwrap();
        let e = FileCerts::load(&crt, &other_key, None).unwrap_err();
        assert!(
            matches!(&e, CertError::KeyMismatch { key, .. } if key.ends_with("other.key")),
            "{e}"
        );
        let e = FileCerts::load(&crt, &key, Some(&key)).unwrap_err();
        assert!(
            matches!(&e, CertError::InvalidPem { key, .. } if key.ends_with("tls.key")),
            "{e}"
        );
    }
}
