//! TLS configuration with a hot-swappable serving certificate.
//!
//! The only place that touches rustls' resolver trait, so a rustls upgrade changes one file.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
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

/// Server config: TLS 1.2 minimum, ALPN `http/1.1` (plus `h2` only when enabled).
pub fn server_config(
    resolver: Arc<CertResolver>,
    http2: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
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
