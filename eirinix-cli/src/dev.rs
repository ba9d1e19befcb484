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

/// The kube-apiserver/etcd directory, provisioning it (with progress on stderr) when missing.
pub fn ensure_assets() -> anyhow::Result<PathBuf> {
    match eirinix_testenv::assets_dir() {
        Ok(dir) => Ok(dir),
        Err(missing) => {
            let script = provision_script().with_context(|| missing.to_string())?;
            eprintln!(
                "eirinix: kube-apiserver and etcd are not built yet; running {} (the first build takes 10-25 minutes)",
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
    let assets = ensure_assets()?;
    eprintln!("eirinix: starting etcd and kube-apiserver on 127.0.0.1");
    ControlPlane::builder()
        .assets_dir(assets)
        .start()
        .await
        .context("starting the local control plane")
}

/// Run a control plane until interrupted, with its kubeconfig written out.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let cp = start_plane().await?;
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
    println!(
        "# local control plane at {} (Ctrl-C stops it)",
        cp.api_url()
    );
    println!("export KUBECONFIG={}", path.display());
    println!("{}", cp.kubeconfig_yaml());
    eirinix_core::manager::shutdown_signal().await;
    eprintln!("eirinix: stopping the local control plane");
    drop(cp);
    let _ = std::fs::remove_file(&path);
    Ok(())
}
