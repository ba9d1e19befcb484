//! Watchers and reconcilers against a real kube-apiserver, including apiserver and etcd restarts.
//! This binary owns its control plane (it kills and restarts it).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use eirinix_core::reconciler::Reconciler;
use eirinix_core::{Context, ExtensionError, Manager, PodEvent, PodWatcher, async_trait};
use eirinix_testenv::ControlPlane;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use tokio::sync::mpsc;

struct Recorder(mpsc::UnboundedSender<(String, String)>);

#[async_trait]
impl PodWatcher for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn on_event(&self, _: &Context, event: PodEvent) {
        let kind = match &event {
            PodEvent::Added(_) => "added",
            PodEvent::Modified(_) => "modified",
            PodEvent::Deleted(_) => "deleted",
        };
        let name = event.pod().metadata.name.clone().unwrap_or_default();
        let _ = self.0.send((kind.to_owned(), name));
    }
}

async fn expect(rx: &mut mpsc::UnboundedReceiver<(String, String)>, kind: &str, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((k, n))) if k == kind && n == name => return,
            Ok(Some(_)) => continue,
            _ => panic!("no {kind} event for {name} within 30 s"),
        }
    }
}

struct LabelConfigMaps {
    namespace: String,
}

#[async_trait]
impl Reconciler for LabelConfigMaps {
    type Object = ConfigMap;

    fn name(&self) -> &str {
        "label-configmaps"
    }

    fn api(&self, ctx: &Context) -> Result<Api<ConfigMap>, ExtensionError> {
        Ok(Api::namespaced(ctx.client()?.clone(), &self.namespace))
    }

    async fn reconcile(&self, cm: Arc<ConfigMap>, ctx: &Context) -> Result<Action, ExtensionError> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({"metadata": {"labels": {"reconciled": "yes"}}});
        Api::<ConfigMap>::namespaced(ctx.client()?.clone(), &self.namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(Action::await_change())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_survive_apiserver_and_etcd_restarts() {
    init_tracing();
    let cp = ControlPlane::start()
        .await
        .expect("control plane (see eirinix-testenv README)");
    let client = cp.client().await.unwrap();
    let (sys, ns) = namespaces(&cp, "watch").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let running = Manager::builder()
        .webhook_namespace(&sys)
        .namespace(&ns)
        .register_webhook(false)
        .port(0)
        .bind_address("127.0.0.1".parse().unwrap())
        .watcher(Recorder(tx))
        .reconciler(LabelConfigMaps {
            namespace: ns.clone(),
        })
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &app_pod("one"))
        .await
        .unwrap();
    expect(&mut rx, "added", "one").await;
    let label = serde_json::json!({"metadata": {"labels": {"touched": "1"}}});
    pods.patch("one", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    expect(&mut rx, "modified", "one").await;
    pods.create(&PostParams::default(), &plain_pod("not-an-app"))
        .await
        .unwrap();

    // The reconciler hook runs on a real Controller.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("cm".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "reconciler to label the ConfigMap",
        || async {
            cms.get("cm")
                .await
                .ok()?
                .metadata
                .labels?
                .get("reconciled")
                .cloned()
        },
    )
    .await;

    // Kill kube-apiserver mid-watch: after it is back, changes made while the watch is
    // re-establishing (and changes after) all arrive.
    cp.restart_apiserver().await.unwrap();
    let client = cp.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &app_pod("two"))
        .await
        .unwrap();
    pods.delete("one", &DeleteParams::default()).await.unwrap();
    expect(&mut rx, "added", "two").await;
    expect(&mut rx, "deleted", "one").await;

    // Same for etcd.
    cp.restart_etcd().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.client().await.unwrap(), &ns);
    eventually(
        Duration::from_secs(30),
        "apiserver to serve again after etcd restart",
        || async {
            pods.create(&PostParams::default(), &app_pod("three"))
                .await
                .ok()
        },
    )
    .await;
    expect(&mut rx, "added", "three").await;
    pods.delete("two", &DeleteParams::default()).await.unwrap();
    expect(&mut rx, "deleted", "two").await;

    // The plain pod never showed up: the watcher only sees app pods.
    while let Ok((kind, name)) = rx.try_recv() {
        assert_ne!(name, "not-an-app", "{kind} event for a non-app pod");
    }
    running.shutdown().await;
}
