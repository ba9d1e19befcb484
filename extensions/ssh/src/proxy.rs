//! The ssh proxy: `ssh -p <port> <app-guid>/<index>@<proxy>` (or `cf:<app-guid>/<index>`), with a
//! Kubernetes bearer token as the password.
//!
//! Access: a TokenReview authenticates the token; SubjectAccessReviews check that its user may
//! `create pods/exec` in the app namespace (before any pod is looked up) and on the target pod.
//! The proxy then logs in to the pod's daemon with the app's client key and verifies the
//! daemon's host key, both derived from the [`MasterKey`] (the proxy reads no app Secret), and
//! relays the session (shell, exec, exit status, signals, `-L` forwarding).
//!
//! Every refusal before access is granted looks the same to the user: one message, answered
//! [`ProxyConfig::refusal_time`] after the password arrived, whatever the reason. Reasons are
//! logged, never the token. Unauthenticated connections are limited ([`Limits`]).

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, SshId};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::daemon::DEFAULT_PORT;
use crate::error::{Result, SshError};
use crate::keys::{MasterKey, fingerprint};
pub use crate::limits::Limits;
use crate::limits::{Ended, Gate, Pending, SourceRate};
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

/// The app instance a user name designates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// App guid (`cloudfoundry.org/guid`).
    guid: String,
    /// Instance index (suffix of the pod name).
    index: u32,
}

/// Parse `<app-guid>/<index>` or `cf:<app-guid>/<index>`.
pub(crate) fn parse_target(user: &str) -> Option<Target> {
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

/// What every refusal before access is granted says, whatever the reason (logged apart): the
/// answer tells nothing about which apps, instances or namespaces exist.
pub const DENIED: &str = "access denied: the user name must be <app-guid>/<index> of an instance, and the password a Kubernetes token allowed to create pods/exec on it";

/// Why a login was refused (logged); [`Refusal::message`] is what the user sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The user name is not `<guid>/<index>`.
    BadUser,
    /// The token is not valid.
    Unauthenticated,
    /// The user may not `create pods/exec` in the namespace (no pod was looked up).
    ForbiddenNamespace {
        /// Kubernetes user name.
        user: String,
        /// The namespace.
        namespace: String,
    },
    /// No such app instance.
    UnknownInstance(Target),
    /// The user may not `create pods/exec` on the pod.
    Forbidden {
        /// Kubernetes user name.
        user: String,
        /// Namespace of the pod.
        namespace: String,
        /// The pod.
        pod: String,
    },
    /// More password attempts on this connection than allowed (no TokenReview made).
    TooManyAttempts,
    /// The source address made too many attempts lately (no TokenReview made).
    RateLimited,
    /// The Kubernetes API failed, or did not answer within the refusal time.
    Internal,
    /// Granted, but the app's pod was not injected with ssh.
    NotEnabled(Target),
    /// Granted, but the daemon cannot be reached or refused the proxy.
    Unreachable(Target),
}

impl Refusal {
    /// Whether the user was granted access (then the reason may be told).
    fn after_grant(&self) -> bool {
        matches!(self, Refusal::NotEnabled(_) | Refusal::Unreachable(_))
    }

    /// The message shown to the user: [`DENIED`] for everything before access is granted.
    pub(crate) fn message(&self) -> String {
        match self {
            Refusal::NotEnabled(t) => format!(
                "ssh is not enabled for instance {} of app {} (started before ssh was enabled, or without an explicit command)",
                t.index, t.guid
            ),
            Refusal::Unreachable(t) => format!(
                "instance {} of app {} cannot be reached over ssh (not running, or started before ssh was enabled)",
                t.index, t.guid
            ),
            _ => DENIED.into(),
        }
    }
}

/// Counters of the proxy (render them with [`ProxyMetrics::render`]).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    connections: AtomicU64,
    refused_connections: AtomicU64,
    auth_timeouts: AtomicU64,
    unauthenticated: Arc<AtomicU64>,
    token_reviews: AtomicU64,
    access_reviews: AtomicU64,
    granted: AtomicU64,
    refused: AtomicU64,
    rate_limited: AtomicU64,
    too_many_attempts: AtomicU64,
}

impl ProxyMetrics {
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Connections closed at accept: too many were not logged in yet.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }
    /// Connections closed because they did not log in in time.
    pub fn auth_timeouts(&self) -> u64 {
        self.auth_timeouts.load(Ordering::Relaxed)
    }
    /// Connections not logged in at the moment.
    pub fn unauthenticated(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }
    /// TokenReviews sent to the apiserver.
    pub fn token_reviews(&self) -> u64 {
        self.token_reviews.load(Ordering::Relaxed)
    }
    /// SubjectAccessReviews sent to the apiserver.
    pub fn access_reviews(&self) -> u64 {
        self.access_reviews.load(Ordering::Relaxed)
    }
    /// Logins granted.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }
    /// Logins refused (any reason).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Password attempts refused without review: the source's rate was exceeded.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
    /// Password attempts refused without review: too many on one connection.
    pub fn too_many_attempts(&self) -> u64 {
        self.too_many_attempts.load(Ordering::Relaxed)
    }

    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "eirinix_ssh_proxy_connections_total",
                "counter",
                "Connections accepted by the ssh proxy.",
                self.connections(),
            ),
            (
                "eirinix_ssh_proxy_refused_connections_total",
                "counter",
                "Connections closed at accept: too many had not logged in yet.",
                self.refused_connections(),
            ),
            (
                "eirinix_ssh_proxy_auth_timeouts_total",
                "counter",
                "Connections closed because they did not log in in time.",
                self.auth_timeouts(),
            ),
            (
                "eirinix_ssh_proxy_unauthenticated_connections",
                "gauge",
                "Connections not logged in at the moment.",
                self.unauthenticated(),
            ),
            (
                "eirinix_ssh_proxy_token_reviews_total",
                "counter",
                "TokenReviews sent to the apiserver.",
                self.token_reviews(),
            ),
            (
                "eirinix_ssh_proxy_access_reviews_total",
                "counter",
                "SubjectAccessReviews sent to the apiserver.",
                self.access_reviews(),
            ),
            (
                "eirinix_ssh_proxy_logins_granted_total",
                "counter",
                "Logins granted.",
                self.granted(),
            ),
            (
                "eirinix_ssh_proxy_logins_refused_total",
                "counter",
                "Logins refused, whatever the reason.",
                self.refused(),
            ),
            (
                "eirinix_ssh_proxy_rate_limited_total",
                "counter",
                "Password attempts refused without review: the source address exceeded its rate.",
                self.rate_limited(),
            ),
            (
                "eirinix_ssh_proxy_too_many_attempts_total",
                "counter",
                "Password attempts refused without review: too many on one connection.",
                self.too_many_attempts(),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

struct ProxyShared {
    config: ProxyConfig,
    client: kube::Client,
    upstream_config: Arc<client::Config>,
    metrics: Arc<ProxyMetrics>,
    rate: SourceRate,
}

/// A proxy bound to its port, not yet serving.
pub struct Proxy {
    listener: TcpListener,
    server_config: Arc<server::Config>,
    shared: Arc<ProxyShared>,
}

impl Proxy {
    /// Bind the port.
    pub async fn bind(config: ProxyConfig, client: kube::Client) -> Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| SshError::io(format!("cannot listen on {}", config.listen), e))?;
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
        let upstream_config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        let rate = SourceRate::new(&config.limits);
        Ok(Self {
            listener,
            server_config: Arc::new(server_config),
            shared: Arc::new(ProxyShared {
                config,
                client,
                upstream_config: Arc::new(upstream_config),
                metrics: Arc::default(),
                rate,
            }),
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| SshError::io("local address", e))
    }

    /// Its counters (shared: clone the Arc to expose them).
    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.shared.metrics
    }

    /// Serve until `cancel`; open sessions are then closed.
    pub async fn serve(self, cancel: CancellationToken) -> Result<()> {
        let mut connections = JoinSet::new();
        let limits = &self.shared.config.limits;
        let metrics = self.shared.metrics.clone();
        let gate = Gate::new(limits, metrics.unauthenticated.clone());
        let max = limits.max_unauthenticated;
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = self.listener.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            ProxyMetrics::inc(&metrics.connections);
            let Some((pending, logged_in)) = gate.admit() else {
                ProxyMetrics::inc(&metrics.refused_connections);
                tracing::warn!(%peer, limit = max, "too many connections not logged in; connection closed");
                drop(socket);
                continue;
            };
            let handler = ProxyHandler {
                shared: self.shared.clone(),
                peer,
                upstream: None,
                refusal: None,
                attempts: 0,
                pending,
            };
            let config = self.server_config.clone();
            let gate = gate.clone();
            let metrics = metrics.clone();
            connections.spawn(async move {
                match gate.serve(config, socket, handler, logged_in).await {
                    Ended::Finished(Ok(())) => {}
                    Ended::Finished(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "proxy connection ended with an error")
                    }
                    Ended::TimedOut => {
                        ProxyMetrics::inc(&metrics.auth_timeouts);
                        tracing::info!(%peer, "connection closed: no login within the time limit");
                    }
                }
            });
        }
        connections.shutdown().await;
        Ok(())
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

/// The login to the daemon: checks its host key against the app's (derived) one.
struct Upstream {
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

/// An authorized login: the Kubernetes user and the pod.
struct Granted {
    user: String,
    namespace: String,
    pod: Pod,
}

impl ProxyShared {
    async fn review_token(&self, token: &str) -> std::result::Result<UserInfo, Refusal> {
        let review =
            eirinix_core::compat::token_review(token, &self.config.audiences).map_err(|e| {
                tracing::warn!(error = %e, "building the TokenReview failed");
                Refusal::Internal
            })?;
        ProxyMetrics::inc(&self.metrics.token_reviews);
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Refusal::Internal
            })?;
        let status = reviewed.status.unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(user),
            _ => {
                tracing::debug!(error = ?status.error, "token not authenticated");
                Err(Refusal::Unauthenticated)
            }
        }
    }

    async fn find_pod(&self, target: &Target) -> std::result::Result<Pod, Refusal> {
        let pods: Api<Pod> = match &self.config.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let lp = ListParams::default().labels(&format!("{GUID_LABEL}={}", target.guid));
        let list = pods.list(&lp).await.map_err(|e| {
            tracing::warn!(error = %e, "listing app pods failed");
            Refusal::Internal
        })?;
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
        candidates
            .into_iter()
            .next()
            .ok_or_else(|| Refusal::UnknownInstance(target.clone()))
    }

    /// May `user` `create pods/exec` in `namespace` (on `pod`, or on any pod when `None`)?
    async fn may_exec(
        &self,
        user: &UserInfo,
        namespace: &str,
        pod: Option<&str>,
    ) -> std::result::Result<bool, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some("create".into()),
                    group: Some(String::new()),
                    resource: Some("pods".into()),
                    subresource: Some("exec".into()),
                    name: pod.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        ProxyMetrics::inc(&self.metrics.access_reviews);
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                Refusal::Internal
            })?;
        Ok(reviewed.status.is_some_and(|s| s.allowed))
    }

    /// Token, then the namespace, then the pod: no pod is looked up for a user who may not
    /// exec in the app namespace.
    async fn authorize(
        &self,
        target: &Target,
        token: &str,
    ) -> std::result::Result<Granted, Refusal> {
        let user = self.review_token(token).await?;
        let username = user.username.clone().unwrap_or_default();
        if let Some(ns) = &self.config.namespace
            && !self.may_exec(&user, ns, None).await?
        {
            return Err(Refusal::ForbiddenNamespace {
                user: username,
                namespace: ns.clone(),
            });
        }
        let pod = self.find_pod(target).await?;
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if !self.may_exec(&user, &namespace, Some(&pod_name)).await? {
            return Err(Refusal::Forbidden {
                user: username,
                namespace,
                pod: pod_name,
            });
        }
        Ok(Granted {
            user: username,
            namespace,
            pod,
        })
    }

    async fn connect(
        &self,
        target: &Target,
        granted: &Granted,
    ) -> std::result::Result<client::Handle<Upstream>, Refusal> {
        let injected = granted
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&format!("eirinix.org/{}", crate::webhook::EXTENSION_NAME)))
            .is_some();
        if !injected {
            return Err(Refusal::NotEnabled(target.clone()));
        }
        let keys = self.config.master.app_keys(&target.guid).map_err(|e| {
            tracing::warn!(error = %e, "deriving the app keys failed");
            Refusal::Unreachable(target.clone())
        })?;
        let addr = self
            .config
            .resolver
            .resolve(&granted.pod, self.config.daemon_port)
            .await
            .map_err(|e| {
                tracing::info!(reason = %e, "instance address unknown");
                Refusal::Unreachable(target.clone())
            })?;
        let login = async {
            let upstream = Upstream {
                host_key: keys.host_public().clone(),
            };
            let mut handle = client::connect(self.upstream_config.clone(), addr, upstream).await?;
            let auth = handle
                .authenticate_publickey(
                    self.config.daemon_user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(keys.client.clone()), None),
                )
                .await?;
            if auth.success() {
                Ok(handle)
            } else {
                Err(russh::Error::NotAuthenticated)
            }
        };
        match tokio::time::timeout(self.config.connect_timeout, login).await {
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

/// Strip what people paste with a token (`bearer `, surrounding blanks).
fn clean_token(password: &str) -> &str {
    let p = password.trim();
    match p.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => p[7..].trim_start(),
        _ => p,
    }
}

struct ProxyHandler {
    shared: Arc<ProxyShared>,
    peer: SocketAddr,
    upstream: Option<Arc<client::Handle<Upstream>>>,
    refusal: Option<String>,
    attempts: u32,
    pending: Pending,
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

    async fn decide(
        &mut self,
        user: &str,
        password: &str,
        deadline: Instant,
    ) -> std::result::Result<(Target, Granted), Refusal> {
        self.attempts += 1;
        let shared = self.shared.clone();
        if self.attempts > shared.config.limits.max_auth_attempts {
            ProxyMetrics::inc(&shared.metrics.too_many_attempts);
            return Err(Refusal::TooManyAttempts);
        }
        if !shared.rate.try_take(self.peer) {
            ProxyMetrics::inc(&shared.metrics.rate_limited);
            return Err(Refusal::RateLimited);
        }
        let target = parse_target(user).ok_or(Refusal::BadUser)?;
        let token = clean_token(password);
        match tokio::time::timeout_at(deadline, shared.authorize(&target, token)).await {
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
        let deadline = Instant::now() + self.shared.config.refusal_time;
        let (target, granted) = match self.decide(user, password, deadline).await {
            Ok(g) => g,
            Err(r) => return Ok(self.refuse(user, &r, deadline).await),
        };
        let shared = self.shared.clone();
        match shared.connect(&target, &granted).await {
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
                tokio::spawn(async move {
                    let mut down = channel.into_stream();
                    let mut up = upstream.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
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

/// Relay one session channel both ways; channel-request replies come from the daemon.
fn relay_session(down: Channel<Msg>, up: Channel<client::Msg>, handle: server::Handle) {
    let id = down.id();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    // Requests sent to the daemon with want-reply, whose reply we still owe the user.
    let pending = Arc::new(AtomicU32::new(0));

    let p = pending.clone();
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some(msg) = down_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => up_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => {
                    up_tx.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => up_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx
                        .request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.set_env(true, variable_name, variable_value).await
                }
                ChannelMsg::RequestShell { .. } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.request_shell(true).await
                }
                ChannelMsg::Exec { command, .. } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.exec(true, command).await
                }
                ChannelMsg::RequestSubsystem { name, .. } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.request_subsystem(true, name).await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    up_tx
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => up_tx.signal(signal).await,
                ChannelMsg::RequestX11 { .. } => {
                    let _ = h.channel_failure(id).await;
                    Ok(())
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    });

    tokio::spawn(async move {
        let take = || {
            pending
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        while let Some(msg) = up_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => down_tx.data_bytes(data).await.is_ok(),
                ChannelMsg::ExtendedData { data, ext } => {
                    down_tx.extended_data_bytes(ext, data).await.is_ok()
                }
                ChannelMsg::Eof => down_tx.eof().await.is_ok(),
                ChannelMsg::ExitStatus { exit_status } => {
                    down_tx.exit_status(exit_status).await.is_ok()
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .is_ok(),
                ChannelMsg::Success => !take() || handle.channel_success(id).await.is_ok(),
                ChannelMsg::Failure => !take() || handle.channel_failure(id).await.is_ok(),
                ChannelMsg::Close => break,
                _ => true,
            };
            if !sent {
                break;
            }
        }
        let _ = down_tx.close().await;
    });
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

    #[test]
    fn tokens_are_cleaned() {
        assert_eq!(clean_token(" abc \n"), "abc");
        assert_eq!(clean_token("Bearer abc"), "abc");
        assert_eq!(clean_token("bearer  abc"), "abc");
        assert_eq!(clean_token("bear"), "bear");
    }

    #[test]
    fn refusals_before_the_grant_all_read_the_same() {
        let target = Target {
            guid: "g".into(),
            index: 0,
        };
        let before = [
            Refusal::BadUser,
            Refusal::Unauthenticated,
            Refusal::ForbiddenNamespace {
                user: "u".into(),
                namespace: "a".into(),
            },
            Refusal::UnknownInstance(target.clone()),
            Refusal::Forbidden {
                user: "system:serviceaccount:a:b".into(),
                namespace: "a".into(),
                pod: "app-0".into(),
            },
            Refusal::TooManyAttempts,
            Refusal::RateLimited,
            Refusal::Internal,
        ];
        for r in &before {
            assert_eq!(r.message(), DENIED, "{r:?}");
        }
        assert!(
            Refusal::Unreachable(target)
                .message()
                .contains("cannot be reached")
        );
    }
}
