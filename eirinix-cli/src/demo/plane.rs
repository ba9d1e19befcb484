//! `eirinix demo --apiserver-only` / `--cluster`: every stock extension at work on an
//! Eirini-shaped app pod as the apiserver stores it, shown as a diff (no pod runs; the app's log
//! lines come from a fake kubelet).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::Context as _;
use eirinix_testenv::unique_name;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::{manager_cleanup, print_diff, step, syslog_receiver, yaml};
use crate::cli::DemoArgs;
use crate::cli::StockArgs;
use crate::stock;

const ROOTFS_PATTERN: &str = "demo.registry.local/cloudfoundry/cflinuxfs4";

/// The app pod Eirini would create for `cf push dora` with a bound volume service.
fn app_pod(claim: &str) -> anyhow::Result<Pod> {
    let vcap = serde_json::json!({
        "eirini-persi": [{
            "name": "dora-data", "label": "eirini-persi", "plan": "default",
            "credentials": {"volume_id": claim},
            "volume_mounts": [{"container_dir": "/var/vcap/data/dora", "mode": "rw", "device_type": "shared",
                               "device": {"volume_id": claim, "mount_config": {}}}]
        }]
    });
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "dora-dev-7f3a9c2e1b-0",
            "labels": {
                "cloudfoundry.org/source_type": "APP", "cloudfoundry.org/process_type": "web",
                "cloudfoundry.org/guid": "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c",
                "cloudfoundry.org/app_guid": "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c",
                "cloudfoundry.org/version": "b2e6f1d0-5c3a-4e7b-9f8d-1a2c3e4f5a6b",
                "cloudfoundry.org/rootfs-version": "v1.0"
            }
        },
        "spec": {"containers": [{
            "name": "opi", "image": format!("{ROOTFS_PATTERN}:v1.0"),
            "command": ["/lifecycle/launch"],
            "env": [{"name": "VCAP_SERVICES", "value": vcap.to_string()}, {"name": "PORT", "value": "8080"}]
        }]}
    }))?)
}

/// Run the apiserver-only demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let plane = if args.cluster {
        None
    } else {
        step("starting a local control plane (real etcd + kube-apiserver on 127.0.0.1)");
        Some(crate::dev::start_plane().await?)
    };
    let client = match &plane {
        Some(cp) => cp.client().await?,
        None => kube::Client::try_default()
            .await
            .context("--cluster needs KUBECONFIG")?,
    };
    let system = unique_name("eirinix-demo-system");
    let apps = unique_name("eirini-demo");
    for ns in [&system, &apps] {
        let n = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await?;
    }
    println!("   system namespace {system}, app namespace {apps}");

    let fingerprint = unique_name("demo");
    let mut common = super::common_args(&apps, &system, &fingerprint);
    if let Some(host) = args.webhook_host.as_deref().filter(|_| args.cluster) {
        // The apiserver is elsewhere: it dials this host; listen wherever that arrives.
        let host = host.trim().trim_start_matches('[').trim_end_matches(']');
        common.bind_address = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        common.host = Some(host.to_owned());
        common.port = args.webhook_port;
    }
    step(&format!(
        "starting eirinix with every stock extension (URL mode, https://{}:{})",
        common.host.as_deref().unwrap_or("127.0.0.1"),
        if common.port == 0 {
            "<port>".to_owned()
        } else {
            common.port.to_string()
        }
    ));
    let stock_args = StockArgs {
        persi_fs_group: 2000,
        rootfs_version: Some("v2.0".into()),
        rootfs_image_pattern: Some(ROOTFS_PATTERN.into()),
        rootfs_max_in_flight: 2,
        rootfs_roll_timeout: 60,
        rootfs_opt_out_annotation: "eirinix.org/rootfs-opt-out".into(),
        ssh_image: eirinix_ssh::options::DEFAULT_IMAGE.into(),
        ssh_image_binary: "/usr/local/bin/eirinix".into(),
        ssh_port: 2222,
        ..Default::default()
    };
    // logs: a fake kubelet serves the app's output through the real apiserver, and a local
    // aggregator receives what eirinix forwards (local control plane only).
    let mut stock_args = stock_args;
    let mut logs = None;
    let logs_dir = tempfile::tempdir()?;
    if let Some(cp) = &plane {
        let kubelet =
            eirinix_testenv::FakeKubelet::start(&client, &unique_name("demo-node")).await?;
        let (addr, rx) = syslog_receiver().await?;
        let config = logs_dir.path().join("logs.yaml");
        std::fs::write(
            &config,
            format!(
                "namespaces: [{apps}]\nsinks:\n  - type: syslog\n    address: {addr}\nreplicas:\n  leaderElection: true\n  namespace: {system}\n  leaseDurationSecs: 5\n"
            ),
        )?;
        stock_args.logs_config = Some(config);
        println!(
            "   logs: fake kubelet {} behind {}, aggregator at syslog://{addr}",
            kubelet.node_name(),
            cp.api_url()
        );
        logs = Some((kubelet, rx));
    }
    let names: Vec<&str> = stock::selected(&["all".to_owned()])?
        .into_iter()
        .filter(|n| logs.is_some() || *n != "logs")
        .collect();
    let manager =
        stock::install(stock::framework(&common)?, &names, &common, &stock_args)?.build()?;
    let running = manager.start(client.clone()).await?;
    running
        .wait_ready(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "   serving {} on {}; configuration {fingerprint}-mutating-hook registered, ready",
        names.join(", "),
        running.local_addr()
    );

    step("persi: a volume service instance (a PVC, as the broker creates it)");
    let claim = "dora-data-7f3a";
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &pvc)
        .await?;
    println!("   PersistentVolumeClaim {apps}/{claim}");

    step(
        "creating an Eirini app pod (StatefulSet-style name, cloudfoundry.org labels, VCAP_SERVICES with a volume binding)",
    );
    let mut pod = app_pod(claim)?;
    if let Some((kubelet, _)) = &logs {
        kubelet.assign(&mut pod);
    }
    let created = Api::<Pod>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &pod)
        .await?;
    step("what the extensions changed (submitted pod -> stored pod)");
    print_diff(&yaml(&pod)?, &yaml(&created)?);

    step("summary");
    let spec = created.spec.clone().unwrap_or_default();
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| format!("{} -> pvc {}", v.name, c.claim_name))
        })
        .collect();
    let mounts: Vec<String> = spec
        .containers
        .iter()
        .flat_map(|c| {
            c.volume_mounts.iter().flatten().map(move |m| {
                format!(
                    "{}:{} ({})",
                    c.name,
                    m.mount_path,
                    if m.read_only == Some(true) {
                        "ro"
                    } else {
                        "rw"
                    }
                )
            })
        })
        .collect();
    let labels: BTreeMap<String, String> = created.metadata.labels.clone().unwrap_or_default();
    println!(
        "   persi:  volumes {volumes:?}, mounts {mounts:?}, fsGroup {:?}",
        spec.security_context.as_ref().and_then(|s| s.fs_group)
    );
    println!(
        "   rootfs: label cloudfoundry.org/rootfs-version={:?}, image {:?}",
        labels.get("cloudfoundry.org/rootfs-version"),
        spec.containers.first().and_then(|c| c.image.clone())
    );
    println!(
        "   metrics: {}",
        running
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("eirinix_reviews_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    if let Some((kubelet, rx)) = &mut logs {
        step(
            "logs: the app writes to stdout; eirinix follows it through the apiserver and forwards it",
        );
        let out = kubelet.container(&apps, "dora-dev-7f3a9c2e1b-0", "opi");
        for line in [
            "Starting dora on port 8080",
            "GET / 200 0.4ms",
            "GET /health 200 0.1ms",
        ] {
            out.push_line(line);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut seen = 0;
        while seen < 3 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => {
                    seen += 1;
                    println!("   aggregator received: {msg}");
                }
                _ => anyhow::bail!("the aggregator received {seen} of 3 lines within 15 s"),
            }
        }
    }

    if args.keep
        && let Some(cp) = &plane
    {
        step("keeping the control plane (Ctrl-C stops it)");
        println!("export KUBECONFIG={}", cp.kubeconfig_path().display());
        eirinix_core::manager::shutdown_signal().await;
    }
    step("cleaning up");
    running.shutdown().await;
    manager_cleanup(&client, &common, &stock_args).await?;
    for ns in [&apps, &system] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    drop(plane);
    println!("   done");
    Ok(())
}
