//! The logs service: sinks for the life of the process; while leading, pod watchers, one
//! follower per container, and periodic checkpoints.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use eirinix_core::Context;
use eirinix_core::leader::{LeaseLock, default_identity, run_while_leader};
use eirinix_core::options::Settings;
use eirinix_core::watcher::{PodEvent, PodWatcher, run_pod_watcher};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::BoundedBuffer;
use crate::checkpoint::{CheckpointStore, key, stream_key, uid_of};
use crate::cursor::{Cursor, Progress};
use crate::error::LogsError;
use crate::follower::{FollowEnd, Follower, FollowerConfig, PodView};
use crate::metrics::LogsMetrics;
use crate::options::LogsOptions;
use crate::record::{Origin, Stream};
use crate::sink::{Sink, SinkHandle, build_sink, spawn_sink};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the service works: which namespaces it watches, where its Lease and checkpoints live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Watched namespaces; empty means all.
    pub namespaces: Vec<String>,
    /// Namespace of the Lease and the checkpoint ConfigMaps.
    pub state_namespace: String,
}

impl Scope {
    /// The scope from the options, falling back to the manager's settings.
    pub fn resolve(options: &LogsOptions, settings: &Settings) -> Self {
        let namespaces = if options.namespaces.is_empty() {
            settings.namespace.iter().cloned().collect()
        } else {
            options.namespaces.clone()
        };
        let state_namespace = options
            .replicas
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| settings.webhook_namespace.clone());
        Scope {
            namespaces,
            state_namespace,
        }
    }
}

/// The logs extension as one runnable unit (what [`crate::install`] adds to a manager).
pub struct LogsService {
    options: Arc<LogsOptions>,
    sinks: Vec<(String, Box<dyn Sink>)>,
    metrics: Arc<LogsMetrics>,
}

impl LogsService {
    /// Validate `options` and build its sinks (reads TLS files).
    pub fn new(options: LogsOptions) -> Result<Self, LogsError> {
        options.validate()?;
        let sinks = options
            .sinks
            .iter()
            .map(|s| Ok((s.name(), build_sink(s)?)))
            .collect::<Result<Vec<_>, LogsError>>()?;
        Ok(Self::with_sinks(options, sinks))
    }

    /// A service sending to `sinks` instead of those in `options` (custom sinks, tests).
    pub fn with_sinks(options: LogsOptions, sinks: Vec<(String, Box<dyn Sink>)>) -> Self {
        LogsService {
            options: Arc::new(options),
            sinks,
            metrics: LogsMetrics::new(),
        }
    }

    /// The service's counters (Prometheus text with [`LogsMetrics::render`]).
    pub fn metrics(&self) -> Arc<LogsMetrics> {
        self.metrics.clone()
    }

    /// Run with the manager's context until `cancel` fires, then drain the sinks, write the last
    /// checkpoint and hand leadership over.
    pub async fn run_in(self, ctx: Context, cancel: CancellationToken) {
        let Ok(client) = ctx.client().cloned() else {
            tracing::error!("the logs extension needs a Kubernetes client");
            return;
        };
        let scope = Scope::resolve(&self.options, ctx.settings());
        self.run(client, scope, ctx.settings().clone(), cancel)
            .await;
    }

    /// Run until `cancel` fires (see [`LogsService::run_in`]).
    pub async fn run(
        self,
        client: kube::Client,
        scope: Scope,
        settings: Settings,
        cancel: CancellationToken,
    ) {
        let options = self.options.clone();
        let metrics = self.metrics.clone();
        let handles: Vec<SinkHandle> = self
            .sinks
            .into_iter()
            .enumerate()
            .map(|(i, (name, sink))| spawn_sink(name, i, sink, &options, &metrics))
            .collect();
        let outputs: Arc<[Arc<BoundedBuffer>]> = handles.iter().map(|h| h.buffer.clone()).collect();
        let sinks = Arc::new(SinkSet {
            handles: Mutex::new(handles),
        });
        let shared = Arc::new(Shared {
            client: client.clone(),
            options: options.clone(),
            scope: scope.clone(),
            settings,
            outputs,
            sinks: sinks.clone(),
            metrics: metrics.clone(),
        });
        tracing::info!(
            namespaces = ?scope.namespaces,
            state_namespace = %scope.state_namespace,
            sinks = ?metrics.sink_names(),
            "logs extension starting"
        );
        if options.replicas.leader_election {
            let identity = options
                .replicas
                .identity
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(default_identity);
            let lock = LeaseLock::new(
                client,
                &scope.state_namespace,
                &options.replicas.lease_name,
                identity,
            )
            .lease_duration(Duration::from_secs(options.replicas.lease_duration_secs));
            let outer = cancel.clone();
            run_while_leader(lock, cancel.clone(), None, move |token| {
                term(shared.clone(), token, outer.clone())
            })
            .await;
        } else {
            term(shared, cancel.clone(), cancel.clone()).await;
        }
        sinks.drain(Duration::from_secs(1)).await;
    }
}

/// What every part of the service shares.
struct Shared {
    client: kube::Client,
    options: Arc<LogsOptions>,
    scope: Scope,
    settings: Settings,
    outputs: Arc<[Arc<BoundedBuffer>]>,
    sinks: Arc<SinkSet>,
    metrics: Arc<LogsMetrics>,
}

/// The running sinks.
struct SinkSet {
    handles: Mutex<Vec<SinkHandle>>,
}

impl SinkSet {
    /// Forget everything buffered (lost leadership: the next leader re-reads it).
    fn discard(&self) {
        for h in lock(&self.handles).iter() {
            h.discard();
        }
    }

    /// Send what is buffered (up to `timeout`), then stop the sinks.
    async fn drain(&self, timeout: Duration) {
        let handles: Vec<SinkHandle> = std::mem::take(&mut *lock(&self.handles));
        futures::future::join_all(handles.into_iter().map(|h| h.drain(timeout))).await;
    }
}

/// One leadership term: everything that follows logs.
struct Term {
    shared: Arc<Shared>,
    pods: Mutex<HashMap<String, PodEntry>>,
    /// Containers followed now: their progress.
    progress: Mutex<HashMap<String, Arc<Progress>>>,
    /// Checkpointed positions of containers not followed (yet).
    resume: Mutex<HashMap<String, Cursor>>,
    followers: TaskTracker,
    cancel: CancellationToken,
    /// Follow stdout and stderr apart (until the apiserver refuses the `stream` parameter).
    split: std::sync::atomic::AtomicBool,
}

struct PodEntry {
    view: watch::Sender<Arc<PodView>>,
    followed: HashSet<String>,
}

impl Term {
    fn follower_config(&self) -> FollowerConfig {
        let o = &self.shared.options;
        FollowerConfig {
            max_line_bytes: o.max_line_bytes,
            deleted_grace: Duration::from_millis(o.pod_deleted_grace_ms),
            retry: (Duration::from_millis(200), Duration::from_secs(5)),
        }
    }

    fn on_event(self: &Arc<Self>, event: PodEvent) {
        match event {
            PodEvent::Added(pod) | PodEvent::Modified(pod) => self.on_pod(&pod),
            PodEvent::Deleted(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(entry) = lock(&self.pods).remove(&uid) {
                    entry.view.send_modify(|v| Arc::make_mut(v).deleted = true);
                }
                // Positions of containers that never started are not needed any more.
                lock(&self.resume).retain(|k, _| uid_of(k) != uid);
            }
        }
    }

    fn on_pod(self: &Arc<Self>, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let view = Arc::new(PodView::from_pod(pod));
        let mut pods = lock(&self.pods);
        let entry = pods.entry(uid.clone()).or_insert_with(|| PodEntry {
            view: watch::channel(view.clone()).0,
            followed: HashSet::new(),
        });
        entry.view.send_if_modified(|v| {
            if **v == *view {
                false
            } else {
                *v = view.clone();
                true
            }
        });
        for c in &view.containers {
            if entry.followed.contains(&c.name) || !view.has_log(&c.name) {
                continue;
            }
            entry.followed.insert(c.name.clone());
            self.spawn_follower(pod, &uid, &c.name, entry.view.subscribe());
        }
    }

    fn spawn_follower(
        self: &Arc<Self>,
        pod: &Pod,
        uid: &str,
        container: &str,
        view: watch::Receiver<Arc<PodView>>,
    ) {
        let origin = Arc::new(Origin::from_pod(pod, container));
        let term = self.clone();
        let uid = uid.to_owned();
        self.followers
            .spawn(async move { term.follow_container(origin, uid, view).await });
    }

    /// Follow one container: stdout and stderr apart where the apiserver offers it, else (or
    /// when it refuses) the merged log.
    async fn follow_container(
        self: Arc<Self>,
        origin: Arc<Origin>,
        uid: String,
        view: watch::Receiver<Arc<PodView>>,
    ) {
        use std::sync::atomic::Ordering;
        let c = origin.container.clone();
        let k = key(&uid, &c);
        // Where the merged log resumes if it is followed, and whether that position was written
        // by a follower of the merged log (a gap can only be told from an exact position).
        let mut merged_start: Option<(Option<Cursor>, bool)> = None;
        if self.split.load(Ordering::Relaxed) {
            let merged = lock(&self.resume).remove(&k);
            let mut own = false;
            let both = [Stream::Stdout, Stream::Stderr].map(|stream| {
                let sk = stream_key(&uid, &c, Some(stream));
                let (start, exact) = match lock(&self.resume).remove(&sk) {
                    Some(cursor) => {
                        own = true;
                        (Some(cursor), true)
                    }
                    // A checkpoint of the merged log (written before streams were split).
                    None => (merged, merged.is_none()),
                };
                let follower = self.follower(&uid, &origin, Some(stream), start, exact, &view);
                (sk, follower)
            });
            let split = self.cancel.child_token();
            let run = |(sk, follower): (String, Follower)| {
                let split = split.clone();
                let term = self.clone();
                async move {
                    let end = follower.run(split.clone()).await;
                    match end {
                        FollowEnd::SplitUnsupported => split.cancel(),
                        FollowEnd::PodDeleted => {
                            lock(&term.progress).remove(&sk);
                        }
                        FollowEnd::Cancelled => {}
                    }
                    (sk, end)
                }
            };
            let [out, err] = both;
            let (out, err) = tokio::join!(run(out), run(err));
            let refused = [&out, &err]
                .iter()
                .any(|(_, end)| *end == FollowEnd::SplitUnsupported);
            if !refused || self.cancel.is_cancelled() {
                return;
            }
            if self.split.swap(false, Ordering::Relaxed) {
                self.shared
                    .metrics
                    .split_streams
                    .store(0, Ordering::Relaxed);
                tracing::warn!(
                    "the apiserver does not offer stdout and stderr apart (feature \
                     PodLogsQuerySplitStreams): following the merged logs, stream unknown"
                );
            }
            // Resume the merged log where the streams were (the earlier of the two).
            let streams = [out.0, err.0]
                .iter()
                .filter_map(|sk| lock(&self.progress).remove(sk)?.checkpoint())
                .min();
            merged_start = Some(if own {
                (streams, streams.is_none())
            } else {
                (merged, true)
            });
        }
        let (start, exact) = merged_start.unwrap_or_else(|| {
            let mut resume = lock(&self.resume);
            match resume.remove(&k) {
                Some(cursor) => (Some(cursor), true),
                // Checkpoints of split streams (the apiserver no longer offers them): the earlier.
                None => {
                    let start = [Stream::Stdout, Stream::Stderr]
                        .iter()
                        .filter_map(|s| resume.remove(&stream_key(&uid, &c, Some(*s))))
                        .min();
                    (start, start.is_none())
                }
            }
        });
        let follower = self.follower(&uid, &origin, None, start, exact, &view);
        if follower.run(self.cancel.clone()).await == FollowEnd::PodDeleted {
            lock(&self.progress).remove(&k);
        }
    }

    /// A follower of one output of `origin` (`None`: merged) starting after `start`, its
    /// progress registered for the checkpoints.
    fn follower(
        &self,
        uid: &str,
        origin: &Arc<Origin>,
        stream: Option<Stream>,
        start: Option<Cursor>,
        exact: bool,
        view: &watch::Receiver<Arc<PodView>>,
    ) -> Follower {
        let k = stream_key(uid, &origin.container, stream);
        let progress = Progress::new(self.shared.outputs.len(), start);
        lock(&self.progress).insert(k, progress.clone());
        tracing::debug!(
            namespace = %origin.namespace, pod = %origin.pod, container = %origin.container,
            ?stream, resume = ?start.map(|c| c.encode()),
            "following container"
        );
        let follower = Follower::new(
            self.shared.client.clone(),
            origin.clone(),
            view.clone(),
            self.shared.outputs.clone(),
            start,
            progress,
            self.shared.metrics.clone(),
            self.follower_config(),
        )
        .with_stream(stream);
        if exact {
            follower
        } else {
            follower.inexact_start()
        }
    }

    /// Current positions: delivered by every sink for followed containers, else as loaded.
    fn cursors(&self) -> HashMap<String, Cursor> {
        let mut all = lock(&self.resume).clone();
        for (k, p) in lock(&self.progress).iter() {
            if let Some(c) = p.checkpoint() {
                all.insert(k.clone(), c);
            }
        }
        all
    }
}

/// Delivers pod events of one term.
struct TermWatcher {
    term: Arc<Term>,
    selector: String,
}

#[async_trait]
impl PodWatcher for TermWatcher {
    fn name(&self) -> &str {
        "logs"
    }

    fn config(&self, _settings: &Settings) -> watcher::Config {
        eirinix_core::watcher::pod_watch_config().labels(&self.selector)
    }

    async fn on_event(&self, _ctx: &Context, event: PodEvent) {
        self.term.on_event(event);
    }
}

/// Load checkpoints, retrying until it works or the term ends.
async fn load_checkpoints(
    store: &mut CheckpointStore,
    cancel: &CancellationToken,
) -> Option<HashMap<String, Cursor>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.load().await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(error = %e, "reading checkpoints failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Drop checkpoints of pods that no longer exist (deleted while no leader ran).
async fn prune(shared: &Shared, cursors: &mut HashMap<String, Cursor>) {
    if cursors.is_empty() {
        return;
    }
    let lp = ListParams::default().labels(&shared.options.label_selector);
    let mut uids = HashSet::new();
    let apis: Vec<Api<Pod>> = if shared.scope.namespaces.is_empty() {
        vec![Api::all(shared.client.clone())]
    } else {
        shared
            .scope
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(shared.client.clone(), ns))
            .collect()
    };
    for api in apis {
        match api.list_metadata(&lp).await {
            Ok(list) => uids.extend(list.items.into_iter().filter_map(|p| p.metadata.uid)),
            // Keep everything when in doubt.
            Err(e) => {
                tracing::debug!(error = %e, "listing pods to prune checkpoints failed");
                return;
            }
        }
    }
    cursors.retain(|k, _| uids.contains(uid_of(k)));
}

async fn term(shared: Arc<Shared>, token: CancellationToken, shutdown: CancellationToken) {
    use std::sync::atomic::Ordering;
    let o = &shared.options;
    let mut store = CheckpointStore::new(
        shared.client.clone(),
        &shared.scope.state_namespace,
        &o.replicas.checkpoint_name,
        o.replicas.checkpoint_shards,
    );
    shared.metrics.leader.store(1, Ordering::Relaxed);
    let Some(mut loaded) = load_checkpoints(&mut store, &token).await else {
        shared.metrics.leader.store(0, Ordering::Relaxed);
        return;
    };
    prune(&shared, &mut loaded).await;
    tracing::info!(checkpoints = loaded.len(), "leading: following app logs");
    let term = Arc::new(Term {
        shared: shared.clone(),
        pods: Mutex::new(HashMap::new()),
        progress: Mutex::new(HashMap::new()),
        resume: Mutex::new(loaded),
        followers: TaskTracker::new(),
        cancel: token.child_token(),
        split: std::sync::atomic::AtomicBool::new(o.split_streams),
    });
    shared
        .metrics
        .split_streams
        .store(i64::from(o.split_streams), Ordering::Relaxed);

    // Pod watchers: one per namespace (or one for all).
    let watch_cancel = token.child_token();
    let core_metrics = Arc::new(eirinix_core::metrics::Metrics::new(std::iter::empty()));
    let watcher: Arc<dyn PodWatcher> = Arc::new(TermWatcher {
        term: term.clone(),
        selector: o.label_selector.clone(),
    });
    let scopes: Vec<Option<String>> = if shared.scope.namespaces.is_empty() {
        vec![None]
    } else {
        shared.scope.namespaces.iter().cloned().map(Some).collect()
    };
    let mut watchers = Vec::new();
    for ns in scopes {
        let mut settings = shared.settings.clone();
        settings.namespace = ns;
        let ctx = Context::new(shared.client.clone(), Arc::new(settings));
        watchers.push(tokio::spawn(run_pod_watcher(
            watcher.clone(),
            ctx,
            core_metrics.clone(),
            watch_cancel.clone(),
        )));
    }

    // Checkpoints, periodically.
    let interval = Duration::from_millis(o.replicas.checkpoint_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = token.cancelled() => break,
        }
        save(&mut store, &term, &shared.metrics).await;
    }

    // End of the term: stop watching and following.
    watch_cancel.cancel();
    term.cancel.cancel();
    term.followers.close();
    for w in watchers {
        let _ = w.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), term.followers.wait()).await;
    if shutdown.is_cancelled() {
        // Shutdown: deliver what is buffered, record where we are, then hand over.
        shared
            .sinks
            .drain(Duration::from_millis(o.drain_timeout_ms))
            .await;
        for _ in 0..3 {
            if save(&mut store, &term, &shared.metrics).await {
                break;
            }
        }
        tracing::info!("logs extension stopped; final checkpoint written");
    } else {
        // Lost leadership: the next leader resumes from the last checkpoint.
        shared.sinks.discard();
        tracing::warn!(
            "lost leadership: stopped following; buffered lines are left to the next leader"
        );
    }
    lock(&term.pods).clear();
    shared.metrics.leader.store(0, Ordering::Relaxed);
}

async fn save(store: &mut CheckpointStore, term: &Term, metrics: &LogsMetrics) -> bool {
    use std::sync::atomic::Ordering;
    match store.save(&term.cursors()).await {
        Ok(n) => {
            metrics
                .checkpoints_written
                .fetch_add(n as u64, Ordering::Relaxed);
            true
        }
        Err(e) => {
            metrics.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "writing checkpoints failed");
            false
        }
    }
}
