//! Offline tests of the persi webhook: patches reviewed with eirinix-core's offline review and
//! answered by its ExtensionHandler (failure policies). No cluster needed.

use std::sync::Arc;
use std::time::Duration;

use eirinix_core::admission::{ExtensionHandler, decode};
use eirinix_core::metrics::Metrics;
use eirinix_core::review::{review, review_with};
use eirinix_core::{Context, Extension, FailurePolicy, Settings};
use eirinix_persi::names::volume_name;
use eirinix_persi::{Persi, PersiOptions};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn vcap(bindings: &[(&str, &str, &str, Option<&str>)]) -> String {
    // (binding name, claim, container_dir, mode)
    let list: Vec<Value> = bindings
        .iter()
        .map(|(name, claim, dir, mode)| {
            let mut mount = json!({
                "container_dir": dir, "device_type": "shared",
                "device": {"volume_id": claim, "mount_config": {}}
            });
            if let Some(m) = mode {
                mount["mode"] = json!(m);
            }
            json!({"name": name, "label": "eirini-persi", "credentials": {"volume_id": claim}, "volume_mounts": [mount]})
        })
        .collect();
    json!({"eirini-persi": list, "user-provided": [{"name": "db", "credentials": {"uri": "x"}}]})
        .to_string()
}

fn container(name: &str, vcap: Option<&str>) -> Value {
    let mut env = vec![json!({"name": "PORT", "value": "8080"})];
    if let Some(v) = vcap {
        env.push(json!({"name": "VCAP_SERVICES", "value": v}));
    }
    json!({"name": name, "image": "eirini/app", "env": env})
}

fn pod(containers: Vec<Value>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-0", "namespace": "apps", "labels": {"cloudfoundry.org/source_type": "APP"}},
        "spec": {"containers": containers}
    }))
    .unwrap()
}

fn volumes(p: &Pod) -> Value {
    json!(p.spec.as_ref().unwrap().volumes)
}

fn mounts(p: &Pod, i: usize) -> Value {
    json!(p.spec.as_ref().unwrap().containers[i].volume_mounts)
}

fn security(p: &Pod) -> Value {
    json!(p.spec.as_ref().unwrap().security_context)
}

#[tokio::test]
async fn one_binding_gets_a_volume_a_mount_and_the_vcap_group() {
    let v = vcap(&[("data", "pvc-data", "/var/vcap/data/d", None)]);
    let p = pod(vec![container("opi", Some(&v))]);
    let out = review(Persi::default(), &p).await.unwrap();
    let vol = volume_name("pvc-data", 0);
    assert_eq!(
        volumes(&out.pod),
        json!([{"name": vol, "persistentVolumeClaim": {"claimName": "pvc-data"}}])
    );
    assert_eq!(
        mounts(&out.pod, 0),
        json!([{"name": vol, "mountPath": "/var/vcap/data/d"}])
    );
    assert_eq!(
        security(&out.pod),
        json!({"fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"})
    );
    assert_eq!(
        out.pod.metadata.annotations.as_ref().unwrap()["eirinix.org/persi"],
        "injected"
    );
    // Targeted operations only, no diff of the whole pod.
    let ops = out.patch_json();
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/volumes",
            "/spec/containers/0/volumeMounts",
            "/spec/securityContext",
            "/metadata/annotations"
        ]
    );
}

#[tokio::test]
async fn two_containers_share_one_volume_per_claim_and_read_only_is_honoured() {
    let opi = vcap(&[
        ("data", "pvc-data", "/data", Some("rw")),
        ("config", "pvc-config", "/config", Some("r")),
    ]);
    let side = vcap(&[("data", "pvc-data", "/shared/data/", Some("r"))]);
    let p = pod(vec![
        container("opi", Some(&opi)),
        container("sidecar", Some(&side)),
        container("no-services", None),
    ]);
    let out = review(Persi::default(), &p).await.unwrap();
    let (data, config) = (volume_name("pvc-data", 0), volume_name("pvc-config", 0));
    // BTreeMap order of VCAP_SERVICES within a label keeps the binding order.
    assert_eq!(
        volumes(&out.pod),
        json!([
            {"name": data, "persistentVolumeClaim": {"claimName": "pvc-data"}},
            {"name": config, "persistentVolumeClaim": {"claimName": "pvc-config"}},
        ])
    );
    assert_eq!(
        mounts(&out.pod, 0),
        json!([
            {"name": data, "mountPath": "/data"},
            {"name": config, "mountPath": "/config", "readOnly": true},
        ])
    );
    assert_eq!(
        mounts(&out.pod, 1),
        json!([{"name": data, "mountPath": "/shared/data", "readOnly": true}])
    );
    assert_eq!(mounts(&out.pod, 2), Value::Null);
}

#[tokio::test]
async fn existing_groups_are_kept() {
    let v = vcap(&[("data", "pvc", "/d", None)]);
    let mut p = pod(vec![container("opi", Some(&v))]);
    let spec = p.spec.as_mut().unwrap();
    spec.security_context =
        Some(serde_json::from_value(json!({"runAsUser": 2000, "fsGroup": 3000})).unwrap());
    let out = review(Persi::default(), &p).await.unwrap();
    assert_eq!(
        security(&out.pod),
        json!({"runAsUser": 2000, "fsGroup": 3000}),
        "an existing fsGroup is kept, policy untouched"
    );

    let spec = p.spec.as_mut().unwrap();
    spec.security_context =
        Some(serde_json::from_value(json!({"runAsUser": 1000, "runAsGroup": 1500})).unwrap());
    let out = review(Persi::default(), &p).await.unwrap();
    assert_eq!(
        security(&out.pod),
        json!({"runAsUser": 1000, "runAsGroup": 1500, "fsGroup": 1500, "fsGroupChangePolicy": "OnRootMismatch"}),
        "the pod's runAsGroup becomes the fsGroup"
    );

    let spec = p.spec.as_mut().unwrap();
    spec.security_context = None;
    spec.containers[0].security_context =
        Some(serde_json::from_value(json!({"runAsGroup": 4000})).unwrap());
    let out = review(Persi::default(), &p).await.unwrap();
    assert_eq!(
        security(&out.pod),
        json!({"fsGroup": 4000, "fsGroupChangePolicy": "OnRootMismatch"}),
        "the mounting container's runAsGroup becomes the fsGroup"
    );

    let opts = PersiOptions {
        fs_group: None,
        ..Default::default()
    };
    let out = review(Persi::new(opts), &p).await.unwrap();
    assert_eq!(security(&out.pod), Value::Null, "fs_group None: untouched");

    let opts = PersiOptions {
        fs_group: Some(2000),
        fs_group_change_policy: None,
        ..Default::default()
    };
    let p = pod(vec![container("opi", Some(&v))]);
    let out = review(Persi::new(opts), &p).await.unwrap();
    assert_eq!(security(&out.pod), json!({"fsGroup": 2000}));
}

#[tokio::test]
async fn second_review_is_a_no_op_with_or_without_the_marker() {
    let v = vcap(&[
        ("data", "pvc-data", "/data", None),
        ("ro", "pvc-ro", "/ro", Some("r")),
    ]);
    let p = pod(vec![container("opi", Some(&v)), container("two", Some(&v))]);
    let first = review(Persi::default(), &p).await.unwrap();
    assert!(first.mutation.as_patch().is_some());
    let second = review(Persi::default(), &first.pod).await.unwrap();
    assert_eq!(second.mutation.as_patch(), None, "marked: no patch");

    // Marker removed (e.g. by another tool): volumes and mounts are found, still no patch.
    let mut unmarked = first.pod.clone();
    unmarked.metadata.annotations = None;
    let third = review(Persi::default(), &unmarked).await.unwrap();
    assert_eq!(third.mutation.as_patch(), None);

    // Only one mount missing: exactly that one is added, the volume is reused.
    let mut partial = unmarked.clone();
    partial.spec.as_mut().unwrap().containers[1]
        .volume_mounts
        .as_mut()
        .unwrap()
        .pop();
    let fourth = review(Persi::default(), &partial).await.unwrap();
    assert_eq!(fourth.pod.spec, first.pod.spec);
    let ops = fourth.patch_json();
    assert_eq!(ops.as_array().unwrap().len(), 2, "{ops}"); // the mount and the marker
}

#[tokio::test]
async fn volumes_of_the_claim_are_reused_and_names_never_collide() {
    let v = vcap(&[
        ("data", "pvc-data", "/data", None),
        ("other", "pvc-other", "/other", None),
    ]);
    let mut p = pod(vec![container("opi", Some(&v))]);
    // The pod already has the claim under its own name, and someone else's volume named like ours.
    p.spec.as_mut().unwrap().volumes = Some(
        serde_json::from_value(json!([
            {"name": "legacy", "persistentVolumeClaim": {"claimName": "pvc-data"}},
            {"name": volume_name("pvc-other", 0), "emptyDir": {}}
        ]))
        .unwrap(),
    );
    let out = review(Persi::default(), &p).await.unwrap();
    assert_eq!(
        volumes(&out.pod),
        json!([
            {"name": "legacy", "persistentVolumeClaim": {"claimName": "pvc-data"}},
            {"name": volume_name("pvc-other", 0), "emptyDir": {}},
            {"name": volume_name("pvc-other", 1), "persistentVolumeClaim": {"claimName": "pvc-other"}},
        ])
    );
    assert_eq!(
        mounts(&out.pod, 0),
        json!([
            {"name": "legacy", "mountPath": "/data"},
            {"name": volume_name("pvc-other", 1), "mountPath": "/other"},
        ])
    );
}

#[tokio::test]
async fn pods_without_volume_bindings_are_left_alone() {
    let p = pod(vec![container("opi", None)]);
    let out = review(Persi::default(), &p).await.unwrap();
    assert_eq!(out.mutation.as_patch(), None);
    let only_db = json!({"user-provided": [{"name": "db", "credentials": {}}]}).to_string();
    let p = pod(vec![container("opi", Some(&only_db))]);
    assert_eq!(
        review(Persi::default(), &p)
            .await
            .unwrap()
            .mutation
            .as_patch(),
        None
    );
    let v = vcap(&[("data", "pvc-data", "/data", None)]);
    let p = pod(vec![container("opi", Some(&v))]);
    let restricted = Persi::new(PersiOptions {
        service_labels: vec!["nfs".into()],
        ..Default::default()
    });
    assert_eq!(
        review(restricted, &p).await.unwrap().mutation.as_patch(),
        None
    );
}

async fn error_of(p: &Pod) -> String {
    match review(Persi::default(), p).await {
        Err(e) => e.to_string(),
        Ok(r) => panic!("expected an error, got {:?}", r.mutation),
    }
}

#[tokio::test]
async fn bad_input_errors_name_container_binding_and_problem() {
    let p = pod(vec![container("opi", Some("{\"eirini-persi\": ["))]);
    let e = error_of(&p).await;
    assert!(
        e.contains("container \"opi\": VCAP_SERVICES is not valid JSON"),
        "{e}"
    );

    let no_claim = json!({"svc": [{"name": "b1", "volume_mounts": [{"container_dir": "/d"}]}]});
    let e = error_of(&pod(vec![container("opi", Some(&no_claim.to_string()))])).await;
    assert!(
        e.contains(
            "container \"opi\", binding \"b1\" (service \"svc\"): volume_mounts[0] names no claim"
        ),
        "{e}"
    );

    // Problems in two containers are all reported, and nothing is patched.
    let rel = vcap(&[("b2", "c", "data", None)]);
    let dup = vcap(&[("b3", "c1", "/d", None), ("b4", "c2", "/d", None)]);
    let e = error_of(&pod(vec![
        container("web", Some(&rel)),
        container("worker", Some(&dup)),
    ]))
    .await;
    assert!(
        e.contains("container \"web\", binding \"b2\" (service \"eirini-persi\"): volume_mounts[0]: container_dir \"data\" is not an absolute path"),
        "{e}"
    );
    assert!(
        e.contains("container \"worker\", binding \"b4\" (service \"eirini-persi\"): volume_mounts[0]: container_dir \"/d\" is also the container_dir of binding \"b3\""),
        "{e}"
    );

    // A binding's container_dir already used by another volume of the container.
    let v = vcap(&[("b5", "c", "/cache", None)]);
    let mut p = pod(vec![container("opi", Some(&v))]);
    p.spec.as_mut().unwrap().volumes =
        Some(serde_json::from_value(json!([{"name": "tmp", "emptyDir": {}}])).unwrap());
    p.spec.as_mut().unwrap().containers[0].volume_mounts =
        Some(serde_json::from_value(json!([{"name": "tmp", "mountPath": "/cache/"}])).unwrap());
    let e = error_of(&p).await;
    assert!(
        e.contains("binding \"b5\" (service \"eirini-persi\"): container_dir \"/cache\" is already mounted from volume \"tmp\""),
        "{e}"
    );
}

/// Found by the persi_handler fuzzer: a mount at the binding's directory that names the volume
/// persi would create, with no such volume in the pod, was taken as "already mounted" and the
/// pod admitted without the claim. Such a mount is someone else's (and dangling): it is a
/// directory conflict, and a new volume never takes a name that any container mounts.
#[tokio::test]
async fn a_dangling_mount_with_persis_volume_name_is_a_conflict() {
    let v = vcap(&[("b6", "pvc-data", "/data", None)]);
    let taken = volume_name("pvc-data", 0);
    let mut p = pod(vec![container("opi", Some(&v))]);
    p.spec.as_mut().unwrap().containers[0].volume_mounts =
        Some(serde_json::from_value(json!([{"name": taken, "mountPath": "/data"}])).unwrap());
    let e = error_of(&p).await;
    assert!(
        e.contains(&format!("binding \"b6\" (service \"eirini-persi\"): container_dir \"/data\" is already mounted from volume \"{taken}\"")),
        "{e}"
    );

    // The dangling mount elsewhere (another container, an init container) leaves the
    // directory free, but the name is not reused for the claim's volume.
    let mut p = pod(vec![container("opi", Some(&v)), container("side", None)]);
    let spec = p.spec.as_mut().unwrap();
    spec.containers[1].volume_mounts =
        Some(serde_json::from_value(json!([{"name": taken, "mountPath": "/other"}])).unwrap());
    spec.init_containers = Some(vec![
        serde_json::from_value(json!({"name": "init", "image": "busybox",
            "volumeMounts": [{"name": volume_name("pvc-data", 1), "mountPath": "/x"}]}))
        .unwrap(),
    ]);
    let out = review(Persi::default(), &p).await.unwrap();
    let vol = volume_name("pvc-data", 2);
    assert_eq!(
        volumes(&out.pod),
        json!([{"name": vol, "persistentVolumeClaim": {"claimName": "pvc-data"}}])
    );
    assert_eq!(
        mounts(&out.pod, 0),
        json!([{"name": vol, "mountPath": "/data"}])
    );
}

#[tokio::test]
async fn references_need_the_api_and_can_be_switched_off() {
    let mut p = pod(vec![container("opi", None)]);
    p.spec.as_mut().unwrap().containers[0].env = Some(
        serde_json::from_value(json!([{"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef": {"name": "app-env", "key": "VCAP_SERVICES"}}}]))
            .unwrap(),
    );
    let e = error_of(&p).await;
    assert!(
        e.contains("container \"opi\": cannot read VCAP_SERVICES from Secret \"app-env\" key \"VCAP_SERVICES\""),
        "{e}"
    );
    let off = Persi::new(PersiOptions {
        resolve_references: false,
        ..Default::default()
    });
    let out = review(off, &p).await.unwrap();
    assert_eq!(out.mutation.as_patch(), None);
    assert!(out.mutation.warnings[0].contains("references are off"));
}

fn review_body(p: &Pod) -> Vec<u8> {
    review_body_for("CREATE", p)
}

fn review_body_for(operation: &str, p: &Pod) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0b5c1e38-2f1c-4a59-8f5e-1a2b3c4d5e6f",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps", "operation": operation,
            "userInfo": {"username": "statefulset-controller"},
            "object": p, "dryRun": false
        }
    }))
    .unwrap()
}

async fn answer(persi: Persi, policy: FailurePolicy, p: &Pod) -> Value {
    answer_body(persi, policy, &review_body(p)).await
}

/// persi's answer to `body` as the manager serves it (from its view of the pod), required to
/// be byte for byte the answer of the typed path (a whole Pod decoded).
async fn answer_body(persi: Persi, policy: FailurePolicy, body: &[u8]) -> Value {
    let persi = Arc::new(persi);
    let metrics = Metrics::new([Extension::name(&*persi)]);
    let ctx = Context::offline(Arc::new(Settings::default()));
    let timeout = Duration::from_secs(5);
    let typed = ExtensionHandler::new(persi.clone(), policy, timeout, 0);
    let typed = typed.handle_body(&ctx, &metrics, body).await.unwrap();
    let served = ExtensionHandler::for_view(persi, policy, timeout, 0);
    let served = served.handle_body(&ctx, &metrics, body).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&served),
        String::from_utf8_lossy(&typed),
        "the served route and the typed path answer differently"
    );
    serde_json::from_slice(&served).unwrap()
}

#[tokio::test]
async fn the_served_route_answers_every_kind_of_pod_as_the_typed_path() {
    let v = vcap(&[
        ("data", "pvc-data", "/var/vcap/data/d", None),
        ("conf", "pvc-conf", "/conf/", Some("r")),
    ]);
    let plain = pod(vec![container("opi", Some(&v)), container("side", None)]);
    let mut cases = vec![plain.clone()];
    // Existing lists, a claim volume to reuse, groups, the last of two VCAP_SERVICES entries.
    let mut p: Value = serde_json::to_value(&plain).unwrap();
    p["metadata"]["annotations"] = json!({"a": "b"});
    p["spec"]["volumes"] =
        json!([{"name": "old", "persistentVolumeClaim": {"claimName": "pvc-conf"}}]);
    p["spec"]["securityContext"] = json!({"runAsGroup": 7, "fsGroupChangePolicy": "Always"});
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "tmp", "mountPath": "/tmp"}]);
    p["spec"]["containers"][0]["securityContext"] = json!({"runAsGroup": 9});
    p["spec"]["containers"][1]["env"] = json!([
        {"name": "VCAP_SERVICES", "value": "not json"},
        {"value": v, "name": "VCAP_SERVICES"}
    ]);
    p["spec"]["initContainers"] = json!([{"name": "init", "volumeMounts": [{"name": volume_name("pvc-data", 0), "mountPath": "/x"}]}]);
    p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "volumeMounts": [{"name": volume_name("pvc-data", 1), "mountPath": "/y"}]}]);
    cases.push(serde_json::from_value(p.clone()).unwrap());
    // A path in use, broken VCAP_SERVICES, a reference, a marked pod, no VCAP_SERVICES at all.
    let mut used = p.clone();
    used["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "x", "mountPath": "/var/vcap/data/d/"}]);
    cases.push(serde_json::from_value(used).unwrap());
    cases.push(pod(vec![container("opi", Some("{\"eirini-persi\": 5}"))]));
    let mut reference = p.clone();
    reference["spec"]["containers"][0]["env"] = json!([{"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]);
    cases.push(serde_json::from_value(reference).unwrap());
    let mut marked = p;
    marked["metadata"]["annotations"] = json!({"eirinix.org/persi": "injected"});
    cases.push(serde_json::from_value(marked).unwrap());
    cases.push(pod(vec![container("opi", None)]));
    let off = || {
        Persi::new(PersiOptions {
            resolve_references: false,
            fs_group: None,
            ..Default::default()
        })
    };
    for (i, case) in cases.iter().enumerate() {
        for policy in [FailurePolicy::Fail, FailurePolicy::Ignore] {
            let answer = answer(Persi::default(), policy, case).await;
            assert_eq!(
                answer["response"]["uid"], "0b5c1e38-2f1c-4a59-8f5e-1a2b3c4d5e6f",
                "case {i}"
            );
            answer_body(off(), policy, &review_body(case)).await;
        }
    }
    // An env entry named twice, JSON the apiserver never writes: the typed decode keeps the last
    // name with the value read under the first; the served route (which skips the values of
    // entries named otherwise) must answer the same, so it mounts the volume.
    let body = String::from_utf8(review_body(&pod(vec![container("opi", None)]))).unwrap();
    let port = r#"{"name":"PORT","value":"8080"}"#;
    assert!(body.contains(port), "{body}");
    let twice = format!(
        r#"{{"name":"PORT","value":{},"name":"VCAP_SERVICES"}}"#,
        serde_json::to_string(&v).unwrap()
    );
    let answer = answer_body(
        Persi::default(),
        FailurePolicy::Fail,
        body.replace(port, &twice).as_bytes(),
    )
    .await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    // A value that is not a string is refused in any entry, as the typed decode refuses it.
    let number = body.replace(port, r#"{"name":"PORT","value":8080}"#);
    let answer = answer_body(Persi::default(), FailurePolicy::Fail, number.as_bytes()).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
}

#[tokio::test]
async fn failure_policy_decides_between_denial_and_admission_with_warning() {
    let p = pod(vec![container("opi", Some("not json"))]);
    assert!(decode(&review_body(&p)).is_ok());

    let denied = answer(Persi::default(), FailurePolicy::Fail, &p).await;
    let response = &denied["response"];
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("persi: container \"opi\": VCAP_SERVICES is not valid JSON"),
        "{message}"
    );
    assert!(response.get("patch").is_none());

    let admitted = answer(Persi::default(), FailurePolicy::Ignore, &p).await;
    let response = &admitted["response"];
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "admitted unmutated");
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("container \"opi\": VCAP_SERVICES is not valid JSON")
            && warning.contains("admitted unmutated"),
        "{warning}"
    );

    // The extension's own option wins over the manager default in registration.
    let ignore = Persi::new(PersiOptions {
        failure_policy: Some(FailurePolicy::Ignore),
        ..Default::default()
    });
    assert_eq!(ignore.webhook().failure_policy, Some(FailurePolicy::Ignore));
    assert_eq!(Persi::default().webhook().failure_policy, None);
}

#[tokio::test]
async fn patch_applies_on_a_pod_with_existing_lists() {
    // Existing volumes, mounts and security context: appends, no replacement of existing data;
    // two bindings, so each list is appended to twice.
    let v = vcap(&[
        ("data", "pvc-data", "/data", None),
        ("config", "pvc-config", "/config", Some("r")),
    ]);
    let mut p = pod(vec![container("opi", Some(&v))]);
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(serde_json::from_value(json!([{"name": "tmp", "emptyDir": {}}])).unwrap());
    spec.containers[0].volume_mounts =
        Some(serde_json::from_value(json!([{"name": "tmp", "mountPath": "/tmp"}])).unwrap());
    spec.security_context = Some(serde_json::from_value(json!({"runAsNonRoot": true})).unwrap());
    let out = review_with(
        Arc::new(Persi::default()),
        Arc::new(Settings::default()),
        &p,
    )
    .await
    .unwrap();
    let (data, config) = (volume_name("pvc-data", 0), volume_name("pvc-config", 0));
    assert_eq!(
        mounts(&out.pod, 0),
        json!([
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": data, "mountPath": "/data"},
            {"name": config, "mountPath": "/config", "readOnly": true},
        ])
    );
    assert_eq!(
        volumes(&out.pod),
        json!([
            {"name": "tmp", "emptyDir": {}},
            {"name": data, "persistentVolumeClaim": {"claimName": "pvc-data"}},
            {"name": config, "persistentVolumeClaim": {"claimName": "pvc-config"}},
        ])
    );
    assert_eq!(
        security(&out.pod),
        json!({"runAsNonRoot": true, "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"})
    );
}

#[tokio::test]
async fn updates_are_never_patched_and_not_even_registered() {
    let v = vcap(&[("data", "pvc-data", "/data", None)]);
    let p = pod(vec![container("opi", Some(&v))]);
    let created = answer(Persi::default(), FailurePolicy::Fail, &p).await;
    assert!(created["response"]["patch"].is_string(), "{created}");
    let updated = answer_body(
        Persi::default(),
        FailurePolicy::Fail,
        &review_body_for("UPDATE", &p),
    )
    .await;
    assert_eq!(updated["response"]["allowed"], true);
    assert!(updated["response"].get("patch").is_none(), "{updated}");
    assert_eq!(
        Persi::default().webhook().operations,
        Some(vec![eirinix_core::Operation::Create])
    );
}
