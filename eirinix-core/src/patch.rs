//! JSON patch helpers: targeted operations on a pod, a diff fallback, and the idempotency marker.
//!
//! Targeted operations keep patches small and cheap on big pods; the diff fallback drops
//! `managedFields` first (diffing them was what made other injectors slow).

use std::collections::HashSet;

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};

pub use crate::patch_text::{JsonList, JsonObject, JsonValue, PatchText};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume, VolumeMount};
use serde::Serialize;
use serde_json::Value;

/// Annotation domain of the idempotency marker: `eirinix.org/<extension>`.
pub(crate) const MARKER_DOMAIN: &str = "eirinix.org";

/// Errors while building or applying a patch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The container index does not exist in the pod.
    #[error("pod has no {kind} at index {index}")]
    NoSuchContainer {
        /// `container` or `initContainer`.
        kind: &'static str,
        /// The missing index.
        index: usize,
    },
    /// A value could not be turned into JSON.
    #[error("cannot serialize patch value: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The patch does not apply to the pod.
    #[error("patch does not apply: {0}")]
    Apply(#[from] json_patch::PatchError),
    /// The patched document is not a valid pod any more.
    #[error("patched object is not a valid Pod: {0}")]
    InvalidResult(serde_json::Error),
}

/// Which container list an operation targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRef {
    /// `spec.containers[i]`.
    App(usize),
    /// `spec.initContainers[i]`.
    Init(usize),
}

impl ContainerRef {
    fn list(self) -> (&'static str, usize, &'static str) {
        match self {
            ContainerRef::App(i) => ("containers", i, "container"),
            ContainerRef::Init(i) => ("initContainers", i, "initContainer"),
        }
    }
}

/// Builds targeted JSON patch operations against one pod, creating arrays and maps only when absent.
#[derive(Debug)]
pub struct PodPatch<'a> {
    pod: &'a Pod,
    ops: Vec<PatchOperation>,
    created: HashSet<String>,
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

impl<'a> PodPatch<'a> {
    /// Start an empty patch against `pod`.
    pub fn new(pod: &'a Pod) -> Self {
        Self {
            pod,
            ops: Vec::new(),
            created: HashSet::new(),
        }
    }

    /// The pod this patch is built against.
    pub fn pod(&self) -> &'a Pod {
        self.pod
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The finished patch.
    pub fn build(self) -> Patch {
        Patch(self.ops)
    }

    /// Add a raw operation (escape hatch for fields without a helper).
    pub fn push(&mut self, op: PatchOperation) -> &mut Self {
        self.ops.push(op);
        self
    }

    fn container(&self, c: ContainerRef) -> Result<&'a Container, PatchError> {
        let (_, index, kind) = c.list();
        let spec = self.pod.spec.as_ref();
        let list = match c {
            ContainerRef::App(_) => spec.map(|s| s.containers.as_slice()),
            ContainerRef::Init(_) => spec.and_then(|s| s.init_containers.as_deref()),
        };
        list.and_then(|l| l.get(index))
            .ok_or(PatchError::NoSuchContainer { kind, index })
    }

    /// Append `value` to the array at `path`, creating the array when `exists` is false.
    fn append(&mut self, path: &[&str], exists: bool, value: Value) {
        if !exists {
            let key = path.join("/");
            if !self.created.contains(&key) {
                self.created.insert(key);
                self.ops.push(PatchOperation::Add(AddOperation {
                    path: ptr(path),
                    value: Value::Array(vec![value]),
                }));
                return;
            }
        }
        self.ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied().chain(["-"])),
            value,
        }));
    }

    /// Set `key` in the string map at `path` (labels, annotations), creating the map when absent.
    fn set_in_map(&mut self, path: [&str; 2], exists: bool, key: &str, value: &str) {
        let map_key = path.join("/");
        if exists || self.created.contains(&map_key) {
            self.ops.push(PatchOperation::Add(AddOperation {
                path: ptr(&[path[0], path[1], key]),
                value: Value::String(value.to_owned()),
            }));
        } else {
            self.created.insert(map_key);
            let mut map = serde_json::Map::new();
            map.insert(key.to_owned(), Value::String(value.to_owned()));
            self.ops.push(PatchOperation::Add(AddOperation {
                path: ptr(&path),
                value: Value::Object(map),
            }));
        }
    }

    fn to_value<T: Serialize>(v: &T) -> Result<Value, PatchError> {
        Ok(serde_json::to_value(v)?)
    }

    /// Append an env var to a container.
    pub fn add_env(&mut self, c: ContainerRef, env: &EnvVar) -> Result<&mut Self, PatchError> {
        let exists = self.container(c)?.env.is_some();
        let (list, i, _) = c.list();
        let value = Self::to_value(env)?;
        self.append(&["spec", list, &i.to_string(), "env"], exists, value);
        Ok(self)
    }

    /// Append a volume mount to a container.
    pub fn add_volume_mount(
        &mut self,
        c: ContainerRef,
        mount: &VolumeMount,
    ) -> Result<&mut Self, PatchError> {
        let exists = self.container(c)?.volume_mounts.is_some();
        let (list, i, _) = c.list();
        let value = Self::to_value(mount)?;
        self.append(
            &["spec", list, &i.to_string(), "volumeMounts"],
            exists,
            value,
        );
        Ok(self)
    }

    /// Replace a container's command and args (e.g. to wrap the entrypoint).
    pub fn set_command(
        &mut self,
        c: ContainerRef,
        command: &[String],
        args: Option<&[String]>,
    ) -> Result<&mut Self, PatchError> {
        let container = self.container(c)?;
        let (list, i, _) = c.list();
        let idx = i.to_string();
        let op_for = |exists: bool, field: &str, value: Value| {
            let path = ptr(&["spec", list, &idx, field]);
            if exists {
                PatchOperation::Replace(ReplaceOperation { path, value })
            } else {
                PatchOperation::Add(AddOperation { path, value })
            }
        };
        let op = op_for(
            container.command.is_some(),
            "command",
            Self::to_value(&command)?,
        );
        self.ops.push(op);
        if let Some(args) = args {
            let op = op_for(container.args.is_some(), "args", Self::to_value(&args)?);
            self.ops.push(op);
        }
        Ok(self)
    }

    /// Append a volume to the pod.
    pub fn add_volume(&mut self, volume: &Volume) -> Result<&mut Self, PatchError> {
        let exists = self.pod.spec.as_ref().is_some_and(|s| s.volumes.is_some());
        let value = Self::to_value(volume)?;
        self.append(&["spec", "volumes"], exists, value);
        Ok(self)
    }

    /// Append an app container (sidecar).
    pub fn add_container(&mut self, container: &Container) -> Result<&mut Self, PatchError> {
        let value = Self::to_value(container)?;
        // `containers` is required in a valid pod spec, so it always exists.
        self.append(&["spec", "containers"], true, value);
        Ok(self)
    }

    /// Append an init container (runs after the existing ones).
    pub fn add_init_container(&mut self, container: &Container) -> Result<&mut Self, PatchError> {
        let exists = self
            .pod
            .spec
            .as_ref()
            .is_some_and(|s| s.init_containers.is_some());
        let value = Self::to_value(container)?;
        self.append(&["spec", "initContainers"], exists, value);
        Ok(self)
    }

    /// Set an annotation on the pod.
    pub fn set_annotation(&mut self, key: &str, value: &str) -> &mut Self {
        let exists = self.pod.metadata.annotations.is_some();
        self.set_in_map(["metadata", "annotations"], exists, key, value);
        self
    }

    /// Set a label on the pod.
    pub fn set_label(&mut self, key: &str, value: &str) -> &mut Self {
        let exists = self.pod.metadata.labels.is_some();
        self.set_in_map(["metadata", "labels"], exists, key, value);
        self
    }

    /// Replace an app or init container's image.
    pub fn set_image(&mut self, c: ContainerRef, image: &str) -> Result<&mut Self, PatchError> {
        let container = self.container(c)?;
        let (list, i, _) = c.list();
        let idx = i.to_string();
        let path = ptr(&["spec", list, &idx, "image"]);
        let value = Value::String(image.to_owned());
        self.ops.push(if container.image.is_some() {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
        Ok(self)
    }

    /// Set an env var of a container: replace the effective definition of that name (the
    /// last one, as the kubelet reads it) when it differs, append it when absent, nothing when
    /// it is already exactly so. Idempotent by the pod's actual state, with no marker.
    pub fn set_env(&mut self, c: ContainerRef, env: &EnvVar) -> Result<&mut Self, PatchError> {
        let container = self.container(c)?;
        let found = container.env.as_ref().and_then(|list| {
            list.iter()
                .enumerate()
                .rev()
                .find(|(_, e)| e.name == env.name)
        });
        match found {
            Some((_, existing)) if existing == env => {}
            Some((index, _)) => {
                let (list, i, _) = c.list();
                let value = Self::to_value(env)?;
                self.ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: ptr(&["spec", list, &i.to_string(), "env", &index.to_string()]),
                    value,
                }));
            }
            None => {
                self.add_env(c, env)?;
            }
        }
        Ok(self)
    }

    /// Mark the pod as injected by `extension` (see [`PodPatch::is_marked`]).
    pub fn mark(&mut self, extension: &str) -> &mut Self {
        self.set_annotation(&marker_key(extension), "injected")
    }

    /// Mark the pod as injected by `extension` with a digest of what was injected (see
    /// [`PodPatch::is_marked_with`] and [`PodPatch::digest`]).
    pub fn mark_with(&mut self, extension: &str, digest: &str) -> &mut Self {
        self.set_annotation(&marker_key(extension), digest)
    }
}

/// The idempotency annotation key of `extension` (`eirinix.org/<extension>`), for extensions
/// that write their marker without a [`PodPatch`] (a [`crate::ViewExtension`]).
pub fn marker_key(extension: &str) -> String {
    format!("{MARKER_DOMAIN}/{extension}")
}

/// The pod as JSON without `metadata.managedFields` (useless for mutation, costly to diff).
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn pod_value(pod: &Pod) -> Result<Value, PatchError> {
    let mut v = serde_json::to_value(pod)?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(v)
}

/// Marks, digests and whole-pod patches: what an extension needs around a [`PodPatch`].
impl PodPatch<'_> {
    /// A digest (`sha256:<hex>`) of what an extension injects (its config, the values it sets),
    /// for [`PodPatch::mark_with`]: a copied pod whose marker carries another digest is stale.
    pub fn digest<T: Serialize>(injected: &T) -> Result<String, PatchError> {
        use sha2::Digest as _;
        use std::fmt::Write as _;
        let bytes = serde_json::to_vec(injected)?;
        let hash = sha2::Sha256::digest(&bytes);
        let mut out = String::with_capacity(71);
        out.push_str("sha256:");
        for b in hash {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
        }
        Ok(out)
    }

    /// Whether `pod` carries `extension`'s marker with exactly `digest`. Like [`PodPatch::is_marked`], this
    /// trusts what the pod says about itself: whoever creates the pod can set the annotation, so
    /// use it to skip work only when skipping is harmless (the injected state is also checked, or
    /// a forged marker only harms the pod's own author), never to skip a security control.
    pub fn is_marked_with(pod: &Pod, extension: &str, digest: &str) -> bool {
        let key = marker_key(extension);
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&key))
            .is_some_and(|v| v == digest)
    }

    /// Whether `pod` carries `extension`'s marker (reinvocation, retries). Any pod author can set
    /// the annotation, and a copied pod keeps it with whatever it then holds: prefer checking the
    /// actual state ([`PodPatch::set_env`] and friends are no-ops when it is already right), or a
    /// marker with a digest ([`PodPatch::is_marked_with`]); trust a bare marker only where skipping is
    /// harmless.
    pub fn is_marked(pod: &Pod, extension: &str) -> bool {
        let key = marker_key(extension);
        pod.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(&key))
    }

    /// Fallback: the patch turning `original` into `mutated`, ignoring `managedFields`.
    pub fn diff(original: &Pod, mutated: &Pod) -> Result<Patch, PatchError> {
        Ok(json_patch::diff(
            &pod_value(original)?,
            &pod_value(mutated)?,
        ))
    }

    /// Apply `patch` to `pod` and decode the result, as the apiserver would.
    pub fn apply(pod: &Pod, patch: &Patch) -> Result<Pod, PatchError> {
        let mut v = serde_json::to_value(pod)?;
        json_patch::patch(&mut v, patch)?;
        serde_json::from_value(v).map_err(PatchError::InvalidResult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str, v: &str) -> EnvVar {
        EnvVar {
            name: n.into(),
            value: Some(v.into()),
            ..Default::default()
        }
    }

    #[test]
    fn set_env_replaces_appends_or_leaves_alone() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "a", "image": "i",
                "env": [{"name": "X", "value": "old"}, {"name": "Y", "value": "y"}]}]}
        }))
        .unwrap();
        // Already so: no operation.
        let mut p = PodPatch::new(&pod);
        p.set_env(ContainerRef::App(0), &env("Y", "y")).unwrap();
        assert!(p.is_empty());
        // Different: replaced in place; absent: appended.
        let mut p = PodPatch::new(&pod);
        p.set_env(ContainerRef::App(0), &env("X", "new")).unwrap();
        p.set_env(ContainerRef::App(0), &env("Z", "z")).unwrap();
        let patched = PodPatch::apply(&pod, &p.build()).unwrap();
        let envs = serde_json::to_value(&patched.spec.unwrap().containers[0].env).unwrap();
        assert_eq!(
            envs,
            serde_json::json!([{"name": "X", "value": "new"}, {"name": "Y", "value": "y"}, {"name": "Z", "value": "z"}])
        );
    }

    #[test]
    fn a_marker_with_a_digest_is_stale_when_what_is_injected_changes() {
        let pod = Pod::default();
        let d1 = PodPatch::digest(&["STICKY", "hello"]).unwrap();
        let d2 = PodPatch::digest(&["STICKY", "bye"]).unwrap();
        assert_ne!(d1, d2);
        let mut p = PodPatch::new(&pod);
        p.mark_with("sticky", &d1);
        let marked = PodPatch::apply(&pod, &p.build()).unwrap();
        assert!(PodPatch::is_marked_with(&marked, "sticky", &d1));
        assert!(!PodPatch::is_marked_with(&marked, "sticky", &d2));
        assert!(PodPatch::is_marked(&marked, "sticky"));
    }
}
