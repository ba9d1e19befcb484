//! Options of the ssh webhook (and the names the proxy derives from them).

use eirinix_core::FailurePolicy;
use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::daemon::DEFAULT_PORT;

/// Image holding the daemon binary, by default the eirinix image of this version under the name
/// `scripts/build-image.sh` gives it (eirinix publishes no image: set the name you pushed it as).
pub const DEFAULT_IMAGE: &str = concat!("eirinix.local/eirinix:", env!("CARGO_PKG_VERSION"));
/// Label holding the app guid on Eirini app pods.
pub const GUID_LABEL: &str = "cloudfoundry.org/guid";
/// Name of the injected volume, init container and sidecar.
pub const NAME: &str = "eirinix-ssh";

/// How the ssh webhook injects the daemon.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// Image of the init container (and sidecar) holding the daemon binary.
    pub image: String,
    /// Pull policy of that image (`None` leaves the cluster default).
    pub image_pull_policy: Option<String>,
    /// Path of the daemon binary inside `image`.
    pub image_binary: String,
    /// Arguments putting the binary in daemon mode: `["sshd"]` for the `eirinix` CLI, empty for a
    /// dedicated `eirinix-sshd` binary.
    pub daemon_args: Vec<String>,
    /// Where the shared emptyDir is mounted; the binary is copied to `<mount_path>/eirinix-sshd`.
    pub mount_path: String,
    /// Port the daemon listens on in the pod (default 2222).
    pub port: u16,
    /// Secret names are `<secret_prefix>-<app guid>`.
    pub secret_prefix: String,
    /// Secret (in the webhook namespace) holding the master key every app's keys derive from;
    /// empty: `<fingerprint>-ssh-master`. The ssh proxy reads the same Secret.
    pub master_secret: String,
    /// Create the master key Secret when it does not exist (needs `create` on Secrets in the
    /// webhook namespace); the Helm chart creates it, so its server never needs to.
    pub create_master_secret: bool,
    /// Container to wrap, by name; `None` wraps the first container.
    pub container: Option<String>,
    /// When the container has no explicit command, run the daemon as a sidecar instead of
    /// skipping the pod (sessions then run in the sidecar's image, sharing the app's volumes).
    pub sidecar_fallback: bool,
    /// Shell of sessions (`None`: the daemon's default, `/bin/sh`).
    pub shell: Option<String>,
    /// Resources of the init container and sidecar (`None`: none set).
    pub resources: Option<ResourceRequirements>,
    /// Make the app's StatefulSet the owner of its Secret (garbage-collected with the app).
    pub owner_references: bool,
    /// Failure policy of this webhook: `Ignore` by default, ssh is never worth blocking an app.
    pub failure_policy: FailurePolicy,
}

impl Default for SshOptions {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            image_pull_policy: None,
            image_binary: "/usr/local/bin/eirinix".into(),
            daemon_args: vec!["sshd".into()],
            mount_path: "/eirinix/ssh".into(),
            port: DEFAULT_PORT,
            secret_prefix: NAME.into(),
            master_secret: String::new(),
            create_master_secret: true,
            container: None,
            sidecar_fallback: false,
            shell: None,
            resources: None,
            owner_references: true,
            failure_policy: FailurePolicy::Ignore,
        }
    }
}

impl SshOptions {
    /// Path of the copied daemon binary in the app container.
    pub fn daemon_path(&self) -> String {
        format!("{}/eirinix-sshd", self.mount_path.trim_end_matches('/'))
    }

    /// Name of the master key Secret for a manager with `fingerprint`.
    pub fn master_secret_name(&self, fingerprint: &str) -> String {
        if self.master_secret.is_empty() {
            format!("{fingerprint}-ssh-master")
        } else {
            self.master_secret.clone()
        }
    }

    /// Name of the Secret holding the keys of app `guid`.
    pub fn secret_name(&self, guid: &str) -> String {
        crate::keys::secret_name(&self.secret_prefix, guid)
    }
}
