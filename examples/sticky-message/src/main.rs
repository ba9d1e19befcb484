//! Run the sticky-message extension against the cluster of the current kubeconfig.
//!
//! `cargo run -p sticky-message` (URL mode on 127.0.0.1:2999 by default;
//! `STICKY_HOST`, `STICKY_PORT` and `STICKY_MESSAGE` change it).

use eirinix_core::Manager;
use sticky_message::StickyMessage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let host = std::env::var("STICKY_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = std::env::var("STICKY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(2999);
    let message = std::env::var("STICKY_MESSAGE").unwrap_or_else(|_| "hello from eirinix".into());
    let manager = Manager::builder()
        .url_mode(&host)
        .bind_address(host.parse()?)
        .port(port)
        .extension(StickyMessage { message })
        .build()?;
    manager.run(kube::Client::try_default().await?).await?;
    Ok(())
}
