//! What the proxy is told: where to listen, its keys, where the apps are, how their daemons are
//! reached, and its limits.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;

use super::target::{PodIpResolver, PodResolver};
use crate::daemon::DEFAULT_PORT;
use crate::error::Result;
use crate::keys::{MasterKey, fingerprint};
use crate::limits::Limits;

/// Configuration of the proxy.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Address to listen on (default `0.0.0.0:2222`).
    pub listen: SocketAddr,
    /// The key the apps' keys derive from (the webhook's, from the same Secret).
    pub master: MasterKey,
    /// The proxy's own host key (what users put in known_hosts); derived from the master.
    pub host_key: PrivateKey,
    /// Namespace of the apps; `None` looks in all namespaces.
    pub namespace: Option<String>,
    /// Port of the daemon in the pods.
    pub daemon_port: u16,
    /// User name sent to the daemon.
    pub daemon_user: String,
    /// How pods are reached.
    pub resolver: Arc<dyn PodResolver>,
    /// Audiences the tokens must carry (empty: the apiserver's default).
    pub audiences: Vec<String>,
    /// Every refused login is answered this long after its password arrived, whatever the
    /// reason; authorization not finished by then is refused (default 3 s).
    pub refusal_time: Duration,
    /// Time allowed to reach and log in to a daemon.
    pub connect_timeout: Duration,
    /// Limits on connections that have not logged in.
    pub limits: Limits,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listen", &self.listen)
            .field("host_key", &fingerprint(self.host_key.public_key()))
            .field("namespace", &self.namespace)
            .field("daemon_port", &self.daemon_port)
            .field("audiences", &self.audiences)
            .field("refusal_time", &self.refusal_time)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ProxyConfig {
    /// Defaults: port 2222 on all addresses, all namespaces, pods reached on their IP, the host
    /// key derived from `master`.
    pub fn new(master: MasterKey) -> Result<Self> {
        Ok(Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            host_key: master.proxy_host_key()?,
            master,
            namespace: None,
            daemon_port: DEFAULT_PORT,
            daemon_user: "vcap".into(),
            resolver: Arc::new(PodIpResolver),
            audiences: Vec::new(),
            refusal_time: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default(),
        })
    }
}
