//! The roller: watches app StatefulSets, plans, gates and patches, in a loop (long-running)
//! or until everything settled (one-shot, for a Helm hook).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use eirinix_core::leader::{LeaseLock, Led};

use crate::error::RootfsError;
use crate::execute::{EventType, Executor, RollOutcome};
use crate::gate::{self, GateStatus};
use crate::metrics::FailureReason;
use crate::options::{Desired, Gate};
use crate::plan::{self, Action, Hold, Key, Limits, Plan};
use crate::state::RootfsState;

/// Events arriving within this window after a wake-up are handled by one pass.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A patch with an unknown outcome holds its StatefulSet (as rolling) at most this long.
const UNSETTLED_HOLD: Duration = Duration::from_secs(30);
/// A failed patch is retried after this long, or as soon as the StatefulSet changes.
const FAILED_HOLD: Duration = Duration::from_secs(300);
/// A StatefulSet whose patch met a concurrent change waits at most this long for its new state.
const RETRY_HOLD: Duration = Duration::from_secs(10);
/// One-shot mode fails when the first list of StatefulSets takes longer than this.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What a one-shot roll did; [`RollReport::is_clean`] decides the Helm hook's exit code.
#[derive(Clone, Debug, Default)]
pub struct RollReport {
    /// The version rolled to (`None`: nothing desired, nothing done).
    pub desired: Option<String>,
    /// Planned only.
    pub dry_run: bool,
    /// The last plan (the only one in dry-run mode).
    pub plan: Option<Plan>,
    /// StatefulSets patched.
    pub rolled: Vec<Key>,
    /// Rolled StatefulSets that finished (all replicas updated and ready).
    pub completed: Vec<Key>,
    /// Rolls that did not finish within the roll timeout.
    pub timed_out: Vec<Key>,
    /// Patches that failed, with the error.
    pub failed: Vec<(Key, String)>,
    /// The last gate check (`None` when no gate or never needed).
    pub gate: Option<GateStatus>,
    /// The one-shot deadline passed before everything settled.
    pub deadline_exceeded: bool,
    /// One-shot: the Lease of the servers' roller could not be used (no permission), so this
    /// roll ran beside it and `maxInFlight` may have been exceeded.
    pub uncoordinated: bool,
    /// One-shot: the Lease was lost during the roll, which was stopped.
    pub lease_lost: bool,
}

impl RollReport {
    /// No failure, no timeout, not stopped by the gate or the deadline.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
            && self.timed_out.is_empty()
            && !self.deadline_exceeded
            && !self.lease_lost
            && (self.dry_run || self.gate.as_ref().is_none_or(|g| g.open))
    }
}

impl fmt::Display for RollReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(version) = &self.desired else {
            return writeln!(f, "rootfs: no version desired; nothing to do");
        };
        writeln!(
            f,
            "rootfs {}{}: {} rolled, {} completed, {} timed out, {} failed{}",
            version,
            if self.dry_run { " (dry run)" } else { "" },
            self.rolled.len(),
            self.completed.len(),
            self.timed_out.len(),
            self.failed.len(),
            if self.deadline_exceeded {
                ", deadline exceeded"
            } else {
                ""
            }
        )?;
        if self.uncoordinated {
            writeln!(
                f,
                "warning: rolled without the Lease of the servers' roller (no permission on it): both may have rolled at once"
            )?;
        }
        if self.lease_lost {
            writeln!(f, "the Lease was lost during the roll; stopped")?;
        }
        if let Some(g) = &self.gate {
            writeln!(
                f,
                "gate {}: {}",
                if g.open { "open" } else { "closed" },
                g.reason
            )?;
        }
        for k in &self.timed_out {
            writeln!(f, "timed out: {k}")?;
        }
        for (k, e) in &self.failed {
            writeln!(f, "failed: {k}: {e}")?;
        }
        if let Some(p) = &self.plan {
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct HoldEntry {
    hold: Hold,
    resource_version: Option<String>,
    until: Instant,
}

/// One roller: state carried between passes.
struct Roller {
    state: RootfsState,
    client: kube::Client,
    executor: Executor,
    limits: Limits,
    /// Objects returned by our patches, used until the cache catches up (no double counting).
    overlay: HashMap<Key, Arc<StatefulSet>>,
    holds: HashMap<Key, HoldEntry>,
    rolling: HashSet<Key>,
    reported_timeouts: HashSet<(Key, Option<Timestamp>)>,
    /// The last gate check, reused for `gate_interval` (passes can come every 100 ms).
    last_gate: Option<(Instant, bool)>,
    last_dry_run: String,
    report: RollReport,
}

fn generation(s: &StatefulSet) -> i64 {
    s.metadata.generation.unwrap_or(0)
}

impl Roller {
    fn new(state: RootfsState, client: kube::Client) -> Self {
        let opts = state.options();
        Self {
            executor: Executor::new(client.clone(), opts),
            limits: Limits::from(opts),
            report: RollReport {
                dry_run: opts.dry_run,
                ..Default::default()
            },
            state,
            client,
            overlay: HashMap::new(),
            holds: HashMap::new(),
            rolling: HashSet::new(),
            reported_timeouts: HashSet::new(),
            last_gate: None,
            last_dry_run: String::new(),
        }
    }

    /// The StatefulSets to plan with: the cache, overlaid with our newer patch results.
    fn snapshot(&mut self, store: &Store<StatefulSet>) -> BTreeMap<Key, Arc<StatefulSet>> {
        let mut by_key: BTreeMap<Key, Arc<StatefulSet>> = store
            .state()
            .into_iter()
            .map(|s| (Key::of(&s), s))
            .collect();
        self.overlay.retain(|k, ours| match by_key.get(k) {
            Some(cached) if generation(cached) < generation(ours) => {
                by_key.insert(k.clone(), ours.clone());
                true
            }
            _ => false,
        });
        let now = Instant::now();
        self.holds.retain(|k, h| {
            let rv = by_key
                .get(k)
                .and_then(|s| s.metadata.resource_version.clone());
            rv.is_some() && rv == h.resource_version && now < h.until
        });
        by_key
    }

    /// Check the gate (at most once per `gate_interval`); whether it is open.
    async fn check_gate(&mut self) -> bool {
        let opts = self.state.options();
        if let Some((at, open)) = self.last_gate
            && at.elapsed() < opts.gate_interval
        {
            return open;
        }
        let status = gate::check(&opts.gate, &self.client).await;
        let open = status.open;
        if self.last_gate.map(|(_, o)| o) != Some(open) {
            tracing::info!(open, reason = %status.reason, "rootfs gate");
        }
        self.state.set_gate_open(open);
        self.last_gate = Some((Instant::now(), open));
        self.report.gate = Some(status);
        open
    }

    fn hold(&mut self, sts: &StatefulSet, hold: Hold, ttl: Duration) {
        self.holds.insert(
            Key::of(sts),
            HoldEntry {
                hold,
                resource_version: sts.metadata.resource_version.clone(),
                until: Instant::now() + ttl,
            },
        );
    }

    /// One pass: plan, record completions and timeouts, gate, patch. Returns the plan and how
    /// long to sleep at most before the next pass.
    async fn pass(&mut self, store: &Store<StatefulSet>, desired: &Desired) -> (Plan, Duration) {
        let opts = self.state.options().clone();
        let sets = self.snapshot(store);
        let now = Timestamp::now();
        let holds: HashMap<Key, Hold> = self
            .holds
            .iter()
            .map(|(k, h)| (k.clone(), h.hold.clone()))
            .collect();
        let plan = plan::plan(
            sets.values().map(|s| s.as_ref()),
            desired,
            &self.limits,
            now,
            &holds,
        );
        let metrics = self.state.metrics().clone();
        metrics.observe_plan(&plan);
        self.report.desired = Some(desired.version.clone());

        // Completions and timeouts of rolls seen rolling before.
        let mut still_rolling = HashSet::new();
        for e in &plan.entries {
            match &e.action {
                Action::Rolling { .. } => {
                    still_rolling.insert(e.key.clone());
                }
                Action::TimedOut { version, started } => {
                    if !self.reported_timeouts.insert((e.key.clone(), *started)) {
                        continue;
                    }
                    metrics.failure(FailureReason::Timeout);
                    self.report.timed_out.push(e.key.clone());
                    tracing::warn!(statefulset = %e.key, version, "rootfs roll timed out");
                    if let Some(s) = sets.get(&e.key) {
                        let note = format!(
                            "Rollout to rootfs {version} not finished after {:?}; no longer counted in flight",
                            opts.roll_timeout
                        );
                        self.executor
                            .event(s, EventType::Warning, "RootfsRollTimedOut", note)
                            .await;
                    }
                }
                _ if self.rolling.contains(&e.key) => {
                    metrics.roll_completed();
                    self.report.completed.push(e.key.clone());
                    tracing::info!(statefulset = %e.key, "rootfs roll completed");
                    if let Some(s) = sets.get(&e.key) {
                        let note = format!(
                            "All replicas updated and ready on rootfs {}",
                            e.current_version.as_deref().unwrap_or("?")
                        );
                        self.executor
                            .event(s, EventType::Normal, "RootfsRollCompleted", note)
                            .await;
                    }
                }
                _ => {}
            }
        }
        self.rolling = still_rolling;

        let mut wake = opts.resync_interval;
        for e in &plan.entries {
            if let Action::Rolling {
                started: Some(s), ..
            } = &e.action
            {
                let due = s.checked_add(opts.roll_timeout).unwrap_or(*s);
                let left: Duration = due.duration_since(now).try_into().unwrap_or_default();
                wake = wake.min(left + Duration::from_millis(500));
            }
        }
        if let Some(until) = self.holds.values().map(|h| h.until).min() {
            wake = wake.min(until.saturating_duration_since(Instant::now()) + DEBOUNCE);
        }

        if opts.dry_run {
            let text = plan.to_string();
            if text != self.last_dry_run {
                tracing::info!("dry run, nothing changed:\n{text}");
                self.last_dry_run = text;
            }
            if opts.gate != Gate::None {
                self.check_gate().await;
            }
            return (plan, wake);
        }
        if plan.to_roll().next().is_none() {
            return (plan, wake);
        }
        if opts.gate != Gate::None && !self.check_gate().await {
            return (plan, wake.min(opts.gate_interval));
        }
        for (key, change) in plan.to_roll() {
            let Some(sts) = sets.get(key) else { continue };
            match self.executor.roll(sts, change).await {
                RollOutcome::Rolled(new) => {
                    tracing::info!(statefulset = %key, from = ?change.from_version, to = %change.to_version, images = change.images.len(), "rootfs roll started");
                    metrics.roll_started();
                    self.report.rolled.push(key.clone());
                    self.rolling.insert(key.clone());
                    self.overlay.insert(key.clone(), Arc::new(*new));
                }
                RollOutcome::Conflict(msg) => {
                    // The watch event of that change brings the new state; plan again from it.
                    metrics.conflict();
                    tracing::info!(statefulset = %key, reason = %msg, "StatefulSet changed since read; re-planning");
                    self.hold(sts, Hold::Retry, RETRY_HOLD);
                    wake = wake.min(RETRY_HOLD);
                }
                RollOutcome::Gone => {}
                RollOutcome::Failed {
                    error,
                    uncertain: true,
                } => {
                    tracing::warn!(statefulset = %key, %error, "rootfs patch outcome unknown; holding its slot");
                    self.hold(sts, Hold::Unsettled, UNSETTLED_HOLD);
                }
                RollOutcome::Failed {
                    error,
                    uncertain: false,
                } => {
                    tracing::warn!(statefulset = %key, %error, "rootfs patch failed");
                    metrics.failure(FailureReason::Patch);
                    self.report.failed.push((key.clone(), error.clone()));
                    self.executor
                        .event(
                            sts,
                            EventType::Warning,
                            "RootfsRollFailed",
                            format!("Patch to rootfs {} failed: {error}", change.to_version),
                        )
                        .await;
                    self.hold(sts, Hold::Failed(error), FAILED_HOLD);
                }
            }
        }
        (plan, wake)
    }
}

enum Mode {
    Forever,
    Once { deadline: Instant },
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn drive(
    state: RootfsState,
    client: kube::Client,
    cancel: CancellationToken,
    mode: Mode,
) -> Result<RollReport, RootfsError> {
    let opts = state.options().clone();
    let api: Api<StatefulSet> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let notify = Arc::new(Notify::new());
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default().labels(&opts.app_selector)),
    )
    .default_backoff();
    let _watch = {
        let notify = notify.clone();
        let last_error = last_error.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => notify.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "StatefulSet watch failed; retrying");
                        if let Ok(mut l) = last_error.lock() {
                            *l = Some(e.to_string());
                        }
                    }
                }
            }
        }))
    };
    let sync_deadline = match mode {
        Mode::Once { deadline } => deadline.min(Instant::now() + SYNC_TIMEOUT),
        // Long-running: wait as long as it takes (errors are logged as they come).
        Mode::Forever => Instant::now() + Duration::from_secs(u64::from(u32::MAX)),
    };
    tokio::select! {
        r = store.wait_until_ready() => r.map_err(|e| RootfsError::NotSynced(e.to_string()))?,
        _ = tokio::time::sleep_until(sync_deadline) => {
            let why = last_error.lock().ok().and_then(|l| l.clone()).unwrap_or_else(|| "no answer".into());
            return Err(RootfsError::NotSynced(why));
        }
        _ = cancel.cancelled() => return Ok(RollReport::default()),
    }

    let mut roller = Roller::new(state.clone(), client);
    let mut desired_rx = state.subscribe();
    loop {
        let desired = desired_rx.borrow_and_update().clone();
        let mut wake = opts.resync_interval;
        match &desired {
            Some(d) => {
                let (plan, w) = roller.pass(&store, d).await;
                wake = w;
                let settled = plan.is_settled();
                roller.report.plan = Some(plan);
                if let Mode::Once { deadline } = mode {
                    if opts.dry_run || settled {
                        return Ok(roller.report);
                    }
                    if Instant::now() >= deadline {
                        roller.report.deadline_exceeded = true;
                        return Ok(roller.report);
                    }
                    wake = wake.min(deadline.saturating_duration_since(Instant::now()));
                }
            }
            None => {
                state.metrics().set_desired(None);
                if let Mode::Once { .. } = mode {
                    return Ok(roller.report);
                }
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = desired_rx.changed() => {}
            _ = tokio::time::sleep(wake) => {}
            _ = cancel.cancelled() => return Ok(roller.report),
        }
        tokio::select! {
            _ = tokio::time::sleep(DEBOUNCE) => {}
            _ = cancel.cancelled() => return Ok(roller.report),
        }
    }
}

/// The roller alone, until `cancel` fires (run it only in the leader; the desired state comes
/// from `state`, which the caller keeps current, e.g. with [`RootfsState::watch_config_map`]).
pub async fn roll(
    state: RootfsState,
    client: kube::Client,
    cancel: CancellationToken,
) -> Result<(), RootfsError> {
    drive(state, client, cancel, Mode::Forever)
        .await
        .map(|_| ())
}

/// Long-running mode on existing state: follow the ConfigMap and roll until `cancel` fires.
pub async fn run_with_state(
    state: RootfsState,
    client: kube::Client,
    cancel: CancellationToken,
) -> Result<(), RootfsError> {
    let _config = AbortOnDrop(tokio::spawn(
        state
            .clone()
            .watch_config_map(client.clone(), cancel.child_token()),
    ));
    roll(state, client, cancel).await
}

/// One-shot mode on existing state (see [`crate::roll_once`]).
pub async fn roll_once_with_state(
    state: RootfsState,
    client: kube::Client,
) -> Result<RollReport, RootfsError> {
    state.load_config_map(&client).await?;
    let opts = state.options().clone();
    let deadline = Instant::now() + opts.once_deadline;
    let once = |cancel| {
        drive(
            state.clone(),
            client.clone(),
            cancel,
            Mode::Once { deadline },
        )
    };
    // A dry run changes nothing: no need to stop the servers' roller for it.
    let Some(lease) = opts.leader_lease.filter(|_| !opts.dry_run) else {
        return once(CancellationToken::new()).await;
    };
    let identity = opts
        .reporter_instance
        .clone()
        .unwrap_or_else(LeaseLock::default_identity);
    let lock = LeaseLock::new(client.clone(), &lease.namespace, &lease.name, identity)
        .lease_duration(opts.lease_duration);
    match lock.lead_once(opts.once_deadline, once).await {
        Ok(Led::Done(report)) => report,
        Ok(Led::Lost(report)) => {
            let mut report = report.transpose()?.unwrap_or_default();
            report.lease_lost = true;
            Ok(report)
        }
        Ok(Led::NotAcquired) => Err(RootfsError::Lease(format!(
            "{}/{}: not acquired within {:?} (the servers' roller did not hand it over)",
            lease.namespace, lease.name, opts.once_deadline
        ))),
        Err(e) if e.is_forbidden() => {
            tracing::warn!(error = %e, "no permission on the Lease of the servers' roller: rolling without it, both may roll at once (grant get, create and update on it)");
            let mut report = once(CancellationToken::new()).await?;
            report.uncoordinated = true;
            Ok(report)
        }
        Err(e) => Err(RootfsError::Lease(e.to_string())),
    }
}
