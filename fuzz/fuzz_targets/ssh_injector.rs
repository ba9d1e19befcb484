//! The ssh injector on arbitrary pods. Requests are dry runs (the apiserver's `dryRun: true`), for
//! which the injector creates no Secret and so needs no cluster; a few are not dry runs, for
//! which the offline context must make it fail cleanly instead of patching.
//!
//! Asserts: no panic; a patch applies and the result decodes as a Pod; no new pod validation
//! problem; a second review changes nothing; a patched pod is marked, its target container's
//! command is `<daemon> <args> --exec -- <original command>` (or, for a container without a
//! command and the sidecar fallback, a sidecar is added and the app container untouched), and
//! no key material appears in the patch.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use eirinix_core::deps::kube::core::admission::Operation;
use eirinix_fuzz::{check_extension, is_json_input, json_pod, mutate, podgen, request};
use eirinix_ssh::options::NAME;
use eirinix_ssh::{SshInjector, SshOptions};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;

fn options(u: &mut Unstructured) -> arbitrary::Result<SshOptions> {
    Ok(SshOptions {
        daemon_args: u
            .choose(&[&["sshd"][..], &[][..]])?
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        mount_path: (*u.choose(&["/eirinix/ssh", "/eirinix/ssh/", "/opt/ssh"])?).to_owned(),
        container: if u.ratio(1, 3)? {
            Some(podgen::pick(u, podgen::CONTAINER_NAMES)?)
        } else {
            None
        },
        sidecar_fallback: bool::arbitrary(u)?,
        shell: if u.ratio(1, 4)? {
            Some("/bin/bash".into())
        } else {
            None
        },
        owner_references: bool::arbitrary(u)?,
        ..Default::default()
    })
}

fn target(options: &SshOptions, pod: &Pod) -> Option<usize> {
    let containers = &pod.spec.as_ref()?.containers;
    match &options.container {
        Some(name) => containers.iter().position(|c| &c.name == name),
        None => (!containers.is_empty()).then_some(0),
    }
}

fn run(injector: &SshInjector, pod: &Pod, namespace: Option<String>, dry_run: bool) {
    let req = request(pod, Operation::Create, namespace, dry_run);
    if !dry_run {
        // Not a dry run: the Secret must be ensured first, which needs the cluster.
        if let Ok(m) = mutate(injector, &req, pod) {
            assert!(
                m.as_patch().is_none(),
                "ssh patched a pod without ensuring its Secret (offline, not a dry run)"
            );
        }
        return;
    }
    let Some((mutation, after)) = check_extension(injector, &req, pod) else {
        panic!("ssh failed on a dry-run review (it needs no cluster then)");
    };
    let Some(patch) = mutation.as_patch() else {
        return;
    };
    let text = serde_json::to_string(&patch).unwrap_or_default();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("ssh-ed25519"),
        "key material in the patch"
    );
    assert!(
        eirinix_core::PodPatch::is_marked(&after, "ssh"),
        "patched pod not marked"
    );
    let options = injector.options();
    let index = target(options, pod).expect("patched a pod without target container");
    let before = &pod.spec.as_ref().unwrap().containers;
    let now = &after.spec.as_ref().unwrap().containers;
    let original = before[index].command.clone().unwrap_or_default();
    if original.is_empty() {
        assert!(
            options.sidecar_fallback,
            "no command, no sidecar fallback, yet patched"
        );
        assert_eq!(now.len(), before.len() + 1, "sidecar not added");
        assert_eq!(now.last().map(|c| c.name.as_str()), Some(NAME));
        assert_eq!(
            now[index], before[index],
            "app container changed in sidecar mode"
        );
    } else {
        let mut expected = vec![options.daemon_path()];
        expected.extend(options.daemon_args.iter().cloned());
        expected.push("--exec".into());
        expected.push("--".into());
        expected.extend(original);
        assert_eq!(
            now[index].command.as_ref(),
            Some(&expected),
            "command not wrapped"
        );
        assert_eq!(now[index].args, before[index].args, "args changed");
    }
}

fuzz_target!(|data: &[u8]| {
    if is_json_input(data) {
        if let Some(pod) = json_pod(data) {
            run(&SshInjector::default(), &pod, None, true);
        }
        return;
    }
    let mut u = Unstructured::new(data);
    let Ok(options) = options(&mut u) else { return };
    let Ok(pod) = podgen::pod(&mut u) else { return };
    let namespace = u.ratio(1, 2).unwrap_or(false).then(|| "eirini".to_owned());
    let dry_run = !u.ratio(1, 8).unwrap_or(false);
    run(&SshInjector::new(options), &pod, namespace, dry_run);
});
