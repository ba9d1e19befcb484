//! Several replicas: only the Lease holder follows, so every line reaches rsyslog once; when
//! the leader dies (crash: its runtime is dropped, the Lease is not released) or stops
//! gracefully, another replica takes over from the checkpoint.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use eirinix_testenv::{ContainerLog, ControlPlane, FakeKubelet};

const T: Duration = Duration::from_secs(60);

async fn wait_leader<'a>(replicas: &[&'a Replica]) -> &'a Replica {
    let deadline = Instant::now() + T;
    loop {
        let leaders: Vec<&&Replica> = replicas.iter().filter(|r| r.leading()).collect();
        assert!(leaders.len() <= 1, "two leaders at once");
        if let Some(l) = leaders.first() {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Pods {
    logs: Vec<ContainerLog>,
    next: Vec<usize>,
}

impl Pods {
    fn push(&mut self, per_pod: usize) {
        for (p, log) in self.logs.iter().enumerate() {
            for _ in 0..per_pod {
                log.push_line(format!("p{p}-{}", self.next[p]));
                self.next[p] += 1;
            }
        }
    }

    async fn delivered(&self, rsyslog: &Rsyslog, what: &str) {
        let next = self.next.clone();
        rsyslog
            .wait_for(T, what, |r| {
                next.iter()
                    .enumerate()
                    .all(|(p, n)| messages_with(r, &format!("p{p}-")).len() >= *n)
            })
            .await;
    }

    fn assert_exactly_once(&self, rsyslog: &Rsyslog) {
        let got = rsyslog.received();
        for (p, n) in self.next.iter().enumerate() {
            assert_sequence(
                &messages_with(&got, &format!("p{p}-")),
                &format!("p{p}-"),
                *n,
            );
        }
    }
}

async fn setup(
    prefix: &str,
    pods: usize,
) -> (
    ControlPlaneRef,
    kube::Client,
    String,
    FakeKubelet,
    Rsyslog,
    Pods,
) {
    let (plane, client, ns, kubelet) = plane_with_kubelet(prefix).await;
    let node = kubelet.node_name().to_owned();
    let mut logs = Vec::new();
    for p in 0..pods {
        let name = format!("app-{p}");
        create_pod(&client, &ns, &app_pod(&name, "APP", &["opi"], &node)).await;
        set_status(&client, &ns, &name, "opi", 0, State::Running).await;
        logs.push(kubelet.container(&ns, &name, "opi"));
    }
    let rsyslog = Rsyslog::start(None);
    (
        plane,
        client,
        ns,
        kubelet,
        rsyslog,
        Pods {
            next: vec![0; logs.len()],
            logs,
        },
    )
}

type ControlPlaneRef = &'static ControlPlane;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_every_line_once_and_take_over_after_a_crash() {
    let (plane, _client, ns, _kubelet, rsyslog, mut pods) = setup("logs-replicas", 3).await;
    let options = options(&rsyslog.address(), None);
    let config = plane.config().await.unwrap();
    let a = Replica::start(config.clone(), &ns, &options, "replica-a");
    let b = Replica::start(config.clone(), &ns, &options, "replica-b");
    let leader = wait_leader(&[&a, &b]).await.name.clone();

    pods.push(300);
    pods.delivered(&rsyslog, "lines with two replicas").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    pods.assert_exactly_once(&rsyslog);
    let (dead, survivor) = if leader == a.name { (a, b) } else { (b, a) };
    assert_eq!(
        survivor.forwarded(),
        0,
        "the other replica followed nothing"
    );
    assert!(dead.forwarded() >= 900);

    // The leader crashes (after its last checkpoint); lines keep coming while nobody leads.
    dead.kill();
    let crashed = Instant::now();
    pods.push(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pods.push(100);
    wait_leader(&[&survivor]).await;
    let takeover = crashed.elapsed();
    pods.push(100);
    pods.delivered(&rsyslog, "lines after the takeover").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pods.assert_exactly_once(&rsyslog);
    eprintln!("takeover after a crash in {takeover:?} (lease 3 s)");
    assert!(
        takeover < Duration::from_secs(10),
        "takeover within seconds"
    );

    // Graceful handover while lines are flowing: a new replica joins, the leader stops.
    let c = Replica::start(config, &ns, &options, "replica-c");
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicUsize::new(0));
    let logs = pods.logs.clone();
    let first = pods.next.clone();
    let producer = {
        let (stop, pushed) = (stop.clone(), pushed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let i = pushed.fetch_add(1, Ordering::SeqCst);
                for (p, log) in logs.iter().enumerate() {
                    log.push_line(format!("p{p}-{}", first[p] + i));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handover = Instant::now();
    survivor.stop().await;
    wait_leader(&[&c]).await;
    let handover = handover.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let extra = pushed.load(Ordering::SeqCst);
    for n in pods.next.iter_mut() {
        *n += extra;
    }
    pods.delivered(&rsyslog, "lines after the graceful handover")
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pods.assert_exactly_once(&rsyslog);
    eprintln!(
        "graceful handover in {handover:?}; {} lines per pod in total",
        pods.next[0]
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_under_load_loses_nothing_and_repeats_only_the_last_checkpoint_interval() {
    let (plane, _client, ns, _kubelet, rsyslog, pods) = setup("logs-crash", 2).await;
    let options = options(&rsyslog.address(), None);
    let config = plane.config().await.unwrap();
    let a = Replica::start(config.clone(), &ns, &options, "replica-a");
    wait_leader(&[&a]).await;
    let b = Replica::start(config, &ns, &options, "replica-b");

    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (stop, pushed, logs) = (stop.clone(), pushed.clone(), pods.logs.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let i = pushed.fetch_add(1, Ordering::SeqCst);
                for (p, log) in logs.iter().enumerate() {
                    log.push_line(format!("p{p}-{i}"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill();
    wait_leader(&[&b]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let n = pushed.load(Ordering::SeqCst);
    let got = rsyslog
        .wait_for(T, "every line", |r| {
            (0..2).all(|p| {
                let mut m = messages_with(r, &format!("p{p}-"));
                m.sort();
                m.dedup();
                m.len() >= n
            })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(got);
    let got = rsyslog.received();
    let mut repeated = 0;
    for p in 0..2 {
        let lines = messages_with(&got, &format!("p{p}-"));
        let mut counts = std::collections::HashMap::new();
        for l in &lines {
            *counts.entry(l.clone()).or_insert(0) += 1;
        }
        for i in 0..n {
            let c = counts.get(&format!("p{p}-{i}")).copied().unwrap_or(0);
            assert!(c >= 1, "p{p}-{i} lost");
            assert!(c <= 2, "p{p}-{i} sent {c} times");
        }
        repeated += lines.len() - n;
    }
    // The producer writes about 2 lines per pod per 2 ms; a 200 ms checkpoint interval bounds
    // the repeated tail to what was delivered after the last checkpoint.
    eprintln!("crash under load: {n} lines per pod, {repeated} repeated after the takeover");
    assert!(
        repeated <= 2 * 300,
        "repeats bounded by the checkpoint interval: {repeated}"
    );
    b.stop().await;
}
