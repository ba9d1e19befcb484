//! Leader election against a real apiserver: expiry is judged by when a candidate observed the
//! Lease record change, on its own clock, so a holder whose `renewTime` is skewed far into the
//! past is never displaced while it renews, a dead holder whose `renewTime` is far in the
//! future is still replaced within the lease duration, no two candidates ever work at once, and
//! a one-shot run takes the Lease over from a live leader by asking it to hand over.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use eirinix_core::leader::{Election, HANDOVER_ANNOTATION, LeaseLock, Led};
use eirinix_core::reconciler::Reconciler;
use eirinix_core::{Context, ExtensionError, Manager, async_trait};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(2);

/// One stretch of work as the leader: `(identity, started, stopped)`.
type Stretch = (String, Instant, Option<Instant>);

/// Who worked as the leader, and when.
#[derive(Clone, Default)]
struct WorkLog(Arc<Mutex<Vec<Stretch>>>);

impl WorkLog {
    /// Work for `run_while_leader`: log the start, run until cancelled, log the stop.
    fn work(
        &self,
        who: &str,
    ) -> impl Fn(CancellationToken) -> futures::future::BoxFuture<'static, ()> + use<> {
        let (log, who) = (self.clone(), who.to_owned());
        move |token| {
            let (log, who) = (log.clone(), who.clone());
            Box::pin(async move {
                let i = log.start(&who);
                token.cancelled().await;
                log.stop(i);
            })
        }
    }

    fn start(&self, who: &str) -> usize {
        let mut log = self.0.lock().unwrap();
        log.push((who.to_owned(), Instant::now(), None));
        log.len() - 1
    }

    fn stop(&self, i: usize) {
        self.0.lock().unwrap()[i].2 = Some(Instant::now());
    }

    /// Who works now.
    fn working(&self) -> Vec<String> {
        let log = self.0.lock().unwrap();
        log.iter()
            .filter(|(_, _, stop)| stop.is_none())
            .map(|(who, _, _)| who.clone())
            .collect()
    }

    /// When `who` last started working, if it works now.
    fn working_since(&self, who: &str) -> Option<Instant> {
        let log = self.0.lock().unwrap();
        log.iter()
            .rev()
            .find(|(w, _, stop)| w == who && stop.is_none())
            .map(|(_, start, _)| *start)
    }

    /// Panics if two identities ever worked at the same time.
    fn assert_never_two_leaders(&self) {
        let log = self.0.lock().unwrap();
        let now = Instant::now();
        for (i, (a, a0, a1)) in log.iter().enumerate() {
            for (b, b0, b1) in log.iter().skip(i + 1) {
                let overlap = *a0 < b1.unwrap_or(now) && *b0 < a1.unwrap_or(now);
                assert!(
                    a == b || !overlap,
                    "{a} and {b} led at the same time: {:?}",
                    *log
                );
            }
        }
    }
}

fn lease(holder: &str, name: &str, renew: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(LEASE.as_secs() as i32),
            acquire_time: Some(MicroTime(renew)),
            renew_time: Some(MicroTime(renew)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

/// A replica elsewhere whose wall clock is off by `skew`: it renews the Lease every 400 ms with
/// its own idea of the time, until stopped; it notices if anyone took the Lease from it.
struct SkewedReplica {
    renewals: Arc<AtomicUsize>,
    stolen_by: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Instant>,
}

impl SkewedReplica {
    fn start(leases: Api<Lease>, name: &str, skew: SignedDuration) -> SkewedReplica {
        let renewals = Arc::new(AtomicUsize::new(0));
        let stolen_by = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st, name) = (
            renewals.clone(),
            stolen_by.clone(),
            stop.clone(),
            name.to_owned(),
        );
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            while !st.load(Ordering::SeqCst) {
                let mut l = leases.get(&name).await.unwrap();
                let spec = l.spec.as_mut().unwrap();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                if holder != "skewed" {
                    *s.lock().unwrap() = Some(holder);
                    break;
                }
                spec.renew_time = Some(MicroTime(Timestamp::now() + skew));
                if leases
                    .replace(&name, &PostParams::default(), &l)
                    .await
                    .is_ok()
                {
                    last = Instant::now();
                    r.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            last
        });
        SkewedReplica {
            renewals,
            stolen_by,
            stop,
            task,
        }
    }

    /// Stop renewing (the replica dies); when it last renewed.
    async fn die(self) -> Instant {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

fn candidate(
    client: &kube::Client,
    ns: &str,
    name: &str,
    who: &str,
    log: &WorkLog,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let lock = LeaseLock::new(client.clone(), ns, name, who).lease_duration(LEASE);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(lock.run_while_leader(cancel.clone(), None, log.work(who)));
    (cancel, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_clock_lags_keeps_the_lease_while_it_renews() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("lease-past").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let hour_ago = Timestamp::now() - SignedDuration::from_hours(1);
    leases
        .create(&PostParams::default(), &lease("skewed", "roller", hour_ago))
        .await
        .unwrap();
    let skewed = SkewedReplica::start(leases.clone(), "roller", -SignedDuration::from_hours(1));
    let log = WorkLog::default();
    let (b_cancel, b) = candidate(&client, &ns, "roller", "b", &log);
    let (c_cancel, c) = candidate(&client, &ns, "roller", "c", &log);

    // Over 12 renewals (about 2.4 lease durations, many attempts by both candidates), the
    // live holder keeps its Lease although its renewTime is an hour old by their clocks.
    let renewals = skewed.renewals.clone();
    eventually(
        Duration::from_secs(60),
        "12 renewals by the skewed holder",
        || {
            let (n, stolen) = (
                renewals.load(Ordering::SeqCst),
                skewed.stolen_by.lock().unwrap().clone(),
            );
            assert_eq!(
                stolen, None,
                "a candidate took the Lease from a live holder"
            );
            async move { (n >= 12).then_some(()) }
        },
    )
    .await;
    assert!(log.working().is_empty(), "{:?}", log.working());

    // The holder dies: one candidate takes over once the lease has run out since it last
    // renewed, not before, and within the lease duration plus one attempt period and latency.
    let died = skewed.die().await;
    let leader = eventually(
        LEASE + Duration::from_secs(5),
        "a candidate to replace the dead holder",
        || async { log.working().first().cloned() },
    )
    .await;
    let took = log.working_since(&leader).unwrap() - died;
    eprintln!("dead holder (renewTime an hour behind) replaced {took:?} after its last renewal");
    assert!(took >= LEASE - Duration::from_millis(300), "{took:?}");
    assert!(took <= LEASE + Duration::from_secs(2), "{took:?}");

    // The leader steps down; the other takes over; never both.
    let (stepping, other) = if leader == "b" {
        ((b_cancel, b), (c_cancel, c))
    } else {
        ((c_cancel, c), (b_cancel, b))
    };
    stepping.0.cancel();
    stepping.1.await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the other candidate to lead",
        || async { (log.working().len() == 1 && log.working()[0] != leader).then_some(()) },
    )
    .await;
    other.0.cancel();
    other.1.await.unwrap();
    log.assert_never_two_leaders();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_whose_clock_ran_ahead_is_replaced_within_the_lease_duration() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("lease-future").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let in_an_hour = Timestamp::now() + SignedDuration::from_hours(1);
    leases
        .create(
            &PostParams::default(),
            &lease("ghost", "roller", in_an_hour),
        )
        .await
        .unwrap();
    let log = WorkLog::default();
    let started = Instant::now();
    let (b_cancel, b) = candidate(&client, &ns, "roller", "b", &log);
    let (c_cancel, c) = candidate(&client, &ns, "roller", "c", &log);
    let leader = eventually(
        LEASE + Duration::from_secs(5),
        "a candidate to replace the dead holder",
        || async { log.working().first().cloned() },
    )
    .await;
    let took = log.working_since(&leader).unwrap() - started;
    eprintln!("dead holder (renewTime an hour ahead) replaced {took:?} after candidates started");
    assert!(took >= LEASE - Duration::from_millis(300), "{took:?}");
    assert!(took <= LEASE + Duration::from_secs(2), "{took:?}");
    let spec = leases.get("roller").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(leader.as_str()));
    assert_eq!(spec.lease_transitions, Some(1));
    b_cancel.cancel();
    c_cancel.cancel();
    b.await.unwrap();
    c.await.unwrap();
    log.assert_never_two_leaders();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_run_takes_over_from_a_live_leader_and_gives_back() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("lease-handover").await.unwrap();
    let log = WorkLog::default();
    let (a_cancel, a) = candidate(&client, &ns, "roller", "a", &log);
    eventually(Duration::from_secs(10), "a to lead", || async {
        (log.working() == ["a"]).then_some(())
    })
    .await;
    let (b_cancel, b) = candidate(&client, &ns, "roller", "b", &log);

    let hook = LeaseLock::new(client.clone(), &ns, "roller", "hook").lease_duration(LEASE);
    let finish = Arc::new(tokio::sync::Notify::new());
    let asked = Instant::now();
    let once = tokio::spawn({
        let (log, finish) = (log.clone(), finish.clone());
        hook.lead_once(Duration::from_secs(20), move |token| async move {
            let i = log.start("hook");
            tokio::select! {
                _ = finish.notified() => {}
                _ = token.cancelled() => {}
            }
            log.stop(i);
            "rolled"
        })
    });
    eventually(
        Duration::from_secs(10),
        "the one-shot run to lead",
        || async { (log.working() == ["hook"]).then_some(()) },
    )
    .await;
    let took = log.working_since("hook").unwrap() - asked;
    eprintln!("handover from a live leader took {took:?}");
    assert!(took < LEASE, "{took:?}: handed over, not waited out");
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("roller")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("hook"));
    assert!(
        !lease
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(HANDOVER_ANNOTATION),
        "the request is removed once answered"
    );
    finish.notify_one();
    match once.await.unwrap().unwrap() {
        Led::Done(out) => assert_eq!(out, "rolled"),
        other => panic!("one-shot run: {other:?}"),
    }
    // Released: a replica leads again at once.
    eventually(
        Duration::from_secs(10),
        "a replica to lead again",
        || async { (log.working().len() == 1 && log.working()[0] != "hook").then_some(()) },
    )
    .await;
    a_cancel.cancel();
    b_cancel.cancel();
    a.await.unwrap();
    b.await.unwrap();
    log.assert_never_two_leaders();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_request_of_a_dead_requester_goes_stale() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("lease-stale").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut free = lease("", "roller", Timestamp::now());
    free.spec.as_mut().unwrap().holder_identity = None;
    free.metadata.annotations =
        Some([(HANDOVER_ANNOTATION.to_owned(), "dead-hook".to_owned())].into());
    leases.create(&PostParams::default(), &free).await.unwrap();
    let log = WorkLog::default();
    let started = Instant::now();
    let (b_cancel, b) = candidate(&client, &ns, "roller", "b", &log);
    eventually(
        LEASE + Duration::from_secs(5),
        "b to take the Lease reserved for a dead requester",
        || async { (log.working() == ["b"]).then_some(()) },
    )
    .await;
    let took = log.working_since("b").unwrap() - started;
    assert!(
        took >= LEASE - Duration::from_millis(300),
        "{took:?}: the reservation was kept"
    );
    let lease = leases.get("roller").await.unwrap();
    assert!(
        !lease
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(HANDOVER_ANNOTATION)
    );
    b_cancel.cancel();
    b.await.unwrap();
}

/// Which replica reconciled which ConfigMap, and when.
type Reconciled = (&'static str, String, Instant);

/// Records which replica reconciled which ConfigMap, and when.
struct Recorder {
    namespace: String,
    replica: &'static str,
    log: Arc<Mutex<Vec<Reconciled>>>,
}

#[async_trait]
impl Reconciler for Recorder {
    type Object = ConfigMap;

    fn name(&self) -> &str {
        "recorder"
    }

    fn api(&self, ctx: &Context) -> Result<Api<ConfigMap>, ExtensionError> {
        Ok(Api::namespaced(ctx.client()?.clone(), &self.namespace))
    }

    async fn reconcile(&self, cm: Arc<ConfigMap>, _: &Context) -> Result<Action, ExtensionError> {
        let name = cm.metadata.name.clone().unwrap_or_default();
        self.log
            .lock()
            .unwrap()
            .push((self.replica, name, Instant::now()));
        Ok(Action::await_change())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_reconcilers_run_in_one_replica_at_a_time() {
    let (client, sys, ns, fp) = setup("lead-recon", "e2e-leadrecon").await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let replica = |who: &'static str| {
        Manager::builder()
            .fingerprint(&fp)
            .webhook_namespace(&sys)
            .namespace(&ns)
            .register_webhook(false)
            .port(0)
            .bind_address("127.0.0.1".parse().unwrap())
            .shutdown_timeout(Duration::from_secs(2))
            .leader_reconciler(
                Recorder {
                    namespace: ns.clone(),
                    replica: who,
                    log: log.clone(),
                },
                Election::new(format!("{fp}-recorder"))
                    .identity(who)
                    .lease_duration(LEASE),
            )
            .build()
            .unwrap()
            .start(client.clone())
    };
    let a = replica("a").await.unwrap();
    let b = replica("b").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for i in 0..3 {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("cm-{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let reconciled_by = |log: &[Reconciled]| {
        let mut who: Vec<&str> = log.iter().map(|(w, _, _)| *w).collect();
        who.sort();
        who.dedup();
        who
    };
    let first = eventually(
        Duration::from_secs(20),
        "the 3 ConfigMaps reconciled",
        || async {
            let log = log.lock().unwrap();
            let names: std::collections::BTreeSet<&str> =
                log.iter().map(|(_, n, _)| n.as_str()).collect();
            (names.len() == 3).then(|| reconciled_by(&log))
        },
    )
    .await;
    assert_eq!(
        first.len(),
        1,
        "one replica reconciles: {:?}",
        log.lock().unwrap()
    );
    let leader = first[0];
    // The leader stops: the other replica takes over (its controller lists everything anew).
    let (stopping, staying) = if leader == "a" { (a, b) } else { (b, a) };
    let stopping_at = Instant::now();
    stopping.shutdown().await;
    eventually(
        Duration::from_secs(20),
        "the other replica to reconcile",
        || async {
            let log = log.lock().unwrap();
            (log.iter().filter(|(w, _, _)| *w != leader).count() >= 3).then_some(())
        },
    )
    .await;
    {
        let log = log.lock().unwrap();
        let last_by_leader = log
            .iter()
            .filter(|(w, _, _)| *w == leader)
            .map(|e| e.2)
            .max();
        for (who, name, at) in log.iter().filter(|(w, _, _)| *w != leader) {
            assert!(
                *at >= stopping_at && last_by_leader.is_none_or(|l| l <= *at),
                "{who} reconciled {name} while {leader} led: {log:?}"
            );
        }
    }
    staying.shutdown().await;
}
