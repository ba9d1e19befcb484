//! The stock extensions: their flags, and how `run`/`register`/`review` assemble them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use eirinix_core::{FailurePolicy, Manager, ManagerBuilder, Operation};

use crate::cli::{CommonArgs, FailurePolicyArg, LogsReplicasMode, ReviewArgs, StockArgs};

/// Every stock extension, in the order they are registered.
pub const ALL: [&str; 4] = ["persi", "ssh", "logs", "rootfs"];

/// The logs options of `--logs-config`, with `--logs-replicas-mode` applied.
pub fn logs_options(stock: &StockArgs) -> anyhow::Result<Option<eirinix_logs::LogsOptions>> {
    let Some(path) = &stock.logs_config else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut options = eirinix_logs::LogsOptions::from_yaml(&text)?;
    if let Some(mode) = stock.logs_replicas_mode {
        options.replicas.mode = match mode {
            LogsReplicasMode::Leader => eirinix_logs::ReplicaMode::Leader,
            LogsReplicasMode::Sharded => eirinix_logs::ReplicaMode::Sharded,
        };
    }
    Ok(Some(options))
}

fn policy(p: FailurePolicyArg) -> FailurePolicy {
    match p {
        FailurePolicyArg::Fail => FailurePolicy::Fail,
        FailurePolicyArg::Ignore => FailurePolicy::Ignore,
    }
}

fn namespaced(value: &str, what: &str) -> anyhow::Result<eirinix_rootfs::NamespacedName> {
    let (namespace, name) = value
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .with_context(|| format!("{what} must be namespace/name, got {value:?}"))?;
    Ok(eirinix_rootfs::NamespacedName {
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// The persi extension from flags.
pub fn persi(stock: &StockArgs) -> eirinix_persi::Persi {
    eirinix_persi::Persi::new(eirinix_persi::PersiOptions {
        fs_group: (stock.persi_fs_group > 0).then_some(stock.persi_fs_group),
        failure_policy: stock.persi_failure_policy.map(policy),
        ..Default::default()
    })
}

/// ssh options from flags.
pub fn ssh_options(stock: &StockArgs) -> anyhow::Result<eirinix_ssh::SshOptions> {
    anyhow::ensure!(
        !stock.ssh_image.is_empty(),
        "--ssh-image must name the image holding the eirinix binary"
    );
    anyhow::ensure!(
        stock.ssh_image_binary.starts_with('/'),
        "--ssh-image-binary must be an absolute path"
    );
    Ok(eirinix_ssh::SshOptions {
        image: stock.ssh_image.clone(),
        image_binary: stock.ssh_image_binary.clone(),
        port: stock.ssh_port,
        sidecar_fallback: stock.ssh_sidecar_fallback,
        master_secret: stock.ssh_master_secret.clone(),
        create_master_secret: !stock.ssh_no_create_master_secret,
        failure_policy: stock
            .ssh_failure_policy
            .map_or(FailurePolicy::Ignore, policy),
        ..Default::default()
    })
}

/// rootfs options from flags, for app pods in `namespace` (None: all), leader-elected on `lease`.
pub fn rootfs_options(
    stock: &StockArgs,
    namespace: Option<String>,
    lease: Option<eirinix_rootfs::NamespacedName>,
) -> anyhow::Result<eirinix_rootfs::RootfsOptions> {
    let gate = match (&stock.rootfs_gate_deployment, &stock.rootfs_gate_url) {
        (Some(d), _) => {
            let n = namespaced(d, "--rootfs-gate-deployment")?;
            eirinix_rootfs::Gate::Deployment {
                namespace: n.namespace,
                name: n.name,
            }
        }
        (None, Some(url)) => eirinix_rootfs::Gate::Http { url: url.clone() },
        (None, None) => eirinix_rootfs::Gate::None,
    };
    Ok(eirinix_rootfs::RootfsOptions {
        version: stock.rootfs_version.clone(),
        image_pattern: stock.rootfs_image_pattern.clone(),
        config_map: stock
            .rootfs_config_map
            .as_deref()
            .map(|c| namespaced(c, "--rootfs-config-map"))
            .transpose()?,
        namespace,
        max_in_flight: stock.rootfs_max_in_flight.max(1),
        roll_timeout: Duration::from_secs(stock.rootfs_roll_timeout),
        gate,
        opt_out_annotation: stock.rootfs_opt_out_annotation.clone(),
        dry_run: stock.rootfs_dry_run,
        leader_lease: lease,
        ..Default::default()
    })
}

/// rootfs options as `run` uses them: the manager's namespace, a Lease in the webhook namespace.
pub fn rootfs_for(
    common: &CommonArgs,
    stock: &StockArgs,
) -> anyhow::Result<eirinix_rootfs::RootfsOptions> {
    rootfs_options(
        stock,
        (!common.namespace.is_empty()).then(|| common.namespace.clone()),
        Some(eirinix_rootfs::NamespacedName {
            namespace: common.webhook_namespace.clone(),
            name: format!("{}-rootfs", common.fingerprint),
        }),
    )
}

/// The extension names to serve (`all` expands), validated.
pub fn selected(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if n == "all" {
            out.extend(ALL);
            continue;
        }
        let known = ALL
            .iter()
            .find(|k| **k == n)
            .with_context(|| format!("unknown extension {n:?} (known: {})", ALL.join(", ")))?;
        out.push(*known);
    }
    out.sort_by_key(|n| ALL.iter().position(|k| k == n));
    out.dedup();
    anyhow::ensure!(
        !out.is_empty(),
        "no extension selected (--extensions {})",
        ALL.join(",")
    );
    Ok(out)
}

/// The framework part of the manager, from the common flags.
pub fn framework(common: &CommonArgs) -> anyhow::Result<ManagerBuilder> {
    let mut b = Manager::builder()
        .fingerprint(&common.fingerprint)
        .namespace(&common.namespace)
        .bind_address(common.bind_address)
        .port(common.port)
        .webhook_namespace(&common.webhook_namespace)
        .failure_policy(policy(common.failure_policy))
        .filter_eirini_apps(!common.all_pods)
        .register_webhook(common.register)
        .timeout_seconds(common.timeout_seconds)
        .repair_interval(Duration::from_secs(common.repair_interval.max(1)))
        .cert_check_interval(Duration::from_secs(common.cert_check_interval))
        .http2(common.http2)
        .drain_period(Duration::from_secs(common.drain_seconds))
        .webhook_token_auth(common.require_webhook_token)
        .admin_port(common.admin_port);
    b = match (&common.service_name, &common.host) {
        (Some(service), _) => b.service(
            service,
            &common.webhook_namespace,
            common.service_port.unwrap_or(common.port),
        ),
        (None, Some(host)) => b.url_mode(host),
        (None, None) => anyhow::bail!(
            "say how the apiserver reaches the webhook: --service-name (in a cluster) or --host (URL mode)"
        ),
    };
    if common.intercept_update {
        b = b.operations(vec![Operation::Create, Operation::Update]);
    }
    if !common.excluded_namespaces.is_empty() {
        b = b.excluded_namespaces(common.excluded_namespaces.clone());
    }
    if let Some(ca) = &common.client_ca_file {
        b = b.client_ca_file(ca.clone());
    }
    if let Some(cert) = &common.apiserver_client_cert_file {
        b = b.apiserver_client_cert_file(cert.clone());
    }
    if let Some(cert) = &common.cert_file {
        let key: PathBuf = common
            .key_file
            .clone()
            .context("--cert-file needs --key-file")?;
        b = b.cert_files(cert.clone(), key, common.ca_file.clone());
    }
    Ok(b)
}

/// Add the selected stock extensions to `b`.
pub fn install(
    mut b: ManagerBuilder,
    names: &[&str],
    common: &CommonArgs,
    stock: &StockArgs,
) -> anyhow::Result<ManagerBuilder> {
    for name in names {
        b = match *name {
            "persi" => b.install(persi(stock))?,
            "ssh" => b.install(ssh_options(stock)?)?,
            "logs" => {
                let options = logs_options(stock)?
                    .context("the logs extension needs --logs-config (its sinks)")?;
                options.validate()?;
                b.install(options)?
            }
            "rootfs" => b.install(rootfs_for(common, stock)?)?,
            other => anyhow::bail!("unknown extension {other:?}"),
        };
    }
    Ok(b)
}

/// A manager serving `names` configured from flags.
pub fn manager(
    common: &CommonArgs,
    names: &[String],
    stock: &StockArgs,
) -> anyhow::Result<Manager> {
    let names = selected(names)?;
    Ok(install(framework(common)?, &names, common, stock)?.build()?)
}

/// Extensions without a webhook (logs only follows logs): skipped by `register`/`unregister`.
pub const WITHOUT_WEBHOOK: [&str; 1] = ["logs"];

/// A manager for `register`/`unregister`: only the extensions that have a webhook.
pub fn registration_manager(
    common: &CommonArgs,
    names: &[String],
    stock: &StockArgs,
) -> anyhow::Result<Manager> {
    let names: Vec<&str> = selected(names)?
        .into_iter()
        .filter(|n| !WITHOUT_WEBHOOK.contains(n))
        .collect();
    anyhow::ensure!(
        !names.is_empty(),
        "none of the selected extensions has a webhook to register"
    );
    Ok(install(framework(common)?, &names, common, stock)?.build()?)
}

/// `eirinix review`: run one extension offline on a pod file.
pub async fn review(args: ReviewArgs) -> anyhow::Result<std::process::ExitCode> {
    let input = if args.pod.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.pod)
            .with_context(|| format!("reading {}", args.pod.display()))?
    };
    let pod = eirinix_core::review::parse_pod(&input)?;
    let ext: Arc<dyn eirinix_core::Extension> = match args.extension.as_str() {
        "persi" => Arc::new(persi(&args.stock)),
        "rootfs" => {
            let state = eirinix_rootfs::RootfsState::new(rootfs_options(&args.stock, None, None)?)?;
            Arc::new(eirinix_rootfs::RootfsWebhook::new(state))
        }
        "ssh" => Arc::new(eirinix_ssh::SshInjector::new(ssh_options(&args.stock)?)),
        "logs" => anyhow::bail!("logs has no webhook to review: it follows pod logs"),
        other => anyhow::bail!("unknown extension {other:?} (known: {})", ALL.join(", ")),
    };
    let settings = eirinix_core::Settings {
        filter_eirini_apps: !args.all_pods,
        ..Default::default()
    };
    let result = eirinix_core::review::review_with(ext, Arc::new(settings), &pod).await;
    match result {
        Ok(reviewed) if !reviewed.sent => {
            eprintln!(
                "not sent: the webhook's object selector excludes this pod (it is not an Eirini \
                 app: no cloudfoundry.org/source_type label); the apiserver would admit it \
                 unchanged without calling {}. Use --all-pods to review it anyway.",
                args.extension
            );
            Ok(std::process::ExitCode::from(3))
        }
        Ok(reviewed) => {
            for w in &reviewed.mutation.warnings {
                eprintln!("warning: {w}");
            }
            if let eirinix_core::Verdict::Deny { message, code } = &reviewed.mutation.verdict {
                eprintln!("denied ({code}): {message}");
                return Ok(std::process::ExitCode::from(2));
            }
            println!(
                "# patch\n{}",
                serde_json::to_string_pretty(&reviewed.patch_json())?
            );
            println!("# patched pod\n{}", yaml_serde::to_string(&reviewed.pod)?);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("eirinix review: {e}");
            Ok(std::process::ExitCode::from(2))
        }
    }
}
