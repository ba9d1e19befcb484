//! `eirinix demo`: every stock extension at work on an Eirini app. By default on a real
//! single-node cluster started on this machine ([`node`]): the app's pod runs, and what each
//! extension did is shown from inside the running container. `--apiserver-only` (or `--cluster`)
//! shows the changes as the apiserver stores them ([`plane`]).

mod node;
mod plane;

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;

use crate::cli::DemoArgs;
use crate::cli::StockArgs;
use crate::stock;

/// Run the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.cluster
            || args
                .webhook_host
                .as_deref()
                .is_some_and(|h| !h.trim().is_empty()),
        "--cluster needs --webhook-host: the host name or IP address at which that cluster's apiserver reaches this machine (the local demo registers 127.0.0.1, which a remote apiserver would dial on its own host)"
    );
    if args.apiserver_only || args.cluster {
        plane::run(args).await
    } else {
        node::run(args).await
    }
}

/// A local log aggregator: accepts RFC 5424 syslog with octet-counting framing on 127.0.0.1.
pub(crate) async fn syslog_receiver() -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(stream);
                loop {
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let Ok(n) = String::from_utf8_lossy(&len).trim().parse::<usize>() else {
                        return;
                    };
                    let mut frame = vec![0; n.min(1 << 20)];
                    if r.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&frame).into_owned());
                }
            });
        }
    });
    Ok((addr, rx))
}

pub(crate) fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

pub(crate) fn yaml(pod: &Pod) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(pod)?;
    // Show what matters: metadata labels/annotations and the spec, not server bookkeeping.
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "labels" | "annotations"));
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        // Defaults the apiserver fills in (not ours): left out so the diff shows only the extensions.
        for k in [
            "dnsPolicy",
            "enableServiceLinks",
            "preemptionPolicy",
            "priority",
            "restartPolicy",
            "schedulerName",
            "terminationGracePeriodSeconds",
            "tolerations",
        ] {
            spec.remove(k);
        }
        if let Some(cs) = spec.get_mut("containers").and_then(|c| c.as_array_mut()) {
            for c in cs.iter_mut().filter_map(|c| c.as_object_mut()) {
                for k in [
                    "imagePullPolicy",
                    "terminationMessagePath",
                    "terminationMessagePolicy",
                    "resources",
                ] {
                    c.remove(k);
                }
            }
        }
    }
    Ok(yaml_serde::to_string(&v)?)
}

pub(crate) fn print_diff(before: &str, after: &str) {
    let diff = similar::TextDiff::from_lines(before, after);
    for group in diff.grouped_ops(2) {
        println!("\x1b[2m   ...\x1b[0m");
        for op in group {
            for change in diff.iter_changes(&op) {
                let (sign, color) = match change.tag() {
                    similar::ChangeTag::Delete => ("-", "\x1b[31m"),
                    similar::ChangeTag::Insert => ("+", "\x1b[32m"),
                    similar::ChangeTag::Equal => (" ", ""),
                };
                print!("{color}{sign} {change}\x1b[0m");
            }
        }
    }
}

pub(crate) async fn manager_cleanup(
    client: &kube::Client,
    common: &crate::cli::CommonArgs,
    stock_args: &StockArgs,
) -> anyhow::Result<()> {
    let manager = stock::registration_manager(common, &["all".to_owned()], stock_args)?;
    manager.unregister(client.clone()).await?;
    Ok(())
}

/// The framework flags of the demo's manager: URL mode on 127.0.0.1, a free port, app pods of
/// `apps` only.
pub(crate) fn common_args(apps: &str, system: &str, fingerprint: &str) -> crate::cli::CommonArgs {
    crate::cli::CommonArgs {
        namespace: apps.into(),
        host: Some("127.0.0.1".into()),
        port: 0,
        bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        service_name: None,
        service_port: None,
        webhook_namespace: system.into(),
        fingerprint: fingerprint.into(),
        failure_policy: crate::cli::FailurePolicyArg::Fail,
        all_pods: false,
        register: true,
        cert_file: None,
        key_file: None,
        ca_file: None,
        timeout_seconds: 10,
        intercept_update: false,
        excluded_namespaces: Vec::new(),
        repair_interval: 5,
        cert_check_interval: 60,
        drain_seconds: 0,
        require_webhook_token: false,
        admin_port: None,
        http2: false,
        client_ca_file: None,
        apiserver_client_cert_file: None,
    }
}
