//! Webhook token authentication (KEP-6060) against the real kube-apiserver 1.37 with the
//! `APIServerWebhookAuthenticationToken` feature gate: tokens the apiserver issues for this
//! webhook are accepted; tokens for another webhook, expired, wrongly signed, not attested or
//! missing are refused with 401 and counted. Kubernetes 1.37 issues such tokens through the
//! TokenRequest API but does not yet send them on its own admission calls, so a pod creation
//! through that apiserver is refused by a webhook requiring them (SECURITY.md).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use eirinix_core::{
    ContainerRef, Context, Extension, ExtensionError, Manager, Mutation, PodPatch, Request,
    RunningManager, async_trait,
};
use eirinix_testenv::support::retry_while_forbidden;
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{EnvVar, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};

struct Marker;

#[async_trait]
impl Extension for Marker {
    fn name(&self) -> &str {
        "marker"
    }
    async fn mutate(
        &self,
        _: &Context,
        _: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        let mut p = PodPatch::new(pod);
        p.add_env(
            ContainerRef::App(0),
            &EnvVar {
                name: "MARKED".into(),
                value: Some("1".into()),
                ..Default::default()
            },
        )?;
        Ok(Mutation::patch(p.build()))
    }
}

struct Setup {
    plane: ControlPlane,
    client: kube::Client,
    running: RunningManager,
    fingerprint: String,
    ca: String,
    apps: String,
}

async fn setup() -> Setup {
    eirinix_testenv::support::init_tracing();
    let plane = ControlPlane::builder()
        .apiserver_flag("--feature-gates=APIServerWebhookAuthenticationToken=true")
        .start()
        .await
        .expect("a 1.37 apiserver with the webhook token feature gate");
    let client = plane.client().await.unwrap();
    let system = plane.namespace("token-sys").await.unwrap();
    let apps = plane.namespace("token-apps").await.unwrap();
    let fingerprint = unique_name("token");
    let running = Manager::builder()
        .fingerprint(&fingerprint)
        .url_mode("127.0.0.1")
        .bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(0)
        .webhook_namespace(&system)
        .namespace(&apps)
        .filter_eirini_apps(false)
        .webhook_token_auth(true)
        .extension(Marker)
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .expect("the manager starts and reads the issuer's keys");
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    let ca = running.published().expect("certificates").ca_bundle;
    Setup {
        plane,
        client,
        running,
        fingerprint,
        ca,
        apps,
    }
}

/// A ServiceAccount allowed to attest every admission-review API group (what kube-apiserver's
/// own identity would be), and a token for it bound to configuration `config`.
async fn issued_token(client: &kube::Client, config: &str, audience: &str) -> String {
    let ns = "default";
    let name = unique_name("attester");
    let meta = |n: &str| ObjectMeta {
        name: Some(n.into()),
        ..Default::default()
    };
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(&name),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(
            &pp,
            &ClusterRole {
                metadata: meta(&name),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["authentication.k8s.io".into()]),
                    resources: Some(vec!["admissionReviewAPIGroups".into()]),
                    resource_names: Some(vec!["*".into()]),
                    verbs: vec!["attest".into()],
                    ..Default::default()
                }]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: meta(&name),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: name.clone(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: name.clone(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    // Raw JSON: `attestations` exists only in the newest k8s-openapi version features.
    let request = serde_json::to_vec(&json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": [audience],
            "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "admissionregistration.k8s.io/v1",
                               "kind": "MutatingWebhookConfiguration", "name": config},
            "attestations": {"admissionReviewAPIGroups": ["*"]},
        }
    }))
    .unwrap();
    // The apiserver's RBAC authorizer sees the new binding through its informer: until then the
    // attestation is refused (403).
    let issued: Value = retry_while_forbidden(
        "the apiserver issues a webhook-bound token once it sees the RBAC binding",
        || {
            client.request(
                http::Request::post(format!(
                    "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"
                ))
                .header("content-type", "application/json")
                .body(request.clone())
                .unwrap(),
            )
        },
    )
    .await;
    issued["status"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// Posts a review of a pod to the webhook at `path` with an optional bearer token.
async fn call(s: &Setup, path: &str, token: Option<&str>) -> (u16, String) {
    let config = eirinix_core::tls::client_config(&s.ca).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(s.running.local_addr())
        .await
        .unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// A token signed by `key_pem` (PKCS#8 EC) with the apiserver's key id, and these claims.
fn forged(key_pem: &str, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn claims(issuer: &str, audience: &str, config: &str, exp: i64, groups: &[&str]) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": issuer, "aud": [audience], "sub": "system:serviceaccount:default:forged",
        "iat": now - 10, "nbf": now - 10, "exp": exp,
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": "forged", "uid": "00000000-0000-0000-0000-000000000000"},
            "mutatingwebhookconfiguration": {"name": config, "uid": "x"},
            "attestations": {"admissionReviewAPIGroups": groups},
        }
    })
}

fn refusals(s: &Setup, reason: &str) -> u64 {
    let needle = format!("eirinix_webhook_token_refusals_total{{reason=\"{reason}\"}} ");
    s.running
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal metric for {reason}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_bound_to_this_webhook_are_accepted() {
    let s = setup().await;
    let config = format!("{}-mutating-hook", s.fingerprint);
    let port = s.running.local_addr().port();
    let audience = format!("https://127.0.0.1:{port}/marker");

    // A token the apiserver issues for this webhook: accepted, the review answered.
    let token = issued_token(&s.client, &config, &audience).await;
    let (code, text) = call(&s, "/marker", Some(&token)).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"patchType\":\"JSONPatch\""), "{text}");

    // No token.
    let (code, text) = call(&s, "/marker", None).await;
    assert_eq!(code, 401, "{text}");
    assert_eq!(refusals(&s, "missing"), 1);

    // A token for another webhook configuration with the same URL.
    let other = format!("{}-other", s.fingerprint);
    let mut twin: MutatingWebhookConfiguration =
        Api::<MutatingWebhookConfiguration>::all(s.client.clone())
            .get(&config)
            .await
            .unwrap();
    twin.metadata = ObjectMeta {
        name: Some(other.clone()),
        ..Default::default()
    };
    for w in twin.webhooks.iter_mut().flatten() {
        w.failure_policy = Some("Ignore".into());
        w.namespace_selector =
            Some(serde_json::from_value(json!({"matchLabels": {"nothing": "matches"}})).unwrap());
    }
    Api::<MutatingWebhookConfiguration>::all(s.client.clone())
        .create(&PostParams::default(), &twin)
        .await
        .unwrap();
    let token = issued_token(&s.client, &other, &audience).await;
    let (code, _) = call(&s, "/marker", Some(&token)).await;
    assert_eq!(code, 401);
    assert_eq!(refusals(&s, "wrong_webhook"), 1);

    // A valid token for this webhook, presented to another path of it.
    let token = issued_token(&s.client, &config, &audience).await;
    let (code, _) = call(&s, "/marker?other", Some(&token)).await;
    assert_eq!(code, 200, "query strings do not change the path");

    // Tokens made with the apiserver's own signing key: a valid one passes (so the next
    // refusals are for the one thing changed), expired and not-attested ones do not.
    let sa_key = std::fs::read_to_string(s.plane.dir().join("sa.key")).unwrap();
    let jwks: Value = s
        .client
        .request(
            http::Request::get("/openid/v1/jwks")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let discovery: Value = s
        .client
        .request(
            http::Request::get("/.well-known/openid-configuration")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let issuer = discovery["issuer"].as_str().unwrap().to_owned();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let valid = forged(
        &sa_key,
        &kid,
        claims(&issuer, &audience, &config, now + 600, &["*"]),
    );
    assert_eq!(call(&s, "/marker", Some(&valid)).await.0, 200);
    let expired = forged(
        &sa_key,
        &kid,
        claims(&issuer, &audience, &config, now - 600, &["*"]),
    );
    assert_eq!(call(&s, "/marker", Some(&expired)).await.0, 401);
    assert_eq!(refusals(&s, "expired"), 1);
    let apps_only = forged(
        &sa_key,
        &kid,
        claims(&issuer, &audience, &config, now + 600, &["apps"]),
    );
    assert_eq!(call(&s, "/marker", Some(&apps_only)).await.0, 401);
    assert_eq!(refusals(&s, "not_attested"), 1);
    let elsewhere = forged(
        &sa_key,
        &kid,
        claims(
            &issuer,
            "https://127.0.0.1:1/marker",
            &config,
            now + 600,
            &["*"],
        ),
    );
    assert_eq!(call(&s, "/marker", Some(&elsewhere)).await.0, 401);
    assert_eq!(refusals(&s, "wrong_audience"), 1);
    let foreign_issuer = forged(
        &sa_key,
        &kid,
        claims("https://elsewhere", &audience, &config, now + 600, &["*"]),
    );
    assert_eq!(call(&s, "/marker", Some(&foreign_issuer)).await.0, 401);
    assert_eq!(refusals(&s, "wrong_issuer"), 1);

    // Wrongly signed: another key claiming the apiserver's key id.
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let wrong = forged(
        &other_key,
        &kid,
        claims(&issuer, &audience, &config, now + 600, &["*"]),
    );
    assert_eq!(call(&s, "/marker", Some(&wrong)).await.0, 401);
    assert_eq!(refusals(&s, "bad_signature"), 1);
    assert_eq!(call(&s, "/marker", Some("not-a-jwt")).await.0, 401);
    assert_eq!(refusals(&s, "malformed"), 1);

    // Health and metrics need no token.
    let (code, _) = call(&s, "/readyz", None).await;
    assert_ne!(code, 401);

    // Kubernetes 1.37 does not send webhook tokens on its admission calls yet: requiring them
    // refuses every pod the webhook sees (the configuration says Fail).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "through-the-apiserver"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    }))
    .unwrap();
    let err = Api::<Pod>::namespaced(s.client.clone(), &s.apps)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the server has asked for the client to provide credentials"),
        "the apiserver got our 401: {err}"
    );
    s.running.shutdown().await;
}
