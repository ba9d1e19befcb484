//! Faults against a real kube-apiserver and etcd, with pods created continuously while they
//! happen: the certificate Secret deleted, the caBundle corrupted, a certificate about to expire,
//! a replica killed, kube-apiserver and etcd restarted. Every failure window is measured,
//! printed and bounded.
//!
//! The tests of this binary run one at a time (a shared lock): each drives load on 2 cores, and
//! measured windows must not include another test's load.

mod common;

use std::time::Duration;

use common::*;
use eirinix_core::certs::{CertBundle, CertPolicy, Clock, ManualClock, SubjectNames};
use eirinix_core::metrics::Outcome;
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use time::OffsetDateTime;

/// Tests of this binary hold this while they run (see the module doc).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Slack for one apiserver round trip plus the apiserver noticing a configuration change (its
/// webhook configuration informer), on 2 busy cores.
const PROPAGATION: Duration = Duration::from_millis(1500);

/// How long a replica takes to act on a change of the certificate Secret it watches (the
/// watch event, the settle delay and one read, with margin for a loaded CI machine).
const WATCHED: Duration = Duration::from_millis(2500);

/// Polling period when measuring a recovery (a GET every 20 ms).
const POLL: Duration = Duration::from_millis(20);

/// Period of the fresh-handshake probe.
const PROBE: Duration = Duration::from_millis(50);

fn first_pem(pem: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    pem.find(end)
        .map(|i| pem[..i + end.len()].trim().to_owned())
        .unwrap_or_default()
}

/// Every failure happened inside `[from, to]`; the window they span is at most `max`.
fn assert_failures_within(report: &LoadReport, from: Duration, to: Duration, max: Duration) {
    for f in report.failures() {
        assert!(
            f.start + Duration::from_millis(50) >= from && f.end <= to,
            "an admission failed outside the fault ({from:?}..{to:?}): {f:?}; {}",
            report.summary()
        );
    }
    if let Some((a, b)) = report.failure_window() {
        assert!(
            b - a <= max,
            "admissions failed for {:?}, more than {max:?}: {}",
            b - a,
            report.summary()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_certificate_secret_is_recreated_with_a_new_ca() {
    let _serial = serial().await;
    bounded(Duration::from_secs(90), async {
        let (client, sys, ns, fp) = setup("f-secret", "f-secret").await;
        let check = Duration::from_secs(1);
        let repair = Duration::from_millis(500);
        let running = start_ready(
            manager(&fp, &sys, &ns)
                .cert_check_interval(check)
                .repair_interval(repair),
            &client,
        )
        .await;
        let before = running.published().unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);
        let old = secrets.get(&secret_name(&fp)).await.unwrap();
        let old_bundle = bundle_of(&old);

        let (load, probe) =
            load_and_probe(&client, &ns, "sd", &fp, vec![running.local_addr()], PROBE);
        let deleted_at = delete_secret_after(Duration::from_secs(2), &load, &secrets, &fp).await;
        let recreated = eventually_every(
            POLL,
            Duration::from_secs(10),
            "the certificate Secret to be recreated",
            || async {
                secrets
                    .get_opt(&secret_name(&fp))
                    .await
                    .unwrap()
                    .filter(|s| s.metadata.uid != old.metadata.uid)
            },
        )
        .await;
        let recreated_at = load.elapsed();
        let after = eventually_every(
            POLL,
            Duration::from_secs(10),
            "the new certificates to be served",
            || async { running.published().filter(|p| *p != before) },
        )
        .await;
        eventually_every(
            POLL,
            Duration::from_secs(10),
            "the caBundle to carry the new CA",
            || ca_bundle_is(&client, &fp, &after.ca_bundle),
        )
        .await;
        let updated_at = load.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let report = load.stop().await;
        let handshakes = probe.stop().await;
        println!(
            "secret deleted at {deleted_at:?}, recreated at {recreated_at:?} (+{:?}), caBundle \
             updated at {updated_at:?} (+{:?}); load: {}; fresh handshakes: {}",
            recreated_at - deleted_at,
            updated_at - deleted_at,
            report.summary(),
            handshakes.summary()
        );

        // Recreated by the running manager, with a new CA (not the deleted material).
        let new_bundle = bundle_of(&recreated);
        assert_ne!(new_bundle.ca.cert_pem, old_bundle.ca.cert_pem, "a new CA");
        assert_ne!(new_bundle.ca.key_pem, old_bundle.ca.key_pem);
        assert_eq!(
            first_pem(&after.ca_bundle),
            new_bundle.ca.cert_pem.trim(),
            "the served CA is the Secret's"
        );
        assert!(
            !after
                .ca_bundle
                .contains(first_pem(&before.ca_bundle).as_str()),
            "the deleted CA is no longer trusted"
        );
        assert_eq!(after.serving_chain, new_bundle.serving_chain_pem());
        // Detected within one certificate check.
        assert!(
            recreated_at - deleted_at <= check + PROPAGATION,
            "recreated after {:?}",
            recreated_at - deleted_at
        );
        assert!(
            updated_at - deleted_at <= check + repair + PROPAGATION,
            "caBundle updated after {:?}",
            updated_at - deleted_at
        );
        // No failed admission beyond the repair interval, and none outside the switch; a new
        // connection fails only between serving the new certificate and registering its CA.
        assert_failures_within(&report, deleted_at, updated_at + PROPAGATION, repair);
        assert_failures_within(&handshakes, deleted_at, updated_at + PROPAGATION, repair);
        assert!(handshakes.succeeded_after(updated_at + PROPAGATION) > 5);
        assert!(
            report.succeeded_after(updated_at + PROPAGATION) > 5,
            "admissions work after the switch: {}",
            report.summary()
        );
        assert!(running.health().readiness().is_ok());
        running.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_certificate_secret_with_two_replicas_converges_at_once_through_the_watch() {
    let _serial = serial().await;
    bounded(Duration::from_secs(90), async {
        let (client, sys, ns, fp) = setup("f-secret2", "f-secret2").await;
        // The replicas check at different times: `a` often, `b` at the production interval,
        // so `b` converges within the test only through its watch of the Secret.
        let (check_a, check) = (Duration::from_secs(1), Duration::from_secs(60));
        let repair = Duration::from_millis(500);
        let start = |check: Duration| {
            start_ready(
                manager(&fp, &sys, &ns)
                    .cert_check_interval(check)
                    .repair_interval(repair),
                &client,
            )
        };
        let (a, b) = (start(check_a).await, start(check).await);
        let before = a.published().unwrap();
        assert_eq!(b.published().as_ref(), Some(&before));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);

        let addrs = vec![a.local_addr(), b.local_addr()];
        let (load, probe) = load_and_probe(&client, &ns, "sd2", &fp, addrs, PROBE);
        let deleted_at = delete_secret_after(Duration::from_secs(2), &load, &secrets, &fp).await;
        // Both replicas serve the new certificates, and the configuration carries the new CA.
        let after = eventually_every(
            POLL,
            Duration::from_secs(15),
            "both replicas to serve the recreated certificates",
            || async {
                let (pa, pb) = (a.published()?, b.published()?);
                (pa != before && pa == pb).then_some(pa)
            },
        )
        .await;
        let converged_at = load.elapsed();
        eventually_every(
            POLL,
            Duration::from_secs(10),
            "the caBundle to carry the new CA",
            || ca_bundle_is(&client, &fp, &after.ca_bundle),
        )
        .await;
        let updated_at = load.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Still the new CA: no replica put the deleted one back.
        assert_eq!(
            registered_ca_bundle(&client, &config_name(&fp))
                .await
                .unwrap(),
            after.ca_bundle
        );
        let report = load.stop().await;
        let handshakes = probe.stop().await;
        let (n, span) = report.failures_between(deleted_at, Duration::MAX);
        let (hn, hspan) = handshakes.failures_between(deleted_at, Duration::MAX);
        println!(
            "two replicas: secret deleted at {deleted_at:?}; both serve the new CA +{:?}; \
             caBundle +{:?}; {n} failed admissions spanning {span:?}; {hn} failed fresh \
             handshakes spanning {hspan:?}; load: {}; fresh handshakes: {}",
            converged_at - deleted_at,
            updated_at - deleted_at,
            report.summary(),
            handshakes.summary()
        );
        let stored = bundle_of(&secrets.get(&secret_name(&fp)).await.unwrap());
        assert_eq!(first_pem(&after.ca_bundle), stored.ca.cert_pem.trim());
        // Both replicas watch the Secret: the deletion is acted on at once (not at `a`'s next
        // check), and `b`, checking every 60 s, picks up what `a` wrote at once too. Until it
        // has, the replica still serving the deleted CA's certificate may fail admissions
        // routed to it.
        assert!(
            converged_at - deleted_at <= WATCHED,
            "converged after {:?} (check intervals {check_a:?} and {check:?})",
            converged_at - deleted_at
        );
        assert_failures_within(
            &report,
            deleted_at,
            updated_at.max(converged_at) + PROPAGATION,
            repair + WATCHED,
        );
        // New connections fail meanwhile: to a replica still serving the deleted CA's
        // certificate, and to the other if one repairs the caBundle back to the deleted CA.
        // Bounded by the faster check plus the watch, well under the slower interval.
        assert_failures_within(
            &handshakes,
            deleted_at,
            updated_at.max(converged_at) + PROPAGATION,
            repair + WATCHED,
        );
        assert!(report.succeeded_after(updated_at + PROPAGATION) > 5);
        assert!(handshakes.succeeded_after(updated_at + PROPAGATION) > 5);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_ca_bundle_is_repaired() {
    let _serial = serial().await;
    bounded(Duration::from_secs(90), async {
        let (client, sys, ns, fp) = setup("f-cabundle", "f-cabundle").await;
        let repair = Duration::from_millis(500);
        let running = start_ready(manager(&fp, &sys, &ns).repair_interval(repair), &client).await;
        let good = running.published().unwrap().ca_bundle;
        let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
        let uid = cfgs.get(&config_name(&fp)).await.unwrap().metadata.uid;
        // A valid CA that did not sign our certificate, then bytes that are not PEM at all.
        let stranger = CertBundle::generate(
            &SubjectNames::for_host("127.0.0.1"),
            &CertPolicy::default(),
            OffsetDateTime::now_utc(),
        )
        .unwrap()
        .ca
        .cert_pem;
        let repairs_before = running.metrics().config_repairs();

        let load = Load::start(&client, &ns, "cb", 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut windows = Vec::new();
        for (what, bad) in [
            ("another CA", stranger.into_bytes()),
            ("garbage", b"\x00not a certificate\xff".to_vec()),
        ] {
            let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                 "value": ByteString(bad)}
            ]))
            .unwrap();
            let at = load.elapsed();
            cfgs.patch(
                &config_name(&fp),
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
            .unwrap_or_else(|e| panic!("corrupting the caBundle ({what}): {e}"));
            eventually_every(
                POLL,
                Duration::from_secs(10),
                "the caBundle to be repaired",
                || ca_bundle_is(&client, &fp, &good),
            )
            .await;
            let repaired = load.elapsed();
            println!(
                "caBundle corrupted ({what}) at {at:?}, repaired after {:?}",
                repaired - at
            );
            assert!(
                repaired - at <= repair + PROPAGATION,
                "{what}: repaired after {:?}",
                repaired - at
            );
            windows.push((at, repaired));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let report = load.stop().await;
        println!("load: {}", report.summary());
        for (at, repaired) in &windows {
            let (n, span) = report.failures_between(*at, *repaired + PROPAGATION);
            println!(
                "corrupted at {at:?}: {n} failed admissions spanning {span:?} (repaired after {:?})",
                *repaired - *at
            );
            assert!(span <= repair + PROPAGATION, "admissions failed for {span:?}");
        }
        for f in report.failures() {
            assert!(
                windows
                    .iter()
                    .any(|(a, r)| f.start + Duration::from_millis(50) >= *a
                        && f.end <= *r + PROPAGATION),
                "an admission failed outside a corruption window: {f:?}"
            );
        }
        assert!(report.succeeded_after(windows[1].1 + PROPAGATION) > 5);
        assert!(running.metrics().config_repairs() >= repairs_before + 2);
        assert_eq!(
            cfgs.get(&config_name(&fp)).await.unwrap().metadata.uid,
            uid,
            "repaired in place, never deleted and re-created"
        );
        running.shutdown().await;
    })
    .await
}

/// Write a certificate Secret the manager will find at start.
async fn plant_secret(client: &kube::Client, ns: &str, fp: &str, bundle: &CertBundle) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(fp)),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            bundle
                .to_secret_data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_in_a_minute_at_start_is_renewed_before_serving() {
    let _serial = serial().await;
    bounded(Duration::from_secs(60), async {
        let (client, sys, ns, fp) = setup("f-stale", "f-stale").await;
        // Issued by a clock set in the past with the default policy (90-day serving
        // certificates): it has one minute left, as after a long shutdown.
        let policy = CertPolicy::default();
        let now = OffsetDateTime::now_utc();
        let past = ManualClock::new(now - (policy.serving_validity - Duration::from_secs(60)));
        let names = SubjectNames::for_host("127.0.0.1");
        let stale = CertBundle::generate(&names, &policy, past.now()).unwrap();
        let left = stale.serving.not_after - now;
        assert!(
            (30..=90).contains(&left.whole_seconds()),
            "the planted certificate expires in {left}"
        );
        plant_secret(&client, &sys, &fp, &stale).await;

        // The manager runs on the real clock.
        let started = std::time::Instant::now();
        let running = start_ready(manager(&fp, &sys, &ns), &client).await;
        println!("started and ready in {:?}", started.elapsed());
        let served = running.published().unwrap();
        assert_ne!(
            served.serving_chain,
            stale.serving_chain_pem(),
            "the expiring certificate must not be served"
        );
        let stored = stored_bundle(&client, &sys, &fp).await;
        assert_eq!(served.serving_chain, stored.serving_chain_pem());
        assert!(
            stored.serving.not_after - OffsetDateTime::now_utc() > time::Duration::days(80),
            "renewed for the full validity, until {}",
            stored.serving.not_after
        );
        assert_eq!(
            stored.ca.cert_pem, stale.ca.cert_pem,
            "same CA: a serving renewal does not touch the caBundle"
        );
        // Every pod is admitted and mutated from the start.
        let measured = load_and_probe(&client, &ns, "st", &fp, vec![running.local_addr()], PROBE);
        let (report, handshakes) = run_for(Duration::from_secs(3), measured).await;
        println!(
            "load: {}; fresh handshakes: {}",
            report.summary(),
            handshakes.summary()
        );
        assert!(report.failures().is_empty(), "{}", report.summary());
        assert!(report.succeeded() > 10, "{}", report.summary());
        assert!(handshakes.failures().is_empty(), "{}", handshakes.summary());
        assert!(handshakes.succeeded() > 10);
        running.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_in_a_minute_is_renewed_while_serving_without_failure() {
    let _serial = serial().await;
    bounded(Duration::from_secs(120), async {
        let (client, sys, ns, fp) = setup("f-expiry", "f-expiry").await;
        // A serving certificate valid for one minute (from a CA valid for years): due for renewal
        // at 2/3 of its window, about 40 s from now.
        let short = CertPolicy {
            serving_validity: Duration::from_secs(60),
            ..CertPolicy::default()
        };
        let names = SubjectNames::for_host("127.0.0.1");
        let planted = CertBundle::generate(&names, &short, OffsetDateTime::now_utc()).unwrap();
        plant_secret(&client, &sys, &fp, &planted).await;

        // The manager: the real clock, the default policy and the production check interval
        // (60 s): the renewal must be scheduled from the certificate, not from the interval.
        let running = start_ready(
            manager(&fp, &sys, &ns).cert_check_interval(Duration::from_secs(60)),
            &client,
        )
        .await;
        assert_eq!(
            running.published().unwrap().serving_chain,
            planted.serving_chain_pem(),
            "not due yet: served as is"
        );
        let (load, probe) =
            load_and_probe(&client, &ns, "ex", &fp, vec![running.local_addr()], PROBE);
        let renewed = eventually(
            Duration::from_secs(75),
            "the one-minute certificate to be renewed",
            || async {
                running
                    .published()
                    .filter(|p| p.serving_chain != planted.serving_chain_pem())
            },
        )
        .await;
        let renewed_at = OffsetDateTime::now_utc();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let report = load.stop().await;
        let handshakes = probe.stop().await;
        println!(
            "renewed at {renewed_at}, {} before the old certificate's expiry ({}); load: {}; \
             fresh handshakes: {}",
            planted.serving.not_after - renewed_at,
            planted.serving.not_after,
            report.summary(),
            handshakes.summary()
        );
        assert!(
            planted.serving.not_after - renewed_at >= time::Duration::seconds(10),
            "renewed too late: {renewed_at}, expiry {}",
            planted.serving.not_after
        );
        let stored = stored_bundle(&client, &sys, &fp).await;
        assert_eq!(renewed.serving_chain, stored.serving_chain_pem());
        assert!(stored.serving.not_after - renewed_at > time::Duration::days(80));
        assert!(report.failures().is_empty(), "{}", report.summary());
        assert!(report.succeeded() > 50, "{}", report.summary());
        assert!(handshakes.failures().is_empty(), "{}", handshakes.summary());
        assert!(handshakes.succeeded() > 50);
        running.shutdown().await;
    })
    .await
}

/// Reviews answered by `r` so far.
fn answered(r: &eirinix_core::RunningManager) -> u64 {
    r.metrics()
        .extension_named("sticky")
        .map_or(0, |m| m.count(Outcome::Patched))
}

fn url_of(r: &eirinix_core::RunningManager) -> String {
    format!("https://127.0.0.1:{}/sticky", r.local_addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_replica_the_apiserver_calls_fails_admissions_for_at_most_a_repair_interval() {
    let _serial = serial().await;
    bounded(Duration::from_secs(120), async {
        let (client, sys, ns, fp) = setup("f-replica", "f-replica").await;
        let repair = Duration::from_millis(250);
        let start = || start_ready(manager(&fp, &sys, &ns).repair_interval(repair), &client);
        let mut live = vec![start().await, start().await];
        assert_eq!(
            live[0].published(),
            live[1].published(),
            "replicas share one Secret"
        );

        let load = Load::start(&client, &ns, "rk", 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rounds = Vec::new();
        for round in 0..3 {
            // In URL mode each replica registers its own URL at start; after that, a replica
            // leaves another serving replica's registration alone (several repair intervals
            // here without a move).
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..30 {
                seen.insert(registered_url(&client, &config_name(&fp)).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                seen.len(),
                1,
                "round {round}: the configuration moved between live replicas: {seen:?}"
            );
            // Kill the one the apiserver is calling: registered, and its review count rising
            // while the other's stands still.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let victim = loop {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: no replica was called alone for 100 ms"
                );
                let before: Vec<u64> = live.iter().map(answered).collect();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let after: Vec<u64> = live.iter().map(answered).collect();
                let Some(url) = registered_url(&client, &config_name(&fp)).await else {
                    continue;
                };
                let Some(i) = live.iter().position(|r| url_of(r) == url) else {
                    continue;
                };
                if after[i] > before[i] && after[1 - i] == before[1 - i] {
                    break i;
                }
            };
            let victim = live.remove(victim);
            let survivor_url = url_of(&live[0]);
            let killed_at = load.elapsed();
            victim.abort();
            eventually_every(
                POLL,
                Duration::from_secs(10),
                "the survivor to re-point the configuration",
                || async {
                    (registered_url(&client, &config_name(&fp)).await? == survivor_url)
                        .then_some(())
                },
            )
            .await;
            let repointed_at = load.elapsed();
            rounds.push((killed_at, repointed_at));
            // Survivor alone for a while, then a replacement (which registers itself at start).
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(
                registered_url(&client, &config_name(&fp)).await.unwrap(),
                survivor_url,
                "nobody else re-points it while the survivor is alone"
            );
            live.push(start().await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let report = load.stop().await;
        println!("load: {}", report.summary());
        for (i, (killed, repointed)) in rounds.iter().enumerate() {
            let until = rounds
                .get(i + 1)
                .map_or(Duration::MAX, |(next, _)| *next - Duration::from_millis(50));
            let (n, span) = report.failures_between(*killed - Duration::from_millis(50), until);
            let last_failure_end = report
                .failures()
                .into_iter()
                .filter(|a| a.start + Duration::from_millis(50) >= *killed && a.start < until)
                .map(|a| a.end)
                .max();
            println!(
                "round {i}: killed at {killed:?}; configuration re-pointed after {:?} (repair \
                 interval {repair:?}); {n} failed admissions spanning {span:?}, the last ending \
                 {:?} after the kill",
                *repointed - *killed,
                last_failure_end.map(|e| e.saturating_sub(*killed))
            );
            assert!(
                *repointed - *killed <= repair + PROPAGATION,
                "round {i}: re-pointed after {:?}",
                *repointed - *killed
            );
            assert!(
                span <= repair + PROPAGATION,
                "round {i}: admissions failed for {span:?}"
            );
            assert!(report.succeeded_after(*repointed + PROPAGATION) > 5);
        }
        // Before the first kill, and whenever the configuration moved between live replicas
        // (or to a replacement starting), nothing failed.
        for f in report.failures() {
            assert!(
                rounds
                    .iter()
                    .any(|(k, r)| f.start + Duration::from_millis(50) >= *k
                        && f.end <= *r + PROPAGATION),
                "an admission failed outside a kill window: {f:?}"
            );
        }
        assert!(report.succeeded() > 50, "{}", report.summary());
        for r in live {
            r.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_and_etcd_restarts_with_a_manager_running() {
    let _serial = serial().await;
    bounded(Duration::from_secs(240), async {
        init_tracing();
        // A dedicated plane: this test kills its processes.
        let cp = ControlPlane::start()
            .await
            .expect("control plane (see eirinix-testenv README)");
        let client = cp.client().await.unwrap();
        let (sys, ns) = namespaces(&cp, "f-restart").await;
        let fp = unique_name("f-restart");
        // Serving certificates renewed every few seconds: the certificate loop must keep going
        // through the outages.
        let policy = CertPolicy {
            serving_validity: Duration::from_secs(8),
            ..CertPolicy::default()
        };
        let running = start_ready(
            manager(&fp, &sys, &ns)
                .cert_policy(policy)
                .cert_check_interval(Duration::from_millis(500))
                .repair_interval(Duration::from_millis(500)),
            &client,
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let created = pods
            .create(&PostParams::default(), &app_pod("before"))
            .await
            .unwrap();
        assert!(sticky(&created).is_some());
        let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
        let cfg_uid = cfgs.get(&config_name(&fp)).await.unwrap().metadata.uid;
        let secret_uid = Api::<Secret>::namespaced(client.clone(), &sys)
            .get(&secret_name(&fp))
            .await
            .unwrap()
            .metadata
            .uid;

        for (what, round) in [("kube-apiserver", 0), ("etcd", 1)] {
            let chain_before = running.published().unwrap().serving_chain;
            let t = std::time::Instant::now();
            match round {
                0 => cp.restart_apiserver().await.unwrap(),
                _ => cp.restart_etcd().await.unwrap(),
            }
            let back = t.elapsed();
            let client = cp.client().await.unwrap();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            // Admissions work again.
            let t = std::time::Instant::now();
            let name = format!("after-{round}");
            let pod = eventually(
                Duration::from_secs(30),
                "an admitted and mutated pod after the restart",
                || async {
                    match pods.create(&PostParams::default(), &app_pod(&name)).await {
                        Ok(p) => Some(p),
                        // An earlier attempt went through but its answer was lost.
                        Err(kube::Error::Api(s)) if s.code == 409 => pods.get(&name).await.ok(),
                        Err(_) => None,
                    }
                },
            )
            .await;
            assert!(sticky(&pod).is_some(), "admitted unmutated after {what}");
            let admitting = t.elapsed();
            // The certificate loop renews again (no stuck state).
            let t = std::time::Instant::now();
            eventually(
                Duration::from_secs(20),
                "a certificate renewal after the restart",
                || async {
                    running
                        .published()
                        .filter(|p| p.serving_chain != chain_before)
                },
            )
            .await;
            let rotating = t.elapsed();
            // Readiness recovers (the configuration check passed again).
            let t = std::time::Instant::now();
            running
                .wait_ready(Duration::from_secs(20))
                .await
                .unwrap_or_else(|why| panic!("not ready after the {what} restart: {why}"));
            let ready = t.elapsed();
            println!(
                "{what} restarted in {back:?}; admitting {admitting:?} later; certificate \
                 renewed within {rotating:?}; ready within {ready:?}"
            );
            // Let a few more renewals and repairs run on the new connections.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }

        // Drift repair recovered: a deleted configuration comes back.
        let client = cp.client().await.unwrap();
        let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
        assert_eq!(
            cfgs.get(&config_name(&fp)).await.unwrap().metadata.uid,
            cfg_uid,
            "the configuration survived both restarts in place"
        );
        let t = std::time::Instant::now();
        cfgs.delete(&config_name(&fp), &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            Duration::from_secs(10),
            "the deleted configuration to be recreated",
            || async {
                cfgs.get_opt(&config_name(&fp))
                    .await
                    .ok()?
                    .filter(|c| c.metadata.uid != cfg_uid)
            },
        )
        .await;
        println!(
            "configuration deleted after the restarts: recreated in {:?}",
            t.elapsed()
        );
        // Nothing lost: the pods, the Secret (same object, renewed in place), the admissions.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        for name in ["before", "after-0", "after-1"] {
            let pod = pods.get(name).await.unwrap();
            assert!(sticky(&pod).is_some(), "{name}");
        }
        assert_eq!(
            Api::<Secret>::namespaced(client.clone(), &sys)
                .get(&secret_name(&fp))
                .await
                .unwrap()
                .metadata
                .uid,
            secret_uid,
            "the certificate Secret is the same object"
        );
        let measured = load_and_probe(
            &client,
            &ns,
            "final",
            &fp,
            vec![running.local_addr()],
            PROBE,
        );
        let (report, handshakes) = run_for(Duration::from_secs(4), measured).await;
        println!(
            "after the restarts: {}; fresh handshakes: {}",
            report.summary(),
            handshakes.summary()
        );
        assert!(report.failures().is_empty(), "{}", report.summary());
        assert!(report.succeeded() > 10);
        // Renewals keep going (8 s certificates) and every new connection trusts them.
        assert!(handshakes.failures().is_empty(), "{}", handshakes.summary());
        running.shutdown().await;
    })
    .await
}

/// Split mode (the chart's default): the server cannot write the configuration, so a CA it stages
/// must not sign before `register` has put it into caBundle; fresh handshakes never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_ca_rotation_waits_for_register_and_never_breaks_trust() {
    let _serial = serial().await;
    let (client, sys, apps, fp) = setup("split", "split").await;
    let policy = eirinix_core::certs::CertPolicy {
        ca_validity: Duration::from_secs(30),
        serving_validity: Duration::from_secs(6),
        renew_fraction: 0.5,
        ca_promote_delay: Duration::from_secs(2),
        previous_ca_retention: Duration::from_secs(4),
        ..Default::default()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let builder = || {
        manager(&fp, &sys, &apps)
            .port(port)
            .cert_policy(policy.clone())
            .cert_check_interval(Duration::from_millis(500))
    };
    builder()
        .extension(Sticky)
        .build()
        .unwrap()
        .register(client.clone())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);
    let initial_ca = bundle_of(&secrets.get(&secret_name(&fp)).await.unwrap())
        .ca
        .cert_pem;
    let server = start_ready(builder().register_webhook(false), &client).await;
    let probe = HandshakeProbe::start(
        &client,
        &config_name(&fp),
        vec![server.local_addr()],
        PROBE,
        tokio::time::Instant::now(),
    );

    // The CA renews at two thirds of its 30 s: staged by the server, but not promoted.
    let staged = bounded(
        Duration::from_secs(40),
        eventually(Duration::from_secs(35), "a staged CA", || async {
            let b = bundle_of(&secrets.get(&secret_name(&fp)).await.ok()?);
            b.next_ca.clone().map(|n| (n.cert_pem, b.ca.cert_pem))
        }),
    )
    .await;
    assert_eq!(staged.1, initial_ca, "the staged CA must not sign yet");
    tokio::time::sleep(Duration::from_secs(4)).await; // well past the 2 s promote delay
    let held = bundle_of(&secrets.get(&secret_name(&fp)).await.unwrap());
    assert_eq!(
        held.ca.cert_pem, initial_ca,
        "promoted before the configuration trusted the new CA"
    );

    // `register` (a helm upgrade) puts the staged CA into caBundle; it signs only once it has
    // been trusted there for the promote delay (every apiserver has read the new caBundle).
    builder()
        .extension(Sticky)
        .build()
        .unwrap()
        .register(client.clone())
        .await
        .unwrap();
    let registered = tokio::time::Instant::now();
    bounded(
        Duration::from_secs(15),
        eventually(
            Duration::from_secs(10),
            "the staged CA to be promoted",
            || async {
                let b = bundle_of(&secrets.get(&secret_name(&fp)).await.ok()?);
                (b.ca.cert_pem == staged.0).then_some(())
            },
        ),
    )
    .await;
    assert!(
        registered.elapsed() >= policy.ca_promote_delay,
        "the staged CA signed {:?} after register, before the {:?} promote delay",
        registered.elapsed(),
        policy.ca_promote_delay
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop().await;
    assert!(
        report.attempts.len() > 100,
        "probe made only {} handshakes",
        report.attempts.len()
    );
    assert!(
        report.failures().is_empty(),
        "fresh handshakes failed during split-mode CA rotation: {}",
        report.summary()
    );
    server.shutdown().await;
}
