//! Flow control between followers and sinks, through the real kube-apiserver (fake kubelet): a
//! sink slower than the logs, or down, makes the followers wait (back-pressure); the lines stay
//! in the container log and nothing is dropped, also when the outage outlasts the buffer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
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

/// A receiver that is down while `down` is set, then collects messages.
struct FlakySink {
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Sink for FlakySink {
    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), LogsError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LogsError::Config("down".into()));
        }
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

fn flaky() -> (FlakySink, Arc<AtomicBool>, Arc<Mutex<Vec<String>>>) {
    let down = Arc::new(AtomicBool::new(true));
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = FlakySink {
        down: down.clone(),
        got: got.clone(),
    };
    (sink, down, got)
}

/// Counter `eirinix_logs_sink_<family>_total` of sink `sink`, from the Prometheus text.
fn sink_counter(metrics: &Arc<eirinix_logs::LogsMetrics>, family: &str, sink: &str) -> u64 {
    metric(
        metrics,
        &format!("eirinix_logs_sink_{family}_total{{sink=\"{sink}\"}}"),
    )
}

/// The value of the series named `series` in the Prometheus text (0 when absent).
fn metric(metrics: &Arc<eirinix_logs::LogsMetrics>, series: &str) -> u64 {
    eirinix_core::metrics::render(metrics.clone())
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    let waits = sink_counter(&metrics, "flow_control_waits", "slow");
    assert!(waits > 0, "the follower waited for the sink");
    cancel.cancel();
    task.await.unwrap();
}

/// The defect this guards against: one failed send turned flow control off, the follower read
/// the backlog at full speed, the buffer kept only its newest lines, and the next successful
/// send moved the checkpoint past the gap: lines that were still on the node were lost for good.
#[tokio::test]
async fn a_sink_that_fails_during_a_backlog_loses_nothing() {
    let s = setup("logs-flow-fail").await;
    let n = 10_000;
    backlog(&s, "fail-0", "f-", n).await;
    let (sink, down, got) = flaky();
    let (cancel, task, metrics) = run(&s, vec![("flaky".into(), Box::new(sink))]);
    // The aggregator is down while the backlog is read: the follower stops reading (before the
    // fix it read on to the end and the buffer dropped all but its newest lines).
    eventually(T, "the follower waits for the failing sink", || {
        sink_counter(&metrics, "errors", "flaky") >= 3
            && (sink_counter(&metrics, "flow_control_waits", "flaky") > 0
                || metrics.lines_read.load(Ordering::Relaxed) == n as u64)
    })
    .await;
    let read = metrics.lines_read.load(Ordering::Relaxed);
    assert!(
        read <= 1_000,
        "reading stopped at the buffer's high-water mark, not at the end of the backlog: {read} of {n} read"
    );
    down.store(false, Ordering::SeqCst);
    eventually(T, "every line once the sink recovers", || {
        got.lock().unwrap().len() >= n
    })
    .await;
    assert_sequence(&got.lock().unwrap(), "f-", n);
    assert_eq!(metric(&metrics, "eirinix_logs_log_gaps_total"), 0);
    cancel.cancel();
    task.await.unwrap();
    assert_sequence(&got.lock().unwrap(), "f-", n);
}

#[tokio::test]
async fn a_sink_that_is_down_holds_every_sink_back_and_nothing_is_lost() {
    let s = setup("logs-flow-down").await;
    let n = 20_000;
    backlog(&s, "down-0", "d-", n).await;
    let (down_sink, down, down_got) = flaky();
    let got = Arc::new(Mutex::new(Vec::new()));
    let slow = SlowSink {
        delay: Duration::from_millis(1),
        got: got.clone(),
    };
    let (cancel, task, metrics) = run(
        &s,
        vec![
            ("down".into(), Box::new(down_sink)),
            ("slow".into(), Box::new(slow)),
        ],
    );
    // The followers are shared: a sink that is down holds the reading back for all of them.
    eventually(T, "reading waits for the sink that is down", || {
        sink_counter(&metrics, "flow_control_waits", "down") > 0
            && sink_counter(&metrics, "errors", "down") >= 3
    })
    .await;
    let read = metrics.lines_read.load(Ordering::Relaxed);
    assert!(read <= 1_000, "{read} of {n} read while a sink is down");
    assert!(got.lock().unwrap().len() <= 1_000);
    down.store(false, Ordering::SeqCst);
    eventually(T, "every line through both sinks", || {
        got.lock().unwrap().len() >= n && down_got.lock().unwrap().len() >= n
    })
    .await;
    assert_sequence(&got.lock().unwrap(), "d-", n);
    assert_sequence(&down_got.lock().unwrap(), "d-", n);
    assert_eq!(metrics.lines_read.load(Ordering::Relaxed), n as u64);
    cancel.cancel();
    task.await.unwrap();
}
