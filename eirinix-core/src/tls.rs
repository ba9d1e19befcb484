//! TLS configuration with a hot-swappable serving certificate.
//!
//! The only place that touches rustls' resolver trait, so a rustls upgrade changes one file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

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
pub struct CertResolver {
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
}

/// The CA bundle that client certificates must chain to (the apiserver's admission client
/// certificate, configured through its admission kubeconfig); builds a rustls verifier with
/// the ring provider. Clients without a valid certificate are refused during the handshake.
#[derive(Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    anchors: usize,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.anchors)
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
        let mut roots = rustls::RootCertStore::empty();
        for block in pem::parse_many(pem).map_err(|e| invalid(e.to_string()))? {
            if block.tag() != "CERTIFICATE" {
                continue;
            }
            roots
                .add(rustls::pki_types::CertificateDer::from(
                    block.into_contents(),
                ))
                .map_err(|e| invalid(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ClientCaError::Empty {
                origin: origin.to_owned(),
            });
        }
        let anchors = roots.len();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self { verifier, anchors })
    }

    /// How many CA certificates are trusted.
    pub fn anchors(&self) -> usize {
        self.anchors
    }
}

/// Server config: TLS 1.2 minimum, ALPN `http/1.1` (plus `h2` only when enabled), no client
/// certificates asked for.
pub fn server_config(
    resolver: Arc<CertResolver>,
    http2: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    server_config_with_client_ca(resolver, http2, None)
}

/// Like [`server_config`]; with `client_ca`, every client must present a certificate chaining to
/// it (mutual TLS), else the handshake fails.
pub fn server_config_with_client_ca(
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
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for block in pem::parse_many(ca_pem).map_err(|e| e.to_string())? {
        roots
            .add(rustls::pki_types::CertificateDer::from(
                block.into_contents(),
            ))
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
