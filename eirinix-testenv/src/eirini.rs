//! Eirini-shaped workloads and the eirinix image, for tests of eirinix extensions on the real
//! node of a [`Cluster`](crate::Cluster): an app StatefulSet as Eirini creates it for `cf push`
//! (the `cloudfoundry.org/*` labels, the `opi` container running as the `vcap` user,
//! `VCAP_SERVICES`), and the image holding the `eirinix` binary (what the ssh extension copies
//! into app pods and what the Helm chart runs).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;

use crate::cluster::{APP_IMAGE, APP_UID};

/// An Eirini app: what `cf push` (and `cf bind-service`) turns into a StatefulSet.
#[derive(Debug, Clone)]
pub struct EiriniApp {
    /// StatefulSet name (Eirini: `<app>-<space>-<hash>`); pods are `<name>-<index>`.
    pub name: String,
    /// The process guid (`cloudfoundry.org/guid`), also the app guid here.
    pub guid: String,
    /// Instances.
    pub replicas: i32,
    /// The app image (the rootfs with the droplet).
    pub image: String,
    /// The app's command (a long-lived process; `sh -c` scripts are fine).
    pub command: Vec<String>,
    /// Extra environment (e.g. `VCAP_SERVICES`).
    pub env: Vec<(String, String)>,
    /// `cloudfoundry.org/rootfs-version` on the StatefulSet and its pods, if set.
    pub rootfs_version: Option<String>,
    /// A TCP readiness probe on this port, if set (Eirini probes the app's port).
    pub ready_port: Option<i32>,
}

impl EiriniApp {
    /// An app `name` with one instance of [`APP_IMAGE`] serving HTTP on 8080 as `vcap`.
    pub fn new(name: &str) -> Self {
        EiriniApp {
            name: name.into(),
            guid: format!("{name}-guid"),
            replicas: 1,
            image: APP_IMAGE.into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo \"Starting $HOSTNAME on port $PORT\"; mkdir -p /tmp/www; echo ok > /tmp/www/index.html; exec httpd -f -p \"$PORT\" -h /tmp/www".into(),
            ],
            env: Vec::new(),
            rootfs_version: None,
            ready_port: Some(8080),
        }
    }

    /// Sets the environment variable `name` (e.g. `VCAP_SERVICES`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
        self
    }

    /// The `cloudfoundry.org/*` labels of the app's StatefulSet and pods.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("cloudfoundry.org/source_type".to_owned(), "APP".to_owned()),
            ("cloudfoundry.org/guid".to_owned(), self.guid.clone()),
            ("cloudfoundry.org/app_guid".to_owned(), self.guid.clone()),
            ("cloudfoundry.org/version".to_owned(), "1".to_owned()),
            ("cloudfoundry.org/process_type".to_owned(), "web".to_owned()),
        ]);
        if let Some(v) = &self.rootfs_version {
            labels.insert("cloudfoundry.org/rootfs-version".into(), v.clone());
        }
        labels
    }

    /// The StatefulSet, as Eirini creates it.
    pub fn statefulset(&self) -> StatefulSet {
        let mut env: Vec<serde_json::Value> =
            vec![serde_json::json!({"name": "PORT", "value": "8080"})];
        env.extend(
            self.env
                .iter()
                .map(|(n, v)| serde_json::json!({"name": n, "value": v})),
        );
        let probe = self
            .ready_port
            .map(|p| serde_json::json!({"tcpSocket": {"port": p}, "periodSeconds": 1, "failureThreshold": 1}));
        let selector = serde_json::json!({
            "cloudfoundry.org/guid": self.guid,
            "cloudfoundry.org/version": "1",
            "cloudfoundry.org/source_type": "APP",
        });
        let value = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": self.name, "labels": self.labels()},
            "spec": {
                "replicas": self.replicas,
                "podManagementPolicy": "Parallel",
                "serviceName": self.name,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": self.labels()},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": 10,
                        "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID, "runAsNonRoot": true},
                        "containers": [{
                            "name": "opi",
                            "image": self.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": self.command,
                            "env": env,
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": probe,
                        }],
                    },
                },
            },
        });
        // The value is built above from typed fields: it always deserializes.
        serde_json::from_value(value).unwrap_or_default()
    }

    /// The name of instance `index`'s pod.
    pub fn pod_name(&self, index: u32) -> String {
        format!("{}-{index}", self.name)
    }
}

/// The `opi` container's image of a pod (as the kubelet reports it running, else the spec's).
pub fn running_image(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "opi"))
        .map(|c| c.image.clone());
    status.or_else(|| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "opi"))
            .and_then(|c| c.image.clone())
    })
}

/// The eirinix image of the workspace this crate is part of, built as `scripts/build-image.sh`
/// builds it: the static `eirinix` binary (the workspace's `.cargo/config.toml` links every build
/// statically), the root filesystem of `images/eirinix/rootfs.sh`, named
/// `eirinix.local/eirinix:<version>`. The binary is `EIRINIX_IMAGE_BINARY` when set (the suite
/// sets it to the one it built), else cargo builds it (profile `EIRINIX_IMAGE_PROFILE`, default
/// `dev`). Built once per process. Load it with [`Cluster::load_image`](crate::Cluster::load_image).
pub fn eirinix_image() -> Result<crate::ImageBuilder, String> {
    static IMAGE: std::sync::OnceLock<Result<crate::ImageBuilder, String>> =
        std::sync::OnceLock::new();
    IMAGE.get_or_init(|| build_eirinix_image(None)).clone()
}

/// Like [`eirinix_image`], from a given static `eirinix` binary (`None`: as `eirinix_image`).
pub fn eirinix_image_from(
    binary: Option<std::path::PathBuf>,
) -> Result<crate::ImageBuilder, String> {
    match binary {
        Some(bin) => build_eirinix_image(Some(bin)),
        None => eirinix_image(),
    }
}

/// The name [`eirinix_image`] gives the image.
pub const EIRINIX_IMAGE: &str = concat!("eirinix.local/eirinix:", env!("CARGO_PKG_VERSION"));

/// The workspace root (this crate's parent directory).
fn workspace() -> Result<std::path::PathBuf, String> {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_owned)
        .ok_or_else(|| "no workspace root".to_owned())
}

/// The static `eirinix` binary [`eirinix_image`] packs: `EIRINIX_IMAGE_BINARY`, else built by
/// cargo (profile `EIRINIX_IMAGE_PROFILE`, default `dev`).
pub fn eirinix_binary() -> Result<std::path::PathBuf, String> {
    if let Some(bin) = std::env::var_os("EIRINIX_IMAGE_BINARY").filter(|b| !b.is_empty()) {
        return Ok(bin.into());
    }
    let repo = workspace()?;
    let profile = std::env::var("EIRINIX_IMAGE_PROFILE").unwrap_or_else(|_| "dev".into());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&repo)
        .args(["build", "--locked", "--quiet", "--profile", &profile])
        .args(["-p", "eirinix-cli", "--bin", "eirinix"])
        .status()
        .map_err(|e| format!("running cargo to build the eirinix image's binary: {e}"))?;
    if !status.success() {
        return Err(format!("building the eirinix binary failed ({status})"));
    }
    let dir = if profile == "dev" { "debug" } else { &profile };
    Ok(target_dir(&repo)
        .join("x86_64-unknown-linux-gnu")
        .join(dir)
        .join("eirinix"))
}

/// Cargo's target directory for `repo` (`CARGO_TARGET_DIR`, as scripts/test.sh sets it, else
/// `target/`).
fn target_dir(repo: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
}

fn build_eirinix_image(binary: Option<std::path::PathBuf>) -> Result<crate::ImageBuilder, String> {
    use std::process::Command;
    let repo = workspace()?;
    let bin = match binary {
        Some(bin) => bin,
        None => eirinix_binary()?,
    };
    let target = target_dir(&repo).join("image");
    let profile = bin
        .parent()
        .and_then(|p| p.file_name())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bin".into());
    let rootfs = target.join(format!("rootfs-{profile}"));
    let out = Command::new(repo.join("images/eirinix/rootfs.sh"))
        .arg(&bin)
        .arg(&rootfs)
        .output()
        .map_err(|e| format!("running images/eirinix/rootfs.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "images/eirinix/rootfs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let image = crate::ImageBuilder::new(EIRINIX_IMAGE)
        .tree(&rootfs)
        .map_err(|e| e.to_string())?
        .entrypoint(["/usr/local/bin/eirinix"])
        .user("65532:65532")
        .label("org.opencontainers.image.title", "eirinix")
        .label(
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        );
    Ok(image)
}

/// The status a StatefulSet controller writes once all `replicas` pods run the template of
/// `generation` at `revision` (a merge-patch body for the `status` subresource): what tests and
/// simulations write where no real controller runs.
pub fn rolled_out_status(generation: i64, replicas: i32, revision: &str) -> serde_json::Value {
    serde_json::json!({"status": {
        "observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas,
        "updatedReplicas": replicas, "currentReplicas": replicas, "availableReplicas": replicas,
        "currentRevision": revision, "updateRevision": revision,
    }})
}
