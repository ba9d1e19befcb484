//! Names and paths in one place: the DNS-1123 rules that extension names, fingerprints and the
//! objects the extensions create must follow, the label on everything eirinix creates, and the
//! webhook path of an extension.

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

/// The webhook path of an extension: stable across restarts because it is derived from the name.
pub(crate) fn extension_path(name: &str) -> String {
    format!("/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
