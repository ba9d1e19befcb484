//! AdmissionReview decoding (`eirinix_core::admission::decode`) and the whole review path
//! (`ExtensionHandler::handle_body`) on arbitrary request bodies, with a trivial extension under
//! both failure policies and with the stock extensions (offline).
//!
//! Asserts: no panic; `decode` accepts only JSON and reads the same uid and pod as serde_json
//! (it may use another parser); `handle_body` answers (HTTP 200) exactly the bodies `decode` accepts; an
//! answer is an `admission.k8s.io/v1` AdmissionReview response echoing the request uid; DELETE
//! and CONNECT are admitted unpatched; a request whose object is not a usable Pod is denied with
//! 400; a denial carries a status code; and a patch is base64 JSONPatch that applies cleanly to
//! the request's pod, giving a Pod. persi served from its view of the pod (as the server
//! serves it) answers every body as persi from a typed Pod does, wherever the pod decodes.
//!
//! Note: libfuzzer-sys aborts on any panic, so a panic inside an extension is found here even
//! though the handler would turn it into a 500 answer in production.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use eirinix_core::admission::{API_VERSION, ExtensionHandler, decode};
use eirinix_core::deps::json_patch;
use eirinix_core::deps::kube::core::admission::Operation;
use eirinix_core::metrics::Metrics;
use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, FailurePolicy, Mutation, PodPatch, Request,
    async_trait,
};
use eirinix_fuzz::{block_on, check_patch_with, offline};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Annotation steering the trivial extension: `deny`, `error`, `unchanged`, else it patches.
const VERDICT: &str = "fuzz.eirinix.org/verdict";

/// Marks the pod, adds an env var to its first container; denies or fails on request.
struct Trivial;

#[async_trait]
impl Extension for Trivial {
    fn name(&self) -> &str {
        "trivial"
    }

    async fn mutate(
        &self,
        _ctx: &Context,
        _request: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        let verdict = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VERDICT))
            .map(String::as_str);
        match verdict {
            Some("deny") => return Ok(Mutation::deny("denied by the trivial extension")),
            Some("error") => return Err(ExtensionError::new("trivial failure")),
            Some("invalid") => return Err(ExtensionError::invalid("trivial invalid")),
            Some("unchanged") => return Ok(Mutation::unchanged().with_warning("unchanged")),
            _ => {}
        }
        let mut p = PodPatch::new(pod);
        if pod.spec.as_ref().is_some_and(|s| !s.containers.is_empty()) {
            p.add_env(
                ContainerRef::App(0),
                &EnvVar {
                    name: "FUZZ".into(),
                    value: Some("1".into()),
                    ..Default::default()
                },
            )
            .map_err(|e| ExtensionError::new(e.to_string()))?;
        }
        p.set_label("fuzz.eirinix.org/seen", "true");
        p.mark("trivial");
        Ok(Mutation::patch(p.build()))
    }
}

struct Setup {
    handlers: Vec<ExtensionHandler>,
    metrics: Metrics,
    /// persi as the server serves it (from its view) and from a typed Pod, under both policies.
    persi: Vec<(ExtensionHandler, ExtensionHandler)>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let timeout = Duration::from_secs(10);
        let rootfs = eirinix_rootfs::RootfsWebhook::new(
            eirinix_rootfs::RootfsState::new(eirinix_rootfs::RootfsOptions {
                version: Some("2.0".into()),
                image_pattern: Some("registry.example.com/cloudfoundry/cflinuxfs*".into()),
                ..Default::default()
            })
            .expect("rootfs options"),
        );
        let extensions: Vec<(Arc<dyn Extension>, FailurePolicy)> = vec![
            (Arc::new(Trivial), FailurePolicy::Fail),
            (Arc::new(Trivial), FailurePolicy::Ignore),
            (
                Arc::new(eirinix_persi::Persi::default()),
                FailurePolicy::Fail,
            ),
            (
                Arc::new(eirinix_ssh::SshInjector::default()),
                FailurePolicy::Ignore,
            ),
            (Arc::new(rootfs), FailurePolicy::Ignore),
        ];
        let names: Vec<String> = extensions
            .iter()
            .map(|(e, _)| e.name().to_owned())
            .collect();
        let handlers = extensions
            .into_iter()
            .enumerate()
            .map(|(i, (e, policy))| ExtensionHandler::new(e, policy, timeout, i))
            .collect();
        let persi = [FailurePolicy::Fail, FailurePolicy::Ignore]
            .into_iter()
            .map(|policy| {
                let persi = Arc::new(eirinix_persi::Persi::default());
                (
                    ExtensionHandler::for_view(persi.clone(), policy, timeout, 0),
                    ExtensionHandler::new(persi, policy, timeout, 0),
                )
            })
            .collect();
        Setup {
            handlers,
            metrics: Metrics::new(names.iter().map(String::as_str)),
            persi,
        }
    })
}

fn check_answer(handler: &ExtensionHandler, body: &[u8], answer: &[u8]) {
    let name = handler.name();
    let decoded =
        decode(body).unwrap_or_else(|e| panic!("{name}: answered a body decode() rejects: {e}"));
    let v: Value = serde_json::from_slice(answer)
        .unwrap_or_else(|e| panic!("{name}: answer is not JSON: {e}"));
    assert_eq!(v["apiVersion"], API_VERSION, "{name}: answer apiVersion");
    assert_eq!(v["kind"], "AdmissionReview", "{name}: answer kind");
    let resp = &v["response"];
    assert_eq!(
        resp["uid"].as_str(),
        Some(decoded.request.uid.as_str()),
        "{name}: answer does not echo the uid"
    );
    let allowed = resp["allowed"]
        .as_bool()
        .unwrap_or_else(|| panic!("{name}: answer without allowed"));
    let patch = resp.get("patch");
    let op = &decoded.request.operation;
    if matches!(op, Operation::Delete | Operation::Connect) {
        assert!(
            allowed && patch.is_none(),
            "{name}: {op:?} not admitted unpatched"
        );
        return;
    }
    if let Err(reason) = &decoded.pod {
        assert!(
            !allowed,
            "{name}: admitted a request without a usable pod ({reason})"
        );
        assert_eq!(resp["status"]["code"], 400, "{name}: bad pod not a 400");
        return;
    }
    if !allowed {
        let code = resp["status"]["code"].as_u64().unwrap_or(0);
        assert!(
            (400..=599).contains(&code),
            "{name}: denial with code {code}"
        );
        assert!(patch.is_none(), "{name}: denial with a patch");
        return;
    }
    let Some(patch) = patch else { return };
    assert_eq!(resp["patchType"], "JSONPatch", "{name}: patchType");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a string"))
        .unwrap_or_else(|e| panic!("{name}: patch is not base64: {e}"));
    let patch: json_patch::Patch = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{name}: patch is not a JSON patch: {e}"));
    let pod = decoded.pod.as_ref().expect("checked above");
    check_patch_with(name, pod, &patch, true);
}

#[derive(serde::Deserialize)]
struct RefReview<'a> {
    #[serde(borrow)]
    request: RefRequest<'a>,
}

#[derive(serde::Deserialize)]
struct RefRequest<'a> {
    uid: String,
    #[serde(borrow, default)]
    object: Option<&'a serde_json::value::RawValue>,
}

/// `decode` (whatever parser it uses) agrees with serde_json: it accepts only JSON, and the uid
/// and the pod it finds are the ones serde_json reads.
fn check_against_serde_json(body: &[u8]) -> bool {
    let Ok(decoded) = decode(body) else {
        return false;
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        panic!("decode accepted a body that is not JSON ({e})");
    }
    let reference: RefReview<'_> = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("decode accepted a body serde_json cannot read as a review ({e})")
    });
    assert_eq!(
        decoded.request.uid, reference.request.uid,
        "uid differs from serde_json's"
    );
    if let Ok(pod) = &decoded.pod {
        let raw = reference.request.object.expect("a pod without object");
        let expected: Pod = serde_json::from_str(raw.get())
            .unwrap_or_else(|e| panic!("decode read a pod serde_json rejects ({e})"));
        assert_eq!(**pod, expected, "pod differs from serde_json's");
    }
    true
}

/// persi served from its view answers as its typed path does: the same bodies get a 400, and
/// wherever the whole pod decodes the answers are equal byte for byte. Where only the view
/// decodes (a field persi does not read has the wrong type), the served answer is checked as
/// any answer is, against the object as JSON.
fn check_view_against_typed(served: &ExtensionHandler, typed: &ExtensionHandler, body: &[u8]) {
    let setup = setup();
    let answer = block_on(served.handle_body(offline(), &setup.metrics, body));
    let expected = block_on(typed.handle_body(offline(), &setup.metrics, body));
    let (answer, expected) = match (answer, expected) {
        (Err(_), Err(_)) => return,
        (Ok(answer), Ok(expected)) => (answer, expected),
        (answer, expected) => panic!(
            "served persi and typed persi disagree on the envelope: {:?} vs {:?}",
            answer.map(String::from_utf8),
            expected.map(String::from_utf8)
        ),
    };
    let decoded = decode(body).expect("the typed path answered, so decode accepts the body");
    if decoded.pod.is_ok() {
        assert_eq!(
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(&expected),
            "served persi answers a pod otherwise than typed persi"
        );
        return;
    }
    let v: Value = serde_json::from_slice(&answer).expect("the served answer is JSON");
    let resp = &v["response"];
    assert_eq!(resp["uid"].as_str(), Some(decoded.request.uid.as_str()));
    if let Some(patch) = resp.get("patch") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().expect("patch is a string"))
            .expect("patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
        let reference: RefReview<'_> = serde_json::from_slice(body).expect("a review");
        let raw = reference
            .request
            .object
            .expect("a patched review has an object");
        let mut object: Value = serde_json::from_str(raw.get()).expect("the object is JSON");
        // As the apiserver holds it (and as a typed Pod re-encodes): with metadata.
        if let Some(fields) = object.as_object_mut() {
            fields
                .entry("metadata")
                .or_insert_with(|| serde_json::json!({}));
        }
        json_patch::patch(&mut object, &patch).expect("the served patch applies to the object");
    }
}

fuzz_target!(|data: &[u8]| {
    let accepted = check_against_serde_json(data);
    let setup = setup();
    for handler in &setup.handlers {
        match block_on(handler.handle_body(offline(), &setup.metrics, data)) {
            Ok(answer) => check_answer(handler, data, &answer),
            Err(e) => assert!(
                !accepted,
                "{}: 400 ({e}) for a body decode() accepts",
                handler.name()
            ),
        }
    }
    for (served, typed) in &setup.persi {
        check_view_against_typed(served, typed, data);
    }
});
