//! The rootfs roll as an operator meets it, on the real node: apps run on rootfs A; the desired
//! version becomes B; nothing moves while the image source (a Deployment) is not ready; then the
//! real StatefulSet controller rolls every app onto B, never more than `max_in_flight` apps at
//! once, each app until its pods are Ready on B; no one restarts anything by hand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eirinix_rootfs::{Gate, NamespacedName, RootfsOptions, RootfsState};
use eirinix_testenv::eirini::{EiriniApp, running_image};
use eirinix_testenv::support::{eventually, init_tracing, pod_is_ready, wait_pod_ready};
use eirinix_testenv::{APP_IMAGE, Cluster, app_image};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

const ROOTFS: &str = "eirinix.local/cflinuxfs3";
const MAX_IN_FLIGHT: usize = 2;
const WAIT: Duration = Duration::from_secs(240);

/// The rootfs version of a StatefulSet's pod template.
fn template_version(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get("cloudfoundry.org/rootfs-version")
        .cloned()
}

/// All replicas updated to the current template, Ready, and the rollout finished.
fn rolled_out(sts: &StatefulSet) -> bool {
    let (Some(spec), Some(status)) = (&sts.spec, &sts.status) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    status.observed_generation == sts.metadata.generation
        && status.updated_replicas == Some(want)
        && status.ready_replicas == Some(want)
        && status.current_revision.is_some()
        && status.current_revision == status.update_revision
}

/// Follows the app StatefulSets and records the most apps that were rolling onto `target` at
/// any moment (patched to it, rollout not finished yet), and the order in which they finished.
/// Finished is for good: a finished app whose pod later turns unready for a moment (a probe
/// timing out on a busy machine) is not rolling again, and is not counted twice.
#[derive(Default)]
struct Observed {
    state: BTreeMap<String, (bool, bool)>,
    max_in_flight: usize,
    finished: Vec<String>,
    /// Apps whose template left `target` after they had finished (rolled twice).
    left_target: Vec<String>,
}

fn observe(api: Api<StatefulSet>, target: &'static str) -> Arc<Mutex<Observed>> {
    let seen = Arc::new(Mutex::new(Observed::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(sts)) = stream.try_next().await {
            let name = sts.metadata.name.clone().unwrap_or_default();
            let patched = template_version(&sts).as_deref() == Some(target);
            let mut o = out.lock().unwrap();
            let was_done = o.state.get(&name).is_some_and(|s| s.1);
            let done = was_done || (patched && rolled_out(&sts));
            if was_done && !patched {
                o.left_target.push(name.clone());
            }
            if done && !was_done {
                o.finished.push(name.clone());
            }
            o.state.insert(name, (patched, done));
            let in_flight = o.state.values().filter(|(p, d)| *p && !*d).count();
            o.max_in_flight = o.max_in_flight.max(in_flight);
        }
    });
    seen
}

fn metric(state: &RootfsState, line: &str) -> bool {
    eirinix_core::metrics::render(state.metrics().clone())
        .lines()
        .any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_roll_onto_the_new_rootfs_n_at_a_time_once_the_image_source_is_ready() {
    init_tracing();
    let cluster = Cluster::shared().await.expect("the real node");
    for version in ["a", "b"] {
        let image = app_image()
            .unwrap()
            .with_name(format!("{ROOTFS}:{version}"))
            .contents("/etc/rootfs-version", format!("{version}\n"), 0o644);
        cluster.load_image(&image).unwrap();
    }
    let client = cluster.client().await.unwrap();
    let system = cluster.namespace("rootfs-node-sys").await.unwrap();
    let apps = cluster.namespace("rootfs-node-apps").await.unwrap();

    // The image source the roll waits for: a Deployment that is not ready until told so.
    let source: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "image-source"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "image-source"}},
            "template": {
                "metadata": {"labels": {"app": "image-source"}},
                "spec": {"containers": [{
                    "name": "registry", "image": APP_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "100000"],
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
                }]},
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &system)
        .create(&PostParams::default(), &source)
        .await
        .unwrap();

    // Four apps on rootfs a, one of them with two instances.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &apps);
    let mut all = Vec::new();
    for (name, replicas) in [("app-1", 1), ("app-2", 2), ("app-3", 1), ("app-4", 1)] {
        let mut app = EiriniApp::new(name);
        app.image = format!("{ROOTFS}:a");
        app.rootfs_version = Some("a".into());
        app.replicas = replicas;
        sets.create(&PostParams::default(), &app.statefulset())
            .await
            .unwrap();
        all.push(app);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    for app in &all {
        for i in 0..app.replicas as u32 {
            wait_pod_ready(&pods, &app.pod_name(i), WAIT).await;
        }
    }

    // The operator's ConfigMap says b; the roller is gated on the image source.
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rootfs"},
        "data": {"version": "b"}
    });
    Api::<ConfigMap>::namespaced(client.clone(), &system)
        .patch(
            "rootfs",
            &PatchParams::apply("operator"),
            &Patch::Apply(&config),
        )
        .await
        .unwrap();
    let state = RootfsState::new(RootfsOptions {
        version: Some("a".into()),
        image_pattern: Some(ROOTFS.into()),
        config_map: Some(NamespacedName {
            namespace: system.clone(),
            name: "rootfs".into(),
        }),
        namespace: Some(apps.clone()),
        max_in_flight: MAX_IN_FLIGHT,
        roll_timeout: WAIT,
        gate: Gate::Deployment {
            namespace: system.clone(),
            name: "image-source".into(),
        },
        gate_interval: Duration::from_millis(500),
        resync_interval: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap();
    let observed = observe(sets.clone(), "b");
    let cancel = CancellationToken::new();
    let roller = tokio::spawn(eirinix_rootfs::engine::run_with_state(
        state.clone(),
        client.clone(),
        cancel.clone(),
    ));

    // Gate closed: the roller knows b is wanted and four apps wait, and none is touched.
    eventually(
        WAIT,
        "the roller waiting behind the closed gate",
        || async {
            (metric(
                &state,
                "eirinix_rootfs_desired_version_info{version=\"b\"} 1",
            ) && metric(&state, "eirinix_rootfs_gate_open 0")
                && metric(&state, "eirinix_rootfs_rolls_pending 4"))
            .then_some(())
        },
    )
    .await;
    for sts in sets.list(&ListParams::default()).await.unwrap() {
        assert_eq!(
            template_version(&sts).as_deref(),
            Some("a"),
            "nothing rolls while the gate is closed"
        );
    }
    assert!(metric(&state, "eirinix_rootfs_rolls_started_total 0"));

    // The image source becomes ready: every app rolls onto b, at most two at a time.
    let source_pod = pods_of(&client, &system, "app=image-source").await;
    let out = cluster
        .exec(&system, &source_pod, "registry", ["touch", "/tmp/ready"])
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    eventually(WAIT, "every app rolled out on rootfs b", || async {
        let list = sets.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|s| template_version(s).as_deref() == Some("b") && rolled_out(s))
            .then_some(())
    })
    .await;

    for app in &all {
        for i in 0..app.replicas as u32 {
            let pod = pods.get(&app.pod_name(i)).await.unwrap();
            assert!(pod_is_ready(&pod));
            assert_eq!(
                running_image(&pod).as_deref(),
                Some(format!("{ROOTFS}:b").as_str())
            );
            let out = cluster
                .exec(
                    &apps,
                    &app.pod_name(i),
                    "opi",
                    ["cat", "/etc/rootfs-version"],
                )
                .await
                .unwrap();
            assert_eq!(out.stdout, "b\n", "{} runs the b rootfs", app.pod_name(i));
        }
    }
    let (max_in_flight, finished, left_target) = {
        let o = observed.lock().unwrap();
        (o.max_in_flight, o.finished.clone(), o.left_target.clone())
    };
    assert!(
        left_target.is_empty(),
        "rolled again after finishing: {left_target:?}"
    );
    assert_eq!(
        max_in_flight, MAX_IN_FLIGHT,
        "apps rolling at once: at most {MAX_IN_FLIGHT}, and that many when four wait ({finished:?})"
    );
    assert_eq!(finished.len(), 4, "{finished:?}");
    cancel.cancel();
    roller.await.unwrap().unwrap();
}

/// The name of the one pod matching `selector`.
async fn pods_of(client: &kube::Client, ns: &str, selector: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "the image source's pod running", || async {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        let pod = list.items.into_iter().next()?;
        let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
        running.then(|| pod.metadata.name.unwrap_or_default())
    })
    .await
}
