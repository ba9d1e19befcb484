//! TLS client settings of the sinks (syslog, RELP, Loggregator): the trust roots and client
//! certificate of a [`TlsOptions`], and the name checked in the receiver's certificate.

use std::sync::Arc;

use rustls::ClientConfig;

use crate::error::LogsError;
use crate::options::TlsOptions;

/// TLS client settings shared by the sinks.
pub(crate) fn tls_client_config(tls: &TlsOptions) -> Result<Arc<ClientConfig>, LogsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file_err = |path: &std::path::Path, e: &dyn std::fmt::Display| LogsError::TlsFile {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let roots = std::fs::read_to_string(&tls.ca_file)
        .map_err(|e| file_err(&tls.ca_file, &e))
        .and_then(|pem| {
            eirinix_core::tls::pem_root_store(&pem).map_err(|e| file_err(&tls.ca_file, &e))
        })?;
    let provider = eirinix_core::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(LogsError::Config(
                "TLS client authentication needs both certFile and keyFile".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

/// The host part of `host:port` (brackets of IPv6 literals removed).
pub(crate) fn host_of(address: &str) -> &str {
    eirinix_core::names::split_host_port(address).map_or(address, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("logs.example.com:6514"), "logs.example.com");
        assert_eq!(host_of("[::1]:514"), "::1");
    }
}
