//! End-to-end tests of persi against a real kube-apiserver (eirinix-testenv): the webhook
//! registered in URL mode, the broker over HTTP. They fail, not skip, without the binaries.

mod broker;
mod node;
mod webhook;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use eirinix_core::{Manager, RunningManager};
use eirinix_persi::{Persi, PersiOptions};
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Log to the test output (RUST_LOG controls it) once per binary.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// The shared control plane; panics (test fails) when it cannot start.
async fn plane() -> &'static ControlPlane {
    init_tracing();
    ControlPlane::shared()
        .await
        .expect("control plane (provision with scripts/provision.sh; see eirinix-testenv README)")
}

/// Persi running in URL mode on a random port: its Secret in a namespace of its own,
/// mutating only pods of a fresh app namespace, registered under a unique fingerprint.
struct Webhook {
    running: RunningManager,
    fingerprint: String,
    apps: String,
}

impl Webhook {
    async fn start(client: &kube::Client, options: PersiOptions) -> Self {
        let cp = plane().await;
        let system = cp.namespace("persi-sys").await.expect("namespace");
        let apps = cp.namespace("persi-apps").await.expect("namespace");
        Self::start_in(client, options, &system, &apps).await
    }

    async fn start_in(
        client: &kube::Client,
        options: PersiOptions,
        system: &str,
        apps: &str,
    ) -> Self {
        let fingerprint = unique_name("persi-e2e");
        let running = Manager::builder()
            .fingerprint(&fingerprint)
            .url_mode("127.0.0.1")
            .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(0)
            .webhook_namespace(system)
            .namespace(apps)
            .repair_interval(Duration::from_millis(500))
            .shutdown_timeout(Duration::from_secs(2))
            .view_extension(Persi::new(options))
            .build()
            .expect("valid manager")
            .start(client.clone())
            .await
            .expect("manager starts");
        running
            .wait_ready(Duration::from_secs(20))
            .await
            .expect("webhook ready");
        Self {
            running,
            fingerprint,
            apps: apps.to_owned(),
        }
    }

    /// How many reviews ended with `outcome` (patched, skipped, denied, errored...).
    fn reviews(&self, outcome: &str) -> u64 {
        let needle = format!("eirinix_reviews_total{{extension=\"persi\",outcome=\"{outcome}\"}} ");
        self.running
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric for outcome {outcome}"))
    }

    fn webhook_name(&self) -> String {
        format!("persi.{}.org", self.fingerprint)
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// A VCAP_SERVICES binding as Cloud Foundry renders it: `(name, claim, container_dir, mode)`.
fn binding(name: &str, claim: &str, dir: &str, mode: Option<&str>) -> Value {
    let mut mount = json!({
        "container_dir": dir, "device_type": "shared",
        "device": {"volume_id": claim, "mount_config": {}}
    });
    if let Some(m) = mode {
        mount["mode"] = json!(m);
    }
    json!({
        "name": name, "label": "eirini-persi", "instance_name": name, "binding_name": null,
        "plan": "default", "tags": ["persistent"],
        "credentials": {"volume_id": claim}, "volume_mounts": [mount]
    })
}

/// `VCAP_SERVICES` with these volume bindings under `eirini-persi` plus an unrelated service.
fn vcap(bindings: Vec<Value>) -> String {
    json!({
        "eirini-persi": bindings,
        "elephantsql": [{"name": "db", "label": "elephantsql", "credentials": {"uri": "postgres://u:p@db/x"}}]
    })
    .to_string()
}

/// An Eirini app container; `vcap` becomes its `VCAP_SERVICES`.
fn container(name: &str, vcap: Option<&str>) -> Value {
    let mut env = vec![json!({"name": "PORT", "value": "8080"})];
    if let Some(v) = vcap {
        env.push(json!({"name": "VCAP_SERVICES", "value": v}));
    }
    json!({"name": name, "image": "eirini/app:1", "env": env})
}

/// An Eirini-shaped app pod with these containers.
fn app_pod(name: &str, containers: Vec<Value>) -> Pod {
    let labels = BTreeMap::from([
        ("cloudfoundry.org/source_type", "APP"),
        ("cloudfoundry.org/guid", "8f3a9c52-app"),
        ("cloudfoundry.org/app_guid", "8f3a9c52-app"),
        ("cloudfoundry.org/version", "v1"),
        ("cloudfoundry.org/process_type", "web"),
    ]);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": containers}
    }))
    .expect("valid pod")
}

/// Create a 1Gi ReadWriteOnce PVC named `name` in `ns`.
async fn pvc(client: &kube::Client, ns: &str, name: &str) {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("valid pvc");
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .expect("pvc created");
}

fn volumes(p: &Pod) -> Value {
    json!(p.spec.as_ref().expect("spec").volumes)
}

fn mounts(p: &Pod, i: usize) -> Value {
    json!(p.spec.as_ref().expect("spec").containers[i].volume_mounts)
}

fn security(p: &Pod) -> Value {
    json!(p.spec.as_ref().expect("spec").security_context)
}
