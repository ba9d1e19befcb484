//! Log forwarding (issue 9 item 6): lines/s from followed container logs into a real rsyslog over
//! TCP, and memory per followed container with 1,000 containers followed.
//!
//! The pieces, all on 127.0.0.1:
//! - the real etcd + kube-apiserver (`eirinix-testenv`), and a fake kubelet (in this process)
//!   serving scripted container logs through the apiserver's `pods/log` proxy;
//! - the **forwarding process**: this binary re-executed as `logs --forwarder <config>`, running
//!   the logs extension (`LogsService`: pod watcher, one follower per container, syslog sink)
//!   with its production defaults, so that its CPU and RSS are its own;
//! - a receiver: a real rsyslogd (imtcp, octet-counted RFC 5424, MSG appended to a file) or an
//!   in-process TCP receiver that only counts frames (what our pipeline does without rsyslog).
//!
//! Throughput: every container has a backlog of lines before the forwarder starts; the rate is
//! taken between 10 % and 90 % of the lines received (steady state), with the CPU each process
//! spent in the same window. Memory: RSS of the forwarding process with `followed / 10` and
//! `followed` containers followed (each with its follow stream open); the slope is the cost of
//! one more followed container.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use eirinix_logs::{LogsMetrics, LogsOptions, Origin, Record, SinkOptions, SyslogOptions};
use eirinix_testenv::{ControlPlane, FakeKubelet, spawn_tied};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::io::AsyncReadExt as _;

/// Options of `eirinix-bench logs`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Containers followed in the throughput runs.
    #[arg(long, default_value_t = 20)]
    containers: usize,
    /// Lines per throughput run (spread evenly over the containers).
    #[arg(long, default_value_t = 2_000_000)]
    lines: usize,
    /// Bytes per log line (without the runtime's timestamp prefix).
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Containers followed at the end of the memory run (the slope is taken from a tenth of it).
    #[arg(long, default_value_t = 1_000)]
    followed: usize,
    /// Which measurements to run.
    #[arg(long, value_enum, default_value_t = Part::All)]
    only: Part,
    /// Internal: run as the forwarding process with this JSON configuration.
    #[arg(long, hide = true)]
    forwarder: Option<PathBuf>,
}

impl Default for Args {
    /// The documented defaults (what `eirinix-bench logs` runs with no flags).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: Args,
        }
        <Wrap as clap::Parser>::parse_from(["logs"]).args
    }
}

/// A part of the benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Everything.
    All,
    /// The throughput runs (rsyslog, in-process receiver, sink alone).
    Throughput,
    /// Memory per followed container.
    Memory,
}

/// Lines every container of the memory run writes before it is followed.
const MEMORY_LINES: usize = 20;

/// `eirinix-bench logs`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(config) = &args.forwarder {
        return forwarder(config).await;
    }
    anyhow::ensure!(
        args.containers > 0 && args.lines >= args.containers && args.followed >= 10,
        "need at least one container, a line per container and 10 followed containers"
    );
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let kubelet = FakeKubelet::start(&client, &eirinix_testenv::unique_name("bench-node")).await?;
    println!(
        "log lines: {} bytes plus the runtime's 31-byte timestamp; syslog frames carry the app identity (about {} bytes each)\n",
        args.line_bytes,
        frame_len(args.line_bytes)
    );
    if args.only != Part::Memory {
        println!(
            "| run | containers | lines | lines/s (10-90 %) | forwarder CPU s per 100k lines | kube-apiserver | receiver | bench process (fake kubelet) | dropped | load avg |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for kind in [ReceiverKind::Rsyslog, ReceiverKind::InProcess] {
            let r = throughput(&cp, &client, &kubelet, &args, kind).await?;
            println!("{}", r.row());
        }
        sink_alone(&args).await?;
    }
    if args.only != Part::Throughput {
        memory(&cp, &client, &kubelet, &args).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The forwarding process.

/// The JSON config a helper process of the bench was started with, and a client from its
/// `kubeconfig` (a path).
pub(crate) async fn child_config(path: &Path) -> anyhow::Result<(serde_json::Value, kube::Client)> {
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(config_text(&cfg, "kubeconfig")?)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok((cfg, kube::Client::try_from(config)?))
}

/// The string `key` of a helper process's config.
pub(crate) fn config_text(cfg: &serde_json::Value, key: &str) -> anyhow::Result<String> {
    cfg[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("helper process config: {key}"))
}

/// Runs the logs extension until stdin closes, printing its counters as JSON lines on stdout.
async fn forwarder(config: &Path) -> anyhow::Result<()> {
    let (cfg, client) = child_config(config).await?;
    let namespace = config_text(&cfg, "namespace")?;
    let options: LogsOptions = serde_json::from_value(cfg["options"].clone())?;
    let service = eirinix_logs::LogsService::new(options)?;
    let metrics = service.metrics();
    let cancel = tokio_util::sync::CancellationToken::new();
    let settings = eirinix_core::Settings {
        namespace: Some(namespace.clone()),
        webhook_namespace: namespace.clone(),
        ..eirinix_core::Settings::default()
    };
    let scope = eirinix_logs::Scope {
        namespaces: vec![namespace.clone()],
        state_namespace: namespace,
    };
    let mut task = tokio::spawn(service.run(client, scope, settings, cancel.clone()));
    {
        // The parent closes our stdin to stop us (or dies, which closes it too).
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            cancel.cancel();
        });
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => report(&metrics),
            _ = &mut task => break,
        }
    }
    report(&metrics);
    Ok(())
}

fn report(m: &LogsMetrics) {
    println!(
        "{}",
        serde_json::json!({
            // Sharded replicas (`logs-sharded`): membership and rebalances.
            "slot": m.member_slot.load(Ordering::Relaxed),
            "members": m.members.load(Ordering::Relaxed),
            "owned": m.owned_pods.load(Ordering::Relaxed),
            "rebalances": m.rebalances.load(Ordering::Relaxed),
            "rebalance_ms": m.last_rebalance_ms.load(Ordering::Relaxed),
            "checkpoints": m.checkpoints_written.load(Ordering::Relaxed),
            "checkpoint_errors": m.checkpoint_errors.load(Ordering::Relaxed),
            "duplicates_skipped": m.duplicates_skipped.load(Ordering::Relaxed),
            "sink_errors": m.sink_names().iter().map(|n| m.errors(n)).sum::<u64>(),
            "read": m.lines_read.load(Ordering::Relaxed),
            "forwarded": m.records_forwarded.load(Ordering::Relaxed),
            // Sink buffers no longer drop lines (back-pressure); kept at 0 for the table.
            "dropped": 0,
            "followers": m.followers.load(Ordering::Relaxed),
            "stream_errors": m.stream_errors.load(Ordering::Relaxed),
            "waits": flow_control_waits(m),
        })
    );
}

/// Times a follower waited for a sink (flow control), over every sink.
fn flow_control_waits(m: &LogsMetrics) -> u64 {
    m.sink_names().iter().map(|n| m.waits(n)).sum()
}

/// The forwarding process, seen from the parent.
pub(crate) struct Forwarder {
    child: Child,
    stdin: Option<ChildStdin>,
    last: Arc<Mutex<serde_json::Value>>,
    _config: tempfile::NamedTempFile,
}

impl Forwarder {
    fn start(cp: &ControlPlane, namespace: &str, syslog: &str) -> anyhow::Result<Forwarder> {
        Self::start_with(cp, namespace, &syslog_options(syslog))
    }

    /// A forwarding process running the logs extension with `options` on `namespace`.
    pub(crate) fn start_with(
        cp: &ControlPlane,
        namespace: &str,
        options: &LogsOptions,
    ) -> anyhow::Result<Forwarder> {
        let config = tempfile::NamedTempFile::new()?;
        std::fs::write(
            config.path(),
            serde_json::to_vec(&serde_json::json!({
                "kubeconfig": cp.kubeconfig_path(),
                "namespace": namespace,
                "options": options,
            }))?,
        )?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("logs")
            .arg("--forwarder")
            .arg(config.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_tied(cmd).context("starting the forwarding process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("forwarder stdout")?;
        let last = Arc::new(Mutex::new(serde_json::Value::Null));
        {
            let last = last.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str(&line) {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = v;
                    }
                }
            });
        }
        Ok(Forwarder {
            child,
            stdin,
            last,
            _config: config,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn counter(&self, name: &str) -> u64 {
        self.last.lock().unwrap_or_else(|p| p.into_inner())[name]
            .as_u64()
            .unwrap_or(0)
    }

    /// Close stdin (graceful stop: drain, final checkpoint), then wait up to 30 s.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                // Let the stdout thread take the final report.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the forwarding process did not stop within 30 s")
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Production defaults with one syslog sink to `syslog`.
pub(crate) fn syslog_options(syslog: &str) -> LogsOptions {
    LogsOptions {
        sinks: vec![SinkOptions::Syslog(SyslogOptions {
            address: syslog.into(),
            ..SyslogOptions::default()
        })],
        ..LogsOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Receivers.

/// A real rsyslogd: imtcp on 127.0.0.1, the RFC 5424 parser, MSG and a newline appended to a
/// file. Killed on drop (and when this process dies).
pub(crate) struct Rsyslog {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    child: Child,
    offset: u64,
    count: u64,
}

impl Rsyslog {
    pub(crate) fn start() -> anyhow::Result<Rsyslog> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.path().display();
        // Minimal work per message: parse (imtcp framing + RFC 5424 parser), one template, one
        // buffered file action; big batches so that queue overhead is amortised.
        let conf = format!(
            r#"global(maxMessageSize="65536" workDirectory="{d}")
main_queue(queue.size="200000" queue.dequeueBatchSize="2048")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")
template(name="msg" type="string" string="%msg%\n")
ruleset(name="r") {{ action(type="omfile" file="{d}/out.log" template="msg" ioBufferSize="256k") }}
"#
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf)?;
        let stderr = File::create(dir.path().join("rsyslogd.stderr"))?;
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = spawn_tied(cmd)
            .context("rsyslogd must be installed (scripts/install-deps.sh installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "rsyslogd exited with {status}: {}",
                    std::fs::read_to_string(dir.path().join("rsyslogd.stderr")).unwrap_or_default()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "rsyslogd did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(Rsyslog {
            dir,
            port,
            child,
            offset: 0,
            count: 0,
        })
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    /// Lines written so far (counted incrementally).
    pub(crate) fn received(&mut self) -> u64 {
        let Ok(mut f) = File::open(self.out()) else {
            return 0;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            self.offset += buf.len() as u64;
            self.count += buf.iter().filter(|b| **b == b'\n').count() as u64;
        }
        self.count
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts octet-counted syslog frames on 127.0.0.1 (no parsing beyond the framing, no output).
struct CountingReceiver {
    port: u16,
    frames: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingReceiver {
    async fn start() -> anyhow::Result<CountingReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let frames = Arc::new(AtomicU64::new(0));
        let counter = frames.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let (mut have, mut skip) = (0usize, 0usize);
                    loop {
                        let n = match tcp.read(&mut buf[have..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        have += n;
                        let (mut at, mut frames) = (skip.min(have), 0);
                        skip -= at;
                        // `LEN SP MSG`: count frames whose length prefix is complete.
                        while skip == 0 {
                            let Some(sp) = buf[at..have].iter().position(|b| *b == b' ') else {
                                break;
                            };
                            let len: usize = std::str::from_utf8(&buf[at..at + sp])
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            frames += 1;
                            let end = at + sp + 1 + len;
                            if end <= have {
                                at = end;
                            } else {
                                skip = end - have;
                                at = have;
                            }
                        }
                        counter.fetch_add(frames, Ordering::Relaxed);
                        buf.copy_within(at..have, 0);
                        have -= at;
                    }
                });
            }
        });
        Ok(CountingReceiver { port, frames, task })
    }
}

impl Drop for CountingReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReceiverKind {
    Rsyslog,
    InProcess,
}

enum Receiver {
    Rsyslog(Rsyslog),
    Counting(CountingReceiver),
}

impl Receiver {
    async fn start(kind: ReceiverKind) -> anyhow::Result<Receiver> {
        Ok(match kind {
            ReceiverKind::Rsyslog => Receiver::Rsyslog(Rsyslog::start()?),
            ReceiverKind::InProcess => Receiver::Counting(CountingReceiver::start().await?),
        })
    }

    fn address(&self) -> String {
        let port = match self {
            Receiver::Rsyslog(r) => r.port,
            Receiver::Counting(c) => c.port,
        };
        format!("127.0.0.1:{port}")
    }

    fn received(&mut self) -> u64 {
        match self {
            Receiver::Rsyslog(r) => r.received(),
            Receiver::Counting(c) => c.frames.load(Ordering::Relaxed),
        }
    }

    /// CPU seconds of the receiver when it is its own process.
    fn cpu(&self) -> Option<f64> {
        match self {
            Receiver::Rsyslog(r) => Some(proc_cpu(&r.child.id().to_string())),
            Receiver::Counting(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// User + system CPU seconds of process `pid` ("self" for this one).
pub(crate) fn proc_cpu(pid: &str) -> f64 {
    crate::alloc::cpu_seconds_of(pid)
}

/// Resident set size of process `pid`, KiB.
pub(crate) fn proc_rss_kib(pid: u32) -> u64 {
    crate::alloc::rss_kib_of(&pid.to_string()).0
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Pods and lines.

fn app_pod(name: &str, node: &str) -> Pod {
    let labels = [
        (
            "cloudfoundry.org/app_guid",
            "7d1f3b3c-0000-4000-8000-00000000beef",
        ),
        ("cloudfoundry.org/guid", "lrp-guid"),
        ("cloudfoundry.org/process_type", "web"),
        ("cloudfoundry.org/source_type", "APP"),
    ];
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "opi".into(),
                image: Some("registry.invalid/app:latest".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// Creates app pods `<prefix>-<i>` for `range` on the kubelet's node, with a running `opi`.
pub(crate) async fn create_pods(
    client: &kube::Client,
    ns: &str,
    node: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = serde_json::json!({ "status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "opi", "image": "registry.invalid/app:latest", "imageID": "",
            "ready": true, "restartCount": 0, "state": { "running": {} },
        }],
    }});
    futures::stream::iter(range)
        .map(|i| {
            let (api, status) = (&api, &status);
            async move {
                let name = format!("{prefix}-{i}");
                api.create(&PostParams::default(), &app_pod(&name, node))
                    .await?;
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .context("creating app pods")?;
    Ok(())
}

/// Line `seq` of pod `pod`, `len` bytes: the pod and sequence number first (for checking), then
/// a typical router access log line.
pub(crate) fn line(pod: &str, seq: usize, len: usize) -> String {
    let mut l = format!(
        "{pod} {seq:08} 10.255.1.4 - [request] \"GET /v2/apps/7d1f3b3c/stats HTTP/1.1\" 200 512 0.003 vcap_request_id=5f0c1a9e-3b7d-4c2e"
    );
    while l.len() < len {
        l.push('x');
    }
    l.truncate(len.max(pod.len() + 9));
    l
}

/// The size of a syslog frame for a `line_bytes` message (for the header line).
fn frame_len(line_bytes: usize) -> usize {
    let origin = Arc::new(origin("tp-0"));
    let r = Record::new(origin, jiff::Timestamp::now(), "x".repeat(line_bytes));
    let mut out = Vec::new();
    eirinix_logs::syslog::frame(&r, &Default::default(), &mut out);
    out.len()
}

fn origin(pod: &str) -> Origin {
    Origin {
        source_id: "7d1f3b3c-0000-4000-8000-00000000beef".into(),
        instance: eirinix_logs::record::instance_index(pod),
        process_type: "web".into(),
        source_type: "APP/PROC/WEB".into(),
        namespace: "bench-ns".into(),
        pod: pod.into(),
        container: "opi".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput.

struct Sample {
    t: f64,
    received: u64,
    forwarder: f64,
    apiserver: f64,
    receiver: Option<f64>,
    bench: f64,
}

struct Throughput {
    kind: ReceiverKind,
    containers: usize,
    total: u64,
    received: u64,
    rate: f64,
    /// CPU seconds per 100k lines: forwarder, apiserver, receiver, bench process.
    cpu: (f64, f64, Option<f64>, f64),
    dropped: u64,
    load: String,
    checked: Option<String>,
}

impl Throughput {
    fn row(&self) -> String {
        let name = match self.kind {
            ReceiverKind::Rsyslog => {
                "fake kubelet → kube-apiserver → followers → syslog TCP → rsyslog"
            }
            ReceiverKind::InProcess => {
                "same, into an in-process counting receiver instead of rsyslog"
            }
        };
        let missing = if self.received < self.total {
            format!(" ({} of {} received)", self.received, self.total)
        } else {
            String::new()
        };
        format!(
            "| {name}{missing} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {}{} | {} |",
            self.containers,
            self.total,
            self.rate,
            self.cpu.0,
            self.cpu.1,
            self.cpu
                .2
                .map_or_else(|| "(in bench process)".to_owned(), |c| format!("{c:.2}")),
            self.cpu.3,
            self.dropped,
            self.checked
                .as_ref()
                .map(|c| format!("; {c}"))
                .unwrap_or_default(),
            self.load
        )
    }
}

async fn throughput(
    cp: &ControlPlane,
    client: &kube::Client,
    kubelet: &FakeKubelet,
    args: &Args,
    kind: ReceiverKind,
) -> anyhow::Result<Throughput> {
    let ns = cp.namespace("logs-tp").await?;
    let per = args.lines / args.containers;
    let total = (per * args.containers) as u64;
    create_pods(client, &ns, kubelet.node_name(), "tp", 0..args.containers).await?;
    // The backlog: distinct timestamps, 1 µs apart, ending now.
    let start = SystemTime::now() - Duration::from_micros(per as u64);
    for c in 0..args.containers {
        let pod = format!("tp-{c}");
        let log = kubelet.container(&ns, &pod, "opi");
        for seq in 0..per {
            log.push_line_at(
                start + Duration::from_micros(seq as u64),
                line(&pod, seq, args.line_bytes),
            );
        }
    }
    let mut receiver = Receiver::start(kind).await?;
    let apiserver = cp.apiserver_pid().context("apiserver pid")?.to_string();
    let sample = |receiver: &mut Receiver, fwd: &Forwarder, t0: Instant| Sample {
        t: t0.elapsed().as_secs_f64(),
        received: receiver.received(),
        forwarder: proc_cpu(&fwd.pid().to_string()),
        apiserver: proc_cpu(&apiserver),
        receiver: receiver.cpu(),
        bench: proc_cpu("self"),
    };
    let fwd = Forwarder::start(cp, &ns, &receiver.address())?;
    let trace = std::env::var_os("EIRINIX_BENCH_TRACE").is_some();
    eprintln!("forwarding process: pid {}", fwd.pid());
    let t0 = Instant::now();
    let mut samples = vec![sample(&mut receiver, &fwd, t0)];
    let mut last_progress = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = sample(&mut receiver, &fwd, t0);
        if s.received > samples.last().map_or(0, |l| l.received) {
            last_progress = Instant::now();
        }
        if trace {
            eprintln!(
                "{:6.1} s received {:8} read {:8} dropped {:8} cpu forwarder {:.2} apiserver {:.2} receiver {:.2} bench {:.2}",
                s.t,
                s.received,
                fwd.counter("read"),
                fwd.counter("dropped"),
                s.forwarder,
                s.apiserver,
                s.receiver.unwrap_or(0.0),
                s.bench
            );
        }
        // Done: everything arrived, or everything was read and is either received or dropped.
        let accounted =
            fwd.counter("read") >= total && s.received + fwd.counter("dropped") >= total;
        let done = s.received >= total || accounted;
        samples.push(s);
        if done || last_progress.elapsed() > Duration::from_secs(15) || t0.elapsed().as_secs() > 300
        {
            break;
        }
    }
    let load = load_average();
    let dropped = fwd.counter("dropped");
    fwd.stop().await?;
    let received = receiver.received();
    // Steady state: between 10 % and 90 % of what arrived in the end.
    let end = samples.last().map_or(0, |s| s.received);
    let at = |frac: f64| {
        samples
            .iter()
            .find(|s| s.received as f64 >= frac * end as f64)
            .or(samples.last())
    };
    let (a, b) = (
        at(0.1).context("no samples")?,
        at(0.9).context("no samples")?,
    );
    let lines = b.received.saturating_sub(a.received).max(1) as f64;
    let per100k = |x: f64, y: f64| (y - x) * 100_000.0 / lines;
    let checked = match &receiver {
        Receiver::Rsyslog(r) => Some(check_order(&r.out(), args.containers, per)?),
        Receiver::Counting(_) => None,
    };
    Ok(Throughput {
        kind,
        containers: args.containers,
        total,
        received,
        rate: lines / (b.t - a.t).max(1e-3),
        cpu: (
            per100k(a.forwarder, b.forwarder),
            per100k(a.apiserver, b.apiserver),
            a.receiver.zip(b.receiver).map(|(x, y)| per100k(x, y)),
            per100k(a.bench, b.bench),
        ),
        dropped,
        load,
        checked,
    })
}

/// Checks what rsyslog wrote: every container's lines complete, in order, once.
fn check_order(out: &Path, containers: usize, per: usize) -> anyhow::Result<String> {
    let data = std::fs::read(out)?;
    let mut next = vec![0usize; containers];
    let mut bad = 0usize;
    for l in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(l);
        let mut parts = text.split(' ');
        let pod = parts.next().unwrap_or_default();
        let seq: Option<usize> = parts.next().and_then(|s| s.parse().ok());
        let c: Option<usize> = pod.strip_prefix("tp-").and_then(|s| s.parse().ok());
        match (c, seq) {
            (Some(c), Some(seq)) if c < containers && next[c] == seq => next[c] += 1,
            _ => bad += 1,
        }
    }
    let complete = next.iter().filter(|n| **n == per).count();
    Ok(if bad == 0 && complete == containers {
        "every line once, in order".to_owned()
    } else {
        format!("{bad} lines out of order or repeated, {complete}/{containers} containers complete")
    })
}

/// The syslog sink alone into rsyslog (records made in this process, no Kubernetes): what rsyslog
/// and the sink can do on this machine.
async fn sink_alone(args: &Args) -> anyhow::Result<()> {
    let mut rsyslog = Rsyslog::start()?;
    let options = LogsOptions {
        sinks: vec![SinkOptions::Syslog(SyslogOptions {
            address: format!("127.0.0.1:{}", rsyslog.port),
            ..SyslogOptions::default()
        })],
        ..LogsOptions::default()
    };
    let metrics = LogsMetrics::new();
    let sink = eirinix_logs::syslog::SyslogSink::new(&SyslogOptions {
        address: format!("127.0.0.1:{}", rsyslog.port),
        ..SyslogOptions::default()
    })?;
    let handle =
        eirinix_logs::sink::spawn_sink("syslog".into(), 0, Box::new(sink), &options, &metrics);
    let total = args.lines as u64;
    let origins: Vec<Arc<Origin>> = (0..args.containers)
        .map(|c| Arc::new(origin(&format!("tp-{c}"))))
        .collect();
    let messages: Vec<bytes::Bytes> = (0..1000)
        .map(|i| line("tp-0", i, args.line_bytes).into())
        .collect();
    let rsyslog_pid = rsyslog.child.id().to_string();
    let t0 = Instant::now();
    // (seconds, lines received, bench CPU s, rsyslog CPU s) at 10 % and 90 %.
    type Point = (f64, u64, f64, f64);
    let (mut a, mut b): (Option<Point>, Option<Point>) = (None, None);
    let mut pushed = 0u64;
    while b.is_none() {
        // Keep the buffer fed but far from its limit (nothing may be dropped).
        while pushed < total && handle.buffer.len() < 20_000 {
            let i = pushed as usize;
            handle.push(Arc::new(Record::new(
                origins[i % origins.len()].clone(),
                jiff::Timestamp::now(),
                messages[i % messages.len()].clone(),
            )));
            pushed += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let n = rsyslog.received();
        let s = (
            t0.elapsed().as_secs_f64(),
            n,
            proc_cpu("self"),
            proc_cpu(&rsyslog_pid),
        );
        if a.is_none() && n as f64 >= 0.1 * total as f64 {
            a = Some(s);
        }
        if n as f64 >= 0.9 * total as f64 {
            b = Some(s);
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "sink alone: stuck at {n}"
        );
    }
    let (a, b) = (a.context("no start")?, b.context("no end")?);
    let lines = (b.1 - a.1).max(1) as f64;
    println!(
        "| syslog sink alone → rsyslog (records made in the bench process, no Kubernetes) | {} | {} | {:.0} | - | - | {:.2} | {:.2} (sink and record making) | {} | {} |",
        args.containers,
        total,
        lines / (b.0 - a.0),
        (b.3 - a.3) * 100_000.0 / lines,
        (b.2 - a.2) * 100_000.0 / lines,
        // Sink buffers no longer drop lines (back-pressure).
        0,
        load_average()
    );
    handle.drain(Duration::from_secs(10)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Memory per followed container.

async fn memory(
    cp: &ControlPlane,
    client: &kube::Client,
    kubelet: &FakeKubelet,
    args: &Args,
) -> anyhow::Result<()> {
    let ns = cp.namespace("logs-mem").await?;
    let mut rsyslog = Rsyslog::start()?;
    let fwd = Forwarder::start(cp, &ns, &format!("127.0.0.1:{}", rsyslog.port))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss0 = proc_rss_kib(fwd.pid());
    println!("\n| forwarding process (release) | followed containers | RSS KiB | lines received |");
    println!("|---|---|---|---|");
    println!("| started, nothing to follow | 0 | {rss0} | 0 |");
    let mut logs = Vec::new();
    let mut points = Vec::new();
    for target in [args.followed / 10, args.followed] {
        let from = logs.len();
        let t = Instant::now();
        create_pods(client, &ns, kubelet.node_name(), "mem", from..target).await?;
        for i in from..target {
            let pod = format!("mem-{i}");
            let log = kubelet.container(&ns, &pod, "opi");
            log.push_lines((0..MEMORY_LINES).map(|seq| line(&pod, seq, args.line_bytes)));
            logs.push(log);
        }
        let want = (target * MEMORY_LINES) as u64;
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let following = logs.iter().filter(|l| l.followers() == 1).count();
            let received = rsyslog.received();
            if following == target && received >= want {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{following} of {target} containers followed, {received} of {want} lines received"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "{target} containers followed and their lines delivered after {:.1} s",
            t.elapsed().as_secs_f64()
        );
        // Let handshakes finish and buffers shrink back, then measure.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu0 = proc_cpu(&fwd.pid().to_string());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = (proc_cpu(&fwd.pid().to_string()) - cpu0) / 5.0;
        let rss = proc_rss_kib(fwd.pid());
        println!(
            "| all followed, lines delivered, 8 s settled (idle CPU {:.1} % of a core) | {target} | {rss} | {} |",
            idle * 100.0,
            rsyslog.received()
        );
        points.push((target, rss));
    }
    let ((n1, m1), (n2, m2)) = (points[0], points[1]);
    let slope = (m2 as f64 - m1 as f64) / (n2 - n1) as f64;
    println!(
        "\n| memory per followed container (RSS slope {n1} → {n2}, release) | {slope:.1} KiB | followers reported: {} | load avg {} |",
        fwd.counter("followers"),
        load_average()
    );
    fwd.stop().await?;
    Ok(())
}
