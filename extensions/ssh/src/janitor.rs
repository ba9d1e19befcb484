//! Removes app key Secrets whose app is gone, where no garbage collector does it.
//!
//! Secrets owned by StatefulSets are deleted when none of their owner StatefulSets exists any
//! more (same name and uid); Secrets without owners when they are older than `orphan_grace` and
//! no pod of their app exists. In a cluster the garbage collector does the first part already; the janitor
//! makes cleanup independent of it and also covers apps that are not StatefulSets.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use eirinix_core::Context;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use tokio_util::sync::CancellationToken;

use crate::error::SshError;
use crate::keys::{SECRET_LABEL, SECRET_LABEL_VALUE};
use crate::options::GUID_LABEL;
use crate::webhook::is_ssh_secret;

/// When and what the janitor cleans.
#[derive(Clone, Debug)]
pub struct JanitorOptions {
    /// Time between sweeps.
    pub interval: Duration,
    /// Age after which a Secret without owner and without pods of its app is removed.
    pub orphan_grace: Duration,
}

impl Default for JanitorOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

/// Run sweeps every `options.interval` until `cancel` (a manager task: `.task("ssh-janitor", ..)`).
pub async fn run_janitor(ctx: Context, options: JanitorOptions, cancel: CancellationToken) {
    let Ok(client) = ctx.client().cloned() else {
        tracing::error!("ssh janitor needs a Kubernetes client");
        return;
    };
    let namespace = ctx.settings().namespace.clone();
    loop {
        match sweep(&client, namespace.as_deref(), &options).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "ssh janitor removed Secrets of deleted apps"),
            Err(e) => tracing::warn!(error = %e, "ssh janitor sweep failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(options.interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One sweep over the ssh Secrets of `namespace` (all when `None`); returns how many it deleted.
pub async fn sweep(
    client: &kube::Client,
    namespace: Option<&str>,
    options: &JanitorOptions,
) -> Result<usize, SshError> {
    let mut deleted = 0;
    for candidate in candidates(client, namespace, options).await? {
        if remove(client, &candidate).await? {
            tracing::info!(namespace = %candidate.namespace, secret = %candidate.name, "ssh Secret of a deleted app removed");
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A Secret the janitor decided to delete, at the version it looked at.
#[derive(Debug)]
pub(crate) struct Candidate {
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
}

/// The labelled ssh Secrets whose app is gone.
pub(crate) async fn candidates(
    client: &kube::Client,
    namespace: Option<&str>,
    options: &JanitorOptions,
) -> Result<Vec<Candidate>, SshError> {
    let secrets: Api<Secret> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!("{SECRET_LABEL}={SECRET_LABEL_VALUE}");
    let list = secrets
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    // StatefulSet uids per namespace, fetched once per sweep.
    let mut sets: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut out = Vec::new();
    for secret in list.items {
        // RBAC lets the server delete any Secret of the namespace: only ours are considered
        // (checked here as well as by the selector), and only at this version (see `remove`).
        if !is_ssh_secret(&secret.metadata) {
            continue;
        }
        let (Some(ns), Some(name), Some(uid), Some(resource_version)) = (
            secret.metadata.namespace.clone(),
            secret.metadata.name.clone(),
            secret.metadata.uid.clone(),
            secret.metadata.resource_version.clone(),
        ) else {
            continue;
        };
        let owners: Vec<_> = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.kind == "StatefulSet")
            .collect();
        let gone = if owners.is_empty() {
            let old_enough = secret
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| {
                    let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                    !age.is_negative() && age.unsigned_abs() >= options.orphan_grace
                });
            let guid = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(GUID_LABEL))
                .cloned();
            match (old_enough, guid) {
                (true, Some(guid)) => {
                    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let lp = ListParams::default()
                        .labels(&format!("{GUID_LABEL}={guid}"))
                        .limit(1);
                    pods.list_metadata(&lp).await?.items.is_empty()
                }
                _ => false,
            }
        } else {
            let live = match sets.entry(ns.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
                    let uids = api
                        .list_metadata(&ListParams::default())
                        .await?
                        .items
                        .into_iter()
                        .filter_map(|s| Some((s.metadata.name?, s.metadata.uid?)))
                        .collect();
                    v.insert(uids)
                }
            };
            owners.iter().all(|o| live.get(&o.name) != Some(&o.uid))
        };
        if gone {
            out.push(Candidate {
                namespace: ns,
                name,
                uid,
                resource_version,
            });
        }
    }
    Ok(out)
}

/// Delete `candidate` if it is still the version that was judged (label included); `false`
/// when it is gone or changed since.
pub(crate) async fn remove(client: &kube::Client, candidate: &Candidate) -> Result<bool, SshError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &candidate.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(candidate.uid.clone()),
            resource_version: Some(candidate.resource_version.clone()),
        }),
        ..Default::default()
    };
    match api.delete(&candidate.name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::{Patch, PatchParams};

    /// Issue item 8: the server may delete any Secret of the app namespace (RBAC cannot scope by
    /// label); the janitor deletes only labelled Secrets, at the version it judged. One that
    /// lost its label in between is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secret_relabelled_after_the_sweep_looked_is_kept() {
        let cp = eirinix_testenv::ControlPlane::shared()
            .await
            .expect("control plane (scripts/provision.sh)");
        let client = cp.client().await.unwrap();
        let ns = cp.namespace("ssh-janitor").await.unwrap();
        let keys = crate::AppKeys::generate("orphan").unwrap();
        for guid in ["orphan-a", "orphan-b"] {
            let name = format!("eirinix-ssh-{guid}");
            crate::webhook::ensure_secret(&client, &ns, &name, guid, None, &keys)
                .await
                .unwrap();
        }
        let now = JanitorOptions {
            orphan_grace: Duration::ZERO,
            ..JanitorOptions::default()
        };
        let found = candidates(&client, Some(&ns), &now).await.unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        // Someone reuses one of them for something else: no longer ours.
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"labels": {SECRET_LABEL: null}}});
        api.patch(
            "eirinix-ssh-orphan-a",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
        let mut removed = Vec::new();
        for c in &found {
            if remove(&client, c).await.unwrap() {
                removed.push(c.name.clone());
            }
        }
        assert_eq!(removed, ["eirinix-ssh-orphan-b"]);
        assert!(api.get_opt("eirinix-ssh-orphan-a").await.unwrap().is_some());
        // And a later sweep never considers it.
        assert_eq!(sweep(&client, Some(&ns), &now).await.unwrap(), 0);
    }
}
