//! The RELP sink against a real rsyslogd (`imrelp`, Debian's rsyslog-relp) on a loopback port:
//! fields, TLS with a client certificate, and a receiver killed with SIGKILL while lines flow
//! (every line arrives; only the unacknowledged window may arrive twice). No Kubernetes here.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use eirinix_logs::relp::{RelpSink, WINDOW};
use eirinix_logs::sink::{SinkHandle, spawn_sink};
use eirinix_logs::{LogsMetrics, LogsOptions, Origin, Record, Stream, SyslogOptions};

const T: Duration = Duration::from_secs(60);

fn origin() -> Arc<Origin> {
    Arc::new(Origin {
        source_id: APP_GUID.into(),
        instance: Some(4),
        process_type: "web".into(),
        source_type: "APP/PROC/WEB".into(),
        namespace: "space-ns".into(),
        pod: "dora-4".into(),
        container: "opi".into(),
    })
}

fn relp_sink(
    address: &str,
    tls: Option<eirinix_logs::TlsOptions>,
    options: &LogsOptions,
    metrics: &LogsMetrics,
) -> SinkHandle {
    let sink = RelpSink::new(&SyslogOptions {
        address: address.into(),
        tls,
        ..SyslogOptions::default()
    })
    .unwrap();
    spawn_sink("relp".into(), 0, Box::new(sink), options, metrics)
}

fn ts(i: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(1_709_287_200_000_000_000 + i128::from(i) * 1_000_000).unwrap()
}

#[tokio::test]
async fn relp_delivers_every_line_with_its_identity() {
    init_tracing();
    let rsyslog = Rsyslog::start_relp(None);
    let options = options(&rsyslog.address(), None);
    let metrics = LogsMetrics::new();
    let sink = relp_sink(&rsyslog.address(), None, &options, &metrics);
    let o = origin();
    let n = 1_000u64;
    for i in 0..n {
        let mut r = Record::new(o.clone(), ts(i), format!("relp-{i}"));
        r.stream = Some(if i % 2 == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        });
        sink.push(Arc::new(r));
    }
    sink.push(Arc::new(Record::new(o.clone(), ts(n), "L".repeat(20_000))));
    sink.push(Arc::new(Record::new(
        o.clone(),
        ts(n),
        b"raw \xff bytes\nand a newline".to_vec(),
    )));
    let got = rsyslog
        .wait_for(T, "every line", |r| r.len() as u64 >= n + 2)
        .await;
    assert_sequence(&messages_with(&got, "relp-"), "relp-", n as usize);
    for (i, r) in got.iter().take(n as usize).enumerate() {
        assert_eq!(r.app, APP_GUID);
        assert_eq!(r.host, "dora-4");
        assert_eq!(r.procid, "[APP/PROC/WEB/4]");
        let (stream, pri) = if i % 2 == 0 {
            ("stdout", "14")
        } else {
            ("stderr", "11")
        };
        assert_eq!(r.param("stream").as_deref(), Some(stream));
        assert_eq!(r.pri, pri, "user.info for stdout, user.err for stderr");
    }
    assert_eq!(got[1].timestamp, "2024-03-01T10:00:00.001000Z");
    assert_eq!(
        got[n as usize].msg.len(),
        20_000,
        "a 20 kB line arrives whole"
    );
    assert_eq!(got[n as usize + 1].msg, b"raw \xff bytes#012and a newline");
    eventually(T, "every line acknowledged, hence delivered", || {
        metrics.sent("relp") == n + 2
    })
    .await;
    sink.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn relp_over_tls_with_a_client_certificate() {
    init_tracing();
    let pki = Pki::generate();
    let rsyslog = Rsyslog::start_relp(Some(&pki));
    let tls = pki.client_tls("localhost");
    let options = options(&rsyslog.address(), Some(tls.clone()));
    let metrics = LogsMetrics::new();
    let sink = relp_sink(&rsyslog.address(), Some(tls), &options, &metrics);
    let o = origin();
    for i in 0..300 {
        sink.push(Arc::new(Record::new(o.clone(), ts(i), format!("tls-{i}"))));
    }
    let got = rsyslog.wait_for(T, "TLS lines", |r| r.len() >= 300).await;
    assert_sequence(&messages_with(&got, "tls-"), "tls-", 300);
    sink.drain(Duration::from_secs(5)).await;

    // Without a client certificate the receiver refuses the session: nothing counts as sent.
    let anonymous = eirinix_logs::TlsOptions {
        cert_file: None,
        key_file: None,
        ..pki.client_tls("localhost")
    };
    let metrics2 = LogsMetrics::new();
    let bad = relp_sink(&rsyslog.address(), Some(anonymous), &options, &metrics2);
    bad.push(Arc::new(Record::new(o, ts(1), "must-not-arrive")));
    eventually(T, "the session refused", || metrics2.errors("relp") >= 2).await;
    assert_eq!(metrics2.sent("relp"), 0);
    assert!(messages_with(&rsyslog.received(), "must-not-arrive").is_empty());
    bad.stop().await;
}

/// rsyslogd is killed with SIGKILL while lines flow, then restarted, three times: every line
/// arrives; the only repeats are messages rsyslog stored whose acknowledgement the crash
/// swallowed: at most one window ([`WINDOW`]) per crash, in one run.
// The sink runs on another thread than the test, so that the kill lands while it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relp_receiver_killed_mid_stream_loses_nothing() {
    init_tracing();
    let mut rsyslog = Rsyslog::start_relp(None);
    let mut options = options(&rsyslog.address(), None);
    options.buffer_lines = 2_000;
    let metrics = LogsMetrics::new();
    let sink = relp_sink(&rsyslog.address(), None, &options, &metrics);
    let total = 150_000u64;
    options.batch_size = 256;
    let pushed = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn({
        let (buffer, pushed, o) = (sink.buffer.clone(), pushed.clone(), origin());
        async move {
            for i in 0..total {
                let r = Record::new(o.clone(), ts(i), format!("k-{i:06}"));
                assert!(buffer.push_when_room(Arc::new(r)).await);
                pushed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Three crashes, each while lines flow.
    let kills = 3;
    let mut stored_at_kill = Vec::new();
    for k in 1..=kills {
        let errors = metrics.errors("relp");
        rsyslog
            .wait_for_lines(T, "lines flowing", 10_000 + (k - 1) * 30_000)
            .await;
        rsyslog.kill();
        stored_at_kill.push(rsyslog.line_count());
        // Something to send after the crash, so that the sink notices it even if everything
        // before was acknowledged already.
        sink.push(Arc::new(Record::new(origin(), ts(0), format!("probe-{k}"))));
        eventually(T, "the sink sees the crash", || {
            metrics.errors("relp") > errors
        })
        .await;
        assert!(
            pushed.load(Ordering::SeqCst) < total,
            "the crash happened while lines were flowing"
        );
        rsyslog.restart();
    }
    let got = rsyslog
        .wait_for(T, "every line after the restart", |r| {
            r.iter().any(|m| m.msg == b"k-149999")
        })
        .await;
    producer.await.unwrap();
    sink.drain(Duration::from_secs(5)).await;

    let texts = messages_with(&got, "k-");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for t in &texts {
        *seen.entry(t.as_str()).or_default() += 1;
    }
    let missing: Vec<u64> = (0..total)
        .filter(|i| !seen.contains_key(format!("k-{i:06}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} lines: {:?}; partial records cut at the crashes: {:?}; stored around the first: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        rsyslog
            .cut
            .iter()
            .map(|c| String::from_utf8_lossy(c))
            .collect::<Vec<_>>(),
        missing
            .first()
            .map(|m| around(&got, &format!("k-{:06}", m.saturating_sub(1))))
    );
    let repeated: Vec<u64> = (0..total)
        .filter(|i| seen.get(format!("k-{i:06}").as_str()).copied().unwrap_or(0) > 1)
        .collect();
    assert!(
        repeated
            .iter()
            .all(|i| seen[format!("k-{i:06}").as_str()] == 2),
        "a line arrived more than twice"
    );
    // Repeats come in runs (one per crash at most), each within the unacknowledged window.
    let runs: Vec<&[u64]> = repeated.chunk_by(|a, b| b == &(a + 1)).collect();
    assert!(
        runs.len() <= kills,
        "{} runs of repeats for {kills} crashes",
        runs.len()
    );
    for run in &runs {
        assert!(
            run.len() <= WINDOW,
            "{} lines repeated after one crash: more than the unacknowledged window of {WINDOW}",
            run.len()
        );
    }
    // Apart from the repeats, in order.
    let mut firsts: Vec<&String> = Vec::new();
    let mut once = std::collections::HashSet::new();
    for t in &texts {
        if once.insert(t) {
            firsts.push(t);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "in order");
    eprintln!(
        "RELP receiver SIGKILLed {kills} times (after {stored_at_kill:?} stored lines): {} of {total} lines lost, repeats per crash {:?} (window {WINDOW}), {} partial records cut",
        missing.len(),
        runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
        rsyslog.cut.len()
    );
}

/// The raw records stored just before and after the one whose message is `text`, for a failure
/// message.
fn around(got: &[Received], text: &str) -> Vec<String> {
    let at = got
        .iter()
        .position(|r| r.msg == text.as_bytes())
        .unwrap_or(0);
    got[at.saturating_sub(1)..(at + 3).min(got.len())]
        .iter()
        .map(|r| format!("{}|{}|{}", r.host, r.timestamp, r.text()))
        .collect()
}
