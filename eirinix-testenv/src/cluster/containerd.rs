//! containerd (Debian's 1.6 package) with its own config, root, state and socket under the
//! node's directory, the CRI plugin on, `cgroupfs` driver, and the CNI bridge for pods.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::Addresses;
use crate::image::ImageArchive;
use crate::{Error, Result};

/// The image containerd uses for pod sandboxes (built by [`super::images::pause`]).
pub(crate) const PAUSE_IMAGE: &str = "eirinix.local/pause:3";

/// Directory of the Debian CNI plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Paths of one containerd instance.
#[derive(Debug, Clone)]
pub(crate) struct Containerd {
    pub dir: PathBuf,
}

impl Containerd {
    /// Describes the instance under `dir` (nothing is written yet).
    pub fn new(dir: PathBuf) -> Self {
        Containerd { dir }
    }

    /// The CRI socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Writes the containerd config and the CNI network config.
    pub fn write_config(&self, addrs: &Addresses) -> Result<()> {
        for bin in ["bridge", "host-local", "loopback"] {
            if !Path::new(CNI_BIN_DIR).join(bin).exists() {
                return Err(Error::NodeUnsupported(format!(
                    "CNI plugin {CNI_BIN_DIR}/{bin} is missing: install Debian's \
                     containernetworking-plugins (scripts/install-deps.sh)"
                )));
            }
        }
        let d = self.dir.display();
        let cni_conf = self.dir.join("cni");
        std::fs::create_dir_all(&cni_conf)
            .map_err(|e| Error::io(format!("creating {}", cni_conf.display()), e))?;
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Plugins that would write outside our directories, or are of no use here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the caller's.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
"#,
            cni = cni_conf.display()
        );
        write(&self.config_path(), &config)?;
        let network = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "eirinix",
            "plugins": [{
                "type": "bridge",
                "bridge": "eirinix0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": addrs.pod_cidr()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.dir.join("cni-ipam"),
                },
            }],
        });
        write(&cni_conf.join("10-eirinix.conflist"), &network.to_string())
    }

    /// The command line of the daemon.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        vec!["--config".into(), self.config_path().into()]
    }

    /// Waits until the daemon answers `ctr version`.
    pub fn wait_ready(&self, timeout: Duration, alive: impl Fn() -> Option<String>) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = alive() {
                return Err(Error::NodeStart(format!("containerd exited ({status})")));
            }
            if self.socket().exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NodeStart(format!(
                    "containerd did not answer on {} within {timeout:?}",
                    self.socket().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Imports an image archive into the `k8s.io` namespace (where the CRI looks).
    pub fn import(&self, image: &ImageArchive) -> Result<()> {
        let path = image.path.to_string_lossy().into_owned();
        self.ctr(&["images", "import", &path]).map(drop)
    }

    /// Runs `ctr` against this instance in the `k8s.io` namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket();
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("running ctr (Debian package containerd)", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Command {
                command: format!("ctr {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
