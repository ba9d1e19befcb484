//! Broker state, kept on the PVCs themselves: labels and annotations, nothing in memory.
//!
//! A service instance is a PVC named after the instance id, labelled with instance, org and
//! space; its bindings are annotations `binding.persi.eirinix.org/<binding id>` on that PVC.
//! Updates carry the PVC's resourceVersion, so concurrent requests cannot overwrite each other.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::names;

/// Label marking PVCs the broker owns.
pub use eirinix_core::names::MANAGED_BY_LABEL;
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "eirinix-persi";
/// Label holding the service instance id (hashed when not a valid label value).
pub const INSTANCE_LABEL: &str = "persi.eirinix.org/instance";
/// Label holding the Cloud Foundry organization GUID.
pub const ORG_LABEL: &str = "persi.eirinix.org/organization";
/// Label holding the Cloud Foundry space GUID.
pub const SPACE_LABEL: &str = "persi.eirinix.org/space";
/// Annotation holding the exact instance id.
pub const INSTANCE_ANNOTATION: &str = "persi.eirinix.org/instance-id";
/// Annotation holding the service offering id.
pub const SERVICE_ANNOTATION: &str = "persi.eirinix.org/service-id";
/// Annotation holding the plan id.
pub const PLAN_ANNOTATION: &str = "persi.eirinix.org/plan-id";
/// Annotation holding the effective provision parameters (JSON).
pub const PARAMETERS_ANNOTATION: &str = "persi.eirinix.org/parameters";
/// Annotation holding the provisioning context (JSON: platform, org, space...).
pub const CONTEXT_ANNOTATION: &str = "persi.eirinix.org/context";
/// Prefix of the per-binding annotations.
pub const BINDING_PREFIX: &str = "binding.persi.eirinix.org/";

/// A binding as stored on the instance's PVC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBinding {
    /// Binding id chosen by the platform.
    pub binding_id: String,
    /// Service offering id.
    pub service_id: String,
    /// Plan id.
    pub plan_id: String,
    /// The app the binding is for.
    pub app_guid: String,
    /// Where the volume is mounted.
    pub container_dir: String,
    /// `r` or `rw`.
    pub mode: String,
}

/// A provisioned instance, read from its PVC.
#[derive(Clone, Debug)]
pub struct Instance {
    /// PVC name (the `volume_id` of bindings).
    pub claim: String,
    /// PVC uid (delete precondition).
    pub uid: Option<String>,
    /// PVC resourceVersion (update precondition).
    pub resource_version: Option<String>,
    /// Service offering id.
    pub service_id: String,
    /// Plan id.
    pub plan_id: String,
    /// Effective provision parameters.
    pub parameters: Value,
    /// Deletion requested (a finalizer keeps the PVC for now).
    pub terminating: bool,
    /// Bindings by binding id.
    pub bindings: BTreeMap<String, StoredBinding>,
}

/// What a lookup of an instance found.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// No PVC of that name.
    Absent,
    /// A PVC of that name the broker does not own (or owned by another instance id).
    Foreign(String),
    /// The instance.
    Found(Instance),
}

/// Everything needed to create an instance's PVC.
#[derive(Clone, Debug)]
pub struct NewInstance<'a> {
    /// Instance id.
    pub instance_id: &'a str,
    /// Service offering id.
    pub service_id: &'a str,
    /// Plan id.
    pub plan_id: &'a str,
    /// Effective parameters (stored, compared on repeated provisioning).
    pub parameters: &'a Value,
    /// Requested size.
    pub size: &'a str,
    /// PVC access mode.
    pub access_mode: &'a str,
    /// PVC storage class (None: the cluster default).
    pub storage_class: Option<&'a str>,
    /// Organization GUID, when known.
    pub org: Option<&'a str>,
    /// Space GUID, when known.
    pub space: Option<&'a str>,
    /// Provisioning context as sent by the platform.
    pub context: &'a Value,
}

/// The annotation key of binding `binding_id`.
pub fn binding_key(binding_id: &str) -> String {
    format!("{BINDING_PREFIX}{}", names::label_value(binding_id))
}

/// PVC-backed instance and binding store in one namespace.
#[derive(Clone)]
pub struct Store {
    pvcs: Api<PersistentVolumeClaim>,
}

/// Result of [`Store::delete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The claim was deleted.
    Done,
    /// No claim of that name any more.
    Gone,
    /// The claim changed since it was read (or is another object now): nothing was deleted.
    Changed,
}

/// Result of a conditional update: done, or the PVC changed meanwhile (retry).
pub enum Update {
    /// Applied.
    Done,
    /// The PVC changed since it was read.
    Conflict,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Store {
    /// A store of PVCs in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            pvcs: Api::namespaced(client, namespace),
        }
    }

    /// Look up instance `instance_id`.
    pub async fn lookup(&self, instance_id: &str) -> Result<Lookup, kube::Error> {
        let claim = names::claim_name(instance_id);
        let Some(pvc) = self.pvcs.get_opt(&claim).await? else {
            return Ok(Lookup::Absent);
        };
        let meta = &pvc.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let ann = meta.annotations.clone().unwrap_or_default();
        let ours = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            && ann.get(INSTANCE_ANNOTATION).map(String::as_str) == Some(instance_id);
        if !ours {
            return Ok(Lookup::Foreign(claim));
        }
        let bindings = ann
            .iter()
            .filter(|(k, _)| k.starts_with(BINDING_PREFIX))
            .filter_map(|(_, v)| serde_json::from_str::<StoredBinding>(v).ok())
            .map(|b| (b.binding_id.clone(), b))
            .collect();
        let text = |k: &str| ann.get(k).cloned().unwrap_or_default();
        Ok(Lookup::Found(Instance {
            claim,
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            service_id: text(SERVICE_ANNOTATION),
            plan_id: text(PLAN_ANNOTATION),
            parameters: serde_json::from_str(&text(PARAMETERS_ANNOTATION))
                .unwrap_or_else(|_| json!({})),
            terminating: meta.deletion_timestamp.is_some(),
            bindings,
        }))
    }

    /// Create the PVC of a new instance; `Ok(false)` when a PVC of that name already exists.
    pub async fn create(&self, new: &NewInstance<'_>) -> Result<bool, kube::Error> {
        let claim = names::claim_name(new.instance_id);
        let mut labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (
                INSTANCE_LABEL.to_owned(),
                names::label_value(new.instance_id),
            ),
        ]);
        if let Some(org) = new.org {
            labels.insert(ORG_LABEL.to_owned(), names::label_value(org));
        }
        if let Some(space) = new.space {
            labels.insert(SPACE_LABEL.to_owned(), names::label_value(space));
        }
        let annotations = BTreeMap::from([
            (INSTANCE_ANNOTATION.to_owned(), new.instance_id.to_owned()),
            (SERVICE_ANNOTATION.to_owned(), new.service_id.to_owned()),
            (PLAN_ANNOTATION.to_owned(), new.plan_id.to_owned()),
            (PARAMETERS_ANNOTATION.to_owned(), new.parameters.to_string()),
            (CONTEXT_ANNOTATION.to_owned(), new.context.to_string()),
        ]);
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![new.access_mode.to_owned()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(new.size.to_owned()),
                    )])),
                    limits: None,
                }),
                storage_class_name: new.storage_class.map(str::to_owned),
                ..Default::default()
            }),
            status: None,
        };
        match self.pvcs.create(&PostParams::default(), &pvc).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete the instance's PVC if it is still exactly the version that was read (the one whose
    /// labels [`Store::lookup`] found to be the broker's): RBAC lets the broker delete any claim
    /// of the namespace, so a claim relabelled or replaced since is never deleted.
    pub async fn delete(&self, instance: &Instance) -> Result<Deletion, kube::Error> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: instance.uid.clone(),
                resource_version: instance.resource_version.clone(),
            }),
            ..Default::default()
        };
        match self.pvcs.delete(&instance.claim, &dp).await {
            Ok(_) => Ok(Deletion::Done),
            Err(e) if is_status(&e, 404) => Ok(Deletion::Gone),
            // Changed since it was read (a binding, a label), or replaced: look again.
            Err(e) if is_status(&e, 409) => Ok(Deletion::Changed),
            Err(e) => Err(e),
        }
    }

    /// Store (`Some`) or remove (`None`) binding `binding_id`, if the PVC did not change since read.
    pub async fn set_binding(
        &self,
        instance: &Instance,
        binding_id: &str,
        binding: Option<&StoredBinding>,
    ) -> Result<Update, kube::Error> {
        let value = match binding {
            Some(b) => Value::String(serde_json::to_string(b).map_err(kube::Error::SerdeError)?),
            None => Value::Null,
        };
        let patch = json!({
            "metadata": {
                "resourceVersion": instance.resource_version,
                "annotations": { binding_key(binding_id): value },
            }
        });
        match self
            .pvcs
            .patch(
                &instance.claim,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(Update::Done),
            Err(e) if is_status(&e, 409) => Ok(Update::Conflict),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue item 8: the broker may delete any claim of its namespace (RBAC cannot scope by
    /// label), so the code deletes only the version whose labels it checked. A claim relabelled
    /// (adopted by someone else) between the lookup and the delete is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_changed_since_its_lookup_is_not_deleted() {
        let cp = eirinix_testenv::ControlPlane::shared()
            .await
            .expect("control plane (scripts/provision.sh)");
        let client = cp.client().await.unwrap();
        let ns = cp.namespace("persi-store").await.unwrap();
        let store = Store::new(client.clone(), &ns);
        let new = NewInstance {
            instance_id: "inst-1",
            service_id: "s",
            plan_id: "p",
            parameters: &json!({}),
            size: "1Gi",
            access_mode: "ReadWriteOnce",
            storage_class: None,
            org: None,
            space: None,
            context: &json!({}),
        };
        assert!(store.create(&new).await.unwrap());
        let Lookup::Found(instance) = store.lookup("inst-1").await.unwrap() else {
            panic!("the broker's claim")
        };
        // Someone takes the claim over: it is not the broker's any more.
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"metadata": {"labels": {MANAGED_BY_LABEL: "someone-else"}}});
        pvcs.patch(
            &instance.claim,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
        assert_eq!(store.delete(&instance).await.unwrap(), Deletion::Changed);
        let kept = pvcs.get(&instance.claim).await.unwrap();
        assert!(
            kept.metadata.deletion_timestamp.is_none(),
            "the claim was deleted"
        );
        assert!(matches!(
            store.lookup("inst-1").await.unwrap(),
            Lookup::Foreign(_)
        ));

        // Unchanged since the lookup: deleted.
        let new = NewInstance {
            instance_id: "inst-2",
            ..new
        };
        assert!(store.create(&new).await.unwrap());
        let Lookup::Found(instance) = store.lookup("inst-2").await.unwrap() else {
            panic!("the broker's claim")
        };
        assert_eq!(store.delete(&instance).await.unwrap(), Deletion::Done);
    }
}
