//! Two server replicas with the leader-elected roller, and a one-shot roll (the Helm hook)
//! started while the leader rolls, against a real apiserver: only one of them rolls at any
//! time (the one-shot takes the Lease over, then gives it back), so `maxInFlight` holds.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use eirinix_core::{Manager, RunningManager};
use eirinix_rootfs::{NamespacedName, RootfsOptions};
use eirinix_testenv::support::eventually;
use eirinix_testenv::unique_name;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

/// `RootfsRollStarted` Events in `ns`: (time, reporting instance, StatefulSet), oldest first.
async fn rolls(
    client: &kube::Client,
    ns: &str,
) -> Vec<(k8s_openapi::jiff::Timestamp, String, String)> {
    let mut out: Vec<_> = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RootfsRollStarted"))
        .map(|e| {
            (
                e.event_time.map(|t| t.0).unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn replica(
    client: &kube::Client,
    fp: &str,
    system: &str,
    apps: &str,
    opts: RootfsOptions,
) -> RunningManager {
    let builder = Manager::builder()
        .fingerprint(fp)
        .url_mode("127.0.0.1")
        .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(0)
        .webhook_namespace(system)
        .namespace(apps)
        .shutdown_timeout(Duration::from_secs(2));
    let (builder, _) = eirinix_rootfs::install(builder, opts).unwrap();
    let running = builder
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_roll_and_the_replicas_never_roll_at_once() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let system = cp.namespace("rootfs-lead-sys").await.unwrap();
    let apps = cp.namespace("rootfs-lead-apps").await.unwrap();
    let fp = unique_name("e2e-rootfs-lead");
    let names: Vec<String> = (0..10).map(|i| format!("app-{i}")).collect();
    for n in &names {
        create(&client, &apps, app_sts(n, "1.0")).await;
    }
    let opts = |instance: &str| RootfsOptions {
        max_in_flight: 1,
        leader_lease: Some(NamespacedName {
            namespace: system.clone(),
            name: format!("{fp}-rootfs"),
        }),
        lease_duration: Duration::from_secs(2),
        reporter_instance: Some(instance.into()),
        ..options(&apps)
    };
    let sim = Simulator::start(client.clone(), &apps, Duration::from_millis(500));
    let a = replica(&client, &fp, &system, &apps, opts("replica-a")).await;
    let b = replica(&client, &fp, &system, &apps, opts("replica-b")).await;

    // The leader rolls; once it has started two, the hook runs.
    eventually(
        Duration::from_secs(30),
        "the leader to roll two apps",
        || async { (rolls(&client, &apps).await.len() >= 2).then_some(()) },
    )
    .await;
    let report = eirinix_rootfs::roll_once(opts("hook"), client.clone())
        .await
        .unwrap();
    eprintln!("{report}");
    assert!(report.is_clean(), "{report}");
    assert!(!report.uncoordinated, "{report}");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    converged(&client, &apps, &names, "2.0").await;

    let log = rolls(&client, &apps).await;
    eprintln!("{log:#?}");
    let by = |who: &str| log.iter().filter(|(_, i, _)| i == who).count();
    assert_eq!(log.len(), names.len(), "each app rolled once: {log:?}");
    assert!(by("hook") >= 1, "the hook rolled: {log:?}");
    // The hook's rolls form one block: no replica rolled between its first and its last.
    let first = log.iter().position(|(_, i, _)| i == "hook").unwrap();
    let last = log.iter().rposition(|(_, i, _)| i == "hook").unwrap();
    assert!(
        log[first..=last].iter().all(|(_, i, _)| i == "hook"),
        "a replica rolled while the hook held the Lease: {log:?}"
    );
    assert_eq!(
        sim.max_in_flight.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "maxInFlight 1 held across the replicas and the hook"
    );

    // The Lease is back with a replica: a new app is rolled by it.
    create(&client, &apps, app_sts("app-late", "1.0")).await;
    converged(&client, &apps, &["app-late"], "2.0").await;
    let late = rolls(&client, &apps).await;
    let (_, instance, _) = late.iter().find(|(_, _, n)| n == "app-late").unwrap();
    assert!(instance.starts_with("replica-"), "{late:?}");
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(sim.stop().await, 1);
}
