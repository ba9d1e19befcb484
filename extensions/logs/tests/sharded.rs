//! Sharded replicas (`replicas.mode: sharded`) on the real apiserver, a fake kubelet and a real
//! rsyslog: every replica follows a share of the containers, never two the same one; a member
//! that joins or leaves gracefully hands its containers over with no line lost or repeated; a
//! member that crashes has its share taken over from its last checkpoint within seconds, lines
//! repeated only for its own containers and only since that checkpoint.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use eirinix_logs::{LogsOptions, ReplicaMode, SinkOptions, SyslogOptions};
use eirinix_testenv::ContainerLog;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

const T: Duration = Duration::from_secs(90);
const PODS: usize = 24;

/// Wait until every replica in `live` has taken over a view of `live.len()` members after the
/// rebalance counts in `before` (same order), and together they follow every pod once.
async fn settled(live: &[&Replica], before: &[u64], what: &str) -> Duration {
    let start = Instant::now();
    let n = live.len() as i64;
    loop {
        let ok = live
            .iter()
            .zip(before)
            .all(|(r, b)| r.rebalances() > *b && r.members() == n)
            && live.iter().map(|r| r.owned()).sum::<i64>() == PODS as i64;
        if ok {
            return start.elapsed();
        }
        let state: Vec<(u64, i64, i64)> = live
            .iter()
            .map(|r| (r.rebalances(), r.members(), r.owned()))
            .collect();
        assert!(
            start.elapsed() < T,
            "{what}: replicas did not settle on {n} members following {PODS} pods; \
             (rebalances, members, owned pods) = {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lines pushed to every pod's container at a steady rate while the replicas change, and the
/// most follow streams ever seen open at once on one container.
struct Load {
    stop: Arc<AtomicBool>,
    pushed: Arc<AtomicUsize>,
    max_streams: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(logs: &[ContainerLog]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pushed = Arc::new(AtomicUsize::new(0));
        let max_streams = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, pushed, max_streams, logs) = (
                stop.clone(),
                pushed.clone(),
                max_streams.clone(),
                logs.to_vec(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let i = pushed.load(Ordering::SeqCst);
                    for (p, log) in logs.iter().enumerate() {
                        log.push_line(format!("p{p}-{i}"));
                        max_streams.fetch_max(log.followers(), Ordering::SeqCst);
                    }
                    pushed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Load {
            stop,
            pushed,
            max_streams,
            task,
        }
    }

    /// Stop pushing; the number of lines each container got.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.pushed.load(Ordering::SeqCst),
            self.max_streams.load(Ordering::SeqCst),
        )
    }
}

struct Setup {
    ns: String,
    config: kube::Config,
    logs: Vec<ContainerLog>,
    rsyslog: Rsyslog,
    options: LogsOptions,
    _kubelet: eirinix_testenv::FakeKubelet,
}

async fn setup(prefix: &str, relp: bool) -> Setup {
    let (plane, client, ns, kubelet) = plane_with_kubelet(prefix).await;
    let node = kubelet.node_name().to_owned();
    let mut logs = Vec::new();
    for p in 0..PODS {
        let name = format!("app-{p}");
        create_pod(&client, &ns, &app_pod(&name, "APP", &["opi"], &node)).await;
        set_status(&client, &ns, &name, "opi", 0, State::Running).await;
        logs.push(kubelet.container(&ns, &name, "opi"));
    }
    let rsyslog = if relp {
        Rsyslog::start_relp(None)
    } else {
        Rsyslog::start(None)
    };
    let mut options = options(&rsyslog.address(), None);
    if relp {
        options.sinks = vec![SinkOptions::Relp(SyslogOptions {
            address: rsyslog.address(),
            ..SyslogOptions::default()
        })];
    }
    options.replicas.mode = ReplicaMode::Sharded;
    // Small pages: each member's checkpoints take several ConfigMaps.
    options.replicas.checkpoint_page_keys = 4;
    Setup {
        ns,
        config: plane.config().await.unwrap(),
        logs,
        rsyslog,
        options,
        _kubelet: kubelet,
    }
}

/// Every pod's lines as received, by pod.
fn per_pod(rsyslog: &Rsyslog) -> Vec<Vec<String>> {
    let got = rsyslog.received();
    (0..PODS)
        .map(|p| messages_with(&got, &format!("p{p}-")))
        .collect()
}

/// Wait until rsyslog received nothing new for a second (bounded by `T`).
async fn quiet(rsyslog: &Rsyslog) {
    let start = Instant::now();
    let mut last = (rsyslog.received().len(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        assert!(start.elapsed() < T, "rsyslog kept receiving lines");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = rsyslog.received().len();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
}

/// Wait until every pod's `n` lines arrived (each at least once).
async fn all_delivered(rsyslog: &Rsyslog, n: usize, what: &str) {
    rsyslog
        .wait_for(T, what, |r| {
            (0..PODS).all(|p| {
                let mut m = messages_with(r, &format!("p{p}-"));
                m.sort();
                m.dedup();
                m.len() >= n
            })
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_and_in_under_load_sends_every_line_exactly_once() {
    // RELP: a line counts as delivered once rsyslog acknowledged it, so a paused rsyslog holds
    // lines in the replicas' buffers, which a hand-over must wait for.
    let s = setup("logs-shard-scale", true).await;
    let client = kube::Client::try_from(s.config.clone()).unwrap();
    let statuses: Api<ConfigMap> = Api::namespaced(client, &s.ns);
    let a = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-a");
    let b = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-b");
    let c = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-c");
    settled(&[&a, &b, &c], &[0, 0, 0], "three replicas").await;
    for (r, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        assert!(r.owned() > 0, "replica {name} owns a share");
    }
    let load = Load::start(&s.logs);

    // Scale out under load, while rsyslog acknowledges nothing: the old owners cannot hand
    // over (lines they read are not delivered yet), so the new member must not start.
    eventually(T, "lines flowing", || {
        a.forwarded() + b.forwarded() + c.forwarded() >= PODS as u64 * 20
    })
    .await;
    s.rsyslog.pause();
    let before = [a.rebalances(), b.rebalances(), c.rebalances(), 0];
    let d = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-d");
    let status = |key: &'static str| {
        let statuses = statuses.clone();
        let slot = d.metrics.member_slot.load(Ordering::Relaxed);
        async move {
            if slot < 0 {
                return String::new();
            }
            let name = format!("eirinix-logs-checkpoint-member-{slot}");
            match statuses.get_opt(&name).await {
                Ok(Some(cm)) => cm
                    .data
                    .and_then(|d| d.get(key).cloned())
                    .unwrap_or_default(),
                _ => String::new(),
            }
        }
    };
    let deadline = Instant::now() + T;
    while status("released").await.split(',').count() != 4 {
        assert!(Instant::now() < deadline, "the new member never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It released in a view of four; give it two membership ticks to (wrongly) take over.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && status("adopted").await.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let early = status("adopted").await;
    s.rsyslog.resume();
    assert_eq!(
        early, "",
        "the new member took over before the old owners handed over"
    );
    let out = settled(&[&a, &b, &c, &d], &before, "scale-out to four").await;
    assert!(d.owned() > 0, "the new member took a share");
    let d_before = d.forwarded();
    eventually(T, "the new member forwarding", || d.forwarded() > d_before).await;

    // Scale in under load: a member stops gracefully and hands its share over.
    let before = [a.rebalances(), c.rebalances(), d.rebalances()];
    let b_owned = b.owned();
    let b_metrics = b.stop().await;
    let scale_in = settled(&[&a, &c, &d], &before, "scale-in to three").await;
    let after_in = a.forwarded() + c.forwarded() + d.forwarded();
    eventually(T, "lines flowing after the scale-in", || {
        a.forwarded() + c.forwarded() + d.forwarded() >= after_in + PODS as u64 * 20
    })
    .await;

    let (n, max_streams) = load.finish().await;
    all_delivered(&s.rsyslog, n, "every line after scale-out and scale-in").await;
    // Everything read was forwarded to rsyslog (graceful stops drained): wait until rsyslog
    // wrote as many lines as the replicas read, then nothing may be missing or repeated.
    let read = || {
        a.forwarded()
            + b_metrics.records_forwarded.load(Ordering::Relaxed)
            + c.forwarded()
            + d.forwarded()
    };
    eventually(T, "rsyslog wrote every line the replicas read", || {
        s.rsyslog.received().len() as u64 >= read()
    })
    .await;
    for (p, lines) in per_pod(&s.rsyslog).iter().enumerate() {
        assert_sequence(lines, &format!("p{p}-"), n);
    }
    assert_eq!(
        s.rsyslog.received().len() as u64,
        read(),
        "rsyslog got exactly what the replicas read"
    );
    // Never two replicas on one container (one stream each, or stdout and stderr apart).
    let streams = if a.metrics.split_streams.load(Ordering::Relaxed) == 1 {
        2
    } else {
        1
    };
    assert!(
        max_streams <= streams,
        "at most one follower per container at any time, saw {max_streams} streams"
    );
    eprintln!(
        "sharded: {n} lines per pod; scale-out settled in {out:?}, scale-in in {scale_in:?} \
         (b owned {b_owned} pods)"
    );
    for r in [a, c, d] {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_share_is_taken_over_from_its_checkpoint() {
    let s = setup("logs-shard-crash", false).await;
    let a = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-a");
    let b = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-b");
    let c = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-c");
    settled(&[&a, &b, &c], &[0, 0, 0], "three replicas").await;
    let load = Load::start(&s.logs);
    eventually(T, "lines flowing", || {
        a.forwarded() + b.forwarded() + c.forwarded() >= PODS as u64 * 100
    })
    .await;

    // A member crashes under load: its Lease expires, the others take its share over.
    let before = [a.rebalances(), c.rebalances()];
    let b_owned = usize::try_from(b.owned()).unwrap();
    let b_slot = b.metrics.member_slot.load(Ordering::Relaxed);
    let crashed = Instant::now();
    b.kill();
    settled(&[&a, &c], &before, "after the crash").await;
    let takeover = crashed.elapsed();
    let after = a.forwarded() + c.forwarded();
    eventually(T, "lines flowing after the takeover", || {
        a.forwarded() + c.forwarded() >= after + PODS as u64 * 20
    })
    .await;

    // The dead member's slot is released once the others took its share over: a replica that
    // joins reuses it, and the others hand part of their shares over to it.
    let leases: Api<Lease> =
        Api::namespaced(kube::Client::try_from(s.config.clone()).unwrap(), &s.ns);
    let slot_lease = format!("eirinix-logs-member-{b_slot}");
    let deadline = Instant::now() + T;
    loop {
        let holder = leases
            .get(&slot_lease)
            .await
            .unwrap()
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        if holder.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead member's slot is still held by {holder}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = [a.rebalances(), c.rebalances(), 0];
    let d = Replica::start(s.config.clone(), &s.ns, &s.options, "replica-d");
    let joined = settled(&[&a, &c, &d], &before, "a replica joining after the crash").await;
    assert_eq!(
        d.metrics.member_slot.load(Ordering::Relaxed),
        b_slot,
        "the new replica reuses the dead member's slot"
    );

    let (n, _) = load.finish().await;
    all_delivered(&s.rsyslog, n, "every line after the crash").await;
    // The survivors stop gracefully (their sinks drain); then rsyslog gets nothing more.
    let sent = [a.stop().await, c.stop().await, d.stop().await];
    let sink = sent[0].sink_names().first().cloned().unwrap();
    let survivors_sent: u64 = sent.iter().map(|m| m.sent(&sink)).sum();
    quiet(&s.rsyslog).await;
    assert!(
        s.rsyslog.received().len() as u64 >= survivors_sent,
        "rsyslog has everything the survivors sent"
    );

    // No line lost; repeats only in the crashed member's share, only since its checkpoint.
    let mut repeated_pods = 0;
    let mut repeated = 0;
    for (p, lines) in per_pod(&s.rsyslog).iter().enumerate() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for l in lines {
            *counts.entry(l.as_str()).or_default() += 1;
        }
        for i in 0..n {
            let k = format!("p{p}-{i}");
            let c = counts.get(k.as_str()).copied().unwrap_or(0);
            assert!(c >= 1, "{k} lost");
            assert!(c <= 2, "{k} sent {c} times");
        }
        let extra = lines.len() - n;
        if extra > 0 {
            repeated_pods += 1;
            repeated += extra;
            // 200 ms checkpoint interval at one line per 20 ms: about 10 lines; at most a
            // second's worth (re-reading from the start would repeat 100 or more).
            assert!(
                extra <= 50,
                "p{p}: {extra} lines repeated, more than the checkpoint interval explains"
            );
        }
    }
    assert!(
        repeated_pods <= b_owned,
        "repeats in {repeated_pods} pods, but the crashed member followed only {b_owned}"
    );
    eprintln!(
        "sharded crash: share of {b_owned} pods taken over {takeover:?} after the crash \
         (lease 3 s); {repeated} lines repeated in {repeated_pods} pods; {n} lines per pod; \
         a new replica joined in {joined:?}"
    );
    assert!(
        takeover < Duration::from_secs(12),
        "takeover within a few lease durations: {takeover:?}"
    );
}
