//! PEM and X.509 parsing, timestamps and validity arithmetic.

use super::*;

/// What this module needs from a parsed X.509 certificate.
pub(super) struct ParsedCert {
    pub(super) not_before: OffsetDateTime,
    pub(super) not_after: OffsetDateTime,
    pub(super) spki: Vec<u8>,
    pub(super) is_ca: bool,
    pub(super) dns: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
}

impl ParsedCert {
    pub(super) fn parse(key: &str, der: &[u8]) -> Result<Self, CertError> {
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
pub(super) fn signature_verifies(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(issuer_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

pub(super) fn missing(key: &str) -> CertError {
    CertError::MissingKey { key: key.into() }
}

pub(super) fn pem_error(key: &str, reason: impl Into<String>) -> CertError {
    CertError::InvalidPem {
        key: key.into(),
        reason: reason.into(),
    }
}

pub(super) fn required<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    key: &str,
) -> Result<&'a [u8], CertError> {
    data.get(key).map(Vec::as_slice).ok_or_else(|| missing(key))
}

pub(super) fn utf8<'a>(key: &str, bytes: &'a [u8]) -> Result<&'a str, CertError> {
    std::str::from_utf8(bytes).map_err(|_| CertError::NotUtf8 { key: key.into() })
}

pub(super) fn pem_blocks(key: &str, bytes: &[u8]) -> Result<Vec<pem::Pem>, CertError> {
    let text = utf8(key, bytes)?;
    let blocks = pem::parse_many(text).map_err(|e| pem_error(key, e.to_string()))?;
    if blocks.is_empty() {
        return Err(pem_error(key, "no PEM block found"));
    }
    Ok(blocks)
}

/// DER of every `CERTIFICATE` block (at least one).
pub(super) fn cert_ders(key: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
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

pub(super) fn first_cert_der(key: &str, bytes: &[u8]) -> Result<Vec<u8>, CertError> {
    cert_ders(key, bytes)?
        .into_iter()
        .next()
        .ok_or_else(|| pem_error(key, "no CERTIFICATE block"))
}

pub(super) fn parse_key_pair(key: &str, bytes: &[u8]) -> Result<KeyPair, CertError> {
    let blocks = pem_blocks(key, bytes)?;
    let Some(block) = blocks.iter().find(|b| b.tag() == "PRIVATE KEY") else {
        return Err(pem_error(key, "no PKCS#8 PRIVATE KEY block"));
    };
    KeyPair::try_from(block.contents()).map_err(|e| CertError::InvalidKey {
        key: key.into(),
        reason: e.to_string(),
    })
}

pub(super) fn cert_pem_from_der(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

pub(super) fn push_pem(out: &mut String, pem: &str) {
    let pem = pem.trim();
    if !pem.is_empty() {
        out.push_str(pem);
        out.push('\n');
    }
}

pub(super) fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn format_timestamp(t: OffsetDateTime) -> Option<String> {
    t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

pub(super) fn parse_timestamp(
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

pub(super) fn truncate_chars(s: &str, max: usize) -> &str {
    s.char_indices()
        .nth(max)
        .and_then(|(i, _)| s.get(..i))
        .unwrap_or(s)
}

pub(super) fn to_time_duration(d: StdDuration) -> Option<Duration> {
    Duration::try_from(d).ok()
}

pub(super) fn add_saturating(t: OffsetDateTime, d: StdDuration) -> OffsetDateTime {
    add_saturating_time(t, to_time_duration(d).unwrap_or(Duration::MAX))
}

/// `t + d`, saturating at the largest instant `time` can represent.
pub(super) fn add_saturating_time(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    t.checked_add(d).unwrap_or_else(|| {
        time::PrimitiveDateTime::MAX
            .assume_utc()
            .to_offset(t.offset())
    })
}

/// Clock-skew allowance: `not_before` is set this far before issuance.
pub(super) fn backdate(validity: Duration) -> Duration {
    MAX_BACKDATE.min(validity / 10)
}

/// `[not_before, not_after]` for a certificate issued at `now` for `validity`, backdated for
/// clock skew and widened to whole seconds (X.509 resolution), in UTC.
pub(super) fn validity_window(
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
pub(super) fn renew_point(
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
