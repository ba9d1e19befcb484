//! Locating the `etcd` and `kube-apiserver` binaries.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Kubernetes version `scripts/provision.sh` builds kube-apiserver from by default.
pub const KUBE_VERSION: &str = "v1.37.2";

/// etcd version `scripts/provision.sh` builds by default.
pub const ETCD_VERSION: &str = "v3.6.16";

/// How to provision the binaries; included in every "binaries missing" error.
pub const PROVISION_HINT: &str = "run `scripts/provision.sh` from the eirinix repository (it builds \
     kube-apiserver and etcd from Go modules into its cache directory, printed by \
     `scripts/provision.sh --print`), or set KUBEBUILDER_ASSETS (or EIRINIX_ASSETS) to a directory \
     containing `etcd` and `kube-apiserver`";

/// The binaries a control plane needs (a [`Cluster`](crate::Cluster) needs the node's too).
pub(crate) const BINARIES: [&str; 2] = ["etcd", "kube-apiserver"];

/// Reads a non-empty environment variable (empty counts as unset, like `${VAR:-}` in the script).
fn env_nonempty(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The directory `scripts/provision.sh` installs into, computed exactly as the script does.
///
/// `$EIRINIX_CACHE_DIR`, else `$XDG_CACHE_HOME/eirinix`, else `$HOME/.cache/eirinix`, then
/// `assets/kube-<KUBE_VERSION>-etcd-<ETCD_VERSION>` (versions overridable with
/// `EIRINIX_KUBE_VERSION` / `EIRINIX_ETCD_VERSION`, as in the script). `None` without a home.
pub fn default_assets_dir() -> Option<PathBuf> {
    let cache_root = match env_nonempty("EIRINIX_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = match env_nonempty("XDG_CACHE_HOME") {
                Some(xdg) => PathBuf::from(xdg),
                None => PathBuf::from(env_nonempty("HOME")?).join(".cache"),
            };
            cache.join("eirinix")
        }
    };
    let kube = env_nonempty("EIRINIX_KUBE_VERSION")
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| KUBE_VERSION.to_owned());
    let etcd = env_nonempty("EIRINIX_ETCD_VERSION")
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| ETCD_VERSION.to_owned());
    Some(
        cache_root
            .join("assets")
            .join(format!("kube-{kube}-etcd-{etcd}")),
    )
}

/// The directory holding `etcd` and `kube-apiserver`, checked to contain both.
///
/// `EIRINIX_ASSETS`, else `KUBEBUILDER_ASSETS`, else [`default_assets_dir`]. Fails with
/// [`Error::MissingBinaries`] (whose message explains how to provision them) otherwise.
pub fn assets_dir() -> Result<PathBuf> {
    let (dir, source) = if let Some(dir) = env_nonempty("EIRINIX_ASSETS") {
        (PathBuf::from(dir), "EIRINIX_ASSETS")
    } else if let Some(dir) = env_nonempty("KUBEBUILDER_ASSETS") {
        (PathBuf::from(dir), "KUBEBUILDER_ASSETS")
    } else {
        match default_assets_dir() {
            Some(dir) => (dir, "the default provision.sh cache directory"),
            None => return Err(Error::NoCacheDir),
        }
    };
    check_assets_from(&dir, source)?;
    Ok(dir)
}

/// Checks that `dir` contains the `etcd` and `kube-apiserver` binaries.
///
/// Fails with [`Error::MissingBinaries`] naming `scripts/provision.sh` when one is missing.
pub fn check_assets(dir: &Path) -> Result<()> {
    check_assets_from(dir, "an explicitly configured directory")
}

fn check_assets_from(dir: &Path, source: &'static str) -> Result<()> {
    let missing: Vec<String> = BINARIES
        .iter()
        .filter(|bin| !is_executable(&dir.join(bin)))
        .map(|bin| (*bin).to_owned())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingBinaries {
            dir: dir.to_owned(),
            source_hint: source,
            missing,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
