//! End-to-end tests of the rootfs extension against a real kube-apiserver.
//!
//! No controller manager runs: [`common::Simulator`] plays the StatefulSet controller by
//! reporting rollouts complete through the status subresource.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use eirinix_core::Manager;
use eirinix_rootfs::execute::{Executor, RollOutcome};
use eirinix_rootfs::options::{DEFAULT_OPT_OUT_ANNOTATION, ROLL_STARTED_ANNOTATION};
use eirinix_rootfs::plan::change_for;
use eirinix_rootfs::{Action, Gate, NamespacedName, ROOTFS_LABEL, RootfsOptions, RootfsState};
use eirinix_testenv::unique_name;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn sts_api(client: &kube::Client, ns: &str) -> Api<StatefulSet> {
    Api::namespaced(client.clone(), ns)
}

async fn events(client: &kube::Client, ns: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.regarding.and_then(|r| r.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_converge_with_at_most_n_in_flight() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-roll").await.unwrap();
    let names = ["app-a", "app-b", "app-c", "app-d", "app-e"];
    for n in names {
        create(&client, &ns, app_sts(n, "1.0")).await;
    }
    create(&client, &ns, app_sts("app-current", "2.0")).await;
    let mut other = app_sts("not-an-app", "1.0");
    other.metadata.labels = None;
    let other = create(&client, &ns, other).await;

    let sim = Simulator::start(client.clone(), &ns, Duration::from_millis(400));
    let cancel = CancellationToken::new();
    let state = RootfsState::new(options(&ns)).unwrap();
    let started = Instant::now();
    let roller = tokio::spawn(eirinix_rootfs::engine::run_with_state(
        state.clone(),
        client.clone(),
        cancel.clone(),
    ));
    converged(&client, &ns, &names, "2.0").await;
    let took = started.elapsed();
    let max = sim.stop().await;
    eprintln!("5 StatefulSets rolled, max 2 in flight, 400 ms rollouts: {took:?}");
    assert_eq!(max, 2, "at most N=2 in flight, and the slots are used");

    let api = sts_api(&client, &ns).await;
    for n in names {
        let s = api.get(n).await.unwrap();
        let spec = s.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[1].image.as_deref(),
            Some("registry.test/sidecar:1")
        );
        assert_eq!(
            spec.init_containers.as_ref().unwrap()[0].image.as_deref(),
            Some("registry.test/eirini/downloader:7")
        );
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].name, "PORT");
        assert_eq!(s.metadata.labels.as_ref().unwrap()[ROOTFS_LABEL], "2.0");
        assert!(
            s.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(ROLL_STARTED_ANNOTATION)
        );
    }
    let current = api.get("app-current").await.unwrap();
    assert_eq!(
        current.metadata.generation,
        Some(1),
        "already current: untouched"
    );
    let untouched = api.get("not-an-app").await.unwrap();
    assert_eq!(
        untouched.metadata.resource_version,
        other.metadata.resource_version
    );

    let mut started_events = events(&client, &ns, "RootfsRollStarted").await;
    started_events.sort();
    assert_eq!(started_events, names);
    let m = eventually(Duration::from_secs(5), "completions counted", || {
        let text = eirinix_core::metrics::render(state.metrics().clone());
        async move {
            text.contains("eirinix_rootfs_rolls_completed_total 5")
                .then_some(text)
        }
    })
    .await;
    for line in [
        "eirinix_rootfs_desired_version_info{version=\"2.0\"} 1",
        "eirinix_rootfs_apps{version=\"2.0\"} 6",
        "eirinix_rootfs_rolls_in_progress 0",
        "eirinix_rootfs_rolls_started_total 5",
        "eirinix_rootfs_roll_failures_total{reason=\"timeout\"} 0",
    ] {
        assert!(m.contains(line), "missing {line:?}:\n{m}");
    }
    cancel.cancel();
    roller.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_between_read_and_patch_are_preserved() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let other = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-race").await.unwrap();
    let api = sts_api(&client, &ns).await;
    let their_api = sts_api(&other, &ns).await;
    let opts = options(&ns);
    let desired = opts.static_desired().unwrap().unwrap();
    let executor = Executor::new(client.clone(), &opts);

    // 1. Another client edits other fields after our read: both edits survive.
    let read = create(&client, &ns, app_sts("edited", "1.0")).await;
    let change = change_for(&read, &desired).unwrap();
    let theirs = json!({
        "metadata": {"annotations": {"eirini/new": "x"}, "labels": {"eirini/team": "a"}},
        "spec": {"replicas": 3, "template": {"metadata": {"annotations": {"eirini/restarted": "now"}},
            "spec": {"containers": [{"name": "opi", "env": [{"name": "NEW_ENV", "value": "1"}]}]}}}
    });
    their_api
        .patch(
            "edited",
            &PatchParams::default(),
            &Patch::Strategic(&theirs),
        )
        .await
        .unwrap();
    let outcome = executor.roll(&read, &change).await;
    assert!(matches!(outcome, RollOutcome::Rolled(_)), "{outcome:?}");
    let now = api.get("edited").await.unwrap();
    let spec = now.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let tmpl = &spec.template;
    assert_eq!(
        tmpl.metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["eirini/restarted"],
        "now"
    );
    let env: Vec<_> = tmpl.spec.as_ref().unwrap().containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&"NEW_ENV") && env.contains(&"PORT"), "{env:?}");
    assert_eq!(
        now.metadata.annotations.as_ref().unwrap()["eirini/new"],
        "x"
    );
    assert_eq!(now.metadata.labels.as_ref().unwrap()["eirini/team"], "a");
    let (v, image, _) = state_of(&now);
    assert_eq!(
        (v.as_deref(), image.as_str()),
        (Some("2.0"), format!("{REPO}:2.0").as_str())
    );

    // 2. Another client changes the image we change: the patch is refused, their image stays.
    let read = create(&client, &ns, app_sts("reimaged", "1.0")).await;
    let change = change_for(&read, &desired).unwrap();
    let theirs = json!({"spec": {"template": {"spec": {"containers": [{"name": "opi", "image": format!("{REPO}:1.5")}]}}}});
    their_api
        .patch(
            "reimaged",
            &PatchParams::default(),
            &Patch::Strategic(&theirs),
        )
        .await
        .unwrap();
    let outcome = executor.roll(&read, &change).await;
    assert!(
        matches!(outcome, RollOutcome::Conflict(_)),
        "a failed test op is a conflict, got {outcome:?}"
    );
    let now = api.get("reimaged").await.unwrap();
    let (v, image, _) = state_of(&now);
    assert_eq!(
        (v.as_deref(), image.as_str()),
        (Some("1.0"), format!("{REPO}:1.5").as_str())
    );

    // 3. No annotations at all: the map is created (the `test null` guard passes on a real apiserver)...
    let mut bare = app_sts("bare", "1.0");
    bare.metadata.annotations = None;
    let read = create(&client, &ns, bare).await;
    let outcome = executor
        .roll(&read, &change_for(&read, &desired).unwrap())
        .await;
    assert!(matches!(outcome, RollOutcome::Rolled(_)), "{outcome:?}");
    assert!(
        api.get("bare")
            .await
            .unwrap()
            .metadata
            .annotations
            .unwrap()
            .contains_key(ROLL_STARTED_ANNOTATION)
    );
    // ... and a map created by someone else meanwhile is not replaced.
    let mut bare = app_sts("bare-raced", "1.0");
    bare.metadata.annotations = None;
    let read = create(&client, &ns, bare).await;
    their_api
        .patch(
            "bare-raced",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"eirini/first": "y"}}})),
        )
        .await
        .unwrap();
    let outcome = executor
        .roll(&read, &change_for(&read, &desired).unwrap())
        .await;
    assert!(matches!(outcome, RollOutcome::Conflict(_)), "{outcome:?}");
    assert_eq!(
        api.get("bare-raced")
            .await
            .unwrap()
            .metadata
            .annotations
            .unwrap()["eirini/first"],
        "y"
    );

    // The roller re-plans from what is there now and converges everything.
    let sim = Simulator::start(client.clone(), &ns, Duration::from_millis(100));
    let report = eirinix_rootfs::roll_once(
        RootfsOptions {
            max_in_flight: 4,
            ..opts
        },
        client.clone(),
    )
    .await
    .unwrap();
    sim.stop().await;
    assert!(report.is_clean(), "{report}");
    let mut rolled: Vec<_> = report.rolled.iter().map(|k| k.name.as_str()).collect();
    rolled.sort();
    assert_eq!(rolled, ["bare-raced", "reimaged"], "{report}");
    converged(
        &client,
        &ns,
        &["edited", "reimaged", "bare", "bare-raced"],
        "2.0",
    )
    .await;
    let now = api.get("bare-raced").await.unwrap();
    assert_eq!(now.metadata.annotations.unwrap()["eirini/first"], "y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_is_respected_and_dry_run_changes_nothing() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-optout").await.unwrap();
    let mut out = app_sts("app-a", "1.0");
    out.metadata
        .annotations
        .get_or_insert_default()
        .insert(DEFAULT_OPT_OUT_ANNOTATION.into(), "true".into());
    create(&client, &ns, out).await;
    create(&client, &ns, app_sts("app-b", "1.0")).await;
    create(&client, &ns, app_sts("app-c", "1.0")).await;
    let api = sts_api(&client, &ns).await;
    let before = api.list(&ListParams::default()).await.unwrap();

    let report = eirinix_rootfs::roll_once(
        RootfsOptions {
            dry_run: true,
            max_in_flight: 1,
            ..options(&ns)
        },
        client.clone(),
    )
    .await
    .unwrap();
    let printed = report.to_string();
    eprintln!("{printed}");
    assert!(report.is_clean());
    assert!(report.rolled.is_empty());
    let plan = report.plan.as_ref().expect("dry run returns the plan");
    let actions: Vec<_> = plan
        .entries
        .iter()
        .map(|e| (e.key.name.as_str(), &e.action))
        .collect();
    assert!(matches!(actions[0], ("app-a", Action::OptedOut)));
    assert!(matches!(actions[1], ("app-b", Action::Roll(_))));
    assert!(matches!(actions[2], ("app-c", Action::Wait(_))));
    assert!(
        printed.contains("rootfs 2.0 (dry run): 0 rolled"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("ROLL     {ns}/app-b")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("{REPO}:1.0 -> {REPO}:2.0")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("SKIP     {ns}/app-a")),
        "{printed}"
    );
    let after = api.list(&ListParams::default()).await.unwrap();
    let rv = |l: &kube::api::ObjectList<StatefulSet>| {
        l.items
            .iter()
            .map(|s| s.metadata.resource_version.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(rv(&before), rv(&after), "dry run changed nothing");
    assert!(events(&client, &ns, "RootfsRollStarted").await.is_empty());

    let sim = Simulator::start(client.clone(), &ns, Duration::from_millis(200));
    let report = eirinix_rootfs::roll_once(options(&ns), client.clone())
        .await
        .unwrap();
    sim.stop().await;
    assert!(report.is_clean(), "{report}");
    let mut completed: Vec<_> = report.completed.iter().map(|k| k.name.as_str()).collect();
    completed.sort();
    assert_eq!(completed, ["app-b", "app-c"]);
    converged(&client, &ns, &["app-b", "app-c"], "2.0").await;
    let a = api.get("app-a").await.unwrap();
    assert_eq!(
        a.metadata.resource_version, before.items[0].metadata.resource_version,
        "opted out: untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_gate_holds_rolling_until_ready() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-gate").await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let registry: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "registry"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "registry"}},
            "template": {"metadata": {"labels": {"app": "registry"}},
                "spec": {"containers": [{"name": "registry", "image": "registry:2"}]}}}
    }))
    .unwrap();
    let registry = deployments
        .create(&PostParams::default(), &registry)
        .await
        .unwrap();
    create(&client, &ns, app_sts("app-a", "1.0")).await;
    create(&client, &ns, app_sts("app-b", "1.0")).await;

    let sim = Simulator::start(client.clone(), &ns, Duration::from_millis(100));
    let state = RootfsState::new(RootfsOptions {
        gate: Gate::Deployment {
            namespace: ns.clone(),
            name: "registry".into(),
        },
        ..options(&ns)
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let roller = tokio::spawn(eirinix_rootfs::engine::run_with_state(
        state.clone(),
        client.clone(),
        cancel.clone(),
    ));
    // Closed: several gate checks pass, nothing rolls.
    eventually(Duration::from_secs(5), "gate checked", || {
        let m = eirinix_core::metrics::render(state.metrics().clone());
        async move { m.contains("eirinix_rootfs_gate_open 0").then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let api = sts_api(&client, &ns).await;
    for n in ["app-a", "app-b"] {
        let s = api.get(n).await.unwrap();
        assert_eq!(
            s.metadata.generation,
            Some(1),
            "{n} rolled while the gate was closed"
        );
    }
    assert!(!state.gate_open());

    // Ready: rolling starts.
    let status = json!({"status": {"observedGeneration": registry.metadata.generation, "replicas": 1,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}});
    deployments
        .patch_status("registry", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    converged(&client, &ns, &["app-a", "app-b"], "2.0").await;
    assert!(state.gate_open());
    sim.stop().await;
    cancel.cancel();
    roller.await.unwrap().unwrap();
}

/// A tiny health endpoint on 127.0.0.1 answering 503 until `healthy` is set.
async fn health_server(healthy: Arc<AtomicBool>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let url = format!("http://{}/v2/", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v2/",
        axum::routing::get(move || {
            let healthy = healthy.clone();
            async move {
                if healthy.load(Ordering::SeqCst) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gate_holds_the_one_shot_roll_until_healthy() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-http").await.unwrap();
    create(&client, &ns, app_sts("app-a", "1.0")).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let (url, server) = health_server(healthy.clone()).await;
    let gated = RootfsOptions {
        gate: Gate::Http { url: url.clone() },
        ..options(&ns)
    };

    // Unhealthy until the deadline: nothing rolled, a non-clean report naming the gate.
    let report = eirinix_rootfs::roll_once(
        RootfsOptions {
            once_deadline: Duration::from_secs(1),
            ..gated.clone()
        },
        client.clone(),
    )
    .await
    .unwrap();
    assert!(!report.is_clean());
    assert!(report.deadline_exceeded);
    let gate = report.gate.as_ref().unwrap();
    assert!(!gate.open && gate.reason.ends_with(": 503"), "{gate:?}");
    assert!(report.to_string().contains("gate closed"), "{report}");
    let api = sts_api(&client, &ns).await;
    assert_eq!(api.get("app-a").await.unwrap().metadata.generation, Some(1));

    // Healthy after a while: the waiting one-shot roll proceeds and ends clean.
    let sim = Simulator::start(client.clone(), &ns, Duration::from_millis(100));
    let once = tokio::spawn(eirinix_rootfs::roll_once(gated, client.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(api.get("app-a").await.unwrap().metadata.generation, Some(1));
    healthy.store(true, Ordering::SeqCst);
    let report = once.await.unwrap().unwrap();
    sim.stop().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.completed.len(), 1);
    converged(&client, &ns, &["app-a"], "2.0").await;
    server.abort();
}

fn pod(name: &str, labels: serde_json::Value, owner: Option<&StatefulSet>) -> Pod {
    let owners = owner.map(|s| {
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": s.metadata.name,
                "uid": s.metadata.uid, "controller": true}])
    });
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "spec": {"containers": [
            {"name": "opi", "image": format!("{REPO}:1.0")},
            {"name": "sidecar", "image": "registry.test/sidecar:1"}
        ]}
    }))
    .unwrap()
}

fn pod_state(p: &Pod) -> (Option<String>, String, String) {
    let c = &p.spec.as_ref().unwrap().containers;
    (
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ROOTFS_LABEL))
            .cloned(),
        c[0].image.clone().unwrap(),
        c[1].image.clone().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_webhook_and_leader_roller_follow_the_config_map() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let system = cp.namespace("rootfs-sys").await.unwrap();
    let apps = cp.namespace("rootfs-apps").await.unwrap();
    let fp = unique_name("e2e-rootfs");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &system);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("rootfs".into()),
            ..Default::default()
        },
        data: Some([("version".to_owned(), "2.0".to_owned())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut opted = app_sts("opted-out", "1.0");
    opted
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(DEFAULT_OPT_OUT_ANNOTATION.into(), "true".into());
    let opted = create(&client, &apps, opted).await;
    create(&client, &apps, app_sts("app-a", "1.0")).await;

    let opts = RootfsOptions {
        version: Some("1.5".into()),
        config_map: Some(NamespacedName {
            namespace: system.clone(),
            name: "rootfs".into(),
        }),
        leader_lease: Some(NamespacedName {
            namespace: system.clone(),
            name: format!("{fp}-rootfs"),
        }),
        ..options(&apps)
    };
    let builder = Manager::builder()
        .fingerprint(&fp)
        .url_mode("127.0.0.1")
        .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(0)
        .webhook_namespace(&system)
        .namespace(&apps)
        .shutdown_timeout(Duration::from_secs(2));
    let (builder, state) = eirinix_rootfs::install(builder, opts).unwrap();
    let sim = Simulator::start(client.clone(), &apps, Duration::from_millis(100));
    let running = builder
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(10)).await.unwrap();

    // The ConfigMap (2.0) wins over the flag (1.5): the leader rolls to 2.0.
    converged(&client, &apps, &["app-a"], "2.0").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let app_labels = json!({"cloudfoundry.org/source_type": "APP"});
    let created = pods
        .create(
            &PostParams::default(),
            &pod("app-0", app_labels.clone(), None),
        )
        .await
        .unwrap();
    assert_eq!(
        pod_state(&created),
        (
            Some("2.0".into()),
            format!("{REPO}:2.0"),
            "registry.test/sidecar:1".into()
        ),
        "a new app pod gets the desired version"
    );
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("plain-0", json!({"x": "y"}), None),
        )
        .await
        .unwrap();
    assert_eq!(
        pod_state(&plain),
        (
            None,
            format!("{REPO}:1.0"),
            "registry.test/sidecar:1".into()
        ),
        "a non-app pod is untouched"
    );
    // A pod of an opted-out StatefulSet keeps its template's version.
    let mut i = 0;
    eventually(
        Duration::from_secs(10),
        "opt-out seen by the webhook",
        || {
            i += 1;
            let pods = pods.clone();
            let p = pod(&format!("opted-out-{i}"), app_labels.clone(), Some(&opted));
            async move {
                let created = pods.create(&PostParams::default(), &p).await.unwrap();
                (pod_state(&created).0.is_none()).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        sts_api(&client, &apps)
            .await
            .get("opted-out")
            .await
            .unwrap()
            .metadata
            .generation,
        Some(1)
    );

    // The ConfigMap changes at run time: webhook and roller follow.
    cms.patch(
        "rootfs",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"version": "3.0"}})),
    )
    .await
    .unwrap();
    let mut i = 0;
    eventually(Duration::from_secs(10), "webhook on 3.0", || {
        i += 1;
        let pods = pods.clone();
        let p = pod(&format!("app-{i}"), app_labels.clone(), None);
        async move {
            let created = pods.create(&PostParams::default(), &p).await.unwrap();
            (pod_state(&created).0.as_deref() == Some("3.0")).then_some(())
        }
    })
    .await;
    converged(&client, &apps, &["app-a"], "3.0").await;
    assert_eq!(state.desired().unwrap().version, "3.0");
    let text = eirinix_core::metrics::render(state.metrics().clone());
    assert!(
        text.contains("eirinix_rootfs_desired_version_info{version=\"3.0\"} 1"),
        "{text}"
    );
    // One Event per roll, never one for the flag's 1.5 that the ConfigMap overrides.
    let notes: Vec<String> = Api::<Event>::namespaced(client.clone(), &apps)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RootfsRollStarted"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Rolling pod template to rootfs 2.0 (was 1.0)")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Rolling pod template to rootfs 3.0 (was 2.0)")),
        "{notes:?}"
    );
    // The roller ran as the holder of the Lease.
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &system)
            .get(&format!("{fp}-rootfs"))
            .await
            .unwrap();
    assert!(lease.spec.unwrap().holder_identity.is_some());
    running.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_apps_roll_with_eight_slots() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-scale").await.unwrap();
    let names: Vec<String> = (0..60).map(|i| format!("app-{i:02}")).collect();
    for n in &names {
        create(&client, &ns, app_sts(n, "1.0")).await;
    }
    let sim = Simulator::start(client.clone(), &ns, Duration::from_millis(150));
    let started = Instant::now();
    let report = eirinix_rootfs::roll_once(
        RootfsOptions {
            max_in_flight: 8,
            ..options(&ns)
        },
        client.clone(),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    let max = sim.stop().await;
    eprintln!("60 StatefulSets, 8 slots, 150 ms simulated rollouts: {took:?}, max in flight {max}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.rolled.len(), 60);
    assert_eq!(report.completed.len(), 60);
    assert!(max <= 8, "{max} in flight");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    converged(&client, &ns, &refs, "2.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_rollouts_time_out_free_their_slot_and_are_reported() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("rootfs-timeout").await.unwrap();
    create(&client, &ns, app_sts("app-a", "1.0")).await;
    create(&client, &ns, app_sts("app-b", "1.0")).await;
    // No simulator: the StatefulSet controller never reports the rollouts done.
    let started = Instant::now();
    let report = eirinix_rootfs::roll_once(
        RootfsOptions {
            max_in_flight: 1,
            roll_timeout: Duration::from_secs(1),
            ..options(&ns)
        },
        client.clone(),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(!report.is_clean(), "{report}");
    let names = |keys: &[eirinix_rootfs::plan::Key]| {
        keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&report.rolled),
        ["app-a", "app-b"],
        "one after the other"
    );
    assert_eq!(names(&report.timed_out), ["app-a", "app-b"]);
    assert!(report.completed.is_empty());
    assert!(
        took >= Duration::from_secs(2),
        "the second waited for the first: {took:?}"
    );
    assert!(report.to_string().contains("timed out: "), "{report}");
    let mut warned = events(&client, &ns, "RootfsRollTimedOut").await;
    warned.sort();
    assert_eq!(warned, ["app-a", "app-b"]);
}
