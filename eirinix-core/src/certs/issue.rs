//! Issuing: CA and serving certificates (rcgen, ECDSA P-256).

use super::*;

/// A self-signed CA certificate and its key.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct CaCert {
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
    pub(super) fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CertError> {
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
    pub(super) fn from_secret(
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
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct ServingCert {
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
