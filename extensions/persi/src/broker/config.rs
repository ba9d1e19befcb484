//! Broker configuration: credentials, target namespace and the plan catalog (YAML or JSON).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names;

/// Access modes a plan may request for its PVCs.
pub const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// Everything the broker needs; deserializes from YAML or JSON (see [`BrokerConfig::from_yaml`]).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Namespace the PVCs are created in: the namespace app pods run in (PVCs are namespaced).
    pub namespace: String,
    /// Basic-auth user name the platform uses.
    pub username: String,
    /// Basic-auth password the platform uses.
    pub password: String,
    /// Service offerings and plans.
    #[serde(default)]
    pub catalog: Catalog,
    /// Oldest `X-Broker-API-Version` accepted (default `2.13`: `context` with org and space;
    /// Cloud Foundry sends 2.15). Older or missing versions get 412.
    #[serde(default = "default_min_api_version")]
    pub min_api_version: String,
    /// Parent of the default mount path: a binding without `mount` mounts at `<root>/<instance id>`.
    #[serde(default = "default_mount_root")]
    pub mount_root: String,
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("namespace", &self.namespace)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("catalog", &self.catalog)
            .field("min_api_version", &self.min_api_version)
            .field("mount_root", &self.mount_root)
            .finish()
    }
}

fn default_min_api_version() -> String {
    "2.13".into()
}

fn default_mount_root() -> String {
    "/var/vcap/data".into()
}

/// The offerings the broker advertises at `GET /v2/catalog`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Service offerings (usually one).
    pub services: Vec<ServiceOffering>,
}

impl Default for Catalog {
    /// One `eirini-persi` offering with a `default` plan: 1Gi, ReadWriteOnce, the cluster's default storage class.
    fn default() -> Self {
        Self {
            services: vec![ServiceOffering {
                id: "2a6f4c0e-6d1b-4b8e-9d2a-7f3e5c1a9b01".into(),
                name: "eirini-persi".into(),
                description: "Persistent volumes for Eirini apps".into(),
                tags: vec!["persistent".into(), "volume".into()],
                bindable: true,
                metadata: None,
                plans: vec![PlanConfig {
                    id: "2a6f4c0e-6d1b-4b8e-9d2a-7f3e5c1a9b02".into(),
                    name: "default".into(),
                    description: "1Gi ReadWriteOnce volume of the default storage class".into(),
                    storage_class: None,
                    size: default_size(),
                    access_mode: default_access_mode(),
                    free: true,
                    metadata: None,
                }],
            }],
        }
    }
}

/// One service offering.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOffering {
    /// Globally unique id (a GUID is customary).
    pub id: String,
    /// CLI-friendly name (`cf create-service <name> <plan> <instance>`); also the label in `VCAP_SERVICES`.
    pub name: String,
    /// Shown in the marketplace.
    pub description: String,
    /// Tags shown to apps in `VCAP_SERVICES`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether instances can be bound (default true).
    #[serde(default = "yes")]
    pub bindable: bool,
    /// Opaque metadata passed through to the platform (display name, image...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Plans: at least one.
    pub plans: Vec<PlanConfig>,
}

/// One plan: how the PVC of an instance looks.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Globally unique id.
    pub id: String,
    /// CLI-friendly name.
    pub name: String,
    /// Shown in the marketplace.
    pub description: String,
    /// `storageClassName` of the PVCs; absent means the cluster's default class.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Requested size when provisioning has no `size` parameter (a Kubernetes quantity, default `1Gi`).
    #[serde(default = "default_size")]
    pub size: String,
    /// Access mode of the PVCs (default `ReadWriteOnce`).
    #[serde(default = "default_access_mode")]
    pub access_mode: String,
    /// Whether the plan is free (default true).
    #[serde(default = "yes")]
    pub free: bool,
    /// Opaque metadata passed through to the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

fn yes() -> bool {
    true
}

fn default_size() -> String {
    "1Gi".into()
}

fn default_access_mode() -> String {
    "ReadWriteOnce".into()
}

/// An unusable broker configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not YAML/JSON of the expected shape.
    #[error("broker configuration does not parse: {0}")]
    Parse(#[from] yaml_serde::Error),
    /// A field has a value the broker cannot work with.
    #[error("broker configuration: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// A configuration with the default catalog.
    pub fn new(
        namespace: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            username: username.into(),
            password: password.into(),
            catalog: Catalog::default(),
            min_api_version: default_min_api_version(),
            mount_root: default_mount_root(),
        }
    }

    /// Parse YAML (or JSON, which is YAML) and validate.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = yaml_serde::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Check everything the broker relies on; the router answers 500 to every request otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !names::is_dns_label(&self.namespace) {
            return invalid(format!(
                "namespace {:?} is not a valid namespace name",
                self.namespace
            ));
        }
        if self.username.is_empty() || self.password.is_empty() {
            return invalid("username and password must not be empty".into());
        }
        if self.username.contains(':') {
            return invalid("username must not contain ':' (basic auth)".into());
        }
        parse_version(&self.min_api_version).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "min_api_version {:?} is not of the form 2.N",
                self.min_api_version
            ))
        })?;
        if !self.mount_root.starts_with('/') {
            return invalid(format!(
                "mount_root {:?} is not an absolute path",
                self.mount_root
            ));
        }
        if self.catalog.services.is_empty() {
            return invalid("the catalog has no service".into());
        }
        let mut ids = HashSet::new();
        let mut service_names = HashSet::new();
        for s in &self.catalog.services {
            if s.id.is_empty() || s.name.is_empty() {
                return invalid("every service needs an id and a name".into());
            }
            if !ids.insert(s.id.as_str()) {
                return invalid(format!("id {:?} is used twice", s.id));
            }
            if !service_names.insert(s.name.as_str()) {
                return invalid(format!("service name {:?} is used twice", s.name));
            }
            if s.plans.is_empty() {
                return invalid(format!("service {:?} has no plan", s.name));
            }
            let mut plan_names = HashSet::new();
            for p in &s.plans {
                if p.id.is_empty() || p.name.is_empty() {
                    return invalid(format!(
                        "every plan of service {:?} needs an id and a name",
                        s.name
                    ));
                }
                if !ids.insert(p.id.as_str()) {
                    return invalid(format!("id {:?} is used twice", p.id));
                }
                if !plan_names.insert(p.name.as_str()) {
                    return invalid(format!(
                        "plan name {:?} is used twice in service {:?}",
                        p.name, s.name
                    ));
                }
                if !is_quantity(&p.size) {
                    return invalid(format!(
                        "plan {:?}: size {:?} is not a Kubernetes quantity (e.g. 1Gi)",
                        p.name, p.size
                    ));
                }
                if !ACCESS_MODES.contains(&p.access_mode.as_str()) {
                    return invalid(format!(
                        "plan {:?}: access_mode {:?} is not one of {ACCESS_MODES:?}",
                        p.name, p.access_mode
                    ));
                }
                if p.storage_class.as_deref() == Some("") {
                    return invalid(format!(
                        "plan {:?}: storage_class is empty (omit it for the default class)",
                        p.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The offering and plan with these ids.
    pub fn plan(&self, service_id: &str, plan_id: &str) -> Option<(&ServiceOffering, &PlanConfig)> {
        let service = self.catalog.services.iter().find(|s| s.id == service_id)?;
        let plan = service.plans.iter().find(|p| p.id == plan_id)?;
        Some((service, plan))
    }

    /// The minimum API version as (major, minor).
    pub(crate) fn min_version(&self) -> (u32, u32) {
        parse_version(&self.min_api_version).unwrap_or((2, 13))
    }
}

/// `"2.17"` as `(2, 17)`.
pub(crate) fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `s` is a positive Kubernetes quantity the broker accepts as a size (`10Gi`, `500M`, `1.5Ti`).
pub fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "",
    ];
    let Some(number) = SUFFIXES.iter().find_map(|suf| {
        s.strip_suffix(suf)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    }) else {
        return false;
    };
    let mut parts = number.split('.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    parts.next().is_none()
        && !int.is_empty()
        && frac.is_none_or(|f| !f.is_empty())
        && number.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["1Gi", "10Gi", "500M", "1.5Ti", "1073741824", "2k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in [
            "", "Gi", "0", "0Gi", "1.Gi", ".5Gi", "1 Gi", "1gi", "-1Gi", "1.2.3Gi", "1GiB",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn yaml_catalog_with_defaults() {
        let c = BrokerConfig::from_yaml(
            r#"
namespace: eirini-workloads
username: broker
password: s3cret
catalog:
  services:
  - id: svc-1
    name: eirini-persi
    description: volumes
    plans:
    - id: plan-small
      name: small
      description: small ones
      storage_class: fast
      size: 2Gi
    - id: plan-shared
      name: shared
      description: shared ones
      access_mode: ReadWriteMany
"#,
        )
        .unwrap();
        let (_, small) = c.plan("svc-1", "plan-small").unwrap();
        assert_eq!(small.storage_class.as_deref(), Some("fast"));
        assert_eq!(small.access_mode, "ReadWriteOnce");
        let (_, shared) = c.plan("svc-1", "plan-shared").unwrap();
        assert_eq!(shared.size, "1Gi");
        assert_eq!(c.min_version(), (2, 13));
        assert!(!format!("{c:?}").contains("s3cret"), "password is redacted");
    }

    #[test]
    fn json_is_accepted_and_mistakes_are_reported() {
        let json = r#"{"namespace": "apps", "username": "u", "password": "p"}"#;
        assert_eq!(
            BrokerConfig::from_yaml(json).unwrap().catalog,
            Catalog::default()
        );
        let typo = r#"{"namespace": "apps", "username": "u", "password": "p", "catalogue": {}}"#;
        assert!(matches!(
            BrokerConfig::from_yaml(typo),
            Err(ConfigError::Parse(_))
        ));
        let mut c = BrokerConfig::new("apps", "u", "p");
        c.catalog.services[0].plans[0].access_mode = "Sometimes".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("access_mode")
        );
        let mut c = BrokerConfig::new("apps", "u", "");
        assert!(c.validate().is_err());
        c.password = "p".into();
        c.min_api_version = "two".into();
        assert!(c.validate().is_err());
        let mut c = BrokerConfig::new("apps", "u", "p");
        let plan = c.catalog.services[0].plans[0].clone();
        c.catalog.services[0].plans.push(plan);
        assert!(c.validate().unwrap_err().to_string().contains("used twice"));
    }
}
