//! The SSH side of one user's connection: the password login (limits, authorization, the
//! daemon login, refusals that all look alike), then its channels handed to the relay.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::time::Instant;

use super::auth::{Authorizer, Granted, clean_token};
use super::metrics::ProxyMetrics;
use super::rate::SourceRate;
use super::refusal::Refusal;
use super::relay::{relay_forward, relay_session};
use super::target::{Target, parse_target};
use super::upstream::{Connector, Upstream};
use crate::limits::Pending;

/// What every connection of a proxy shares.
pub(super) struct ProxyShared {
    /// Reviews the users' tokens and access.
    pub(super) authorizer: Authorizer,
    /// Logs in to the daemons.
    pub(super) connector: Connector,
    /// The counters.
    pub(super) metrics: Arc<ProxyMetrics>,
    /// Password attempts per source address.
    pub(super) rate: SourceRate,
    /// Password attempts allowed per connection.
    pub(super) max_auth_attempts: u32,
    /// When, after its password, a refusal before the grant is answered.
    pub(super) refusal_time: Duration,
}

/// One user's connection: its login, then its channels relayed to the daemon.
pub(super) struct ProxyHandler {
    shared: Arc<ProxyShared>,
    peer: SocketAddr,
    pending: Pending,
    upstream: Option<Arc<client::Handle<Upstream>>>,
    refusal: Option<String>,
    attempts: u32,
}

impl Drop for ProxyHandler {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some(up), Ok(rt)) = (self.upstream.take(), runtime) {
            rt.spawn(async move {
                let _ = up
                    .disconnect(Disconnect::ByApplication, "proxy session ended", "")
                    .await;
            });
        }
    }
}

impl ProxyHandler {
    /// The handler of a new connection from `peer`, holding its `pending` login slot.
    pub(super) fn new(shared: Arc<ProxyShared>, peer: SocketAddr, pending: Pending) -> Self {
        Self {
            shared,
            peer,
            pending,
            upstream: None,
            refusal: None,
            attempts: 0,
        }
    }

    /// Refuse, `deadline` being when a refusal before the grant may be answered.
    async fn refuse(&mut self, ssh_user: &str, refusal: &Refusal, deadline: Instant) -> Auth {
        tracing::warn!(
            peer = %self.peer,
            ssh_user,
            reason = ?refusal,
            "ssh access refused"
        );
        ProxyMetrics::inc(&self.shared.metrics.refused);
        if !refusal.after_grant() {
            // The same time for every reason: nothing to learn from how long it took.
            tokio::time::sleep_until(deadline).await;
        }
        self.refusal = Some(refusal.message());
        // OpenSSH shows the instructions of a keyboard-interactive request: that is how the user
        // learns why. The request comes next; then everything is refused.
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
            partial_success: false,
        }
    }

    /// Count the attempt against the limits, then authorize it before `deadline`.
    async fn decide(
        &mut self,
        user: &str,
        password: &str,
        deadline: Instant,
    ) -> std::result::Result<(Target, Granted), Refusal> {
        self.attempts += 1;
        let shared = self.shared.clone();
        if self.attempts > shared.max_auth_attempts {
            ProxyMetrics::inc(&shared.metrics.too_many_attempts);
            return Err(Refusal::TooManyAttempts);
        }
        if !shared.rate.try_take(self.peer) {
            ProxyMetrics::inc(&shared.metrics.rate_limited);
            return Err(Refusal::RateLimited);
        }
        let target = parse_target(user).ok_or(Refusal::BadUser)?;
        let token = clean_token(password);
        match tokio::time::timeout_at(deadline, shared.authorizer.authorize(&target, token)).await {
            Ok(granted) => Ok((target, granted?)),
            Err(_) => {
                tracing::warn!(peer = %self.peer, "authorization did not finish within the refusal time");
                Err(Refusal::Internal)
            }
        }
    }
}

impl server::Handler for ProxyHandler {
    type Error = russh::Error;

    async fn auth_password(
        &mut self,
        user: &str,
        password: &str,
    ) -> std::result::Result<Auth, Self::Error> {
        let deadline = Instant::now() + self.shared.refusal_time;
        let (target, granted) = match self.decide(user, password, deadline).await {
            Ok(g) => g,
            Err(r) => return Ok(self.refuse(user, &r, deadline).await),
        };
        let shared = self.shared.clone();
        match shared.connector.connect(&target, &granted.pod).await {
            Ok(handle) => {
                tracing::info!(
                    peer = %self.peer,
                    user = %granted.user,
                    namespace = %granted.namespace,
                    pod = granted.pod.metadata.name.as_deref().unwrap_or_default(),
                    "ssh access granted"
                );
                ProxyMetrics::inc(&shared.metrics.granted);
                self.pending.authenticated();
                self.upstream = Some(Arc::new(handle));
                Ok(Auth::Accept)
            }
            Err(r) => Ok(self.refuse(user, &r, deadline).await),
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> std::result::Result<Auth, Self::Error> {
        match (response, self.refusal.as_ref()) {
            (None, Some(message)) => Ok(Auth::Partial {
                name: Cow::Borrowed("eirinix ssh proxy"),
                instructions: Cow::Owned(format!("access refused: {message}")),
                prompts: Cow::Owned(Vec::new()),
            }),
            _ => Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::empty()),
                partial_success: false,
            }),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some(up) = self.upstream.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        match up.channel_open_session().await {
            Ok(upstream) => {
                reply.accept().await;
                relay_session(channel, upstream, session.handle());
            }
            Err(e) => {
                tracing::info!(error = %e, "instance refused a session channel");
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!("instance refused the session: {e}"),
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some(up) = self.upstream.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        match up
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(upstream) => {
                reply.accept().await;
                relay_forward(channel, upstream);
            }
            Err(e) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!("forwarding refused by the instance: {e}"),
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> std::result::Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, address, port = *port, "remote port forwarding (-R) refused");
        Ok(false)
    }
}
