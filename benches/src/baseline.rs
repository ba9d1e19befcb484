//! The hand-written baseline of `eirinix-bench peers`: persi's mutation of the benchmark pod in
//! a plain axum + kube-rs webhook, written the way kube-rs's admission example writes one.
//!
//! `AdmissionReview<Pod>` through axum's `Json` extractor, the request via kube-rs's
//! `TryInto<AdmissionRequest>`, the mutation on a clone of the typed Pod, the patch as
//! `json_patch::diff` of the two pods as JSON, the answer via `AdmissionResponse::with_patch`.
//! TLS is rustls with ring, HTTP/1.1 by hyper, one task per connection: no body limit, no
//! timeouts, no metrics (what eirinix adds on top of this is part of what is compared).
//!
//! The mutation is persi's reduced to what the benchmark pod needs (as in the controller-runtime
//! peer): every volume binding of an app container's `VCAP_SERVICES` becomes a PVC volume (named
//! by persi's own `names::volume_name`) and a mount (read-only for mode `r`); the pod gets
//! `fsGroup` (its `runAsGroup`, else 2000) with `OnRootMismatch` unless it has one; and the
//! marker annotation `eirinix.org/persi`. `peers` checks that the result is persi's pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, Volume, VolumeMount,
};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

const MARKER: &str = "eirinix.org/persi";

#[derive(Deserialize)]
struct Binding {
    #[serde(default)]
    credentials: Credentials,
    #[serde(default)]
    volume_mounts: Vec<Mount>,
}

#[derive(Deserialize, Default)]
struct Credentials {
    #[serde(default)]
    volume_id: String,
}

#[derive(Deserialize)]
struct Mount {
    #[serde(default)]
    container_dir: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    device: Credentials,
}

/// Persi's mutation applied to `pod` in place; `Ok(false)` when it does not apply.
fn mutate(pod: &mut Pod) -> Result<bool, String> {
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MARKER))
    {
        return Ok(false);
    }
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(false);
    };
    let mut claim_volume: HashMap<String, String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let pvc = v.persistent_volume_claim.as_ref()?;
            Some((pvc.claim_name.clone(), v.name.clone()))
        })
        .collect();
    let mut new_volumes = Vec::new();
    let mut changed = false;
    for c in &mut spec.containers {
        let vcap = c
            .env
            .iter()
            .flatten()
            .rev()
            .find(|e| e.name == "VCAP_SERVICES")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if vcap.trim().is_empty() {
            continue;
        }
        let services: BTreeMap<String, Vec<Binding>> = serde_json::from_str(&vcap)
            .map_err(|e| format!("container {:?}: VCAP_SERVICES: {e}", c.name))?;
        for binding in services.values().flatten() {
            for m in &binding.volume_mounts {
                let claim = if binding.credentials.volume_id.is_empty() {
                    m.device.volume_id.clone()
                } else {
                    binding.credentials.volume_id.clone()
                };
                let name = claim_volume
                    .entry(claim.clone())
                    .or_insert_with(|| {
                        let name = eirinix_persi::names::volume_name(&claim, 0);
                        new_volumes.push(Volume {
                            name: name.clone(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: claim.clone(),
                                read_only: None,
                            }),
                            ..Default::default()
                        });
                        name
                    })
                    .clone();
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(VolumeMount {
                        name,
                        mount_path: m.container_dir.trim_end_matches('/').to_owned(),
                        read_only: (m.mode == "r").then_some(true),
                        ..Default::default()
                    });
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(false);
    }
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(new_volumes);
    let sc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if sc.fs_group.is_none() {
        sc.fs_group = Some(sc.run_as_group.unwrap_or(2000));
        if sc.fs_group_change_policy.is_none() {
            sc.fs_group_change_policy = Some("OnRootMismatch".into());
        }
    }
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MARKER.into(), "injected".into());
    Ok(true)
}

async fn persi(Json(review): Json<AdmissionReview<Pod>>) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(req) => req,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let res = AdmissionResponse::from(&req);
    let Some(pod) = req.object.filter(|_| req.operation == Operation::Create) else {
        return Json(res.into_review());
    };
    let mut mutated = pod.clone();
    let res = match mutate(&mut mutated) {
        Ok(false) => res,
        Ok(true) => {
            let diff = serde_json::to_value(&pod)
                .and_then(|before| Ok(json_patch::diff(&before, &serde_json::to_value(&mutated)?)));
            match diff {
                Ok(patch) => match res.clone().with_patch(patch) {
                    Ok(res) => res,
                    Err(e) => res.deny(e.to_string()),
                },
                Err(e) => res.deny(e.to_string()),
            }
        }
        Err(message) => res.deny(message),
    };
    Json(res.into_review())
}

/// `eirinix-bench serve-baseline`: listens on 127.0.0.1, prints `{"addr", "ca"}`, serves
/// `/persi` until stdin closes.
pub async fn serve() -> anyhow::Result<()> {
    let bundle = eirinix_core::certs::CertBundle::generate(
        &eirinix_core::certs::SubjectNames::for_host("127.0.0.1"),
        &eirinix_core::certs::CertPolicy::default(),
        time::OffsetDateTime::now_utc(),
    )?;
    let chain = CertificateDer::pem_slice_iter(bundle.serving_chain_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("serving chain")?;
    let key = PrivateKeyDer::from_pem_slice(bundle.serving.key_pem.as_bytes()).context("key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = axum::Router::new().route("/persi", post(persi));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{}",
        serde_json::json!({"addr": listener.local_addr()?.to_string(), "ca": bundle.ca_bundle_pem()})
    );
    let accept = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    };
    let stdin_closed = tokio::task::spawn_blocking(|| {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
    });
    tokio::select! {
        () = accept => {}
        _ = stdin_closed => {}
    }
    println!("0");
    Ok(())
}
