//! Flow control between followers and sinks, through the real kube-apiserver (fake kubelet): a
//! sink slower than the logs makes the followers wait (nothing is dropped), while a sink that is
//! down never stops the others (its buffer drops the oldest lines instead).

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use eirinix_logs::sink::Sink;
use eirinix_logs::{LogsError, LogsService, Record, Scope};
use eirinix_testenv::FakeKubelet;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);

/// Collects messages, `delay` per batch (much slower than reading a backlog).
struct SlowSink {
    delay: Duration,
    got: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Sink for SlowSink {
    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), LogsError> {
        tokio::time::sleep(self.delay).await;
        let mut got = self.got.lock().unwrap();
        got.extend(
            batch
                .iter()
                .map(|r| String::from_utf8_lossy(&r.message).into_owned()),
        );
        Ok(())
    }

    async fn reset(&mut self) {}
}

/// A receiver that is down.
struct DownSink;

#[async_trait]
impl Sink for DownSink {
    async fn send(&mut self, _: &[Arc<Record>]) -> Result<(), LogsError> {
        Err(LogsError::Config("down".into()))
    }

    async fn reset(&mut self) {}
}

struct Setup {
    client: kube::Client,
    ns: String,
    kubelet: FakeKubelet,
}

async fn setup(prefix: &str) -> Setup {
    let (_, client, ns, kubelet) = plane_with_kubelet(prefix).await;
    Setup {
        client,
        ns,
        kubelet,
    }
}

/// A running pod whose container has `n` lines `<prefix><i>` waiting in its log.
async fn backlog(s: &Setup, pod: &str, prefix: &str, n: usize) {
    let node = s.kubelet.node_name().to_owned();
    s.kubelet
        .container(&s.ns, pod, "opi")
        .push_lines((0..n).map(|i| format!("{prefix}{i}")));
    create_pod(&s.client, &s.ns, &app_pod(pod, "APP", &["opi"], &node)).await;
    set_status(&s.client, &s.ns, pod, "opi", 0, State::Running).await;
}

fn run(
    s: &Setup,
    sinks: Vec<(String, Box<dyn Sink>)>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<()>,
    Arc<eirinix_logs::LogsMetrics>,
) {
    // A small buffer (1,000 lines): the backlogs are 10 and 20 times larger.
    let mut o = options("127.0.0.1:9", None);
    o.buffer_lines = 1_000;
    o.batch_size = 50;
    let service = LogsService::with_sinks(o, sinks);
    let metrics = service.metrics();
    let settings = eirinix_core::Settings {
        namespace: Some(s.ns.clone()),
        webhook_namespace: s.ns.clone(),
        ..eirinix_core::Settings::default()
    };
    let scope = Scope {
        namespaces: vec![s.ns.clone()],
        state_namespace: s.ns.clone(),
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(service.run(s.client.clone(), scope, settings, cancel.clone()));
    (cancel, task, metrics)
}

#[tokio::test]
async fn a_slow_sink_makes_followers_wait_and_loses_nothing() {
    let s = setup("logs-flow").await;
    let n = 10_000;
    backlog(&s, "slow-0", "s-", n).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = SlowSink {
        delay: Duration::from_millis(20),
        got: got.clone(),
    };
    let (cancel, task, metrics) = run(&s, vec![("slow".into(), Box::new(sink))]);
    eventually(T, "every line through the slow sink", || {
        got.lock().unwrap().len() >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_sequence(&got.lock().unwrap(), "s-", n);
    assert_eq!(metrics.dropped("slow"), 0, "nothing dropped");
    let text = metrics.render();
    let waits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("eirinix_logs_sink_flow_control_waits_total{sink=\"slow\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(waits > 0, "the follower waited for the sink: {text}");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_sink_that_is_down_does_not_stop_the_others() {
    let s = setup("logs-flow-down").await;
    let n = 20_000;
    backlog(&s, "down-0", "d-", n).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let slow = SlowSink {
        delay: Duration::from_millis(1),
        got: got.clone(),
    };
    let (cancel, task, metrics) = run(
        &s,
        vec![
            ("down".into(), Box::new(DownSink)),
            ("slow".into(), Box::new(slow)),
        ],
    );
    eventually(T, "every line through the healthy sink", || {
        got.lock().unwrap().len() >= n
    })
    .await;
    assert_sequence(&got.lock().unwrap(), "d-", n);
    assert_eq!(metrics.dropped("slow"), 0);
    let dropped = metrics.dropped("down");
    assert!(
        dropped >= (n - 1_000 - 50) as u64,
        "the down sink drops its oldest lines ({dropped})"
    );
    assert_eq!(metrics.lines_read.load(Ordering::Relaxed), n as u64);
    cancel.cancel();
    task.await.unwrap();
}
