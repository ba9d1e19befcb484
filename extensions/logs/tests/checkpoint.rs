//! Checkpoints across a change of `checkpointShards`, against the real kube-apiserver: lowering
//! the count moves the entries of the shards beyond it into the current ones (nothing is
//! orphaned, no container starts over), raising it spreads them; a service restarted with fewer
//! shards resumes every container where it was.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use eirinix_logs::checkpoint::CheckpointStore;
use eirinix_logs::cursor::Cursor;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};

const PREFIX: &str = "eirinix-logs-checkpoint";
const T: Duration = Duration::from_secs(60);

fn cursors(n: usize, second: i64) -> HashMap<String, Cursor> {
    (0..n)
        .map(|i| {
            (
                format!("uid-{i}.opi"),
                Cursor {
                    ts: jiff::Timestamp::from_second(1_700_000_000 + second).unwrap(),
                    n: u32::try_from(i % 7).unwrap() + 1,
                    instance: 0,
                },
            )
        })
        .collect()
}

/// Every shard ConfigMap's data, by name.
async fn shards(client: &kube::Client, ns: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|cm| {
            let name = cm.metadata.name?;
            name.starts_with(PREFIX)
                .then(|| (name, cm.data.unwrap_or_default()))
        })
        .collect()
}

#[tokio::test]
async fn lowering_and_raising_the_shard_count_keeps_every_entry() {
    init_tracing();
    let plane = eirinix_testenv::ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("logs-shards").await.unwrap();
    let all = cursors(300, 0);

    let mut eight = CheckpointStore::new(client.clone(), &ns, PREFIX, 8);
    assert!(eight.load().await.unwrap().is_empty());
    assert_eq!(eight.save(&all).await.unwrap(), 8);
    let stored = shards(&client, &ns).await;
    assert_eq!(stored.len(), 8);
    assert!(
        stored.values().all(|d| !d.is_empty()),
        "300 keys fill 8 shards"
    );

    // Lowered to 2: the entries of shards 2..7 are found and moved.
    let mut two = CheckpointStore::new(client.clone(), &ns, PREFIX, 2);
    assert_eq!(
        two.load().await.unwrap(),
        all,
        "every entry, not only shards 0 and 1"
    );
    two.save(&all).await.unwrap();
    let stored = shards(&client, &ns).await;
    let keys: usize = stored.values().map(BTreeMap::len).sum();
    assert_eq!(keys, 300, "each key once: {stored:?}");
    for (name, data) in &stored {
        let shard: usize = name.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(data.is_empty(), shard >= 2, "{name}");
    }
    let mut again = CheckpointStore::new(client.clone(), &ns, PREFIX, 2);
    assert_eq!(again.load().await.unwrap(), all);
    assert_eq!(again.save(&all).await.unwrap(), 0, "nothing left to move");

    // Raised to 5: spread over the new layout.
    let mut five = CheckpointStore::new(client.clone(), &ns, PREFIX, 5);
    assert_eq!(five.load().await.unwrap(), all);
    five.save(&all).await.unwrap();
    let stored = shards(&client, &ns).await;
    assert_eq!(stored.values().map(BTreeMap::len).sum::<usize>(), 300);
    assert_eq!(stored.values().filter(|d| !d.is_empty()).count(), 5);

    // A re-sharding cut by a crash can leave a key in two shards: the later position wins.
    let key = "uid-0.opi";
    let newer = Cursor {
        ts: all[key].ts + jiff::SignedDuration::from_secs(60),
        ..all[key]
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for (shard, cursor) in [(6, newer), (7, all[key])] {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{PREFIX}-{shard}"),
                         "labels": {"app.kubernetes.io/managed-by": "eirinix-logs"}},
            "data": {key: cursor.encode()},
        }))
        .unwrap();
        cms.replace(&format!("{PREFIX}-{shard}"), &Default::default(), &cm)
            .await
            .unwrap();
    }
    let mut after_crash = CheckpointStore::new(client.clone(), &ns, PREFIX, 5);
    let loaded = after_crash.load().await.unwrap();
    assert_eq!(loaded.len(), 300);
    assert_eq!(loaded[key], newer);
}

/// The service-level defect: a leader restarted with fewer shards did not read the others, and
/// their containers were forwarded again from the beginning.
#[tokio::test]
async fn a_service_restarted_with_fewer_shards_resumes_every_container() {
    let (_, client, ns, kubelet) = plane_with_kubelet("logs-reshard").await;
    let rsyslog = Rsyslog::start(None);
    let pods = 24;
    let mut logs = Vec::new();
    for p in 0..pods {
        let name = format!("app-{p}");
        let log = running_app(&client, &ns, &kubelet, &name).await;
        for i in 0..10 {
            log.push_line(format!("p{p}-{i}"));
        }
        logs.push(log);
    }
    let mut opts = options(&rsyslog.address(), None);
    opts.replicas.checkpoint_shards = 8;
    let service = start_service(&client, &ns, opts.clone());
    rsyslog
        .wait_for(T, "the first lines of every pod", |r| r.len() >= pods * 10)
        .await;
    service.stop().await;
    // Containers hash over the 8 shards (an empty one or two is chance); what matters is that
    // entries sit in shards that a single-shard service would not read without migration.
    let spread = shards(&client, &ns).await;
    let entries: usize = spread.values().map(BTreeMap::len).sum();
    let beyond_first = spread
        .iter()
        .filter(|(name, d)| !name.ends_with("-0") && !d.is_empty())
        .count();
    assert_eq!(entries, pods, "one entry per container: {spread:?}");
    assert!(
        beyond_first >= 2,
        "24 containers spread over 8 shards: {spread:?}"
    );

    opts.replicas.checkpoint_shards = 1;
    let service = start_service(&client, &ns, opts);
    for (p, log) in logs.iter().enumerate() {
        for i in 10..15 {
            log.push_line(format!("p{p}-{i}"));
        }
    }
    rsyslog
        .wait_for(T, "the new lines of every pod", |r| {
            (0..pods).all(|p| {
                let last = format!("p{p}-14");
                r.iter().any(|m| m.msg == last.as_bytes())
            })
        })
        .await;
    eventually(T, "a checkpoint in the new layout", || {
        service.metrics.checkpoints_written.load(Ordering::Relaxed) > 0
    })
    .await;
    let got = rsyslog.received();
    for p in 0..pods {
        assert_sequence(
            &messages_with(&got, &format!("p{p}-")),
            &format!("p{p}-"),
            15,
        );
    }
    service.stop().await;
    let stored = shards(&client, &ns).await;
    assert_eq!(stored[&format!("{PREFIX}-0")].len(), pods);
    assert!(
        stored
            .iter()
            .filter(|(n, _)| *n != &format!("{PREFIX}-0"))
            .all(|(_, d)| d.is_empty()),
        "the shards beyond were emptied"
    );
}
