//! Following pods through the real kube-apiserver (fake kubelet) to a real rsyslogd:
//! fast exits, multi-line and non-UTF-8 output, restarts, broken streams, deletion.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use common::*;
use eirinix_testenv::FakeKubelet;

const T: Duration = Duration::from_secs(30);

async fn setup(prefix: &str) -> (kube::Client, String, FakeKubelet, Rsyslog) {
    let (_, client, ns, kubelet) = plane_with_kubelet(prefix).await;
    (client, ns, kubelet, Rsyslog::start(None))
}

#[tokio::test]
async fn fast_exit_multiline_non_utf8_and_staging_reach_rsyslog_exactly_once() {
    let (client, ns, kubelet, rsyslog) = setup("logs-fast").await;
    let node = kubelet.node_name().to_owned();

    // An app instance that wrote 10k lines and exited before anyone followed it.
    create_pod(&client, &ns, &app_pod("dora-0", "APP", &["opi"], &node)).await;
    let fast = kubelet.container(&ns, "dora-0", "opi");
    fast.push_lines((0..10_000).map(|i| format!("fast-{i}")));
    fast.finish();
    set_status(&client, &ns, "dora-0", "opi", 0, State::Terminated).await;

    // Another instance: multi-line output, bytes that are not UTF-8, an over-long line.
    let ml = running_app(&client, &ns, &kubelet, "dora-1").await;
    let t0 = SystemTime::now() - Duration::from_secs(5);
    ml.push_line_at(t0, "Exception in thread main");
    ml.push_line_at(t0, "\tat Foo.bar(Foo.java:1)");
    ml.push_line_at(t0, "\tat Foo.main(Foo.java:2)");
    // A write containing newlines: the runtime stamps the first line only.
    ml.push_line_at(t0 + Duration::from_millis(1), "block-a\nblock-b\nblock-c");
    ml.push_line_at(t0 + Duration::from_millis(2), b"latin1 caf\xe9 \xff");
    ml.push_line_at(t0 + Duration::from_millis(3), "B".repeat(40_000));
    ml.push_line_at(t0 + Duration::from_millis(4), "ml-end");

    // A staging pod.
    create_pod(
        &client,
        &ns,
        &app_pod("dora-staging-8f2k", "STG", &["opi-task-executor"], &node),
    )
    .await;
    set_status(
        &client,
        &ns,
        "dora-staging-8f2k",
        "opi-task-executor",
        0,
        State::Running,
    )
    .await;
    let stg = kubelet.container(&ns, "dora-staging-8f2k", "opi-task-executor");
    stg.push_line("-----> Downloading buildpacks");
    stg.push_line("-----> Staging complete");

    let mut opts = options(&rsyslog.address(), None);
    opts.max_line_bytes = 16 * 1024;
    let started = std::time::Instant::now();
    let service = start_service(&client, &ns, opts);

    rsyslog
        .wait_for(T, "10k lines of the exited container", |r| {
            messages_with(r, "fast-").len() >= 10_000
        })
        .await;
    eprintln!(
        "10k lines of a fast-exiting container delivered in {:?}",
        started.elapsed()
    );
    rsyslog
        .wait_for(T, "the multi-line container", |r| {
            r.iter().any(|m| m.msg == b"ml-end")
        })
        .await;
    rsyslog
        .wait_for(T, "staging lines", |r| {
            messages_with(r, "-----> Staging complete").len() == 1
        })
        .await;
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rsyslog.received();

    let fast_lines = messages_with(&got, "fast-");
    assert_sequence(&fast_lines, "fast-", 10_000);
    let f = got.iter().find(|r| r.msg.starts_with(b"fast-")).unwrap();
    assert_eq!(f.app, APP_GUID);
    assert_eq!(f.host, "dora-0");
    assert_eq!(f.procid, "[APP/PROC/WEB/0]");
    assert_eq!(f.param("container").as_deref(), Some("opi"));
    assert_eq!(f.param("namespace").as_deref(), Some(ns.as_str()));
    assert_eq!(f.param("stream").as_deref(), Some("unknown"));

    let ml: Vec<&Received> = got.iter().filter(|r| r.host == "dora-1").collect();
    let texts: Vec<Vec<u8>> = ml.iter().map(|r| r.msg.clone()).collect();
    let mut expected: Vec<Vec<u8>> = vec![
        b"Exception in thread main".to_vec(),
        b"\tat Foo.bar(Foo.java:1)".to_vec(),
        b"\tat Foo.main(Foo.java:2)".to_vec(),
        b"block-a".to_vec(),
        b"block-b".to_vec(),
        b"block-c".to_vec(),
        b"latin1 caf\xe9 \xff".to_vec(),
    ];
    // Pieces of at most 16 KiB as read; the first includes the 31-byte timestamp prefix.
    expected.push(vec![b'B'; 16 * 1024 - 31]);
    expected.push(vec![b'B'; 16 * 1024]);
    expected.push(vec![b'B'; 40_000 - (32 * 1024 - 31)]);
    expected.push(b"ml-end".to_vec());
    // rsyslog escapes the tab control character as #011.
    let expected: Vec<Vec<u8>> = expected
        .into_iter()
        .map(|l| {
            String::from_utf8(l.clone())
                .map(|s| s.replace('\t', "#011").into_bytes())
                .unwrap_or(l)
        })
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "{:?}",
        ml.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
    for (i, (g, e)) in texts.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "line {i}: {:?}", String::from_utf8_lossy(g));
    }
    let partial: Vec<Option<String>> = ml.iter().map(|r| r.param("partial")).collect();
    assert_eq!(partial[7].as_deref(), Some("true"));
    assert_eq!(partial[8].as_deref(), Some("true"));
    assert_eq!(partial[9], None, "the last piece ends the line");
    // The line's own timestamp (not the read time) reaches the aggregator.
    let want = jiff::Timestamp::try_from(t0).unwrap();
    let want = jiff::Timestamp::from_microsecond(want.as_microsecond()).unwrap();
    let got_ts: jiff::Timestamp = ml[0].timestamp.parse().unwrap();
    assert_eq!(got_ts, want);

    let stg: Vec<&Received> = got
        .iter()
        .filter(|r| r.host == "dora-staging-8f2k")
        .collect();
    assert_eq!(stg.len(), 2);
    assert_eq!(stg[0].procid, "[STG/0]");
    assert_eq!(stg[0].param("source_type").as_deref(), Some("STG"));
    assert_eq!(
        stg[0].param("container").as_deref(),
        Some("opi-task-executor")
    );

    let m = &service.metrics;
    assert_eq!(m.log_gaps.load(Ordering::Relaxed), 0);
    // The plain control plane refuses `stream=` (PodLogsQuerySplitStreams is off there): the
    // followers fell back to the merged log, marked unknown above, every line once.
    assert_eq!(m.split_streams.load(Ordering::Relaxed), 0);
    service.stop().await;
}

/// The checkpoint points at a line the node no longer has (the kubelet rotated the log past it
/// while no leader ran): what is left is forwarded, and the gap is counted and reported.
#[tokio::test]
async fn a_log_rotated_past_the_checkpoint_is_counted_as_a_gap() {
    let (client, ns, kubelet, rsyslog) = setup("logs-gap").await;
    let node = kubelet.node_name().to_owned();
    let pod = create_pod(&client, &ns, &app_pod("rot-0", "APP", &["opi"], &node)).await;
    let uid = pod.metadata.uid.clone().unwrap();
    set_status(&client, &ns, "rot-0", "opi", 0, State::Running).await;
    let t0 = SystemTime::now() - Duration::from_secs(60);
    // What the node still has: lines from 10 s after the last one forwarded.
    let log = kubelet.container(&ns, "rot-0", "opi");
    for i in 0..10u64 {
        log.push_line_at(t0 + Duration::from_secs(10 + i), format!("g-{i}"));
    }
    let forwarded = eirinix_logs::cursor::Cursor {
        ts: jiff::Timestamp::try_from(t0).unwrap(),
        n: 1,
        instance: 0,
    };
    let mut store = eirinix_logs::checkpoint::CheckpointStore::new(
        client.clone(),
        &ns,
        "eirinix-logs-checkpoint",
        4,
    );
    store
        .save(&std::collections::HashMap::from([(
            eirinix_logs::checkpoint::key(&uid, "opi"),
            forwarded,
        )]))
        .await
        .unwrap();

    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    let got = rsyslog
        .wait_for(T, "the lines the node still has", |r| {
            messages_with(r, "g-").len() >= 10
        })
        .await;
    assert_sequence(&messages_with(&got, "g-"), "g-", 10);
    eventually(T, "the gap counted", || {
        service.metrics.log_gaps.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        eirinix_core::metrics::render(service.metrics.clone())
            .contains("eirinix_logs_log_gaps_total 1")
    );
    service.stop().await;
}

#[tokio::test]
async fn restarted_container_is_followed_again_exactly_once() {
    let (client, ns, kubelet, rsyslog) = setup("logs-restart").await;
    let log = running_app(&client, &ns, &kubelet, "crashy-0").await;
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    assert!(
        log.wait_for_followers(1, T).await,
        "the container is followed"
    );

    let mut n = 0;
    let mut push = |count: usize| {
        for _ in 0..count {
            log.push_line(format!("r-{n}"));
            n += 1;
        }
    };
    push(100);
    rsyslog
        .wait_for(T, "first instance", |r| messages_with(r, "r-").len() >= 100)
        .await;

    // Restart 1: the status says so first, the instance's last lines come just before.
    push(50);
    set_status(&client, &ns, "crashy-0", "opi", 1, State::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.restart();
    push(100);
    rsyslog
        .wait_for(T, "second instance", |r| {
            messages_with(r, "r-").len() >= 250
        })
        .await;

    // Restart 2: the runtime restarts first; the status catches up later while the new
    // instance is already writing.
    push(30);
    log.restart();
    push(70);
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_status(&client, &ns, "crashy-0", "opi", 2, State::Running).await;
    push(50);

    // Restart 3: the container exits, then comes back with lines at once.
    push(10);
    log.finish();
    set_status(&client, &ns, "crashy-0", "opi", 2, State::Terminated).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    log.restart();
    push(40);
    set_status(&client, &ns, "crashy-0", "opi", 3, State::Running).await;

    rsyslog
        .wait_for(T, "all instances", |r| messages_with(r, "r-").len() >= 450)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_sequence(&messages_with(&rsyslog.received(), "r-"), "r-", 450);
    assert_eq!(service.metrics.instances_missed.load(Ordering::Relaxed), 0);
    service.stop().await;
}

/// The kubelet restarts a container before the pod status says so, and serves the new
/// instance's log as the current one: that is not a gap in the old instance's log. The old
/// instance (now the previous one) is read to its end, the new one once the status names it.
#[tokio::test]
async fn an_instance_the_kubelet_replaced_before_the_status_said_so_is_no_gap() {
    let (client, ns, kubelet, rsyslog) = setup("logs-replaced").await;
    let log = running_app(&client, &ns, &kubelet, "early-0").await;
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    assert!(
        log.wait_for_followers(1, T).await,
        "the container is followed"
    );
    for i in 0..20 {
        log.push_line(format!("e-{i}"));
    }
    rsyslog
        .wait_for(T, "the first instance", |r| {
            messages_with(r, "e-").len() >= 20
        })
        .await;

    // The instance exits and the runtime starts the next one at once; the status still says
    // instance 0 is running.
    let opened = service.metrics.streams_opened.load(Ordering::Relaxed);
    log.finish();
    log.restart();
    for i in 20..30 {
        log.push_line(format!("e-{i}"));
    }
    // Resumed as the current log (1), checked against the previous log (2), which is then read
    // to its end (3); nothing follows until the status names the new instance.
    // (Without that check the new instance's lines are taken for the old one's: a gap.)
    let gaps = || service.metrics.log_gaps.load(Ordering::Relaxed);
    eventually(
        T,
        "the replaced instance read to its end as the previous one",
        || {
            gaps() > 0
                || (service.metrics.streams_opened.load(Ordering::Relaxed) >= opened + 3
                    && log.followers() == 0)
        },
    )
    .await;
    assert_eq!(gaps(), 0, "a replaced instance is no gap");
    assert_eq!(messages_with(&rsyslog.received(), "e-").len(), 20);

    set_status(&client, &ns, "early-0", "opi", 1, State::Running).await;
    all_in_order_without_gap(service, &rsyslog, "e-", 30).await;
}

/// The kubelet has already replaced the instance the pod status names when the follower first
/// reads the container (an app that exits at once and is restarted at once): the log served
/// as the current one is the new instance's. The old instance, now the previous one, is read
/// first, the new one once the status names it; nothing is lost and the order is kept.
/// (Without the check the new instance's lines are taken for the old one's, and the old
/// instance's lines, older than the last forwarded one, are dropped as already read.) The
/// first checks fail (a kubelet error): the follower forwards nothing until one answers.
#[tokio::test]
async fn an_instance_replaced_before_its_first_read_is_read_before_the_new_one() {
    let (client, ns, kubelet, rsyslog) = setup("logs-replaced-first").await;
    let log = running_app(&client, &ns, &kubelet, "quick-0").await;
    for i in 0..10 {
        log.push_line(format!("q-{i}"));
    }
    log.finish();
    log.restart();
    for i in 10..20 {
        log.push_line(format!("q-{i}"));
    }
    log.fail_previous(2);
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    rsyslog
        .wait_for(T, "the replaced instance, read as the previous one", |r| {
            messages_with(r, "q-").len() >= 10
        })
        .await;
    // Nothing of the new instance until the status names it.
    eventually(T, "the old instance read to its end", || {
        service.metrics.records_forwarded.load(Ordering::Relaxed) >= 10 && log.followers() == 0
    })
    .await;
    assert_sequence(&messages_with(&rsyslog.received(), "q-"), "q-", 10);
    // Two failed checks, the one that found the old instance, and its read to the end.
    assert!(log.previous_requests() >= 4, "{}", log.previous_requests());

    set_status(&client, &ns, "quick-0", "opi", 1, State::Running).await;
    all_in_order_without_gap(service, &rsyslog, "q-", 20).await;
}

/// A crash-looping container: each instance exits at once and the kubelet waits out a back-off
/// before the next start. While it waits, the real kubelet serves the last instance as both the
/// current and the previous log (`lastState`). The follower reads an exited instance once and
/// then waits for the next start (it does not read the same log again and again). Told of two
/// restarts at once, it finds the instance between them out of reach: that instance is counted
/// and reported as missed, and the last one's lines are never taken for it.
#[tokio::test]
async fn a_crash_loop_back_off_is_waited_out_and_an_instance_out_of_reach_is_reported() {
    let (client, ns, kubelet, rsyslog) = setup("logs-backoff").await;
    let log = running_app(&client, &ns, &kubelet, "loop-0").await;
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    assert!(
        log.wait_for_followers(1, T).await,
        "the container is followed"
    );
    for i in 0..5 {
        log.push_line(format!("c-{i}"));
    }
    rsyslog
        .wait_for(T, "the first instance", |r| {
            messages_with(r, "c-").len() >= 5
        })
        .await;

    // Instance 0 exits and waits out a back-off: read to its end once, then nothing.
    log.back_off();
    set_status(&client, &ns, "loop-0", "opi", 0, State::BackOff).await;
    until_quiet(&service, &log, "a container in back-off").await;

    // Two more instances run and exit while the status still names instance 0; the second
    // waits out its back-off, so the previous log is its own: instance 1 is out of reach.
    log.restart();
    for i in 0..5 {
        log.push_line(format!("d-{i}"));
    }
    log.back_off();
    log.restart();
    for i in 0..5 {
        log.push_line(format!("e-{i}"));
    }
    log.back_off();
    set_status(&client, &ns, "loop-0", "opi", 2, State::BackOff).await;
    rsyslog
        .wait_for(T, "the last instance", |r| {
            messages_with(r, "e-").len() >= 5
        })
        .await;
    let sink = format!("syslog:{}", rsyslog.address());
    eventually(T, "every forwarded record delivered", || {
        service.metrics.sent(&sink) == service.metrics.records_forwarded.load(Ordering::Relaxed)
    })
    .await;
    let missed = service.metrics.instances_missed.load(Ordering::Relaxed);
    let gaps = service.metrics.log_gaps.load(Ordering::Relaxed);
    service.stop().await;
    let got = rsyslog.received();
    assert_sequence(&messages_with(&got, "c-"), "c-", 5);
    assert_sequence(&messages_with(&got, "e-"), "e-", 5);
    assert!(messages_with(&got, "d-").is_empty(), "{got:?}");
    assert_eq!(missed, 1, "the instance out of reach is reported");
    assert_eq!(gaps, 0);
}

/// An instance that exited while its status still says running (the kubelet reports the exit a
/// second or more later): every read of its log ends at once with lines already forwarded. The
/// follower reads it again after a growing back-off, not in a tight loop, and takes the exit
/// once the status reports it.
#[tokio::test]
async fn an_exit_the_status_has_not_reported_yet_is_read_again_after_a_back_off() {
    let (client, ns, kubelet, rsyslog) = setup("logs-lag").await;
    let log = running_app(&client, &ns, &kubelet, "lag-0").await;
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    assert!(log.wait_for_followers(1, T).await);
    for i in 0..5 {
        log.push_line(format!("g-{i}"));
    }
    rsyslog
        .wait_for(T, "the lines", |r| messages_with(r, "g-").len() >= 5)
        .await;
    log.finish();
    // A tight loop never pauses for 500 ms; a back-off grows past it.
    until_quiet(&service, &log, "an exited instance reported running").await;
    set_status(&client, &ns, "lag-0", "opi", 0, State::Terminated).await;
    all_in_order_without_gap(service, &rsyslog, "g-", 5).await;
}

/// Waits until the follower has opened no stream for 500 ms and follows nothing (it waits for
/// the status to change); panics, naming `what`, if that never happens (it reads in a loop).
async fn until_quiet(service: &Running, log: &eirinix_testenv::ContainerLog, what: &str) {
    let opened = || service.metrics.streams_opened.load(Ordering::Relaxed);
    let quiet = Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + T;
    let (mut seen, mut since) = (opened(), tokio::time::Instant::now());
    while since.elapsed() < quiet || log.followers() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower of {what} never went quiet: {} streams opened",
            opened()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        if opened() != seen {
            (seen, since) = (opened(), tokio::time::Instant::now());
        }
    }
}

/// Waits until `prefix0 .. prefix{n-1}` reached rsyslog and everything forwarded was delivered,
/// checks they arrived in order, once each, with no gap and no missed instance, and stops.
async fn all_in_order_without_gap(service: Running, rsyslog: &Rsyslog, prefix: &str, n: usize) {
    rsyslog
        .wait_for(T, &format!("{n} lines {prefix}*"), |r| {
            messages_with(r, prefix).len() >= n
        })
        .await;
    eventually(T, "every forwarded record delivered", || {
        service
            .metrics
            .sent(&format!("syslog:{}", rsyslog.address()))
            == service.metrics.records_forwarded.load(Ordering::Relaxed)
    })
    .await;
    assert_sequence(&messages_with(&rsyslog.received(), prefix), prefix, n);
    assert_eq!(service.metrics.log_gaps.load(Ordering::Relaxed), 0);
    assert_eq!(service.metrics.instances_missed.load(Ordering::Relaxed), 0);
    service.stop().await;
}

#[tokio::test]
async fn broken_streams_resume_without_gap_or_duplicate() {
    let (client, ns, kubelet, rsyslog) = setup("logs-break").await;
    let log = running_app(&client, &ns, &kubelet, "flaky-0").await;
    // Many lines share a second, some share the exact timestamp: the resume overlap is real.
    let base = SystemTime::now() - Duration::from_secs(60);
    let at = |i: u64| base + Duration::from_millis(i / 3 * 10);
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    assert!(log.wait_for_followers(1, T).await);

    let total = 3_000u64;
    for i in 0..total {
        log.push_line_at(at(i), format!("b-{i}"));
        if i % 500 == 250 {
            // Cut the stream mid-output (lines are still being read), then wait for the resume
            // so that the next cut hits the new stream. A cut can miss when it comes between
            // the follower's request and the kubelet's registering it: cut again then.
            let opened = service.metrics.streams_opened.load(Ordering::Relaxed);
            let deadline = std::time::Instant::now() + T;
            loop {
                log.break_streams();
                let resumed = tokio::time::timeout(Duration::from_secs(2), async {
                    while service.metrics.streams_opened.load(Ordering::Relaxed) <= opened {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
                if resumed.is_ok() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "never resumed after a break"
                );
            }
        }
    }
    // And once more while idle.
    rsyslog
        .wait_for(T, "all lines", |r| {
            messages_with(r, "b-").len() as u64 >= total
        })
        .await;
    log.break_streams();
    assert!(
        log.wait_for_followers(1, T).await,
        "followed again after the break"
    );
    log.push_line_at(at(total), format!("b-{total}"));
    log.finish();
    set_status(&client, &ns, "flaky-0", "opi", 0, State::Terminated).await;
    rsyslog
        .wait_for(T, "the last line", |r| {
            messages_with(r, "b-").len() as u64 > total
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_sequence(
        &messages_with(&rsyslog.received(), "b-"),
        "b-",
        total as usize + 1,
    );
    let m = &service.metrics;
    assert!(
        m.streams_opened.load(Ordering::Relaxed) >= 7,
        "the stream was resumed after each break: {} opened",
        m.streams_opened.load(Ordering::Relaxed)
    );
    assert!(
        m.duplicates_skipped.load(Ordering::Relaxed) > 0,
        "the overlap was dropped"
    );
    service.stop().await;
}

#[tokio::test]
async fn deleted_pod_is_read_to_the_end_and_released() {
    let (client, ns, kubelet, rsyslog) = setup("logs-delete").await;
    let node = kubelet.node_name().to_owned();
    let pod = create_pod(
        &client,
        &ns,
        &app_pod("gone-0", "APP", &["opi", "sidecar"], &node),
    )
    .await;
    let uid = pod.metadata.uid.clone().unwrap();
    set_status(&client, &ns, "gone-0", "opi", 0, State::Running).await;
    let opi = kubelet.container(&ns, "gone-0", "opi");
    let sidecar = kubelet.container(&ns, "gone-0", "sidecar");
    let service = start_service(&client, &ns, options(&rsyslog.address(), None));
    assert!(opi.wait_for_followers(1, T).await);
    assert!(
        sidecar.wait_for_followers(1, T).await,
        "containers without status are tried too"
    );
    eventually(T, "two followers", || {
        service.metrics.followers.load(Ordering::Relaxed) == 2
    })
    .await;
    for i in 0..100 {
        opi.push_line(format!("d-{i}"));
    }
    sidecar.push_line("side-0");
    rsyslog
        .wait_for(T, "lines before the deletion", |r| {
            messages_with(r, "d-").len() >= 100
        })
        .await;
    let deadline = std::time::Instant::now() + T;
    while !checkpoint_keys(&client, &ns)
        .await
        .contains(&format!("{uid}.opi"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delete_pod(&client, &ns, "gone-0").await;
    rsyslog
        .wait_for(T, "lines written before the deletion", |r| {
            messages_with(r, "d-").len() >= 100 && !messages_with(r, "side-").is_empty()
        })
        .await;
    eventually(T, "followers released", || {
        service.metrics.followers.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(opi.wait_for_followers(0, T).await, "streams closed");
    assert_sequence(&messages_with(&rsyslog.received(), "d-"), "d-", 100);
    // Its checkpoint entries are removed too.
    let deadline = std::time::Instant::now() + T;
    while checkpoint_keys(&client, &ns)
        .await
        .iter()
        .any(|k| k.starts_with(&uid))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint of the deleted pod kept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop().await;
}

#[tokio::test]
async fn manager_install_runs_the_extension() {
    let (client, ns, kubelet, rsyslog) = setup("logs-install").await;
    let node = kubelet.node_name().to_owned();
    let mut opts = options(&rsyslog.address(), None);
    opts.namespaces = vec![ns.clone()];
    opts.replicas.namespace = Some(ns.clone());
    let builder = eirinix_core::Manager::builder()
        .namespace(ns.clone())
        .webhook_namespace(ns.clone())
        .register_webhook(false)
        .bind_address(std::net::Ipv4Addr::LOCALHOST.into())
        .port(0);
    let (builder, metrics) = eirinix_logs::try_install(builder, opts).unwrap();
    let manager = builder
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();

    create_pod(
        &client,
        &ns,
        &app_pod("via-manager-2", "APP", &["opi"], &node),
    )
    .await;
    set_status(&client, &ns, "via-manager-2", "opi", 0, State::Running).await;
    let log = kubelet.container(&ns, "via-manager-2", "opi");
    for i in 0..10 {
        log.push_line(format!("m-{i}"));
    }
    let got = rsyslog
        .wait_for(T, "lines via the manager", |r| {
            messages_with(r, "m-").len() >= 10
        })
        .await;
    assert_sequence(&messages_with(&got, "m-"), "m-", 10);
    assert!(got.iter().all(|r| r.procid == "[APP/PROC/WEB/2]"));
    assert_eq!(metrics.leader.load(Ordering::Relaxed), 1);
    assert!(
        eirinix_core::metrics::render(metrics.clone())
            .contains("eirinix_logs_records_forwarded_total 10")
    );
    manager.shutdown().await;

    // Unusable options are reported, not ignored.
    let bad = eirinix_logs::LogsOptions::default();
    assert!(eirinix_logs::try_install(eirinix_core::Manager::builder(), bad).is_err());
}

async fn checkpoint_keys(client: &kube::Client, ns: &str) -> Vec<String> {
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), ns);
    let mut keys = Vec::new();
    for shard in 0..4 {
        if let Some(cm) = cms
            .get_opt(&format!("eirinix-logs-checkpoint-{shard}"))
            .await
            .unwrap()
        {
            keys.extend(cm.data.unwrap_or_default().into_keys());
        }
    }
    keys
}
