//! Storage for the node: a default StorageClass and a small provisioner that answers its
//! PersistentVolumeClaims with `local` PersistentVolumes in directories under the node's own
//! directory (kubelet applies `fsGroup` to `local` volumes, unlike `hostPath`), and deletes
//! them when released.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::watcher;

/// Name of the default StorageClass of every cluster.
pub const STORAGE_CLASS: &str = "standard";

/// The provisioner name the StorageClass names.
const PROVISIONER: &str = "eirinix.local/node-dir";

/// The annotation the PV controller sets on claims an external provisioner must answer.
const PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";

/// Creates the default StorageClass (if absent).
pub(crate) async fn create_class(client: &kube::Client) -> Result<(), kube::Error> {
    let class = StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".into(),
                "true".into(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    };
    match Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(drop),
    }
}

/// Runs the provisioner until the runtime stops.
pub(crate) async fn run(client: kube::Client, root: PathBuf, node: String) {
    let claims = provision_claims(client.clone(), root.clone(), node);
    let release = delete_released(client, root);
    tokio::join!(claims, release);
}

async fn provision_claims(client: kube::Client, root: PathBuf, node: String) {
    let api: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let claim = match event {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "PVC watch error; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        if !wants_volume(&claim) {
            continue;
        }
        if let Err(e) = provision(&pvs, &claim, &root, &node).await {
            tracing::warn!(error = %e, claim = ?claim.metadata.name, "provisioning failed");
        }
    }
}

fn wants_volume(claim: &PersistentVolumeClaim) -> bool {
    let ours = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONER_ANNOTATION))
        .is_some_and(|p| p == PROVISIONER);
    let unbound = claim
        .spec
        .as_ref()
        .is_none_or(|s| s.volume_name.as_deref().unwrap_or("").is_empty());
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    ours && unbound && pending && claim.metadata.deletion_timestamp.is_none()
}

async fn provision(
    pvs: &Api<PersistentVolume>,
    claim: &PersistentVolumeClaim,
    root: &std::path::Path,
    node: &str,
) -> Result<(), String> {
    let uid = claim.metadata.uid.clone().ok_or("claim without uid")?;
    let name = format!("pvc-{uid}");
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".into()));
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(
                "pv.kubernetes.io/provisioned-by".into(),
                PROVISIONER.into(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".into(), size)])),
            access_modes: spec.access_modes.clone(),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: spec.storage_class_name.clone(),
            volume_mode: Some("Filesystem".into()),
            local: Some(LocalVolumeSource {
                path: dir.display().to_string(),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

async fn delete_released(client: kube::Client, root: PathBuf) {
    let api: Api<PersistentVolume> = Api::all(client);
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let pv = match event {
            Ok(watcher::Event::Apply(pv) | watcher::Event::InitApply(pv)) => pv,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "PV watch error; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .is_some_and(|p| p == PROVISIONER);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let Some(name) = pv.metadata.name.clone() else {
            continue;
        };
        if ours && released {
            let _ = std::fs::remove_dir_all(root.join(&name));
            if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                tracing::debug!(error = %e, pv = name, "deleting a released volume failed");
            }
        }
    }
}
