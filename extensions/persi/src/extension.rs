//! The persi webhook: mount the PVCs that `VCAP_SERVICES` volume bindings name.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use eirinix_core::patch::JsonValue;
use eirinix_core::{
    Context, Extension, ExtensionError, FailurePolicy, Mutation, Operation, PatchText, Request,
    ViewExtension, WebhookOverrides, async_trait,
};
use json_patch::jsonptr::{Pointer, PointerBuf};
use k8s_openapi::api::admissionregistration::v1::MatchCondition;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Pod, Secret};
use kube::Api;
use kube::core::admission::Operation as AdmissionOperation;

use crate::names;
use crate::vcap::{self, BindingRef, Labels, VcapError, VolumeRequest};
use crate::view::{PersiPod, Spec};

/// The extension's name: webhook path `/persi`, marker annotation `eirinix.org/persi`.
pub const NAME: &str = "persi";

/// Group of the `vcap` user in Eirini app images (uid 2000, gid 2000).
pub const VCAP_GROUP: i64 = 2000;

/// What persi can be told; `Default` is what Eirini app pods need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersiOptions {
    /// `fsGroup` given to pods that get a volume and have no `fsGroup` (a pod-level `runAsGroup`
    /// is used instead when set), so the app user can write; `None` leaves the security context alone.
    pub fs_group: Option<i64>,
    /// `fsGroupChangePolicy` set along with `fs_group` (default `OnRootMismatch`: no recursive
    /// chown of big volumes at every start).
    pub fs_group_change_policy: Option<String>,
    /// Failure policy of persi's webhook; `None` keeps the manager's (Fail by default).
    pub failure_policy: Option<FailurePolicy>,
    /// Service labels whose bindings are read; empty means all (EiriniX read only `eirini-persi`).
    pub service_labels: Vec<String>,
    /// Read `VCAP_SERVICES` given through `valueFrom` (Secret or ConfigMap key) from the API;
    /// when off, such pods are admitted unchanged with a warning.
    pub resolve_references: bool,
    /// Register a CEL `matchConditions` entry ([`VCAP_MATCH_CONDITION`]) so the apiserver does
    /// not call persi for pods without a `VCAP_SERVICES` variable: they never get a volume.
    pub match_condition: bool,
}

/// Name of persi's match condition.
pub const VCAP_MATCH_CONDITION_NAME: &str = "has-vcap-services";

/// The CEL expression of persi's match condition: some app container has a `VCAP_SERVICES`
/// variable (the only place persi reads bindings from).
pub const VCAP_MATCH_CONDITION: &str =
    "object.spec.containers.exists(c, has(c.env) && c.env.exists(e, e.name == 'VCAP_SERVICES'))";

impl Default for PersiOptions {
    fn default() -> Self {
        Self {
            fs_group: Some(VCAP_GROUP),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            failure_policy: None,
            service_labels: Vec::new(),
            resolve_references: true,
            match_condition: true,
        }
    }
}

/// Why persi cannot mutate a pod; the message names container, binding and problem.
#[derive(Debug, thiserror::Error)]
pub enum PersiError {
    /// `VCAP_SERVICES` of a container is unusable.
    #[error(transparent)]
    Vcap(#[from] VcapError),
    /// The pod already mounts something else at a binding's `container_dir`.
    #[error(
        "container {container:?}, binding {binding}: container_dir {dir:?} is already mounted from volume {volume:?}"
    )]
    DirInUse {
        /// Container name.
        container: String,
        /// The binding asking for the path (boxed: keeps the error small).
        binding: Box<BindingRef>,
        /// The path.
        dir: String,
        /// The volume already mounted there.
        volume: String,
    },
    /// `VCAP_SERVICES` comes from a Secret or ConfigMap that cannot be read.
    #[error(
        "container {container:?}: cannot read VCAP_SERVICES from {kind} {name:?} key {key:?}: {reason}"
    )]
    Reference {
        /// Container name.
        container: String,
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Key in the object.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// Several of the above, across containers.
    #[error("{}", join(.0))]
    Several(Vec<PersiError>),
}

fn join(errors: &[PersiError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl PersiError {
    fn collect(mut errors: Vec<PersiError>) -> Result<(), PersiError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(PersiError::Several(errors)),
        }
    }
}

/// The volume requests of one app container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRequests {
    /// Index in `spec.containers`.
    pub index: usize,
    /// Container name.
    pub name: String,
    /// What its `VCAP_SERVICES` asks for.
    pub requests: Vec<VolumeRequest>,
}

/// What reading the pod's `VCAP_SERVICES` produced.
struct Found {
    containers: Vec<ContainerRequests>,
    errors: Vec<PersiError>,
    warnings: Vec<String>,
}

/// The persi extension: every volume binding of an app container becomes a PVC volume and mount.
#[derive(Clone, Debug, Default)]
pub struct Persi {
    options: PersiOptions,
}

impl Persi {
    /// Persi with `options`.
    pub fn new(options: PersiOptions) -> Self {
        Self { options }
    }

    /// The options in effect.
    pub fn options(&self) -> &PersiOptions {
        &self.options
    }

    fn labels(&self) -> Labels<'_> {
        if self.options.service_labels.is_empty() {
            Labels::Any
        } else {
            Labels::Only(&self.options.service_labels)
        }
    }

    /// The volume requests of containers whose `VCAP_SERVICES` is a plain value, the
    /// `VCAP_SERVICES` env vars that are references (`valueFrom`), and the problems found.
    #[allow(clippy::type_complexity)]
    fn requests_of(
        &self,
        pod: &PersiPod,
    ) -> (
        Vec<ContainerRequests>,
        Vec<(usize, EnvVar)>,
        Vec<PersiError>,
    ) {
        let mut out = Vec::new();
        let mut refs = Vec::new();
        let mut errors = Vec::new();
        let containers = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
        for (index, c) in containers.iter().enumerate() {
            // The last definition wins, as in the kubelet (the view keeps only that one).
            let Some(env) = c.vcap.0.as_ref() else {
                continue;
            };
            match (&env.value, &env.value_from) {
                (_, Some(_)) => refs.push((index, env.clone())),
                (Some(value), None) => match vcap::volume_requests(&c.name, value, self.labels()) {
                    Ok(requests) if requests.is_empty() => {}
                    Ok(requests) => out.push(ContainerRequests {
                        index,
                        name: c.name.clone(),
                        requests,
                    }),
                    Err(e) => errors.push(e.into()),
                },
                (None, None) => {}
            }
        }
        (out, refs, errors)
    }

    /// Read referenced `VCAP_SERVICES` values and parse them, adding to `found`.
    async fn resolve(
        &self,
        ctx: &Context,
        namespace: &str,
        pod: &PersiPod,
        refs: Vec<(usize, EnvVar)>,
        found: &mut Found,
    ) {
        let Found {
            containers: out,
            errors,
            warnings,
        } = found;
        let containers = pod.spec.as_ref().map_or(&[][..], |s| &s.containers[..]);
        let mut cache: HashMap<(&'static str, String), Option<BTreeMap<String, String>>> =
            HashMap::new();
        for (index, env) in refs {
            let Some(container) = containers.get(index) else {
                continue;
            };
            let from = env.value_from.unwrap_or_default();
            let (kind, name, key, optional) = if let Some(r) = from.secret_key_ref {
                ("Secret", r.name, r.key, r.optional.unwrap_or(false))
            } else if let Some(r) = from.config_map_key_ref {
                ("ConfigMap", r.name, r.key, r.optional.unwrap_or(false))
            } else {
                warnings.push(format!(
                    "persi: container {:?}: VCAP_SERVICES from a field reference is not read",
                    container.name
                ));
                continue;
            };
            if !self.options.resolve_references {
                warnings.push(format!(
                    "persi: container {:?}: VCAP_SERVICES from {kind} {name:?} is not read (references are off); no volumes mounted",
                    container.name
                ));
                continue;
            }
            let fail = |reason: String| PersiError::Reference {
                container: container.name.clone(),
                kind,
                name: name.clone(),
                key: key.clone(),
                reason,
            };
            let data = match cache.get(&(kind, name.clone())) {
                Some(d) => d.clone(),
                None => match fetch(ctx, namespace, kind, &name).await {
                    Ok(d) => {
                        cache.insert((kind, name.clone()), d.clone());
                        d
                    }
                    Err(reason) => {
                        errors.push(fail(reason));
                        continue;
                    }
                },
            };
            let value = match data {
                None if optional => continue,
                None => {
                    errors.push(fail("it does not exist".into()));
                    continue;
                }
                Some(map) => match map.get(&key) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => {
                        errors.push(fail("the key does not exist".into()));
                        continue;
                    }
                },
            };
            match vcap::volume_requests(&container.name, &value, self.labels()) {
                Ok(requests) if requests.is_empty() => {}
                Ok(requests) => out.push(ContainerRequests {
                    index,
                    name: container.name.clone(),
                    requests,
                }),
                Err(e) => errors.push(e.into()),
            }
        }
        out.sort_by_key(|c| c.index);
    }
}

/// Whether the manager serves `namespace`: its namespace when it has one, else every namespace
/// its webhook configuration does not exclude.
fn serves_namespace(settings: &eirinix_core::Settings, namespace: &str) -> bool {
    match &settings.namespace {
        Some(ns) => ns == namespace,
        None => !settings
            .effective_excluded_namespaces()
            .iter()
            .any(|n| n == namespace),
    }
}

/// The string data of a Secret or ConfigMap (`None` when it does not exist).
async fn fetch(
    ctx: &Context,
    namespace: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let client = ctx.client().map_err(|e| e.message())?.clone();
    match kind {
        "Secret" => {
            let secret = Api::<Secret>::namespaced(client, namespace)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            Ok(secret.map(|s| {
                let mut map: BTreeMap<String, String> = s.string_data.unwrap_or_default();
                for (k, v) in s.data.unwrap_or_default() {
                    map.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                map
            }))
        }
        _ => {
            let cm = Api::<ConfigMap>::namespaced(client, namespace)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            Ok(cm.map(|c| c.data.unwrap_or_default()))
        }
    }
}

/// The patch mounting what `containers` ask for into `pod` (empty when everything is there).
///
/// Volumes are shared per claim (an existing volume of the claim is reused), mounts already
/// present are skipped, and nothing is emitted unless every request can be honoured. The patch
/// is written as JSON text as it is built (issue 20: a tree of values cost more than the rest).
pub fn build_patch(
    pod: &PersiPod,
    containers: &[ContainerRequests],
    options: &PersiOptions,
) -> Result<PatchText, PersiError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(PatchText::new());
    };
    let existing = spec.volumes.as_deref().unwrap_or(&[]);
    // Small maps keyed by what the view and the requests already hold (no copies, no hashing):
    // a pod has a handful of volumes and mounts (issue 20).
    let mut claim_volume: BTreeMap<&str, Cow<'_, str>> = existing
        .iter()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|pvc| (pvc.claim_name.as_str(), Cow::Borrowed(v.name.as_str())))
        })
        .collect();
    // Names a new volume must not take: the pod's volumes, and volumes its containers mount
    // even if the pod does not define them (a new volume would silently back those mounts).
    let mut used: BTreeSet<Cow<'_, str>> = existing
        .iter()
        .map(|v| v.name.as_str())
        .chain(mounted_volume_names(spec))
        .map(Cow::Borrowed)
        .collect();
    // (volume name, claim) of each new volume; (container index, mount) of each mount.
    let mut new_volumes: Vec<NewVolume<'_>> = Vec::new();
    let mut new_mounts: Vec<(usize, NewMount<'_>)> = Vec::new();
    let mut errors = Vec::new();

    for c in containers {
        let Some(container) = spec.containers.get(c.index) else {
            continue;
        };
        let mut mounted: BTreeMap<&str, Cow<'_, str>> = container
            .volume_mounts
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|m| (normalized(&m.mount_path), Cow::Borrowed(m.name.as_str())))
            .collect();
        for req in &c.requests {
            let known = claim_volume.get(req.claim.as_str()).cloned();
            match mounted.get(req.container_dir.as_str()) {
                // Already mounted from a volume of the claim (a mount of the name alone, with
                // no such volume in the pod, does not count).
                Some(v) if known.as_ref() == Some(v) => continue,
                Some(v) => {
                    errors.push(PersiError::DirInUse {
                        container: c.name.clone(),
                        binding: Box::new(req.binding.clone()),
                        dir: req.container_dir.clone(),
                        volume: v.to_string(),
                    });
                    continue;
                }
                None => {}
            }
            let volume = match known {
                Some(volume) => volume,
                None => {
                    let volume = (0u32..)
                        .map(|salt| names::volume_name(&req.claim, salt))
                        .find(|n| !used.contains(n.as_str()))
                        .unwrap_or_default();
                    used.insert(Cow::Owned(volume.clone()));
                    claim_volume.insert(&req.claim, Cow::Owned(volume.clone()));
                    new_volumes.push(NewVolume {
                        name: Cow::Owned(volume.clone()),
                        claim: &req.claim,
                    });
                    Cow::Owned(volume)
                }
            };
            mounted.insert(&req.container_dir, volume.clone());
            new_mounts.push((
                c.index,
                NewMount {
                    name: volume,
                    mount_path: &req.container_dir,
                    read_only: req.read_only,
                },
            ));
        }
    }
    PersiError::collect(errors)?;
    let mut patch = PatchText::new();
    if new_mounts.is_empty() {
        return Ok(patch);
    }

    let mut volumes = spec.volumes.is_some();
    for volume in &new_volumes {
        append(&mut patch, VOLUMES, &mut volumes, |v| volume.write(v));
    }
    let mut mounts: BTreeMap<usize, bool> = BTreeMap::new();
    let mut path = String::new();
    for (index, mount) in &new_mounts {
        let exists = mounts.entry(*index).or_insert_with(|| {
            spec.containers
                .get(*index)
                .is_some_and(|c| c.volume_mounts.is_some())
        });
        path.clear();
        path.push_str("/spec/containers/");
        path.push_str(itoa::Buffer::new().format(*index));
        path.push_str("/volumeMounts/-");
        let (list, item) = (own_path(&path[..path.len() - 2]), own_path(&path));
        append(&mut patch, (&list, &item), exists, |v| mount.write(v));
    }
    fs_group_ops(&mut patch, spec, containers, options);
    if pod.metadata.annotations.is_some() {
        patch.add_with(MARKER_PATH, |v| v.str(MARKER_VALUE));
    } else {
        patch.add_with(ANNOTATIONS, |v| {
            v.object(|o| o.field(MARKER).str(MARKER_VALUE))
        });
    }
    Ok(patch)
}

/// persi's marker annotation, `eirinix_core::patch::marker_key(NAME)` (a test checks it),
/// its path, and its value, as `PodPatch::mark` writes them.
pub(crate) const MARKER: &str = "eirinix.org/persi";
const MARKER_PATH: &Pointer = Pointer::from_static("/metadata/annotations/eirinix.org~1persi");
const MARKER_VALUE: &str = "injected";

/// persi's fixed paths, checked when persi is built (`from_static` is a `const fn`).
const ANNOTATIONS: &Pointer = Pointer::from_static("/metadata/annotations");
const VOLUMES: (&Pointer, &Pointer) = (
    Pointer::from_static("/spec/volumes"),
    Pointer::from_static("/spec/volumes/-"),
);
const SECURITY_CONTEXT: &Pointer = Pointer::from_static("/spec/securityContext");
const FS_GROUP: &Pointer = Pointer::from_static("/spec/securityContext/fsGroup");
const FS_GROUP_CHANGE_POLICY: &Pointer =
    Pointer::from_static("/spec/securityContext/fsGroupChangePolicy");

/// A new volume of the patch: a claim's.
struct NewVolume<'a> {
    name: Cow<'a, str>,
    claim: &'a str,
}

impl NewVolume<'_> {
    fn write(&self, value: JsonValue<'_>) {
        value.object(|o| {
            o.field("name").str(&self.name);
            o.field("persistentVolumeClaim")
                .object(|c| c.field("claimName").str(self.claim));
        });
    }
}

/// A new mount of the patch; `readOnly` only when set.
struct NewMount<'a> {
    name: Cow<'a, str>,
    mount_path: &'a str,
    read_only: bool,
}

impl NewMount<'_> {
    fn write(&self, value: JsonValue<'_>) {
        value.object(|o| {
            o.field("name").str(&self.name);
            o.field("mountPath").str(self.mount_path);
            if self.read_only {
                o.field("readOnly").bool(true);
            }
        });
    }
}

/// A pointer to `path`, one of persi's own paths (plain tokens, valid as written; were one
/// not, its tokens are escaped instead). Parsed, not built token by token (issue 20).
fn own_path(path: &str) -> Cow<'_, Pointer> {
    Pointer::parse(path).map_or_else(
        |_| Cow::Owned(PointerBuf::from_tokens(path.split('/').skip(1))),
        Cow::Borrowed,
    )
}

/// Append the value `write` writes to the list at `list` (whose end is `item`), creating the
/// list when `exists` is false (and noting that it then exists).
fn append(
    patch: &mut PatchText,
    (list, item): (&Pointer, &Pointer),
    exists: &mut bool,
    write: impl Fn(JsonValue<'_>),
) {
    if *exists {
        patch.add_with(item, write);
    } else {
        *exists = true;
        patch.add_with(list, |v| v.list(|items| write(items.item())));
    }
}

/// Every volume name mounted by a container of any kind (app, init, ephemeral).
fn mounted_volume_names(spec: &Spec) -> impl Iterator<Item = &str> + '_ {
    let init = spec.init_containers.iter().flatten();
    let ephemeral = spec.ephemeral_containers.iter().flatten();
    spec.containers
        .iter()
        .chain(init)
        .chain(ephemeral)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
}

/// A mount path without its trailing slashes (`/` stays `/`).
fn normalized(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// The operations giving the pod an `fsGroup`, unless it has one (or fs groups are off).
fn fs_group_ops(
    patch: &mut PatchText,
    spec: &Spec,
    containers: &[ContainerRequests],
    options: &PersiOptions,
) {
    let Some(default) = options.fs_group else {
        return;
    };
    let sc = spec.security_context.as_ref();
    if sc.is_some_and(|sc| sc.fs_group.is_some()) {
        return;
    }
    // Prefer the group the app already runs as: the pod's, else the one all mounting containers share.
    let container_groups: BTreeSet<Option<i64>> = containers
        .iter()
        .filter_map(|c| spec.containers.get(c.index))
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_group))
        .collect();
    let shared_container_group = match container_groups.into_iter().collect::<Vec<_>>()[..] {
        [Some(g)] => Some(g),
        _ => None,
    };
    let group = sc
        .and_then(|sc| sc.run_as_group)
        .or(shared_container_group)
        .unwrap_or(default);
    let policy = options
        .fs_group_change_policy
        .as_deref()
        .filter(|_| sc.is_none_or(|sc| sc.fs_group_change_policy.is_none()));
    match sc {
        None => {
            patch.add_with(SECURITY_CONTEXT, |v| {
                v.object(|o| {
                    o.field("fsGroup").int(group);
                    if let Some(policy) = policy {
                        o.field("fsGroupChangePolicy").str(policy);
                    }
                })
            });
        }
        Some(_) => {
            patch.add_with(FS_GROUP, |v| v.int(group));
            if let Some(policy) = policy {
                patch.add_with(FS_GROUP_CHANGE_POLICY, |v| v.str(policy));
            }
        }
    }
}

#[async_trait]
impl Extension for Persi {
    fn name(&self) -> &str {
        NAME
    }

    /// The typed path (offline review, callers holding a Pod): the pod seen as the server sees
    /// it, then the same decision as [`ViewExtension::mutate_view`].
    async fn mutate(
        &self,
        ctx: &Context,
        request: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        self.mutate_view(ctx, request, &PersiPod::of(pod)).await
    }

    fn webhook(&self) -> WebhookOverrides {
        let match_conditions = if self.options.match_condition {
            vec![MatchCondition {
                name: VCAP_MATCH_CONDITION_NAME.into(),
                expression: VCAP_MATCH_CONDITION.into(),
            }]
        } else {
            Vec::new()
        };
        WebhookOverrides {
            failure_policy: self.options.failure_policy,
            // Pod volumes are immutable: UPDATE reviews could only fail.
            operations: Some(vec![Operation::Create]),
            match_conditions,
            ..Default::default()
        }
    }
}

#[async_trait]
impl ViewExtension for Persi {
    type View = PersiPod;

    async fn mutate_view(
        &self,
        ctx: &Context,
        request: &Request,
        pod: &PersiPod,
    ) -> Result<Mutation, ExtensionError> {
        // Volumes and mounts of a pod cannot change after creation: an UPDATE patch would
        // make the apiserver reject the update, so only CREATE is ever mutated.
        let marked = pod.metadata.annotations.as_ref().is_some_and(|a| a.marked);
        if request.operation != AdmissionOperation::Create || marked {
            return Ok(Mutation::unchanged());
        }
        let (containers, refs, errors) = self.requests_of(pod);
        let mut found = Found {
            containers,
            errors,
            warnings: Vec::new(),
        };
        if !refs.is_empty() {
            match request
                .namespace
                .as_deref()
                .or(pod.metadata.namespace.as_deref())
            {
                // Reading objects is a side effect a caller could probe with: only in the
                // namespaces this manager serves (a forged review may name any).
                Some(ns) if serves_namespace(ctx.settings(), ns) => {
                    self.resolve(ctx, ns, pod, refs, &mut found).await
                }
                Some(ns) => found.warnings.push(format!(
                    "persi: namespace {ns:?} is not served by this webhook; VCAP_SERVICES references are not read"
                )),
                None => found.warnings.push(
                    "persi: the pod has no namespace; VCAP_SERVICES references are not read".into(),
                ),
            }
        }
        // Bad input is the pod's fault: a 400 denial (under Fail), not an internal error.
        PersiError::collect(found.errors).map_err(|e| ExtensionError::invalid(e.to_string()))?;
        let patch = build_patch(pod, &found.containers, &self.options)?;
        let mut mutation = Mutation::patch_text(patch);
        mutation.warnings = found.warnings;
        Ok(mutation)
    }

    fn pod_name<'v>(&self, pod: &'v PersiPod) -> Option<&'v str> {
        let meta = &pod.metadata;
        meta.name.as_deref().or(meta.generate_name.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_the_frameworks_marker_of_persi() {
        let marker = eirinix_core::patch::marker_key(NAME);
        assert_eq!(MARKER, marker);
        let path = PointerBuf::from_tokens(["metadata", "annotations", &marker]);
        assert_eq!(MARKER_PATH, &*path);
    }

    #[test]
    fn persis_own_paths_are_the_pointers_their_tokens_make() {
        for (path, tokens) in [
            ("/spec/volumes/-", &["spec", "volumes", "-"][..]),
            (
                "/spec/containers/12/volumeMounts",
                &["spec", "containers", "12", "volumeMounts"],
            ),
            (
                "/spec/securityContext/fsGroupChangePolicy",
                &["spec", "securityContext", "fsGroupChangePolicy"],
            ),
        ] {
            assert_eq!(
                *own_path(path),
                *PointerBuf::from_tokens(tokens.iter().copied())
            );
        }
        // A path that is not a valid pointer as written is escaped token by token.
        assert_eq!(own_path("/a/b~c").as_str(), "/a/b~0c");
    }
}
