//! Command lines and config files of the Kubernetes node components (kubelet, kube-proxy) and of
//! the controllers that make a cluster out of an apiserver (kube-controller-manager,
//! kube-scheduler). Pure functions of the paths and addresses, so they are easy to review.

use std::ffi::OsString;
use std::path::Path;

use super::netns::Addresses;

/// The port kube-proxy and kubelet reach the apiserver on, inside the node (relayed to the
/// apiserver on the host's loopback).
pub(crate) const NODE_API_PORT: u16 = 6443;

/// kubelet's port on the node address.
pub(crate) const KUBELET_PORT: u16 = 10250;

/// Controllers kube-controller-manager runs: what StatefulSets, Deployments, Jobs, Services,
/// ServiceAccounts, PersistentVolumeClaims, namespaces and garbage collection need.
pub(crate) const CONTROLLERS: &[&str] = &[
    "statefulset-controller",
    "replicaset-controller",
    "deployment-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "disruption-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
];

/// kube-controller-manager's command line.
pub(crate) fn controller_manager_args(
    plane_dir: &Path,
    kubeconfig: &Path,
    pod_cidr: &str,
) -> Vec<OsString> {
    let f = |name: &str| plane_dir.join(name).display().to_string();
    vec![
        format!("--kubeconfig={}", kubeconfig.display()).into(),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=0".into(),
        format!("--service-account-private-key-file={}", f("sa.key")).into(),
        format!("--root-ca-file={}", f("ca.crt")).into(),
        "--use-service-account-credentials=false".into(),
        format!("--controllers={}", CONTROLLERS.join(",")).into(),
        format!("--cluster-cidr={pod_cidr}").into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        // Pods of a node that stops reporting are evicted quickly in tests of failures.
        "--node-monitor-grace-period=20s".into(),
        "--concurrent-statefulset-syncs=10".into(),
        "--v=1".into(),
    ]
}

/// kube-scheduler's command line.
pub(crate) fn scheduler_args(kubeconfig: &Path) -> Vec<OsString> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()).into(),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=0".into(),
        "--v=1".into(),
    ]
}

/// kubelet's KubeletConfiguration.
pub(crate) struct KubeletPaths<'a> {
    pub ca: &'a Path,
    pub socket: &'a Path,
    pub pod_logs: &'a Path,
    pub cgroup_root: &'a str,
}

/// The KubeletConfiguration (YAML) for this machine: cgroup v1 with the `cgroupfs` driver,
/// no swap check, no eviction or image GC, no cluster DNS, x509 + webhook auth.
pub(crate) fn kubelet_config(p: &KubeletPaths<'_>, addrs: &Addresses) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node_ip}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: "{ca}"}}
authorization: {{mode: Webhook}}
cgroupDriver: cgroupfs
cgroupRoot: "{cgroup_root}"
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
containerRuntimeEndpoint: "unix://{socket}"
podLogsDir: "{pod_logs}"
enableControllerAttachDetach: false
serializeImagePulls: false
podCIDR: "{pod_cidr}"
shutdownGracePeriod: 0s
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 20s
syncFrequency: 20s
featureGates:
  PodLogsQuerySplitStreams: true
"#,
        node_ip = addrs.node_ip(),
        ca = p.ca.display(),
        cgroup_root = p.cgroup_root,
        socket = p.socket.display(),
        pod_logs = p.pod_logs.display(),
        pod_cidr = addrs.pod_cidr(),
    )
}

/// kubelet's command line.
pub(crate) fn kubelet_args(
    config: &Path,
    kubeconfig: &Path,
    root_dir: &Path,
    node_name: &str,
    addrs: &Addresses,
) -> Vec<OsString> {
    vec![
        format!("--config={}", config.display()).into(),
        format!("--kubeconfig={}", kubeconfig.display()).into(),
        format!("--hostname-override={node_name}").into(),
        format!("--node-ip={}", addrs.node_ip()).into(),
        format!("--root-dir={}", root_dir.display()).into(),
        format!("--cert-dir={}", root_dir.join("pki").display()).into(),
        "--v=1".into(),
    ]
}

/// kube-proxy's KubeProxyConfiguration (YAML): iptables mode inside the node's network
/// namespace, masquerading everything so pod → Service → pod works on one bridge.
pub(crate) fn kube_proxy_config(kubeconfig: &Path, node_name: &str, addrs: &Addresses) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: "{kubeconfig}"}}
mode: iptables
clusterCIDR: "{pod_cidr}"
hostnameOverride: "{node_name}"
bindAddress: "{node_ip}"
healthzBindAddress: "127.0.0.1:10256"
metricsBindAddress: "127.0.0.1:10249"
nodePortAddresses: ["{node_ip}/32"]
conntrack: {{maxPerCore: 0, min: 0}}
iptables: {{masqueradeAll: true}}
"#,
        kubeconfig = kubeconfig.display(),
        pod_cidr = addrs.pod_cidr(),
        node_ip = addrs.node_ip(),
    )
}

/// A kubeconfig with client-certificate files, for a component.
pub(crate) fn kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: eirinix-testenv
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: component
  user: {{client-certificate: "{cert}", client-key: "{key}"}}
contexts:
- name: eirinix-testenv
  context: {{cluster: eirinix-testenv, user: component}}
current-context: eirinix-testenv
"#,
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}
