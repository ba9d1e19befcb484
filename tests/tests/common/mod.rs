//! Shared helpers of the end-to-end tests: app pods, managers on random ports, polling.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, Manager, ManagerBuilder, Mutation, PodPatch,
    Request, async_trait, patch,
};
use k8s_openapi::api::core::v1::{EnvVar, Namespace, Pod};
use kube::api::{Api, ObjectMeta, PostParams};

/// Log to the test output (RUST_LOG controls it) once per binary.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// The extension used to test the framework: STICKY_MESSAGE in every container, once.
pub struct Sticky;

#[async_trait]
impl Extension for Sticky {
    fn name(&self) -> &str {
        "sticky"
    }

    async fn mutate(
        &self,
        _: &Context,
        _: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        if patch::is_marked(pod, self.name()) {
            return Ok(Mutation::unchanged());
        }
        let env = EnvVar {
            name: "STICKY_MESSAGE".into(),
            value: Some("hello".into()),
            ..Default::default()
        };
        let mut p = PodPatch::new(pod);
        for i in 0..pod.spec.as_ref().map_or(0, |s| s.containers.len()) {
            p.add_env(ContainerRef::App(i), &env)?;
        }
        p.mark(self.name());
        Ok(Mutation::patch(p.build()))
    }
}

/// An Eirini-shaped app pod (StatefulSet-style name and the cloudfoundry.org labels).
pub fn app_pod(name: &str) -> Pod {
    let labels = BTreeMap::from([
        ("cloudfoundry.org/source_type".to_owned(), "APP".to_owned()),
        (
            "cloudfoundry.org/guid".to_owned(),
            "4e7c8f2a-app".to_owned(),
        ),
        (
            "cloudfoundry.org/app_guid".to_owned(),
            "4e7c8f2a-app".to_owned(),
        ),
        ("cloudfoundry.org/version".to_owned(), "v1".to_owned()),
        ("cloudfoundry.org/process_type".to_owned(), "web".to_owned()),
    ]);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "opi", "image": "eirini/app:1", "env": [{"name": "PORT", "value": "8080"}]}]}
    }))
    .expect("valid pod")
}

/// A pod without the app label.
pub fn plain_pod(name: &str) -> Pod {
    let mut pod = app_pod(name);
    pod.metadata.labels = None;
    pod
}

/// The STICKY_MESSAGE value of the first container, if injected.
pub fn sticky(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "STICKY_MESSAGE")
        .and_then(|e| e.value.clone())
}

/// Create namespace `name` with `labels`.
pub async fn labelled_namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
}

/// A fresh webhook ("system") namespace and a fresh app namespace.
pub async fn namespaces(cp: &eirinix_testenv::ControlPlane, prefix: &str) -> (String, String) {
    let system = cp
        .namespace(&format!("{prefix}-sys"))
        .await
        .expect("namespace");
    let apps = cp
        .namespace(&format!("{prefix}-apps"))
        .await
        .expect("namespace");
    (system, apps)
}

/// A manager in URL mode on a random loopback port, its Secret in `system`, mutating pods in `apps`.
pub fn manager(fingerprint: &str, system: &str, apps: &str) -> ManagerBuilder {
    Manager::builder()
        .fingerprint(fingerprint)
        .url_mode("127.0.0.1")
        .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(0)
        .webhook_namespace(system)
        .namespace(apps)
        .repair_interval(Duration::from_millis(500))
        .cert_check_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(2))
}

/// Poll `f` every 100 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
