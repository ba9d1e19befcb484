//! Certificates from files (cert-manager) and the bridge to rustls.

use super::*;

/// Certificate, key and optional CA loaded from PEM files (e.g. mounted from cert-manager);
/// the server reloads them when they change.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct FileCerts {
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

    /// Expiry of the leaf certificate (for logging and for scheduling a reload check).
    pub fn leaf_not_after(&self) -> Result<OffsetDateTime, CertError> {
        let der = first_cert_der("certificate chain", self.cert_chain_pem.as_bytes())?;
        Ok(ParsedCert::parse("certificate chain", &der)?.not_after)
    }
}

/// rustls material: the serving chain (leaf first, then the signing CA) and key, for a
/// hot-swappable resolver; uses the ring provider explicitly and checks the key matches the leaf.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn certified_key(
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
    rustls_material("certificate chain", cert_chain_pem, "private key", key_pem)
}

pub(super) fn rustls_material(
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

pub(super) fn private_key_der(
    key: &str,
    pem_bytes: &[u8],
) -> Result<PrivateKeyDer<'static>, CertError> {
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
