//! The executor: targeted JSON patches on pod templates (label + images only, guarded by `test`
//! operations on the values read), and Events.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, TestOperation};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::api::{Api, PatchParams};
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Map, Value};

use crate::options::{
    ROLL_STARTED_ANNOTATION, ROLL_VERSION_ANNOTATION, ROOTFS_LABEL, RootfsOptions,
};
use crate::plan::Change;

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn test(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Test(TestOperation {
        path: ptr(tokens),
        value,
    })
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: ptr(tokens),
        value,
    })
}

/// Set `entries` in the string map at `map` (two tokens), creating it only if it is absent;
/// creating is guarded by `test null` so a map someone created meanwhile is never replaced.
fn set_in_map(ops: &mut Vec<PatchOperation>, map: &[&str], exists: bool, entries: &[(&str, &str)]) {
    if exists {
        for (k, v) in entries {
            let mut path = map.to_vec();
            path.push(k);
            ops.push(add(&path, Value::String((*v).to_owned())));
        }
    } else {
        let m: Map<String, Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        ops.push(test(map, Value::Null));
        ops.push(add(map, Value::Object(m)));
    }
}

/// The JSON patch rolling `sts` per `change`: `test` the container names, images and label
/// read, then set them; record the roll in two annotations and the StatefulSet's own label.
/// Nothing else in the object is touched, so concurrent edits of other fields survive, and a
/// concurrent change of a field we change makes the whole patch fail instead of being undone.
pub fn roll_patch(sts: &StatefulSet, change: &Change, started: Timestamp) -> Patch {
    let mut ops = Vec::new();
    for i in &change.images {
        let list = if i.init {
            "initContainers"
        } else {
            "containers"
        };
        let idx = i.index.to_string();
        let base = ["spec", "template", "spec", list, idx.as_str()];
        let at = |field: &'static str| {
            let mut p = base.to_vec();
            p.push(field);
            p
        };
        ops.push(test(&at("name"), Value::String(i.container.clone())));
        ops.push(test(&at("image"), Value::String(i.from.clone())));
        ops.push(PatchOperation::Replace(ReplaceOperation {
            path: ptr(&at("image")),
            value: Value::String(i.to.clone()),
        }));
    }
    let template_meta =
        eirinix_core::compat::statefulset_spec(sts).and_then(|s| s.template.metadata.as_ref());
    match template_meta {
        Some(meta) => {
            let label = ["spec", "template", "metadata", "labels", ROOTFS_LABEL];
            if let Some(from) = &change.from_version {
                ops.push(test(&label, Value::String(from.clone())));
            }
            let exists = meta.labels.is_some();
            let mut map_ops = Vec::new();
            set_in_map(
                &mut map_ops,
                &label[..4],
                exists,
                &[(ROOTFS_LABEL, change.to_version.as_str())],
            );
            ops.extend(map_ops);
        }
        None => {
            ops.push(test(&["spec", "template", "metadata"], Value::Null));
            ops.push(add(
                &["spec", "template", "metadata"],
                serde_json::json!({"labels": {ROOTFS_LABEL: change.to_version}}),
            ));
        }
    }
    set_in_map(
        &mut ops,
        &["metadata", "labels"],
        sts.metadata.labels.is_some(),
        &[(ROOTFS_LABEL, change.to_version.as_str())],
    );
    let started = started.to_string();
    set_in_map(
        &mut ops,
        &["metadata", "annotations"],
        sts.metadata.annotations.is_some(),
        &[
            (ROLL_STARTED_ANNOTATION, started.as_str()),
            (ROLL_VERSION_ANNOTATION, change.to_version.as_str()),
        ],
    );
    Patch(ops)
}

/// How one patch ended.
#[derive(Debug)]
pub enum RollOutcome {
    /// Patched: the object as the apiserver returned it.
    Rolled(Box<StatefulSet>),
    /// A `test` failed: the StatefulSet changed since it was read; plan again.
    Conflict(String),
    /// The StatefulSet was deleted meanwhile.
    Gone,
    /// The patch failed; `uncertain` when it may have been applied (timeouts, 5xx).
    Failed {
        /// The error.
        error: String,
        /// Whether the apiserver may have applied it anyway.
        uncertain: bool,
    },
}

/// Classify a patch error.
pub fn classify(error: kube::Error) -> RollOutcome {
    match error {
        kube::Error::Api(s) if s.code == 404 => RollOutcome::Gone,
        kube::Error::Api(s) if s.code == 409 || (s.code == 422 && is_apply_failure(&s)) => {
            RollOutcome::Conflict(s.message.clone())
        }
        kube::Error::Api(s) => RollOutcome::Failed {
            uncertain: s.code >= 500,
            error: format!("{} ({})", s.message, s.code),
        },
        other => RollOutcome::Failed {
            error: other.to_string(),
            uncertain: true,
        },
    }
}

/// Whether a 422 means the JSON patch did not apply (a `test` failed, a path vanished) rather
/// than that the patched object is invalid. The apiserver reports the former with a generic
/// message and no details naming the object; validation errors name it and list causes.
fn is_apply_failure(s: &kube::core::Status) -> bool {
    let m = &s.message;
    m.contains("testing value")
        || m.contains("test failed")
        || m.contains("test operation")
        || s.details
            .as_ref()
            .is_none_or(|d| d.kind.is_empty() && d.name.is_empty() && d.causes.is_empty())
}

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something went as planned.
    Normal,
    /// Something needs attention.
    Warning,
}

/// Applies roll patches and publishes Events (`events.k8s.io/v1`) about them.
///
/// Each Event is created on its own (no series aggregation): rolls are rare, and every one
/// deserves its own line in `kubectl describe`, with its own versions.
#[derive(Clone)]
pub struct Executor {
    client: kube::Client,
    params: PatchParams,
    reporter: String,
    instance: String,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("field_manager", &self.params.field_manager)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor patching as `options.field_manager`, reporting Events as `options.reporter`.
    pub fn new(client: kube::Client, options: &RootfsOptions) -> Self {
        Self {
            reporter: options.reporter.clone(),
            instance: options
                .reporter_instance
                .clone()
                .unwrap_or_else(|| options.reporter.clone()),
            params: PatchParams {
                field_manager: Some(options.field_manager.clone()),
                ..Default::default()
            },
            client,
        }
    }

    /// Patch `sts` (as read) per `change`; publish a `RootfsRollStarted` Event when it worked.
    pub async fn roll(&self, sts: &StatefulSet, change: &Change) -> RollOutcome {
        let ns = sts.metadata.namespace.as_deref().unwrap_or_default();
        let name = sts.metadata.name.as_deref().unwrap_or_default();
        let patch = roll_patch(sts, change, Timestamp::now());
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
        match api
            .patch(name, &self.params, &kube::api::Patch::Json::<()>(patch))
            .await
        {
            Ok(new) => {
                let mut note = format!(
                    "Rolling pod template to rootfs {} (was {})",
                    change.to_version,
                    change.from_version.as_deref().unwrap_or("unset")
                );
                for i in &change.images {
                    note.push_str(&format!("; {}: {} -> {}", i.container, i.from, i.to));
                }
                self.event(&new, EventType::Normal, "RootfsRollStarted", note)
                    .await;
                RollOutcome::Rolled(Box::new(new))
            }
            Err(e) => classify(e),
        }
    }

    /// Publish an Event about `sts` (failures are logged, never fatal).
    pub async fn event(&self, sts: &StatefulSet, type_: EventType, reason: &str, note: String) {
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let regarding = sts.object_ref(&());
        let now = Timestamp::now();
        let ns = regarding.namespace.clone().unwrap_or_default();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("statefulset"),
                    now.as_nanosecond()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(reason.to_owned()),
            action: Some("RollRootfs".into()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(self.reporter.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(statefulset = ?sts.metadata.name, error = %e, "cannot publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{desired, sts};
    use crate::plan::{change_for, template_version};

    fn apply(s: &StatefulSet, p: &Patch) -> Result<StatefulSet, json_patch::PatchError> {
        let mut v = serde_json::to_value(s).unwrap();
        json_patch::patch(&mut v, p)?;
        Ok(serde_json::from_value(v).unwrap())
    }

    fn now() -> Timestamp {
        "2026-11-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn patch_sets_label_image_and_annotations_only() {
        let s = sts("a", "1.0");
        let change = change_for(&s, &desired("2.0")).unwrap();
        let p = roll_patch(&s, &change, now());
        let out = apply(&s, &p).unwrap();
        assert_eq!(template_version(&out), Some("2.0"));
        let spec = out.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("reg/cf/cflinuxfs4:2.0")
        );
        assert_eq!(spec.containers[1].image.as_deref(), Some("reg/sidecar:1"));
        let ann = out.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[ROLL_STARTED_ANNOTATION], "2026-11-01T12:00:00Z");
        assert_eq!(ann[ROLL_VERSION_ANNOTATION], "2.0");
        assert_eq!(
            ann["cloudfoundry.org/process_guid"], "a",
            "other annotations kept"
        );
        assert_eq!(out.metadata.labels.as_ref().unwrap()[ROOTFS_LABEL], "2.0");
        // Everything else is as it was.
        let mut expected = serde_json::to_value(&s).unwrap();
        let mut got = serde_json::to_value(&out).unwrap();
        for v in [&mut expected, &mut got] {
            v["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .retain(|k, _| !k.starts_with("eirinix.org/"));
            v["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove(ROOTFS_LABEL);
            v["spec"]["template"]["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove(ROOTFS_LABEL);
            v["spec"]["template"]["spec"]["containers"][0]["image"] = Value::Null;
        }
        assert_eq!(expected, got);
        // The patch is made of targeted operations, not a whole-object replacement.
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(r#""op":"test","path":"/spec/template/spec/containers/0/image","value":"reg/cf/cflinuxfs4:1.0""#), "{text}");
        assert!(
            text.contains(
                r#""path":"/spec/template/metadata/labels/cloudfoundry.org~1rootfs-version""#
            ),
            "{text}"
        );
    }

    #[test]
    fn concurrent_image_or_label_change_fails_the_patch() {
        let s = sts("a", "1.0");
        let change = change_for(&s, &desired("2.0")).unwrap();
        let p = roll_patch(&s, &change, now());
        let mut moved = s.clone();
        moved
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("reg/cf/cflinuxfs4:1.1".into());
        assert!(apply(&moved, &p).is_err(), "a concurrent image change wins");
        let mut reordered = s.clone();
        reordered
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers
            .reverse();
        assert!(
            apply(&reordered, &p).is_err(),
            "a reordered list is not mis-patched"
        );
        let mut relabelled = s.clone();
        relabelled
            .spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(ROOTFS_LABEL.into(), "1.5".into());
        assert!(apply(&relabelled, &p).is_err());
        // Unrelated edits meanwhile apply cleanly and survive.
        let mut edited = s.clone();
        edited.spec.as_mut().unwrap().replicas = Some(5);
        edited
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("other".into(), "x".into());
        let out = apply(&edited, &p).unwrap();
        assert_eq!(out.spec.unwrap().replicas, Some(5));
        assert_eq!(out.metadata.annotations.unwrap()["other"], "x");
    }

    #[test]
    fn absent_maps_are_created_behind_a_null_test() {
        let mut s = sts("a", "1.0");
        s.metadata.annotations = None;
        let change = change_for(&s, &desired("2.0")).unwrap();
        let text = serde_json::to_string(&roll_patch(&s, &change, now())).unwrap();
        assert!(
            text.contains(r#"{"op":"test","path":"/metadata/annotations","value":null}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"op":"add","path":"/metadata/annotations","value":{"#),
            "{text}"
        );
    }

    #[test]
    fn classifies_errors() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: message.into(),
                ..Default::default()
            }))
        };
        assert!(matches!(classify(api(404, "gone")), RollOutcome::Gone));
        assert!(matches!(
            classify(api(422, "testing value /spec failed: test failed")),
            RollOutcome::Conflict(_)
        ));
        assert!(matches!(
            classify(api(409, "conflict")),
            RollOutcome::Conflict(_)
        ));
        // What kube-apiserver 1.34 answers when a `test` fails: generic, no details.
        let generic = kube::Error::Api(Box::new(kube::core::Status {
            code: 422,
            message: "the server rejected our request due to an error in our request".into(),
            reason: "Invalid".into(),
            details: serde_json::from_value(serde_json::json!({})).ok(),
            ..Default::default()
        }));
        assert!(matches!(classify(generic), RollOutcome::Conflict(_)));
        // A validation error names the object and its causes: a real failure.
        let invalid = kube::Error::Api(Box::new(kube::core::Status {
            code: 422,
            message: "StatefulSet.apps \"test-x\" is invalid: spec.template.spec.containers[0].image: Required value".into(),
            reason: "Invalid".into(),
            details: serde_json::from_value(serde_json::json!({
                "name": "test-x", "kind": "StatefulSet", "group": "apps",
                "causes": [{"reason": "FieldValueRequired", "field": "spec.template.spec.containers[0].image"}]
            }))
            .ok(),
            ..Default::default()
        }));
        assert!(matches!(
            classify(invalid),
            RollOutcome::Failed {
                uncertain: false,
                ..
            }
        ));
        assert!(matches!(
            classify(api(403, "forbidden")),
            RollOutcome::Failed {
                uncertain: false,
                ..
            }
        ));
        assert!(matches!(
            classify(api(504, "timeout")),
            RollOutcome::Failed {
                uncertain: true,
                ..
            }
        ));
    }
}
