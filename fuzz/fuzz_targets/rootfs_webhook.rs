//! The rootfs webhook on arbitrary pods, with a desired version and an image pattern from the
//! options (fixed for JSON pod inputs, drawn from the input otherwise; options `RootfsState`
//! rejects are skipped), an open or closed gate and opted-out StatefulSets.
//!
//! Asserts: no panic; a patch applies and the result decodes as a Pod; no new pod validation
//! problem; a second review changes nothing; and when the webhook acts (app pod, version
//! desired, gate open, not opted out) the pod carries the version label, every image matching
//! the pattern is `repository:<version>` and no other image changed. Otherwise the pod is
//! left alone.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use eirinix_core::deps::kube::core::admission::Operation;
use eirinix_core::options::SOURCE_TYPE_LABEL;
use eirinix_fuzz::{check_extension, is_json_input, json_pod, podgen, request};
use eirinix_rootfs::image::ImageRef;
use eirinix_rootfs::options::Gate;
use eirinix_rootfs::plan::Key;
use eirinix_rootfs::{ROOTFS_LABEL, RootfsOptions, RootfsState, RootfsWebhook};
use k8s_openapi::api::core::v1::{Container, Pod};
use libfuzzer_sys::fuzz_target;

const VERSIONS: &[&str] = &["2.0", "1.0", "v1.2.3-rc.1", "0.0.1_build.7", ""];
const PATTERNS: &[&str] = &[
    "registry.example.com/cloudfoundry/cflinuxfs*",
    "reg/cf/cflinuxfs*",
    "*/cflinuxfs4",
    "cflinuxfs4",
    "registry.example.com:5000/*:",
    "*",
    "",
];

fn default_state() -> RootfsState {
    RootfsState::new(RootfsOptions {
        version: Some("2.0".into()),
        image_pattern: Some("registry.example.com/cloudfoundry/cflinuxfs*".into()),
        ..Default::default()
    })
    .expect("valid options")
}

fn state(u: &mut Unstructured) -> arbitrary::Result<Option<RootfsState>> {
    let version = if u.ratio(1, 8)? {
        None
    } else {
        Some(podgen::pick(u, VERSIONS)?)
    };
    let image_pattern = if u.ratio(1, 4)? {
        None
    } else {
        Some(podgen::pick(u, PATTERNS)?)
    };
    let gate = if u.ratio(1, 4)? {
        Gate::Http {
            url: "http://127.0.0.1:1/".into(),
        }
    } else {
        Gate::None
    };
    let options = RootfsOptions {
        version,
        image_pattern,
        gate,
        ..Default::default()
    };
    let Ok(state) = RootfsState::new(options) else {
        return Ok(None);
    };
    if u.ratio(1, 2)? {
        state.set_gate_open(bool::arbitrary(u)?);
    }
    for _ in 0..u.int_in_range(0..=2)? {
        state.set_opted_out(
            Key {
                namespace: podgen::pick(u, podgen::NAMESPACES)?,
                name: podgen::pick(u, &["myapp", "dora-dev-7f3a9c2e1b"])?,
            },
            true,
        );
    }
    Ok(Some(state))
}

fn images(pod: &Pod) -> Vec<(String, Option<String>)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    all.iter()
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect()
}

fn acts(state: &RootfsState, pod: &Pod, namespace: Option<&str>) -> bool {
    let is_app = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SOURCE_TYPE_LABEL))
        .is_some_and(|v| v == "APP");
    let ns = pod
        .metadata
        .namespace
        .as_deref()
        .or(namespace)
        .unwrap_or_default();
    let owner_opted_out = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
        .any(|o| {
            state.is_opted_out(&Key {
                namespace: ns.to_owned(),
                name: o.name.clone(),
            })
        });
    is_app
        && state.desired().is_some()
        && state.gate_open()
        && !state.options().opted_out(pod.metadata.annotations.as_ref())
        && !owner_opted_out
}

fn run(state: RootfsState, pod: &Pod, namespace: Option<String>) {
    let acting = acts(&state, pod, namespace.as_deref());
    let desired = state.desired();
    let webhook = RootfsWebhook::new(state);
    let req = request(pod, Operation::Create, namespace, true);
    let Some((mutation, after)) = check_extension(&webhook, &req, pod) else {
        panic!("the rootfs webhook never fails, yet it did");
    };
    if !acting {
        assert!(
            mutation.as_patch().is_none(),
            "rootfs patched a pod it must leave alone: {:?}",
            mutation
        );
        return;
    }
    let desired = desired.expect("acting means desired");
    let label = after
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROOTFS_LABEL));
    assert_eq!(label, Some(&desired.version), "rootfs label not set");
    for ((name, before), (_, now)) in images(pod).into_iter().zip(images(&after)) {
        match (&desired.pattern, &before) {
            (Some(pattern), Some(image)) if pattern.matches(image) => {
                let now = now.expect("image removed");
                let r = ImageRef::parse(&now);
                assert!(
                    r.tag == Some(desired.version.as_str()) && r.digest.is_none(),
                    "container {name:?}: image {image:?} became {now:?}, not {}:{}",
                    r.repository,
                    desired.version
                );
                assert_eq!(
                    r.repository,
                    ImageRef::parse(image).repository,
                    "container {name:?}: repository changed"
                );
            }
            _ => assert_eq!(before, now, "container {name:?}: image changed"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if is_json_input(data) {
        if let Some(pod) = json_pod(data) {
            run(default_state(), &pod, None);
        }
        return;
    }
    let mut u = Unstructured::new(data);
    let Ok(Some(state)) = state(&mut u) else {
        return;
    };
    let Ok(pod) = podgen::pod(&mut u) else { return };
    let namespace = u.ratio(1, 2).unwrap_or(false).then(|| "eirini".to_owned());
    run(state, &pod, namespace);
});
