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
    let mut deleted = 0;
    for secret in list.items {
        let (Some(ns), Some(name), Some(uid)) = (
            secret.metadata.namespace.clone(),
            secret.metadata.name.clone(),
            secret.metadata.uid.clone(),
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
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, secret = %name, "ssh Secret of a deleted app removed");
                    deleted += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(deleted)
}
