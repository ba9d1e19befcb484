//! `eirinix`: the operator binary. Serves the stock extensions, registers them (split mode),
//! runs a local control plane for development, and a one-command demo.

mod cleanup;
mod cli;
mod demo;
mod dev;
mod stock;

use anyhow::Context as _;
use clap::Parser as _;

use cli::{Cli, Command, LogFormat, RegisterArgs};

/// mimalloc: about a quarter fewer instructions per admission review than glibc malloc (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn client() -> anyhow::Result<kube::Client> {
    // In a pod: the in-cluster config; elsewhere: KUBECONFIG / ~/.kube/config.
    kube::Client::try_default()
        .await
        .context("no Kubernetes configuration found (in-cluster or KUBECONFIG); `eirinix dev` starts a local control plane")
}

fn main() -> std::process::ExitCode {
    // The in-pod ssh daemon forks (`--exec`), so it must run before any thread or runtime exists.
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == "sshd") {
        return eirinix_ssh::sshd::sshd_main(raw);
    }
    cli::apply_legacy_env();
    let cli = Cli::parse();
    // The demo narrates what happens itself; its components' info logs would drown it.
    let default_level = match cli.command {
        cli::Command::Demo(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    eirinix_core::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eirinix: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("eirinix: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: many library errors already print
/// their source, so `{:#}` would repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let manager = stock::manager(&args.common, &args.extensions, &args.stock)?;
            manager.run(client().await?).await?;
        }
        Command::Register(RegisterArgs {
            dry_run,
            serve: args,
        }) => {
            let manager = stock::registration_manager(&args.common, &args.extensions, &args.stock)?;
            let port = manager.registration_port()?;
            if dry_run {
                let config = manager.webhook_configuration(b"", port);
                print!("{}", yaml_serde::to_string(&config)?);
                return Ok(std::process::ExitCode::SUCCESS);
            }
            manager.register(client().await?).await?;
            println!("registered {}", manager.settings().configuration_name());
        }
        Command::Unregister(args) => {
            let client = client().await?;
            for object in cleanup::unregister(&client, &args).await? {
                println!("removed {object}");
            }
        }
        Command::Broker(args) => {
            let text = std::fs::read_to_string(&args.config)
                .with_context(|| format!("reading {}", args.config.display()))?;
            // Credentials may come from the environment (a Secret) instead of the config file.
            let mut value: yaml_serde::Value = yaml_serde::from_str(&text)
                .with_context(|| format!("parsing {}", args.config.display()))?;
            if let yaml_serde::Value::Mapping(map) = &mut value {
                for (key, env) in [
                    ("username", "EIRINIX_BROKER_USERNAME"),
                    ("password", "EIRINIX_BROKER_PASSWORD"),
                ] {
                    if let Ok(v) = std::env::var(env) {
                        map.insert(key.into(), v.into());
                    }
                }
            }
            let config = eirinix_persi::BrokerConfig::from_yaml(&yaml_serde::to_string(&value)?)?;
            config.validate()?;
            eirinix_persi::serve_broker(
                config,
                client().await?,
                args.listen,
                eirinix_core::manager::shutdown_signal(),
            )
            .await?;
        }
        Command::RootfsRoll(args) => {
            let options = stock::rootfs_for(&args.common, &args.stock)?;
            let report = eirinix_rootfs::roll_once(options, client().await?).await?;
            println!("{report}");
            if !report.is_clean() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Review(args) => return stock::review(args).await,
        // Reached when options come before it (`eirinix --log-format json sshd`): the daemon
        // forks, so it only runs as the first argument, before any thread exists.
        Command::Sshd { .. } => anyhow::bail!(
            "sshd must be the first argument (`eirinix sshd ...`); options before it are not supported"
        ),
        Command::SshProxy(args) => {
            let (ns, name) = args
                .master_secret
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                .context("--master-secret must be namespace/name")?;
            let client = client().await?;
            let master =
                eirinix_ssh::MasterKey::from_secret(&client, ns, name, args.create_master_secret)
                    .await?;
            let mut config = eirinix_ssh::ProxyConfig::new(master)?;
            config.listen = args.listen;
            config.namespace = (!args.namespace.is_empty()).then_some(args.namespace);
            config.daemon_port = args.daemon_port;
            config.refusal_time = std::time::Duration::from_millis(args.refusal_time_ms);
            config.limits = eirinix_ssh::Limits {
                auth_timeout: std::time::Duration::from_secs(args.auth_timeout_secs),
                max_unauthenticated: args.max_unauthenticated,
                max_auth_attempts: args.max_auth_attempts,
                per_source_burst: args.per_source_burst,
                per_source_per_minute: args.per_source_per_minute,
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                eirinix_core::manager::shutdown_signal().await;
                stop.cancel();
            });
            let proxy = eirinix_ssh::Proxy::bind(config, client).await?;
            tracing::info!(addr = %proxy.local_addr()?, "eirinix ssh proxy listening");
            if let Some(port) = args.admin_port {
                let metrics = proxy.metrics().clone();
                let admin = eirinix_core::server::Server::bind((args.listen.ip(), port).into())
                    .await
                    .context("the admin port")?;
                let router = axum::Router::new()
                    .route(
                        "/metrics",
                        axum::routing::get(move || {
                            let metrics = metrics.clone();
                            async move {
                                (
                                    [(
                                        axum::http::header::CONTENT_TYPE,
                                        eirinix_core::metrics::CONTENT_TYPE,
                                    )],
                                    eirinix_core::metrics::render(metrics),
                                )
                            }
                        }),
                    )
                    .route("/healthz", axum::routing::get(|| async { "ok" }));
                let opts = eirinix_core::server::ServeOptions {
                    max_connections: 64,
                    ..Default::default()
                };
                tokio::spawn(admin.serve_plain(router, opts, cancel.clone()));
            }
            proxy.serve(cancel).await?;
        }
        Command::Dev(args) => dev::run(args).await?,
        Command::Demo(args) => demo::run(args).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// An error printing its source in its own message, as many library errors do.
    #[derive(Debug)]
    struct Outer {
        source: std::io::Error,
    }

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "certificate secret ns/x: {}", self.source)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn causes_already_printed_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = anyhow::Error::new(Outer { source: io }).context("certificates");
        assert_eq!(
            one_line(&e),
            "certificates: certificate secret ns/x: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
    }
}
