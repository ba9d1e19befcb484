//! Names and paths in one place: the DNS-1123 rules that extension names, fingerprints and the
//! objects the extensions create must follow, the label on everything eirinix creates, the
//! webhook path of an extension; and `host:port` splitting.

/// Label every object eirinix creates carries, for discovery and cleanup.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Longest DNS-1123 label.
const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain.
const MAX_SUBDOMAIN: usize = 253;

/// Lowercase alphanumerics and `-`, starting and ending with an alphanumeric (no length limit).
fn label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 label (at most 63 characters): a namespace, a Service, an
/// extension name or a fingerprint.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= MAX_LABEL && label_chars(s)
}

/// Whether `s` is a DNS-1123 subdomain (labels joined by `.`, at most 253 characters): the name
/// of a Secret, a ConfigMap or a PersistentVolumeClaim.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_SUBDOMAIN && s.split('.').all(label_chars)
}

/// `host` and `port` of `host:port` or `[ipv6]:port` (brackets removed); `None` without a
/// numeric port. The host may be empty: callers that need one check.
pub fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':')?)
        }
        None => authority.rsplit_once(':')?,
    };
    Some((host, port.parse().ok()?))
}

/// The webhook path of an extension: stable across restarts because it is derived from the name.
pub(crate) fn extension_path(name: &str) -> String {
    format!("/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("syslog:514"), Some(("syslog", 514)));
        assert_eq!(split_host_port("[fd00::1]:6067"), Some(("fd00::1", 6067)));
        assert_eq!(split_host_port("10.0.0.1:443"), Some(("10.0.0.1", 443)));
        assert_eq!(split_host_port(":514"), Some(("", 514)));
        for bad in [
            "syslog",
            "syslog:",
            "syslog:http",
            "[fd00::1]",
            "[fd00::1]514",
            "h:70000",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn dns_1123_rules() {
        for ok in ["a", "persi", "eirini-x", "a1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        for ok in ["a.b", "app-keys.eirini", &format!("{}.b", "a".repeat(70))] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.-b", "A.b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert_eq!(extension_path("persi"), "/persi");
    }
}
