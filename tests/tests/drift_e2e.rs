//! Drift repair of the webhook configuration against a real apiserver: a freshly applied
//! configuration (apiserver defaults filled in) is not drift, and any change to an entry eirinix
//! owns is repaired and counted, including fields eirinix never sets (a `matchCondition`, an
//! extra selector term), which server-side apply alone would leave in place.

mod common;

use std::time::Duration;

use common::*;
use eirinix_core::registration::{differences, drifted};
use eirinix_core::{
    Context, Extension, ExtensionError, Mutation, Operation, ReinvocationPolicy, Request,
    SideEffects, WebhookOverrides, async_trait,
};
use k8s_openapi::api::admissionregistration::v1::{MatchCondition, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// An extension that overrides every registration setting it can.
struct Tuned;

#[async_trait]
impl Extension for Tuned {
    fn name(&self) -> &str {
        "tuned"
    }

    async fn mutate(&self, _: &Context, _: &Request, _: &Pod) -> Result<Mutation, ExtensionError> {
        Ok(Mutation::unchanged())
    }

    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides {
            failure_policy: Some(eirinix_core::FailurePolicy::Ignore),
            operations: Some(vec![Operation::Create, Operation::Update]),
            reinvocation_policy: Some(ReinvocationPolicy::IfNeeded),
            object_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "cloudfoundry.org/app_guid".into(),
                        operator: "Exists".into(),
                        values: None,
                    },
                ]),
            }),
            match_conditions: vec![MatchCondition {
                name: "not-dry".into(),
                expression: "!has(object.metadata.labels) || !('skip' in object.metadata.labels)"
                    .into(),
            }],
            timeout_seconds: Some(7),
            side_effects: Some(SideEffects::NoneOnDryRun),
        }
    }
}

fn builder(fp: &str, sys: &str, ns: &str) -> eirinix_core::ManagerBuilder {
    manager(fp, sys, ns).repair_interval(Duration::from_millis(300))
}

/// What the manager of `builder` registers for its bound `port` and served CA.
fn desired(
    builder: eirinix_core::ManagerBuilder,
    running: &eirinix_core::RunningManager,
) -> MutatingWebhookConfiguration {
    let ca = running.published().unwrap().ca_bundle;
    builder
        .extension(Sticky)
        .extension(Tuned)
        .build()
        .unwrap()
        .webhook_configuration(ca.as_bytes(), running.local_addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_entries_are_compared_whole_and_repaired() {
    let (client, sys, ns, fp) = setup("drift-whole", "e2e-whole").await;
    let running = builder(&fp, &sys, &ns)
        .extension(Sticky)
        .extension(Tuned)
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    let want = desired(builder(&fp, &sys, &ns), &running);
    let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let name = config_name(&fp);

    // As stored by the apiserver (defaults filled in): not drift.
    let live = cfgs.get(&name).await.unwrap();
    assert!(
        !drifted(&want, &live),
        "a freshly applied configuration counts as drift: {:?}",
        differences(&want, &live)
    );

    let sticky_hook = format!("sticky.{fp}.org");
    let tuned_hook = format!("tuned.{fp}.org");
    let index = |cfg: &MutatingWebhookConfiguration, hook: &str| {
        cfg.webhooks
            .as_ref()
            .unwrap()
            .iter()
            .position(|w| w.name == hook)
            .unwrap()
    };
    // Edits by someone else (another field manager), each through the API as a user would make
    // it: a JSON patch guarded by the entry's name.
    let edits: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "a matchCondition added to an entry without any",
            &sticky_hook,
            json!({"op": "add", "path": "/matchConditions", "value": [{"name": "nobody", "expression": "false"}]}),
        ),
        (
            "a matchCondition added next to ours",
            &tuned_hook,
            json!({"op": "add", "path": "/matchConditions/-", "value": {"name": "nobody", "expression": "false"}}),
        ),
        (
            "a term added to the object selector",
            &sticky_hook,
            json!({"op": "add", "path": "/objectSelector/matchLabels/disabled-by", "value": "someone"}),
        ),
        (
            "a term added to the namespace selector",
            &tuned_hook,
            json!({"op": "add", "path": "/namespaceSelector/matchExpressions/-", "value": {"key": "nope", "operator": "Exists"}}),
        ),
        (
            "the timeout changed",
            &tuned_hook,
            json!({"op": "replace", "path": "/timeoutSeconds", "value": 30}),
        ),
        (
            "an operation removed from a rule",
            &tuned_hook,
            json!({"op": "replace", "path": "/rules/0/operations", "value": ["UPDATE"]}),
        ),
        (
            "the reinvocation policy changed",
            &sticky_hook,
            json!({"op": "replace", "path": "/reinvocationPolicy", "value": "IfNeeded"}),
        ),
    ];
    let editor = PatchParams {
        field_manager: Some("someone-else".into()),
        ..Default::default()
    };
    for (n, (what, hook, op)) in edits.into_iter().enumerate() {
        let live = cfgs.get(&name).await.unwrap();
        let i = index(&live, hook);
        let mut op = op;
        let path = format!("/webhooks/{i}{}", op["path"].as_str().unwrap());
        op["path"] = json!(path);
        let patch = json_patch::Patch(
            serde_json::from_value(json!([
                {"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook},
                op
            ]))
            .unwrap(),
        );
        let repairs = running.metrics().config_repairs();
        assert_eq!(repairs, n as u64, "repairs before: {what}");
        let edited = cfgs
            .patch(&name, &editor, &Patch::<()>::Json(patch))
            .await
            .unwrap();
        assert!(drifted(&want, &edited), "{what}: the edit is drift");
        let started = tokio::time::Instant::now();
        eventually(
            Duration::from_secs(15),
            &format!("{what}: repaired"),
            || async {
                let live = cfgs.get(&name).await.unwrap();
                (!drifted(&want, &live)).then_some(())
            },
        )
        .await;
        eventually(
            Duration::from_secs(5),
            &format!("{what}: the repair counted"),
            || async { (running.metrics().config_repairs() > repairs).then_some(()) },
        )
        .await;
        eprintln!("{what}: repaired after {:?}", started.elapsed());
    }
    assert!(
        sticky(&admit(&client, &ns, &app_pod("after-repairs")).await).is_some(),
        "admission works after the repairs"
    );
    assert_eq!(
        running.metrics().config_repairs(),
        7,
        "one repair per edit, none for the apiserver's defaults"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_managers_webhook_entry_is_left_alone() {
    let (client, sys, ns, fp) = setup("drift-foreign", "e2e-foreign").await;
    let running = start_ready(builder(&fp, &sys, &ns), &client).await;
    let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let name = config_name(&fp);
    let live = cfgs.get(&name).await.unwrap();
    let mut foreign = live.webhooks.as_ref().unwrap()[0].clone();
    foreign.name = format!("foreign.{fp}.example");
    foreign.failure_policy = Some("Ignore".into());
    foreign.object_selector = Some(LabelSelector {
        match_labels: Some([("never".to_owned(), "matches".to_owned())].into()),
        match_expressions: None,
    });
    let patch = json_patch::Patch(
        serde_json::from_value(json!([{"op": "add", "path": "/webhooks/-", "value": foreign}]))
            .unwrap(),
    );
    let editor = PatchParams {
        field_manager: Some("someone-else".into()),
        ..Default::default()
    };
    cfgs.patch(&name, &editor, &Patch::<()>::Json(patch))
        .await
        .unwrap();
    // Then an owned entry is edited: the repair restores it and keeps the foreign entry.
    let op = json!([
        {"op": "test", "path": "/webhooks/0/name", "value": format!("sticky.{fp}.org")},
        {"op": "add", "path": "/webhooks/0/matchConditions", "value": [{"name": "nobody", "expression": "false"}]}
    ]);
    cfgs.patch(
        &name,
        &editor,
        &Patch::<()>::Json(serde_json::from_value(op).unwrap()),
    )
    .await
    .unwrap();
    let repaired = eventually(Duration::from_secs(15), "the edit repaired", || async {
        let live = cfgs.get(&name).await.unwrap();
        let hooks = live.webhooks.clone().unwrap();
        hooks[0].match_conditions.is_none().then_some(hooks)
    })
    .await;
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert_eq!(repaired[1].name, format!("foreign.{fp}.example"));
    assert_eq!(repaired[1].failure_policy.as_deref(), Some("Ignore"));
    assert!(sticky(&admit(&client, &ns, &app_pod("with-foreign")).await).is_some());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_restores_owned_entries_with_only_the_patch_verb() {
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
    };
    use kube::api::{ObjectMeta, PostParams};

    let (admin, sys, ns, fp) = setup("drift-split", "e2e-split").await;
    // The chart's register Job: Secrets in its namespace; on webhook configurations only
    // create, and get and patch (no update).
    let token = eirinix_testenv::support::service_account_token(
        &admin,
        &sys,
        "register",
        vec![eirinix_testenv::support::core_rule(
            "secrets",
            &["get", "create", "update"],
        )],
    )
    .await;
    let role = format!("{fp}-register");
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: ObjectMeta {
                    name: Some(role.clone()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["admissionregistration.k8s.io".into()]),
                    resources: Some(vec!["mutatingwebhookconfigurations".into()]),
                    verbs: vec!["create".into(), "get".into(), "patch".into()],
                    ..Default::default()
                }]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(role.clone()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: role.clone(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "register".into(),
                    namespace: Some(sys.clone()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    let mut config = plane().await.config().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let job = kube::Client::try_from(config).unwrap();
    let manager = manager(&fp, &sys, &ns)
        .register_webhook(false)
        .port(4443)
        .extension(Sticky)
        .build()
        .unwrap();
    // The apiserver's RBAC authorizer sees the new binding through its informer: until then the
    // ServiceAccount is refused (403).
    eirinix_testenv::support::retry_while_forbidden("registering with only the patch verb", || {
        manager.register(job.clone())
    })
    .await;
    let cfgs = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    let name = config_name(&fp);
    let op = json!([
        {"op": "add", "path": "/webhooks/0/matchConditions", "value": [{"name": "nobody", "expression": "false"}]},
        {"op": "replace", "path": "/webhooks/0/timeoutSeconds", "value": 30}
    ]);
    let editor = PatchParams {
        field_manager: Some("someone-else".into()),
        ..Default::default()
    };
    cfgs.patch(
        &name,
        &editor,
        &Patch::<()>::Json(serde_json::from_value(op).unwrap()),
    )
    .await
    .unwrap();
    // Registering again (helm upgrade) restores the entry as a whole.
    manager.register(job).await.unwrap();
    let live = cfgs.get(&name).await.unwrap();
    let hook = &live.webhooks.as_ref().unwrap()[0];
    assert_eq!(hook.match_conditions, None, "{hook:?}");
    assert_eq!(hook.timeout_seconds, Some(10), "{hook:?}");
}
