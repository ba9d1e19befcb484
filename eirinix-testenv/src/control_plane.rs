//! [`ControlPlane`]: a real etcd + kube-apiserver on loopback ports, torn down with the test.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::assets::{assets_dir, check_assets};
use crate::certs::{self, Pki};
use crate::process::{self, Proc, Resources};
use crate::{Error, Result};

/// How long [`ControlPlane::start`] waits for etcd and kube-apiserver by default.
const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times startup is retried when a picked port turns out to be taken.
const PORT_ATTEMPTS: usize = 3;

/// Options for starting a [`ControlPlane`]; obtained from [`ControlPlane::builder`].
#[derive(Debug, Clone)]
pub struct ControlPlaneBuilder {
    assets: Option<PathBuf>,
    node_support: bool,
    apiserver_flags: Vec<String>,
    etcd_flags: Vec<String>,
    startup_timeout: Duration,
}

impl Default for ControlPlaneBuilder {
    fn default() -> Self {
        ControlPlaneBuilder {
            assets: None,
            node_support: false,
            apiserver_flags: Vec::new(),
            etcd_flags: Vec::new(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl ControlPlaneBuilder {
    /// Uses the binaries in `dir` instead of looking them up with [`assets_dir`].
    pub fn assets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.assets = Some(dir.into());
        self
    }

    /// Appends a kube-apiserver flag such as `--feature-gates=Foo=true` (later flags win).
    pub fn apiserver_flag(mut self, flag: impl Into<String>) -> Self {
        self.apiserver_flags.push(flag.into());
        self
    }

    /// Appends several kube-apiserver flags.
    pub fn apiserver_flags<I, S>(mut self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.apiserver_flags
            .extend(flags.into_iter().map(Into::into));
        self
    }

    /// Appends an etcd flag.
    pub fn etcd_flag(mut self, flag: impl Into<String>) -> Self {
        self.etcd_flags.push(flag.into());
        self
    }

    /// How long to wait for each process to become ready (default 60 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The apiserver flags a real node needs (ServiceAccount admission, Node authorization,
    /// kubelet client credentials, endpoint routing for webhooks); set by [`crate::Cluster`].
    pub(crate) fn with_node_support(mut self) -> Self {
        self.node_support = true;
        self
    }

    /// Starts etcd and kube-apiserver and waits until the apiserver reports `/readyz` ok.
    pub async fn start(self) -> Result<ControlPlane> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let assets = match &self.assets {
            Some(dir) => {
                check_assets(dir)?;
                dir.clone()
            }
            None => assets_dir()?,
        };
        crate::stale::reap();
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match ControlPlane::try_start(&self, &assets).await {
                Err(e) if attempt < PORT_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::debug!(error = %e, "port conflict while starting; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(plane) => {
                    tracing::debug!(
                        url = %plane.api_url(),
                        dir = %plane.dir().display(),
                        elapsed = ?started.elapsed(),
                        "control plane ready"
                    );
                    return Ok(plane);
                }
            }
        }
    }
}

fn is_port_conflict(e: &Error) -> bool {
    match e {
        Error::Exited { tail, .. } => tail.contains("address already in use"),
        _ => false,
    }
}

/// A running etcd + kube-apiserver pair, with an admin identity and a kubeconfig.
///
/// Dropping it kills both processes and removes its temp dir. Children are also killed
/// (PDEATHSIG) if the test process dies, and [`ControlPlane::shared`] planes are cleaned up
/// at process exit.
pub struct ControlPlane {
    res: Arc<Resources>,
    assets: PathBuf,
    api_port: u16,
    etcd_port: u16,
    pki: Pki,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    startup_timeout: Duration,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("api_url", &self.api_url())
            .field("etcd_url", &self.etcd_url())
            .field("dir", &self.res.dir)
            .field("apiserver_pid", &self.apiserver_pid())
            .field("etcd_pid", &self.etcd_pid())
            .finish()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.res.cleanup();
    }
}

/// The shared plane of this test binary, or the message of its startup failure.
static SHARED: tokio::sync::OnceCell<std::result::Result<ControlPlane, String>> =
    tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// Options for a dedicated control plane (extra apiserver flags, binaries dir, timeout).
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// Starts a dedicated control plane with default options; it lives until dropped.
    pub async fn start() -> Result<ControlPlane> {
        ControlPlaneBuilder::default().start().await
    }

    /// The control plane shared by all tests of this test binary, started on first use.
    ///
    /// Usable from any tokio runtime (it holds no runtime-bound state; take a fresh
    /// [`client`](Self::client) per test). It is cleaned up when the process exits. A startup
    /// failure is remembered and reported to every later caller.
    pub async fn shared() -> Result<&'static ControlPlane> {
        let res = SHARED
            .get_or_init(|| async { ControlPlane::start().await.map_err(|e| e.to_string()) })
            .await;
        match res {
            Ok(plane) => Ok(plane),
            Err(msg) => Err(Error::Shared(msg.clone())),
        }
    }

    async fn try_start(opts: &ControlPlaneBuilder, assets: &Path) -> Result<ControlPlane> {
        let dir = process::create_dir()?;
        // From here on, `plane` (its Drop) owns the cleanup of the dir and processes.
        let pki = match certs::generate() {
            Ok(pki) => pki,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let ports = match free_ports::<3>() {
            Ok(ports) => ports,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let [api_port, etcd_port, peer_port] = ports;
        let file = |name: &str| dir.join(name);

        let etcd_args = etcd_args(&file("etcd-data"), etcd_port, peer_port, &opts.etcd_flags);
        let mut extra = if opts.node_support {
            node_flags(&dir)
        } else {
            // No controller manager creates ServiceAccounts, so pods could not be admitted.
            vec![
                "--disable-admission-plugins=ServiceAccount".into(),
                "--authorization-mode=RBAC".into(),
            ]
        };
        extra.extend(opts.apiserver_flags.iter().cloned());
        let apiserver_args = apiserver_args(&dir, api_port, etcd_port, &extra);
        let etcd = Proc::new("etcd", assets.join("etcd"), etcd_args, file("etcd.log"));
        let apiserver = Proc::new(
            "kube-apiserver",
            assets.join("kube-apiserver"),
            apiserver_args,
            file("kube-apiserver.log"),
        );
        let kubeconfig_yaml = kubeconfig_yaml(api_port, &pki);
        let plane = ControlPlane {
            res: Resources::register(dir.clone(), etcd, apiserver),
            assets: assets.to_owned(),
            api_port,
            etcd_port,
            pki,
            kubeconfig_path: file("kubeconfig"),
            kubeconfig_yaml,
            startup_timeout: opts.startup_timeout,
        };

        let p = &plane.pki;
        for (name, contents) in [
            ("ca.crt", &p.ca_pem),
            ("apiserver.crt", &p.serving_cert_pem),
            ("apiserver.key", &p.serving_key_pem),
            ("admin.crt", &p.admin_cert_pem),
            ("admin.key", &p.admin_key_pem),
            ("sa.key", &p.sa_key_pem),
            ("sa.pub", &p.sa_pub_pem),
            ("kubeconfig", &plane.kubeconfig_yaml),
        ] {
            write_private(&file(name), contents)?;
        }

        plane.res.etcd.start()?;
        plane.wait_etcd_ready().await?;
        plane.res.apiserver.start()?;
        plane.wait_apiserver_ready().await?;
        Ok(plane)
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The apiserver's secure port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The etcd client URL, `http://127.0.0.1:<port>` (no TLS, no auth).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// PEM of the CA that signed the apiserver serving cert and the admin client cert.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// DER of the CA certificate (for `caBundle`-style fields, base64 it).
    pub fn ca_der(&self) -> &[u8] {
        &self.pki.ca_der
    }

    /// PEM of the admin client certificate (group `system:masters`).
    pub fn admin_cert_pem(&self) -> &str {
        &self.pki.admin_cert_pem
    }

    /// PEM (PKCS#8) of the admin client key.
    pub fn admin_key_pem(&self) -> &str {
        &self.pki.admin_key_pem
    }

    /// Path of a kubeconfig with embedded credentials for the admin identity (for `kubectl`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The kubeconfig contents (YAML, credentials embedded).
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The directory the binaries came from.
    pub fn assets_dir(&self) -> &Path {
        &self.assets
    }

    /// A client certificate for `user` (subject CN), in `group` (subject O) if given, signed by
    /// the plane's CA: `(certificate PEM, key PEM)`. The apiserver authenticates it as that user.
    pub fn client_certificate(&self, user: &str, group: Option<&str>) -> Result<(String, String)> {
        Ok(certs::client_cert(&self.pki, user, group)?)
    }

    /// The plane's temp dir (certs, kubeconfig, etcd data, process logs).
    pub fn dir(&self) -> &Path {
        &self.res.dir
    }

    /// The file receiving kube-apiserver's stdout and stderr.
    pub fn apiserver_log_path(&self) -> &Path {
        &self.res.apiserver.log
    }

    /// The file receiving etcd's stdout and stderr.
    pub fn etcd_log_path(&self) -> &Path {
        &self.res.etcd.log
    }

    /// The pid of the running kube-apiserver, if any.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.res.apiserver.pid()
    }

    /// The pid of the running etcd, if any.
    pub fn etcd_pid(&self) -> Option<u32> {
        self.res.etcd.pid()
    }

    /// A `kube::Config` for the admin identity (built from the kubeconfig).
    pub async fn config(&self) -> Result<kube::Config> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml)?;
        Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A new admin client, bound to the current tokio runtime (take one per test).
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    ///
    /// Namespaces never finish deleting here (no controller manager), so always use fresh ones.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let name = crate::unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client().await?)
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(name)
    }

    /// Kills kube-apiserver (SIGKILL) and starts it again on the same port; waits until ready.
    pub async fn restart_apiserver(&self) -> Result<()> {
        self.res.apiserver.kill();
        self.start_apiserver().await
    }

    /// Kills kube-apiserver (SIGKILL); clients see connection errors until [`start_apiserver`](Self::start_apiserver).
    pub fn stop_apiserver(&self) {
        self.res.apiserver.kill();
    }

    /// Starts kube-apiserver again (same port, same flags) if stopped, and waits until ready.
    pub async fn start_apiserver(&self) -> Result<()> {
        if self.res.apiserver.exit_status().is_some() {
            self.res.apiserver.start()?;
        }
        self.wait_apiserver_ready().await
    }

    /// Kills etcd (SIGKILL), starts it on the same ports with the same data, and waits until
    /// both etcd and the apiserver (if running) are ready again.
    pub async fn restart_etcd(&self) -> Result<()> {
        self.res.etcd.kill();
        self.start_etcd().await
    }

    /// Kills etcd (SIGKILL); the apiserver keeps running but fails storage requests.
    pub fn stop_etcd(&self) {
        self.res.etcd.kill();
    }

    /// Starts etcd again (same ports and data) if stopped, then waits for etcd and the apiserver.
    pub async fn start_etcd(&self) -> Result<()> {
        if self.res.etcd.exit_status().is_some() {
            self.res.etcd.start()?;
        }
        self.wait_etcd_ready().await?;
        if self.res.apiserver.exit_status().is_none() {
            self.wait_apiserver_ready().await?;
        }
        Ok(())
    }

    async fn wait_etcd_ready(&self) -> Result<()> {
        let port = self.etcd_port;
        wait_ready(&self.res.etcd, self.startup_timeout, || etcd_health(port)).await
    }

    async fn wait_apiserver_ready(&self) -> Result<()> {
        // A plain HTTPS GET (anonymous users may read /readyz): a kube client would log every
        // 500 of a starting apiserver as an error.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(
            self.ca_der().to_vec(),
        ))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = Arc::new(tls);
        let port = self.api_port();
        let probe = || {
            let tls = tls.clone();
            async move {
                let fut = async {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .map_err(|e| e.to_string())?;
                    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                        .map_err(|e| e.to_string())?;
                    let mut stream = tokio_rustls::TlsConnector::from(tls)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| e.to_string())?;
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    stream
                        .write_all(
                            b"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut head = [0u8; 16];
                    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
                    let line = String::from_utf8_lossy(&head[..n]).to_string();
                    if line.starts_with("HTTP/1.1 200") {
                        Ok(())
                    } else {
                        Err(format!("/readyz: {line}"))
                    }
                };
                tokio::time::timeout(Duration::from_secs(2), fut)
                    .await
                    .map_err(|_| "/readyz timed out".to_owned())?
            }
        };
        wait_ready(&self.res.apiserver, self.startup_timeout, probe).await
    }
}

/// Polls `probe` until it succeeds, the process exits, or `timeout` elapses.
async fn wait_ready<F, Fut>(proc: &Proc, timeout: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc.exit_status() {
            return Err(Error::Exited {
                name: proc.name,
                status,
                log: proc.log.clone(),
                tail: proc.log_tail(),
            });
        }
        let last_probe = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "probe timed out after 5s".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                name: proc.name,
                timeout,
                last_probe,
                log: proc.log.clone(),
                tail: proc.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Probes etcd's `/health` endpoint with a minimal HTTP/1.0 request.
async fn etcd_health(port: u16) -> std::result::Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    if text.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(format!("etcd /health: {}", text.trim()))
    }
}

/// Distinct free loopback ports (the listeners are held together, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| Error::io("binding a free loopback port", e))?;
        *port = listener
            .local_addr()
            .map_err(|e| Error::io("reading a bound port", e))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn etcd_args(data_dir: &Path, port: u16, peer_port: u16, extra: &[String]) -> Vec<OsString> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut args: Vec<OsString> = vec![
        "--name=eirinix-testenv".into(),
        format!("--data-dir={}", data_dir.display()).into(),
        format!("--listen-client-urls={client}").into(),
        format!("--advertise-client-urls={client}").into(),
        format!("--listen-peer-urls={peer}").into(),
        format!("--initial-advertise-peer-urls={peer}").into(),
        format!("--initial-cluster=eirinix-testenv={peer}").into(),
        "--initial-cluster-state=new".into(),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

fn apiserver_args(dir: &Path, port: u16, etcd_port: u16, extra: &[String]) -> Vec<OsString> {
    let f = |name: &str| dir.join(name).display().to_string();
    let mut args: Vec<OsString> = vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}").into(),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}").into(),
        format!("--cert-dir={}", dir.display()).into(),
        format!("--tls-cert-file={}", f("apiserver.crt")).into(),
        format!("--tls-private-key-file={}", f("apiserver.key")).into(),
        format!("--client-ca-file={}", f("ca.crt")).into(),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", f("sa.pub")).into(),
        format!("--service-account-signing-key-file={}", f("sa.key")).into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--endpoint-reconciler-type=none".into(),
        "--allow-privileged=true".into(),
        "--kubelet-preferred-address-types=InternalIP".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// kube-apiserver flags of a cluster with a real node (later flags win over the defaults above).
fn node_flags(dir: &Path) -> Vec<String> {
    let f = |name: &str| dir.join(name).display().to_string();
    vec![
        // Pods get ServiceAccount tokens (the plain control plane disables that plugin).
        "--enable-admission-plugins=NodeRestriction".into(),
        "--authorization-mode=Node,RBAC".into(),
        // Webhook and aggregated-API calls go to endpoint (pod) addresses, which are routed into
        // the node; the apiserver is not on the pod network and has no kube-proxy of its own.
        "--enable-aggregator-routing=true".into(),
        format!("--kubelet-client-certificate={}", f("admin.crt")),
        format!("--kubelet-client-key={}", f("admin.key")),
        // `pods/log?stream=Stdout|Stderr` (alpha): the logs extension tells the streams apart.
        "--feature-gates=PodLogsQuerySplitStreams=true".into(),
    ]
}

fn kubeconfig_yaml(api_port: u16, pki: &Pki) -> String {
    let ca = B64.encode(&pki.ca_pem);
    let cert = B64.encode(&pki.admin_cert_pem);
    let key = B64.encode(&pki.admin_key_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: eirinix-testenv
  cluster:
    server: https://127.0.0.1:{api_port}
    certificate-authority-data: {ca}
users:
- name: eirinix-testenv-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: eirinix-testenv
  context:
    cluster: eirinix-testenv
    user: eirinix-testenv-admin
    namespace: default
current-context: eirinix-testenv
"
    )
}
