//! persi as Cloud Foundry users meet it, on running pods of the real node: `cf create-service`
//! and `cf bind-service` through the broker, the app finds its data on disk, keeps it across a
//! restart, read-only bindings are read-only, and a broken `VCAP_SERVICES` is refused (Fail) or
//! let through unmutated (Ignore) with a reason the user can find.

use std::time::Duration;

use eirinix_core::FailurePolicy;
use eirinix_persi::broker::BrokerConfig;
use eirinix_testenv::Cluster;
use eirinix_testenv::eirini::EiriniApp;
use eirinix_testenv::support::{eventually, wait_pod_ready};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

use super::broker::{Broker, PLAN, bind_body, provision_body};
use super::*;

const READY: Duration = Duration::from_secs(120);

async fn cluster() -> &'static Cluster {
    init_tracing();
    Cluster::shared().await.expect(
        "the real node (see eirinix-testenv README: needs root and scripts/install-deps.sh)",
    )
}

/// A broker whose plan makes claims of the cluster's default storage class.
fn node_broker_config(namespace: &str) -> BrokerConfig {
    BrokerConfig::from_yaml(&format!(
        r#"
namespace: {namespace}
username: cc
password: broker-s3cret
catalog:
  services:
  - id: svc-persi
    name: eirini-persi
    description: Persistent volumes for Eirini apps
    plans:
    - id: {PLAN}
      name: default
      description: local volumes
      storage_class: {class}
      size: 1Gi
"#,
        class = eirinix_testenv::STORAGE_CLASS
    ))
    .expect("valid broker config")
}

/// An app whose `VCAP_SERVICES` holds `bindings` under `eirini-persi`.
fn app(name: &str, bindings: &[Value]) -> EiriniApp {
    let vcap = json!({ "eirini-persi": bindings });
    EiriniApp::new(name).env("VCAP_SERVICES", &vcap.to_string())
}

/// What Cloud Foundry puts into VCAP_SERVICES for a binding the broker returned.
fn as_vcap_binding(name: &str, broker_binding: &Value) -> Value {
    json!({
        "name": name, "label": "eirini-persi", "plan": "default", "tags": [],
        "credentials": broker_binding["credentials"],
        "volume_mounts": broker_binding["volume_mounts"],
    })
}

async fn create(client: &kube::Client, ns: &str, app: &EiriniApp) {
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &app.statefulset())
        .await
        .expect("StatefulSet created");
}

async fn sh(cluster: &Cluster, ns: &str, pod: &str, cmd: &str) -> eirinix_testenv::ExecOutput {
    cluster
        .exec(ns, pod, "opi", ["sh", "-c", cmd])
        .await
        .expect("exec reaches the container")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_volume_is_written_kept_across_restarts_and_read_only_when_asked() {
    let cluster = cluster().await;
    let client = cluster.client().await.expect("client");
    let system = cluster
        .namespace("persi-node-sys")
        .await
        .expect("namespace");
    let apps = cluster
        .namespace("persi-node-apps")
        .await
        .expect("namespace");
    let webhook = Webhook::start_in(&client, PersiOptions::default(), &system, &apps).await;
    let broker = Broker::start_with(&client, node_broker_config(&apps)).await;

    // `cf create-service eirini-persi default data`: the broker makes a claim; it binds.
    let instance = "5b0c9a6e-1f2d-4c3b-8a7e-6d5c4b3a2f1e";
    let path = format!("/v2/service_instances/{instance}");
    let (status, _) = broker
        .call("PUT", &path, Some(provision_body(PLAN, json!({}))))
        .await;
    assert_eq!(status, 201);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &apps);
    let claim = format!("persi-{instance}");
    eventually(READY, "the broker's claim Bound", || async {
        let c = claims.get(&claim).await.ok()?;
        (c.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;

    // `cf bind-service dora data` (read-write) and `cf bind-service reader data -c '{"mode":"r"}'`.
    let (status, rw) = broker
        .call(
            "PUT",
            &format!("{path}/service_bindings/b-rw"),
            Some(bind_body(
                "dora-guid",
                json!({"mount": "/var/vcap/data/shared"}),
            )),
        )
        .await;
    assert_eq!(status, 201, "{rw}");
    let (status, ro) = broker
        .call(
            "PUT",
            &format!("{path}/service_bindings/b-ro"),
            Some(bind_body(
                "reader-guid",
                json!({"mount": "/var/vcap/data/shared", "mode": "r"}),
            )),
        )
        .await;
    assert_eq!(status, 201, "{ro}");
    assert_eq!(ro["volume_mounts"][0]["mode"], "r");

    let dora = app("dora", &[as_vcap_binding("data", &rw)]);
    let reader = app("reader", &[as_vcap_binding("data", &ro)]);
    create(&client, &apps, &dora).await;
    create(&client, &apps, &reader).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let first = wait_pod_ready(&pods, &dora.pod_name(0), READY).await;
    wait_pod_ready(&pods, &reader.pod_name(0), READY).await;

    // The app user (vcap, not root) writes its data; the group is the one persi set as fsGroup.
    let out = sh(
        cluster,
        &apps,
        &dora.pod_name(0),
        "id -u; echo 'order #1' > /var/vcap/data/shared/orders.txt && stat -c '%g' /var/vcap/data/shared",
    )
    .await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "2000\n2000\n", "{out:?}");

    // The read-only binding: reading works, writing fails with a read-only error.
    let out = sh(
        cluster,
        &apps,
        &reader.pod_name(0),
        "cat /var/vcap/data/shared/orders.txt",
    )
    .await;
    assert_eq!(out.stdout, "order #1\n", "{out:?}");
    let out = sh(
        cluster,
        &apps,
        &reader.pod_name(0),
        "echo x > /var/vcap/data/shared/new",
    )
    .await;
    assert!(
        !out.success(),
        "a read-only binding must not be writable: {out:?}"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");

    // The StatefulSet controller re-creates a deleted instance: the data is still there.
    pods.delete(&dora.pod_name(0), &DeleteParams::default())
        .await
        .expect("pod deleted");
    let old_uid = first.metadata.uid.clone();
    eventually(READY, "dora-0 re-created and Ready", || async {
        let p = pods.get(&dora.pod_name(0)).await.ok()?;
        (p.metadata.uid != old_uid && eirinix_testenv::support::pod_is_ready(&p)).then_some(())
    })
    .await;
    let out = sh(
        cluster,
        &apps,
        &dora.pod_name(0),
        "cat /var/vcap/data/shared/orders.txt",
    )
    .await;
    assert_eq!(out.stdout, "order #1\n", "{out:?}");
    assert!(
        webhook.reviews("patched") >= 3,
        "two creations and a re-creation were mutated"
    );

    broker.stop().await;
    webhook.stop().await;
}

/// The StatefulSet's events (reason, message).
async fn events_of(client: &kube::Client, ns: &str, name: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_vcap_services_is_refused_under_fail_and_admitted_unmutated_under_ignore() {
    let cluster = cluster().await;
    let client = cluster.client().await.expect("client");
    let system = cluster.namespace("persi-bad-sys").await.expect("namespace");
    let strict_ns = cluster
        .namespace("persi-bad-fail")
        .await
        .expect("namespace");
    let lenient_ns = cluster
        .namespace("persi-bad-ignore")
        .await
        .expect("namespace");
    let strict = Webhook::start_in(&client, PersiOptions::default(), &system, &strict_ns).await;
    let lenient = Webhook::start_in(
        &client,
        PersiOptions {
            failure_policy: Some(FailurePolicy::Ignore),
            ..Default::default()
        },
        &system,
        &lenient_ns,
    )
    .await;
    let broken = EiriniApp::new("broken").env("VCAP_SERVICES", "{\"eirini-persi\": [");

    // Fail: the StatefulSet controller's pod creation is denied, and its events say why.
    create(&client, &strict_ns, &broken).await;
    let (_, message) = eventually(READY, "a FailedCreate event naming the problem", || async {
        events_of(&client, &strict_ns, "broken")
            .await
            .into_iter()
            .find(|(reason, _)| reason == "FailedCreate")
    })
    .await;
    assert!(
        message.contains(&strict.webhook_name())
            && message.contains("VCAP_SERVICES is not valid JSON"),
        "{message}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &strict_ns);
    assert!(
        pods.get_opt(&broken.pod_name(0))
            .await
            .expect("get")
            .is_none(),
        "no pod is created under Fail"
    );

    // Ignore: the pod is admitted without persi's changes and runs; the review counts as an error.
    create(&client, &lenient_ns, &broken).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &lenient_ns);
    let pod = wait_pod_ready(&pods, &broken.pod_name(0), READY).await;
    let spec = pod.spec.expect("spec");
    assert!(
        spec.volumes.unwrap_or_default().is_empty(),
        "no volume added"
    );
    assert!(
        !pod.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("eirinix.org/persi"),
        "not marked as injected"
    );
    assert!(
        lenient.reviews("errored") >= 1,
        "the failed review is counted"
    );

    // The reason under Ignore reaches whoever creates the pod as an API warning.
    let bare = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "broken-bare", "labels": broken.labels()},
        "spec": {"containers": [{"name": "opi", "image": eirinix_testenv::APP_IMAGE,
                 "env": [{"name": "VCAP_SERVICES", "value": "{\"eirini-persi\": ["}]}]}
    }))
    .expect("json");
    let request = http::Request::post(format!("/api/v1/namespaces/{lenient_ns}/pods?dryRun=All"))
        .header("content-type", "application/json")
        .body(bare)
        .expect("request");
    let response = client
        .send(request.map(Into::into))
        .await
        .expect("dry-run create");
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("VCAP_SERVICES is not valid JSON")),
        "{warnings:?}"
    );
    strict.stop().await;
    lenient.stop().await;
}
