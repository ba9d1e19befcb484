//! A burst of pod creations through the real kube-apiserver (issue 19: all apps restarting at
//! once), without a webhook and then with eirinix persi registered (in this process, URL mode on
//! 127.0.0.1, failure policy `Fail`): every creation must succeed and be mutated; the added
//! latency is the difference of the two bursts' percentiles.
//!
//! Pods are the Eirini app pod of [`crate::pods::eirini_app_pod`], created bare (no node: they
//! stay Pending) by `--clients` concurrent callers sharing one client. Failures are counted on
//! both sides: creations the apiserver failed (and why), the apiserver's webhook rejections and
//! non-200 webhook calls (`/metrics`), and the webhook's own outcomes (errored, invalid, denied).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::latency::{apiserver_metrics, histogram, quantile};
use crate::logs::{load_average, proc_cpu};
use crate::pods;

/// Options of `eirinix-bench admission-burst`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Pods per burst.
    #[arg(long, default_value_t = 40_000)]
    pods: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Bursts, in order: `without` (no webhook), `persi` (HTTP/1.1), `persi-h2` (HTTP/2).
    #[arg(long, value_delimiter = ',', default_value = "without,persi,persi-h2")]
    variants: Vec<String>,
}

/// One burst's outcome.
struct Burst {
    /// Latency of each successful create, ms, sorted.
    times: Vec<f64>,
    /// Creations that failed, and the first few messages.
    failed: usize,
    samples: Vec<String>,
    /// Created pods carrying persi's marker annotation.
    mutated: usize,
    secs: f64,
    apiserver_cpu: f64,
    bench_cpu: f64,
}

async fn burst(
    api: &Api<Pod>,
    pod: &Pod,
    n: usize,
    clients: usize,
    tag: &str,
    apiserver: &str,
) -> Burst {
    let (api0, self0) = (proc_cpu(apiserver), proc_cpu("self"));
    let t = Instant::now();
    let results: Vec<Result<(f64, bool), String>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut pod = pod.clone();
            async move {
                pod.metadata.name = Some(format!("{tag}-{i}"));
                let t = Instant::now();
                match api.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        let marked = created
                            .metadata
                            .annotations
                            .as_ref()
                            .is_some_and(|a| a.contains_key("eirinix.org/persi"));
                        Ok((ms, marked))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffer_unordered(clients.max(1))
        .collect()
        .await;
    let secs = t.elapsed().as_secs_f64();
    let (apiserver_cpu, bench_cpu) = (proc_cpu(apiserver) - api0, proc_cpu("self") - self0);
    let mut out = Burst {
        times: Vec::with_capacity(n),
        failed: 0,
        samples: Vec::new(),
        mutated: 0,
        secs,
        apiserver_cpu,
        bench_cpu,
    };
    for r in results {
        match r {
            Ok((ms, marked)) => {
                out.times.push(ms);
                out.mutated += usize::from(marked);
            }
            Err(e) => {
                out.failed += 1;
                if out.samples.len() < 3 {
                    out.samples.push(e);
                }
            }
        }
    }
    out.times.sort_by(f64::total_cmp);
    out
}

/// Delete every pod of `api`'s namespace and wait until they are gone (no kubelet: unbound
/// pods go at once). A collection of tens of thousands outlasts the apiserver's 60 s request
/// timeout, which ends the call while deletion goes on: ask again until none is left.
async fn delete_all(api: &Api<Pod>) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if let Err(e) = api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            eprintln!("deleting the pods: {e} (asking again)");
        }
        let left = api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .context("listing the pods")?;
        if left.items.is_empty() {
            eprintln!("pods deleted in {:.1} s", t.elapsed().as_secs_f64());
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900),
            "pods still there after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `Σ` of the series of counter `name` whose labels contain all of `labels` (from `/metrics`).
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Non-200 webhook calls by code, e.g. `"500": 3`, between two scrapes.
fn webhook_codes(before: &str, after: &str) -> String {
    let codes = |m: &str| {
        let mut out = std::collections::BTreeMap::<String, f64>::new();
        for l in m
            .lines()
            .filter(|l| l.starts_with("apiserver_admission_webhook_request_total{"))
        {
            let code = l
                .split("code=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("?");
            if let Some(v) = l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()) {
                *out.entry(code.to_owned()).or_insert(0.0) += v;
            }
        }
        out
    };
    let (b, a) = (codes(before), codes(after));
    let d: Vec<String> = a
        .iter()
        .map(|(k, v)| (k, v - b.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{k}: {v:.0}"))
        .collect();
    if d.is_empty() {
        "none".into()
    } else {
        d.join(", ")
    }
}

/// `eirinix-bench admission-burst`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.pods;
    let cp = eirinix_testenv::ControlPlane::builder()
        .etcd_flag("--quota-backend-bytes=8589934592")
        .start()
        .await?;
    let client = cp.client().await?;
    let apiserver = cp.apiserver_pid().context("apiserver pid")?.to_string();
    let sys = cp.namespace("burst-sys").await?;
    let mut pod: Pod = serde_json::from_value(pods::eirini_app_pod())?;
    pod.metadata.namespace = None;
    pod.metadata.owner_references = None;
    pod.metadata.generate_name = None;

    let mut rows: Vec<(&str, Burst, Option<Sides>)> = Vec::new();
    for (i, variant) in args.variants.iter().enumerate() {
        let (label, http2) = match variant.as_str() {
            "without" => ("without a webhook", None),
            "persi" => ("persi, HTTP/1.1 (Fail policy)", Some(false)),
            "persi-h2" => ("persi, HTTP/2 (Fail policy)", Some(true)),
            other => anyhow::bail!("unknown variant {other} (without, persi, persi-h2)"),
        };
        let ns = cp.namespace(&format!("burst-{variant}")).await?;
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let tag = format!("b{i}");
        let (b, sides) = match http2 {
            None => (
                burst(&api, &pod, n, args.clients, &tag, &apiserver).await,
                None,
            ),
            Some(http2) => {
                let builder =
                    crate::latency::local_manager(&format!("burst-{variant}"), http2, &sys, &ns);
                let running = crate::start_persi(builder, &client, Duration::from_secs(30)).await?;
                let conns = running.metrics().connections();
                let (accepted0, handshakes0) = (conns.accepted(), conns.handshake_failures());
                let m0 = apiserver_metrics(&client).await?;
                let b = burst(&api, &pod, n, args.clients, &tag, &apiserver).await;
                let m1 = apiserver_metrics(&client).await?;
                let sides = Sides::read(&running, &m0, &m1, accepted0, handshakes0)?;
                running.shutdown().await;
                (b, Some(sides))
            }
        };
        eprintln!(
            "{label}: {} created, {} failed in {:.1} s",
            b.times.len(),
            b.failed,
            b.secs
        );
        if i + 1 < args.variants.len() {
            delete_all(&api).await?;
        }
        rows.push((label, b, sides));
    }

    println!(
        "{n} Eirini app pods per burst, created by {} concurrent clients through the real kube-apiserver (pods stay Pending; the previous burst's pods deleted first); load average {}\n",
        args.clients,
        load_average()
    );
    println!(
        "| burst | created | failed | mutated by persi | pods/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | added p50 / p99 ms | kube-apiserver CPU % of a core | bench process CPU % (clients + webhook) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let base = rows
        .iter()
        .find(|(_, _, s)| s.is_none())
        .filter(|(_, b, _)| !b.times.is_empty())
        .map(|(_, b, _)| (quantile(&b.times, 0.5), quantile(&b.times, 0.99)));
    for (label, b, _) in &rows {
        let q = |p: f64| {
            if b.times.is_empty() {
                f64::NAN
            } else {
                quantile(&b.times, p)
            }
        };
        let added = base.map_or("-".to_owned(), |(b50, b99)| {
            format!("{:+.1} / {:+.1}", q(0.5) - b50, q(0.99) - b99)
        });
        println!(
            "| {label} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {added} | {:.0} | {:.0} |",
            b.times.len(),
            b.failed,
            b.mutated,
            b.times.len() as f64 / b.secs,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            b.times.last().copied().unwrap_or(f64::NAN),
            b.apiserver_cpu / b.secs * 100.0,
            b.bench_cpu / b.secs * 100.0,
        );
    }
    println!(
        "\n| webhook burst, seen from both sides | apiserver: webhook calls / mean ms | apiserver: webhook rejections | apiserver: webhook calls by code | webhook: patched / skipped / denied / errored / invalid | webhook: mean review ms (server side) | webhook: connections opened by the apiserver / failed handshakes |\n|---|---|---|---|---|---|---|"
    );
    for (label, _, sides) in &rows {
        if let Some(s) = sides {
            let o = s.outcomes;
            println!(
                "| {label} | {:.0} / {:.2} | {:.0} | {} | {} / {} / {} / {} / {} | {:.3} | {} / {} |",
                s.webhook_calls,
                s.webhook_ms,
                s.rejections,
                s.codes,
                o[0],
                o[1],
                o[2],
                o[3],
                o[4],
                s.server_ms,
                s.connections,
                s.handshakes
            );
        }
    }
    for (label, b, _) in &rows {
        for s in &b.samples {
            println!("  first failures ({label}): {s}");
        }
    }
    Ok(())
}

/// A webhook burst seen from the apiserver (`/metrics` before and after) and the webhook.
struct Sides {
    webhook_calls: f64,
    webhook_ms: f64,
    rejections: f64,
    codes: String,
    /// Patched, skipped, denied, errored, invalid.
    outcomes: [u64; 5],
    server_ms: f64,
    connections: u64,
    handshakes: u64,
}

impl Sides {
    fn read(
        running: &eirinix_core::RunningManager,
        m0: &str,
        m1: &str,
        accepted0: u64,
        handshakes0: u64,
    ) -> anyhow::Result<Sides> {
        use eirinix_core::metrics::Outcome;
        let ext = running
            .metrics()
            .extension_named("persi")
            .context("persi metrics")?;
        let outcomes = [
            Outcome::Patched,
            Outcome::Skipped,
            Outcome::Denied,
            Outcome::Errored,
            Outcome::Invalid,
        ]
        .map(|o| ext.count(o));
        let (count, sum) = ext.total();
        let conns = running.metrics().connections();
        let hist = "apiserver_admission_webhook_admission_duration_seconds";
        let (ws0, wc0) = histogram(m0, hist, &["type=\"admit\""]);
        let (ws1, wc1) = histogram(m1, hist, &["type=\"admit\""]);
        let rejections = "apiserver_admission_webhook_rejection_count";
        Ok(Sides {
            webhook_calls: wc1 - wc0,
            webhook_ms: (ws1 - ws0) / (wc1 - wc0).max(1.0) * 1e3,
            rejections: counter(m1, rejections, &[]) - counter(m0, rejections, &[]),
            codes: webhook_codes(m0, m1),
            outcomes,
            server_ms: sum.as_secs_f64() * 1e3 / count.max(1) as f64,
            connections: conns.accepted() - accepted0,
            handshakes: conns.handshake_failures() - handshakes0,
        })
    }
}
