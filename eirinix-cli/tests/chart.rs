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
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/eirinix");

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
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v: Value = serde_yaml::with::singleton_map_recursive::deserialize(d).ok()?;
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
        cmd.args(["lint", CHART, "--strict"]);
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
        let server = by_kind(&docs, "Deployment")
            .into_iter()
            .find(|d| d["metadata"]["name"] == "rel-server")
            .unwrap();
        let volume = server["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "client-ca")
            .expect("client-ca volume");
        assert_eq!(volume[source]["items"][0]["key"], key, "{sets:?}");
    }
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
    ] {
        let mut cmd = Command::new(helm());
        cmd.args(["template", "rel", CHART]);
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

async fn stub_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (group, kind, plural) in [
        ("cert-manager.io", "Certificate", "certificates"),
        ("cert-manager.io", "Issuer", "issuers"),
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ] {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))
        .unwrap();
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in [
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "servicemonitors.monitoring.coreos.com",
    ] {
        loop {
            let crd = crds.get(name).await.unwrap();
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
    stub_crds(&client).await;
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
        let binary: Value = serde_yaml::from_slice(&out.stdout).unwrap();
        assert_eq!(
            webhook_fields(chart),
            webhook_fields(&binary),
            "chart and binary disagree for {sets:?}"
        );
    }
}

/// A kubeconfig that impersonates `user`, next to the plane's.
fn impersonating(cp: &ControlPlane, user: &str) -> tempfile::NamedTempFile {
    let mut kc: serde_yaml::Value = serde_yaml::from_str(cp.kubeconfig_yaml()).unwrap();
    for u in kc["users"].as_sequence_mut().unwrap() {
        u["user"]["as"] = user.into();
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_yaml::to_string(&kc).unwrap()).unwrap();
    file
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
            "extensions.ssh.enabled=true",
            "extensions.logs.enabled=true",
            "extensions.logs.sinks[0].type=syslog",
            &sink,
        ],
    );
    // Create what identities need (service accounts and RBAC), for real.
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
        format!("Secret {sys}/{fp}-ssh-proxy-host-key"),
    ] {
        assert!(
            removed.contains(&object),
            "cleanup removed {object}: {removed}"
        );
    }
    assert!(secrets.get_opt(&cert_secret).await.unwrap().is_none());
}
