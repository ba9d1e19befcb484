//! Shared pieces of the eirinix fuzz targets: a runtime to drive async `mutate`, an offline
//! context, a generator of Eirini-like pods (with arbitrary `VCAP_SERVICES`), and the property
//! checks every pod handler must pass.
//!
//! Input convention of the pod-handler targets: an input starting with `{` is a JSON pod (the
//! committed seeds are such pods); anything else drives [`podgen`] through
//! [`arbitrary::Unstructured`], so random bytes still produce well-typed, Eirini-shaped pods.

pub mod podgen;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use eirinix_core::deps::json_patch;
use eirinix_core::deps::kube::core::admission::Operation;
use eirinix_core::{Context, Extension, ExtensionError, Mutation, Request, Settings, Verdict};
use k8s_openapi::api::core::v1::Pod;

/// One current-thread runtime (with timers) for the whole process: the admission handler puts
/// a `tokio::time::timeout` around `mutate`.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

/// Run `f` to completion on [`runtime`].
pub fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A context without a cluster (what `eirinix review` uses): `ctx.client()` is an error.
pub fn offline() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| Context::offline(Arc::new(Settings::default())))
}

/// A request for `pod` as the apiserver sends it (CREATE unless told otherwise).
pub fn request(
    pod: &Pod,
    operation: Operation,
    namespace: Option<String>,
    dry_run: bool,
) -> Request {
    let mut r = eirinix_core::review::create_request(pod);
    r.operation = operation;
    if namespace.is_some() {
        r.namespace = namespace;
    }
    r.dry_run = dry_run;
    r
}

/// Run `ext.mutate` offline.
pub fn mutate(
    ext: &dyn Extension,
    request: &Request,
    pod: &Pod,
) -> Result<Mutation, ExtensionError> {
    block_on(ext.mutate(offline(), request, pod))
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

/// Check a mutation of `pod`: a patch must apply to the pod (as the apiserver applies it), the
/// result must decode as a Pod, and it must not break pod validity rules the input satisfied.
/// Returns the pod after the mutation (the input when not patched).
pub fn check_mutation(extension: &str, pod: &Pod, mutation: &Mutation) -> Pod {
    match &mutation.verdict {
        Verdict::Patch(patch) => check_patch(extension, pod, patch),
        Verdict::PatchText(text) => match text.to_patch() {
            Ok(patch) => check_patch(extension, pod, &patch),
            Err(e) => panic!(
                "{extension}: the patch text is not a patch: {e}\n  text: {}",
                String::from_utf8_lossy(text.as_bytes())
            ),
        },
        Verdict::Unchanged => pod.clone(),
        Verdict::Deny { code, message } => {
            assert!(
                (400..=599).contains(code),
                "{extension}: denial with status code {code} ({message})"
            );
            pod.clone()
        }
    }
}

/// See [`check_mutation`].
pub fn check_patch(extension: &str, pod: &Pod, patch: &json_patch::Patch) -> Pod {
    check_patch_with(extension, pod, patch, true)
}

/// [`check_patch`], with the pod-validity check optional (for inputs hitting a known issue).
pub fn check_patch_with(
    extension: &str,
    pod: &Pod,
    patch: &json_patch::Patch,
    validity: bool,
) -> Pod {
    let patched = match eirinix_core::PodPatch::apply(pod, patch) {
        Ok(p) => p,
        Err(e) => panic!(
            "{extension}: patch does not apply: {e}\n  pod:   {}\n  patch: {}",
            json(pod),
            json(patch)
        ),
    };
    // What the apiserver stores must read back as the same pod.
    let again: Pod = serde_json::from_value(serde_json::to_value(&patched).expect("serialize"))
        .unwrap_or_else(|e| panic!("{extension}: patched pod does not round-trip: {e}"));
    assert_eq!(
        again, patched,
        "{extension}: patched pod does not round-trip"
    );
    if !validity {
        return patched;
    }
    let before = problems(pod);
    let after = problems(&patched);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(
        new.is_empty(),
        "{extension}: the patch makes the pod invalid: {new:?}\n  pod:   {}\n  patch: {}",
        json(pod),
        json(patch)
    );
    patched
}

/// Pod validation rules of the apiserver a mutating webhook can break by adding things:
/// unique volume names, unique container names (app and init), mounts naming existing
/// volumes, unique mount paths per container. One entry per violation.
pub fn problems(pod: &Pod) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let mut volumes = BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        if !volumes.insert(v.name.as_str()) {
            out.insert(format!("duplicate volume name {:?}", v.name));
        }
        if !is_dns_label(&v.name) {
            out.insert(format!("volume name {:?} is not a DNS-1123 label", v.name));
        }
    }
    let mut names = BTreeSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainer", c))
        .chain(spec.containers.iter().map(|c| ("container", c)));
    for (kind, c) in all {
        if !names.insert(c.name.as_str()) {
            out.insert(format!("duplicate container name {:?}", c.name));
        }
        if !is_dns_label(&c.name) {
            out.insert(format!("{kind} name {:?} is not a DNS-1123 label", c.name));
        }
        // Mount problems are not tied to the container: a sidecar copying the app's mounts
        // copies the app's problems, it does not add one.
        let mut paths = BTreeSet::new();
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains(m.name.as_str()) {
                out.insert(format!("a container mounts unknown volume {:?}", m.name));
            }
            if m.mount_path.is_empty() {
                out.insert("a container has a mount without mountPath".to_owned());
            }
            if !paths.insert(m.mount_path.as_str()) {
                out.insert(format!("a container mounts twice at {:?}", m.mount_path));
            }
        }
    }
    out
}

/// Whether `s` is a DNS-1123 label (what the apiserver wants for volume and container names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The full check of one pod handler on one pod: mutate, check the result, and check that a
/// second review of the mutated pod (webhook reinvocation, retried requests) changes nothing.
/// Returns the mutation and the pod after it, unless the extension failed.
pub fn check_extension(
    ext: &dyn Extension,
    request: &Request,
    pod: &Pod,
) -> Option<(Mutation, Pod)> {
    let name = ext.name().to_owned();
    let result = mutate(ext, request, pod);
    if debug() {
        let what = match &result {
            Ok(m) => match &m.verdict {
                Verdict::Patch(p) => format!("patch of {} operations", p.0.len()),
                Verdict::PatchText(p) => format!("patch (text) of {} operations", p.len()),
                Verdict::Unchanged => "unchanged".to_owned(),
                Verdict::Deny { code, .. } => format!("denied ({code})"),
            },
            Err(e) => format!("error {}: {}", e.code(), e.message()),
        };
        eprintln!("{name}: {what}");
    }
    let mutation = result.ok()?;
    if mutation.as_patch().is_none() {
        let same = check_mutation(&name, pod, &mutation);
        return Some((mutation, same));
    }
    let patched = check_mutation(&name, pod, &mutation);
    let mut again = request.clone();
    again.name = patched.metadata.name.clone().unwrap_or_default();
    match mutate(ext, &again, &patched) {
        Ok(m) => {
            if let Some(p) = m.as_patch() {
                panic!(
                    "{name}: not idempotent: a second review patches again\n  pod:    {}\n  first:  {}\n  second: {}",
                    json(pod),
                    json(&mutation.as_patch()),
                    json(&p)
                );
            }
        }
        Err(e) => panic!(
            "{name}: a second review of the mutated pod fails: {e}\n  pod: {}",
            json(pod)
        ),
    }
    Some((mutation, patched))
}

/// `EIRINIX_FUZZ_DEBUG=1`: print what each pod handler decided (to check, e.g. with
/// `-runs=0` over a corpus, that the inputs reach the interesting outcomes).
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("EIRINIX_FUZZ_DEBUG").is_some_and(|v| v == "1"))
}

/// Decode a JSON pod input (`{...`); `None` for anything else or JSON that is not a Pod.
pub fn json_pod(data: &[u8]) -> Option<Pod> {
    if data.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(data).ok()
}

/// Whether the input is a JSON pod input (see the crate docs).
pub fn is_json_input(data: &[u8]) -> bool {
    data.first() == Some(&b'{')
}
