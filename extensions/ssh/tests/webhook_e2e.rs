//! The ssh webhook against a real kube-apiserver (eirinix-testenv), in URL mode on loopback.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{bounded, eventually, init_tracing, post_review};
use eirinix_core::Manager;
use eirinix_ssh::janitor::{JanitorOptions, run_janitor};
use eirinix_ssh::keys::{AppKeys, MasterKey};
use eirinix_ssh::{SshInjector, SshOptions};
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

const T: Duration = Duration::from_secs(20);

async fn plane() -> &'static ControlPlane {
    init_tracing();
    ControlPlane::shared()
        .await
        .expect("control plane (see eirinix-testenv README; scripts/provision.sh)")
}

fn labels(guid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cloudfoundry.org/source_type".to_owned(), "APP".to_owned()),
        ("cloudfoundry.org/guid".to_owned(), guid.to_owned()),
        ("cloudfoundry.org/app_guid".to_owned(), guid.to_owned()),
        ("cloudfoundry.org/process_type".to_owned(), "web".to_owned()),
    ])
}

fn statefulset(name: &str, guid: &str) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "labels": labels(guid)},
        "spec": {
            "replicas": 2, "serviceName": name,
            "selector": {"matchLabels": {"cloudfoundry.org/guid": guid}},
            "template": {
                "metadata": {"labels": labels(guid)},
                "spec": {"containers": [{"name": "opi", "image": "eirini/app:1",
                    "command": ["/lifecycle/launch"], "args": ["web"]}]}
            }
        }
    }))
    .unwrap()
}

/// The pod the StatefulSet controller would create (there is no controller manager here).
fn pod_of(sts: &StatefulSet, index: u32) -> Pod {
    let name = sts.metadata.name.clone().unwrap();
    let template = sts.spec.as_ref().unwrap().template.clone();
    let mut pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        ..Default::default()
    };
    pod.metadata.name = Some(format!("{name}-{index}"));
    pod.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name,
            uid: sts.metadata.uid.clone().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
    ]);
    pod
}

async fn ssh_secrets(client: &kube::Client, ns: &str, guid: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("cloudfoundry.org/guid={guid}")))
        .await
        .unwrap()
        .items
}

fn assert_injected(pod: &Pod, secret: &str) {
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().expect("init container");
    assert_eq!(init[0].name, "eirinix-ssh-install");
    let app = &spec.containers[0];
    assert_eq!(
        app.command.as_ref().unwrap(),
        &[
            "/eirinix/ssh/eirinix-sshd",
            "sshd",
            "--exec",
            "--",
            "/lifecycle/launch"
        ]
    );
    assert_eq!(app.args.as_ref().unwrap(), &["web"]);
    let env = app.env.as_ref().unwrap();
    for (var, key) in [
        ("EIRINIX_SSH_HOST_KEY", "host-key"),
        ("EIRINIX_SSH_AUTHORIZED_KEYS", "authorized-key"),
    ] {
        let e = env.iter().find(|e| e.name == var).unwrap();
        assert!(e.value.is_none());
        let r = e
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), (secret, key));
    }
    let json = serde_json::to_string(pod).unwrap();
    assert!(
        !json.contains("PRIVATE KEY"),
        "key material in the pod spec"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_and_keeps_one_secret_per_app() {
    bounded(async {
        let cp = plane().await;
        let client = cp.client().await.unwrap();
        let sys = cp.namespace("ssh-sys").await.unwrap();
        let ns = cp.namespace("ssh-apps").await.unwrap();
        let fp = unique_name("e2e-ssh");
        let injector = SshInjector::new(SshOptions::default());
        let metrics = injector.metrics().clone();
        let janitor = JanitorOptions {
            interval: Duration::from_millis(300),
            orphan_grace: Duration::from_secs(3600),
        };
        let running = Manager::builder()
            .fingerprint(&fp)
            .url_mode("127.0.0.1")
            .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(0)
            .webhook_namespace(&sys)
            .namespace(&ns)
            .shutdown_timeout(Duration::from_secs(2))
            .extension(injector)
            .task("ssh-janitor", move |ctx, cancel| {
                run_janitor(ctx, janitor, cancel)
            })
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .unwrap();
        running.wait_ready(T).await.unwrap();

        // Registration: NoneOnDryRun (dry-run requests reach it and create nothing), Ignore.
        let cfg = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get(&format!("{fp}-mutating-hook"))
            .await
            .unwrap();
        let hook = &cfg.webhooks.unwrap()[0];
        assert_eq!(hook.name, format!("ssh.{fp}.org"));
        assert_eq!(hook.side_effects, "NoneOnDryRun");
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));

        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

        // Several apps, two instances each, all admitted concurrently: one Secret per app.
        let mut apps = Vec::new();
        for i in 0..4 {
            let guid = format!("{}-guid", unique_name(&format!("app{i}")));
            let sts = sets
                .create(
                    &PostParams::default(),
                    &statefulset(&format!("app{i}"), &guid),
                )
                .await
                .unwrap();
            apps.push((guid, sts));
        }
        let creations = apps.iter().flat_map(|(_, sts)| {
            (0..2).map(|i| {
                let pods = pods.clone();
                let pod = pod_of(sts, i);
                async move { pods.create(&PostParams::default(), &pod).await }
            })
        });
        let created = futures::future::join_all(creations).await;
        for (n, result) in created.iter().enumerate() {
            let (guid, _) = &apps[n / 2];
            let pod = result.as_ref().expect("pod admitted");
            assert_injected(pod, &format!("eirinix-ssh-{guid}"));
        }
        for (guid, sts) in &apps {
            let secrets = ssh_secrets(&client, &ns, guid).await;
            assert_eq!(secrets.len(), 1, "one Secret for app {guid}");
            let secret = &secrets[0];
            assert_eq!(
                secret.metadata.name.as_deref(),
                Some(format!("eirinix-ssh-{guid}").as_str())
            );
            let owners = secret.metadata.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "StatefulSet");
            assert_eq!(owners[0].api_version, "apps/v1");
            assert_eq!(Some(&owners[0].uid), sts.metadata.uid.as_ref());
            AppKeys::from_secret(secret).expect("usable keys");
            // The keys are the ones the master key gives that app (what the proxy derives).
            let master = MasterKey::from_secret(&client, &sys, &format!("{fp}-ssh-master"), false)
                .await
                .expect("the master key Secret, made at first use");
            assert!(master.app_keys(guid).unwrap().matches_secret(secret));
        }
        assert_eq!(metrics.secrets_created(), 4);
        assert_eq!(metrics.secrets_reused(), 4);
        assert_eq!(metrics.injected(), 8);

        // Restarting an instance reuses the Secret unchanged.
        let (guid0, sts0) = &apps[0];
        let before = ssh_secrets(&client, &ns, guid0).await.remove(0);
        pods.delete("app0-0", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        eventually(T, "the pod to be gone", || async {
            pods.get_opt("app0-0")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        let again = pods
            .create(&PostParams::default(), &pod_of(sts0, 0))
            .await
            .unwrap();
        assert_injected(&again, &format!("eirinix-ssh-{guid0}"));
        let after = ssh_secrets(&client, &ns, guid0).await.remove(0);
        assert_eq!(after.metadata.uid, before.metadata.uid);
        assert_eq!(
            after.metadata.resource_version,
            before.metadata.resource_version
        );
        assert_eq!(after.data, before.data);

        // Dry run: the pod comes back mutated, and no Secret is created.
        let dry_guid = format!("{}-guid", unique_name("dry"));
        let dry_sts = sets
            .create(&PostParams::default(), &statefulset("dry", &dry_guid))
            .await
            .unwrap();
        let dry_pod = pods
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &pod_of(&dry_sts, 0),
            )
            .await
            .unwrap();
        assert_injected(&dry_pod, &format!("eirinix-ssh-{dry_guid}"));
        assert!(
            ssh_secrets(&client, &ns, &dry_guid).await.is_empty(),
            "dry run created a Secret"
        );
        assert!(pods.get_opt("dry-0").await.unwrap().is_none());

        // A container without an explicit command is admitted untouched (and counted).
        let mut bare = pod_of(&dry_sts, 1);
        bare.spec.as_mut().unwrap().containers[0].command = None;
        let bare = pods.create(&PostParams::default(), &bare).await.unwrap();
        assert!(bare.spec.as_ref().unwrap().init_containers.is_none());
        assert_eq!(bare.spec.unwrap().containers[0].command, None);
        assert_eq!(metrics.skipped_no_command(), 1);
        assert!(ssh_secrets(&client, &ns, &dry_guid).await.is_empty());

        // Deleting the StatefulSet removes its Secret (janitor; the garbage collector in a cluster).
        let (guid1, _) = &apps[1];
        sets.delete("app1", &DeleteParams::default()).await.unwrap();
        eventually(
            T,
            "the janitor to delete the Secret of the deleted app",
            || async {
                ssh_secrets(&client, &ns, guid1)
                    .await
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
        // ...and only that one.
        for (guid, _) in [&apps[0], &apps[2], &apps[3]] {
            assert_eq!(ssh_secrets(&client, &ns, guid).await.len(), 1);
        }
        running.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_owner_references_finds_its_statefulset_by_name() {
    bounded(async {
        let cp = plane().await;
        let client = cp.client().await.unwrap();
        let sys = cp.namespace("ssh-sys").await.unwrap();
        let ns = cp.namespace("ssh-apps").await.unwrap();
        let fp = unique_name("e2e-ssh-owner");
        let running = Manager::builder()
            .fingerprint(&fp)
            .url_mode("127.0.0.1")
            .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(0)
            .webhook_namespace(&sys)
            .namespace(&ns)
            .shutdown_timeout(Duration::from_secs(2))
            .extension(SshInjector::default())
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .unwrap();
        running.wait_ready(T).await.unwrap();
        let guid = format!("{}-guid", unique_name("named"));
        let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &statefulset("named", &guid))
            .await
            .unwrap();
        let mut pod = pod_of(&sts, 3);
        pod.metadata.owner_references = None;
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        assert_injected(&pod, &format!("eirinix-ssh-{guid}"));
        let secret = ssh_secrets(&client, &ns, &guid).await.remove(0);
        let owners = secret.metadata.owner_references.unwrap();
        assert_eq!(owners[0].name, "named");
        assert_eq!(Some(&owners[0].uid), sts.metadata.uid.as_ref());
        running.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensure_secret_creates_one_secret_and_never_fails() {
    bounded(async {
        let cp = plane().await;
        let client = cp.client().await.unwrap();
        let ns = cp.namespace("ssh-race").await.unwrap();
        let guid = format!("{}-guid", unique_name("race"));
        let name = format!("eirinix-ssh-{guid}");
        let outcomes = futures::future::join_all((0..8).map(|_| {
            let (client, ns, name, guid) = (client.clone(), ns.clone(), name.clone(), guid.clone());
            async move {
                let keys = MasterKey::from_bytes(&[9; 32])
                    .unwrap()
                    .app_keys(&guid)
                    .unwrap();
                eirinix_ssh::webhook::ensure_secret(&client, &ns, &name, &guid, None, &keys).await
            }
        }))
        .await;
        let outcomes: Vec<_> = outcomes
            .into_iter()
            .map(|o| o.expect("\"already exists\" is never an error"))
            .collect();
        use eirinix_ssh::webhook::SecretOutcome::*;
        assert_eq!(
            outcomes.iter().filter(|o| **o == Created).count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(
            outcomes.iter().filter(|o| **o == Reused).count(),
            7,
            "{outcomes:?}"
        );
        assert_eq!(ssh_secrets(&client, &ns, &guid).await.len(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_removes_orphans_only_when_their_app_has_no_pod() {
    bounded(async {
        let cp = plane().await;
        let client = cp.client().await.unwrap();
        let ns = cp.namespace("ssh-orphans").await.unwrap();
        let (alive, gone) = (
            format!("{}-guid", unique_name("alive")),
            format!("{}-guid", unique_name("gone")),
        );
        for guid in [&alive, &gone] {
            let name = format!("eirinix-ssh-{guid}");
            let keys = AppKeys::generate(guid).unwrap();
            eirinix_ssh::webhook::ensure_secret(&client, &ns, &name, guid, None, &keys)
                .await
                .unwrap();
        }
        let template = statefulset("alive", &alive).spec.unwrap().template;
        let mut pod = Pod {
            metadata: template.metadata.unwrap(),
            spec: template.spec,
            ..Default::default()
        };
        pod.metadata.name = Some("alive-0".into());
        Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        let young = JanitorOptions {
            interval: Duration::from_secs(1),
            orphan_grace: Duration::from_secs(3600),
        };
        let sweep = eirinix_ssh::janitor::sweep(&client, Some(&ns), &young)
            .await
            .unwrap();
        assert_eq!(sweep, 0, "young orphans are kept");
        let old = JanitorOptions {
            orphan_grace: Duration::ZERO,
            ..young
        };
        let sweep = eirinix_ssh::janitor::sweep(&client, Some(&ns), &old)
            .await
            .unwrap();
        assert_eq!(sweep, 1);
        assert!(ssh_secrets(&client, &ns, &gone).await.is_empty());
        assert_eq!(
            ssh_secrets(&client, &ns, &alive).await.len(),
            1,
            "its app has a pod"
        );
    })
    .await
}

/// Issue item 5: any client reaching the webhook port could have the ssh webhook create key
/// Secrets in namespaces it names. Secrets are created only in the namespace the manager serves
/// (with no namespace: any but the excluded ones, the webhook's own among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_review_creates_no_secret_outside_the_served_namespaces() {
    bounded(async {
        let cp = plane().await;
        let client = cp.client().await.unwrap();
        let sys = cp.namespace("ssh-forge-sys").await.unwrap();
        let apps = cp.namespace("ssh-forge-apps").await.unwrap();
        let elsewhere = cp.namespace("ssh-forge-other").await.unwrap();
        let pod_json = |guid: &str| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "forged-0", "labels": labels(guid)},
                "spec": {"containers": [{"name": "opi", "image": "eirini/app:1", "command": ["/bin/app"]}]}
            })
        };
        for namespace in [Some(apps.clone()), None] {
            let injector = SshInjector::new(SshOptions::default());
            let metrics = injector.metrics().clone();
            let mut builder = Manager::builder()
                .fingerprint(unique_name("forge"))
                .url_mode("127.0.0.1")
                .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .port(0)
                .webhook_namespace(&sys)
                .shutdown_timeout(Duration::from_secs(2))
                .extension(injector);
            if let Some(ns) = &namespace {
                builder = builder.namespace(ns);
            }
            let running = builder
                .build()
                .unwrap()
                .start(client.clone())
                .await
                .unwrap();
            running.wait_ready(T).await.unwrap();
            let addr = running.local_addr();
            // Not served: another namespace (when one is configured), the webhook's own,
            // kube-system.
            let mut refused = vec![sys.clone(), "kube-system".to_owned()];
            if namespace.is_some() {
                refused.push(elsewhere.clone());
            }
            for ns in &refused {
                let guid = format!("{}-guid", unique_name("forged"));
                let response = post_review(addr, "/ssh", ns, &pod_json(&guid)).await;
                assert!(
                    ssh_secrets(&client, ns, &guid).await.is_empty(),
                    "a forged review made a Secret in {ns} (manager namespace {namespace:?})"
                );
                let r = &response["response"];
                assert_eq!(r["allowed"], true, "{response}");
                assert!(r.get("patch").is_none(), "not mutated: {response}");
                assert!(
                    r["warnings"][0]
                        .as_str()
                        .unwrap_or_default()
                        .contains("is not served by this webhook"),
                    "{response}"
                );
            }
            // The namespace it serves: injected, the Secret made.
            let served = namespace.clone().unwrap_or_else(|| elsewhere.clone());
            let guid = format!("{}-guid", unique_name("served"));
            let response = post_review(addr, "/ssh", &served, &pod_json(&guid)).await;
            assert!(response["response"]["patch"].is_string(), "{response}");
            assert_eq!(ssh_secrets(&client, &served, &guid).await.len(), 1);
            assert_eq!(metrics.skipped_namespace(), refused.len() as u64);
            running.shutdown().await;
        }
    })
    .await
}

/// A Secret of ours holding other keys (made before the master key, or under another one) gets
/// the derived keys; a Secret of that name without our label is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_secret_rekeys_its_own_secrets_and_leaves_foreign_ones_alone() {
    use eirinix_ssh::webhook::{SecretOutcome, ensure_secret};
    bounded(async {
        let cp = plane().await;
        let client = cp.client().await.unwrap();
        let ns = cp.namespace("ssh-rekey").await.unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let master = MasterKey::from_bytes(&[3; 32]).unwrap();

        let guid = format!("{}-guid", unique_name("old"));
        let name = format!("eirinix-ssh-{guid}");
        let random = AppKeys::generate(&guid).unwrap();
        assert_eq!(
            ensure_secret(&client, &ns, &name, &guid, None, &random)
                .await
                .unwrap(),
            SecretOutcome::Created
        );
        let derived = master.app_keys(&guid).unwrap();
        assert_eq!(
            ensure_secret(&client, &ns, &name, &guid, None, &derived)
                .await
                .unwrap(),
            SecretOutcome::Rekeyed
        );
        assert!(derived.matches_secret(&secrets.get(&name).await.unwrap()));
        assert_eq!(
            ensure_secret(&client, &ns, &name, &guid, None, &derived)
                .await
                .unwrap(),
            SecretOutcome::Reused
        );

        let foreign_guid = format!("{}-guid", unique_name("foreign"));
        let foreign_name = format!("eirinix-ssh-{foreign_guid}");
        let foreign = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(foreign_name.clone()),
                ..Default::default()
            },
            string_data: Some([("password".to_owned(), "hunter2".to_owned())].into()),
            ..Default::default()
        };
        let before = secrets
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap();
        let keys = master.app_keys(&foreign_guid).unwrap();
        assert_eq!(
            ensure_secret(&client, &ns, &foreign_name, &foreign_guid, None, &keys)
                .await
                .unwrap(),
            SecretOutcome::Foreign
        );
        let after = secrets.get(&foreign_name).await.unwrap();
        assert_eq!(
            after.metadata.resource_version,
            before.metadata.resource_version
        );
    })
    .await
}
