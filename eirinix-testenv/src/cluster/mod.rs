//! [`Cluster`]: a real single-node Kubernetes cluster on this machine. The control plane of
//! [`ControlPlane`] plus kube-controller-manager and kube-scheduler, and a node: containerd and
//! runc from Debian, kubelet and kube-proxy, a CNI bridge, and storage for claims.
//!
//! The node lives in namespaces of its own, held by a small holder process: a network namespace
//! (its address `10.245.<slot>.2`, the pod bridge, kube-proxy's iptables rules) and a mount
//! namespace (containerd's and kubelet's mounts). The host gets one veth end and a route to the
//! pod CIDR; the apiserver stays on 127.0.0.1 and is relayed into the node. Every node process
//! runs in one cgroup subtree, so teardown kills all of them (containers and shims included) and
//! the namespaces, mounts, bridge and rules vanish with them, also after a SIGKILL (the next
//! start reaps what a dead run left).

pub(crate) mod cgroup;
mod components;
mod containerd;
mod exec;
mod images;
mod netns;
mod relay;
mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};

pub use exec::ExecOutput;
pub use images::{APP_IMAGE, APP_UID, app as app_image};
pub use storage::STORAGE_CLASS;

use self::cgroup::CgroupTree;
use self::containerd::Containerd;
use self::netns::{Addresses, Confinement, Slot};
use crate::image::{ImageArchive, ImageBuilder};
use crate::process::{self, Proc, Teardown};
use crate::{ControlPlane, ControlPlaneBuilder, Error, Result};

/// The name of the node (its kubelet's `--hostname-override`).
pub const NODE_NAME: &str = "eirinix-node";

/// How long [`ClusterBuilder::start`] waits for the node by default.
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(180);

/// Binaries a cluster needs besides etcd and kube-apiserver.
const NODE_BINARIES: [&str; 4] = [
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// Options for starting a [`Cluster`]; obtained from [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    plane: ControlPlaneBuilder,
    node_timeout: Duration,
    images: Vec<ImageBuilder>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            plane: ControlPlane::builder(),
            node_timeout: DEFAULT_NODE_TIMEOUT,
            images: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// Options of the control plane (binaries dir, extra apiserver flags).
    pub fn control_plane(mut self, plane: ControlPlaneBuilder) -> Self {
        self.plane = plane;
        self
    }

    /// How long to wait for the node to become Ready (default 180 s).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// An image to load into the node before it registers (more with [`Cluster::load_image`]).
    pub fn image(mut self, image: ImageBuilder) -> Self {
        self.images.push(image);
        self
    }

    /// Starts the control plane, the controllers and the node, and waits until the node is Ready.
    pub async fn start(self) -> Result<Cluster> {
        preflight()?;
        crate::stale::reap();
        let started = Instant::now();
        let plane = self.plane.with_node_support().start().await?;
        let slot = Slot::claim()?;
        let addrs = slot.addrs;
        let dir = plane.dir().join("node");
        let cgroup = CgroupTree::create(format!(
            "{}{}-{}",
            cgroup::PREFIX,
            std::process::id(),
            fastrand::u32(..)
        ))?;
        let node = Arc::new(NodeParts::new(&plane, dir, cgroup, slot)?);
        let teardown: Arc<dyn Teardown> = node.clone();
        process::register_at_exit(&teardown);
        let bg = Background::new()?;
        let mut cluster = Cluster {
            bg,
            node,
            plane,
            addrs,
        };
        cluster.boot(&self.images, self.node_timeout).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "cluster ready");
        Ok(cluster)
    }
}

/// Fails early, with what to do, when this machine cannot run the node.
fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    preflight_on(root, std::env::var_os("PATH").as_deref())
}

/// The programs the node runs or drives, looked up on `PATH`.
const NODE_TOOLS: [&str; 6] = [
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "ip",
    "nsenter",
];

/// What the node needs from the machine: root and the runtime's tools on `path`.
fn preflight_on(root: bool, path: Option<&std::ffi::OsStr>) -> Result<()> {
    if !root {
        return Err(Error::NodeUnsupported(
            "the real node needs root (network and mount namespaces, cgroups, mounts)".into(),
        ));
    }
    for tool in NODE_TOOLS {
        if which(path, tool).is_none() {
            return Err(Error::NodeUnsupported(format!(
                "`{tool}` is not on PATH: install Debian's containerd, runc, iproute2 and \
                 util-linux (scripts/install-deps.sh)"
            )));
        }
    }
    Ok(())
}

fn which(path: Option<&std::ffi::OsStr>, tool: &str) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A tokio runtime on its own thread for the cluster's background work (the apiserver relay,
/// the storage provisioner), so that it outlives the runtimes of individual tests.
struct Background {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Background {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("eirinix-testenv-cluster")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the cluster's background runtime", e))?;
        Ok(Background {
            runtime: Some(runtime),
        })
    }

    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.runtime {
            rt.spawn(fut);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The node's processes and resources.
struct NodeParts {
    dir: PathBuf,
    host_link: String,
    cgroup: CgroupTree,
    _slot: Slot,
    containerd: Containerd,
    holder: Proc,
    containerd_proc: Proc,
    kubelet: Proc,
    kube_proxy: Proc,
    controller_manager: Proc,
    scheduler: Proc,
    confinement: Shared<Confinement>,
    cleaned: AtomicBool,
}

/// A value set once the holder runs, read by the node processes' setup when they start.
type Shared<T> = Arc<std::sync::Mutex<Option<Arc<T>>>>;

impl NodeParts {
    fn new(plane: &ControlPlane, dir: PathBuf, cgroup: CgroupTree, slot: Slot) -> Result<Self> {
        let assets = plane.assets_dir().to_owned();
        let missing: Vec<String> = NODE_BINARIES
            .iter()
            .filter(|b| !assets.join(b).is_file())
            .map(|b| (*b).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingBinaries {
                dir: assets,
                source_hint: "the control plane's assets directory",
                missing,
            });
        }
        for sub in [
            "",
            "kubelet",
            "pod-logs",
            "volumes",
            "images",
            "containerd",
            "pki",
        ] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let addrs = slot.addrs;
        let log = |name: &str| dir.join(format!("{name}.log"));
        let pki = dir.join("pki");
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let p = pki.join(name);
            std::fs::write(&p, contents)
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
            Ok(p)
        };
        let ca = plane.dir().join("ca.crt");
        let (kubelet_cert, kubelet_key) =
            plane.client_certificate(&format!("system:node:{NODE_NAME}"), Some("system:nodes"))?;
        let (proxy_cert, proxy_key) = plane.client_certificate("system:kube-proxy", None)?;
        let inside = format!("https://127.0.0.1:{}", components::NODE_API_PORT);
        let kubelet_kubeconfig = write(
            "kubelet.kubeconfig",
            &components::kubeconfig(
                &inside,
                &ca,
                &write("kubelet.crt", &kubelet_cert)?,
                &write("kubelet.key", &kubelet_key)?,
            ),
        )?;
        let proxy_kubeconfig = write(
            "kube-proxy.kubeconfig",
            &components::kubeconfig(
                &inside,
                &ca,
                &write("kube-proxy.crt", &proxy_cert)?,
                &write("kube-proxy.key", &proxy_key)?,
            ),
        )?;
        let containerd = Containerd::new(dir.join("containerd"));
        containerd.write_config(&addrs)?;
        let kubelet_config = write(
            "kubelet.yaml",
            &components::kubelet_config(
                &components::KubeletPaths {
                    ca: &ca,
                    socket: &containerd.socket(),
                    pod_logs: &dir.join("pod-logs"),
                    cgroup_root: &cgroup.path(),
                },
                &addrs,
            ),
        )?;
        let proxy_config = write(
            "kube-proxy.yaml",
            &components::kube_proxy_config(&proxy_kubeconfig, NODE_NAME, &addrs),
        )?;
        let (sleep, holder_setup) = netns::holder_setup(cgroup.join_files())?;
        let holder = Proc::new("node-holder", sleep, vec!["infinity".into()], log("holder"))
            .with_setup(holder_setup);
        let confinement: Shared<Confinement> = Arc::default();
        let inside_node = {
            let confinement = confinement.clone();
            let setup: process::Setup = Arc::new(move |cmd| {
                if let Some(c) = process::lock(&confinement).clone() {
                    c.apply(cmd);
                }
            });
            setup
        };
        let containerd_proc = Proc::new(
            "containerd",
            which(std::env::var_os("PATH").as_deref(), "containerd")
                .unwrap_or_else(|| "containerd".into()),
            containerd.args(),
            log("containerd"),
        )
        .with_setup(inside_node.clone());
        let kubelet = Proc::new(
            "kubelet",
            assets.join("kubelet"),
            components::kubelet_args(
                &kubelet_config,
                &kubelet_kubeconfig,
                &dir.join("kubelet"),
                NODE_NAME,
                &addrs,
            ),
            log("kubelet"),
        )
        .with_setup(inside_node.clone());
        let kube_proxy = Proc::new(
            "kube-proxy",
            assets.join("kube-proxy"),
            vec![
                format!("--config={}", proxy_config.display()).into(),
                "--v=1".into(),
            ],
            log("kube-proxy"),
        )
        .with_setup(inside_node);
        let controller_manager = Proc::new(
            "kube-controller-manager",
            assets.join("kube-controller-manager"),
            components::controller_manager_args(
                plane.dir(),
                plane.kubeconfig_path(),
                &addrs.pod_cidr(),
            ),
            log("kube-controller-manager"),
        );
        let scheduler = Proc::new(
            "kube-scheduler",
            assets.join("kube-scheduler"),
            components::scheduler_args(plane.kubeconfig_path()),
            log("kube-scheduler"),
        );
        Ok(NodeParts {
            dir,
            host_link: addrs.host_link(),
            cgroup,
            _slot: slot,
            containerd,
            holder,
            containerd_proc,
            kubelet,
            kube_proxy,
            controller_manager,
            scheduler,
            confinement,
            cleaned: AtomicBool::new(false),
        })
    }

    fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        self.controller_manager.kill();
        self.scheduler.kill();
        // Everything else (holder, containerd, shims, containers, kubelet, kube-proxy) is in the
        // node's cgroup: freeze and kill it all, then reap our direct children.
        self.cgroup.destroy();
        for p in [
            &self.kube_proxy,
            &self.kubelet,
            &self.containerd_proc,
            &self.holder,
        ] {
            p.kill();
        }
        wait_link_gone(&self.host_link);
    }
}

/// The kernel dismantles a dead network namespace (and the veth peer in ours) asynchronously:
/// wait for it (bounded), so the slot can be reused at once.
fn wait_link_gone(link: &str) {
    let path = Path::new("/sys/class/net").join(link);
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Teardown for NodeParts {
    fn cleanup_at_exit(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        self.controller_manager.kill_at_exit();
        self.scheduler.kill_at_exit();
        self.cgroup.destroy();
        for p in [
            &self.kube_proxy,
            &self.kubelet,
            &self.containerd_proc,
            &self.holder,
        ] {
            p.kill_at_exit();
        }
    }
}

/// A real single-node cluster: [`ControlPlane`] + controllers + a node that runs pods.
///
/// Dropping it kills every process of the node (containers included) and the control plane,
/// and removes everything they made. The node lives in network and mount namespaces of its own and one cgroup subtree, so nothing outlives it.
pub struct Cluster {
    bg: Background,
    node: Arc<NodeParts>,
    plane: ControlPlane,
    addrs: Addresses,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("plane", &self.plane)
            .field("node", &NODE_NAME)
            .field("node_ip", &self.addrs.node_ip())
            .field("pod_cidr", &self.addrs.pod_cidr())
            .field("dir", &self.node.dir)
            .finish()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.node.cleanup();
    }
}

/// The shared cluster of this test binary, or the message of its startup failure.
static SHARED: tokio::sync::OnceCell<std::result::Result<Cluster, String>> =
    tokio::sync::OnceCell::const_new();

impl Cluster {
    /// Options for a dedicated cluster.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a dedicated cluster with default options; it lives until dropped.
    pub async fn start() -> Result<Cluster> {
        ClusterBuilder::default().start().await
    }

    /// The cluster shared by all tests of this test binary, started on first use and torn down
    /// when the process exits. A startup failure is remembered and reported to every caller.
    pub async fn shared() -> Result<&'static Cluster> {
        let res = SHARED
            .get_or_init(|| async { Cluster::start().await.map_err(|e| e.to_string()) })
            .await;
        match res {
            Ok(c) => Ok(c),
            Err(msg) => Err(Error::Shared(msg.clone())),
        }
    }

    /// The control plane (apiserver URL, kubeconfig, admin credentials, fault injection).
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// A new admin client bound to the current tokio runtime (take one per test).
    pub async fn client(&self) -> Result<kube::Client> {
        self.plane.client().await
    }

    /// Creates namespace `<prefix>-<random>` and waits for its `default` ServiceAccount, so pods
    /// can be created in it at once. Namespaces are deleted for real here (a namespace controller
    /// runs).
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let ns = self.plane.namespace(prefix).await?;
        let client = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &ns);
        wait_until(
            Duration::from_secs(60),
            "the namespace's default ServiceAccount",
            || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten().map(drop) }
            },
        )
        .await?;
        Ok(ns)
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        NODE_NAME
    }

    /// The node's address (its InternalIP; kubelet serves there). Reachable from this machine,
    /// like pod addresses: both are inside namespaces the cluster made.
    pub fn node_ip(&self) -> std::net::Ipv4Addr {
        self.addrs.node_ip()
    }

    /// The CIDR pod addresses come from.
    pub fn pod_cidr(&self) -> String {
        self.addrs.pod_cidr()
    }

    /// The node's directory: process logs (`kubelet.log`, `containerd.log`, `kube-proxy.log`,
    /// `kube-controller-manager.log`, `kube-scheduler.log`), pod logs, volumes.
    pub fn dir(&self) -> &Path {
        &self.node.dir
    }

    /// The cgroup (`/<name>`, in every cgroup v1 hierarchy) holding every process of the node:
    /// containerd, its shims, the containers, kubelet and kube-proxy.
    pub fn cgroup_path(&self) -> String {
        self.node.cgroup.path()
    }

    /// The host's end of the link to the node (a veth interface).
    pub fn host_link(&self) -> String {
        self.addrs.host_link()
    }

    /// The directory where kubelet writes container logs (`<ns>_<pod>_<uid>/<container>/N.log`).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.node.dir.join("pod-logs")
    }

    /// Makes a TCP service of this machine listening on `127.0.0.1:<host_port>` (e.g. a log
    /// aggregator or a syslog server a test runs) reachable from pods: returns the address on
    /// the node that relays to it.
    pub fn forward_to_host(&self, host_port: u16) -> Result<std::net::SocketAddr> {
        let conf = process::lock(&self.node.confinement)
            .clone()
            .ok_or_else(|| Error::NodeStart("the node's namespaces are not set up".into()))?;
        let net_fd = conf
            .net_fd()
            .ok_or_else(|| Error::NodeStart("no network namespace handle for the node".into()))?;
        let listeners = netns::bind_inside(net_fd, vec![(self.addrs.node_ip(), 0).into()])?;
        let addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .ok_or_else(|| Error::NodeStart("no relay listener inside the node".into()))?;
        self.bg.spawn(relay::serve(listeners, host_port));
        Ok(addr)
    }

    /// Builds `image` and loads it into the node's containerd; pods then use its name with
    /// `imagePullPolicy: IfNotPresent` (or `Never`).
    pub fn load_image(&self, image: &ImageBuilder) -> Result<ImageArchive> {
        let file = self
            .node
            .dir
            .join("images")
            .join(format!("{}.tar", image.name().replace(['/', ':'], "_")));
        let archive = image.write_archive(&file)?;
        self.load_image_archive(&archive)?;
        Ok(archive)
    }

    /// Loads an OCI image archive (e.g. from `scripts/build-image.sh`) into the node.
    pub fn load_image_archive(&self, archive: &ImageArchive) -> Result<()> {
        self.node.containerd.import(archive)
    }

    /// Runs `command` in a container of a running pod (the `pods/exec` API, through the
    /// apiserver and kubelet) and returns its output and exit code.
    pub async fn exec<I, T>(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        command: I,
    ) -> Result<ExecOutput>
    where
        I: IntoIterator<Item = T> + std::fmt::Debug,
        T: Into<String>,
    {
        exec::exec(&self.client().await?, ns, pod, container, command).await
    }

    async fn boot(&mut self, images: &[ImageBuilder], timeout: Duration) -> Result<()> {
        let node = self.node.clone();
        node.controller_manager.start()?;
        node.scheduler.start()?;
        node.holder.start()?;
        let holder = node
            .holder
            .pid()
            .ok_or_else(|| Error::NodeStart("the node's holder process did not start".into()))?;
        netns::wire(holder, &self.addrs)?;
        let conf = Arc::new(Confinement::inside(self.node.cgroup.join_files(), holder)?);
        *process::lock(&node.confinement) = Some(conf.clone());
        let net_fd = conf
            .net_fd()
            .ok_or_else(|| Error::NodeStart("no network namespace handle for the node".into()))?;
        let listeners = netns::bind_inside(
            net_fd,
            vec![
                (std::net::Ipv4Addr::LOCALHOST, components::NODE_API_PORT).into(),
                (self.addrs.node_ip(), components::NODE_API_PORT).into(),
            ],
        )?;
        self.bg
            .spawn(relay::serve(listeners, self.plane.api_port()));

        node.containerd_proc.start()?;
        let c = node.containerd.clone();
        let watch = node.containerd_proc.pid();
        tokio::task::spawn_blocking(move || {
            c.wait_ready(timeout, || {
                watch.and_then(|pid| (!process::process_alive(pid as i32)).then(|| "exited".into()))
            })
        })
        .await
        .map_err(|e| Error::NodeStart(format!("waiting for containerd: {e}")))?
        .map_err(|e| self.with_log(e, "containerd"))?;

        let mut all = vec![images::pause()?, images::app()?];
        all.extend(images.iter().cloned());
        for image in &all {
            self.load_image(image)?;
        }

        node.kubelet.start()?;
        node.kube_proxy.start()?;
        let client = self.client().await?;
        self.publish_apiserver_endpoint(&client).await?;
        storage::create_class(&client).await?;
        let config = self.plane.config().await?;
        let volumes = node.dir.join("volumes");
        self.bg.spawn(async move {
            match kube::Client::try_from(config) {
                Ok(client) => storage::run(client, volumes, NODE_NAME.into()).await,
                Err(e) => tracing::warn!(error = %e, "storage provisioner has no client"),
            }
        });
        self.wait_node_ready(&client, timeout).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        wait_until(timeout, "the default ServiceAccount", || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten().map(drop) }
        })
        .await
        .map_err(|e| self.with_log(e, "kube-controller-manager"))?;
        Ok(())
    }

    /// The `kubernetes` Service's endpoint: the relay inside the node (the apiserver itself
    /// listens on the host's loopback, which pods cannot reach).
    async fn publish_apiserver_endpoint(&self, client: &kube::Client) -> Result<()> {
        // Built from JSON: field optionality differs across the k8s-openapi version features.
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "kubernetes-eirinix-testenv",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "eirinix-testenv",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.addrs.node_ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": components::NODE_API_PORT, "protocol": "TCP"}],
        }))
        .map_err(|e| Error::NodeStart(format!("the kubernetes EndpointSlice: {e}")))?;
        Api::<EndpointSlice>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &slice)
            .await?;
        Ok(())
    }

    async fn wait_node_ready(&self, client: &kube::Client, timeout: Duration) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + timeout;
        loop {
            for p in [&self.node.kubelet, &self.node.kube_proxy, &self.node.holder] {
                if let Some(status) = p.exit_status() {
                    return Err(Error::Exited {
                        name: p.name,
                        status,
                        log: p.log.clone(),
                        tail: p.log_tail(),
                    });
                }
            }
            let node = nodes.get_opt(NODE_NAME).await.ok().flatten();
            if node.as_ref().is_some_and(node_schedulable) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let state = node.map_or("not registered".to_owned(), |n| {
                    format!("{:?}", n.status.and_then(|s| s.conditions))
                });
                return Err(Error::NodeStart(format!(
                    "node {NODE_NAME} not Ready and untainted after {timeout:?} ({state}); last \
                     lines of {}:\n{}",
                    self.node.kubelet.log.display(),
                    self.node.kubelet.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn with_log(&self, e: Error, component: &str) -> Error {
        let log = self.node.dir.join(format!("{component}.log"));
        Error::NodeStart(format!(
            "{e}; last lines of {}:\n{}",
            log.display(),
            process::tail_of(&log, 30)
        ))
    }
}

/// Ready, and without the not-ready / unreachable taints the node lifecycle controller removes.
fn node_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.effect == "NoSchedule"));
    ready && !tainted
}

/// Polls `probe` every 200 ms until it returns `Some`, or fails naming `what` after `timeout`.
async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::NodeStart(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_the_runtime_is_refused_with_the_fix() {
        let empty = tempfile::tempdir().unwrap();
        let err = preflight_on(true, Some(empty.path().as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the real node cannot run here"), "{err}");
        assert!(err.contains("`containerd` is not on PATH"), "{err}");
        assert!(
            err.contains("scripts/install-deps.sh"),
            "how to fix it: {err}"
        );
        let err = preflight_on(true, None).unwrap_err().to_string();
        assert!(err.contains("not on PATH"), "{err}");
        let err = preflight_on(false, std::env::var_os("PATH").as_deref())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs root"), "{err}");

        // Every tool present (empty files will do for the check): accepted.
        for tool in NODE_TOOLS {
            std::fs::write(empty.path().join(tool), b"").unwrap();
        }
        preflight_on(true, Some(empty.path().as_os_str())).unwrap();
    }
}
