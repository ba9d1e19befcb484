//! TLS configuration with a hot-swappable serving certificate.
//!
//! The only place that touches rustls' resolver trait, so a rustls upgrade changes one file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use std::sync::atomic::{AtomicU64, Ordering};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

/// The process-wide crypto provider (ring): every rustls config is built with it explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install ring as the process default provider (for libraries that look it up); harmless if already set.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serving certificate holder: new handshakes see a new certificate as soon as it is set.
#[derive(Default)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// An empty resolver (handshakes fail until a certificate is set).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `key` from the next handshake on; open connections keep theirs.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Some(key);
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The certificate currently served.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// Why the client CA for verifying the apiserver's client certificate cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientCaError {
    /// The CA file could not be read.
    #[error("cannot read the client CA file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The PEM could not be parsed, or a certificate in it is not a usable trust anchor.
    #[error("client CA {origin}: {reason}")]
    Invalid {
        /// Where the PEM came from (a path, or `PEM`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The PEM holds no `CERTIFICATE` block.
    #[error("client CA {origin}: no CERTIFICATE block")]
    Empty {
        /// Where the PEM came from (a path, or `PEM`).
        origin: String,
    },
    /// No CA certificate of the bundle is valid now: every client would be refused.
    #[error("client CA {origin}: no certificate in it is valid now (valid {windows})")]
    NotValid {
        /// Where the PEM came from.
        origin: String,
        /// The validity windows of its certificates.
        windows: String,
    },
    /// The apiserver's client certificate given to check the CA against is not accepted by it.
    #[error(
        "client CA {ca} does not accept the apiserver's client certificate {certificate}: {reason}"
    )]
    Rejects {
        /// Where the CA came from.
        ca: String,
        /// Where the client certificate came from.
        certificate: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Client certificates presented on the webhook port and checked against the client CA: a
/// count of rejections with no verification is the sign of a client CA that does not match the
/// apiserver's certificate (`eirinix_client_certificates_total`).
#[derive(Debug, Default)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct ClientCertStats {
    verified: AtomicU64,
    rejected: AtomicU64,
}

impl ClientCertStats {
    /// Client certificates that chained to the client CA.
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Client certificates that did not.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// The webpki verifier, counting its verdicts on presented certificates.
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    stats: Arc<ClientCertStats>,
}

impl ClientCertVerifier for CountingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        let counter = if verdict.is_ok() {
            &self.stats.verified
        } else {
            &self.stats.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Validity window of a DER certificate, in Unix seconds.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The CA bundle that client certificates must chain to (the apiserver's admission client
/// certificate, configured through its admission kubeconfig); builds a rustls verifier with
/// the ring provider. Clients without a valid certificate are refused during the handshake.
#[derive(Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    plain: Arc<dyn ClientCertVerifier>,
    stats: Arc<ClientCertStats>,
    /// Validity windows of the CA certificates (Unix seconds).
    windows: Vec<(i64, i64)>,
    origin: String,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.windows.len())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Trust the CA certificates in `pem` (other PEM blocks are ignored).
    pub fn from_pem(pem: &str) -> Result<Self, ClientCaError> {
        Self::parse(pem, "PEM")
    }

    /// Trust the CA certificates in the PEM file at `path` (read once).
    pub fn from_file(path: &Path) -> Result<Self, ClientCaError> {
        let pem = std::fs::read_to_string(path).map_err(|source| ClientCaError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&pem, &path.display().to_string())
    }

    fn parse(pem: &str, origin: &str) -> Result<Self, ClientCaError> {
        let invalid = |reason: String| ClientCaError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let certificates = pem_certificates(pem).map_err(|e| match e {
            PemRootsError::Empty => ClientCaError::Empty {
                origin: origin.to_owned(),
            },
            e => invalid(e.to_string()),
        })?;
        let mut windows = Vec::new();
        for der in &certificates {
            windows.push(
                validity(der)
                    .ok_or_else(|| invalid("a certificate does not parse as X.509".into()))?,
            );
        }
        let roots = root_store(certificates).map_err(|e| invalid(e.to_string()))?;
        let plain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let stats = Arc::new(ClientCertStats::default());
        let verifier = Arc::new(CountingVerifier {
            inner: plain.clone(),
            stats: stats.clone(),
        });
        Ok(Self {
            verifier,
            plain,
            stats,
            windows,
            origin: origin.to_owned(),
        })
    }

    /// How many CA certificates are trusted.
    pub fn anchors(&self) -> usize {
        self.windows.len()
    }

    /// Verdicts on the client certificates presented on the webhook port so far.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) fn stats(&self) -> &Arc<ClientCertStats> {
        &self.stats
    }

    /// `Err` when no CA certificate of the bundle is valid at `now` (Unix seconds): every
    /// client certificate would be refused.
    pub fn check_validity(&self, now: i64) -> Result<(), ClientCaError> {
        if self
            .windows
            .iter()
            .any(|(from, to)| *from <= now && now <= *to)
        {
            return Ok(());
        }
        let fmt = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| t.to_string())
        };
        Err(ClientCaError::NotValid {
            origin: self.origin.clone(),
            windows: self
                .windows
                .iter()
                .map(|(from, to)| format!("{} to {}", fmt(*from), fmt(*to)))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// `Ok` when the client certificate in `chain_pem` (leaf first, then intermediates; PEM
    /// from `origin`) would be accepted at `now`: chains to this CA, clientAuth usage, valid.
    pub fn verify_client_pem(
        &self,
        chain_pem: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<(), ClientCaError> {
        let rejects = |reason: String| ClientCaError::Rejects {
            ca: self.origin.clone(),
            certificate: origin.to_owned(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = pem::parse_many(chain_pem)
            .map_err(|e| rejects(e.to_string()))?
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| CertificateDer::from(b.into_contents()))
            .collect();
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(rejects("no CERTIFICATE block".into()));
        };
        self.plain
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
            .map_err(|e| rejects(e.to_string()))
    }

    /// The validity boundaries (Unix seconds) of the CA certificates and of the certificates
    /// in `chain_pem`: when a check of them can change its verdict.
    pub(crate) fn boundaries(&self, chain_pem: Option<&str>) -> Vec<i64> {
        let chain = chain_pem
            .and_then(|p| pem::parse_many(p).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| validity(b.contents()));
        self.windows
            .iter()
            .copied()
            .chain(chain)
            .flat_map(|(from, to)| [from, to.saturating_add(1)])
            .collect()
    }
}

/// Server config: TLS 1.2 minimum, ALPN `http/1.1` (plus `h2` only when enabled), no client
/// certificates asked for.
#[cfg_attr(feature = "internals", visibility::make(pub))]
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub(crate) fn server_config(
    resolver: Arc<CertResolver>,
    http2: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_config_with_client_ca(resolver, http2, None)
}

/// Like [`server_config`]; with `client_ca`, every client must present a certificate chaining to
/// it (mutual TLS), else the handshake fails.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn server_config_with_client_ca(
    resolver: Arc<CertResolver>,
    http2: bool,
    client_ca: Option<&ClientCa>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(ca.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// A client config trusting only the CA certificates in `ca_pem` (used for the readiness self-check).
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = pem_root_store(ca_pem).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a PEM bundle gives no trust roots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemRootsError {
    /// The text is not PEM.
    #[error("not PEM: {0}")]
    Pem(String),
    /// The PEM holds no `CERTIFICATE` block.
    #[error("no CERTIFICATE block")]
    Empty,
    /// rustls refused a certificate as a trust anchor.
    #[error("a certificate is not a usable trust anchor: {0}")]
    Refused(String),
}

/// A root store trusting exactly the `CERTIFICATE` blocks of the PEM bundle `pem` (other blocks
/// are skipped; at least one is required): for TLS clients that trust a configured CA file.
pub fn pem_root_store(pem: &str) -> Result<rustls::RootCertStore, PemRootsError> {
    pem_certificates(pem).and_then(root_store)
}

/// The `CERTIFICATE` blocks of a PEM bundle, in order (other blocks are skipped); at least one.
pub(crate) fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemRootsError> {
    let certificates: Vec<CertificateDer<'static>> = pem::parse_many(pem)
        .map_err(|e| PemRootsError::Pem(e.to_string()))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    if certificates.is_empty() {
        return Err(PemRootsError::Empty);
    }
    Ok(certificates)
}

/// A root store trusting exactly `certificates` (from [`pem_certificates`]).
pub(crate) fn root_store(
    certificates: Vec<CertificateDer<'static>>,
) -> Result<rustls::RootCertStore, PemRootsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates {
        roots
            .add(der)
            .map_err(|e| PemRootsError::Refused(e.to_string()))?;
    }
    Ok(roots)
}
