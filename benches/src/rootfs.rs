//! rootfs at scale (issue 19): many Eirini app StatefulSets in the real kube-apiserver, rolled
//! onto a new rootfs version by the real roller ([`eirinix_rootfs::roll_once`], what
//! `eirinix rootfs-roll` and the servers' roller run) at several `maxInFlight`.
//!
//! No pods run: a simulated StatefulSet controller in this process watches the StatefulSets and,
//! `--ready-delay` after it sees a new generation, patches `status` as the real controller does
//! once every pod is updated and Ready (`observedGeneration`, `readyReplicas`,
//! `updatedReplicas`, `currentRevision == updateRevision`). The roller runs in its own process
//! (this binary re-executed as `rootfs-scale --roller <config>`), so its heap (counting
//! allocator), RSS and CPU are its own. API calls are counted by the apiserver
//! (`apiserver_request_total` in its `/metrics`); its CPU and etcd's come from `/proc`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::alloc;
use crate::latency::apiserver_metrics;
use crate::logs::load_average;

/// The rootfs image repository of the simulated apps.
const REPO: &str = "registry.bench/cloudfoundry/cflinuxfs4";

/// Options of `eirinix-bench rootfs-scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// App StatefulSets to create and roll.
    #[arg(long, default_value_t = 10_000)]
    apps: usize,
    /// Instances (replicas) per app; only the status counts them (no pods run).
    #[arg(long, default_value_t = 4)]
    instances: i32,
    /// Milliseconds the simulated StatefulSet controller takes to report an app rolled out and
    /// Ready after it sees the patched template.
    #[arg(long, default_value_t = 200)]
    ready_delay_ms: u64,
    /// `maxInFlight` of each roll, in order (each roll moves every app to a new version).
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    max_in_flight: Vec<usize>,
    /// Concurrent requests while creating the StatefulSets.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Run as the roller process with this JSON config (used by the bench itself).
    #[arg(long, hide = true)]
    roller: Option<PathBuf>,
}

/// An Eirini app StatefulSet on rootfs `version` (the rootfs image is the app image), in the
/// shape of `extensions/rootfs/tests/common::app_sts` plus the app's env.
fn app_sts(name: &str, version: &str, instances: i32) -> anyhow::Result<StatefulSet> {
    let mut app = eirinix_testenv::eirini::EiriniApp::new(name);
    app.replicas = instances;
    app.image = format!("{REPO}:{version}");
    app.rootfs_version = Some(version.to_owned());
    for i in 0..10 {
        app = app.env(
            &format!("APP_SETTING_{i:02}"),
            &format!("value-of-setting-number-{i}-for-the-app"),
        );
    }
    let mut sts = app.statefulset();
    anyhow::ensure!(sts.spec.is_some(), "EiriniApp::statefulset has no spec");
    sts.metadata.annotations.get_or_insert_default().insert(
        "cloudfoundry.org/process_guid".into(),
        format!("{name}-guid"),
    );
    Ok(sts)
}

/// The status the StatefulSet controller reports once every pod of `sts` runs its current
/// template and is Ready.
async fn complete(api: &Api<StatefulSet>, sts: &StatefulSet) -> kube::Result<()> {
    let generation = sts.metadata.generation.unwrap_or(1);
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let rev = format!(
        "{}-rev-{generation}",
        sts.metadata.name.as_deref().unwrap_or("")
    );
    let status = eirinix_testenv::eirini::rolled_out_status(generation, replicas, &rev);
    api.patch_status(
        sts.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map(|_| ())
}

/// The simulated StatefulSet controller: a watch on the namespace's StatefulSets; a new
/// generation ahead of the status is reported rolled out `delay` later.
struct Simulator {
    /// Rollouts seen (a generation ahead of its status).
    seen: Arc<AtomicUsize>,
    /// Rollouts reported complete.
    completed: Arc<AtomicUsize>,
    /// Most rollouts seen and not yet reported complete at the same time.
    max_rolling: Arc<AtomicUsize>,
    /// Status patches that failed (each is retried).
    errors: Arc<AtomicUsize>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    fn start(api: Api<StatefulSet>, delay: Duration) -> Self {
        let seen = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let max_rolling = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (seen, completed, max_rolling, errors, cancel) = (
                seen.clone(),
                completed.clone(),
                max_rolling.clone(),
                errors.clone(),
                cancel.clone(),
            );
            async move {
                let mut scheduled: HashSet<(String, i64)> = HashSet::new();
                let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
                let mut stream = std::pin::pin!(stream);
                loop {
                    let ev = tokio::select! {
                        ev = stream.next() => ev,
                        _ = cancel.cancelled() => return,
                    };
                    let Some(ev) = ev else { return };
                    let sts = match ev {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                        _ => continue,
                    };
                    let generation = sts.metadata.generation.unwrap_or(0);
                    let observed = sts
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0);
                    let name = sts.metadata.name.clone().unwrap_or_default();
                    if generation <= observed || !scheduled.insert((name, generation)) {
                        continue;
                    }
                    let now = seen.fetch_add(1, Ordering::SeqCst) + 1;
                    max_rolling.fetch_max(now - completed.load(Ordering::SeqCst), Ordering::SeqCst);
                    let (api, completed, errors) = (api.clone(), completed.clone(), errors.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        for _ in 0..5 {
                            match complete(&api, &sts).await {
                                Ok(()) => break,
                                Err(_) => {
                                    errors.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                        completed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Self {
            seen,
            completed,
            max_rolling,
            errors,
            cancel,
            task,
        }
    }

    fn reset_max(&self) {
        let rolling = self.seen.load(Ordering::SeqCst) - self.completed.load(Ordering::SeqCst);
        self.max_rolling.store(rolling, Ordering::SeqCst);
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// What the roller process reports (one JSON line on stdout).
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
struct RollerResult {
    /// Wall time of `roll_once`, seconds.
    secs: f64,
    /// CPU seconds of the roller process (user + system), whole run.
    cpu: f64,
    rolled: usize,
    completed: usize,
    timed_out: usize,
    failed: usize,
    deadline_exceeded: bool,
    /// Entries and "to roll now" of the last plan.
    entries: usize,
    to_roll: usize,
    waiting: usize,
    /// Heap bytes allocated and not freed at the end (the report with its last plan).
    heap_end: usize,
    /// Peak heap bytes during the run.
    heap_peak: usize,
    /// RSS before the run, at the end, and the peak (KiB).
    rss0_kib: u64,
    rss_kib: u64,
    hwm_kib: u64,
    /// Dry run only: the pure planner (`plan::plan`) over every listed StatefulSet, ms (best
    /// of 5) and how long listing them took.
    plan_pure_ms: Option<f64>,
    list_ms: Option<f64>,
    /// Dry run only: heap of the listed StatefulSets as decoded, and of their managedFields.
    list_heap: Option<usize>,
    managed_fields_heap: Option<usize>,
}

/// The roller process: `roll_once` with the config's options; prints a [`RollerResult`].
async fn roller(config: &Path) -> anyhow::Result<()> {
    alloc::enable(true);
    let (rss0_kib, _) = alloc::rss_kib();
    let (cfg, client) = crate::logs::child_config(config).await?;
    let text = |k: &str| crate::logs::config_text(&cfg, k);
    let options = eirinix_rootfs::RootfsOptions {
        version: Some(text("version")?),
        image_pattern: Some(REPO.to_owned()),
        namespace: Some(text("namespace")?),
        max_in_flight: cfg["max_in_flight"].as_u64().context("max_in_flight")? as usize,
        dry_run: cfg["dry_run"].as_bool().unwrap_or(false),
        once_deadline: Duration::from_secs(3600),
        ..Default::default()
    };
    let live0 = alloc::reset_peak();
    let t = Instant::now();
    let report = eirinix_rootfs::roll_once(options.clone(), client.clone())
        .await
        .context("roll_once")?;
    let secs = t.elapsed().as_secs_f64();
    let heap_peak = alloc::peak().saturating_sub(live0);
    // The StatefulSet watch task is aborted when `roll_once` returns; let it go first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heap_end = alloc::live().saturating_sub(live0);
    let (rss_kib, hwm_kib) = alloc::rss_kib();
    let plan = report.plan.as_ref();
    let mut out = RollerResult {
        secs,
        cpu: alloc::cpu_seconds_of("self"),
        rolled: report.rolled.len(),
        completed: report.completed.len(),
        timed_out: report.timed_out.len(),
        failed: report.failed.len(),
        deadline_exceeded: report.deadline_exceeded,
        entries: plan.map_or(0, |p| p.entries.len()),
        to_roll: plan.map_or(0, |p| p.to_roll().count()),
        waiting: plan.map_or(0, |p| {
            p.entries
                .iter()
                .filter(|e| matches!(e.action, eirinix_rootfs::Action::Wait(_)))
                .count()
        }),
        heap_end,
        heap_peak,
        rss0_kib,
        rss_kib,
        hwm_kib,
        plan_pure_ms: None,
        list_ms: None,
        list_heap: None,
        managed_fields_heap: None,
    };
    drop(report);
    if options.dry_run {
        // The pure planner alone, over the same StatefulSets (after the figures above).
        let api: Api<StatefulSet> =
            Api::namespaced(client, options.namespace.as_deref().unwrap_or_default());
        let t = Instant::now();
        let live = alloc::live();
        let mut list = api
            .list(&kube::api::ListParams::default().labels(&options.app_selector))
            .await
            .context("listing the StatefulSets")?;
        out.list_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        // What the decoded objects hold, and how much of it is managedFields (the apiserver's
        // field ownership records, which the roller never reads).
        let held = alloc::live();
        out.list_heap = Some(held.saturating_sub(live));
        let managed: Vec<_> = list
            .items
            .iter_mut()
            .map(|s| s.metadata.managed_fields.take())
            .collect();
        drop(managed);
        out.managed_fields_heap = Some(held.saturating_sub(alloc::live()));
        let desired = options
            .static_desired()?
            .context("no desired version in the options")?;
        let limits = eirinix_rootfs::plan::Limits::from(&options);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let plan = eirinix_rootfs::plan::plan(
                list.items.iter(),
                &desired,
                &limits,
                k8s_openapi::jiff::Timestamp::now(),
                &HashMap::new(),
            );
            std::hint::black_box(&plan);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        out.plan_pure_ms = Some(best);
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Run the roller process once; its result and its wall time seen from here.
async fn run_roller(
    cp: &eirinix_testenv::ControlPlane,
    ns: &str,
    version: &str,
    max_in_flight: usize,
    dry_run: bool,
) -> anyhow::Result<RollerResult> {
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        serde_json::to_vec(&json!({
            "kubeconfig": cp.kubeconfig_path(),
            "namespace": ns,
            "version": version,
            "max_in_flight": max_in_flight,
            "dry_run": dry_run,
        }))?,
    )?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("rootfs-scale")
        .arg("--roller")
        .arg(config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let child = eirinix_testenv::spawn_tied(cmd).context("starting the roller process")?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "the roller process failed ({})",
        out.status
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let last = line.lines().last().context("no output from the roller")?;
    serde_json::from_str(last).with_context(|| format!("roller output: {last}"))
}

/// `apiserver_request_total` by `VERB resource[/subresource]` (all codes), from `/metrics`.
fn requests(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let (sub, resource) = (label("subresource"), label("resource"));
        let key = if sub.is_empty() {
            format!("{} {resource}", label("verb"))
        } else {
            format!("{} {resource}/{sub}", label("verb"))
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// Requests between two scrapes, by key, only those that changed.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The roller's own requests in a delta: everything but the simulator's status patches, the
/// bench's `/metrics` scrapes and other resources' background traffic.
fn roller_calls(d: &BTreeMap<String, f64>) -> (f64, String) {
    let ours = |k: &str| {
        (k.contains(" statefulsets") && !k.ends_with("/status")) || k.ends_with(" events")
    };
    let total = d.iter().filter(|(k, _)| ours(k)).map(|(_, v)| v).sum();
    let detail = d
        .iter()
        .filter(|(k, _)| ours(k))
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    (total, detail)
}

/// `eirinix-bench rootfs-scale`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(config) = &args.roller {
        return roller(config).await;
    }
    anyhow::ensure!(
        args.apps > 0 && !args.max_in_flight.is_empty(),
        "need apps and at least one maxInFlight"
    );
    let cp = eirinix_testenv::ControlPlane::builder()
        .etcd_flag("--quota-backend-bytes=8589934592")
        .start()
        .await?;
    let client = cp.client().await?;
    let ns = cp.namespace("rootfs-scale").await?;
    let apiserver = cp.apiserver_pid().context("apiserver pid")?.to_string();
    let etcd = cp.etcd_pid().context("etcd pid")?.to_string();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let n = args.apps;

    // The apps, on rootfs 1.0, rolled out.
    let t = Instant::now();
    let template = app_sts("app", "1.0", args.instances)?;
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, mut sts) = (api.clone(), template.clone());
            async move {
                let name = format!("app-{i:05}");
                sts.metadata.name = Some(name.clone());
                let created = api
                    .create(&PostParams::default(), &sts)
                    .await
                    .with_context(|| format!("creating StatefulSet {name}"))?;
                complete(&api, &created)
                    .await
                    .with_context(|| format!("status of StatefulSet {name}"))
            }
        })
        .buffer_unordered(args.create_concurrency.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let created_in = t.elapsed().as_secs_f64();
    eprintln!("{n} app StatefulSets created and rolled out in {created_in:.1} s");
    let api_rss = crate::logs::proc_rss_kib(cp.apiserver_pid().unwrap_or(0));
    let sim = Simulator::start(api.clone(), Duration::from_millis(args.ready_delay_ms));

    println!(
        "{n} app StatefulSets ({} instances each, {} app instances in all; {} KiB per StatefulSet as JSON), created and reported rolled out in {created_in:.1} s; simulated rollout {} ms after each patch; kube-apiserver RSS {:.0} MiB with them; load average {}\n",
        args.instances,
        n * args.instances as usize,
        serde_json::to_vec(&template)?.len() / 1024,
        args.ready_delay_ms,
        api_rss as f64 / 1024.0,
        load_average(),
    );

    // Plan (dry run): list + one plan, then the pure planner.
    let before = requests(&apiserver_metrics(&client).await?);
    let cpu0 = crate::logs::proc_cpu(&apiserver);
    let dry = run_roller(&cp, &ns, "2.0", args.max_in_flight[0], true).await?;
    let api_cpu = crate::logs::proc_cpu(&apiserver) - cpu0;
    let d = delta(&before, &requests(&apiserver_metrics(&client).await?));
    let (calls, detail) = roller_calls(&d);
    let mib = |b: f64| b / 1048576.0;
    println!("| plan (dry run, `roll_once` with `dry_run`) | value |");
    println!("|---|---|");
    println!(
        "| time to plan: list every StatefulSet (reflector sync) and one pass | {:.2} s ({} entries, {} to roll now, {} waiting) |",
        dry.secs, dry.entries, dry.to_roll, dry.waiting
    );
    println!(
        "| of which the pure planner (`plan::plan` over {n} StatefulSets, best of 5) | {:.1} ms ({:.2} µs per app); one plain LIST of them: {:.0} ms |",
        dry.plan_pure_ms.unwrap_or(0.0),
        dry.plan_pure_ms.unwrap_or(0.0) * 1e3 / n as f64,
        dry.list_ms.unwrap_or(0.0)
    );
    println!(
        "| roller heap: peak / held at the end (the report and its plan) | {:.1} MiB ({:.0} B per app) / {:.1} MiB |",
        mib(dry.heap_peak as f64),
        dry.heap_peak as f64 / n as f64,
        mib(dry.heap_end as f64)
    );
    let list_heap = dry.list_heap.unwrap_or(0) as f64;
    println!(
        "| heap of the {n} StatefulSets as decoded (one LIST) / of which their managedFields | {:.1} MiB ({:.0} B per app) / {:.1} MiB ({:.0} %) |",
        mib(list_heap),
        list_heap / n as f64,
        mib(dry.managed_fields_heap.unwrap_or(0) as f64),
        dry.managed_fields_heap.unwrap_or(0) as f64 / list_heap.max(1.0) * 100.0
    );
    println!(
        "| roller RSS: at start / end / peak | {:.1} / {:.1} / {:.1} MiB ({:.0} B per app above the start) |",
        dry.rss0_kib as f64 / 1024.0,
        dry.rss_kib as f64 / 1024.0,
        dry.hwm_kib as f64 / 1024.0,
        dry.hwm_kib.saturating_sub(dry.rss0_kib) as f64 * 1024.0 / n as f64
    );
    println!(
        "| API calls of the dry run (incl. the extra LIST) | {calls:.0} ({detail}) |\n| kube-apiserver CPU during the dry run | {api_cpu:.2} s |"
    );

    println!(
        "\n| roll of {n} apps | time to roll all | apps/s | in flight (most seen by the simulator) | roller calls per app | roller calls | roller CPU s (per app ms) | roller heap peak MiB (B per app) | roller RSS peak MiB | kube-apiserver CPU % of a core | etcd CPU % | completed / timed out / failed | status patch errors | load avg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, &m) in args.max_in_flight.iter().enumerate() {
        let version = format!("{}.0", i + 2);
        sim.reset_max();
        let errors0 = sim.errors.load(Ordering::SeqCst);
        let before = requests(&apiserver_metrics(&client).await?);
        let (api0, etcd0) = (
            crate::logs::proc_cpu(&apiserver),
            crate::logs::proc_cpu(&etcd),
        );
        let t = Instant::now();
        let r = run_roller(&cp, &ns, &version, m, false).await?;
        let wall = t.elapsed().as_secs_f64();
        let (api_cpu, etcd_cpu) = (
            crate::logs::proc_cpu(&apiserver) - api0,
            crate::logs::proc_cpu(&etcd) - etcd0,
        );
        let d = delta(&before, &requests(&apiserver_metrics(&client).await?));
        let (calls, detail) = roller_calls(&d);
        eprintln!("maxInFlight {m}: requests {d:?}");
        println!(
            "| maxInFlight {m}, {}.0 → {version} | {:.1} s | {:.1} | {} (limit {m}) | {:.2} ({detail}) | {calls:.0} | {:.1} ({:.2}) | {:.1} ({:.0}) | {:.1} | {:.1} | {:.1} | {} / {} / {} | {} | {} |",
            i + 1,
            r.secs,
            n as f64 / r.secs,
            sim.max_rolling.load(Ordering::SeqCst),
            calls / n as f64,
            r.cpu,
            r.cpu * 1e3 / n as f64,
            mib(r.heap_peak as f64),
            r.heap_peak as f64 / n as f64,
            r.hwm_kib as f64 / 1024.0,
            api_cpu / wall * 100.0,
            etcd_cpu / wall * 100.0,
            r.completed,
            r.timed_out,
            r.failed,
            sim.errors.load(Ordering::SeqCst) - errors0,
            load_average(),
        );
        anyhow::ensure!(
            r.completed == n && r.failed == 0 && r.timed_out == 0 && !r.deadline_exceeded,
            "roll to {version} did not complete cleanly: {r:?}"
        );
    }
    sim.stop().await;
    Ok(())
}
