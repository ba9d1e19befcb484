//! The ssh webhook: wraps the app container's command with the daemon and gives it the app keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eirinix_core::deps::prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use eirinix_core::metrics::Encode as _;
use eirinix_core::patch::{ContainerRef, PodPatch};
use eirinix_core::{Context, Extension, ExtensionError, Mutation, Request, WebhookOverrides};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod, Secret,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::admission::Operation;

use crate::daemon::{ENV_AUTHORIZED_KEYS, ENV_HOST_KEY, ENV_PORT, ENV_SHELL};
use crate::error::SshError;
use crate::keys::{self, AppKeys, MasterKey};
use crate::options::{GUID_LABEL, NAME, SshOptions};

/// Name of the extension (webhook path `/ssh`, idempotency annotation `eirinix.org/ssh`).
pub const EXTENSION_NAME: &str = "ssh";

/// Counters of the ssh webhook (a [`Collector`]: render them
/// with [`eirinix_core::metrics::render`]).
#[derive(Debug, Default)]
pub struct SshMetrics {
    injected: AtomicU64,
    sidecars: AtomicU64,
    skipped_no_command: AtomicU64,
    skipped_name_conflict: AtomicU64,
    skipped_namespace: AtomicU64,
    secrets_created: AtomicU64,
    secrets_reused: AtomicU64,
    secrets_rekeyed: AtomicU64,
    foreign_secrets: AtomicU64,
}

impl SshMetrics {
    /// Pods whose command was wrapped.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
    /// Pods that got the daemon as a sidecar.
    pub fn sidecars(&self) -> u64 {
        self.sidecars.load(Ordering::Relaxed)
    }
    /// Pods left alone because the container has no explicit command.
    pub fn skipped_no_command(&self) -> u64 {
        self.skipped_no_command.load(Ordering::Relaxed)
    }
    /// Pods left alone because they already use a name or mount path ssh would add.
    pub fn skipped_name_conflict(&self) -> u64 {
        self.skipped_name_conflict.load(Ordering::Relaxed)
    }
    /// Reviews for a namespace the manager does not serve (not sent by the apiserver).
    pub fn skipped_namespace(&self) -> u64 {
        self.skipped_namespace.load(Ordering::Relaxed)
    }
    /// Secrets created.
    pub fn secrets_created(&self) -> u64 {
        self.secrets_created.load(Ordering::Relaxed)
    }
    /// Secrets found and reused (restarts, concurrent admissions).
    pub fn secrets_reused(&self) -> u64 {
        self.secrets_reused.load(Ordering::Relaxed)
    }
    /// Secrets of ours whose keys were replaced by the derived ones.
    pub fn secrets_rekeyed(&self) -> u64 {
        self.secrets_rekeyed.load(Ordering::Relaxed)
    }
    /// Secrets of an app's name that are not ours (no label), left alone.
    pub fn foreign_secrets(&self) -> u64 {
        self.foreign_secrets.load(Ordering::Relaxed)
    }
}

/// Exposes the counters (Prometheus names `eirinix_ssh_*_total`) to a metrics registry.
impl Collector for SshMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in [
            (
                "eirinix_ssh_injected_total",
                "Pods whose command was wrapped with the ssh daemon.",
                self.injected(),
            ),
            (
                "eirinix_ssh_sidecars_total",
                "Pods that got the ssh daemon as a sidecar.",
                self.sidecars(),
            ),
            (
                "eirinix_ssh_skipped_no_command_total",
                "Pods left without ssh: the container has no explicit command.",
                self.skipped_no_command(),
            ),
            (
                "eirinix_ssh_skipped_name_conflict_total",
                "Pods left without ssh: they already use a name or mount path ssh would add.",
                self.skipped_name_conflict(),
            ),
            (
                "eirinix_ssh_skipped_namespace_total",
                "Reviews left alone: their namespace is not served (the apiserver never sends those).",
                self.skipped_namespace(),
            ),
            (
                "eirinix_ssh_secrets_created_total",
                "App key Secrets created.",
                self.secrets_created(),
            ),
            (
                "eirinix_ssh_secrets_reused_total",
                "App key Secrets found and reused.",
                self.secrets_reused(),
            ),
            (
                "eirinix_ssh_secrets_rekeyed_total",
                "App key Secrets whose keys were replaced by the ones the master key gives.",
                self.secrets_rekeyed(),
            ),
            (
                "eirinix_ssh_foreign_secrets_total",
                "Secrets with an app's key Secret name but not ours (unlabelled), left alone.",
                self.foreign_secrets(),
            ),
        ] {
            e.counter(name, help, value)?;
        }
        Ok(())
    }
}

/// The ssh extension: on CREATE of an app pod, inject the daemon and the app's key references.
#[derive(Clone, Debug, Default)]
pub struct SshInjector {
    options: Arc<SshOptions>,
    metrics: Arc<SshMetrics>,
    master: Arc<tokio::sync::OnceCell<MasterKey>>,
}

impl SshInjector {
    /// An injector with `options`.
    pub fn new(options: SshOptions) -> Self {
        Self {
            options: Arc::new(options),
            metrics: Arc::default(),
            master: Arc::default(),
        }
    }

    /// The master key, read (or, when missing and allowed, created) at first use.
    async fn master(&self, ctx: &Context) -> Result<MasterKey, ExtensionError> {
        let client = ctx.client()?;
        let settings = ctx.settings();
        let name = self.options.master_secret_name(&settings.fingerprint);
        let key = self
            .master
            .get_or_try_init(|| {
                MasterKey::from_secret(
                    client,
                    &settings.webhook_namespace,
                    &name,
                    self.options.create_master_secret,
                )
            })
            .await?;
        Ok(key.clone())
    }

    /// Its options.
    pub fn options(&self) -> &SshOptions {
        &self.options
    }

    /// Its counters (shared: clone the Arc to expose them).
    pub fn metrics(&self) -> &Arc<SshMetrics> {
        &self.metrics
    }
}

/// Whether the manager serves `namespace`: its namespace when it has one, else every namespace
/// its webhook configuration does not exclude. Side effects (Secrets) stay within these.
pub(crate) fn serves_namespace(settings: &eirinix_core::Settings, namespace: &str) -> bool {
    match &settings.namespace {
        Some(ns) => ns == namespace,
        None => !settings
            .effective_excluded_namespaces()
            .iter()
            .any(|n| n == namespace),
    }
}

/// The StatefulSet owning `pod`, as an owner reference for the app Secret.
///
/// Taken from the pod's ownerReferences; when the pod has none, the StatefulSet named after the
/// pod (`<statefulset>-<index>`) is looked up, and used if it carries the same app guid.
pub async fn statefulset_owner(
    client: Option<&kube::Client>,
    namespace: &str,
    pod: &Pod,
    guid: &str,
) -> Result<Option<OwnerReference>, SshError> {
    if let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
    {
        return Ok(Some(OwnerReference {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
            ..Default::default()
        }));
    }
    let (Some(client), Some(name)) = (client, pod.metadata.name.as_deref()) else {
        return Ok(None);
    };
    let Some((sts_name, index)) = name.rsplit_once('-') else {
        return Ok(None);
    };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let Some(sts) = api.get_opt(sts_name).await? else {
        return Ok(None);
    };
    let same_app = eirinix_core::compat::statefulset_spec(&sts)
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(GUID_LABEL))
        .is_some_and(|g| g == guid);
    let (Some(uid), true) = (sts.metadata.uid.clone(), same_app) else {
        return Ok(None);
    };
    Ok(Some(OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: sts_name.to_owned(),
        uid,
        ..Default::default()
    }))
}

/// What [`ensure_secret`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    /// The Secret was created with the app's keys.
    Created,
    /// An existing Secret holds the app's keys.
    Reused,
    /// An existing Secret of ours held other keys (made before the master key, or under
    /// another one): its keys were replaced. Instances started before keep the old keys (and
    /// cannot be reached through the proxy) until they restart.
    Rekeyed,
    /// A Secret of that name exists without the label marking ours: left alone (ssh will not
    /// work for the app until it is removed).
    Foreign,
}

/// Whether `secret` carries the label marking an eirinix ssh key Secret.
pub(crate) fn is_ssh_secret(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(keys::SECRET_LABEL))
        .is_some_and(|v| v == keys::SECRET_LABEL_VALUE)
}

/// Make sure the key Secret of app `guid` holds `keys`: create-if-absent, "already exists" is
/// reuse, and a Secret of ours (labelled) with other keys gets these (compare-and-swap).
///
/// Concurrent admissions of one app race on the create; the loser reads the winner's Secret,
/// which holds the same derived keys. A missing owner reference (e.g. the StatefulSet was
/// re-created) is added to an existing one. A Secret without our label is never changed.
pub async fn ensure_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    guid: &str,
    owner: Option<OwnerReference>,
    keys: &AppKeys,
) -> Result<SecretOutcome, SshError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = match api.get_opt(name).await? {
        Some(s) => s,
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(
                        [
                            (
                                keys::SECRET_LABEL.to_owned(),
                                keys::SECRET_LABEL_VALUE.to_owned(),
                            ),
                            (GUID_LABEL.to_owned(), guid.to_owned()),
                        ]
                        .into(),
                    ),
                    owner_references: owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(keys.to_secret_data()?),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(namespace, secret = name, guid, "ssh keys created");
                    return Ok(SecretOutcome::Created);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(
                        namespace,
                        secret = name,
                        "ssh Secret created concurrently; reusing it"
                    );
                    api.get(name).await?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if !is_ssh_secret(&existing.metadata) {
        tracing::warn!(
            namespace,
            secret = name,
            "a Secret of this name exists without the eirinix.org/ssh=keys label; it is left alone and ssh will not work for the app"
        );
        return Ok(SecretOutcome::Foreign);
    }
    let mut patch = serde_json::Map::new();
    let mut outcome = SecretOutcome::Reused;
    if !keys.matches_secret(&existing) {
        if let Err(e) = AppKeys::from_secret(&existing) {
            tracing::warn!(namespace, secret = name, error = %e, "ssh Secret has no usable keys; replacing them");
        }
        // Compare-and-swap on the version read: the label checked above is still there.
        patch.insert(
            "data".into(),
            serde_json::to_value(keys.to_secret_data()?)
                .map_err(|e| SshError::Config(format!("encoding the ssh Secret: {e}")))?,
        );
        outcome = SecretOutcome::Rekeyed;
    }
    let owned = owner.as_ref().is_none_or(|owner| {
        existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner.uid)
    });
    if !owned && let Some(owner) = &owner {
        // Strategic merge: ownerReferences merge by uid, the existing owners stay.
        patch.insert(
            "metadata".into(),
            serde_json::json!({"ownerReferences": [owner]}),
        );
    }
    if patch.is_empty() {
        return Ok(outcome);
    }
    let meta = patch
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    meta["resourceVersion"] = serde_json::json!(existing.metadata.resource_version);
    let patched = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Strategic(&serde_json::Value::Object(patch)),
        )
        .await;
    match (patched, outcome) {
        (Ok(_), SecretOutcome::Rekeyed) => {
            tracing::warn!(
                namespace,
                secret = name,
                "the ssh Secret held other keys than the master key gives: replaced (instances started before need a restart for ssh)"
            );
            Ok(outcome)
        }
        (Ok(_), _) => Ok(outcome),
        // Someone changed it meanwhile (another admission did the same): next admission checks again.
        (Err(kube::Error::Api(s)), SecretOutcome::Rekeyed) if s.code == 409 => {
            Ok(SecretOutcome::Rekeyed)
        }
        (Err(e), SecretOutcome::Rekeyed) => Err(e.into()),
        (Err(e), _) => {
            // Best effort: the Secret is usable either way, the janitor covers cleanup.
            tracing::warn!(namespace, secret = name, error = %e, "cannot add the StatefulSet as owner of the ssh Secret");
            Ok(outcome)
        }
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                // A missing Secret must never keep the app from starting: the daemon then
                // reports that ssh is disabled and the app runs as usual.
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

impl SshInjector {
    fn key_env(&self, secret: &str) -> Vec<EnvVar> {
        let mut env = vec![
            secret_env(ENV_HOST_KEY, secret, keys::HOST_KEY),
            secret_env(ENV_AUTHORIZED_KEYS, secret, keys::AUTHORIZED_KEY),
            plain_env(ENV_PORT, self.options.port.to_string()),
        ];
        if let Some(shell) = &self.options.shell {
            env.push(plain_env(ENV_SHELL, shell.clone()));
        }
        env
    }

    fn helper_security_context() -> SecurityContext {
        SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn binary_command(&self, extra: &[&str]) -> Vec<String> {
        let mut cmd = vec![self.options.image_binary.clone()];
        cmd.extend(self.options.daemon_args.iter().cloned());
        cmd.extend(extra.iter().map(|s| (*s).to_owned()));
        cmd
    }

    /// The init container copying the daemon binary into the shared volume.
    pub fn init_container(&self) -> Container {
        let dest = self.options.daemon_path();
        Container {
            name: format!("{NAME}-install"),
            image: Some(self.options.image.clone()),
            image_pull_policy: self.options.image_pull_policy.clone(),
            command: Some(self.binary_command(&["install", &dest])),
            volume_mounts: Some(vec![self.volume_mount(false)]),
            security_context: Some(Self::helper_security_context()),
            resources: self.options.resources.clone(),
            ..Default::default()
        }
    }

    fn volume_mount(&self, read_only: bool) -> VolumeMount {
        VolumeMount {
            name: NAME.into(),
            mount_path: self.options.mount_path.clone(),
            read_only: read_only.then_some(true),
            ..Default::default()
        }
    }

    /// The wrapped command: the daemon, `--exec --`, then the original command unchanged.
    pub fn wrapped_command(&self, original: &[String]) -> Vec<String> {
        let mut cmd = vec![self.options.daemon_path()];
        cmd.extend(self.options.daemon_args.iter().cloned());
        cmd.push("--exec".into());
        cmd.push("--".into());
        cmd.extend(original.iter().cloned());
        cmd
    }

    fn sidecar(&self, app: &Container, secret: &str) -> Container {
        Container {
            name: NAME.into(),
            image: Some(self.options.image.clone()),
            image_pull_policy: self.options.image_pull_policy.clone(),
            command: Some(self.binary_command(&["--idle-without-keys"])),
            env: Some(self.key_env(secret)),
            // Sessions see the app's files through its volumes.
            volume_mounts: app.volume_mounts.clone(),
            working_dir: app.working_dir.clone(),
            security_context: Some(Self::helper_security_context()),
            resources: self.options.resources.clone(),
            ..Default::default()
        }
    }

    /// What in `pod` already uses a name or path the injection would add, described for a warning.
    fn name_conflict(&self, pod: &Pod, app: &Container, sidecar: bool) -> Option<String> {
        let spec = pod.spec.as_ref()?;
        let container_named = |name: &str| {
            spec.init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .any(|c| c.name == name)
        };
        if sidecar {
            return container_named(NAME).then(|| format!("a container named {NAME:?}"));
        }
        if spec.volumes.iter().flatten().any(|v| v.name == NAME) {
            return Some(format!("a volume named {NAME:?}"));
        }
        let install = format!("{NAME}-install");
        if container_named(&install) {
            return Some(format!("a container named {install:?}"));
        }
        app.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == self.options.mount_path)
            .map(|m| format!("a volume mounted at {:?}", m.mount_path))
    }

    fn target(&self, pod: &Pod) -> Option<(usize, Container)> {
        let containers = &pod.spec.as_ref()?.containers;
        let index = match &self.options.container {
            Some(name) => containers.iter().position(|c| &c.name == name)?,
            None => 0,
        };
        containers.get(index).map(|c| (index, c.clone()))
    }
}

#[eirinix_core::async_trait]
impl Extension for SshInjector {
    fn name(&self) -> &str {
        EXTENSION_NAME
    }

    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides {
            failure_policy: Some(self.options.failure_policy),
            // Creates Secrets, but never for dry-run requests.
            side_effects: Some(eirinix_core::SideEffects::NoneOnDryRun),
            ..Default::default()
        }
    }

    async fn mutate(
        &self,
        ctx: &Context,
        request: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        if request.operation != Operation::Create || PodPatch::is_marked(pod, EXTENSION_NAME) {
            return Ok(Mutation::unchanged());
        }
        let Some(guid) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GUID_LABEL))
            .filter(|g| !g.is_empty())
        else {
            return Ok(Mutation::unchanged());
        };
        let Some((index, app)) = self.target(pod) else {
            return Ok(Mutation::unchanged().with_warning(format!(
                "ssh: no container {:?} in the pod; ssh access not injected",
                self.options.container.as_deref().unwrap_or_default()
            )));
        };
        let command = app.command.clone().unwrap_or_default();
        if command.first() == Some(&self.options.daemon_path()) {
            // Wrapped already (a copy of an injected pod): nothing to do.
            return Ok(Mutation::unchanged());
        }
        let sidecar = command.is_empty();
        if sidecar && !self.options.sidecar_fallback {
            self.metrics
                .skipped_no_command
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Mutation::unchanged().with_warning(format!(
                "ssh: container {:?} has no explicit command (image ENTRYPOINT), so the ssh daemon cannot wrap it; ssh access not injected",
                app.name
            )));
        }
        if let Some(conflict) = self.name_conflict(pod, &app, sidecar) {
            // Adding a second one would make the apiserver reject the pod outright.
            self.metrics
                .skipped_name_conflict
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Mutation::unchanged().with_warning(format!(
                "ssh: the pod already has {conflict}; ssh access not injected"
            )));
        }
        // Whoever reaches the webhook port can send a review naming any namespace: Secrets are
        // only ever created in the namespaces this manager serves (SECURITY.md). Dry runs
        // (offline reviews included) have no side effects.
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        if !request.dry_run
            && (request.namespace.is_none() || !serves_namespace(ctx.settings(), &namespace))
        {
            self.metrics
                .skipped_namespace
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Mutation::unchanged().with_warning(format!(
                "ssh: namespace {namespace:?} is not served by this webhook; ssh access not injected"
            )));
        }
        let secret = self.options.secret_name(guid);
        if !request.dry_run {
            let client = ctx.client()?;
            let owner = if self.options.owner_references {
                // The lookup by name is a fallback: without it the Secret is just not owned.
                statefulset_owner(Some(client), &namespace, pod, guid)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(%namespace, error = %e, "cannot look up the app's StatefulSet");
                        None
                    })
            } else {
                None
            };
            let keys = self.master(ctx).await?.app_keys(guid)?;
            match ensure_secret(client, &namespace, &secret, guid, owner, &keys).await? {
                SecretOutcome::Created => {
                    self.metrics.secrets_created.fetch_add(1, Ordering::Relaxed);
                }
                SecretOutcome::Reused => {
                    self.metrics.secrets_reused.fetch_add(1, Ordering::Relaxed);
                }
                SecretOutcome::Rekeyed => {
                    self.metrics.secrets_rekeyed.fetch_add(1, Ordering::Relaxed);
                }
                SecretOutcome::Foreign => {
                    // Its keys are not ours to hand to the daemon: no ssh for this pod.
                    self.metrics.foreign_secrets.fetch_add(1, Ordering::Relaxed);
                    return Ok(Mutation::unchanged().with_warning(format!(
                        "ssh: Secret {namespace}/{secret} exists and is not an eirinix ssh Secret (no eirinix.org/ssh=keys label); ssh access not injected until it is removed"
                    )));
                }
            }
        }

        let mut p = PodPatch::new(pod);
        if sidecar {
            p.add_container(&self.sidecar(&app, &secret))?;
            self.metrics.sidecars.fetch_add(1, Ordering::Relaxed);
        } else {
            let c = ContainerRef::App(index);
            p.add_volume(&Volume {
                name: NAME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            })?;
            p.add_init_container(&self.init_container())?;
            p.add_volume_mount(c, &self.volume_mount(true))?;
            for env in self.key_env(&secret) {
                p.add_env(c, &env)?;
            }
            // `args` stay as they are: the process is <daemon> --exec -- <command> <args>.
            p.set_command(c, &self.wrapped_command(&command), None)?;
            self.metrics.injected.fetch_add(1, Ordering::Relaxed);
        }
        p.mark(EXTENSION_NAME);
        Ok(Mutation::patch(p.build()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eirinix_core::review::review;

    fn app_pod(command: Option<&[&str]>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "myapp-0", "namespace": "apps", "labels": {
                "cloudfoundry.org/guid": "4e7c8f2a-guid", "cloudfoundry.org/source_type": "APP"}},
            "spec": {"containers": [{
                "name": "opi", "image": "eirini/app:1",
                "command": command, "args": ["--port", "8080"],
                "env": [{"name": "PORT", "value": "8080"}]
            }]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn wraps_the_command_and_references_the_keys() {
        let injector = SshInjector::default();
        let pod = app_pod(Some(&["/bin/app", "serve"]));
        let reviewed = review(injector.clone(), &pod).await.unwrap();
        let spec = reviewed.pod.spec.unwrap();
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, "eirinix-ssh-install");
        assert_eq!(
            init.command.as_ref().unwrap(),
            &[
                "/usr/local/bin/eirinix",
                "sshd",
                "install",
                "/eirinix/ssh/eirinix-sshd"
            ]
        );
        let app = &spec.containers[0];
        assert_eq!(
            app.command.as_ref().unwrap(),
            &[
                "/eirinix/ssh/eirinix-sshd",
                "sshd",
                "--exec",
                "--",
                "/bin/app",
                "serve"
            ]
        );
        assert_eq!(
            app.args.as_ref().unwrap(),
            &["--port", "8080"],
            "args untouched"
        );
        let env = app.env.as_ref().unwrap();
        let key = env.iter().find(|e| e.name == ENV_HOST_KEY).unwrap();
        assert_eq!(key.value, None, "never in clear");
        let sel = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(sel.name, "eirinix-ssh-4e7c8f2a-guid");
        assert_eq!(sel.key, "host-key");
        assert_eq!(sel.optional, Some(true));
        assert!(env.iter().any(|e| e.name == ENV_AUTHORIZED_KEYS));
        assert!(env.iter().any(|e| e.name == "PORT"), "existing env kept");
        assert!(
            app.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/eirinix/ssh")
        );
        assert!(
            spec.volumes
                .unwrap()
                .iter()
                .any(|v| v.name == NAME && v.empty_dir.is_some())
        );
        assert_eq!(
            reviewed.pod.metadata.annotations.unwrap()["eirinix.org/ssh"],
            "injected"
        );
        assert_eq!(injector.metrics().injected(), 1);
        // Serialized pod spec carries no key material.
        let json = serde_json::to_string(&reviewed.mutation.as_patch().unwrap()).unwrap();
        assert!(!json.contains("PRIVATE KEY") && !json.contains("ssh-ed25519"));
    }

    #[tokio::test]
    async fn injection_is_idempotent() {
        let injector = SshInjector::default();
        let pod = app_pod(Some(&["/bin/app"]));
        let once = review(injector.clone(), &pod).await.unwrap().pod;
        let twice = review(injector.clone(), &once).await.unwrap();
        assert!(twice.mutation.as_patch().is_none());
        // Even without the marker (annotation stripped), a wrapped command is not wrapped again.
        let mut stripped = once.clone();
        stripped.metadata.annotations = None;
        let again = review(injector, &stripped).await.unwrap();
        assert!(again.mutation.as_patch().is_none());
    }

    #[tokio::test]
    async fn names_already_taken_mean_a_warning_not_a_pod_the_apiserver_rejects() {
        let taken = [
            (
                serde_json::json!({"volumes": [{"name": "eirinix-ssh", "emptyDir": {}}]}),
                "a volume named",
            ),
            (
                serde_json::json!({"initContainers": [{"name": "eirinix-ssh-install", "image": "x"}]}),
                "a container named",
            ),
            (
                serde_json::json!({"containers": [{"name": "opi", "image": "eirini/app:1",
                    "command": ["/bin/app"],
                    "volumeMounts": [{"name": "other", "mountPath": "/eirinix/ssh"}]}],
                    "volumes": [{"name": "other", "emptyDir": {}}]}),
                "a volume mounted at",
            ),
        ];
        for (extra, expected) in taken {
            let injector = SshInjector::default();
            let mut value = serde_json::to_value(app_pod(Some(&["/bin/app"]))).unwrap();
            for (k, v) in extra.as_object().unwrap() {
                value["spec"][k] = v.clone();
            }
            let pod: Pod = serde_json::from_value(value).unwrap();
            let reviewed = review(injector.clone(), &pod).await.unwrap();
            assert!(reviewed.mutation.as_patch().is_none(), "{expected}");
            assert!(
                reviewed.mutation.warnings[0].contains(expected),
                "{:?}",
                reviewed.mutation.warnings
            );
            assert_eq!(injector.metrics().skipped_name_conflict(), 1);
            assert_eq!(injector.metrics().injected(), 0);
        }
        // The sidecar fallback adds a container named eirinix-ssh.
        let injector = SshInjector::new(SshOptions {
            sidecar_fallback: true,
            ..Default::default()
        });
        let mut value = serde_json::to_value(app_pod(None)).unwrap();
        value["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "eirinix-ssh", "image": "x"}));
        let pod: Pod = serde_json::from_value(value).unwrap();
        let reviewed = review(injector.clone(), &pod).await.unwrap();
        assert!(reviewed.mutation.as_patch().is_none());
        assert_eq!(injector.metrics().sidecars(), 0);
        assert!(
            eirinix_core::metrics::render(injector.metrics().clone())
                .lines()
                .any(|l| l == "eirinix_ssh_skipped_name_conflict_total 1")
        );
    }

    #[tokio::test]
    async fn no_command_means_a_warning_and_a_metric_or_a_sidecar() {
        let injector = SshInjector::default();
        let reviewed = review(injector.clone(), &app_pod(None)).await.unwrap();
        assert!(reviewed.mutation.as_patch().is_none());
        assert!(reviewed.mutation.warnings[0].contains("no explicit command"));
        assert_eq!(injector.metrics().skipped_no_command(), 1);
        assert!(
            eirinix_core::metrics::render(injector.metrics().clone())
                .lines()
                .any(|l| l == "eirinix_ssh_skipped_no_command_total 1")
        );

        let sidecar = SshInjector::new(SshOptions {
            sidecar_fallback: true,
            ..Default::default()
        });
        let reviewed = review(sidecar.clone(), &app_pod(None)).await.unwrap();
        let spec = reviewed.pod.spec.unwrap();
        assert_eq!(spec.containers.len(), 2);
        let side = &spec.containers[1];
        assert_eq!(side.name, NAME);
        assert_eq!(
            side.command.as_ref().unwrap(),
            &["/usr/local/bin/eirinix", "sshd", "--idle-without-keys"]
        );
        assert!(
            side.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == ENV_HOST_KEY)
        );
        assert_eq!(
            spec.containers[0].command, None,
            "the app container is untouched"
        );
        assert!(spec.init_containers.is_none());
        assert_eq!(sidecar.metrics().sidecars(), 1);
    }

    #[tokio::test]
    async fn pods_without_guid_are_left_alone() {
        let mut pod = app_pod(Some(&["/bin/app"]));
        pod.metadata.labels = None;
        let reviewed = review(SshInjector::default(), &pod).await.unwrap();
        assert!(reviewed.mutation.as_patch().is_none());
        assert!(reviewed.mutation.warnings.is_empty());
    }

    #[tokio::test]
    async fn a_named_container_is_wrapped() {
        let mut pod = app_pod(Some(&["/bin/app"]));
        let mut second = pod.spec.as_ref().unwrap().containers[0].clone();
        second.name = "main".into();
        second.command = Some(vec!["/bin/main".into()]);
        pod.spec.as_mut().unwrap().containers.push(second);
        let injector = SshInjector::new(SshOptions {
            container: Some("main".into()),
            daemon_args: vec![],
            ..Default::default()
        });
        let spec = review(injector, &pod).await.unwrap().pod.spec.unwrap();
        assert_eq!(spec.containers[0].command.as_ref().unwrap(), &["/bin/app"]);
        assert_eq!(
            spec.containers[1].command.as_ref().unwrap(),
            &["/eirinix/ssh/eirinix-sshd", "--exec", "--", "/bin/main"]
        );
    }

    #[test]
    fn registration_declares_no_side_effects_on_dry_run() {
        let o = SshInjector::default().webhook();
        assert_eq!(
            o.side_effects,
            Some(eirinix_core::SideEffects::NoneOnDryRun)
        );
        assert_eq!(o.failure_policy, Some(eirinix_core::FailurePolicy::Ignore));
    }
}
