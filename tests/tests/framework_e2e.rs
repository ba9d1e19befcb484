//! End-to-end tests of eirinix-core against a real kube-apiserver (URL mode, https://127.0.0.1:PORT).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use eirinix_core::FailurePolicy;
use eirinix_core::certs::CertPolicy;
use eirinix_testenv::unique_name;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

fn pem_count(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_pods_are_mutated_and_others_are_not() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let fp = unique_name("e2e-basic");
    let (ns, excluded, system) = (
        unique_name("apps"),
        unique_name("excluded"),
        unique_name("sys"),
    );
    for n in [&ns, &excluded, &system] {
        labelled_namespace(&client, n, &[("e2e-run", &fp)]).await;
    }
    let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([("e2e-run".to_owned(), fp.clone())].into()),
        ..Default::default()
    };
    let running = start_ready(
        manager(&fp, &system, &ns)
            .namespace("")
            .namespace_selector(selector)
            .excluded_namespaces([excluded.clone(), system.clone(), "kube-system".into()]),
        &client,
    )
    .await;

    let cfg = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&config_name(&fp))
        .await
        .unwrap();
    let hook = &cfg.webhooks.as_ref().unwrap()[0];
    assert_eq!(hook.name, format!("sticky.{fp}.org"));
    assert_eq!(
        hook.client_config.url.as_deref(),
        Some(format!("https://127.0.0.1:{}/sticky", running.local_addr().port()).as_str())
    );

    let created = admit(&client, &ns, &app_pod("app-0")).await;
    assert_eq!(
        sticky(&created).as_deref(),
        Some("hello"),
        "app pod must be mutated"
    );
    assert_eq!(
        created.metadata.annotations.unwrap()["eirinix.org/sticky"],
        "injected"
    );
    let plain = admit(&client, &ns, &plain_pod("not-an-app")).await;
    assert_eq!(
        sticky(&plain),
        None,
        "a pod without source_type=APP is untouched"
    );
    let untouched = admit(&client, &excluded, &app_pod("app-0")).await;
    assert_eq!(
        sticky(&untouched),
        None,
        "an app pod in an excluded namespace is untouched"
    );
    let own_pod = admit(&client, &system, &app_pod("app-0")).await;
    assert_eq!(
        sticky(&own_pod),
        None,
        "the webhook's own namespace is excluded"
    );

    // Metrics and readiness over the same TLS port.
    let metrics = running.metrics().render();
    assert!(
        metrics.contains("eirinix_reviews_total{extension=\"sticky\",outcome=\"patched\"} 1"),
        "{metrics}"
    );
    assert!(running.health().readiness().is_ok());
    running.shutdown().await;
}

/// `GET /readyz` over a manager's own TLS port (`addr`, trusting `ca`): the response.
async fn readyz(addr: std::net::SocketAddr, ca: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = eirinix_core::tls::client_config(ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.ok();
    String::from_utf8_lossy(&response).into_owned()
}

/// The first thing a stopping replica does is report not ready (so its endpoint is dropped),
/// while it keeps admitting for the drain period: the apiserver's open connections still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_ready_at_once_and_admits_during_the_drain() {
    let (client, system, ns, fp) = setup("drain-ready", "drain-ready").await;
    let drain = Duration::from_secs(8);
    let running = start_ready(manager(&fp, &system, &ns).drain_period(drain), &client).await;
    let health = running.health().clone();
    let probe = running.local_addr();
    let ca = running
        .published()
        .expect("certificates published")
        .ca_bundle;
    let code = readyz(probe, &ca).await;
    assert!(code.starts_with("HTTP/1.1 200"), "{code}");
    let stopping = tokio::time::Instant::now();
    let stopped = tokio::spawn(running.shutdown());
    bounded(Duration::from_secs(2), async {
        while health.readiness().is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let why = health.readiness().unwrap_err();
    assert!(why.contains("shutting down"), "{why}");
    // /readyz says so on the wire, and reviews are still answered.
    let code = readyz(probe, &ca).await;
    assert!(code.starts_with("HTTP/1.1 503"), "{code}");
    let created = admit(&client, &ns, &app_pod("during-drain")).await;
    assert_eq!(
        sticky(&created).as_deref(),
        Some("hello"),
        "admitted and mutated while draining"
    );
    assert!(
        stopping.elapsed() < drain,
        "the checks ran within the drain period ({:?})",
        stopping.elapsed()
    );
    bounded(drain + Duration::from_secs(10), stopped)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_applies_when_the_webhook_is_down() {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    for (policy, expect_admitted) in [(FailurePolicy::Fail, false), (FailurePolicy::Ignore, true)] {
        let (sys, ns) = namespaces(cp, "fp").await;
        let fp = unique_name("e2e-fp");
        let running = start_ready(manager(&fp, &sys, &ns).failure_policy(policy), &client).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        assert!(sticky(&admit(&client, &ns, &app_pod("before")).await).is_some());
        running.abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let result = pods.create(&PostParams::default(), &app_pod("after")).await;
        match (expect_admitted, result) {
            (true, Ok(pod)) => assert_eq!(sticky(&pod), None, "Ignore admits the pod unmutated"),
            (false, Err(kube::Error::Api(s))) => {
                assert!(
                    s.message.contains("failed calling webhook"),
                    "apiserver's webhook error expected, got {s:?}"
                );
                assert!(
                    s.message.contains(&format!("sticky.{fp}.org")),
                    "{}",
                    s.message
                );
            }
            (want, got) => panic!("policy {policy:?}: expected admitted={want}, got {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_reuse_the_secret_and_concurrent_starts_share_one_ca() {
    let (client, sys, ns, fp) = setup("restart", "e2e-restart").await;
    let first = start_sticky(manager(&fp, &sys, &ns), &client).await;
    let published = first.published().unwrap();
    first.shutdown().await;
    let second = start_sticky(manager(&fp, &sys, &ns), &client).await;
    assert_eq!(
        second.published().unwrap(),
        published,
        "a restart serves the same chain and CA"
    );
    second.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert!(sticky(&admit(&client, &ns, &app_pod("after-restart")).await).is_some());
    second.shutdown().await;

    // Two managers racing on a fresh fingerprint converge on one Secret and one CA.
    let fp2 = unique_name("e2e-race");
    let (a, b) = tokio::join!(
        start_sticky(manager(&fp2, &sys, &ns), &client),
        start_sticky(manager(&fp2, &sys, &ns), &client),
    );
    assert_eq!(
        a.published().unwrap().ca_bundle,
        b.published().unwrap().ca_bundle
    );
    assert_eq!(
        a.published().unwrap().serving_chain,
        b.published().unwrap().serving_chain
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);
    let secret = secrets.get(&secret_name(&fp2)).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
        assert!(data.contains_key(key), "secret lacks {key}");
    }
    assert_eq!(
        String::from_utf8(data["ca.crt"].0.clone()).unwrap().trim(),
        a.published().unwrap().ca_bundle.trim()
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_admission() {
    let (client, sys, ns, fp) = setup("rotate", "e2e-rotate").await;
    let policy = CertPolicy {
        ca_validity: Duration::from_secs(24),
        serving_validity: Duration::from_secs(6),
        renew_fraction: 0.5,
        ca_promote_delay: Duration::from_secs(2),
        previous_ca_retention: Duration::from_secs(4),
        ..CertPolicy::default()
    };
    let running = start_ready(
        manager(&fp, &sys, &ns)
            .cert_policy(policy)
            .cert_check_interval(Duration::from_millis(500)),
        &client,
    )
    .await;
    let initial = running.published().unwrap();

    // The load below reuses the apiserver's connections; fresh handshakes against the registered
    // caBundle show what a new connection (a restarted apiserver) would see.
    let probe = HandshakeProbe::start(
        &client,
        &config_name(&fp),
        vec![running.local_addr()],
        Duration::from_millis(100),
        tokio::time::Instant::now(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (pods, stop, created) = (
            Api::<Pod>::namespaced(client.clone(), &ns),
            stop.clone(),
            created.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match pods
                    .create(&PostParams::default(), &app_pod(&format!("w{worker}-{i}")))
                    .await
                {
                    Ok(p) if sticky(&p).is_some() => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(p) => failures.push(format!("{:?} admitted unmutated", p.metadata.name)),
                    Err(e) => failures.push(e.to_string()),
                }
                i += 1;
            }
            failures
        }));
    }
    // Watch the served chain and the registered caBundle change while the load runs.
    let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let mut chains = std::collections::HashSet::new();
    let mut cas = std::collections::HashSet::new();
    let mut max_bundle = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let p = running.published().unwrap();
        chains.insert(p.serving_chain.clone());
        cas.insert(
            p.ca_bundle
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
        if let Some(cfg) = cfgs.get_opt(&config_name(&fp)).await.unwrap() {
            let bundle = cfg.webhooks.unwrap()[0]
                .client_config
                .ca_bundle
                .clone()
                .unwrap();
            max_bundle = max_bundle.max(pem_count(&String::from_utf8_lossy(&bundle.0)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let handshakes = probe.stop().await;
    let mut failures = Vec::new();
    for l in load {
        failures.extend(l.await.unwrap());
    }
    let n = created.load(Ordering::Relaxed);
    assert!(
        handshakes.failures().is_empty() && handshakes.succeeded() > 100,
        "fresh handshakes during rotation: {}",
        handshakes.summary()
    );
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed during rotation: {:?}",
        failures.len(),
        n + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 50, "the load generator created only {n} pods");
    assert!(
        chains.len() >= 4,
        "expected several serving-cert rotations in 30 s, saw {} chains",
        chains.len()
    );
    assert!(cas.len() >= 2, "expected a CA rotation in 30 s");
    assert!(
        max_bundle >= 2,
        "the caBundle never carried old and new CA together"
    );
    assert_ne!(running.published().unwrap(), initial);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired() {
    let (client, sys, ns, fp) = setup("drift", "e2e-drift").await;
    let running = start_sticky(manager(&fp, &sys, &ns), &client).await;
    let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let name = config_name(&fp);

    cfgs.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "deleted configuration to be recreated",
        || async { cfgs.get_opt(&name).await.unwrap() },
    )
    .await;

    let edit = serde_json::json!({"webhooks": [{"name": format!("sticky.{fp}.org"), "failurePolicy": "Ignore", "clientConfig": {"caBundle": "Z2FyYmFnZQ=="}}]});
    // A strategic merge patch by someone else (webhooks merge by name).
    cfgs.patch(&name, &PatchParams::default(), &Patch::Strategic(&edit))
        .await
        .unwrap();
    let fixed = eventually(
        Duration::from_secs(5),
        "edited configuration to be restored",
        || async {
            let c = cfgs.get(&name).await.unwrap();
            let w = &c.webhooks.as_ref().unwrap()[0];
            (w.failure_policy.as_deref() == Some("Fail")
                && w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| b.0 != b"garbage"))
            .then_some(c)
        },
    )
    .await;
    assert_eq!(fixed.webhooks.unwrap().len(), 1);
    assert!(running.metrics().config_repairs() >= 2);
    assert!(sticky(&admit(&client, &ns, &app_pod("after-repair")).await).is_some());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_is_mutated_without_side_effects() {
    let (client, sys, ns, fp) = setup("dryrun", "e2e-dry").await;
    let running = start_ready(manager(&fp, &sys, &ns), &client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pod = pods.create(&params, &app_pod("dry")).await.unwrap();
    assert_eq!(
        sticky(&pod).as_deref(),
        Some("hello"),
        "dry-run result shows the mutation"
    );
    assert!(
        pods.get_opt("dry").await.unwrap().is_none(),
        "dry run must not persist the pod"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_unregister_removes_everything() {
    let (client, sys, ns, fp) = setup("unreg", "e2e-unreg").await;
    let manager = manager(&fp, &sys, &ns)
        .port(4443)
        .extension(Sticky)
        .build()
        .unwrap();
    manager.register(client.clone()).await.unwrap();
    let cfgs = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);
    let cfg = cfgs.get(&config_name(&fp)).await.unwrap();
    assert_eq!(
        cfg.webhooks.unwrap()[0].client_config.url.as_deref(),
        Some("https://127.0.0.1:4443/sticky")
    );
    assert!(secrets.get_opt(&secret_name(&fp)).await.unwrap().is_some());
    // Registering again is idempotent (no delete-and-recreate: same uid).
    let uid = cfgs.get(&config_name(&fp)).await.unwrap().metadata.uid;
    manager.register(client.clone()).await.unwrap();
    assert_eq!(cfgs.get(&config_name(&fp)).await.unwrap().metadata.uid, uid);
    manager.unregister(client.clone()).await.unwrap();
    assert!(cfgs.get_opt(&config_name(&fp)).await.unwrap().is_none());
    assert!(secrets.get_opt(&secret_name(&fp)).await.unwrap().is_none());
    // Unregistering twice is fine.
    manager.unregister(client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over_on_release_and_on_expiry() {
    use eirinix_core::leader::LeaseLock;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("lease").await.unwrap();
    let lock = |id: &str| {
        LeaseLock::new(client.clone(), &ns, "rootfs-leader", id)
            .lease_duration(Duration::from_secs(2))
    };
    let (a_tx, a_rx) = watch::channel(false);
    let (b_tx, b_rx) = watch::channel(false);
    let (a_cancel, b_cancel) = (CancellationToken::new(), CancellationToken::new());
    let a = tokio::spawn(lock("a").run_while_leader(
        a_cancel.clone(),
        Some(a_tx),
        |t| async move { t.cancelled().await },
    ));
    eventually(Duration::from_secs(5), "a to lead", || async {
        a_rx.borrow().then_some(())
    })
    .await;
    let b = tokio::spawn(lock("b").run_while_leader(
        b_cancel.clone(),
        Some(b_tx),
        |t| async move { t.cancelled().await },
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!*b_rx.borrow(), "b must not lead while a renews");
    // Graceful: a releases, b takes over well before the lease would expire.
    a_cancel.cancel();
    a.await.unwrap();
    eventually(
        Duration::from_secs(3),
        "b to take over after release",
        || async { b_rx.borrow().then_some(()) },
    )
    .await;
    // Crash: b stops renewing without releasing; a fresh contender waits for expiry, then leads.
    b.abort();
    let (c_tx, c_rx) = watch::channel(false);
    let c_cancel = CancellationToken::new();
    let c = tokio::spawn(lock("c").run_while_leader(
        c_cancel.clone(),
        Some(c_tx),
        |t| async move { t.cancelled().await },
    ));
    eventually(
        Duration::from_secs(8),
        "c to take over an expired lease",
        || async { c_rx.borrow().then_some(()) },
    )
    .await;
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns)
        .get("rootfs-leader")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("c"));
    assert_eq!(spec.lease_transitions, Some(2));
    c_cancel.cancel();
    c.await.unwrap();
}
