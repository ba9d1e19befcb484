//! `eirinix dev`: a local control plane (real etcd + kube-apiserver) for development.

use std::path::PathBuf;

use anyhow::Context as _;
use eirinix_testenv::ControlPlane;

use crate::cli::DevArgs;

/// The provisioning script of this source tree, when the binary runs from a checkout.
fn provision_script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EIRINIX_PROVISION_SCRIPT") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/provision.sh"
    ));
    p.exists().then_some(p)
}

/// The script installing the Debian packages of the node, when the binary runs from a checkout.
fn install_deps_script() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/install-deps.sh"
    ));
    p.exists().then_some(p)
}

/// Installs the Debian packages the local node needs (containerd, runc, CNI plugins, ...) when
/// one is missing, with the repository's script (the user is told what runs).
pub fn ensure_node_packages() -> anyhow::Result<()> {
    let present = |p: &str| std::path::Path::new(p).exists();
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
    };
    let complete = [
        "containerd",
        "runc",
        "ctr",
        "iptables",
        "nsenter",
        "ip",
        "ssh",
    ]
    .iter()
    .all(|t| on_path(t))
        && present("/usr/lib/cni/bridge")
        && present("/bin/busybox");
    if complete {
        return Ok(());
    }
    let script = install_deps_script().context(
        "the local node needs Debian's containerd, runc, containernetworking-plugins, iptables, \
         busybox-static and openssh-client (scripts/install-deps.sh in the eirinix repository)",
    )?;
    eprintln!(
        "eirinix: installing the Debian packages of the local node with {}",
        script.display()
    );
    let status = std::process::Command::new(&script)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    anyhow::ensure!(status.success(), "{} failed ({status})", script.display());
    Ok(())
}

/// Binaries a local cluster needs besides etcd and kube-apiserver.
const NODE_BINARIES: [&str; 4] = [
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// The directory of the Kubernetes binaries (with the node's when `node`), provisioning them
/// (with progress on stderr) when missing.
pub fn ensure_assets(node: bool) -> anyhow::Result<PathBuf> {
    let found = eirinix_testenv::assets_dir().and_then(|dir| {
        let missing: Vec<String> = NODE_BINARIES
            .iter()
            .filter(|b| node && !dir.join(b).is_file())
            .map(|b| (*b).to_owned())
            .collect();
        if missing.is_empty() {
            Ok(dir)
        } else {
            Err(eirinix_testenv::Error::MissingBinaries {
                dir,
                source_hint: "the assets directory",
                missing,
            })
        }
    });
    match found {
        Ok(dir) => Ok(dir),
        Err(missing) => {
            let script = provision_script().with_context(|| missing.to_string())?;
            eprintln!(
                "eirinix: the Kubernetes binaries are not built yet; running {} (the first build takes about 10 minutes on 2 cores)",
                script.display()
            );
            let status = std::process::Command::new(&script)
                .stdout(std::process::Stdio::null())
                .status()
                .with_context(|| format!("cannot run {}", script.display()))?;
            anyhow::ensure!(status.success(), "{} failed ({status})", script.display());
            Ok(eirinix_testenv::assets_dir()?)
        }
    }
}

/// Start a local control plane (provisioning it if needed).
pub async fn start_plane() -> anyhow::Result<ControlPlane> {
    let assets = ensure_assets(false)?;
    eprintln!("eirinix: starting etcd and kube-apiserver on 127.0.0.1");
    ControlPlane::builder()
        .assets_dir(assets)
        .start()
        .await
        .context("starting the local control plane")
}

/// Run a local cluster (or, with `--apiserver-only`, a control plane) until interrupted, with
/// its kubeconfig written out.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (cluster, plane) = if args.apiserver_only {
        (None, Some(start_plane().await?))
    } else {
        let assets = ensure_assets(true)?;
        ensure_node_packages()?;
        eprintln!("eirinix: starting a local cluster (control plane, controllers, one node)");
        let cluster = eirinix_testenv::Cluster::builder()
            .control_plane(ControlPlane::builder().assets_dir(assets))
            .start()
            .await
            .context("starting the local cluster (the node needs root)")?;
        (Some(cluster), None)
    };
    let cp = match (&cluster, &plane) {
        (Some(c), _) => c.plane(),
        (None, Some(p)) => p,
        (None, None) => anyhow::bail!("no control plane started"),
    };
    let path = match args.kubeconfig {
        Some(p) => p,
        None => {
            let dir = eirinix_testenv::default_assets_dir()
                .and_then(|d| d.parent().and_then(|p| p.parent()).map(|p| p.join("dev")))
                .unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&dir)?;
            dir.join("kubeconfig")
        }
    };
    std::fs::write(&path, cp.kubeconfig_yaml())
        .with_context(|| format!("writing {}", path.display()))?;
    match &cluster {
        Some(c) => println!(
            "# local cluster at {}, node {} ({}), pods from {} (Ctrl-C stops it)",
            cp.api_url(),
            c.node_name(),
            c.node_ip(),
            c.pod_cidr()
        ),
        None => println!(
            "# local control plane at {} (Ctrl-C stops it)",
            cp.api_url()
        ),
    }
    println!("export KUBECONFIG={}", path.display());
    println!("{}", cp.kubeconfig_yaml());
    eirinix_core::manager::shutdown_signal().await;
    eprintln!("eirinix: stopping the local cluster");
    drop(cluster);
    drop(plane);
    let _ = std::fs::remove_file(&path);
    Ok(())
}
