//! Webhook TLS material: a self-signed CA and a serving certificate that are renewed from the
//! wall clock, so the webhook's certificate never silently expires.
//!
//! This module is pure certificate logic: no Kubernetes API calls and no network. The caller
//! (the server) keeps a `CertBundle` in one Kubernetes Secret shared by all replicas and
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
//! Secret layout (type `kubernetes.io/tls`): `tls.crt` holds the serving
//! *chain* (leaf first, then the signing CA) so it can be handed to a TLS stack (and to
//! `certified_key`) as is; `tls.key`, `ca.crt`, `ca.key`, and optionally `ca-next.crt`,
//! `ca-next.key`, `ca-next.staged-at`, `ca-previous.crt`, `ca-previous.retired-at`
//! (the two timestamps are RFC 3339).
//!
//! All keys are ECDSA P-256 (PKCS#8 PEM). X.509 validity has one-second resolution: `not_before`
//! is rounded down and `not_after` up to whole seconds; every renewal decision then uses the
//! certificate's actual window with sub-second arithmetic.

mod bundle;
mod clock;
mod error;
mod files;
mod issue;
mod names;
mod policy;
mod renewal;
#[cfg(test)]
mod tests;
mod x509;

#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use bundle::*;
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use clock::*;
pub use error::*;
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use files::*;
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use issue::*;
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use names::*;
pub use policy::*;
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use renewal::*;
use x509::*;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
pub(crate) mod secret_keys {
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

/// A fresh bundle for `127.0.0.1` with the default policy (unit tests of the modules that serve
/// certificates).
#[cfg(test)]
pub(crate) fn test_bundle() -> CertBundle {
    CertBundle::generate(
        &SubjectNames::for_host("127.0.0.1"),
        &CertPolicy::default(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("a test bundle")
}
