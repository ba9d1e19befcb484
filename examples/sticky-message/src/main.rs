//! Run the sticky-message extension.
//!
//! On a workstation: `cargo run -p sticky-message` (URL mode on 127.0.0.1:2999 against the
//! cluster of the current kubeconfig; `STICKY_HOST`, `STICKY_PORT` change it). In a cluster
//! (the chart in `chart/`): `STICKY_SERVICE` and `STICKY_NAMESPACE` name the Service the
//! apiserver calls (service mode, TLS on 8443, health on 8080). `STICKY_MESSAGE` sets the
//! message, `STICKY_FINGERPRINT` the prefix of the webhook configuration and Secret names.

use std::time::Duration;

use eirinix_core::Manager;
use sticky_message::StickyMessage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let message = env("STICKY_MESSAGE").unwrap_or_else(|| "hello from eirinix".into());
    let mut builder = Manager::builder()
        .fingerprint(env("STICKY_FINGERPRINT").unwrap_or_else(|| "sticky".into()))
        .extension(StickyMessage { message });
    builder = match (env("STICKY_SERVICE"), env("STICKY_NAMESPACE")) {
        // In the cluster: the apiserver calls the Service; SIGTERM drains for 5 s first.
        (Some(service), Some(namespace)) => builder
            .service(service, namespace, 443)
            .bind_address("0.0.0.0".parse()?)
            .port(8443)
            .admin_port(Some(8080))
            .drain_period(Duration::from_secs(5)),
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("set both STICKY_SERVICE and STICKY_NAMESPACE (service mode), or neither")
        }
        (None, None) => {
            let host = env("STICKY_HOST").unwrap_or_else(|| "127.0.0.1".into());
            let port: u16 = match env("STICKY_PORT") {
                Some(p) => p
                    .parse()
                    .map_err(|e| anyhow::anyhow!("STICKY_PORT {p:?}: {e}"))?,
                None => 2999,
            };
            builder
                .bind_address(host.parse()?)
                .url_mode(host)
                .port(port)
        }
    };
    builder
        .build()?
        .run(kube::Client::try_default().await?)
        .await?;
    Ok(())
}
