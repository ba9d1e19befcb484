//! The persi service broker over HTTP, against a real kube-apiserver.

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use eirinix_persi::PersiOptions;
use eirinix_persi::broker::{
    BrokerConfig, BrokerError, INSTANCE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, serve_broker_on,
};
use eirinix_persi::names::volume_name;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

const USER: &str = "cc";
const PASSWORD: &str = "broker-s3cret";
pub(crate) const SERVICE: &str = "svc-persi";
pub(crate) const PLAN: &str = "plan-fast";
const OTHER_PLAN: &str = "plan-shared";

fn config(namespace: &str) -> BrokerConfig {
    BrokerConfig::from_yaml(&format!(
        r#"
namespace: {namespace}
username: {USER}
password: {PASSWORD}
catalog:
  services:
  - id: {SERVICE}
    name: eirini-persi
    description: Persistent volumes for Eirini apps
    tags: [persistent]
    plans:
    - id: {PLAN}
      name: fast
      description: SSD volumes
      storage_class: fast-ssd
      size: 1Gi
    - id: {OTHER_PLAN}
      name: shared
      description: shared volumes
      access_mode: ReadWriteMany
      size: 5Gi
"#
    ))
    .expect("valid broker config")
}

/// A broker serving on a random loopback port until stopped.
pub(crate) struct Broker {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), BrokerError>>,
}

impl Broker {
    async fn start(client: &kube::Client, namespace: &str) -> Self {
        Self::start_with(client, config(namespace)).await
    }

    /// A broker with its own configuration (e.g. plans on the real node's storage class).
    pub(crate) async fn start_with(client: &kube::Client, config: BrokerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_broker_on(
            listener,
            config,
            client.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self { addr, stop, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("broker task")
            .expect("broker stops cleanly");
    }

    /// An authenticated request with a current API version.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) = request(
            self.addr,
            method,
            path,
            Some((USER, PASSWORD)),
            Some("2.17"),
            body,
        )
        .await;
        (status, body)
    }
}

/// One HTTP/1.1 request on a fresh connection: status, headers, JSON body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    version: Option<&str>,
    body: Option<Value>,
) -> (u16, http::HeaderMap, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "persi-broker")
        .header("content-type", "application/json");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        builder = builder.header("authorization", format!("Basic {token}"));
    }
    if let Some(v) = version {
        builder = builder.header("x-broker-api-version", v);
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let response = sender
        .send_request(
            builder
                .body(Full::new(Bytes::from(bytes)))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {body:?}"));
    (status, headers, json)
}

pub(crate) fn provision_body(plan: &str, parameters: Value) -> Value {
    json!({
        "service_id": SERVICE, "plan_id": plan,
        "organization_guid": "org-guid-1", "space_guid": "space-guid-1",
        "context": {"platform": "cloudfoundry", "organization_guid": "org-guid-1", "space_guid": "space-guid-1"},
        "parameters": parameters,
    })
}

pub(crate) fn bind_body(app: &str, parameters: Value) -> Value {
    json!({
        "service_id": SERVICE, "plan_id": PLAN,
        "bind_resource": {"app_guid": app}, "parameters": parameters,
    })
}

fn query() -> String {
    format!("service_id={SERVICE}&plan_id={PLAN}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_bind_mount_unbind_deprovision() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let system = cp.namespace("persi-sys").await.expect("namespace");
    let ns = cp.namespace("persi-broker").await.expect("namespace");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let broker = Broker::start(&client, &ns).await;

    let (status, catalog) = broker.call("GET", "/v2/catalog", None).await;
    assert_eq!(status, 200);
    let service = &catalog["services"][0];
    assert_eq!(service["name"], "eirini-persi");
    assert_eq!(service["requires"], json!(["volume_mount"]));
    assert_eq!(service["plans"][0]["id"], PLAN);
    assert!(
        service["plans"][0].get("storage_class").is_none(),
        "internals stay private"
    );

    // Provision: a PVC labelled with instance, org and space, shaped by the plan and parameters.
    let instance = "7d3c1f0e-2b4a-4e5f-9a8b-1c2d3e4f5a6b";
    let path = format!("/v2/service_instances/{instance}");
    let (status, body) = broker
        .call(
            "PUT",
            &path,
            Some(provision_body(PLAN, json!({"size": "2Gi"}))),
        )
        .await;
    assert_eq!((status, body), (201, json!({})));
    let claim = format!("persi-{instance}");
    let pvc = pvcs.get(&claim).await.expect("the PVC exists");
    let labels = pvc.metadata.labels.clone().expect("labels");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(labels["persi.eirinix.org/instance"], instance);
    assert_eq!(labels["persi.eirinix.org/organization"], "org-guid-1");
    assert_eq!(labels["persi.eirinix.org/space"], "space-guid-1");
    assert_eq!(
        pvc.metadata.annotations.as_ref().expect("annotations")[INSTANCE_ANNOTATION],
        instance
    );
    let spec = json!(pvc.spec);
    assert_eq!(spec["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(spec["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(spec["storageClassName"], "fast-ssd");

    // Provisioning again: identical is 200, conflicting is 409.
    let (status, _) = broker
        .call(
            "PUT",
            &path,
            Some(provision_body(PLAN, json!({"size": "2Gi"}))),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = broker
        .call(
            "PUT",
            &path,
            Some(provision_body(PLAN, json!({"size": "3Gi"}))),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "Conflict");
    assert!(
        body["description"]
            .as_str()
            .expect("description")
            .contains("other attributes")
    );
    let (status, _) = broker
        .call("PUT", &path, Some(provision_body(OTHER_PLAN, json!({}))))
        .await;
    assert_eq!(status, 409);
    let (status, fetched) = broker.call("GET", &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        fetched,
        json!({"service_id": SERVICE, "plan_id": PLAN, "parameters": {"size": "2Gi"}})
    );

    // Bind: credentials and volume mounts, read-only from the bind parameters.
    let bpath = format!("{path}/service_bindings/b-1");
    let (status, binding) = broker
        .call(
            "PUT",
            &bpath,
            Some(bind_body(
                "app-1",
                json!({"mount": "/var/vcap/data/uploads", "mode": "r"}),
            )),
        )
        .await;
    assert_eq!(status, 201, "{binding}");
    assert_eq!(
        binding,
        json!({
            "credentials": {"volume_id": claim},
            "volume_mounts": [{
                "driver": "persi", "container_dir": "/var/vcap/data/uploads", "mode": "r",
                "device_type": "shared", "device": {"volume_id": claim, "mount_config": {}}
            }]
        })
    );
    let (status, again) = broker
        .call(
            "PUT",
            &bpath,
            Some(bind_body(
                "app-1",
                json!({"mount": "/var/vcap/data/uploads", "mode": "r"}),
            )),
        )
        .await;
    assert_eq!((status, &again), (200, &binding));
    let (status, body) = broker
        .call(
            "PUT",
            &bpath,
            Some(bind_body(
                "app-1",
                json!({"mount": "/var/vcap/data/uploads", "mode": "rw"}),
            )),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("Conflict")));
    // A second binding with the defaults: read-write at <mount_root>/<instance id>.
    let (status, defaults) = broker
        .call(
            "PUT",
            &format!("{path}/service_bindings/b-2"),
            Some(bind_body("app-2", json!({}))),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(defaults["volume_mounts"][0]["mode"], "rw");
    assert_eq!(
        defaults["volume_mounts"][0]["container_dir"],
        format!("/var/vcap/data/{instance}")
    );

    // State lives on the PVC: a restarted broker knows the binding.
    broker.stop().await;
    let broker = Broker::start(&client, &ns).await;
    let (status, fetched) = broker.call("GET", &bpath, None).await;
    assert_eq!((status, &fetched), (200, &binding));

    // The platform puts the binding into VCAP_SERVICES; the webhook mounts the PVC.
    let hook = Webhook::start_in(&client, PersiOptions::default(), &system, &ns).await;
    let mut cf_binding = binding.clone();
    cf_binding["name"] = json!("uploads");
    cf_binding["label"] = json!("eirini-persi");
    cf_binding["instance_name"] = json!("uploads");
    cf_binding["plan"] = json!("fast");
    let vcap = json!({ "eirini-persi": [cf_binding] }).to_string();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = pods
        .create(
            &PostParams::default(),
            &app_pod("app-1-0", vec![container("opi", Some(&vcap))]),
        )
        .await
        .expect("admitted");
    let vol = volume_name(&claim, 0);
    assert_eq!(
        volumes(&created),
        json!([{"name": vol, "persistentVolumeClaim": {"claimName": claim}}])
    );
    assert_eq!(
        mounts(&created, 0),
        json!([{"name": vol, "mountPath": "/var/vcap/data/uploads", "readOnly": true}])
    );
    assert_eq!(security(&created)["fsGroup"], 2000);
    hook.stop().await;

    // Unbind, twice.
    let (status, body) = broker
        .call("DELETE", &format!("{bpath}?{}", query()), None)
        .await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker
        .call("DELETE", &format!("{bpath}?{}", query()), None)
        .await;
    assert_eq!((status, body), (410, json!({})));
    let (status, _) = broker.call("GET", &bpath, None).await;
    assert_eq!(status, 404);
    let annotations = pvcs
        .get(&claim)
        .await
        .expect("pvc")
        .metadata
        .annotations
        .expect("annotations");
    assert!(
        !annotations.keys().any(|k| k.ends_with("/b-1"))
            && annotations.keys().any(|k| k.ends_with("/b-2")),
        "{annotations:?}"
    );

    // Deprovision: the PVC is deleted; a second deprovision is 410.
    let (status, body) = broker
        .call("DELETE", &format!("{path}?{}", query()), None)
        .await;
    assert_eq!((status, body), (200, json!({})));
    match pvcs.get_opt(&claim).await.expect("get") {
        None => {}
        Some(pvc) => {
            // Only the apiserver's StorageObjectInUseProtection finalizer may hold it (the
            // controller that clears it does not run here); nothing of the broker's does.
            assert!(
                pvc.metadata.deletion_timestamp.is_some(),
                "deletion requested"
            );
            assert_eq!(
                pvc.metadata.finalizers,
                Some(vec!["kubernetes.io/pvc-protection".to_owned()])
            );
            // Do what the PVC-protection controller does once no pod uses the claim.
            pvcs.patch(
                &claim,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .expect("finalizer removed");
            assert!(
                pvcs.get_opt(&claim).await.expect("get").is_none(),
                "PVC gone"
            );
        }
    }
    let (status, body) = broker
        .call("DELETE", &format!("{path}?{}", query()), None)
        .await;
    assert_eq!((status, body), (410, json!({})));
    let (status, _) = broker.call("GET", &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = broker
        .call("GET", &format!("{path}/last_operation"), None)
        .await;
    assert_eq!(status, 410);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_versions_and_requests_get_osb_errors() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let ns = cp.namespace("persi-broker").await.expect("namespace");
    let broker = Broker::start(&client, &ns).await;
    let addr = broker.addr;

    // Basic auth: missing or wrong is 401 with a challenge, in OSB format.
    for auth in [None, Some((USER, "wrong")), Some(("someone", PASSWORD))] {
        let (status, headers, body) =
            request(addr, "GET", "/v2/catalog", auth, Some("2.17"), None).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body["error"], "Unauthorized");
        assert!(headers.contains_key("www-authenticate"));
    }
    // Bad auth does not reach provisioning either.
    let (status, _, _) = request(
        addr,
        "PUT",
        "/v2/service_instances/x",
        Some((USER, "wrong")),
        Some("2.17"),
        Some(provision_body(PLAN, json!({}))),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt("persi-x")
            .await
            .expect("get")
            .is_none()
    );

    // API version: missing, too old or another major is 412; 2.13+ is fine (CF sends 2.15).
    for (version, expected) in [
        (None, 412),
        (Some("2.12"), 412),
        (Some("3.0"), 412),
        (Some("garbage"), 412),
        (Some("2.15"), 200),
        (Some("2.17"), 200),
    ] {
        let (status, _, body) = request(
            addr,
            "GET",
            "/v2/catalog",
            Some((USER, PASSWORD)),
            version,
            None,
        )
        .await;
        assert_eq!(status, expected, "{version:?}: {body}");
        if expected == 412 {
            assert_eq!(body["error"], "PreconditionFailed");
            assert!(
                body["description"]
                    .as_str()
                    .expect("description")
                    .contains("X-Broker-API-Version")
            );
        }
    }

    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("GET", "/v2/nothing".into(), None, 404, "NotFound"),
        ("POST", "/v2/catalog".into(), None, 405, "MethodNotAllowed"),
        (
            "PUT",
            "/v2/service_instances/i1".into(),
            Some(json!("not an object")),
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/v2/service_instances/i1".into(),
            Some(json!({"service_id": SERVICE, "plan_id": "nope"})),
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/v2/service_instances/i1".into(),
            Some(provision_body(PLAN, json!({"size": "lots"}))),
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/v2/service_instances/i1".into(),
            Some(provision_body(PLAN, json!({"colour": "blue"}))),
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/v2/service_instances/i1".into(),
            Some(json!({"service_id": SERVICE})),
            422,
            "UpdateNotSupported",
        ),
        (
            "PUT",
            "/v2/service_instances/missing/service_bindings/b".into(),
            Some(bind_body("app", json!({}))),
            404,
            "NotFound",
        ),
        (
            "DELETE",
            format!("/v2/service_instances/i1?plan_id={PLAN}"),
            None,
            400,
            "BadRequest",
        ),
    ];
    for (method, path, body, expected, error) in cases {
        let (status, json) = broker.call(method, &path, body).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (expected, Some(error)),
            "{method} {path}: {json}"
        );
        assert!(json["description"].is_string(), "{method} {path}: {json}");
    }
    let (status, body) = broker
        .call(
            "DELETE",
            &format!("/v2/service_instances/missing?{}", query()),
            None,
        )
        .await;
    assert_eq!((status, body), (410, json!({})));

    // Bind needs an app (RequiresApp) and sane parameters.
    let (status, _) = broker
        .call(
            "PUT",
            "/v2/service_instances/i2",
            Some(provision_body(PLAN, json!({}))),
        )
        .await;
    assert_eq!(status, 201);
    let b = "/v2/service_instances/i2/service_bindings/b";
    let no_app = json!({"service_id": SERVICE, "plan_id": PLAN, "parameters": {}});
    let (status, body) = broker.call("PUT", b, Some(no_app)).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("RequiresApp")));
    for params in [
        json!({"mount": "relative/dir"}),
        json!({"mount": "/"}),
        json!({"mode": "rwx"}),
        json!({"mode": "r", "readonly": false}),
        json!({"uid": "1000"}),
    ] {
        let (status, body) = broker
            .call("PUT", b, Some(bind_body("app", params.clone())))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("BadRequest")),
            "{params}: {body}"
        );
    }
    let (status, body) = broker
        .call("PUT", b, Some(bind_body("app", json!({"readonly": true}))))
        .await;
    assert_eq!(
        (status, &body["volume_mounts"][0]["mode"]),
        (201, &json!("r"))
    );

    // A PVC that is not the broker's is never taken over nor deleted.
    pvc(&client, &ns, "persi-foreign").await;
    let (status, body) = broker
        .call(
            "PUT",
            "/v2/service_instances/foreign",
            Some(provision_body(PLAN, json!({}))),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("Conflict")));
    let (status, _) = broker
        .call(
            "DELETE",
            &format!("/v2/service_instances/foreign?{}", query()),
            None,
        )
        .await;
    assert_eq!(status, 410);
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get_opt("persi-foreign")
            .await
            .expect("get")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "the foreign PVC is untouched"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_provisions_and_binds_are_safe() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let ns = cp.namespace("persi-broker").await.expect("namespace");
    let broker = std::sync::Arc::new(Broker::start(&client, &ns).await);

    let path = "/v2/service_instances/busy";
    let provisions: Vec<_> = (0..6)
        .map(|_| {
            let b = broker.clone();
            tokio::spawn(async move {
                b.call("PUT", path, Some(provision_body(PLAN, json!({}))))
                    .await
                    .0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for p in provisions {
        statuses.push(p.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 201],
        "exactly one creation"
    );

    // Concurrent binds of different ids: none is lost (resourceVersion-guarded updates).
    let binds: Vec<_> = (0..8)
        .map(|i| {
            let b = broker.clone();
            tokio::spawn(async move {
                let p = format!("{path}/service_bindings/bind-{i}");
                b.call(
                    "PUT",
                    &p,
                    Some(bind_body(
                        &format!("app-{i}"),
                        json!({"mount": format!("/m/{i}")}),
                    )),
                )
                .await
                .0
            })
        })
        .collect();
    for b in binds {
        assert_eq!(b.await.expect("task"), 201);
    }
    let annotations = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get("persi-busy")
        .await
        .expect("pvc")
        .metadata
        .annotations
        .expect("annotations");
    let stored = annotations
        .keys()
        .filter(|k| k.starts_with("binding.persi.eirinix.org/"))
        .count();
    assert_eq!(stored, 8, "{annotations:?}");
    for i in 0..8 {
        let (status, body) = broker
            .call("GET", &format!("{path}/service_bindings/bind-{i}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["volume_mounts"][0]["container_dir"], format!("/m/{i}"));
    }
    match std::sync::Arc::try_unwrap(broker) {
        Ok(b) => b.stop().await,
        Err(_) => panic!("broker still shared"),
    }
}
