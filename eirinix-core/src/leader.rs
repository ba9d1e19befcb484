//! Lease-based leader election: work that must run once per cluster (rolling rootfs,
//! following logs) runs only in the replica holding a `coordination.k8s.io/v1` Lease.
//!
//! Expiry is judged as client-go judges it: by when this replica *observed* the Lease record
//! last change (holder, renew time, resource version...), on its own monotonic clock. The
//! `renewTime` another replica wrote is never compared with this replica's wall clock, so clock
//! skew between nodes can neither give two leaders (a holder whose clock lags looks expired)
//! nor keep a dead leader's Lease (one whose clock ran ahead looks valid for hours).
//!
//! A candidate that must run now (a one-shot Helm hook) can ask the holder to hand over
//! ([`LeaseLock::lead_once`], `HANDOVER_ANNOTATION`): the holder stops its work, releases the Lease, and
//! the others leave it to the asking candidate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Annotation on the Lease naming the identity a holder is asked to hand leadership over to.
/// The holder ([`LeaseLock::run_while_leader`]) stops its work and releases; other candidates leave the
/// free Lease to that identity until the request goes stale (unchanged for a lease duration).
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) const HANDOVER_ANNOTATION: &str = "eirinix.org/leader-handover-to";

/// Errors talking to the API server about the Lease.
#[derive(Debug, thiserror::Error)]
#[error("lease {namespace}/{name}: {source}")]
pub struct LeaderError {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl LeaderError {
    /// Whether the API server refused the request for lack of permission (RBAC).
    pub fn is_forbidden(&self) -> bool {
        matches!(&self.source, kube::Error::Api(s) if s.code == 403)
    }
}

/// The Lease record as far as election goes: any change to it is a sign of life of its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<String>,
    acquire_time: Option<String>,
    duration_seconds: i32,
    transitions: i32,
    resource_version: Option<String>,
    handover_to: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            acquire_time: spec.acquire_time.map(|t| t.0.to_string()),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
            handover_to: lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HANDOVER_ANNOTATION))
                .filter(|to| !to.is_empty())
                .cloned(),
        }
    }

    /// How long the holder's claim lasts after a change of the record was observed.
    fn validity(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.duration_seconds.max(1)).unwrap_or(1))
    }
}

/// The record last seen to change, and when (this replica's monotonic clock).
#[derive(Debug)]
struct Observed {
    record: Record,
    at: Instant,
}

/// The outcome of one election attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the Lease now (acquired or renewed).
    Leading,
    /// Another replica holds it, or it is reserved for another one.
    Following,
    /// This replica holds it, and another one asked for it (its identity).
    HandOver(String),
}

/// A Lease lock held under one identity.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    lease_duration: Duration,
    observed: Arc<Mutex<Option<Observed>>>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaseLock {
    /// A lock on Lease `name` in `namespace`, held as `identity` (15 s lease by default).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            observed: Arc::default(),
        }
    }

    /// How long a lease stays valid without renewal (failover takes about this long).
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d.max(Duration::from_secs(1));
        self
    }

    /// A replica identity: `POD_NAME` when set (in a pod), else the host name plus a random suffix.
    pub fn default_identity() -> String {
        if let Ok(pod) = std::env::var("POD_NAME")
            && !pod.is_empty()
        {
            return pod;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "eirinix".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("{host}-{:x}-{nanos:x}", std::process::id())
    }

    /// Run `work` only while holding this lock: it starts when the lease is acquired and its
    /// token is cancelled when the lease is lost, handed over (`HANDOVER_ANNOTATION`) or `cancel`
    /// fires; then it waits to be leader again. The work is over (aborted if it ignores its
    /// token) before any other replica can see the lease expire. `leading` (if given) reports
    /// the current state.
    pub async fn run_while_leader<F, Fut>(
        self,
        cancel: CancellationToken,
        leading: Option<watch::Sender<bool>>,
        work: F,
    ) where
        F: Fn(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let retry = self.retry_period();
        let report = |v: bool| {
            if let Some(tx) = &leading {
                tx.send_replace(v);
            }
        };
        let lock = Arc::new(self);
        loop {
            // Follower: try to acquire. A renewal counts from before its request was sent: the
            // others observe the write after that, so their clock for it starts later than ours.
            let renewed_at = loop {
                let started = Instant::now();
                match lock.attempt(true).await {
                    Ok(Attempt::Leading) => break started,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = cancel.cancelled() => return,
                }
            };
            tracing::info!(identity = lock.identity(), "acquired leadership");
            report(true);
            let token = cancel.child_token();
            // Aborted if this future is dropped: work must never outlive the lease renewal.
            let mut task = AbortOnDrop(tokio::spawn(work(token.clone())));
            let (end, renewed_at) = hold(&lock, renewed_at, retry, true, &cancel).await;
            token.cancel();
            // Others may take over once the lease expires: the work must be over by then.
            if tokio::time::timeout_at(renewed_at + lock.lease_duration, task.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    identity = lock.identity(),
                    "leader work did not stop before the lease expires; aborted"
                );
            }
            report(false);
            match end {
                Hold::Cancelled => {
                    if let Err(e) = lock.release().await {
                        tracing::warn!(error = %e, "releasing the lease failed");
                    }
                    return;
                }
                Hold::HandOver(to) => {
                    tracing::info!(identity = lock.identity(), to = %to, "handed leadership over");
                    if let Err(e) = lock.release().await {
                        tracing::warn!(error = %e, "releasing the lease failed");
                    }
                }
                Hold::Lost => tracing::warn!(identity = lock.identity(), "lost leadership"),
            }
        }
    }

    /// Run `work` once as the leader of this lock (a one-shot job beside long-running replicas):
    /// take the lease, asking a live holder to hand over (`HANDOVER_ANNOTATION`; a holder running
    /// [`LeaseLock::run_while_leader`] stops its work and releases at its next renewal), for at most `wait`;
    /// renew it while `work` runs; release it at the end. If the lease is lost, the work's token is
    /// cancelled, and the work is dropped if it has not stopped when the lease expires.
    pub async fn lead_once<F, Fut, T>(self, wait: Duration, work: F) -> Result<Led<T>, LeaderError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        // Polled often: a released lease is left to us only until our request goes stale (a
        // lease duration); 8 times per lease duration, at least once a second.
        let poll =
            (self.lease_duration / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let deadline = Instant::now() + wait;
        let renewed_at = loop {
            let started = Instant::now();
            match self.attempt(false).await {
                Ok(Attempt::Leading) => break started,
                Ok(_) => self.request_handover(true).await?,
                Err(e) if e.is_forbidden() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            if Instant::now() >= deadline {
                if let Err(e) = self.request_handover(false).await {
                    tracing::warn!(error = %e, "withdrawing the handover request failed");
                }
                return Ok(Led::NotAcquired);
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        };
        tracing::info!(
            identity = self.identity(),
            "acquired leadership for a one-shot run"
        );
        let token = CancellationToken::new();
        let stop_renewing = CancellationToken::new();
        let work = work(token.clone());
        tokio::pin!(work);
        let renew = hold(
            &self,
            renewed_at,
            self.retry_period(),
            false,
            &stop_renewing,
        );
        tokio::pin!(renew);
        let led = tokio::select! {
            out = &mut work => Led::Done(out),
            (end, renewed_at) = &mut renew => {
                tracing::warn!(identity = self.identity(), ?end, "lost leadership during a one-shot run; stopping it");
                token.cancel();
                Led::Lost(tokio::time::timeout_at(renewed_at + self.lease_duration, &mut work).await.ok())
            }
        };
        stop_renewing.cancel();
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "releasing the lease failed");
        }
        Ok(led)
    }

    /// This lock's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Time between attempts: a leader renews 4 times per lease duration, so it survives two
    /// failed renewals before it must stop.
    fn retry_period(&self) -> Duration {
        (self.lease_duration / 4).max(Duration::from_millis(200))
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire.or_else(|| Some(now())),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Note `record` as seen now; how long ago it was first seen as it is.
    fn observe(&self, record: &Record) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match observed.as_ref() {
            Some(o) if o.record == *record => now.saturating_duration_since(o.at),
            _ => {
                *observed = Some(Observed {
                    record: record.clone(),
                    at: now,
                });
                Duration::ZERO
            }
        }
    }

    /// One attempt: acquire a free or expired lease, or renew ours. True when we hold it now;
    /// false when another replica holds it, or asked us to hand it over (then stop leading).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        Ok(self.attempt(true).await? == Attempt::Leading)
    }

    /// One election attempt. A holder asked to hand over answers [`Attempt::HandOver`] without
    /// renewing when `honour_handover`, and renews otherwise.
    async fn attempt(&self, honour_handover: bool) -> Result<Attempt, LeaderError> {
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&Record::of(&created));
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following),
                Err(e) => Err(self.err(e)),
            };
        };
        let record = Record::of(&lease);
        let unchanged_for = self.observe(&record);
        let ours = record.holder == self.identity;
        let asked_by = record.handover_to.clone().filter(|to| *to != self.identity);
        if ours {
            if let Some(to) = asked_by.filter(|_| honour_handover) {
                return Ok(Attempt::HandOver(to));
            }
        } else {
            if !record.holder.is_empty() && unchanged_for < record.validity() {
                return Ok(Attempt::Following);
            }
            // Free or expired, but reserved for the candidate that asked for a handover, until
            // that request goes stale.
            if asked_by.is_some() && unchanged_for < self.lease_duration.max(record.validity()) {
                return Ok(Attempt::Following);
            }
        }
        let transitions = record.transitions + i32::from(!ours);
        let acquire = if ours {
            lease.spec.as_ref().and_then(|s| s.acquire_time.clone())
        } else {
            None
        };
        let mut next = lease;
        next.spec = Some(self.spec(transitions, acquire));
        // Taking the lease answers a request for us, or ends a stale one.
        if (!ours || record.handover_to.as_deref() == Some(self.identity.as_str()))
            && let Some(a) = next.metadata.annotations.as_mut()
        {
            a.remove(HANDOVER_ANNOTATION);
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(stored) => {
                self.observe(&Record::of(&stored));
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Ask the holder to hand over to this lock's identity (`true`), or withdraw that request
    /// (`false`). A conflicting write is left for the next call.
    async fn request_handover(&self, ask: bool) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let current = Record::of(&lease).handover_to;
        let annotations = lease.metadata.annotations.get_or_insert_default();
        if ask {
            if current.as_deref() == Some(self.identity.as_str()) {
                return Ok(());
            }
            annotations.insert(HANDOVER_ANNOTATION.to_owned(), self.identity.clone());
        } else {
            if current.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            annotations.remove(HANDOVER_ANNOTATION);
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Give the lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// Where replicas elect the one that runs leader-only work (a Lease), and as whom: for
/// [`crate::ManagerBuilder::leader_task`] and [`crate::ManagerBuilder::leader_reconciler`].
#[derive(Clone, Debug)]
pub struct Election {
    namespace: Option<String>,
    name: String,
    identity: Option<String>,
    lease_duration: Duration,
}

impl Election {
    /// Lease `name` in the manager's webhook namespace, held as [`LeaseLock::default_identity`], 15 s.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            namespace: None,
            name: name.into(),
            identity: None,
            lease_duration: Duration::from_secs(15),
        }
    }

    /// Keep the Lease in `namespace` instead of the webhook namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Hold the Lease as `identity` (unique per replica) instead of [`LeaseLock::default_identity`].
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// How long the Lease stays valid without renewal (failover takes about this long).
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }

    /// The lock this election uses, its Lease in `default_namespace` unless set.
    pub(crate) fn lock(&self, client: kube::Client, default_namespace: &str) -> LeaseLock {
        let identity = self
            .identity
            .clone()
            .unwrap_or_else(LeaseLock::default_identity);
        LeaseLock::new(
            client,
            self.namespace.as_deref().unwrap_or(default_namespace),
            &self.name,
            identity,
        )
        .lease_duration(self.lease_duration)
    }
}

/// Why a leader stopped holding its lease.
#[derive(Debug)]
enum Hold {
    /// Cancelled from outside (shutdown): release.
    Cancelled,
    /// Another replica holds it, or renewals failed until the renew deadline.
    Lost,
    /// Another candidate asked for it.
    HandOver(String),
}

/// Renew `lock` every `retry` until `cancel` fires or the lease is lost (or handed over, when
/// `honour_handover`), from the acquisition at `renewed_at`. Renewals count from before their
/// request; one that cannot complete before `last renewal + lease - retry` is a loss. Returns
/// why it stopped and the last renewal.
async fn hold(
    lock: &LeaseLock,
    mut renewed_at: Instant,
    retry: Duration,
    honour_handover: bool,
    cancel: &CancellationToken,
) -> (Hold, Instant) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = cancel.cancelled() => return (Hold::Cancelled, renewed_at),
        }
        let deadline = renewed_at + lock.lease_duration.saturating_sub(retry);
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, lock.attempt(honour_handover)).await {
            Ok(Ok(Attempt::Leading)) => renewed_at = started,
            Ok(Ok(Attempt::HandOver(to))) => return (Hold::HandOver(to), renewed_at),
            Ok(Ok(Attempt::Following)) => return (Hold::Lost, renewed_at),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if Instant::now() + retry >= deadline {
                    return (Hold::Lost, renewed_at);
                }
            }
            Err(_) => {
                tracing::warn!("lease renewal did not complete before the renew deadline");
                return (Hold::Lost, renewed_at);
            }
        }
    }
}

/// What [`LeaseLock::lead_once`] did.
#[derive(Debug)]
pub enum Led<T> {
    /// The work ran to its end as the leader.
    Done(T),
    /// The lease could not be had in time; the work did not run.
    NotAcquired,
    /// The work started as the leader, but the lease was lost: its token was cancelled, and
    /// this is what it returned (`None`: it did not stop before the lease expired, and was
    /// dropped).
    Lost(Option<T>),
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Until the task ends (dropping this future leaves the task running; dropping `self`
    /// aborts it).
    async fn wait(&mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
