//! Both example webhooks through a real kube-apiserver: the StatefulSet validator (registered in
//! a ValidatingWebhookConfiguration that is repaired when deleted or edited) and the Greeting
//! mutator (a custom resource).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use any_kind::{DEFAULTED, Greeting, GreetingDefaults, GreetingSpec, MemoryLimitRequired};
use eirinix_core::{Manager, ManagerBuilder};
use eirinix_testenv::support::{eventually, init_tracing};
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// Anything the apiserver or the manager does on its own (repairs, CRD establishment).
const WAIT: Duration = Duration::from_secs(30);

async fn plane() -> (&'static ControlPlane, kube::Client) {
    init_tracing();
    let cp = ControlPlane::shared()
        .await
        .expect("the control plane (kube-apiserver and etcd; see the eirinix-testenv README)");
    let client = cp
        .client()
        .await
        .expect("an admin client of the control plane");
    (cp, client)
}

/// A manager for the apps of `apps`, URL mode on 127.0.0.1, a fingerprint of its own.
fn manager(fingerprint: &str, system: &str, apps: &str) -> ManagerBuilder {
    Manager::builder()
        .fingerprint(fingerprint)
        .url_mode("127.0.0.1")
        .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(0)
        .webhook_namespace(system)
        .namespace(apps)
        .repair_interval(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(2))
}

/// Start `builder` and wait (20 s at most) until it is ready.
async fn start_ready(
    builder: ManagerBuilder,
    client: &kube::Client,
) -> eirinix_core::RunningManager {
    let running = builder
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    running
}

/// An Eirini-shaped app StatefulSet (labelled as an app) whose container has `limits`.
fn app_statefulset(name: &str, limits: serde_json::Value) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"cloudfoundry.org/source_type": "APP"}},
        "spec": {
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "cloudfoundry.org/source_type": "APP"}},
                "spec": {"containers": [{
                    "name": "opi", "image": "app:1",
                    "resources": {"limits": limits}
                }]}
            }
        }
    }))
    .expect("a valid StatefulSet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_statefulsets_without_a_memory_limit_are_refused_and_the_configuration_is_kept() {
    let (cp, client) = plane().await;
    let (sys, apps) = (
        cp.namespace("any-kind-sys").await.unwrap(),
        cp.namespace("any-kind-apps").await.unwrap(),
    );
    let fp = unique_name("any-kind-sts");
    let running = start_ready(
        manager(&fp, &sys, &apps).validator(MemoryLimitRequired),
        &client,
    )
    .await;

    // Registered in a ValidatingWebhookConfiguration of its own, for apps/v1 statefulsets.
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let name = format!("{fp}-validating-hook");
    let config = configs.get(&name).await.unwrap();
    let hook = &config.webhooks.as_deref().unwrap()[0];
    assert_eq!(hook.name, format!("memory-limit.{fp}.org"));
    let rule = &hook.rules.as_deref().unwrap()[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&["apps".to_owned()][..]));
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["statefulsets".to_owned()][..])
    );
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &apps);
    let pp = PostParams::default();
    match sets
        .create(
            &pp,
            &app_statefulset("no-limit", serde_json::json!({"cpu": "1"})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains("every container of an app needs a memory limit; missing in: opi"),
                "{}",
                s.message
            );
        }
        other => panic!("an app without a memory limit must be refused, got {other:?}"),
    }
    sets.create(
        &pp,
        &app_statefulset("limited", serde_json::json!({"memory": "256Mi"})),
    )
    .await
    .expect("an app with a memory limit is admitted");
    // Not an app (no source_type label): never reaches the webhook.
    let mut plain = app_statefulset("not-an-app", serde_json::json!({}));
    plain.metadata.labels = None;
    sets.create(&pp, &plain)
        .await
        .expect("a StatefulSet that is not an app is admitted");
    let metrics = running.metrics().render();
    assert!(
        metrics.contains(r#"eirinix_reviews_total{extension="memory-limit",outcome="denied"} 1"#),
        "{metrics}"
    );

    // Drift repair: an edited failure policy is put back, a deleted configuration re-created.
    configs
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(serde_json::json!([
                    {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    eventually(WAIT, "the edited failure policy to be repaired", || {
        let (configs, name) = (configs.clone(), name.clone());
        async move {
            let c = configs.get(&name).await.ok()?;
            (c.webhooks?.first()?.failure_policy.as_deref() == Some("Fail")).then_some(())
        }
    })
    .await;
    configs
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the deleted configuration to be re-created", || {
        let (configs, name) = (configs.clone(), name.clone());
        async move { configs.get_opt(&name).await.ok()?.map(|_| ()) }
    })
    .await;
    running.shutdown().await;

    // Uninstall removes the validating configuration too.
    let removed = manager(&fp, &sys, &apps)
        .validator(MemoryLimitRequired)
        .build()
        .unwrap()
        .remove_configuration(client.clone())
        .await
        .unwrap();
    assert!(removed);
    assert!(configs.get_opt(&name).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greetings_without_a_language_get_the_default_one() {
    let (cp, client) = plane().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(any_kind::greeting_crd()).unwrap();
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the Greeting CRD: {e}"),
    }
    eventually(WAIT, "the Greeting CRD to be established", || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("greetings.examples.eirinix.org").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
    let (sys, apps) = (
        cp.namespace("greet-sys").await.unwrap(),
        cp.namespace("greet-apps").await.unwrap(),
    );
    let defaults = GreetingDefaults {
        language: "en".into(),
    };
    let running = start_ready(
        manager(&unique_name("any-kind-cr"), &sys, &apps).mutator(defaults),
        &client,
    )
    .await;

    let greetings: Api<Greeting> = Api::namespaced(client.clone(), &apps);
    let greeting = |name: &str, language: Option<&str>| {
        let spec = GreetingSpec {
            message: Some("hello".into()),
            language: language.map(Into::into),
        };
        Greeting::new(name, spec)
    };
    let pp = PostParams::default();
    let defaulted = greetings
        .create(&pp, &greeting("plain", None))
        .await
        .unwrap();
    assert_eq!(defaulted.spec.language.as_deref(), Some("en"));
    assert_eq!(defaulted.spec.message.as_deref(), Some("hello"), "kept");
    assert_eq!(
        defaulted
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULTED))
            .map(String::as_str),
        Some("language")
    );
    let french = greetings
        .create(&pp, &greeting("french", Some("fr")))
        .await
        .unwrap();
    assert_eq!(french.spec.language.as_deref(), Some("fr"), "left alone");
    assert!(french.metadata.annotations.is_none());
    let metrics = running.metrics().render();
    assert!(
        metrics.contains(
            r#"eirinix_reviews_total{extension="greeting-defaults",outcome="patched"} 1"#
        ),
        "{metrics}"
    );
    running.shutdown().await;
}
