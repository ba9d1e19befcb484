//! Reading volume bindings out of `VCAP_SERVICES`.
//!
//! `VCAP_SERVICES` maps service labels to lists of bindings. A binding that carries
//! `volume_mounts` asks for volumes: each mount names a claim (`credentials.volume_id`, else
//! the mount's `device.volume_id`), a `container_dir` and a `mode` (`r` or `rw`).
//! Bindings without `volume_mounts` are none of persi's business and are skipped.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Name of the environment variable holding the bindings.
pub const VCAP_SERVICES: &str = "VCAP_SERVICES";

/// Which binding of `VCAP_SERVICES` something came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingRef {
    /// Service label (the key of `VCAP_SERVICES`).
    pub label: String,
    /// Position of the binding in the label's list.
    pub index: usize,
    /// The binding's `name` (else `binding_name`, else `instance_name`), when it has one.
    pub name: Option<String>,
}

impl fmt::Display for BindingRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name:?} (service {:?})", self.label),
            None => write!(f, "#{} of service {:?}", self.index, self.label),
        }
    }
}

/// One volume a binding asks to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRequest {
    /// The binding asking for it.
    pub binding: BindingRef,
    /// Name of the PersistentVolumeClaim to mount.
    pub claim: String,
    /// Absolute mount path in the container (trailing slashes removed).
    pub container_dir: String,
    /// Mount read-only (`mode: "r"`).
    pub read_only: bool,
}

/// What is wrong with one binding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingProblem {
    /// The binding is not a JSON object.
    #[error("the binding is not a JSON object")]
    NotAnObject,
    /// `volume_mounts` is neither a list nor null.
    #[error("volume_mounts is not a list")]
    VolumeMountsNotAList,
    /// A `volume_mounts` entry is not an object.
    #[error("volume_mounts[{0}] is not an object")]
    MountNotAnObject(usize),
    /// Neither `credentials.volume_id` nor `device.volume_id` names a claim.
    #[error(
        "volume_mounts[{0}] names no claim: neither credentials.volume_id nor device.volume_id is set"
    )]
    NoClaim(usize),
    /// A field that must be a string is something else.
    #[error("volume_mounts[{index}]: {field} is not a string")]
    NotAString {
        /// Mount index.
        index: usize,
        /// The field, e.g. `credentials.volume_id`.
        field: &'static str,
    },
    /// The mount has no `container_dir`.
    #[error("volume_mounts[{0}] has no container_dir")]
    NoContainerDir(usize),
    /// `container_dir` is relative.
    #[error("volume_mounts[{index}]: container_dir {dir:?} is not an absolute path")]
    RelativeContainerDir {
        /// Mount index.
        index: usize,
        /// The offending path.
        dir: String,
    },
    /// `container_dir` is absolute but unusable.
    #[error("volume_mounts[{index}]: container_dir {dir:?} is not allowed: {why}")]
    InvalidContainerDir {
        /// Mount index.
        index: usize,
        /// The offending path.
        dir: String,
        /// Why.
        why: &'static str,
    },
    /// Two mounts of the same container share a `container_dir`.
    #[error(
        "volume_mounts[{index}]: container_dir {dir:?} is also the container_dir of binding {other}"
    )]
    DuplicateContainerDir {
        /// Mount index.
        index: usize,
        /// The shared path.
        dir: String,
        /// The binding that had it first.
        other: String,
    },
    /// `mode` is neither `r` nor `rw`.
    #[error("volume_mounts[{index}]: mode {mode:?} is neither \"r\" nor \"rw\"")]
    InvalidMode {
        /// Mount index.
        index: usize,
        /// The offending mode.
        mode: String,
    },
}

/// `VCAP_SERVICES` of a container cannot be used; the message names container, binding and problem.
#[derive(Debug, thiserror::Error)]
pub enum VcapError {
    /// Not JSON at all.
    #[error("container {container:?}: VCAP_SERVICES is not valid JSON: {source}")]
    NotJson {
        /// Container name.
        container: String,
        /// Parser error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but not the `label -> [binding]` shape.
    #[error("container {container:?}: VCAP_SERVICES {problem}")]
    Malformed {
        /// Container name.
        container: String,
        /// What is wrong.
        problem: String,
    },
    /// One binding is unusable.
    #[error("container {container:?}, binding {binding}: {problem}")]
    Binding {
        /// Container name.
        container: String,
        /// The binding (boxed: keeps the error small).
        binding: Box<BindingRef>,
        /// What is wrong with it.
        problem: BindingProblem,
    },
}

/// Which service labels to read.
#[derive(Clone, Copy, Debug)]
pub enum Labels<'a> {
    /// Every label (persi's default).
    Any,
    /// Only these (EiriniX read only `eirini-persi`).
    Only(&'a [String]),
}

impl Labels<'_> {
    fn accepts(&self, label: &str) -> bool {
        match self {
            Labels::Any => true,
            Labels::Only(list) => list.iter().any(|l| l == label),
        }
    }
}

/// The volumes `vcap` (the `VCAP_SERVICES` of container `container`) asks for.
///
/// Empty or blank input means no services. The first problem found is returned.
///
/// Admission runs this for every app pod, so well-typed input (every binding an object, every
/// field persi reads a string or null) takes one borrowing pass ([`fast`]); anything else is
/// read again as a `serde_json::Value`, which names the problem. Both read the same.
pub fn volume_requests(
    container: &str,
    vcap: &str,
    labels: Labels<'_>,
) -> Result<Vec<VolumeRequest>, VcapError> {
    if vcap.trim().is_empty() {
        return Ok(Vec::new());
    }
    match fast::volume_requests(container, vcap, labels) {
        Some(read) => read,
        None => by_value(container, vcap, labels),
    }
}

/// The precise reading, through `serde_json::Value`: every shape and type problem named.
fn by_value(
    container: &str,
    vcap: &str,
    labels: Labels<'_>,
) -> Result<Vec<VolumeRequest>, VcapError> {
    let value: Value = serde_json::from_str(vcap).map_err(|source| VcapError::NotJson {
        container: container.to_owned(),
        source,
    })?;
    let services = value.as_object().ok_or_else(|| VcapError::Malformed {
        container: container.to_owned(),
        problem: format!("is a JSON {}, not an object", kind(&value)),
    })?;
    let mut out = Vec::new();
    // Normalized container_dir -> the binding that mounts there first.
    let mut dirs: BTreeMap<String, BindingRef> = BTreeMap::new();
    for (label, bindings) in services {
        if !labels.accepts(label) {
            continue;
        }
        let bindings = match bindings {
            Value::Array(list) => list,
            Value::Null => continue,
            other => {
                return Err(VcapError::Malformed {
                    container: container.to_owned(),
                    problem: format!(
                        "service {label:?} is a JSON {}, not a list of bindings",
                        kind(other)
                    ),
                });
            }
        };
        for (index, binding) in bindings.iter().enumerate() {
            let binding_ref = BindingRef {
                label: label.clone(),
                index,
                name: binding.as_object().and_then(binding_name),
            };
            let fail = |problem| VcapError::Binding {
                container: container.to_owned(),
                binding: Box::new(binding_ref.clone()),
                problem,
            };
            let Some(obj) = binding.as_object() else {
                return Err(fail(BindingProblem::NotAnObject));
            };
            for (req, index) in binding_requests(obj, &binding_ref).map_err(fail)? {
                if let Some(other) = dirs.get(&req.container_dir) {
                    return Err(fail(BindingProblem::DuplicateContainerDir {
                        index,
                        dir: req.container_dir,
                        other: other.to_string(),
                    }));
                }
                dirs.insert(req.container_dir.clone(), binding_ref.clone());
                out.push(req);
            }
        }
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn binding_name(obj: &Map<String, Value>) -> Option<String> {
    ["name", "binding_name", "instance_name"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn binding_requests(
    obj: &Map<String, Value>,
    binding: &BindingRef,
) -> Result<Vec<(VolumeRequest, usize)>, BindingProblem> {
    let mounts = match obj.get("volume_mounts") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(BindingProblem::VolumeMountsNotAList),
    };
    let credential_claim = obj.get("credentials").and_then(|c| c.get("volume_id"));
    let mut out = Vec::with_capacity(mounts.len());
    for (index, mount) in mounts.iter().enumerate() {
        let Some(mount) = mount.as_object() else {
            return Err(BindingProblem::MountNotAnObject(index));
        };
        let claim = match credential_claim {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_) | Value::Null) | None => {
                match mount.get("device").and_then(|d| d.get("volume_id")) {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::String(_) | Value::Null) | None => {
                        return Err(BindingProblem::NoClaim(index));
                    }
                    Some(_) => {
                        return Err(BindingProblem::NotAString {
                            index,
                            field: "device.volume_id",
                        });
                    }
                }
            }
            Some(_) => {
                return Err(BindingProblem::NotAString {
                    index,
                    field: "credentials.volume_id",
                });
            }
        };
        let dir = match mount.get("container_dir") {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::String(_) | Value::Null) | None => {
                return Err(BindingProblem::NoContainerDir(index));
            }
            Some(_) => {
                return Err(BindingProblem::NotAString {
                    index,
                    field: "container_dir",
                });
            }
        };
        let container_dir = normalize_dir(dir, index)?.to_owned();
        let read_only = match mount.get("mode") {
            None | Some(Value::Null) => false,
            Some(Value::String(m)) if m == "rw" => false,
            Some(Value::String(m)) if m == "r" => true,
            Some(Value::String(m)) => {
                return Err(BindingProblem::InvalidMode {
                    index,
                    mode: m.clone(),
                });
            }
            Some(_) => {
                return Err(BindingProblem::NotAString {
                    index,
                    field: "mode",
                });
            }
        };
        let req = VolumeRequest {
            binding: binding.clone(),
            claim,
            container_dir,
            read_only,
        };
        out.push((req, index));
    }
    Ok(out)
}

/// One borrowing pass of eirinix's scanner over well-typed `VCAP_SERVICES`: the fields persi
/// reads as strings (escaped ones copied), everything else skipped. `None` when the input is not
/// of that shape (not an object of lists of objects, a field of another type, a key given twice
/// in a binding) or is JSON the scanner leaves to serde_json: the caller then reads it by value.
mod fast {
    use std::collections::BTreeMap;

    use eirinix_core::ObjectOnly;
    use serde::Deserialize;

    use crate::text::Text;

    use super::{BindingProblem, BindingRef, Labels, VcapError, VolumeRequest, normalize_dir};

    #[derive(Deserialize)]
    struct Binding<'a> {
        #[serde(borrow, default)]
        name: Option<Text<'a>>,
        #[serde(borrow, default)]
        binding_name: Option<Text<'a>>,
        #[serde(borrow, default)]
        instance_name: Option<Text<'a>>,
        #[serde(borrow, default)]
        credentials: Option<ObjectOnly<VolumeId<'a>>>,
        #[serde(borrow, default)]
        volume_mounts: Option<Vec<ObjectOnly<Mount<'a>>>>,
    }

    #[derive(Deserialize)]
    struct VolumeId<'a> {
        #[serde(borrow, default)]
        volume_id: Option<Text<'a>>,
    }

    #[derive(Deserialize)]
    struct Mount<'a> {
        #[serde(borrow, default)]
        container_dir: Option<Text<'a>>,
        #[serde(borrow, default)]
        mode: Option<Text<'a>>,
        #[serde(borrow, default)]
        device: Option<ObjectOnly<VolumeId<'a>>>,
    }

    /// Labels to their bindings (null: none); a label given twice keeps its last list.
    type Services<'a> = BTreeMap<Text<'a>, Option<Vec<ObjectOnly<Binding<'a>>>>>;

    pub(super) fn volume_requests(
        container: &str,
        vcap: &str,
        labels: Labels<'_>,
    ) -> Option<Result<Vec<VolumeRequest>, VcapError>> {
        let services: Services<'_> = eirinix_core::scan::from_str(vcap).ok()?;
        let mut out: Vec<VolumeRequest> = Vec::new();
        // Normalized container_dir -> the request in `out` that mounts there first.
        let mut dirs: BTreeMap<&str, usize> = BTreeMap::new();
        for (label, bindings) in &services {
            if !labels.accepts(label) {
                continue;
            }
            for (index, ObjectOnly(binding)) in bindings.iter().flatten().enumerate() {
                // A binding that mounts nothing asks for nothing (a database's, say): no
                // reference to it is made (`by_value` finds no request in it either).
                if binding.volume_mounts.as_ref().is_none_or(Vec::is_empty) {
                    continue;
                }
                let binding_ref = BindingRef {
                    label: label.to_string(),
                    index,
                    // The first of the three that is set, if it is not empty.
                    name: [&binding.name, &binding.binding_name, &binding.instance_name]
                        .into_iter()
                        .find_map(Option::as_ref)
                        .filter(|n| !n.is_empty())
                        .map(|n| n.to_string()),
                };
                let fail = |problem| VcapError::Binding {
                    container: container.to_owned(),
                    binding: Box::new(binding_ref.clone()),
                    problem,
                };
                // All of a binding's mounts first, then their directories, as `by_value` does:
                // the same problem is reported first.
                let requests: Result<Vec<(VolumeRequest, &str)>, BindingProblem> = binding
                    .volume_mounts
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(index, ObjectOnly(mount))| request(binding, mount, index, &binding_ref))
                    .collect();
                let requests = match requests {
                    Ok(requests) => requests,
                    Err(problem) => return Some(Err(fail(problem))),
                };
                for (index, (req, dir)) in requests.into_iter().enumerate() {
                    if let Some(&other) = dirs.get(dir) {
                        return Some(Err(fail(BindingProblem::DuplicateContainerDir {
                            index,
                            dir: req.container_dir,
                            other: out[other].binding.to_string(),
                        })));
                    }
                    dirs.insert(dir, out.len());
                    out.push(req);
                }
            }
        }
        Some(Ok(out))
    }

    /// The request of one mount, and its directory as a slice of the mount's.
    fn request<'m>(
        binding: &Binding<'_>,
        mount: &'m Mount<'_>,
        index: usize,
        binding_ref: &BindingRef,
    ) -> Result<(VolumeRequest, &'m str), BindingProblem> {
        let credential = binding
            .credentials
            .as_ref()
            .and_then(|c| c.0.volume_id.as_ref());
        let device = mount.device.as_ref().and_then(|d| d.0.volume_id.as_ref());
        let claim = match (credential, device) {
            (Some(c), _) if !c.is_empty() => c,
            (_, Some(d)) if !d.is_empty() => d,
            _ => return Err(BindingProblem::NoClaim(index)),
        };
        let dir = match &mount.container_dir {
            Some(d) if !d.is_empty() => d,
            _ => return Err(BindingProblem::NoContainerDir(index)),
        };
        let container_dir = normalize_dir(dir, index)?;
        let read_only = match mount.mode.as_deref() {
            None | Some("rw") => false,
            Some("r") => true,
            Some(m) => {
                return Err(BindingProblem::InvalidMode {
                    index,
                    mode: m.to_owned(),
                });
            }
        };
        let req = VolumeRequest {
            binding: binding_ref.clone(),
            claim: claim.to_string(),
            container_dir: container_dir.to_owned(),
            read_only,
        };
        Ok((req, container_dir))
    }
}

/// `dir` without trailing slashes, if it is an absolute path persi can mount at.
pub(crate) fn normalize_dir(dir: &str, index: usize) -> Result<&str, BindingProblem> {
    if !dir.starts_with('/') {
        return Err(BindingProblem::RelativeContainerDir {
            index,
            dir: dir.to_owned(),
        });
    }
    let invalid = |why| BindingProblem::InvalidContainerDir {
        index,
        dir: dir.to_owned(),
        why,
    };
    // Byte tests first: a path of ASCII without two dots in a row needs nothing else (issue 20:
    // the `split` and `chars` walks cost more than the rest of a mount's reading).
    let bytes = dir.as_bytes();
    if bytes.windows(2).any(|w| w == b"..") && dir.split('/').any(|seg| seg == "..") {
        return Err(invalid("it contains \"..\""));
    }
    let control = if dir.is_ascii() {
        bytes.iter().any(u8::is_ascii_control)
    } else {
        dir.chars().any(char::is_control)
    };
    if control {
        return Err(invalid("it contains control characters"));
    }
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(invalid(
            "mounting at / would hide the container's filesystem",
        ));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &Value) -> Result<Vec<VolumeRequest>, VcapError> {
        volume_requests("opi", &v.to_string(), Labels::Any)
    }

    fn binding(name: &str, claim: Option<&str>, mounts: Value) -> Value {
        let mut b = json!({"name": name, "label": "eirini-persi", "volume_mounts": mounts});
        if let Some(c) = claim {
            b["credentials"] = json!({"volume_id": c});
        }
        b
    }

    #[test]
    fn reads_claims_dirs_and_modes_under_any_label() {
        let v = json!({
            "eirini-persi": [binding("data", Some("pvc-data"), json!([{"container_dir": "/var/vcap/data/x/", "mode": "rw"}]))],
            "nfs": [binding("ro", None, json!([{"container_dir": "/ro", "mode": "r", "device": {"volume_id": "pvc-ro"}}]))],
            "user-provided": [{"name": "db", "credentials": {"uri": "postgres://"}}],
            "empty": null
        });
        let reqs = parse(&v).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].claim, "pvc-data");
        assert_eq!(reqs[0].container_dir, "/var/vcap/data/x");
        assert!(!reqs[0].read_only);
        assert_eq!(reqs[1].claim, "pvc-ro");
        assert!(reqs[1].read_only);
        assert_eq!(reqs[1].binding.to_string(), "\"ro\" (service \"nfs\")");
        let only = volume_requests("opi", &v.to_string(), Labels::Only(&["nfs".into()])).unwrap();
        assert_eq!(only.len(), 1);
    }

    #[test]
    fn credentials_volume_id_wins_over_device() {
        let v = json!({"s": [binding("b", Some("cred"), json!([{"container_dir": "/d", "device": {"volume_id": "dev"}}]))]});
        assert_eq!(parse(&v).unwrap()[0].claim, "cred");
    }

    #[test]
    fn blank_means_no_services() {
        assert!(
            volume_requests("opi", "  ", Labels::Any)
                .unwrap()
                .is_empty()
        );
        assert!(parse(&json!({})).unwrap().is_empty());
    }

    fn problem(v: &Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn bad_input_names_container_binding_and_problem() {
        let e = volume_requests("opi", "{not json", Labels::Any).unwrap_err();
        assert!(matches!(e, VcapError::NotJson { .. }));
        assert!(
            e.to_string()
                .starts_with("container \"opi\": VCAP_SERVICES is not valid JSON")
        );

        assert_eq!(
            problem(&json!([1])),
            "container \"opi\": VCAP_SERVICES is a JSON array, not an object"
        );
        assert_eq!(
            problem(&json!({"s": {"name": "x"}})),
            "container \"opi\": VCAP_SERVICES service \"s\" is a JSON object, not a list of bindings"
        );
        assert_eq!(
            problem(&json!({"s": [binding("b", None, json!([{"container_dir": "/d"}]))]})),
            "container \"opi\", binding \"b\" (service \"s\"): volume_mounts[0] names no claim: neither credentials.volume_id nor device.volume_id is set"
        );
        assert_eq!(
            problem(&json!({"s": [binding("b", Some("c"), json!([{"mode": "rw"}]))]})),
            "container \"opi\", binding \"b\" (service \"s\"): volume_mounts[0] has no container_dir"
        );
        assert_eq!(
            problem(&json!({"s": [binding("b", Some("c"), json!([{"container_dir": "data"}]))]})),
            "container \"opi\", binding \"b\" (service \"s\"): volume_mounts[0]: container_dir \"data\" is not an absolute path"
        );
        assert_eq!(
            problem(&json!({"s": [
                binding("a", Some("c1"), json!([{"container_dir": "/d"}])),
                binding("b", Some("c2"), json!([{"container_dir": "/d/"}]))
            ]})),
            "container \"opi\", binding \"b\" (service \"s\"): volume_mounts[0]: container_dir \"/d\" is also the container_dir of binding \"a\" (service \"s\")"
        );
        assert!(
            problem(&json!({"s": [binding("b", Some("c"), json!([{"container_dir": "/d", "mode": "rwx"}]))]}))
                .ends_with("volume_mounts[0]: mode \"rwx\" is neither \"r\" nor \"rw\"")
        );
        assert!(
            problem(
                &json!({"s": [binding("b", Some("c"), json!([{"container_dir": "/a/../etc"}]))]})
            )
            .contains("contains \"..\"")
        );
        assert!(
            problem(&json!({"s": [binding("b", Some("c"), json!([{"container_dir": "///"}]))]}))
                .contains("would hide")
        );
        assert!(
            problem(&json!({"s": [binding("b", Some("c"), json!({"container_dir": "/d"}))]}))
                .ends_with("volume_mounts is not a list")
        );
        assert!(
            problem(&json!({"s": [{"credentials": {"volume_id": 7}, "volume_mounts": [{"container_dir": "/d"}]}]}))
                .ends_with("binding #0 of service \"s\": volume_mounts[0]: credentials.volume_id is not a string")
        );
        assert!(problem(&json!({"s": ["x"]})).ends_with("the binding is not a JSON object"));
    }

    /// The borrowing pass reads what the `Value` reading reads: the same requests, or the
    /// same error message (and `None` only where it leaves the input to the `Value` reading).
    fn same_as_by_value(vcap: &str) {
        let nfs = ["nfs".to_owned(), "s".to_owned()];
        for labels in [Labels::Any, Labels::Only(&nfs)] {
            let got = volume_requests("opi", vcap, labels);
            let want = by_value("opi", vcap, labels);
            match (&got, &want) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{vcap}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{vcap}"),
                _ => panic!("{vcap}: read {got:?}, by value {want:?}"),
            }
        }
    }

    #[test]
    fn the_borrowing_pass_reads_as_the_value_reading_does() {
        let cases = [
            r#"{"s": [{"name": "b", "credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/d", "mode": "r"}]}]}"#,
            r#"  {"s": [{"name": "b", "credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/d"}]}]}  "#,
            // Escapes in keys and values.
            r#"{"\u0073": [{"n\u0061me": "\u00e9", "credentials": {"volume_id": "c\"q"}, "volume_mounts": [{"container_dir": "\/d\/e\/", "mode": "\u0072"}]}]}"#,
            // A key given twice: the last value counts.
            r#"{"s": [{"volume_mounts": 1}], "s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/x"}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/x", "container_dir": "/y"}]}]}"#,
            // Names: the first string among name, binding_name, instance_name.
            r#"{"s": [{"name": 3, "binding_name": "bn", "volume_mounts": [{}]}]}"#,
            r#"{"s": [{"name": "", "instance_name": "in", "volume_mounts": [{}]}]}"#,
            r#"{"s": [{"name": null, "instance_name": "in", "volume_mounts": [{"container_dir": "/d"}]}]}"#,
            // Claims: credentials first, else the device; wrong types named.
            r#"{"s": [{"credentials": {"volume_id": ""}, "volume_mounts": [{"container_dir": "/d", "device": {"volume_id": "dev"}}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": null}, "volume_mounts": [{"container_dir": "/d", "device": {"volume_id": 5}}]}]}"#,
            r#"{"s": [{"credentials": "c", "volume_mounts": [{"container_dir": "/d", "device": "x"}]}]}"#,
            r#"{"s": [{"credentials": {"uri": "x"}, "volume_mounts": [{"container_dir": "/d", "device": {"volume_id": "dev"}}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": ["c"]}, "volume_mounts": [{"container_dir": "/d"}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": 7}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": ""}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/d", "mode": true}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/d", "mode": null}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/d", "mode": "R"}]}]}"#,
            r#"{"s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/d\u0001"}]}]}"#,
            "{\"s\": [{\"credentials\": {\"volume_id\": \"c\"}, \"volume_mounts\": [{\"container_dir\": \"/d\u{1}\"}]}]}",
            // Which problem comes first: a binding's mounts, then their directories.
            r#"{"s": [{"name": "a", "credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}]}, {"name": "b", "credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}, {}]}]}"#,
            r#"{"s": [{"name": "a", "credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}, {"container_dir": "/a/"}]}]}"#,
            // Bindings that mount nothing still count in the numbering of those that do.
            r#"{"db": [{"name": "db", "credentials": {"uri": "x"}}], "s": [{"volume_mounts": []}, {"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}, {"container_dir": "/a"}]}]}"#,
            // Shapes.
            r#"{"s": [{"volume_mounts": null}], "t": null, "u": [{}]}"#,
            r#"{"s": [{"volume_mounts": {}}]}"#,
            r#"{"s": [{"volume_mounts": [1]}]}"#,
            r#"{"s": [[]]}"#,
            r#"{"s": "x"}"#,
            r#"{"s": 1.5e3}"#,
            r#"{"s": false}"#,
            r#"{"other": "x", "s": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}]}]}"#,
            r#"{"nfs": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}]}], "s": [{"credentials": {"volume_id": "d"}, "volume_mounts": [{"container_dir": "/a/"}]}]}"#,
            r#"{"b": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/a"}, {"container_dir": "/b", "mode": "rw"}]}], "a": [{"credentials": {"volume_id": "c"}, "volume_mounts": [{"container_dir": "/c"}]}]}"#,
            "[]",
            "\"text\"",
            "null",
            "12",
            "{}",
            "{not json",
            r#"{"s": [}"#,
            r#"{"s": []} x"#,
        ];
        for vcap in cases {
            same_as_by_value(vcap);
        }
        // The benchmark's Eirini app: two persi bindings and a database.
        let eirini = json!({
            "eirini-persi": [
                {"name": "data", "label": "eirini-persi", "credentials": {"volume_id": "pvc-data-7f3a"},
                 "volume_mounts": [{"container_dir": "/var/vcap/data/data", "mode": "rw", "device_type": "shared", "device": {"volume_id": "pvc-data-7f3a", "mount_config": {}}}]},
                {"name": "shared-config", "label": "eirini-persi", "credentials": {"volume_id": "pvc-config-91bc"},
                 "volume_mounts": [{"container_dir": "/var/vcap/data/config", "mode": "r", "device_type": "shared", "device": {"volume_id": "pvc-config-91bc", "mount_config": {}}}]}
            ],
            "p-mysql": [{"name": "db", "label": "p-mysql", "credentials": {"hostname": "10.0.0.12", "port": 3306, "password": "secret"}}]
        });
        same_as_by_value(&eirini.to_string());
        assert!(
            fast::volume_requests("opi", &eirini.to_string(), Labels::Any).is_some(),
            "the usual shape takes the borrowing pass"
        );
        assert_eq!(parse(&eirini).unwrap().len(), 2);
    }
}
