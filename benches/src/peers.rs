//! `eirinix-bench peers`: the same persi review served by eirinix, by a controller-runtime
//! webhook and by a hand-written axum + kube-rs webhook, and eirinix's fixed answer (the
//! transport ceiling), measured in one run.
//!
//! Every server is its own process pinned with `taskset` to `--server-core`, one at a time under
//! load; the load generator is a child process (`eirinix-bench load`) pinned to `--load-core`.
//! Servers are measured in turn within each run (so drift in machine load hits all of them) and
//! each figure is the median of `--runs` runs with the minimum and maximum. Before the load,
//! one review is sent to each persi server and the patched pods are compared.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

use crate::{alloc, loadgen, pods};

/// How servers are pinned and loaded, shared by `peers` and `ladder`.
#[derive(clap::Args, Clone, Debug)]
pub struct Pinning {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Runs (each measures every server once); figures are median (min–max).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The core every server is pinned to.
    #[arg(long, default_value_t = 1)]
    pub server_core: usize,
    /// The core the load generator is pinned to.
    #[arg(long, default_value_t = 0)]
    pub load_core: usize,
}

impl Default for Pinning {
    fn default() -> Self {
        Self {
            seconds: 6,
            connections: 64,
            runs: 3,
            server_core: 1,
            load_core: 0,
        }
    }
}

/// Options of `peers`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
    #[command(flatten)]
    pub pinning: Pinning,
    /// The controller-runtime peer; built by `benches/peers/build-controller-runtime.sh` when
    /// absent (default: `target/peers/controller-runtime-persi`).
    #[arg(long)]
    pub controller_runtime: Option<PathBuf>,
}

/// Options of the hidden `load` subcommand: one load run against one server, result as JSON.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Server address.
    #[arg(long)]
    pub addr: std::net::SocketAddr,
    /// File with the PEM CA to trust.
    #[arg(long)]
    pub ca_file: PathBuf,
    /// Request path.
    #[arg(long)]
    pub path: String,
    /// Connections.
    #[arg(long)]
    pub connections: usize,
    /// Seconds.
    #[arg(long)]
    pub seconds: u64,
}

/// `eirinix-bench load`: the benchmark review at one server; prints one JSON line.
pub async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let target = loadgen::Target {
        addr: args.addr,
        ca_pem: std::fs::read_to_string(&args.ca_file)?,
        server_name: "127.0.0.1".into(),
        path: args.path,
        body: Bytes::from(pods::review(&pods::eirini_app_pod())),
    };
    let cpu0 = alloc::cpu_seconds_of("self");
    let r = loadgen::run(
        target,
        args.connections,
        Duration::from_secs(args.seconds),
        None,
        None,
    )
    .await?;
    let cpu = alloc::cpu_seconds_of("self") - cpu0;
    println!(
        "{}",
        serde_json::json!({
            "ok": r.ok, "errors": r.errors, "elapsed": r.elapsed.as_secs_f64(), "cpu": cpu,
            "p50": r.ms(0.5), "p99": r.ms(0.99), "samples": r.error_samples,
        })
    );
    Ok(())
}

/// A server process under test.
pub(crate) struct Server {
    name: String,
    child: tokio::process::Child,
    pid: String,
    addr: std::net::SocketAddr,
    ca_file: PathBuf,
    /// The rest of its stdout, kept open so that its last words do not hit a closed pipe.
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Server {
    pub(crate) fn target(&self, path: &str) -> anyhow::Result<loadgen::Target> {
        Ok(loadgen::Target {
            addr: self.addr,
            ca_pem: std::fs::read_to_string(&self.ca_file)?,
            server_name: "127.0.0.1".into(),
            path: path.into(),
            body: Bytes::from(pods::review(&pods::eirini_app_pod())),
        })
    }

    pub(crate) async fn stop(mut self) {
        drop(self.child.stdin.take());
        while let Ok(Some(_)) = self.stdout.next_line().await {}
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn pinned(core: usize, program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A server that prints `{"addr", "ca"}` on its first line (`serve`, `serve-baseline`).
pub(crate) async fn start_rust(
    name: &str,
    subcommand: &str,
    core: usize,
    dir: &Path,
) -> anyhow::Result<Server> {
    let mut child = pinned(core, &std::env::current_exe()?)
        .arg(subcommand)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = stdout
        .next_line()
        .await?
        .with_context(|| format!("{name} exited before it was ready"))?;
    let v: Value = serde_json::from_str(&first)?;
    let ca_file = dir.join(format!("{subcommand}-ca.pem"));
    std::fs::write(&ca_file, v["ca"].as_str().context("ca")?)?;
    Ok(Server {
        name: name.into(),
        pid: child.id().context("pid")?.to_string(),
        addr: v["addr"].as_str().context("addr")?.parse()?,
        child,
        ca_file,
        stdout,
    })
}

/// The controller-runtime binary: `--controller-runtime`, or the build script's output (built
/// when absent); and its version line.
fn controller_runtime_binary(args: &Args) -> anyhow::Result<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = match &args.controller_runtime {
        Some(p) => p.clone(),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("../target"), PathBuf::from);
            let p = target.join("peers/controller-runtime-persi");
            if !p.exists() {
                let status =
                    std::process::Command::new(root.join("peers/build-controller-runtime.sh"))
                        .stdout(std::process::Stdio::null())
                        .status()
                        .context("running benches/peers/build-controller-runtime.sh")?;
                anyhow::ensure!(status.success(), "build-controller-runtime.sh failed");
            }
            p
        }
    };
    let version = std::fs::read_to_string(path.with_extension("version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "controller-runtime (version unknown)".into());
    Ok((path, version))
}

async fn start_controller_runtime(
    binary: &Path,
    version: &str,
    core: usize,
    dir: &Path,
) -> anyhow::Result<Server> {
    let bundle = eirinix_core::certs::CertBundle::generate(
        &eirinix_core::certs::SubjectNames::for_host("127.0.0.1"),
        &eirinix_core::certs::CertPolicy::default(),
        time::OffsetDateTime::now_utc(),
    )?;
    let certs = dir.join("controller-runtime-certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::write(certs.join("tls.crt"), bundle.serving_chain_pem())?;
    std::fs::write(certs.join("tls.key"), &bundle.serving.key_pem)?;
    let ca_file = dir.join("controller-runtime-ca.pem");
    std::fs::write(&ca_file, bundle.ca_bundle_pem())?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = pinned(core, binary)
        .arg("-addr")
        .arg(addr.to_string())
        .arg("-cert-dir")
        .arg(&certs)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = stdout.next_line().await?;
    anyhow::ensure!(
        ready.as_deref() == Some("ready"),
        "controller-runtime peer did not start: {ready:?}"
    );
    Ok(Server {
        name: version.into(),
        pid: child.id().context("pid")?.to_string(),
        addr,
        child,
        ca_file,
        stdout,
    })
}

/// The pod as the apiserver's Go types see it, for comparison: `null`, `{}` and integer `0`
/// removed (Go marshals absent non-pointer structs as `{}`, an absent time as `null`, and drops
/// zero `omitempty` integers), and resource quantities as numbers (Go writes them canonically:
/// `1024Mi` as `1Gi`). Both sides of a comparison are normalized the same way.
fn normalized(mut v: Value) -> Value {
    fn strip(v: &mut Value, quantities: bool) -> bool {
        match v {
            Value::Null => true,
            Value::Number(n) => n.as_i64() == Some(0),
            Value::String(q) if quantities => {
                if let Some(milli) = quantity_milli(q) {
                    *q = milli.to_string();
                }
                false
            }
            Value::Object(m) => {
                // Quantities: the values of `limits` and `requests` maps.
                m.retain(|k, x| !strip(x, quantities || k == "limits" || k == "requests"));
                m.is_empty()
            }
            Value::Array(a) => {
                for x in a.iter_mut() {
                    strip(x, false);
                }
                false
            }
            _ => false,
        }
    }
    fn quantity_milli(q: &str) -> Option<u128> {
        let digits = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
        let n: u128 = q[..digits].parse().ok()?;
        let scale: u128 = match &q[digits..] {
            "m" => return Some(n),
            "" => 1,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return None,
        };
        Some(n * scale * 1000)
    }
    strip(&mut v, false);
    v
}

/// The review answer of `server`, applied to the benchmark pod: (pod, patch operations, patch bytes).
async fn patched_pod(server: &Server) -> anyhow::Result<(Value, usize, usize)> {
    let body = loadgen::request_once(&server.target("/persi")?).await?;
    let v: Value = serde_json::from_slice(&body)?;
    let response = &v["response"];
    anyhow::ensure!(
        response["allowed"] == Value::Bool(true),
        "{} did not admit the pod: {response}",
        server.name
    );
    // `[]byte` in Go's JSON is a base64 string; kube-rs writes the patch as an array of
    // numbers, which Go's decoder (the apiserver's) accepts too.
    let patch = match &response["patch"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD.decode(b64)?,
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()
            .context("patch is not an array of bytes")?,
        other => anyhow::bail!("{}: no patch in the answer: {other}", server.name),
    };
    let ops: json_patch::Patch = serde_json::from_slice(&patch)?;
    let mut pod = pods::eirini_app_pod();
    json_patch::patch(&mut pod, &ops)
        .with_context(|| format!("{}'s patch does not apply", server.name))?;
    Ok((pod, ops.0.len(), patch.len()))
}

/// One load run against one server route.
pub(crate) struct Sample {
    /// Answered reviews per second.
    pub(crate) rate: f64,
    /// Server CPU (user + system) per answered review.
    pub(crate) cpu_us: f64,
    /// Share of its core the server used.
    pub(crate) busy: f64,
    /// Share of its core the load generator used.
    pub(crate) load_busy: f64,
    p50: f64,
    p99: f64,
    /// Failed requests.
    pub(crate) errors: u64,
}

pub(crate) async fn measure(
    server: &Server,
    path: &str,
    args: &Pinning,
    dir: &Path,
) -> anyhow::Result<Sample> {
    let cpu0 = alloc::cpu_seconds_of(&server.pid);
    let out = pinned(args.load_core, &std::env::current_exe()?)
        .arg("load")
        .arg("--addr")
        .arg(server.addr.to_string())
        .arg("--ca-file")
        .arg(&server.ca_file)
        .arg("--path")
        .arg(path)
        .arg("--connections")
        .arg(args.connections.to_string())
        .arg("--seconds")
        .arg(args.seconds.to_string())
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let cpu = alloc::cpu_seconds_of(&server.pid) - cpu0;
    anyhow::ensure!(
        out.status.success(),
        "load generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let ok = v["ok"].as_u64().unwrap_or(0);
    let elapsed = v["elapsed"].as_f64().unwrap_or(1.0);
    if let Some(samples) = v["samples"].as_array() {
        for s in samples.iter().take(2) {
            eprintln!("{} {path}: error: {s}", server.name);
        }
    }
    Ok(Sample {
        rate: ok as f64 / elapsed,
        cpu_us: cpu * 1e6 / ok.max(1) as f64,
        busy: cpu / elapsed,
        load_busy: v["cpu"].as_f64().unwrap_or(0.0) / elapsed,
        p50: v["p50"].as_f64().unwrap_or(0.0),
        p99: v["p99"].as_f64().unwrap_or(0.0),
        errors: v["errors"].as_u64().unwrap_or(0),
    })
}

/// The median of `xs` (not empty).
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// `median (min–max)` of `xs` with `digits` decimals.
pub(crate) fn spread(xs: &[f64], digits: usize) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mid = median(xs);
    if xs.len() == 1 {
        format!("{mid:.digits$}")
    } else {
        format!("{mid:.digits$} ({lo:.digits$}–{hi:.digits$})")
    }
}

/// `eirinix-bench peers`.
pub async fn peers(args: Args) -> anyhow::Result<()> {
    let pinning = &args.pinning;
    anyhow::ensure!(pinning.runs >= 1, "--runs must be at least 1");
    let dir = tempfile::tempdir()?;
    let (cr_binary, cr_version) = controller_runtime_binary(&args)?;
    let core = pinning.server_core;
    let eirinix = start_rust("eirinix (persi)", "serve", core, dir.path()).await?;
    let baseline = start_rust(
        "hand-written axum + kube-rs",
        "serve-baseline",
        core,
        dir.path(),
    )
    .await?;
    let cr = start_controller_runtime(&cr_binary, &cr_version, core, dir.path()).await?;
    let servers = [&eirinix, &cr, &baseline];

    println!(
        "review body: {} bytes; servers pinned to core {core}, load generator (`eirinix-bench load`, {} connections, {} s) to core {}; {} runs\n",
        pods::review(&pods::eirini_app_pod()).len(),
        pinning.connections,
        pinning.seconds,
        pinning.load_core,
        pinning.runs
    );
    // The same pod from every server.
    let (reference_raw, _, _) = patched_pod(&eirinix).await?;
    let reference = normalized(reference_raw.clone());
    println!(
        "| server | patch operations | patch bytes | fields written differently from eirinix's pod | patched pod (compared as Go types see it: no null, {{}} or 0; quantities as numbers) |"
    );
    println!("|---|---|---|---|---|");
    let mut all_same = true;
    for s in servers {
        let (raw, ops, bytes) = patched_pod(s).await?;
        let spelled = json_patch::diff(&reference_raw, &raw).0.len();
        let pod = normalized(raw);
        let same = pod == reference;
        all_same &= same;
        println!(
            "| {} | {ops} | {bytes} | {spelled} | {} |",
            s.name,
            if same {
                "the same as eirinix's".to_owned()
            } else {
                format!(
                    "**different**: {}",
                    serde_json::to_string(&json_patch::diff(&reference, &pod))?
                )
            }
        );
    }
    println!();

    let rows: [(&str, &Server, &str); 4] = [
        ("eirinix persi", &eirinix, "/persi"),
        (
            "fixed answer (eirinix's server and layers, constant answer)",
            &eirinix,
            "/fixed",
        ),
        ("controller-runtime persi", &cr, "/persi"),
        ("hand-written axum + kube-rs persi", &baseline, "/persi"),
    ];
    let mut samples: Vec<Vec<Sample>> = rows.iter().map(|_| Vec::new()).collect();
    for run in 0..pinning.runs {
        for (i, (label, server, path)) in rows.iter().enumerate() {
            let s = measure(server, path, pinning, dir.path()).await?;
            eprintln!(
                "run {}: {label}: {:.0} reviews/s, {:.1} µs server CPU per review, server core {:.0} % busy, load core {:.0} %",
                run + 1,
                s.rate,
                s.cpu_us,
                s.busy * 100.0,
                s.load_busy * 100.0
            );
            samples[i].push(s);
        }
    }
    println!(
        "| server (one core) | reviews/s | server CPU µs per review | reviews per server core-second (10⁶ / µs) | server core busy | load-generator core busy | p50 ms | p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((label, server, _), s) in rows.iter().zip(&samples) {
        let col =
            |f: fn(&Sample) -> f64, digits| spread(&s.iter().map(f).collect::<Vec<_>>(), digits);
        let label = if std::ptr::eq(*server, &cr) {
            format!("{label} ({})", cr.name)
        } else {
            (*label).to_owned()
        };
        println!(
            "| {label} | {} | {} | {} | {} % | {} % | {} | {} | {} |",
            col(|s| s.rate, 0),
            col(|s| s.cpu_us, 1),
            col(|s| 1e6 / s.cpu_us.max(1e-9), 0),
            col(|s| s.busy * 100.0, 0),
            col(|s| s.load_busy * 100.0, 0),
            col(|s| s.p50, 3),
            col(|s| s.p99, 3),
            s.iter().map(|s| s.errors).sum::<u64>(),
        );
    }
    println!();
    for s in servers {
        let (rss, hwm) = alloc::rss_kib_of(&s.pid);
        println!(
            "{}: RSS after the runs {:.1} MiB, peak {:.1} MiB",
            s.name,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    for s in [eirinix, cr, baseline] {
        s.stop().await;
    }
    anyhow::ensure!(all_same, "the servers' patched pods differ (see above)");
    Ok(())
}
