//! The in-pod SSH daemon: public-key only, shell with pty, exec with exit status, `-L` forwarding.
//!
//! It runs as whatever user the container runs as (no setuid), with the environment of the app
//! process, and refuses remote forwarding (`-R`), X11, agent forwarding and subsystems.

mod pty;
mod session;

use std::borrow::Cow;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{
    self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, SshId};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub use pty::TermSize;

use crate::error::{Result, SshError};
use crate::keys::{self, fingerprint};
use crate::limits::{Limits, Pending};
use crate::listener::Listener;

/// Default port of the daemon inside the pod.
pub const DEFAULT_PORT: u16 = 2222;

/// Environment variable holding the daemon's private host key (OpenSSH PEM).
pub const ENV_HOST_KEY: &str = "EIRINIX_SSH_HOST_KEY";
/// Environment variable holding the authorized public key(s) (authorized_keys lines).
pub const ENV_AUTHORIZED_KEYS: &str = "EIRINIX_SSH_AUTHORIZED_KEYS";
/// Environment variable holding the port to listen on (default 2222).
pub const ENV_PORT: &str = "EIRINIX_SSH_PORT";
/// Environment variable holding the IP address to listen on (default: all addresses).
pub const ENV_LISTEN: &str = "EIRINIX_SSH_LISTEN";
/// Environment variable holding the shell used for sessions (default `/bin/sh`).
pub const ENV_SHELL: &str = "EIRINIX_SSH_SHELL";
/// Prefix of every variable the daemon reads; they are removed from the app's and sessions' env.
pub const ENV_PREFIX: &str = "EIRINIX_SSH_";

/// Configuration of the daemon.
#[derive(Clone)]
pub struct DaemonConfig {
    /// IP address to listen on; `None` listens on `[::]`, falling back to `0.0.0.0`.
    pub listen: Option<IpAddr>,
    /// Port to listen on (default 2222; 0 picks a free one).
    pub port: u16,
    /// The daemon's host key.
    pub host_key: PrivateKey,
    /// The only keys allowed to log in.
    pub authorized_keys: Vec<PublicKey>,
    /// Shell for sessions (`shell` interactive, `shell -c command` for exec).
    pub shell: PathBuf,
    /// Environment of sessions; `None` takes the daemon's own environment (the app's).
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Working directory of sessions; `None` keeps the daemon's (the container's workingDir).
    pub working_dir: Option<PathBuf>,
    /// Allow local port forwarding (`ssh -L`, `ssh -W`); on by default.
    pub allow_local_forwarding: bool,
    /// Time to connect a forwarded port before refusing the channel.
    pub connect_timeout: Duration,
    /// Constant time a failed authentication takes.
    pub auth_rejection_time: Duration,
    /// Limits on connections that have not logged in (time to log in, how many at once,
    /// attempts per connection; the per-source rate is the proxy's).
    pub limits: Limits,
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("listen", &self.listen)
            .field("port", &self.port)
            .field("host_key", &fingerprint(self.host_key.public_key()))
            .field(
                "authorized_keys",
                &self
                    .authorized_keys
                    .iter()
                    .map(fingerprint)
                    .collect::<Vec<_>>(),
            )
            .field("shell", &self.shell)
            .field("working_dir", &self.working_dir)
            .field("allow_local_forwarding", &self.allow_local_forwarding)
            .finish_non_exhaustive()
    }
}

impl DaemonConfig {
    /// A configuration with defaults: port 2222, `/bin/sh`, the process environment, `-L` on.
    pub fn new(host_key: PrivateKey, authorized_keys: Vec<PublicKey>) -> Self {
        Self {
            listen: None,
            port: DEFAULT_PORT,
            host_key,
            authorized_keys,
            shell: PathBuf::from("/bin/sh"),
            env: None,
            working_dir: None,
            allow_local_forwarding: true,
            connect_timeout: Duration::from_secs(10),
            auth_rejection_time: Duration::from_secs(1),
            // Only the proxy logs in: a few slots are plenty.
            limits: Limits {
                max_unauthenticated: 16,
                ..Default::default()
            },
        }
    }

    /// Read the configuration from `vars` (the variables the webhook injects, see `ENV_*`).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let vars: Vec<(OsString, OsString)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let get = |name: &str| -> Option<String> {
            vars.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.to_str())
                .map(str::to_owned)
                .filter(|v| !v.trim().is_empty())
        };
        let host = get(ENV_HOST_KEY)
            .ok_or_else(|| SshError::Config(format!("{ENV_HOST_KEY} is not set")))?;
        let authorized = get(ENV_AUTHORIZED_KEYS)
            .ok_or_else(|| SshError::Config(format!("{ENV_AUTHORIZED_KEYS} is not set")))?;
        let host_key = keys::parse_private_key(&host)
            .map_err(|e| SshError::Config(format!("{ENV_HOST_KEY}: {e}")))?;
        let authorized_keys = keys::parse_authorized_keys(&authorized)
            .map_err(|e| SshError::Config(format!("{ENV_AUTHORIZED_KEYS}: {e}")))?;
        if authorized_keys.is_empty() {
            return Err(SshError::Config(format!(
                "{ENV_AUTHORIZED_KEYS} holds no key"
            )));
        }
        let mut config = Self::new(host_key, authorized_keys);
        if let Some(port) = get(ENV_PORT) {
            config.port = port
                .trim()
                .parse()
                .map_err(|_| SshError::Config(format!("{ENV_PORT}={port:?} is not a port")))?;
        }
        if let Some(ip) = get(ENV_LISTEN) {
            config.listen = Some(
                ip.trim()
                    .parse()
                    .map_err(|_| SshError::Config(format!("{ENV_LISTEN}={ip:?} is not an IP")))?,
            );
        }
        if let Some(shell) = get(ENV_SHELL) {
            config.shell = PathBuf::from(shell);
        }
        config.env = Some(app_env(vars));
        Ok(config)
    }

    /// [`Self::from_vars`] on the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars_os())
    }
}

/// `vars` without the daemon's own `EIRINIX_SSH_*` variables (keys never reach sessions).
pub fn app_env<I: IntoIterator<Item = (OsString, OsString)>>(vars: I) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| !k.to_string_lossy().starts_with(ENV_PREFIX))
        .collect()
}

/// What every connection of a daemon shares.
pub(crate) struct Shared {
    pub(crate) authorized: Vec<PublicKey>,
    pub(crate) shell: PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) allow_local_forwarding: bool,
    pub(crate) connect_timeout: Duration,
}

impl Shared {
    fn is_authorized(&self, key: &PublicKey) -> bool {
        self.authorized
            .iter()
            .any(|k| k.key_data() == key.key_data())
    }
}

/// A daemon bound to its port, not yet serving.
pub struct Daemon {
    listener: Listener,
    config: Arc<server::Config>,
    shared: Arc<Shared>,
    limits: Limits,
}

impl Daemon {
    /// Bind the port (so that callers know the address before serving).
    pub async fn bind(config: DaemonConfig) -> Result<Self> {
        let listener = match config.listen {
            Some(ip) => Listener::bind(SocketAddr::new(ip, config.port)).await?,
            None => Listener::bind_all(config.port).await?,
        };
        let server_config = server::Config {
            server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-eirinix-sshd")),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![config.host_key.clone()],
            auth_rejection_time: config.auth_rejection_time,
            // OpenSSH probes with "none" first: answering it at once costs nothing.
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            max_auth_attempts: usize::try_from(config.limits.max_auth_attempts)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
            nodelay: true,
            ..Default::default()
        };
        let env = match config.env {
            Some(env) => env,
            None => app_env(std::env::vars_os()),
        };
        Ok(Self {
            listener,
            config: Arc::new(server_config),
            shared: Arc::new(Shared {
                authorized: config.authorized_keys,
                shell: config.shell,
                env,
                working_dir: config.working_dir,
                allow_local_forwarding: config.allow_local_forwarding,
                connect_timeout: config.connect_timeout,
            }),
            limits: config.limits,
        })
    }

    /// The address the daemon listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve connections until `cancel`; open connections are then closed.
    pub async fn serve(self, cancel: CancellationToken) -> Result<()> {
        let shared = self.shared;
        let handler = |peer, pending| DaemonHandler {
            shared: shared.clone(),
            peer,
            pending,
        };
        self.listener
            .serve(self.config, &self.limits, Arc::default(), cancel, handler)
            .await
    }
}

/// Run the daemon until `cancel` (bind, then serve).
pub async fn run_daemon(config: DaemonConfig, cancel: CancellationToken) -> Result<()> {
    let daemon = Daemon::bind(config).await?;
    tracing::info!(addr = %daemon.local_addr()?, "eirinix-sshd listening");
    daemon.serve(cancel).await
}

struct DaemonHandler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    pending: Pending,
}

impl server::Handler for DaemonHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.shared.is_authorized(offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        if self.shared.is_authorized(key.public_key) {
            tracing::info!(peer = %self.peer, user, key = %fp, "ssh login accepted");
            self.pending.authenticated();
            Ok(Auth::Accept)
        } else {
            tracing::warn!(peer = %self.peer, user, key = %fp, "ssh login refused: key not authorized");
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(session::run_session(
            channel,
            session.handle(),
            self.shared.clone(),
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.shared.allow_local_forwarding {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Ok(port) = u16::try_from(port_to_connect) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let target = format!("{host_to_connect}:{port}");
        let connected = tokio::time::timeout(
            self.shared.connect_timeout,
            TcpStream::connect((host_to_connect, port)),
        )
        .await;
        match connected {
            Ok(Ok(mut stream)) => {
                reply.accept().await;
                tracing::debug!(peer = %self.peer, %target, "port forwarding opened");
                tokio::spawn(async move {
                    let mut ch = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut ch, &mut stream).await;
                });
            }
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "port forwarding: connect failed");
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!("connect to {target} failed: {e}"),
                    })
                    .await;
            }
            Err(_) => {
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: format!("connect to {target} timed out"),
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Sent without want-reply by clients; the session task resizes the pty.
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(subsystem = name, "subsystem refused");
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, address, port = *port, "remote port forwarding (-R) refused");
        Ok(false)
    }
}
