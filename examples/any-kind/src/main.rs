//! Run both example webhooks against the cluster of the current kubeconfig, in URL mode on
//! `ANY_KIND_HOST` (default 127.0.0.1) port `ANY_KIND_PORT` (default 2998). Install the CRD
//! first: `any-kind crd | kubectl apply -f -`.

use any_kind::{GreetingDefaults, MemoryLimitRequired, greeting_crd};
use eirinix_core::Manager;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    if std::env::args().nth(1).as_deref() == Some("crd") {
        println!("{}", serde_json::to_string_pretty(&greeting_crd())?);
        return Ok(());
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let host = env("ANY_KIND_HOST").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = match env("ANY_KIND_PORT") {
        Some(p) => p
            .parse()
            .map_err(|e| anyhow::anyhow!("ANY_KIND_PORT {p:?}: {e}"))?,
        None => 2998,
    };
    Manager::builder()
        .fingerprint("any-kind")
        .bind_address(host.parse()?)
        .url_mode(host)
        .port(port)
        .validator(MemoryLimitRequired)
        .mutator(GreetingDefaults {
            language: "en".into(),
        })
        .build()?
        .run(kube::Client::try_default().await?)
        .await?;
    Ok(())
}
