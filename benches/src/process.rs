//! The real `eirinix` binary as its own process, serving all stock extensions against the real
//! kube-apiserver: idle RSS, then admission load from this process (so server and load generator
//! no longer share an address space or an allocator) with the server's peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::Api;

use crate::{loadgen, pods};

/// The `eirinix` binary: `$EIRINIX_BIN`, else next to this benchmark's binary (same target dir).
fn eirinix_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EIRINIX_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("eirinix");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it first (`cargo build --release -p eirinix-cli`) or set EIRINIX_BIN",
        bin.display()
    );
    Ok(bin)
}

fn rss_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    Ok(crate::alloc::rss_kib_of(&pid.to_string()))
}

fn cpu_of(pid: u32) -> f64 {
    crate::alloc::cpu_seconds_of(&pid.to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Kills the child when dropped, so a failed run leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(admin: u16, server: &mut Server, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.0.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("eirinix exited with {status} before it was ready:\n{tail}");
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "eirinix not ready after 60 s (log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `eirinix-bench process`: idle RSS of `eirinix run` with all stock extensions, and its admission
/// throughput and peak RSS under load from a separate process.
pub async fn process(seconds: u64, idle_secs: u64) -> anyhow::Result<()> {
    let bin = eirinix_bin()?;
    let cp = eirinix_testenv::ControlPlane::start().await?;
    let client = cp.client().await?;
    let sys = cp.namespace("bench-sys").await?;
    let apps = cp.namespace("bench-apps").await?;
    // A syslog aggregator that accepts and discards (the logs extension needs a sink).
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
            });
        }
    });
    let dir = tempfile::tempdir()?;
    let logs_config = dir.path().join("logs.yaml");
    std::fs::write(
        &logs_config,
        format!("namespaces: [{apps}]\nsinks:\n  - type: syslog\n    address: {sink_addr}\n"),
    )?;
    let (port, admin) = (free_port()?, free_port()?);
    let log = dir.path().join("eirinix.log");
    let mut server = Server(
        Command::new(&bin)
            .args([
                "run",
                "--extensions",
                "persi,ssh,logs,rootfs",
                "--host",
                "127.0.0.1",
                "--bind-address",
                "127.0.0.1",
                "--fingerprint",
                "bench-process",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--admin-port={admin}"))
            .arg(format!("--namespace={apps}"))
            .arg(format!("--webhook-namespace={sys}"))
            .arg("--logs-config")
            .arg(&logs_config)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("RUST_LOG", "warn")
            .env("EIRINIX_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("eirinix.err"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = server.0.id();
    let started = Instant::now();
    wait_ready(admin, &mut server, &log).await?;
    let ready_after = started.elapsed();
    let (rss_ready, _) = rss_of(pid)?;
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (rss_idle, hwm_idle) = rss_of(pid)?;
    let cpu_idle = cpu_of(pid);
    let layout = crate::layout::read(pid, &bin);
    println!(
        "binary: {} ({} KiB on disk)\n{}\n",
        bin.display(),
        std::fs::metadata(&bin)?.len() / 1024,
        layout.hot
    );
    println!("| eirinix run, all 4 stock extensions | value |");
    println!("|---|---|");
    println!("| ready after | {:.2} s |", ready_after.as_secs_f64());
    println!("| RSS when ready | {:.1} MiB |", rss_ready as f64 / 1024.0);
    println!(
        "| RSS idle ({idle_secs} s after ready) | {:.1} MiB (peak so far {:.1} MiB) |",
        rss_idle as f64 / 1024.0,
        hwm_idle as f64 / 1024.0
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    };
    println!(
        "| of which anonymous (heap, stacks) / file-backed (code) | {} / {} (`RssAnon` / `RssFile` of /proc/<pid>/status) |",
        kib("RssAnon:"),
        kib("RssFile:")
    );
    println!("| CPU used until then | {cpu_idle:.2} s |");
    println!("\n{}", layout.resident);

    // Admission load against the separate process.
    let cfgs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let cfg = cfgs.get("bench-process-mutating-hook").await?;
    let ca = cfg
        .webhooks
        .unwrap_or_default()
        .first()
        .and_then(|w| w.client_config.ca_bundle.clone())
        .context("no caBundle registered")?;
    let mut pod = pods::eirini_app_pod();
    pod["metadata"]["namespace"] = apps.clone().into();
    let body = Bytes::from(pods::review(&pod));
    println!(
        "\n| load from a separate process ({} B review) | connections | reviews/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/review | server RSS after, MiB | server peak RSS, MiB |",
        body.len()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for conns in [1, 8, 64] {
        let target = loadgen::Target {
            addr: ([127, 0, 0, 1], port).into(),
            ca_pem: String::from_utf8(ca.0.clone())?,
            server_name: "127.0.0.1".into(),
            path: "/persi".into(),
            body: body.clone(),
        };
        let cpu0 = cpu_of(pid);
        let r = loadgen::run(target, conns, Duration::from_secs(seconds), None, None).await?;
        let cpu = cpu_of(pid) - cpu0;
        let (rss, hwm) = rss_of(pid)?;
        println!(
            "| persi admission | {conns} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.0} | {:.1} | {:.1} |",
            r.rate(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            r.errors,
            cpu * 1e6 / r.ok.max(1) as f64,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        if let Some(e) = r.error_samples.first() {
            println!("  first error: {e}");
        }
    }
    drop(server);
    Ok(())
}
