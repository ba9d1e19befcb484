//! The PKI of a test control plane: a CA, the apiserver serving certificate, an admin client
//! certificate (group `system:masters`) and the service-account signing key pair.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// PEM-encoded material written to the control plane's temp dir.
pub(crate) struct Pki {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub ca_der: Vec<u8>,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
}

/// Subject alternative names of the apiserver serving certificate.
const SERVING_SANS: [&str; 7] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.0.0.1",
];

fn params(
    sans: &[&str],
    common_name: &str,
    organization: Option<&str>,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    Ok(params)
}

/// Generates a fresh PKI (ECDSA P-256 everywhere).
pub(crate) fn generate() -> Result<Pki, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = params(&[], "eirinix-testenv-ca", None)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = params(&SERVING_SANS, "kube-apiserver", None)?;
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = params(&[], "eirinix-testenv-admin", Some("system:masters"))?;
    admin.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    Ok(Pki {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        ca_der: ca_cert.der().to_vec(),
        serving_cert_pem: serving_cert.pem(),
        serving_key_pem: serving_key.serialize_pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        sa_key_pem: sa_key.serialize_pem(),
        sa_pub_pem: sa_key.public_key_pem(),
    })
}

/// A client certificate for `user` in `group` (subject CN and O, as the apiserver reads them),
/// signed by the control plane's CA: `(certificate PEM, PKCS#8 key PEM)`.
pub(crate) fn client_cert(
    pki: &Pki,
    user: &str,
    group: Option<&str>,
) -> Result<(String, String), rcgen::Error> {
    let ca_key = KeyPair::from_pem(&pki.ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&pki.ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = params(&[], user, group)?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A self-signed serving certificate for 127.0.0.1 / localhost (used by the fake kubelet).
pub(crate) fn self_signed_localhost(extra_name: &str) -> Result<(Vec<u8>, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut sans = vec!["127.0.0.1", "localhost"];
    let extra_ok = !extra_name.is_empty()
        && extra_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if extra_ok {
        sans.push(extra_name);
    }
    let mut p = params(&sans, "eirinix-testenv-fake-kubelet", None)?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.self_signed(&key)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}
