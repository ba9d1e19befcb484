//! `/ladder/lean`: persi's work on the benchmark review written as lean as we know how, with no
//! typed Pod: the floor an untyped extension contract could reach (issue 20), measured on the
//! same running server as the ladder's rungs.
//!
//! A measuring prototype, not a webhook: it reads the review through simd-json's tape into a
//! small borrowed view (the envelope, and of the pod only what persi reads, with env entries
//! other than `VCAP_SERVICES` skipped), asks persi's own `VCAP_SERVICES` reader for the volume
//! requests, and writes the patch and the answer as bytes. What the benchmark pod does not need
//! (`valueFrom` references, mount paths in use, volume-name collisions) is refused with an
//! error, never guessed. [`check_same_patch`] requires its patch to equal persi's before the
//! ladder runs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

use eirinix_persi::vcap::{self, Labels};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: Request<'a>,
}

/// The request's fields, typed as the real decode types them (the pod excepted).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    kind: kube::core::GroupVersionKind,
    #[allow(dead_code)]
    resource: kube::core::GroupVersionResource,
    #[serde(default)]
    #[allow(dead_code)]
    request_kind: Option<kube::core::GroupVersionKind>,
    #[serde(default)]
    #[allow(dead_code)]
    request_resource: Option<kube::core::GroupVersionResource>,
    #[serde(default)]
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    namespace: Option<String>,
    operation: kube::core::admission::Operation,
    #[serde(default)]
    #[allow(dead_code)]
    user_info: k8s_openapi::api::authentication::v1::UserInfo,
    #[serde(borrow)]
    object: Option<PodView<'a>>,
    #[serde(default)]
    #[allow(dead_code)]
    dry_run: bool,
}

#[derive(Deserialize, Default)]
struct PodView<'a> {
    #[serde(borrow, default)]
    metadata: Meta<'a>,
    #[serde(borrow, default)]
    spec: Option<Spec<'a>>,
}

#[derive(Deserialize, Default)]
struct Meta<'a> {
    #[serde(borrow, default)]
    annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    #[serde(borrow, default)]
    containers: Vec<ContainerView<'a>>,
    #[serde(borrow, default)]
    init_containers: Option<Vec<ContainerView<'a>>>,
    #[serde(borrow, default)]
    volumes: Option<Vec<VolumeView<'a>>>,
    #[serde(default)]
    security_context: Option<PodSecurity<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerView<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    env: Option<VcapEntry<'a>>,
    #[serde(borrow, default)]
    volume_mounts: Option<Vec<MountView<'a>>>,
    #[serde(default)]
    security_context: Option<Security>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountView<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    mount_path: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeView<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    persistent_volume_claim: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSecurity<'a> {
    fs_group: Option<i64>,
    run_as_group: Option<i64>,
    #[serde(borrow, default)]
    fs_group_change_policy: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Security {
    run_as_group: Option<i64>,
}

/// The last `VCAP_SERVICES` entry of a container's env (the kubelet's choice), the rest skipped.
#[derive(Default)]
struct VcapEntry<'a> {
    value: Option<Cow<'a, str>>,
    /// Whether that entry is a `valueFrom` reference (refused by the prototype).
    from_reference: bool,
    found: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for VcapEntry<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(EnvList)
    }
}

struct EnvList;

impl<'de> Visitor<'de> for EnvList {
    type Value = VcapEntry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of env vars")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut last = VcapEntry::default();
        while let Some(entry) = seq.next_element::<EnvEntry<'de>>()? {
            if entry.0.found {
                last = entry.0;
            }
        }
        Ok(last)
    }
}

/// One env entry: kept when it is `VCAP_SERVICES`, its value read only then.
struct EnvEntry<'a>(VcapEntry<'a>);

impl<'de> Deserialize<'de> for EnvEntry<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = EnvEntry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an env var")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entry = VcapEntry::default();
        let mut value = None;
        // Borrowed: simd-json lends every string (serde's `Cow<str>` would copy each one).
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "name" => entry.found = map.next_value::<&'de str>()? == vcap::VCAP_SERVICES,
                "value" => value = map.next_value::<Option<&'de str>>()?.map(Cow::Borrowed),
                "valueFrom" => {
                    map.next_value::<IgnoredAny>()?;
                    entry.from_reference = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if entry.found {
            entry.value = value;
        }
        Ok(EnvEntry(entry))
    }
}

/// Why the prototype gives no answer.
#[derive(Debug)]
pub(crate) struct Unsupported(&'static str);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the lean prototype does not handle this review: {}",
            self.0
        )
    }
}

/// Persi's answer to `body`, encoded, as the lean path computes it.
pub(crate) fn answer(body: &[u8]) -> Result<Vec<u8>, Unsupported> {
    let mut copy = body.to_vec();
    let review: Review<'_> =
        simd_json::serde::from_slice(&mut copy).map_err(|_| Unsupported("not JSON of a review"))?;
    let req = review.request;
    if review.api_version != "admission.k8s.io/v1"
        || review.kind != "AdmissionReview"
        || req.uid.is_empty()
        || !req.kind.group.is_empty()
        || req.kind.kind != "Pod"
        || req.operation != kube::core::admission::Operation::Create
    {
        return Err(Unsupported("not a v1 CREATE review of a Pod"));
    }
    let pod = req.object.ok_or(Unsupported("no pod"))?;
    let marker = "eirinix.org/persi";
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(marker))
    {
        return Err(Unsupported("already marked"));
    }
    let spec = pod.spec.ok_or(Unsupported("no spec"))?;
    let patch = patch(&spec, pod.metadata.annotations.is_some())?;
    Ok(encode(&req.uid, patch.as_bytes()))
}

/// The patch persi builds for `spec`, as JSON text.
fn patch(spec: &Spec<'_>, has_annotations: bool) -> Result<String, Unsupported> {
    let mut volumes = String::new();
    let mut mounts = String::new();
    let mut used: Vec<&str> = spec.volumes.iter().flatten().map(|v| &*v.name).collect();
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    used.extend(
        all.flat_map(|c| c.volume_mounts.iter().flatten())
            .map(|m| &*m.name),
    );
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.persistent_volume_claim.is_some())
    {
        return Err(Unsupported("the pod has claim volumes already"));
    }
    let mut volume_count = spec.volumes.as_ref().map(Vec::len);
    let mut mounting: Vec<&ContainerView<'_>> = Vec::new();
    for (index, c) in spec.containers.iter().enumerate() {
        let Some(env) = c.env.as_ref().filter(|e| e.found) else {
            continue;
        };
        if env.from_reference {
            return Err(Unsupported("VCAP_SERVICES from a reference"));
        }
        let Some(value) = env.value.as_deref() else {
            continue;
        };
        let requests = vcap::volume_requests(&c.name, value, Labels::Any)
            .map_err(|_| Unsupported("VCAP_SERVICES does not read"))?;
        let mut mount_count = c.volume_mounts.as_ref().map(Vec::len);
        for r in &requests {
            let volume = eirinix_persi::names::volume_name(&r.claim, 0);
            let in_use = c
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path.trim_end_matches('/') == r.container_dir);
            if used.contains(&volume.as_str()) || in_use {
                return Err(Unsupported("a volume name or mount path in use"));
            }
            let value = format!(
                r#"{{"name":{},"persistentVolumeClaim":{{"claimName":{}}}}}"#,
                json(&volume),
                json(&r.claim)
            );
            append(&mut volumes, "/spec/volumes", &mut volume_count, &value);
            let read_only = if r.read_only {
                r#","readOnly":true"#
            } else {
                ""
            };
            let value = format!(
                r#"{{"name":{},"mountPath":{}{read_only}}}"#,
                json(&volume),
                json(&r.container_dir)
            );
            let path = format!("/spec/containers/{index}/volumeMounts");
            append(&mut mounts, &path, &mut mount_count, &value);
        }
        if !requests.is_empty() {
            mounting.push(c);
        }
    }
    let mut out = String::with_capacity(volumes.len() + mounts.len() + 256);
    out.push('[');
    out.push_str(&volumes);
    out.push_str(&mounts);
    if !mounting.is_empty() {
        fs_group(&mut out, spec, &mounting);
    }
    let annotation = if has_annotations {
        r#"{"op":"add","path":"/metadata/annotations/eirinix.org~1persi","value":"injected"}"#
    } else {
        r#"{"op":"add","path":"/metadata/annotations","value":{"eirinix.org/persi":"injected"}}"#
    };
    out.push_str(annotation);
    out.push(']');
    Ok(out)
}

/// Append an add operation of `value` to the list at `path`, creating it when `count` is `None`.
fn append(out: &mut String, path: &str, count: &mut Option<usize>, value: &str) {
    match count {
        Some(n) => {
            let _ = write!(out, r#"{{"op":"add","path":"{path}/-","value":{value}}},"#);
            *n += 1;
        }
        None => {
            let _ = write!(out, r#"{{"op":"add","path":"{path}","value":[{value}]}},"#);
            *count = Some(1);
        }
    }
}

/// persi's `fsGroup` operations with its default options (group 2000, `OnRootMismatch`).
fn fs_group(out: &mut String, spec: &Spec<'_>, mounting: &[&ContainerView<'_>]) {
    let sc = spec.security_context.as_ref();
    if sc.is_some_and(|s| s.fs_group.is_some()) {
        return;
    }
    let mut groups = mounting
        .iter()
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_group));
    let first = groups.next().flatten();
    let shared = first.filter(|g| groups.all(|o| o == Some(*g)));
    let group = sc
        .and_then(|s| s.run_as_group)
        .or(shared)
        .unwrap_or(eirinix_persi::VCAP_GROUP);
    let policy = sc.is_none_or(|s| s.fs_group_change_policy.is_none());
    match (sc, policy) {
        (None, _) => {
            let _ = write!(
                out,
                r#"{{"op":"add","path":"/spec/securityContext","value":{{"fsGroup":{group},"fsGroupChangePolicy":"OnRootMismatch"}}}},"#
            );
        }
        (Some(_), policy) => {
            let _ = write!(
                out,
                r#"{{"op":"add","path":"/spec/securityContext/fsGroup","value":{group}}},"#
            );
            if policy {
                out.push_str(r#"{"op":"add","path":"/spec/securityContext/fsGroupChangePolicy","value":"OnRootMismatch"},"#);
            }
        }
    }
}

/// `s` as a JSON string.
fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The AdmissionReview response allowing with `patch`, as `Answer::encode` writes it.
fn encode(uid: &str, patch: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(patch);
    let mut out = Vec::with_capacity(b64.len() + 160 + uid.len());
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
    );
    let _ = serde_json::to_writer(&mut out, uid);
    out.extend_from_slice(br#","allowed":true,"patchType":"JSONPatch","patch":""#);
    out.extend_from_slice(b64.as_bytes());
    out.extend_from_slice(b"\"}}");
    out
}

/// Fails unless `lean` (an answer of `/ladder/lean`) carries the same patch, as JSON, as `real`
/// (persi's answer to the same review); both are encoded AdmissionReview responses.
pub(crate) fn check_same_patch(lean: &[u8], real: &[u8]) -> anyhow::Result<()> {
    let patch_of = |answer: &[u8]| -> anyhow::Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(answer)?;
        let b64 = v["response"]["patch"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no patch in {v}"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let (lean, real) = (patch_of(lean)?, patch_of(real)?);
    anyhow::ensure!(
        lean == real,
        "the patch differs from persi's:\nthis  {lean}\npersi {real}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use eirinix_core::admission::ExtensionHandler;
    use eirinix_core::metrics::Metrics;
    use eirinix_core::{Context, FailurePolicy, Settings};

    use super::*;
    use crate::pods;

    /// persi's answer as served (from its view of the pod), after checking that serving it
    /// from a typed Pod gives the same patch.
    async fn persi_answer(body: &[u8]) -> Vec<u8> {
        let persi = Arc::new(eirinix_persi::Persi::default());
        let (policy, timeout) = (FailurePolicy::Fail, Duration::from_secs(10));
        let typed = ExtensionHandler::new(persi.clone(), policy, timeout, 0);
        let served = ExtensionHandler::for_view(persi, policy, timeout, 0);
        let ctx = Context::offline(Arc::new(Settings::default()));
        let metrics = Metrics::new(["persi"]);
        let typed = typed.handle_body(&ctx, &metrics, body).await;
        let served = served.handle_body(&ctx, &metrics, body).await;
        let served = served.expect("persi answers the benchmark review");
        check_same_patch(&typed.expect("persi answers from a typed Pod"), &served)
            .expect("the same patch from the view and from the typed Pod");
        served
    }

    #[tokio::test]
    async fn the_lean_route_gives_persis_patch_and_the_check_sees_a_difference() {
        let body = pods::review(&pods::eirini_app_pod());
        let lean = answer(&body).expect("the lean route answers the benchmark review");
        check_same_patch(&lean, &persi_answer(&body).await).expect("the same patch");
        // Without annotations the marker is written another way: the check must notice.
        let mut bare = pods::eirini_app_pod();
        bare["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("annotations");
        let bare = pods::review(&bare);
        let lean_bare = answer(&bare).expect("the lean route answers");
        check_same_patch(&lean_bare, &persi_answer(&bare).await).expect("the same patch");
        let err = check_same_patch(&lean_bare, &lean).expect_err("the patches differ");
        assert!(err.to_string().contains("differs from persi's"), "{err}");
    }
}
