//! The Helm chart, validated by the real `helm` (built from its Go module) and the real
//! kube-apiserver: every variant lints, renders and is accepted (server-side dry run); the
//! configuration it renders equals what the binary registers; and the binary, run as the chart's
//! own service accounts, has exactly the rights it needs.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde::Deserialize as _;
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/eirinix");

/// Where "the apiserver" connects from in rendered charts (`helm template` cannot look it up).
/// Only data in a NetworkPolicy: nothing is sent there.
const APISERVER_CIDR: &str = "192.0.2.0/24";
const APISERVER_PEER: &str = "webhook.networkPolicy.from[0].ipBlock.cidr=192.0.2.0/24";

fn helm() -> PathBuf {
    let dir = eirinix_testenv::assets_dir()
        .expect("control-plane binaries (run scripts/provision.sh --helm)");
    let helm = dir.join("helm");
    assert!(
        helm.exists(),
        "{} is missing: run `scripts/provision.sh --helm`",
        helm.display()
    );
    helm
}

fn variants() -> Vec<(&'static str, Vec<&'static str>)> {
    let cm = "certificates.mode=certManager";
    let logs = [
        "extensions.logs.enabled=true",
        "extensions.logs.sinks[0].type=syslog",
        "extensions.logs.sinks[0].address=127.0.0.1:6514",
    ];
    let all = [
        "extensions.ssh.enabled=true",
        "extensions.rootfs.enabled=true",
        "extensions.persi.broker.enabled=true",
        logs[0],
        logs[1],
        logs[2],
    ];
    vec![
        ("default (persi)", vec![]),
        (
            "persi with broker",
            vec!["extensions.persi.broker.enabled=true"],
        ),
        (
            "rootfs only",
            vec![
                "extensions.persi.enabled=false",
                "extensions.rootfs.enabled=true",
                "extensions.rootfs.version=v2",
                "extensions.rootfs.hookJob=true",
            ],
        ),
        (
            "ssh only",
            vec![
                "extensions.persi.enabled=false",
                "extensions.ssh.enabled=true",
            ],
        ),
        (
            "logs only",
            [vec!["extensions.persi.enabled=false"], logs.to_vec()].concat(),
        ),
        (
            "logs sharded",
            [
                vec![
                    "extensions.persi.enabled=false",
                    "extensions.logs.replicasMode=sharded",
                ],
                logs.to_vec(),
            ]
            .concat(),
        ),
        (
            // The acknowledged sink the values document (a schema that refused it once).
            "logs to relp",
            vec![
                "extensions.persi.enabled=false",
                "extensions.logs.enabled=true",
                "extensions.logs.sinks[0].type=relp",
                "extensions.logs.sinks[0].address=127.0.0.1:2514",
            ],
        ),
        (
            "everything, all namespaces",
            [
                all.to_vec(),
                vec![
                    "appNamespace=",
                    "allowClusterWideSecrets=true",
                    "metrics.serviceMonitor.enabled=true",
                ],
            ]
            .concat(),
        ),
        ("everything", all.to_vec()),
        ("cert-manager, persi", vec![cm]),
        (
            "persi, client CA from a ConfigMap",
            vec!["webhook.clientCA.configMap=apiserver-client-ca"],
        ),
        (
            "cert-manager, client CA from a Secret",
            vec![
                cm,
                "webhook.clientCA.secret=apiserver-client-ca",
                "webhook.clientCA.key=ca.pem",
            ],
        ),
        (
            "cert-manager, everything",
            [
                all.to_vec(),
                vec![cm, "metrics.serviceMonitor.enabled=true"],
            ]
            .concat(),
        ),
    ]
}

fn render(release_ns: &str, app_ns: &str, sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm());
    cmd.args([
        "template",
        "rel",
        CHART,
        "--namespace",
        release_ns,
        "--set",
        &format!("appNamespace={app_ns}"),
        "--set",
        APISERVER_PEER,
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v: Value = yaml_serde::with::singleton_map_recursive::deserialize(d).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn every_variant_lints_and_renders() {
    for (name, sets) in variants() {
        let mut cmd = Command::new(helm());
        cmd.args(["lint", CHART, "--strict", "--set", APISERVER_PEER]);
        for s in &sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "helm lint ({name}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = render("eirinix-system", "eirini", &sets);
        let server = by_kind(&docs, "Deployment")
            .into_iter()
            .find(|d| d["metadata"]["name"] == "rel-server")
            .expect("server deployment");
        let spec = &server["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        let c = &spec["containers"][0];
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"],
            json!(["ALL"]),
            "{name}"
        );
        assert!(
            c["args"]
                .as_array()
                .unwrap()
                .contains(&json!("--register=false")),
            "{name}: the server runs in split mode"
        );
        assert_eq!(server["spec"]["replicas"], 2, "{name}");
        assert!(!by_kind(&docs, "PodDisruptionBudget").is_empty(), "{name}");
        // The Service port is exactly the port registered in the webhook configuration.
        let svc = by_kind(&docs, "Service")
            .into_iter()
            .find(|d| d["metadata"]["name"] == "rel-webhook")
            .unwrap();
        assert_eq!(svc["spec"]["ports"][0]["port"], 443);
        assert!(
            c["args"]
                .as_array()
                .unwrap()
                .contains(&json!("--service-port=443")),
            "{name}"
        );
    }
    // A client CA is mounted and passed to the server only when configured.
    for (sets, source, key) in [
        (
            vec!["webhook.clientCA.configMap=apiserver-client-ca"],
            "configMap",
            "ca.crt",
        ),
        (
            vec![
                "webhook.clientCA.secret=apiserver-client-ca",
                "webhook.clientCA.key=ca.pem",
            ],
            "secret",
            "ca.pem",
        ),
    ] {
        let docs = render("eirinix-system", "eirini", &sets);
        let args = run_args(&docs, "rel-server");
        let flag = format!("--client-ca-file=/etc/eirinix/client-ca/{key}");
        assert!(args.contains(&flag), "{sets:?}: {args:?}");
        let volume = client_ca_volume(&docs);
        assert_eq!(volume[source]["items"][0]["key"], key, "{sets:?}");
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--apiserver-client-cert-file")),
            "{sets:?}: {args:?}"
        );
    }
    // With the apiserver's client certificate beside the CA, the server checks the CA against it.
    let docs = render(
        "eirinix-system",
        "eirini",
        &[
            "webhook.clientCA.configMap=apiserver-client-ca",
            "webhook.clientCA.apiserverCertKey=apiserver.crt",
        ],
    );
    let args = run_args(&docs, "rel-server");
    for flag in [
        "--client-ca-file=/etc/eirinix/client-ca/ca.crt",
        "--apiserver-client-cert-file=/etc/eirinix/client-ca/apiserver.crt",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag}: {args:?}");
    }
    let volume = client_ca_volume(&docs);
    let keys: Vec<&Value> = volume["configMap"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["key"])
        .collect();
    assert_eq!(keys, [&json!("ca.crt"), &json!("apiserver.crt")]);
    let docs = render("eirinix-system", "eirini", &[]);
    assert!(
        !run_args(&docs, "rel-server")
            .iter()
            .any(|a| a.starts_with("--client-ca-file")),
        "no client CA unless configured"
    );
    // Invalid values fail with a clear message.
    for (sets, message) in [
        (
            &["webhook.clientCA.configMap=a", "webhook.clientCA.secret=b"][..],
            "set configMap or secret, not both",
        ),
        (
            &["webhook.clientCA.apiserverCertKey=apiserver.crt"][..],
            "apiserverCertKey needs webhook.clientCA.configMap or .secret",
        ),
        (
            &["extensions.persi.enabled=false"][..],
            "enable at least one extension",
        ),
        (
            &["appNamespace="][..],
            "appNamespace is empty: persi and ssh would get rights on Secrets in every namespace",
        ),
        (
            &[
                "appNamespace=",
                "extensions.persi.enabled=false",
                "extensions.ssh.enabled=true",
            ][..],
            "set appNamespace, or allowClusterWideSecrets=true",
        ),
        (
            // No peers given and no cluster to look the apiserver up in.
            &["webhook.networkPolicy.enabled=true"][..],
            "webhook.networkPolicy: set webhook.networkPolicy.from to where the kube-apiserver connects from",
        ),
    ] {
        let mut cmd = Command::new(helm());
        cmd.args(["template", "rel", CHART]);
        if !sets.iter().any(|s| s.starts_with("webhook.networkPolicy")) {
            cmd.args(["--set", APISERVER_PEER]);
        }
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{sets:?} must fail");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{sets:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_hash_the_templates_write_is_quoted() {
    // A truncated hex hash is sometimes all digits (or digits around one `e`), which YAML reads
    // as a number: the apiserver then refused the Deployment (an annotation must be a string),
    // depending on the values. Every hash must go through `quote`.
    let mut unquoted = Vec::new();
    for entry in std::fs::read_dir(format!("{CHART}/templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("sha256sum") && !line.contains("| quote }}") {
                unquoted.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        unquoted.is_empty(),
        "hashes written unquoted:\n{}",
        unquoted.join("\n")
    );
}

/// cert-manager mode: the caBundle cert-manager injects (the `ca.crt` of the serving certificate's
/// Secret) must survive a renewal of the serving certificate. With a self-signed issuer each leaf
/// is its own CA, so every renewal changed the caBundle before the pods reloaded their files. The
/// chart's chain is self-signed root -> CA Certificate -> CA Issuer -> serving certificate, and the
/// CA keeps its key when renewed.
/// The logs configuration and the server Role of a rendering.
fn logs_config_and_lease_verbs(docs: &[Value]) -> (eirinix_logs::LogsOptions, Vec<String>) {
    let cm = by_kind(docs, "ConfigMap")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "rel-logs")
        .expect("logs ConfigMap");
    let options =
        eirinix_logs::LogsOptions::from_yaml(cm["data"]["logs.yaml"].as_str().unwrap()).unwrap();
    let role = by_kind(docs, "Role")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "rel-server")
        .expect("server Role");
    let verbs = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"] == json!(["leases"]))
        .expect("a rule on leases")["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (options, verbs)
}

#[test]
fn logs_replicas_mode_reaches_the_configuration_and_the_role() {
    let logs = [
        "extensions.logs.enabled=true",
        "extensions.logs.sinks[0].type=syslog",
        "extensions.logs.sinks[0].address=127.0.0.1:6514",
    ];
    let (leader, verbs) = logs_config_and_lease_verbs(&render("eirinix-system", "eirini", &logs));
    assert_eq!(leader.replicas.mode, eirinix_logs::ReplicaMode::Leader);
    assert!(!verbs.contains(&"list".to_owned()), "{verbs:?}");

    // Sharded: members on, even with one replica; member Leases are listed.
    let mut sets = logs.to_vec();
    sets.extend(["extensions.logs.replicasMode=sharded", "replicas=1"]);
    let (sharded, verbs) = logs_config_and_lease_verbs(&render("eirinix-system", "eirini", &sets));
    assert_eq!(sharded.replicas.mode, eirinix_logs::ReplicaMode::Sharded);
    assert!(sharded.replicas.leader_election);
    sharded.validate().unwrap();
    assert!(verbs.contains(&"list".to_owned()), "{verbs:?}");
}

#[test]
fn cert_manager_renewals_keep_the_trusted_ca() {
    let docs = render(
        "eirinix-system",
        "eirini",
        &["certificates.mode=certManager"],
    );
    let named = |kind: &str, name: &str| -> Value {
        by_kind(&docs, kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let config = by_kind(&docs, "MutatingWebhookConfiguration")[0];
    let inject = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .unwrap();
    let serving = named("Certificate", inject.split_once('/').unwrap().1);
    assert_eq!(serving["spec"]["issuerRef"]["kind"], "Issuer");
    let issuer = named(
        "Issuer",
        serving["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(
        issuer["spec"].get("selfSigned").is_none(),
        "the serving certificate is signed by a self-signed issuer: each renewal is a new CA \
         and changes the caBundle: {issuer}"
    );
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("the serving certificate's issuer is not a CA issuer: {issuer}"));
    let ca = by_kind(&docs, "Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .expect("a Certificate makes the CA Secret");
    assert_eq!(ca["spec"]["isCA"], true, "{ca}");
    assert_eq!(
        ca["spec"]["privateKey"]["rotationPolicy"], "Never",
        "a renewed CA keeps its key, so leaves signed before stay valid: {ca}"
    );
    let root = named("Issuer", ca["spec"]["issuerRef"]["name"].as_str().unwrap());
    assert!(root["spec"].get("selfSigned").is_some(), "{root}");
    // The CA outlives many serving certificates.
    let hours = |v: &Value| -> u64 { v.as_str().unwrap().trim_end_matches('h').parse().unwrap() };
    assert!(hours(&ca["spec"]["duration"]) >= 10 * hours(&serving["spec"]["duration"]));
    assert_ne!(serving["spec"]["secretName"], ca["spec"]["secretName"]);

    // An issuer of the user's is used as is (no chain of ours).
    let docs = render(
        "eirinix-system",
        "eirini",
        &[
            "certificates.mode=certManager",
            "certificates.certManager.issuerRef.name=corp-ca",
            "certificates.certManager.issuerRef.kind=ClusterIssuer",
        ],
    );
    assert_eq!(by_kind(&docs, "Certificate").len(), 1);
    assert!(by_kind(&docs, "Issuer").is_empty());
    assert_eq!(
        by_kind(&docs, "Certificate")[0]["spec"]["issuerRef"]["name"],
        "corp-ca"
    );
}

/// A NetworkPolicy ingress evaluator (the semantics of networking.k8s.io/v1, for the fields the
/// chart and these tests use), to check what the chart's policies admit on top of a cluster's own.
mod netpol {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use serde_json::Value;

    pub type Labels = BTreeMap<String, String>;

    pub fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A pod (or, with no namespace, a host outside the cluster such as the apiserver).
    #[derive(Clone, Debug)]
    pub struct Endpoint {
        pub namespace: Option<String>,
        pub labels: Labels,
        pub ip: Ipv4Addr,
    }

    impl Endpoint {
        pub fn pod(namespace: &str, labels: Labels, ip: [u8; 4]) -> Self {
            Endpoint {
                namespace: Some(namespace.into()),
                labels,
                ip: ip.into(),
            }
        }
        pub fn host(ip: [u8; 4]) -> Self {
            Endpoint {
                namespace: None,
                labels: Labels::new(),
                ip: ip.into(),
            }
        }
        fn namespace_labels(&self) -> Labels {
            self.namespace
                .iter()
                .map(|ns| ("kubernetes.io/metadata.name".to_owned(), ns.clone()))
                .collect()
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Verdict {
        /// No ingress policy selects the pod: everything is admitted.
        NotIsolated,
        Allowed,
        Denied,
    }

    fn selects(selector: &Value, labels: &Labels) -> bool {
        let matches_labels = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
        let matches_expressions = selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let value = labels.get(e["key"].as_str().unwrap_or_default());
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                match e["operator"].as_str() {
                    Some("In") => value.is_some_and(|v| values.contains(&v.as_str())),
                    Some("NotIn") => value.is_none_or(|v| !values.contains(&v.as_str())),
                    Some("Exists") => value.is_some(),
                    Some("DoesNotExist") => value.is_none(),
                    other => panic!("operator {other:?}"),
                }
            });
        matches_labels && matches_expressions
    }

    fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
        let (net, bits) = cidr.split_once('/').unwrap();
        let (net, bits): (Ipv4Addr, u32) = (net.parse().unwrap(), bits.parse().unwrap());
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        u32::from(ip) & mask == u32::from(net) & mask
    }

    fn peer_admits(peer: &Value, policy_ns: &str, src: &Endpoint) -> bool {
        if let Some(block) = peer.get("ipBlock") {
            let except = block["except"].as_array().into_iter().flatten();
            return in_cidr(src.ip, block["cidr"].as_str().unwrap())
                && !except.filter_map(Value::as_str).any(|c| in_cidr(src.ip, c));
        }
        // Pod and namespace selectors only ever match pods.
        let Some(src_ns) = &src.namespace else {
            return false;
        };
        let ns_ok = match peer.get("namespaceSelector") {
            Some(sel) => selects(sel, &src.namespace_labels()),
            None => src_ns == policy_ns,
        };
        let pod_ok = peer
            .get("podSelector")
            .is_none_or(|sel| selects(sel, &src.labels));
        ns_ok && pod_ok
    }

    fn port_admits(port: &Value, number: u16, protocol: &str) -> bool {
        let proto = port["protocol"].as_str().unwrap_or("TCP");
        if proto != protocol {
            return false;
        }
        match port["port"].as_u64() {
            None if port.get("port").is_none() => true,
            None => false, // named ports: not used by the chart
            Some(p) => {
                let end = port["endPort"].as_u64().unwrap_or(p);
                (p..=end).contains(&u64::from(number))
            }
        }
    }

    /// What the `policies` decide for a connection from `src` to port `port`/`protocol` of `dst`.
    pub fn ingress(
        policies: &[Value],
        src: &Endpoint,
        dst: &Endpoint,
        port: u16,
        protocol: &str,
    ) -> Verdict {
        let dst_ns = dst.namespace.as_deref().unwrap();
        let mut isolated = false;
        for p in policies {
            let ns = p["metadata"]["namespace"].as_str().unwrap();
            let types = p["spec"]["policyTypes"].as_array();
            let ingress_type = types.is_none_or(|t| t.iter().any(|t| t == "Ingress"));
            if ns != dst_ns || !ingress_type || !selects(&p["spec"]["podSelector"], &dst.labels) {
                continue;
            }
            isolated = true;
            for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
                let ports: Vec<&Value> = rule["ports"].as_array().into_iter().flatten().collect();
                let from: Vec<&Value> = rule["from"].as_array().into_iter().flatten().collect();
                let port_ok =
                    ports.is_empty() || ports.iter().any(|x| port_admits(x, port, protocol));
                let from_ok = from.is_empty() || from.iter().any(|x| peer_admits(x, ns, src));
                if port_ok && from_ok {
                    return Verdict::Allowed;
                }
            }
        }
        if isolated {
            Verdict::Denied
        } else {
            Verdict::NotIsolated
        }
    }
}

/// The chart's NetworkPolicies, each with its namespace (the release's when the chart sets none).
fn network_policies(docs: &[Value], release_ns: &str) -> Vec<Value> {
    by_kind(docs, "NetworkPolicy")
        .into_iter()
        .map(|p| {
            let mut p = p.clone();
            if p["metadata"]["namespace"].is_null() {
                p["metadata"]["namespace"] = release_ns.into();
            }
            p
        })
        .collect()
}

/// Issue item 4: the ssh daemons' policy admitted every TCP port but the daemon's from anywhere
/// (overriding a namespace's default-deny, since policies add up) and isolated app pods for UDP.
/// Now it admits the proxy to the daemon port and nothing else, and it is off by default.
#[test]
fn the_ssh_daemon_policy_admits_the_proxy_and_leaves_everything_else_to_the_cluster() {
    use netpol::{Endpoint, Verdict, ingress, labels};
    let (sys, apps) = ("eirinix-system", "eirini");
    let app = Endpoint::pod(
        apps,
        labels(&[
            ("cloudfoundry.org/source_type", "APP"),
            ("cloudfoundry.org/guid", "g"),
        ]),
        [10, 244, 0, 10],
    );
    let proxy = Endpoint::pod(
        sys,
        labels(&[
            ("app.kubernetes.io/name", "eirinix"),
            ("app.kubernetes.io/instance", "rel"),
            ("app.kubernetes.io/component", "ssh-proxy"),
        ]),
        [10, 244, 0, 20],
    );
    let router = Endpoint::pod("routing", labels(&[("app", "router")]), [10, 244, 0, 30]);
    let other = Endpoint::pod("tenant", labels(&[("app", "x")]), [10, 244, 0, 40]);
    let ssh = [
        "extensions.persi.enabled=false",
        "extensions.ssh.enabled=true",
    ];

    // Defaults: the chart adds no policy on app pods; a cluster without policies stays open,
    // UDP included.
    let chart = network_policies(&render(sys, apps, &ssh), sys);
    for (port, proto) in [(8080, "TCP"), (5353, "UDP"), (2222, "TCP")] {
        assert_eq!(
            ingress(&chart, &other, &app, port, proto),
            Verdict::NotIsolated,
            "by default the chart must not isolate app pods ({port}/{proto}): {chart:#?}"
        );
    }

    // Enabled, in a namespace with a default-deny and rules of its own (router -> 8080 TCP,
    // anyone -> 5353 UDP): the chart adds exactly proxy -> daemon port.
    let chart = network_policies(
        &render(
            sys,
            apps,
            &[&ssh[..], &["extensions.ssh.proxy.networkPolicy=true"]].concat(),
        ),
        sys,
    );
    assert_eq!(
        chart
            .iter()
            .filter(|p| p["metadata"]["namespace"] == apps)
            .count(),
        1,
        "{chart:#?}"
    );
    let cluster: Vec<Value> = vec![
        json!({"metadata": {"name": "default-deny", "namespace": apps},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        json!({"metadata": {"name": "router", "namespace": apps},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{
                   "ports": [{"port": 8080}],
                   "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "routing"}}}]}]}}),
        json!({"metadata": {"name": "udp", "namespace": apps},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{
                   "ports": [{"port": 5353, "protocol": "UDP"}]}]}}),
    ];
    let all: Vec<Value> = [cluster.clone(), chart.clone()].concat();
    for (src, port, proto, expected, what) in [
        (
            &proxy,
            2222,
            "TCP",
            Verdict::Allowed,
            "the proxy reaches the daemon",
        ),
        (
            &other,
            2222,
            "TCP",
            Verdict::Denied,
            "another pod does not reach the daemon",
        ),
        (
            &router,
            2222,
            "TCP",
            Verdict::Denied,
            "the router does not reach the daemon",
        ),
        (
            &other,
            8080,
            "TCP",
            Verdict::Denied,
            "the default-deny still holds for the app port",
        ),
        (
            &proxy,
            8080,
            "TCP",
            Verdict::Denied,
            "the proxy reaches the daemon port only",
        ),
        (
            &other,
            9000,
            "TCP",
            Verdict::Denied,
            "the default-deny still holds for other ports",
        ),
        (
            &router,
            8080,
            "TCP",
            Verdict::Allowed,
            "the cluster's own rule",
        ),
        (
            &other,
            5353,
            "UDP",
            Verdict::Allowed,
            "the cluster's own UDP rule",
        ),
    ] {
        assert_eq!(ingress(&all, src, &app, port, proto), expected, "{what}");
    }
    // What the chart adds on its own (documented): the proxy rule; the rest is isolated.
    assert_eq!(ingress(&chart, &proxy, &app, 2222, "TCP"), Verdict::Allowed);
    assert_eq!(ingress(&chart, &router, &app, 8080, "TCP"), Verdict::Denied);
}

/// Issue item 5: the webhook port admits the apiserver and nothing else (any pod reaching it
/// could have the extensions create and probe Secrets).
#[test]
fn the_webhook_port_admits_only_the_apiserver() {
    use netpol::{Endpoint, Verdict, ingress, labels};
    let (sys, apps) = ("eirinix-system", "eirini");
    let server = Endpoint::pod(
        sys,
        labels(&[
            ("app.kubernetes.io/name", "eirinix"),
            ("app.kubernetes.io/instance", "rel"),
            ("app.kubernetes.io/component", "server"),
        ]),
        [10, 244, 0, 5],
    );
    assert!(APISERVER_CIDR.starts_with("192.0.2."));
    let apiserver = Endpoint::host([192, 0, 2, 7]);
    let app = Endpoint::pod(
        apps,
        labels(&[("cloudfoundry.org/source_type", "APP")]),
        [10, 244, 0, 10],
    );
    let neighbour = Endpoint::pod(sys, labels(&[("app", "other")]), [10, 244, 0, 11]);
    let monitoring = Endpoint::pod(
        "monitoring",
        labels(&[("app", "prometheus")]),
        [10, 244, 0, 12],
    );
    let outside = Endpoint::host([198, 51, 100, 1]);
    for sets in [
        vec![],
        vec![
            "extensions.ssh.enabled=true",
            "extensions.rootfs.enabled=true",
        ],
        vec!["certificates.mode=certManager"],
    ] {
        let docs = render(sys, apps, &sets);
        let chart = network_policies(&docs, sys);
        let webhook_port = 2999;
        assert_eq!(
            ingress(&chart, &apiserver, &server, webhook_port, "TCP"),
            Verdict::Allowed,
            "{sets:?}: the apiserver reaches the webhook"
        );
        for (src, what) in [
            (&app, "an app pod"),
            (&neighbour, "a pod of the release namespace"),
            (&monitoring, "another namespace"),
            (&outside, "an address outside the cluster"),
        ] {
            assert_eq!(
                ingress(&chart, src, &server, webhook_port, "TCP"),
                Verdict::Denied,
                "{sets:?}: {what} must not reach the webhook port: {chart:#?}"
            );
            assert_eq!(
                ingress(&chart, src, &server, 9090, "TCP"),
                Verdict::Denied,
                "{sets:?}: metrics only from metrics.allowFrom"
            );
        }
    }
    // Monitoring is admitted to the metrics port (only) when named.
    let docs = render(
        sys,
        apps,
        &[
            "metrics.allowFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
        ],
    );
    let chart = network_policies(&docs, sys);
    assert_eq!(
        ingress(&chart, &monitoring, &server, 9090, "TCP"),
        Verdict::Allowed
    );
    assert_eq!(
        ingress(&chart, &monitoring, &server, 2999, "TCP"),
        Verdict::Denied
    );
    // Turned off, no policy is rendered.
    let docs = render(sys, apps, &["webhook.networkPolicy.enabled=false"]);
    assert!(network_policies(&docs, sys).is_empty());
}

/// The real CRDs of cert-manager (Certificate, Issuer) and prometheus-operator
/// (ServiceMonitor), provisioned from their Go modules by `scripts/provision.sh --helm`: the
/// chart's optional manifests are validated against their real schemas.
async fn real_crds(client: &kube::Client) {
    let dir = eirinix_testenv::assets_dir()
        .expect("binaries (scripts/provision.sh --helm)")
        .join("crds");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in [
        "cert-manager.io_certificates.yaml",
        "cert-manager.io_issuers.yaml",
        "monitoring.coreos.com_servicemonitors.yaml",
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/provision.sh --helm to fetch the CRDs)",
                path.display()
            )
        });
        let crd: CustomResourceDefinition = yaml_serde::from_str(&text).unwrap();
        names.push(crd.metadata.name.clone().unwrap());
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("{e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in names {
        loop {
            let crd = crds.get(&name).await.unwrap();
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn apply(
    client: &kube::Client,
    doc: &Value,
    default_ns: &str,
    dry_run: bool,
) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{kind}: {e}"))?;
    let mut obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| default_ns.to_owned());
        obj.metadata.namespace = Some(ns.clone());
        Api::namespaced_with(client.clone(), &ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let mut params = PatchParams::apply("chart-test").force();
    params.dry_run = dry_run;
    // Unknown or misplaced fields are errors, not warnings: the real CRD schemas decide.
    params.field_validation = Some(kube::api::ValidationDirective::Strict);
    api.patch(&name, &params, &Patch::Apply(&obj))
        .await
        .map(|_| ())
        .map_err(|e| format!("{kind}/{name}: {e}"))
}

async fn namespaces(cp: &ControlPlane) -> (String, String) {
    (
        cp.namespace("chart-sys").await.unwrap(),
        cp.namespace("chart-apps").await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_manifest_is_accepted_by_the_apiserver() {
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.unwrap();
    real_crds(&client).await;
    for (name, sets) in variants() {
        let (sys, apps) = namespaces(cp).await;
        let mut sets = sets.clone();
        let fp = format!("fingerprint={}", unique_name("chart"));
        sets.push(&fp);
        let docs = render(&sys, &apps, &sets);
        assert!(docs.len() >= 8, "{name}: only {} documents", docs.len());
        for doc in &docs {
            apply(&client, doc, &sys, true)
                .await
                .unwrap_or_else(|e| panic!("{name}: rejected: {e}"));
        }
    }
}

/// At install (a server-side render, as `helm install` does), the webhook's NetworkPolicy admits
/// the addresses of the `kubernetes` Service's EndpointSlice when no peers are configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_addresses_are_looked_up_at_install() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.unwrap();
    // This plane runs without an endpoint reconciler: publish the slice a cluster would have.
    // Only data for the policy; nothing is sent to that address.
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.41"]}, {"addresses": ["192.0.2.42"]}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    }))
    .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    match slices.create(&PostParams::default(), &slice).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("{e}"),
    }
    let (sys, apps) = namespaces(cp).await;
    let out = Command::new(helm())
        .args([
            "template",
            "rel",
            CHART,
            "--dry-run=server",
            "--namespace",
            &sys,
        ])
        .args(["--set", &format!("appNamespace={apps}")])
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = yaml_serde::Deserializer::from_slice(&out.stdout)
        .filter_map(|d| Value::deserialize(d).ok().filter(|v| !v.is_null()))
        .collect();
    let policy = by_kind(&docs, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "rel-server")
        .expect("the server's NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        json!([{"ipBlock": {"cidr": "192.0.2.41/32"}}, {"ipBlock": {"cidr": "192.0.2.42/32"}}]),
        "{policy}"
    );
}

/// The server Deployment's `client-ca` volume.
fn client_ca_volume(docs: &[Value]) -> Value {
    let server = by_kind(docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "rel-server")
        .expect("the server Deployment");
    server["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "client-ca"))
        .cloned()
        .expect("client-ca volume")
}

fn run_args(docs: &[Value], deployment: &str) -> Vec<String> {
    let d = by_kind(docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == deployment)
        .expect("deployment");
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn webhook_fields(cfg: &Value) -> Value {
    let mut out = Vec::new();
    for w in cfg["webhooks"].as_array().unwrap() {
        let mut w = w.clone();
        w["clientConfig"]
            .as_object_mut()
            .unwrap()
            .remove("caBundle");
        out.push(w);
    }
    json!({"name": cfg["metadata"]["name"], "webhooks": out})
}

#[test]
fn chart_configuration_equals_what_the_binary_registers() {
    for sets in [
        vec!["certificates.mode=certManager"],
        vec![
            "certificates.mode=certManager",
            "extensions.rootfs.enabled=true",
            "webhook.interceptUpdate=true",
            "webhook.excludedNamespaces={other}",
        ],
    ] {
        let docs = render("eirinix-system", "eirini", &sets);
        let chart = by_kind(&docs, "MutatingWebhookConfiguration")[0];
        let mut args = run_args(&docs, "rel-server");
        assert_eq!(args.remove(0), "run");
        let out = Command::new(env!("CARGO_BIN_EXE_eirinix"))
            .args(["register", "--dry-run"])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let binary: Value = yaml_serde::from_slice(&out.stdout).unwrap();
        assert_eq!(
            webhook_fields(chart),
            webhook_fields(&binary),
            "chart and binary disagree for {sets:?}"
        );
    }
}

/// A kubeconfig that impersonates `user`, next to the plane's.
fn impersonating(cp: &ControlPlane, user: &str) -> tempfile::NamedTempFile {
    let mut kc: yaml_serde::Value = yaml_serde::from_str(cp.kubeconfig_yaml()).unwrap();
    for u in kc["users"].as_sequence_mut().unwrap() {
        u["user"]["as"] = user.into();
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml_serde::to_string(&kc).unwrap()).unwrap();
    file
}

/// A client acting as the identity of `kubeconfig` (see [`impersonating`]).
async fn client_as(kubeconfig: &std::path::Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// `result` must be the apiserver's 403.
fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: must be forbidden, got {other:?}"),
    }
}

fn eirinix_as(kubeconfig: &std::path::Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eirinix"));
    c.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_is_enough_for_each_component_and_no_more() {
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.unwrap();
    let (sys, apps) = namespaces(cp).await;
    let fp = unique_name("rbac");
    let fp_set = format!("fingerprint={fp}");
    // A log aggregator for the logs extension to connect to.
    let aggregator = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = format!(
        "extensions.logs.sinks[0].address={}",
        aggregator.local_addr().unwrap()
    );
    let docs = render(
        &sys,
        &apps,
        &[
            &fp_set,
            "extensions.rootfs.enabled=true",
            "extensions.rootfs.version=v2",
            "extensions.rootfs.hookJob=true",
            "extensions.ssh.enabled=true",
            "extensions.persi.broker.enabled=true",
            "extensions.logs.enabled=true",
            "extensions.logs.sinks[0].type=syslog",
            &sink,
        ],
    );
    // Create what identities need (service accounts, RBAC, the Secrets the chart makes), for real.
    for doc in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some(
                "ServiceAccount"
                    | "Role"
                    | "RoleBinding"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "ConfigMap"
                    | "Secret"
            )
        )
    }) {
        apply(&client, doc, &sys, false).await.unwrap();
    }
    let sa = |name: &str| format!("system:serviceaccount:{sys}:rel-{name}");
    let job_args = |docs: &[Value], job: &str| -> Vec<String> {
        let j = by_kind(docs, "Job")
            .into_iter()
            .find(|d| d["metadata"]["name"] == format!("rel-{job}"))
            .expect("job");
        j["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };

    // 1. The register Job's identity can register.
    let register_kc = impersonating(cp, &sa("register"));
    let out = eirinix_as(register_kc.path(), &job_args(&docs, "register"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "register as its service account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfgs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    assert!(
        cfgs.get_opt(&format!("{fp}-mutating-hook"))
            .await
            .unwrap()
            .is_some()
    );

    // 2. The server's identity runs (split mode) and becomes ready...
    let server_kc = impersonating(cp, &sa("server"));
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The logs configuration the chart mounts, as a file.
    let logs_cm = by_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "rel-logs")
        .expect("logs ConfigMap");
    let logs_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        logs_file.path(),
        logs_cm["data"]["logs.yaml"].as_str().unwrap(),
    )
    .unwrap();
    let mut args: Vec<String> = run_args(&docs, "rel-server")
        .into_iter()
        .filter(|a| {
            !a.starts_with("--port=")
                && !a.starts_with("--admin-port=")
                && !a.starts_with("--logs-config=")
        })
        .collect();
    args.extend([
        "--port=0".into(),
        format!("--admin-port={admin_port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--logs-config={}", logs_file.path().display()),
    ]);
    let ext = args
        .iter()
        .find(|a| a.starts_with("--extensions="))
        .unwrap();
    assert_eq!(ext, "--extensions=persi,ssh,logs,rootfs");
    let mut server = eirinix_as(server_kc.path(), &args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let probe = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{admin_port}/readyz")])
            .output()
            .unwrap();
        if probe.status.success() {
            break true;
        }
        if Instant::now() > deadline || server.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let every watcher, leader election and janitor make its first requests.
    std::thread::sleep(Duration::from_secs(4));
    let _ = server.kill();
    let output = server.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        ready,
        "server as its service account never became ready: {stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("forbidden"),
        "the server's role lacks a permission its extensions use:\n{stderr}"
    );

    // The ssh proxy's identity can start it (host key Secret created) and it serves SSH.
    let proxy_kc = impersonating(cp, &sa("ssh-proxy"));
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy_args: Vec<String> = run_args(&docs, "rel-ssh-proxy")
        .into_iter()
        .map(|a| {
            if a.starts_with("--listen=") {
                format!("--listen=127.0.0.1:{proxy_port}")
            } else {
                a
            }
        })
        .collect();
    let mut proxy = eirinix_as(proxy_kc.path(), &proxy_args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let banner = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", proxy_port)) {
            use std::io::Read as _;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 8];
            if s.read(&mut buf).is_ok_and(|n| n > 0) {
                break String::from_utf8_lossy(&buf).to_string();
            }
        }
        if Instant::now() > deadline || proxy.try_wait().unwrap().is_some() {
            break String::new();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = proxy.kill();
    let output = proxy.wait_with_output().unwrap();
    assert!(
        banner.starts_with("SSH-2.0"),
        "ssh proxy as its service account: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The proxy reads no Secret but the master key's (app keys derive from it), and creates none.
    let as_proxy = client_as(proxy_kc.path()).await;
    let probe = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("not-the-proxys".into()),
            ..Default::default()
        },
        string_data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    forbidden(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_proxy.clone(), &apps)
            .get("not-the-proxys")
            .await,
        "the proxy reads an app-namespace Secret",
    );
    forbidden(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_proxy.clone(), &sys)
            .create(&PostParams::default(), &probe)
            .await,
        "the proxy creates a Secret in the release namespace",
    );
    assert!(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_proxy, &sys)
            .get(&format!("{fp}-ssh-master"))
            .await
            .is_ok(),
        "the proxy reads the master key"
    );

    // The persi broker's identity provisions, binds, unbinds and deprovisions...
    let broker_kc = impersonating(cp, &sa("persi-broker"));
    let broker_cm = by_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "rel-persi-broker")
        .expect("broker ConfigMap");
    let broker_yaml = broker_cm["data"]["broker.yaml"].as_str().unwrap();
    let broker_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broker_file.path(), broker_yaml).unwrap();
    let catalog: Value = yaml_serde::from_str(broker_yaml).unwrap();
    let service_id = catalog["catalog"]["services"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plan_id = catalog["catalog"]["services"][0]["plans"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let broker_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = eirinix_as(
        broker_kc.path(),
        &[
            "broker".into(),
            format!("--config={}", broker_file.path().display()),
            format!("--listen=127.0.0.1:{broker_port}"),
        ],
    )
    .env("EIRINIX_BROKER_USERNAME", "broker")
    .env("EIRINIX_BROKER_PASSWORD", "chart-test-password")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let osb = |method: &str, path: &str, body: Option<Value>| -> u16 {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(["-u", "broker:chart-test-password", "-X", method])
        .args([
            "-H",
            "X-Broker-API-Version: 2.17",
            "-H",
            "Content-Type: application/json",
        ])
        .arg(format!("http://127.0.0.1:{broker_port}{path}"));
        if let Some(b) = body {
            c.args(["--data-binary", &b.to_string()]);
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while osb("GET", "/v2/catalog", None) != 200 {
        assert!(
            Instant::now() < deadline && broker.try_wait().unwrap().is_none(),
            "the broker never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let q = format!("service_id={service_id}&plan_id={plan_id}");
    let provision = json!({"service_id": service_id, "plan_id": plan_id,
        "organization_guid": "o", "space_guid": "s", "parameters": {}});
    let bind = json!({"service_id": service_id, "plan_id": plan_id,
        "bind_resource": {"app_guid": "app"}, "parameters": {}});
    let results = [
        osb("PUT", "/v2/service_instances/rbac-1", Some(provision)),
        osb(
            "PUT",
            "/v2/service_instances/rbac-1/service_bindings/b-1",
            Some(bind),
        ),
        osb(
            "DELETE",
            &format!("/v2/service_instances/rbac-1/service_bindings/b-1?{q}"),
            None,
        ),
        osb("DELETE", &format!("/v2/service_instances/rbac-1?{q}"), None),
    ];
    let _ = broker.kill();
    let output = broker.wait_with_output().unwrap();
    assert_eq!(
        results,
        [201, 201, 200, 200],
        "the broker as its service account: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // ...and can neither list nor update claims (it never does; deleting is checked in code).
    let as_broker = client_as(broker_kc.path()).await;
    let claims =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(as_broker, &apps);
    forbidden(
        claims.list(&Default::default()).await,
        "the broker lists claims",
    );
    let pvc: k8s_openapi::api::core::v1::PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "someone-elses"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let theirs =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &apps)
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap();
    forbidden(
        claims
            .replace("someone-elses", &PostParams::default(), &theirs)
            .await,
        "the broker updates a claim",
    );

    // The server reads the master key and no other Secret of the release namespace.
    let as_server_client = client_as(server_kc.path()).await;
    let release_secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_server_client, &sys);
    assert!(
        release_secrets
            .get(&format!("{fp}-ssh-master"))
            .await
            .is_ok()
    );
    forbidden(
        release_secrets.create(&PostParams::default(), &probe).await,
        "the server creates a Secret in the release namespace",
    );

    // ...and cannot write webhook configurations.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(server_kc.path()).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let as_server: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(kube::Client::try_from(config).unwrap());
    let patch = json!({"metadata": {"labels": {"x": "y"}}});
    match as_server
        .patch(
            &format!("{fp}-mutating-hook"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("the server identity must not patch webhook configurations: {other:?}"),
    }

    // The rootfs hook Job's identity runs its one-shot roll (no app to roll here: a clean
    // report, exit 0); the Job's arguments are exactly the chart's (a duplicated flag failed).
    let roll_kc = impersonating(cp, &sa("rootfs-roll"));
    let out = eirinix_as(roll_kc.path(), &job_args(&docs, "rootfs-roll"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootfs-roll as its service account: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. The deregister Job's identity removes the configuration (servers still running)...
    let deregister_kc = impersonating(cp, &sa("deregister"));
    let out = eirinix_as(deregister_kc.path(), &job_args(&docs, "deregister"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deregister as its service account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cfgs.get_opt(&format!("{fp}-mutating-hook"))
            .await
            .unwrap()
            .is_none()
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &sys);
    let cert_secret = format!("{fp}-setupcertificate");
    assert!(
        secrets.get_opt(&cert_secret).await.unwrap().is_some(),
        "kept until the servers are gone"
    );
    // ...and the cleanup Job's identity removes the rest once no server pod is left.
    let cleanup_kc = impersonating(cp, &sa("cleanup"));
    let out = eirinix_as(cleanup_kc.path(), &job_args(&docs, "cleanup"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cleanup as its service account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed = String::from_utf8_lossy(&out.stdout);
    for object in [
        format!("Secret {sys}/{cert_secret}"),
        format!("Lease {sys}/{fp}-rootfs"),
        format!("Lease {sys}/{fp}-logs"),
    ] {
        assert!(
            removed.contains(&object),
            "cleanup removed {object}: {removed}"
        );
    }
    assert!(secrets.get_opt(&cert_secret).await.unwrap().is_none());
}
