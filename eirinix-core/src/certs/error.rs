//! Everything that can go wrong while making, loading or converting certificates.

use super::*;

/// Everything that can go wrong while making, loading or converting certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The [`CertPolicy`] cannot produce usable certificates.
    #[error("invalid certificate policy: {0}")]
    InvalidPolicy(String),
    /// A serving certificate was requested for an empty `SubjectNames`.
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
    /// `CertBundle::apply` was given an action that does not fit the bundle's state.
    #[error("cannot {action}: {reason}")]
    NotApplicable {
        /// The action, as words ("promote the next CA").
        action: String,
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

pub(super) fn generate_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}
