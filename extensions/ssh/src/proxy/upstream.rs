//! The proxy's own login to an instance's daemon: with the app's client key, checking the
//! daemon's host key, both derived from the [`MasterKey`] (the proxy reads no app Secret).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use super::config::ProxyConfig;
use super::refusal::Refusal;
use super::target::{PodResolver, Target};
use crate::keys::MasterKey;

/// The login to the daemon: checks its host key against the app's (derived) one.
pub(super) struct Upstream {
    host_key: PublicKey,
}

impl client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.host_key.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// Logs in to the daemons of granted instances.
pub(super) struct Connector {
    master: MasterKey,
    resolver: Arc<dyn PodResolver>,
    daemon_port: u16,
    daemon_user: String,
    connect_timeout: Duration,
    client_config: Arc<client::Config>,
}

impl Connector {
    /// Daemons reached and logged in to as `config` says.
    pub(super) fn new(config: &ProxyConfig) -> Self {
        Self {
            master: config.master.clone(),
            resolver: config.resolver.clone(),
            daemon_port: config.daemon_port,
            daemon_user: config.daemon_user.clone(),
            connect_timeout: config.connect_timeout,
            client_config: Arc::new(client::Config {
                inactivity_timeout: None,
                keepalive_interval: Some(Duration::from_secs(30)),
                keepalive_max: 4,
                nodelay: true,
                ..Default::default()
            }),
        }
    }

    /// Log in to the daemon of `target`, running in `pod`, within the connect timeout.
    pub(super) async fn connect(
        &self,
        target: &Target,
        pod: &Pod,
    ) -> std::result::Result<client::Handle<Upstream>, Refusal> {
        let injected = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&format!("eirinix.org/{}", crate::webhook::EXTENSION_NAME)))
            .is_some();
        if !injected {
            return Err(Refusal::NotEnabled(target.clone()));
        }
        let keys = self.master.app_keys(&target.guid).map_err(|e| {
            tracing::warn!(error = %e, "deriving the app keys failed");
            Refusal::Unreachable(target.clone())
        })?;
        let addr = self
            .resolver
            .resolve(pod, self.daemon_port)
            .await
            .map_err(|e| {
                tracing::info!(reason = %e, "instance address unknown");
                Refusal::Unreachable(target.clone())
            })?;
        let login = async {
            let upstream = Upstream {
                host_key: keys.host_public().clone(),
            };
            let mut handle = client::connect(self.client_config.clone(), addr, upstream).await?;
            let auth = handle
                .authenticate_publickey(
                    self.daemon_user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(keys.client.clone()), None),
                )
                .await?;
            if auth.success() {
                Ok(handle)
            } else {
                Err(russh::Error::NotAuthenticated)
            }
        };
        match tokio::time::timeout(self.connect_timeout, login).await {
            Ok(Ok(handle)) => Ok(handle),
            Ok(Err(e)) => {
                tracing::info!(%addr, error = %e, "cannot log in to the instance daemon");
                Err(Refusal::Unreachable(target.clone()))
            }
            Err(_) => {
                tracing::info!(%addr, "instance daemon did not answer in time");
                Err(Refusal::Unreachable(target.clone()))
            }
        }
    }
}
