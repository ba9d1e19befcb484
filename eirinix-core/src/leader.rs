//! Lease-based leader election: work that must run once per cluster (rolling rootfs,
//! following logs) runs only in the replica holding a `coordination.k8s.io/v1` Lease.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors talking to the API server about the Lease.
#[derive(Debug, thiserror::Error)]
#[error("lease {namespace}/{name}: {source}")]
pub struct LeaderError {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

/// A Lease lock held under one identity.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    lease_duration: Duration,
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
        }
    }

    /// How long a lease stays valid without renewal (failover takes about this long).
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d.max(Duration::from_secs(1));
        self
    }

    /// This lock's identity.
    pub fn identity(&self) -> &str {
        &self.identity
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

    /// One attempt: acquire a free or expired lease, or renew ours. True when we hold it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
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
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let expired = {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
            match &spec.renew_time {
                Some(MicroTime(renewed)) => {
                    renewed.as_second().saturating_add(duration) < Timestamp::now().as_second()
                }
                None => true,
            }
        };
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquire = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut next = lease;
        next.spec = Some(self.spec(transitions, acquire));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
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

/// Run `work` only while holding `lock`: it starts when the lease is acquired and its token is
/// cancelled when the lease is lost or `cancel` fires; then it waits to be leader again.
/// `leading` (if given) reports the current state.
pub async fn run_while_leader<F, Fut>(
    lock: LeaseLock,
    cancel: CancellationToken,
    leading: Option<watch::Sender<bool>>,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let retry = (lock.lease_duration / 3).max(Duration::from_millis(200));
    let report = |v: bool| {
        if let Some(tx) = &leading {
            tx.send_replace(v);
        }
    };
    let lock = Arc::new(lock);
    loop {
        // Follower: try to acquire.
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = cancel.cancelled() => return,
            }
        }
        tracing::info!(identity = lock.identity(), "acquired leadership");
        report(true);
        let token = cancel.child_token();
        // Aborted if this future is dropped: work must never outlive the lease renewal.
        let task = AbortOnDrop(Some(tokio::spawn(work(token.clone()))));
        // Leader: renew until lost or cancelled.
        let mut last_renewal = tokio::time::Instant::now();
        let lost = loop {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = cancel.cancelled() => break false,
            }
            match lock.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => break true,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    // Stop before the lease can expire and another replica take over.
                    if last_renewal.elapsed() + retry >= lock.lease_duration {
                        break true;
                    }
                }
            }
        };
        token.cancel();
        let _ = task.join().await;
        report(false);
        if !lost {
            if let Err(e) = lock.release().await {
                tracing::warn!(error = %e, "releasing the lease failed");
            }
            return;
        }
        tracing::warn!(identity = lock.identity(), "lost leadership");
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn join(mut self) -> impl std::future::Future<Output = Result<(), tokio::task::JoinError>> {
        let handle = self.0.take();
        async move {
            match handle {
                Some(h) => h.await,
                None => Ok(()),
            }
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
