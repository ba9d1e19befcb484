//! Decoding an AdmissionReview v1: the envelope, then the object as the handler's kind.
//!
//! Pods take a single-pass fast path, read by the scanner (`crate::scan`); anything that fails
//! it, and every other kind, goes through the two-stage decode (the envelope first, a failure is
//! an HTTP 400; then the object, a failure is a denial carrying the request uid and the reason;
//! an object that does not decode is never passed on empty).

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::core::admission::{AdmissionRequest, Operation};
use kube::core::{GroupVersionKind, GroupVersionResource, Resource, TypeMeta};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::extension::Request;
use crate::object::ObjectOnly;

/// The only AdmissionReview version served.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) const API_VERSION: &str = "admission.k8s.io/v1";

/// A request body that is not a usable AdmissionReview: answered with HTTP 400 and this message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) enum ReviewError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("request body is not a valid AdmissionReview: {0}")]
    Malformed(serde_json::Error),
    /// An AdmissionReview of another version (e.g. v1beta1).
    #[error(
        "unsupported AdmissionReview apiVersion {0:?}: only admission.k8s.io/v1 is served (set admissionReviewVersions: [v1])"
    )]
    UnsupportedVersion(String),
    /// Some other kind of object.
    #[error("expected kind AdmissionReview, got {0:?}")]
    WrongKind(String),
    /// An AdmissionReview without a request.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// A request without a uid (the response could not be matched to it).
    #[error("AdmissionReview request has an empty uid")]
    NoUid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

/// An AdmissionReview v1 request, generic over how its objects are decoded: in place as Pods
/// (the fast path) or as raw JSON (the precise path). A missing object is `None` either way.
#[derive(Deserialize)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "Option<X>: Deserialize<'de>")
)]
struct RequestIn<X> {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    request_kind: Option<GroupVersionKind>,
    #[serde(default)]
    request_resource: Option<GroupVersionResource>,
    #[serde(default)]
    request_sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    user_info: UserInfo,
    object: Option<X>,
    old_object: Option<X>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    options: Option<RawExtension>,
}

impl<X> RequestIn<X> {
    /// The request (its `object` left `None`) and the object; `old` decodes the old object.
    /// Boxed: a request of Pods is 5 KiB (two `Option<Pod>` in place), and each move through
    /// the decode and into the extension's call was a copy of all of it (issue 20). Written
    /// into its box, not built beside it and copied in (`Box::new` took a 5 KiB copy).
    fn into_parts<K: Resource>(
        self,
        types: TypeMeta,
        old: impl FnOnce(Option<X>) -> Option<K>,
    ) -> (Box<AdmissionRequest<K>>, Option<X>) {
        let request = Box::write(
            Box::new_uninit(),
            AdmissionRequest {
                types,
                uid: self.uid,
                kind: self.kind,
                resource: self.resource,
                sub_resource: self.sub_resource,
                request_kind: self.request_kind,
                request_resource: self.request_resource,
                request_sub_resource: self.request_sub_resource,
                name: self.name,
                namespace: self.namespace,
                operation: self.operation,
                user_info: self.user_info,
                object: None,
                old_object: old(self.old_object),
                dry_run: self.dry_run,
                options: self.options,
            },
        );
        (request, self.object)
    }
}

/// The whole review in one pass, the Pod decoded in place: the common case, and the fast one
/// (the two-stage decode scans the object three times). Any failure falls back to the
/// two-stage decode, which names the problem precisely.
#[derive(Deserialize)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "Option<X>: Deserialize<'de>")
)]
struct FastReview<X> {
    api_version: String,
    kind: String,
    request: RequestIn<X>,
}

/// Whether `body` is JSON, checked as the fast decode checks it (the scanner, every value
/// skipped) and nothing typed: the first step of [`decode`], for benchmarks.
#[cfg(feature = "internals")]
pub fn scan_only(body: &[u8]) -> bool {
    crate::scan::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// The single-pass decode of a v1 review of a Pod with a uid and an object, the object as `X`
/// (a Pod, or an extension's view of one) and the old object through `old`; `None` for
/// anything else, which the precise decode then names.
fn decode_fast<X>(
    body: &[u8],
    old: impl FnOnce(Option<X>) -> Option<Pod>,
) -> Option<(Box<Request>, X)>
where
    Option<X>: for<'de> Deserialize<'de>,
{
    let review: FastReview<X> = crate::scan::from_slice(body).ok()?;
    let req = review.request;
    let acceptable = review.api_version == API_VERSION
        && review.kind == "AdmissionReview"
        && !req.uid.is_empty()
        && req.kind.group.is_empty()
        && req.kind.kind == "Pod";
    if !acceptable {
        return None;
    }
    let types = TypeMeta {
        api_version: review.api_version,
        kind: review.kind,
    };
    let (request, object) = req.into_parts(types, old);
    // No object: the precise decode names the problem.
    Some((request, object?))
}

/// A decoded review: the request metadata and the pod (or why it is not one).
#[derive(Debug)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct DecodedReview {
    /// The request; `object` is left `None` (the pod is in [`DecodedReview::pod`]).
    pub request: Request,
    /// The pod, or the reason the request carries no usable pod. Boxed: a Pod is several
    /// kilobytes, and the decode moved it through each layer of the review (a memcpy each).
    pub pod: Result<Box<Pod>, String>,
}

/// Decode an AdmissionReview v1 body.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn decode(body: &[u8]) -> Result<DecodedReview, ReviewError> {
    let (request, pod) = match decode_fast::<Box<Pod>>(body, |old| old.map(|p| *p)) {
        Some((request, pod)) => (request, Ok(pod)),
        None => decode_precise(body, |old| serde_json::from_str::<Pod>(old.get()).ok())?,
    };
    Ok(DecodedReview {
        request: *request,
        pod,
    })
}

/// Decode an AdmissionReview v1 body of a Pod as a view `V` of the pod (the fields `V` does not
/// name are skipped, not typed): the request (no objects in it), and the view or why the object
/// is not one. Envelope errors are HTTP 400s, as in [`decode`].
pub(crate) fn decode_view<V: DeserializeOwned>(
    body: &[u8],
) -> Result<(Box<Request>, Result<V, String>), ReviewError> {
    // A view is not a Pod: the request carries no old object.
    if let Some((request, ObjectOnly(view))) = decode_fast::<ObjectOnly<V>>(body, |_| None) {
        return Ok((request, Ok(view)));
    }
    let (request, view) = decode_precise::<ObjectOnly<V>>(body, |_| None)?;
    Ok((
        request,
        view.map(|ObjectOnly(view)| view)
            .or_else(|reason| view_of_pod(body).ok_or(reason)),
    ))
}

/// The view as read from the review's Pod re-encoded, for a pod the view cannot read but the
/// typed decode can: JSON the apiserver never sends, such as a field given twice (k8s-openapi
/// keeps the last, serde's derive refuses it). The served answer is then the typed path's.
fn view_of_pod<V: DeserializeOwned>(body: &[u8]) -> Option<V> {
    let pod = decode(body).ok()?.pod.ok()?;
    serde_json::from_value(serde_json::to_value(&*pod).ok()?).ok()
}

/// The envelope of a review, checked (version, kind, request, uid); the objects still raw.
fn decode_envelope(body: &[u8]) -> Result<(TypeMeta, RequestIn<&RawValue>), ReviewError> {
    let review: ReviewIn<'_> = serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    if review.api_version != API_VERSION {
        return Err(ReviewError::UnsupportedVersion(review.api_version));
    }
    if review.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(review.kind));
    }
    let raw = review
        .request
        .filter(|r| r.get() != "null")
        .ok_or(ReviewError::NoRequest)?;
    let req: RequestIn<&RawValue> =
        serde_json::from_str(raw.get()).map_err(ReviewError::Malformed)?;
    if req.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let types = TypeMeta {
        api_version: review.api_version,
        kind: review.kind,
    };
    Ok((types, req))
}

/// Whether the review is about kind `K`; if not, the message a refusal carries.
fn kind_problem<K: Resource<DynamicType = ()>>(kind: &GroupVersionKind) -> Option<String> {
    if kind.group == K::group(&()) && kind.kind == K::kind(&()) {
        return None;
    }
    let seen = if kind.group.is_empty() {
        kind.kind.clone()
    } else {
        format!("{}.{}", kind.kind, kind.group)
    };
    Some(format!("object is a {seen}, not a {}", K::kind(&())))
}

/// `raw` decoded as a `K`, or why it does not decode (named after the kind).
fn decode_raw<K: Resource<DynamicType = ()> + DeserializeOwned>(
    raw: &RawValue,
) -> Result<K, String> {
    serde_json::from_str::<K>(raw.get())
        .map_err(|e| format!("object does not decode as a {}: {e}", K::kind(&())))
}

/// The two-stage decode of a review of a Pod: the envelope first, then the object as `X` (a
/// Pod, or a view of one), so every failure is named; a present old object goes through `old`.
fn decode_precise<X: DeserializeOwned>(
    body: &[u8],
    old: impl FnOnce(&RawValue) -> Option<Pod>,
) -> Result<(Box<Request>, Result<X, String>), ReviewError> {
    let (types, req) = decode_envelope(body)?;
    let problem = kind_problem::<Pod>(&req.kind);
    let is_pod = problem.is_none();
    let object = if let Some(problem) = problem {
        Err(problem)
    } else {
        match req.object.filter(|r| r.get() != "null") {
            None => Err(format!("{:?} request carries no object", req.operation)),
            Some(raw) => serde_json::from_str::<X>(raw.get())
                .map_err(|e| format!("object does not decode as a Pod: {e}")),
        }
    };
    let (request, _) = req.into_parts(types, |raw| match raw {
        Some(raw) if is_pod && raw.get() != "null" => old(raw),
        _ => None,
    });
    Ok((request, object))
}

/// A review decoded for kind `K`: the request with `object` and `old_object` set when present,
/// or why they are not usable (another kind, an object that does not decode).
pub(crate) fn decode_as<K: Resource<DynamicType = ()> + DeserializeOwned>(
    body: &[u8],
) -> Result<(AdmissionRequest<K>, Result<(), String>), ReviewError> {
    let (types, req) = decode_envelope(body)?;
    if let Some(problem) = kind_problem::<K>(&req.kind) {
        let (request, _) = req.into_parts(types, |_| None);
        return Ok((*request, Err(problem)));
    }
    let mut old_problem = None;
    let (mut request, object) = req.into_parts(types, |old| {
        let raw = old.filter(|r| r.get() != "null")?;
        decode_raw::<K>(raw)
            .map_err(|e| old_problem = Some(format!("old {e}")))
            .ok()
    });
    let object = object
        .filter(|r| r.get() != "null")
        .map(decode_raw::<K>)
        .transpose();
    let usable = match (object, old_problem) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(object), None) => {
            request.object = object;
            Ok(())
        }
    };
    Ok((*request, usable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A review as the apiserver sends it for an Eirini app pod: every part the fast path
    /// must read (quantities, int-or-string ports, times, managed fields, escapes, an old
    /// object, options).
    fn review() -> Vec<u8> {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "app-0", "generateName": "app-", "namespace": "eirini",
                "creationTimestamp": "2026-12-06T06:00:00Z",
                "labels": {"cloudfoundry.org/source_type": "APP", "guid": "3f1a"},
                "annotations": {"last": "{\"a\":\"<b> & \\u2028\"}", "é": "ünï 😀"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "app", "uid": "u-1", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-12-06T06:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:guid": {}}}}}]
            },
            "spec": {
                "containers": [{
                    "name": "opi", "image": "eirini/app@sha256:0f", "command": ["/lifecycle/launch"],
                    "env": [{"name": "VCAP_SERVICES", "value": "{\"eirini-persi\":[]}"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"limits": {"memory": "1Gi", "ephemeral-storage": "2G"}, "requests": {"cpu": "100m", "memory": "1Gi"}},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1, "failureThreshold": 4},
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                    "securityContext": {"runAsUser": 2000, "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets", "readOnly": true}]
                }],
                "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420,
                    "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 300}],
                "terminationGracePeriodSeconds": 30, "enableServiceLinks": false, "priority": 0
            },
            "status": {"phase": "Pending", "qosClass": "Burstable"}
        });
        let review = json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {
                "uid": "7f0b2891", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "app-0", "namespace": "eirini", "operation": "UPDATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller",
                    "uid": "u", "groups": ["system:serviceaccounts", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["kcm-0"]}},
                "object": pod, "oldObject": pod, "dryRun": false,
                "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kcm"}
            }
        });
        // As Go writes it: some characters escaped.
        let text = serde_json::to_string(&review).expect("a review");
        text.replace("ünï 😀", "\\u00fcn\\u00ef \\ud83d\\ude00")
            .replace('<', "\\u003c")
            .into_bytes()
    }

    #[test]
    fn the_scanner_reads_a_review_as_the_apiserver_sends_it_as_serde_json_does() {
        let body = review();
        // Not the precise decode: a review the scanner refused would still decode, slowly.
        let (request, pod) =
            decode_fast::<Box<Pod>>(&body, |old| old.map(|p| *p)).expect("the fast path reads it");
        let (precise, expected) =
            decode_precise::<Box<Pod>>(&body, |raw| serde_json::from_str(raw.get()).ok())
                .expect("the precise decode reads it");
        assert_eq!(pod, expected.expect("a pod"));
        assert_eq!(request.old_object, precise.old_object);
        assert!(request.old_object.is_some());
        assert_eq!(request.user_info, precise.user_info);
        assert_eq!(request.options, precise.options);
        assert_eq!(request.operation, Operation::Update);
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations["last"], "{\"a\":\"<b> & \\u2028\"}");
        assert_eq!(annotations["é"], "ünï 😀");
    }
}
