//! Sharded logs replicas at scale (issue 19): many app containers on many simulated nodes,
//! followed by several forwarding processes in `replicas.mode: sharded`, while lines keep coming;
//! a replica is killed, one added, one removed; every line must reach rsyslog, and repeats are
//! counted.
//!
//! The pieces, all on 127.0.0.1: the real etcd + kube-apiserver; `--nodes` fake kubelets (in
//! this process, each a Node of its own serving its pods' logs through the apiserver's
//! `pods/log` proxy); `--replicas` forwarding processes (this binary re-executed as
//! `logs --forwarder`, production defaults except `mode: sharded` and `--lease` seconds); one
//! rsyslogd (imtcp, MSG to a file). Per-replica RSS and CPU and the apiserver's CPU are read
//! from `/proc`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use eirinix_logs::ReplicaMode;
use eirinix_testenv::{ContainerLog, ControlPlane, FakeKubelet};

use crate::logs::{
    Forwarder, Rsyslog, create_pods, line, load_average, proc_cpu, proc_rss_kib, syslog_options,
};

/// Options of `eirinix-bench logs-sharded`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// App containers (one per pod) to follow.
    #[arg(long, default_value_t = 10_000)]
    containers: usize,
    /// Simulated nodes (fake kubelets) the pods are spread over.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Forwarding processes at the start.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Seconds between two lines of one container (all containers write at that pace).
    #[arg(long, default_value_t = 4.0)]
    line_every: f64,
    /// Bytes per log line.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Lease duration of the members, seconds (how long a crashed member's share waits).
    #[arg(long, default_value_t = 10)]
    lease: u64,
    /// Seconds to measure the steady state (CPU) before the membership changes.
    #[arg(long, default_value_t = 15)]
    steady: u64,
}

/// A forwarding process and its name.
struct Member {
    name: String,
    fwd: Forwarder,
}

impl Member {
    fn owned(&self) -> u64 {
        self.fwd.counter("owned")
    }
}

/// `eirinix-bench logs-sharded`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.containers >= args.nodes && args.nodes > 0 && args.replicas >= 2,
        "need a container per node and at least two replicas"
    );
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let ns = cp.namespace("logs-sharded").await?;
    let apiserver_pid = cp.apiserver_pid().context("apiserver pid")?;
    let apiserver = apiserver_pid.to_string();
    let etcd = cp.etcd_pid().context("etcd pid")?.to_string();
    let etcd_db = cp.dir().join("etcd-data/member/snap/db");

    // Nodes and pods.
    let t = Instant::now();
    let mut kubelets = Vec::new();
    for n in 0..args.nodes {
        kubelets.push(
            FakeKubelet::start(&client, &eirinix_testenv::unique_name(&format!("sim-{n}"))).await?,
        );
    }
    let per = args.containers.div_ceil(args.nodes);
    let mut logs: Vec<ContainerLog> = Vec::with_capacity(args.containers);
    for (n, k) in kubelets.iter().enumerate() {
        let range = (n * per)..((n + 1) * per).min(args.containers);
        create_pods(&client, &ns, k.node_name(), "sp", range.clone()).await?;
        for i in range {
            logs.push(k.container(&ns, &format!("sp-{i}"), "opi"));
        }
    }
    eprintln!(
        "{} pods on {} nodes created in {:.1} s",
        args.containers,
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    let api_rss_before = proc_rss_kib(apiserver_pid);
    let mut rsyslog = Rsyslog::start()?;
    let mut options = syslog_options(&format!("127.0.0.1:{}", rsyslog.port));
    options.replicas.mode = ReplicaMode::Sharded;
    options.replicas.lease_duration_secs = args.lease;
    let start_member = |name: String| -> anyhow::Result<Member> {
        let mut o = options.clone();
        o.replicas.identity = Some(name.clone());
        Ok(Member {
            fwd: Forwarder::start_with(&cp, &ns, &o)?,
            name,
        })
    };

    // The producer: every container writes a line every `line_every` seconds, spread evenly.
    let stop = Arc::new(AtomicBool::new(false));
    let written: Arc<Vec<AtomicUsize>> = Arc::new((0..logs.len()).map(|_| 0.into()).collect());
    let producer = {
        let (stop, written, logs) = (stop.clone(), written.clone(), logs.clone());
        let period = Duration::from_secs_f64(args.line_every);
        let bytes = args.line_bytes;
        tokio::spawn(async move {
            let slices = 50usize;
            let mut tick = tokio::time::interval(period / slices as u32);
            let mut slice = 0usize;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                for (i, log) in logs.iter().enumerate().skip(slice).step_by(slices) {
                    let seq = written[i].fetch_add(1, Ordering::SeqCst);
                    log.push_line(line(&format!("sp-{i}"), seq, bytes));
                }
                slice = (slice + 1) % slices;
            }
        })
    };

    let mut members: Vec<Member> = Vec::new();
    let t = Instant::now();
    for r in 0..args.replicas {
        members.push(start_member(format!("replica-{r}"))?);
    }
    let start_took = settle(&members, &logs, &HashMap::new(), "start").await?;
    eprintln!(
        "{} replicas follow every container after {:.1} s",
        members.len(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "{} app containers on {} simulated nodes; each writes a {}-byte line every {} s ({:.0} lines/s in all); lease {} s, checkpoint interval {} ms\n",
        args.containers,
        args.nodes,
        args.line_bytes,
        args.line_every,
        args.containers as f64 / args.line_every,
        args.lease,
        options.replicas.checkpoint_interval_ms,
    );
    println!(
        "kube-apiserver RSS: {:.0} MiB with the pods listed, {:.0} MiB with every container followed ({:.1} KiB per follow stream)\n",
        api_rss_before as f64 / 1024.0,
        proc_rss_kib(apiserver_pid) as f64 / 1024.0,
        (proc_rss_kib(apiserver_pid) as f64 - api_rss_before as f64) / args.containers as f64
    );
    println!(
        "| step | replicas | containers per replica | time to follow every container again | members' own rebalance time, ms | per-replica RSS MiB (open sockets) | per-replica CPU % of a core | kube-apiserver CPU % | load avg | lines repeated so far (containers) | checkpoint, stream, sink errors (live replicas) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");

    // Steady state.
    let cpu0: Vec<f64> = members
        .iter()
        .map(|m| proc_cpu(&m.fwd.pid().to_string()))
        .collect();
    let api0 = proc_cpu(&apiserver);
    let etcd0 = proc_cpu(&etcd);
    let db0 = std::fs::metadata(&etcd_db).map(|m| m.len()).unwrap_or(0);
    let writes0: u64 = members.iter().map(|m| m.fwd.counter("checkpoints")).sum();
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    let secs = args.steady as f64;
    let cpu: Vec<String> = members
        .iter()
        .zip(&cpu0)
        .map(|(m, c)| {
            format!(
                "{:.1}",
                (proc_cpu(&m.fwd.pid().to_string()) - c) / secs * 100.0
            )
        })
        .collect();
    let api = (proc_cpu(&apiserver) - api0) / secs * 100.0;
    let etcd_cpu = (proc_cpu(&etcd) - etcd0) / secs * 100.0;
    let db = std::fs::metadata(&etcd_db).map(|m| m.len()).unwrap_or(0);
    let writes: u64 = members
        .iter()
        .map(|m| m.fwd.counter("checkpoints"))
        .sum::<u64>()
        - writes0;
    let (pages, bytes) = checkpoint_size(&client, &ns).await?;
    println!(
        "| start, then {}s steady | {} | {} | {:.1} s from start | {} | {} | {} | {api:.1} | {} | {} | {} |",
        args.steady,
        members.len(),
        shares(&members),
        start_took.as_secs_f64(),
        rebalance_ms(&members),
        rss(&members),
        cpu.join(" / "),
        load_average(),
        so_far(&rsyslog, &written)?,
        errors(&members),
    );

    let steady_row = format!(
        "\n| steady state, {} s | checkpoint ConfigMaps | their data | checkpoint writes/s | checkpoint bytes/s (approx.) | etcd CPU % | etcd db growth |\n|---|---|---|---|---|---|---|\n| {} replicas, {} containers | {pages} | {:.0} KiB ({:.0} B per container) | {:.1} | {:.0} KiB/s | {etcd_cpu:.1} | {:.1} MiB |",
        args.steady,
        args.replicas,
        args.containers,
        bytes as f64 / 1024.0,
        bytes as f64 / args.containers as f64,
        writes as f64 / secs,
        writes as f64 / secs * bytes as f64 / pages.max(1) as f64 / 1024.0,
        (db.saturating_sub(db0)) as f64 / 1048576.0,
    );

    // Kill one (SIGKILL: no final checkpoint, no Lease release).
    let dead = members.remove(0);
    let dead_name = dead.name.clone();
    let before = rebalances(&members);
    drop(dead);
    let took = settle(&members, &logs, &before, "after the kill").await?;
    println!(
        "| {dead_name} killed (SIGKILL) | {} | {} | {:.1} s | {} | {} | | | {} | {} | {} |",
        members.len(),
        shares(&members),
        took.as_secs_f64(),
        rebalance_ms(&members),
        rss(&members),
        load_average(),
        so_far(&rsyslog, &written)?,
        errors(&members),
    );

    // Add one.
    let before = rebalances(&members);
    members.push(start_member(format!("replica-{}", args.replicas))?);
    let took = settle(&members, &logs, &before, "after the scale-out").await?;
    println!(
        "| replica-{} added | {} | {} | {:.1} s | {} | {} | | | {} | {} | {} |",
        args.replicas,
        members.len(),
        shares(&members),
        took.as_secs_f64(),
        rebalance_ms(&members),
        rss(&members),
        load_average(),
        so_far(&rsyslog, &written)?,
        errors(&members),
    );

    // Remove one gracefully.
    let gone = members.remove(0);
    let gone_name = gone.name.clone();
    let before = rebalances(&members);
    gone.fwd.stop().await?;
    let took = settle(&members, &logs, &before, "after the scale-in").await?;
    println!(
        "| {gone_name} stopped (graceful) | {} | {} | {:.1} s | {} | {} | | | {} | {} | {} |",
        members.len(),
        shares(&members),
        took.as_secs_f64(),
        rebalance_ms(&members),
        rss(&members),
        load_average(),
        so_far(&rsyslog, &written)?,
        errors(&members),
    );

    // Every line delivered?
    stop.store(true, Ordering::SeqCst);
    producer.await?;
    let total: usize = written.iter().map(|w| w.load(Ordering::SeqCst)).sum();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = (rsyslog.received(), Instant::now());
    while (last.0 as usize) < total || last.1.elapsed() < Duration::from_secs(3) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {total} lines received",
            last.0
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = rsyslog.received();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    for m in members {
        m.fwd.stop().await?;
    }
    let written: Vec<usize> = written.iter().map(|w| w.load(Ordering::SeqCst)).collect();
    let (lost, repeated, repeated_in) = check(&rsyslog.out(), &written)?;
    println!("{steady_row}");
    println!(
        "\n| lines written | lost | repeated (in containers) | |\n|---|---|---|---|\n| {total} | {lost} | {repeated} (in {repeated_in}) | the repeats are the killed replica's share since its last checkpoint |"
    );
    Ok(())
}

/// Wait until the live members agree on a view they took over after `before` (their rebalance
/// counts then; new members: any) and
/// every container has exactly one follow stream open; the time it took.
async fn settle(
    members: &[Member],
    logs: &[ContainerLog],
    before: &HashMap<String, u64>,
    what: &str,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(600);
    loop {
        let n = members.len() as u64;
        let agreed = members.iter().all(|m| {
            m.fwd.counter("members") == n
                && m.fwd.counter("rebalances") > before.get(&m.name).copied().unwrap_or(0)
        });
        let owned: u64 = members.iter().map(Member::owned).sum();
        let mut streams: HashMap<usize, usize> = HashMap::new();
        for l in logs {
            *streams.entry(l.followers()).or_default() += 1;
        }
        if agreed && owned == logs.len() as u64 && streams.get(&1) == Some(&logs.len()) {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not settled after 600 s: members {:?}, owned {owned}, follow streams per container {streams:?}",
            members
                .iter()
                .map(|m| m.fwd.counter("members"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each member's rebalance count now.
fn rebalances(members: &[Member]) -> HashMap<String, u64> {
    members
        .iter()
        .map(|m| (m.name.clone(), m.fwd.counter("rebalances")))
        .collect()
}

fn shares(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| m.owned().to_string())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Lines repeated so far and in how many containers (from what rsyslog wrote until now).
fn so_far(rsyslog: &Rsyslog, written: &[AtomicUsize]) -> anyhow::Result<String> {
    let written: Vec<usize> = written.iter().map(|w| w.load(Ordering::SeqCst)).collect();
    let (_, repeated, containers) = check(&rsyslog.out(), &written)?;
    Ok(format!("{repeated} ({containers})"))
}

fn errors(members: &[Member]) -> String {
    let sum = |k: &str| members.iter().map(|m| m.fwd.counter(k)).sum::<u64>();
    format!(
        "{}, {}, {}",
        sum("checkpoint_errors"),
        sum("stream_errors"),
        sum("sink_errors")
    )
}

fn rebalance_ms(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| m.fwd.counter("rebalance_ms").to_string())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Each member's RSS, with its open sockets (about one per follow stream: a request that keeps
/// an extra connection shows here).
fn rss(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            let pid = m.fwd.pid();
            format!(
                "{:.0} ({})",
                proc_rss_kib(pid) as f64 / 1024.0,
                sockets(pid).map_or_else(|| "?".to_owned(), |n| n.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Open sockets of process `pid`, from `/proc/<pid>/fd` (`None` when it cannot be read).
fn sockets(pid: u32) -> Option<usize> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count(),
    )
}

/// Member checkpoint ConfigMaps (pages) in `ns`: how many, and the bytes of their data.
async fn checkpoint_size(client: &kube::Client, ns: &str) -> anyhow::Result<(usize, usize)> {
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default().labels("eirinix.org/logs-kind=page");
    let list = api.list(&lp).await?;
    let bytes = list
        .items
        .iter()
        .flat_map(|cm| cm.data.iter().flatten())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    Ok((list.items.len(), bytes))
}

/// What rsyslog wrote against what was written: (lost, repeated, containers with repeats).
fn check(out: &std::path::Path, written: &[usize]) -> anyhow::Result<(usize, usize, usize)> {
    let data = std::fs::read(out)?;
    let mut seen: Vec<Vec<u8>> = written.iter().map(|n| vec![0u8; *n]).collect();
    for l in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(l);
        let mut parts = text.split(' ');
        let c: Option<usize> = parts
            .next()
            .and_then(|p| p.strip_prefix("sp-"))
            .and_then(|s| s.parse().ok());
        let seq: Option<usize> = parts.next().and_then(|s| s.parse().ok());
        if let (Some(c), Some(seq)) = (c, seq)
            && let Some(slot) = seen.get_mut(c).and_then(|s| s.get_mut(seq))
        {
            *slot = slot.saturating_add(1);
        }
    }
    let lost = seen.iter().flatten().filter(|n| **n == 0).count();
    let repeated = seen
        .iter()
        .flatten()
        .map(|n| usize::from(n.saturating_sub(1)))
        .sum();
    let repeated_in = seen.iter().filter(|s| s.iter().any(|n| *n > 1)).count();
    Ok((lost, repeated, repeated_in))
}
