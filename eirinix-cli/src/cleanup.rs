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

use crate::cli::{CommonArgs, UnregisterArgs};
use crate::stock::{self, StockArgs};

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
        let (lease_ns, lease, checkpoint) = logs_names(common, stock)?;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
        if delete(&leases, &lease).await? {
            removed.push(format!("Lease {lease_ns}/{lease}"));
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
            if shard.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                && delete(&cms, &name).await?
            {
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

/// Namespace, Lease and checkpoint prefix of the logs extension.
fn logs_names(common: &CommonArgs, stock: &StockArgs) -> anyhow::Result<(String, String, String)> {
    let fp = &common.fingerprint;
    let Some(path) = &stock.logs_config else {
        return Ok((
            common.webhook_namespace.clone(),
            format!("{fp}-logs"),
            format!("{fp}-logs-checkpoint"),
        ));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let options = eirinix_logs::LogsOptions::from_yaml(&text)?;
    Ok((
        options
            .replicas
            .namespace
            .clone()
            .unwrap_or_else(|| common.webhook_namespace.clone()),
        options.replicas.lease_name.clone(),
        options.replicas.checkpoint_name.clone(),
    ))
}
