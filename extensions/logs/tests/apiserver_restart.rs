//! Following survives a kube-apiserver restart (dedicated control plane): streams and the pod
//! watch are re-established, nothing is lost or repeated.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use eirinix_testenv::{ControlPlane, FakeKubelet, unique_name};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_resumes_following() {
    init_tracing();
    let plane = ControlPlane::start()
        .await
        .expect("dedicated control plane (run scripts/provision.sh)");
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("logs-restart-api").await.unwrap();
    let kubelet = FakeKubelet::start(&client, &unique_name("node"))
        .await
        .unwrap();
    let rsyslog = Rsyslog::start(None);

    let log = running_app(&client, &ns, &kubelet, "steady-0").await;
    let mut opts = options(&rsyslog.address(), None);
    // Long enough that the leader keeps its lease through the restart.
    opts.replicas.lease_duration_secs = 30;
    let service = start_service(&client, &ns, opts);
    assert!(log.wait_for_followers(1, T).await);

    // A steady producer, running through the restart.
    let produced = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (log, produced, stop) = (log.clone(), produced.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let i = produced.fetch_add(1, Ordering::SeqCst);
                log.push_line(format!("api-{i}"));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    rsyslog
        .wait_for(T, "lines before the restart", |r| {
            messages_with(r, "api-").len() >= 200
        })
        .await;
    plane.restart_apiserver().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let total = produced.load(Ordering::SeqCst);

    // A pod created after the restart is found (the watch came back).
    let late = running_app(&client, &ns, &kubelet, "late-0").await;
    late.push_line("late-line");

    log.finish();
    set_status(&client, &ns, "steady-0", "opi", 0, State::Terminated).await;
    rsyslog
        .wait_for(T, "every line after the restart", |r| {
            messages_with(r, "api-").len() >= total && !messages_with(r, "late-line").is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_sequence(&messages_with(&rsyslog.received(), "api-"), "api-", total);
    assert!(
        service.metrics.stream_errors.load(Ordering::Relaxed) > 0
            || service.metrics.streams_opened.load(Ordering::Relaxed) > 2,
        "the restart interrupted the stream"
    );
    eprintln!("{total} lines across an apiserver restart, exactly once");
    service.stop().await;
}
