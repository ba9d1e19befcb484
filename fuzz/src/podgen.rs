//! Generators of Eirini-like pods driven by fuzz input.
//!
//! Values are drawn mostly from small pools of realistic (and some known-awkward) strings, with
//! an arbitrary string now and then, so that pods are well-typed and collide on names and paths
//! often enough to reach the interesting branches (claims shared by containers, a volume name
//! already taken, a mount path already in use, the idempotency marker...).

use arbitrary::{Arbitrary, Result, Unstructured};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};

/// Eirini app, staging and plain pod names (instance index suffix or not).
pub const POD_NAMES: &[&str] = &[
    "dora-dev-7f3a9c2e1b-0",
    "myapp-0",
    "myapp-12",
    "app-3",
    "staging-4e7c8f2a-x9z",
    "app-",
    "-1",
    "app-01",
    "",
];
/// Namespaces.
pub const NAMESPACES: &[&str] = &["eirini", "cf-workloads", "apps", "default", ""];
/// App guids.
pub const GUIDS: &[&str] = &[
    "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c",
    "4e7c8f2a-guid",
    "GUID with spaces/and slashes",
    "",
];
/// Container names (some taken by the extensions' own containers).
pub const CONTAINER_NAMES: &[&str] = &[
    "opi",
    "main",
    "sidecar",
    "setup",
    "eirinix-ssh",
    "eirinix-ssh-install",
    "",
];
/// Images, matching the rootfs patterns or not, with ports, digests and odd shapes.
pub const IMAGES: &[&str] = &[
    "registry.example.com/cloudfoundry/cflinuxfs4:1.0",
    "registry.example.com/cloudfoundry/cflinuxfs4:2.0",
    "registry.example.com/cloudfoundry/cflinuxfs3",
    "registry.example.com:5000/cloudfoundry/cflinuxfs4:1.0@sha256:5a9f0e7c1b3d5f7a",
    "registry.example.com/cloudfoundry/dora@sha256:5a9f0e7c1b3d5f7a",
    "reg/cf/cflinuxfs4:1.0",
    "reg/cf/cflinuxfs4@sha256:00",
    "eirini/app:1",
    "cflinuxfs4",
    "cflinuxfs4:",
    "a:b/c",
    ":",
    "@",
    "",
];
/// Commands, including one already wrapped by the ssh daemon.
pub const COMMANDS: &[&[&str]] = &[
    &["dumb-init", "--", "/lifecycle/launch"],
    &["/bin/app", "serve"],
    &[
        "/eirinix/ssh/eirinix-sshd",
        "sshd",
        "--exec",
        "--",
        "/bin/app",
    ],
    &["/opt/ssh/eirinix-sshd", "--exec", "--", "/bin/app"],
    &[""],
    &[],
];
/// Mount paths and `container_dir`s: normal, trailing slashes, root, relative, traversal...
pub const PATHS: &[&str] = &[
    "/var/vcap/data/data",
    "/var/vcap/data/data/",
    "/var/vcap/data/config",
    "/data",
    "/data/",
    "/data//",
    "//data",
    "/",
    "//",
    "relative/dir",
    "/home/vcap/app",
    "/eirinix/ssh",
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/a/../b",
    "/a/./b",
    "/tab\there",
    "",
];
/// PVC claim names.
pub const CLAIMS: &[&str] = &[
    "pvc-data-7f3a",
    "pvc-config-91bc",
    "persi-4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c",
    "UPPER_case claim!",
    "",
];
/// Plain volume names (persi's own names are added by [`volume_name`]).
pub const VOLUME_NAMES: &[&str] = &["data", "kube-api-access-7x2lq", "eirinix-ssh", "app", ""];
/// Service labels of `VCAP_SERVICES`.
pub const SERVICE_LABELS: &[&str] = &[
    "eirini-persi",
    "eirini-persi-nfs",
    "nfs",
    "user-provided",
    "p-mysql",
    "",
];
/// Binding `mode`s.
pub const MODES: &[&str] = &["rw", "r", "RW", "ro", ""];

/// A string from `pool`, or (one time in `1/odd`) an arbitrary one.
pub fn pick(u: &mut Unstructured, pool: &[&str]) -> Result<String> {
    if u.ratio(1, 6)? {
        Ok(String::arbitrary(u)?)
    } else {
        Ok((*u.choose(pool)?).to_owned())
    }
}

/// Up to `max` items made by `f`.
pub fn list<T>(
    u: &mut Unstructured,
    max: usize,
    mut f: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

/// A JSON value of the wrong type (for fields the code must type-check).
fn odd_value(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=5)? {
        0 => Value::Null,
        1 => json!(u.arbitrary::<i32>()?),
        2 => json!(u.arbitrary::<bool>()?),
        3 => json!([]),
        4 => json!({}),
        _ => json!(1.5),
    })
}

/// A string from `pool` most of the time, a value of another type sometimes.
fn str_or_odd(u: &mut Unstructured, pool: &[&str]) -> Result<Value> {
    if u.ratio(1, 8)? {
        odd_value(u)
    } else {
        Ok(Value::String(pick(u, pool)?))
    }
}

/// A claim name: from [`CLAIMS`] or arbitrary.
fn claim(u: &mut Unstructured) -> Result<String> {
    pick(u, CLAIMS)
}

/// The volume name persi would give `claim` (to make name collisions likely).
pub fn volume_name(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 3)? {
        let c = claim(u)?;
        let salt = u.int_in_range(0..=2)?;
        Ok(eirinix_persi::names::volume_name(&c, salt))
    } else {
        pick(u, VOLUME_NAMES)
    }
}

/// One `volume_mounts` entry of a binding.
fn vcap_mount(u: &mut Unstructured) -> Result<Value> {
    if u.ratio(1, 12)? {
        return odd_value(u);
    }
    let mut m = Map::new();
    if !u.ratio(1, 10)? {
        m.insert("container_dir".into(), str_or_odd(u, PATHS)?);
    }
    if u.ratio(2, 3)? {
        m.insert("mode".into(), str_or_odd(u, MODES)?);
    }
    if u.ratio(1, 2)? {
        m.insert("device_type".into(), json!("shared"));
        let mut device = Map::new();
        if u.ratio(2, 3)? {
            device.insert("volume_id".into(), str_or_odd(u, CLAIMS)?);
        }
        device.insert("mount_config".into(), json!({}));
        m.insert("device".into(), Value::Object(device));
    }
    Ok(Value::Object(m))
}

/// One binding of a service label.
fn vcap_binding(u: &mut Unstructured) -> Result<Value> {
    if u.ratio(1, 12)? {
        return odd_value(u);
    }
    let mut b = Map::new();
    for key in ["name", "binding_name", "instance_name"] {
        if u.ratio(1, 3)? {
            b.insert(
                key.into(),
                str_or_odd(u, &["data", "shared-config", "db", ""])?,
            );
        }
    }
    b.insert("label".into(), json!("eirini-persi"));
    match u.int_in_range(0..=3)? {
        0 => {}
        1 => {
            b.insert(
                "credentials".into(),
                json!({"hostname": "10.0.0.12", "password": "secret-password-123"}),
            );
        }
        _ => {
            b.insert(
                "credentials".into(),
                json!({"volume_id": str_or_odd(u, CLAIMS)?}),
            );
        }
    }
    match u.int_in_range(0..=5)? {
        0 => {}
        1 => {
            b.insert("volume_mounts".into(), odd_value(u)?);
        }
        _ => {
            let mounts = list(u, 3, vcap_mount)?;
            b.insert("volume_mounts".into(), Value::Array(mounts));
        }
    }
    Ok(Value::Object(b))
}

/// A `VCAP_SERVICES` value: structured (most of the time), arbitrary text, deep nesting, or blank.
pub fn vcap_services(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => String::arbitrary(u)?,
        1 => {
            // Deep nesting, inside and beyond serde_json's recursion limit.
            let depth = u.int_in_range(1..=300)?;
            let inner = "[".repeat(depth) + &"]".repeat(depth);
            format!("{{\"eirini-persi\":[{{\"volume_mounts\":{inner}}}]}}")
        }
        2 => (*u.choose(&["", "  ", "null", "{}", "[]", "1", "\"x\"", "{\"a\":null}"])?).to_owned(),
        _ => {
            let mut services = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let label = pick(u, SERVICE_LABELS)?;
                let bindings = if u.ratio(1, 10)? {
                    odd_value(u)?
                } else {
                    Value::Array(list(u, 3, vcap_binding)?)
                };
                services.insert(label, bindings);
            }
            let text = Value::Object(services).to_string();
            if u.ratio(1, 16)? {
                // Truncated JSON.
                let cut = u.int_in_range(0..=text.len())?;
                text.get(..cut).unwrap_or_default().to_owned()
            } else {
                text
            }
        }
    })
}

/// One env var, `VCAP_SERVICES` (value or reference) most of the time.
fn env_var(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=9)? {
        0 => json!({"name": "PORT", "value": "8080"}),
        1 => json!({"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef": {
            "name": pick(u, &["app-env", ""])?, "key": "VCAP_SERVICES", "optional": u.arbitrary::<Option<bool>>()?}}}),
        2 => json!({"name": "VCAP_SERVICES", "valueFrom": {"configMapKeyRef": {
            "name": "app-env", "key": pick(u, &["VCAP_SERVICES", "vcap"])?, "optional": u.arbitrary::<Option<bool>>()?}}}),
        3 => {
            json!({"name": "VCAP_SERVICES", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        }
        4 => json!({"name": "VCAP_SERVICES"}),
        5 => json!({"name": String::arbitrary(u)?, "value": String::arbitrary(u)?}),
        _ => json!({"name": "VCAP_SERVICES", "value": vcap_services(u)?}),
    })
}

/// A container (app or init).
fn container(u: &mut Unstructured) -> Result<Value> {
    let mut c = Map::new();
    c.insert("name".into(), json!(pick(u, CONTAINER_NAMES)?));
    if u.ratio(7, 8)? {
        c.insert("image".into(), json!(pick(u, IMAGES)?));
    }
    if u.ratio(3, 4)? {
        let cmd: Vec<String> = if u.ratio(1, 8)? {
            // A closure, not the path: `String::arbitrary` is tied to one input lifetime.
            #[allow(clippy::redundant_closure)]
            list(u, 3, |u| String::arbitrary(u))?
        } else {
            u.choose(COMMANDS)?
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        };
        c.insert("command".into(), json!(cmd));
    }
    if u.ratio(1, 3)? {
        c.insert("args".into(), json!(["--port", "8080"]));
    }
    if u.ratio(3, 4)? {
        c.insert("env".into(), Value::Array(list(u, 4, env_var)?));
    }
    if u.ratio(1, 2)? {
        let mounts = list(u, 3, |u| {
            let mut m = json!({"name": volume_name(u)?, "mountPath": pick(u, PATHS)?});
            if u.ratio(1, 4)? {
                m["readOnly"] = json!(true);
            }
            Ok(m)
        })?;
        c.insert("volumeMounts".into(), Value::Array(mounts));
    }
    if u.ratio(1, 4)? {
        c.insert("workingDir".into(), json!("/home/vcap/app"));
    }
    if u.ratio(1, 3)? {
        let mut sc = Map::new();
        if u.ratio(1, 2)? {
            sc.insert("runAsGroup".into(), json!(*u.choose(&[2000i64, 1000, 0])?));
        }
        sc.insert("runAsUser".into(), json!(2000));
        c.insert("securityContext".into(), Value::Object(sc));
    }
    Ok(Value::Object(c))
}

/// A string map (labels, annotations) from `(key, values)` candidates, each present or not.
fn string_map(u: &mut Unstructured, entries: &[(&str, &[&str])]) -> Result<Option<Value>> {
    if u.ratio(1, 8)? {
        return Ok(None);
    }
    let mut m = Map::new();
    for (key, values) in entries {
        if u.ratio(1, 2)? {
            m.insert((*key).to_owned(), json!(pick(u, values)?));
        }
    }
    if u.ratio(1, 8)? {
        m.insert(String::arbitrary(u)?, json!(String::arbitrary(u)?));
    }
    Ok(Some(Value::Object(m)))
}

/// An Eirini-like pod as JSON.
pub fn pod_value(u: &mut Unstructured) -> Result<Value> {
    let mut meta = Map::new();
    if u.ratio(7, 8)? {
        meta.insert("name".into(), json!(pick(u, POD_NAMES)?));
    }
    if u.ratio(1, 4)? {
        meta.insert("generateName".into(), json!("myapp-"));
    }
    if u.ratio(1, 2)? {
        meta.insert("namespace".into(), json!(pick(u, NAMESPACES)?));
    }
    let labels = string_map(
        u,
        &[
            ("cloudfoundry.org/source_type", &["APP", "STG", "TASK", ""]),
            ("cloudfoundry.org/guid", GUIDS),
            ("cloudfoundry.org/app_guid", GUIDS),
            ("cloudfoundry.org/process_type", &["web", "worker", ""]),
            ("cloudfoundry.org/rootfs-version", &["1.0", "2.0", ""]),
        ],
    )?;
    if let Some(l) = labels {
        meta.insert("labels".into(), l);
    }
    let annotations = string_map(
        u,
        &[
            ("eirinix.org/persi", &["injected", ""]),
            ("eirinix.org/ssh", &["injected"]),
            ("eirinix.org/rootfs", &["injected"]),
            ("eirinix.org/rootfs-opt-out", &["true", "false", ""]),
            ("cloudfoundry.org/application_name", &["dora"]),
        ],
    )?;
    if let Some(a) = annotations {
        meta.insert("annotations".into(), a);
    }
    if u.ratio(1, 2)? {
        let kind = *u.choose(&["StatefulSet", "ReplicaSet", "Job"])?;
        let api = *u.choose(&["apps/v1", "batch/v1", "v1"])?;
        meta.insert(
            "ownerReferences".into(),
            json!([{"apiVersion": api, "kind": kind, "name": pick(u, &["myapp", "dora-dev-7f3a9c2e1b"])?,
                    "uid": "0c4b2a1e-aaaa-bbbb-cccc-1234567890ab", "controller": true}]),
        );
    }
    if u.ratio(1, 16)? {
        meta.insert(
            "managedFields".into(),
            json!([{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1"}]),
        );
    }

    let mut pod = Map::new();
    pod.insert("apiVersion".into(), json!("v1"));
    pod.insert("kind".into(), json!("Pod"));
    pod.insert("metadata".into(), Value::Object(meta));
    if u.ratio(1, 20)? {
        // No spec at all.
        return Ok(Value::Object(pod));
    }
    let mut spec = Map::new();
    spec.insert("containers".into(), Value::Array(list(u, 3, container)?));
    if u.ratio(1, 3)? {
        spec.insert(
            "initContainers".into(),
            Value::Array(list(u, 2, container)?),
        );
    }
    if u.ratio(2, 3)? {
        let volumes = list(u, 3, |u| {
            let name = volume_name(u)?;
            Ok(match u.int_in_range(0..=2)? {
                0 => json!({"name": name, "emptyDir": {}}),
                _ => json!({"name": name, "persistentVolumeClaim": {"claimName": claim(u)?}}),
            })
        })?;
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    match u.int_in_range(0..=4)? {
        0 => {}
        1 => {
            spec.insert("securityContext".into(), json!({}));
        }
        _ => {
            let mut sc = Map::new();
            if u.ratio(1, 3)? {
                sc.insert("fsGroup".into(), json!(u.arbitrary::<i64>()?));
            }
            if u.ratio(1, 2)? {
                sc.insert("runAsGroup".into(), json!(*u.choose(&[2000i64, 1000, 0])?));
            }
            if u.ratio(1, 4)? {
                sc.insert("fsGroupChangePolicy".into(), json!("Always"));
            }
            sc.insert("runAsUser".into(), json!(2000));
            spec.insert("securityContext".into(), Value::Object(sc));
        }
    }
    pod.insert("spec".into(), Value::Object(spec));
    Ok(Value::Object(pod))
}

/// An Eirini-like pod.
pub fn pod(u: &mut Unstructured) -> Result<Pod> {
    let v = pod_value(u)?;
    // The generator only writes well-typed fields: a decode failure is a generator bug.
    Ok(serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("generated pod does not decode: {e}\n{v}")))
}
