//! Command-line interface: flags, `EIRINIX_*` variables and the EiriniX variable names.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// EiriniX environment names accepted for migration, and the eirinix names they map to.
const LEGACY_ENV: [(&str, &str); 6] = [
    ("NAMESPACE", "EIRINIX_NAMESPACE"),
    ("OPERATOR_WEBHOOK_HOST", "EIRINIX_WEBHOOK_HOST"),
    ("OPERATOR_WEBHOOK_PORT", "EIRINIX_WEBHOOK_PORT"),
    ("OPERATOR_SERVICE_NAME", "EIRINIX_SERVICE_NAME"),
    ("OPERATOR_WEBHOOK_NAMESPACE", "EIRINIX_WEBHOOK_NAMESPACE"),
    ("EIRINI_EXTENSION_REGISTER", "EIRINIX_REGISTER"),
];

/// Copy EiriniX variables to their eirinix names when those are unset (before any thread starts).
pub fn apply_legacy_env() {
    for (legacy, new) in LEGACY_ENV {
        if std::env::var_os(new).is_none()
            && let Some(v) = std::env::var_os(legacy)
        {
            // SAFETY: called first thing in main, before the runtime or any other thread exists.
            unsafe { std::env::set_var(new, v) };
        }
    }
}

/// The version reported by `--version`: `EIRINIX_VERSION` at build time (the image's), else the crate's.
pub const VERSION: &str = match option_env!("EIRINIX_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// eirinix: Kubernetes mutating-webhook extensions for Eirini app pods.
#[derive(Parser, Debug)]
#[command(name = "eirinix", version = VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format: text on a terminal, JSON otherwise (auto), or forced.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "EIRINIX_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the chosen stock extensions (webhook server, certificates, registration, watchers).
    Run(ServeArgs),
    /// One-shot: create the certificates and the webhook configuration, then exit (split mode).
    Register(RegisterArgs),
    /// Remove the webhook configuration and the certificate Secret (uninstall).
    Unregister(UnregisterArgs),
    /// ssh: the in-pod daemon (what the webhook injects; `sshd --exec -- CMD` wraps an app).
    Sshd {
        /// Daemon arguments (see `eirinix sshd --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// ssh: the proxy in front of app instances (`ssh -p PORT <app-guid>/<index>@proxy`, token as password).
    SshProxy(SshProxyArgs),
    /// persi's Open Service Broker (creates PVCs for `cf create-service`).
    Broker(BrokerArgs),
    /// rootfs one-shot (Helm hook): roll app StatefulSets onto the desired version, then exit; non-zero if anything failed.
    RootfsRoll(ServeArgs),
    /// Run one extension on a pod from a YAML/JSON file, offline; print the patch and the result.
    Review(ReviewArgs),
    /// Start a local cluster (control plane, controllers, one node that runs pods) and print its
    /// kubeconfig.
    Dev(DevArgs),
    /// Show every stock extension at work on an app running on a local cluster, then clean up.
    Demo(DemoArgs),
}

/// `register` options.
#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    /// Print the webhook configuration that would be registered (without caBundle) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `unregister` options.
#[derive(Args, Debug, Clone)]
pub struct UnregisterArgs {
    /// Remove only the webhook configuration (first step of an uninstall, while the servers
    /// still run: nothing calls them any more).
    #[arg(long)]
    pub configuration_only: bool,
    /// Before removing the certificate Secret and what the extensions made at run time, wait
    /// until no pod of the webhook namespace matches this label selector (the servers: they
    /// would otherwise re-create some of it while they stop).
    #[arg(long)]
    pub wait_for_pods: Option<String>,
    /// How long to wait for those pods, in seconds.
    #[arg(long, default_value_t = 180)]
    pub wait_seconds: u64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Options shared by `run`, `register` and `unregister`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Stock extensions to serve, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "all",
        env = "EIRINIX_EXTENSIONS"
    )]
    pub extensions: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub stock: StockArgs,
}

/// Framework options (the EiriniX names are accepted as environment variables too).
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Namespace whose pods are mutated and watched (empty: all) [env NAMESPACE].
    #[arg(long, env = "EIRINIX_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// Host the apiserver dials in URL mode, also a certificate SAN [env OPERATOR_WEBHOOK_HOST].
    #[arg(long, env = "EIRINIX_WEBHOOK_HOST")]
    pub host: Option<String>,
    /// Port the webhook server listens on [env OPERATOR_WEBHOOK_PORT].
    #[arg(long, env = "EIRINIX_WEBHOOK_PORT", default_value_t = 2999)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "EIRINIX_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Service the apiserver dials in service mode [env OPERATOR_SERVICE_NAME].
    #[arg(long, env = "EIRINIX_SERVICE_NAME", conflicts_with = "host")]
    pub service_name: Option<String>,
    /// Port of that Service (must equal the Service's port; default: --port).
    #[arg(long, env = "EIRINIX_SERVICE_PORT")]
    pub service_port: Option<u16>,
    /// Namespace of the Service and the certificate Secret [env OPERATOR_WEBHOOK_NAMESPACE].
    #[arg(long, env = "EIRINIX_WEBHOOK_NAMESPACE", default_value = "default")]
    pub webhook_namespace: String,
    /// Operator fingerprint: prefixes the configuration, Secret and webhook names.
    #[arg(long, env = "EIRINIX_FINGERPRINT", default_value = "eirini-x")]
    pub fingerprint: String,
    /// Default failure policy.
    #[arg(
        long,
        value_enum,
        env = "EIRINIX_FAILURE_POLICY",
        default_value = "fail"
    )]
    pub failure_policy: FailurePolicyArg,
    /// Send all pods to the webhook, not only `cloudfoundry.org/source_type=APP` ones.
    #[arg(long, env = "EIRINIX_ALL_PODS")]
    pub all_pods: bool,
    /// Write and repair the webhook configuration (false in split mode) [env EIRINI_EXTENSION_REGISTER].
    #[arg(long, env = "EIRINIX_REGISTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub register: bool,
    /// Serving certificate chain file (e.g. from cert-manager) instead of the self-managed Secret.
    #[arg(long, env = "EIRINIX_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Serving key file (with --cert-file).
    #[arg(long, env = "EIRINIX_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// CA bundle file registered as caBundle (with --cert-file).
    #[arg(long, env = "EIRINIX_CA_FILE", requires = "cert_file")]
    pub ca_file: Option<PathBuf>,
    /// Webhook timeout in seconds (1-30).
    #[arg(long, env = "EIRINIX_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=30))]
    pub timeout_seconds: i32,
    /// Also intercept pod UPDATE (default: CREATE only).
    #[arg(long, env = "EIRINIX_INTERCEPT_UPDATE")]
    pub intercept_update: bool,
    /// Namespaces never sent to the webhook (default: kube-system and the webhook namespace).
    #[arg(long, value_delimiter = ',', env = "EIRINIX_EXCLUDED_NAMESPACES")]
    pub excluded_namespaces: Vec<String>,
    /// Seconds between configuration drift checks.
    #[arg(long, env = "EIRINIX_REPAIR_INTERVAL", default_value_t = 30)]
    pub repair_interval: u64,
    /// Seconds between certificate checks (renewals fall due by the clock; changes by other
    /// replicas are also picked up at once through a watch of the certificate Secret).
    #[arg(long, env = "EIRINIX_CERT_CHECK_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub cert_check_interval: u64,
    /// On SIGTERM: seconds to keep serving (not ready, closing each connection after its next
    /// response) while the Service's endpoints drop this replica, before stopping.
    #[arg(long, env = "EIRINIX_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
    /// Plain-HTTP port for /healthz, /readyz and /metrics (in addition to the TLS port).
    #[arg(long, env = "EIRINIX_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Serve HTTP/2 too (off by default).
    #[arg(long, env = "EIRINIX_HTTP2")]
    pub http2: bool,
    /// Require a webhook-bound ServiceAccount token (KEP-6060) on every review, verified against
    /// the apiserver's service-account issuer keys (see SECURITY.md: Kubernetes 1.37 issues such
    /// tokens but does not send them on its own calls yet).
    #[arg(long, env = "EIRINIX_REQUIRE_WEBHOOK_TOKEN")]
    pub require_webhook_token: bool,
    /// Require clients of the webhook port to present a certificate signed by a CA in this PEM
    /// file (the apiserver's admission client certificate; see SECURITY.md).
    #[arg(long, env = "EIRINIX_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// The apiserver's admission client certificate (PEM, public part): checked against
    /// --client-ca-file at start (refused if it does not verify) and while running (not ready
    /// once it no longer does). Without it, a wrong client CA shows only in the metrics.
    #[arg(
        long,
        env = "EIRINIX_APISERVER_CLIENT_CERT_FILE",
        requires = "client_ca_file"
    )]
    pub apiserver_client_cert_file: Option<PathBuf>,
}

/// Failure policy values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FailurePolicyArg {
    /// Reject pods when the webhook fails.
    Fail,
    /// Admit pods unmutated when the webhook fails.
    Ignore,
}

/// `review` options.
#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// The extension to run.
    #[arg(long, short)]
    pub extension: String,
    /// Pod manifest (YAML or JSON); `-` reads standard input.
    pub pod: PathBuf,
    /// Review the pod even when it is not an Eirini app (as `run --all-pods` would send it);
    /// without it, a pod the webhook's object selector excludes exits with code 3.
    #[arg(long)]
    pub all_pods: bool,
    #[command(flatten)]
    pub stock: StockArgs,
}

/// `broker` options.
#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// Broker configuration (YAML or JSON: credentials, catalog, plans, namespace).
    #[arg(long, env = "EIRINIX_BROKER_CONFIG")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "EIRINIX_BROKER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
}

/// `ssh-proxy` options.
#[derive(Args, Debug)]
pub struct SshProxyArgs {
    /// Address to listen on.
    #[arg(long, env = "EIRINIX_SSH_PROXY_LISTEN", default_value = "0.0.0.0:2222")]
    pub listen: std::net::SocketAddr,
    /// Namespace of the app pods (empty: all).
    #[arg(long, env = "EIRINIX_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// Secret `namespace/name` holding the ssh master key (key `master-key`): the apps' keys and
    /// the proxy's host key derive from it (the webhook server reads the same Secret).
    #[arg(long, env = "EIRINIX_SSH_PROXY_MASTER_SECRET")]
    pub master_secret: String,
    /// Create the master key Secret when it does not exist (the Helm chart creates it).
    #[arg(long, env = "EIRINIX_SSH_PROXY_CREATE_MASTER_SECRET")]
    pub create_master_secret: bool,
    /// Port of the in-pod daemons.
    #[arg(long, env = "EIRINIX_SSH_PORT", default_value_t = 2222)]
    pub daemon_port: u16,
    /// Plain-HTTP port serving /metrics and /healthz (on the listen address); none when unset.
    #[arg(long, env = "EIRINIX_SSH_PROXY_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Every refused login is answered this long after its password, whatever the reason (ms).
    #[arg(
        long,
        env = "EIRINIX_SSH_PROXY_REFUSAL_TIME_MS",
        default_value_t = 3000
    )]
    pub refusal_time_ms: u64,
    /// Seconds a connection has to log in.
    #[arg(long, env = "EIRINIX_SSH_PROXY_AUTH_TIMEOUT", default_value_t = 30)]
    pub auth_timeout_secs: u64,
    /// Connections not logged in yet, at once; more are closed at accept.
    #[arg(
        long,
        env = "EIRINIX_SSH_PROXY_MAX_UNAUTHENTICATED",
        default_value_t = 64
    )]
    pub max_unauthenticated: usize,
    /// Password attempts (TokenReviews) per connection.
    #[arg(long, env = "EIRINIX_SSH_PROXY_MAX_AUTH_ATTEMPTS", default_value_t = 3)]
    pub max_auth_attempts: u32,
    /// Password attempts a source address may make in a burst.
    #[arg(long, env = "EIRINIX_SSH_PROXY_PER_SOURCE_BURST", default_value_t = 10)]
    pub per_source_burst: u32,
    /// Password attempts per minute a source address regains.
    #[arg(
        long,
        env = "EIRINIX_SSH_PROXY_PER_SOURCE_PER_MINUTE",
        default_value_t = 30
    )]
    pub per_source_per_minute: u32,
}

/// `dev` options.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where to write the kubeconfig.
    #[arg(long, env = "EIRINIX_DEV_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Only etcd and kube-apiserver (no controllers, no node; needs no root).
    #[arg(long)]
    pub apiserver_only: bool,
}

/// `demo` options.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run against the cluster of KUBECONFIG (in a throwaway namespace, apiserver-only view)
    /// instead of a local cluster; needs --webhook-host.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: the host name or IP address at which the cluster's apiserver reaches
    /// this machine. The webhook is registered as https://HOST:PORT (HOST in its certificate)
    /// and listens on all interfaces.
    #[arg(long, env = "EIRINIX_DEMO_WEBHOOK_HOST", requires = "cluster")]
    pub webhook_host: Option<String>,
    /// With --cluster: the port the webhook listens on and registers (0: a free one); open it
    /// to the apiserver.
    #[arg(
        long,
        env = "EIRINIX_DEMO_WEBHOOK_PORT",
        default_value_t = 0,
        requires = "cluster"
    )]
    pub webhook_port: u16,
    /// Show what the extensions change as the apiserver stores it, on a local control plane
    /// without a node (no pod runs; faster, needs no root).
    #[arg(long)]
    pub apiserver_only: bool,
    /// The eirinix image archive to load into the node (from scripts/build-image.sh); by
    /// default it is built from this source tree.
    #[arg(long, env = "EIRINIX_DEMO_IMAGE")]
    pub image: Option<PathBuf>,
    /// Keep the local cluster running at the end (prints its kubeconfig).
    #[arg(long)]
    pub keep: bool,
}

/// `--logs-replicas-mode`: how logs replicas share the followed containers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogsReplicasMode {
    /// One Lease holder follows every container; the other replicas wait.
    Leader,
    /// Every replica follows a share (pod UIDs hashed over the live replicas).
    Sharded,
}

/// Flags of the stock extensions (prefixed by the extension name).
#[derive(Args, Debug, Clone, Default)]
pub struct StockArgs {
    /// persi: failure policy of its webhook (default: --failure-policy).
    #[arg(long, value_enum, env = "EIRINIX_PERSI_FAILURE_POLICY")]
    pub persi_failure_policy: Option<FailurePolicyArg>,
    /// persi: fsGroup given to pods that mount a volume (0 leaves the security context alone).
    #[arg(long, env = "EIRINIX_PERSI_FS_GROUP", default_value_t = 2000)]
    pub persi_fs_group: i64,

    /// ssh: failure policy of its webhook (default Ignore: an app without ssh still starts).
    #[arg(long, value_enum, env = "EIRINIX_SSH_FAILURE_POLICY")]
    pub ssh_failure_policy: Option<FailurePolicyArg>,
    /// ssh: image whose binary the init container copies into app pods (this binary's image).
    #[arg(long, env = "EIRINIX_SSH_IMAGE", default_value = eirinix_ssh::options::DEFAULT_IMAGE)]
    pub ssh_image: String,
    /// ssh: path of the eirinix binary inside that image.
    #[arg(
        long,
        env = "EIRINIX_SSH_IMAGE_BINARY",
        default_value = "/usr/local/bin/eirinix"
    )]
    pub ssh_image_binary: String,
    /// ssh: port the in-pod daemon listens on.
    #[arg(long, env = "EIRINIX_SSH_PORT", default_value_t = 2222)]
    pub ssh_port: u16,
    /// ssh: add the daemon as a sidecar to containers with no explicit command (else they are left alone).
    #[arg(long, env = "EIRINIX_SSH_SIDECAR_FALLBACK")]
    pub ssh_sidecar_fallback: bool,
    /// ssh: Secret in the webhook namespace holding the master key the apps' keys derive from
    /// (default `<fingerprint>-ssh-master`; the ssh proxy reads the same one).
    #[arg(long, env = "EIRINIX_SSH_MASTER_SECRET", default_value = "")]
    pub ssh_master_secret: String,
    /// ssh: never create the master key Secret (the Helm chart does; the server then needs no
    /// right to create Secrets in its namespace).
    #[arg(long, env = "EIRINIX_SSH_NO_CREATE_MASTER_SECRET")]
    pub ssh_no_create_master_secret: bool,

    /// logs: configuration file (YAML: sinks, buffers, replicas; see extensions/logs/README.md).
    #[arg(long, env = "EIRINIX_LOGS_CONFIG")]
    pub logs_config: Option<PathBuf>,
    /// logs: how replicas share the followed containers, overriding `replicas.mode` of the file:
    /// `leader` (one Lease holder follows all) or `sharded` (each follows a share).
    #[arg(long, value_enum, env = "EIRINIX_LOGS_REPLICAS_MODE")]
    pub logs_replicas_mode: Option<LogsReplicasMode>,

    /// rootfs: the desired rootfs version (the ConfigMap, when given, wins at run time).
    #[arg(long, env = "EIRINIX_ROOTFS_VERSION")]
    pub rootfs_version: Option<String>,
    /// rootfs: image reference pattern whose tag is rewritten to the version (e.g. `registry/cflinuxfs*`).
    #[arg(long, env = "EIRINIX_ROOTFS_IMAGE_PATTERN")]
    pub rootfs_image_pattern: Option<String>,
    /// rootfs: ConfigMap `namespace/name` holding the desired version (key `version`), watched at run time.
    #[arg(long, env = "EIRINIX_ROOTFS_CONFIG_MAP")]
    pub rootfs_config_map: Option<String>,
    /// rootfs: StatefulSets rolling at once at most.
    #[arg(long, env = "EIRINIX_ROOTFS_MAX_IN_FLIGHT", default_value_t = 2)]
    pub rootfs_max_in_flight: usize,
    /// rootfs: seconds a roll may take before its slot is freed and the timeout recorded.
    #[arg(long, env = "EIRINIX_ROOTFS_ROLL_TIMEOUT", default_value_t = 600)]
    pub rootfs_roll_timeout: u64,
    /// rootfs: gate on a Deployment `namespace/name` being ready before rolling anything.
    #[arg(
        long,
        env = "EIRINIX_ROOTFS_GATE_DEPLOYMENT",
        conflicts_with = "rootfs_gate_url"
    )]
    pub rootfs_gate_deployment: Option<String>,
    /// rootfs: gate on an HTTP health URL answering 2xx before rolling anything.
    #[arg(long, env = "EIRINIX_ROOTFS_GATE_URL")]
    pub rootfs_gate_url: Option<String>,
    /// rootfs: annotation that opts a StatefulSet out.
    #[arg(
        long,
        env = "EIRINIX_ROOTFS_OPT_OUT_ANNOTATION",
        default_value = "eirinix.org/rootfs-opt-out"
    )]
    pub rootfs_opt_out_annotation: String,
    /// rootfs: print the plan, change nothing.
    #[arg(long, env = "EIRINIX_ROOTFS_DRY_RUN")]
    pub rootfs_dry_run: bool,
}
