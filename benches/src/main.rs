//! eirinix benchmarks. Each subcommand prints Markdown rows for BENCHMARKS.md.
//!
//! `cargo run --release -p eirinix-bench -- all` runs everything (a few minutes).

mod alloc;
mod baseline;
mod burst;
mod ladder;
mod latency;
mod layout;
mod lean;
mod loadgen;
mod logs;
mod peers;
mod pods;
mod process;
mod rootfs;
mod sharded;

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
        /// Run the server in this process instead of a child process.
        #[arg(long)]
        in_process: bool,
    },
    /// The admission server of `admission` as its own process (used by `admission` and `peers`).
    #[command(hide = true)]
    Serve,
    /// The hand-written axum + kube-rs persi webhook as its own process (used by `peers`).
    #[command(hide = true)]
    ServeBaseline,
    /// One load run against one server, result as a JSON line (used by `peers`).
    #[command(hide = true)]
    Load {
        #[command(flatten)]
        args: peers::LoadArgs,
    },
    /// eirinix persi, its fixed answer, a controller-runtime webhook and a hand-written axum +
    /// kube-rs webhook under the same load, each server pinned to one core (`taskset`), the
    /// load generator to the other; checks that every server's patch gives the same pod.
    Peers {
        #[command(flatten)]
        args: peers::Args,
    },
    /// Server CPU per review on the pinned server, one step of the persi route added per rung:
    /// the fixed answer, the decode's scan, the whole decode, persi's mutate, the real route.
    Ladder {
        #[command(flatten)]
        args: peers::Pinning,
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
    /// The `eirinix` binary as its own process with all stock extensions: idle RSS, then admission
    /// load from this process and the server's peak RSS (build eirinix-cli in release first).
    Process {
        /// Seconds per load measurement.
        #[arg(long, default_value_t = 6)]
        seconds: u64,
        /// Seconds to stay idle after ready before reading the idle RSS.
        #[arg(long, default_value_t = 10)]
        idle: u64,
    },
    /// Log forwarding: lines/s from followed container logs into a real rsyslog, and memory per
    /// followed container with 1,000 containers followed.
    Logs {
        #[command(flatten)]
        args: logs::Args,
    },
    /// Sharded logs replicas at scale: many containers on simulated nodes, a replica killed,
    /// one added, one removed under load; memory, CPU, time to rebalance, lines lost/repeated.
    LogsSharded {
        #[command(flatten)]
        args: sharded::Args,
    },
    /// rootfs at scale: many app StatefulSets (status from a simulated controller) planned and
    /// rolled to new rootfs versions by the real roller at several maxInFlight; time, API calls,
    /// roller memory and CPU, apiserver CPU.
    RootfsScale {
        #[command(flatten)]
        args: rootfs::Args,
    },
    /// A burst of pod creations through the real apiserver without a webhook and with persi:
    /// failures on both sides and the added latency.
    AdmissionBurst {
        #[command(flatten)]
        args: burst::Args,
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

/// The constant answer of `/fixed` and of the ladder's rungs.
const FIXED: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

struct TestServer {
    addr: std::net::SocketAddr,
    ca: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

/// The real server stack (rustls, hyper, axum router, persi), plus a `/fixed` route answering a
/// constant after reading the body through the same layers: the transport ceiling of the same stack.
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
    // Served as the manager serves persi: from its view of the pod.
    let persi = Arc::new(eirinix_persi::Persi::default());
    let metrics = Arc::new(Metrics::new(["persi"]));
    let state = Arc::new(AppState {
        handlers: vec![ExtensionHandler::for_view(
            persi,
            FailurePolicy::Fail,
            Duration::from_secs(10),
            0,
        )],
        ctx: Context::offline(Arc::new(Settings::default())),
        metrics: metrics.clone(),
        health: Arc::new(Health::new()),
    });
    let (body_limit, request_timeout) = (4 << 20, Duration::from_secs(15));
    // The ceiling goes through the same layers (body limit, timeout) and extractors (URI and
    // the collected body) as the extension routes; only the handler differs.
    let fixed = eirinix_core::server::with_webhook_layers(
        axum::Router::new().route(
            "/fixed",
            post(|uri: http::Uri, body: Bytes| async move {
                std::hint::black_box((uri.query().map(str::to_owned), body.len()));
                ([("content-type", "application/json")], FIXED)
            }),
        ),
        body_limit,
        request_timeout,
    );
    let router = eirinix_core::server::router(state.clone(), body_limit, request_timeout)
        .merge(fixed)
        .merge(ladder::routes(state, body_limit, request_timeout));
    let listening = eirinix_core::server::Server::bind(([127, 0, 0, 1], 0).into()).await?;
    let addr = listening.local_addr();
    let cancel = CancellationToken::new();
    let opts = ServeOptions {
        shutdown_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    tokio::spawn(listening.serve_tls(
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

/// The server under load: this process's own (`--in-process`) or a child process running the
/// same stack (`eirinix-bench serve`), as the webhook runs in production.
enum UnderTest {
    InProcess(TestServer),
    Child(Box<ChildServer>),
}

struct ChildServer {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    addr: std::net::SocketAddr,
    ca: String,
}

impl UnderTest {
    async fn start(in_process: bool) -> anyhow::Result<UnderTest> {
        use tokio::io::AsyncBufReadExt as _;
        if in_process {
            return Ok(UnderTest::InProcess(start_server().await?));
        }
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdout =
            tokio::io::BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let first = stdout
            .next_line()
            .await?
            .context("the server process exited before it was ready")?;
        let v: serde_json::Value = serde_json::from_str(&first)?;
        Ok(UnderTest::Child(Box::new(ChildServer {
            addr: v["addr"].as_str().context("addr")?.parse()?,
            ca: v["ca"].as_str().context("ca")?.to_owned(),
            child,
            stdout,
        })))
    }

    fn target(&self, path: &str, body: &[u8]) -> loadgen::Target {
        let (addr, ca) = match self {
            UnderTest::InProcess(s) => (s.addr, s.ca.clone()),
            UnderTest::Child(c) => (c.addr, c.ca.clone()),
        };
        loadgen::Target {
            addr,
            ca_pem: ca,
            server_name: "127.0.0.1".into(),
            path: path.into(),
            body: Bytes::copy_from_slice(body),
        }
    }

    /// The server's process: "self" or the child's pid.
    fn pid(&self) -> String {
        match self {
            UnderTest::InProcess(_) => "self".into(),
            UnderTest::Child(c) => c.child.id().map_or("0".into(), |p| p.to_string()),
        }
    }

    /// Stop the server; returns the number of patched reviews it answered.
    async fn stop(self) -> anyhow::Result<u64> {
        match self {
            UnderTest::InProcess(s) => {
                s.cancel.cancel();
                Ok(s.metrics
                    .extension(0)
                    .map_or(0, |m| m.count(eirinix_core::metrics::Outcome::Patched)))
            }
            UnderTest::Child(mut c) => {
                drop(c.child.stdin.take());
                let last = c.stdout.next_line().await?.unwrap_or_default();
                c.child.wait().await?;
                Ok(last.trim().parse().unwrap_or(0))
            }
        }
    }
}

/// `eirinix-bench serve`: the admission server stack of [`start_server`] as its own process;
/// prints `{"addr", "ca"}`, serves until stdin closes, then prints the patched-review count.
async fn serve() -> anyhow::Result<()> {
    let server = start_server().await?;
    println!(
        "{}",
        serde_json::json!({"addr": server.addr.to_string(), "ca": server.ca})
    );
    let _ = tokio::task::spawn_blocking(|| {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
    })
    .await;
    println!(
        "{}",
        server
            .metrics
            .extension(0)
            .map_or(0, |m| m.count(eirinix_core::metrics::Outcome::Patched))
    );
    server.cancel.cancel();
    Ok(())
}

async fn admission(seconds: u64, in_process: bool) -> anyhow::Result<()> {
    let server = UnderTest::start(in_process).await?;
    let pid = server.pid();
    let body = pods::review(&pods::eirini_app_pod());
    println!(
        "review body: {} bytes; server {}\n",
        body.len(),
        if in_process {
            "in this process (sharing its runtime and allocator with the load generator)"
        } else {
            "in its own process (`eirinix-bench serve`)"
        }
    );
    println!(
        "| workload | connections | reviews/s | p50 ms | p99 ms | p99.9 ms | errors | of ceiling | server CPU µs/review |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let dur = Duration::from_secs(seconds);
    let (_, hwm0) = alloc::rss_kib_of(&pid);
    let run = |path: &'static str, conns: usize, rate: Option<f64>| {
        let (t, pid) = (server.target(path, &body), pid.clone());
        async move {
            let cpu0 = alloc::cpu_seconds_of(&pid);
            let r = loadgen::run(t, conns, dur, rate, None).await?;
            let cpu = (alloc::cpu_seconds_of(&pid) - cpu0) * 1e6 / r.ok.max(1) as f64;
            Ok::<_, anyhow::Error>((r, cpu))
        }
    };
    for conns in [1, 8, 64] {
        let ceiling = run("/fixed", conns, None).await?;
        let persi = run("/persi", conns, None).await?;
        for (name, (r, cpu)) in [
            ("fixed answer (ceiling)", &ceiling),
            ("persi admission", &persi),
        ] {
            println!(
                "| {name} | {conns} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.0} % | {} |",
                r.rate(),
                r.ms(0.5),
                r.ms(0.99),
                r.ms(0.999),
                r.errors,
                100.0 * r.rate() / ceiling.0.rate(),
                if in_process {
                    "-".to_owned()
                } else {
                    format!("{cpu:.0}")
                }
            );
        }
    }
    let (paced, _) = run("/persi", 8, Some(1000.0)).await?;
    println!(
        "| persi admission, paced 1,000/s, latency from the scheduled send ({} sends > 2 ms late) | 8 | {:.0} | {:.3} | {:.3} | {:.3} | {} | - | - |",
        paced.late,
        paced.rate(),
        paced.ms(0.5),
        paced.ms(0.99),
        paced.ms(0.999),
        paced.errors
    );
    println!(
        "| the same run, latency from the actual send | 8 | {:.0} | {:.3} | {:.3} | {:.3} | {} | - | - |",
        paced.rate(),
        paced.ms_from_send(0.5),
        paced.ms_from_send(0.99),
        paced.ms_from_send(0.999),
        paced.errors
    );
    let (rss, hwm) = alloc::rss_kib_of(&pid);
    let patched = server.stop().await?;
    println!(
        "\nserver RSS after the runs: {:.1} MiB, peak {:.1} MiB (before the load: peak {:.1} MiB); patched reviews: {patched}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        hwm0 as f64 / 1024.0
    );
    Ok(())
}

async fn large_pod() -> anyhow::Result<()> {
    let ext = Arc::new(eirinix_persi::Persi::default());
    let handler = ExtensionHandler::for_view(ext, FailurePolicy::Fail, Duration::from_secs(10), 0);
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
    // Where the peak is: the decode alone, and what the decoded review keeps.
    alloc::enable(true);
    let before = alloc::reset_peak();
    let decoded = eirinix_core::admission::decode(&body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let decode_peak = alloc::peak().saturating_sub(before);
    let kept = alloc::live().saturating_sub(before);
    drop(decoded);
    alloc::enable(false);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "| of which: decode | | {:.1} MiB peak, {:.1} MiB kept (the decoded Pod) |",
        mib(decode_peak),
        mib(kept)
    );
    Ok(())
}

async fn handler(iterations: u32) -> anyhow::Result<()> {
    let ext = Arc::new(eirinix_persi::Persi::default());
    // The route as served: persi answers from its view of the pod.
    let h =
        ExtensionHandler::for_view(ext.clone(), FailurePolicy::Fail, Duration::from_secs(10), 0);
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
    let pod = *decoded.pod.clone().map_err(anyhow::Error::msg)?;
    let view = eirinix_persi::PersiPod::of(&pod);
    let t = Instant::now();
    for _ in 0..iterations {
        let mutated =
            eirinix_core::ViewExtension::mutate_view(&*ext, &ctx, &decoded.request, &view);
        std::hint::black_box(mutated.await.ok());
    }
    let mutate = t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    let t = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(h.handle_body(&ctx, &metrics, &body).await.ok());
    }
    let full = t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    println!(
        "| handler, one thread ({} B review) | typed decode {decode:.1} µs (of which Pod {pod_only:.1} µs) | persi's mutate on its view {mutate:.1} µs | whole handle_body as served (the view decoded, not the Pod) {full:.1} µs |",
        body.len()
    );
    Ok(())
}

fn cpu_seconds() -> f64 {
    alloc::cpu_seconds_of("self")
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
        // Drop each created pod at once: holding 10,000 would dwarf what is measured.
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("creating pods")?;
    eprintln!("created {n} pods in {:.1} s", t.elapsed().as_secs_f64());
    let settings = Settings {
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let (rss0, _) = alloc::rss_kib();
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
    let peak = alloc::peak().saturating_sub(live0);
    let (listed, cpu_list) = (t.elapsed(), cpu_seconds() - cpu0);
    // Then steady state: the watch stays open, nothing changes.
    let cpu1 = cpu_seconds();
    let idle = Duration::from_secs(10);
    let _ = tokio::time::timeout(idle, async {
        while let Some(ev) = stream.next().await {
            if let Ok(ev) = ev {
                tracker.translate(ev);
            }
        }
    })
    .await;
    let cpu_idle = cpu_seconds() - cpu1;
    alloc::enable(false);
    let (rss, hwm) = alloc::rss_kib();
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "| pod watcher over {n} app pods (real apiserver) | initial list in {:.2} s, {cpu_list:.2} s CPU; then {:.3} s CPU in {} s idle | {:.1} MiB heap held ({} B per pod), {:.1} MiB heap peak during the list | process RSS {:.1} MiB (before the watch {:.1} MiB, peak {:.1} MiB) |",
        listed.as_secs_f64(),
        cpu_idle,
        idle.as_secs(),
        mib(live as f64),
        live / n.max(1),
        mib(peak as f64),
        rss as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

/// Start `builder` with the persi extension added and wait until it is ready.
async fn start_persi(
    builder: eirinix_core::ManagerBuilder,
    client: &kube::Client,
    ready_within: Duration,
) -> anyhow::Result<eirinix_core::RunningManager> {
    let running = builder
        .extension(eirinix_persi::Persi::new(
            eirinix_persi::PersiOptions::default(),
        ))
        .build()?
        .start(client.clone())
        .await?;
    running
        .wait_ready(ready_within)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(running)
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
        .cert_check_interval(Duration::from_millis(500));
    let running = start_persi(running, &client, Duration::from_secs(10)).await?;
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
        Cmd::Admission {
            seconds,
            in_process,
        } => admission(seconds, in_process).await,
        Cmd::Serve => serve().await,
        Cmd::ServeBaseline => baseline::serve().await,
        Cmd::Load { args } => peers::load(args).await,
        Cmd::Peers { args } => peers::peers(args).await,
        Cmd::Ladder { args } => ladder::run(args).await,
        Cmd::LargePod => large_pod().await,
        Cmd::Handler { iterations } => handler(iterations).await,
        Cmd::ApiserverLatency { pods } => latency::apiserver_latency(pods).await,
        Cmd::WatchScale { pods } => watch_scale(pods).await,
        Cmd::Rotation { seconds } => rotation(seconds).await,
        Cmd::Logs { args } => logs::run(args).await,
        Cmd::LogsSharded { args } => sharded::run(args).await,
        Cmd::RootfsScale { args } => rootfs::run(args).await,
        Cmd::AdmissionBurst { args } => burst::run(args).await,
        Cmd::Process { seconds, idle } => process::process(seconds, idle).await,
        Cmd::All => {
            peers::peers(peers::Args::default()).await?;
            ladder::run(peers::Pinning::default()).await?;
            admission(8, false).await?;
            handler(20_000).await?;
            large_pod().await?;
            latency::apiserver_latency(300).await?;
            watch_scale(10_000).await?;
            process::process(6, 10).await?;
            logs::run(logs::Args::default()).await?;
            rotation(30).await
        }
    }
}
