//! State shared by the webhook and the roller: the desired version (flags + ConfigMap), the
//! gate, the opted-out StatefulSets, and the metrics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::RootfsError;
use crate::gate;
use crate::metrics::RootfsMetrics;
use crate::options::{Desired, Gate, RootfsOptions};
use crate::plan::Key;

struct Inner {
    options: RootfsOptions,
    desired: watch::Sender<Option<Desired>>,
    gate_open: AtomicBool,
    opt_outs: RwLock<HashSet<Key>>,
    metrics: Arc<RootfsMetrics>,
}

/// Shared state of one rootfs installation (cheap to clone).
#[derive(Clone)]
pub struct RootfsState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RootfsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootfsState")
            .field("desired", &*self.inner.desired.borrow())
            .field("gate_open", &self.gate_open())
            .finish_non_exhaustive()
    }
}

impl RootfsState {
    /// Validate `options`; the desired state comes from them, or (with a ConfigMap) from the
    /// first read of the ConfigMap ([`Self::load_config_map`], [`Self::watch_config_map`]).
    pub fn new(options: RootfsOptions) -> Result<Self, RootfsError> {
        options.validate()?;
        // With a ConfigMap, nothing is desired until it was read: never act on a flag value the
        // ConfigMap overrides (that would roll every app twice).
        let desired = match options.config_map {
            Some(_) => None,
            None => options.static_desired()?,
        };
        let metrics = Arc::new(RootfsMetrics::default());
        metrics.set_desired(desired.as_ref().map(|d| d.version.as_str()));
        let gate_open = options.gate == Gate::None;
        Ok(Self {
            inner: Arc::new(Inner {
                desired: watch::Sender::new(desired),
                gate_open: AtomicBool::new(gate_open),
                opt_outs: RwLock::new(HashSet::new()),
                metrics,
                options,
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &RootfsOptions {
        &self.inner.options
    }

    /// The metrics (render them on a `/metrics` endpoint).
    pub fn metrics(&self) -> &Arc<RootfsMetrics> {
        &self.inner.metrics
    }

    /// The desired state now.
    pub fn desired(&self) -> Option<Desired> {
        self.inner.desired.borrow().clone()
    }

    /// Notified on every change of the desired state.
    pub fn subscribe(&self) -> watch::Receiver<Option<Desired>> {
        self.inner.desired.subscribe()
    }

    /// Set the desired state (tests, CLIs); the ConfigMap watcher does this at run time.
    pub fn set_desired(&self, desired: Option<Desired>) {
        self.inner
            .metrics
            .set_desired(desired.as_ref().map(|d| d.version.as_str()));
        self.inner.desired.send_if_modified(|d| {
            if *d == desired {
                false
            } else {
                tracing::info!(from = ?d.as_ref().map(|d| &d.version), to = ?desired.as_ref().map(|d| &d.version), "desired rootfs version changed");
                *d = desired;
                true
            }
        });
    }

    /// Whether the gate was open when last checked (always true without a gate).
    pub fn gate_open(&self) -> bool {
        self.inner.gate_open.load(Ordering::Relaxed)
    }

    /// Record a gate check.
    pub fn set_gate_open(&self, open: bool) {
        self.inner.gate_open.store(open, Ordering::Relaxed);
        self.inner.metrics.set_gate(open);
    }

    /// Whether StatefulSet `key` carries the opt-out annotation (per the opt-out watcher).
    pub fn is_opted_out(&self, key: &Key) -> bool {
        self.inner
            .opt_outs
            .read()
            .map(|s| s.contains(key))
            .unwrap_or_else(|p| p.into_inner().contains(key))
    }

    /// Mark StatefulSet `key` as opted out or not (the opt-out watcher does this; for tests).
    pub fn set_opted_out(&self, key: Key, opted_out: bool) {
        if opted_out {
            self.opt_outs_mut().insert(key);
        } else {
            self.opt_outs_mut().remove(&key);
        }
    }

    fn opt_outs_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<Key>> {
        self.inner
            .opt_outs
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Apply the ConfigMap (or its absence) to the desired state; a bad value keeps the last good one.
    pub fn apply_config_map(&self, cm: Option<&ConfigMap>) -> Result<(), RootfsError> {
        match self.inner.options.desired_from(cm) {
            Ok(d) => {
                self.set_desired(d);
                Ok(())
            }
            Err(e) => {
                self.inner.metrics.config_error();
                Err(e)
            }
        }
    }

    /// Read the ConfigMap once (one-shot mode).
    pub async fn load_config_map(&self, client: &kube::Client) -> Result<(), RootfsError> {
        if let Some(r) = &self.inner.options.config_map {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &r.namespace)
                .get_opt(&r.name)
                .await?;
            self.apply_config_map(cm.as_ref())?;
        }
        Ok(())
    }

    /// Follow the ConfigMap until cancelled (no-op without one).
    pub async fn watch_config_map(self, client: kube::Client, cancel: CancellationToken) {
        let Some(r) = self.inner.options.config_map.clone() else {
            return;
        };
        let api = Api::<ConfigMap>::namespaced(client, &r.namespace);
        let stream = kube::runtime::watcher::watch_object(api, &r.name).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = cancel.cancelled() => return,
            };
            match next {
                Some(Ok(cm)) => {
                    if let Err(e) = self.apply_config_map(cm.as_ref()) {
                        tracing::warn!(configmap = %format!("{}/{}", r.namespace, r.name), error = %e, "ignoring rootfs ConfigMap value; keeping the last good one");
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "rootfs ConfigMap watch failed; retrying")
                }
                None => return,
            }
        }
    }

    /// Keep the set of opted-out StatefulSets current (metadata-only watch) until cancelled.
    pub async fn watch_opt_outs(self, client: kube::Client, cancel: CancellationToken) {
        let opts = &self.inner.options;
        let api: Api<PartialObjectMeta<StatefulSet>> = match &opts.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let config = watcher::Config::default().labels(&opts.app_selector);
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut building: Option<HashSet<Key>> = None;
        let key_of = |m: &PartialObjectMeta<StatefulSet>| Key {
            namespace: m.metadata.namespace.clone().unwrap_or_default(),
            name: m.metadata.name.clone().unwrap_or_default(),
        };
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = cancel.cancelled() => return,
            };
            match next {
                Some(Ok(Event::Init)) => building = Some(HashSet::new()),
                Some(Ok(Event::InitApply(m))) => {
                    if opts.opted_out(m.metadata.annotations.as_ref()) {
                        building.get_or_insert_default().insert(key_of(&m));
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    *self.opt_outs_mut() = building.take().unwrap_or_default();
                }
                Some(Ok(Event::Apply(m))) => {
                    self.set_opted_out(key_of(&m), opts.opted_out(m.metadata.annotations.as_ref()));
                }
                Some(Ok(Event::Delete(m))) => {
                    self.opt_outs_mut().remove(&key_of(&m));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "rootfs opt-out watch failed; retrying"),
                None => return,
            }
        }
    }

    /// Check the gate every `gate_interval` until cancelled, so that webhooks on every replica
    /// know whether the new image can be pulled (no-op without a gate).
    pub async fn watch_gate(self, client: kube::Client, cancel: CancellationToken) {
        if self.inner.options.gate == Gate::None {
            return;
        }
        loop {
            let status = gate::check(&self.inner.options.gate, &client).await;
            if status.open != self.gate_open() {
                tracing::info!(open = status.open, reason = %status.reason, "rootfs gate changed");
            }
            self.set_gate_open(status.open);
            tokio::select! {
                _ = tokio::time::sleep(self.inner.options.gate_interval) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::NamespacedName;
    use kube::api::ObjectMeta;

    #[test]
    fn with_a_config_map_nothing_is_desired_before_it_is_read() {
        let opts = RootfsOptions {
            version: Some("1.5".into()),
            config_map: Some(NamespacedName {
                namespace: "cf".into(),
                name: "rootfs".into(),
            }),
            ..Default::default()
        };
        let state = RootfsState::new(opts).unwrap();
        assert_eq!(
            state.desired(),
            None,
            "the flag must not be acted on before the ConfigMap"
        );
        let rx = state.subscribe();
        let cm = ConfigMap {
            metadata: ObjectMeta::default(),
            data: Some([("version".to_owned(), "2.0".to_owned())].into()),
            ..Default::default()
        };
        state.apply_config_map(Some(&cm)).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(state.desired().unwrap().version, "2.0");
        // A bad value keeps the last good one and is counted.
        let bad = ConfigMap {
            data: Some([("version".to_owned(), "no spaces".to_owned())].into()),
            ..cm
        };
        assert!(state.apply_config_map(Some(&bad)).is_err());
        assert_eq!(state.desired().unwrap().version, "2.0");
        assert!(
            eirinix_core::metrics::render(state.metrics().clone())
                .lines()
                .any(|l| l == "eirinix_rootfs_config_errors_total 1")
        );
        // Deleted: back to the flag.
        state.apply_config_map(None).unwrap();
        assert_eq!(state.desired().unwrap().version, "1.5");
        // Without a ConfigMap the flag is desired at once.
        let plain = RootfsState::new(RootfsOptions {
            version: Some("1.5".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plain.desired().unwrap().version, "1.5");
    }
}
