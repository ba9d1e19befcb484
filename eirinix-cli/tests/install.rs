//! The chart installed for real on the real node, as an operator does it: the image built by
//! this repository (no registry), `helm install` with every extension, the webhook reached
//! through its Service by the apiserver, app pods mutated and running; then, while app pods are
//! created without pause, `helm upgrade` rolls the server, a replica is deleted, the
//! certificates rotate: no admission fails and no pod is admitted without its mutation. Finally
//! `helm uninstall` leaves nothing eirinix made, and installing again works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use eirinix_testenv::eirini::{EiriniApp, eirinix_image, running_image};
use eirinix_testenv::support::{eventually, init_tracing, wait_pod_ready};
use eirinix_testenv::{Cluster, app_image, unique_name};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/eirinix");
const WAIT: Duration = Duration::from_secs(300);
const ROOTFS: &str = "eirinix.local/cflinuxfs";

struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    release: String,
    namespace: String,
}

impl Helm {
    /// Runs helm with the release's namespace; panics with helm's output when it fails.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "HELM_CACHE_HOME",
                std::env::temp_dir().join("eirinix-helm-cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                std::env::temp_dir().join("eirinix-helm-config"),
            )
            .env(
                "HELM_DATA_HOME",
                std::env::temp_dir().join("eirinix-helm-data"),
            )
            .args(args)
            .args(["--namespace", &self.namespace])
            .output()
            .expect("helm runs");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm {args:?} failed:\n{text}");
        text
    }

    fn install(&self, values: &Path) -> String {
        self.run(&[
            "install",
            &self.release,
            CHART,
            "-f",
            &values.display().to_string(),
            "--wait",
            "--timeout",
            "5m",
        ])
    }

    fn upgrade(&self, values: &Path, sets: &[&str]) -> String {
        let mut args = vec![
            "upgrade".to_owned(),
            self.release.clone(),
            CHART.to_owned(),
            "-f".to_owned(),
            values.display().to_string(),
            "--wait".to_owned(),
            "--timeout".to_owned(),
            "5m".to_owned(),
        ];
        for s in sets {
            args.push("--set".into());
            args.push((*s).into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    fn uninstall(&self) -> String {
        self.run(&["uninstall", &self.release, "--wait", "--timeout", "5m"])
    }
}

/// A syslog receiver on 127.0.0.1 that only counts the messages it gets.
async fn syslog_sink() -> (u16, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    c.fetch_add(bytecount(&buf[..n]), Ordering::Relaxed);
                }
            });
        }
    });
    (port, count)
}

/// Syslog frames in a chunk, roughly (each carries one `<14>1 ` header).
fn bytecount(chunk: &[u8]) -> u64 {
    chunk.windows(3).filter(|w| w == b"<14").count() as u64
}

/// The binding persi reads, for a claim.
fn vcap(claim: &str) -> String {
    json!({"eirini-persi": [{
        "name": "data", "label": "eirini-persi", "plan": "default",
        "credentials": {"volume_id": claim},
        "volume_mounts": [{"container_dir": "/var/vcap/data/app", "mode": "rw", "device_type": "shared",
                           "device": {"volume_id": claim, "mount_config": {}}}]
    }]})
    .to_string()
}

/// What every stock webhook must have done to an admitted app pod.
fn mutated(pod: &Value) -> Result<(), String> {
    let annotations = &pod["metadata"]["annotations"];
    let labels = &pod["metadata"]["labels"];
    let mut missing = Vec::new();
    if annotations["eirinix.org/persi"].is_null() {
        missing.push("persi");
    }
    if annotations["eirinix.org/ssh"].is_null() {
        missing.push("ssh");
    }
    if labels["cloudfoundry.org/rootfs-version"] != "v2" {
        missing.push("rootfs");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not mutated by {missing:?}"))
    }
}

/// Creates Eirini app pods (server-side dry run: admission runs in full, nothing is stored)
/// until stopped, counting admissions, failures and pods admitted unmutated.
#[derive(Default)]
struct Load {
    admitted: AtomicU64,
    failed: AtomicU64,
    unmutated: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.admitted.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.unmutated.load(Ordering::SeqCst),
        )
    }
}

/// Creators working at once: the apiserver then keeps several connections to each replica,
/// as under real load (one sequential creator would hide connection handling at shutdown).
const CREATORS: usize = 6;

fn start_load(client: kube::Client, ns: String, claim: String, stop: Arc<AtomicBool>) -> Arc<Load> {
    let load = Arc::new(Load::default());
    let mut app = EiriniApp::new("load").env("VCAP_SERVICES", &vcap(&claim));
    app.image = format!("{ROOTFS}:v1");
    app.rootfs_version = Some("v1".into());
    let template = app.statefulset().spec.unwrap().template;
    for worker in 0..CREATORS {
        let (l, client, ns, stop, template) = (
            load.clone(),
            client.clone(),
            ns.clone(),
            stop.clone(),
            template.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": template.metadata, "spec": template.spec});
                pod["metadata"]["name"] = json!(format!("load-{worker}-{i}"));
                let request =
                    http::Request::post(format!("/api/v1/namespaces/{ns}/pods?dryRun=All"))
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&pod).unwrap())
                        .unwrap();
                match client.request::<Value>(request).await {
                    Ok(stored) => {
                        l.admitted.fetch_add(1, Ordering::SeqCst);
                        if let Err(e) = mutated(&stored) {
                            l.unmutated.fetch_add(1, Ordering::SeqCst);
                            l.errors.lock().unwrap().push(e);
                        }
                    }
                    Err(e) => {
                        l.failed.fetch_add(1, Ordering::SeqCst);
                        l.errors.lock().unwrap().push(e.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_and_uninstall_with_zero_failed_admissions() {
    init_tracing();
    let cluster = Cluster::shared().await.expect("the real node");
    let image = eirinix_image().expect("the eirinix image builds");
    cluster.load_image(&image).unwrap();
    // The upgrade rolls the server onto another tag of the image.
    let (repository, tag) = image.name().rsplit_once(':').unwrap();
    let next_tag = format!("{tag}-next");
    cluster
        .load_image(&image.clone().with_name(format!("{repository}:{next_tag}")))
        .unwrap();
    for version in ["v1", "v2"] {
        let rootfs = app_image()
            .unwrap()
            .with_name(format!("{ROOTFS}:{version}"))
            .contents("/etc/rootfs-version", format!("{version}\n"), 0o644);
        cluster.load_image(&rootfs).unwrap();
    }
    let client = cluster.client().await.unwrap();
    let release_ns = cluster.namespace("eirinix-system").await.unwrap();
    let apps = cluster.namespace("eirini").await.unwrap();
    let fingerprint = unique_name("inst");
    let (sink_port, received) = syslog_sink().await;
    let sink = cluster.forward_to_host(sink_port).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            r#"appNamespace: {apps}
fingerprint: {fingerprint}
image: {{repository: {repository}, tag: "{tag}", pullPolicy: IfNotPresent}}
webhook: {{failurePolicy: Fail, preStopSeconds: 3, drainSeconds: 3}}
extensions:
  persi:
    enabled: true
    broker:
      enabled: true
      plans:
        - {{id: default, name: default, description: local volumes, storageClass: {class}, size: 1Gi, accessMode: ReadWriteOnce}}
  ssh: {{enabled: true, proxy: {{enabled: true, replicas: 1}}}}
  logs:
    enabled: true
    sinks: [{{type: syslog, address: "{sink}"}}]
  rootfs: {{enabled: true, version: v2, imagePattern: {ROOTFS}, hookJob: true}}
"#,
            class = eirinix_testenv::STORAGE_CLASS,
        ),
    )
    .unwrap();
    let helm = Helm {
        bin: eirinix_testenv::assets_dir().unwrap().join("helm"),
        kubeconfig: cluster.plane().kubeconfig_path().to_owned(),
        release: "eirinix".into(),
        namespace: release_ns.clone(),
    };

    // Install: register Job, two server replicas behind the Service, broker, ssh proxy, the
    // rootfs hook Job (helm waits for all of it and fails when a Job fails).
    helm.install(&values);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs
        .get(&format!("{fingerprint}-mutating-hook"))
        .await
        .expect("the register Job wrote the configuration");
    for webhook in config.webhooks.unwrap() {
        let svc = webhook.client_config.service.expect("service mode");
        assert_eq!(svc.namespace, release_ns);
        assert!(webhook.client_config.url.is_none());
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release_ns);
    let server = deployments.get("eirinix-server").await.unwrap();
    assert_eq!(server.status.unwrap().ready_replicas, Some(2));
    // The webhook port admits the apiserver, found at install through the `kubernetes`
    // Service's EndpointSlices (here the relay inside the node).
    let policy = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        client.clone(),
        &release_ns,
    )
    .get("eirinix-server")
    .await
    .expect("the server's NetworkPolicy");
    let policy = serde_json::to_string(&policy.spec).unwrap();
    assert!(
        policy.contains(&format!("{}/32", cluster.node_ip())),
        "the apiserver's address is admitted: {policy}"
    );

    // An app created afterwards is mutated through the Service and runs.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "app-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let mut app = EiriniApp::new("dora").env("VCAP_SERVICES", &vcap("app-data"));
    app.image = format!("{ROOTFS}:v1");
    app.rootfs_version = Some("v1".into());
    Api::<StatefulSet>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &app.statefulset())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let pod = wait_pod_ready(&pods, &app.pod_name(0), WAIT).await;
    mutated(&serde_json::to_value(&pod).unwrap()).unwrap();
    assert_eq!(
        running_image(&pod).as_deref(),
        Some(format!("{ROOTFS}:v2").as_str())
    );
    let out = cluster
        .exec(
            &apps,
            &app.pod_name(0),
            "opi",
            [
                "sh",
                "-c",
                "echo ok > /var/vcap/data/app/f && cat /var/vcap/data/app/f",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    eventually(WAIT, "the app's log lines at the aggregator", || async {
        (received.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;

    // Under continuous app-pod creation: roll the server (a new image tag), delete a replica,
    // rotate the CA during a roll. Each step: no failed admission, no pod without its mutation.
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(
        client.clone(),
        apps.clone(),
        "app-data".into(),
        stop.clone(),
    );
    eventually(WAIT, "the load generator's first admissions", || async {
        (load.snapshot().0 >= 20).then_some(())
    })
    .await;
    let mut report = Vec::new();
    let step = |name: &str, before: (u64, u64, u64), started: std::time::Instant| {
        let after = load.snapshot();
        let line = format!(
            "{name}: {} app pods admitted, {} failed, {} unmutated, in {:.1} s",
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            started.elapsed().as_secs_f64()
        );
        println!("install-under-load {line}");
        line
    };

    // 1. `helm upgrade` to another image tag: both replicas are replaced, one at a time.
    let (before, started) = (load.snapshot(), std::time::Instant::now());
    let old_pods = server_pods(&client, &release_ns).await;
    helm.upgrade(&values, &[&format!("image.tag={next_tag}")]);
    eventually(WAIT, "every server pod replaced", || async {
        let now = server_pods(&client, &release_ns).await;
        (now.len() == 2 && now.iter().all(|p| !old_pods.contains(p))).then_some(())
    })
    .await;
    report.push(step("webhook rollout under load", before, started));

    // 2. One replica deleted (SIGTERM: preStop, drain, exit); the Deployment replaces it.
    let (before, started) = (load.snapshot(), std::time::Instant::now());
    let victim = server_pods(&client, &release_ns).await.remove(0);
    Api::<Pod>::namespaced(client.clone(), &release_ns)
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let all_pods: Api<Pod> = Api::namespaced(client.clone(), &release_ns);
    eventually(
        WAIT,
        "the deleted replica drained, gone and replaced",
        || async {
            let gone = all_pods.get_opt(&victim).await.ok()?.is_none();
            (gone && ready_replicas(&client, &release_ns).await == 2).then_some(())
        },
    )
    .await;
    report.push(step("replica killed under load", before, started));

    // 3. The certificate Secret deleted, then `helm upgrade` rolls the server while its
    // register hook runs: whoever re-creates the Secret first (a replica restores what it
    // serves; register keeps the CAs the configuration trusts as the previous CA), every chain
    // served stays trusted.
    let (before, started) = (load.snapshot(), std::time::Instant::now());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release_ns);
    let old_ca = ca_of(&secrets, &fingerprint).await;
    let old_pods = server_pods(&client, &release_ns).await;
    secrets
        .delete(
            &format!("{fingerprint}-setupcertificate"),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    helm.upgrade(&values, &[&format!("image.tag={tag}")]);
    eventually(WAIT, "the certificates back and the roll done", || async {
        let now = server_pods(&client, &release_ns).await;
        let rolled = now.len() == 2 && now.iter().all(|p| !old_pods.contains(p));
        (rolled && !ca_of(&secrets, &fingerprint).await.is_empty()).then_some(())
    })
    .await;
    let renewed = ca_of(&secrets, &fingerprint).await != old_ca;
    report.push(step(
        &format!(
            "certificate Secret deleted during a rollout under load ({})",
            if renewed {
                "new CA, old one kept as previous"
            } else {
                "restored by a replica"
            }
        ),
        before,
        started,
    ));

    stop.store(true, Ordering::SeqCst);
    let (admitted, failed, unmutated) = load.snapshot();
    let errors = load.errors.lock().unwrap().clone();
    assert_eq!(
        (failed, unmutated),
        (0, 0),
        "of {admitted} app pods created: {failed} failed, {unmutated} unmutated; {report:#?}; first errors: {:?}",
        &errors[..errors.len().min(5)]
    );

    // Uninstall: nothing eirinix made is left; then install again.
    helm.uninstall();
    assert!(
        configs
            .get_opt(&format!("{fingerprint}-mutating-hook"))
            .await
            .unwrap()
            .is_none()
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release_ns);
    let left: Vec<String> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.starts_with(&fingerprint))
        .collect();
    assert!(left.is_empty(), "secrets left: {left:?}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_ns);
    let left: Vec<String> = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|l| l.metadata.name)
        .collect();
    assert!(left.is_empty(), "leases left: {left:?}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &release_ns);
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n != "kube-root-ca.crt")
        .collect();
    assert!(left.is_empty(), "config maps left: {left:?}");
    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);
    let keys = app_secrets
        .list(&ListParams::default().labels("eirinix.org/ssh=keys"))
        .await
        .unwrap();
    assert!(keys.items.is_empty(), "app key secrets left");
    let _ = pods
        .delete(&app.pod_name(0), &DeleteParams::default())
        .await;

    // A second install works (nothing stale in the way) and mutates again.
    helm.install(&values);
    let pod = wait_pod_ready(&pods, &app.pod_name(0), WAIT).await;
    mutated(&serde_json::to_value(&pod).unwrap()).unwrap();
    helm.uninstall();
}

/// Names of the server pods (not terminating).
async fn server_pods(client: &kube::Client, ns: &str) -> Vec<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=server"))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

async fn ready_replicas(client: &kube::Client, ns: &str) -> i32 {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get("eirinix-server")
        .await
        .ok()
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// The CA certificate in the certificate Secret (empty while it does not exist).
async fn ca_of(secrets: &Api<Secret>, fingerprint: &str) -> Vec<u8> {
    secrets
        .get_opt(&format!("{fingerprint}-setupcertificate"))
        .await
        .ok()
        .flatten()
        .and_then(|s| s.data)
        .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()))
        .unwrap_or_default()
}
