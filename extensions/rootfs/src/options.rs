//! Options of the rootfs extension and the desired state they resolve to.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::error::RootfsError;
pub use crate::gate::Gate;
use crate::gate::parse_http_url;
use crate::image::ImagePattern;

/// The rootfs version label on app StatefulSets, their pod templates and their pods.
pub const ROOTFS_LABEL: &str = "cloudfoundry.org/rootfs-version";
/// The label selecting Eirini app StatefulSets and pods.
pub const DEFAULT_APP_SELECTOR: &str = "cloudfoundry.org/source_type=APP";
/// Default opt-out annotation (on a StatefulSet or a pod): present and not `"false"` means skip.
pub const DEFAULT_OPT_OUT_ANNOTATION: &str = "eirinix.org/rootfs-opt-out";
/// Annotation written on a StatefulSet when its roll starts (RFC 3339 time).
pub const ROLL_STARTED_ANNOTATION: &str = "eirinix.org/rootfs-roll-started";
/// Annotation written on a StatefulSet when its roll starts: the version rolled to.
pub const ROLL_VERSION_ANNOTATION: &str = "eirinix.org/rootfs-roll-version";
/// ConfigMap key holding the desired version.
pub const CONFIG_MAP_VERSION_KEY: &str = "version";
/// ConfigMap key holding the image pattern (an empty value disables image rewriting).
pub const CONFIG_MAP_PATTERN_KEY: &str = "image-pattern";

/// A namespaced object by name (the run-time ConfigMap, the leader Lease).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacedName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Everything the rootfs extension can be told; [`Default`] gives safe values and no version.
#[derive(Clone, Debug)]
pub struct RootfsOptions {
    /// Desired rootfs version (flag/env); the ConfigMap's `version` key overrides it.
    pub version: Option<String>,
    /// Glob on image repositories whose tag is the rootfs version (`registry/cf/cflinuxfs*`).
    pub image_pattern: Option<String>,
    /// ConfigMap watched for `version` and `image-pattern` at run time.
    pub config_map: Option<NamespacedName>,
    /// Only StatefulSets and pods in this namespace (default: all).
    pub namespace: Option<String>,
    /// Label selector of app StatefulSets (default `cloudfoundry.org/source_type=APP`).
    pub app_selector: String,
    /// StatefulSets rolling at the same time, at most (at least 1).
    pub max_in_flight: usize,
    /// A roll not finished after this long is recorded as timed out and frees its slot.
    pub roll_timeout: Duration,
    /// What must be ready before rolling.
    pub gate: Gate,
    /// How often the gate is checked while closed (and by the webhook's gate watcher).
    pub gate_interval: Duration,
    /// Opt-out annotation, honoured on StatefulSets and pods.
    pub opt_out_annotation: String,
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Re-plan at least this often even without watch events.
    pub resync_interval: Duration,
    /// One-shot mode gives up (non-clean report) after this long.
    pub once_deadline: Duration,
    /// Field manager of the patches.
    pub field_manager: String,
    /// Reporting controller of Events.
    pub reporter: String,
    /// Reporting instance of Events (e.g. the pod name).
    pub reporter_instance: Option<String>,
    /// Lease that elects the one replica rolling StatefulSets ([`crate::install`]), and that a
    /// one-shot roll ([`crate::roll_once`]) holds while it rolls; `None`: every manager rolls
    /// (one replica only!).
    pub leader_lease: Option<NamespacedName>,
    /// Validity of that Lease without renewal: a dead roller is replaced, and a one-shot roll
    /// gets the Lease handed over, within about this long (a quarter of it for a handover).
    pub lease_duration: Duration,
}

impl Default for RootfsOptions {
    fn default() -> Self {
        Self {
            version: None,
            image_pattern: None,
            config_map: None,
            namespace: None,
            app_selector: DEFAULT_APP_SELECTOR.into(),
            max_in_flight: 2,
            roll_timeout: Duration::from_secs(600),
            gate: Gate::None,
            gate_interval: Duration::from_secs(10),
            opt_out_annotation: DEFAULT_OPT_OUT_ANNOTATION.into(),
            dry_run: false,
            resync_interval: Duration::from_secs(30),
            once_deadline: Duration::from_secs(3600),
            field_manager: "eirinix-rootfs".into(),
            reporter: "eirinix-rootfs".into(),
            reporter_instance: None,
            leader_lease: None,
            lease_duration: Duration::from_secs(15),
        }
    }
}

/// The resolved target: the version every app must run, and which images carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The desired rootfs version (label value and image tag).
    pub version: String,
    /// Images whose tag is rewritten to `version`; `None` means label only.
    pub pattern: Option<ImagePattern>,
}

/// Check that `version` can be both a label value and an image tag.
pub fn validate_version(version: &str) -> Result<(), RootfsError> {
    let b = version.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RootfsError::InvalidVersion(version.to_owned()))
    }
}

impl RootfsOptions {
    /// Check ranges and formats before anything starts.
    pub fn validate(&self) -> Result<(), RootfsError> {
        let bad = |m: &str| Err(RootfsError::InvalidOptions(m.to_owned()));
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1");
        }
        if self.roll_timeout.is_zero() || self.resync_interval.is_zero() {
            return bad("roll_timeout and resync_interval must be positive");
        }
        if self.gate_interval.is_zero() || self.once_deadline.is_zero() {
            return bad("gate_interval and once_deadline must be positive");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return bad("lease_duration must be at least 1 s");
        }
        if self.opt_out_annotation.is_empty() {
            return bad("opt_out_annotation must not be empty");
        }
        let sel = self.app_selector.trim();
        let balanced = sel.matches('(').count() == sel.matches(')').count();
        if sel.is_empty() || !balanced || sel.ends_with(',') || sel.starts_with(',') {
            // The apiserver parses selectors; this only catches what would never work.
            return Err(RootfsError::InvalidOptions(format!(
                "app_selector {:?} is not a label selector",
                self.app_selector
            )));
        }
        match &self.gate {
            Gate::Deployment { namespace, name } if namespace.is_empty() || name.is_empty() => {
                return bad("a Deployment gate needs a namespace and a name");
            }
            Gate::Http { url } => {
                parse_http_url(url)?;
            }
            _ => {}
        }
        for (what, r) in [
            ("config_map", &self.config_map),
            ("leader_lease", &self.leader_lease),
        ] {
            if r.as_ref()
                .is_some_and(|r| r.namespace.is_empty() || r.name.is_empty())
            {
                return Err(RootfsError::InvalidOptions(format!(
                    "{what} needs a namespace and a name"
                )));
            }
        }
        self.desired_from(None)?;
        Ok(())
    }

    /// The desired state from the options alone.
    pub fn static_desired(&self) -> Result<Option<Desired>, RootfsError> {
        self.desired_from(None)
    }

    /// The desired state: the ConfigMap's keys where present and non-empty, else the options.
    pub fn desired_from(
        &self,
        config_map: Option<&ConfigMap>,
    ) -> Result<Option<Desired>, RootfsError> {
        let empty = BTreeMap::new();
        let data = config_map.and_then(|c| c.data.as_ref()).unwrap_or(&empty);
        let version = data
            .get(CONFIG_MAP_VERSION_KEY)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .or_else(|| self.version.clone().filter(|v| !v.is_empty()));
        let pattern = match data.get(CONFIG_MAP_PATTERN_KEY) {
            Some(p) if p.trim().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => self.image_pattern.clone().filter(|p| !p.is_empty()),
        };
        let pattern = pattern.map(|p| ImagePattern::new(&p)).transpose()?;
        match version {
            None => Ok(None),
            Some(version) => {
                validate_version(&version)?;
                Ok(Some(Desired { version, pattern }))
            }
        }
    }

    /// Whether `annotations` carry the opt-out annotation (any value but `"false"`).
    pub fn opted_out(&self, annotations: Option<&BTreeMap<String, String>>) -> bool {
        annotations
            .and_then(|a| a.get(&self.opt_out_annotation))
            .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn cm(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta::default(),
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn versions_must_be_label_values_and_tags() {
        for ok in ["1.2.3", "v2", "0.1.0-build_7", "a"] {
            assert!(validate_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-1", "1-", "_1", "a/b", "a:b", &"x".repeat(64)] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_map_overrides_options() {
        let o = RootfsOptions {
            version: Some("1.0".into()),
            image_pattern: Some("reg/cflinuxfs*".into()),
            ..Default::default()
        };
        let d = o.desired_from(None).unwrap().unwrap();
        assert_eq!(d.version, "1.0");
        assert_eq!(d.pattern.unwrap().as_str(), "reg/cflinuxfs*");
        let d = o
            .desired_from(Some(&cm(&[("version", "2.0"), ("image-pattern", "")])))
            .unwrap()
            .unwrap();
        assert_eq!(d.version, "2.0");
        assert_eq!(d.pattern, None, "an empty pattern disables rewriting");
        let d = o
            .desired_from(Some(&cm(&[("version", " ")])))
            .unwrap()
            .unwrap();
        assert_eq!(d.version, "1.0", "blank keys fall back to the options");
        assert!(o.desired_from(Some(&cm(&[("version", "a b")]))).is_err());
        assert_eq!(RootfsOptions::default().desired_from(None).unwrap(), None);
    }

    #[test]
    fn validation_catches_bad_options() {
        assert!(RootfsOptions::default().validate().is_ok());
        let bad = [
            RootfsOptions {
                max_in_flight: 0,
                ..Default::default()
            },
            RootfsOptions {
                gate: Gate::Http {
                    url: "ftp://x".into(),
                },
                ..Default::default()
            },
            RootfsOptions {
                gate: Gate::Deployment {
                    namespace: String::new(),
                    name: "x".into(),
                },
                ..Default::default()
            },
            RootfsOptions {
                app_selector: "a in (".into(),
                ..Default::default()
            },
            RootfsOptions {
                version: Some("bad version".into()),
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }

    #[test]
    fn opt_out_values() {
        let o = RootfsOptions::default();
        let a = |v: &str| BTreeMap::from([(DEFAULT_OPT_OUT_ANNOTATION.to_owned(), v.to_owned())]);
        assert!(o.opted_out(Some(&a("true"))));
        assert!(o.opted_out(Some(&a(""))));
        assert!(!o.opted_out(Some(&a("false"))));
        assert!(!o.opted_out(None));
    }
}
