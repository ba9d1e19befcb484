//! eirinix benchmarks. Each subcommand prints Markdown rows for BENCHMARKS.md.
//!
//! `cargo run --release -p eirinix-bench -- all` runs everything (a few minutes).

mod alloc;
mod loadgen;
mod logs;
mod pods;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::routing::post;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use eirinix_core::admission::ExtensionHandler;
use eirinix_core::certs::{CertBundle, CertPolicy, SubjectNames};
use eirinix_core::metrics::Metrics;
use eirinix_core::server::{AppState, Health, ServeOptions};
use eirinix_core::tls::CertResolver;
use eirinix_core::{Context, FailurePolicy, Settings};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[derive(Parser)]
#[command(about = "eirinix benchmarks (results are Markdown rows for BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Admission round trip over TLS (persi) vs. the transport ceiling, at 1, 8 and 64 connections.
    Admission {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// A pod with 1,000 env vars and 20 containers: time and heap per review.
    LargePod,
    /// The handler alone (decode, persi, encode) on the realistic pod, one thread: µs per review by stage.
    Handler {
        /// Reviews to run.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// Added pod-creation latency through a real kube-apiserver.
    ApiserverLatency {
        /// Pods per variant.
        #[arg(long, default_value_t = 300)]
        pods: usize,
    },
    /// Memory and CPU of a pod watcher over many app pods in a real kube-apiserver.
    WatchScale {
        /// App pods to create.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
    },
    /// Log forwarding: lines/s from followed container logs into a real rsyslog, and memory per
    /// followed container with 1,000 containers followed.
    Logs {
        #[command(flatten)]
        args: logs::Args,
    },
    /// Failed requests while certificates rotate under load.
    Rotation {
        /// Seconds of load.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Everything above.
    All,
}

const FIXED: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

struct TestServer {
    addr: std::net::SocketAddr,
    ca: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

/// The real server stack (rustls, hyper, axum router, persi), plus a `/fixed` route answering a
/// constant after reading the body: the transport ceiling of the same stack.
async fn start_server() -> anyhow::Result<TestServer> {
    let bundle = CertBundle::generate(
        &SubjectNames::for_host("127.0.0.1"),
        &CertPolicy::default(),
        time::OffsetDateTime::now_utc(),
    )?;
    let resolver = Arc::new(CertResolver::new());
    resolver.set(eirinix_core::certs::certified_key(
        &bundle.serving_chain_pem(),
        &bundle.serving.key_pem,
    )?);
    let persi: Arc<dyn eirinix_core::Extension> = Arc::new(eirinix_persi::Persi::new(
        eirinix_persi::PersiOptions::default(),
    ));
    let metrics = Arc::new(Metrics::new(["persi"]));
    let state = Arc::new(AppState {
        handlers: vec![ExtensionHandler::new(
            persi,
            FailurePolicy::Fail,
            Duration::from_secs(10),
            0,
        )],
        ctx: Context::offline(Arc::new(Settings::default())),
        metrics: metrics.clone(),
        health: Arc::new(Health::new(false)),
    });
    let router = eirinix_core::server::router(state, 4 << 20, Duration::from_secs(15)).route(
        "/fixed",
        post(|_body: Bytes| async { ([("content-type", "application/json")], FIXED) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let opts = ServeOptions {
        max_connections: 1024,
        handshake_timeout: Duration::from_secs(10),
        http2: false,
        shutdown_timeout: Duration::from_secs(1),
        stats: Default::default(),
    };
    tokio::spawn(eirinix_core::server::serve_tls(
        listener,
        eirinix_core::tls::server_config(resolver, false)?,
        router,
        opts,
        cancel.clone(),
    ));
    Ok(TestServer {
        addr,
        ca: bundle.ca_bundle_pem(),
        metrics,
        cancel,
    })
}

fn target(s: &TestServer, path: &str, body: &[u8]) -> loadgen::Target {
    loadgen::Target {
        addr: s.addr,
        ca_pem: s.ca.clone(),
        server_name: "127.0.0.1".into(),
        path: path.into(),
        body: Bytes::copy_from_slice(body),
    }
}

async fn admission(seconds: u64) -> anyhow::Result<()> {
    let server = start_server().await?;
    let body = pods::review(&pods::eirini_app_pod());
    println!("review body: {} bytes\n", body.len());
    println!(
        "| workload | connections | reviews/s | p50 ms | p99 ms | p99.9 ms | errors | of ceiling |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let dur = Duration::from_secs(seconds);
    let (_, hwm0) = alloc::rss_kib();
    for conns in [1, 8, 64] {
        let ceiling =
            loadgen::run(target(&server, "/fixed", &body), conns, dur, None, None).await?;
        let persi = loadgen::run(target(&server, "/persi", &body), conns, dur, None, None).await?;
        for (name, r) in [
            ("fixed answer (ceiling)", &ceiling),
            ("persi admission", &persi),
        ] {
            println!(
                "| {name} | {conns} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.0} % |",
                r.rate(),
                r.ms(0.5),
                r.ms(0.99),
                r.ms(0.999),
                r.errors,
                100.0 * r.rate() / ceiling.rate()
            );
        }
    }
    let paced = loadgen::run(target(&server, "/persi", &body), 8, dur, Some(1000.0), None).await?;
    println!(
        "| persi admission, paced 1,000/s ({} sends > 2 ms late) | 8 | {:.0} | {:.3} | {:.3} | {:.3} | {} | - |",
        paced.late,
        paced.rate(),
        paced.ms(0.5),
        paced.ms(0.99),
        paced.ms(0.999),
        paced.errors
    );
    let (rss, hwm) = alloc::rss_kib();
    println!(
        "\nprocess RSS after the runs: {rss} KiB, peak {hwm} KiB (before: peak {hwm0} KiB); patched reviews: {}",
        server
            .metrics
            .extension(0)
            .map_or(0, |m| m.count(eirinix_core::metrics::Outcome::Patched))
    );
    server.cancel.cancel();
    Ok(())
}

async fn large_pod() -> anyhow::Result<()> {
    let ext: Arc<dyn eirinix_core::Extension> = Arc::new(eirinix_persi::Persi::new(
        eirinix_persi::PersiOptions::default(),
    ));
    let handler = ExtensionHandler::new(ext, FailurePolicy::Fail, Duration::from_secs(10), 0);
    let ctx = Context::offline(Arc::new(Settings::default()));
    let metrics = Metrics::new(["persi"]);
    let body = pods::review(&pods::large_pod(1000, 20));
    let iterations = 50;
    // Warm up, then count: live bytes only ever include allocations made while counting.
    handler
        .handle_body(&ctx, &metrics, &body)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    alloc::enable(true);
    let before = alloc::reset_peak();
    let start = Instant::now();
    let mut out_len = 0;
    for _ in 0..iterations {
        let out = handler
            .handle_body(&ctx, &metrics, &body)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out_len = out.len();
    }
    let per = start.elapsed() / iterations;
    let extra = alloc::peak().saturating_sub(before);
    alloc::enable(false);
    println!(
        "| pod with 1,000 env vars x 20 containers ({} KiB review, {} B response) | {:.2} ms per review | {:.1} MiB peak extra heap per review |",
        body.len() / 1024,
        out_len,
        per.as_secs_f64() * 1e3,
        extra as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

async fn handler(iterations: u32) -> anyhow::Result<()> {
    let ext: Arc<dyn eirinix_core::Extension> = Arc::new(eirinix_persi::Persi::new(
        eirinix_persi::PersiOptions::default(),
    ));
    let h = ExtensionHandler::new(ext.clone(), FailurePolicy::Fail, Duration::from_secs(10), 0);
    let ctx = Context::offline(Arc::new(Settings::default()));
    let metrics = Metrics::new(["persi"]);
    let body = pods::review(&pods::eirini_app_pod());
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..iterations {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
    };
    let decode = time(&mut || {
        std::hint::black_box(eirinix_core::admission::decode(&body).ok());
    });
    let pod_only = {
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let raw = serde_json::to_string(&v["request"]["object"])?;
        time(&mut || {
            std::hint::black_box(
                serde_json::from_str::<k8s_openapi::api::core::v1::Pod>(&raw).ok(),
            );
        })
    };
    let decoded = eirinix_core::admission::decode(&body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pod = decoded.pod.clone().map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(ext.mutate(&ctx, &decoded.request, &pod).await.ok());
    }
    let mutate = t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    let t = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(h.handle_body(&ctx, &metrics, &body).await.ok());
    }
    let full = t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    println!(
        "| handler, one thread ({} B review) | decode {decode:.1} µs (of which Pod {pod_only:.1} µs) | persi mutate {mutate:.1} µs | whole handle_body {full:.1} µs |",
        body.len()
    );
    Ok(())
}

async fn apiserver_latency(n: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    let cp = eirinix_testenv::ControlPlane::start().await?;
    let client = cp.client().await?;
    let sys = cp.namespace("bench-sys").await?;
    let with = cp.namespace("bench-with").await?;
    let without = cp.namespace("bench-without").await?;
    let running = eirinix_core::Manager::builder()
        .url_mode("127.0.0.1")
        .bind_address([127, 0, 0, 1].into())
        .port(0)
        .webhook_namespace(&sys)
        .namespace(&with)
        .extension(eirinix_persi::Persi::new(
            eirinix_persi::PersiOptions::default(),
        ))
        .build()?
        .start(client.clone())
        .await?;
    running
        .wait_ready(Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut pod: Pod = serde_json::from_value(pods::eirini_app_pod())?;
    pod.metadata.namespace = None;
    pod.metadata.owner_references = None;
    let measure = |ns: String| {
        let (client, mut pod) = (client.clone(), pod.clone());
        async move {
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let mut times = Vec::with_capacity(n);
            for i in 0..n + 20 {
                pod.metadata.name = Some(format!("dora-{i}"));
                let t = Instant::now();
                api.create(&PostParams::default(), &pod).await?;
                if i >= 20 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            Ok::<_, anyhow::Error>(times)
        }
    };
    // Interleave variants twice to even out drift (etcd growth, caches).
    let a1 = measure(without.clone()).await?;
    let b1 = measure(with.clone()).await?;
    let q = |v: &Vec<f64>, p: f64| v[((v.len() - 1) as f64 * p) as usize];
    println!(
        "| pod creation through kube-apiserver ({n} pods each) | without webhook p50 {:.2} ms p99 {:.2} ms | with persi webhook p50 {:.2} ms p99 {:.2} ms | added p50 {:.2} ms, p99 {:.2} ms |",
        q(&a1, 0.5),
        q(&a1, 0.99),
        q(&b1, 0.5),
        q(&b1, 0.99),
        q(&b1, 0.5) - q(&a1, 0.5),
        q(&b1, 0.99) - q(&a1, 0.99)
    );
    running.shutdown().await;
    Ok(())
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn watch_scale(n: usize) -> anyhow::Result<()> {
    use eirinix_core::watcher::{EventTracker, default_config};
    use futures::{StreamExt as _, TryStreamExt as _};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    let cp = eirinix_testenv::ControlPlane::start().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("watch").await?;
    let mut pod: Pod = serde_json::from_value(pods::eirini_app_pod())?;
    pod.metadata.namespace = None;
    pod.metadata.owner_references = None;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, mut pod) = (api.clone(), pod.clone());
            async move {
                pod.metadata.name = Some(format!("dora-{i}"));
                api.create(&PostParams::default(), &pod).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .context("creating pods")?;
    eprintln!("created {n} pods in {:.1} s", t.elapsed().as_secs_f64());
    let settings = Settings {
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    alloc::enable(true);
    let live0 = alloc::live();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let mut tracker = EventTracker::default();
    let stream = kube::runtime::watcher(api.clone(), default_config(&settings));
    futures::pin_mut!(stream);
    let mut events = 0usize;
    while let Some(ev) = stream.next().await {
        events += tracker.translate(ev?).len();
        if events >= n {
            break;
        }
    }
    let live = alloc::live().saturating_sub(live0);
    println!(
        "| pod watcher over {n} app pods (real apiserver) | initial list in {:.2} s, {:.2} s CPU | {:.1} MiB heap held by the watcher state ({} B per pod) |",
        t.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
        live as f64 / (1024.0 * 1024.0),
        live / n.max(1)
    );
    Ok(())
}

async fn rotation(seconds: u64) -> anyhow::Result<()> {
    use eirinix_core::certs::CertPolicy;
    let cp = eirinix_testenv::ControlPlane::start().await?;
    let client = cp.client().await?;
    let sys = cp.namespace("rot-sys").await?;
    let apps = cp.namespace("rot-apps").await?;
    let policy = CertPolicy {
        ca_validity: Duration::from_secs(24),
        serving_validity: Duration::from_secs(6),
        renew_fraction: 0.5,
        ca_promote_delay: Duration::from_secs(2),
        previous_ca_retention: Duration::from_secs(4),
        ..CertPolicy::default()
    };
    let running = eirinix_core::Manager::builder()
        .url_mode("127.0.0.1")
        .bind_address([127, 0, 0, 1].into())
        .port(0)
        .webhook_namespace(&sys)
        .namespace(&apps)
        .cert_policy(policy)
        .cert_check_interval(Duration::from_millis(500))
        .extension(eirinix_persi::Persi::new(
            eirinix_persi::PersiOptions::default(),
        ))
        .build()?
        .start(client.clone())
        .await?;
    running
        .wait_ready(Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    // The load generator trusts every CA the webhook configuration ever carried, as the apiserver does.
    let body = pods::review(&pods::eirini_app_pod());
    let start = Instant::now();
    let (mut ok, mut errors, mut rotations, mut last) = (0, 0, 0, running.published());
    while start.elapsed() < Duration::from_secs(seconds) {
        let p = running.published().context("no certificates")?;
        if Some(&p) != last.as_ref() {
            rotations += 1;
            last = Some(p.clone());
        }
        let t = loadgen::Target {
            addr: running.local_addr(),
            ca_pem: p.ca_bundle.clone(),
            server_name: "127.0.0.1".into(),
            path: "/persi".into(),
            body: Bytes::copy_from_slice(&body),
        };
        let r = loadgen::run(t, 8, Duration::from_millis(500), None, Some(50)).await?;
        ok += r.ok;
        errors += r.errors;
        for s in r.error_samples.iter().take(2) {
            eprintln!("error: {s}");
        }
    }
    println!(
        "| certificate rotation under load ({seconds} s, serving cert every 3 s, CA every 12 s; reconnect every 50 requests) | {ok} reviews | {errors} failed | {rotations} certificate changes |"
    );
    running.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    eirinix_core::tls::install_default_provider();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Admission { seconds } => admission(seconds).await,
        Cmd::LargePod => large_pod().await,
        Cmd::Handler { iterations } => handler(iterations).await,
        Cmd::ApiserverLatency { pods } => apiserver_latency(pods).await,
        Cmd::WatchScale { pods } => watch_scale(pods).await,
        Cmd::Rotation { seconds } => rotation(seconds).await,
        Cmd::Logs { args } => logs::run(args).await,
        Cmd::All => {
            admission(8).await?;
            large_pod().await?;
            apiserver_latency(300).await?;
            watch_scale(10_000).await?;
            logs::run(logs::Args::default()).await?;
            rotation(30).await
        }
    }
}
