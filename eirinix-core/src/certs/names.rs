//! The names a serving certificate must carry (DNS names and IPs of the webhook).

use super::*;

/// Names the serving certificate must cover (its subjectAltNames).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct SubjectNames {
    /// DNS names (compared case-insensitively).
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl SubjectNames {
    /// The in-cluster names of a Service: `svc`, `svc.ns`, `svc.ns.svc`,
    /// `svc.ns.svc.cluster.local`.
    pub fn for_service(service: &str, namespace: &str) -> Self {
        let mut names = Self::default();
        for name in [
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ] {
            names.push_dns(name);
        }
        names
    }

    /// The name of a host reached by URL (no port): an IP address (bracketed IPv6 allowed)
    /// becomes an IP SAN, anything else a DNS SAN.
    pub fn for_host(host: &str) -> Self {
        let host = host.trim();
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let mut names = Self::default();
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            names.push_ip(ip);
        } else {
            let dns = host.trim_end_matches('.');
            if !dns.is_empty() {
                names.push_dns(dns.to_ascii_lowercase());
            }
        }
        names
    }

    /// Union of both sets of names, without duplicates, keeping `self`'s order first.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn merge(mut self, other: SubjectNames) -> Self {
        for dns in other.dns {
            self.push_dns(dns);
        }
        for ip in other.ips {
            self.push_ip(ip);
        }
        self
    }

    /// True when there is no name at all (no certificate can be issued for it).
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }

    /// True when every name here is among the certificate's SANs (extra SANs are fine).
    pub fn covered_by(&self, cert: &ServingCert) -> bool {
        self.dns
            .iter()
            .all(|want| cert.dns.iter().any(|have| have.eq_ignore_ascii_case(want)))
            && self.ips.iter().all(|want| cert.ips.contains(want))
    }

    pub(super) fn push_dns(&mut self, name: String) {
        if !self.dns.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
            self.dns.push(name);
        }
    }

    pub(super) fn push_ip(&mut self, ip: IpAddr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    /// Common name for a serving certificate: the first DNS name that fits, else the first IP.
    pub(super) fn common_name(&self) -> String {
        self.dns
            .iter()
            .find(|d| d.len() <= MAX_COMMON_NAME_LEN)
            .cloned()
            .or_else(|| self.ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| FALLBACK_SERVING_COMMON_NAME.to_owned())
    }
}
