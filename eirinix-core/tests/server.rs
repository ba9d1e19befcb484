//! The webhook server under bad input and hostile clients, with no cluster: the pieces
//! (certificates, resolver, router, TLS loop) composed directly, as an author could.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eirinix_core::admission::ExtensionHandler;
use eirinix_core::certs::{CertBundle, CertPolicy, SubjectNames};
use eirinix_core::metrics::{Metrics, Outcome};
use eirinix_core::server::{AppState, Health, ServeOptions, router};
use eirinix_core::tls::{CertResolver, server_config};
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, FailurePolicy, Mutation, PodPatch, Request,
    Settings, async_trait,
};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Sticky;
#[async_trait]
impl Extension for Sticky {
    fn name(&self) -> &str {
        "sticky"
    }
    async fn mutate(
        &self,
        _: &Context,
        _: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        let mut p = PodPatch::new(pod);
        p.add_env(
            ContainerRef::App(0),
            &EnvVar {
                name: "STICKY".into(),
                value: Some("1".into()),
                ..Default::default()
            },
        )?;
        Ok(Mutation::patch(p.build()))
    }
}

struct Server {
    addr: SocketAddr,
    ca: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(max_connections: usize, body_limit: usize, timeout: Duration) -> Server {
    start_with_drain(max_connections, body_limit, timeout, Duration::ZERO).await
}

async fn start_with_drain(
    max_connections: usize,
    body_limit: usize,
    timeout: Duration,
    drain: Duration,
) -> Server {
    eirinix_core::tls::install_default_provider();
    let bundle = CertBundle::generate(
        &SubjectNames::for_host("127.0.0.1"),
        &CertPolicy::default(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let resolver = Arc::new(CertResolver::new());
    resolver.set(
        eirinix_core::certs::certified_key(&bundle.serving_chain_pem(), &bundle.serving.key_pem)
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::new(["sticky"]));
    let health = Arc::new(Health::new());
    let state = Arc::new(AppState {
        handlers: vec![ExtensionHandler::new(
            Arc::new(Sticky),
            FailurePolicy::Fail,
            Duration::from_secs(5),
            0,
        )],
        ctx: Context::offline(Arc::new(Settings::default())),
        metrics: metrics.clone(),
        health,
    });
    let listening = eirinix_core::server::Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let addr = listening.local_addr();
    let cancel = CancellationToken::new();
    let opts = ServeOptions {
        max_connections,
        handshake_timeout: timeout,
        http2: false,
        shutdown_timeout: Duration::from_secs(2),
        drain,
        stats: metrics.connections().clone(),
    };
    tokio::spawn(listening.serve_tls(
        server_config(resolver, false).unwrap(),
        router(state, body_limit, timeout),
        opts,
        cancel.clone(),
    ));
    Server {
        addr,
        ca: bundle.ca_bundle_pem(),
        metrics,
        cancel,
    }
}

async fn tls_connect(server: &Server) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = eirinix_core::tls::client_config(&server.ca).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    connector
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Send raw HTTP/1.1 bytes over TLS and read the response head (status line + headers), bounded.
async fn raw(server: &Server, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tls_connect(server).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_response(&mut s).await
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn post(path: &str, len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

fn review(pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {}, "object": pod}
    }))
    .unwrap()
}

fn pod(env: usize, containers: usize) -> Value {
    let env: Vec<Value> = (0..env)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(16)}))
        .collect();
    let cs: Vec<Value> = (0..containers)
        .map(|i| json!({"name": format!("c{i}"), "image": "app", "env": env}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"}, "spec": {"containers": cs}})
}

#[tokio::test]
async fn valid_review_is_answered_and_health_endpoints_work() {
    let server = start(64, 4 << 20, Duration::from_secs(5)).await;
    let body = review(pod(2, 1));
    let (code, text) = raw(&server, &post("/sticky", body.len()), &body).await;
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("\"uid\":\"u-1\"") && text.contains("\"patchType\":\"JSONPatch\""),
        "{text}"
    );
    let (code, _) = raw(&server, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", b"").await;
    assert_eq!(code, 200);
    let (code, text) = raw(&server, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", b"").await;
    assert_eq!(code, 200);
    assert!(
        text.contains("eirinix_reviews_total{extension=\"sticky\",outcome=\"patched\"} 1"),
        "{text}"
    );
    let (code, _) = raw(&server, &post("/unknown", 2), b"{}").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn body_over_the_limit_is_413_without_reading_it() {
    let server = start(64, 64 * 1024, Duration::from_secs(5)).await;
    // Announce 100 MiB but send nothing: the answer must come from the headers alone.
    let mut s = tls_connect(&server).await;
    s.write_all(post("/sticky", 100 << 20).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let (code, _) = read_response(&mut s).await;
    assert_eq!(code, 413);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Chunked bodies that grow past the limit are cut off too.
    let mut s = tls_connect(&server).await;
    s.write_all(b"POST /sticky HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'a'; 32 * 1024];
    for _ in 0..3 {
        let _ = s
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = s.write_all(&chunk).await;
        let _ = s.write_all(b"\r\n").await;
    }
    let (code, _) = read_response(&mut s).await;
    assert_eq!(code, 413);
}

#[tokio::test]
async fn slow_client_is_timed_out_and_disconnected() {
    let server = start(64, 4 << 20, Duration::from_secs(1)).await;
    let mut s = tls_connect(&server).await;
    s.write_all(post("/sticky", 1000).as_bytes()).await.unwrap();
    s.write_all(b"{\"apiVersion\":").await.unwrap(); // then stall
    let started = Instant::now();
    let (code, _) = read_response(&mut s).await;
    assert_eq!(code, 408, "a stalled body gets 408 Request Timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that never finishes its headers is closed too.
    let mut s = tls_connect(&server).await;
    s.write_all(b"POST /sticky HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))) || matches!(r, Ok(Ok(n)) if n > 0),
        "connection must be closed or answered, not left hanging: {r:?}"
    );
    assert!(r.is_ok(), "header read timeout did not fire");
}

#[tokio::test]
async fn plain_http_and_old_tls_are_refused() {
    let server = start(64, 4 << 20, Duration::from_secs(2)).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plain HTTP must not be served"
    );

    // A real TLS 1.0/1.1 client (OpenSSL, with its own floor lowered so it really offers them).
    for version in ["-tls1", "-tls1_1"] {
        let out = tokio::process::Command::new("openssl")
            .args([
                "s_client",
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-connect",
                &server.addr.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "{version} handshake must fail:\n{text}"
        );
        // rustls answers an old ClientHello with a fatal alert (handshake_failure): no cipher, no certificate.
        assert!(
            text.contains("Cipher is (NONE)") && text.contains("no peer certificate available"),
            "{version}: {text}"
        );
        assert!(
            text.contains("alert handshake failure") || text.contains("alert protocol version"),
            "{version}: expected a fatal alert:\n{text}"
        );
    }
    // And TLS 1.2 works with the same tool.
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &server.addr.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("TLSv1.2"),
        "TLS 1.2 must be accepted"
    );
    // Every refused client is counted, and no connection stays open.
    let stats = server.metrics.connections().clone();
    assert_eq!(stats.accepted(), 4);
    assert_eq!(stats.handshake_failures(), 3);
    let rendered = server.metrics.render();
    assert!(
        rendered.contains("eirinix_tls_handshake_failures_total 3"),
        "{rendered}"
    );
    assert!(
        rendered.contains("eirinix_connections_accepted_total 4"),
        "{rendered}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.open() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.open(), 0, "connections left open");
}

#[tokio::test]
async fn http2_is_off_by_default() {
    let server = start(64, 4 << 20, Duration::from_secs(2)).await;
    let mut config = (*eirinix_core::tls::client_config(&server.ca).unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let result = connector
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await;
    match result {
        Ok(s) => assert_ne!(
            s.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 negotiated"
        ),
        Err(e) => assert!(e.to_string().contains("NoApplicationProtocol"), "{e}"),
    }
}

#[tokio::test]
async fn huge_and_hostile_pods_are_handled() {
    let server = start(64, 4 << 20, Duration::from_secs(10)).await;
    // 10,000 env vars: answered with a patch.
    let body = review(pod(10_000, 1));
    let (code, text) = raw(&server, &post("/sticky", body.len()), &body).await;
    assert_eq!(code, 200);
    assert!(text.contains("JSONPatch"));
    // Deeply nested JSON (a VCAP_SERVICES-like value 100k levels deep): rejected, no stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE","userInfo":{{}},"object":{{"metadata":{{"annotations":{{"x":{deep}}}}}}}}}}}"#
    );
    // The envelope is skimmed without recursion; the Pod decode refuses it: a 400 denial with the uid.
    let (code, text) = raw(&server, &post("/sticky", body.len()), body.as_bytes()).await;
    assert_eq!(code, 200, "{}", &text[..text.len().min(300)]);
    assert!(
        text.contains(r#""allowed":false"#) && text.contains(r#""code":400"#),
        "{text}"
    );
    assert!(text.contains("does not decode as a Pod"), "{text}");
    // Nesting in the envelope itself hits serde's recursion limit: HTTP 400, no stack overflow.
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE","userInfo":{{}},"options":{deep}}}}}"#
    );
    let (code, text) = raw(&server, &post("/sticky", body.len()), body.as_bytes()).await;
    assert_eq!(code, 400, "{}", &text[..text.len().min(300)]);
    assert!(
        text.contains("recursion limit"),
        "{}",
        &text[..text.len().min(300)]
    );
    // Invalid UTF-8 inside a string.
    let mut bad = review(pod(1, 1));
    let at = bad.windows(5).position(|w| w == b"VAR_0").unwrap();
    bad[at] = 0xff;
    let (code, _) = raw(&server, &post("/sticky", bad.len()), &bad).await;
    assert_eq!(code, 400);
    // The server is still fine.
    let body = review(pod(1, 1));
    assert_eq!(
        raw(&server, &post("/sticky", body.len()), &body).await.0,
        200
    );
    assert_eq!(
        server.metrics.extension(0).unwrap().count(Outcome::Patched),
        2
    );
}

#[tokio::test]
async fn connection_flood_is_bounded_and_the_server_recovers() {
    let server = start(32, 4 << 20, Duration::from_secs(1)).await;
    // 200 idle TCP connections that never handshake.
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(server.addr).await {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 150);
    // Handshake timeouts free the slots: a real client gets through within a few seconds.
    let started = Instant::now();
    let body = review(pod(1, 1));
    let (code, _) = tokio::time::timeout(
        Duration::from_secs(30),
        raw(&server, &post("/sticky", body.len()), &body),
    )
    .await
    .expect("server recovered");
    assert_eq!(code, 200);
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(idle);
}

#[tokio::test]
async fn shutdown_drains_keep_alive_connections_before_closing() {
    let drain = Duration::from_secs(5);
    let server = start_with_drain(64, 4 << 20, Duration::from_secs(5), drain).await;
    let body = review(pod(1, 1));
    let closing = |head: &str| head.to_ascii_lowercase().contains("connection: close");

    // A keep-alive connection, used before shutdown: kept open.
    let mut kept = tls_connect(&server).await;
    kept.write_all(post("/sticky", body.len()).as_bytes())
        .await
        .unwrap();
    kept.write_all(&body).await.unwrap();
    let (code, head) = read_response(&mut kept).await;
    assert_eq!(code, 200);
    assert!(!closing(&head), "{head}");

    let cancelled = Instant::now();
    server.cancel.cancel();
    // Draining: the open connection is still served, and told to close after its response...
    kept.write_all(post("/sticky", body.len()).as_bytes())
        .await
        .unwrap();
    kept.write_all(&body).await.unwrap();
    let (code, head) = read_response(&mut kept).await;
    assert_eq!(code, 200, "{head}");
    assert!(closing(&head), "{head}");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the last response");
    // ...and new connections are still accepted, served once, and closed.
    let (code, head) = raw(&server, &post("/sticky", body.len()), &body).await;
    assert_eq!(code, 200, "{head}");
    assert!(closing(&head), "{head}");
    assert!(
        cancelled.elapsed() < drain,
        "the checks above ran within the drain period"
    );

    // After the drain period the listener is closed.
    let deadline = Instant::now() + drain + Duration::from_secs(10);
    while TcpStream::connect(server.addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting long after the drain period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cancelled.elapsed() >= drain - Duration::from_millis(200),
        "stopped accepting after {:?}, before the drain period ended",
        cancelled.elapsed()
    );
}
