//! One term of following (of the leader, or of a member of the sharded replicas): what every
//! part of the service shares, the pods and followers of the term, its pod watchers, and loading
//! and saving its checkpoints. The service runs terms; the sharded replicas run member terms.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use eirinix_core::Context;
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
use crate::follower::{FollowEnd, Follower, FollowerConfig, PodView};
use crate::metrics::LogsMetrics;
use crate::options::LogsOptions;
use crate::ownership::Ownership;
use crate::record::{Origin, Stream};
use crate::sink::SinkHandle;

/// Lock `m`, taking over the data of a poisoned lock instead of panicking.
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

/// What every part of the service shares.
pub(crate) struct Shared {
    pub(crate) client: kube::Client,
    pub(crate) options: Arc<LogsOptions>,
    pub(crate) scope: Scope,
    pub(crate) settings: Settings,
    pub(crate) outputs: Arc<[Arc<BoundedBuffer>]>,
    pub(crate) sinks: Arc<SinkSet>,
    pub(crate) metrics: Arc<LogsMetrics>,
}

/// The running sinks.
pub(crate) struct SinkSet {
    handles: Mutex<Vec<SinkHandle>>,
}

impl SinkSet {
    /// The sinks of `handles`, running.
    pub(crate) fn new(handles: Vec<SinkHandle>) -> Self {
        SinkSet {
            handles: Mutex::new(handles),
        }
    }

    /// Forget everything buffered (lost leadership: the next leader re-reads it).
    pub(crate) fn discard(&self) {
        for h in lock(&self.handles).iter() {
            h.discard();
        }
    }

    /// Send what is buffered (up to `timeout`), then stop the sinks.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let handles: Vec<SinkHandle> = std::mem::take(&mut *lock(&self.handles));
        futures::future::join_all(handles.into_iter().map(|h| h.drain(timeout))).await;
    }
}

/// One term (of the leader, or of a member of the sharded replicas): everything that follows
/// logs.
pub(crate) struct Term {
    pub(crate) shared: Arc<Shared>,
    /// Which pods this term may follow. Locked before `pods` when both are needed.
    ownership: Mutex<Ownership>,
    pods: Mutex<HashMap<String, PodEntry>>,
    /// Containers followed now: their progress.
    progress: Mutex<HashMap<String, Arc<Progress>>>,
    /// Checkpointed positions of containers not followed (yet).
    pub(crate) resume: Mutex<HashMap<String, Cursor>>,
    /// Positions of containers another member owns, kept in this member's checkpoints until
    /// that member has them (sharded replicas only).
    pub(crate) foreign: Mutex<HashMap<String, Cursor>>,
    followers: TaskTracker,
    cancel: CancellationToken,
    /// Follow stdout and stderr apart (until the apiserver refuses the `stream` parameter).
    split: std::sync::atomic::AtomicBool,
}

struct PodEntry {
    view: watch::Sender<Arc<PodView>>,
    followed: HashSet<String>,
    /// The pod's identity for its records (the container is set per follower).
    origin: Arc<Origin>,
    /// Stops this pod's followers (a hand-over to another member).
    cancel: CancellationToken,
    /// This pod's followers.
    tasks: TaskTracker,
}

/// The followers a member stopped, to be waited for before handing their pods over.
pub(crate) struct Released {
    tasks: Vec<TaskTracker>,
}

impl Term {
    /// A new term of `shared`, resuming from `resume`, following what `ownership` allows.
    pub(crate) fn new(
        shared: Arc<Shared>,
        resume: HashMap<String, Cursor>,
        ownership: Ownership,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let split = shared.options.split_streams;
        shared
            .metrics
            .split_streams
            .store(i64::from(split), std::sync::atomic::Ordering::Relaxed);
        Arc::new(Term {
            shared,
            ownership: Mutex::new(ownership),
            pods: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            resume: Mutex::new(resume),
            foreign: Mutex::new(HashMap::new()),
            followers: TaskTracker::new(),
            cancel,
            split: std::sync::atomic::AtomicBool::new(split),
        })
    }

    /// The current ownership.
    pub(crate) fn ownership(&self) -> Ownership {
        lock(&self.ownership).clone()
    }

    /// Number of pods followed now.
    pub(crate) fn followed_pods(&self) -> usize {
        lock(&self.pods)
            .values()
            .filter(|e| !e.followed.is_empty())
            .count()
    }

    /// Narrow (or widen) what this term follows: the followers of pods it may no longer follow
    /// are stopped (returned, to be drained with [`Term::hand_over`]); with `spawn`, pods it
    /// may now follow are followed.
    pub(crate) fn set_ownership(self: &Arc<Self>, ownership: Ownership, spawn: bool) -> Released {
        let mut own = lock(&self.ownership);
        *own = ownership;
        let mut pods = lock(&self.pods);
        let mut released = Released { tasks: Vec::new() };
        for (uid, entry) in pods.iter_mut() {
            if own.may_follow(uid) {
                if spawn {
                    self.spawn_ready(uid, entry);
                }
                continue;
            }
            if entry.followed.is_empty() {
                continue;
            }
            entry.cancel.cancel();
            entry.tasks.close();
            released.tasks.push(std::mem::take(&mut entry.tasks));
            entry.cancel = self.cancel.child_token();
            entry.followed.clear();
        }
        released
    }

    /// After [`Term::set_ownership`]: wait until the stopped followers ended and the sinks
    /// delivered everything they read (unless `cancel` fires first: then `false`), and move
    /// the positions of every pod this term may no longer follow to the foreign positions.
    pub(crate) async fn hand_over(&self, released: Released, cancel: &CancellationToken) -> bool {
        for t in &released.tasks {
            tokio::select! {
                _ = t.wait() => {}
                _ = cancel.cancelled() => return false,
            }
        }
        let own = self.ownership();
        loop {
            let pending = lock(&self.progress)
                .iter()
                .any(|(k, p)| !own.may_follow(uid_of(k)) && !p.drained());
            if !pending {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = cancel.cancelled() => return false,
            }
        }
        let mut moved: Vec<(String, Cursor)> = Vec::new();
        lock(&self.progress).retain(|k, p| {
            if own.may_follow(uid_of(k)) {
                return true;
            }
            if let Some(c) = p.checkpoint() {
                moved.push((k.clone(), c));
            }
            false
        });
        lock(&self.resume).retain(|k, c| {
            if own.may_follow(uid_of(k)) {
                return true;
            }
            moved.push((k.clone(), *c));
            false
        });
        let mut foreign = lock(&self.foreign);
        for (k, c) in moved {
            let e = foreign.entry(k).or_insert(c);
            *e = (*e).max(c);
        }
        true
    }

    /// Replace the foreign positions (a member's own pages, loaded at the start of its term).
    pub(crate) fn set_foreign(&self, positions: HashMap<String, Cursor>) {
        *lock(&self.foreign) = positions;
    }

    /// Number of foreign positions held.
    pub(crate) fn foreign_len(&self) -> usize {
        lock(&self.foreign).len()
    }

    /// Keep the foreign positions whose key satisfies `keep`.
    pub(crate) fn retain_foreign(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.foreign).retain(|k, _| keep(k));
    }

    /// Keep the foreign positions for which `keep(key, position)` holds.
    pub(crate) fn retain_foreign_cursors(&self, keep: impl Fn(&str, &Cursor) -> bool) {
        lock(&self.foreign).retain(|k, c| keep(k, c));
    }

    /// Take over `positions` (of pods this member now owns): they resume from there, unless
    /// followed already; a foreign position of the same key is theirs now.
    pub(crate) fn adopt(&self, positions: HashMap<String, Cursor>) {
        let progress = lock(&self.progress);
        let mut resume = lock(&self.resume);
        let mut foreign = lock(&self.foreign);
        for (k, c) in positions {
            let c = foreign.remove(&k).map_or(c, |f| f.max(c));
            if progress.contains_key(&k) {
                continue;
            }
            let e = resume.entry(k).or_insert(c);
            *e = (*e).max(c);
        }
    }

    /// Stop following everything (end of the term).
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
        self.followers.close();
    }

    /// Wait (at most `timeout`) for every follower to end.
    pub(crate) async fn wait_followers(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.followers.wait()).await;
    }

    /// Forget every pod (end of the term).
    pub(crate) fn clear(&self) {
        lock(&self.pods).clear();
    }

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
                lock(&self.foreign).retain(|k, _| uid_of(k) != uid);
            }
        }
    }

    fn on_pod(self: &Arc<Self>, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let view = Arc::new(PodView::from_pod(pod));
        let own = lock(&self.ownership);
        let mut pods = lock(&self.pods);
        let entry = pods.entry(uid.clone()).or_insert_with(|| PodEntry {
            view: watch::channel(view.clone()).0,
            followed: HashSet::new(),
            origin: Arc::new(Origin::from_pod(pod, "")),
            cancel: self.cancel.child_token(),
            tasks: TaskTracker::new(),
        });
        entry.view.send_if_modified(|v| {
            if **v == *view {
                false
            } else {
                *v = view.clone();
                true
            }
        });
        if own.may_follow(&uid) {
            self.spawn_ready(&uid, entry);
        }
    }

    /// Follow every container of the pod that has a log and is not followed yet.
    fn spawn_ready(self: &Arc<Self>, uid: &str, entry: &mut PodEntry) {
        let view = entry.view.borrow().clone();
        for c in &view.containers {
            if entry.followed.contains(&c.name) || !view.has_log(&c.name) {
                continue;
            }
            entry.followed.insert(c.name.clone());
            let origin = Arc::new(Origin {
                container: c.name.clone(),
                ..(*entry.origin).clone()
            });
            let term = self.clone();
            let uid = uid.to_owned();
            let rx = entry.view.subscribe();
            let cancel = entry.cancel.clone();
            self.followers.spawn(
                entry.tasks.track_future(async move {
                    term.follow_container(origin, uid, rx, cancel).await
                }),
            );
        }
    }

    /// Follow one container: stdout and stderr apart where the apiserver offers it, else (or
    /// when it refuses) the merged log.
    async fn follow_container(
        self: Arc<Self>,
        origin: Arc<Origin>,
        uid: String,
        view: watch::Receiver<Arc<PodView>>,
        cancel: CancellationToken,
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
            let split = cancel.child_token();
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
            if !refused || cancel.is_cancelled() {
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
        if follower.run(cancel).await == FollowEnd::PodDeleted {
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

    /// Current positions: delivered by every sink for followed containers, else as loaded
    /// (and those kept for other members).
    pub(crate) fn cursors(&self) -> HashMap<String, Cursor> {
        let mut all = lock(&self.foreign).clone();
        all.extend(lock(&self.resume).iter().map(|(k, c)| (k.clone(), *c)));
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
pub(crate) async fn load_checkpoints(
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
pub(crate) async fn prune(shared: &Shared, cursors: &mut HashMap<String, Cursor>) {
    if cursors.is_empty() {
        return;
    }
    if let Some(uids) = existing_uids(shared).await {
        cursors.retain(|k, _| uids.contains(uid_of(k)));
    }
}

/// The UIDs of the pods the service follows (listed in pages, metadata only); `None` when the
/// list failed (keep everything when in doubt).
pub(crate) async fn existing_uids(shared: &Shared) -> Option<HashSet<String>> {
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
        let mut lp = ListParams::default()
            .labels(&shared.options.label_selector)
            .limit(2_000);
        loop {
            match api.list_metadata(&lp).await {
                Ok(list) => {
                    uids.extend(list.items.into_iter().filter_map(|p| p.metadata.uid));
                    match list.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => lp = lp.continue_token(&token),
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "listing pods to prune checkpoints failed");
                    return None;
                }
            }
        }
    }
    Some(uids)
}

/// The pod watchers of one term: one per namespace (or one for all).
pub(crate) struct Watchers {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watchers {
    /// Start watching the pods of the scope for `term`.
    pub(crate) fn start(shared: &Shared, term: &Arc<Term>, token: &CancellationToken) -> Self {
        let cancel = token.child_token();
        let core_metrics = Arc::new(eirinix_core::metrics::Metrics::new(std::iter::empty()));
        let watcher: Arc<dyn PodWatcher> = Arc::new(TermWatcher {
            term: term.clone(),
            selector: shared.options.label_selector.clone(),
        });
        let scopes: Vec<Option<String>> = if shared.scope.namespaces.is_empty() {
            vec![None]
        } else {
            shared.scope.namespaces.iter().cloned().map(Some).collect()
        };
        let mut tasks = Vec::new();
        for ns in scopes {
            let mut settings = shared.settings.clone();
            settings.namespace = ns;
            let ctx = Context::new(shared.client.clone(), Arc::new(settings));
            tasks.push(tokio::spawn(run_pod_watcher(
                watcher.clone(),
                ctx,
                core_metrics.clone(),
                cancel.clone(),
            )));
        }
        Watchers { cancel, tasks }
    }

    /// Stop watching.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        for w in self.tasks {
            let _ = w.await;
        }
    }
}

/// End of a term: stop watching and following; at shutdown deliver what is buffered and write
/// the last checkpoint, else (lost the Lease) forget what is buffered.
pub(crate) async fn end_term(
    shared: &Shared,
    term: &Term,
    watchers: Watchers,
    store: &mut CheckpointStore,
    shutdown: &CancellationToken,
) {
    watchers.stop().await;
    term.stop();
    term.wait_followers(Duration::from_secs(5)).await;
    if shutdown.is_cancelled() {
        // Shutdown: deliver what is buffered, record where we are, then hand over.
        shared
            .sinks
            .drain(Duration::from_millis(shared.options.drain_timeout_ms))
            .await;
        for _ in 0..3 {
            if save(store, term, &shared.metrics).await {
                break;
            }
        }
        tracing::info!("logs extension stopped; final checkpoint written");
    } else {
        // Lost the Lease: the next holder resumes from the last checkpoint.
        shared.sinks.discard();
        tracing::warn!(
            "lost the Lease: stopped following; buffered lines are left to the next holder"
        );
    }
    term.clear();
}

/// Write the term's positions; false (counted, logged) when it failed.
pub(crate) async fn save(store: &mut CheckpointStore, term: &Term, metrics: &LogsMetrics) -> bool {
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
