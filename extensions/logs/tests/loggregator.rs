//! The Loggregator v2 sink against an in-test gRPC ingress built from the same protobuf
//! definitions, with mutual TLS; and the whole extension with two sinks at once.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use eirinix_logs::loggregator::LoggregatorSink;
use eirinix_logs::loggregator::proto::ingress_server::{Ingress, IngressServer};
use eirinix_logs::loggregator::proto::{
    BatchSenderResponse, Envelope, EnvelopeBatch, IngressResponse, SendResponse, envelope,
};
use eirinix_logs::sink::spawn_sink;
use eirinix_logs::{LoggregatorOptions, LogsMetrics, Origin, Record, SinkOptions};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default, Clone)]
struct Collector {
    envelopes: Arc<Mutex<Vec<Envelope>>>,
    /// Client certificates seen (mutual TLS).
    peers: Arc<Mutex<usize>>,
}

impl Collector {
    fn payloads(&self, prefix: &str) -> Vec<String> {
        self.envelopes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.message {
                Some(envelope::Message::Log(l)) if l.payload.starts_with(prefix.as_bytes()) => {
                    Some(String::from_utf8_lossy(&l.payload).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    async fn wait(&self, prefix: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.payloads(prefix).len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} envelopes {prefix}*, got {}",
                self.payloads(prefix).len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tonic::async_trait]
impl Ingress for Collector {
    async fn sender(
        &self,
        _request: Request<Streaming<Envelope>>,
    ) -> Result<Response<IngressResponse>, Status> {
        Err(Status::unimplemented("use BatchSender"))
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<EnvelopeBatch>>,
    ) -> Result<Response<BatchSenderResponse>, Status> {
        if request.peer_certs().is_some_and(|c| !c.is_empty()) {
            *self.peers.lock().unwrap() += 1;
        }
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.envelopes.lock().unwrap().extend(batch.batch);
        }
        Ok(Response::new(BatchSenderResponse {}))
    }

    async fn send(
        &self,
        request: Request<EnvelopeBatch>,
    ) -> Result<Response<SendResponse>, Status> {
        self.envelopes
            .lock()
            .unwrap()
            .extend(request.into_inner().batch);
        Ok(Response::new(SendResponse {}))
    }
}

/// A gRPC ingress requiring client certificates signed by the PKI's CA.
struct Ingressd {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Ingressd {
    async fn start(pki: &Pki, collector: Collector, port: u16) -> Ingressd {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(&pki.server_cert).unwrap(),
                std::fs::read(&pki.server_key).unwrap(),
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()));
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(IngressServer::new(collector))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        Ingressd { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn origin(pod: &str, instance: Option<u32>) -> Arc<Origin> {
    Arc::new(Origin {
        source_id: APP_GUID.into(),
        instance,
        process_type: "worker".into(),
        source_type: "APP/PROC/WORKER".into(),
        namespace: "space".into(),
        pod: pod.into(),
        container: "opi".into(),
    })
}

fn sink_options(pki: &Pki, addr: SocketAddr) -> LoggregatorOptions {
    LoggregatorOptions {
        name: Some("loggregator".into()),
        address: addr.to_string(),
        tls: pki.client_tls("metron"),
    }
}

#[tokio::test]
async fn loggregator_sink_delivers_envelopes_over_mutual_tls() {
    init_tracing();
    let pki = Pki::generate();
    let collector = Collector::default();
    let server = Ingressd::start(&pki, collector.clone(), 0).await;
    let opts = options(&server.addr.to_string(), None);
    let metrics = LogsMetrics::new();
    let sink = LoggregatorSink::new(&sink_options(&pki, server.addr)).unwrap();
    let handle = spawn_sink("loggregator".into(), 0, Box::new(sink), &opts, &metrics);

    let a = origin("worker-7", Some(7));
    let b = origin("worker-8", Some(8));
    let base = 1_709_287_200_000_000_123i128;
    for i in 0..500i128 {
        let ts = jiff::Timestamp::from_nanosecond(base + i).unwrap();
        handle.push(Arc::new(Record::new(a.clone(), ts, format!("a-{i}"))));
        handle.push(Arc::new(Record::new(b.clone(), ts, format!("b-{i}"))));
    }
    let ts = jiff::Timestamp::from_nanosecond(base + 1000).unwrap();
    handle.push(Arc::new(Record::new(
        a.clone(),
        ts,
        b"bin-\xff\x00\xfe".to_vec(),
    )));
    collector.wait("a-", 500).await;
    collector.wait("b-", 500).await;
    collector.wait("bin-", 1).await;
    assert_sequence(&collector.payloads("a-"), "a-", 500);
    assert_sequence(&collector.payloads("b-"), "b-", 500);
    assert!(
        *collector.peers.lock().unwrap() > 0,
        "the client presented its certificate"
    );

    let all = collector.envelopes.lock().unwrap().clone();
    let e = all
        .iter()
        .find(|e| matches!(&e.message, Some(envelope::Message::Log(l)) if &l.payload[..] == b"a-3"))
        .unwrap();
    assert_eq!(e.source_id, APP_GUID);
    assert_eq!(e.instance_id, "7");
    assert_eq!(
        e.timestamp, 1_709_287_200_000_000_126,
        "the line's own timestamp, in ns"
    );
    assert_eq!(e.tags["source_type"], "APP/PROC/WORKER");
    assert_eq!(e.tags["process_type"], "worker");
    assert_eq!(e.tags["namespace"], "space");
    assert_eq!(e.tags["pod"], "worker-7");
    assert_eq!(e.tags["container"], "opi");
    assert_eq!(e.tags["stream"], "unknown");
    let bin = all
        .iter()
        .find_map(|e| match &e.message {
            Some(envelope::Message::Log(l)) if l.payload.starts_with(b"bin-") => {
                Some(l.payload.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(&bin[..], b"bin-\xff\x00\xfe", "payload bytes unchanged");
    handle.drain(Duration::from_secs(5)).await;
    server.stop().await;
}

#[tokio::test]
async fn loggregator_rejects_strangers_and_survives_an_outage() {
    init_tracing();
    let pki = Pki::generate();
    let collector = Collector::default();
    let server = Ingressd::start(&pki, collector.clone(), 0).await;
    let addr = server.addr;
    let opts = options(&addr.to_string(), None);

    // A client certificate from another CA is refused by the server.
    let stranger = Pki::generate();
    let mut bad = sink_options(&stranger, addr);
    bad.tls.ca_file = pki.ca.clone();
    let metrics = LogsMetrics::new();
    let bad = spawn_sink(
        "stranger".into(),
        0,
        Box::new(LoggregatorSink::new(&bad).unwrap()),
        &opts,
        &metrics,
    );
    bad.push(Arc::new(Record::new(
        origin("x-0", Some(0)),
        jiff::Timestamp::now(),
        "nope",
    )));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(bad.metrics.errors.load(Ordering::Relaxed) > 0);
    assert!(collector.payloads("nope").is_empty());
    bad.stop().await;
    // Without a client certificate the sink is not even built.
    let mut no_cert = sink_options(&pki, addr);
    no_cert.tls.cert_file = None;
    assert!(LoggregatorSink::new(&no_cert).is_err());

    // Outage: lines wait in the buffer while the ingress is down, then all arrive once.
    let handle = spawn_sink(
        "loggregator".into(),
        0,
        Box::new(LoggregatorSink::new(&sink_options(&pki, addr)).unwrap()),
        &opts,
        &metrics,
    );
    let o = origin("worker-0", Some(0));
    let mut i = 0;
    let mut push = |n: usize| {
        for _ in 0..n {
            handle.push(Arc::new(Record::new(
                o.clone(),
                jiff::Timestamp::now(),
                format!("o-{i}"),
            )));
            i += 1;
        }
    };
    push(100);
    collector.wait("o-", 100).await;
    server.stop().await;
    push(300);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    push(100);
    let server = Ingressd::start(&pki, collector.clone(), addr.port()).await;
    collector.wait("o-", 500).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_sequence(&collector.payloads("o-"), "o-", 500);
    assert!(
        handle.metrics.errors.load(Ordering::Relaxed) > 0,
        "the outage was seen"
    );
    handle.drain(Duration::from_secs(5)).await;
    server.stop().await;
}

#[tokio::test]
async fn pod_logs_reach_syslog_and_loggregator_at_once() {
    init_tracing();
    let plane = eirinix_testenv::ControlPlane::shared()
        .await
        .expect("control plane (run scripts/provision.sh)");
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("logs-two-sinks").await.unwrap();
    let kubelet =
        eirinix_testenv::FakeKubelet::start(&client, &eirinix_testenv::unique_name("node"))
            .await
            .unwrap();
    let pki = Pki::generate();
    let collector = Collector::default();
    let server = Ingressd::start(&pki, collector.clone(), 0).await;
    let rsyslog = Rsyslog::start(None);

    let mut opts = options(&rsyslog.address(), None);
    opts.sinks
        .push(SinkOptions::Loggregator(sink_options(&pki, server.addr)));
    let service = start_service(&client, &ns, opts);
    create_pod(
        &client,
        &ns,
        &app_pod("both-4", "APP", &["opi"], kubelet.node_name()),
    )
    .await;
    set_status(&client, &ns, "both-4", "opi", 0, State::Running).await;
    let log = kubelet.container(&ns, "both-4", "opi");
    for i in 0..1000 {
        log.push_line(format!("two-{i}"));
    }
    collector.wait("two-", 1000).await;
    let got = rsyslog
        .wait_for(Duration::from_secs(30), "syslog copy", |r| {
            messages_with(r, "two-").len() >= 1000
        })
        .await;
    assert_sequence(&messages_with(&got, "two-"), "two-", 1000);
    assert_sequence(&collector.payloads("two-"), "two-", 1000);
    let e = collector.envelopes.lock().unwrap()[0].clone();
    assert_eq!(
        (e.source_id.as_str(), e.instance_id.as_str()),
        (APP_GUID, "4")
    );
    assert_eq!(e.tags["source_type"], "APP/PROC/WEB");
    assert_eq!(e.tags["namespace"], ns);
    service.stop().await;
    server.stop().await;
}
