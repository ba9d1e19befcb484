//! Shared helpers of the end-to-end tests: app pods, managers on random ports, polling.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use eirinix_core::certs::CertBundle;
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, Manager, ManagerBuilder, Mutation, PodPatch,
    Request, RunningManager, async_trait,
};
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::core::v1::{EnvVar, Namespace, Pod, Secret};
use kube::api::{Api, ObjectMeta, PostParams};

#[allow(unused_imports)] // Not every test binary uses every helper.
pub use eirinix_testenv::support::{eventually, eventually_every, init_tracing};

/// The shared control plane of this test binary, with test logging on.
pub async fn plane() -> &'static ControlPlane {
    init_tracing();
    ControlPlane::shared()
        .await
        .expect("control plane (see eirinix-testenv README)")
}

/// What most tests start from: an admin client of the shared plane, a fresh webhook ("system")
/// namespace and app namespace named after `ns_prefix`, and a fresh fingerprint after `fp_prefix`.
pub async fn setup(ns_prefix: &str, fp_prefix: &str) -> (kube::Client, String, String, String) {
    let cp = plane().await;
    let client = cp.client().await.unwrap();
    let (sys, ns) = namespaces(cp, ns_prefix).await;
    let fp = unique_name(fp_prefix);
    (client, sys, ns, fp)
}

/// The extension used to test the framework: STICKY_MESSAGE in every container, once.
pub struct Sticky;

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
        if PodPatch::is_marked(pod, self.name()) {
            return Ok(Mutation::unchanged());
        }
        let env = EnvVar {
            name: "STICKY_MESSAGE".into(),
            value: Some("hello".into()),
            ..Default::default()
        };
        let mut p = PodPatch::new(pod);
        for i in 0..pod.spec.as_ref().map_or(0, |s| s.containers.len()) {
            p.add_env(ContainerRef::App(i), &env)?;
        }
        p.mark(self.name());
        Ok(Mutation::patch(p.build()))
    }
}

/// An Eirini-shaped app pod (StatefulSet-style name and the cloudfoundry.org labels).
pub fn app_pod(name: &str) -> Pod {
    let labels = BTreeMap::from([
        ("cloudfoundry.org/source_type".to_owned(), "APP".to_owned()),
        (
            "cloudfoundry.org/guid".to_owned(),
            "4e7c8f2a-app".to_owned(),
        ),
        (
            "cloudfoundry.org/app_guid".to_owned(),
            "4e7c8f2a-app".to_owned(),
        ),
        ("cloudfoundry.org/version".to_owned(), "v1".to_owned()),
        ("cloudfoundry.org/process_type".to_owned(), "web".to_owned()),
    ]);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "opi", "image": "eirini/app:1", "env": [{"name": "PORT", "value": "8080"}]}]}
    }))
    .expect("valid pod")
}

/// A pod without the app label.
pub fn plain_pod(name: &str) -> Pod {
    let mut pod = app_pod(name);
    pod.metadata.labels = None;
    pod
}

/// The STICKY_MESSAGE value of the first container, if injected.
pub fn sticky(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "STICKY_MESSAGE")
        .and_then(|e| e.value.clone())
}

/// Create namespace `name` with `labels`.
pub async fn labelled_namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
}

/// A fresh webhook ("system") namespace and a fresh app namespace.
pub async fn namespaces(cp: &eirinix_testenv::ControlPlane, prefix: &str) -> (String, String) {
    let system = cp
        .namespace(&format!("{prefix}-sys"))
        .await
        .expect("namespace");
    let apps = cp
        .namespace(&format!("{prefix}-apps"))
        .await
        .expect("namespace");
    (system, apps)
}

/// A manager in URL mode on a random loopback port, its Secret in `system`, mutating pods in `apps`.
pub fn manager(fingerprint: &str, system: &str, apps: &str) -> ManagerBuilder {
    Manager::builder()
        .fingerprint(fingerprint)
        .url_mode("127.0.0.1")
        .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(0)
        .webhook_namespace(system)
        .namespace(apps)
        .repair_interval(Duration::from_millis(500))
        .cert_check_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(2))
}

/// Start `builder` with the [`Sticky`] extension.
pub async fn start_sticky(builder: ManagerBuilder, client: &kube::Client) -> RunningManager {
    builder
        .extension(Sticky)
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap()
}

/// [`start_sticky`], then wait (10 s at most) until it is ready.
pub async fn start_ready(builder: ManagerBuilder, client: &kube::Client) -> RunningManager {
    let running = start_sticky(builder, client).await;
    running.wait_ready(Duration::from_secs(10)).await.unwrap();
    running
}

/// Create `pod` in namespace `ns`; it must be admitted.
pub async fn admit(client: &kube::Client, ns: &str, pod: &Pod) -> Pod {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), pod)
        .await
        .unwrap()
}

/// The certificate Secret of the manager with fingerprint `fp`.
pub fn secret_name(fp: &str) -> String {
    format!("{fp}-setupcertificate")
}

/// The MutatingWebhookConfiguration of the manager with fingerprint `fp`.
pub fn config_name(fp: &str) -> String {
    format!("{fp}-mutating-hook")
}

/// The certificates stored in a certificate Secret.
pub fn bundle_of(secret: &Secret) -> CertBundle {
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .as_ref()
        .expect("secret data")
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    CertBundle::from_secret_data(&data).expect("a valid certificate secret")
}

/// The certificates stored in the Secret of fingerprint `fp` in namespace `sys`.
pub async fn stored_bundle(client: &kube::Client, sys: &str, fp: &str) -> CertBundle {
    bundle_of(
        &Api::<Secret>::namespaced(client.clone(), sys)
            .get(&secret_name(fp))
            .await
            .unwrap(),
    )
}

/// `Some` when the caBundle registered for fingerprint `fp` is `want` (for polling).
pub async fn ca_bundle_is(client: &kube::Client, fp: &str, want: &str) -> Option<()> {
    (registered_ca_bundle(client, &config_name(fp)).await? == want).then_some(())
}

/// A [`Load`] of 2 workers (pods `<prefix>-…` in `ns`) and a [`HandshakeProbe`] of `addrs`
/// every `period` against the caBundle of fingerprint `fp`, on the load's clock.
pub fn load_and_probe(
    client: &kube::Client,
    ns: &str,
    prefix: &str,
    fp: &str,
    addrs: Vec<std::net::SocketAddr>,
    period: Duration,
) -> (Load, HandshakeProbe) {
    let load = Load::start(client, ns, prefix, 2);
    let probe = HandshakeProbe::start(client, &config_name(fp), addrs, period, load.started());
    (load, probe)
}

/// After `wait`, delete the certificate Secret of fingerprint `fp`; when that started, on the
/// clock of `load`.
pub async fn delete_secret_after(
    wait: Duration,
    load: &Load,
    secrets: &Api<Secret>,
    fp: &str,
) -> Duration {
    tokio::time::sleep(wait).await;
    let deleted_at = load.elapsed();
    secrets
        .delete(&secret_name(fp), &kube::api::DeleteParams::default())
        .await
        .unwrap();
    deleted_at
}

/// Let a [`load_and_probe`] pair run for `run`, then stop both: what the load and the probe saw.
pub async fn run_for(
    run: Duration,
    (load, probe): (Load, HandshakeProbe),
) -> (LoadReport, LoadReport) {
    tokio::time::sleep(run).await;
    (load.stop().await, probe.stop().await)
}

// ---------------------------------------------------------------------------------------------
// Continuous pod creation, for fault tests: every attempt is timed and classified.

/// One pod creation by [`Load`]: when it started and ended (since the load started) and why it
/// failed, if it did (an error, or admitted without the sticky mutation).
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Start, since the load started.
    pub start: Duration,
    /// End, since the load started.
    pub end: Duration,
    /// `None` when created and mutated.
    pub failure: Option<String>,
}

/// Workers creating Eirini app pods back to back until stopped.
pub struct Load {
    started: tokio::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Attempt>>>,
}

impl Load {
    /// Start `workers` workers creating pods named `<prefix>-<worker>-<n>` in `namespace`.
    pub fn start(client: &kube::Client, namespace: &str, prefix: &str, workers: usize) -> Load {
        use std::sync::atomic::Ordering;
        let started = tokio::time::Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let (stop, prefix) = (stop.clone(), prefix.to_owned());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let start = started.elapsed();
                        let name = format!("{prefix}-{w}-{i}");
                        let result = tokio::time::timeout(
                            Duration::from_secs(20),
                            pods.create(&PostParams::default(), &app_pod(&name)),
                        )
                        .await;
                        let failure = match result {
                            Ok(Ok(p)) if sticky(&p).is_some() => None,
                            Ok(Ok(_)) => Some(format!("{name} admitted unmutated")),
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(_) => Some(format!("{name}: no answer within 20 s")),
                        };
                        let failed = failure.is_some();
                        out.push(Attempt {
                            start,
                            end: started.elapsed(),
                            failure,
                        });
                        i += 1;
                        if failed {
                            // Failures come back fast (connection refused): sample, don't spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    out
                })
            })
            .collect();
        Load {
            started,
            stop,
            workers,
        }
    }

    /// Time since the load started (the clock of [`Attempt`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop and collect every attempt, ordered by start.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut attempts = Vec::new();
        for w in self.workers {
            attempts.extend(w.await.expect("load worker"));
        }
        attempts.sort_by_key(|a| a.start);
        LoadReport { attempts }
    }
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    /// Every attempt, ordered by start.
    pub attempts: Vec<Attempt>,
}

impl LoadReport {
    /// Attempts that failed.
    pub fn failures(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.failure.is_some())
            .collect()
    }

    /// Number of pods created and mutated.
    pub fn succeeded(&self) -> usize {
        self.attempts.len() - self.failures().len()
    }

    /// From the start of the first failed attempt to the end of the last one, if any failed.
    pub fn failure_window(&self) -> Option<(Duration, Duration)> {
        let f = self.failures();
        Some((f.first()?.start, f.iter().map(|a| a.end).max()?))
    }

    /// Failed attempts that started in `[from, to)`, and the span from the first one's start to
    /// the last one's end.
    pub fn failures_between(&self, from: Duration, to: Duration) -> (usize, Duration) {
        let f: Vec<&Attempt> = self
            .failures()
            .into_iter()
            .filter(|a| a.start >= from && a.start < to)
            .collect();
        let span = match (f.first(), f.iter().map(|a| a.end).max()) {
            (Some(first), Some(end)) => end - first.start,
            _ => Duration::ZERO,
        };
        (f.len(), span)
    }

    /// Successful attempts that started at or after `t`.
    pub fn succeeded_after(&self, t: Duration) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.failure.is_none() && a.start >= t)
            .count()
    }

    /// A one-line summary for test output.
    pub fn summary(&self) -> String {
        let f = self.failures();
        let window = self
            .failure_window()
            .map(|(a, b)| format!("failures from {a:?} to {b:?} ({:?})", b - a))
            .unwrap_or_else(|| "no failure".into());
        // The first line of each of the first errors, shortened (kube repeats the status).
        let sample: Vec<String> = f
            .iter()
            .take(2)
            .filter_map(|a| a.failure.as_deref())
            .map(|e| e.chars().take(240).collect())
            .collect();
        format!(
            "{} attempts, {} ok, {} failed; {window}; first errors: {sample:?}",
            self.attempts.len(),
            self.succeeded(),
            f.len()
        )
    }
}

/// Run `fut`, failing the test if it takes longer than `limit`.
pub async fn bounded<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// The client configuration of the first webhook of configuration `name`, if it exists.
async fn registered_client_config(
    client: &kube::Client,
    name: &str,
) -> Option<k8s_openapi::api::admissionregistration::v1::WebhookClientConfig> {
    let cfg =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            client.clone(),
        )
        .get_opt(name)
        .await
        .ok()??;
    cfg.webhooks?.into_iter().next().map(|w| w.client_config)
}

/// The caBundle (PEM) of the first webhook of configuration `name`, if it exists.
pub async fn registered_ca_bundle(client: &kube::Client, name: &str) -> Option<String> {
    let bundle = registered_client_config(client, name).await?.ca_bundle?;
    Some(String::from_utf8_lossy(&bundle.0).into_owned())
}

/// The URL of the first webhook of configuration `name`, if it exists.
pub async fn registered_url(client: &kube::Client, name: &str) -> Option<String> {
    registered_client_config(client, name).await?.url
}

/// Fresh TLS handshakes, as a new apiserver connection would make them: every `period`, read the
/// caBundle registered in configuration `config` and handshake with each address, verifying the
/// served chain against it. Load through the apiserver reuses established connections (which
/// keep the certificate they were opened with), so it cannot see a caBundle that no longer
/// trusts what is served; this can.
pub struct HandshakeProbe {
    started: tokio::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Attempt>>,
}

impl HandshakeProbe {
    /// Start probing `addrs` (served for `server_name`) with the caBundle of `config`; the
    /// clock of the recorded attempts starts at `started` (use the [`Load`]'s).
    pub fn start(
        client: &kube::Client,
        config: &str,
        addrs: Vec<std::net::SocketAddr>,
        period: Duration,
        started: tokio::time::Instant,
    ) -> HandshakeProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, config, flag) = (client.clone(), config.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let start = started.elapsed();
                let ca = registered_ca_bundle(&client, &config).await;
                for addr in &addrs {
                    let failure = match &ca {
                        None => Some("no caBundle registered".to_owned()),
                        Some(ca) => eirinix_core::server::self_handshake(*addr, "127.0.0.1", ca)
                            .await
                            .err(),
                    };
                    out.push(Attempt {
                        start,
                        end: started.elapsed(),
                        failure,
                    });
                }
                tokio::time::sleep(period).await;
            }
            out
        });
        HandshakeProbe {
            started,
            stop,
            task,
        }
    }

    /// Time since the probe's clock started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop and collect every handshake attempt.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut attempts = self.task.await.expect("handshake probe");
        attempts.sort_by_key(|a| a.start);
        LoadReport { attempts }
    }
}

impl Load {
    /// The instant the load started (the clock of its attempts).
    pub fn started(&self) -> tokio::time::Instant {
        self.started
    }
}
