//! Which pod a login designates: the user name `<app-guid>/<index>` names an app instance, the
//! instance is found among the app's pods, and a [`PodResolver`] gives its daemon's address.

use std::net::SocketAddr;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::options::GUID_LABEL;

/// Finds the address of a pod's daemon (pluggable: tests map pods to loopback ports).
#[async_trait]
pub trait PodResolver: Send + Sync + 'static {
    /// The socket address of the daemon of `pod`, listening on `port` in the pod.
    async fn resolve(&self, pod: &Pod, port: u16) -> std::result::Result<SocketAddr, String>;
}

/// The default resolver: the pod's `status.podIP`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PodIpResolver;

#[async_trait]
impl PodResolver for PodIpResolver {
    async fn resolve(&self, pod: &Pod, port: u16) -> std::result::Result<SocketAddr, String> {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .ok_or_else(|| "the pod has no IP yet".to_owned())?;
        let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("bad pod IP {ip:?}"))?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// The app instance a user name designates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    /// App guid (`cloudfoundry.org/guid`).
    pub(super) guid: String,
    /// Instance index (suffix of the pod name).
    pub(super) index: u32,
}

/// Parse `<app-guid>/<index>` or `cf:<app-guid>/<index>`.
pub(super) fn parse_target(user: &str) -> Option<Target> {
    let rest = user.strip_prefix("cf:").unwrap_or(user);
    let (guid, index) = rest.rsplit_once('/')?;
    let valid_guid = !guid.is_empty()
        && guid.len() <= 63
        && guid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid_guid || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Target {
        guid: guid.to_owned(),
        index: index.parse().ok()?,
    })
}

/// The pod of `target` in `namespace` (all namespaces when `None`); `None` when there is none.
pub(super) async fn find_pod(
    client: &kube::Client,
    namespace: Option<&str>,
    target: &Target,
) -> Result<Option<Pod>, kube::Error> {
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let lp = ListParams::default().labels(&format!("{GUID_LABEL}={}", target.guid));
    let list = pods.list(&lp).await?;
    let suffix = format!("-{}", target.index);
    let mut candidates: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .collect();
    // A terminating pod only if nothing else matches.
    candidates.sort_by_key(|p| p.metadata.deletion_timestamp.is_some());
    Ok(candidates.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        let t = |g: &str, i| {
            Some(Target {
                guid: g.into(),
                index: i,
            })
        };
        assert_eq!(parse_target("4e7c-8f2a/0"), t("4e7c-8f2a", 0));
        assert_eq!(parse_target("cf:4e7c-8f2a/12"), t("4e7c-8f2a", 12));
        for bad in ["4e7c", "/0", "g/", "g/x", "g/-1", "cf:/1", "a b/0", "g/0/1"] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }
}
