//! Offline tests of the framework: review decoding and bad input, failure policies, patches,
//! configuration objects and manager validation. No cluster needed.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use eirinix_core::admission::{ExtensionHandler, ReviewError, decode};
use eirinix_core::metrics::{Metrics, Outcome};
use eirinix_core::options::Endpoint;
use eirinix_core::registration::{
    WebhookSpec, desired_configuration, differences, drifted, other_replica, url_authority,
};
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, FailurePolicy, Manager, Mutation, PodPatch,
    Request, Settings, WebhookOverrides, async_trait, patch,
};
use k8s_openapi::api::core::v1::{EnvVar, Pod, Volume, VolumeMount};
use serde_json::{Value, json};

fn pod_json() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-0", "namespace": "eirini",
            "labels": {"cloudfoundry.org/source_type": "APP"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": {"containers": [{"name": "opi", "image": "app:1"}, {"name": "two", "image": "b", "env": [{"name": "A", "value": "1"}]}]}
    })
}

fn review_json(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "7f0b2891-916f-4ed6-b7cd-27bff1815a8c",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "eirini", "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object, "dryRun": false
        }
    })
}

struct Sticky;
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
        if PodPatch::is_marked(pod, "sticky") {
            return Ok(Mutation::unchanged());
        }
        let mut p = PodPatch::new(pod);
        let env = EnvVar {
            name: "STICKY".into(),
            value: Some("yes".into()),
            ..Default::default()
        };
        p.add_env(ContainerRef::App(0), &env)?
            .add_env(ContainerRef::App(0), &env)?;
        p.mark("sticky");
        Ok(Mutation::patch(p.build()).with_warning("sticky was here"))
    }
}

struct Failing;
#[async_trait]
impl Extension for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    async fn mutate(&self, _: &Context, _: &Request, _: &Pod) -> Result<Mutation, ExtensionError> {
        Err(ExtensionError::new("VCAP_SERVICES is broken"))
    }
}

struct Panicking;
#[async_trait]
impl Extension for Panicking {
    fn name(&self) -> &str {
        "panicking"
    }
    async fn mutate(&self, _: &Context, _: &Request, _: &Pod) -> Result<Mutation, ExtensionError> {
        panic!("boom")
    }
}

fn ctx() -> Context {
    Context::offline(Arc::new(Settings::default()))
}

async fn run(
    ext: impl Extension,
    policy: FailurePolicy,
    body: &[u8],
) -> (Result<Value, ReviewError>, Arc<Metrics>) {
    let ext: Arc<dyn Extension> = Arc::new(ext);
    let metrics = Arc::new(Metrics::new([ext.name()]));
    let h = ExtensionHandler::new(ext, policy, Duration::from_secs(2), 0);
    let out = h
        .handle_body(&ctx(), &metrics, body)
        .await
        .map(|b| serde_json::from_slice(&b).unwrap());
    (out, metrics)
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test]
async fn patch_is_base64_json_patch_and_uid_is_echoed() {
    let (out, metrics) = run(Sticky, FailurePolicy::Fail, &body(&review_json(pod_json()))).await;
    let out = out.unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    let resp = &out["response"];
    assert_eq!(resp["uid"], "7f0b2891-916f-4ed6-b7cd-27bff1815a8c");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    assert_eq!(resp["warnings"][0], "sticky was here");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().unwrap())
        .unwrap();
    let ops: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        ops,
        json!([
            {"op": "add", "path": "/spec/containers/0/env", "value": [{"name": "STICKY", "value": "yes"}]},
            {"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "STICKY", "value": "yes"}},
            {"op": "add", "path": "/metadata/annotations", "value": {"eirinix.org/sticky": "injected"}}
        ])
    );
    assert_eq!(metrics.extension(0).unwrap().count(Outcome::Patched), 1);
}

#[tokio::test]
async fn already_injected_pod_gets_no_patch() {
    let mut pod = pod_json();
    pod["metadata"]["annotations"] = json!({"eirinix.org/sticky": "injected"});
    let (out, _) = run(Sticky, FailurePolicy::Fail, &body(&review_json(pod))).await;
    let resp = &out.unwrap()["response"];
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

#[tokio::test]
async fn malformed_bodies_are_http_400_with_a_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "not a valid AdmissionReview"),
        (
            body(&json!({"hello": "world"})),
            "unsupported AdmissionReview apiVersion",
        ),
        (
            body(
                &json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}),
            ),
            "v1beta1",
        ),
        (
            body(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"})),
            "expected kind AdmissionReview",
        ),
        (
            body(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})),
            "has no request",
        ),
        (
            body(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}}),
            ),
            "missing field `uid`",
        ),
        (
            {
                let mut v = review_json(pod_json());
                v["request"]["uid"] = json!("");
                body(&v)
            },
            "empty uid",
        ),
        (vec![0xff, 0xfe, b'{'], "not a valid AdmissionReview"),
    ];
    for (input, expected) in cases {
        let (out, metrics) = run(Sticky, FailurePolicy::Fail, &input).await;
        let err = out.expect_err("must be rejected").to_string();
        assert!(
            err.contains(expected),
            "{err:?} should mention {expected:?}"
        );
        assert_eq!(metrics.extension(0).unwrap().count(Outcome::Patched), 0);
    }
}

#[tokio::test]
async fn object_that_is_not_a_pod_is_denied_with_400_and_uid() {
    let cases = vec![
        (
            review_json(json!({"spec": {"containers": "not a list"}})),
            "does not decode as a Pod",
        ),
        (review_json(Value::Null), "carries no object"),
        (
            {
                let mut v = review_json(pod_json());
                v["request"]["kind"] =
                    json!({"group": "apps", "version": "v1", "kind": "Deployment"});
                v
            },
            "Deployment.apps, not a Pod",
        ),
    ];
    for (input, expected) in cases {
        let (out, metrics) = run(Sticky, FailurePolicy::Fail, &body(&input)).await;
        let resp = out.unwrap()["response"].clone();
        assert_eq!(resp["uid"], "7f0b2891-916f-4ed6-b7cd-27bff1815a8c");
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["status"]["code"], 400);
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{resp}"
        );
        assert_eq!(metrics.extension(0).unwrap().count(Outcome::Invalid), 1);
    }
}

#[tokio::test]
async fn delete_and_connect_are_admitted_untouched() {
    for op in ["DELETE", "CONNECT"] {
        let mut v = review_json(Value::Null);
        v["request"]["operation"] = json!(op);
        let (out, _) = run(Sticky, FailurePolicy::Fail, &body(&v)).await;
        let resp = &out.unwrap()["response"];
        assert_eq!(resp["allowed"], true, "{op}");
        assert!(resp.get("patch").is_none());
    }
}

#[tokio::test]
async fn failure_policy_decides_what_an_extension_error_means() {
    let input = body(&review_json(pod_json()));
    let (out, m) = run(Failing, FailurePolicy::Fail, &input).await;
    let resp = &out.unwrap()["response"];
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("failing: VCAP_SERVICES is broken")
    );
    assert_eq!(m.extension(0).unwrap().count(Outcome::Errored), 1);

    let (out, _) = run(Failing, FailurePolicy::Ignore, &input).await;
    let resp = &out.unwrap()["response"];
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("VCAP_SERVICES is broken")
    );
}

#[tokio::test]
async fn a_panicking_extension_is_an_error_not_a_dead_connection() {
    let (out, _) = run(
        Panicking,
        FailurePolicy::Fail,
        &body(&review_json(pod_json())),
    )
    .await;
    let resp = &out.unwrap()["response"];
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("panicked")
    );
}

#[test]
fn small_and_large_bodies_decode_the_same() {
    // One decode for every size (the scanner keeps no copy of the body): what serde_json reads.
    let mut pod = pod_json();
    let env: Vec<Value> = (0..6000)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": format!("välue \"{i}\" \u{1F600}")}))
        .collect();
    pod["spec"]["containers"][1]["env"] = Value::Array(env);
    let large = body(&review_json(pod.clone()));
    assert!(large.len() > 256 * 1024, "{} bytes", large.len());
    let decoded = decode(&large).unwrap();
    let expected: Pod = serde_json::from_value(pod).unwrap();
    assert_eq!(*decoded.pod.unwrap(), expected);
    assert_eq!(decoded.request.uid, "7f0b2891-916f-4ed6-b7cd-27bff1815a8c");
    let small = decode(&body(&review_json(pod_json()))).unwrap();
    assert_eq!(
        *small.pod.unwrap(),
        serde_json::from_value::<Pod>(pod_json()).unwrap()
    );
    // Invalid UTF-8 in a large body is still a named error.
    let mut broken = large.clone();
    let at = broken.len() / 2;
    broken[at] = 0xff;
    let err = decode(&broken).expect_err("invalid UTF-8 is rejected");
    assert!(matches!(err, ReviewError::Malformed(_)), "{err}");
}

#[test]
fn decode_keeps_request_fields() {
    let mut v = review_json(pod_json());
    v["request"]["dryRun"] = json!(true);
    let d = decode(&body(&v)).unwrap();
    assert!(d.request.dry_run);
    assert_eq!(d.request.namespace.as_deref(), Some("eirini"));
    assert_eq!(d.request.user_info.username.as_deref(), Some("admin"));
    assert_eq!(d.pod.unwrap().metadata.name.as_deref(), Some("app-0"));
}

#[test]
fn pod_patch_creates_missing_maps_and_arrays_and_escapes_keys() {
    let pod: Pod = serde_json::from_value(pod_json()).unwrap();
    let mut p = PodPatch::new(&pod);
    p.add_volume(&Volume {
        name: "v1".into(),
        ..Default::default()
    })
    .unwrap();
    p.add_volume(&Volume {
        name: "v2".into(),
        ..Default::default()
    })
    .unwrap();
    let mount = VolumeMount {
        name: "v1".into(),
        mount_path: "/data".into(),
        ..Default::default()
    };
    p.add_volume_mount(ContainerRef::App(1), &mount).unwrap();
    p.add_env(
        ContainerRef::App(1),
        &EnvVar {
            name: "B".into(),
            ..Default::default()
        },
    )
    .unwrap();
    p.set_label("cloudfoundry.org/rootfs-version", "v2");
    p.set_annotation("a/b~c", "x");
    assert!(matches!(
        p.add_env(ContainerRef::App(5), &EnvVar::default()),
        Err(patch::PatchError::NoSuchContainer { index: 5, .. })
    ));
    assert!(
        p.add_env(ContainerRef::Init(0), &EnvVar::default())
            .is_err()
    );
    let built = p.build();
    let ops = serde_json::to_value(&built).unwrap();
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
            "/spec/volumes/-",
            "/spec/containers/1/volumeMounts",
            "/spec/containers/1/env/-",
            "/metadata/labels/cloudfoundry.org~1rootfs-version",
            "/metadata/annotations"
        ]
    );
    let out = PodPatch::apply(&pod, &built).unwrap();
    let spec = out.spec.unwrap();
    assert_eq!(spec.volumes.unwrap().len(), 2);
    assert_eq!(spec.containers[1].env.as_ref().unwrap().len(), 2);
    assert_eq!(out.metadata.annotations.unwrap()["a/b~c"], "x");
    assert_eq!(
        out.metadata.labels.unwrap()["cloudfoundry.org/rootfs-version"],
        "v2"
    );
}

#[test]
fn diff_fallback_ignores_managed_fields() {
    let pod: Pod = serde_json::from_value(pod_json()).unwrap();
    let mut mutated = pod.clone();
    mutated.metadata.managed_fields = None;
    mutated.spec.as_mut().unwrap().containers[0].image = Some("app:2".into());
    let d = PodPatch::diff(&pod, &mutated).unwrap();
    let ops = serde_json::to_value(&d).unwrap();
    assert_eq!(
        ops,
        json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "app:2"}])
    );
    let applied = PodPatch::apply(&pod, &d).unwrap();
    assert_eq!(
        applied.spec.unwrap().containers[0].image.as_deref(),
        Some("app:2")
    );
}

fn settings() -> Settings {
    Settings {
        endpoint: Endpoint::Service {
            name: "eirinix".into(),
            namespace: "eirinix-system".into(),
            port: 443,
        },
        webhook_namespace: "eirinix-system".into(),
        ..Default::default()
    }
}

#[test]
fn configuration_has_modern_fields_and_safe_selectors() {
    let s = settings();
    let hooks = [
        WebhookSpec::pods("persi", WebhookOverrides::default()),
        WebhookSpec::pods(
            "ssh",
            WebhookOverrides {
                failure_policy: Some(FailurePolicy::Ignore),
                ..Default::default()
            },
        ),
    ];
    let cfg = desired_configuration(&s, &hooks, b"PEM", 2999);
    assert_eq!(cfg.metadata.name.as_deref(), Some("eirini-x-mutating-hook"));
    let v = serde_json::to_value(&cfg).unwrap();
    assert_eq!(v["apiVersion"], "admissionregistration.k8s.io/v1");
    let w = &v["webhooks"][0];
    assert_eq!(w["name"], "persi.eirini-x.org");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["timeoutSeconds"], 10);
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(
        w["clientConfig"]["service"],
        json!({"name": "eirinix", "namespace": "eirinix-system", "path": "/persi", "port": 443})
    );
    assert_eq!(
        w["clientConfig"]["caBundle"],
        base64::engine::general_purpose::STANDARD.encode("PEM")
    );
    assert_eq!(w["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(
        w["objectSelector"]["matchLabels"],
        json!({"cloudfoundry.org/source_type": "APP"})
    );
    assert_eq!(
        w["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["eirinix-system", "kube-system"]})
    );
    assert_eq!(v["webhooks"][1]["failurePolicy"], "Ignore");
    assert_eq!(v["webhooks"][1]["clientConfig"]["service"]["path"], "/ssh");

    let url = Settings {
        endpoint: Endpoint::Url {
            host: "127.0.0.1".into(),
        },
        namespace: Some("eirini".into()),
        ..Default::default()
    };
    let v = serde_json::to_value(desired_configuration(&url, &hooks, b"", 4443)).unwrap();
    assert_eq!(
        v["webhooks"][0]["clientConfig"]["url"],
        "https://127.0.0.1:4443/persi"
    );
    assert_eq!(
        v["webhooks"][0]["namespaceSelector"]["matchExpressions"][1]["values"],
        json!(["eirini"])
    );
}

#[test]
fn url_mode_tells_another_replicas_registration_from_drift() {
    assert_eq!(
        url_authority("https://10.0.0.7:2999/persi"),
        Some(("10.0.0.7".into(), 2999))
    );
    assert_eq!(
        url_authority("https://[fd00::7]:443/ssh"),
        Some(("fd00::7".into(), 443))
    );
    assert_eq!(
        url_authority("https://webhook.example:8443"),
        Some(("webhook.example".into(), 8443))
    );
    for bad in [
        "http://a:1/x",
        "https://a/x",
        "https://a:port/x",
        "https://[::1/x",
    ] {
        assert_eq!(url_authority(bad), None, "{bad}");
    }

    let url = |host: &str| Settings {
        endpoint: Endpoint::Url { host: host.into() },
        ..Default::default()
    };
    let hooks = ["persi", "ssh"].map(|name| WebhookSpec::pods(name, WebhookOverrides::default()));
    let mine = desired_configuration(&url("127.0.0.1"), &hooks, b"PEM", 4443);
    // Another replica on another port: its address, and nothing else differs.
    let theirs = desired_configuration(&url("127.0.0.1"), &hooks, b"PEM", 5443);
    assert_eq!(
        other_replica(&mine, &theirs),
        Some(("127.0.0.1".into(), 5443))
    );
    let elsewhere = desired_configuration(&url("10.1.2.3"), &hooks, b"PEM", 4443);
    assert_eq!(
        other_replica(&mine, &elsewhere),
        Some(("10.1.2.3".into(), 4443))
    );
    // Ours, or anything else changed (caBundle, a policy, webhooks split between two
    // addresses, another path): not another replica's registration, so drift to repair.
    assert_eq!(other_replica(&mine, &mine), None);
    let other_ca = desired_configuration(&url("127.0.0.1"), &hooks, b"OTHER", 5443);
    assert_eq!(other_replica(&mine, &other_ca), None);
    let mut edited = theirs.clone();
    edited.webhooks.as_mut().unwrap()[1].failure_policy = Some("Ignore".into());
    assert_eq!(other_replica(&mine, &edited), None);
    let mut split = theirs.clone();
    split.webhooks.as_mut().unwrap()[1].client_config.url =
        Some("https://127.0.0.1:6443/ssh".into());
    assert_eq!(other_replica(&mine, &split), None);
    let mut moved = theirs.clone();
    moved.webhooks.as_mut().unwrap()[0].client_config.url =
        Some("https://127.0.0.1:5443/elsewhere".into());
    assert_eq!(other_replica(&mine, &moved), None);
    let service = desired_configuration(&settings(), &hooks, b"PEM", 4443);
    assert_eq!(other_replica(&mine, &service), None);
    let mut fewer = theirs.clone();
    fewer.webhooks.as_mut().unwrap().pop();
    assert_eq!(other_replica(&mine, &fewer), None);
}

#[test]
fn drift_detection_ignores_server_defaults_but_sees_edits() {
    let s = settings();
    let hooks = [WebhookSpec::pods("persi", WebhookOverrides::default())];
    let desired = desired_configuration(&s, &hooks, b"PEM", 2999);
    let mut live = desired.clone();
    // Server-side defaults added by the apiserver are not drift.
    live.metadata.uid = Some("x".into());
    assert!(!drifted(&desired, &live));
    live.webhooks.as_mut().unwrap()[0].failure_policy = Some("Ignore".into());
    assert!(drifted(&desired, &live));
    let mut stale = desired.clone();
    stale.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
        Some(k8s_openapi::ByteString(b"OLD".to_vec()));
    assert!(drifted(&desired, &stale));

    // What the apiserver fills in or drops is not drift; anything added to an entry is.
    let plain = |mut s: Settings| {
        s.filter_eirini_apps = false;
        s
    };
    let desired = desired_configuration(&plain(s.clone()), &hooks, b"PEM", 2999);
    assert!(
        desired.webhooks.as_ref().unwrap()[0]
            .object_selector
            .is_none()
    );
    let mut stored = serde_json::to_value(&desired).unwrap();
    let hook = &mut stored["webhooks"][0];
    hook["objectSelector"] = json!({});
    hook["matchConditions"] = json!([]);
    hook["rules"][0]["scope"] = json!("*");
    hook["clientConfig"]["service"]["port"] = json!(443);
    let mut expected = desired.clone();
    expected.webhooks.as_mut().unwrap()[0]
        .rules
        .as_mut()
        .unwrap()[0]
        .scope = None;
    expected.webhooks.as_mut().unwrap()[0]
        .client_config
        .service
        .as_mut()
        .unwrap()
        .port = None;
    let stored: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(stored).unwrap();
    assert!(
        !drifted(&expected, &stored),
        "{:?}",
        differences(&expected, &stored)
    );
    for (field, value) in [
        (
            "matchConditions",
            json!([{"name": "x", "expression": "false"}]),
        ),
        ("objectSelector", json!({"matchLabels": {"a": "b"}})),
    ] {
        let mut edited = serde_json::to_value(&desired).unwrap();
        edited["webhooks"][0][field] = value;
        let edited = serde_json::from_value(edited).unwrap();
        assert_eq!(
            differences(&desired, &edited),
            vec![format!("persi.eirini-x.org: {field}")]
        );
    }
    let mut gone = desired.clone();
    gone.webhooks = Some(Vec::new());
    assert_eq!(
        differences(&desired, &gone),
        vec!["persi.eirini-x.org: missing".to_owned()]
    );
    // Entries of other names are not eirinix's.
    let mut extra = desired.clone();
    let mut other = extra.webhooks.as_ref().unwrap()[0].clone();
    other.name = "someone.else.org".into();
    extra.webhooks.as_mut().unwrap().push(other);
    assert!(!drifted(&desired, &extra));
}

#[test]
fn builder_rejects_bad_configuration_up_front() {
    let err = |b: eirinix_core::ManagerBuilder| {
        b.build().err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(err(Manager::builder()).contains("no extension"));
    struct Bad;
    #[async_trait]
    impl Extension for Bad {
        fn name(&self) -> &str {
            "Bad_Name"
        }
        async fn mutate(
            &self,
            _: &Context,
            _: &Request,
            _: &Pod,
        ) -> Result<Mutation, ExtensionError> {
            Ok(Mutation::unchanged())
        }
    }
    assert!(err(Manager::builder().extension(Bad)).contains("DNS-1123"));
    assert!(err(Manager::builder().extension(Sticky).extension(Sticky)).contains("two extensions"));
    assert!(
        err(Manager::builder().extension(Sticky).timeout_seconds(31)).contains("between 1 and 30")
    );
    assert!(err(Manager::builder().extension(Sticky).url_mode("")).contains("needs a host"));
    assert!(Manager::builder().extension(Sticky).build().is_ok());
}

#[tokio::test]
async fn registering_a_url_with_port_0_is_refused_before_touching_the_cluster() {
    // Nothing listens at this address: the refusal comes first.
    let client =
        kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
    let manager = Manager::builder()
        .url_mode("127.0.0.1")
        .port(0)
        .extension(Sticky)
        .build()
        .unwrap();
    let err = manager.register(client.clone()).await.unwrap_err();
    assert!(
        matches!(err, eirinix_core::manager::ManagerError::NoPortToRegister),
        "{err}"
    );
    assert!(err.to_string().contains("--port"), "{err}");
    // Service mode registers the Service's port: the server's may be anything.
    let service = Manager::builder()
        .service("eirinix", "eirinix-system", 443)
        .port(0)
        .extension(Sticky)
        .build()
        .unwrap();
    assert_eq!(service.registration_port().unwrap(), 443);
    assert_eq!(
        Manager::builder()
            .url_mode("127.0.0.1")
            .port(4443)
            .extension(Sticky)
            .build()
            .unwrap()
            .registration_port()
            .unwrap(),
        4443
    );
}
