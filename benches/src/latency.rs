//! Added pod-creation latency through a real kube-apiserver, with the diagnostics that explain it:
//! the apiserver's own webhook timing and how many connections it opened to the webhook.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use eirinix_core::{Context, Extension, ExtensionError, Mutation, Request};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::pods;

/// An extension that admits every pod unchanged: the cost of the call without a patch.
struct Noop;

#[async_trait]
impl Extension for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    async fn mutate(&self, _: &Context, _: &Request, _: &Pod) -> Result<Mutation, ExtensionError> {
        Ok(Mutation::unchanged())
    }
}

/// One measured variant.
struct Variant {
    label: &'static str,
    times: Vec<f64>,
    /// Connections the apiserver opened to the webhook during the variant.
    connections: Option<u64>,
    /// Mean time of the webhook call as the apiserver saw it, ms.
    apiserver_webhook_ms: Option<f64>,
    /// Mean time of the whole mutating admission step as the apiserver saw it, ms.
    apiserver_admit_ms: Option<f64>,
    /// Mean time the webhook server spent on a review, ms.
    server_ms: Option<f64>,
}

pub(crate) fn quantile(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Sum and count of a histogram in the apiserver's `/metrics`, over series matching all `labels`.
pub(crate) fn histogram(metrics: &str, name: &str, labels: &[&str]) -> (f64, f64) {
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !labels.iter().all(|l| series.contains(l)) {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with(&format!("{name}_sum{{")) {
            sum += value;
        } else if series.starts_with(&format!("{name}_count{{")) {
            count += value;
        }
    }
    (sum, count)
}

pub(crate) async fn apiserver_metrics(client: &kube::Client) -> anyhow::Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// Mean of a histogram's new observations between two scrapes, in ms.
fn mean_ms(before: &str, after: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let (s0, c0) = histogram(before, name, labels);
    let (s1, c1) = histogram(after, name, labels);
    (c1 > c0).then(|| (s1 - s0) / (c1 - c0) * 1e3)
}

async fn create_pods(api: &Api<Pod>, pod: &Pod, n: usize, tag: &str) -> anyhow::Result<Vec<f64>> {
    let mut pod = pod.clone();
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        pod.metadata.name = Some(format!("{tag}-{i}"));
        let t = Instant::now();
        api.create(&PostParams::default(), &pod).await?;
        if i >= 20 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// A manager serving on 127.0.0.1 (a free port, registered by URL) for the pods of `ns`, its
/// configuration named after `fingerprint`, its certificates in `sys`.
pub(crate) fn local_manager(
    fingerprint: &str,
    http2: bool,
    sys: &str,
    ns: &str,
) -> eirinix_core::ManagerBuilder {
    eirinix_core::Manager::builder()
        .fingerprint(fingerprint)
        .url_mode("127.0.0.1")
        .bind_address([127, 0, 0, 1].into())
        .port(0)
        .http2(http2)
        .webhook_namespace(sys)
        .namespace(ns)
}

/// `eirinix-bench apiserver-latency`: sequential creates of the Eirini app pod without a webhook,
/// with a webhook that changes nothing, with persi (HTTP/1.1 and HTTP/2), then without again.
pub async fn apiserver_latency(n: usize) -> anyhow::Result<()> {
    let cp = eirinix_testenv::ControlPlane::start().await?;
    let client = cp.client().await?;
    let sys = cp.namespace("bench-sys").await?;
    let mut pod: Pod = serde_json::from_value(pods::eirini_app_pod())?;
    pod.metadata.namespace = None;
    pod.metadata.owner_references = None;

    let mut variants = Vec::new();
    let (cp, pod) = (&cp, &pod);
    let plain = |label: &'static str| async move {
        let ns = cp.namespace(&format!("bench-{label}")).await?;
        let api: Api<Pod> = Api::namespaced(cp.client().await?, &ns);
        let before = apiserver_metrics(&cp.client().await?).await?;
        let times = create_pods(&api, pod, n, label).await?;
        let after = apiserver_metrics(&cp.client().await?).await?;
        Ok::<_, anyhow::Error>(Variant {
            label,
            times,
            connections: None,
            apiserver_webhook_ms: None,
            server_ms: None,
            apiserver_admit_ms: mean_ms(
                &before,
                &after,
                "apiserver_admission_step_admission_duration_seconds",
                &["type=\"admit\"", "operation=\"CREATE\""],
            ),
        })
    };
    variants.push(plain("without").await?);
    for (label, http2, persi) in [
        ("noop", false, false),
        ("persi", false, true),
        ("persi-h2", true, true),
    ] {
        let ns = cp.namespace(&format!("bench-{label}")).await?;
        let builder = local_manager(&format!("bench-{label}"), http2, &sys, &ns);
        let builder = if persi {
            builder.view_extension(eirinix_persi::Persi::new(
                eirinix_persi::PersiOptions::default(),
            ))
        } else {
            builder.extension(Noop)
        };
        let running = builder.build()?.start(client.clone()).await?;
        running
            .wait_ready(Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let accepted = running.metrics().connections().accepted();
        let before = apiserver_metrics(&client).await?;
        let times = create_pods(&api, pod, n, label).await?;
        let after = apiserver_metrics(&client).await?;
        let connections = running.metrics().connections().accepted() - accepted;
        let webhook = if persi { "persi." } else { "noop." };
        let server_ms = running
            .metrics()
            .extension_named(webhook.trim_end_matches('.'))
            .map(|m| m.total())
            .filter(|(count, _)| *count > 0)
            .map(|(count, sum)| sum.as_secs_f64() * 1e3 / count as f64);
        variants.push(Variant {
            label,
            times,
            connections: Some(connections),
            server_ms,
            apiserver_webhook_ms: mean_ms(
                &before,
                &after,
                "apiserver_admission_webhook_admission_duration_seconds",
                &[&format!("name=\"{webhook}"), "type=\"admit\""],
            ),
            apiserver_admit_ms: mean_ms(
                &before,
                &after,
                "apiserver_admission_step_admission_duration_seconds",
                &["type=\"admit\"", "operation=\"CREATE\""],
            ),
        });
        // Each variant has its own fingerprint (configuration) and namespace: nothing to undo.
        running.shutdown().await;
    }
    variants.push(plain("again").await?);

    let mut base: Vec<f64> = variants
        .iter()
        .filter(|v| v.connections.is_none())
        .flat_map(|v| v.times.iter().copied())
        .collect();
    base.sort_by(f64::total_cmp);
    let (b50, b99) = (quantile(&base, 0.5), quantile(&base, 0.99));
    println!(
        "| variant ({n} sequential creates) | p50 ms | p99 ms | added p50 ms | added p99 ms | apiserver: admission step, mean ms | apiserver: webhook call, mean ms | webhook server: review, mean ms | connections to the webhook |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for v in &variants {
        let (p50, p99) = (quantile(&v.times, 0.5), quantile(&v.times, 0.99));
        println!(
            "| {} | {p50:.2} | {p99:.2} | {:+.2} | {:+.2} | {} | {} | {} | {} |",
            v.label,
            p50 - b50,
            p99 - b99,
            opt(v.apiserver_admit_ms),
            opt(v.apiserver_webhook_ms),
            opt(v.server_ms),
            v.connections.map_or("-".to_owned(), |c| c.to_string()),
        );
    }
    Ok(())
}
