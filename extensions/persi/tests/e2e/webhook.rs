//! The persi webhook behind a real kube-apiserver.

use eirinix_core::FailurePolicy;
use eirinix_persi::PersiOptions;
use eirinix_persi::names::volume_name;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_two_and_read_only_bindings_across_two_containers() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let hook = Webhook::start(&client, PersiOptions::default()).await;
    let ns = hook.apps.clone();
    // A valid PVC name that is no valid volume name (dots, longer than 63).
    let odd = "odd.claim.name-with-a-very-long-suffix-that-goes-on-and-on-and-on-and-on";
    for claim in ["uploads", "config", odd] {
        pvc(&client, &ns, claim).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // One binding, one container.
    let one = vcap(vec![binding(
        "uploads",
        "uploads",
        "/var/vcap/data/uploads",
        None,
    )]);
    let created = pods
        .create(
            &PostParams::default(),
            &app_pod("one-0", vec![container("opi", Some(&one))]),
        )
        .await
        .expect("pod admitted");
    let up = volume_name("uploads", 0);
    assert_eq!(
        volumes(&created),
        json!([{"name": up, "persistentVolumeClaim": {"claimName": "uploads"}}])
    );
    assert_eq!(
        mounts(&created, 0),
        json!([{"name": up, "mountPath": "/var/vcap/data/uploads"}])
    );
    assert_eq!(
        security(&created),
        json!({"fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"})
    );
    assert_eq!(
        created.metadata.annotations.as_ref().expect("annotations")["eirinix.org/persi"],
        "injected"
    );

    // Two bindings in one container (one read-only), one read-only binding of the same claim
    // in a second container: one volume per claim, mounts where each binding says.
    let opi = vcap(vec![
        binding("uploads", "uploads", "/var/vcap/data/uploads", Some("rw")),
        binding("config", "config", "/etc/app-config", Some("r")),
        binding("odd", odd, "/var/vcap/data/odd", None),
    ]);
    let sidecar = vcap(vec![binding(
        "uploads",
        "uploads",
        "/srv/uploads",
        Some("r"),
    )]);
    let created = pods
        .create(
            &PostParams::default(),
            &app_pod(
                "two-0",
                vec![
                    container("opi", Some(&opi)),
                    container("sidecar", Some(&sidecar)),
                ],
            ),
        )
        .await
        .expect("pod admitted");
    let (cfg, oddv) = (volume_name("config", 0), volume_name(odd, 0));
    assert!(
        oddv.len() <= 63 && oddv.starts_with("persi-odd-claim-name-with"),
        "{oddv}"
    );
    assert_eq!(
        volumes(&created),
        json!([
            {"name": up, "persistentVolumeClaim": {"claimName": "uploads"}},
            {"name": cfg, "persistentVolumeClaim": {"claimName": "config"}},
            {"name": oddv, "persistentVolumeClaim": {"claimName": odd}},
        ])
    );
    assert_eq!(
        mounts(&created, 0),
        json!([
            {"name": up, "mountPath": "/var/vcap/data/uploads"},
            {"name": cfg, "mountPath": "/etc/app-config", "readOnly": true},
            {"name": oddv, "mountPath": "/var/vcap/data/odd"},
        ])
    );
    assert_eq!(
        mounts(&created, 1),
        json!([{"name": up, "mountPath": "/srv/uploads", "readOnly": true}])
    );
    assert_eq!(
        security(&created),
        json!({"fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"})
    );

    // Existing groups are kept: the pod's fsGroup, or its runAsGroup as fsGroup.
    let mut grouped = app_pod("grouped-0", vec![container("opi", Some(&one))]);
    grouped.spec.as_mut().expect("spec").security_context =
        Some(serde_json::from_value(json!({"runAsUser": 2000, "fsGroup": 3000})).expect("valid"));
    let created = pods
        .create(&PostParams::default(), &grouped)
        .await
        .expect("pod admitted");
    assert_eq!(
        security(&created),
        json!({"runAsUser": 2000, "fsGroup": 3000})
    );
    let mut grouped = app_pod("grouped-1", vec![container("opi", Some(&one))]);
    grouped.spec.as_mut().expect("spec").security_context = Some(
        serde_json::from_value(json!({"runAsUser": 1000, "runAsGroup": 1000})).expect("valid"),
    );
    let created = pods
        .create(&PostParams::default(), &grouped)
        .await
        .expect("pod admitted");
    assert_eq!(
        security(&created),
        json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "fsGroupChangePolicy": "OnRootMismatch"})
    );

    // A pod without VCAP_SERVICES is not touched (nor sent: persi's match condition).
    let plain = pods
        .create(
            &PostParams::default(),
            &app_pod("plain-0", vec![container("opi", None)]),
        )
        .await
        .expect("pod admitted");
    assert_eq!(volumes(&plain), Value::Null);
    assert_eq!(security(&plain), json!({}), "only the apiserver's default");
    assert_eq!(hook.reviews("patched"), 4);
    assert_eq!(hook.reviews("skipped"), 0);
    hook.stop().await;
}

/// `pod` as a new object named `name` (what a controller re-creating it would send).
fn recreate(pod: &Pod, name: &str) -> Pod {
    let mut p = pod.clone();
    p.metadata = ObjectMeta {
        name: Some(name.into()),
        labels: p.metadata.labels.clone(),
        annotations: p.metadata.annotations.clone(),
        ..Default::default()
    };
    p.status = None;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_admission_of_a_mutated_pod_yields_no_patch() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let hook = Webhook::start(&client, PersiOptions::default()).await;
    pvc(&client, &hook.apps, "data").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &hook.apps);
    let v = vcap(vec![binding("data", "data", "/data", None)]);
    let first = pods
        .create(
            &PostParams::default(),
            &app_pod(
                "first-0",
                vec![container("opi", Some(&v)), container("two", Some(&v))],
            ),
        )
        .await
        .expect("admitted");
    assert_eq!(hook.reviews("patched"), 1);

    // The mutated pod admitted again (marker present): the webhook answers without a patch.
    let second = pods
        .create(&PostParams::default(), &recreate(&first, "second-0"))
        .await
        .expect("admitted");
    assert_eq!(hook.reviews("patched"), 1, "no second patch");
    assert_eq!(hook.reviews("skipped"), 1);
    assert_eq!(volumes(&second), volumes(&first));
    assert_eq!(mounts(&second, 0), mounts(&first, 0));
    assert_eq!(mounts(&second, 1), mounts(&first, 1));

    // Without the marker, the existing volume and mounts are recognised: still no patch.
    let mut unmarked = recreate(&first, "third-0");
    unmarked.metadata.annotations = None;
    let third = pods
        .create(&PostParams::default(), &unmarked)
        .await
        .expect("admitted");
    assert_eq!(
        hook.reviews("patched"),
        1,
        "no patch for volumes that are there"
    );
    assert_eq!(hook.reviews("skipped"), 2);
    assert_eq!(volumes(&third), volumes(&first));
    assert_eq!(third.metadata.annotations, None);
    hook.stop().await;
}

/// The bad-input cases of the issue: (pod name, VCAP_SERVICES, what the message must say).
fn bad_inputs() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "not-json-0",
            "{\"eirini-persi\": [{\"name\": \"data\"".to_owned(),
            vec!["container \"opi\": VCAP_SERVICES is not valid JSON"],
        ),
        (
            "no-claim-0",
            json!({"eirini-persi": [{"name": "data", "credentials": {}, "volume_mounts": [{"container_dir": "/data", "mode": "rw", "device": {}}]}]}).to_string(),
            vec![
                "container \"opi\", binding \"data\" (service \"eirini-persi\")",
                "names no claim: neither credentials.volume_id nor device.volume_id is set",
            ],
        ),
        (
            "no-dir-0",
            vcap(vec![json!({"name": "data", "credentials": {"volume_id": "data"}, "volume_mounts": [{"mode": "rw"}]})]),
            vec![
                "container \"opi\", binding \"data\" (service \"eirini-persi\")",
                "volume_mounts[0] has no container_dir",
            ],
        ),
        (
            "relative-0",
            vcap(vec![binding("data", "data", "var/vcap/data", None)]),
            vec![
                "container \"opi\", binding \"data\" (service \"eirini-persi\")",
                "container_dir \"var/vcap/data\" is not an absolute path",
            ],
        ),
        (
            "duplicate-0",
            vcap(vec![
                binding("data", "data", "/var/vcap/data", None),
                binding("more", "more", "/var/vcap/data/", None),
            ]),
            vec![
                "container \"opi\", binding \"more\" (service \"eirini-persi\")",
                "container_dir \"/var/vcap/data\" is also the container_dir of binding \"data\" (service \"eirini-persi\")",
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_denied_with_our_message() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let hook = Webhook::start(&client, PersiOptions::default()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &hook.apps);
    let prefix = format!(
        "admission webhook \"{}\" denied the request: persi: ",
        hook.webhook_name()
    );
    for (name, bad, expected) in bad_inputs() {
        // Container "ok" is fine; only "opi" is broken: the whole pod is denied, no half patch.
        let good = vcap(vec![binding("fine", "fine", "/fine", None)]);
        let pod = app_pod(
            name,
            vec![container("ok", Some(&good)), container("opi", Some(&bad))],
        );
        match pods.create(&PostParams::default(), &pod).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(
                    status.code, 400,
                    "{name}: bad input is the pod's fault, not a 500"
                );
                assert!(
                    status.message.starts_with(&prefix),
                    "{name}: {:?}",
                    status.message
                );
                for part in expected {
                    assert!(
                        status.message.contains(part),
                        "{name}: {part:?} missing in {:?}",
                        status.message
                    );
                }
            }
            other => panic!("{name}: expected a denial, got {other:?}"),
        }
        assert!(
            pods.get_opt(name).await.expect("get").is_none(),
            "{name}: nothing was created"
        );
    }
    assert_eq!(hook.reviews("errored"), 5);
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_admitted_unmutated_with_a_warning_under_ignore() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let options = PersiOptions {
        failure_policy: Some(FailurePolicy::Ignore),
        ..Default::default()
    };
    let hook = Webhook::start(&client, options).await;
    for (name, bad, expected) in bad_inputs() {
        let good = vcap(vec![binding("fine", "fine", "/fine", None)]);
        let pod = app_pod(
            name,
            vec![container("ok", Some(&good)), container("opi", Some(&bad))],
        );
        // A raw request, to see the Warning headers the apiserver relays.
        let request = http::Request::post(format!("/api/v1/namespaces/{}/pods", hook.apps))
            .header("content-type", "application/json")
            .body(kube::client::Body::from(
                serde_json::to_vec(&pod).expect("json"),
            ))
            .expect("request");
        let response = client.send(request).await.expect("response");
        assert_eq!(response.status(), 201, "{name}: admitted");
        let warnings: Vec<String> = response
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let created: Pod =
            serde_json::from_slice(&response.into_body().collect_bytes().await.expect("body"))
                .expect("a pod");
        assert_eq!(volumes(&created), Value::Null, "{name}: unmutated");
        assert_eq!(mounts(&created, 0), Value::Null, "{name}: no half patch");
        let warning = warnings.join("\n");
        assert!(warning.contains("admitted unmutated"), "{name}: {warning}");
        for part in expected {
            // The apiserver escapes quotes in Warning headers.
            let escaped = part.replace('"', "\\\"");
            assert!(
                warning.contains(part) || warning.contains(&escaped),
                "{name}: {part:?} missing in {warning}"
            );
        }
    }
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcap_services_from_a_secret_is_read() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let hook = Webhook::start(&client, PersiOptions::default()).await;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("app-env".into()),
            ..Default::default()
        },
        string_data: Some(
            [(
                "VCAP_SERVICES".to_owned(),
                vcap(vec![binding("data", "data", "/data", Some("r"))]),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &hook.apps)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &hook.apps);
    let env_from = |secret: &str| {
        let mut c = container("opi", None);
        c["env"] = json!([{"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef": {"name": secret, "key": "VCAP_SERVICES"}}}]);
        c
    };
    let created = pods
        .create(
            &PostParams::default(),
            &app_pod("ref-0", vec![env_from("app-env")]),
        )
        .await
        .expect("admitted");
    assert_eq!(
        mounts(&created, 0),
        json!([{"name": volume_name("data", 0), "mountPath": "/data", "readOnly": true}])
    );
    match pods
        .create(&PostParams::default(), &app_pod("ref-1", vec![env_from("missing")]))
        .await
    {
        Err(kube::Error::Api(s)) => assert!(
            s.message.contains(
                "container \"opi\": cannot read VCAP_SERVICES from Secret \"missing\" key \"VCAP_SERVICES\": it does not exist"
            ),
            "{}",
            s.message
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
    hook.stop().await;
}

/// POST an AdmissionReview (CREATE of `pod` in `namespace`) straight to the webhook at `addr`,
/// as any client that reaches the port could (curl, certificate not checked); the response.
async fn post_review(addr: std::net::SocketAddr, namespace: &str, pod: &Pod) -> Value {
    use tokio::io::AsyncWriteExt as _;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "5b0f7a52-6a37-4c2e-8c6e-1d2f6f0c9a11",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "forger"},
            "object": pod, "dryRun": false
        }
    });
    let mut child = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://{addr}/persi"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(review.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("curl finishes")
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("an AdmissionReview response")
}

/// Issue item 5: a client reaching the webhook port could use persi to probe which Secrets and
/// keys exist in any namespace (the denial said "it does not exist" or "the key does not
/// exist"). References are read only in the namespace the manager serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_review_cannot_probe_secrets_outside_the_served_namespace() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let hook = Webhook::start(&client, PersiOptions::default()).await;
    let elsewhere = cp.namespace("persi-other").await.expect("namespace");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("exists".into()),
            ..Default::default()
        },
        string_data: Some([("VCAP_SERVICES".to_owned(), "{}".to_owned())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &elsewhere)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let probe = |secret: &str, key: &str| {
        let mut c = container("opi", None);
        c["env"] = json!([{"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]);
        app_pod("probe-0", vec![c])
    };
    let addr = hook.running.local_addr();
    let mut answers = Vec::new();
    for (secret, key) in [
        ("exists", "VCAP_SERVICES"),
        ("exists", "no-such-key"),
        ("no-such-secret", "VCAP_SERVICES"),
    ] {
        let mut response = post_review(addr, &elsewhere, &probe(secret, key)).await;
        assert_eq!(response["response"]["allowed"], true, "{response}");
        response["response"].as_object_mut().unwrap().remove("uid");
        answers.push(response);
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "the answers tell existing Secrets and keys apart: {answers:#?}"
    );
    assert!(
        answers[0]["response"]["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("is not served by this webhook"),
        "{:?}",
        answers[0]
    );
    // In the served namespace references are read as before.
    let response = post_review(addr, &hook.apps, &probe("no-such-secret", "VCAP_SERVICES")).await;
    assert_eq!(response["response"]["allowed"], false, "{response}");
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_vcap_services_are_not_sent_to_persi() {
    let cp = plane().await;
    let client = cp.client().await.expect("client");
    let hook = Webhook::start(&client, PersiOptions::default()).await;
    let config: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        Api::all(client.clone())
            .get(&format!("{}-mutating-hook", hook.fingerprint))
            .await
            .expect("registered");
    let registered = json!(config.webhooks.unwrap()[0].match_conditions);
    assert_eq!(
        registered,
        json!([{"name": eirinix_persi::VCAP_MATCH_CONDITION_NAME, "expression": eirinix_persi::VCAP_MATCH_CONDITION}])
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &hook.apps);
    let calls = || {
        ["patched", "skipped", "denied", "errored", "invalid"]
            .iter()
            .map(|o| hook.reviews(o))
            .sum::<u64>()
    };
    // An app pod without the variable: the apiserver evaluates the condition and does not call.
    pods.create(
        &PostParams::default(),
        &app_pod("plain-0", vec![container("opi", None)]),
    )
    .await
    .expect("admitted");
    assert_eq!(
        calls(),
        0,
        "persi was called for a pod without VCAP_SERVICES"
    );
    // With it (even without a volume binding), persi is called.
    let v = vcap(vec![]);
    pods.create(
        &PostParams::default(),
        &app_pod("bound-0", vec![container("opi", Some(&v))]),
    )
    .await
    .expect("admitted");
    assert_eq!(calls(), 1);
    hook.stop().await;
}
