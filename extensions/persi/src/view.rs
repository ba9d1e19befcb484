//! What persi reads of a pod ([`PersiPod`]), decoded straight from the review's JSON: the server
//! skips everything else instead of building a k8s-openapi Pod (issue 20: that decode was most
//! of a review's cost).

use std::fmt;

use eirinix_core::scan::SkippedStr;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Pod};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::extension::MARKER;
use crate::text::Text;
use crate::vcap::VCAP_SERVICES;

/// The parts of a pod persi reads: whether it carries persi's marker, its namespace, and of its
/// containers the names, the last `VCAP_SERVICES` variable, the mounts and security contexts;
/// the volumes and the pod's security context. Every other field is skipped, not typed.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PersiPod {
    pub(crate) metadata: Metadata,
    pub(crate) spec: Option<Spec>,
}

impl PersiPod {
    /// The view of a typed `pod`: what the server decodes from the pod's JSON (the offline
    /// tests require both to give the same answers).
    pub fn of(pod: &Pod) -> Self {
        let metadata = Metadata {
            name: pod.metadata.name.clone(),
            generate_name: pod.metadata.generate_name.clone(),
            namespace: pod.metadata.namespace.clone(),
            annotations: pod.metadata.annotations.as_ref().map(|a| Annotations {
                marked: a.contains_key(MARKER),
            }),
        };
        let spec = pod.spec.as_ref().map(|s| Spec {
            containers: s.containers.iter().map(Container::of).collect(),
            init_containers: s
                .init_containers
                .as_ref()
                .map(|list| list.iter().map(Container::of).collect()),
            ephemeral_containers: s.ephemeral_containers.as_ref().map(|list| {
                list.iter()
                    .map(|e| {
                        let parts = (&e.env, &e.volume_mounts, &e.security_context);
                        Container::from_parts(&e.name, parts)
                    })
                    .collect()
            }),
            volumes: s.volumes.as_ref().map(|list| {
                list.iter()
                    .map(|v| Volume {
                        name: v.name.clone(),
                        persistent_volume_claim: v.persistent_volume_claim.as_ref().map(|c| {
                            Claim {
                                claim_name: c.claim_name.clone(),
                            }
                        }),
                    })
                    .collect()
            }),
            security_context: s.security_context.as_ref().map(|c| PodSecurity {
                fs_group: c.fs_group,
                run_as_group: c.run_as_group,
                fs_group_change_policy: c.fs_group_change_policy.clone(),
            }),
        });
        Self { metadata, spec }
    }
}

/// The typed fields persi reads of any kind of container: env, mounts, security context.
type Parts<'c> = (
    &'c Option<Vec<EnvVar>>,
    &'c Option<Vec<k8s_openapi::api::core::v1::VolumeMount>>,
    &'c Option<k8s_openapi::api::core::v1::SecurityContext>,
);

impl Container {
    fn of(c: &k8s_openapi::api::core::v1::Container) -> Self {
        Self::from_parts(&c.name, (&c.env, &c.volume_mounts, &c.security_context))
    }

    /// An app, init or ephemeral container (k8s-openapi types them apart) as persi reads it.
    fn from_parts(name: &str, (env, mounts, security): Parts<'_>) -> Self {
        Self {
            name: name.to_owned(),
            vcap: Vcap::of(env.as_deref()),
            volume_mounts: Mount::of(mounts.as_deref()),
            security_context: security.as_ref().map(|c| Security {
                run_as_group: c.run_as_group,
            }),
        }
    }
}

impl Mount {
    fn of(mounts: Option<&[k8s_openapi::api::core::v1::VolumeMount]>) -> Option<Vec<Self>> {
        mounts.map(|list| {
            list.iter()
                .map(|m| Mount {
                    name: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                })
                .collect()
        })
    }
}

impl Vcap {
    fn of(env: Option<&[EnvVar]>) -> Self {
        Self(env.and_then(|e| e.iter().rev().find(|v| v.name == VCAP_SERVICES).cloned()))
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct Metadata {
    /// The pod's name, or its generateName: only for logs.
    pub(crate) name: Option<String>,
    pub(crate) generate_name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) annotations: Option<Annotations>,
}

/// A pod's annotations, of which persi reads only whether its marker is there.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Annotations {
    pub(crate) marked: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct Spec {
    pub(crate) containers: Vec<Container>,
    pub(crate) init_containers: Option<Vec<Container>>,
    pub(crate) ephemeral_containers: Option<Vec<Container>>,
    pub(crate) volumes: Option<Vec<Volume>>,
    pub(crate) security_context: Option<PodSecurity>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct Container {
    pub(crate) name: String,
    /// The container's last `VCAP_SERVICES` variable (the kubelet's choice), if any.
    #[serde(rename = "env")]
    pub(crate) vcap: Vcap,
    pub(crate) volume_mounts: Option<Vec<Mount>>,
    pub(crate) security_context: Option<Security>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Mount {
    pub(crate) name: String,
    pub(crate) mount_path: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Volume {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) persistent_volume_claim: Option<Claim>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Claim {
    pub(crate) claim_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct PodSecurity {
    pub(crate) fs_group: Option<i64>,
    pub(crate) run_as_group: Option<i64>,
    pub(crate) fs_group_change_policy: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct Security {
    pub(crate) run_as_group: Option<i64>,
}

/// The last `VCAP_SERVICES` entry of an env list. Every entry's name, value and valueFrom are
/// typed (as the whole decode types them), but only that entry is copied.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Vcap(pub(crate) Option<EnvVar>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(AnnotationsVisitor)
    }
}

struct AnnotationsVisitor;

impl<'de> Visitor<'de> for AnnotationsVisitor {
    type Value = Annotations;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
        let mut marked = false;
        while let Some(Text(key)) = map.next_key()? {
            map.next_value::<Text<'de>>()?;
            marked |= key == MARKER;
        }
        Ok(Annotations { marked })
    }
}

impl<'de> Deserialize<'de> for Vcap {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(EnvVisitor)
    }
}

struct EnvVisitor;

impl<'de> Visitor<'de> for EnvVisitor {
    type Value = Vcap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of env vars")
    }

    fn visit_none<E: de::Error>(self) -> Result<Vcap, E> {
        Ok(Vcap(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vcap, E> {
        Ok(Vcap(None))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Vcap, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vcap, A::Error> {
        let mut last = None;
        while let Some(entry) = seq.next_element::<Entry>()? {
            if let Some(env) = entry.0 {
                last = Some(env);
            }
        }
        Ok(Vcap(last.map(|env| *env)))
    }
}

/// One env entry: `Some` when it is `VCAP_SERVICES`. Boxed, as is its `valueFrom` while it is
/// read: an `EnvVar` is ~400 bytes, and moving one through every entry of every env list cost
/// more than typing the entries (issue 20, BENCHMARKS §18).
struct Entry(Option<Box<EnvVar>>);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an env var")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        let mut name: Option<IsVcap> = None;
        let mut value: Option<Text<'de>> = None;
        let mut value_from: Option<Box<EnvVarSource>> = None;
        while let Some(key) = map.next_key::<EntryKey>()? {
            match key {
                // Refused, as serde's derive refuses it: a value skipped under the first name
                // could belong to a second one. The decode then reads the view from the typed
                // Pod (the apiserver never writes a field twice).
                EntryKey::Name if name.is_some() => {
                    return Err(de::Error::duplicate_field("name"));
                }
                EntryKey::Name => name = Some(map.next_value()?),
                // The value of an entry already named otherwise is checked but not read (the
                // apiserver writes `name` first); else borrowed where the parser allows, and
                // copied only if the entry is kept.
                EntryKey::Value if name == Some(IsVcap(false)) => {
                    map.next_value::<Option<SkippedStr>>()?;
                }
                EntryKey::Value => value = map.next_value()?,
                EntryKey::ValueFrom => value_from = map.next_value()?,
                EntryKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let IsVcap(vcap) = name.ok_or_else(|| de::Error::missing_field("name"))?;
        Ok(Entry(vcap.then(|| {
            Box::new(EnvVar {
                name: VCAP_SERVICES.to_owned(),
                value: value.map(|Text(v)| v.into_owned()),
                value_from: value_from.map(|source| *source),
            })
        })))
    }
}

/// An env entry's name as persi reads it: whether it is `VCAP_SERVICES` (the name is checked to
/// be a string, and not kept).
#[derive(Clone, Copy, PartialEq, Eq)]
struct IsVcap(bool);

impl<'de> Deserialize<'de> for IsVcap {
    #[inline]
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(IsVcapVisitor)
    }
}

struct IsVcapVisitor;

impl Visitor<'_> for IsVcapVisitor {
    type Value = IsVcap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<IsVcap, E> {
        Ok(IsVcap(name == VCAP_SERVICES))
    }
}

/// A key of an env entry: one persi reads, or another. Read as an identifier, as serde's derive
/// reads field names: no string is made of it (issue 20).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum EntryKey {
    Name,
    Value,
    ValueFrom,
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view(pod: serde_json::Value) -> Result<PersiPod, serde_json::Error> {
        serde_json::from_str(&pod.to_string())
    }

    #[test]
    fn the_last_vcap_services_entry_is_kept_and_fields_persi_does_not_read_are_not_typed() {
        let pod = json!({"metadata": {"annotations": {"eirinix.org/persi": "injected", "a": "b"}},
            "spec": {"containers": [{"name": "app", "image": 5, "env": [
                {"name": "VCAP_SERVICES", "value": "first"},
                {"name": "OTHER", "value": "7", "valueFrom": {"fieldRef": {"fieldPath": "x"}}, "extra": [1]},
                {"value": "last", "name": "VCAP_SERVICES"}
            ]}, {"name": "side", "env": null}]}});
        // Escaped keys and values (which the parser cannot lend) are read as well.
        let escaped = r#"{"spec": {"containers": [{"name": "a", "env": [
            {"na\u006de": "VCAP_SERVICES", "value": "\"quoted\""}, {"name": "X", "v\u0061lue": "y"}]}]}}"#;
        let v: PersiPod = serde_json::from_str(escaped).unwrap();
        let kept = v.spec.unwrap().containers[0].vcap.0.clone().unwrap();
        assert_eq!(kept.value.as_deref(), Some("\"quoted\""));
        let v = view(pod).unwrap();
        assert_eq!(v.metadata.annotations, Some(Annotations { marked: true }));
        let spec = v.spec.unwrap();
        let kept = spec.containers[0].vcap.0.as_ref().unwrap();
        assert_eq!(
            (kept.name.as_str(), kept.value.as_deref()),
            (VCAP_SERVICES, Some("last"))
        );
        assert_eq!(spec.containers[1].vcap, Vcap(None));
        // Another extension's marker is not persi's.
        let other = view(json!({"metadata": {"annotations": {"eirinix.org/ssh": "x"}}})).unwrap();
        assert_eq!(
            other.metadata.annotations,
            Some(Annotations { marked: false })
        );
    }

    #[test]
    fn logs_name_the_pod_by_its_name_else_its_generate_name() {
        use eirinix_core::ViewExtension as _;
        let persi = crate::Persi::default();
        let generated = view(json!({"metadata": {"generateName": "web-"}})).unwrap();
        assert_eq!(persi.pod_name(&generated), Some("web-"));
        let named = view(json!({"metadata": {"name": "web-0", "generateName": "web-"}})).unwrap();
        assert_eq!(persi.pod_name(&named), Some("web-0"));
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"generateName": "web-"}})).unwrap();
        assert_eq!(persi.pod_name(&PersiPod::of(&pod)), Some("web-"));
    }

    #[test]
    fn what_persi_reads_is_typed() {
        for bad in [
            json!({"spec": {"containers": [{"name": "a", "env": [{"value": "x"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "VCAP_SERVICES", "value": 5}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "PORT", "value": 5}]}]}}),
            json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {}}]}}),
            json!({"spec": {"containers": [{"name": "a", "volumeMounts": [{"name": "v"}]}]}}),
            json!({"metadata": {"annotations": {"a": 1}}}),
        ] {
            assert!(view(bad.clone()).is_err(), "{bad}");
        }
    }
}
