//! `eirinix unregister`: what an uninstall removes, in the order that keeps pods admitted. The
//! chart runs it twice: a pre-delete Job removes the webhook configuration while the servers
//! still run (`--configuration-only`: nothing calls them any more), and a post-delete Job waits
//! until the server pods are gone (`--wait-for-pods`), then removes the certificate Secret and
//! the objects the stock extensions make while they run (a stopping server would otherwise
//! re-create some: the logs leader writes its final checkpoint, a replica re-creates a missing
//! certificate Secret), so an uninstall leaves nothing of eirinix behind and a new install
//! starts clean.
//!
//! | extension | objects |
//! |---|---|
//! | rootfs | Lease `<fingerprint>-rootfs` (webhook namespace) |
//! | logs | its Lease and checkpoint ConfigMaps (names from `--logs-config`, else the chart's `<fingerprint>-logs`, `<fingerprint>-logs-checkpoint-<n>`) |
//! | ssh | every app key Secret (label `eirinix.org/ssh=keys`) of the app namespace (the master key Secret `<fingerprint>-ssh-master` is the chart's, removed with the release) |
//!
//! App key Secrets are removed rather than left to the garbage collector (they are owned by the
//! apps' StatefulSets): private keys outlive no install. Pods started before the uninstall keep
//! their keys in their environment; after a new install their next restart gets new keys.

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, DeleteParams, ListParams};

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::cli::StockArgs;
use crate::cli::{CommonArgs, UnregisterArgs};
use crate::stock;

/// Runs `unregister`; returns what it removed (`Kind namespace/name`).
pub async fn unregister(
    client: &kube::Client,
    args: &UnregisterArgs,
) -> anyhow::Result<Vec<String>> {
    let serve = &args.serve;
    let names = stock::selected(&serve.extensions)?;
    let mut removed = Vec::new();
    let with_webhook = names.iter().any(|n| !stock::WITHOUT_WEBHOOK.contains(n));
    let manager = with_webhook
        .then(|| stock::registration_manager(&serve.common, &serve.extensions, &serve.stock))
        .transpose()?;
    if let Some(manager) = &manager {
        let name = manager.settings().configuration_name();
        if manager.remove_configuration(client.clone()).await? {
            removed.push(format!("MutatingWebhookConfiguration {name}"));
        }
    }
    if args.configuration_only {
        return Ok(removed);
    }
    if let Some(selector) = &args.wait_for_pods {
        wait_for_no_pods(
            client,
            &serve.common.webhook_namespace,
            selector,
            Duration::from_secs(args.wait_seconds),
        )
        .await?;
    }
    if let Some(manager) = &manager
        && manager.remove_certificate_secret(client.clone()).await?
    {
        removed.push(format!(
            "Secret {}/{}",
            serve.common.webhook_namespace,
            manager.settings().secret_name()
        ));
    }
    removed.extend(remove_leftovers(client, &serve.common, &names, &serve.stock).await?);
    Ok(removed)
}

/// Waits (bounded) until no pod in `ns` matches `selector`.
async fn wait_for_no_pods(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = pods
            .list(&ListParams::default().labels(selector))
            .await
            .context("listing the pods to wait for")?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{left} pod(s) matching {selector:?} still in {ns} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Label of the app key Secrets the ssh webhook creates.
const SSH_KEYS_SELECTOR: &str = "eirinix.org/ssh=keys";
/// Label of the logs checkpoint ConfigMaps.
const CHECKPOINTS_SELECTOR: &str = "app.kubernetes.io/managed-by=eirinix-logs";

/// Deletes `name` if it exists; `true` when something was deleted.
async fn delete<K>(api: &Api<K>, name: &str) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting {name}")),
    }
}

/// Removes the run-time objects of the extensions in `names`; returns what it removed
/// (`Kind namespace/name`).
async fn remove_leftovers(
    client: &kube::Client,
    common: &CommonArgs,
    names: &[&str],
    stock: &StockArgs,
) -> anyhow::Result<Vec<String>> {
    let ns = common.webhook_namespace.as_str();
    let fp = common.fingerprint.as_str();
    let mut removed = Vec::new();
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    if names.contains(&"rootfs") {
        let name = format!("{fp}-rootfs");
        if delete(&leases, &name).await? {
            removed.push(format!("Lease {ns}/{name}"));
        }
    }
    if names.contains(&"logs") {
        let (lease_ns, lease, checkpoint, sharded) = logs_names(common, stock)?;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
        if delete(&leases, &lease).await? {
            removed.push(format!("Lease {lease_ns}/{lease}"));
        }
        // Sharded replicas: member slot Leases `<lease>-member-<n>`, numbered from 0 without gaps
        // (a slot is reused, never deleted, while the extension runs).
        for slot in (0..).take_while(|_| sharded) {
            let name = format!("{lease}-member-{slot}");
            if !delete(&leases, &name).await? {
                break;
            }
            removed.push(format!("Lease {lease_ns}/{name}"));
        }
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &lease_ns);
        let prefix = format!("{checkpoint}-");
        for cm in cms
            .list(&ListParams::default().labels(CHECKPOINTS_SELECTOR))
            .await
            .context("listing logs checkpoints")?
        {
            let Some(name) = cm.metadata.name else {
                continue;
            };
            let shard = name.strip_prefix(&prefix);
            if shard.is_some_and(|s| is_shard(s) || is_member(s)) && delete(&cms, &name).await? {
                removed.push(format!("ConfigMap {lease_ns}/{name}"));
            }
        }
    }
    if names.contains(&"ssh") {
        let apps: Api<Secret> = if common.namespace.is_empty() {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &common.namespace)
        };
        for secret in apps
            .list(&ListParams::default().labels(SSH_KEYS_SELECTOR))
            .await
            .context("listing app key Secrets")?
        {
            let (Some(name), Some(app_ns)) = (secret.metadata.name, secret.metadata.namespace)
            else {
                continue;
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), &app_ns);
            if delete(&api, &name).await? {
                removed.push(format!("Secret {app_ns}/{name}"));
            }
        }
    }
    Ok(removed)
}

/// A checkpoint shard number of leader mode (`<checkpoint>-<n>`).
fn is_shard(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A member ConfigMap of sharded replicas: status `member-<n>` or page `member-<n>-<page>`.
fn is_member(s: &str) -> bool {
    s.strip_prefix("member-").is_some_and(|rest| {
        let (slot, page) = rest.split_once('-').unwrap_or((rest, "0"));
        is_shard(slot) && is_shard(page)
    })
}

/// Namespace, Lease and checkpoint prefix of the logs extension, and whether its replicas are
/// sharded (they then also have member Leases).
fn logs_names(
    common: &CommonArgs,
    stock: &StockArgs,
) -> anyhow::Result<(String, String, String, bool)> {
    let fp = &common.fingerprint;
    let Some(options) = crate::stock::logs_options(stock)? else {
        return Ok((
            common.webhook_namespace.clone(),
            format!("{fp}-logs"),
            format!("{fp}-logs-checkpoint"),
            stock.logs_replicas_mode == Some(crate::cli::LogsReplicasMode::Sharded),
        ));
    };
    Ok((
        options
            .replicas
            .namespace
            .clone()
            .unwrap_or_else(|| common.webhook_namespace.clone()),
        options.replicas.lease_name.clone(),
        options.replicas.checkpoint_name.clone(),
        options.replicas.mode == eirinix_logs::ReplicaMode::Sharded,
    ))
}
