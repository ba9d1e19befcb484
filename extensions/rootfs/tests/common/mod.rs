//! Helpers of the rootfs end-to-end tests: app StatefulSets, a StatefulSet-controller
//! stand-in that completes rollouts, polling.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eirinix_rootfs::{ROOTFS_LABEL, RootfsOptions};
use eirinix_testenv::ControlPlane;
#[allow(unused_imports)] // Not every test binary uses every helper.
pub use eirinix_testenv::support::{eventually, init_tracing};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The rootfs image repository used by the tests.
pub const REPO: &str = "registry.test/cloudfoundry/cflinuxfs4";

/// The shared control plane; fails loudly when the binaries are missing.
pub async fn plane() -> &'static ControlPlane {
    init_tracing();
    ControlPlane::shared()
        .await
        .expect("control plane (see eirinix-testenv README: scripts/provision.sh)")
}

/// Options for tests: namespace-restricted, fast resync, label + image pattern, version 2.0.
pub fn options(ns: &str) -> RootfsOptions {
    RootfsOptions {
        version: Some("2.0".into()),
        image_pattern: Some(REPO.to_owned()),
        namespace: Some(ns.into()),
        max_in_flight: 2,
        resync_interval: Duration::from_millis(300),
        gate_interval: Duration::from_millis(200),
        once_deadline: Duration::from_secs(60),
        ..Default::default()
    }
}

/// An Eirini-shaped app StatefulSet on rootfs `version` (the rootfs image is the app image).
pub fn app_sts(name: &str, version: &str) -> StatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name,
            "labels": {"cloudfoundry.org/source_type": "APP", "cloudfoundry.org/app_guid": name, ROOTFS_LABEL: version},
            "annotations": {"cloudfoundry.org/process_guid": format!("{name}-guid")}},
        "spec": {
            "replicas": 2,
            "serviceName": name,
            "selector": {"matchLabels": {"cloudfoundry.org/guid": name}},
            "template": {
                "metadata": {"labels": {"cloudfoundry.org/guid": name, "cloudfoundry.org/source_type": "APP", ROOTFS_LABEL: version}},
                "spec": {
                    "initContainers": [{"name": "downloader", "image": "registry.test/eirini/downloader:7"}],
                    "containers": [
                        {"name": "opi", "image": format!("{REPO}:{version}"), "env": [{"name": "PORT", "value": "8080"}]},
                        {"name": "sidecar", "image": "registry.test/sidecar:1"}
                    ]
                }
            }
        }
    }))
    .expect("valid StatefulSet")
}

/// Create `sts` in `ns` and report its rollout complete.
pub async fn create(client: &kube::Client, ns: &str, sts: StatefulSet) -> StatefulSet {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &sts)
        .await
        .expect("StatefulSet created");
    complete(&api, &created).await;
    api.get(created.metadata.name.as_deref().unwrap())
        .await
        .unwrap()
}

/// What the StatefulSet controller reports once every pod runs the current template.
pub async fn complete(api: &Api<StatefulSet>, sts: &StatefulSet) {
    let generation = sts.metadata.generation.unwrap_or(1);
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let rev = format!("rev-{generation}");
    let status = eirinix_testenv::eirini::rolled_out_status(generation, replicas, &rev);
    api.patch_status(
        sts.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("status updated");
}

/// Stands in for the StatefulSet controller in `ns`: a StatefulSet whose generation is ahead of
/// its status is "rolling"; after `rollout` it is reported complete. Counts the most seen
/// rolling at once.
pub struct Simulator {
    /// Most StatefulSets seen rolling at the same time.
    pub max_in_flight: Arc<AtomicUsize>,
    /// Rollouts completed.
    pub completed: Arc<AtomicUsize>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Start simulating in `ns`.
    pub fn start(client: kube::Client, ns: &str, rollout: Duration) -> Self {
        let api: Api<StatefulSet> = Api::namespaced(client, ns);
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (max, done, cancel) = (max_in_flight.clone(), completed.clone(), cancel.clone());
            async move {
                let mut seen: HashMap<(String, i64), tokio::time::Instant> = HashMap::new();
                while !cancel.is_cancelled() {
                    let list = api.list(&ListParams::default()).await.expect("list");
                    let rolling: Vec<_> = list
                        .items
                        .iter()
                        .filter(|s| {
                            let observed = s.status.as_ref().and_then(|st| st.observed_generation);
                            s.metadata.generation.unwrap_or(0) > observed.unwrap_or(0)
                        })
                        .collect();
                    max.fetch_max(rolling.len(), Ordering::SeqCst);
                    for s in rolling {
                        let key = (
                            s.metadata.name.clone().unwrap(),
                            s.metadata.generation.unwrap_or(0),
                        );
                        let since = *seen.entry(key).or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= rollout {
                            complete(&api, s).await;
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
        });
        Self {
            max_in_flight,
            completed,
            cancel,
            task,
        }
    }

    /// Stop; panics if the simulator itself failed.
    pub async fn stop(self) -> usize {
        self.cancel.cancel();
        self.task.await.expect("simulator ran");
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// The template version, the rootfs image of container `opi`, and whether the rollout is done.
pub fn state_of(s: &StatefulSet) -> (Option<String>, String, bool) {
    let version = eirinix_rootfs::plan::template_version(s).map(str::to_owned);
    let image = s
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap();
    (version, image, eirinix_rootfs::plan::rollout_complete(s))
}

/// Wait until every named StatefulSet in `ns` is on `version` (label + image) and rolled out.
pub async fn converged(client: &kube::Client, ns: &str, names: &[&str], version: &str) {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let want_image = format!("{REPO}:{version}");
    eventually(Duration::from_secs(30), "StatefulSets converged", || {
        let api = api.clone();
        let want_image = want_image.clone();
        async move {
            for n in names {
                let s = api.get(n).await.ok()?;
                let (v, image, done) = state_of(&s);
                if v.as_deref() != Some(version) || image != want_image || !done {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
}
