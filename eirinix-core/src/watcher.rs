//! Pod watchers: added/modified/deleted events that survive watch restarts.
//!
//! Built on `kube_runtime::watcher` with backoff. After every (re-)list the known pods are
//! compared with the listed ones, so events missed while disconnected are delivered:
//! new pods as `Added`, changed ones as `Modified`, vanished ones as `Deleted`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::core::ObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use crate::extension::Context;
use crate::metrics::Metrics;
use crate::options::{SOURCE_TYPE_LABEL, Settings};

/// A change to a watched pod.
#[derive(Clone, Debug, PartialEq)]
pub enum PodEvent {
    /// A pod appeared (or was first seen).
    Added(Pod),
    /// A known pod changed.
    Modified(Pod),
    /// A pod is gone. When the deletion happened while the watch was down, only metadata is set.
    Deleted(Pod),
}

impl PodEvent {
    /// The pod the event is about.
    pub fn pod(&self) -> &Pod {
        match self {
            PodEvent::Added(p) | PodEvent::Modified(p) | PodEvent::Deleted(p) => p,
        }
    }
}

/// Something that reacts to pod events (the logs extension follows containers with it).
#[async_trait]
pub trait PodWatcher: Send + Sync + 'static {
    /// Name, for logs and metrics.
    fn name(&self) -> &str;

    /// Which pods to watch: by default Eirini app pods when the manager filters apps, else all.
    fn config(&self, settings: &Settings) -> watcher::Config {
        default_config(settings)
    }

    /// Handle one event; events of one watcher are delivered in order, one at a time.
    async fn on_event(&self, ctx: &Context, event: PodEvent);
}

/// Objects per page of a watcher's (re-)list. A page is decoded as a whole, so with large pods
/// kube's default of 500 makes the list, not the watched set, the memory peak of a pod watcher.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) const LIST_PAGE_SIZE: u32 = 100;

/// A pod watch configuration with eirinix's list page size: start here for any pod watcher.
pub fn pod_watch_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// The default watch configuration for `settings`.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn default_config(settings: &Settings) -> watcher::Config {
    let config = pod_watch_config();
    if settings.filter_eirini_apps {
        config.labels(&format!("{SOURCE_TYPE_LABEL}=APP"))
    } else {
        config
    }
}

/// Turns raw watcher events into [`PodEvent`]s, remembering just enough of each pod.
#[derive(Debug, Default)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct EventTracker {
    known: HashMap<String, (String, ObjectMeta)>,
    listing: Option<HashSet<String>>,
}

fn slim_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        labels: meta.labels.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

impl EventTracker {
    /// Number of pods currently known.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no pod is known.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn applied(&mut self, pod: Pod) -> Option<PodEvent> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let rv = pod.metadata.resource_version.clone().unwrap_or_default();
        if let Some(listing) = &mut self.listing {
            listing.insert(uid.clone());
        }
        match self
            .known
            .insert(uid, (rv.clone(), slim_meta(&pod.metadata)))
        {
            None => Some(PodEvent::Added(pod)),
            Some((old_rv, _)) if old_rv != rv => Some(PodEvent::Modified(pod)),
            Some(_) => None,
        }
    }

    /// Translate one watcher event into zero or more pod events.
    pub fn translate(&mut self, event: Event<Pod>) -> Vec<PodEvent> {
        match event {
            Event::Init => {
                self.listing = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(pod) | Event::Apply(pod) => self.applied(pod).into_iter().collect(),
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .known
                    .keys()
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|uid| self.known.remove(&uid))
                    .map(|(_, metadata)| {
                        PodEvent::Deleted(Pod {
                            metadata,
                            ..Default::default()
                        })
                    })
                    .collect()
            }
            Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.known.remove(&uid);
                vec![PodEvent::Deleted(pod)]
            }
        }
    }
}

/// Run `w` until cancelled: watch (with backoff and re-list), translate, deliver.
pub async fn run_pod_watcher(
    w: Arc<dyn PodWatcher>,
    ctx: Context,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let Ok(client) = ctx.client().cloned() else {
        tracing::error!(watcher = w.name(), "pod watcher needs a Kubernetes client");
        return;
    };
    let api: Api<Pod> = match &ctx.settings().namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut tracker = EventTracker::default();
    loop {
        let stream = watcher::watcher(api.clone(), w.config(ctx.settings())).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                _ = cancel.cancelled() => return,
            };
            match next {
                Some(Ok(event)) => {
                    for e in tracker.translate(event) {
                        w.on_event(&ctx, e).await;
                    }
                }
                Some(Err(e)) => {
                    metrics.watch_restarted();
                    tracing::warn!(watcher = w.name(), error = %e, "pod watch failed; retrying with backoff");
                }
                None => break,
            }
        }
        metrics.watch_restarted();
        tracing::warn!(watcher = w.name(), "pod watch ended; restarting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn kinds(events: &[PodEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let k = match e {
                    PodEvent::Added(_) => "added",
                    PodEvent::Modified(_) => "modified",
                    PodEvent::Deleted(_) => "deleted",
                };
                format!("{k}:{}", e.pod().metadata.uid.as_deref().unwrap_or(""))
            })
            .collect()
    }

    #[test]
    fn relist_delivers_what_was_missed() {
        let mut t = EventTracker::default();
        let mut out = Vec::new();
        for e in [
            Event::Init,
            Event::InitApply(pod("a", "1")),
            Event::InitApply(pod("b", "1")),
            Event::InitDone,
        ] {
            out.extend(t.translate(e));
        }
        assert_eq!(kinds(&out), ["added:a", "added:b"]);
        out.clear();
        out.extend(t.translate(Event::Apply(pod("a", "2"))));
        out.extend(t.translate(Event::Apply(pod("a", "2"))));
        assert_eq!(kinds(&out), ["modified:a"]);
        out.clear();
        // Watch broke: during the outage b was deleted, a changed, c was created.
        for e in [
            Event::Init,
            Event::InitApply(pod("a", "3")),
            Event::InitApply(pod("c", "1")),
            Event::InitDone,
        ] {
            out.extend(t.translate(e));
        }
        assert_eq!(kinds(&out), ["modified:a", "added:c", "deleted:b"]);
        assert_eq!(t.len(), 2);
        out.clear();
        out.extend(t.translate(Event::Delete(pod("c", "2"))));
        assert_eq!(kinds(&out), ["deleted:c"]);
        assert_eq!(t.len(), 1);
    }
}
