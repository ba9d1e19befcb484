//! The proxy as a server: its SSH settings, its port, and the accept loop that gives each
//! connection a [`ProxyHandler`].

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::server;
use russh::{MethodKind, MethodSet, SshId};
use tokio_util::sync::CancellationToken;

use super::auth::Authorizer;
use super::config::ProxyConfig;
use super::handler::{ProxyHandler, ProxyShared};
use super::metrics::ProxyMetrics;
use super::rate::SourceRate;
use super::upstream::Connector;
use crate::error::Result;
use crate::limits::Limits;
use crate::listener::Listener;

/// A proxy bound to its port, not yet serving.
pub struct Proxy {
    listener: Listener,
    server_config: Arc<server::Config>,
    limits: Limits,
    shared: Arc<ProxyShared>,
}

impl Proxy {
    /// Bind the port.
    pub async fn bind(config: ProxyConfig, client: kube::Client) -> Result<Self> {
        let listener = Listener::bind(config.listen).await?;
        let attempts = usize::try_from(config.limits.max_auth_attempts).unwrap_or(usize::MAX);
        let server_config = server::Config {
            server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-eirinix-ssh-proxy")),
            methods: MethodSet::from(&[MethodKind::Password][..]),
            keys: vec![config.host_key.clone()],
            // Password refusals wait for ProxyConfig::refusal_time in the handler; other
            // methods (never accepted) are refused at once.
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            // Each password attempt is followed by a keyboard-interactive step (the refusal
            // message); our own counter bounds the TokenReviews.
            max_auth_attempts: attempts.saturating_mul(2).saturating_add(2),
            nodelay: true,
            ..Default::default()
        };
        let metrics = Arc::<ProxyMetrics>::default();
        let shared = ProxyShared {
            connector: Connector::new(&config),
            rate: SourceRate::new(&config.limits),
            max_auth_attempts: config.limits.max_auth_attempts,
            refusal_time: config.refusal_time,
            authorizer: Authorizer::new(
                client,
                config.namespace,
                config.audiences,
                metrics.clone(),
            ),
            metrics,
        };
        Ok(Self {
            listener,
            server_config: Arc::new(server_config),
            limits: config.limits,
            shared: Arc::new(shared),
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Its counters (shared: clone the Arc to expose them).
    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.shared.metrics
    }

    /// Serve until `cancel`; open sessions are then closed.
    pub async fn serve(self, cancel: CancellationToken) -> Result<()> {
        let shared = self.shared;
        let counters = shared.metrics.listener.clone();
        let handler = |peer, pending| ProxyHandler::new(shared.clone(), peer, pending);
        self.listener
            .serve(self.server_config, &self.limits, counters, cancel, handler)
            .await
    }
}

/// Run the proxy until `cancel` (bind, then serve).
pub async fn run_proxy(
    config: ProxyConfig,
    client: kube::Client,
    cancel: CancellationToken,
) -> Result<()> {
    let proxy = Proxy::bind(config, client).await?;
    tracing::info!(addr = %proxy.local_addr()?, "eirinix ssh proxy listening");
    proxy.serve(cancel).await
}
