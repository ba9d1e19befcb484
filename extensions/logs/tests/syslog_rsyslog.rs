//! The syslog sink against a real rsyslogd (Debian) on a loopback port: framing, fields, TLS,
//! outages and buffer overflow. No Kubernetes here.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use eirinix_logs::sink::{SinkHandle, spawn_sink};
use eirinix_logs::syslog::SyslogSink;
use eirinix_logs::{LogsMetrics, LogsOptions, Origin, Record, SyslogOptions};

fn origin(pod: &str, container: &str, instance: Option<u32>) -> Arc<Origin> {
    Arc::new(Origin {
        source_id: APP_GUID.into(),
        instance,
        process_type: "web".into(),
        source_type: "APP/PROC/WEB".into(),
        namespace: "space-ns".into(),
        pod: pod.into(),
        container: container.into(),
    })
}

fn syslog_sink(
    address: &str,
    tls: Option<eirinix_logs::TlsOptions>,
    options: &LogsOptions,
    metrics: &LogsMetrics,
) -> SinkHandle {
    let sink = SyslogSink::new(&SyslogOptions {
        address: address.into(),
        tls,
        ..SyslogOptions::default()
    })
    .unwrap();
    spawn_sink("syslog".into(), 0, Box::new(sink), options, metrics)
}

fn ts(i: u64) -> jiff::Timestamp {
    // 2024-03-01T10:00:00Z plus i milliseconds and 789 ns (dropped by RFC 5424's 6 digits).
    jiff::Timestamp::from_nanosecond(1_709_287_200_000_000_000 + i128::from(i) * 1_000_789).unwrap()
}

#[tokio::test]
async fn rsyslog_receives_complete_ordered_lines_with_identity() {
    init_tracing();
    let rsyslog = Rsyslog::start(None);
    let options = options(&rsyslog.address(), None);
    let metrics = LogsMetrics::new();
    let sink = syslog_sink(&rsyslog.address(), None, &options, &metrics);

    let containers = [
        origin("dora-3", "opi", Some(3)),
        origin("dora-4", "opi", Some(4)),
        origin("dora-x", "sidecar", None),
    ];
    let n = 500;
    let started = Instant::now();
    for i in 0..n {
        for (c, o) in containers.iter().enumerate() {
            sink.push(Arc::new(Record::new(o.clone(), ts(i), format!("c{c}-{i}"))));
        }
    }
    // A line that is not UTF-8, one with characters rsyslog and SD must keep, a long one.
    let special = origin("dora-3", "opi", Some(3));
    sink.push(Arc::new(Record::new(
        special.clone(),
        ts(n),
        b"raw \xff\xfe bytes".to_vec(),
    )));
    sink.push(Arc::new(Record::new(
        special.clone(),
        ts(n),
        "quotes \" ] \\ | é".to_owned(),
    )));
    sink.push(Arc::new(Record::new(special, ts(n), "L".repeat(20_000))));
    let total = 3 * n as usize + 3;
    let got = rsyslog
        .wait_for(Duration::from_secs(20), "all lines", |r| r.len() >= total)
        .await;
    let elapsed = started.elapsed();
    assert_eq!(got.len(), total, "nothing extra");
    eprintln!("{total} lines through rsyslog in {elapsed:?}");

    for (c, o) in containers.iter().enumerate() {
        let mine: Vec<&Received> = got
            .iter()
            .filter(|r| r.msg.starts_with(format!("c{c}-").as_bytes()))
            .collect();
        let texts: Vec<String> = mine.iter().map(|r| r.text()).collect();
        assert_sequence(&texts, &format!("c{c}-"), n as usize);
        for r in &mine {
            assert_eq!(r.app, APP_GUID, "APP-NAME is the app guid");
            assert_eq!(r.host, o.pod, "HOSTNAME is the pod (instance)");
            let procid = match o.instance {
                Some(i) => format!("[APP/PROC/WEB/{i}]"),
                None => "[APP/PROC/WEB]".into(),
            };
            assert_eq!(r.procid, procid);
            assert_eq!(r.msgid, "-");
            assert!(r.sd.starts_with("[tags@47450 "), "{}", r.sd);
            assert_eq!(r.param("app_id").as_deref(), Some(APP_GUID));
            assert_eq!(r.param("source_type").as_deref(), Some("APP/PROC/WEB"));
            assert_eq!(r.param("process_type").as_deref(), Some("web"));
            assert_eq!(r.param("namespace").as_deref(), Some("space-ns"));
            assert_eq!(r.param("pod").as_deref(), Some(o.pod.as_str()));
            assert_eq!(r.param("container").as_deref(), Some(o.container.as_str()));
            assert_eq!(r.param("stream").as_deref(), Some("unknown"));
            assert_eq!(
                r.param("instance_id").unwrap_or_default(),
                o.instance.map(|i| i.to_string()).unwrap_or_default()
            );
        }
        // The line's own timestamp, to the microsecond.
        assert_eq!(mine[7].timestamp, "2024-03-01T10:00:00.007005Z");
    }
    let tail = &got[got.len() - 3..];
    assert_eq!(
        tail[0].msg, b"raw \xff\xfe bytes",
        "non-UTF-8 bytes arrive unchanged"
    );
    assert_eq!(tail[1].text(), "quotes \" ] \\ | é");
    assert_eq!(tail[2].msg.len(), 20_000, "a 20 kB message arrives whole");
    sink.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rsyslog_over_tls() {
    init_tracing();
    let pki = Pki::generate();
    let rsyslog = Rsyslog::start(Some(&pki));
    let tls = eirinix_logs::TlsOptions {
        ca_file: pki.ca.clone(),
        cert_file: None,
        key_file: None,
        server_name: Some("localhost".into()),
    };
    let options = options(&rsyslog.address(), Some(tls.clone()));
    let metrics = LogsMetrics::new();
    let sink = syslog_sink(&rsyslog.address(), Some(tls), &options, &metrics);
    let o = origin("dora-0", "opi", Some(0));
    for i in 0..300 {
        sink.push(Arc::new(Record::new(o.clone(), ts(i), format!("tls-{i}"))));
    }
    let got = rsyslog
        .wait_for(Duration::from_secs(20), "TLS lines", |r| r.len() >= 300)
        .await;
    assert_sequence(&messages_with(&got, "tls-"), "tls-", 300);
    assert!(
        got.iter()
            .all(|r| r.app == APP_GUID && r.procid == "[APP/PROC/WEB/0]")
    );

    // A receiver whose certificate is not signed by the configured CA is refused.
    let other = Pki::generate();
    let bad_tls = eirinix_logs::TlsOptions {
        ca_file: other.ca.clone(),
        cert_file: None,
        key_file: None,
        server_name: Some("localhost".into()),
    };
    let metrics2 = LogsMetrics::new();
    let bad = syslog_sink(&rsyslog.address(), Some(bad_tls), &options, &metrics2);
    bad.push(Arc::new(Record::new(o.clone(), ts(1), "must-not-arrive")));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        bad.metrics
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(messages_with(&rsyslog.received(), "must-not-arrive").is_empty());
    bad.stop().await;
    sink.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rsyslog_outage_within_the_buffer_loses_nothing() {
    outage(false).await;
}

#[tokio::test]
async fn rsyslog_tls_outage_within_the_buffer_loses_nothing() {
    outage(true).await;
}

async fn outage(tls: bool) {
    init_tracing();
    let pki = Pki::generate();
    let mut rsyslog = Rsyslog::start(tls.then_some(&pki));
    let tls = tls.then(|| eirinix_logs::TlsOptions {
        ca_file: pki.ca.clone(),
        server_name: Some("localhost".into()),
        ..Default::default()
    });
    let options = options(&rsyslog.address(), tls.clone());
    let metrics = LogsMetrics::new();
    let sink = syslog_sink(&rsyslog.address(), tls, &options, &metrics);
    let o = origin("dora-1", "opi", Some(1));
    let mut i = 0u64;
    let mut push = |count: u64| {
        for _ in 0..count {
            sink.push(Arc::new(Record::new(o.clone(), ts(i), format!("out-{i}"))));
            i += 1;
        }
    };
    push(100);
    rsyslog
        .wait_for(Duration::from_secs(10), "first lines", |r| r.len() >= 100)
        .await;

    rsyslog.stop();
    // Lines produced while the aggregator is down wait in the buffer.
    push(400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    push(100);
    rsyslog.restart();
    let got = rsyslog
        .wait_for(Duration::from_secs(20), "all lines after the outage", |r| {
            r.len() >= 600
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if got.len() > 600 {
        got
    } else {
        rsyslog.received()
    };
    assert_sequence(&messages_with(&got, "out-"), "out-", 600);
    assert!(
        sink.metrics
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the outage was seen"
    );
    assert!(
        sink.metrics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "and recovered from"
    );
    sink.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_outage_longer_than_the_buffer_holds_producers_back_bounded_and_loses_nothing() {
    init_tracing();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut options = options(&address, None);
    options.buffer_lines = 1_000;
    options.buffer_bytes = 1_000 * 200;
    let metrics = LogsMetrics::new();
    let sink = syslog_sink(&address, None, &options, &metrics);
    let o = origin("dora-2", "opi", Some(2));
    // Nothing listens: a producer pushing 10,000 lines is held at the buffer's limits.
    let total = 10_000u64;
    let buffer = sink.buffer.clone();
    let pushed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = tokio::spawn({
        let (buffer, pushed) = (buffer.clone(), pushed.clone());
        async move {
            for i in 0..total {
                let r = Record::new(o.clone(), ts(i), format!("ovf-{i:05}"));
                assert!(buffer.push_when_room(Arc::new(r)).await);
                pushed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    eventually(
        Duration::from_secs(20),
        "the producer held at the limit",
        || buffer.len() == 1_000 && metrics.errors("syslog") >= 3,
    )
    .await;
    let held = pushed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        held <= 1_000 + options.batch_size as u64,
        "the buffer plus the batch being retried, no more: {held}"
    );
    assert!(!producer.is_finished());
    assert!(buffer.bytes() <= 200_000);
    assert!(buffer.high_water_bytes() <= 200_000);

    // The aggregator comes up: every line arrives, in order, none twice.
    let rsyslog = Rsyslog::start_on(port, None);
    let got = rsyslog
        .wait_for(Duration::from_secs(30), "every line", |r| {
            r.iter().any(|m| m.msg == b"ovf-09999")
        })
        .await;
    producer.await.unwrap();
    let texts: Vec<String> = messages_with(&got, "ovf-");
    let expected: Vec<String> = (0..total).map(|i| format!("ovf-{i:05}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(metrics.sent("syslog"), total);
    sink.drain(Duration::from_secs(5)).await;
}

/// Plain syslog has no acknowledgement: a batch counts as delivered once written. rsyslogd
/// killed with SIGKILL while lines flow loses what it had not stored yet: lines written to the
/// connection before the crash was noticed (in the socket buffers or rsyslog's memory). Exactly
/// that, and nothing else: one run of lines after the last one stored and before the point where
/// the sink noticed; every line from there on is delivered after the restart.
///
/// An app logging steadily (rsyslog keeps up; the sink checks the connection before each write).
// The sink runs on another thread than the test, so that the kill lands while it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_receiver_killed_while_it_keeps_up_loses_at_most_what_it_had_not_stored() {
    let (lost, _) = syslog_receiver_killed(true).await;
    assert!(lost <= 2 * 256, "{lost} lost while the receiver kept up");
}

/// A backlog (lines read faster than rsyslog stores them): what sits in the socket buffers is
/// lost too, far more than one batch.
// The sink runs on another thread than the test, so that the kill lands while it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_receiver_killed_during_a_backlog_loses_at_most_what_it_had_not_stored() {
    syslog_receiver_killed(false).await;
}

/// Returns the lines lost and repeated.
async fn syslog_receiver_killed(paced: bool) -> (usize, usize) {
    init_tracing();
    let mut rsyslog = Rsyslog::start(None);
    let mut options = options(&rsyslog.address(), None);
    options.buffer_lines = 2_000;
    let metrics = LogsMetrics::new();
    let sink = syslog_sink(&rsyslog.address(), None, &options, &metrics);
    // Paced: an app logging 2,000 lines a second (20 every 10 ms), for 6 s. Else a backlog of
    // 150,000 lines, as fast as the sink takes them.
    let total = if paced { 12_000u64 } else { 150_000 };
    let o = origin("dora-5", "opi", Some(5));
    let producer = tokio::spawn({
        let (buffer, o) = (sink.buffer.clone(), o.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..total {
                if paced && i % 20 == 0 {
                    tick.tick().await;
                }
                let r = Record::new(o.clone(), ts(i), format!("t-{i:06}"));
                assert!(buffer.push_when_room(Arc::new(r)).await);
            }
        }
    });
    rsyslog
        .wait_for(Duration::from_secs(30), "lines flowing", |r| {
            r.len() >= 4_000
        })
        .await;
    rsyslog.kill();
    let stored_at_kill = messages_with(&rsyslog.received(), "t-").len() as u64;
    // One more line after the crash, so that the sink has something to send and notices even
    // when everything before was already written.
    let probe = total;
    let pusher = tokio::spawn({
        let buffer = sink.buffer.clone();
        async move {
            producer.await.unwrap();
            let r = Record::new(o, ts(probe), format!("t-{probe:06}"));
            assert!(buffer.push_when_room(Arc::new(r)).await);
        }
    });
    // The sink notices (a failed write or connect); until the restart it cannot deliver, so the
    // number it counts as delivered stays where the crash left it.
    eventually(Duration::from_secs(30), "the sink sees the crash", || {
        metrics.errors("syslog") >= 1
    })
    .await;
    let delivered_at_crash = metrics.sent("syslog");
    assert!(
        delivered_at_crash <= total,
        "the crash happened while lines flowed"
    );
    rsyslog.restart();
    let last = format!("t-{probe:06}");
    let got = rsyslog
        .wait_for(
            Duration::from_secs(30),
            "every line after the restart",
            |r| r.iter().any(|m| m.msg == last.as_bytes()),
        )
        .await;
    pusher.await.unwrap();
    sink.drain(Duration::from_secs(5)).await;

    let mut seen: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for t in messages_with(&got, "t-") {
        *seen.entry(t[2..].parse().unwrap()).or_default() += 1;
    }
    let missing: Vec<u64> = (0..=probe).filter(|i| !seen.contains_key(i)).collect();
    // What is lost: one run, after what rsyslog had stored and within what was counted
    // delivered before the crash was noticed.
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        assert_eq!(
            (last - first + 1) as usize,
            missing.len(),
            "the lost lines are one run: {missing:?}"
        );
        assert!(
            *last < delivered_at_crash,
            "only lines written before the crash was noticed are lost (lost up to {last}, {delivered_at_crash} counted delivered)"
        );
        assert!(
            *first >= stored_at_kill,
            "lines rsyslog had stored are not lost (lost from {first}, {stored_at_kill} stored)"
        );
    }
    // A batch cut by the crash is sent again whole: its first part may arrive twice.
    let repeated: Vec<u64> = (0..=probe)
        .filter(|i| seen.get(i).copied().unwrap_or(0) > 1)
        .collect();
    assert!(
        repeated.iter().all(|i| seen[i] == 2),
        "a line arrived more than twice"
    );
    assert!(
        repeated.len() <= options.batch_size,
        "{} lines repeated",
        repeated.len()
    );
    eprintln!(
        "syslog receiver SIGKILLed ({}) after {stored_at_kill} stored lines: {} lost (lines \
         {:?}..={:?}; {delivered_at_crash} counted delivered when the crash was noticed), {} repeated",
        if paced { "steady" } else { "backlog" },
        missing.len(),
        missing.first(),
        missing.last(),
        repeated.len()
    );
    (missing.len(), repeated.len())
}
