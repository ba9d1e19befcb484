//! Following one container's log through the Kubernetes API, without gap or duplicate.
//!
//! A [`Follower`] reads `pods/{pod}/log?container=..&follow=true&timestamps=true`. When the
//! stream ends it cannot tell from the stream alone whether the container exited or the stream
//! broke, so it looks at the container status in the pod (kept current by the pod watcher):
//! - restart count grew: read the rest of the previous instance (`previous=true`), then follow
//!   the new instance from its start;
//! - terminated: read once more without `follow` to get everything up to the end, then wait
//!   for a restart or the pod's deletion;
//! - otherwise: the stream broke, resume with `sinceTime` and drop the overlap ([`Dedup`]).
//!
//! The kubelet may start the next instance before the pod status counts the restart, and then
//! serves that instance's log as the current one. Before it forwards a line, a read of the
//! current instance checks the previous log when the two could be confused (`ReplacedCheck`),
//! and reads the instance it missed first.
//!
//! `previous=true` is the kubelet's `lastState`, which is not always the instance before the
//! current one: while a crash-looping container waits out its back-off, the kubelet serves its
//! last instance as both the current and the previous log, and the one before is out of reach.
//! A read of the previous log is therefore bounded by the first line of a newer instance when
//! one is known: reaching it shows the wanted instance is gone, which is counted and reported
//! (`instances_missed`), never mistaken for that instance.
//!
//! A follower reads one output of the container: stdout or stderr (`stream=Stdout|Stderr`, where
//! the apiserver offers it) or both merged (the stream is then unknown). An apiserver that does
//! not offer the parameter answers the first request with an error ([`FollowEnd::SplitUnsupported`]),
//! and the caller follows the merged log instead. A resume that finds the last forwarded line gone
//! from the node (the log was rotated before it was read again) is counted and reported as a gap.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, LogParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffer::BoundedBuffer;
use crate::cursor::{Cursor, Dedup, Progress, split_timestamp};
use crate::lines::{LineReader, Piece};
use crate::metrics::LogsMetrics;
use crate::record::{Origin, Record, Stream};
use crate::sink::Backoff;

/// What the follower needs to know about its pod, updated by the pod watcher.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    /// The node the pod runs on (no logs before it is scheduled).
    pub node_name: Option<String>,
    /// Status of every container and init container.
    pub containers: Vec<ContainerView>,
    /// The pod is gone.
    pub deleted: bool,
}

/// The state of one container, from the pod status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Restarts so far (each restart is a new instance with its own log).
    pub restart_count: i32,
    /// Current state.
    pub state: ContainerState,
}

/// Container state, as far as following its log is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// No status reported yet.
    Unknown,
    /// Not started; `has_previous` when an earlier instance left a log.
    Waiting {
        /// An earlier instance terminated (its log is readable with `previous=true`).
        has_previous: bool,
    },
    /// Running.
    Running,
    /// Exited.
    Terminated,
}

impl PodView {
    /// The view of `pod`: its node and the state of every container and init container.
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let statuses: Vec<&ContainerStatus> = status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .collect();
        let names = spec.into_iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .map(|c| c.name.clone())
        });
        let containers = names
            .map(|name| {
                let st = statuses.iter().find(|s| s.name == name);
                let restart_count = st.map_or(0, |s| s.restart_count);
                let state = match st {
                    None => ContainerState::Unknown,
                    Some(s) => {
                        let cur = s.state.as_ref();
                        if cur.is_some_and(|c| c.running.is_some()) {
                            ContainerState::Running
                        } else if cur.is_some_and(|c| c.terminated.is_some()) {
                            ContainerState::Terminated
                        } else if cur.is_some_and(|c| c.waiting.is_some()) {
                            ContainerState::Waiting {
                                has_previous: s.restart_count > 0
                                    || s.last_state
                                        .as_ref()
                                        .is_some_and(|l| l.terminated.is_some()),
                            }
                        } else {
                            ContainerState::Unknown
                        }
                    }
                };
                ContainerView {
                    name,
                    restart_count,
                    state,
                }
            })
            .collect();
        PodView {
            node_name: spec.and_then(|s| s.node_name.clone()),
            containers,
            deleted: false,
        }
    }

    /// The view of container `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerView> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether container `name` has (or had) a log to read.
    pub fn has_log(&self, name: &str) -> bool {
        self.node_name.is_some()
            && self.container(name).is_some_and(|c| match c.state {
                ContainerState::Waiting { has_previous } => has_previous,
                _ => true,
            })
    }
}

/// Why a follower stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowEnd {
    /// The pod was deleted (its log was read until the stream ended or the grace period passed).
    PodDeleted,
    /// Stopped from outside (shutdown or lost leadership).
    Cancelled,
    /// The apiserver refused the `stream` parameter (an apiserver without the
    /// `PodLogsQuerySplitStreams` feature): follow the merged log instead.
    SplitUnsupported,
}

/// Settings of a follower.
#[derive(Clone, Debug)]
pub struct FollowerConfig {
    /// Longest piece of a line (longer lines are split into partial records).
    pub max_line_bytes: usize,
    /// How long the streams of a deleted pod may still deliver.
    pub deleted_grace: Duration,
    /// First and longest delay between attempts when the API fails or the stream ends idle.
    pub retry: (Duration, Duration),
}

impl Default for FollowerConfig {
    fn default() -> Self {
        FollowerConfig {
            max_line_bytes: 16 * 1024,
            deleted_grace: Duration::from_secs(2),
            retry: (Duration::from_millis(200), Duration::from_secs(5)),
        }
    }
}

enum ReadEnd {
    /// The response ended; `lines` new records (pieces not read before) were forwarded.
    Ended {
        lines: u64,
    },
    /// The request or the stream failed.
    Failed {
        lines: u64,
        error: String,
    },
    Cancelled,
    Deleted,
    /// The `stream` parameter was refused.
    Unsupported,
    /// The log served as the current instance's belongs to a newer instance (`newer` is its
    /// first line): the kubelet has started it before the pod status said so, and the instance
    /// read until now is its previous one (which still holds the last forwarded line).
    Replaced {
        newer: Timestamp,
    },
    /// A read of the previous log reached the first line of a newer instance: the kubelet
    /// serves that instance as the previous one (its back-off), and the one wanted is gone.
    Newer,
}

/// Which log a read asks for.
#[derive(Clone, Copy, Debug)]
enum Which {
    /// The instance the kubelet serves as the current one.
    Current,
    /// `previous=true`; `newer`: the first line of a newer instance, when known, which every
    /// line of the wanted instance precedes.
    Previous { newer: Option<Timestamp> },
}

/// How a read of the current instance finds out that the kubelet already serves a newer
/// instance as the current one (it starts the next instance before the pod status says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplacedCheck {
    /// A resumed read whose first new line passes the last forwarded line: replaced when the
    /// previous log holds that line (otherwise the node lost part of the log: a gap).
    Resumed,
    /// The first read of an instance whose predecessor was read to its end: replaced when the
    /// previous log has a line after the last forwarded one (an instance not read yet).
    Fresh,
}

/// Whether `e` is the apiserver refusing the `stream` parameter of `pods/log` (its
/// `PodLogsQuerySplitStreams` feature is off: 422 "stream: Forbidden: may not be specified").
pub fn split_streams_refused(e: &kube::Error) -> bool {
    let kube::Error::Api(status) = e else {
        return false;
    };
    let message = status.message.to_ascii_lowercase();
    matches!(status.code, 400 | 403 | 422)
        && message.contains("stream")
        && ["may not be specified", "forbidden", "not supported"]
            .iter()
            .any(|m| message.contains(m))
}

/// The `stream` query value of `stream`.
fn stream_param(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "Stdout",
        Stream::Stderr => "Stderr",
    }
}

/// Follows one container of one pod and pushes its records into the sink buffers.
pub struct Follower {
    client: kube::Client,
    api: Api<Pod>,
    pod: String,
    origin: Arc<Origin>,
    view: watch::Receiver<Arc<PodView>>,
    outputs: Arc<[Arc<BoundedBuffer>]>,
    progress: Arc<Progress>,
    metrics: Arc<LogsMetrics>,
    config: FollowerConfig,
    dedup: Dedup,
    instance: Option<i32>,
    /// The instance the last forwarded line came from, when known (a resume of its log must
    /// repeat that line, or the node lost part of the log).
    last_instance: Option<i32>,
    /// The output read: stdout, stderr, or both merged (`None`).
    stream: Option<Stream>,
    line_ts: Option<Timestamp>,
    /// The instance before the current one was read to its end (or there is none), so the
    /// first read of the current one can be checked against the previous log.
    predecessor_read: bool,
}

impl Follower {
    /// A follower of `origin.container` in pod `origin.pod`, resuming after `start` (a
    /// checkpoint) if given; `progress` collects what the sinks delivered.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        origin: Arc<Origin>,
        view: watch::Receiver<Arc<PodView>>,
        outputs: Arc<[Arc<BoundedBuffer>]>,
        start: Option<Cursor>,
        progress: Arc<Progress>,
        metrics: Arc<LogsMetrics>,
        config: FollowerConfig,
    ) -> Self {
        Follower {
            api: Api::namespaced(client.clone(), &origin.namespace),
            client,
            pod: origin.pod.clone(),
            origin,
            view,
            outputs,
            progress,
            metrics,
            config,
            dedup: Dedup::new(start),
            instance: start.map(|c| c.instance),
            last_instance: start.map(|c| c.instance),
            stream: None,
            line_ts: None,
            predecessor_read: false,
        }
    }

    /// Read only `stream` (stdout or stderr) instead of the merged log; its records say which.
    pub fn with_stream(mut self, stream: Option<Stream>) -> Self {
        self.stream = stream;
        self
    }

    /// The start position was not written by a follower of this same output (a checkpoint of
    /// the merged log resuming one stream, or the other way round): its line may not be in the
    /// log read, so its absence is not a gap.
    pub fn inexact_start(mut self) -> Self {
        self.last_instance = None;
        self
    }

    /// Follow until the pod is deleted or `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> FollowEnd {
        self.metrics.followers.fetch_add(1, Ordering::Relaxed);
        let end = self.follow(&cancel).await;
        self.metrics.followers.fetch_sub(1, Ordering::Relaxed);
        end
    }

    async fn follow(&mut self, cancel: &CancellationToken) -> FollowEnd {
        let (initial, max) = self.config.retry;
        let mut backoff = Backoff::new(initial, max);
        // The instance whose log has been read to its end (terminated, final read done).
        let mut complete: Option<i32> = None;
        // Failed attempts at reading a previous instance.
        let mut previous_failures = 0u32;
        loop {
            let view = self.view.borrow_and_update().clone();
            if view.deleted {
                return FollowEnd::PodDeleted;
            }
            let name = self.origin.container.clone();
            let current = match view.container(&name) {
                Some(c) if view.has_log(&name) => c.restart_count,
                _ => {
                    if let Some(end) = self.wait_change(cancel, None).await {
                        return end;
                    }
                    continue;
                }
            };

            // Catch up on the instance before the current one (the only one still readable).
            let behind = match self.instance {
                Some(i) if i < current => !(complete == Some(i) && i == current - 1),
                None => current > 0,
                _ => false,
            };
            // Instances i+1 ..= current-2 are gone, and so is the unread tail of i.
            let missed = self
                .instance
                .filter(|i| *i < current - 1)
                .map_or(0, |i| current - i - 2 + i32::from(complete != Some(i)));
            let mut predecessor_read = current == 0 || complete == Some(current - 1);
            if behind {
                // The current log's first line bounds the read of the previous one.
                let newer = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return FollowEnd::Cancelled,
                    first = self.first_current_line() => first,
                };
                let end = match newer {
                    Ok(newer) => {
                        let which = Which::Previous { newer };
                        self.read(cancel, false, which, current - 1, true).await
                    }
                    Err(error) => ReadEnd::Failed { lines: 0, error },
                };
                match end {
                    ReadEnd::Cancelled => return FollowEnd::Cancelled,
                    ReadEnd::Deleted => return FollowEnd::PodDeleted,
                    ReadEnd::Unsupported => return FollowEnd::SplitUnsupported,
                    ReadEnd::Ended { .. } | ReadEnd::Replaced { .. } => {
                        previous_failures = 0;
                        predecessor_read = true;
                    }
                    ReadEnd::Newer => {
                        self.instance_gone(current - 1);
                        previous_failures = 0;
                        predecessor_read = true;
                    }
                    ReadEnd::Failed { error, .. } => {
                        previous_failures += 1;
                        if previous_failures < 5 {
                            tracing::debug!(pod = %self.pod, container = %name, %error, "reading the previous instance failed; retrying");
                            if let Some(end) =
                                self.wait_change(cancel, Some(backoff.next_delay())).await
                            {
                                return end;
                            }
                            continue;
                        }
                        tracing::warn!(pod = %self.pod, container = %name, %error, "giving up on the previous instance's log");
                        self.metrics
                            .instances_missed
                            .fetch_add(1, Ordering::Relaxed);
                        previous_failures = 0;
                    }
                }
            }
            if self.instance != Some(current) {
                if missed > 0 {
                    let missed = u64::try_from(missed).unwrap_or(0);
                    self.metrics
                        .instances_missed
                        .fetch_add(missed, Ordering::Relaxed);
                    tracing::warn!(
                        pod = %self.pod, container = %name, missed,
                        "container restarted more than once between reads; logs of the instances in between are gone"
                    );
                }
                self.instance = Some(current);
                self.predecessor_read = predecessor_read;
                complete = None;
            }
            if complete == Some(current) {
                if let Some(end) = self.wait_change(cancel, None).await {
                    return end;
                }
                continue;
            }

            // Follow the current instance.
            let outcome = self
                .read(cancel, true, Which::Current, current, false)
                .await;
            let lines = match outcome {
                ReadEnd::Cancelled => return FollowEnd::Cancelled,
                ReadEnd::Deleted => return FollowEnd::PodDeleted,
                ReadEnd::Unsupported => return FollowEnd::SplitUnsupported,
                ReadEnd::Ended { lines } => lines,
                ReadEnd::Failed { lines, error } => {
                    tracing::debug!(pod = %self.pod, container = %name, %error, "log stream failed; resuming");
                    lines
                }
                // Only reads of the previous log are bounded.
                ReadEnd::Newer => 0,
                ReadEnd::Replaced { newer } => {
                    match self
                        .finish_replaced(cancel, current, newer, &mut backoff)
                        .await
                    {
                        Err(end) => return end,
                        Ok(done) => complete = done.then_some(current),
                    }
                    continue;
                }
            };
            let view = self.view.borrow().clone();
            if view.deleted {
                return FollowEnd::PodDeleted;
            }
            let Some(cs) = view.container(&name) else {
                continue;
            };
            if cs.restart_count > current {
                continue;
            }
            // Exited (terminated, or waiting to be started again: a crash loop's back-off, in
            // which the kubelet serves this instance as the current log).
            let exited = match cs.state {
                ContainerState::Terminated => true,
                ContainerState::Waiting { has_previous } => has_previous,
                ContainerState::Unknown | ContainerState::Running => false,
            };
            if exited {
                // Read everything up to the end once more, without follow.
                match self
                    .read(cancel, false, Which::Current, current, true)
                    .await
                {
                    ReadEnd::Cancelled => return FollowEnd::Cancelled,
                    ReadEnd::Deleted => return FollowEnd::PodDeleted,
                    ReadEnd::Unsupported => return FollowEnd::SplitUnsupported,
                    ReadEnd::Ended { .. } | ReadEnd::Newer => {
                        complete = Some(current);
                        backoff.reset();
                    }
                    ReadEnd::Replaced { newer } => {
                        match self
                            .finish_replaced(cancel, current, newer, &mut backoff)
                            .await
                        {
                            Err(end) => return end,
                            Ok(done) => complete = done.then_some(current),
                        }
                    }
                    ReadEnd::Failed { error, .. } => {
                        tracing::debug!(pod = %self.pod, container = %name, %error, "final read failed; retrying");
                        if let Some(end) =
                            self.wait_change(cancel, Some(backoff.next_delay())).await
                        {
                            return end;
                        }
                    }
                }
                continue;
            }
            // Still running (or its status lags): the stream broke; resume at once when it
            // brought something new, else after a back-off (an exited instance whose status
            // still says running gives only lines already forwarded).
            if lines > 0 {
                backoff.reset();
            } else if let Some(end) = self.wait_change(cancel, Some(backoff.next_delay())).await {
                return end;
            }
        }
    }

    /// Wait for a pod change (or `timeout`); `Some` when the follower must stop.
    async fn wait_change(
        &mut self,
        cancel: &CancellationToken,
        timeout: Option<Duration>,
    ) -> Option<FollowEnd> {
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Some(FollowEnd::Cancelled),
            changed = self.view.changed() => match changed {
                Ok(()) => None,
                Err(_) => Some(FollowEnd::PodDeleted),
            },
            _ = sleep => None,
        }
    }

    /// One log request, of the log `which`. `final_read`: an unterminated last line counts (the
    /// container exited).
    async fn read(
        &mut self,
        cancel: &CancellationToken,
        follow: bool,
        which: Which,
        instance: i32,
        final_read: bool,
    ) -> ReadEnd {
        let (previous, newer) = match which {
            Which::Current => (false, None),
            Which::Previous { newer } => (true, newer),
        };
        let params = self.log_params(follow, previous);
        tracing::debug!(
            pod = %self.pod, container = %self.origin.container, stream = ?self.stream, instance,
            follow, previous, since = ?params.since_time,
            "reading the log"
        );
        self.metrics.streams_opened.fetch_add(1, Ordering::Relaxed);
        let stream = tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Cancelled,
            s = self.log_stream(&params, false) => s,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) if self.stream.is_some() && split_streams_refused(&e) => {
                return ReadEnd::Unsupported;
            }
            Err(e) => {
                self.metrics.stream_errors.fetch_add(1, Ordering::Relaxed);
                return ReadEnd::Failed {
                    lines: 0,
                    error: e.to_string(),
                };
            }
        };
        if self.last_instance == Some(instance) {
            self.dedup.begin_resume();
        } else {
            self.dedup.begin();
        }
        self.line_ts = None;
        let mut check = if previous {
            None
        } else if self.last_instance == Some(instance) {
            Some(ReplacedCheck::Resumed)
        } else {
            self.predecessor_read.then_some(ReplacedCheck::Fresh)
        };
        let mut reader = LineReader::new(Box::pin(stream), self.config.max_line_bytes);
        let mut lines = 0u64;
        let grace = self.config.deleted_grace;
        let mut deadline: Option<Instant> =
            self.view.borrow().deleted.then(|| Instant::now() + grace);
        let outputs = self.outputs.clone();
        loop {
            // Back-pressure: a sink that is slower than the log, or down, is waited for before
            // more is read, so the backlog stays in the container log on the node instead of
            // being dropped. The time spent waiting does not count against a deleted pod's
            // grace period: its stream can still deliver once the sink takes lines again.
            if !has_room(&outputs) {
                let waited = Instant::now();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return ReadEnd::Cancelled,
                    _ = wait_for_room(&outputs) => {}
                }
                if let Some(d) = deadline.as_mut() {
                    *d += waited.elapsed();
                }
            }
            let piece = tokio::select! {
                biased;
                _ = cancel.cancelled() => return ReadEnd::Cancelled,
                _ = sleep_until(deadline) => return ReadEnd::Deleted,
                changed = self.view.changed(), if deadline.is_none() => {
                    if changed.is_err() || self.view.borrow().deleted {
                        deadline = Some(Instant::now() + grace);
                    }
                    continue;
                }
                p = reader.next_piece() => p,
            };
            let start = match &piece {
                Ok(Some(piece)) => line_start(*piece, reader.data()),
                _ => None,
            };
            // The log served as the current instance's may already be a newer instance's: a
            // resumed read that does not repeat the last forwarded line (or the node lost part
            // of the log), or a first read while the previous log still has unread lines. The
            // previous instance's log tells which, before anything is forwarded.
            if let Some(kind) = check
                && let Some(ts) = start
                && (kind == ReplacedCheck::Fresh || self.dedup.would_gap(ts))
            {
                check = None;
                let replaced = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return ReadEnd::Cancelled,
                    replaced = self.previous_shows_replacement(kind, ts) => replaced,
                };
                match replaced {
                    Ok(true) => return ReadEnd::Replaced { newer: ts },
                    Ok(false) => {}
                    // Nothing forwarded yet from this response: read it again, checked again.
                    Err(error) => return ReadEnd::Failed { lines, error },
                }
            }
            // A read of the previous log that reaches a newer instance's first line is that
            // instance's log: nothing of it is forwarded as the wanted one's.
            if let Some(newer) = newer
                && start.is_some_and(|ts| ts >= newer)
            {
                return ReadEnd::Newer;
            }
            let (record, end) = match piece {
                Ok(None) => return ReadEnd::Ended { lines },
                Ok(Some(Piece::Data { first, last })) => {
                    let data = Bytes::copy_from_slice(reader.data());
                    (self.emit(&data, first, last, instance), None)
                }
                Ok(Some(Piece::Incomplete { first })) => {
                    // Cut inside a line: when following, the line is read again on resume.
                    let record = if final_read {
                        let data = Bytes::copy_from_slice(reader.data());
                        self.emit(&data, first, true, instance)
                    } else {
                        None
                    };
                    (record, Some(ReadEnd::Ended { lines }))
                }
                Err(e) => {
                    self.metrics.stream_errors.fetch_add(1, Ordering::Relaxed);
                    return ReadEnd::Failed {
                        lines,
                        error: e.to_string(),
                    };
                }
            };
            if let Some(record) = record {
                lines += 1;
                let waited = Instant::now();
                for (i, out) in outputs.iter().enumerate() {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return ReadEnd::Cancelled,
                        pushed = out.push_when_room(record.clone()) => if pushed {
                            self.progress.pushed(i);
                        }
                    }
                }
                if let Some(d) = deadline.as_mut() {
                    *d += waited.elapsed();
                }
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Whether the previous instance's log shows that the log read as the current instance's
    /// (whose first new line is at `first`) belongs to a newer one (see [`ReplacedCheck`]). A
    /// request refused (4xx: for one, there is no previous instance) answers no; one that failed
    /// otherwise is an error, since a guess either way could drop an instance or report a gap
    /// that is none.
    async fn previous_shows_replacement(
        &self,
        kind: ReplacedCheck,
        first: Timestamp,
    ) -> Result<bool, String> {
        let last = self.dedup.last_timestamp();
        if last.is_none() && kind == ReplacedCheck::Resumed {
            return Ok(false);
        }
        let Some(mut starts) = self.one_off(true, "checking the previous log").await? else {
            return Ok(false);
        };
        while let Some(ts) = starts.next().await? {
            // The previous log reached the current one's first new line: it is that same log
            // (a kubelet waiting out a back-off serves its last instance as both) or a newer
            // one, so no instance lies unread between.
            if ts >= first {
                return Ok(false);
            }
            match (kind, last) {
                (ReplacedCheck::Resumed, Some(last)) if ts == last => return Ok(true),
                (_, Some(last)) if ts <= last => {}
                // A line after the last forwarded one (or any line, when none was): the
                // previous log is of an instance not read yet, and also ends the search for
                // the last forwarded line.
                (kind, _) => return Ok(kind == ReplacedCheck::Fresh),
            }
        }
        Ok(false)
    }

    /// Read `instance`, which the kubelet has replaced by the instance whose first line is at
    /// `newer`, to its end as its previous instance; `Ok(true)` when that read ended (or found
    /// the instance gone), `Ok(false)` after a failure and a back-off wait.
    async fn finish_replaced(
        &mut self,
        cancel: &CancellationToken,
        instance: i32,
        newer: Timestamp,
        backoff: &mut Backoff,
    ) -> Result<bool, FollowEnd> {
        tracing::debug!(
            pod = %self.pod, container = %self.origin.container, stream = ?self.stream, instance,
            "the kubelet already serves a newer instance than the pod status names; reading this one to its end as the previous log"
        );
        let error = match self
            .read(
                cancel,
                false,
                Which::Previous { newer: Some(newer) },
                instance,
                true,
            )
            .await
        {
            ReadEnd::Cancelled => return Err(FollowEnd::Cancelled),
            ReadEnd::Deleted => return Err(FollowEnd::PodDeleted),
            ReadEnd::Unsupported => return Err(FollowEnd::SplitUnsupported),
            ReadEnd::Ended { .. } => {
                backoff.reset();
                return Ok(true);
            }
            ReadEnd::Newer => {
                self.instance_gone(instance);
                backoff.reset();
                return Ok(true);
            }
            ReadEnd::Failed { error, .. } => error,
            // Only reads of the current instance are checked for a replacement.
            ReadEnd::Replaced { .. } => String::from("replaced twice"),
        };
        tracing::debug!(pod = %self.pod, container = %self.origin.container, %error, "reading the replaced instance failed; retrying");
        match self.wait_change(cancel, Some(backoff.next_delay())).await {
            Some(end) => Err(end),
            None => Ok(false),
        }
    }

    /// The wanted `instance` is no longer served (the kubelet serves a newer one as the previous
    /// log): what of it was not read is lost, and said so.
    fn instance_gone(&self, instance: i32) {
        self.metrics
            .instances_missed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            pod = %self.pod, container = %self.origin.container, stream = ?self.stream, instance,
            "the kubelet no longer serves this instance's log (a newer instance is served as the previous one, as in a crash loop's back-off); its unread lines are gone"
        );
    }

    /// The timestamp of the current log's first line after the last forwarded one, which a
    /// line of an earlier instance precedes; `None` when it has no such line yet. Refused (4xx)
    /// answers `None` too; a failure is an error.
    async fn first_current_line(&self) -> Result<Option<Timestamp>, String> {
        let last = self.dedup.last_timestamp();
        let Some(mut starts) = self
            .one_off(false, "reading the current log's first line")
            .await?
        else {
            return Ok(None);
        };
        while let Some(ts) = starts.next().await? {
            if last.is_none_or(|last| ts > last) {
                return Ok(Some(ts));
            }
        }
        Ok(None)
    }

    /// A one-off read of the previous or the current log for a check, its connection closed
    /// after it (made while this follower's own stream holds its connection, and at start while
    /// every follower's does, a pooled connection would linger idle); `None` when refused for
    /// good (a 4xx other than a timeout or throttling), an error (named after `what`) otherwise.
    async fn one_off(
        &self,
        previous: bool,
        what: &'static str,
    ) -> Result<Option<LineStarts>, String> {
        let params = self.log_params(false, previous);
        tracing::debug!(
            pod = %self.pod, container = %self.origin.container, stream = ?self.stream, previous,
            since = ?params.since_time, "{what}"
        );
        self.metrics.streams_opened.fetch_add(1, Ordering::Relaxed);
        match self.log_stream(&params, true).await {
            Ok(stream) => Ok(Some(LineStarts {
                reader: LineReader::new(Box::pin(stream), self.config.max_line_bytes),
                metrics: self.metrics.clone(),
                what,
            })),
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && !matches!(status.code, 408 | 429) =>
            {
                Ok(None)
            }
            Err(e) => {
                self.metrics.stream_errors.fetch_add(1, Ordering::Relaxed);
                Err(format!("{what}: {e}"))
            }
        }
    }

    /// The `pods/log` parameters of a read of this container: with timestamps, from the second
    /// of the last forwarded line (the kubelet's `sinceTime` has one-second granularity).
    fn log_params(&self, follow: bool, previous: bool) -> LogParams {
        LogParams {
            container: Some(self.origin.container.clone()),
            follow,
            previous,
            timestamps: true,
            since_time: self.dedup.since(),
            ..LogParams::default()
        }
    }

    /// Open a `pods/log` stream with `params`, and the `stream` parameter when reading one
    /// output (kube's `LogParams` has no field for it); `close`: a one-off request whose
    /// connection is closed after the response instead of kept in the client's pool.
    async fn log_stream(
        &self,
        params: &LogParams,
        close: bool,
    ) -> kube::Result<impl futures::io::AsyncBufRead + use<>> {
        let url = self.api.resource_url();
        let mut req = kube::core::Request::new(url)
            .logs(&self.pod, params)
            .map_err(kube::Error::BuildRequest)?;
        if let Some(stream) = self.stream {
            let uri = format!("{}&stream={}", req.uri(), stream_param(stream));
            *req.uri_mut() = uri.parse().map_err(|e: http::uri::InvalidUri| {
                kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e.into()))
            })?;
        }
        if close {
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        req.extensions_mut().insert("log_stream");
        self.client.request_stream(req).await
    }

    /// The record of a piece just read, or `None` when it was already forwarded.
    fn emit(
        &mut self,
        data: &Bytes,
        first: bool,
        last: bool,
        instance: i32,
    ) -> Option<Arc<Record>> {
        self.metrics.lines_read.fetch_add(1, Ordering::Relaxed);
        let split = if first { split_timestamp(data) } else { None };
        let (ts, message) = match split {
            Some((ts, rest)) => {
                self.line_ts = Some(ts);
                let offset = data.len() - rest.len();
                (ts, data.slice(offset..))
            }
            // A piece continuing a long line, or a line without a timestamp: it belongs with
            // the line before it.
            None => {
                let ts = self
                    .line_ts
                    .or_else(|| self.dedup.last_timestamp())
                    .unwrap_or_else(Timestamp::now);
                self.line_ts = Some(ts);
                (ts, data.clone())
            }
        };
        let Some(n) = self.dedup.admit(ts) else {
            self.metrics
                .duplicates_skipped
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some((last, first)) = self.dedup.take_gap() {
            self.metrics.log_gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                namespace = %self.origin.namespace, pod = %self.pod,
                container = %self.origin.container, stream = ?self.stream,
                last_forwarded = %crate::cursor::format_nanos(last),
                first_read = %crate::cursor::format_nanos(first),
                "the node no longer has this log after the last forwarded line (rotated away before \
                 it was read again): lines written between these two times are lost"
            );
        }
        self.last_instance = Some(instance);
        self.metrics
            .records_forwarded
            .fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(Record {
            origin: self.origin.clone(),
            timestamp: ts,
            message,
            stream: self.stream,
            partial: !last,
            ack: Some((self.progress.clone(), Cursor { ts, n, instance })),
        }))
    }
}

/// The timestamps of the line starts of a one-off read ([`Follower::one_off`]).
struct LineStarts {
    reader: LineReader<std::pin::Pin<Box<dyn futures::io::AsyncBufRead + Send>>>,
    metrics: Arc<LogsMetrics>,
    what: &'static str,
}

impl LineStarts {
    /// The timestamp of the next line start that has one; `None` at the end of the log.
    async fn next(&mut self) -> Result<Option<Timestamp>, String> {
        loop {
            match self.reader.next_piece().await {
                Ok(Some(piece)) => {
                    if let Some(ts) = line_start(piece, self.reader.data()) {
                        return Ok(Some(ts));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.metrics.stream_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("{}: {e}", self.what));
                }
            }
        }
    }
}

/// The timestamp of `piece` (its bytes `data`) when it starts a line that carries one.
fn line_start(piece: Piece, data: &[u8]) -> Option<Timestamp> {
    match piece {
        Piece::Data { first: true, .. } | Piece::Incomplete { first: true } => {
            split_timestamp(data).map(|(ts, _)| ts)
        }
        _ => None,
    }
}

/// Whether every sink buffer has room (see [`BoundedBuffer::has_room`]).
fn has_room(outputs: &[Arc<BoundedBuffer>]) -> bool {
    outputs.iter().all(|o| o.has_room())
}

/// Wait until every sink buffer has room (see [`BoundedBuffer::wait_for_room`]).
async fn wait_for_room(outputs: &[Arc<BoundedBuffer>]) {
    for out in outputs {
        out.wait_for_room().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState as KState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, PodSpec, PodStatus,
    };

    fn status(name: &str, restarts: i32, state: KState, last: Option<KState>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            restart_count: restarts,
            state: Some(state),
            last_state: last,
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn a_refused_stream_parameter_is_told_from_other_errors() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "Invalid")
                    .with_code(code)
                    .boxed(),
            )
        };
        // kube-apiserver without PodLogsQuerySplitStreams (checked against 1.37).
        assert!(split_streams_refused(&api(
            422,
            "PodLogOptions \"dora-0\" is invalid: stream: Forbidden: may not be specified"
        )));
        assert!(split_streams_refused(&api(
            400,
            "stream parameter not supported"
        )));
        // Anything else is an ordinary failure, retried.
        assert!(!split_streams_refused(&api(
            404,
            "pods \"dora-0\" not found"
        )));
        assert!(!split_streams_refused(&api(
            403,
            "pods \"dora-0\" is forbidden: User \"x\" cannot get resource \"pods/log\""
        )));
        assert!(!split_streams_refused(&api(
            400,
            "container \"opi\" in pod \"dora-0\" is waiting to start: ContainerCreating"
        )));
        assert!(!split_streams_refused(&api(500, "stream error")));
        assert!(!split_streams_refused(
            &kube::Error::LinesCodecMaxLineLengthExceeded
        ));
    }

    #[test]
    fn views_follow_the_status() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    ..Container::default()
                }]),
                containers: vec![
                    Container {
                        name: "a".into(),
                        ..Container::default()
                    },
                    Container {
                        name: "b".into(),
                        ..Container::default()
                    },
                ],
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let v = PodView::from_pod(&pod);
        assert_eq!(v.containers.len(), 3);
        assert!(!v.has_log("a"), "not scheduled");
        pod.spec.as_mut().unwrap().node_name = Some("n".into());
        let v = PodView::from_pod(&pod);
        assert!(
            v.has_log("a") && v.has_log("init"),
            "scheduled, no status yet: try"
        );
        assert!(!v.has_log("zzz"));

        let waiting = KState {
            waiting: Some(ContainerStateWaiting::default()),
            ..KState::default()
        };
        let running = KState {
            running: Some(ContainerStateRunning::default()),
            ..KState::default()
        };
        let terminated = KState {
            terminated: Some(ContainerStateTerminated::default()),
            ..KState::default()
        };
        pod.status = Some(PodStatus {
            init_container_statuses: Some(vec![status("init", 0, terminated.clone(), None)]),
            container_statuses: Some(vec![
                status("a", 0, waiting.clone(), None),
                status("b", 2, waiting, Some(terminated)),
            ]),
            ..PodStatus::default()
        });
        let v = PodView::from_pod(&pod);
        assert_eq!(
            v.container("init").unwrap().state,
            ContainerState::Terminated
        );
        assert!(v.has_log("init"));
        assert!(!v.has_log("a"), "waiting to start: nothing to read yet");
        assert!(
            v.has_log("b"),
            "crash-looping: the previous instance has a log"
        );
        assert_eq!(v.container("b").unwrap().restart_count, 2);
        pod.status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0] = status("a", 0, running, None);
        assert_eq!(
            PodView::from_pod(&pod).container("a").unwrap().state,
            ContainerState::Running
        );
    }
}
