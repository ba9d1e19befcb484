//! persi's pod handler on arbitrary pods and `VCAP_SERVICES` (offline: references to Secrets
//! and ConfigMaps fail as they do without a cluster).
//!
//! Asserts: no panic; a patch applies to the pod and the result decodes as a Pod; no new pod
//! validation problem (duplicate volume names, mounts of unknown volumes...); a second review
//! of the patched pod changes nothing; and whenever persi admits a CREATE, every volume binding
//! of a container's plain `VCAP_SERVICES` is mounted at its `container_dir` from a volume of
//! its claim.

#![no_main]

use arbitrary::Unstructured;
use eirinix_core::deps::kube::core::admission::Operation;
use eirinix_fuzz::{check_extension, is_json_input, json_pod, podgen, request};
use eirinix_persi::vcap::{self, Labels};
use eirinix_persi::{Persi, PersiOptions, VCAP_GROUP};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;

fn options(u: &mut Unstructured) -> arbitrary::Result<PersiOptions> {
    Ok(PersiOptions {
        fs_group: match u.int_in_range(0..=3)? {
            0 => None,
            1 => Some(u.arbitrary()?),
            _ => Some(VCAP_GROUP),
        },
        fs_group_change_policy: u
            .choose(&[Some("OnRootMismatch"), Some("Always"), None])?
            .map(str::to_owned),
        failure_policy: None,
        match_condition: u.arbitrary()?,
        service_labels: u
            .choose(&[
                &[][..],
                &["eirini-persi"][..],
                &["nfs", "eirini-persi-nfs"][..],
            ])?
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        resolve_references: u.arbitrary()?,
    })
}

fn normalized(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// Every binding of every plain `VCAP_SERVICES` is mounted in `after`.
fn assert_all_mounted(persi: &Persi, after: &Pod) {
    let labels = if persi.options().service_labels.is_empty() {
        Labels::Any
    } else {
        Labels::Only(&persi.options().service_labels)
    };
    let Some(spec) = after.spec.as_ref() else {
        return;
    };
    let volumes = spec.volumes.as_deref().unwrap_or(&[]);
    for c in &spec.containers {
        let Some(env) = c
            .env
            .iter()
            .flatten()
            .rev()
            .find(|e| e.name == vcap::VCAP_SERVICES)
        else {
            continue;
        };
        let (Some(value), None) = (&env.value, &env.value_from) else {
            continue;
        };
        // persi admitted the pod, so the value parses.
        let requests = vcap::volume_requests(&c.name, value, labels)
            .unwrap_or_else(|e| panic!("persi admitted a pod with unusable VCAP_SERVICES: {e}"));
        for req in requests {
            let mounted = c.volume_mounts.iter().flatten().any(|m| {
                normalized(&m.mount_path) == req.container_dir
                    && volumes.iter().any(|v| {
                        v.name == m.name
                            && v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|p| p.claim_name == req.claim)
                    })
            });
            assert!(
                mounted,
                "persi admitted the pod but container {:?} does not mount claim {:?} at {:?}\n  pod: {}",
                c.name,
                req.claim,
                req.container_dir,
                serde_json::to_string(after).unwrap_or_default()
            );
        }
    }
}

fn run(persi: &Persi, pod: &Pod, operation: Operation, namespace: Option<String>) {
    let create = operation == Operation::Create;
    let marked = eirinix_core::PodPatch::is_marked(pod, eirinix_persi::NAME);
    let req = request(pod, operation, namespace, true);
    if let Some((_, after)) = check_extension(persi, &req, pod)
        && create
        && !marked
    {
        assert_all_mounted(persi, &after);
    }
}

fuzz_target!(|data: &[u8]| {
    if is_json_input(data) {
        if let Some(pod) = json_pod(data) {
            run(&Persi::default(), &pod, Operation::Create, None);
        }
        return;
    }
    let mut u = Unstructured::new(data);
    let Ok(options) = options(&mut u) else { return };
    let Ok(pod) = podgen::pod(&mut u) else { return };
    let operation = match u.int_in_range(0..=7u8).unwrap_or(0) {
        0 => Operation::Update,
        1 => Operation::Delete,
        _ => Operation::Create,
    };
    let namespace = u.ratio(1, 2).unwrap_or(false).then(|| "eirini".to_owned());
    run(&Persi::new(options), &pod, operation, namespace);
});
