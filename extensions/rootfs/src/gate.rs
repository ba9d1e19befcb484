//! The readiness gate: nothing rolls (and the webhook rewrites nothing) until the source of
//! the new rootfs image is ready.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

use crate::error::RootfsError;

/// What must be ready before anything rolls: the source of the new rootfs image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Gate {
    /// No gate: roll as soon as a version is desired.
    #[default]
    None,
    /// A Deployment (e.g. the registry serving the image) with all replicas updated and available.
    Deployment {
        /// Namespace of the Deployment.
        namespace: String,
        /// Name of the Deployment.
        name: String,
    },
    /// An `http://` URL answering a GET with a 2xx status.
    Http {
        /// The URL (plain HTTP; see the README for why).
        url: String,
    },
}

/// How long one HTTP gate probe may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of one gate check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateStatus {
    /// Whether rolling may proceed.
    pub open: bool,
    /// What was seen, for logs and reports.
    pub reason: String,
}

impl GateStatus {
    fn open(reason: impl Into<String>) -> Self {
        Self {
            open: true,
            reason: reason.into(),
        }
    }

    fn closed(reason: impl Into<String>) -> Self {
        Self {
            open: false,
            reason: reason.into(),
        }
    }
}

/// Check `gate` once. Unreachable sources are "closed", not errors.
pub async fn check(gate: &Gate, client: &kube::Client) -> GateStatus {
    match gate {
        Gate::None => GateStatus::open("no gate"),
        Gate::Deployment { namespace, name } => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            match api.get_opt(name).await {
                Ok(Some(d)) => deployment_status(&d),
                Ok(None) => GateStatus::closed(format!("deployment {namespace}/{name} not found")),
                Err(e) => GateStatus::closed(format!("deployment {namespace}/{name}: {e}")),
            }
        }
        Gate::Http { url } => check_http(url).await,
    }
}

/// Probe an `http://` URL once: open on a 2xx answer within 5 s.
pub async fn check_http(url: &str) -> GateStatus {
    match tokio::time::timeout(HTTP_TIMEOUT, http_get(url)).await {
        Ok(Ok(code)) if (200..300).contains(&code) => {
            GateStatus::open(format!("GET {url}: {code}"))
        }
        Ok(Ok(code)) => GateStatus::closed(format!("GET {url}: {code}")),
        Ok(Err(e)) => GateStatus::closed(format!("GET {url}: {e}")),
        Err(_) => GateStatus::closed(format!("GET {url}: no answer within {HTTP_TIMEOUT:?}")),
    }
}

/// Whether a Deployment is ready: at least one replica wanted, the controller has seen the
/// latest spec, and every replica is updated and available.
pub fn deployment_status(d: &Deployment) -> GateStatus {
    let name = format!(
        "deployment {}/{}",
        d.metadata.namespace.as_deref().unwrap_or_default(),
        d.metadata.name.as_deref().unwrap_or_default()
    );
    let wanted = eirinix_core::compat::deployment_spec(d)
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(st) = &d.status else {
        return GateStatus::closed(format!("{name}: no status yet"));
    };
    if wanted < 1 {
        return GateStatus::closed(format!("{name}: scaled to zero"));
    }
    if let Some(g) = d.metadata.generation
        && st.observed_generation.unwrap_or(0) < g
    {
        return GateStatus::closed(format!("{name}: generation {g} not observed yet"));
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let summary = format!("{name}: {updated} updated, {available} available of {wanted}");
    if updated >= wanted && available >= wanted {
        GateStatus::open(summary)
    } else {
        GateStatus::closed(summary)
    }
}

/// Host, port and path of an `http://` URL.
pub(crate) fn parse_http_url(url: &str) -> Result<(String, u16, String), RootfsError> {
    let bad = |why: &str| RootfsError::InvalidOptions(format!("gate URL {url:?}: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    Ok((
        host.trim_matches(['[', ']']).to_owned(),
        uri.port_u16().unwrap_or(80),
        path,
    ))
}

/// One GET over a fresh HTTP/1.1 connection; the status code.
async fn http_get(url: &str) -> Result<u16, String> {
    let (host, port, path) = parse_http_url(url).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let authority = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "eirinix-rootfs-gate")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // Drain a little of the body so the server sees a clean exchange; the content is ignored.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "registry", "namespace": "cf", "generation": 3},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn deployment_readiness() {
        let ready = deployment(
            json!({"observedGeneration": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(deployment_status(&ready).open);
        let stale = deployment(
            json!({"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(!deployment_status(&stale).open);
        let partial = deployment(
            json!({"observedGeneration": 3, "updatedReplicas": 2, "availableReplicas": 1}),
        );
        let s = deployment_status(&partial);
        assert!(!s.open);
        assert_eq!(
            s.reason,
            "deployment cf/registry: 2 updated, 1 available of 2"
        );
        let mut zero = ready.clone();
        zero.spec.as_mut().unwrap().replicas = Some(0);
        assert!(!deployment_status(&zero).open);
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/healthz?x=1").unwrap(),
            ("127.0.0.1".into(), 8080, "/healthz?x=1".into())
        );
        assert_eq!(
            parse_http_url("http://registry.cf").unwrap(),
            ("registry.cf".into(), 80, "/".into())
        );
        assert_eq!(parse_http_url("http://[::1]:81/").unwrap().0, "::1");
        assert!(parse_http_url("https://registry").is_err());
        assert!(parse_http_url("registry:80").is_err());
    }

    #[tokio::test]
    async fn http_gate_on_a_closed_port_is_closed_not_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let started = std::time::Instant::now();
        let status = check_http(&format!("http://127.0.0.1:{port}/")).await;
        assert!(!status.open);
        assert!(
            status.reason.starts_with("GET http://127.0.0.1:"),
            "{}",
            status.reason
        );
        assert!(
            started.elapsed() < HTTP_TIMEOUT,
            "a refused connection fails fast"
        );
    }
}
